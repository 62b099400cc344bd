"""QM9 from the qm9pack CSVs: known molecules, units, splits, normalisation and graph batches."""

from __future__ import annotations

import csv
import importlib.util
import sys
from itertools import islice
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fmtl.data import batches, load
from fmtl.data.qm9 import (
    HARTREE_TO_EV,
    NODE_FEATURES,
    REPORT_SCALE,
    TARGETS,
    molecule_descriptor,
    qm9_split,
)
from fmtl.data.qm9_io import qm9pack_dir

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("qm9pack") is None,
    reason='qm9pack is not installed (pip install -e ".[data]")',
)
N_MOLECULES = 130_831


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh cache directory, filled once by parsing the CSVs (the slow step, ~10 s)."""
    path = tmp_path_factory.mktemp("qm9_cache")
    load("qm9", "val", root=path, subset=1)
    return path


@pytest.fixture(scope="module")
def everything(cache: Path):
    return load("qm9", "all", root=cache)


@pytest.fixture(scope="module")
def train(cache: Path):
    return load("qm9", "train", root=cache)


@pytest.fixture(scope="module")
def cache_val(cache: Path):
    return load("qm9", "val", root=cache)


def _csv_rows(n: int) -> list[dict[str, str]]:
    csv.field_size_limit(sys.maxsize)
    with (qm9pack_dir() / "qm9_part1.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        return [next(reader) for _ in range(n)]


def test_all_molecules_parsed_in_gdb_order(everything) -> None:
    assert len(everything) == N_MOLECULES
    gdb = everything.gdb_idx
    assert gdb[0] == 1 and gdb[-1] == 133_885 and bool((gdb[1:] > gdb[:-1]).all())
    counts = everything.ptr[1:] - everything.ptr[:-1]
    assert int(counts.min()) == 3 and int(counts.max()) == 29
    assert set(everything.z.unique().tolist()) == {1, 6, 7, 8, 9}


def test_known_molecules_against_the_csv(everything) -> None:
    rows = _csv_rows(3)
    ch4, nh3 = everything.targets[0], everything.targets[1]
    assert ch4[0] == 0.0 and ch4[1] == 13.21 and ch4[4] == 35.3641 and ch4[10] == 6.469
    assert nh3[0] == 1.6256 and nh3[1] == 9.46
    assert ch4[2].item() == pytest.approx(-10.550, abs=1e-3)  # ε_HOMO = -0.3877 Ha
    assert ch4[3].item() == pytest.approx(0.1171 * HARTREE_TO_EV)
    assert ch4[5].item() == pytest.approx(0.044749 * HARTREE_TO_EV)
    assert ch4[6].item() / HARTREE_TO_EV == pytest.approx(-0.631066, abs=1e-6)  # U0 atomization
    for row, y in zip(rows, everything.targets[:3], strict=True):
        assert y[0].item() == float(row["Dipole_debye"])
        assert y[2].item() == pytest.approx(float(row["HOMO_au"]) * HARTREE_TO_EV)
        assert y[10].item() == float(row["Heatcapacity_Cv_cal_mol_K"])
    torch.testing.assert_close(
        everything.pos[:5], torch.tensor(eval(rows[0]["XYZ_Ang"]), dtype=torch.float32)
    )
    assert everything.z[:5].tolist() == [6, 1, 1, 1, 1]


def test_atomization_energies_are_physical(everything) -> None:
    per_atom = everything.targets[:, 6] / (everything.ptr[1:] - everything.ptr[:-1])
    assert bool((everything.targets[:, 6:10] < 0).all())  # molecules are bound
    assert -5.0 < per_atom.mean().item() < -3.0  # ~ -4 eV per atom


def test_split_sizes_disjoint_and_deterministic() -> None:
    parts = {s: qm9_split(N_MOLECULES, s) for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [110_831, 10_000, 10_000]
    union = torch.cat(list(parts.values()))
    assert torch.equal(union.sort().values, torch.arange(N_MOLECULES))
    assert torch.equal(qm9_split(N_MOLECULES, "val"), parts["val"])
    with pytest.raises(ValueError, match="split"):
        qm9_split(10, "validation")


def test_normalisation_uses_train_statistics(cache: Path, train) -> None:
    val = load("qm9", "val", root=cache)
    torch.testing.assert_close(train.y.mean(0), torch.zeros(11), atol=1e-4, rtol=0)
    torch.testing.assert_close(train.y.std(0), torch.ones(11), atol=1e-4, rtol=0)
    assert torch.equal(val.target_mean, train.target_mean)
    assert torch.equal(val.target_std, train.target_std)
    assert len(val) == 10_000 and len(load("qm9", "test", root=cache, subset=7)) == 7
    torch.testing.assert_close(val.denormalize(val.y), val.targets, atol=1e-4, rtol=1e-6)


def test_mae_in_paper_units(train) -> None:
    assert train.tasks == TARGETS and train.report_units[2] == "meV"
    y = train[torch.arange(64)]["y"]
    one = torch.tensor([0.01, 0.01, 1e-3, 1e-3, 0.01, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 0.01])
    pred = y + (one / train.target_std).float()  # 1 meV (or 0.01 D, a0³, …) off everywhere
    want = one * REPORT_SCALE.double()
    torch.testing.assert_close(train.mae(pred, y).double(), want, rtol=1e-3, atol=0)
    torch.testing.assert_close(
        train.to_report_units(y), train.targets[:64] * REPORT_SCALE.double(), rtol=1e-5, atol=1e-2
    )
    assert all(train.task_info[t].higher_is_better == (False,) for t in train.tasks)


def test_graph_batch_of_methane(everything) -> None:
    b = everything[[0]]
    assert b["z"].dtype == torch.long and b["pos"].dtype == torch.float32
    assert b["node_attr"].shape == (5, len(NODE_FEATURES))
    assert b["edge_index"].shape == (2, 20)  # complete graph on 5 atoms
    feats = dict(zip(NODE_FEATURES, b["node_attr"].T, strict=True))
    assert feats["is_C"].tolist() == [1, 0, 0, 0, 0] and feats["Z"].tolist() == [6, 1, 1, 1, 1]
    assert feats["num_H"].tolist() == [4, 0, 0, 0, 0]
    assert feats["degree4+"][0] == 1 and feats["degree1"][1:].tolist() == [1, 1, 1, 1]
    src, dst = b["edge_index"]
    torch.testing.assert_close(b["edge_attr"][:, 0], (b["pos"][src] - b["pos"][dst]).norm(dim=1))
    assert b["edge_attr"][:, 1].sum() == 8  # 4 C-H bonds, both directions


def _check_graph_batch(b, rows: torch.Tensor, ds) -> None:
    n_atoms = ds.ptr[ds.mol[rows] + 1] - ds.ptr[ds.mol[rows]]
    assert torch.equal(b["num_atoms"], n_atoms)
    assert torch.equal(b["graph"], torch.repeat_interleave(torch.arange(len(rows)), n_atoms))
    src, dst = b["edge_index"]
    assert bool((src != dst).all()) and int(b["edge_index"].max()) < len(b["z"])
    assert torch.equal(b["graph"][src], b["graph"][dst])  # edges stay inside molecules
    assert len(src) == int((n_atoms * (n_atoms - 1)).sum())
    assert torch.equal(b["y"], ds.y[rows])


def _concat(parts: list) -> dict[str, torch.Tensor]:
    """Loop reference: concatenate single-molecule batches with node offsets."""
    offsets = torch.cumsum(torch.tensor([0] + [len(p["z"]) for p in parts]), 0)
    out = {k: torch.cat([p[k] for p in parts]) for k in ("z", "pos", "node_attr", "edge_attr",
                                                       "num_atoms", "y")}  # fmt: skip
    out["edge_index"] = torch.cat(
        [p["edge_index"] + o for p, o in zip(parts, offsets, strict=False)], 1
    )
    out["graph"] = torch.cat([p["graph"] + i for i, p in enumerate(parts)])
    return out


@settings(max_examples=12, deadline=None)
@given(st.lists(st.integers(0, 9_999), min_size=1, max_size=12))
def test_graph_batch_equals_concatenated_single_molecules(cache_val, rows: list[int]) -> None:
    ds = cache_val
    b = ds[rows]
    _check_graph_batch(b, torch.tensor(rows), ds)
    want = _concat([ds[[r]] for r in rows])
    for k, v in want.items():
        assert torch.equal(b[k], v), k


def test_cutoff_and_bond_edges(cache: Path) -> None:
    cut = load("qm9", "val", root=cache, edges="cutoff", cutoff=2.0, rbf=4, subset=50)
    b = cut[torch.arange(50)]
    assert b["edge_attr"].shape[1] == cut.num_edge_features == 6
    assert bool((b["edge_attr"][:, 0] < 2.0).all())
    bonds = load("qm9", "val", root=cache, edges="bonds", subset=50)[torch.arange(50)]
    assert bool((bonds["edge_attr"][:, 1] == 1).all())


def test_descriptor_batches(cache: Path) -> None:
    ds = load("qm9", "train", root=cache, representation="descriptor", subset=300)
    b = ds[torch.arange(5)]
    assert b.batch_size == torch.Size([5]) and b["x"].shape == (5, ds.num_features)
    assert b["x"].dtype == torch.float32 and b["y"].shape == (5, 11)
    assert torch.equal(b["y"], ds.y[:5])
    # standardised with train statistics: the train rows have mean ~0
    assert float(ds.x.mean(0).abs().max()) < 0.5
    # row i is the standardised descriptor of its molecule
    raw = molecule_descriptor(ds.z, ds.pos, ds.ptr, ds.mol[:5])
    torch.testing.assert_close(b["x"], (raw - ds.x_mean) / ds.x_std)
    counts = raw[:, 29:34].sum(1)
    assert torch.equal(counts, (ds.ptr[ds.mol[:5] + 1] - ds.ptr[ds.mol[:5]]).float())
    test = load("qm9", "test", root=cache, representation="descriptor", subset=3)
    assert torch.equal(test.x_mean, ds.x_mean)  # the same statistics for every split


def test_second_load_from_cache_is_equal(cache: Path, everything) -> None:
    again = load("qm9", "all", root=cache)
    for k in ("z", "pos", "ptr", "targets", "gdb_idx"):
        assert torch.equal(getattr(again, k), getattr(everything, k)), k


def test_batches_over_graphs_shard_by_rank(cache_val) -> None:
    full = list(islice(batches(cache_val, 8, seed=3, epoch=1), 3))
    shards = [list(islice(batches(cache_val, 8, seed=3, epoch=1, rank=r, world_size=2), 3))
              for r in range(2)]  # fmt: skip
    for k, b in enumerate(full):
        assert torch.equal(torch.cat([shards[0][k]["y"], shards[1][k]["y"]]), b["y"])
        assert torch.equal(torch.cat([shards[0][k]["z"], shards[1][k]["z"]]), b["z"])


def test_task_subset_is_the_same_columns(cache: Path) -> None:
    full = load("qm9", "val", root=cache, subset=50)
    part = load("qm9", "val", root=cache, subset=50, tasks=["U0", "mu", "homo"])
    cols = [0, 2, 6]
    assert part.tasks == ("mu", "homo", "U0") and list(part.task_info) == list(part.tasks)
    assert part.report_units == ("D", "meV", "meV") and part.units == ("D", "eV", "eV")
    assert torch.equal(part.y, full.y[:, cols]) and torch.equal(part.mae_scale, full.mae_scale[cols])
    assert torch.equal(part.target_std, full.target_std[cols])
    assert part[[0, 1]]["y"].shape == (2, 3)
    same = load("qm9", "val", root=cache, subset=50, tasks="U0,mu,homo")  # the CLI's comma form
    assert same.tasks == part.tasks


def test_bad_task_names_fail_before_reading(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown QM9 task\(s\) \['U1'\]"):
        load("qm9", "val", root=tmp_path, tasks=["U0", "U1"])
    with pytest.raises(ValueError, match="distinct"):
        load("qm9", "val", root=tmp_path, tasks=["U0", "U0"])
    assert not any(tmp_path.iterdir())


def test_descriptor_scalings(cache: Path) -> None:
    kw = {"root": cache, "representation": "descriptor", "subset": 300}
    std = load("qm9", "train", **kw)
    explicit = load("qm9", "train", **kw, scaling="standard")
    assert torch.equal(std.x, explicit.x)
    clipped = load("qm9", "train", **kw, clip=5.0)
    assert float(clipped.x.abs().max()) <= 5.0 and float(std.x.abs().max()) > 5.0
    torch.testing.assert_close(clipped.x, std.x.clamp(-5, 5))
    asinh = load("qm9", "test", **{**kw, "subset": 20}, scaling="asinh")
    assert torch.equal(asinh.x_mean, std.x_mean)  # the same train statistics for every split and scaling
    raw = molecule_descriptor(asinh.z, asinh.pos, asinh.ptr, asinh.mol)
    torch.testing.assert_close(asinh.x, torch.asinh((raw - std.x_mean) / std.x_std))
    with pytest.raises(ValueError, match="apply to representation"):
        load("qm9", "val", root=cache, subset=2, clip=5.0)  # the graph representation has no x
    with pytest.raises(ValueError, match="scaling"):
        load("qm9", "val", **kw, scaling="robust")

"""QM9 readers for users' own copies (XYZ directory, PyG raw layout) on tiny fixtures."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest
import torch

from fmtl.data import load
from fmtl.data.qm9 import HARTREE_TO_EV, qm9_targets
from fmtl.data.qm9_io import read_pyg_raw, read_xyz_dir

# (gdb index, symbols, coordinates Å, the 15 properties of the XYZ header) from QM9.
MOLECULES = [
    (1, "CHHHH",
     [[-0.0126981359, 1.0858041578, 0.0080009958], [0.002150416, -0.0060313176, 0.0019761204],
      [1.0117308433, 1.4637511618, 0.0002765748], [-0.540815069, 1.4475266138, -0.8766437152],
      [-0.5238136345, 1.4379326443, 0.9063972942]],
     [157.7118, 157.70997, 157.70699, 0.0, 13.21, -0.3877, 0.1171, 0.5048, 35.3641, 0.044749,
      -40.47893, -40.476062, -40.475117, -40.498597, 6.469]),
    (2, "NHHH",
     [[-0.0404260543, 1.0241077531, 0.0625637998], [0.0172574639, 0.0125452063, -0.0273771593],
      [0.9157893661, 1.3587451948, -0.0287577581], [-0.5202777357, 1.3435321258, -0.7755426124]],
     [293.60975, 293.54111, 191.39397, 1.6256, 9.46, -0.257, 0.0829, 0.3399, 26.1563, 0.034358,
      -56.525887, -56.523026, -56.522082, -56.544961, 6.316]),
    (3, "OHH",
     [[-0.0343604951, 0.9775395708, 0.0076015923], [0.0647664923, 0.0205721989, 0.0015346341],
      [0.8717903737, 1.3007924048, 0.0006931336]],
     [799.58812, 437.90386, 282.94545, 1.8511, 6.31, -0.2928, 0.0687, 0.3615, 19.0002, 0.021375,
      -76.404702, -76.401867, -76.400922, -76.422349, 6.002]),
]  # fmt: skip


def _mathematica(v: float) -> str:
    """Write a float the way some QM9 XYZ files do (``1.5*^-3``)."""
    mantissa, exponent = f"{v:.9e}".split("e")
    return f"{mantissa}*^{int(exponent)}"


def write_xyz_dir(root: Path, uncharacterized: tuple[int, ...] = ()) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for idx, syms, pos, props in MOLECULES:
        head = "\t".join(["gdb", str(idx), *(repr(p) for p in props)])
        atoms = [
            "\t".join([s, _mathematica(x), repr(y), repr(z), "0.1"])
            for s, (x, y, z) in zip(syms, pos, strict=True)
        ]
        text = "\n".join([str(len(syms)), head + "\t", *atoms, "1.0\t2.0", "C\tC", "InChI=x\tx"])
        (root / f"dsgdb9nsd_{idx:06d}.xyz").write_text(text + "\n")
    if uncharacterized:
        rows = "\n".join(f"  {i}  C  C  0.1  0.2" for i in uncharacterized)
        (root / "uncharacterized.txt").write_text(f" Indices of uncharacterized\n Index\n{rows}\n")
    return root


def write_pyg_raw(root: Path, uncharacterized: tuple[int, ...] = ()) -> Path:
    raw = root / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    blocks, rows = [], []
    for idx, syms, pos, props in MOLECULES:
        atoms = [
            f"{x:10.4f}{y:10.4f}{z:10.4f} {s:<3} 0  0  0  0  0  0  0  0  0  0  0  0"
            for s, (x, y, z) in zip(syms, pos, strict=True)
        ]
        bonds = [f"  1{i + 2:3d}  1  0" for i in range(len(syms) - 1)]
        counts = f"{len(syms):3d}{len(bonds):3d}  0  0  0  0  0  0  0  0999 V2000"
        blocks.append("\n".join([f"gdb_{idx}", "     RDKit          3D", "", counts, *atoms,
                                 *bonds, "M  END"]))  # fmt: skip
        rows.append(",".join([f"gdb_{idx}", *(repr(p) for p in props), "0", "0", "0", "0"]))
    (raw / "gdb9.sdf").write_text("\n$$$$\n".join(blocks) + "\n$$$$\n")
    header = ("mol_id,A,B,C,mu,alpha,homo,lumo,gap,r2,zpve,u0,u298,h298,g298,cv,"
              "u0_atom,u298_atom,h298_atom,g298_atom")  # fmt: skip
    (raw / "gdb9.sdf.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    if uncharacterized:
        lines = "\n".join(f"  {i}  C  C" for i in uncharacterized)
        (raw / "uncharacterized.txt").write_text(" header\n Index\n" + lines + "\n")
    return root


def _check_record(rec: dict[str, torch.Tensor], keep: list[int], atol: float) -> None:
    mols = [m for m in MOLECULES if m[0] in keep]
    assert rec["gdb_idx"].tolist() == keep
    assert rec["ptr"].tolist() == [0, *torch.cumsum(torch.tensor([len(m[1]) for m in mols]), 0)]
    z = {"H": 1, "C": 6, "N": 7, "O": 8}
    assert rec["z"].tolist() == [z[s] for m in mols for s in m[1]]
    pos = torch.tensor([p for m in mols for p in m[2]])
    torch.testing.assert_close(rec["pos"], pos, atol=atol, rtol=0)
    props = torch.tensor([m[3] for m in mols], dtype=torch.float64)
    torch.testing.assert_close(rec["props"], props)


def test_xyz_reader_parses_header_atoms_and_mathematica_exponents(tmp_path: Path) -> None:
    rec = read_xyz_dir(write_xyz_dir(tmp_path))
    _check_record(rec, [1, 2, 3], atol=1e-6)


def test_xyz_reader_drops_uncharacterized(tmp_path: Path) -> None:
    rec = read_xyz_dir(write_xyz_dir(tmp_path, uncharacterized=(2,)))
    _check_record(rec, [1, 3], atol=1e-6)


def test_pyg_reader_matches_the_fixture(tmp_path: Path) -> None:
    rec = read_pyg_raw(write_pyg_raw(tmp_path, uncharacterized=(3,)))
    _check_record(rec, [1, 2], atol=1e-4)  # the SDF stores 4 decimals


def test_missing_files_name_the_expected_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dsgdb9nsd"):
        read_xyz_dir(tmp_path)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "raw" / "gdb9.sdf")):
        load("qm9", "all", root=tmp_path, source="pyg", cache=False)
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "gdb9.sdf").write_text("")
    with pytest.raises(FileNotFoundError, match="gdb9.sdf.csv"):
        read_pyg_raw(tmp_path)


def test_ch4_targets_in_stored_units(tmp_path: Path) -> None:
    ds = load("qm9", "all", root=write_xyz_dir(tmp_path / "xyz"), source="xyz",
              cache_dir=tmp_path / "cache")  # fmt: skip
    ch4 = ds.targets[0]
    assert ch4[0] == 0.0 and ch4[1] == 13.21 and ch4[4] == 35.3641 and ch4[10] == 6.469
    assert ch4[2].item() == pytest.approx(-0.3877 * HARTREE_TO_EV)  # -10.55 eV
    assert ch4[2].item() == pytest.approx(-10.550, abs=1e-3)
    assert ch4[3].item() == pytest.approx(0.1171 * HARTREE_TO_EV)
    assert ch4[5].item() == pytest.approx(0.044749 * HARTREE_TO_EV)
    # U0 atomization of CH4: -40.47893 - (C + 4 H) = -0.631066 Ha ≈ -17.17 eV; PyG's
    # gdb9.sdf.csv lists u0_atom = -395.999594 kcal/mol (× 0.04336414 eV per kcal/mol).
    assert ch4[6].item() / HARTREE_TO_EV == pytest.approx(-0.631066, abs=1e-6)
    assert ch4[6].item() == pytest.approx(-395.999594 * 0.04336414, abs=1e-3)
    # U, H, G atomization energies against PyG's u298_atom, h298_atom, g298_atom (kcal/mol).
    pyg = torch.tensor([-398.643290011, -401.014646522, -372.471772148], dtype=torch.float64)
    torch.testing.assert_close(ch4[7:10], pyg * 0.04336414, atol=1e-3, rtol=0)
    nh3 = ds.targets[1]
    assert nh3[0] == 1.6256 and nh3[1] == 9.46


def test_cache_round_trip_and_corrupt_cache_is_rebuilt(tmp_path: Path) -> None:
    root, cache = write_xyz_dir(tmp_path / "xyz"), tmp_path / "cache"
    first = load("qm9", "all", root=root, source="xyz", cache_dir=cache)
    (path,) = cache.glob("qm9_xyz_*.pt")
    second = load("qm9", "all", root=root, source="xyz", cache_dir=cache)
    assert torch.equal(first.targets, second.targets) and torch.equal(first.pos, second.pos)
    for garbage in (b"not a torch file", path.read_bytes()[:100]):
        path.write_bytes(garbage)
        with pytest.warns(UserWarning, match="rebuilding"):
            again = load("qm9", "all", root=root, source="xyz", cache_dir=cache)
        assert torch.equal(first.targets, again.targets)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the rebuilt cache loads cleanly
            load("qm9", "all", root=root, source="xyz", cache_dir=cache)


def test_cache_holds_only_tensors(tmp_path: Path) -> None:
    root, cache = write_xyz_dir(tmp_path / "xyz"), tmp_path / "cache"
    load("qm9", "all", root=root, source="xyz", cache_dir=cache)
    (path,) = cache.glob("qm9_xyz_*.pt")
    data = torch.load(path, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in data.values())
    assert not list(cache.glob("*.tmp"))


def test_qm9_targets_atomization_reference() -> None:
    rec = {"z": torch.tensor([1, 1], dtype=torch.int8), "ptr": torch.tensor([0, 2]),
           "props": torch.zeros(1, 15, dtype=torch.float64)}  # fmt: skip
    rec["props"][0, 10:14] = torch.tensor([-1.0, -1.0, -1.0, -1.0], dtype=torch.float64)
    y = qm9_targets(rec)
    want = torch.tensor([-1 + 2 * 0.500273, -1 + 2 * 0.498857, -1 + 2 * 0.497912,
                         -1 + 2 * 0.510927], dtype=torch.float64) * HARTREE_TO_EV  # fmt: skip
    torch.testing.assert_close(y[0, 6:10], want)


def test_missing_qm9pack_gives_install_hint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "qm9pack" else real(name, *a)
    )
    with pytest.raises(ModuleNotFoundError, match=r"pip install -e \"\.\[data\]\""):
        load("qm9", root=tmp_path, cache=False)

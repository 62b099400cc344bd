"""QM9 with the 11 targets of Nash-MTL / DB-MTL Table 3, as graphs or fixed-size descriptors.

Targets (PyG QM9 target indices ``[0, 1, 2, 3, 5, 6, 12, 13, 14, 15, 11]``, the Nash-MTL and
LibMTL selection) and the units they are stored in (PyG's units) → reported in (the paper's):

====  ======  ==================================  ==========  ============
 t    name    quantity                            stored      reported
====  ======  ==================================  ==========  ============
 0    mu      dipole moment μ                     D           D
 1    alpha   isotropic polarizability α          a0³         a0³
 2    homo    ε_HOMO                              eV          meV
 3    lumo    ε_LUMO                              eV          meV
 4    r2      electronic spatial extent ⟨R²⟩      a0²         a0²
 5    zpve    zero-point vibrational energy       eV          meV
 6    U0      atomization energy at 0 K           eV          meV
 7    U       atomization energy at 298.15 K      eV          meV
 8    H       atomization enthalpy at 298.15 K    eV          meV
 9    G       atomization free energy 298.15 K    eV          meV
 10   cv      heat capacity at 298.15 K           cal/mol K   cal/mol K
====  ======  ==================================  ==========  ============

Hartree → eV uses PyG's factor 27.211386246. Atomization energies subtract the free-atom
reference energies :data:`ATOMREF` from the molecular energy: E_at = E − Σ_i E_ref(Z_i).

Split (as in the PyG example and the Nash-MTL code): a permutation of the 130,831 molecules from
``torch.Generator().manual_seed(SPLIT_SEED)`` with ``SPLIT_SEED = 0``; test = the first 10,000,
val = the next 10,000, train = the remaining 110,831 (the paper's "110,000" plus the 831
leftover molecules, which stay in train). Targets are standardised with the *train* mean/std
(the same statistics for every split); the batch holds ``y = (target − mean) / std``.

MAE in the paper's units: ``ds.mae(pred, y)`` = ``fmtl.metrics.mae(pred, y, ds.mae_scale)`` where
``mae_scale = target_std * report_scale`` (``report_scale`` is 1000 for the eV targets).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from tensordict import TensorDict

from ..metrics import mae
from .base import Index, TaskInfo, as_index
from .cache import cache_dir as default_cache_dir
from .cache import load_tensors, save_tensors
from .graphs import complete_pairs, csr_gather
from .qm9_descriptor import DESCRIPTOR_DIM, check_scaling, descriptor, fit_scaling
from .qm9_io import read_pyg_raw, read_qm9pack, read_xyz_dir

__all__ = [
    "TARGETS", "UNITS", "REPORT_UNITS", "REPORT_SCALE", "HARTREE_TO_EV", "ATOMREF",
    "NODE_FEATURES", "SPLIT_SEED", "qm9_targets", "qm9_split", "molecule_descriptor", "task_columns", "QM9",
    "load_qm9",
]  # fmt: skip

TARGETS = ("mu", "alpha", "homo", "lumo", "r2", "zpve", "U0", "U", "H", "G", "cv")
UNITS = ("D", "a0^3", "eV", "eV", "a0^2", "eV", "eV", "eV", "eV", "eV", "cal/mol/K")
REPORT_UNITS = ("D", "a0^3", "meV", "meV", "a0^2", "meV", "meV", "meV", "meV", "meV",
                "cal/mol/K")  # fmt: skip
REPORT_SCALE = torch.tensor([1.0, 1, 1000, 1000, 1, 1000, 1000, 1000, 1000, 1000, 1])
HARTREE_TO_EV = 27.211386246
SPLIT_SEED = 0
N_VAL = N_TEST = 10_000
DESCRIPTOR_STATS_ROWS = 10_000

# Free-atom reference energies in Hartree (B3LYP/6-31G(2df,p)) from the QM9 paper's
# ``atomref`` table (Ramakrishnan et al., Sci. Data 1, 140022 (2014)); columns U0, U, H, G.
ATOMREF = {
    1: (-0.500273, -0.498857, -0.497912, -0.510927),  # H
    6: (-37.846772, -37.845355, -37.844411, -37.861317),  # C
    7: (-54.583861, -54.582445, -54.581501, -54.598897),  # N
    8: (-75.064579, -75.063163, -75.062219, -75.079532),  # O
    9: (-99.718730, -99.717314, -99.716370, -99.733544),  # F
}
_ATOMREF = torch.zeros(10, 4, dtype=torch.float64)
for _z, _e in ATOMREF.items():
    _ATOMREF[_z] = torch.tensor(_e, dtype=torch.float64)

NODE_FEATURES = ("is_H", "is_C", "is_N", "is_O", "is_F", "Z",
                 "degree0", "degree1", "degree2", "degree3", "degree4+", "num_H")  # fmt: skip
EDGE_FEATURES = ("distance", "bonded")
# Covalent radii in Å (Cordero et al., Dalton Trans. 2008); i~j bonded if d < 1.3 (r_i + r_j).
_COVALENT = torch.zeros(10)
_COVALENT[torch.tensor([1, 6, 7, 8, 9])] = torch.tensor([0.31, 0.76, 0.71, 0.66, 0.57])
BOND_FACTOR = 1.3
_ELEMENT_INDEX = torch.zeros(10, dtype=torch.long)
_ELEMENT_INDEX[torch.tensor([1, 6, 7, 8, 9])] = torch.arange(5)

_CACHE_VERSION = 1
_RAW_KEYS = ("z", "pos", "ptr", "props", "gdb_idx")


def qm9_targets(raw: dict[str, torch.Tensor]) -> torch.Tensor:
    r"""The ``[M, 11]`` float64 target table (stored units, see module docstring) of a raw record.

    .. math:: E^{at}_m = \big(E_m - \sum_{i \in m} E_{ref}(Z_i)\big) · 27.211386246

    Example:
        >>> raw = {"z": torch.tensor([6, 1, 1, 1, 1], dtype=torch.int8),
        ...        "ptr": torch.tensor([0, 5]),
        ...        "props": torch.tensor([[157.7, 157.7, 157.7, 0., 13.21, -0.3877, 0.1171,
        ...                                0.5048, 35.3641, 0.044749, -40.47893, -40.476062,
        ...                                -40.475117, -40.498597, 6.469]], dtype=torch.float64)}
        >>> round(float(qm9_targets(raw)[0, 6]), 3)  # U0 atomization of CH4 in eV
        -17.172
    """
    props, z, ptr = raw["props"], raw["z"].long(), raw["ptr"]
    counts = ptr[1:] - ptr[:-1]
    mol = torch.repeat_interleave(torch.arange(len(counts)), counts)
    ref = torch.zeros(len(counts), 4, dtype=torch.float64).index_add_(0, mol, _ATOMREF[z])
    atomization = props[:, 10:14] - ref
    h = HARTREE_TO_EV
    return torch.cat(
        [
            props[:, 3:5],  # mu, alpha
            props[:, 5:7] * h,  # homo, lumo
            props[:, 8:9],  # r2
            props[:, 9:10] * h,  # zpve
            atomization * h,  # U0, U, H, G
            props[:, 14:15],  # cv
        ],
        1,
    )


def qm9_split(n: int, split: str) -> torch.Tensor:
    """Row indices of ``split`` ∈ {train, val, test, all} of an ``n``-molecule QM9.

    test = perm[:n_e], val = perm[n_e:2n_e], train = the rest, with
    ``perm = randperm(n, generator=manual_seed(SPLIT_SEED))`` and n_e = 10,000 (or ⌊n/10⌋
    for a small copy with fewer than 30,000 molecules).

    Example:
        >>> [len(qm9_split(130831, s)) for s in ("train", "val", "test")]
        [110831, 10000, 10000]
    """
    if split == "all":
        return torch.arange(n)
    n_eval = N_TEST if n >= 3 * N_TEST else n // 10
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    parts = {"test": perm[:n_eval], "val": perm[n_eval : 2 * n_eval], "train": perm[2 * n_eval :]}
    if split not in parts:
        raise ValueError(f"QM9 split must be one of train, val, test, all; got {split!r}")
    return parts[split]


def _read_raw(
    source: str, root: str | os.PathLike[str] | None, cache: bool, cache_dir: str | None
) -> tuple[dict[str, torch.Tensor], Path | None]:
    """Read (or load from cache) the raw CSR record of one source, and its cache path."""
    readers = {"qm9pack": read_qm9pack, "xyz": read_xyz_dir, "pyg": read_pyg_raw}
    if source not in readers:
        raise ValueError(f"QM9 source must be one of {sorted(readers)}; got {source!r}")
    if source == "qm9pack":
        directory = default_cache_dir(cache_dir if cache_dir is not None else root)
        name = "qm9_qm9pack"
    else:
        if root is None:
            raise ValueError(f"QM9 source={source!r} needs root= (the directory of your copy)")
        directory = default_cache_dir(cache_dir)
        key = hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:10]
        name = f"qm9_{source}_{key}"
    path = directory / f"{name}_v{_CACHE_VERSION}.pt"
    if cache:
        data = load_tensors(path, _RAW_KEYS)
        if data is not None:
            return data, path
    raw = readers[source]() if source == "qm9pack" else readers[source](root)
    if cache and not save_tensors(path, raw):
        return raw, None
    return raw, path if cache else None


def _cached_descriptor(
    raw: dict[str, torch.Tensor], path: Path | None, build: bool
) -> torch.Tensor | None:
    """The descriptor table of every molecule from its cache file (next to the raw cache).

    If there is no valid cached table: build, cache and return it when ``build``, else None.
    """
    if path is None:
        return descriptor(raw["z"], raw["pos"], raw["ptr"]) if build else None
    dpath = path.with_name(path.stem + "_descriptor.pt")
    data = load_tensors(dpath, ("x",))
    if data is not None and data["x"].shape == (len(raw["ptr"]) - 1, DESCRIPTOR_DIM):
        return data["x"]
    if not build:
        return None
    x = descriptor(raw["z"], raw["pos"], raw["ptr"])
    save_tensors(dpath, {"x": x})
    return x


def molecule_descriptor(
    z: torch.Tensor, pos: torch.Tensor, ptr: torch.Tensor, mol: torch.Tensor
) -> torch.Tensor:
    """The raw ``[len(mol), 169]`` descriptor of the molecules ``mol`` of a CSR record.

    Example:
        >>> z = torch.tensor([1, 1, 6, 1, 1, 1, 1])
        >>> pos = torch.randn(7, 3)
        >>> molecule_descriptor(z, pos, torch.tensor([0, 2, 7]), torch.tensor([1]))[0, 29:31]
        tensor([4., 1.])
    """
    atoms, counts = csr_gather(ptr, mol)
    sub_ptr = torch.zeros(len(mol) + 1, dtype=torch.long)
    torch.cumsum(counts, 0, out=sub_ptr[1:])
    return descriptor(z[atoms], pos[atoms], sub_ptr)


def task_columns(tasks: Sequence[str] | str | None) -> list[int]:
    """Columns of :data:`TARGETS` of a task selection (``None``: all 11), in the order of TARGETS.

    ``tasks`` is a sequence of names or one comma-separated string (``--data tasks=mu,U0``).

    Example:
        >>> task_columns(["U0", "mu"]), task_columns("homo,lumo"), len(task_columns(None))
        ([0, 6], [2, 3], 11)
        >>> task_columns(["U0", "energy"])
        Traceback (most recent call last):
        ...
        ValueError: unknown QM9 task(s) ['energy']; valid: mu, alpha, homo, lumo, r2, zpve, U0, U, H, G, cv
    """
    if tasks is None:
        return list(range(len(TARGETS)))
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    unknown = [t for t in names if t not in TARGETS]
    if unknown:
        raise ValueError(f"unknown QM9 task(s) {unknown}; valid: {', '.join(TARGETS)}")
    if not names or len(set(names)) != len(names):
        raise ValueError(f"QM9 tasks must be distinct names, at least one; got {names}")
    return sorted(TARGETS.index(t) for t in names)


class QM9:
    """One split of QM9, indexed by batches of molecules (see module docstring for targets).

    Attributes:
        tasks: the target names, :data:`TARGETS` or the ``tasks`` selection (in TARGETS' order).
        task_info: per task, MAE (lower is better) in the reported unit.
        units, report_units: per-task stored and reported units; ``report_scale`` [T].
        target_mean, target_std: float64 [T] train statistics in stored units.
        mae_scale: float32 [T], ``target_std * report_scale``.
        targets: float64 [n, T] un-normalised targets of this split (stored units).
        gdb_idx: long [n] GDB-9 index of each row.

    Batches (``ds[index]``):

    * ``representation="graph"``: ``TensorDict(batch_size=[])`` with ``z`` long [N],
      ``pos`` float32 [N, 3] (Å), ``node_attr`` float32 [N, 12] (:data:`NODE_FEATURES`),
      ``edge_index`` long [2, E] (directed, both directions, batch node numbering),
      ``edge_attr`` float32 [E, 2 + rbf] (distance in Å, covalent-bond flag, then ``rbf``
      Gaussians of the distance), ``graph`` long [N] (molecule 0..B-1 of each node, sorted),
      ``num_atoms`` long [B], ``y`` float32 [B, 11] (normalised).
    * ``representation="descriptor"``: ``TensorDict(batch_size=[B])`` with ``x`` float32
      [B, 169] and ``y``; ``x`` is the :mod:`qm9_descriptor` standardised with the mean/std
      (``x_mean``, ``x_std``) of the first 10,000 train molecules (a random sample, the same
      for every split); ``scaling="asinh"`` and ``clip=c`` bound its outlying tails
      (:func:`~fmtl.data.qm9_descriptor.fit_scaling`; the statistics are the same train rows).

    ``tasks`` keeps a subset of the 11 targets (e.g. one of the nearly identical energies
    U0/U/H/G): ``y``, the metrics and the losses then have T < 11 columns.

    Edges: ``edges="complete"`` (default, Nash-MTL's ``Complete`` transform: every ordered
    pair of distinct atoms of a molecule), ``"cutoff"`` (pairs closer than ``cutoff`` Å) or
    ``"bonds"`` (pairs with d < 1.3 (r_cov,i + r_cov,j)).
    """

    def __init__(
        self,
        raw: dict[str, torch.Tensor],
        split: str = "train",
        *,
        representation: str = "graph",
        subset: int | None = None,
        edges: str = "complete",
        cutoff: float = 5.0,
        rbf: int = 0,
        descriptor_table: torch.Tensor | None = None,
        scaling: str = "standard",
        clip: float | None = None,
        tasks: Sequence[str] | str | None = None,
    ) -> None:
        if representation not in ("graph", "descriptor"):
            raise ValueError(
                f"representation must be 'graph' or 'descriptor'; got {representation!r}"
            )
        if representation == "graph" and (scaling != "standard" or clip is not None):
            raise ValueError("scaling and clip apply to representation='descriptor' only")
        check_scaling(scaling, clip)  # before any descriptor is computed
        cols = task_columns(tasks)
        if edges not in ("complete", "cutoff", "bonds"):
            raise ValueError(f"edges must be 'complete', 'cutoff' or 'bonds'; got {edges!r}")
        n_mol = len(raw["ptr"]) - 1
        all_targets = qm9_targets(raw)[:, cols]
        train = qm9_split(n_mol, "train")
        self.target_mean = all_targets[train].mean(0)
        self.target_std = all_targets[train].std(0)
        rows = qm9_split(n_mol, split)
        if subset is not None:
            rows = rows[:subset]
        self.split, self.representation, self.edges = split, representation, edges
        self.cutoff, self.rbf = float(cutoff), int(rbf)
        self.mol = rows
        self.z, self.pos, self.ptr = raw["z"], raw["pos"], raw["ptr"]
        self.gdb_idx = raw["gdb_idx"][rows]
        self.targets = all_targets[rows]
        self.y = ((self.targets - self.target_mean) / self.target_std).float()
        self.report_scale = REPORT_SCALE[cols].clone()
        self.mae_scale = (self.target_std * self.report_scale.double()).float()
        self.tasks = tuple(TARGETS[c] for c in cols)
        self.units = tuple(UNITS[c] for c in cols)
        self.report_units = tuple(REPORT_UNITS[c] for c in cols)
        self.task_info = {
            t: TaskInfo("regression", ("mae",), (False,), unit=u)
            for t, u in zip(self.tasks, self.report_units, strict=True)
        }
        self.x: torch.Tensor | None = None
        if representation == "descriptor":
            stats_rows = train[:DESCRIPTOR_STATS_ROWS]
            if descriptor_table is not None:
                stats, x = descriptor_table[stats_rows], descriptor_table[rows]
            else:
                stats = molecule_descriptor(self.z, self.pos, self.ptr, stats_rows)
                x = molecule_descriptor(self.z, self.pos, self.ptr, rows)
            self.scaling = fit_scaling(stats, scaling, clip)
            self.x_mean, self.x_std = self.scaling.mean, self.scaling.std
            self.x = self.scaling(x)

    def __len__(self) -> int:
        return len(self.mol)

    def __repr__(self) -> str:
        return f"QM9(split={self.split!r}, n={len(self)}, representation={self.representation!r})"

    @property
    def num_node_features(self) -> int:
        """F of ``node_attr`` (12)."""
        return len(NODE_FEATURES)

    @property
    def num_edge_features(self) -> int:
        """Fe of ``edge_attr`` (2 + rbf)."""
        return len(EDGE_FEATURES) + self.rbf

    @property
    def num_features(self) -> int:
        """D of the descriptor ``x`` (169)."""
        return DESCRIPTOR_DIM

    def denormalize(self, y: torch.Tensor) -> torch.Tensor:
        """Normalised ``[..., T]`` values → stored units: ``y · std + mean``."""
        return y.double() * self.target_std + self.target_mean

    def to_report_units(self, y: torch.Tensor) -> torch.Tensor:
        """Normalised ``[..., T]`` values → the paper's units (meV for the energies)."""
        return self.denormalize(y) * self.report_scale.double()

    def mae(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-task MAE ``[T]`` (float64) in the paper's units of normalised ``pred``/``y`` ``[B, T]``."""
        return mae(pred, y, self.mae_scale)

    def __getitem__(self, index: Index) -> TensorDict:
        rows = as_index(index, len(self))
        y = self.y[rows]
        if self.representation == "descriptor":
            assert self.x is not None
            return TensorDict({"x": self.x[rows], "y": y}, batch_size=[len(rows)])
        return self._graph_batch(self.mol[rows], y)

    def _graph_batch(self, mol: torch.Tensor, y: torch.Tensor) -> TensorDict:
        atoms, counts = csr_gather(self.ptr, mol)
        n = len(atoms)
        z = self.z[atoms].long()
        pos = self.pos[atoms]
        graph = torch.repeat_interleave(torch.arange(len(mol)), counts, output_size=n)
        src, dst = complete_pairs(counts)
        dist = (pos[src] - pos[dst]).norm(dim=-1)
        bonded = dist < BOND_FACTOR * (_COVALENT[z[src]] + _COVALENT[z[dst]])
        degree = torch.bincount(src[bonded], minlength=n)
        num_h = torch.bincount(src[bonded & (z[dst] == 1)], minlength=n)
        node_attr = torch.cat(
            [
                torch.nn.functional.one_hot(_ELEMENT_INDEX[z], 5).float(),
                z[:, None].float(),
                torch.nn.functional.one_hot(degree.clamp_max(4), 5).float(),
                num_h[:, None].float(),
            ],
            1,
        )
        keep = None
        if self.edges == "cutoff":
            keep = dist < self.cutoff
        elif self.edges == "bonds":
            keep = bonded
        if keep is not None:
            src, dst, dist, bonded = src[keep], dst[keep], dist[keep], bonded[keep]
        feats = [dist[:, None], bonded[:, None].float()]
        if self.rbf:
            centres = torch.linspace(0.0, self.cutoff, self.rbf)
            width = self.cutoff / max(self.rbf - 1, 1)
            feats.append(torch.exp(-(((dist[:, None] - centres) / width) ** 2)))
        return TensorDict(
            {
                "z": z,
                "pos": pos,
                "node_attr": node_attr,
                "edge_index": torch.stack([src, dst]),
                "edge_attr": torch.cat(feats, 1),
                "graph": graph,
                "num_atoms": counts,
                "y": y,
            },
            batch_size=[],
        )


def load_qm9(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    *,
    representation: str = "graph",
    subset: int | None = None,
    source: str = "qm9pack",
    edges: str = "complete",
    cutoff: float = 5.0,
    rbf: int = 0,
    scaling: str = "standard",
    clip: float | None = None,
    tasks: Sequence[str] | str | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> QM9:
    """Load one split of QM9 (parsing once, then from a ``.pt`` cache).

    Args:
        split: ``"train"`` (110,831), ``"val"`` (10,000), ``"test"`` (10,000) or ``"all"``.
        root: for ``source="qm9pack"`` the cache directory (default ``$FMTL_CACHE`` or
            ``~/.cache/fmtl``); for ``"xyz"``/``"pyg"`` the directory of your copy.
        representation: ``"graph"`` or ``"descriptor"`` (see :class:`QM9`).
        subset: keep only the first ``subset`` rows of the split (descriptors are then computed
            for just those rows and the statistics rows, unless a cached table exists).
        source: ``"qm9pack"`` (the ``[data]`` extra), ``"xyz"`` (a directory of
            ``dsgdb9nsd_*.xyz``) or ``"pyg"`` (``root/raw/gdb9.sdf{,.csv}``).
        edges, cutoff, rbf: graph edges and edge features (see :class:`QM9`).
        scaling, clip: descriptor input scaling, ``"standard"`` or ``"asinh"``, then an
            optional clamp to ±``clip`` (see :class:`QM9`; the cache holds the raw descriptors,
            so every scaling reads the same cache file).
        tasks: a subset of :data:`TARGETS` (names, or one comma-separated string).
        cache: read/write the cache; a corrupt cache file is rebuilt (with a warning).
        cache_dir: where caches live (overrides the defaults above).

    Example:
        >>> ds = load_qm9("val", subset=4)  # doctest: +SKIP
        >>> ds[[0, 1]]["y"].shape  # doctest: +SKIP
        torch.Size([2, 11])
    """
    task_columns(tasks)  # bad names fail before any file is read
    raw, path = _read_raw(source, root, cache, None if cache_dir is None else str(cache_dir))
    table = None
    if representation == "descriptor":  # the full table is built (and cached) unless subset
        table = _cached_descriptor(raw, path, build=subset is None)
    return QM9(
        raw,
        split,
        representation=representation,
        subset=subset,
        edges=edges,
        cutoff=cutoff,
        rbf=rbf,
        descriptor_table=table,
        scaling=scaling,
        clip=clip,
        tasks=tasks,
    )

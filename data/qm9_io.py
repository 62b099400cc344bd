"""Readers for the three on-disk forms of QM9, all returning the same raw CSR record.

A raw record is a dict of tensors describing M molecules with A atoms in total:

* ``z`` int8 ``[A]`` atomic numbers (H=1, C=6, N=7, O=8, F=9), molecule by molecule;
* ``pos`` float32 ``[A, 3]`` coordinates in Å;
* ``ptr`` int64 ``[M+1]`` CSR offsets: molecule m owns atoms ``ptr[m]:ptr[m+1]``;
* ``props`` float64 ``[M, 15]`` the QM9 properties in the original (XYZ-file) units and order
  :data:`PROPS` — rotational constants A, B, C (GHz), μ (D), α (a0³), ε_HOMO, ε_LUMO, gap
  (Hartree), ⟨R²⟩ (a0²), ZPVE, U0, U, H, G (Hartree), c_v (cal/mol K);
* ``gdb_idx`` int64 ``[M]`` the 1-based GDB-9 index (``dsgdb9nsd_000001.xyz`` is 1).

Sources: the ``qm9pack`` wheel's CSV files (read by path, the package is never imported), a
directory of the original ``dsgdb9nsd_*.xyz`` files, and PyTorch Geometric's raw layout
(``raw/gdb9.sdf`` + ``raw/gdb9.sdf.csv`` [+ ``raw/uncharacterized.txt``]).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import torch

from .package_data import package_dir

__all__ = ["PROPS", "ELEMENTS", "qm9pack_dir", "read_qm9pack", "read_xyz_dir", "read_pyg_raw"]

PROPS = ("A", "B", "C", "mu", "alpha", "homo", "lumo", "gap", "r2", "zpve",
         "U0", "U", "H", "G", "cv")  # fmt: skip
ELEMENTS = ("H", "C", "N", "O", "F")
_Z = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
_CSV_COLUMNS = (
    "RotA_GHz", "RotB_GHz", "RotC_GHz", "Dipole_debye", "Polarizability_bohr3", "HOMO_au",
    "LUMO_au", "HOMO_LUMO_gap_au", "R2_bohr2", "ZPVE_au", "InternalEnergy_0K_au",
    "InternalEnergy_298K_au", "Enthalphy_298K_au", "GibbsFreeEnergy_298K_au",
    "Heatcapacity_Cv_cal_mol_K",
)  # fmt: skip
_PYG_COLUMNS = ("A", "B", "C", "mu", "alpha", "homo", "lumo", "gap", "r2", "zpve",
                "u0", "u298", "h298", "g298", "cv")  # fmt: skip
_INSTALL_HINT = (
    'QM9 needs the qm9pack package: pip install -e ".[data]" (or pip install qm9pack==1.0.3)'
)


def _record(
    z: np.ndarray, pos: np.ndarray, counts: np.ndarray, props: np.ndarray, gdb: np.ndarray
) -> dict[str, torch.Tensor]:
    ptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    if ptr[-1] != len(z) or pos.shape != (len(z), 3) or props.shape != (len(counts), 15):
        raise ValueError("QM9: inconsistent atom counts, coordinates or properties")
    return {
        "z": torch.from_numpy(np.ascontiguousarray(z, dtype=np.int8)),
        "pos": torch.from_numpy(np.ascontiguousarray(pos, dtype=np.float32)),
        "ptr": torch.from_numpy(ptr),
        "props": torch.from_numpy(np.ascontiguousarray(props, dtype=np.float64)),
        "gdb_idx": torch.from_numpy(np.ascontiguousarray(gdb, dtype=np.int64)),
    }


def _symbols_to_z(symbols: str) -> np.ndarray:
    """Atomic numbers of a string of one-letter element symbols (``"CHHHH"``)."""
    table = np.zeros(256, dtype=np.int8)
    for sym, z in _Z.items():
        table[ord(sym)] = z
    z = table[np.frombuffer(symbols.encode("ascii"), dtype=np.uint8)]
    if (z == 0).any():
        raise ValueError("QM9: unknown element symbol (expected only H, C, N, O, F)")
    return z


def _floats(text: str) -> np.ndarray:
    """Parse comma-separated floats, accepting brackets/spaces and Mathematica's ``*^``."""
    cleaned = text.translate(str.maketrans("[]", ",,", " \n\t")).replace("*^", "e")
    return np.array([float(t) for t in cleaned.split(",") if t], dtype=np.float64)


def qm9pack_dir() -> Path:
    """The ``data/`` directory of the installed ``qm9pack`` (found by path, not imported).

    Raises:
        ModuleNotFoundError: if qm9pack is not installed (with the install command).

    Example:
        >>> qm9pack_dir().name  # doctest: +SKIP
        'data'
    """
    return package_dir("qm9pack", _INSTALL_HINT) / "data"


def read_qm9pack(directory: str | Path | None = None) -> dict[str, torch.Tensor]:
    """Parse ``qm9_part{1,2,3}.csv`` of qm9pack 1.0.3 (130,831 characterised molecules).

    Columns used: ``Index`` (GDB index), ``Elements`` (``['C','H',...]``), ``XYZ_Ang``
    (``[[x,y,z],...]`` in Å) and the 15 property columns (Hartree / D / a0 units, exactly as
    in the original XYZ files). Vectorized: all coordinates are parsed by one ``np.fromstring``.

    Example:
        >>> rec = read_qm9pack()  # doctest: +SKIP
        >>> rec["ptr"].numel() - 1  # doctest: +SKIP
        130831
    """
    directory = Path(directory) if directory is not None else qm9pack_dir()
    paths = [directory / f"qm9_part{i}.csv" for i in (1, 2, 3)]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"QM9: expected {p} ({_INSTALL_HINT})")
    csv.field_size_limit(sys.maxsize)
    rows: list[list[str]] = []
    header: list[str] = []
    for p in paths:
        with p.open(newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            rows.extend(reader)
    col = {name: i for i, name in enumerate(header)}
    ix, ie, ip = col["Index"], col["Elements"], col["XYZ_Ang"]
    symbols = "".join(r[ie] for r in rows).translate(str.maketrans("", "", "[]', "))
    z = _symbols_to_z(symbols)
    coords = ",".join(r[ip] for r in rows).translate(str.maketrans("[]", "  ")).replace("*^", "e")
    pos = np.fromstring(coords, sep=",").reshape(-1, 3)
    counts = np.array([int(r[col["N_atoms"]]) for r in rows], dtype=np.int64)
    pc = [col[c] for c in _CSV_COLUMNS]
    props = np.array([[r[c] for c in pc] for r in rows], dtype=np.float64)
    gdb = np.array([int(r[ix]) for r in rows], dtype=np.int64)
    return _record(z, pos, counts, props, gdb)


def _uncharacterized(path: Path) -> set[int]:
    """GDB indices listed in ``uncharacterized.txt`` (rows whose first token is an integer).

    An absent file means nothing is skipped.
    """
    out: set[int] = set()
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        tok = line.split()
        if len(tok) >= 2 and tok[0].isdigit():
            out.add(int(tok[0]))
    return out


def read_xyz_dir(root: str | Path) -> dict[str, torch.Tensor]:
    """Parse a directory of the original ``dsgdb9nsd_*.xyz`` files (sorted by name).

    XYZ layout per file: line 1 ``n_atoms``; line 2 ``gdb <idx> A B C μ α ε_HOMO ε_LUMO gap
    ⟨R²⟩ ZPVE U0 U H G c_v``; then n atom lines ``symbol x y z mulliken`` (numbers may use
    ``*^`` for the exponent). If ``root/uncharacterized.txt`` exists, its molecules are dropped
    (as PyG does).

    Raises:
        FileNotFoundError: if ``root`` holds no ``dsgdb9nsd_*.xyz`` file.

    Example:
        >>> rec = read_xyz_dir("/path/to/qm9_xyz")  # doctest: +SKIP
    """
    root = Path(root)
    files = sorted(root.glob("dsgdb9nsd_*.xyz"))
    if not files:
        raise FileNotFoundError(f"QM9: no dsgdb9nsd_*.xyz files in {root}")
    skip = _uncharacterized(root / "uncharacterized.txt")
    syms: list[str] = []
    coords: list[str] = []
    counts: list[int] = []
    props: list[np.ndarray] = []
    gdb: list[int] = []
    for path in files:
        lines = path.read_text().splitlines()
        n = int(lines[0].split()[0])
        head = lines[1].split()
        if int(head[1]) in skip:
            continue
        gdb.append(int(head[1]))
        props.append(_floats(",".join(head[2:17])))
        for line in lines[2 : 2 + n]:
            tok = line.split()
            syms.append(tok[0])
            coords.append(",".join(tok[1:4]))
        counts.append(n)
    pos = _floats(",".join(coords)).reshape(-1, 3)
    return _record(
        _symbols_to_z("".join(syms)), pos, np.array(counts), np.stack(props), np.array(gdb)
    )


def read_pyg_raw(root: str | Path) -> dict[str, torch.Tensor]:
    """Parse PyTorch Geometric's raw QM9 files under ``root/raw``.

    Reads atoms and coordinates from ``gdb9.sdf`` (V2000 mol blocks separated by ``$$$$``),
    properties from ``gdb9.sdf.csv`` (columns ``mol_id,A,B,C,mu,...,cv``; Hartree units), and
    drops the molecules of ``uncharacterized.txt`` when that file is present.

    Raises:
        FileNotFoundError: naming the first missing file.

    Example:
        >>> rec = read_pyg_raw("/path/to/QM9")  # doctest: +SKIP
    """
    raw = Path(root) / "raw"
    sdf, table = raw / "gdb9.sdf", raw / "gdb9.sdf.csv"
    for p in (sdf, table):
        if not p.is_file():
            raise FileNotFoundError(f"QM9 (PyG layout): expected {p}")
    with table.open(newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader)]
        rows = [r for r in reader if r]
    col = {name: i for i, name in enumerate(header)}
    gdb_all = np.array([int(r[0].split("_")[-1]) for r in rows], dtype=np.int64)
    props_all = np.array([[r[col[c]] for c in _PYG_COLUMNS] for r in rows], dtype=np.float64)
    blocks = [b for b in sdf.read_text().split("$$$$") if b.strip()]
    if len(blocks) != len(rows):
        raise ValueError(f"QM9: {sdf} has {len(blocks)} molecules but {table} has {len(rows)}")
    skip = _uncharacterized(raw / "uncharacterized.txt")
    keep = np.array([g not in skip for g in gdb_all], dtype=bool)
    syms: list[str] = []
    coords: list[str] = []
    counts: list[int] = []
    for block, k in zip(blocks, keep, strict=True):
        if not k:
            continue
        lines = block.removeprefix("\r\n").removeprefix("\n").splitlines()
        n = int(lines[3][:3])
        for line in lines[4 : 4 + n]:
            tok = line.split()
            coords.append(",".join(tok[:3]))
            syms.append(tok[3])
        counts.append(n)
    pos = _floats(",".join(coords)).reshape(-1, 3)
    return _record(
        _symbols_to_z("".join(syms)), pos, np.array(counts), props_all[keep], gdb_all[keep]
    )

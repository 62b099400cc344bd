"""Run directories: whether one holds this run, another run, or nothing; and where the STL reference is.

An output directory holds at most one run, identified by its resolved ``config.toml``:

* no run there → train;
* the same configuration, finished (``results.json``) → reuse it (``fmtl compare`` relies on it);
* the same configuration, unfinished → refuse unless ``--resume`` (or ``--overwrite``);
* a different configuration → refuse unless ``--overwrite`` (which deletes only fmtl's files).

"The same configuration" is :func:`fmtl.train.config.differences` being empty (``epochs`` may
grow on resume). Δp needs STL metrics. Unless ``--stl DIR`` names a finished STL run (or
``--stl none`` turns Δp off), the STL ensemble of the same benchmark, seed and training settings
is trained first into a sibling directory named after a hash of its configuration
(:func:`default_stl_dir`), and reused by every later run with the same settings.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import atomic
from .config import DEFAULTS, RESUMABLE, differences, dumps, load_toml, merge, tomllib
from .problems import label, resolve
from .selection import stl_reference

__all__ = ["RunDirError", "CHECKPOINT", "METRICS", "RESULTS", "CONFIG", "OWNED", "normalize", "read_config",
           "read_results", "prepare", "stl_config", "default_stl_dir", "default_out", "find_stl",
           "remove_stale_temps"]  # fmt: skip

CHECKPOINT, METRICS, RESULTS, CONFIG = "checkpoint.pt", "metrics.jsonl", "results.json", "config.toml"
#: What ``--overwrite`` deletes: fmtl's own files only.
OWNED = (CONFIG, METRICS, RESULTS, CHECKPOINT, "plots", "tensorboard")


class RunDirError(ValueError):
    """The output directory holds a different (or unfinished) run."""


def normalize(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration as it reads back from ``config.toml`` (so saved and new ones compare equal).

    Example:
        >>> normalize({**DEFAULTS, "benchmark": "synthetic", "model": {"hidden": (8,)}})["model"]
        {'hidden': [8]}
    """
    return resolve(merge(DEFAULTS, tomllib.loads(dumps(cfg))))


def read_config(out: str | Path) -> dict[str, Any]:
    """The resolved configuration saved in ``out/config.toml``."""
    path = Path(out) / CONFIG
    if not path.is_file():
        raise RunDirError(f"{out} holds no run ({CONFIG} is missing)")
    return normalize(load_toml(path))


def read_results(out: str | Path) -> dict[str, Any]:
    """The ``results.json`` of a finished run."""
    return json.loads((Path(out) / RESULTS).read_text())


def remove_stale_temps(out: str | Path) -> list[str]:
    """Deletes the temporary files a killed run leaves in ``out`` (``.checkpoint.pt.*.tmp``, ``.config.toml.tmp``, …).

    A write goes to such a file, then is renamed over its target; one that is still there
    when a run starts was never renamed: the process that wrote it died. Returns their names.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / ".checkpoint.pt.x1y2.tmp").write_bytes(b"half")
        >>> remove_stale_temps(d), list(d.iterdir())
        (['.checkpoint.pt.x1y2.tmp'], [])
    """
    out = Path(out)
    stale = [tmp for name in (CHECKPOINT, CONFIG, METRICS, RESULTS) for tmp in atomic.temporary_files(out / name)]
    removed = []
    for tmp in stale:
        if tmp.is_file():
            tmp.unlink()
            removed.append(tmp.name)
    return removed


def _clean(out: Path) -> None:
    for name in OWNED:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    remove_stale_temps(out)


def prepare(out: str | Path, cfg: Mapping[str, Any], *, resume: bool = False, overwrite: bool = False) -> str:
    """What to do with ``out`` for the run ``cfg``: ``"new"``, ``"resume"`` or ``"finished"``.

    Raises :class:`RunDirError` when ``out`` holds another run or an unfinished one (without
    ``resume``). ``overwrite`` deletes fmtl's files in ``out`` first.

    Example:
        >>> import tempfile
        >>> cfg = normalize({**DEFAULTS, "benchmark": "synthetic"})
        >>> prepare(tempfile.mkdtemp(), cfg)
        'new'
    """
    out = Path(out)
    if overwrite and out.exists():
        _clean(out)
    elif out.is_dir():
        remove_stale_temps(out)  # left by a killed run (safe while one process writes a directory)
    if not (out / CONFIG).exists():
        leftovers = [n for n in (CHECKPOINT, METRICS, RESULTS) if (out / n).exists()]
        if leftovers:
            raise RunDirError(f"{out} holds {leftovers} but no {CONFIG}: not a run fmtl can identify; "
                              "use --overwrite or another --out")  # fmt: skip
        return "new"
    saved = read_config(out)
    new = normalize(cfg)
    diff = differences(saved, new, ignore=RESUMABLE if resume else ())
    if diff:
        raise RunDirError(f"{out} holds a different run (settings that differ: {diff}); use --overwrite to "
                          "replace it, or choose another --out")  # fmt: skip
    if (out / RESULTS).exists() and saved["epochs"] == new["epochs"]:
        return "finished"
    if not resume:
        raise RunDirError(f"{out} holds an unfinished run of this configuration; continue it with "
                          f"--resume {out}, or start over with --overwrite")  # fmt: skip
    return "resume"


def stl_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The STL run that serves as the Δp reference of ``cfg``: same settings, method ``stl``.

    Example:
        >>> stl_config({"method": "dbmtl", "opts": {"beta": 0.5}, "seed": 1})
        {'method': 'stl', 'opts': {}, 'seed': 1}
    """
    return {**cfg, "method": "stl", "opts": {}}


def default_out(cfg: Mapping[str, Any]) -> Path:
    """``runs/<problem>-<method>-seed<S>``.

    Example:
        >>> str(default_out({"benchmark": "/x/p.py:make", "method": "ew", "seed": 2}))
        'runs/make-ew-seed2'
    """
    return Path("runs") / f"{label(cfg['benchmark'])}-{cfg['method']}-seed{cfg['seed']}"


def default_stl_dir(out: str | Path, cfg: Mapping[str, Any]) -> Path:
    """``<out's parent>/<problem>-stl-seed<S>-<hash of the STL configuration>``.

    Example:
        >>> default_stl_dir("runs/x", normalize({**DEFAULTS, "benchmark": "synthetic"})).name
        'synthetic-stl-seed0-...'
    """
    scfg = normalize(stl_config(cfg))
    digest = hashlib.sha1(json.dumps(scfg, sort_keys=True).encode()).hexdigest()[:8]
    return Path(out).resolve().parent / f"{label(scfg['benchmark'])}-stl-seed{scfg['seed']}-{digest}"


def find_stl(cfg: Mapping[str, Any], out: str | Path, stl: str | None) -> tuple[dict | None, Path | None, str]:
    """Where the STL reference of ``cfg`` comes from: ``(reference, directory, what to do)``.

    Args:
        stl: ``None`` (the default STL run next to ``out``), ``"none"`` (no Δp), or a directory
            holding a finished STL run of the same benchmark.

    Returns:
        ``(reference metrics or None, its directory or None, todo)`` with ``todo`` one of
        ``"none"`` (no reference wanted), ``"finished"`` (the reference is there), ``"new"`` or
        ``"resume"`` (the default STL run must be trained into the directory first).
    """
    if cfg["method"] == "stl" or (stl is not None and stl.lower() == "none"):
        return None, None, "none"
    if stl is not None:
        d = Path(stl)
        if not (d / RESULTS).is_file():
            raise RunDirError(f"--stl {stl}: no finished run there ({RESULTS} is missing)")
        res = read_results(d)
        if res.get("method") != "stl" or res.get("benchmark") != cfg["benchmark"]:
            raise RunDirError(f"--stl {stl} holds a {res.get('benchmark')}/{res.get('method')} run, not STL "
                              f"on {cfg['benchmark']}")  # fmt: skip
        return stl_reference(res), d, "finished"
    d = default_stl_dir(out, cfg)
    todo = prepare(d, normalize(stl_config(cfg)), resume=True)
    return (stl_reference(read_results(d)) if todo == "finished" else None), d, todo

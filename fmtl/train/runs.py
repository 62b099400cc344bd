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

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .. import atomic
from .config import DEFAULTS, RESUMABLE, TABLES, differences, dumps, load_toml, merge, tomllib
from .problems import label, resolve
from .selection import stl_reference

__all__ = ["RunDirError", "CHECKPOINT", "BEST", "METRICS", "RESULTS", "CONFIG", "OWNED", "normalize", "read_config",
           "read_results", "prepare", "STL_IGNORES", "stl_config", "default_stl_dir", "default_out", "find_stl",
           "remove_stale_temps", "LOCK", "lock", "reference_record", "saved_stl", "stl_choice"]  # fmt: skip

CHECKPOINT, METRICS, RESULTS, CONFIG = "checkpoint.pt", "metrics.jsonl", "results.json", "config.toml"
#: The checkpoint of the selected (best validation) epoch.
BEST = "best.pt"
#: The lock file of a run directory (one writer at a time; it holds the writer's PID).
LOCK = ".lock"
#: What ``--overwrite`` deletes: fmtl's own files only.
OWNED = (CONFIG, METRICS, RESULTS, CHECKPOINT, BEST, "plots", "tensorboard")


class RunDirError(ValueError):
    """The output directory holds a different (or unfinished) run."""


def normalize(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration as it reads back from ``config.toml`` (so saved and new ones compare equal).

    Every table is present (empty when unset), so a configuration written without one and one
    with an empty one are the same run.

    Example:
        >>> normalize({**DEFAULTS, "benchmark": "synthetic", "model": {"hidden": (8,)}})["model"]
        {'hidden': [8]}
    """
    return resolve(merge({t: {} for t in TABLES}, DEFAULTS, tomllib.loads(dumps(cfg))))


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
    stale = [tmp for name in (CHECKPOINT, BEST, CONFIG, METRICS, RESULTS) for tmp in atomic.temporary_files(out / name)]
    removed = []
    for tmp in stale:
        if tmp.is_file():
            tmp.unlink()
            removed.append(tmp.name)
    return removed


@contextlib.contextmanager
def lock(out: str | Path) -> Iterator[Path]:
    """Holds the run directory ``out`` for this process (``fcntl.flock`` on ``out/.lock``; creates ``out``).

    A directory it created is removed again when the run wrote nothing into it (bad input found late,
    e.g. a dataset root of the wrong layout, leaves no directory behind).

    A second process (another ``fmtl train`` into the same ``--out``) gets a :class:`RunDirError`
    naming the holder's PID. The lock goes with the process: a killed run leaves no stale lock.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> with lock(d):
        ...     with lock(d):
        ...         pass
        Traceback (most recent call last):
        ...
        fmtl.train.runs.RunDirError: ... is being written by another fmtl process (PID ...); ...
    """
    out = Path(out)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise RunDirError(f"cannot create the run directory {out}: {e.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunDirError(f"{out} is being written by another fmtl process (PID {holder}); wait for it "
                              "to finish, or choose another --out") from None  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield out
        finally:
            if created and os.listdir(out) == [LOCK]:  # a run that failed before writing anything leaves nothing
                os.unlink(out / LOCK)
                os.rmdir(out)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def reference_record(stl_dir: str | Path | None) -> dict[str, Any]:
    """The record-only table of ``config.toml`` that remembers the run's STL reference (``"none"``: no Δp).

    Example:
        >>> reference_record(None)
        {'reference': {'stl': 'none'}}
    """
    return {"reference": {"stl": "none" if stl_dir is None else str(Path(stl_dir).resolve())}}


def saved_stl(out: str | Path) -> str | None:
    """The STL reference a run in ``out`` was started with (``"none"`` or a directory), or ``None`` if unknown."""
    path = Path(out) / CONFIG
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            ref = tomllib.load(f).get("reference")
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return ref.get("stl") if isinstance(ref, dict) and isinstance(ref.get("stl"), str) else None


def stl_choice(out: str | Path, stl: str | None, resume: bool) -> str | None:
    """The ``--stl`` of a run: on resume the one it was started with, and a different one is refused.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / CONFIG).write_text('method = "ew"\\n[reference]\\nstl = "none"\\n')
        >>> stl_choice(d, None, resume=True)
        'none'
        >>> stl_choice(d, "runs/stl", resume=True)
        Traceback (most recent call last):
        ...
        fmtl.train.runs.RunDirError: --stl runs/stl: the run in ... was started with --stl none; ...
    """
    saved = saved_stl(out) if resume else None
    if saved is None:
        return stl
    if stl is None:
        return saved
    same = stl.lower() == saved == "none" or (saved != "none" and stl.lower() != "none"
                                               and Path(stl).resolve() == Path(saved))  # fmt: skip
    if not same:
        raise RunDirError(f"--stl {stl}: the run in {out} was started with --stl {saved}; a resumed run keeps "
                          "its STL reference (leave --stl out, or start over with --overwrite)")  # fmt: skip
    return stl


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
        if leftovers == [METRICS]:  # a killed start (config.toml is written first now; earlier fmtl wrote it second)
            return "new"
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


#: Settings that do not change the STL ensemble's numbers (beyond rounding): its runs leave them at
#: their defaults, so runs that differ only in them share one STL reference. The ensemble is trained
#: with equal weighting, which needs no task gradients (``strategy``, ``chunk_size``, ``rep_grad``: the
#: ensemble has no encoder and heads to split, and ``--rep-grad`` would refuse it), the method's
#: hyperparameters are not its, and ``compile`` and logging change neither its steps nor its data order.
STL_IGNORES = ("opts", "compile", "strategy", "chunk_size", "rep_grad", "log_every", "checkpoint_every")


def stl_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The STL run that serves as the Δp reference of ``cfg``: method ``stl``, keyed only by what changes its numbers.

    Every setting of :data:`STL_IGNORES` is reset to its default, so ``fmtl train --compile``, a
    different ``--log-every`` or another method's ``--opt`` reuse the same STL run.

    Example:
        >>> stl_config({"method": "dbmtl", "opts": {"beta": 0.5}, "seed": 1, "compile": True})
        {'method': 'stl', 'opts': {}, 'seed': 1, 'compile': False, 'strategy': 'auto', 'chunk_size': None, \
'rep_grad': False, 'log_every': None, 'checkpoint_every': 0}
    """
    reset = {k: ({} if k == "opts" else DEFAULTS[k]) for k in STL_IGNORES}
    return {**cfg, "method": "stl", **reset}


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

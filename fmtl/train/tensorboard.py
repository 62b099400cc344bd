"""TensorBoard events of a run: every scalar of ``metrics.jsonl``, and the hyperparameters.

:func:`scalars` turns one ``metrics.jsonl`` record into ``{tag: value}``: a step record's per-task
losses, task weights, gradient norms and the T×T gradient cosines (one tag per task pair, plus
their mean) and every other number it holds (throughput, learning rate, …) under ``train/``; an
epoch record's validation and test metrics, normalized errors, Δp and training loss under
``epoch/``. Anything a later version adds to the records is logged the same way, so TensorBoard
holds what ``metrics.jsonl`` holds. :class:`TensorBoardLog` writes them (``add_scalar``) and the
run's resolved configuration with its final metrics (``add_hparams``); :func:`replay` rebuilds
the events of a finished run from its ``metrics.jsonl`` and ``results.json``.

Needs the ``tensorboard`` package: ``pip install "fmtl[tb]"``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["scalars", "hparams", "TensorBoardLog", "replay"]

_SKIP = {"type", "step", "epoch", "batch"}


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float):
        return float(v)
    return None


def _flatten(prefix: str, value: Any, out: dict[str, float]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}/{k}" if prefix else str(k), v, out)
    elif (x := _number(value)) is not None:
        out[prefix] = x


def scalars(record: Mapping[str, Any], tasks: list[str]) -> dict[str, float]:
    """``{tag: value}`` of one ``metrics.jsonl`` record (``null`` values are left out).

    Example:
        >>> rec = {"type": "step", "step": 3, "losses": {"a": 0.5, "b": None}, "samples_per_s": 100.0,
        ...        "cosine": [[1.0, 0.2], [0.2, 1.0]]}
        >>> scalars(rec, ["a", "b"])
        {'train/losses/a': 0.5, 'train/samples_per_s': 100.0, 'train/cosine/a~b': 0.2, 'train/cosine/mean': 0.2}
        >>> scalars({"type": "epoch", "epoch": 0, "val": {"metrics": {"a": {"mae": 1.5}}}, "val_delta_p": -3.0},
        ...         ["a"])
        {'epoch/val/metrics/a/mae': 1.5, 'epoch/val_delta_p': -3.0}
    """
    root = "train" if record.get("type") == "step" else "epoch"
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in _SKIP:
            continue
        if key == "cosine" and isinstance(value, list):
            pairs = [(i, j) for i in range(len(tasks)) for j in range(i + 1, len(tasks))]
            vals = {f"{root}/cosine/{tasks[i]}~{tasks[j]}": _number(value[i][j]) for i, j in pairs}
            finite = {k: v for k, v in vals.items() if v is not None and math.isfinite(v)}
            out.update(finite)
            if finite:
                out[f"{root}/cosine/mean"] = sum(finite.values()) / len(finite)
        else:
            _flatten(f"{root}/{key}", value, out)
    return out


def hparams(config: Mapping[str, Any]) -> dict[str, Any]:
    """A configuration flattened to TensorBoard hyperparameters (``opts.beta``; lists as text).

    Example:
        >>> hparams({"method": "dbmtl", "lr": 0.001, "opts": {"beta": 0.9}, "model": {"hidden": [64, 64]},
        ...          "chunk_size": None})
        {'method': 'dbmtl', 'lr': 0.001, 'opts.beta': 0.9, 'model.hidden': '[64, 64]'}
    """
    out: dict[str, Any] = {}

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, Mapping):
            for k, x in v.items():
                walk(f"{prefix}.{k}" if prefix else str(k), x)
        elif v is None:
            return
        elif isinstance(v, bool | int | float | str):
            out[prefix] = v
        else:
            out[prefix] = json.dumps(v) if isinstance(v, list | tuple) else str(v)

    walk("", config)
    return out


class TensorBoardLog:
    """Writes ``metrics.jsonl`` records and the hyperparameters as TensorBoard events in ``logdir``.

    Args:
        logdir: the events directory (``<run>/tensorboard``).
        tasks: the task names (they name the cosine tags).
        purge_step: on resume, the step of the checkpoint: events after it, which the resumed run
            writes again, are dropped (``SummaryWriter(purge_step=...)``).

    Raises:
        ModuleNotFoundError: ``tensorboard`` is not installed (the message names the extra).
    """

    def __init__(self, logdir: str | os.PathLike[str], tasks: list[str], purge_step: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ModuleNotFoundError('TensorBoard logging needs the tensorboard package: pip install "fmtl[tb]"'
                                      ) from None  # fmt: skip
        self.logdir, self.tasks = str(logdir), list(tasks)
        self.writer = SummaryWriter(self.logdir, purge_step=purge_step)

    def write(self, record: Mapping[str, Any]) -> None:
        """Logs one ``metrics.jsonl`` record at its step (header records carry no scalars)."""
        if record.get("type") not in ("step", "epoch"):
            return
        step = int(record.get("step", 0))
        for tag, value in scalars(record, self.tasks).items():
            self.writer.add_scalar(tag, value, step)

    def hparams(self, config: Mapping[str, Any], results: Mapping[str, Any]) -> None:
        """Logs the resolved configuration with the selected epoch's Δp and test metrics (``add_hparams``)."""
        sel = results.get("selected") or {}
        metrics = {f"hparam/test/{t}/{m}": v for t, ms in (sel.get("test") or {}).items() for m, v in ms.items()
                   if _number(v) is not None}  # fmt: skip
        # the test Δp of the selected epoch, and the validation score it was selected on
        for key, tag in (("delta_p", "hparam/test_delta_p"), ("score", f"hparam/{sel.get('criterion', 'score')}")):
            if _number(sel.get(key)) is not None:
                metrics[tag] = float(sel[key])
        self.writer.add_hparams(hparams(config), metrics, run_name=".")

    def close(self) -> None:
        """Flushes and closes the event files."""
        self.writer.close()


def replay(run: str | os.PathLike[str], logdir: str | os.PathLike[str] | None = None) -> Path:
    """Writes the TensorBoard events of a run from its ``metrics.jsonl`` (and ``results.json``); returns the logdir.

    Example (needs tensorboard; ``tensorboard --logdir runs`` then shows every run)::

        replay("runs/qm9-dbmtl-seed0")
    """
    from .plots import read_metrics

    run = Path(run)
    tasks, steps, epochs = read_metrics(run / "metrics.jsonl")
    out = Path(logdir) if logdir is not None else run / "tensorboard"
    log = TensorBoardLog(out, tasks)
    try:
        for record in sorted(steps + epochs, key=lambda r: (r.get("step", 0), r.get("type") == "epoch")):
            log.write(record)
        results = run / "results.json"
        if results.is_file():
            res = json.loads(results.read_text())
            log.hparams(res.get("config") or {}, res)
    finally:
        log.close()
    return out

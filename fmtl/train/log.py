"""What a run tells as it goes: ``metrics.jsonl`` (and TensorBoard), the progress bar, the epoch lines.

``metrics.jsonl`` holds one JSON record per line: a ``header`` (tasks, method, benchmark, steps
per epoch, world size), a ``step`` record every ``log_every`` steps (losses, task weights,
gradient norms, T×T cosines, samples/s) and an ``epoch`` record per epoch (validation and test
metrics, Δp, training loss, wall time). Only rank 0 writes; a resumed run first truncates the
file to its size at the checkpoint (lines written after it describe steps that are redone).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .runs import METRICS

__all__ = ["Log", "progress", "say", "short", "floats"]


def floats(x: torch.Tensor) -> list:
    """A 0-, 1- or 2-d tensor as (nested) Python floats, through float64.

    Example:
        >>> floats(torch.tensor([[1.0, 2.0]]))
        [[1.0, 2.0]]
    """
    return [float(v) for v in x.detach().double().reshape(-1).tolist()] if x.dim() <= 1 else [floats(r) for r in x]


def short(tasks: tuple[str, ...], values: list[float]) -> str:
    """``"a=0.1 b=2"``: per-task values for the progress bar.

    Example:
        >>> short(("a", "b"), [0.1, 2.0])
        'a=0.1 b=2'
    """
    return " ".join(f"{t}={v:.3g}" for t, v in zip(tasks, values, strict=True))


class Log:
    """The ``metrics.jsonl`` (+ TensorBoard) writer of a run; a no-op on ranks other than 0.

    Args:
        out: the run directory.
        active: whether this process writes (rank 0).
        tensorboard: also write TensorBoard events (when the package is installed).
        truncate_to: on resume, the size of ``metrics.jsonl`` at the checkpoint (``0``: start it
            over); ``None`` for a new run.
    """

    def __init__(self, out: Path, active: bool, tensorboard: bool, truncate_to: int | None) -> None:
        self.active, self.tb, self.f = active, None, None
        if not active:
            return
        path = out / METRICS
        if truncate_to is not None and path.exists():
            # Lines written after the checkpoint describe steps that will be redone.
            with open(path, "r+b") as f:
                f.truncate(truncate_to)
        self.f = open(path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                print("fmtl: --tensorboard needs the tensorboard package (pip install tensorboard); "
                      "continuing without it", file=sys.stderr)  # fmt: skip

    def write(self, record: Mapping[str, Any]) -> None:
        """Appends one JSON record."""
        if self.f is not None:
            self.f.write(json.dumps(record, allow_nan=True) + "\n")

    def scalars(self, prefix: str, values: Mapping[str, float], step: int) -> None:
        """TensorBoard scalars ``prefix/key`` (nothing without ``--tensorboard``)."""
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"{prefix}/{k}", v, step)

    def size(self) -> int:
        """The file's size after flushing it to disk (what a checkpoint records)."""
        if self.f is None:
            return 0
        self.f.flush()
        os.fsync(self.f.fileno())
        return self.f.tell()

    def close(self) -> None:
        """Closes the file and the TensorBoard writer."""
        if self.f is not None:
            self.f.close()
            self.f = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None

    def __enter__(self) -> Log:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(total: int, initial: int, desc: str, quiet: bool, active: bool):
    """A tqdm progress bar on stderr (off when ``quiet``, on other ranks, or when stderr is no terminal)."""
    from tqdm import tqdm

    disable = quiet or not active or not sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, unit="step", file=sys.stderr, disable=disable,
                dynamic_ncols=True, leave=False)  # fmt: skip


def say(msg: str, quiet: bool, active: bool) -> None:
    """Prints a line on stderr without breaking the progress bar."""
    if active and not quiet:
        from tqdm import tqdm

        tqdm.write(msg, file=sys.stderr)

"""Where a run stands, and how it continues from its checkpoint (bitwise equal to an uninterrupted run).

A run's :class:`Progress` is its position in the data order (``epoch``, ``batch`` — the next
global batch of that epoch —, ``step``), the per-epoch evaluations so far (``history``) and
bookkeeping (``extra``: wall time, the running training-loss sums, the chosen task-gradient
strategy, the size of ``metrics.jsonl`` at the checkpoint). :func:`restore` puts a checkpoint's
parameters, step state (balancer, optimizer, BatchNorm buffers), progress and random state back,
on the run's device, after checking that it was written by the same configuration
(:func:`fmtl.train.config.differences`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict

from .. import rng
from . import checkpoint
from .config import differences
from .log import Log
from .runs import CHECKPOINT, CONFIG

__all__ = ["Progress", "restore", "Saver"]


@dataclass
class Progress:
    """Position in the data order, per-epoch history and bookkeeping of a run (see the module docstring).

    Example:
        >>> Progress.fresh(2).position
        {'epoch': 0, 'batch': 0, 'step': 0}
    """

    position: dict[str, int]
    history: list[dict] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fresh(cls, num_tasks: int) -> Progress:
        """The progress of a run that has not started."""
        extra = {"wall_s": 0.0, "epoch_loss_sum": [0.0] * num_tasks, "epoch_steps": 0, "metrics_bytes": 0}
        return cls({"epoch": 0, "batch": 0, "step": 0}, [], extra)

    def where(self, path: Path) -> str:
        """``"<path> (epoch E, step K)"`` for messages about the last good checkpoint."""
        return f"{path} (epoch {self.position['epoch']}, step {self.position['step']})"


def restore(out: Path, cfg: dict[str, Any], params: TensorDict, state: Any, num_tasks: int, device: torch.device,
            resume: bool) -> tuple[TensorDict, Any, Progress, bool]:  # fmt: skip
    """``(params, state, progress, resumed)`` from ``out/checkpoint.pt`` when ``resume``, else the given ones.

    A resumed run with no checkpoint yet (killed before the first one) starts from the beginning.

    Raises:
        fmtl.train.checkpoint.CheckpointError: the checkpoint is unusable or was written by a
            different configuration than this run's (``epochs`` may differ: a run may be extended).
    """
    path = Path(out) / CHECKPOINT
    if not resume or not path.exists():
        return params, state, Progress.fresh(num_tasks), False
    payload = checkpoint.load(path)
    diff = differences(payload["config"], json.loads(json.dumps(cfg)))
    if diff:
        raise checkpoint.CheckpointError(
            f"{path} was written by a different configuration than {Path(out) / CONFIG} (settings that differ: "
            f"{diff}); refusing to resume (start over with --overwrite)"
        )
    params, state = checkpoint.restore(payload, params, state)
    progress = Progress(dict(payload["position"]), list(payload["history"]),
                        {**Progress.fresh(num_tasks).extra, **payload["extra"]})  # fmt: skip
    rng.set(rng.RNGState(payload["rng"], payload.get("rng_device")), device)
    return params, state, progress, True


class Saver:
    """Writes the run's checkpoint (rank 0 only) and remembers the last good one for messages.

    Args:
        out: the run directory; cfg: its configuration; progress: its progress (read at each save);
        log: its ``metrics.jsonl`` (its size goes into the checkpoint); main: whether this rank writes;
        device: whose random state is saved.
    """

    def __init__(self, out: Path, cfg: dict[str, Any], progress: Progress, log: Log, main: bool,
                 device: torch.device) -> None:  # fmt: skip
        self.path, self.cfg, self.progress, self.log, self.main, self.device = out / CHECKPOINT, cfg, progress, \
            log, main, device  # fmt: skip
        self.last_good = progress.where(self.path) if self.path.exists() else None

    def __call__(self, params: TensorDict, state: Any) -> None:
        if self.main:
            self.progress.extra["metrics_bytes"] = self.log.size()
            checkpoint.save(self.path, params=params, state=state, position=self.progress.position, config=self.cfg,
                            history=self.progress.history, extra=self.progress.extra,
                            rng_state=rng.get(self.device))  # fmt: skip
        self.last_good = self.progress.where(self.path)

    def intact(self) -> str:
        """What is left after a failure: the last good checkpoint, or that none was written."""
        return f"the last good checkpoint {self.last_good} is intact" if self.last_good else \
            "no checkpoint was written yet"  # fmt: skip

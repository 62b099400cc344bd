"""Reduce the learning rate when a validation score stops improving (``ReduceLROnPlateau``), purely.

``plateau(...)`` is a pair of pure functions, ``init() -> PlateauState`` and
``update(state, score) -> PlateauState``, called once per epoch with the validation score (for
fmtl's model selection, Δp: higher is better, ``mode="max"``). The state holds plain Python
numbers, so it goes into a checkpoint as ``state._asdict()`` and comes back as
``PlateauState(**d)``. Its ``scale`` is the factor s in η_k = s·η_k⁰; a step built with
``fmtl.transforms.chain(optimizer, fmtl.transforms.lr_scale())`` receives it through
``fmtl.transforms.set_lr_scale(step_state, state.scale)``: a tensor in the step's state, so a
compiled step does not recompile when the rate drops.

Semantics are torch's ``ReduceLROnPlateau`` (``mode``, ``factor``, ``patience``, ``threshold``,
``threshold_mode``, ``cooldown``), in units of the base rate: ``min_scale`` is torch's
``min_lr / lr`` and ``eps`` the smallest change of the scale that is applied (torch's ``eps``
is in units of the rate). Like torch, a NaN score is never an improvement, and with
``threshold_mode="rel"`` the threshold is relative to the best score's value, so for scores
that can be negative (Δp) ``threshold_mode="abs"`` is the meaningful choice.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["PlateauState", "Plateau", "plateau"]


class PlateauState(NamedTuple):
    """The controller's state (plain numbers): the scale, the best score, and its counters."""

    scale: float
    best: float
    bad_epochs: int
    cooldown: int
    reductions: int


class Plateau(NamedTuple):
    """``init() -> PlateauState``; ``update(state, score) -> PlateauState`` (pure)."""

    init: Callable[[], PlateauState]
    update: Callable[[PlateauState, float], PlateauState]


def plateau(
    mode: str = "max",
    factor: float = 0.1,
    patience: int = 10,
    threshold: float = 1e-4,
    threshold_mode: str = "rel",
    cooldown: int = 0,
    min_scale: float = 0.0,
    eps: float = 1e-8,
) -> Plateau:
    """ReduceLROnPlateau as a pure controller of the learning-rate scale s (initially 1).

    After each epoch's score x: if x improves on the best (``max``, ``rel``: x > best·(1 + τ);
    ``abs``: x > best + τ; mirrored for ``min``) it becomes the best and the bad-epoch count
    resets, else the count grows; during a cooldown the count stays 0. When the count exceeds
    ``patience``, s ← max(s·factor, min_scale) and a cooldown of ``cooldown`` epochs begins.

    Example:
        >>> ctl = plateau(mode="max", factor=0.5, patience=1, threshold_mode="abs", threshold=0.0)
        >>> state = ctl.init()
        >>> for score in (1.0, 2.0, 2.0, 2.0, 1.0, 1.0):
        ...     state = ctl.update(state, score)
        >>> state.scale, state.best, state.reductions
        (0.25, 2.0, 2)
    """
    if mode not in ("min", "max"):
        raise ValueError(f"plateau mode must be 'min' or 'max'; got {mode!r}")
    if threshold_mode not in ("rel", "abs"):
        raise ValueError(f"plateau threshold_mode must be 'rel' or 'abs'; got {threshold_mode!r}")
    if not 0 < factor < 1:
        raise ValueError(f"plateau factor must be in (0, 1); got {factor}")
    if patience < 0 or cooldown < 0:
        raise ValueError(f"plateau patience and cooldown must be >= 0; got {patience}, {cooldown}")
    if min_scale < 0:
        raise ValueError(f"plateau min_scale must be >= 0; got {min_scale}")

    def better(x: float, best: float) -> bool:
        if mode == "max":
            return x > (best * (1 + threshold) if threshold_mode == "rel" else best + threshold)
        return x < (best * (1 - threshold) if threshold_mode == "rel" else best - threshold)

    def init() -> PlateauState:
        return PlateauState(1.0, -math.inf if mode == "max" else math.inf, 0, 0, 0)

    def update(state: PlateauState, score: float) -> PlateauState:
        x = float(score)
        scale, best, bad, cool, n = state
        if better(x, best):
            best, bad = x, 0
        else:
            bad += 1
        if cool > 0:
            cool, bad = cool - 1, 0
        if bad > patience:
            new = max(scale * factor, min_scale)
            if scale - new > eps:
                scale, n = new, n + 1
            cool, bad = cooldown, 0
        return PlateauState(scale, best, bad, cool, n)

    return Plateau(init, update)

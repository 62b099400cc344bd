"""Learning-rate schedules as pure functions of the step count, for fmtl's optimizers.

A schedule is ``lr(k) -> Tensor``: ``k`` is the 0-d float64 count of the update being made
(``k = 1`` for the first one), as :mod:`fmtl.optim` passes it from the optimizer's state, so a
compiled step reads the rate from a tensor input and never recompiles as it changes. Each
schedule equals the ``torch.optim.lr_scheduler`` named in its docstring stepped once per update
(update k uses the rate torch has after k − 1 ``scheduler.step()`` calls). Schedules compose:
``warmup(cosine(1e-3, 10_000), 500)``. A ReduceLROnPlateau controller, which depends on
validation scores rather than on k, is :mod:`fmtl.plateau`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["Schedule", "SCHEDULES", "constant", "cosine", "step_decay", "warmup", "value", "get"]

Schedule = Callable[[torch.Tensor], torch.Tensor]

#: The schedules :func:`get` builds by name.
SCHEDULES = ("constant", "cosine", "step", "warmup")


def _k(k: torch.Tensor | float) -> torch.Tensor:
    return torch.as_tensor(k, dtype=torch.float64)


def constant(lr: float) -> Schedule:
    """η_k = η (``torch.optim.lr_scheduler.ConstantLR`` with factor 1).

    Example:
        >>> value(constant(0.1), 1000)
        0.1
    """

    def schedule(k: torch.Tensor) -> torch.Tensor:
        return torch.full_like(_k(k), lr)

    return schedule


def cosine(lr: float, steps: int, final: float = 0.0) -> Schedule:
    """Cosine annealing from ``lr`` to ``final`` over ``steps`` updates (``CosineAnnealingLR``).

    .. math::
        \\eta_k = \\eta_{\\min} + \\tfrac12(\\eta - \\eta_{\\min})
            \\Big(1 + \\cos\\frac{\\pi \\min(k - 1, S)}{S}\\Big)

    Deviation from torch: after ``steps`` updates the rate stays at ``final``
    (``CosineAnnealingLR`` would rise again along the cosine; set ``T_max`` to the run's length).

    Example:
        >>> [round(value(cosine(1.0, 4), k), 4) for k in (1, 2, 3, 5, 9)]
        [1.0, 0.8536, 0.5, 0.0, 0.0]
    """
    if steps < 1:
        raise ValueError(f"cosine needs steps >= 1; got {steps}")

    def schedule(k: torch.Tensor) -> torch.Tensor:
        e = torch.clamp(_k(k) - 1, 0, steps)
        return final + (lr - final) * (1 + torch.cos(math.pi * e / steps)) / 2

    return schedule


def step_decay(lr: float, every: int, gamma: float = 0.1) -> Schedule:
    """η_k = η · γ^⌊(k − 1)/N⌋: multiplied by γ every N updates (``StepLR(step_size=N, gamma=γ)``).

    Example:
        >>> [value(step_decay(1.0, 2, 0.5), k) for k in (1, 2, 3, 4, 5)]
        [1.0, 1.0, 0.5, 0.5, 0.25]
    """
    if every < 1:
        raise ValueError(f"step_decay needs every >= 1; got {every}")

    def schedule(k: torch.Tensor) -> torch.Tensor:
        return lr * gamma ** torch.floor((_k(k) - 1) / every)

    return schedule


def warmup(then: Schedule, steps: int, start: float = 1 / 3) -> Schedule:
    """Linear warm-up over ``steps`` updates from ``start``·η₁ to η₁, then ``then`` from its start.

    .. math::
        \\eta_k = \\begin{cases} \\eta'_1 \\big(s + (1 - s)\\tfrac{k - 1}{W}\\big) & k \\le W \\\\
            \\eta'_{k - W} & k > W \\end{cases}

    where η' is ``then``: torch's ``SequentialLR([LinearLR(start_factor=s, total_iters=W), then],
    milestones=[W])`` (``start`` defaults to ``LinearLR``'s 1/3).

    Example:
        >>> s = warmup(constant(1.0), 4, start=0.2)
        >>> [round(value(s, k), 2) for k in (1, 2, 3, 4, 5, 6)]
        [0.2, 0.4, 0.6, 0.8, 1.0, 1.0]
    """
    if steps < 1:
        raise ValueError(f"warmup needs steps >= 1; got {steps}")
    if not 0 <= start <= 1:
        raise ValueError(f"warmup needs 0 <= start <= 1; got {start}")

    def schedule(k: torch.Tensor) -> torch.Tensor:
        k = _k(k)
        ramp = then(torch.ones_like(k)) * (start + (1 - start) * (k - 1) / steps)
        return torch.where(k <= steps, ramp, then(torch.clamp(k - steps, min=1)))

    return schedule


def value(lr: Schedule | float | torch.Tensor, k: int | torch.Tensor) -> float:
    """The rate of update ``k`` (counting from 1) of a schedule, a number or a 0-d tensor.

    Example:
        >>> value(step_decay(0.1, 10), 11), value(0.01, 5)
        (0.010000000000000002, 0.01)
    """
    return float(lr(_k(k)) if callable(lr) else lr)


def get(name: str, lr: float, steps: int, **options: Any) -> Schedule:
    """The schedule called ``name`` (one of :data:`SCHEDULES`) for a run of ``steps`` updates.

    Options (all optional): ``cosine`` — ``final`` (0); ``step`` — ``every`` (steps // 3),
    ``gamma`` (0.1); ``warmup`` — ``warmup_steps`` (5 % of the run, at least 1), ``start`` (1/3),
    ``then`` (``"cosine"`` over the remaining updates, or ``"constant"``), ``final`` (0).

    Example:
        >>> s = get("warmup", 0.1, 100, warmup_steps=10, then="constant")
        >>> round(value(s, 1), 4), value(s, 11), value(s, 100)
        (0.0333, 0.1, 0.1)
        >>> get("cosine", 0.1, 100, gamma=0.5)
        Traceback (most recent call last):
        ...
        ValueError: schedule 'cosine' has no option(s) ['gamma']; valid: ['final']
        >>> get("linear", 0.1, 100)
        Traceback (most recent call last):
        ...
        ValueError: unknown schedule 'linear'; valid: constant, cosine, step, warmup
    """
    valid = {"constant": (), "cosine": ("final",), "step": ("every", "gamma"),
             "warmup": ("warmup_steps", "start", "then", "final")}  # fmt: skip
    if name not in valid:
        raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}")
    unknown = sorted(set(options) - set(valid[name]))
    if unknown:
        raise ValueError(f"schedule {name!r} has no option(s) {unknown}; valid: {list(valid[name])}")
    steps = max(int(steps), 1)
    if name == "constant":
        return constant(lr)
    if name == "cosine":
        return cosine(lr, steps, final=float(options.get("final", 0.0)))
    if name == "step":
        return step_decay(lr, int(options.get("every", max(steps // 3, 1))), float(options.get("gamma", 0.1)))
    w = int(options.get("warmup_steps", max(steps // 20, 1)))
    then = options.get("then", "cosine")
    if then not in ("cosine", "constant"):
        raise ValueError(f"schedule 'warmup' takes then='cosine' or 'constant'; got {then!r}")
    after = cosine(lr, max(steps - w, 1), float(options.get("final", 0.0))) if then == "cosine" else constant(lr)
    return warmup(after, w, start=float(options.get("start", 1 / 3)))

"""Functional optimizers over TensorDicts, numerically equal to ``torch.optim``.

Each is an ``Optimizer(init, update)`` pair: ``init(params) -> state`` and
``update(grads, state, params) -> (updates, state)`` with ``new_params = params + updates``.
The learning rate is a number, a 0-d tensor, or a schedule ``lr(count) -> lr`` of the
0-d step-count tensor kept in the state (passed as float64, counting from 1), so a compiled
step never recompiles as it changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from tensordict import TensorDict

__all__ = ["Optimizer", "SGDState", "AdamState", "sgd", "adam", "adamw", "get", "names"]

LearningRate = float | torch.Tensor | Callable[[torch.Tensor], torch.Tensor | float]


class Optimizer(NamedTuple):
    """A functional optimizer: ``init(params) -> state``, ``update(grads, state, params)``."""

    init: Callable[[TensorDict], Any]
    update: Callable[[TensorDict, Any, TensorDict], tuple[TensorDict, Any]]


class SGDState(NamedTuple):
    """Step count (0-d int64) and the momentum buffer (zeros when momentum is 0)."""

    count: torch.Tensor
    momentum: TensorDict


class AdamState(NamedTuple):
    """Step count (0-d int64) and the first and second moment estimates."""

    count: torch.Tensor
    mu: TensorDict
    nu: TensorDict


def _count(params: TensorDict) -> torch.Tensor:
    device = next(iter(params.values(True, True))).device
    return torch.zeros((), dtype=torch.int64, device=device)


def _lr(lr: LearningRate, count: torch.Tensor) -> torch.Tensor | float:
    # float64 so that a schedule such as ``0.1 / k`` is not rounded to float32
    return lr(count.to(torch.float64)) if callable(lr) else lr


def sgd(lr: LearningRate, momentum: float = 0.0, weight_decay: float = 0.0) -> Optimizer:
    """SGD with momentum and L2 weight decay, as ``torch.optim.SGD`` (dampening 0).

    .. math::
        d_k = g_k + \\lambda \\theta_k,\\quad b_k = \\mu b_{k-1} + d_k,\\quad
        \\theta_{k+1} = \\theta_k - \\eta\\, b_k

    Example:
        >>> import torch, fmtl
        >>> from tensordict import TensorDict
        >>> p = TensorDict({"w": torch.ones(2)}, [])
        >>> opt = fmtl.optim.sgd(0.5)
        >>> updates, state = opt.update(TensorDict({"w": torch.ones(2)}, []), opt.init(p), p)
        >>> (p + updates)["w"]
        tensor([0.5000, 0.5000])
    """

    def init(params: TensorDict) -> SGDState:
        return SGDState(_count(params), params.apply(torch.zeros_like))

    def update(grads: TensorDict, state: SGDState, params: TensorDict):
        count = state.count + 1
        rate = _lr(lr, count)
        d = grads.apply(lambda g, p: g + p * weight_decay, params) if weight_decay else grads
        buf = state.momentum.apply(lambda b, g: b * momentum + g, d) if momentum else state.momentum
        step = buf if momentum else d
        return step.apply(lambda s: s * -rate), SGDState(count, buf)

    return Optimizer(init, update)


def _adam(lr, betas, eps, weight_decay, decoupled: bool) -> Optimizer:
    b1, b2 = betas

    def init(params: TensorDict) -> AdamState:
        zeros = params.apply(torch.zeros_like)
        return AdamState(_count(params), zeros, zeros.clone())

    def update(grads: TensorDict, state: AdamState, params: TensorDict):
        count = state.count + 1
        rate = _lr(lr, count)
        if weight_decay and not decoupled:
            grads = grads.apply(lambda g, p: g + p * weight_decay, params)
        mu = state.mu.apply(lambda m, g: m.lerp(g, 1 - b1), grads)
        nu = state.nu.apply(lambda v, g: v * b2 + g * g * (1 - b2), grads)
        k = count.to(torch.float64)
        bc2_sqrt = (1 - b2**k).sqrt()
        step_size = rate / (1 - b1**k)
        updates = mu.apply(
            lambda m, v: (m / (v.sqrt() / bc2_sqrt.to(v.dtype) + eps)) * (-step_size).to(v.dtype),
            nu,
        )
        if weight_decay and decoupled:
            updates = updates.apply(lambda u, p: u - p * (rate * weight_decay), params)
        return updates, AdamState(count, mu, nu)

    return Optimizer(init, update)


def adam(
    lr: LearningRate,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> Optimizer:
    """Adam with L2 weight decay added to the gradient, as ``torch.optim.Adam``.

    .. math::
        m_k = \\beta_1 m_{k-1} + (1-\\beta_1) g_k,\\quad v_k = \\beta_2 v_{k-1} + (1-\\beta_2) g_k^2,
        \\quad \\theta_{k+1} = \\theta_k - \\frac{\\eta}{1-\\beta_1^k}
            \\frac{m_k}{\\sqrt{v_k}/\\sqrt{1-\\beta_2^k} + \\epsilon}

    Example:
        >>> import torch, fmtl
        >>> from tensordict import TensorDict
        >>> p = TensorDict({"w": torch.zeros(2)}, [])
        >>> opt = fmtl.optim.adam(0.1)
        >>> updates, state = opt.update(TensorDict({"w": torch.tensor([1.0, -3.0])}, []), opt.init(p), p)
        >>> updates["w"]  # the first Adam step has magnitude lr
        tensor([-0.1000,  0.1000])
    """
    return _adam(lr, betas, eps, weight_decay, decoupled=False)


def adamw(
    lr: LearningRate,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
) -> Optimizer:
    """AdamW: Adam with decoupled weight decay θ ← θ − ηλθ, as ``torch.optim.AdamW``.

    Example:
        >>> import torch, fmtl
        >>> from tensordict import TensorDict
        >>> p = TensorDict({"w": torch.ones(1)}, [])
        >>> opt = fmtl.optim.adamw(0.1, weight_decay=0.5)
        >>> updates, _ = opt.update(TensorDict({"w": torch.zeros(1)}, []), opt.init(p), p)
        >>> updates["w"]  # zero gradient: only the decay −ηλθ
        tensor([-0.0500])
    """
    return _adam(lr, betas, eps, weight_decay, decoupled=True)


_FACTORIES: dict[str, Callable[..., Optimizer]] = {"adam": adam, "adamw": adamw, "sgd": sgd}


def names() -> list[str]:
    """The optimizer names :func:`get` accepts.

    Example:
        >>> names()
        ['adam', 'adamw', 'sgd']
    """
    return sorted(_FACTORIES)


def get(name: str, lr: LearningRate, **hyperparameters: Any) -> Optimizer:
    """The functional optimizer called ``name`` (one of :func:`names`), e.g. ``get("adam", 1e-3)``.

    Args:
        name: ``"adam"``, ``"adamw"`` or ``"sgd"``.
        lr: the learning rate (a number, a 0-d tensor or a schedule of the step count).
        **hyperparameters: the factory's other arguments (``weight_decay``, ``betas``, ``momentum`` …).

    Example:
        >>> get("sgd", 0.1, momentum=0.9).init.__qualname__
        'sgd.<locals>.init'
        >>> get("lion", 0.1)
        Traceback (most recent call last):
        ...
        ValueError: unknown optimizer 'lion'; valid: adam, adamw, sgd
    """
    if name not in _FACTORIES:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(names())}")
    return _FACTORIES[name](lr, **hyperparameters)

"""Functional optimizers over TensorDicts, numerically equal to ``torch.optim``.

Each is an ``Optimizer(init, update)`` pair: ``init(params) -> state`` and
``update(grads, state, params) -> (updates, state)`` with ``new_params = params + updates``.
The learning rate is a number, a 0-d tensor, or a schedule ``lr(count) -> lr`` of the
0-d step-count tensor kept in the state (passed as float64, counting from 1; see
:mod:`fmtl.schedules`), so a compiled step never recompiles as it changes.

The arithmetic is torch's own: SGD runs on the multi-tensor ``torch._foreach_*`` kernels that
``torch.optim``'s ``foreach`` implementations use, and Adam/AdamW on torch's fused Adam kernel
(``torch.optim.adam.adam(fused=True)``) in eager mode. Both stay pure: every kernel writes only
into tensors this call allocated (copies of the moments, and a zero tensor per leaf that comes
back holding the update), never into ``grads``, ``state`` or ``params``. The fused kernel is
opaque to ``torch.compile``, so under compile Adam is written out in plain tensor ops, which
inductor fuses itself. ``benchmarks/optim.py`` measures the choice (``benchmarks/RESULTS.md``).
A ``torch.optim.Optimizer`` object itself is stateful; to drive one with fmtl's balanced
gradients use :class:`fmtl.TorchOptimizer`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.optim.adam as _torch_adam
from tensordict import TensorDict

from .tree import leaves_at, with_leaves

__all__ = ["Optimizer", "SGDState", "AdamState", "sgd", "adam", "adamw", "get", "names", "require_functional"]

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
    """Step count (0-d int64) and the first and second moment estimates (at least float32)."""

    count: torch.Tensor
    mu: TensorDict
    nu: TensorDict


def require_functional(optimizer: Any) -> Optimizer:
    """``optimizer`` if it is a functional ``Optimizer(init, update)``; a clear ``TypeError`` if not.

    Example:
        >>> import torch
        >>> require_functional(torch.optim.Adam([torch.zeros(1)]))
        Traceback (most recent call last):
        ...
        TypeError: make_step takes a functional optimizer such as fmtl.optim.adam(1e-3), not a torch.optim.Adam; ...
    """
    if isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"make_step takes a functional optimizer such as fmtl.optim.adam(1e-3), not a "
            f"{type(optimizer).__module__.split('.')[0]}.optim.{type(optimizer).__name__}; to drive a "
            "torch.optim optimizer (and its lr_scheduler) with fmtl's balanced gradients use "
            "fmtl.TorchOptimizer(loss_fn, balancer, params, optimizer)"
        )
    if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
        raise TypeError(f"optimizer must be an fmtl.optim.Optimizer(init, update); got {type(optimizer).__name__}")
    return optimizer


def _count(params: TensorDict) -> torch.Tensor:
    device = next(iter(params.values(True, True))).device
    return torch.zeros((), dtype=torch.int64, device=device)


def _lr(lr: LearningRate, count: torch.Tensor) -> torch.Tensor | float:
    # float64 so that a schedule such as ``0.1 / k`` is not rounded to float32
    return lr(count.to(torch.float64)) if callable(lr) else lr


def _eps(eps: float, dtype: torch.dtype) -> float:
    """The ε that Adam's denominator √v̂ + ε uses for parameters of ``dtype``."""
    return eps


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
        # torch.optim.SGD's multi-tensor arithmetic, on fresh outputs; leaves paired in params' key order
        keys = list(params.keys(True, True))
        d = leaves_at(grads, keys)
        if weight_decay:
            d = torch._foreach_add(d, leaves_at(params, keys), alpha=weight_decay)
        buf = state.momentum
        if momentum:
            b = torch._foreach_mul(leaves_at(state.momentum, keys), momentum)
            torch._foreach_add_(b, d)
            d, buf = b, with_leaves(params, b)
        return with_leaves(params, torch._foreach_mul(d, -rate)), SGDState(count, buf)

    return Optimizer(init, update)


def _moment_dtype(dtype: torch.dtype) -> torch.dtype:
    # In float16, ε = 1e-8 is 0 and (1-β₂)g² underflows for |g| < 7.7e-3: zero or small
    # gradients gave 0/0 or m/0. The moments and the update are computed in float32 instead
    # and the update is rounded to the parameters' dtype (bfloat16 alike, for its 8-bit mantissa).
    return torch.promote_types(dtype, torch.float32) if dtype.is_floating_point else dtype


#: Devices with torch's fused Adam kernel.
_FUSED_DEVICES = ("cpu", "cuda", "mps", "xpu")


def _adam_written_out(grads, state, params, rate, k, b1, b2, eps, weight_decay, decoupled):
    """Adam in plain tensor ops (the compiled path: inductor fuses them)."""
    grads = grads.apply(lambda g, m: g.to(m.dtype), state.mu)  # no copy unless float16/bfloat16
    if weight_decay and not decoupled:
        grads = grads.apply(lambda g, p: g + p.to(g.dtype) * weight_decay, params)
    mu = state.mu.apply(lambda m, g: m.lerp(g, 1 - b1), grads)
    nu = state.nu.apply(lambda v, g: v * b2 + g * g * (1 - b2), grads)
    bc2_sqrt = (1 - b2**k).sqrt()
    step_size = rate / (1 - b1**k)
    updates = mu.apply(
        lambda m, v, p: ((m / (v.sqrt() / bc2_sqrt.to(v.dtype) + _eps(eps, v.dtype))) * (-step_size).to(v.dtype)).to(
            p.dtype
        ),
        nu,
        params,
    )
    if weight_decay and decoupled:
        updates = updates.apply(lambda u, p: u - p * (rate * weight_decay), params)
    return updates, mu, nu


def _adam_fused(grads, state, params, rate, b1, b2, eps, weight_decay, decoupled):
    """Adam through torch's fused kernel, run on copies so that nothing passed in is written.

    The kernel updates parameters in place; it is handed zeros instead of ``params``, so they come
    back holding the update itself. The weight decay, which would read those zeros, is applied
    here: L2 added to the gradient first, the decoupled −ηλθ added to the update after.
    """
    keys = list(params.keys(True, True))  # every tree's leaves in params' key order
    g, p = leaves_at(grads, keys), leaves_at(params, keys)
    if weight_decay and not decoupled:
        g = torch._foreach_add(g, p, alpha=weight_decay)
    updates = [torch.zeros_like(x) for x in p]
    # the kernel walks all its tensors with one set of strides: give every one the update's layout
    g = [x if x.stride() == u.stride() else torch.empty_like(u).copy_(x) for x, u in zip(g, updates, strict=True)]
    mu = [torch.empty_like(u).copy_(x) for x, u in zip(leaves_at(state.mu, keys), updates, strict=True)]
    nu = [torch.empty_like(u).copy_(x) for x, u in zip(leaves_at(state.nu, keys), updates, strict=True)]
    steps = [state.count.to(torch.float32) for _ in p]  # one tensor per leaf: the kernel increments each
    for dtype in dict.fromkeys(x.dtype for x in p):
        idx = [i for i, x in enumerate(p) if x.dtype == dtype]
        _torch_adam.adam([updates[i] for i in idx], [g[i] for i in idx], [mu[i] for i in idx],
                         [nu[i] for i in idx], [], [steps[i] for i in idx], fused=True, amsgrad=False,
                         beta1=b1, beta2=b2, lr=rate, weight_decay=0.0, eps=_eps(eps, dtype),
                         maximize=False)  # fmt: skip
    if weight_decay and decoupled:
        torch._foreach_add_(updates, torch._foreach_mul(p, -rate * weight_decay))
    return with_leaves(params, updates), with_leaves(params, mu), with_leaves(params, nu)


def _fusable(*trees: TensorDict) -> bool:
    """Eager, and leaf by leaf the trees agree in dtype and device on a device with the fused kernel."""
    if torch.compiler.is_compiling():
        return False
    keys = list(trees[0].keys(True, True))
    for xs in zip(*(leaves_at(td, keys) for td in trees), strict=True):
        x = xs[0]
        if not (x.device.type in _FUSED_DEVICES and x.is_floating_point() and x.layout == torch.strided):
            return False
        if any(y.dtype != x.dtype or y.device != x.device for y in xs[1:]):
            return False  # the written-out form promotes; the fused kernel would refuse
    return True


def _adam(lr, betas, eps, weight_decay, decoupled: bool) -> Optimizer:
    b1, b2 = betas

    def init(params: TensorDict) -> AdamState:
        zeros = params.apply(lambda p: torch.zeros(p.shape, dtype=_moment_dtype(p.dtype), device=p.device))
        return AdamState(_count(params), zeros, zeros.clone())

    def update(grads: TensorDict, state: AdamState, params: TensorDict):
        count = state.count + 1
        rate = _lr(lr, count)
        if _fusable(grads, params, state.mu, state.nu):
            updates, mu, nu = _adam_fused(grads, state, params, rate, b1, b2, eps, weight_decay, decoupled)
        else:
            k = count.to(torch.float64)
            updates, mu, nu = _adam_written_out(grads, state, params, rate, k, b1, b2, eps, weight_decay, decoupled)
        return updates, AdamState(count, mu, nu)

    return Optimizer(init, update)


def adam(
    lr: LearningRate,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> Optimizer:
    """Adam with L2 weight decay added to the gradient, as ``torch.optim.Adam``.

    Deviation: for float16 and bfloat16 parameters the moments are kept, and the update
    computed, in float32, then rounded to the parameters' dtype (``torch.optim.Adam`` keeps
    float16 moments, where ε = 1e-8 is 0 and a zero gradient gives NaN).

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

"""All T task gradients of a batch in one vectorized pass (one forward, T backwards batched).

Strategies (:mod:`fmtl.jacobian` holds them; all pure, all compile-able, all returning the same
numbers): ``"jacrev"`` (one ``vjp``, its pullback vmapped over the T unit cotangents),
``"vmap_grad"`` (``vmap`` of ``grad`` over the cotangents), ``"loop"`` (the T backwards one at a
time), and ``"auto"``, the default: the fastest of the three for this problem, measured once and
cached (:mod:`fmtl.strategy`).

``chunk_size`` bounds how many of the T backwards run at once; ``max_memory`` lets the chunk be
chosen: the largest whose measured peak fits (and, under ``"auto"``, only candidates that fit are
timed). Imports run one way: ``task_gradients`` → ``strategy`` → ``jacobian``.
"""

from __future__ import annotations

from typing import Any

from tensordict import TensorDict

from . import strategy as _strategy
from .base import TaskGradients
from .jacobian import CONCRETE, LossFn, check_losses, checked_loss, compute
from .params import check_params

__all__ = ["task_gradients", "STRATEGIES", "LossFn", "check_losses", "checked_loss"]

STRATEGIES = ("auto", *CONCRETE)


def task_gradients(
    loss_fn: LossFn,
    params: TensorDict,
    batch: Any,
    *,
    chunk_size: int | None = None,
    strategy: str = "auto",
    max_memory: int | None = None,
) -> TaskGradients:
    """Losses ℓ_t and raw gradients ∇θ ℓ_t, ∇ψ_t ℓ_t of all T tasks, vectorized.

    .. math::
        J = \\partial \\ell / \\partial \\theta \\in \\mathbb{R}^{T \\times P},\\quad
        J_{t} = e_t^\\top J = \\nabla_\\theta \\ell_t

    One forward pass builds the pullback of ℓ; the T pullbacks of the unit cotangents e_t
    run batched under ``vmap`` (``chunk_size`` bounds how many at once, trading speed for
    peak memory). Raw gradients: loss transforms such as log(ℓ_t + ε) are the balancer's
    business (∇ log(ℓ_t + ε) = ∇ℓ_t / (ℓ_t + ε)).

    Args:
        loss_fn: ``loss_fn(params, batch) -> Tensor[T]``, pure, one loss per task in the
            order of ``params["tasks"]``.
        params: TensorDict with ``"shared"`` (θ) and ``"tasks"`` (ψ_t per task).
        batch: whatever ``loss_fn`` takes as its second argument.
        chunk_size: at most this many task backwards at once (``None``: all T).
        strategy: ``"auto"``, ``"jacrev"``, ``"vmap_grad"`` or ``"loop"``.
        max_memory: bytes the call may allocate at its peak (above what is live before it);
            with ``chunk_size=None`` the chunk is chosen to fit, measured once per problem
            (:func:`fmtl.strategy.choose`). ``None``: no bound.

    Returns:
        ``TaskGradients(losses, shared, tasks)``; ``shared`` has ``batch_size=[T]``.

    Example:
        >>> import torch, fmtl
        >>> params, apply = fmtl.functionalize(torch.nn.Linear(3, 4),
        ...     {"a": torch.nn.Linear(4, 1), "b": torch.nn.Linear(4, 1)})
        >>> def loss_fn(p, batch):
        ...     out = apply(p, batch["x"])
        ...     return torch.stack([out["a"].pow(2).mean(), out["b"].abs().mean()])
        >>> batch = TensorDict({"x": torch.randn(8, 3)}, [8])
        >>> g = fmtl.task_gradients(loss_fn, params, batch)
        >>> g.losses.shape, g.shared.batch_size, g.shared["weight"].shape
        (torch.Size([2]), torch.Size([2]), torch.Size([2, 4, 3]))
    """
    check_params(params)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {list(STRATEGIES)}")
    if strategy == "auto" or (max_memory is not None and chunk_size is None):
        plan = _strategy.choose(
            loss_fn, params, batch, chunk_size=chunk_size, max_memory=max_memory,
            strategy=None if strategy == "auto" else strategy,
        )  # fmt: skip
        strategy, chunk_size = plan.strategy, plan.chunk_size
    return compute(strategy, loss_fn, params, batch, chunk_size=chunk_size)

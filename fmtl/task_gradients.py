"""All T task gradients of a batch in one vectorized pass (one forward, T backwards batched).

Strategies (all pure functions of ``(params, batch)``, all compile-able):

* ``"jacrev"`` — one ``torch.func.vjp`` (one forward), then ``vmap`` of its pullback over
  the T unit cotangents e_t: row t of the result is ``e_tᵀ ∂ℓ/∂params = ∇ℓ_t``.
* ``"vmap_grad"`` — ``vmap`` over e_t of ``grad(⟨e_t, ℓ⟩)``; the parameters enter unbatched,
  so the forward is still computed once.
* ``"loop"`` — one ``vjp``, then the T pullbacks one at a time (what a Python loop of
  ``autograd.grad`` calls does, but pure); the reference the vectorized paths are tested against.
* ``"auto"`` — the default; see :mod:`fmtl.strategy` for how it picks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDict
from torch.func import grad, vjp, vmap

from .base import TaskGradients
from .params import check_params, task_names

__all__ = ["task_gradients", "STRATEGIES", "LossFn", "check_losses"]

LossFn = Callable[[TensorDict, TensorDict], torch.Tensor]
STRATEGIES = ("auto", "jacrev", "vmap_grad", "loop")


def check_losses(losses: torch.Tensor, names: list[str]) -> None:
    """Raises ``ValueError`` unless ``losses`` is a 1-D tensor with one entry per task.

    Example:
        >>> check_losses(torch.zeros(3), ["a", "b"])
        Traceback (most recent call last):
        ...
        ValueError: loss_fn returned 3 losses but params['tasks'] has 2 tasks ['a', 'b']; ...
    """
    if not isinstance(losses, torch.Tensor):
        raise TypeError(f"loss_fn must return a Tensor[T]; got {type(losses).__name__}")
    if losses.dim() != 1:
        raise ValueError(
            f"loss_fn must return a 1-D Tensor[T] (one loss per task); got shape "
            f"{tuple(losses.shape)}"
        )
    if losses.shape[0] != len(names):
        raise ValueError(
            f"loss_fn returned {losses.shape[0]} losses but params['tasks'] has {len(names)} "
            f"tasks {names}; it must return one loss per task, in the order of params['tasks']"
        )


def _checked(loss_fn: LossFn, batch: TensorDict, names: list[str]) -> Callable:
    def f(params: TensorDict) -> torch.Tensor:
        losses = loss_fn(params, batch)
        check_losses(losses, names)
        return losses

    return f


def _diagonal(J_tasks: TensorDict, names: list[str]) -> TensorDict:
    # Row t of the task part holds ∇ψ_s ℓ_t for every head s; only s = t is nonzero.
    return TensorDict({n: J_tasks[n][i] for i, n in enumerate(names)}, [])


def _pack(losses: torch.Tensor, J: TensorDict, names: list[str]) -> TaskGradients:
    T = len(names)
    shared = J["shared"]
    shared.batch_size = [T]
    tasks = J["tasks"]
    tasks.batch_size = [T]
    return TaskGradients(losses, shared, _diagonal(tasks, names))


def _jacrev(f: Callable, params: TensorDict, T: int, chunk_size: int | None):
    losses, pullback = vjp(f, params)
    eye = torch.eye(T, dtype=losses.dtype, device=losses.device)
    (J,) = vmap(pullback, chunk_size=chunk_size)(eye)
    return losses, J


def _vmap_grad(f: Callable, params: TensorDict, T: int, chunk_size: int | None):
    def one(p: TensorDict, e: torch.Tensor):
        losses = f(p)
        return (losses * e).sum(), losses

    dtype = next(iter(params.values(True, True))).dtype
    device = next(iter(params.values(True, True))).device
    eye = torch.eye(T, dtype=dtype, device=device)
    J, losses = vmap(grad(one, has_aux=True), in_dims=(None, 0), chunk_size=chunk_size)(
        params, eye
    )
    return losses[0], J


def _loop(f: Callable, params: TensorDict, T: int, chunk_size: int | None):
    losses, pullback = vjp(f, params)
    eye = torch.eye(T, dtype=losses.dtype, device=losses.device)
    rows = [pullback(eye[t])[0] for t in range(T)]
    return losses, torch.stack(rows, 0)


_IMPLEMENTATIONS = {"jacrev": _jacrev, "vmap_grad": _vmap_grad, "loop": _loop}


def task_gradients(
    loss_fn: LossFn,
    params: TensorDict,
    batch: TensorDict,
    *,
    chunk_size: int | None = None,
    strategy: str = "auto",
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
    names = task_names(params)
    if strategy == "auto":
        from .strategy import choose_strategy

        strategy = choose_strategy(loss_fn, params, batch, chunk_size=chunk_size)
    if strategy not in _IMPLEMENTATIONS:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {list(STRATEGIES)}")
    f = _checked(loss_fn, batch, names)
    losses, J = _IMPLEMENTATIONS[strategy](f, params, len(names), chunk_size)
    return _pack(losses, J, names)

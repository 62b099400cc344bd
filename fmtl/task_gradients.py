"""All T task gradients of a batch in one vectorized pass (one forward, T backwards batched).

Strategies (all pure functions of ``(params, batch)``, all compile-able, all returning the same
numbers):

* ``"jacrev"`` — one ``torch.func.vjp`` (one forward), then ``vmap`` of its pullback over
  the T unit cotangents e_t: row t of the result is ``e_tᵀ ∂ℓ/∂params = ∇ℓ_t``.
* ``"vmap_grad"`` — ``vmap`` over e_t of ``grad(⟨e_t, ℓ⟩)``; the parameters enter unbatched,
  so the forward is still computed once.
* ``"loop"`` — one forward, then the T backwards one at a time. Eagerly it is a loop of
  ``torch.autograd.grad`` on detached copies of the parameters (nothing is mutated), from each
  ℓ_t itself when ``loss_fn`` ends in ``torch.stack``; under ``torch.compile`` or another
  ``torch.func`` transform it is one ``vjp`` and T pullbacks.
* ``"auto"`` — the default: the fastest of the three for this problem, measured once and cached
  (see :mod:`fmtl.strategy`).

Costs worth knowing (measurements in ``benchmarks/RESULTS.md``):

* Heads applied one by one (``{t: head_t(z)}``) cost T² under any strategy: the pullback of
  each e_t runs through every head (with zero cotangents for s ≠ t), so the vectorized
  backward materializes a [T, B, D] cotangent per head. Applying identical heads as one
  batched product over their stacked weights (``einsum("bd,tod->tbo", z, W)`` with
  ``W = stack(ψ_t)``; the parameter layout stays one ψ_t per task) removes the term.
* Convolutions: the batching rule of ``convolution_backward`` already folds the task dimension
  into the batch for the input gradient ((T·N)CHW) and into the output channels for the weight
  gradient (N(T·O)HW); what costs is the T× larger working set (and, with glibc's default
  allocator, fresh pages for every large temporary: :mod:`fmtl.allocator`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDict
from torch.func import grad, vjp, vmap
from torch.overrides import TorchFunctionMode

from .base import TaskGradients
from .params import check_params, task_names

__all__ = ["task_gradients", "STRATEGIES", "LossFn", "check_losses", "checked_loss"]

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


def checked_loss(loss_fn: LossFn, batch: TensorDict, names: list[str]) -> Callable[[TensorDict], torch.Tensor]:
    """``params -> loss_fn(params, batch)``, checked to return one loss per task (:func:`check_losses`).

    Example:
        >>> f = checked_loss(lambda p, b: p * b, torch.ones(2), ["a", "b"])
        >>> f(torch.tensor([1.0, 2.0]))
        tensor([1., 2.])
    """

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
    # randomness="same": the T copies of the forward draw one set of random numbers (one dropout
    # mask per sample, shared by all T task gradients, as in the single forward of the other
    # strategies). With chunk_size, torch replays the CPU generator for every chunk, not CUDA's.
    J, losses = vmap(grad(one, has_aux=True), in_dims=(None, 0), chunk_size=chunk_size, randomness="same")(
        params, eye
    )
    return losses[0], J


class _StackRecorder(TorchFunctionMode):
    """Records the inputs of every ``torch.stack`` call made while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.stacks: list[tuple[list[torch.Tensor], torch.Tensor]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.stack and args:
            self.stacks.append((list(args[0]), out))
        return out


def _autograd_loop(f: Callable, params: TensorDict, names: list[str]) -> TaskGradients:
    # Eager only. When ℓ = stack(ℓ_1, …, ℓ_T), each ℓ_t is its own root: its backward then
    # never visits the other heads, while a pullback of e_t through the stack sends zero
    # cotangents through all T heads (T² head backwards in all).
    leaves = params.apply(lambda v: v.detach().requires_grad_())
    T = len(names)
    with torch.enable_grad():
        recorder = _StackRecorder()
        with recorder:
            losses = f(leaves)
        roots = next((ts for ts, out in reversed(recorder.stacks) if out is losses and len(ts) == T), None)
        roots = roots if roots is not None else list(losses.unbind(0))
        shared = list(leaves["shared"].values(True, True))
        rows, heads = [], {}
        for t, name in enumerate(names):
            head = leaves["tasks", name]
            inputs = shared + list(head.values(True, True))
            g = torch.autograd.grad(roots[t], inputs, retain_graph=t < T - 1, allow_unused=True)
            g = [torch.zeros_like(x) if d is None else d for d, x in zip(g, inputs, strict=True)]
            rows.append(g[: len(shared)])
            heads[name] = head.empty(recurse=True).update(
                dict(zip(head.keys(True, True), g[len(shared) :], strict=True))
            )
    keys = list(leaves["shared"].keys(True, True))
    J = TensorDict({k: torch.stack([r[i] for r in rows]) for i, k in enumerate(keys)}, [T])
    return TaskGradients(losses.detach(), J, TensorDict(heads, []))


def _in_transform() -> bool:
    return torch.compiler.is_compiling() or torch._C._functorch.maybe_current_level() is not None


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
    f = checked_loss(loss_fn, batch, names)
    if strategy == "loop" and not _in_transform():
        return _autograd_loop(f, params, names)
    losses, J = _IMPLEMENTATIONS[strategy](f, params, len(names), chunk_size)
    return _pack(losses, J, names)

"""The T task gradients computed by each concrete strategy of :func:`fmtl.task_gradients`.

All strategies are pure functions of ``(params, batch)``, all compile-able, all return the same
numbers (up to the order of floating-point reductions):

* ``"jacrev"`` — one ``torch.func.vjp`` (one forward), then ``vmap`` of its pullback over
  the T unit cotangents e_t: row t of the result is ``e_tᵀ ∂ℓ/∂params = ∇ℓ_t``.
* ``"vmap_grad"`` — ``vmap`` over e_t of ``grad(⟨e_t, ℓ⟩)``; the parameters enter unbatched,
  so the forward is still computed once.
* ``"loop"`` — one forward, then the T backwards one at a time. Eagerly it is a loop of
  ``torch.autograd.grad`` on detached copies of the parameters (nothing is mutated), from each
  ℓ_t itself when ``loss_fn`` ends in ``torch.stack``; under ``torch.compile`` or another
  ``torch.func`` transform it is one ``vjp`` and T pullbacks.

``chunk_size`` (``jacrev``, ``vmap_grad``) runs at most that many of the T backwards at once.
Eagerly each chunk's rows go straight into one preallocated [T, ...] buffer per leaf, so J is held
once (``vmap(chunk_size=…)`` concatenates at the end and holds it twice). A chunk of one task is
the eager loop itself, whose backwards add into the rows of J in place: on the MLP at T = 40 both
peak at 90.6 MiB (the lean loop baseline, rows stacked at the end: 175.8), on the CNN 80.1 MiB
(the baseline: 80.0; ``benchmarks/RESULTS.md`` §10.11).

Costs worth knowing (measurements in ``benchmarks/RESULTS.md``):

* Heads applied one by one (``{t: head_t(z)}``) cost T² under any vectorized strategy: the
  pullback of each e_t runs through every head (with zero cotangents for s ≠ t), so the
  vectorized backward materializes a [T, B, D] cotangent per head. Applying linear heads as one
  product (:func:`fmtl.heads.linear_heads`; the parameter layout stays one ψ_t per task) removes
  the term.
* Convolutions: the batching rule of ``convolution_backward`` already folds the task dimension
  into the batch for the input gradient ((T·N)CHW) and into the output channels for the weight
  gradient (N(T·O)HW); what costs is the T× larger working set (and, with glibc's default
  allocator, fresh pages for every large temporary: :mod:`fmtl.allocator`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from tensordict import TensorDict
from torch.func import grad, vjp, vmap
from torch.overrides import TorchFunctionMode

from . import rng
from .base import TaskGradients
from .params import task_names

__all__ = ["CONCRETE", "LossFn", "check_losses", "checked_loss", "compute"]

LossFn = Callable[[TensorDict, TensorDict], torch.Tensor]
CONCRETE = ("jacrev", "vmap_grad", "loop")


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


def _chunked(rows_of: Callable[[torch.Tensor], TensorDict], eye: torch.Tensor, chunk_size: int) -> TensorDict:
    """The T rows, ``chunk_size`` at a time, each chunk written into one preallocated [T, ...] per leaf.

    ``vmap(chunk_size=…)`` concatenates the chunks at the end, holding J twice at its peak; writing
    each chunk into its place as it comes holds J once (plus one chunk), which is what lets a chunk
    of 1 come in under the loop's peak. Eager only (it writes into buffers it allocated itself).
    """
    T = eye.shape[0]
    keys, buffers = None, []
    for start in range(0, T, chunk_size):
        rows = rows_of(eye[start : start + chunk_size])
        if keys is None:
            keys = list(rows.keys(True, True))
            buffers = [rows[k].new_empty((T, *rows[k].shape[1:])) for k in keys]
        for k, buf in zip(keys, buffers, strict=True):
            buf[start : start + chunk_size].copy_(rows[k])
        del rows
    out = TensorDict({}, [])
    for k, buf in zip(keys, buffers, strict=True):
        out.set(k, buf)
    return out


def _jacrev(f: Callable, params: TensorDict, T: int, chunk_size: int | None):
    losses, pullback = vjp(f, params)
    eye = torch.eye(T, dtype=losses.dtype, device=losses.device)
    if chunk_size is not None and chunk_size < T and not _in_transform():
        return losses, _chunked(lambda e: vmap(pullback)(e)[0], eye, chunk_size)
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
    # strategies). With torch's chunk_size, torch replays the CPU generator for every chunk, not CUDA's.
    batched = vmap(grad(one, has_aux=True), in_dims=(None, 0), randomness="same")
    if chunk_size is not None and chunk_size < T and not _in_transform():
        seen = []  # the losses of the first chunk (every chunk computes the same forward)
        start = rng.get(device)  # every chunk replays the first chunk's draws (CPU and CUDA)

        def rows_of(e: torch.Tensor) -> TensorDict:
            rng.set(start, device)
            J, losses = batched(params, e)
            if not seen:
                seen.append(losses[0])
            return J

        J = _chunked(rows_of, eye, chunk_size)
        return seen[0], J
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
    # Memory: the backward accumulates each leaf's gradient straight into row t of one zeroed
    # [T, ...] buffer per leaf (AccumulateGrad adds in place into a .grad it did not make), so no
    # whole row is ever held apart from J, nor J twice (a list of rows stacked at the end); and the
    # last backward frees the graph's saved tensors as it goes (retain_graph=False), which no
    # torch.func pullback can. 0 + g_t is g_t exactly.
    leaves = params.apply(lambda v: v.detach().requires_grad_())
    T = len(names)
    with torch.enable_grad():
        recorder = _StackRecorder()
        with recorder:
            losses = f(leaves)
        roots = next((ts for ts, out in reversed(recorder.stacks) if out is losses and len(ts) == T), None)
        roots = roots if roots is not None else list(losses.unbind(0))
        keys = list(leaves["shared"].keys(True, True))
        shared = [leaves["shared", k] for k in keys]
        J = [x.new_zeros((T, *x.shape)) for x in shared]
        heads = {}
        for t, name in enumerate(names):
            head = leaves["tasks", name]
            head_leaves = list(head.values(True, True))
            for x, rows in zip(shared, J, strict=True):
                x.grad = rows[t]  # the backward adds each leaf's gradient into row t in place
            torch.autograd.backward(roots[t], inputs=shared + head_leaves, retain_graph=t < T - 1)
            heads[name] = head.empty(recurse=True).update(
                {k: torch.zeros_like(x) if x.grad is None else x.grad
                 for k, x in zip(head.keys(True, True), head_leaves, strict=True)}
            )  # fmt: skip
            for x in shared + head_leaves:
                x.grad = None
    J = TensorDict(dict(zip(keys, J, strict=True)), [T])
    return TaskGradients(losses.detach(), J, TensorDict(heads, []))


def _in_transform() -> bool:
    return torch.compiler.is_compiling() or torch._C._functorch.maybe_current_level() is not None


def _loop(f: Callable, params: TensorDict, T: int, chunk_size: int | None):
    losses, pullback = vjp(f, params)
    eye = torch.eye(T, dtype=losses.dtype, device=losses.device)
    rows = [pullback(eye[t])[0] for t in range(T)]
    return losses, torch.stack(rows, 0)


_IMPLEMENTATIONS = {"jacrev": _jacrev, "vmap_grad": _vmap_grad, "loop": _loop}


def compute(
    strategy: str, loss_fn: LossFn, params: TensorDict, batch: Any, *, chunk_size: int | None = None
) -> TaskGradients:
    """The task gradients by one concrete strategy (:data:`CONCRETE`); params already checked.

    :func:`fmtl.task_gradients` validates its inputs and resolves ``"auto"``, then calls this;
    :mod:`fmtl.strategy` times it.

    Example:
        >>> p = TensorDict({"shared": {"w": torch.ones(2)}, "tasks": {"a": {}, "b": {}}}, [])
        >>> g = compute("jacrev", lambda p, b: p["shared", "w"] * b, p, torch.tensor([2.0, 3.0]))
        >>> g.shared["w"]
        tensor([[2., 0.],
                [0., 3.]])
    """
    names = task_names(params)
    f = checked_loss(loss_fn, batch, names)
    # a chunk of one task is the loop's schedule: eagerly, the same autograd loop (the lowest peak)
    if (strategy == "loop" or (strategy == "jacrev" and chunk_size == 1)) and not _in_transform():
        return _autograd_loop(f, params, names)
    losses, J = _IMPLEMENTATIONS[strategy](f, params, len(names), chunk_size)
    return _pack(losses, J, names)



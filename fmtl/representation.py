"""Representation gradients (MGDA-UB; LibMTL's ``rep_grad``): the T task gradients w.r.t. z, not θ.

A model written in two stages, an encoder ``z = encode(θ, batch)`` and heads
``ℓ = heads(ψ, z, batch)``, has ∇θ ℓ_t = (∂z/∂θ)ᵀ ∇z ℓ_t. ``make_step(..., rep_grad=True)``
then computes

1. z and the encoder's pullback: one forward of the encoder;
2. the T gradients Z_t = ∇z ℓ_t (and ∇ψ_t ℓ_t) by :func:`fmtl.task_gradients` on the heads
   alone, with z in place of θ: T backwards through the heads only;
3. the balancer on them, as if z were θ: its output for θ is a z-shaped gradient g̃_z;
4. one backward of the encoder with g̃_z as cotangent: ∇θ = (∂z/∂θ)ᵀ g̃_z.

For a method whose output is a combination of the rows, g̃_z = Zᵀw, step 4 is the gradient of
Σ_t w_t ℓ_t (one backward, the cost of equal weighting), so the whole step costs about an EW
step plus T backwards through the heads and the T×T Gramian of Z.

**Eagerly** (not compiled, not inside another ``torch.func`` transform, ``strategy="auto"``,
no ``chunk_size`` or ``max_memory``, z one tensor) steps 1–4 are plain autograd on detached
copies of the parameters: one forward of the encoder whose graph is kept for step 4, Z from one
batched backward of the T unit cotangents to z alone, ∇ψ_t ℓ_t from one backward of Σ_t ℓ_t (each
head's parameters enter only their own task's loss, the assumption of every task-gradient
strategy, so ∇ψ_t Σ_s ℓ_s = ∇ψ_t ℓ_t), step 4 one ``autograd.grad`` of z. It skips the
transforms' wrapping of every leaf and their pytree work, which on the MLP at T = 11 cost more
than the heads' backwards themselves (``benchmarks/RESULTS.md`` §10.6). Otherwise (and under
``torch.compile``) the encoder runs under ``torch.func.vjp`` and Z comes from
:func:`fmtl.task_gradients` with the given strategy; both give the same numbers.

**Cost that stays above an EW step.** Z is [T, B, D] per sample, so its Gramian costs T²·B·D
multiply-adds, and with the heads applied as one product (:func:`fmtl.heads.linear_heads`) the
batched backward to z costs T²·B·D as well (each task's cotangent crosses the whole
[ΣO_t, D] head matrix). On the benchmark MLP (B = 128, D = 512) each is ~4 % of an EW step's
multiply-adds (2.1·10⁸) at T = 11 and ~50 % at T = 40. Heads declared linear
(:class:`fmtl.heads.LinearHeads`) remove both for the Gramian methods: Z_t = A_t W_t with
A_t = ∂ℓ_t/∂y_t, so G_z factors and Z is never formed (:mod:`fmtl.linear_representation`); the
step then costs about an EW step at T = 11 and 40 (``benchmarks/RESULTS.md`` §10.10).

**How the maths differs from the parameter-gradient version.** The weights are chosen from the
Gramian G_z = Z Zᵀ of the representation gradients instead of G = J Jᵀ: the inner products are
taken over z's entries (batch × features, all flattened), not over θ. Sener & Koltun (2018,
MGDA-UB) justify it for MGDA: ‖Σ_t w_t ∇θ ℓ_t‖ ≤ ‖∂z/∂θ‖ ‖Σ_t w_t Z_t‖, so minimizing the
right-hand norm over the simplex minimizes an upper bound of MGDA's objective. For the other
methods it is the same substitution without a bound: their conflict tests and projections see
⟨∇z ℓ_s, ∇z ℓ_t⟩ rather than ⟨∇θ ℓ_s, ∇θ ℓ_t⟩.

**Which methods** (derived, not listed: ``make_step`` accepts a balancer whose state does not
depend on the shapes of θ, :func:`check_support`):

* the Gramian methods — ``mgda`` (MGDA-UB), ``pcgrad``, ``cagrad``, ``upgrad``, ``imtl_g``,
  ``aligned_mtl``, ``nash_mtl``, ``gradvac``, ``gradnorm``, ``imtl``: exactly the weighting above;
  the weights of the heads (MGDA, GradNorm, IMTL, Nash-MTL) are applied to ∇ψ_t ℓ_t as usual;
* ``graddrop``: its per-coordinate sign masks act on z, which is where the original paper puts
  them (LibMTL applies GradDrop to z as well); the result is not a weighting of the losses, and
  step 4 back-propagates the masked z-gradient;
* the loss methods (``ew``, ``uw``, ``dwa``, …) compute no task gradients at all; ``rep_grad``
  changes nothing for them.

Refused, with a ``ValueError``: ``dbmtl`` (its EMA ĝ_t lives in θ-space; z changes with every
batch, so an EMA of representation gradients has no meaning — LibMTL refuses it too),
``moco`` and ``metabalance`` (their states are shaped like θ).

**PCGrad.** Projecting one task gradient off another keeps it in the span of the rows, so the
projected, summed z-gradient is Zᵀw with w = 1ᵀC (:func:`fmtl.balancers.pcgrad.pcgrad_coefficients`,
C from G_z): back-propagating the projected z-gradient (how a rep-grad PCGrad would be written
with ``.backward``) and the single backward of Σ_t w_t ℓ_t are the same computation. LibMTL
refuses PCGrad, CAGrad, GradVac and Nash-MTL with ``rep_grad`` (its implementations project
flat parameter vectors); fmtl's Gramian forms make them well defined.

**Deviation from LibMTL.** LibMTL sums the per-sample representation gradients over the batch
before its methods see them (a [T, D] matrix; its ``_get_grads``), so its Gramian is
⟨Σ_b ∇z_b ℓ_s, Σ_b ∇z_b ℓ_t⟩. fmtl keeps the batch axis (Σ_b ⟨∇z_b ℓ_s, ∇z_b ℓ_t⟩), the inner
product of MGDA-UB's bound and of the original MGDA-UB code; the back-propagated z-gradient
Σ_t w_t Z_t is per sample in both.

Not supported: a ``reduce`` hook (data-parallel): the ranks' z are different samples, so the
global Gramian is the sum of the ranks' Gramians, not the Gramian of averaged rows; the hook
for that does not exist yet.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from tensordict import TensorDict
from torch.func import grad, vjp
from torch.utils import _pytree as pytree

from .balancers.dbmtl import DBMTLState
from .base import Balancer, TaskGradients
from .heads import LinearHeads
from .jacobian import _in_transform
from .params import task_names
from .task_gradients import check_losses, task_gradients

__all__ = ["TwoStageLoss", "check_support", "check_task_axis", "encoder_graph", "per_task", "representation_gradients"]

Encode = Callable[[TensorDict, Any], Any]
Heads = Callable[[TensorDict, Any, Any], torch.Tensor]


class TwoStageLoss(NamedTuple):
    """A loss written as an encoder and heads: ``heads(ψ, encode(θ, batch), batch) -> Tensor[T]``.

    ``encode(params["shared"], batch) -> z`` (a Tensor, or a TensorDict of tensors) and
    ``heads(params["tasks"], z, batch) -> Tensor[T]``, one loss per task in the order of
    ``params["tasks"]``. ℓ_t must depend on θ only through z (the heads never see θ). Called as
    ``loss(params, batch)`` it is an ordinary ``loss_fn``, so the same problem runs with parameter
    gradients (``make_step(loss, ...)``) or representation gradients
    (``make_step(loss, ..., rep_grad=True)``).

    ``task_axis=True`` declares heads that also take z with a leading axis of one copy per task,
    ``[T, *z.shape]``, and then compute ℓ_t from z[t] alone (:func:`fmtl.heads.linear_heads`
    ``(..., task_axis=True)``), giving the same losses as on z itself. Called as a ``loss_fn`` the
    heads still get z (parameter gradients are unchanged, to the bit); with ``rep_grad=True`` they
    get the copies, and the representation gradients come from one backward of Σ_t ℓ_t to them (the
    gradient of copy t is Z_t) instead of T backwards through all the heads: on the benchmark MLP
    at T = 40, 14.9 ms instead of 20.4 for the encoder's forward, Z and ∇ψ_t ℓ_t
    (``benchmarks/task_axis_heads.py``, ``benchmarks/RESULTS.md`` §10.9). A head
    that reads another task's copy breaks the contract and gives wrong representation gradients.

    Linear heads are better declared as ``heads = fmtl.heads.LinearHeads(criterion)`` (with
    ``task_axis=False``): a Gramian method then takes the Gramian of Z from the heads' factors and
    never forms Z (:mod:`fmtl.linear_representation`).

    Example:
        >>> import torch, fmtl
        >>> from tensordict import TensorDict
        >>> encoder = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh())
        >>> params, apply = fmtl.functionalize(encoder, {"a": torch.nn.Linear(8, 1), "b": torch.nn.Linear(8, 1)})
        >>> def encode(shared, batch):
        ...     return torch.func.functional_call(encoder, fmtl.params.flat_dict(shared), (batch["x"],))
        >>> def heads(tasks, z, batch):
        ...     out = fmtl.heads.linear_heads(tasks, z)
        ...     return torch.stack([(out[t].squeeze(-1) - batch["y"][:, i]).pow(2).mean() for i, t in enumerate(out)])
        >>> loss = fmtl.TwoStageLoss(encode, heads)
        >>> batch = TensorDict({"x": torch.randn(16, 3), "y": torch.randn(16, 2)}, [16])
        >>> loss(params, batch).shape
        torch.Size([2])
        >>> def heads_per_task(tasks, z, batch):  # z: [16, 8], or [T, 16, 8] (head t reads z[t])
        ...     out = fmtl.heads.linear_heads(tasks, z, task_axis=z.dim() == 3)
        ...     return torch.stack([(out[t].squeeze(-1) - batch["y"][:, i]).pow(2).mean() for i, t in enumerate(out)])
        >>> z = encode(params["shared"], batch)
        >>> torch.allclose(heads_per_task(params["tasks"], per_task(z, 2), batch), loss(params, batch))
        True
    """

    encode: Encode
    heads: Heads
    task_axis: bool = False

    def __call__(self, params: TensorDict, batch: Any) -> torch.Tensor:
        return self.heads(params["tasks"], self.encode(params["shared"], batch), batch)


def per_task(z: Any, num_tasks: int) -> Any:
    """z with a leading axis of ``num_tasks`` copies (an ``expand``: no memory is copied).

    Example:
        >>> per_task(torch.ones(2, 3), 4).shape
        torch.Size([4, 2, 3])
    """
    if isinstance(z, TensorDict):
        return z.expand(num_tasks, *z.batch_size)
    return pytree.tree_map(lambda v: v.unsqueeze(0).expand(num_tasks, *v.shape), z)


def _probe(params: TensorDict) -> TensorDict:
    first = next(iter(params["shared"].values(True, True)), None)
    like = {} if first is None else {"dtype": first.dtype, "device": first.device}
    return TensorDict({"shared": {"z": torch.zeros(1, **like)}, "tasks": params["tasks"]}, [])


def check_support(balancer: Balancer, params: TensorDict, num_tasks: int) -> None:
    """Raises ``ValueError`` unless ``balancer`` can run on representation gradients.

    The test is structural: the balancer's state must not depend on the shapes of θ (it is built
    for θ and must serve for any z). DB-MTL, MoCo and MetaBalance keep θ-shaped state and fail it.

    Example:
        >>> import fmtl
        >>> p = TensorDict({"shared": {"w": torch.zeros(3)}, "tasks": {"a": {}, "b": {}}}, [])
        >>> check_support(fmtl.balancers.get("mgda"), p, 2)
        >>> check_support(fmtl.balancers.get("dbmtl"), p, 2)
        Traceback (most recent call last):
        ...
        ValueError: rep_grad: DB-MTL does not run on representation gradients: ...
    """
    def layout(state: Any) -> tuple:
        leaves, spec = pytree.tree_flatten(state)
        return spec, [tuple(x.shape) for x in leaves]

    state = balancer.init(params, num_tasks)
    if isinstance(state, DBMTLState):
        raise ValueError(
            "rep_grad: DB-MTL does not run on representation gradients: its EMA ĝ_t lives in the space of θ, "
            "and z changes with every batch; use parameter gradients (rep_grad=False)"
        )
    if layout(state) != layout(balancer.init(_probe(params), num_tasks)):
        raise ValueError(
            "rep_grad: this balancer keeps state shaped like the shared parameters θ (as MoCo and MetaBalance "
            "do), which has no counterpart for the representation z; use parameter gradients (rep_grad=False)"
        )


def check_task_axis(loss: TwoStageLoss, strategy: str, chunk_size: int | None, max_memory: int | None) -> None:
    """Raises ``ValueError`` for task-axis heads given a task-gradient strategy: they have none to choose.

    Example:
        >>> loss = TwoStageLoss(lambda s, b: b, lambda t, z, b: z.sum(-1), task_axis=True)
        >>> check_task_axis(loss, "loop", None, None)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: rep_grad with task-axis heads (...) takes Z in one backward: strategy='loop', ...
    """
    if loss.task_axis and isinstance(loss.heads, LinearHeads):
        raise ValueError(
            "rep_grad: LinearHeads take z itself, not one copy per task (their representation gradients factor: "
            "fmtl.linear_representation); build the TwoStageLoss with task_axis=False"
        )
    if loss.task_axis and (strategy != "auto" or chunk_size is not None or max_memory is not None):
        raise ValueError(
            "rep_grad with task-axis heads (TwoStageLoss(..., task_axis=True)) takes Z in one backward: "
            f"strategy={strategy!r}, chunk_size and max_memory do not apply (leave them unset)"
        )


def representation_gradients(
    loss: TwoStageLoss,
    params: TensorDict,
    batch: Any,
    *,
    strategy: str = "auto",
    chunk_size: int | None = None,
    max_memory: int | None = None,
) -> tuple[TaskGradients, TensorDict, Callable[[Any], TensorDict]]:
    """The task gradients w.r.t. z, the parameters the balancer sees, and the encoder's pullback.

    .. math::
        z = \\mathrm{encode}(\\theta),\\quad Z_t = \\nabla_z \\ell_t,\\quad
        \\mathrm{pullback}(v) = (\\partial z / \\partial \\theta)^\\top v

    Returns ``(grads, z_params, pullback)``: ``grads.shared`` is the ``[T]``-stacked Z under the
    key ``"z"``, ``grads.tasks`` holds ∇ψ_t ℓ_t; ``z_params`` is ``{"shared": {"z": z}, "tasks": ψ}``
    (what the balancer gets as ``params``); ``pullback(g_z)`` is ∇θ ⟨g_z, z⟩, a TensorDict shaped
    like ``params["shared"]``. The T backwards run through the heads only
    (:func:`fmtl.task_gradients` with ``strategy``, ``chunk_size``, ``max_memory``; ``"auto"``
    decides once per ``heads`` function and shape of z).

    Example:
        >>> import torch, fmtl
        >>> p = TensorDict({"shared": {"w": torch.tensor(2.0)}, "tasks": {"a": {"v": torch.tensor(3.0)},
        ...                 "b": {"v": torch.tensor(5.0)}}}, [])
        >>> heads = lambda t, z, b: torch.stack([t["a", "v"] * z, t["b", "v"] * z])
        >>> loss = TwoStageLoss(lambda s, b: s["w"] * b, heads)
        >>> grads, zp, pullback = representation_gradients(loss, p, torch.tensor(1.0))
        >>> grads.shared["z"], pullback(torch.tensor(1.0))["w"]  # ∇z ℓ = (3, 5); ∂z/∂w = b = 1
        (tensor([3., 5.]), tensor(1.))
    """
    check_task_axis(loss, strategy, chunk_size, max_memory)
    if strategy == "auto" and chunk_size is None and max_memory is None and not _in_transform():
        fast = _autograd_representation(loss, params, batch)
        if fast is not None:
            return fast
    z, pullback = vjp(lambda shared: loss.encode(shared, batch), params["shared"])
    z_params = TensorDict({"shared": {"z": z}, "tasks": params["tasks"]}, [])
    if loss.task_axis:
        grads = _task_axis_gradients(loss, z_params, batch)
    else:
        grads = task_gradients(
            _heads_loss(loss.heads), z_params, batch, strategy=strategy, chunk_size=chunk_size, max_memory=max_memory
        )
    # the balancer's output for z drops a TensorDict z's batch size; the pullback wants z's own structure
    spec = pytree.tree_structure(z)
    return grads, z_params, lambda g_z: pullback(pytree.tree_unflatten(pytree.tree_leaves(g_z), spec))[0]


def _leaf(v: torch.Tensor) -> torch.Tensor:
    return v.detach().requires_grad_()


def _autograd_representation(
    loss: TwoStageLoss, params: TensorDict, batch: Any
) -> tuple[TaskGradients, TensorDict, Callable[[Any], TensorDict]] | None:
    """The eager path of :func:`representation_gradients`: plain autograd, three backward calls.

    One forward of the encoder on detached leaves θ (its graph kept for the pullback), the heads
    on a detached z; Z from one batched backward of the T unit cotangents to z alone
    (``is_grads_batched``), ∇ψ_t ℓ_t from one backward of Σ_t ℓ_t: each head's parameters enter only
    their own task's loss (what the task gradients assume everywhere: ``fmtl.jacobian`` keeps the
    diagonal blocks), so ∇ψ_t Σ_s ℓ_s = ∇ψ_t ℓ_t, and the T² head products a batched backward to
    ψ would make are skipped. Against the ``torch.func`` strategies on the MLP at T = 11 and 40 it
    saves the transforms' wrapping of every leaf and the pytree work (``benchmarks/RESULTS.md``).
    ``None`` (the caller takes the ``torch.func`` path) for a representation that is not one tensor.
    """
    names = task_names(params)
    tasks = params["tasks"].apply(_leaf)
    z, pullback = encoder_graph(loss.encode, params["shared"], batch)
    if not isinstance(z, torch.Tensor):
        return None
    with torch.enable_grad():
        head_leaves = list(tasks.values(True, True))
        if loss.task_axis:
            # one backward of Σ_t ℓ_t: copy t of z receives ∇z ℓ_t, head t ∇ψ_t ℓ_t
            z_in = _leaf(per_task(z.detach(), len(names)))
            losses = loss.heads(tasks, z_in, batch)
            check_losses(losses, names)
            Z, *head_grads = torch.autograd.grad(losses.sum(), [z_in, *head_leaves], allow_unused=True)
            if Z is None:  # no head reads z
                Z = torch.zeros_like(z_in)
        else:
            z_in = _leaf(z)
            losses = loss.heads(tasks, z_in, batch)
            check_losses(losses, names)
            eye = torch.eye(len(names), dtype=losses.dtype, device=losses.device)
            (Z,) = torch.autograd.grad(losses, z_in, eye, is_grads_batched=True, retain_graph=True)
            head_grads = torch.autograd.grad(losses.sum(), head_leaves, allow_unused=True) if head_leaves else ()
    head_grads = [torch.zeros_like(x) if g is None else g for g, x in zip(head_grads, head_leaves, strict=True)]
    heads = params["tasks"].empty(recurse=True).update(dict(zip(tasks.keys(True, True), head_grads, strict=True)))
    grads = TaskGradients(losses.detach(), TensorDict({"z": Z}, [len(names)]), heads)
    z_params = TensorDict({"shared": {"z": z.detach()}, "tasks": params["tasks"]}, [])
    return grads, z_params, pullback


def encoder_graph(encode: Encode, shared: TensorDict, batch: Any) -> tuple[Any, Callable[[Any], TensorDict]]:
    """z = encode(θ, batch) in plain autograd, its graph kept, and the pullback g_z ↦ ∇θ ⟨g_z, z⟩.

    The eager counterpart of ``torch.func.vjp`` for the representation paths: θ's leaves are
    detached copies, so the caller's params never enter a graph. The pullback runs once (the
    graph is freed) and gives zeros for an encoder without parameters or a z that does not
    depend on them.

    Example:
        >>> z, pullback = encoder_graph(lambda s, b: s["w"] * b, TensorDict({"w": torch.tensor(2.0)}, []), 3.0)
        >>> z.item(), pullback(torch.tensor(1.0))["w"]
        (6.0, tensor(3.))
    """
    leaves = shared.apply(_leaf)
    with torch.enable_grad():
        z = encode(leaves, batch)
    keys = list(leaves.keys(True, True))
    theta = list(leaves.values(True, True))

    def pullback(g_z: torch.Tensor) -> TensorDict:
        # an encoder without parameters, or a z that does not depend on them: ∇θ = 0
        g = torch.autograd.grad(z, theta, g_z, allow_unused=True) if theta and z.requires_grad else [None] * len(theta)
        g = [torch.zeros_like(x) if d is None else d for d, x in zip(g, theta, strict=True)]
        return shared.empty(recurse=True).update(dict(zip(keys, g, strict=True)))

    return z, pullback


def _task_axis_gradients(loss: TwoStageLoss, z_params: TensorDict, batch: Any) -> TaskGradients:
    """Z and ∇ψ_t ℓ_t of task-axis heads under ``torch.func``: one ``grad`` of Σ_t ℓ_t (compilable)."""
    names = task_names(z_params)
    z = z_params["shared", "z"]

    def summed(z_t: Any, tasks: TensorDict) -> tuple[torch.Tensor, torch.Tensor]:
        losses = loss.heads(tasks, z_t, batch)
        return losses.sum(), losses

    (Z, heads), losses = grad(summed, argnums=(0, 1), has_aux=True)(per_task(z, len(names)), z_params["tasks"])
    check_losses(losses, names)
    return TaskGradients(losses, TensorDict({"z": Z}, [len(names)]), heads)


def _heads_loss(heads: Heads) -> Callable[[TensorDict, Any], torch.Tensor]:
    # a fresh closure per call, but "auto"'s cache key is the code and the callables it closes
    # over (fmtl.strategy.cache_key): one decision per `heads`
    def heads_loss(p: TensorDict, batch: Any) -> torch.Tensor:
        return heads(p["tasks"], p["shared", "z"], batch)

    return heads_loss

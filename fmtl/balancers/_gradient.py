"""How gradient balancers are assembled: a *weighting* of the Gramian, combined with J.

Most gradient methods (MGDA, CAGrad, IMTL-G, Nash-MTL, Aligned-MTL, UPGrad, PCGrad, GradVac,
GradNorm) only need the T×T Gramian ``G = J Jᵀ`` to choose their weights; the aggregate is then
``Jᵀ w`` (TorchJD's weighting/aggregator split). :func:`gramian_balancer` makes that structure
explicit: the method supplies ``weighting(G, losses, state) -> (w_shared, w_tasks, state, info)``
and never sees J. Methods that need J itself (GradDrop, MoCo, MetaBalance) write ``update``
directly and start from :func:`prepare`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from tensordict import TensorDict

from ..base import Balancer, EmptyState, TaskGradients
from ..tree import combine, gramian
from ._common import assemble, weighted_tasks
from ._common import log_scale as _log_scale
from ._common import log_transform as _log_transform

__all__ = ["Weighting", "gramian_balancer", "prepare", "finish"]

Weighting = Callable[
    [torch.Tensor, torch.Tensor, Any], "tuple[torch.Tensor, torch.Tensor | None, Any, dict[str, torch.Tensor]]"
]


def _empty(params: TensorDict, num_tasks: int) -> EmptyState:
    return EmptyState()


def prepare(grads: TaskGradients, params: TensorDict, log_transform: bool, eps: float) -> TaskGradients:
    """The task gradients a method sees: those of log(ℓ_t + ε) when ``log_transform`` (Fig. 1).

    Example:
        >>> p = TensorDict({"shared": {}, "tasks": {"a": {}}}, [])
        >>> g = TaskGradients(torch.tensor([2.0]), TensorDict({"w": torch.tensor([[4.0]])}, [1]), TensorDict({"a": {}}))
        >>> prepare(g, p, True, 0.0).shared["w"]
        tensor([[2.]])
    """
    return _log_transform(grads, params, eps) if log_transform else grads


def finish(shared: TensorDict, w_tasks: torch.Tensor | None, tasks: TensorDict) -> TensorDict:
    """The params-shaped gradient: θ gets ``shared``; ψ_t gets ``w_t ∇ψ_t`` (or ``∇ψ_t`` if None).

    Example:
        >>> out = finish(TensorDict({"w": torch.ones(1)}, []), None, TensorDict({"a": {"b": torch.ones(1)}}, []))
        >>> out["tasks", "a", "b"]
        tensor([1.])
    """
    return assemble(shared, tasks if w_tasks is None else weighted_tasks(w_tasks, tasks))


def gramian_balancer(
    weighting: Weighting,
    init: Callable[[TensorDict, int], Any] = _empty,
    *,
    log_transform: bool = False,
    eps: float = 1e-8,
) -> Balancer:
    """A balancer whose weights are a function of the Gramian (and the losses) only.

    .. math::
        G = J J^\\top,\\quad (w, w^\\psi) = \\mathrm{weighting}(G, \\ell),\\quad
        \\tilde g_\\theta = J^\\top w,\\quad \\tilde g_{\\psi_t} = w^\\psi_t \\nabla_{\\psi_t} \\ell_t

    ``w^ψ = None`` leaves the task-specific gradients unweighted (methods whose weights touch θ
    only, paper Sec. 2.2). ``info["weights"]`` is w.

    The balancer's ``from_gramian`` is the same method on the raw Gramian alone (for callers that
    have G but not J: :mod:`fmtl.linear_representation`). With the log transform, whose rows are
    d_t J_t with d_t = 1/(ℓ_t + ε), it weighs D G D (D = diag(d)) and returns the weights of the raw
    rows, d ∘ w and d ∘ w^ψ: the same gradient as ``update``, rounded differently.

    Example:
        >>> import torch
        >>> def halves(G, losses, state):
        ...     w = torch.full_like(losses, 0.5)
        ...     return w, None, state, {}
        >>> b = gramian_balancer(halves)
        >>> p = TensorDict({"shared": {"w": torch.zeros(2)}, "tasks": {"a": {}, "b": {}}}, [])
        >>> g = TaskGradients(torch.ones(2), TensorDict({"w": torch.eye(2)}, [2]), TensorDict({"a": {}, "b": {}}))
        >>> b.update(g, b.init(p, 2), p)[0]["shared", "w"]
        tensor([0.5000, 0.5000])
    """

    def update(grads: TaskGradients, state: Any, params: TensorDict) -> tuple[TensorDict, Any, dict]:
        grads = prepare(grads, params, log_transform, eps)
        w, w_tasks, state, info = weighting(gramian(grads.shared), grads.losses, state)
        return finish(combine(w, grads.shared), w_tasks, grads.tasks), state, {**info, "weights": w}

    def from_gramian(G: torch.Tensor, losses: torch.Tensor, state: Any, params: TensorDict):
        if not log_transform:
            w, w_tasks, state, info = weighting(G, losses, state)
            return w, w_tasks, state, {**info, "weights": w}
        d = _log_scale(losses, params, eps)
        w, w_tasks, state, info = weighting(G * d[:, None] * d[None, :], torch.log(losses + eps), state)
        return w * d, d if w_tasks is None else w_tasks * d, state, {**info, "weights": w}

    return Balancer(init, update, None, "gramian", from_gramian)

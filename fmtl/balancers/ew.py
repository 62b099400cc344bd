"""EW: equal weighting, the sum of the task losses (the single-backward baseline)."""

from __future__ import annotations

import torch
from tensordict import TensorDict

from ..base import Balancer, EmptyState, TaskGradients
from ..tree import combine
from ._common import assemble, log_scale, weighted_tasks
from ._common import log_transform as _log_transform

__all__ = ["ew"]


def ew(log_transform: bool = False, eps: float = 1e-8) -> Balancer:
    """Equal weighting: minimize Σ_t ℓ_t (or Σ_t log(ℓ_t + ε) with ``log_transform``).

    .. math::
        \\tilde g = \\sum_t \\nabla \\ell_t

    Weights scale all parameters (θ and ψ_t). A loss balancer: ``make_step`` runs one backward
    of the weighted sum (w_t = 1, or 1/(ℓ_t + ε) with the log transform).

    Example:
        >>> import torch, fmtl
        >>> b = fmtl.balancers.get("ew")
        >>> w, _, info = b.loss_weights(torch.tensor([1.0, 5.0]), b.init(None, 2), None)
        >>> w
        tensor([1., 1.])
    """

    def init(params: TensorDict, num_tasks: int) -> EmptyState:
        return EmptyState()

    def loss_weights(losses: torch.Tensor, state: EmptyState, params: TensorDict):
        if log_transform:
            w = log_scale(losses, params, eps)
        else:
            w = torch.ones_like(losses)
        return w, state, {"weights": w}

    def update(grads: TaskGradients, state: EmptyState, params: TensorDict):
        if log_transform:
            grads = _log_transform(grads, params, eps)
        w = torch.ones_like(grads.losses)
        return assemble(combine(w, grads.shared), weighted_tasks(w, grads.tasks)), state, {"weights": w}

    return Balancer(init, update, loss_weights)

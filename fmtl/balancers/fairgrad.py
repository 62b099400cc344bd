"""FairGrad: α-fair allocation of the update across tasks, (G w)_t = w_t^{-1/α}."""

from __future__ import annotations

import torch

from ..base import Balancer, EmptyState
from ._gradient import gramian_balancer
from ._solvers import alpha_fair

__all__ = ["fairgrad"]


def fairgrad(alpha: float = 1.0, max_iter: int = 50, log_transform: bool = False, eps: float = 1e-8) -> Balancer:
    """FairGrad (Ban & Ji, ICML 2024, "Fair Resource Allocation in Multi-Task Learning"), Gramian only.

    The update d = Jᵀw maximizes the α-fair utility Σ_t ⟨g_t, d⟩^{1−α}/(1−α) on a ball; its
    first-order condition (Eq. 4) is

    .. math::
        (G w)_t = w_t^{-1/\\alpha},\\quad w > 0,\\qquad \\tilde g_\\theta = J^\\top w

    solved exactly by damped Newton iterations on a strictly convex potential
    (:func:`fmtl.balancers._solvers.alpha_fair`, at most ``max_iter``) where the original and
    LibMTL call ``scipy.optimize.least_squares`` from w = 1/T (approximate, on the CPU). α = 1
    is Nash-MTL's equation (without its clipping); α → 0 is linear scalarization (w = 1/T, as
    TorchJD). LibMTL's default α = 1. As LibMTL, Σ_t w_t ℓ_t is back-propagated: the weights touch
    θ and every ψ_t (TorchJD's aggregator weights θ only).

    Example:
        >>> import torch, fmtl
        >>> from tensordict import TensorDict
        >>> b = fmtl.balancers.get("fairgrad", alpha=2.0)
        >>> p = TensorDict({"shared": {"w": torch.zeros(2)}, "tasks": {"a": {}, "b": {}}}, [])
        >>> J = TensorDict({"w": torch.tensor([[1.0, 0.0], [0.0, 4.0]])}, [2])
        >>> g, _, info = b.update(fmtl.TaskGradients(torch.ones(2), J, p["tasks"]), b.init(p, 2), p)
        >>> info["weights"]  # orthogonal: G_tt w_t = w_t^{-1/2} ⇒ w_t = G_tt^{-2/3} = (1, 1/16^{2/3})
        tensor([1.0000, 0.1575])
    """
    if alpha < 0:
        raise ValueError(f"alpha must be non-negative; got {alpha}")

    def weighting(G: torch.Tensor, losses: torch.Tensor, state: EmptyState):
        w = alpha_fair(G, alpha, max_iter)
        return w, w, state, {}

    return gramian_balancer(weighting, log_transform=log_transform, eps=eps)

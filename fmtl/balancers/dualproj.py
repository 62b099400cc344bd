"""DualProj: the mean gradient projected onto the dual cone of the task gradients."""

from __future__ import annotations

import torch

from ..base import Balancer, EmptyState
from ._gradient import gramian_balancer
from ._qp import eager_inference
from .upgrad import upgrad_projections

__all__ = ["dualproj", "dualproj_weights"]


@eager_inference
def dualproj_weights(G: torch.Tensor, norm_eps: float = 1e-4, reg_eps: float = 1e-4) -> torch.Tensor:
    """DualProj's weights from the Gramian only: w = argmin_{v ≥ 1/T} vᵀ Ĝ v.

    Ĝ = :func:`fmtl.balancers.upgrad.upgrad_gramian` (TorchJD's regularization), solved by
    :func:`fmtl.balancers.upgrad.upgrad_projections` (eagerly Ĝ's normalization is folded into
    the solver's equilibration).

    Example:
        >>> dualproj_weights(torch.tensor([[1.0, -2.0], [-2.0, 5.0]]), reg_eps=0.0)  # ⟨g₁, g₀⟩ = −½: v₁ moves
        tensor([1.0000, 0.5000])
    """
    T = G.shape[0]
    u = torch.full((1, T), 1.0 / T, dtype=G.dtype, device=G.device)
    return upgrad_projections(G, u, norm_eps, reg_eps)[0]


def dualproj(norm_eps: float = 1e-4, reg_eps: float = 1e-4, log_transform: bool = False, eps: float = 1e-8) -> Balancer:
    """DualProj (TorchJD; Lopez-Paz & Ranzato, 2017, GEM Eq. 11): π_J(g₀), the mean gradient made non-conflicting.

    .. math::
        \\tilde g_\\theta = \\pi_J\\Big(\\frac1T \\sum_t g_t\\Big)
            = \\arg\\min_{d:\\ J d \\ge 0} \\|d - g_0\\|^2 = J^\\top v,\\quad
        v = \\arg\\min_{v \\ge \\mathbf 1/T} v^\\top G v

    (the dual form, TorchJD's Prop. 1 of "Jacobian Descent"). ⟨g_t, g̃⟩ ≥ 0 for every t, and
    g̃ = g₀ when g₀ conflicts with no task. Exact torch solver
    (:func:`fmtl.balancers._solvers.project_dual_cone`) where TorchJD calls quadprog; the same
    ``norm_eps``/``reg_eps`` regularization. GEM projects one task's gradient onto the cone of
    the memories' gradients; TorchJD's DualProj, which fmtl follows, projects the mean of all
    task gradients. Only θ is touched; ψ_t gets ∇ψ_t ℓ_t.

    Example:
        >>> import torch, fmtl
        >>> from tensordict import TensorDict
        >>> b = fmtl.balancers.get("dualproj", reg_eps=0.0)
        >>> p = TensorDict({"shared": {"w": torch.zeros(2)}, "tasks": {"a": {}, "b": {}}}, [])
        >>> J = TensorDict({"w": torch.tensor([[1.0, 0.0], [-2.0, 1.0]])}, [2])
        >>> g, _, info = b.update(fmtl.TaskGradients(torch.ones(2), J, p["tasks"]), b.init(p, 2), p)
        >>> g["shared", "w"]  # g₀ = (−½, ½) conflicts with g₁ = (1, 0): projected to g₁ + ½g₂ ⟂ g₁
        tensor([0.0000, 0.5000])
    """

    def weighting(G: torch.Tensor, losses: torch.Tensor, state: EmptyState):
        return dualproj_weights(G, norm_eps, reg_eps), None, state, {}

    return gramian_balancer(weighting, log_transform=log_transform, eps=eps)

"""CAGrad: the best worst-task improvement within a ball around the average gradient."""

from __future__ import annotations

import torch

from ..base import Balancer, EmptyState
from ._gradient import gramian_balancer
from ._solvers import cagrad_dual, project_dual_cone

__all__ = ["cagrad", "cagrad_weights"]

_RESCALES = (0, 1, 2)
# ‖g_w‖ at or below this fraction of max_t ‖g_t‖ is 0 in the hull (the ridge of the exact solver
# leaves ‖g_w‖ ≈ 10⁻⁷ there, and a true ‖g_w‖ that small makes g_w/‖g_w‖ round-off)
_DEGENERATE = 1e-5


def cagrad_weights(G: torch.Tensor, c: float) -> torch.Tensor:
    """The coefficients of CAGrad's direction d on the rows of J (before rescaling).

    w solves the dual min_{w∈Δ} g_wᵀg₀ + c‖g₀‖‖g_w‖ (g_w = Jᵀw, g₀ = Jᵀ1/T) exactly
    (:func:`fmtl.balancers._solvers.cagrad_dual`) and d = g₀ + (c‖g₀‖/‖g_w‖) g_w, the maximizer
    of min_t ⟨g_t, d⟩ on the ball ‖d − g₀‖ ≤ c‖g₀‖.

    When 0 lies in the convex hull of the task gradients (‖g_w‖ ≤ 10⁻⁵ max_t ‖g_t‖), no d has
    min_t ⟨g_t, d⟩ > 0 and g_w/‖g_w‖ is not a direction; the optimal d are then those of the
    ball that conflict with no task (min_t ⟨g_t, d⟩ = 0), and fmtl returns the one closest to
    g₀: the projection of g₀ onto the dual cone {d : J d ≥ 0} (DualProj's direction,
    :func:`fmtl.balancers._solvers.project_dual_cone`), pulled into the ball if round-off left it
    outside. For c ≥ 1 (0 in the ball) it is always in the ball. LibMTL and the original divide
    by ‖g_w‖ + 10⁻⁸ instead, and fmtl before returned g₀ itself, which can conflict: for
    J = [[1, 0], [−1, 1], [−1, −1]] and c = 2, J g₀ = (−⅓, ⅓, ⅓) where d = 0 is the only
    conflict-free point.

    Example:
        >>> cagrad_weights(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), 0.5)  # symmetric: w = ½, g_w = g₀, d = (1 + c) g₀
        tensor([0.7500, 0.7500])
        >>> J = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [-1.0, -1.0]])
        >>> J.T @ cagrad_weights(J @ J.T, 2.0)  # 0 in the hull: the only conflict-free d
        tensor([0., 0.])
    """
    T = G.shape[0]
    a = torch.full((T,), 1.0 / T, dtype=torch.float64, device=G.device)
    if c == 0:
        return a.to(G.dtype)
    G64 = G.to(torch.float64)
    w = cagrad_dual(G, c).to(torch.float64)
    radius = c * (a @ G64 @ a).clamp_min(0).sqrt()
    gw_norm = (w @ G64 @ w).clamp_min(0).sqrt()
    scale = torch.diagonal(G64).amax().clamp_min(0).sqrt()
    degenerate = ~(gw_norm > _DEGENERATE * scale)  # NaN-safe: no non-zero row at all is degenerate
    formula = a + radius / gw_norm.clamp_min(torch.finfo(torch.float64).tiny) * w
    # 0 in the hull: the conflict-free point of the ball closest to g₀
    v = project_dual_cone(G64, a[None])[0]
    distance = ((v - a) @ G64 @ (v - a)).clamp_min(0).sqrt()
    inside = a + torch.clamp(radius / distance.clamp_min(torch.finfo(torch.float64).tiny), max=1.0) * (v - a)
    return torch.where(degenerate, inside, formula).to(G.dtype)


def cagrad(c: float = 0.5, rescale: int = 1, log_transform: bool = False, eps: float = 1e-8) -> Balancer:
    """CAGrad (Liu et al., 2021a): the Gramian-only conflict-averse direction.

    .. math::
        \\max_d \\min_t \\langle g_t, d\\rangle \\ \\text{s.t.}\\ \\|d - g_0\\| \\le c\\|g_0\\|
        \\ \\Rightarrow\\ d = g_0 + \\frac{c\\|g_0\\|}{\\|g_w\\|} g_w,\\quad
        \\tilde g_\\theta = d / (1 + c^2)

    ``rescale`` divides d by 1 (0), 1 + c² (1, the default of CAGrad and LibMTL) or 1 + c (2).
    The dual is solved exactly at any T (the original and LibMTL run scipy's SLSQP, TorchJD
    cvxpy), and where 0 lies in the convex hull of the g_t, d is the conflict-free point of the
    ball closest to g₀ (:func:`cagrad_weights`). Only θ is touched (paper Sec. 2.2); ψ_t gets
    ∇ψ_t ℓ_t.

    Example:
        >>> import torch, fmtl
        >>> from tensordict import TensorDict
        >>> b = fmtl.balancers.get("cagrad", rescale=0)
        >>> p = TensorDict({"shared": {"w": torch.zeros(2)}, "tasks": {"a": {}, "b": {}}}, [])
        >>> J = TensorDict({"w": torch.eye(2)}, [2])
        >>> g, _, info = b.update(fmtl.TaskGradients(torch.ones(2), J, p["tasks"]), b.init(p, 2), p)
        >>> g["shared", "w"]
        tensor([0.7500, 0.7500])
    """
    if rescale not in _RESCALES:
        raise ValueError(f"rescale must be one of {_RESCALES}; got {rescale!r}")
    if c < 0:
        raise ValueError(f"c must be non-negative; got {c}")
    divisor = (1.0, 1.0 + c * c, 1.0 + c)[rescale]

    def weighting(G: torch.Tensor, losses: torch.Tensor, state: EmptyState):
        return cagrad_weights(G, c) / divisor, None, state, {}

    return gramian_balancer(weighting, log_transform=log_transform, eps=eps)

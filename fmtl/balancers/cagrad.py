"""CAGrad: the best worst-task improvement within a ball around the average gradient."""

from __future__ import annotations

import torch

from ..base import Balancer, EmptyState
from ._gradient import gramian_balancer
from ._solvers import cagrad_dual

__all__ = ["cagrad", "cagrad_weights"]

_RESCALES = (0, 1, 2)
_DEGENERATE = 1e-5  # ‖g_w‖ below this times max_t ‖g_t‖ counts as 0


def cagrad_weights(G: torch.Tensor, c: float) -> torch.Tensor:
    """The coefficients of d = g₀ + (c‖g₀‖/‖g_w‖) g_w on the rows of J (before rescaling).

    w solves the dual min_{w∈Δ} g_wᵀg₀ + c‖g₀‖‖g_w‖ (g_w = Jᵀw, g₀ = Jᵀ1/T) exactly
    (:func:`fmtl.balancers._solvers.cagrad_dual`); ‖d − g₀‖ = c‖g₀‖. Where 0 lies in the convex
    hull of the task gradients (‖g_w‖ ≤ 1e-5 max_t ‖g_t‖: Pareto-stationary), d = g₀.

    Example:
        >>> cagrad_weights(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), 0.5)  # symmetric: w = ½, g_w = g₀, d = (1 + c) g₀
        tensor([0.7500, 0.7500])
    """
    T = G.shape[0]
    a = torch.full((T,), 1.0 / T, dtype=torch.float64, device=G.device)
    if c == 0:
        return a.to(G.dtype)
    G64 = G.to(torch.float64)
    w = cagrad_dual(G, c).to(torch.float64)
    g0_norm = (a @ G64 @ a).clamp_min(0).sqrt()
    gw_norm = (w @ G64 @ w).clamp_min(0).sqrt()
    # 0 (numerically) in the convex hull of the g_t: g_w/‖g_w‖ is round-off, not a direction,
    # and c‖g₀‖/‖g_w‖ would blow up; return g₀ itself (the centre of the ball) instead.
    scale = torch.diagonal(G64).amax().clamp_min(0).sqrt()
    defined = gw_norm > _DEGENERATE * scale
    ratio = torch.where(defined, c * g0_norm / gw_norm.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    return (a + ratio * w).to(G.dtype)


def cagrad(c: float = 0.5, rescale: int = 1, log_transform: bool = False, eps: float = 1e-8) -> Balancer:
    """CAGrad (Liu et al., 2021a): the Gramian-only conflict-averse direction.

    .. math::
        \\max_d \\min_t \\langle g_t, d\\rangle \\ \\text{s.t.}\\ \\|d - g_0\\| \\le c\\|g_0\\|
        \\ \\Rightarrow\\ d = g_0 + \\frac{c\\|g_0\\|}{\\|g_w\\|} g_w,\\quad
        \\tilde g_\\theta = d / (1 + c^2)

    ``rescale`` divides d by 1 (0), 1 + c² (1, the default of CAGrad and LibMTL) or 1 + c (2).
    LibMTL's 1e-8 guards in the norms are replaced by an exact solve. Only θ is touched (paper
    Sec. 2.2); ψ_t gets ∇ψ_t ℓ_t.

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

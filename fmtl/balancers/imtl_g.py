"""IMTL-G: the aggregate with equal projections on every unit task gradient."""

from __future__ import annotations

import torch

from ..base import Balancer, EmptyState
from ._gradient import gramian_balancer

__all__ = ["imtl_g", "imtl_g_weights"]

_RIDGE = 1e-12


def imtl_g_weights(G: torch.Tensor) -> torch.Tensor:
    """IMTL-G's α (Σ α_t = 1) from the Gramian only.

    With u_t = g_t/‖g_t‖, D = [g₁ − g_t]_{t≥2}, U = [u₁ − u_t]_{t≥2}:
    α_{2:T} = g₁ Uᵀ (D Uᵀ)⁻¹, α₁ = 1 − Σ α_{2:T}. Every entry is an inner product
    ⟨g_i, u_j⟩ = G_ij / √G_jj. Solved in float64 as ridge least squares (a singular D Uᵀ —
    parallel gradients — has many solutions; the ridge picks the smallest).

    Example:
        >>> imtl_g_weights(torch.tensor([[1.0, 0.0], [0.0, 4.0]]))  # α ∝ 1/‖g_t‖ for orthogonal g
        tensor([0.6667, 0.3333])
    """
    T = G.shape[0]
    G64 = G.to(torch.float64)
    G64 = G64 / (torch.diagonal(G64).sum() / T).clamp_min(torch.finfo(torch.float64).tiny)
    n = torch.diagonal(G64).clamp_min(0).sqrt().clamp_min(1e-30)
    C = G64 / n[None, :]  # C_ij = ⟨g_i, u_j⟩
    M = C[0, 0] - C[0, 1:][None, :] - C[1:, 0][:, None] + C[1:, 1:]  # (D Uᵀ)_ab
    r = C[0, 0] - C[0, 1:]  # (g₁ Uᵀ)_b
    eye = torch.eye(T - 1, dtype=M.dtype, device=M.device)
    x = torch.linalg.solve(M @ M.T + _RIDGE * eye, M @ r)  # x M = r
    return torch.cat([1 - x.sum().reshape(1), x]).to(G.dtype)


def imtl_g(log_transform: bool = False, eps: float = 1e-8) -> Balancer:
    """IMTL-G (Liu et al., 2021b): g̃ = Σ α_t g_t with ⟨g̃, u_t⟩ equal for all t (Gramian only).

    .. math::
        \\langle \\textstyle\\sum_s \\alpha_s g_s, u_t \\rangle = \\text{const},\\quad
        \\mathbf 1^\\top \\alpha = 1,\\quad u_t = g_t / \\|g_t\\|

    Only θ is touched (paper Sec. 2.2); ψ_t gets ∇ψ_t ℓ_t.

    Example:
        >>> import torch, fmtl
        >>> from tensordict import TensorDict
        >>> b = fmtl.balancers.get("imtl_g")
        >>> p = TensorDict({"shared": {"w": torch.zeros(2)}, "tasks": {"a": {}, "b": {}}}, [])
        >>> J = TensorDict({"w": torch.tensor([[1.0, 0.0], [0.0, 2.0]])}, [2])
        >>> g, _, info = b.update(fmtl.TaskGradients(torch.ones(2), J, p["tasks"]), b.init(p, 2), p)
        >>> g["shared", "w"]  # projections on u₁ = e₁ and u₂ = e₂ are both ⅔
        tensor([0.6667, 0.6667])
    """

    def weighting(G: torch.Tensor, losses: torch.Tensor, state: EmptyState):
        return imtl_g_weights(G), None, state, {}

    return gramian_balancer(weighting, log_transform=log_transform, eps=eps)

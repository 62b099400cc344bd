"""IMTL-G: the aggregate with equal projections on every unit task gradient."""

from __future__ import annotations

import torch

from ..base import Balancer, EmptyState
from ._gradient import gramian_balancer

__all__ = ["imtl_g", "imtl_g_weights"]

def imtl_g_weights(G: torch.Tensor) -> torch.Tensor:
    """IMTL-G's α (Σ α_t = 1) from the Gramian only: α = G⁺d / 1ᵀG⁺d, d_t = ‖g_t‖.

    ⟨Jᵀα, u_t⟩ = (Gα)_t/d_t is the same for every t iff Gα ∝ d, so for full-rank J this is
    the original's α_{2:T} = g₁Uᵀ(DUᵀ)⁻¹, α₁ = 1 − Σ α_{2:T} (D = [g₁ − g_t], U = [u₁ − u_t]).
    For rank-deficient J (parallel or dependent gradients) it is TorchJD's pseudo-inverse
    generalization ("Jacobian Descent", Sec. on IMTL-G): G⁺ in float64 on G / max_t G_tt,
    eigenvalues below T·ε (of G's dtype) times the largest cut off, as ``torch.linalg.pinv``. If
    1ᵀG⁺d vanishes (≤ 10⁻¹⁰ Σ|G⁺d|, e.g. g₂ = −g₁) α = 0, as TorchJD (whose test is absolute,
    |1ᵀG⁺d| < 10⁻¹²).

    Example:
        >>> imtl_g_weights(torch.tensor([[1.0, 0.0], [0.0, 4.0]]))  # α ∝ 1/‖g_t‖ for orthogonal g
        tensor([0.6667, 0.3333])
        >>> imtl_g_weights(torch.tensor([[1.0, 2.0], [2.0, 4.0]]))  # g₂ = 2g₁: G⁺d ∝ (1, 2)
        tensor([0.3333, 0.6667])
    """
    T = G.shape[0]
    G64 = G.to(torch.float64)
    G64 = (G64 + G64.T) / 2
    G64 = G64 / torch.diagonal(G64).amax().clamp_min(torch.finfo(torch.float64).tiny)
    d = torch.diagonal(G64).clamp_min(0).sqrt()
    # pinv's eigh raises on a non-finite G, even compiled: it sees zeros there and α turns NaN,
    # so the step's finiteness guard refuses the update instead
    finite = torch.isfinite(G64).all()
    v = torch.linalg.pinv(torch.where(finite, G64, 0.0), hermitian=True, rtol=T * torch.finfo(G.dtype).eps) @ d
    v = torch.where(finite, v, torch.nan)
    total = v.sum()
    vanishes = total.abs() <= 1e-10 * v.abs().sum()
    alpha = torch.where(vanishes, torch.zeros_like(v), v / torch.where(vanishes, 1.0, total))
    return alpha.to(G.dtype)


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

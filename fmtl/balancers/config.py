"""ConFIG: the conflict-free direction with equal cosines to every task gradient."""

from __future__ import annotations

import torch

from ..base import Balancer, EmptyState
from ._gradient import gramian_balancer

__all__ = ["config", "config_weights"]


def config_weights(G: torch.Tensor) -> torch.Tensor:
    """ConFIG's coefficients on the rows of J, from the Gramian only.

    With unit rows U = D⁻¹J: the direction is b = U⁺1 = Uᵀ(UUᵀ)⁺1 = Jᵀβ, β = D⁻¹C⁺1 (C the
    cosine matrix), and the update is (Σ_t ⟨g_t, b̂⟩) b̂ with b̂ = b/‖b‖, so
    w = (1ᵀGβ / βᵀGβ) β. C⁺ cuts eigenvalues below 32·T·ε (of G's dtype) times the largest, and
    the components of 1 along C's eigenvectors below 32·T^{3/2}·ε (round-off: with g₂ = −g₁,
    1 ⟂ range(C) and b = 0). Zero rows get β_t = 0 (TorchJD: their unit vector is 0); b = 0 gives
    w = 0.

    Example:
        >>> config_weights(torch.tensor([[1.0, 0.0], [0.0, 4.0]]))  # orthogonal: b̂ = (1, 1)/√2 in unit directions
        tensor([1.5000, 0.7500])
    """
    T = G.shape[0]
    G64 = G.to(torch.float64)
    G64 = (G64 + G64.T) / 2
    diag = torch.diagonal(G64).clamp_min(0)
    zero = diag <= diag.amax() * 2.0**-900
    inv = torch.where(zero, 0.0, diag.clamp_min(torch.finfo(torch.float64).tiny).rsqrt())
    C = inv[:, None] * G64 * inv[None, :]
    # C⁺1 through C's eigensystem, with two cut-offs well above round-off (≈ T·ε): eigenvalues,
    # so that exactly dependent rows are treated as dependent whatever the summation order, and
    # components of 1, so that 1 ⟂ range(C) (e.g. g₂ = −g₁) gives b = 0, not a round-off direction
    eps = torch.finfo(G.dtype).eps
    # (eigh raises on a non-finite C, even compiled: it sees zeros there and w turns NaN, so the
    # step's finiteness guard refuses the update instead)
    finite = torch.isfinite(C).all()
    lam, V = torch.linalg.eigh(torch.where(finite, C, 0.0))
    keep = lam > 32 * T * eps * lam.amax().clamp_min(0)
    p = V.T @ torch.ones_like(diag)
    p = torch.where(keep & (p.abs() > 32 * T * eps * T**0.5), p / lam.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    beta = inv * (V @ p)
    norm2 = beta @ G64 @ beta
    length = (G64 @ beta).sum()
    w = torch.where(norm2 > 0, length / norm2.clamp_min(torch.finfo(torch.float64).tiny), 0.0) * beta
    return torch.where(finite, w, torch.nan).to(G.dtype)


def config(log_transform: bool = False, eps: float = 1e-8) -> Balancer:
    """ConFIG (Liu et al., 2024, "ConFIG: Towards Conflict-free Training of PINNs", Eq. 2), Gramian only.

    .. math::
        b = U^{+} \\mathbf 1,\\ U = [g_t / \\|g_t\\|]_t,\\qquad
        \\tilde g_\\theta = \\Big(\\sum_t g_t^\\top \\hat b\\Big)\\, \\hat b,\\quad \\hat b = b / \\|b\\|

    b̂ has the same cosine with every g_t (when the g_t are independent), so it conflicts with none;
    its length is the sum of the projections. TorchJD (which fmtl follows: equal preferences
    1) takes the pseudo-inverse of the T×P matrix U; fmtl the equivalent one of the T×T cosine
    matrix (:func:`config_weights`), with a cut-off of 32·T·ε on its eigenvalues instead of
    max(T, P)·ε on U's singular values (the same answer for independent gradients). Only θ is
    touched; ψ_t gets ∇ψ_t ℓ_t.

    Example:
        >>> import torch, fmtl
        >>> from tensordict import TensorDict
        >>> b = fmtl.balancers.get("config")
        >>> p = TensorDict({"shared": {"w": torch.zeros(2)}, "tasks": {"a": {}, "b": {}}}, [])
        >>> J = TensorDict({"w": torch.tensor([[1.0, 0.0], [0.0, 2.0]])}, [2])
        >>> g, _, info = b.update(fmtl.TaskGradients(torch.ones(2), J, p["tasks"]), b.init(p, 2), p)
        >>> g["shared", "w"]  # b̂ = (1, 1)/√2, length (1 + 2)/√2
        tensor([1.5000, 1.5000])
    """

    def weighting(G: torch.Tensor, losses: torch.Tensor, state: EmptyState):
        return config_weights(G), None, state, {}

    return gramian_balancer(weighting, log_transform=log_transform, eps=eps)

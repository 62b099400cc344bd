"""Aligned-MTL: align the task gradients into an orthogonal system with equal singular values."""

from __future__ import annotations

import torch

from ..base import Balancer, EmptyState
from ._gradient import gramian_balancer

__all__ = ["aligned_mtl", "aligned_mtl_matrix"]


def aligned_mtl_matrix(G: torch.Tensor) -> torch.Tensor:
    """The T×T matrix B with aligned gradients Ĵ = B J, from the Gramian only.

    With G = V Λ Vᵀ restricted to the r eigenvalues above λ_max·T·eps (the rank):
    B = √λ_min V_r Λ_r^{-1/2} V_rᵀ, so Ĵ Ĵᵀ = B G B = λ_min V_r V_rᵀ: all non-zero singular
    values of Ĵ equal √λ_min (condition number 1). The aggregate is Ĵᵀ1 = Jᵀ(B1).

    Example:
        >>> aligned_mtl_matrix(torch.tensor([[4.0, 0.0], [0.0, 1.0]]))  # orthogonal: rescale to the smallest
        tensor([[0.5000, 0.0000],
                [0.0000, 1.0000]])
    """
    T = G.shape[0]
    G64 = G.to(torch.float64)
    lam, V = torch.linalg.eigh((G64 + G64.T) / 2)
    tol = lam.amax().clamp_min(0) * T * torch.finfo(G.dtype).eps
    keep = lam > tol
    inv_sqrt = torch.where(keep, lam.clamp_min(torch.finfo(torch.float64).tiny).rsqrt(), 0.0)
    lam_min = torch.where(keep, lam, torch.full_like(lam, float("inf"))).amin()
    lam_min = torch.where(keep.any(), lam_min, 0.0)
    return (lam_min.sqrt() * (V * inv_sqrt) @ V.T).to(G.dtype)


def aligned_mtl(log_transform: bool = False, eps: float = 1e-8) -> Balancer:
    """Aligned-MTL (Senushkin et al., 2023): g̃ = Jᵀ B 1 with B from the Gramian's eigensystem.

    .. math::
        G = V\\Lambda V^\\top,\\quad B = \\sqrt{\\lambda_{\\min}}\\, V \\Lambda^{-1/2} V^\\top,
        \\quad \\tilde g_\\theta = J^\\top B \\mathbf 1

    (rank-revealing cut-off as in LibMTL; no extra scaling.) Only θ is touched, as in LibMTL;
    ψ_t gets ∇ψ_t ℓ_t.

    Example:
        >>> import torch, fmtl
        >>> from tensordict import TensorDict
        >>> b = fmtl.balancers.get("aligned_mtl")
        >>> p = TensorDict({"shared": {"w": torch.zeros(2)}, "tasks": {"a": {}, "b": {}}}, [])
        >>> J = TensorDict({"w": torch.tensor([[2.0, 0.0], [0.0, 1.0]])}, [2])
        >>> g, _, info = b.update(fmtl.TaskGradients(torch.ones(2), J, p["tasks"]), b.init(p, 2), p)
        >>> g["shared", "w"]  # both aligned gradients get norm √λ_min = 1
        tensor([1., 1.])
    """

    def weighting(G: torch.Tensor, losses: torch.Tensor, state: EmptyState):
        return aligned_mtl_matrix(G).sum(0), None, state, {}

    return gramian_balancer(weighting, log_transform=log_transform, eps=eps)

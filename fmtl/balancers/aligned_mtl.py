"""Aligned-MTL: align the task gradients into an orthogonal system with equal singular values."""

from __future__ import annotations

import torch

from ..base import Balancer, EmptyState
from ._gradient import gramian_balancer

__all__ = ["aligned_mtl", "aligned_mtl_matrix"]


_SCALES = ("min", "median", "rmse")


def aligned_mtl_matrix(G: torch.Tensor, scale_mode: str = "min") -> torch.Tensor:
    """The T×T matrix B with aligned gradients Ĵ = B J, from the Gramian only.

    With G = V Λ Vᵀ restricted to the r eigenvalues above λ_max·T·eps (the rank):
    B = √λ̄ V_r Λ_r^{-1/2} V_rᵀ, so Ĵ Ĵᵀ = B G B = λ̄ V_r V_rᵀ: all non-zero singular values of
    Ĵ equal √λ̄ (condition number 1). λ̄ is the smallest of the r eigenvalues (``"min"``, the
    paper and LibMTL), their median (``"median"``; the lower one for even r, as ``torch.median``)
    or their mean (``"rmse"``), TorchJD's three modes. The aggregate is Ĵᵀ1 = Jᵀ(B1).

    Example:
        >>> aligned_mtl_matrix(torch.tensor([[4.0, 0.0], [0.0, 1.0]]))  # orthogonal: rescale to the smallest
        tensor([[0.5000, 0.0000],
                [0.0000, 1.0000]])
        >>> aligned_mtl_matrix(torch.tensor([[4.0, 0.0], [0.0, 1.0]]), "rmse")  # to √2.5
        tensor([[0.7906, 0.0000],
                [0.0000, 1.5811]])
    """
    if scale_mode not in _SCALES:
        raise ValueError(f"scale_mode must be one of {_SCALES}; got {scale_mode!r}")
    T = G.shape[0]
    G64 = G.to(torch.float64)
    lam, V = torch.linalg.eigh((G64 + G64.T) / 2)
    tol = lam.amax().clamp_min(0) * T * torch.finfo(G.dtype).eps
    keep = lam > tol
    rank = keep.sum()
    inv_sqrt = torch.where(keep, lam.clamp_min(torch.finfo(torch.float64).tiny).rsqrt(), 0.0)
    if scale_mode == "min":
        level = torch.where(keep, lam, torch.full_like(lam, float("inf"))).amin()
    elif scale_mode == "median":  # eigh sorts ascending; the kept ones are the last r
        level = lam.gather(0, (T - rank + (rank - 1) // 2).clamp(0, T - 1).reshape(1))[0]
    else:
        level = torch.where(keep, lam, 0.0).sum() / rank.clamp_min(1)
    level = torch.where(rank > 0, level, 0.0)
    return (level.sqrt() * (V * inv_sqrt) @ V.T).to(G.dtype)


def aligned_mtl(scale_mode: str = "min", log_transform: bool = False, eps: float = 1e-8) -> Balancer:
    """Aligned-MTL (Senushkin et al., 2023): g̃ = Jᵀ B 1 with B from the Gramian's eigensystem.

    .. math::
        G = V\\Lambda V^\\top,\\quad B = \\sqrt{\\bar\\lambda}\\, V \\Lambda^{-1/2} V^\\top,
        \\quad \\tilde g_\\theta = J^\\top B \\mathbf 1

    (rank-revealing cut-off as in LibMTL; no extra scaling.) λ̄ = λ_min by default (the paper,
    LibMTL); ``scale_mode="median"`` or ``"rmse"`` use the median or the mean eigenvalue, as
    TorchJD's ``AlignedMTL`` (whose "rmse" is the original code's). TorchJD combines B with the
    mean (Jᵀ B 1/T); fmtl with the sum, as LibMTL. Only θ is touched, as in LibMTL; ψ_t gets
    ∇ψ_t ℓ_t. A zero Gramian gives B = 0 (TorchJD: the identity; both give g̃ = 0).

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
    if scale_mode not in _SCALES:
        raise ValueError(f"scale_mode must be one of {_SCALES}; got {scale_mode!r}")

    def weighting(G: torch.Tensor, losses: torch.Tensor, state: EmptyState):
        return aligned_mtl_matrix(G, scale_mode).sum(0), None, state, {}

    return gramian_balancer(weighting, log_transform=log_transform, eps=eps)

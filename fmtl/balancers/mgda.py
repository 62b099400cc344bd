"""MGDA: the minimum-norm point of the convex hull of the task gradients."""

from __future__ import annotations

import torch

from ..base import Balancer, EmptyState
from ._gradient import gramian_balancer
from ._solvers import min_norm_simplex

__all__ = ["mgda", "mgda_weights"]

_NORMALIZATIONS = ("none", "l2", "loss", "loss+")


def mgda_weights(G: torch.Tensor, losses: torch.Tensor, normalization: str = "none") -> torch.Tensor:
    """MGDA's coefficients on the raw gradients, from the Gramian (and losses) only.

    The gradients are first divided by n_t (1, ‖g_t‖, ℓ_t or ℓ_t‖g_t‖: ``normalization``
    ``none``/``l2``/``loss``/``loss+``, as LibMTL's ``mgda_gn``), whose Gramian is
    G / (n nᵀ); w solves min_{w∈Δ} ‖Σ w_t g_t / n_t‖² exactly; the result is w / n. A zero
    n_t (zero gradient or loss) is taken as 1.

    Example:
        >>> mgda_weights(torch.tensor([[1.0, 0.0], [0.0, 4.0]]), torch.ones(2))
        tensor([0.8000, 0.2000])
    """
    ones = torch.ones_like(losses)
    diag = torch.diagonal(G).clamp_min(0).sqrt().to(losses.dtype)
    n = {"none": ones, "l2": diag, "loss": losses, "loss+": losses * diag}[normalization]
    # a zero normalizer (a zero gradient, a zero loss) leaves that task unscaled, not 0/0
    n = torch.where(n > 0, n, torch.ones_like(n)).to(torch.float64)
    return (min_norm_simplex(G.to(torch.float64) / (n[:, None] * n[None, :])) / n).to(G.dtype)


def mgda(
    normalization: str = "none", log_transform: bool = False, eps: float = 1e-8, weight_heads: bool = False
) -> Balancer:
    """MGDA (Sener & Koltun, 2018): the min-norm element of the convex hull of {g_t} (Gramian only).

    .. math::
        w = \\arg\\min_{w \\in \\Delta_T} w^\\top G w,\\qquad \\tilde g_\\theta = J^\\top w

    solved exactly at any T (:func:`fmtl.balancers._solvers.min_norm_simplex`, an active-set
    method on the cosine matrix, so gradient norms 10¹⁶ apart are no harder than equal ones)
    where the original, LibMTL and TorchJD run Frank–Wolfe iterations that stop early; MGDA-UB
    is not implemented.

    Heads: by default ψ_t gets ∇ψ_t ℓ_t unweighted, as LibMTL (which back-propagates every loss
    once and then overwrites only the shared gradients with Jᵀw), whose implementation produced
    the paper's MGDA numbers. ``weight_heads=True`` gives ψ_t w_t ∇ψ_t ℓ_t instead: the original
    code's backward of Σ_t w_t ℓ_t, and what the paper's Sec. 2.2 describes.

    Args:
        normalization: gradient normalization before the solve (see :func:`mgda_weights`).
        weight_heads: scale each task's head gradient by w_t (see above).
        log_transform, eps: use the gradients of log(ℓ_t + ε) (paper Fig. 1).

    Example:
        >>> import torch, fmtl
        >>> from tensordict import TensorDict
        >>> b = fmtl.balancers.get("mgda")
        >>> p = TensorDict({"shared": {"w": torch.zeros(2)}, "tasks": {"a": {}, "b": {}}}, [])
        >>> J = TensorDict({"w": torch.tensor([[1.0, 0.0], [0.0, 2.0]])}, [2])
        >>> g, _, info = b.update(fmtl.TaskGradients(torch.ones(2), J, p["tasks"]), b.init(p, 2), p)
        >>> g["shared", "w"]  # the point of the segment [g₁, g₂] closest to 0
        tensor([0.8000, 0.4000])
    """
    if normalization not in _NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {_NORMALIZATIONS}; got {normalization!r}")

    def weighting(G: torch.Tensor, losses: torch.Tensor, state: EmptyState):
        w = mgda_weights(G, losses, normalization)
        return w, w if weight_heads else None, state, {}

    return gramian_balancer(weighting, log_transform=log_transform, eps=eps)

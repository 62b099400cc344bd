"""SDMGrad: stochastic direction-oriented multi-objective gradient descent."""

from __future__ import annotations

from typing import NamedTuple

import torch
from tensordict import TensorDict

from ..base import Balancer
from ._gradient import gramian_balancer
from ._loss import like
from ._qp import project_simplex

__all__ = ["SDMGradState", "sdmgrad"]


class SDMGradState(NamedTuple):
    """The inner weights w on the simplex ([T]), the warm start of the next call's inner solve."""

    w: torch.Tensor


def sdmgrad(
    lamda: float = 0.3, niter: int = 20, lr: float = 5.0, momentum: float = 0.5, log_transform: bool = False,
    eps: float = 1e-8,
) -> Balancer:  # fmt: skip
    """SDMGrad (Xiao et al., NeurIPS 2023, "Direction-oriented Multi-objective Learning"), Gramian only.

    ``niter`` projected SGD steps with momentum (learning rate ``lr``) on the inner problem
    min_{w∈Δ} ½‖Jᵀw + λ g₀‖² in the Gramian normalized by s = mean_t ‖g_t‖, then the update is
    the direction pulled toward the mean gradient g₀:

    .. math::
        \\nabla_w = \\hat G (w + \\lambda \\mathbf 1 / T),\\ \\hat G = G / s^2,\\quad
        v \\leftarrow \\mu v + \\nabla_w,\\ w \\leftarrow \\Pi_\\Delta(w - \\eta v),\\qquad
        \\tilde g_\\theta = \\frac{J^\\top w + \\lambda g_0}{1 + \\lambda}

    with w carried over between calls (w₀ = 1/T) and v restarted at each call, as the official
    code and LibMTL (defaults λ = 0.3, 20 steps, η = 5, μ = 0.5; TorchJD uses η = 10). LibMTL
    divides by s² + 10⁻⁸; fmtl by s² alone (the result is then invariant to the scale of G; G = 0
    leaves w unchanged). The original draws three independent mini-batches (ξ, ξ' for G = J_ξ
    J_ξ'ᵀ and ζ for the update); a balancer sees one batch, so fmtl uses it for all three. Only
    θ is touched; ψ_t gets ∇ψ_t ℓ_t (in LibMTL the heads accumulate the gradients of its three
    batches).

    Example:
        >>> import torch, fmtl
        >>> from tensordict import TensorDict
        >>> b = fmtl.balancers.get("sdmgrad", lamda=0.0, niter=1, lr=0.25)
        >>> p = TensorDict({"shared": {"w": torch.zeros(2)}, "tasks": {"a": {}, "b": {}}}, [])
        >>> J = TensorDict({"w": torch.tensor([[1.0, 0.0], [0.0, 3.0]])}, [2])
        >>> g, s, info = b.update(fmtl.TaskGradients(torch.ones(2), J, p["tasks"]), b.init(p, 2), p)
        >>> s.w  # s = 2, Ĝ = diag(¼, 9/4): w − ¼ Ĝ w = (0.46875, 0.21875), projected: + 0.15625
        tensor([0.6250, 0.3750])
    """
    if niter < 1 or lr <= 0 or not 0 <= momentum < 1 or lamda < 0:
        raise ValueError(
            f"need niter >= 1, lr > 0, 0 <= momentum < 1, lamda >= 0; got {niter}, {lr}, {momentum}, {lamda}"
        )

    def init(params: TensorDict, num_tasks: int) -> SDMGradState:
        return SDMGradState(torch.full((num_tasks,), 1.0 / num_tasks, **like(params)))

    def weighting(G: torch.Tensor, losses: torch.Tensor, state: SDMGradState):
        T = G.shape[0]
        scale = torch.diagonal(G).clamp_min(0).sqrt().mean()
        Gn = torch.where(scale > 0, G / scale.clamp_min(torch.finfo(G.dtype).tiny) ** 2, torch.zeros_like(G))
        pull = Gn.sum(1) * (lamda / T)  # Ĝ λ1/T
        w = state.w.to(G.dtype)
        velocity = torch.zeros_like(w)
        for _ in range(niter):
            velocity = momentum * velocity + Gn @ w + pull
            w = project_simplex(w - lr * velocity)
        coef = (w + lamda / T) / (1.0 + lamda)
        return coef, None, SDMGradState(w.to(state.w.dtype)), {}

    return gramian_balancer(weighting, init, log_transform=log_transform, eps=eps)

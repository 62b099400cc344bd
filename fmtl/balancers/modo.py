"""MoDo: multi-objective gradient with double sampling, a projected-gradient step on the weights."""

from __future__ import annotations

from typing import NamedTuple

import torch
from tensordict import TensorDict

from ..base import Balancer
from ._gradient import gramian_balancer
from ._loss import like
from ._qp import project_simplex

__all__ = ["MoDoState", "modo"]


class MoDoState(NamedTuple):
    """The task weights λ on the simplex ([T])."""

    lam: torch.Tensor


def modo(gamma: float = 1e-3, rho: float = 0.1, log_transform: bool = False, eps: float = 1e-8) -> Balancer:
    """MoDo (Chen et al., NeurIPS 2023 / JMLR 2024, "Three-Way Trade-Off in Multi-Objective Learning").

    One projected-gradient step on λ per call (Eq. 2.9a), then the update along Jᵀλ (2.9b):

    .. math::
        \\lambda \\leftarrow \\Pi_\\Delta\\big(\\lambda - \\gamma (G \\lambda + \\rho \\lambda)\\big),\\qquad
        \\tilde g_\\theta = J^\\top \\lambda

    with λ₀ = 1/T and LibMTL's defaults γ = 10⁻³, ρ = 0.1 (TorchJD: γ = 0.1). The original uses
    independent mini-batches for G = J₁J₂ᵀ and for the update J₃ (double sampling, which its
    convergence guarantee needs); a balancer sees one batch, so fmtl uses that batch's Gramian
    J Jᵀ and Jacobian for all three (TorchJD leaves the choice to the caller). Only θ is touched;
    ψ_t gets ∇ψ_t ℓ_t (LibMTL averages the heads' gradients over its three batches).

    Example:
        >>> import torch, fmtl
        >>> from tensordict import TensorDict
        >>> b = fmtl.balancers.get("modo", gamma=0.1, rho=0.0)
        >>> p = TensorDict({"shared": {"w": torch.zeros(2)}, "tasks": {"a": {}, "b": {}}}, [])
        >>> J = TensorDict({"w": torch.tensor([[1.0, 0.0], [0.0, 2.0]])}, [2])
        >>> g, s, info = b.update(fmtl.TaskGradients(torch.ones(2), J, p["tasks"]), b.init(p, 2), p)
        >>> s.lam  # λ − 0.1 Gλ = (0.45, 0.3), projected: + 0.125 each
        tensor([0.5750, 0.4250])
    """
    if gamma <= 0 or rho < 0:
        raise ValueError(f"need gamma > 0 and rho >= 0; got gamma={gamma}, rho={rho}")

    def init(params: TensorDict, num_tasks: int) -> MoDoState:
        return MoDoState(torch.full((num_tasks,), 1.0 / num_tasks, **like(params)))

    def weighting(G: torch.Tensor, losses: torch.Tensor, state: MoDoState):
        lam = state.lam.to(G.dtype)
        lam = project_simplex(lam - gamma * (G @ lam + rho * lam))
        return lam, None, MoDoState(lam.to(state.lam.dtype)), {}

    return gramian_balancer(weighting, init, log_transform=log_transform, eps=eps)

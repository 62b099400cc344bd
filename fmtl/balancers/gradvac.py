"""GradVac: gradient vaccine, steering pairwise cosine similarities toward their running average."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from tensordict import TensorDict

from ..base import Balancer
from ._gradient import gramian_balancer
from ._random import RandomState, random_init
from .pcgrad import random_orders

__all__ = ["GradVacState", "gradvac", "gradvac_coefficients"]


class GradVacState(NamedTuple):
    """The random state of the visiting orders and the EMA targets φ̂_ij ([T, T])."""

    random: RandomState
    target: torch.Tensor


def gradvac_coefficients(
    G: torch.Tensor, orders: torch.Tensor, target: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GradVac's coefficients C (g^GV = C J) and updated targets, from the Gramian only.

    For task i and j ≠ i in ``orders[i]``, with φ_ij = cos(g_i^GV, g_j) and target φ̂_ij:
    if φ_ij < φ̂_ij, g_i^GV += ‖g_i^GV‖ (φ̂ √(1−φ²) − φ √(1−φ̂²)) / (‖g_j‖ √(1−φ̂²)) g_j; then
    φ̂_ij ← (1−β) φ̂_ij + β φ_ij.

    Example:
        >>> G = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # orthogonal: φ = 0 < φ̂ = ½ for both
        >>> C, t = gradvac_coefficients(G, torch.tensor([[0, 1], [0, 1]]), torch.full((2, 2), 0.5), 0.5)
        >>> C  # w = (½·1 − 0)/(√¾) = 1/√3 brings the cosine up to ½
        tensor([[1.0000, 0.5774],
                [0.5774, 1.0000]])
    """
    T = G.shape[0]
    G64, target = G.to(torch.float64), target.to(torch.float64)
    C = torch.eye(T, dtype=torch.float64, device=G.device)
    rows = torch.arange(T, device=G.device)
    norms = torch.diagonal(G64).clamp_min(0).sqrt()
    for p in range(T):
        j = orders[:, p]
        onehot = F.one_hot(j, T).to(torch.float64)
        CG = C @ G64
        pc_norm = (CG * C).sum(1).clamp_min(0).sqrt()
        phi = CG[rows, j] / (pc_norm * norms[j] + 1e-8)
        phi_hat = target[rows, j]
        sin, sin_hat = (1 - phi * phi).clamp_min(0).sqrt(), (1 - phi_hat * phi_hat).clamp_min(0).sqrt()
        w = pc_norm * (phi_hat * sin - phi * sin_hat) / (norms[j] * sin_hat + 1e-8)
        other = j != rows
        C = C + torch.where((phi < phi_hat) & other, w, 0.0)[:, None] * onehot
        visited = (onehot > 0) & other[:, None]
        target = torch.where(visited, ((1 - beta) * phi_hat + beta * phi)[:, None], target)
    return C.to(G.dtype), target


def gradvac(beta: float = 0.5, seed: int = 0, log_transform: bool = False, eps: float = 1e-8) -> Balancer:
    """GradVac (Wang et al., 2021) on the whole shared parameter vector, from the Gramian only.

    .. math::
        g_i \\leftarrow g_i + \\frac{\\|g_i\\|(\\hat\\phi_{ij}\\sqrt{1-\\phi_{ij}^2}
            - \\phi_{ij}\\sqrt{1-\\hat\\phi_{ij}^2})}{\\|g_j\\|\\sqrt{1-\\hat\\phi_{ij}^2}} g_j
        \\ \\text{if } \\phi_{ij} < \\hat\\phi_{ij},\\qquad
        \\hat\\phi_{ij} \\leftarrow (1-\\beta)\\hat\\phi_{ij} + \\beta\\phi_{ij}

    (LibMTL's ``group_type=0``.) The EMA φ̂ is updated at every visit as in the paper's
    Algorithm 1 (LibMTL updates it only when the condition fires). Targets start at 0; the
    visiting orders come from ``(seed, step count)``. Only θ is touched; ψ_t gets ∇ψ_t ℓ_t.

    Example:
        >>> import torch, fmtl
        >>> from tensordict import TensorDict
        >>> b = fmtl.balancers.get("gradvac")
        >>> p = TensorDict({"shared": {"w": torch.zeros(2)}, "tasks": {"a": {}, "b": {}}}, [])
        >>> J = TensorDict({"w": torch.tensor([[1.0, 0.0], [-1.0, 1.0]])}, [2])
        >>> g, s, _ = b.update(fmtl.TaskGradients(torch.ones(2), J, p["tasks"]), b.init(p, 2), p)
        >>> g["shared", "w"]  # φ̂ = 0: the conflicting pair is made orthogonal, like PCGrad
        tensor([0.5000, 1.5000])
    """

    def init(params: TensorDict, num_tasks: int) -> GradVacState:
        random = random_init(seed)(params, num_tasks)
        return GradVacState(random, torch.zeros(num_tasks, num_tasks, dtype=torch.float64, device=random.seed.device))

    def weighting(G: torch.Tensor, losses: torch.Tensor, state: GradVacState):
        orders = random_orders(state.random, G.shape[0])
        C, target = gradvac_coefficients(G, orders, state.target, beta)
        random = RandomState(state.random.seed, state.random.count + 1)
        return C.sum(0), None, GradVacState(random, target.to(state.target.dtype)), {}

    return gramian_balancer(weighting, init, log_transform=log_transform, eps=eps)

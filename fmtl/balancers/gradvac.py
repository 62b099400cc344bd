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
    φ̂_ij ← (1−β) φ̂_ij + β φ_ij (at every visit). φ is clamped to [−1, 1] and 1 − φ̂² to at
    least T·ε of G's dtype (see :func:`gradvac`).

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
    resolution = T * torch.finfo(G.dtype).eps
    # LibMTL's 10⁻⁸ guards, in units of the largest gradient norm (they are absolute there, which
    # breaks the method's invariance to the scale of the gradients)
    unit = norms.amax().clamp_min(torch.finfo(torch.float64).tiny)
    for p in range(T):
        j = orders[:, p]
        onehot = F.one_hot(j, T).to(torch.float64)
        CG = C @ G64
        pc_norm = (CG * C).sum(1).clamp_min(0).sqrt()
        # a cosine: nearly cancelled gradients (rank-deficient J) otherwise give |φ| > 1 from
        # round-off, and a target outside [−1, 1] whose √(1 − φ̂²) = 0 blows the correction up
        phi = (CG[rows, j] / (pc_norm * norms[j] + 1e-8 * unit * unit)).clamp(-1.0, 1.0)
        phi_hat = target[rows, j]
        # cosines from a Gramian in G.dtype resolve sines only down to ~√ε: below that √(1 − φ̂²)
        # is round-off, and dividing by it amplifies the round-off in φ (near-parallel gradients)
        sin = (1 - phi * phi).clamp_min(0).sqrt()
        sin_hat = (1 - phi_hat * phi_hat).clamp_min(resolution).sqrt()
        w = pc_norm * (phi_hat * sin - phi * sin_hat) / (norms[j] * sin_hat + 1e-8 * unit)
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

    (LibMTL's ``group_type=0``.) The EMA φ̂ is updated at every visit, as the paper's
    Algorithm 1, LibMTL since its February 2024 fix (commit d2d84fa; before it, only when the
    condition fired) and TorchJD. Targets start at 0; task i visits the other tasks j ≠ i in an
    order drawn from ``(seed, step count)``. Two guards against round-off, which change nothing
    on well-conditioned inputs: φ is clamped to [−1, 1], and 1 − φ̂² to at least T·ε of G's
    dtype (the cosines' resolution) in the denominator; without them float32 rank-1 Jacobians of
    mixed signs (nearly cancelled g_i^GV) reached ‖g̃‖ = 10¹⁰ by the third call. LibMTL's and
    TorchJD's 10⁻⁸ guards in the denominators are taken relative to max_t ‖g_t‖ (squared in the
    cosine), so the update scales with the gradients. Only θ is touched; ψ_t gets ∇ψ_t ℓ_t.

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

"""Krum: the task gradient(s) closest to their nearest neighbours (Byzantine-robust aggregation)."""

from __future__ import annotations

import torch

from ..base import Balancer, EmptyState
from ._gradient import gramian_balancer

__all__ = ["krum", "krum_weights"]


def krum_weights(G: torch.Tensor, n_byzantine: int = 0, n_selected: int = 1) -> torch.Tensor:
    """(Multi-)Krum's weights from the Gramian only: 1/m on the m = ``n_selected`` best-scored tasks.

    ‖g_i − g_j‖² = G_ii + G_jj − 2G_ij; the score of task i is the sum of its distances to its
    T − f − 2 nearest other tasks (f = ``n_byzantine``). Needs T ≥ f + 3 and T ≥ m.

    Example:
        >>> J = torch.tensor([[1.0], [1.1], [1.3], [-5.0]])
        >>> krum_weights(J @ J.T)  # scores (sums over the 2 nearest) 0.4, 0.3, 0.5 and 6.4
        tensor([0., 1., 0., 0.])
    """
    T = G.shape[0]
    if T < n_byzantine + 3 or T < n_selected:
        raise ValueError(f"krum needs at least n_byzantine + 3 = {n_byzantine + 3} and n_selected = {n_selected} "
                         f"tasks; got {T}")  # fmt: skip
    G64 = G.to(torch.float64)
    diag = torch.diagonal(G64)
    distances = (diag[:, None] + diag[None, :] - 2 * G64).clamp_min(0).sqrt()
    # the k + 1 smallest distances of each row include its own (0); drop that one
    nearest, _ = torch.topk(distances, T - n_byzantine - 1, dim=1, largest=False)
    scores = nearest[:, 1:].sum(1)
    chosen = torch.topk(scores, n_selected, largest=False).indices
    w = torch.zeros(T, dtype=G.dtype, device=G.device).index_fill(0, chosen, 1.0 / n_selected)
    return w


def krum(n_byzantine: int = 0, n_selected: int = 1, log_transform: bool = False, eps: float = 1e-8) -> Balancer:
    """Krum (Blanchard et al., NeurIPS 2017, "Machine Learning with Adversaries"), Gramian only.

    .. math::
        s_i = \\sum_{j \\in N_i} \\|g_i - g_j\\|,\\qquad
        \\tilde g_\\theta = \\frac1m \\sum_{i \\in \\text{the } m \\text{ smallest } s_i} g_i

    with N_i the T − f − 2 nearest neighbours of g_i, as TorchJD's ``Krum`` (which sums the
    distances, not their squares as the paper; fmtl follows TorchJD). With ``n_selected`` m > 1
    it is Multi-Krum. A federated-learning rule kept for TorchJD parity: robust to f adversarial
    tasks, it discards all but m task gradients. Needs T ≥ f + 3 (``ValueError`` otherwise). Only
    θ is touched; ψ_t gets ∇ψ_t ℓ_t.

    Example:
        >>> import torch, fmtl
        >>> from tensordict import TensorDict
        >>> b = fmtl.balancers.get("krum")
        >>> p = TensorDict({"shared": {"w": torch.zeros(1)}, "tasks": {"a": {}, "b": {}, "c": {}}}, [])
        >>> J = TensorDict({"w": torch.tensor([[1.0], [2.0], [4.0]])}, [3])
        >>> g, _, info = b.update(fmtl.TaskGradients(torch.ones(3), J, p["tasks"]), b.init(p, 3), p)
        >>> info["weights"]  # nearest-neighbour distances 1, 1, 2: the first of the tie
        tensor([1., 0., 0.])
    """
    if n_byzantine < 0 or n_selected < 1:
        raise ValueError(f"need n_byzantine >= 0 and n_selected >= 1; got {n_byzantine}, {n_selected}")

    def weighting(G: torch.Tensor, losses: torch.Tensor, state: EmptyState):
        return krum_weights(G, n_byzantine, n_selected), None, state, {}

    return gramian_balancer(weighting, log_transform=log_transform, eps=eps)

"""RLW: random loss weighting, a fresh softmax of normal draws at every step."""

from __future__ import annotations

import torch

from ..base import Balancer
from ._loss import loss_balancer
from ._random import RandomState, normal, random_init

__all__ = ["rlw"]


def rlw(seed: int = 0) -> Balancer:
    """RLW (Lin et al., 2022): w = softmax(z), z ~ N(0, I) drawn anew each step.

    .. math::
        w_k = \\mathrm{softmax}(z_k),\\quad z_k \\sim \\mathcal N(0, I_T)

    (the "Normal" distribution of the RLW paper, as in LibMTL's default). z_k is a pure
    function of ``(seed, k)`` (counter-based hash, :mod:`fmtl.balancers._random`), so a step is
    reproducible from its state and compiles to the same draws. Weights touch θ and every ψ_t.

    Example:
        >>> import torch, fmtl
        >>> b = fmtl.balancers.get("rlw", seed=1)
        >>> s = b.init(None, 3)
        >>> w, s2, _ = b.loss_weights(torch.ones(3), s, None)
        >>> round(w.sum().item(), 6), torch.equal(w, b.loss_weights(torch.ones(3), s, None)[0]), int(s2.count)
        (1.0, True, 1)
    """

    def weights(losses: torch.Tensor, state: RandomState):
        z = normal(state.seed, state.count, losses.shape[0], dtype=losses.dtype).to(losses.device)
        return torch.softmax(z, dim=0), RandomState(state.seed, state.count + 1), {}

    return loss_balancer(random_init(seed), weights)

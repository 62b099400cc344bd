"""Nash-MTL: task weights from the Nash bargaining solution (G α)_t = 1/α_t."""

from __future__ import annotations

from typing import NamedTuple

import torch
from tensordict import TensorDict

from ..base import Balancer
from ._gradient import gramian_balancer
from ._loss import like
from ._solvers import nash_bargaining

__all__ = ["NashState", "nash_mtl"]


class NashState(NamedTuple):
    """The previous solution α̂ for the unit-mean-diagonal Gramian (a scale-free warm start)."""

    alpha: torch.Tensor


def nash_mtl(max_norm: float = 1.0, steps: int = 30, log_transform: bool = False, eps: float = 1e-8) -> Balancer:
    """Nash-MTL (Navon et al., 2022): α > 0 with (G α)_t = 1/α_t, from the Gramian only.

    .. math::
        G\\alpha = 1/\\alpha,\\qquad \\tilde g_\\theta = \\min\\Big(1, \\frac{m}{\\|J^\\top\\alpha\\|}\\Big)
            J^\\top \\alpha,\\qquad \\tilde g_{\\psi_t} = \\alpha_t \\nabla_{\\psi_t}\\ell_t

    α is found by ``steps`` damped Newton iterations warm-started from the previous solution
    (:func:`fmtl.balancers._solvers.nash_bargaining`) instead of the original's sequence of
    convex programs (cvxpy); the fixed point is the same. As in LibMTL, the shared gradient is
    clipped to norm ``max_norm`` (0 disables; note ‖Jᵀα‖ = √T at the solution) and the weights
    are applied every step (``update_weights_every=1``). The weights touch θ and every ψ_t
    (paper Sec. 2.2).

    Example:
        >>> import torch, fmtl
        >>> from tensordict import TensorDict
        >>> b = fmtl.balancers.get("nash_mtl", max_norm=0.0)
        >>> p = TensorDict({"shared": {"w": torch.zeros(2)}, "tasks": {"a": {}, "b": {}}}, [])
        >>> J = TensorDict({"w": torch.tensor([[2.0, 0.0], [0.0, 1.0]])}, [2])
        >>> g, s, info = b.update(fmtl.TaskGradients(torch.ones(2), J, p["tasks"]), b.init(p, 2), p)
        >>> info["weights"], g["shared", "w"]  # α_t = 1/‖g_t‖ for orthogonal gradients
        (tensor([0.5000, 1.0000]), tensor([1., 1.]))
    """

    def init(params: TensorDict, num_tasks: int) -> NashState:
        return NashState(torch.ones(num_tasks, **like(params)))

    def weighting(G: torch.Tensor, losses: torch.Tensor, state: NashState):
        alpha, alpha_hat = nash_bargaining(G, state.alpha, steps)
        shared = alpha
        if max_norm > 0:
            norm = (alpha @ G @ alpha).clamp_min(0).sqrt()
            shared = alpha * torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        return shared, alpha, NashState(alpha_hat.to(state.alpha.dtype)), {"alpha": alpha}

    return gramian_balancer(weighting, init, log_transform=log_transform, eps=eps)

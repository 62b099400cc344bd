"""GLS: the geometric loss strategy, minimizing the geometric mean of the task losses."""

from __future__ import annotations

import torch
from tensordict import TensorDict

from ..base import Balancer, EmptyState
from ._common import check_log_domain
from ._loss import loss_balancer

__all__ = ["gls"]


def gls() -> Balancer:
    """GLS (Chennupati et al., 2019): minimize (Π_t ℓ_t)^{1/T} (paper Sec. 5, baseline ii).

    Its gradient is a weighted sum of the task gradients, so it is a loss balancer:

    .. math::
        \\nabla \\Big(\\prod_t \\ell_t\\Big)^{1/T} = \\sum_t w_t \\nabla \\ell_t,\\qquad
        w_t = \\frac{1}{T}\\frac{(\\prod_s \\ell_s)^{1/T}}{\\ell_t}

    (the geometric mean is computed as exp(mean log ℓ)). Weights touch θ and every ψ_t; the
    losses must be positive: a zero loss makes the mean 0 and its weight 0/0, so eagerly it
    raises ``ValueError`` naming the task (compiled, the step reports ``info["ok"] = False``).

    Example:
        >>> import torch, fmtl
        >>> b = fmtl.balancers.get("gls")
        >>> w, _, _ = b.loss_weights(torch.tensor([1.0, 4.0]), b.init(None, 2), None)
        >>> w  # GM = 2: w = 2 / (2 ℓ)
        tensor([1.0000, 0.2500])
    """

    def init(params: TensorDict, num_tasks: int) -> EmptyState:
        return EmptyState()

    def weights(losses: torch.Tensor, state: EmptyState):
        geometric_mean = torch.exp(torch.log(losses).mean())
        return geometric_mean / (losses.shape[0] * losses), state, {}

    inner = loss_balancer(init, weights)

    def checked(f, losses_of):
        def g(x, state, params):
            if params is not None:
                check_log_domain(losses_of(x), params, positive=True, who="GLS (a geometric mean of the losses)")
            return f(x, state, params)

        return g

    return Balancer(init, checked(inner.update, lambda g: g.losses), checked(inner.loss_weights, lambda x: x))

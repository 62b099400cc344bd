"""UW: uncertainty weighting with learned log-variances."""

from __future__ import annotations

import torch
from tensordict import TensorDict

from ..base import Balancer
from ..optim import adam
from ._loss import LearnedState, learned_init, learned_step, like, loss_balancer

__all__ = ["uw"]


def uw(lr: float = 1e-3, init: float = -0.5) -> Balancer:
    """UW (Kendall et al., 2018): minimize Σ_t ℓ_t / (2 e^{s_t}) + s_t / 2 over θ, ψ and s.

    .. math::
        w_t = \\frac{1}{2 e^{s_t}},\\qquad
        \\frac{\\partial}{\\partial s_t} = \\frac12 - \\frac{\\ell_t}{2 e^{s_t}}

    s_t (log σ_t², initialized to ``init`` = −0.5 as in LibMTL) lives in the state with its own
    Adam (learning rate ``lr``; LibMTL trains it with the model's optimizer, so pass the model's
    learning rate to match). Each call weights the losses with the current s and then takes one
    Adam step on s with the closed-form gradient above: the simultaneous update of the original.
    Weights touch θ and every ψ_t.

    Example:
        >>> import torch, fmtl
        >>> b = fmtl.balancers.get("uw", lr=0.1)
        >>> w, s, _ = b.loss_weights(torch.tensor([1.0, 4.0]), b.init(None, 2), None)
        >>> w, s.value  # w = e^{0.5}/2; ∂/∂s = ½ − ℓ e^{0.5}/2 < 0 for both, so s grows by lr
        (tensor([0.8244, 0.8244]), tensor([-0.4000, -0.4000]))
    """
    optimizer = adam(lr)

    def init_state(params: TensorDict, num_tasks: int) -> LearnedState:
        return learned_init(torch.full((num_tasks,), float(init), **like(params)), optimizer)

    def weights(losses: torch.Tensor, state: LearnedState):
        w = 0.5 * torch.exp(-state.value).to(losses.dtype)
        grad = 0.5 - losses * w
        return w, learned_step(state, grad, optimizer), {"log_variance": state.value}

    return loss_balancer(init_state, weights)

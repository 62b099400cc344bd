"""IMTL-L: learned loss scales e^{s_t} ℓ_t − s_t."""

from __future__ import annotations

import torch
from tensordict import TensorDict

from ..base import Balancer
from ..optim import Optimizer, adam
from ._loss import LearnedState, learned_init, learned_step, like, loss_balancer

__all__ = ["imtl_l", "scale_init", "scale_step"]


def scale_init(optimizer: Optimizer):
    """``init`` of the IMTL-L scales: s_t = 0 with a fresh optimizer state.

    Example:
        >>> scale_init(adam(0.1))(None, 2).value
        tensor([0., 0.])
    """

    def init(params: TensorDict, num_tasks: int) -> LearnedState:
        return learned_init(torch.zeros(num_tasks, **like(params)), optimizer)

    return init


def scale_step(losses: torch.Tensor, state: LearnedState, optimizer: Optimizer) -> tuple[torch.Tensor, LearnedState]:
    """The weights e^{s_t} and one optimizer step on s with ∂/∂s_t (e^{s_t}ℓ_t − s_t) = e^{s_t}ℓ_t − 1.

    Example:
        >>> from fmtl.optim import sgd
        >>> w, s = scale_step(torch.tensor([2.0]), scale_init(sgd(0.5))(None, 1), sgd(0.5))
        >>> w, s.value  # s ← 0 − 0.5 (1·2 − 1)
        (tensor([1.]), tensor([-0.5000]))
    """
    w = torch.exp(state.value).to(losses.dtype)
    return w, learned_step(state, w * losses - 1.0, optimizer)


def imtl_l(lr: float = 1e-3) -> Balancer:
    """IMTL-L (Liu et al., 2021b; paper Sec. 2.1): minimize Σ_t e^{s_t} ℓ_t − s_t over θ, ψ and s.

    .. math::
        w_t = e^{s_t},\\qquad \\frac{\\partial}{\\partial s_t} = e^{s_t} \\ell_t - 1

    s starts at 0 and lives in the state with its own Adam (learning rate ``lr``; LibMTL trains
    it with the model's optimizer). Each call weights the losses with the current s, then takes
    one Adam step on s: the one-step gradient descent on s of the original, whose exact
    minimizer s_t = −log ℓ_t would give the log transform (paper Prop. 1). Weights touch θ and
    every ψ_t.

    Example:
        >>> import torch, fmtl
        >>> b = fmtl.balancers.get("imtl_l", lr=0.1)
        >>> w, s, _ = b.loss_weights(torch.tensor([3.0, 0.5]), b.init(None, 2), None)
        >>> w, s.value  # ∂/∂s = ℓ − 1: s moves against its sign by lr (first Adam step)
        (tensor([1., 1.]), tensor([-0.1000,  0.1000]))
    """
    optimizer = adam(lr)

    def weights(losses: torch.Tensor, state: LearnedState):
        w, new_state = scale_step(losses, state, optimizer)
        return w, new_state, {"scales": state.value}

    return loss_balancer(scale_init(optimizer), weights)

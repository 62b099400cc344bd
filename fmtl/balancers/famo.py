"""FAMO: fast adaptive multitask optimization, O(1) space and time per step."""

from __future__ import annotations

from typing import NamedTuple

import torch
from tensordict import TensorDict
from torch.utils import _pytree as pytree

from ..base import Balancer
from ..optim import adam
from ._loss import LearnedState, learned_init, learned_step, like, loss_balancer

__all__ = ["FAMOState", "famo"]


class FAMOState(NamedTuple):
    """Step count, the logits ξ with their Adam state, and the previous step's losses."""

    count: torch.Tensor
    logits: LearnedState
    previous: torch.Tensor


def famo(lr: float = 0.025, gamma: float = 1e-3, eps: float = 1e-8) -> Balancer:
    """FAMO (Liu et al., 2023): a weighted log-loss step whose weights chase equal improvement.

    With z = softmax(ξ) and D_t = ℓ_t + ε (minimum losses taken as 0, as in LibMTL) the model
    descends Σ_t (z_t / c) log D_t, c = Σ_s z_s / D_s, i.e. the loss weights are

    .. math::
        w_t = \\frac{z_t}{c\\, D_t},\\qquad
        \\nabla_\\xi = J_{\\mathrm{softmax}}(\\xi)^\\top \\delta,\\quad
        \\delta_t = \\log D_t^{\\mathrm{prev}} - \\log D_t^{\\mathrm{now}}

    and ξ takes an Adam step (learning rate ``lr``, L2 decay ``gamma``) on δ, the decrease of
    the log losses. The original re-evaluates the *same* batch after the model step to get
    δ; a pure balancer only sees each step's losses, so δ uses the next step's losses (the
    update of ξ happens at the start of the next call, before its weights are computed). Weights
    touch θ and every ψ_t.

    Example:
        >>> import torch, fmtl
        >>> b = fmtl.balancers.get("famo")
        >>> w, s, _ = b.loss_weights(torch.tensor([1.0, 3.0]), b.init(None, 2), None)
        >>> w  # z = (½, ½): w_t ∝ 1/ℓ_t, summing to 1
        tensor([0.7500, 0.2500])
    """
    optimizer = adam(lr, weight_decay=gamma)

    def init(params: TensorDict, num_tasks: int) -> FAMOState:
        kw = like(params)
        return FAMOState(
            torch.zeros((), dtype=torch.int64, device=kw["device"]),
            learned_init(torch.zeros(num_tasks, **kw), optimizer),
            torch.zeros(num_tasks, **kw),
        )

    def weights(losses: torch.Tensor, state: FAMOState):
        log_now = torch.log(losses + eps)
        delta = torch.log(state.previous.to(losses.dtype) + eps) - log_now
        z = torch.softmax(state.logits.value, dim=0).to(losses.dtype)
        grad = z * (delta - (z * delta).sum())
        stepped = learned_step(state.logits, grad, optimizer)
        # the first call has no previous losses: ξ and its Adam state stay as they are
        logits = pytree.tree_map(lambda new, old: torch.where(state.count > 0, new, old), stepped, state.logits)
        z = torch.softmax(logits.value, dim=0).to(losses.dtype)
        D = losses + eps
        w = z / D / (z / D).sum()
        return w, FAMOState(state.count + 1, logits, losses.to(state.previous.dtype)), {"logits": logits.value}

    return loss_balancer(init, weights)

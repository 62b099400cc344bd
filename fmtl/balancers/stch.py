"""STCH: smooth Tchebycheff scalarization of the log losses, against a nadir point from a warm-up."""

from __future__ import annotations

from typing import NamedTuple

import torch
from tensordict import TensorDict

from ..base import Balancer
from ._common import check_log_domain
from ._loss import like, loss_balancer

__all__ = ["STCHState", "stch"]


class STCHState(NamedTuple):
    """Step count k and the sum of the losses over the last warm-up epoch (the nadir's numerator)."""

    count: torch.Tensor
    total: torch.Tensor


def stch(mu: float = 1.0, warmup_epochs: int = 4, steps_per_epoch: int = 1, eps: float = 1e-20) -> Balancer:
    """STCH (Lin et al., 2024, "Smooth Tchebycheff Scalarization for Multi-Objective Optimization").

    Epochs e < E (``warmup_epochs``) minimize Σ_t log(ℓ_t + ε); epoch E does the same and
    averages the losses into the nadir point z_t; from epoch E + 1 the objective is

    .. math::
        L = \\mu T \\log \\sum_t \\exp\\Big(\\frac{\\log(\\ell_t / z_t + \\epsilon)}{\\mu}\\Big),
        \\qquad w_t = \\frac{\\partial L}{\\partial \\ell_t} = \\frac{T s_t}{\\ell_t + \\epsilon z_t},
        \\quad s = \\mathrm{softmax}\\Big(\\frac{\\log(\\ell / z + \\epsilon)}{\\mu}\\Big)

    (w_t = 1/(ℓ_t + ε) during the warm-up), the smooth maximum of the log losses relative to the
    nadir point, as LibMTL's ``STCH`` (defaults μ = 1, E = 4, ε = 10⁻²⁰ from LibMTL; the paper
    uses preference weights and an ideal point, LibMTL and fmtl equal preferences and the log of
    the nadir-normalized loss). An epoch is ``steps_per_epoch`` calls (1: step-wise, as DWA). A
    loss balancer: the weights touch θ and every ψ_t. The losses must be non-negative.

    Example:
        >>> import torch, fmtl
        >>> b = fmtl.balancers.get("stch", warmup_epochs=0)
        >>> s = b.init(None, 2)
        >>> w, s, _ = b.loss_weights(torch.tensor([1.0, 4.0]), s, None)  # epoch 0 = E: log losses, nadir (1, 4)
        >>> w
        tensor([1.0000, 0.2500])
        >>> b.loss_weights(torch.tensor([1.0, 4.0]), s, None)[0]  # at the nadir: s = ½, w_t = 1/ℓ_t
        tensor([1.0000, 0.2500])
    """
    if mu <= 0:
        raise ValueError(f"mu must be positive; got {mu}")
    if warmup_epochs < 0 or steps_per_epoch < 1:
        raise ValueError(f"need warmup_epochs >= 0 and steps_per_epoch >= 1; got {warmup_epochs}, {steps_per_epoch}")

    def init(params: TensorDict, num_tasks: int) -> STCHState:
        kw = like(params)
        return STCHState(torch.zeros((), dtype=torch.int64, device=kw["device"]), torch.zeros(num_tasks, **kw))

    def weights(losses: torch.Tensor, state: STCHState):
        T = losses.shape[0]
        epoch = state.count // steps_per_epoch
        nadir = (state.total.to(losses.dtype) / steps_per_epoch).clamp_min(torch.finfo(losses.dtype).tiny)
        share = torch.softmax(torch.log(losses / nadir + eps) / mu, dim=0)
        w = torch.where(epoch > warmup_epochs, T * share / (losses + eps * nadir), 1.0 / (losses + eps))
        total = torch.where(epoch == warmup_epochs, state.total + losses.to(state.total.dtype), state.total)
        return w, STCHState(state.count + 1, total), {}

    balancer = loss_balancer(init, weights)

    def loss_weights(losses: torch.Tensor, state: STCHState, params: TensorDict):
        if params is not None:
            check_log_domain(losses, params)
        return balancer.loss_weights(losses, state, params)

    def update(grads, state: STCHState, params: TensorDict):
        check_log_domain(grads.losses, params)
        return balancer.update(grads, state, params)

    return balancer._replace(update=update, loss_weights=loss_weights)

"""DWA: dynamic weight average from the rate at which each loss descends."""

from __future__ import annotations

from typing import NamedTuple

import torch
from tensordict import TensorDict

from ..base import Balancer
from ._loss import like, loss_balancer

__all__ = ["DWAState", "dwa"]


class DWAState(NamedTuple):
    """Step count, the running loss sum of the current epoch, and the last two epoch means."""

    count: torch.Tensor
    running: torch.Tensor
    last: torch.Tensor
    before: torch.Tensor


def dwa(temperature: float = 2.0, steps_per_epoch: int = 1) -> Balancer:
    """DWA (Liu et al., 2019a): w = T softmax(r / τ) with r_t = L̄_t(e−1) / L̄_t(e−2).

    .. math::
        w_t = \\frac{T \\exp(r_t/\\tau)}{\\sum_s \\exp(r_s/\\tau)},\\qquad
        r_t = \\frac{\\bar L_t(e-1)}{\\bar L_t(e-2)}

    L̄_t(e) is the mean loss of task t over epoch e, accumulated from the losses the balancer
    sees; an epoch is ``steps_per_epoch`` steps (LibMTL averages over its epochs; 1 makes DWA
    step-wise). w = 1 during the first two epochs. Weights touch θ and every ψ_t.

    Example:
        >>> import torch, fmtl
        >>> b = fmtl.balancers.get("dwa", temperature=1.0)
        >>> s = b.init(None, 2)
        >>> for losses in ([1.0, 1.0], [1.0, 2.0]):
        ...     w, s, _ = b.loss_weights(torch.tensor(losses), s, None)
        >>> w  # epochs 0 and 1 use w = 1
        tensor([1., 1.])
        >>> b.loss_weights(torch.ones(2), s, None)[0]  # r = (1, 2): w = 2 softmax(r)
        tensor([0.5379, 1.4621])
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1; got {steps_per_epoch}")

    def init(params: TensorDict, num_tasks: int) -> DWAState:
        kw = like(params)
        zeros = torch.zeros(num_tasks, **kw)
        return DWAState(torch.zeros((), dtype=torch.int64, device=kw["device"]), zeros, zeros.clone(), zeros.clone())

    def weights(losses: torch.Tensor, state: DWAState):
        T = losses.shape[0]
        ratio = (state.last / state.before).to(losses.dtype)
        warm = state.count >= 2 * steps_per_epoch
        w = torch.where(warm, T * torch.softmax(ratio / temperature, dim=0), torch.ones_like(losses))
        running = state.running + losses.to(state.running.dtype)
        ends = (state.count + 1) % steps_per_epoch == 0
        last = torch.where(ends, running / steps_per_epoch, state.last)
        before = torch.where(ends, state.last, state.before)
        running = torch.where(ends, torch.zeros_like(running), running)
        return w, DWAState(state.count + 1, running, last, before), {}

    return loss_balancer(init, weights)

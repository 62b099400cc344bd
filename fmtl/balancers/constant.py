"""Constant: fixed, pre-set task weights."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tensordict import TensorDict

from ..base import Balancer, EmptyState
from ._loss import loss_balancer

__all__ = ["constant"]


def constant(weights: Sequence[float] | None = None) -> Balancer:
    """Constant weights: minimize Σ_t w_t ℓ_t with w fixed (TorchJD's ``Constant``).

    .. math::
        \\tilde g = \\sum_t w_t \\nabla \\ell_t

    ``weights=None`` is w_t = 1 (EW). A loss balancer: the weights touch θ and every ψ_t, as
    TorchJD's ``scalarization.Constant``; TorchJD's *aggregator* ``Constant`` weights θ only
    (its heads get ∇ψ_t ℓ_t). ``init`` raises ``ValueError`` when the number of weights is not T.

    Example:
        >>> import torch, fmtl
        >>> b = fmtl.balancers.get("constant", weights=[1.0, 0.5])
        >>> b.loss_weights(torch.tensor([3.0, 4.0]), b.init(None, 2), None)[0]
        tensor([1.0000, 0.5000])
    """
    fixed = None if weights is None else [float(w) for w in weights]
    if fixed is not None and not all(math.isfinite(w) for w in fixed):
        raise ValueError(f"constant weights must be finite; got {fixed}")

    def init(params: TensorDict, num_tasks: int) -> EmptyState:
        if fixed is not None and len(fixed) != num_tasks:
            raise ValueError(f"constant has {len(fixed)} weights {fixed} but there are {num_tasks} tasks")
        return EmptyState()

    def weights_of(losses: torch.Tensor, state: EmptyState):
        if fixed is None:
            return torch.ones_like(losses), state, {}
        return torch.tensor(fixed, dtype=losses.dtype, device=losses.device), state, {}

    return loss_balancer(init, weights_of)

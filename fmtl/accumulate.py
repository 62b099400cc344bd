"""Gradient accumulation *before* the balancer: the per-task gradients of K micro-batches, summed.

For K micro-batches B_1…B_K of one batch B (sizes n_k, Σ n_k = n) and mean-reduced losses:

.. math::
    \\ell_t(B) = \\sum_k \\frac{n_k}{n} \\ell_t(B_k), \\qquad
    J(B) = \\sum_k \\frac{n_k}{n} J(B_k)

so the balancer (DB-MTL's log transform, EMA ĝ_t and norms ‖ĝ_t‖) sees the full-batch task
gradients while only one micro-batch is in memory at a time. Summing the *balanced* updates of
the micro-batches instead (what ``loss.backward()`` K times does) would balance K noisy
micro-batch gradients and is not the same method. BatchNorm's batch statistics are per
micro-batch, as with ``backward()`` accumulation in PyTorch; its running statistics are updated
once per optimizer step (by the step, from the last micro-batch), where PyTorch updates them K
times.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tensordict import TensorDict

from .base import Balancer, TaskGradients
from .task_gradients import LossFn, task_gradients

__all__ = ["Accumulator", "axpy", "gradient_form"]


def axpy(a: float, x: TaskGradients, y: TaskGradients | None) -> TaskGradients:
    """a·x + y over every field of a TaskGradients (``y = None`` means 0).

    Example:
        >>> import torch
        >>> g = TaskGradients(torch.ones(2), TensorDict({"w": torch.ones(2, 3)}, [2]), TensorDict({}, []))
        >>> axpy(0.5, g, g).losses
        tensor([1.5000, 1.5000])
    """
    if y is None:
        return TaskGradients(x.losses * a, x.shared.apply(lambda u: u * a), x.tasks.apply(lambda u: u * a))
    return TaskGradients(
        y.losses + x.losses * a,
        y.shared.apply(lambda v, u: v + u * a, x.shared),
        y.tasks.apply(lambda v, u: v + u * a, x.tasks),
    )


def gradient_form(balancer: Balancer) -> Balancer:
    """The balancer without its loss-only shortcut (``loss_weights``), so it reads summed task gradients.

    A loss balancer's weights are only known once every micro-batch is in, so under accumulation
    it runs in its gradient form ``Balancer(init, update)`` (the same update, computed from J).

    Example:
        >>> import fmtl
        >>> gradient_form(fmtl.balancers.get("ew")).loss_weights is None
        True
    """
    return Balancer(balancer.init, balancer.update, None)


class Accumulator:
    """The ``reduce`` hook of ``make_step`` that adds the pending micro-batch task gradients.

    The caller runs :meth:`add` for micro-batches 1…K−1 (``task_gradients``, no update), sets
    :attr:`last_fraction` = n_K/n, then calls the step on micro-batch K; the step's ``reduce``
    hook (this object) adds the pending sum to the step's own task gradients before the balancer
    sees them (then applies ``outer``, e.g. the cross-rank mean). The step's balancer, optimizer
    and non-finite checks are untouched. Build the step with :func:`gradient_form` of the
    balancer. Unlike the step, the accumulator holds state (the pending sum) between calls.

    Args:
        loss_fn: the step's ``loss_fn(params, batch) -> Tensor[T]``.
        strategy, chunk_size: as passed to :func:`fmtl.task_gradients`.
        outer: a further reduce hook applied to the total (``None``: none).

    Example:
        >>> import torch, fmtl
        >>> from tensordict import TensorDict
        >>> params, apply = fmtl.functionalize(torch.nn.Linear(3, 2), {"a": torch.nn.Linear(2, 1)})
        >>> loss_fn = lambda p, b: apply(p, b["x"])["a"].pow(2).mean().reshape(1)
        >>> acc = Accumulator(loss_fn, "jacrev", None, None)
        >>> step = fmtl.make_step(loss_fn, gradient_form(fmtl.balancers.get("ew")), fmtl.optim.sgd(0.1),
        ...                       reduce=acc, strategy="jacrev")
        >>> batch = TensorDict({"x": torch.randn(8, 3)}, [8])
        >>> acc.add(params, batch[:4], 0.5); acc.last_fraction = 0.5
        >>> _, _, info = step(params, step.init(params), batch[4:])
        >>> torch.allclose(info["losses"], loss_fn(params, batch))
        True
    """

    def __init__(self, loss_fn: LossFn, strategy: str, chunk_size: int | None, outer: Callable | None) -> None:
        self.loss_fn, self.strategy, self.chunk_size, self.outer = loss_fn, strategy, chunk_size, outer
        self.pending: TaskGradients | None = None
        self.last_fraction = 1.0

    def add(self, params: TensorDict, batch: Any, fraction: float) -> None:
        """Adds ``fraction`` × the task gradients of one micro-batch to the pending sum."""
        g = task_gradients(self.loss_fn, params, batch, strategy=self.strategy, chunk_size=self.chunk_size)
        self.pending = axpy(fraction, g, self.pending)

    def __call__(self, grads: TaskGradients) -> TaskGradients:
        total = axpy(self.last_fraction, grads, self.pending)
        self.pending = None
        return self.outer(total) if self.outer is not None else total

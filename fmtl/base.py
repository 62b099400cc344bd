"""The two shapes every fmtl algorithm takes: per-task gradients in, one update out.

``TaskGradients`` holds the Jacobian of the T task losses; a ``Balancer`` is an optax-shaped
pair of pure functions that turns it into one parameter-shaped gradient, the way
``optax.experimental`` aggregators turn per-example gradients into one update — here the
leading axis is the task axis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from tensordict import TensorDict

__all__ = ["TaskGradients", "Balancer", "EmptyState", "FromGramian", "LossWeights", "KINDS"]


class TaskGradients(NamedTuple):
    """Per-task losses and gradients of one batch.

    Attributes:
        losses: ``Tensor[T]``, the raw task losses ℓ_t.
        shared: TensorDict with ``batch_size=[T]``; row t is ∇θ ℓ_t (the Jacobian J of the
            shared parameters θ, one leaf at a time).
        tasks: TensorDict shaped like ``params["tasks"]``; entry t is ∇ψ_t ℓ_t.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> g = TaskGradients(torch.ones(2), TensorDict({"w": torch.eye(2)}, [2]), TensorDict())
        >>> g.shared.batch_size
        torch.Size([2])
    """

    losses: torch.Tensor
    shared: TensorDict
    tasks: TensorDict


class EmptyState(NamedTuple):
    """State of a stateless balancer or optimizer.

    Example:
        >>> EmptyState()
        EmptyState()
    """


LossWeights = Callable[
    [torch.Tensor, Any, TensorDict], "tuple[torch.Tensor, Any, dict[str, torch.Tensor]]"
]

# ``from_gramian(G, losses, state, params) -> (w, w_tasks, state, info)``: a Gramian method's
# weights computed from the raw Gramian G = J Jᵀ, as weights of the raw rows J_t
FromGramian = Callable[
    [torch.Tensor, torch.Tensor, Any, TensorDict],
    "tuple[torch.Tensor, torch.Tensor | None, Any, dict[str, torch.Tensor]]",
]

# What a balancer needs from the task gradients (``Balancer.kind``).
KINDS = ("loss", "gramian", "jacobian")


class Balancer(NamedTuple):
    """An MTL method as a pair of pure functions (optax's ``GradientTransformation`` shape).

    ``init(params, num_tasks) -> state`` builds the state (a NamedTuple of tensors; step
    counts are 0-d tensors so compiled steps never recompile).
    ``update(grads: TaskGradients, state, params) -> (grad, state, info)`` returns a gradient
    shaped like ``params`` (shared rows aggregated, task heads weighted) and a dict of
    diagnostics that always holds ``"weights"`` (Tensor[T]).

    Loss-balancing methods also set ``loss_weights(losses, state, params) -> (w, state, info)``:
    they weight the losses only, so ``make_step`` differentiates ``Σ_t w_t ℓ_t`` with one
    backward pass instead of computing the T task gradients. Their ``update`` computes the
    same thing from a given Jacobian, so every method is testable on random Jacobians.

    ``kind`` says what the weights are computed from (TorchJD's weighting/aggregator split made
    visible in the type): ``"loss"`` — the losses only (``loss_weights`` is set); ``"gramian"``
    — the T×T Gramian J Jᵀ and the losses, and θ gets Jᵀw (built with
    :func:`fmtl.balancers.gramian_balancer`); ``"jacobian"`` — anything else (J itself, an EMA of
    it, …; the default, so a hand-written ``Balancer(init, update)`` claims nothing).

    ``from_gramian(G, losses, state, params) -> (w, w_tasks, state, info)`` (Gramian methods
    only, else None) is the same method for a caller that has the raw Gramian G = J Jᵀ but not
    J: ``update`` equals ``Jᵀw`` for θ and ``w_tasks[t] ∇ψ_t ℓ_t`` for the heads (``w_tasks`` None:
    unweighted), with any log transform folded into w and w_tasks. :mod:`fmtl.linear_representation`
    uses it, where G is cheaper to form than J.

    Purity contract: neither function mutates its inputs; same inputs give same outputs.

    Example:
        >>> import torch, fmtl
        >>> from tensordict import TensorDict
        >>> b = fmtl.balancers.get("ew")
        >>> params = TensorDict({"shared": {"w": torch.zeros(3)}, "tasks": {"a": {"b": torch.zeros(1)},
        ...                      "b": {"b": torch.zeros(1)}}}, [])
        >>> state = b.init(params, 2)
        >>> g = TaskGradients(torch.ones(2), TensorDict({"w": torch.ones(2, 3)}, [2]),
        ...                   params["tasks"].apply(torch.ones_like))
        >>> grad, state, info = b.update(g, state, params)
        >>> grad["shared", "w"]
        tensor([2., 2., 2.])
        >>> b.kind
        'loss'
    """

    init: Callable[[TensorDict, int], Any]
    update: Callable[[TaskGradients, Any, TensorDict], tuple[TensorDict, Any, dict]]
    loss_weights: LossWeights | None = None
    kind: str = "jacobian"
    from_gramian: FromGramian | None = None

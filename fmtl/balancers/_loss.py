"""How loss balancers are assembled, and the learned per-task scalars some of them keep.

A loss balancer only chooses weights w from the losses: ``make_step`` then runs one backward of
``Σ_t w_t ℓ_t`` (w detached), so θ gets ``Jᵀw`` and each ψ_t gets ``w_t ∇ψ_t ℓ_t``. Its ``update``
applies the same weights to a given Jacobian, which is what the tests check it against.

Methods with learned scalars (UW's log-variances, IMTL-L's s_t, FAMO's and GradNorm's logits)
keep them in the state with the state of their own Adam: each call reads the weights from the
current scalars and then takes one optimizer step on them, with the gradient of the method's own
objective written in closed form. That is the original methods' simultaneous update of model and
scalars (there the scalars sit in the model's optimizer), done inside a pure function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from tensordict import TensorDict

from ..base import Balancer, TaskGradients
from ..optim import Optimizer
from ..tree import combine
from ._common import assemble, weighted_tasks

__all__ = ["WeightFn", "loss_balancer", "LearnedState", "learned_init", "learned_step", "like"]

WeightFn = Callable[[torch.Tensor, Any], "tuple[torch.Tensor, Any, dict[str, torch.Tensor]]"]


def like(params: TensorDict | None) -> dict[str, Any]:
    """``dtype``/``device`` keywords of the first floating parameter (defaults without one).

    Example:
        >>> like(TensorDict({"w": torch.zeros(1, dtype=torch.float64)}, []))
        {'dtype': torch.float64, 'device': device(type='cpu')}
    """
    leaves = [] if params is None else [v for v in params.values(True, True) if v.is_floating_point()]
    if not leaves:
        return {"dtype": torch.get_default_dtype(), "device": torch.device("cpu")}
    return {"dtype": leaves[0].dtype, "device": leaves[0].device}


def loss_balancer(init: Callable[[TensorDict, int], Any], weights: WeightFn) -> Balancer:
    """A balancer from ``weights(losses, state) -> (w, state, info)`` (losses are detached).

    Example:
        >>> from fmtl.base import EmptyState
        >>> b = loss_balancer(lambda p, T: EmptyState(), lambda l, s: (2 * torch.ones_like(l), s, {}))
        >>> p = TensorDict({"shared": {"w": torch.zeros(2)}, "tasks": {"a": {"b": torch.zeros(1)}}}, [])
        >>> g = TaskGradients(torch.ones(1), TensorDict({"w": torch.ones(1, 2)}, [1]),
        ...                   TensorDict({"a": {"b": torch.ones(1)}}, []))
        >>> out, _, info = b.update(g, b.init(p, 1), p)
        >>> out["shared", "w"], out["tasks", "a", "b"], info["weights"]
        (tensor([2., 2.]), tensor([2.]), tensor([2.]))
    """

    def loss_weights(losses: torch.Tensor, state: Any, params: TensorDict):
        w, state, info = weights(losses.detach(), state)
        return w, state, {**info, "weights": w}

    def update(grads: TaskGradients, state: Any, params: TensorDict):
        w, state, info = loss_weights(grads.losses, state, params)
        return assemble(combine(w, grads.shared), weighted_tasks(w, grads.tasks)), state, info

    return Balancer(init, update, loss_weights, "loss")


class LearnedState(NamedTuple):
    """Learned per-task scalars ([T]) and the state of the optimizer that trains them."""

    value: torch.Tensor
    opt: Any


def learned_init(value: torch.Tensor, optimizer: Optimizer) -> LearnedState:
    """Starts learned scalars at ``value``.

    Example:
        >>> from fmtl.optim import sgd
        >>> learned_init(torch.zeros(2), sgd(0.1)).value
        tensor([0., 0.])
    """
    return LearnedState(value, optimizer.init(TensorDict({"value": value}, [])))


def learned_step(state: LearnedState, grad: torch.Tensor, optimizer: Optimizer) -> LearnedState:
    """One optimizer step on the scalars with gradient ``grad``.

    Example:
        >>> from fmtl.optim import sgd
        >>> learned_step(learned_init(torch.zeros(2), sgd(0.1)), torch.tensor([1.0, -1.0]), sgd(0.1)).value
        tensor([-0.1000,  0.1000])
    """
    params = TensorDict({"value": state.value}, [])
    updates, opt = optimizer.update(TensorDict({"value": grad.to(state.value.dtype)}, []), state.opt, params)
    return LearnedState(state.value + updates["value"], opt)

"""Drive any ``torch.optim`` optimizer (and its ``lr_scheduler``) with fmtl's balanced gradients.

The pure step ``make_step(loss_fn, balancer, optimizer)`` needs a functional optimizer. An eager
loop that wants a ``torch.optim`` optimizer (any whose ``step()`` needs no closure, i.e. all but
LBFGS) or a scheduler such as ``ReduceLROnPlateau`` uses :class:`TorchOptimizer` instead, the way
TorchJD fills ``.grad``: the same step machinery computes the balanced gradient g̃ (task gradients
in one vectorized pass, the balancer, its guards), it is written into every parameter's
``.grad``, and the torch optimizer steps the parameters in place::

    opt = torch.optim.AdamW(params.values(True, True), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=1000)
    mtl = fmtl.TorchOptimizer(loss_fn, fmtl.balancers.dbmtl(), params, opt)
    for batch in batches:
        info = mtl.step(batch)          # zero_grad, g̃ into .grad, opt.step()
        sched.step()

Under the hood the step runs with :func:`keep_gradient`, a functional "optimizer" that leaves the
parameters where they are and keeps the gradient it was handed in its state.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from tensordict import TensorDict
from torch.utils import _pytree as pytree

from .base import Balancer
from .optim import Optimizer
from .step import Reduce, StepState, make_step
from .task_gradients import LossFn
from .tree import leaves_at

__all__ = ["GradientState", "keep_gradient", "TorchOptimizer"]


class GradientState(NamedTuple):
    """The balanced gradient of the last step (zero-strided zeros before the first)."""

    grad: TensorDict


def _free_zeros(params: TensorDict) -> TensorDict:
    # shaped like params without memory: a stride-0 view of one zero per leaf
    return params.apply(lambda p: torch.zeros((), dtype=p.dtype, device=p.device).expand_as(p))


def keep_gradient() -> Optimizer:
    """A functional optimizer whose update is zero and whose state is the gradient it was given.

    ``make_step(loss_fn, balancer, keep_gradient())`` is a "gradient only" step: params come back
    unchanged and ``state.optimizer.grad`` is the balanced gradient g̃ (shaped like params).
    The zero update is g̃·0 rather than plain zeros so that a non-finite g̃ still fails the
    step's finiteness check (``info["ok"]``, or an error in eager mode).

    Example:
        >>> import torch, fmtl
        >>> from tensordict import TensorDict
        >>> p = TensorDict({"w": torch.ones(2)}, [])
        >>> opt = keep_gradient()
        >>> updates, state = opt.update(TensorDict({"w": torch.tensor([0.5, -1.0])}, []), opt.init(p), p)
        >>> updates["w"], state.grad["w"]
        (tensor([0., -0.]), tensor([ 0.5000, -1.0000]))
    """

    def init(params: TensorDict) -> GradientState:
        return GradientState(_free_zeros(params))

    def update(grads: TensorDict, state: GradientState, params: TensorDict) -> tuple[TensorDict, GradientState]:
        return grads.apply(lambda g: g * 0), GradientState(grads)

    return Optimizer(init, update)


class TorchOptimizer:
    """Steps a ``torch.optim.Optimizer`` with fmtl's balanced gradient g̃, written into ``.grad``.

    Args:
        loss_fn: ``loss_fn(params, batch) -> Tensor[T]``.
        balancer: any :class:`fmtl.Balancer`, e.g. ``fmtl.balancers.dbmtl()``.
        params: the TensorDict of parameters (``params["shared"]``, ``params["tasks"][t]``); its
            leaves must be leaf tensors, and they are the tensors ``optimizer`` updates in place
            (build it from ``params.values(True, True)``).
        optimizer: any ``torch.optim.Optimizer`` over (a subset of) those leaves; schedulers
            (``CosineAnnealingLR``, ``ReduceLROnPlateau``, …) attach to it as usual.
        reduce, strategy, chunk_size, diagnostics: as in :func:`fmtl.make_step`.

    :meth:`backward` adds g̃ to each leaf's ``.grad`` (torch's accumulate convention: call
    ``optimizer.zero_grad()`` first, or use :meth:`step`, which does); ``info`` is the step's (losses,
    task weights, gradient norms, ``ok``). The balancer's state lives in :attr:`state`
    (a :class:`fmtl.StepState`); :meth:`state_dict` / :meth:`load_state_dict` checkpoint it together
    with the torch optimizer's.

    Bad input: the step's errors (non-finite losses or gradients name the tasks, and nothing is
    written to ``.grad``); an optimizer holding tensors that are not leaves of ``params`` is a
    ``ValueError``.

    Example:
        >>> import torch, fmtl
        >>> params, apply = fmtl.functionalize(torch.nn.Linear(2, 3), {"u": torch.nn.Linear(3, 1),
        ...                                                            "v": torch.nn.Linear(3, 1)})
        >>> x = torch.randn(8, 2)
        >>> loss_fn = lambda p, x: torch.stack([o.pow(2).mean() for o in apply(p, x).values()])
        >>> opt = torch.optim.SGD(params.values(True, True), lr=0.1)
        >>> mtl = fmtl.TorchOptimizer(loss_fn, fmtl.balancers.dbmtl(), params, opt)
        >>> before = params["shared", "weight"].clone()
        >>> info = mtl.step(x)   # the batch is whatever loss_fn takes
        >>> bool((params["shared", "weight"] != before).any()), int(mtl.state.count)
        (True, 1)
    """

    def __init__(
        self,
        loss_fn: LossFn,
        balancer: Balancer,
        params: TensorDict,
        optimizer: torch.optim.Optimizer,
        *,
        reduce: Reduce | None = None,
        strategy: str = "auto",
        chunk_size: int | None = None,
        diagnostics: bool = False,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer; got {type(optimizer).__name__} "
                            "(a functional fmtl.optim optimizer goes to fmtl.make_step)")  # fmt: skip
        self._keys = list(params.keys(True, True))
        names = [".".join(k) if isinstance(k, tuple) else k for k in self._keys]
        self._leaves = leaves_at(params, self._keys)
        not_leaf = [n for n, p in zip(names, self._leaves, strict=True) if not p.is_leaf]
        if not_leaf:
            raise ValueError(f"params {not_leaf} are not leaf tensors; torch.optim can only update leaves "
                             "(detach them first)")  # fmt: skip
        mine = {id(p) for p in self._leaves}
        foreign = [i for g in optimizer.param_groups for i, p in enumerate(g["params"]) if id(p) not in mine]
        if foreign:
            raise ValueError(f"the optimizer holds {len(foreign)} tensor(s) that are not leaves of params; build "
                             "it from params.values(True, True) so that it updates the tensors fmtl differentiates")
        self.params, self.optimizer = params, optimizer
        self._step = make_step(loss_fn, balancer, keep_gradient(), reduce=reduce, strategy=strategy,
                               chunk_size=chunk_size, diagnostics=diagnostics)  # fmt: skip
        self.state: StepState = self._step.init(params)
        self._empty = self.state.optimizer

    def backward(self, batch: Any) -> dict[str, torch.Tensor]:
        """Adds the balanced gradient g̃ of ``batch`` to every leaf's ``.grad``; returns the step's info."""
        _, state, info = self._step(self.params, self.state, batch)
        with torch.no_grad():
            for p, g in zip(self._leaves, leaves_at(state.optimizer.grad, self._keys), strict=True):
                if p.grad is None:
                    p.grad = torch.empty_like(p).copy_(g)  # the parameter's layout, as autograd gives it
                else:
                    p.grad.add_(g)
        # the gradient now lives in .grad; the state keeps the memory-free placeholder
        self.state = state._replace(optimizer=self._empty)
        return info

    def step(self, batch: Any) -> dict[str, torch.Tensor]:
        """``optimizer.zero_grad()``, :meth:`backward`, ``optimizer.step()``; returns the step's info."""
        self.optimizer.zero_grad(set_to_none=True)
        info = self.backward(batch)
        self.optimizer.step()
        return info

    def state_dict(self) -> dict[str, Any]:
        """The balancer state (as tensors) and the torch optimizer's ``state_dict()``."""
        return {"step": [x.detach().clone() for x in pytree.tree_leaves(self.state[:2])],
                "optimizer": self.optimizer.state_dict()}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`state_dict` returned (checked against this object's structure first)."""
        ref = pytree.tree_leaves(self.state[:2])
        saved = list(state["step"])
        if len(saved) != len(ref) or any(a.shape != b.shape or a.dtype != b.dtype
                                         for a, b in zip(saved, ref, strict=True)):
            raise ValueError("the saved balancer state does not match this TorchOptimizer's params and balancer")
        self.optimizer.load_state_dict(state["optimizer"])
        spec = pytree.tree_structure(self.state[:2])
        count, balancer_state = pytree.tree_unflatten([x.to(r.device) for x, r in zip(saved, ref, strict=True)], spec)
        self.state = StepState(count, balancer_state, self._empty)

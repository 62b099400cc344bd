"""Parameters as one TensorDict tree: ``params["shared"]`` (θ) and ``params["tasks"][name]`` (ψ_t)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from copy import deepcopy
from typing import NamedTuple

import torch
from tensordict import TensorDict
from torch import nn
from torch.func import functional_call, replace_all_batch_norm_modules_

from .heads import linear_heads

__all__ = ["Functional", "functionalize", "task_names", "flat_dict", "check_params"]


class _ParamsApply(NamedTuple):
    params: TensorDict
    apply: Callable[..., dict[str, torch.Tensor]]


class Functional(_ParamsApply):
    """A functionalized model: unpacks as ``(params, apply)``; also carries ``buffers`` and ``update``.

    Attributes:
        params: ``{"shared": θ, "tasks": {t: ψ_t}}``.
        apply: ``apply(params, x, buffers=None, train=True) -> {task: output}`` (pure).
        buffers: the modules' buffers (BatchNorm running statistics, constants) laid out like
            ``params``, or ``None`` when the modules have none.
        update: ``update(params, buffers, x) -> buffers``: the running statistics after one
            training forward on ``x`` (no gradients), or ``None`` without BatchNorm statistics.
    """

    buffers: TensorDict | None = None
    update: Callable[[TensorDict, TensorDict, torch.Tensor], TensorDict] | None = None

    def __new__(cls, params: TensorDict, apply: Callable, buffers: TensorDict | None = None,
                update: Callable | None = None) -> Functional:  # fmt: skip
        self = super().__new__(cls, params, apply)
        self.buffers, self.update = buffers, update
        return self


def flat_dict(td: TensorDict) -> dict[str, torch.Tensor]:
    """Flattens a TensorDict to the ``{"a.b": tensor}`` dict that ``functional_call`` takes.

    Example:
        >>> td = TensorDict({"0": {"weight": torch.ones(1)}}, [])
        >>> list(flat_dict(td))
        ['0.weight']
    """
    return dict(td.flatten_keys(".").items())


def task_names(params: TensorDict) -> list[str]:
    """The task order: the keys of ``params["tasks"]``, which is the order of the loss vector.

    Example:
        >>> p = TensorDict({"shared": {}, "tasks": {"b": {}, "a": {}}}, [])
        >>> task_names(p)
        ['b', 'a']
    """
    return list(params["tasks"].keys())


def check_params(params: TensorDict) -> None:
    """Raises ``ValueError`` unless ``params`` has the ``shared`` / ``tasks`` layout.

    Example:
        >>> check_params(TensorDict({"shared": {}}, []))
        Traceback (most recent call last):
        ...
        ValueError: params must be a TensorDict with keys 'shared' and 'tasks' ...; got keys ['shared']
    """
    if not isinstance(params, TensorDict) or set(params.keys()) != {"shared", "tasks"}:
        keys = sorted(params.keys()) if isinstance(params, Mapping | TensorDict) else type(params)
        raise ValueError(
            f"params must be a TensorDict with keys 'shared' and 'tasks' (one sub-tree per task); got keys {keys}"
        )
    if len(params["tasks"].keys()) == 0:
        raise ValueError("params['tasks'] is empty: a multi-task model needs at least one task")


def _tree(named: Mapping[str, torch.Tensor]) -> TensorDict:
    return TensorDict({k: v.detach().clone() for k, v in named.items()}, []).unflatten_keys(".")


def _template(module: nn.Module, mode: str) -> nn.Module:
    """A parameter-free copy of ``module`` (on the meta device) to ``functional_call`` in one mode.

    ``"train"``: train mode with BatchNorm on batch statistics and no running statistics
    (``torch.func.replace_all_batch_norm_modules_``: nothing is written in place, so the forward is
    pure under every ``torch.func`` transform); ``"eval"``: eval mode (running statistics, no
    dropout); ``"stats"``: train mode with BatchNorm's running statistics (the no-grad update).
    """
    copy = deepcopy(module).to("meta")
    if mode == "train":
        return replace_all_batch_norm_modules_(copy.train())
    return copy.eval() if mode == "eval" else copy.train()


def functionalize(encoder: nn.Module, heads: Mapping[str, nn.Module]) -> Functional:
    """Turns an ``nn.Module`` encoder and a dict of heads into ``(params, apply)`` (plus buffers, update).

    ``params["shared"]`` holds the encoder's parameters θ and ``params["tasks"][name]`` each
    head's ψ_t (copies). ``apply(params, x)`` runs ``heads[t](encoder(x))`` with
    ``torch.func.functional_call`` and returns ``{name: output}`` in task order; plain
    ``nn.Linear`` heads are applied together as one matrix product (:func:`fmtl.heads.linear_heads`).
    The modules themselves are never called or changed (``apply`` runs parameter-free copies), so
    their own ``train()``/``eval()`` mode does not matter; ``train`` chooses:

    * ``train=True`` (the training forward, what a ``loss_fn`` calls): dropout active and
      BatchNorm normalizing with the batch statistics μ_B, σ²_B, writing nothing; under every
      task-gradient strategy the forward runs once per batch, so each sample has one dropout
      mask shared by all T task gradients;
    * ``train=False`` (evaluation): no dropout, BatchNorm with the running statistics
      ``buffers`` (default: the modules' buffers at functionalize time).

    For modules with BatchNorm running statistics, ``update(params, buffers, x)`` returns them
    after one training forward on ``x`` under ``torch.no_grad`` — ``nn.BatchNorm``'s own update
    (momentum, unbiased batch variance, ``num_batches_tracked``), run outside the gradient pass:
    pass it to ``make_step(update_buffers=...)`` and the step keeps the statistics in its state.
    Other buffers (constants) are passed to every call unchanged. ``nn.BatchNorm(momentum=None)``
    (the cumulative average) reads its step count as a Python number: it works eagerly, but a
    compiled step cannot trace it, and the vmapped STL ensemble updates its members one by one.

    Example:
        >>> import torch, fmtl
        >>> enc = torch.nn.Linear(4, 8)
        >>> heads = {"a": torch.nn.Linear(8, 1), "b": torch.nn.Linear(8, 2)}
        >>> params, apply = fmtl.functionalize(enc, heads)
        >>> fmtl.task_names(params)
        ['a', 'b']
        >>> {k: v.shape for k, v in apply(params, torch.randn(5, 4)).items()}
        {'a': torch.Size([5, 1]), 'b': torch.Size([5, 2])}
        >>> bn = fmtl.functionalize(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8)), heads)
        >>> new = bn.update(bn.params, bn.buffers, torch.randn(16, 4))
        >>> out = bn.apply(bn.params, torch.randn(1, 4), new, train=False)  # running statistics, no dropout
        >>> int(new["shared", "1", "num_batches_tracked"]), out["b"].shape
        (1, torch.Size([1, 2]))
    """
    heads = dict(heads)
    if not heads:
        raise ValueError("functionalize needs at least one head")
    modules = {"shared": encoder, **{f"tasks.{k}": h for k, h in heads.items()}}

    params = TensorDict(
        {"shared": _tree(dict(encoder.named_parameters())),
         "tasks": TensorDict({k: _tree(dict(h.named_parameters())) for k, h in heads.items()}, [])},
        [],
    )  # fmt: skip
    buffers = TensorDict(
        {"shared": _tree(dict(encoder.named_buffers())),
         "tasks": TensorDict({k: _tree(dict(h.named_buffers())) for k, h in heads.items()}, [])},
        [],
    )  # fmt: skip
    has_buffers = bool(list(buffers.keys(True, True)))
    templates = {mode: {where: _template(m, mode) for where, m in modules.items()} for mode in ("train", "eval")}
    # Buffers the training forward still reads (constants): the batch-statistics copies dropped the rest.
    originals = {where: dict(m.named_buffers()) for where, m in modules.items()}
    constants = {where: {k: originals[where][k].detach().clone() for k, _ in templates["train"][where].named_buffers()}
                 for where in modules}  # fmt: skip
    running = any(len(constants[w]) < len(originals[w]) for w in modules)
    if running:
        templates["stats"] = {where: _template(m, "stats") for where, m in modules.items()}

    # Plain nn.Linear heads run as one product (fmtl.heads.linear_heads): much faster under the
    # vectorized task gradients, same parameters and results.
    joint = [k for k, h in heads.items()
             if type(h) is nn.Linear and not (h._forward_hooks or h._forward_pre_hooks)]  # fmt: skip
    joint = joint if len(joint) > 1 else []
    alone = [k for k in heads if k not in joint]

    def forward(mode: str, params: TensorDict, x: torch.Tensor, state: dict[str, dict[str, torch.Tensor]]):
        mods = templates[mode]
        z = functional_call(mods["shared"], {**flat_dict(params["shared"]), **state["shared"]}, (x,))
        out = linear_heads(params["tasks"], z, joint) if joint else {}
        for k in alone:
            where = f"tasks.{k}"
            out[k] = functional_call(mods[where], {**flat_dict(params["tasks", k]), **state[where]}, (z,))
        return {k: out[k] for k in heads}

    def _device(params: TensorDict) -> torch.device:
        return next(iter(params.values(True, True))).device

    def _flat_buffers(b: TensorDict) -> dict[str, dict[str, torch.Tensor]]:
        return {where: flat_dict(b[tuple(where.split(".", 1))]) for where in modules}

    def apply(params: TensorDict, x: torch.Tensor, buffers: TensorDict | None = None,
              train: bool = True) -> dict[str, torch.Tensor]:  # fmt: skip
        device = _device(params)
        if train:
            state = {w: {k: v.to(device) for k, v in c.items()} for w, c in constants.items()}
            return forward("train", params, x, state)
        b = (buffers if buffers is not None else initial).to(device)
        return forward("eval", params, x, _flat_buffers(b))

    def update(params: TensorDict, buffers: TensorDict, x: torch.Tensor) -> TensorDict:
        with torch.no_grad():
            # functional_call runs nn.BatchNorm's own in-place update on these fresh copies.
            state = {w: {k: v.clone() for k, v in d.items()} for w, d in _flat_buffers(buffers).items()}
            forward("stats", params.detach(), x, state)
        new = buffers.clone()
        for where, d in state.items():
            for k, v in d.items():
                new[tuple(where.split(".", 1)) + tuple(k.split("."))] = v
        return new

    initial = buffers
    return Functional(params, apply, buffers if has_buffers else None, update if running else None)

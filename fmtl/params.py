"""Parameters as one TensorDict tree: ``params["shared"]`` (θ) and ``params["tasks"][name]`` (ψ_t)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
from tensordict import TensorDict
from torch import nn
from torch.func import functional_call

from .heads import linear_heads

__all__ = ["Functional", "functionalize", "task_names", "flat_dict", "check_params"]


class Functional(NamedTuple):
    """Parameters and the pure function that applies them (see :func:`functionalize`)."""

    params: TensorDict
    apply: Callable[[TensorDict, torch.Tensor], dict[str, torch.Tensor]]


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


def functionalize(encoder: nn.Module, heads: Mapping[str, nn.Module]) -> Functional:
    """Turns an ``nn.Module`` encoder and a dict of heads into ``(params, apply)``.

    ``params["shared"]`` holds the encoder's parameters θ and ``params["tasks"][name]`` each
    head's ψ_t (``TensorDict.from_module``). ``apply(params, x)`` runs
    ``heads[t](encoder(x))`` with ``torch.func.functional_call`` and returns
    ``{name: output}`` in task order; plain ``nn.Linear`` heads are applied together as one
    matrix product (:func:`fmtl.heads.linear_heads`). Buffers (e.g. BatchNorm running statistics) are
    included: they are copied once here and passed to every call as constants, so ``apply``
    is pure and never writes to them. Train-mode BatchNorm would update running statistics
    in place, so use ``track_running_stats=False`` or the zoo's models (``fmtl.models``),
    which keep statistics outside the gradient pass.

    Example:
        >>> import torch, fmtl
        >>> enc = torch.nn.Linear(4, 8)
        >>> heads = {"a": torch.nn.Linear(8, 1), "b": torch.nn.Linear(8, 2)}
        >>> params, apply = fmtl.functionalize(enc, heads)
        >>> fmtl.task_names(params)
        ['a', 'b']
        >>> {k: v.shape for k, v in apply(params, torch.randn(5, 4)).items()}
        {'a': torch.Size([5, 1]), 'b': torch.Size([5, 2])}
    """
    heads = dict(heads)
    if not heads:
        raise ValueError("functionalize needs at least one head")

    def _params(module: nn.Module) -> TensorDict:
        return TensorDict({k: v.detach().clone() for k, v in module.named_parameters()}, []).unflatten_keys(".")

    def _buffers(module: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in module.named_buffers()}

    params = TensorDict(
        {
            "shared": _params(encoder),
            "tasks": TensorDict({k: _params(h) for k, h in heads.items()}, []),
        },
        [],
    )
    enc_buffers = _buffers(encoder)
    head_buffers = {k: _buffers(h) for k, h in heads.items()}

    # Plain nn.Linear heads run as one product (fmtl.heads.linear_heads): much faster under the
    # vectorized task gradients, same parameters and results.
    joint = [k for k, h in heads.items()
             if type(h) is nn.Linear and not (h._forward_hooks or h._forward_pre_hooks)]  # fmt: skip
    joint = joint if len(joint) > 1 else []
    alone = [k for k in heads if k not in joint]

    def apply(params: TensorDict, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = functional_call(encoder, {**flat_dict(params["shared"]), **enc_buffers}, (x,))
        out = linear_heads(params["tasks"], z, joint) if joint else {}
        for k in alone:
            out[k] = functional_call(heads[k], {**flat_dict(params["tasks", k]), **head_buffers[k]}, (z,))
        return {k: out[k] for k in heads}

    return Functional(params, apply)

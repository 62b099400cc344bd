"""Pieces shared by the balancers: the log transform, the domain checks, assembling a gradient."""

from __future__ import annotations

import torch
from tensordict import TensorDict

from ..base import TaskGradients
from ..params import task_names
from ..tree import leaves, scale_rows, with_leaves

__all__ = ["log_transform", "log_scale", "scale_heads", "check_log_domain", "assemble", "weighted_tasks",
           "zeros_like_rows"]


def check_log_domain(
    losses: torch.Tensor, params: TensorDict, *, positive: bool = False, who: str = "log transform"
) -> None:
    """Raises ``ValueError`` naming the tasks whose loss is negative (or zero, if ``positive``; eager only).

    Under ``torch.compile`` the check is skipped: log of a negative loss is NaN, and the
    step's finiteness guard keeps the parameters unchanged and clears ``info["ok"]``.

    Example:
        >>> p = TensorDict({"shared": {}, "tasks": {"seg": {}, "depth": {}}}, [])
        >>> check_log_domain(torch.tensor([0.5, -1.0]), p)
        Traceback (most recent call last):
        ...
        ValueError: log transform needs non-negative losses; task 'depth' has loss -1
    """
    if torch.compiler.is_compiling():
        return
    negative = (losses <= 0 if positive else losses < 0).nonzero().flatten().tolist()
    if negative:
        names = task_names(params)
        what = ", ".join(f"task {names[i]!r} has loss {losses[i].item():.6g}" for i in negative)
        raise ValueError(f"{who} needs {'positive' if positive else 'non-negative'} losses; {what}")


def log_scale(losses: torch.Tensor, params: TensorDict | None, eps: float) -> torch.Tensor:
    """The factor 1/(ℓ_t + ε) of ∇ log(ℓ_t + ε) = ∇ℓ_t / (ℓ_t + ε), NaN where ℓ_t < 0.

    Eagerly a negative loss raises (:func:`check_log_domain`; skipped when ``params`` is None,
    which has no task names). Compiled, the check cannot raise, and 1/(ℓ_t + ε) of a negative
    loss is finite: the NaN makes the update non-finite, so the step keeps params and state
    and reports ``info["ok"] = False``.

    Example:
        >>> log_scale(torch.tensor([1.0, -1.0]), None, 0.0)
        tensor([1., nan])
    """
    if params is not None:
        check_log_domain(losses, params)
    return torch.where(losses < 0, torch.nan, 1.0 / (losses + eps))


def log_transform(grads: TaskGradients, params: TensorDict, eps: float) -> TaskGradients:
    """Replaces ℓ_t by log(ℓ_t + ε) and its gradients by ∇ℓ_t / (ℓ_t + ε) (paper Sec. 3.1).

    .. math::
        \\nabla \\log(\\ell_t + \\epsilon) = \\frac{\\nabla \\ell_t}{\\ell_t + \\epsilon}

    Example:
        >>> p = TensorDict({"shared": {}, "tasks": {"a": {}}}, [])
        >>> g = TaskGradients(torch.tensor([3.0]), TensorDict({"w": torch.tensor([[6.0]])}, [1]),
        ...                   TensorDict({"a": {"b": torch.tensor([3.0])}}, []))
        >>> out = log_transform(g, p, 0.0)
        >>> out.shared["w"], out.tasks["a", "b"]
        (tensor([[2.]]), tensor([1.]))
    """
    scale = log_scale(grads.losses, params, eps)
    tasks = scale_heads(scale, grads.tasks, task_names(params))
    return TaskGradients(torch.log(grads.losses + eps), scale_rows(scale, grads.shared), tasks)


def scale_heads(scale: torch.Tensor, tasks: TensorDict, names: list[str]) -> TensorDict:
    """Head t's gradients times ``scale[t]`` (``names[t]`` is task t), as one multi-tensor product.

    ``v * scale[t]`` leaf by leaf, the same numbers; one ``torch._foreach_mul`` per task and one
    rebuild of the tree cost less than a TensorDict ``apply`` per head.

    Example:
        >>> t = TensorDict({"a": {"b": torch.ones(2)}, "c": {"b": torch.ones(1)}}, [])
        >>> scale_heads(torch.tensor([2.0, 3.0]), t, ["a", "c"])["c", "b"]
        tensor([3.])
    """
    s = scale.unbind()
    index = {n: i for i, n in enumerate(names)}
    out: list[torch.Tensor] = []
    for n in tasks.keys():
        head = leaves(tasks[n])
        if head:
            out += torch._foreach_mul(head, s[index[n]])
    return with_leaves(tasks, out)


def weighted_tasks(weights: torch.Tensor, tasks: TensorDict) -> TensorDict:
    """Task-specific gradients with head t scaled by ``weights[t]``.

    Example:
        >>> t = TensorDict({"a": {"b": torch.ones(2)}, "c": {"b": torch.ones(1)}}, [])
        >>> weighted_tasks(torch.tensor([2.0, 3.0]), t)["c", "b"]
        tensor([3.])
    """
    return TensorDict(
        {n: tasks[n].apply(lambda v, w=weights[i]: v * w.to(v.dtype)) for i, n in enumerate(tasks.keys())},
        [],
    )


def assemble(shared: TensorDict, tasks: TensorDict) -> TensorDict:
    """A gradient shaped like ``params``: ``{"shared": shared, "tasks": tasks}``.

    Example:
        >>> assemble(TensorDict({"w": torch.ones(1)}, []), TensorDict()).keys()
        _StringKeys(dict_keys(['shared', 'tasks']))
    """
    return TensorDict({"shared": shared, "tasks": tasks}, [])


def zeros_like_rows(shared: TensorDict, num_tasks: int) -> TensorDict:
    """A ``[T]``-stacked TensorDict of zeros shaped like ``shared`` (e.g. an EMA of ĝ_t).

    Example:
        >>> zeros_like_rows(TensorDict({"w": torch.ones(2)}, []), 3)["w"].shape
        torch.Size([3, 2])
    """
    return shared.apply(
        lambda v: torch.zeros((num_tasks, *v.shape), dtype=v.dtype, device=v.device),
        batch_size=[num_tasks],
    )

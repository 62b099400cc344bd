"""Task heads applied together: T linear heads ψ_t as one matrix product over the shared z."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from tensordict import TensorDict

__all__ = ["LinearHeads", "linear_heads"]


def linear_heads(
    heads: TensorDict, z: torch.Tensor, names: Sequence[str] | None = None, *, task_axis: bool = False
) -> dict[str, torch.Tensor]:
    """Applies linear heads ``y_t = z W_tᵀ + b_t`` to one shared representation z in one product.

    .. math::
        [y_1 \\,|\\, \\dots \\,|\\, y_T] = z\\, [W_1; \\dots; W_T]^\\top + [b_1 | \\dots | b_T]

    The weights W_t [O_t, D] (any widths O_t) are concatenated into one [Σ O_t, D] matrix; the
    output is split back per task. The parameters stay one ψ_t per task. Why: applied one by
    one, each head's backward under ``vmap`` (the vectorized task gradients) carries the
    cotangents of all T tasks, T² small products and a [T, B, D] temporary per head; in one
    product the T tasks' cotangents reach z through a single matmul (``jacrev`` on the QM9
    model's shape: 1.3× faster at T = 11, 2.2× at T = 40; ``benchmarks/RESULTS.md`` §6).

    With ``task_axis=True`` z carries one copy per task, ``[T, ..., D]``, and head t reads z[t]
    only: ``y_t = z[t] W_tᵀ + b_t``, head by head. The forward values are the same; what
    changes is the backward: the gradient w.r.t. the [T, ..., D] copies *is* the T representation
    gradients Z_t = ∇z ℓ_t, one backward of Σ_t ℓ_t at the cost of one head backward, where T
    backwards through the concatenated heads cost T times that (each task's cotangent crosses
    the whole [Σ O_t, D] matrix). :class:`fmtl.TwoStageLoss` ``(..., task_axis=True)`` uses it.

    Args:
        heads: ``{name: {"weight": [O_t, D], "bias": [O_t] (optional, all or none)}}``.
        z: the shared representation, ``[..., D]`` (``[T, ..., D]`` with ``task_axis``).
        names: the task order (default: the keys of ``heads``).
        task_axis: z has a leading axis of one row per task, in the order of ``names``.

    Returns:
        ``{name: Tensor[..., O_t]}`` in task order.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> heads = TensorDict({"a": {"weight": torch.ones(1, 3), "bias": torch.zeros(1)},
        ...                     "b": {"weight": torch.eye(2, 3), "bias": torch.ones(2)}}, [])
        >>> out = linear_heads(heads, torch.tensor([[1.0, 2.0, 3.0]]))
        >>> out["a"], out["b"]
        (tensor([[6.]]), tensor([[2., 3.]]))
        >>> z = torch.tensor([[[1.0, 2.0, 3.0]], [[0.0, 0.0, 1.0]]])  # a per-task z: head b reads z[1]
        >>> out = linear_heads(heads, z, task_axis=True)
        >>> out["a"], out["b"]
        (tensor([[6.]]), tensor([[1., 1.]]))
    """
    names = list(heads.keys()) if names is None else list(names)
    weights = [heads[n, "weight"] for n in names]
    for n, w in zip(names, weights, strict=True):
        if w.dim() != 2 or w.shape[1] != z.shape[-1]:
            raise ValueError(
                f"head {n!r}: weight of shape {tuple(w.shape)} does not take features of size {z.shape[-1]} "
                f"(a linear head's weight is [out, {z.shape[-1]}])"
            )
    has_bias = ["bias" in heads[n].keys() for n in names]
    if task_axis:
        return _per_task_heads(heads, z, names)
    if any(has_bias) and not all(has_bias):
        return {n: F.linear(z, heads[n, "weight"], heads[n].get("bias", None)) for n in names}
    weight = torch.cat(weights) if len(weights) > 1 else weights[0]
    bias = None
    if all(has_bias):
        biases = [heads[n, "bias"] for n in names]
        bias = torch.cat(biases) if len(biases) > 1 else biases[0]
    out = F.linear(z, weight, bias)
    return dict(zip(names, out.split([w.shape[0] for w in weights], dim=-1), strict=True))


def _per_task_heads(heads: TensorDict, z: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """``y_t = z[t] W_tᵀ + b_t``, head by head."""
    if z.dim() < 2 or z.shape[0] != len(names):
        raise ValueError(
            f"linear_heads(task_axis=True): z of shape {tuple(z.shape)} needs a leading axis of {len(names)} "
            "tasks, one copy of the representation per task"
        )
    # head by head: faster than one bmm over the task axis (a batched matrix-vector product for
    # scalar heads: at T = 40, B = 128, D = 512 forward + backward 4.3 ms vs 7.8 ms, an einsum
    # 13.2 ms; benchmarks/task_axis_heads.py); unbind, not z[t], so that the backward stacks once
    return {n: F.linear(z_t, heads[n, "weight"], heads[n].get("bias", None))
            for z_t, n in zip(z.unbind(0), names, strict=True)}


class LinearHeads(NamedTuple):
    """Heads declared linear: ``heads(ψ, z, batch) = criterion(linear_heads(ψ, z), batch)``.

    ``criterion(outputs, batch) -> Tensor[T]`` maps the heads' outputs ``{name: y_t}`` (task order)
    to the T losses, ℓ_t from y_t alone. As the ``heads`` of a :class:`fmtl.TwoStageLoss` it is an
    ordinary heads function (parameter gradients are unchanged); with ``rep_grad=True`` it lets a
    Gramian method skip the representation gradients Z_t = ∇z ℓ_t themselves: ∇z ℓ_t = A_t W_t with
    A_t = ∂ℓ_t/∂y_t, so the Gramian factors (:mod:`fmtl.linear_representation`).

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> heads = LinearHeads(lambda out, y: torch.stack([(out[k] - y).pow(2).mean() for k in out]))
        >>> psi = TensorDict({"a": {"weight": torch.ones(1, 2)}, "b": {"weight": torch.zeros(1, 2)}}, [])
        >>> heads(psi, torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0]]))
        tensor([4., 1.])
    """

    criterion: Callable[[dict[str, torch.Tensor], Any], torch.Tensor]

    def __call__(self, heads: TensorDict, z: torch.Tensor, batch: Any) -> torch.Tensor:
        return self.criterion(linear_heads(heads, z), batch)

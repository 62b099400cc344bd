"""Task heads applied together: T linear heads ψ_t as one matrix product over the shared z."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tensordict import TensorDict

__all__ = ["linear_heads"]


def linear_heads(heads: TensorDict, z: torch.Tensor, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Applies linear heads ``y_t = z W_tᵀ + b_t`` to one shared representation z in one product.

    .. math::
        [y_1 \\,|\\, \\dots \\,|\\, y_T] = z\\, [W_1; \\dots; W_T]^\\top + [b_1 | \\dots | b_T]

    The weights W_t [O_t, D] (any widths O_t) are concatenated into one [Σ O_t, D] matrix; the
    output is split back per task. The parameters stay one ψ_t per task. Why: applied one by
    one, each head's backward under ``vmap`` (the vectorized task gradients) carries the
    cotangents of all T tasks, T² small products and a [T, B, D] temporary per head; in one
    product the T tasks' cotangents reach z through a single matmul (``jacrev`` on the QM9
    model's shape: 1.3× faster at T = 11, 2.2× at T = 40; ``benchmarks/RESULTS.md`` §6).

    Args:
        heads: ``{name: {"weight": [O_t, D], "bias": [O_t] (optional, all or none)}}``.
        z: the shared representation, ``[..., D]``.
        names: the task order (default: the keys of ``heads``).

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
    if any(has_bias) and not all(has_bias):
        return {n: F.linear(z, heads[n, "weight"], heads[n].get("bias", None)) for n in names}
    weight = torch.cat(weights) if len(weights) > 1 else weights[0]
    bias = None
    if all(has_bias):
        biases = [heads[n, "bias"] for n in names]
        bias = torch.cat(biases) if len(biases) > 1 else biases[0]
    out = F.linear(z, weight, bias)
    return dict(zip(names, out.split([w.shape[0] for w in weights], dim=-1), strict=True))

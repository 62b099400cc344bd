"""Mixed precision: a loss function whose forward runs under ``torch.autocast`` on the run's device.

``autocast(loss_fn, "bf16", "cuda")`` returns ``loss_fn`` with its forward (and therefore the
backward of the autocast ops) in bfloat16 and the loss vector ℓ ∈ R^T cast back to float32, so
the balancer (DB-MTL's log(ℓ_t + ε), EMA ĝ_t and norms) and the optimizer work in the
parameters' precision. The parameters themselves stay float32.

fp16 differs from ``torch.cuda.amp`` training in one respect: no loss scaling. The balancers
read the loss values (a log transform of a scaled loss is not the log of the loss), so a
``GradScaler``-style factor would have to be divided out of every task gradient before the
balancer; fmtl leaves it out. Task gradients below fp16's smallest subnormal (≈ 6·10⁻⁸) flush
to zero, and overflow is caught by the step's non-finite guard. Prefer ``"bf16"`` (float32's
exponent range) where the hardware has it.
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDict

from .task_gradients import LossFn

__all__ = ["DTYPES", "autocast"]

#: ``--amp`` names and their autocast dtypes (``"none"``: full precision).
DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(loss_fn: LossFn, amp: str | None, device_type: str = "cpu") -> LossFn:
    """``loss_fn`` under ``torch.autocast(device_type, dtype)`` for ``amp`` in :data:`DTYPES`; ℓ comes back float32.

    Args:
        loss_fn: ``loss_fn(params, batch) -> Tensor[T]``.
        amp: ``"none"`` (or ``None``/``""``: ``loss_fn`` itself), ``"bf16"`` or ``"fp16"``.
        device_type: the device type the forward runs on (``"cpu"``, ``"cuda"`` …); autocast on
            another device type than the tensors' would silently do nothing.

    Example:
        >>> import torch
        >>> f = autocast(lambda p, b: torch.nn.functional.linear(b, p).sum(1), "bf16", "cpu")
        >>> f(torch.ones(1, 3), torch.ones(2, 3)).dtype
        torch.float32
        >>> autocast(f, "fp8")
        Traceback (most recent call last):
        ...
        ValueError: amp must be one of ['none', 'bf16', 'fp16']; got 'fp8'
    """
    if amp in (None, ""):
        amp = "none"
    if amp not in DTYPES:
        raise ValueError(f"amp must be one of {list(DTYPES)}; got {amp!r}")
    dtype = DTYPES[amp]
    if dtype is None:
        return loss_fn

    def amp_loss(params: TensorDict, batch: Any) -> torch.Tensor:
        with torch.autocast(device_type, dtype=dtype):
            losses = loss_fn(params, batch)
        return losses.float()

    return amp_loss

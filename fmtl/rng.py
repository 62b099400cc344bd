"""The global random state of a device as a value: read it, set it, replay a stretch of draws.

``torch``'s random operations (dropout masks, ``torch.rand``) draw from the process-wide CPU
generator, and on an accelerator from that device's generator. fmtl keeps its *own* randomness
in the step state (counter-based, see :mod:`fmtl.balancers`), but a user's ``nn.Dropout`` draws
from the global generators; checkpoints and the BatchNorm statistics pass therefore need the
state of both as data: :func:`get` reads it, :func:`set` restores it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["RNGState", "get", "set"]


class RNGState(NamedTuple):
    """The CPU generator's state and, for an accelerator device, that device's generator state."""

    cpu: torch.Tensor
    device: torch.Tensor | None = None


def _accelerator(device: torch.device | str | None) -> torch.device | None:
    device = torch.device(device) if device is not None else None
    return device if device is not None and device.type == "cuda" else None


def get(device: torch.device | str | None = None) -> RNGState:
    """The random state the forward on ``device`` draws from (CPU, plus CUDA's for a CUDA device).

    Example:
        >>> s = get("cpu")
        >>> a = torch.rand(2); set(s); torch.equal(a, torch.rand(2))
        True
    """
    acc = _accelerator(device)
    return RNGState(torch.get_rng_state(), torch.cuda.get_rng_state(acc) if acc is not None else None)


def set(state: RNGState, device: torch.device | str | None = None) -> None:  # noqa: A001 (mirrors get)
    """Restores a state from :func:`get` (the device part only when both sides have one).

    Example:
        >>> s = get(); _ = torch.rand(1); set(s); get().cpu.equal(s.cpu)
        True
    """
    torch.set_rng_state(state.cpu)
    acc = _accelerator(device)
    if acc is not None and state.device is not None:
        torch.cuda.set_rng_state(state.device, acc)

"""The device a run trains on: ``--device`` parsed and checked, CUDA when available by default.

Data batches, parameters θ and ψ_t, the step state (balancer, optimizer, BatchNorm buffers) and
the random state dropout draws from all live on this device; datasets stay in host memory and
each batch is moved when it is read. Checkpoints are read onto the CPU and moved to the run's
device, so a run saved on one device resumes on any other (results then agree up to the
devices' rounding, not bitwise).
"""

from __future__ import annotations

import torch

__all__ = ["resolve", "default"]


def default() -> torch.device:
    """``cuda`` when CUDA is available, else ``cpu``.

    Example:
        >>> default().type in ("cpu", "cuda")
        True
    """
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def resolve(spec: str | torch.device | None = None) -> torch.device:
    """The device named by ``spec`` (``None`` or ``"auto"``: :func:`default`), or a one-line ``ValueError``.

    Example:
        >>> resolve("cpu")
        device(type='cpu')
        >>> resolve("gpu")
        Traceback (most recent call last):
        ...
        ValueError: --device 'gpu' is not a device; use cpu, cuda or cuda:N
        >>> resolve("meta")
        Traceback (most recent call last):
        ...
        ValueError: --device meta holds no data (fmtl trains on cpu or cuda)
    """
    if spec is None or spec == "auto":
        return default()
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"--device {spec!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {spec}: CUDA is not available here (torch.cuda.is_available() is False); "
                             "use --device cpu")  # fmt: skip
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {spec}: there are only {torch.cuda.device_count()} CUDA devices")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"--device {spec}: MPS is not available here; use --device cpu")
    elif device.type != "cpu":
        raise ValueError(f"--device {spec} holds no data (fmtl trains on cpu or cuda)")
    return device

"""What a run writes about itself: strict JSON (non-finite numbers as ``null``) and its environment.

``metrics.jsonl`` and ``results.json`` are read by other tools, and strict JSON readers (``jq``,
JavaScript, most non-Python parsers) reject Python's bare ``NaN``/``Infinity``; every writer goes
through :func:`to_json`, which writes a non-finite number as ``null`` (a NaN loss, a Δp without an
STL reference). :func:`environment` is the record of the software and device a run ran on, for
``config.toml`` (as a record-only table, see :data:`fmtl.train.config.RECORDS`) and
``results.json``.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["strict", "to_json", "environment"]


def strict(obj: Any) -> Any:
    """``obj`` as plain JSON values: non-finite floats → ``None``, tuples → lists, 0-d tensors → numbers.

    Example:
        >>> import torch
        >>> strict({"loss": float("nan"), "w": (1.0, float("inf")), "k": torch.tensor(3)})
        {'loss': None, 'w': [1.0, None], 'k': 3}
    """
    if isinstance(obj, bool) or obj is None or isinstance(obj, str | int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): strict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return strict(obj.detach().cpu().tolist())
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return strict(obj.item())
    raise TypeError(f"cannot write a {type(obj).__name__} to JSON")


def to_json(obj: Any, indent: int | None = None) -> str:
    """Strict JSON text of ``obj`` (see :func:`strict`); ``json.loads`` and any strict reader accept it.

    Example:
        >>> to_json({"delta_p": float("nan"), "mae": 0.5})
        '{"delta_p": null, "mae": 0.5}'
    """
    import json

    return json.dumps(strict(obj), indent=indent, allow_nan=False, ensure_ascii=False)


def _device(device: str | torch.device | None) -> str:
    d = torch.device(device) if device is not None else torch.device("cpu")
    if d.type == "cuda" and torch.cuda.is_available():
        return f"{d} ({torch.cuda.get_device_name(d)})"
    if d.type == "cpu":
        return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return str(d)


def environment(device: str | torch.device | None = None) -> dict[str, str]:
    """The versions of fmtl, torch, tensordict and Python, the platform, and the device.

    Example:
        >>> sorted(environment())
        ['device', 'fmtl', 'numpy', 'platform', 'python', 'tensordict', 'torch']
        >>> environment()["device"].startswith("cpu")
        True
    """
    import numpy
    import tensordict

    import fmtl

    return {
        "fmtl": fmtl.__version__,
        "torch": torch.__version__,
        "tensordict": getattr(tensordict, "__version__", "unknown"),
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": _device(device),
    }

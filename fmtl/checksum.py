"""A content checksum of tensors and plain Python data, to verify files on load.

``torch.load`` does not check the CRC of the zip records it reads, so a flipped byte inside a
tensor's data loads silently. Files that fmtl writes (checkpoints, dataset caches) store
:func:`checksum` of their content next to it and recompute it on load.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["checksum"]


def _feed(h: Any, obj: Any) -> None:
    # Every value is prefixed by its type and size, so distinct structures never hash alike.
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # the raw bytes, without a copy
    elif isinstance(obj, Mapping):
        h.update(f"D{len(obj)}:".encode())
        for k in sorted(obj, key=repr):
            _feed(h, k)
            _feed(h, obj[k])
    elif isinstance(obj, list | tuple):
        h.update(f"L{len(obj)}:".encode())
        for v in obj:
            _feed(h, v)
    elif isinstance(obj, str):
        data = obj.encode()
        h.update(f"S{len(data)}:".encode() + data)
    elif obj is None or isinstance(obj, bool | int | float):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())  # repr of a float round-trips exactly
    else:
        raise TypeError(f"checksum covers tensors, dicts, lists, str, numbers and None; got {type(obj).__name__}")


def checksum(obj: Any) -> str:
    """SHA-256 (hex) of a nested structure of tensors (dtype, shape and bytes) and Python data.

    Dicts are hashed in the order of their sorted keys, lists and tuples in order; a tensor's
    hash covers its dtype, shape and raw bytes (not its device or strides).

    Example:
        >>> a = {"x": torch.ones(2), "n": 3}
        >>> checksum(a) == checksum({"n": 3, "x": torch.ones(2)})
        True
        >>> checksum(a) == checksum({"x": torch.tensor([1.0, 1.0 + 2**-23]), "n": 3})
        False
    """
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()

"""Where parsed datasets are cached, and how a cache file is written and read safely.

Cache files are plain ``dict[str, Tensor]`` saved with :func:`torch.save` and read back with
``torch.load(..., weights_only=True)`` only (no arbitrary unpickling). Writes are atomic
(:func:`fmtl.atomic.write`: temporary file, fsync, ``os.replace``), so a crash never leaves a
half-written cache behind. Each file also stores the SHA-256 of its tensors
(:func:`fmtl.checksum.checksum`, as a ``uint8`` tensor of 32 bytes) under the key
``"__sha256__"``; a file whose tensors do not match it (a flipped bit: ``torch.load`` does not
check) or that has none is rebuilt, with a warning naming it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from .. import atomic
from ..checksum import checksum

__all__ = ["cache_dir", "save_tensors", "load_tensors"]

_CHECKSUM = "__sha256__"


def _digest(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    # a tensor, not a str, so that a cache file stays a plain dict of tensors
    return torch.tensor(list(bytes.fromhex(checksum(tensors))), dtype=torch.uint8)


def cache_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory: ``root`` if given, else ``$FMTL_CACHE``, else ``~/.cache/fmtl``.

    Example:
        >>> str(cache_dir("/tmp/x"))
        '/tmp/x'
    """
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("FMTL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fmtl"


def save_tensors(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor]) -> bool:
    """Atomically save a dict of tensors; return False (with a warning) if ``path`` is unwritable.

    Example:
        >>> import tempfile, torch
        >>> p = Path(tempfile.mkdtemp()) / "a.pt"
        >>> save_tensors(p, {"a": torch.ones(2)}), load_tensors(p, ("a",))["a"].tolist()
        (True, [1.0, 1.0])
    """
    path = Path(path)
    if _CHECKSUM in tensors:
        raise ValueError(f"{_CHECKSUM!r} is reserved for the cache file's checksum")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write(path, lambda f: torch.save({**tensors, _CHECKSUM: _digest(tensors)}, f))
    except OSError as err:
        warnings.warn(f"fmtl.data: cannot write cache {path} ({err}); not caching", stacklevel=2)
        return False
    return True


def load_tensors(
    path: str | os.PathLike[str], keys: tuple[str, ...]
) -> dict[str, torch.Tensor] | None:
    """Load a cache file written by :func:`save_tensors`, or None if it is absent or unusable.

    "Unusable" means unreadable, not a ``weights_only`` dict of tensors, missing one of
    ``keys``, or without a checksum that matches its tensors (corrupt, or written before
    caches had one); the caller then rebuilds the file (a warning names the file and the reason).

    Example:
        >>> load_tensors("/nonexistent/file.pt", ("a",)) is None
        True
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to read means "rebuild"
        warnings.warn(
            f"fmtl.data: corrupt cache {path} ({type(err).__name__}); rebuilding", stacklevel=2
        )
        return None
    ok = isinstance(data, dict) and all(isinstance(data.get(k), torch.Tensor) for k in keys)
    if not ok:
        warnings.warn(f"fmtl.data: cache {path} lacks expected tensors; rebuilding", stacklevel=2)
        return None
    stored = data.pop(_CHECKSUM, None)
    if not isinstance(stored, torch.Tensor) or stored.dtype != torch.uint8 or stored.shape != (32,):
        warnings.warn(f"fmtl.data: cache {path} has no checksum (an older fmtl wrote it); rebuilding", stacklevel=2)
        return None
    if not torch.equal(_digest(data), stored):
        warnings.warn(f"fmtl.data: corrupt cache {path} (checksum mismatch); rebuilding", stacklevel=2)
        return None
    return data

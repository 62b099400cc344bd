"""Where parsed datasets are cached, and how a cache file is written and read safely.

Cache files are plain ``dict[str, Tensor]`` saved with :func:`torch.save` and read back with
``torch.load(..., weights_only=True)`` only (no arbitrary unpickling). Writes are atomic
(:func:`fmtl.atomic.write`: temporary file, fsync, ``os.replace``), so a crash never leaves a
half-written cache behind.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from .. import atomic

__all__ = ["cache_dir", "save_tensors", "load_tensors"]


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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write(path, lambda f: torch.save(tensors, f))
    except OSError as err:
        warnings.warn(f"fmtl.data: cannot write cache {path} ({err}); not caching", stacklevel=2)
        return False
    return True


def load_tensors(
    path: str | os.PathLike[str], keys: tuple[str, ...]
) -> dict[str, torch.Tensor] | None:
    """Load a cache file written by :func:`save_tensors`, or None if it is absent or unusable.

    "Unusable" means unreadable, not a ``weights_only`` dict of tensors, or missing one of
    ``keys``; the caller then rebuilds the file (a warning names the reason).

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
    return data

"""The name → loader table behind :func:`fmtl.data.load`.

A loader is ``fn(split, root, **options) -> Dataset``; modules are imported lazily so that
``import fmtl.data`` stays cheap and optional dependencies are only needed when used.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

from .base import Dataset

__all__ = ["names", "load"]

# name -> (module, function, fixed keyword arguments)
_LOADERS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "qm9": (".qm9", "load_qm9", {}),
    "synthetic": (".synthetic", "load_synthetic", {}),
    "multimnist": (".multimnist", "load_multimnist", {}),
    "nyuv2": (".dense", "load_dense", {"name": "nyuv2"}),
    "cityscapes": (".dense", "load_dense", {"name": "cityscapes"}),
    "office31": (".office", "load_office", {"name": "office31"}),
    "officehome": (".office", "load_office", {"name": "officehome"}),
}


def names() -> list[str]:
    """The dataset names :func:`load` accepts, sorted.

    Example:
        >>> names()
        ['cityscapes', 'multimnist', 'nyuv2', 'office31', 'officehome', 'qm9', 'synthetic']
    """
    return sorted(_LOADERS)


def _loader(name: str) -> Callable[..., Dataset]:
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(names())}")
    module, fn, fixed = _LOADERS[name]
    loader = getattr(importlib.import_module(module, __package__), fn)
    return lambda *args, **kw: loader(*args, **fixed, **kw)


def load(
    name: str, split: str = "train", root: str | os.PathLike[str] | None = None, **options: Any
) -> Dataset:
    """Load split ``split`` of dataset ``name`` into memory.

    Args:
        name: one of :func:`names`.
        split: ``"train"``, ``"val"`` or ``"test"`` (some datasets also accept ``"all"``).
        root: data (or cache) directory; required for the datasets read from a local copy.
        **options: dataset-specific options (see each loader, e.g. ``load_qm9``).

    Raises:
        ValueError: for an unknown ``name`` (the message lists the valid names).

    Example:
        >>> ds = load("synthetic", "train", n=64, num_tasks=3, dim=8)
        >>> len(ds), ds.tasks, ds[[0, 1]]["y"].shape
        (64, ('t0', 't1', 't2'), torch.Size([2, 3]))
    """
    return _loader(name)(split, root, **options)

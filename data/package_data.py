"""Where an installed data package keeps its files, found by path without importing it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["package_dir"]


def package_dir(package: str, hint: str) -> Path:
    """The directory of the installed ``package``; ``ModuleNotFoundError(hint)`` if it is absent.

    Data packages are read by path so that none of their code runs.

    Example:
        >>> package_dir("json", "no json").name
        'json'
        >>> package_dir("no_such_package_here", "pip install it")
        Traceback (most recent call last):
        ...
        ModuleNotFoundError: pip install it
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(hint)
    return Path(next(iter(spec.submodule_search_locations)))

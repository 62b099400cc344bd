"""The registry of balancers by name (``fmtl.balancers.names()`` / ``fmtl.balancers.get``)."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

from ..base import Balancer

__all__ = ["register", "names", "get", "factory"]

# name -> module under fmtl.balancers that defines the factory of that name (one module per
# method, named after it): loss balancing, then gradient balancing, then hybrid, then DB-MTL.
_METHODS = (
    "ew gls rlw uw dwa imtl_l famo "
    "mgda gradnorm pcgrad graddrop gradvac imtl_g cagrad nash_mtl metabalance moco aligned_mtl upgrad "
    "imtl dbmtl"
)
_MODULES: dict[str, str] = {name: name for name in _METHODS.split()}
_FACTORIES: dict[str, Callable[..., Balancer]] = {}


def register(name: str, module: str) -> None:
    """Registers the factory ``fmtl.balancers.<module>.<name>`` under ``name``.

    Example:
        >>> register("dbmtl", "dbmtl")
    """
    _MODULES[name] = module


def names() -> list[str]:
    """All registered method names.

    Example:
        >>> "dbmtl" in names()
        True
    """
    return list(_MODULES)


def _factory(name: str) -> Callable[..., Balancer]:
    if name not in _FACTORIES:
        module = importlib.import_module(f"fmtl.balancers.{_MODULES[name]}")
        _FACTORIES[name] = getattr(module, name)
    return _FACTORIES[name]


def factory(name: str) -> Callable[..., Balancer]:
    """The factory registered as ``name`` (its parameters are the method's hyperparameters).

    Example:
        >>> factory("dbmtl").__name__
        'dbmtl'
    """
    if name not in _MODULES:
        raise ValueError(f"unknown balancer {name!r}; choose one of {names()}")
    return _factory(name)


def get(name: str, **hyperparameters) -> Balancer:
    """The balancer registered as ``name``, built with ``hyperparameters``.

    Example:
        >>> b = get("dbmtl", beta=0.5)
        >>> get("nope")
        Traceback (most recent call last):
        ...
        ValueError: unknown balancer 'nope'; choose one of [...]
    """
    if name not in _MODULES:
        raise ValueError(f"unknown balancer {name!r}; choose one of {names()}")
    factory = _factory(name)
    accepted = inspect.signature(factory).parameters
    unknown = sorted(set(hyperparameters) - set(accepted))
    if unknown:
        raise ValueError(f"balancer {name!r} has no hyperparameter(s) {unknown}; it takes {list(accepted)}")
    return factory(**hyperparameters)

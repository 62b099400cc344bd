"""The registry of balancers by name: ``register``, ``names``, ``get``, ``kind``, ``hyperparameters``.

A registered balancer is any callable ``factory(**hyperparameters) -> Balancer``; fmtl's own
methods are registered when :mod:`fmtl.balancers` is imported, a user's with :func:`register`,
after which ``fmtl train --method NAME`` and ``fmtl compare`` find it like a built-in.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from ..base import Balancer

__all__ = ["register", "names", "get", "factory", "defaults", "kind", "hyperparameters"]

# name -> factory, in registration order (fmtl's methods first: loss, gradient, hybrid, DB-MTL)
_FACTORIES: dict[str, Callable[..., Balancer]] = {}


def register(name: str, factory: Callable[..., Balancer], *, overwrite: bool = False) -> None:
    """Registers ``factory`` (any callable returning a :class:`fmtl.Balancer`) under ``name``.

    Raises ``TypeError`` for a non-callable factory and ``ValueError`` for an empty name or a
    name already taken (unless ``overwrite=True``).

    Example:
        >>> import torch
        >>> from fmtl.base import EmptyState
        >>> from fmtl.balancers import loss_balancer
        >>> def halves(scale: float = 0.5):
        ...     return loss_balancer(lambda params, T: EmptyState(), lambda l, s: (torch.full_like(l, scale), s, {}))
        >>> register("halves", halves)
        >>> get("halves").kind, hyperparameters("halves")
        ('loss', {'scale': 0.5})
        >>> register("halves", halves)
        Traceback (most recent call last):
        ...
        ValueError: balancer 'halves' is already registered; pass overwrite=True to replace it
        >>> register("halves", halves, overwrite=True)
        >>> _ = _FACTORIES.pop("halves")
    """
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(f"a balancer name must be a non-empty string without surrounding spaces; got {name!r}")
    if not callable(factory):
        raise TypeError(
            f"the factory registered as {name!r} must be a callable returning a Balancer; "
            f"got {type(factory).__name__} {factory!r}"
        )
    if name in _FACTORIES and not overwrite:
        raise ValueError(f"balancer {name!r} is already registered; pass overwrite=True to replace it")
    _FACTORIES[name] = factory


def names() -> list[str]:
    """All registered method names, in registration order.

    Example:
        >>> "dbmtl" in names()
        True
    """
    return list(_FACTORIES)


def _factory(name: str) -> Callable[..., Balancer]:
    if name not in _FACTORIES:
        raise ValueError(f"unknown balancer {name!r}; choose one of {names()}")
    return _FACTORIES[name]


def factory(name: str) -> Callable[..., Balancer]:
    """The factory registered as ``name`` (its parameters are the method's hyperparameters).

    Example:
        >>> factory("dbmtl").__name__
        'dbmtl'
    """
    return _factory(name)


def _parameters(factory: Callable[..., Balancer]) -> dict[str, inspect.Parameter] | None:
    """The factory's parameters; None when its signature cannot be read (nothing to check against)."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C callable
        return None
    return dict(parameters)


def get(name: str, **hyperparameters: Any) -> Balancer:
    """The balancer registered as ``name``, built with ``hyperparameters``.

    Example:
        >>> b = get("dbmtl", beta=0.5)
        >>> get("nope")
        Traceback (most recent call last):
        ...
        ValueError: unknown balancer 'nope'; choose one of [...]
    """
    factory = _factory(name)
    accepted = _parameters(factory)
    takes_any = accepted is None or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    unknown = sorted(set(hyperparameters) - set(accepted or {}))
    if unknown and not takes_any:
        raise ValueError(f"balancer {name!r} has no hyperparameter(s) {unknown}; it takes {list(accepted)}")
    balancer = factory(**hyperparameters)
    if not isinstance(balancer, Balancer):
        raise TypeError(f"the factory registered as {name!r} returned {type(balancer).__name__}, not a fmtl.Balancer")
    return balancer


def kind(name: str, **hyperparameters: Any) -> str:
    """What balancer ``name`` computes its weights from: ``"loss"``, ``"gramian"`` or ``"jacobian"``.

    It builds the balancer (with its defaults, or ``hyperparameters``) and reads
    :attr:`fmtl.Balancer.kind`.

    Example:
        >>> kind("ew"), kind("mgda"), kind("graddrop")
        ('loss', 'gramian', 'jacobian')
    """
    return get(name, **hyperparameters).kind


def hyperparameters(name: str) -> dict[str, Any]:
    """``{hyperparameter: default}`` of balancer ``name`` (``inspect.Parameter.empty`` if it has none).

    Example:
        >>> hyperparameters("cagrad")
        {'c': 0.5, 'rescale': 1, 'log_transform': False, 'eps': 1e-08}
    """
    parameters = (_parameters(_factory(name)) or {}).values()
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return {p.name: p.default for p in parameters if p.kind not in variadic}


def defaults(name: str) -> dict[str, Any]:
    """The hyperparameters of the balancer ``name`` that have defaults, and those defaults (what ``get(name)`` builds).

    Example:
        >>> defaults("dbmtl")["beta"]
        0.9
    """
    return {k: v for k, v in hyperparameters(name).items() if v is not inspect.Parameter.empty}

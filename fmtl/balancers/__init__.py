"""MTL balancers: DB-MTL and the paper's baselines as pure ``Balancer(init, update)`` pairs.

``names()`` lists every registered method and ``get(name, **hyperparameters)`` builds one.
"""

from __future__ import annotations

from ._registry import get, names, register
from .dbmtl import DBMTLState, dbmtl

__all__ = ["get", "names", "register", "dbmtl", "DBMTLState"]

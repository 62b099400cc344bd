"""MTL balancers: DB-MTL and the paper's baselines as pure ``Balancer(init, update)`` pairs.

``names()`` lists every registered method and ``get(name, **hyperparameters)`` builds one.
Loss balancers (``ew``, ``gls``, ``rlw``, ``uw``, ``dwa``, ``imtl_l``, ``famo``) also set
``loss_weights`` so :func:`fmtl.make_step` needs one backward; gradient balancers take the task
Jacobian, most of them through its Gramian only (:func:`gramian_balancer`), and all accept
``log_transform=True`` (paper Fig. 1).
"""

from __future__ import annotations

from ._gradient import gramian_balancer
from ._loss import loss_balancer
from ._registry import factory, get, names, register
from .dbmtl import DBMTLState, dbmtl

__all__ = ["get", "names", "register", "factory", "dbmtl", "DBMTLState", "gramian_balancer", "loss_balancer"]

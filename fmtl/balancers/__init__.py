"""MTL balancers: DB-MTL, the paper's baselines and LibMTL's and TorchJD's other methods.

Each is a pure ``Balancer(init, update)`` pair built by a factory of the same name
(``fmtl.balancers.pcgrad(seed=0)``), and registered under that name: ``names()`` lists them,
``get(name, **hyperparameters)`` builds one, ``kind(name)`` says what it needs from the task
gradients and ``hyperparameters(name)`` lists its defaults; ``register(name, factory)`` adds a
user's own. Loss balancers (``kind == "loss"``) also set ``loss_weights`` so
:func:`fmtl.make_step` needs one backward; Gramian balancers (``"gramian"``) see only the T×T
Gramian (:func:`gramian_balancer`); Jacobian balancers (``"jacobian"``) see J itself. Gradient
balancers take ``log_transform=True`` (paper Fig. 1).
"""

from __future__ import annotations

from ._gradient import gramian_balancer
from ._loss import loss_balancer
from ._registry import defaults, factory, get, hyperparameters, kind, names, register
from .aligned_mtl import aligned_mtl
from .cagrad import cagrad
from .config import config
from .constant import constant
from .dbmtl import DBMTLState, dbmtl
from .dualproj import dualproj
from .dwa import dwa
from .ew import ew
from .excess_mtl import excess_mtl
from .fairgrad import fairgrad
from .famo import famo
from .gls import gls
from .graddrop import graddrop
from .gradnorm import gradnorm
from .gradvac import gradvac
from .imtl import imtl
from .imtl_g import imtl_g
from .imtl_l import imtl_l
from .krum import krum
from .metabalance import metabalance
from .mgda import mgda
from .moco import moco
from .modo import modo
from .nash_mtl import nash_mtl
from .pcgrad import pcgrad
from .rlw import rlw
from .sdmgrad import sdmgrad
from .stch import stch
from .trimmed_mean import trimmed_mean
from .upgrad import upgrad
from .uw import uw

# Registration order is the order of names(): loss balancing, gradient balancing, hybrid,
# DB-MTL, then the methods LibMTL and TorchJD added later.
_BUILTINS = (
    ew, gls, rlw, uw, dwa, imtl_l, famo,
    mgda, gradnorm, pcgrad, graddrop, gradvac, imtl_g, cagrad, nash_mtl, metabalance, moco, aligned_mtl, upgrad,
    imtl, dbmtl,
    stch, constant, excess_mtl, fairgrad, modo, sdmgrad, dualproj, config, krum, trimmed_mean,
)  # fmt: skip
for _factory in _BUILTINS:
    register(_factory.__name__, _factory)
del _factory

__all__ = [
    "get", "names", "register", "factory", "defaults", "kind", "hyperparameters",
    "gramian_balancer", "loss_balancer", "DBMTLState",
    *(f.__name__ for f in _BUILTINS),
]  # fmt: skip

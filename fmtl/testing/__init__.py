"""Property-based testing of MTL balancers, for fmtl's own and for users' balancers.

* :func:`check_balancer` runs the properties a balancer should have (finite output, purity,
  permutation equivariance, scale behaviour, non-conflict where claimed, equal contributions for
  DB-MTL-like methods, multi-leaf θ = flat θ, compiled = eager, every strategy = the loop) and
  raises an ``AssertionError`` naming the failed property with a minimal counterexample.
* :mod:`fmtl.testing.strategies`: hypothesis strategies for task Jacobians (multi-leaf
  TensorDicts of chosen T, rank, conditioning, norm spread and hard structures), losses, whole
  cases and toy problems.
* The deterministic builders behind them: :func:`jacobian`, :func:`losses`, :func:`case`,
  :func:`flat_case`, :func:`params_for`, :func:`toy_problem`, :func:`flatten`, :func:`unflatten`.

hypothesis is needed for the first two (``pip install "fmtl[testing]"``); it is imported only
when they are used.

Example:
    >>> import torch, fmtl
    >>> def scaled_sum(scale: float = 2.0) -> fmtl.Balancer:  # a user's balancer
    ...     return fmtl.balancers.loss_balancer(lambda params, T: fmtl.EmptyState(),
    ...                                         lambda losses, state: (torch.full_like(losses, scale), state, {}))
    >>> fmtl.testing.check_balancer(scaled_sum, properties=["finite", "permutation", "loss_weights"], max_examples=5)
    ['finite', 'permutation', 'loss_weights']
"""

from __future__ import annotations

from ._cases import (
    HEAD,
    SHAPES,
    STRUCTURES,
    Case,
    case,
    flat_case,
    flatten,
    jacobian,
    losses,
    params_for,
    toy_problem,
    unflatten,
)
from ._check import PROPERTIES, check_balancer

__all__ = [
    "PROPERTIES", "check_balancer", "Case", "case", "flat_case", "flatten", "unflatten", "jacobian", "losses",
    "params_for", "toy_problem", "SHAPES", "HEAD", "STRUCTURES",
]  # fmt: skip

"""Random Gramians of a chosen rank for the solver tests (built on :mod:`fmtl.testing`)."""

from __future__ import annotations

import torch

from fmtl.testing import flatten, jacobian


def random_gramian(
    num_tasks: int, rank: int, seed: int, norm_spread: float = 1.0, condition: float = 1.0
) -> torch.Tensor:
    """G = J Jᵀ for a multi-leaf J of rank ``rank`` (float64)."""
    J = flatten(jacobian(num_tasks, rank, condition, norm_spread, seed=seed))
    return J @ J.T

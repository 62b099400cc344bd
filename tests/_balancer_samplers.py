"""Random task Jacobians of a chosen rank, and the tiny parameter trees the balancer tests use."""

from __future__ import annotations

import torch
from tensordict import TensorDict

import fmtl

SHARED = {"w": (2, 3), "b": (3,)}  # θ: 9 coordinates in two leaves
HEAD = (2,)


def params_for(num_tasks: int, dtype: torch.dtype = torch.float32, names: list[str] | None = None) -> TensorDict:
    names = names or [f"t{i}" for i in range(num_tasks)]
    return TensorDict(
        {
            "shared": {k: torch.zeros(s, dtype=dtype) for k, s in SHARED.items()},
            "tasks": {n: {"w": torch.zeros(HEAD, dtype=dtype)} for n in names},
        },
        [],
    )


def matrix_of_rank(num_tasks: int, rank: int, cols: int, generator: torch.Generator, dtype=torch.float32):
    """A [T, cols] matrix of exactly ``rank`` (a product of Gaussian factors; rank 0 gives zeros)."""
    if rank == 0:
        return torch.zeros(num_tasks, cols, dtype=dtype)
    left = torch.randn(num_tasks, rank, generator=generator, dtype=torch.float64)
    right = torch.randn(rank, cols, generator=generator, dtype=torch.float64)
    return (left @ right).to(dtype)


def jacobian(matrix: torch.Tensor) -> TensorDict:
    """Splits a [T, 9] matrix into the leaves of ``SHARED``."""
    T = matrix.shape[0]
    w, b = matrix[:, :6].reshape(T, 2, 3), matrix[:, 6:]
    return TensorDict({"w": w, "b": b}, [T])


def task_gradients(
    num_tasks: int, rank: int, seed: int = 0, dtype: torch.dtype = torch.float32, names: list[str] | None = None
) -> fmtl.TaskGradients:
    """Random positive losses, a rank-``rank`` shared Jacobian and random head gradients."""
    g = torch.Generator().manual_seed(seed)
    matrix = matrix_of_rank(num_tasks, rank, 9, g, dtype)
    losses = (torch.rand(num_tasks, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    names = names or [f"t{i}" for i in range(num_tasks)]
    heads = TensorDict({n: {"w": torch.randn(HEAD, generator=g, dtype=torch.float64).to(dtype)} for n in names}, [])
    return fmtl.TaskGradients(losses, jacobian(matrix), heads)


def random_gramian(num_tasks: int, rank: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    J = matrix_of_rank(num_tasks, rank, 7, g, torch.float64)
    return J @ J.T

r"""A synthetic multi-task regression problem with controllable loss-scale imbalance.

For T tasks and inputs x ∈ ℝ^D, x ~ N(0, I):

.. math::

    w_t = \frac{\sqrt{1-c}\, u_t^\top V + \sqrt{c}\, p_t}{\lVert\cdot\rVert},\qquad
    y_t = s_t\,(w_t^\top x + σ ε_t),\quad ε_t \sim N(0, 1)

with a shared rank-r basis V ∈ ℝ^{r×D} (rows orthonormal), task loadings u_t ∈ ℝ^r, private
directions p_t ∈ ℝ^D, ``conflict`` c ∈ [0, 1] (c = 0: all tasks live in the shared r-dim space,
so multi-task learning helps; c = 1: unrelated tasks), noise σ and per-task scales s_t. Since
‖w_t‖ = 1, std(y_t) = s_t √(1 + σ²): the loss of task t (MSE) scales as s_t² and its gradient
as s_t, the loss-scale and gradient-magnitude imbalance DB-MTL is designed to remove.

Deterministic: the task weights depend only on ``seed``; split ``train``/``val``/``test`` draws
its samples from generators seeded with ``(seed, split)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from tensordict import TensorDict

from .base import TaskInfo, TensorDataset
from .batching import epoch_seed

__all__ = ["SyntheticDataset", "load_synthetic", "default_scales"]

_SPLIT_ID = {"train": 1, "val": 2, "test": 3}


def default_scales(num_tasks: int, spread: float = 100.0) -> torch.Tensor:
    """Geometric scales s_t = spread^{t/(T-1)} from 1 to ``spread``.

    Example:
        >>> default_scales(3).tolist()
        [1.0, 10.0, 100.0]
    """
    if num_tasks == 1:
        return torch.ones(1)
    return spread ** (torch.arange(num_tasks, dtype=torch.float64) / (num_tasks - 1))


class SyntheticDataset(TensorDataset):
    """One split of the synthetic problem; ``ds[idx]`` is ``{"x": [B, D], "y": [B, T]}``.

    Attributes:
        weights: float32 [T, D], the unit-norm true task weights w_t.
        scales: float32 [T], the target scales s_t.
        noise: σ.
    """

    def __init__(
        self, table: TensorDict, weights: torch.Tensor, scales: torch.Tensor, noise: float
    ) -> None:
        tasks = tuple(f"t{t}" for t in range(len(scales)))
        info = TaskInfo("regression", ("mse",), (False,))
        super().__init__(table, tasks, dict.fromkeys(tasks, info))
        self.weights, self.scales, self.noise = weights, scales, noise


def load_synthetic(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    *,
    num_tasks: int = 4,
    dim: int = 32,
    n: int = 4096,
    n_eval: int = 1024,
    rank: int = 2,
    conflict: float = 0.2,
    noise: float = 0.1,
    scales: Sequence[float] | torch.Tensor | None = None,
    seed: int = 0,
) -> SyntheticDataset:
    """Generate one split of the synthetic problem (see module docstring).

    Args:
        split: ``"train"`` (``n`` samples), ``"val"`` or ``"test"`` (``n_eval`` samples).
        root: unused (nothing is read from disk).
        num_tasks, dim: T and D.
        rank: r, the dimension of the shared subspace.
        conflict: c, the weight of the private direction of each task.
        noise: σ, the label-noise level relative to the signal.
        scales: s_t, length T; default :func:`default_scales` (1 … 100, geometric).
        seed: fixes the task weights and (with the split) the samples.

    Example:
        >>> ds = load_synthetic(num_tasks=2, dim=3, n=5, scales=[1.0, 10.0])
        >>> b = ds[[0, 1]]
        >>> b["x"].shape, b["y"].shape, ds.tasks
        (torch.Size([2, 3]), torch.Size([2, 2]), ('t0', 't1'))
    """
    del root
    if split not in _SPLIT_ID:
        raise ValueError(f"synthetic split must be one of {list(_SPLIT_ID)}; got {split!r}")
    if not 0.0 <= conflict <= 1.0:
        raise ValueError("conflict must be in [0, 1]")
    s = default_scales(num_tasks) if scales is None else torch.as_tensor(scales).double()
    if s.shape != (num_tasks,):
        raise ValueError(f"scales must have length num_tasks={num_tasks}")
    g = torch.Generator().manual_seed(epoch_seed(seed, 0))
    basis = torch.linalg.qr(torch.randn(dim, rank, generator=g, dtype=torch.float64))[0].T
    shared = torch.randn(num_tasks, rank, generator=g, dtype=torch.float64) @ basis
    private = torch.randn(num_tasks, dim, generator=g, dtype=torch.float64)
    shared = shared / shared.norm(dim=1, keepdim=True)
    private = private / private.norm(dim=1, keepdim=True)
    w = (1 - conflict) ** 0.5 * shared + conflict**0.5 * private
    w = w / w.norm(dim=1, keepdim=True)
    size = n if split == "train" else n_eval
    gs = torch.Generator().manual_seed(epoch_seed(seed, _SPLIT_ID[split]))
    x = torch.randn(size, dim, generator=gs, dtype=torch.float64)
    eps = torch.randn(size, num_tasks, generator=gs, dtype=torch.float64)
    y = (x @ w.T + noise * eps) * s
    table = TensorDict({"x": x.float(), "y": y.float()}, batch_size=[size])
    return SyntheticDataset(table, w.float(), s.float(), noise)

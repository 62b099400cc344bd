"""Deterministic, resumable, rank-sharded batch iteration over any ``fmtl.data`` dataset.

The epoch order is a permutation drawn from a CPU ``torch.Generator`` seeded with
:func:`epoch_seed` ``(seed, epoch)``, so the same ``(seed, epoch)`` always gives the same
batches (on any machine and any ``world_size``), and a run can resume mid-epoch with
``start=k``. Global batch ``k`` is the index slice ``perm[k·b : (k+1)·b]``; with
``world_size = W`` rank ``r`` receives ``torch.tensor_split(global_batch, W)[r]``, a contiguous
shard, so concatenating the ranks' shards in rank order gives exactly the single-process batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from tensordict import TensorDict

from .base import Dataset

__all__ = ["epoch_seed", "epoch_permutation", "num_batches", "batch_indices", "batches"]

_GOLDEN = 0x9E3779B97F4A7C15  # 2^64 / φ, spreads consecutive seeds apart


def epoch_seed(seed: int, epoch: int) -> int:
    """The generator seed of one epoch: ``(seed · φ64 + epoch) mod 2^63``.

    Unlike ``seed + epoch`` it does not collide for ``(seed, epoch+1)`` and ``(seed+1, epoch)``.

    Example:
        >>> epoch_seed(0, 3), epoch_seed(1, 0) != epoch_seed(0, 1)
        (3, True)
    """
    return (seed * _GOLDEN + epoch) % (1 << 63)


def epoch_permutation(n: int, seed: int, epoch: int, shuffle: bool = True) -> torch.Tensor:
    """The order of the ``n`` rows in one epoch (``arange(n)`` when ``shuffle`` is False).

    Example:
        >>> torch.equal(epoch_permutation(5, 0, 1), epoch_permutation(5, 0, 1))
        True
        >>> epoch_permutation(4, 0, 0, shuffle=False).tolist()
        [0, 1, 2, 3]
    """
    if not shuffle:
        return torch.arange(n)
    g = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return torch.randperm(n, generator=g)


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """Number of global batches per epoch: ``⌊n/b⌋`` if ``drop_last`` else ``⌈n/b⌉``.

    Example:
        >>> num_batches(10, 4), num_batches(10, 4, drop_last=True)
        (3, 2)
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    return n // batch_size if drop_last else -(-n // batch_size)


def batch_indices(
    n: int,
    batch_size: int,
    *,
    seed: int,
    epoch: int = 0,
    shuffle: bool = True,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
    start: int = 0,
) -> Iterator[torch.Tensor]:
    """The row indices of this rank's shard of each global batch (see module docstring).

    Example:
        >>> [b.tolist() for b in batch_indices(5, 2, seed=0, shuffle=False)]
        [[0, 1], [2, 3], [4]]
        >>> [b.tolist() for b in batch_indices(5, 4, seed=0, shuffle=False, rank=1, world_size=2)]
        [[2, 3], []]
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    perm = epoch_permutation(n, seed, epoch, shuffle)
    for k in range(start, num_batches(n, batch_size, drop_last)):
        global_batch = perm[k * batch_size : (k + 1) * batch_size]
        yield torch.tensor_split(global_batch, world_size)[rank]


def batches(
    ds: Dataset,
    batch_size: int,
    *,
    seed: int,
    epoch: int = 0,
    shuffle: bool = True,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
    start: int = 0,
) -> Iterator[TensorDict]:
    """Yield ``ds[idx]`` for this rank's shard of every global batch of one epoch.

    Args:
        ds: any dataset (``len`` and vectorized ``ds[index_tensor]``).
        batch_size: the *global* batch size b (summed over ranks).
        seed, epoch: the permutation is ``epoch_permutation(len(ds), seed, epoch)``.
        shuffle: False iterates rows in order (evaluation).
        drop_last: drop the final short global batch.
        rank, world_size: this process's shard of each global batch (``tensor_split``; when
            b is not divisible by W the first ``b mod W`` ranks get one extra row, and a rank
            may get an empty shard of the last short batch).
        start: skip the first ``start`` global batches (resume mid-epoch).

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from fmtl.data import TaskInfo, TensorDataset
        >>> ds = TensorDataset(TensorDict({"y": torch.arange(5.)}, [5]), ("y",),
        ...                    {"y": TaskInfo("regression", ("mae",), (False,))})
        >>> [b["y"].tolist() for b in batches(ds, 2, seed=0, shuffle=False)]
        [[0.0, 1.0], [2.0, 3.0], [4.0]]
    """
    for idx in batch_indices(
        len(ds),
        batch_size,
        seed=seed,
        epoch=epoch,
        shuffle=shuffle,
        drop_last=drop_last,
        rank=rank,
        world_size=world_size,
        start=start,
    ):
        yield ds[idx]

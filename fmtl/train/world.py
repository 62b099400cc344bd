"""The processes of a run: one, or several under ``torchrun`` (rank, world size, the reduce hook).

Under ``torchrun`` (``WORLD_SIZE > 1``) each rank reads its shard of every global batch, the
step averages losses and task gradients over ranks before the balancer
(:func:`fmtl.distributed.allreduce`), every rank starts from rank 0's parameters, and only rank 0
evaluates and writes files. BatchNorm normalizes with each rank's own batch statistics (as
``DistributedDataParallel`` without ``SyncBatchNorm``); the running statistics are averaged over
ranks after every update so that all replicas stay equal.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch.utils import _pytree as pytree

__all__ = ["World", "start", "check_shards", "mean_buffers"]


class World(NamedTuple):
    """This process's rank, the number of processes, the cross-rank reduce hook and the device.

    Example:
        >>> World(0, 1, None, torch.device("cpu")).main
        True
    """

    rank: int
    size: int
    reduce: Callable | None
    device: torch.device

    @property
    def main(self) -> bool:
        """Whether this process evaluates and writes files (rank 0)."""
        return self.rank == 0

    def broadcast(self, tree: Any) -> Any:
        """``tree`` as rank 0 holds it (every rank starts from the same θ, ψ_t)."""
        if self.size <= 1:
            return tree
        from ..distributed import broadcast

        return broadcast(tree)

    def check_replicated(self, tree: Any) -> None:
        """With ``FMTL_DISTRIBUTED_DEBUG=1``: raise if the ranks' params and state differ."""
        if self.size > 1:
            from ..distributed import check_replicated

            check_replicated(tree, what="params and state")

    def stop(self) -> None:
        """Tears the process group down (nothing for one process)."""
        if self.size > 1:
            from ..distributed import shutdown

            shutdown()


def start(device: torch.device) -> World:
    """The world of this process; under torchrun a CUDA run uses the GPU of its ``LOCAL_RANK``.

    Example:
        >>> start(torch.device("cpu"))
        World(rank=0, size=1, reduce=None, device=device(type='cpu'))
    """
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and not (dist.is_available() and dist.is_initialized()):
        return World(0, 1, None, device)
    from .. import distributed

    ctx = distributed.setup(backend=None if device.type == "cuda" else "gloo")
    if ctx.world_size <= 1:
        return World(0, 1, None, device)
    return World(ctx.rank, ctx.world_size, distributed.allreduce(), ctx.device if device.type == "cuda" else device)


def check_shards(n: int, batch_size: int, world: World) -> bool:
    """``drop_last`` for a run on ``world.size`` ranks: equal shards or a clear error.

    The cross-rank mean of per-rank mean losses is the global-batch mean only when every rank
    holds as many rows as the others, so the global batch must split evenly; a short last batch
    that does not split evenly is dropped (a single process keeps it, so say so).

    Example:
        >>> check_shards(10, 4, World(0, 1, None, torch.device("cpu")))
        False
    """
    if world.size <= 1:
        return False
    if batch_size % world.size:
        raise ValueError(f"--batch-size {batch_size} is the global batch and must be divisible by the "
                         f"{world.size} processes (equal shards keep the run equal to one process)")  # fmt: skip
    drop = (n % batch_size) % world.size != 0
    if drop and world.main:
        warnings.warn(f"the last batch of {n % batch_size} rows does not split evenly over {world.size} "
                      "processes: it is dropped every epoch, so this run differs from a single-process run",
                      stacklevel=2)  # fmt: skip
    return drop


def mean_buffers(update: Callable | None, world: World) -> Callable | None:
    """``update_buffers`` followed by the cross-rank mean of its floating-point leaves (replicas stay equal).

    Example:
        >>> f = lambda p, b, batch: b
        >>> mean_buffers(f, World(0, 1, None, torch.device("cpu"))) is f
        True
    """
    if update is None or world.size <= 1:
        return update
    reduce = world.reduce

    def averaged(params: Any, buffers: Any, batch: Any) -> Any:
        new = update(params, buffers, batch)
        leaves, spec = pytree.tree_flatten(new)
        floats = [i for i, v in enumerate(leaves) if v.is_floating_point()]
        for i, v in zip(floats, reduce([leaves[i] for i in floats]), strict=True):
            leaves[i] = v
        return pytree.tree_unflatten(leaves, spec)

    return averaged

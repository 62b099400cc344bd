"""Streaming batches from per-item datasets: ``torch.utils.data.DataLoader`` workers, pinned memory,
augmentation, and the exact order of :mod:`fmtl.data.batching`.

:func:`loader` wraps any ``fmtl.data`` dataset — a per-item one (``load(..., streaming=True)``:
:class:`~fmtl.data.dense.DenseFiles`, :class:`~fmtl.data.images.ImageFiles`, a
:class:`~fmtl.data.multi_input.MultiInputDataset` of them) or an in-memory one — in a DataLoader
whose batch sampler yields whole batches of row indices, so a worker builds one batch
(``ds[rows]``, decoding each image) and only that batch is in memory.

* **Order.** Epoch e, global batch k is exactly the rows of ``batch_indices(n, b, seed=seed,
  epoch=e)`` (``multi_input_batch_indices`` for multi-input datasets): a permutation drawn from
  (seed, e), the same as the in-memory :func:`fmtl.data.batches` and independent of
  ``num_workers``. ``loader.epoch(e, start=k)`` resumes at batch k and yields exactly the
  remaining batches.
* **Ranks.** Under W processes rank r receives ``tensor_split(global_batch, W)[r]``: the ranks'
  shards concatenate to the single-process batch (equal when W divides b).
* **Augmentation.** ``transform(sample, generator)`` runs per sample in the worker with a
  generator seeded by ``sample_seed(seed, e, row)`` (the task's index folded in for multi-input
  data), so a sample's augmentation depends on (seed, epoch, row) only: identical across workers,
  ranks and resumes. ``sample_seeds=True`` also puts that seed into the batch as ``"seed"``
  (int64 [B]), the per-sample dropout key of :mod:`fmtl.models`.
* **Memory.** ``pin_memory`` (default: when CUDA is available) pins each batch for an
  asynchronous copy; workers prefetch ``prefetch_factor`` batches each.

The DataLoader gets its own generator, so iterating never consumes the global RNG.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import torch
from tensordict import TensorDict

from .base import Dataset
from .batching import batch_indices, epoch_seed, num_batches
from .multi_input import MultiInputDataset, multi_input_batch_indices, multi_input_num_batches

__all__ = ["loader", "StreamLoader", "EpochBatchSampler", "BatchKey", "sample_seed"]

Transform = Callable[[TensorDict, torch.Generator], TensorDict]


def sample_seed(seed: int, epoch: int, row: int, task: int | None = None) -> int:
    """The seed of one sample's augmentation and dropout in one epoch (``task``: multi-input index).

    Example:
        >>> sample_seed(0, 1, 5) == sample_seed(0, 1, 5) != sample_seed(0, 2, 5)
        True
    """
    base = epoch_seed(seed, epoch)
    if task is not None:
        base = epoch_seed(base, task + 1)
    return epoch_seed(base, row)


class BatchKey(NamedTuple):
    """What the batch sampler hands a worker: the epoch and this rank's rows (``{task: rows}``
    for multi-input datasets)."""

    epoch: int
    rows: torch.Tensor | dict[str, torch.Tensor]


class EpochBatchSampler(torch.utils.data.Sampler):
    """Yields the :class:`BatchKey` of every batch of the current epoch from ``start`` on.

    ``sizes`` is the dataset's length, or ``{task: n_t}`` for a multi-input dataset.
    :meth:`set_epoch` picks the epoch and the first batch.

    Example:
        >>> s = EpochBatchSampler(5, 2, seed=0, shuffle=False)
        >>> s.set_epoch(3, start=1)
        >>> [(k.epoch, k.rows.tolist()) for k in s], len(s)
        ([(3, [2, 3]), (3, [4])], 2)
    """

    def __init__(
        self,
        sizes: int | Mapping[str, int],
        batch_size: int,
        *,
        seed: int,
        shuffle: bool = True,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.sizes, self.batch_size, self.seed = sizes, batch_size, seed
        self.shuffle, self.drop_last, self.rank, self.world_size = shuffle, drop_last, rank, world_size
        self.epoch, self.start = 0, 0
        self.per_epoch = (multi_input_num_batches(sizes, batch_size, drop_last) if isinstance(sizes, Mapping)
                          else num_batches(sizes, batch_size, drop_last))  # fmt: skip

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate epoch ``epoch`` from its batch ``start`` (0 ≤ start ≤ batches per epoch)."""
        if not 0 <= start <= self.per_epoch:
            raise ValueError(f"start must be in [0, {self.per_epoch}] (batches per epoch), got {start}")
        self.epoch, self.start = int(epoch), int(start)

    def __len__(self) -> int:
        return self.per_epoch - self.start

    def __iter__(self) -> Iterator[BatchKey]:
        kw = dict(seed=self.seed, epoch=self.epoch, shuffle=self.shuffle, drop_last=self.drop_last,
                  rank=self.rank, world_size=self.world_size, start=self.start)  # fmt: skip
        if isinstance(self.sizes, Mapping):
            rows = multi_input_batch_indices(self.sizes, self.batch_size, **kw)
        else:
            rows = batch_indices(self.sizes, self.batch_size, **kw)
        for r in rows:
            yield BatchKey(self.epoch, r)


def _apply(batch: TensorDict, seeds: list[int], transform: Transform | None, with_seeds: bool) -> TensorDict:
    if transform is not None and len(seeds):
        batch = torch.stack([transform(batch[i], torch.Generator().manual_seed(s)) for i, s in enumerate(seeds)])
        batch = batch.to_tensordict() if hasattr(batch, "to_tensordict") else batch
    if with_seeds:
        batch["seed"] = torch.tensor(seeds, dtype=torch.long)
    return batch


class _Fetch(torch.utils.data.Dataset):
    """The map-style dataset the DataLoader sees: one call builds one whole batch (in a worker)."""

    def __init__(self, ds: Dataset, seed: int, transform: Transform | None, with_seeds: bool) -> None:
        self.ds, self.seed, self.transform, self.with_seeds = ds, seed, transform, with_seeds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: Any) -> TensorDict:
        return self.__getitems__(key)

    def __getitems__(self, key: BatchKey) -> TensorDict:
        if isinstance(key.rows, dict):
            subs = {}
            for i, (t, rows) in enumerate(key.rows.items()):
                seeds = [sample_seed(self.seed, key.epoch, r, task=i) for r in rows.tolist()]
                sub = self.ds.task(t)[rows]
                subs[t] = _apply(sub, seeds, self.transform, self.with_seeds)
            return TensorDict(subs, [])
        seeds = [sample_seed(self.seed, key.epoch, r) for r in key.rows.tolist()]
        return _apply(self.ds[key.rows], seeds, self.transform, self.with_seeds)


def _identity(batch: TensorDict) -> TensorDict:
    return batch


class StreamLoader:
    """A DataLoader over ``ds`` that iterates one epoch at a time (module docstring; build with :func:`loader`)."""

    def __init__(
        self,
        ds: Dataset,
        batch_size: int,
        *,
        seed: int,
        shuffle: bool = True,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        transform: Transform | None = None,
        sample_seeds: bool = False,
        prefetch_factor: int | None = None,
        persistent_workers: bool | None = None,
    ) -> None:
        sizes = ds.sizes if isinstance(ds, MultiInputDataset) else len(ds)
        self.sampler = EpochBatchSampler(sizes, batch_size, seed=seed, shuffle=shuffle, drop_last=drop_last,
                                         rank=rank, world_size=world_size)  # fmt: skip
        pin = torch.cuda.is_available() if pin_memory is None else pin_memory
        extra: dict[str, Any] = {}
        if num_workers > 0:
            extra["prefetch_factor"] = prefetch_factor or 2
            extra["persistent_workers"] = True if persistent_workers is None else persistent_workers
        self.loader = torch.utils.data.DataLoader(
            _Fetch(ds, seed, transform, sample_seeds), batch_sampler=self.sampler, num_workers=num_workers,
            collate_fn=_identity, pin_memory=pin, generator=torch.Generator().manual_seed(seed), **extra,
        )  # fmt: skip
        self.pin_memory = pin

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.sampler.per_epoch

    def epoch(self, epoch: int, start: int = 0) -> Iterator[TensorDict]:
        """The batches of epoch ``epoch`` from batch ``start`` on (the rest of an interrupted epoch)."""
        self.sampler.set_epoch(epoch, start)
        yield from self.loader


def loader(ds: Dataset, batch_size: int, *, seed: int, **options: Any) -> StreamLoader:
    """A :class:`StreamLoader` over ``ds`` (options: ``shuffle``, ``drop_last``, ``rank``, ``world_size``,
    ``num_workers``, ``pin_memory``, ``transform``, ``sample_seeds``, ``prefetch_factor``,
    ``persistent_workers``; module docstring).

    Example:
        >>> import torch
        >>> from fmtl.data import batches, load
        >>> ds = load("synthetic", n=10, num_tasks=2, dim=3)
        >>> stream = loader(ds, 4, seed=0)
        >>> got = [b["x"] for b in stream.epoch(1, start=1)]
        >>> want = [b["x"] for b in batches(ds, 4, seed=0, epoch=1, start=1)]
        >>> len(stream), all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
        (3, True)
    """
    return StreamLoader(ds, batch_size, seed=seed, **options)

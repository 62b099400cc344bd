"""fmtl's data layer: in-memory multi-task datasets indexed by whole batches.

``load(name, split, root, **options)`` returns a dataset with ``len(ds)``, ``ds.tasks``,
``ds.task_info`` and a vectorized ``ds[index] -> TensorDict``; ``batches(ds, b, seed=…,
epoch=…)`` iterates it deterministically (and shards it across ranks). Image benchmarks also
load per-item (``streaming=True``) for :func:`loader`, a DataLoader with workers, pinned memory
and augmentation that keeps the same order (:mod:`fmtl.data.stream`); multi-input problems
(Office) are :class:`MultiInputDataset` s (:mod:`fmtl.data.multi_input`). Each benchmark's
settings in the paper are its loader module's ``PAPER_DEFAULTS``; :func:`fmtl.data.fabricate.fabricate`
writes tiny copies in the real layouts for tests.

Example:
    >>> from fmtl.data import batches, load
    >>> ds = load("synthetic", n=10, num_tasks=2, dim=4)
    >>> [b.batch_size[0] for b in batches(ds, 4, seed=0)]
    [4, 4, 2]
"""

from .base import Dataset, Index, PaperDefaults, TaskInfo, TensorDataset, as_index
from .batching import batch_indices, batches, epoch_permutation, epoch_seed, num_batches
from .cache import cache_dir
from .multi_input import MultiInputDataset, multi_input_batch_indices, multi_input_num_batches
from .registry import load, names
from .stream import StreamLoader, loader

__all__ = [
    "Dataset", "Index", "TaskInfo", "TensorDataset", "as_index", "batch_indices", "batches",
    "epoch_permutation", "epoch_seed", "num_batches", "cache_dir", "load", "names", "PaperDefaults",
    "MultiInputDataset", "multi_input_batch_indices", "multi_input_num_batches", "loader", "StreamLoader",
]  # fmt: skip

"""fmtl's data layer: in-memory multi-task datasets indexed by whole batches.

``load(name, split, root, **options)`` returns a dataset with ``len(ds)``, ``ds.tasks``,
``ds.task_info`` and a vectorized ``ds[index] -> TensorDict``; ``batches(ds, b, seed=…,
epoch=…)`` iterates it deterministically (and shards it across ranks).

Example:
    >>> from fmtl.data import batches, load
    >>> ds = load("synthetic", n=10, num_tasks=2, dim=4)
    >>> [b.batch_size[0] for b in batches(ds, 4, seed=0)]
    [4, 4, 2]
"""

from .base import Dataset, Index, TaskInfo, TensorDataset, as_index
from .batching import batch_indices, batches, epoch_permutation, epoch_seed, num_batches
from .cache import cache_dir
from .registry import load, names

__all__ = [
    "Dataset", "Index", "TaskInfo", "TensorDataset", "as_index", "batch_indices", "batches",
    "epoch_permutation", "epoch_seed", "num_batches", "cache_dir", "load", "names",
]  # fmt: skip

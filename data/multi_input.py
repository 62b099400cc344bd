"""Multi-input MTL data: each task its own dataset, its own sample order and its own batch.

LibMTL's ``multi_input`` (Office-31, Office-Home: one domain = one task): task t has its own
training set D_t and every step draws a batch B_{t,k} from each (paper Algorithm 1, step 5).
A :class:`MultiInputDataset` holds one single-task dataset per task; ``ds[{t: rows_t}]`` is a
TensorDict of per-task sub-batches ``{t: ds_t[rows_t]}`` (outer ``batch_size=[]``), the batch
that :func:`fmtl.losses.make_multi_input_loss_fn` takes.

The order (:func:`multi_input_batch_indices`): an epoch has K = max_t ⌈n_t / b⌉ steps
(⌊·⌋ with ``drop_last``), as LibMTL's ``max(len(loader_t))``. Task t walks through fresh
permutations of its n_t rows — permutation c of epoch e is ``epoch_permutation(n_t,
epoch_seed(epoch_seed(seed, e), t), c)`` — and step k takes rows [k·b, (k+1)·b) of that
stream, so the largest task sees each row once and smaller tasks cycle (LibMTL re-creates an
exhausted loader, reshuffled). Without ``drop_last`` the last step is short for every task
(b_K = n_max − (K−1)·b). Deviation: LibMTL's iterators of the smaller tasks carry over from one
epoch to the next; here every epoch restarts them, so an epoch depends on (seed, epoch) only and
resumes exactly. Under W ranks each task's step-k batch is split with ``tensor_split`` as in
:mod:`fmtl.data.batching`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from tensordict import TensorDict

from .base import Dataset, Index, TaskInfo, as_index
from .batching import epoch_permutation, epoch_seed, num_batches

__all__ = ["MultiInputDataset", "multi_input_batch_indices", "multi_input_num_batches"]


class MultiInputDataset:
    """One single-task dataset per task (module docstring).

    ``ds[index]`` with ``index = {task: rows}`` gives ``TensorDict({t: ds_t[rows_t]}, [])``;
    ``len(ds)`` is the largest task's size and ``ds.sizes[t]`` each task's.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from fmtl.data import TaskInfo, TensorDataset
        >>> info = TaskInfo("classification", ("accuracy",), (True,), num_classes=2)
        >>> one = lambda n: TensorDataset(TensorDict({"x": torch.arange(float(n)), "y": torch.zeros(n)}, [n]),
        ...                               ("y",), {"y": info})
        >>> ds = MultiInputDataset({"a": one(5), "b": one(2)}, {"a": info, "b": info})
        >>> b = ds[{"a": [4, 0], "b": [1]}]
        >>> b["a", "x"].tolist(), b["b", "x"].tolist(), ds.sizes
        ([4.0, 0.0], [1.0], {'a': 5, 'b': 2})
    """

    def __init__(self, datasets: Mapping[str, Dataset], task_info: Mapping[str, TaskInfo]) -> None:
        if not datasets:
            raise ValueError("a multi-input dataset needs at least one task")
        self.datasets = dict(datasets)
        self.tasks = tuple(self.datasets)
        self.task_info = {t: task_info[t] for t in self.tasks}
        self.sizes = {t: len(d) for t, d in self.datasets.items()}
        empty = [t for t, n in self.sizes.items() if n == 0]
        if empty:
            raise ValueError(f"tasks {empty} have no samples")

    def __len__(self) -> int:
        return max(self.sizes.values())

    def __repr__(self) -> str:
        return f"MultiInputDataset(sizes={self.sizes})"

    def __getitem__(self, index: Mapping[str, Index]) -> TensorDict:
        if not isinstance(index, Mapping):
            raise TypeError("a multi-input dataset is indexed by {task: rows}, one index per task")
        return TensorDict({t: self.datasets[t][as_index(rows, self.sizes[t])] for t, rows in index.items()}, [])

    def task(self, name: str) -> Dataset:
        """Task ``name``'s own dataset (e.g. to evaluate each task once over its split)."""
        return self.datasets[name]


def multi_input_num_batches(sizes: Mapping[str, int], batch_size: int, drop_last: bool = False) -> int:
    """Steps per epoch, K = max_t num_batches(n_t, b, drop_last).

    Example:
        >>> multi_input_num_batches({"a": 10, "b": 3}, 4), multi_input_num_batches({"a": 10, "b": 3}, 4, True)
        (3, 2)
    """
    return max(num_batches(n, batch_size, drop_last) for n in sizes.values())


def multi_input_batch_indices(
    sizes: Mapping[str, int],
    batch_size: int,
    *,
    seed: int,
    epoch: int = 0,
    shuffle: bool = True,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
    start: int = 0,
) -> Iterator[dict[str, torch.Tensor]]:
    """``{task: rows}`` of this rank's shard of every step ``k ≥ start`` of one epoch (module docstring).

    Example:
        >>> [{t: r.tolist() for t, r in b.items()} for b in
        ...  multi_input_batch_indices({"a": 4, "b": 3}, 2, seed=0, shuffle=False)]
        [{'a': [0, 1], 'b': [0, 1]}, {'a': [2, 3], 'b': [2, 0]}]
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    k_total = multi_input_num_batches(sizes, batch_size, drop_last)
    n_max = max(sizes.values())
    stop = k_total * batch_size if drop_last else n_max
    streams = {}
    for i, (t, n) in enumerate(sizes.items()):
        task_seed = epoch_seed(epoch_seed(seed, epoch), i)
        cycles = [epoch_permutation(n, task_seed, c, shuffle) for c in range(-(-stop // n))]
        streams[t] = torch.cat(cycles)[:stop] if cycles else torch.zeros(0, dtype=torch.long)
    for k in range(start, k_total):
        yield {t: torch.tensor_split(s[k * batch_size : (k + 1) * batch_size], world_size)[rank]
               for t, s in streams.items()}  # fmt: skip

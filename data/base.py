"""The dataset contract: an in-memory table indexed by a whole batch of rows at once.

A dataset ``ds`` has ``len(ds)`` rows and ``ds[index] -> TensorDict`` returns the batch of the
rows ``index`` (a long tensor, a list of ints or a slice) in one vectorized gather — no
per-sample Python loop and no collate function. ``ds.tasks`` is the ordered tuple of task names
(the order of the task axis ``T`` everywhere in fmtl) and ``ds.task_info[name]`` is a
:class:`TaskInfo` saying how that task is evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from tensordict import TensorDict

__all__ = ["Index", "TaskInfo", "Dataset", "TensorDataset", "as_index"]

Index = torch.Tensor | list[int] | slice | range


@dataclass(frozen=True)
class TaskInfo:
    """How one task is scored.

    ``metrics[i]`` is a metric name and ``higher_is_better[i]`` its direction (the sign
    :math:`s_{t,i}` of the paper's Δ_p: ``s = 0`` when higher is better, ``1`` otherwise).

    Attributes:
        kind: ``"regression"``, ``"classification"``, ``"segmentation"``, ``"depth"`` or
            ``"normal"``.
        metrics: metric names, the first is the main one (e.g. ``("mae",)``).
        higher_is_better: one bool per metric.
        num_classes: number of classes for classification/segmentation, else ``None``.
        unit: the unit the metric is reported in (e.g. ``"meV"``), ``""`` when unitless.

    Example:
        >>> TaskInfo("regression", ("mae",), (False,), unit="D").higher_is_better
        (False,)
    """

    kind: str
    metrics: tuple[str, ...]
    higher_is_better: tuple[bool, ...]
    num_classes: int | None = None
    unit: str = ""

    def __post_init__(self) -> None:
        if len(self.metrics) != len(self.higher_is_better):
            raise ValueError("metrics and higher_is_better must have the same length")


@runtime_checkable
class Dataset(Protocol):
    """What every ``fmtl.data`` dataset provides (a structural protocol).

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> ds = TensorDataset(TensorDict({"x": torch.zeros(4, 2)}, [4]), ("a",),
        ...                    {"a": TaskInfo("regression", ("mae",), (False,))})
        >>> isinstance(ds, Dataset)
        True
    """

    tasks: tuple[str, ...]
    task_info: dict[str, TaskInfo]

    def __len__(self) -> int: ...

    def __getitem__(self, index: Index) -> TensorDict: ...


def as_index(index: Index, n: int) -> torch.Tensor:
    """Turn a tensor, list, range or slice into a long index tensor of rows of an ``n``-row table.

    Negative entries count from the end, as in Python; out-of-range entries raise IndexError.

    Example:
        >>> as_index(slice(1, None, 2), 5).tolist()
        [1, 3]
        >>> as_index([-1, 0], 3).tolist()
        [2, 0]
    """
    if isinstance(index, slice):
        return torch.arange(*index.indices(n))
    if isinstance(index, range):
        index = torch.as_tensor(list(index), dtype=torch.long)
    idx = torch.as_tensor(index, dtype=torch.long).reshape(-1)
    if idx.numel() and (int(idx.min()) < -n or int(idx.max()) >= n):
        raise IndexError(f"index out of range for a dataset of {n} rows")
    return torch.where(idx < 0, idx + n, idx)


class TensorDataset:
    """A dataset whose rows are the rows of one TensorDict with ``batch_size=[n]``.

    ``ds[index]`` is ``table[index]``: a single advanced-indexing gather per leaf.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> table = TensorDict({"x": torch.arange(6.).view(3, 2), "y": torch.arange(3.)}, [3])
        >>> ds = TensorDataset(table, ("y",), {"y": TaskInfo("regression", ("mae",), (False,))})
        >>> ds[[2, 0]]["y"].tolist(), len(ds)
        ([2.0, 0.0], 3)
    """

    def __init__(
        self, table: TensorDict, tasks: tuple[str, ...], task_info: dict[str, TaskInfo]
    ) -> None:
        if len(table.batch_size) != 1:
            raise ValueError("table must have a one-dimensional batch_size [n]")
        self.table = table
        self.tasks = tuple(tasks)
        self.task_info = {t: task_info[t] for t in self.tasks}

    def __len__(self) -> int:
        return int(self.table.batch_size[0])

    def __getitem__(self, index: Index) -> TensorDict:
        return self.table[as_index(index, len(self))]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)}, tasks={list(self.tasks)})"

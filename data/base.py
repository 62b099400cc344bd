"""The dataset contract: an in-memory table indexed by a whole batch of rows at once.

A dataset ``ds`` has ``len(ds)`` rows and ``ds[index] -> TensorDict`` returns the batch of the
rows ``index`` (a long tensor, a list of ints or a slice) in one vectorized gather — no
per-sample Python loop and no collate function. ``ds.tasks`` is the ordered tuple of task names
(the order of the task axis ``T`` everywhere in fmtl) and ``ds.task_info[name]`` is a
:class:`TaskInfo` saying how that task is evaluated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from tensordict import TensorDict

__all__ = ["Index", "TaskInfo", "Dataset", "TensorDataset", "as_index", "PaperDefaults"]

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


@dataclass(frozen=True)
class PaperDefaults:
    """A benchmark's settings as the paper (and LibMTL, where the paper is silent) uses them.

    One instance per benchmark lives in its loader module (``fmtl.data.dense.PAPER_DEFAULTS``,
    ``fmtl.data.office.PAPER_DEFAULTS``, ``fmtl.data.multimnist.PAPER_DEFAULTS``) for the
    problem registry and the README table to read. Every field is plain data.

    Attributes:
        benchmark: the benchmark's name (``fmtl.data.load`` name).
        section: where the paper states it (e.g. ``"§4.1"``), or why it is not from the paper.
        tasks: task names in task order; ``task_info[t]`` how each is scored (metrics, Δp
            directions: :class:`TaskInfo`).
        losses: ``{task: name of the loss in fmtl.losses}``.
        model: the model's builder in ``fmtl.models`` and its keyword arguments.
        batch_size, epochs: per step (per task for multi-input problems) and in total.
        optimizer: ``{"name": "adam", "lr": …, "weight_decay": …}``.
        scheduler: ``{"name": "step", "step_size": epochs, "gamma": factor}`` or
            ``{"name": "none"}``.
        image_size: (H, W) the images are used at.
        multi_input: each task its own inputs and batches (Office).
        splits: ``{"train": …, "val": …, "test": …}`` split names as loaded (``None``: none).
        data: where to get the data and the on-disk layout (one line each).
        notes: choices not in the paper, and deviations.

    Example:
        >>> from fmtl.data.dense import PAPER_DEFAULTS
        >>> d = PAPER_DEFAULTS["nyuv2"]
        >>> d.batch_size, d.epochs, d.optimizer["lr"], d.task_info["depth"].higher_is_better
        (8, 200, 0.0001, (False, False))
    """

    benchmark: str
    section: str
    tasks: tuple[str, ...]
    task_info: Mapping[str, TaskInfo]
    losses: Mapping[str, str]
    model: Mapping[str, Any]
    batch_size: int
    epochs: int
    optimizer: Mapping[str, Any]
    scheduler: Mapping[str, Any]
    image_size: tuple[int, int] | None = None
    multi_input: bool = False
    splits: Mapping[str, str | None] = field(default_factory=lambda: {"train": "train", "val": "val", "test": "test"})
    data: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

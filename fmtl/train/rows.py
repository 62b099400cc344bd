"""Datasets as tables read a whole batch of rows at a time: ``ds[index_tensor] -> TensorDict``.

The training loop reads a batch as one indexing call (``fmtl.data`` datasets gather every row
in one vectorized operation). A map-style ``torch.utils.data.Dataset`` of single samples is
adapted by :class:`Rows`: it fetches the samples of the batch, collates them with
``torch.utils.data.default_collate`` and names the parts: a sample that is a dict keeps its keys,
an ``(x, y)`` pair becomes ``{"x": x, "y": y}`` (``y`` may itself be a dict of per-task
targets), a lone tensor becomes ``{"x": x}``. ``torch.utils.data.TensorDataset`` is indexed
directly (no per-sample loop).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from tensordict import TensorDict
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import TensorDataset, default_collate

from ..data import as_index

__all__ = ["Rows", "rows", "as_batch"]


def as_batch(sample: Any, size: int) -> TensorDict:
    """A collated batch as a TensorDict with ``batch_size=[size]`` (dict → keys, ``(x, y)`` → ``x``, ``y``).

    Example:
        >>> import torch
        >>> as_batch((torch.zeros(3, 2), {"a": torch.ones(3)}), 3)["y", "a"].shape
        torch.Size([3])
    """
    if isinstance(sample, torch.Tensor):
        sample = {"x": sample}
    elif isinstance(sample, Sequence) and not isinstance(sample, str) and len(sample) in (1, 2):
        sample = dict(zip(("x", "y"), sample, strict=False))
    if not isinstance(sample, Mapping):
        raise TypeError(f"a dataset sample must be a dict, an (x, y) pair or a tensor; got {type(sample).__name__}")
    return TensorDict(dict(sample), [size])


class Rows:
    """A map-style ``torch.utils.data.Dataset`` read a batch at a time: ``Rows(ds)[index] -> TensorDict``.

    Args:
        dataset: any map-style dataset (``len`` and ``dataset[i]`` for one sample).
        collate: how samples become a batch (default ``torch.utils.data.default_collate``).

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> ds = Rows(TensorDataset(torch.arange(10.0).view(5, 2), torch.arange(5.0)))
        >>> b = ds[torch.tensor([4, 0])]
        >>> b["x"].tolist(), b["y"].tolist(), len(ds)
        ([[8.0, 9.0], [0.0, 1.0]], [4.0, 0.0], 5)
    """

    def __init__(self, dataset: TorchDataset, collate: Callable[[list], Any] = default_collate) -> None:
        self.dataset, self.collate = dataset, collate

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: Any) -> TensorDict:
        idx = as_index(index, len(self))
        if isinstance(self.dataset, TensorDataset) and self.collate is default_collate:
            return as_batch(tuple(t[idx] for t in self.dataset.tensors), len(idx))
        return as_batch(self.collate([self.dataset[i] for i in idx.tolist()]), len(idx))

    def __repr__(self) -> str:
        return f"Rows({type(self.dataset).__name__}, n={len(self)})"


def rows(dataset: Any) -> Any:
    """``dataset`` as a batch-indexable table: :class:`Rows` for a ``torch.utils.data.Dataset``, else itself.

    ``fmtl.data`` datasets and TensorDicts with ``batch_size=[n]`` are already tables.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> type(rows(TensorDataset(torch.zeros(2, 1)))).__name__, type(rows(TensorDict({}, [2]))).__name__
        ('Rows', 'TensorDict')
    """
    return Rows(dataset) if isinstance(dataset, TorchDataset) else dataset

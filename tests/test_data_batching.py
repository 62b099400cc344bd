"""batches(): deterministic, resumable, complete, and rank shards concatenate to the batch."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tensordict import TensorDict

from fmtl.data import (
    Dataset,
    TaskInfo,
    TensorDataset,
    as_index,
    batch_indices,
    batches,
    epoch_permutation,
    load,
    names,
    num_batches,
)


def _rows(n: int) -> TensorDataset:
    table = TensorDict({"i": torch.arange(n), "y": torch.arange(n, dtype=torch.float32)}, [n])
    return TensorDataset(table, ("y",), {"y": TaskInfo("regression", ("mae",), (False,))})


def test_same_seed_and_epoch_same_order_other_epoch_other_order() -> None:
    ds = _rows(50)
    a = [b["i"] for b in batches(ds, 8, seed=1, epoch=2)]
    b = [b["i"] for b in batches(ds, 8, seed=1, epoch=2)]
    c = [b["i"] for b in batches(ds, 8, seed=1, epoch=3)]
    d = [b["i"] for b in batches(ds, 8, seed=2, epoch=2)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(torch.cat(a), torch.cat(c))
    assert not torch.equal(torch.cat(a), torch.cat(d))
    assert torch.equal(torch.cat(a).sort().values, torch.arange(50))  # each row once


def test_no_shuffle_and_drop_last() -> None:
    ds = _rows(10)
    assert [b["i"].tolist() for b in batches(ds, 4, seed=0, shuffle=False)] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9],
    ]
    assert len(list(batches(ds, 4, seed=0, drop_last=True))) == num_batches(10, 4, True) == 2


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 60),
    batch_size=st.integers(1, 17),
    world_size=st.integers(1, 5),
    seed=st.integers(0, 2**31),
    epoch=st.integers(0, 5),
    drop_last=st.booleans(),
)
def test_rank_shards_concatenate_to_the_single_process_batch(
    n: int, batch_size: int, world_size: int, seed: int, epoch: int, drop_last: bool
) -> None:
    ds = _rows(n)
    kw = dict(seed=seed, epoch=epoch, drop_last=drop_last)
    single = [b["i"] for b in batches(ds, batch_size, **kw)]
    ranks = [
        [b["i"] for b in batches(ds, batch_size, rank=r, world_size=world_size, **kw)]
        for r in range(world_size)
    ]
    assert all(len(r) == len(single) for r in ranks)  # every rank takes the same steps
    for k, b in enumerate(single):
        shards = [ranks[r][k] for r in range(world_size)]
        assert torch.equal(torch.cat(shards), b)
        sizes = [len(s) for s in shards]
        assert max(sizes) - min(sizes) <= 1  # balanced, contiguous shards


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), batch_size=st.integers(1, 9), start=st.integers(0, 6))
def test_resume_mid_epoch(n: int, batch_size: int, start: int) -> None:
    full = list(batch_indices(n, batch_size, seed=7, epoch=1))
    resumed = list(batch_indices(n, batch_size, seed=7, epoch=1, start=start))
    assert [x.tolist() for x in resumed] == [x.tolist() for x in full[start:]]


def test_permutation_is_a_permutation_and_reproducible() -> None:
    p = epoch_permutation(1000, seed=5, epoch=9)
    assert torch.equal(p.sort().values, torch.arange(1000))
    assert torch.equal(p, epoch_permutation(1000, seed=5, epoch=9))


def test_bad_rank_and_batch_size() -> None:
    with pytest.raises(ValueError, match="rank"):
        next(batch_indices(4, 2, seed=0, rank=2, world_size=2))
    with pytest.raises(ValueError, match="batch_size"):
        num_batches(4, 0)


def test_as_index_forms() -> None:
    assert as_index(slice(None, None, -1), 3).tolist() == [2, 1, 0]
    assert as_index(range(1, 3), 5).tolist() == [1, 2]
    assert as_index(torch.tensor([[0, -1]]), 4).tolist() == [0, 3]
    with pytest.raises(IndexError):
        as_index([4], 4)


def test_registry_names_and_unknown_name() -> None:
    assert {"qm9", "multimnist", "synthetic", "nyuv2", "cityscapes", "office31", "officehome"} <= (
        set(names())
    )
    with pytest.raises(ValueError, match="valid names: .*qm9"):
        load("imagenet")


def test_tensor_dataset_satisfies_the_protocol() -> None:
    assert isinstance(_rows(3), Dataset)
    assert isinstance(load("synthetic", n=8, n_eval=4, dim=2), Dataset)

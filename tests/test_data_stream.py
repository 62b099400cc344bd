"""The streaming pipeline on fabricated copies: same batches as the in-memory loaders and
``fmtl.data.batches``, with 0 and 2 workers, resumable mid-epoch, equal rank shards,
deterministic augmentation, and per-item decoding (nothing but paths held)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tensordict import TensorDict

from fmtl.data import TaskInfo, batch_indices, batches, load, loader, multi_input_batch_indices
from fmtl.data.augment import nyu_augment
from fmtl.data.fabricate import fabricate
from fmtl.data.images import ImageFiles, normalize_imagenet


@pytest.fixture(scope="module")
def nyu(tmp_path_factory) -> Path:
    return fabricate("nyuv2", tmp_path_factory.mktemp("nyuv2"), n_train=7, n_val=3)


@pytest.fixture(scope="module")
def office(tmp_path_factory) -> Path:
    return fabricate("office31", tmp_path_factory.mktemp("office31"), per_class=4, size=(10, 12))


def _equal(a: TensorDict, b: TensorDict) -> bool:
    keys = sorted(a.keys(True, True), key=str)
    return keys == sorted(b.keys(True, True), key=str) and all(torch.equal(a[k], b[k]) for k in keys)


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_dense_batches_equal_the_in_memory_ones(nyu, workers):
    memory = load("nyuv2", "train", root=nyu)
    files = load("nyuv2", "train", root=nyu, streaming=True)
    assert not any(isinstance(v, torch.Tensor) for v in vars(files).values())  # only paths are held
    stream = loader(files, 3, seed=5, num_workers=workers)
    for epoch in (0, 1):
        got = list(stream.epoch(epoch))
        want = list(batches(memory, 3, seed=5, epoch=epoch))
        assert len(got) == len(want) == len(stream) == 3
        assert all(_equal(a, b) for a, b in zip(got, want, strict=True))
    # resuming at batch b of epoch e yields exactly the remaining batches
    full = list(stream.epoch(4))
    assert all(_equal(a, b) for a, b in zip(list(stream.epoch(4, start=1)), full[1:], strict=True))
    assert list(stream.epoch(4, start=3)) == []
    del stream


def test_rank_shards_concatenate_to_the_single_process_batch(nyu):
    files = load("nyuv2", "train", root=nyu, streaming=True)
    whole = list(loader(files, 4, seed=1, drop_last=True).epoch(2))
    shards = [list(loader(files, 4, seed=1, drop_last=True, rank=r, world_size=2).epoch(2)) for r in (0, 1)]
    for k, batch in enumerate(whole):
        assert [s[k].batch_size[0] for s in shards] == [2, 2]  # equal shares of each global batch
        assert _equal(torch.cat([shards[0][k], shards[1][k]]), batch)
    with pytest.raises(ValueError, match="rank"):
        loader(files, 4, seed=1, rank=2, world_size=2)


@pytest.mark.parametrize("workers", [0, 2])
def test_augmentation_depends_on_seed_epoch_and_row_only(nyu, workers):
    files = load("nyuv2", "train", root=nyu, streaming=True)
    kw = dict(seed=3, transform=nyu_augment, sample_seeds=True)
    a = list(loader(files, 3, num_workers=workers, **kw).epoch(1))
    b = list(loader(files, 2, **kw).epoch(1))  # other batching, main process
    rows_a = torch.cat(list(batch_indices(7, 3, seed=3, epoch=1)))
    rows_b = torch.cat(list(batch_indices(7, 2, seed=3, epoch=1)))
    by_row_a = {int(r): i for i, r in enumerate(rows_a)}
    cat_a, cat_b = torch.cat(a), torch.cat(b)
    for j, r in enumerate(rows_b.tolist()):
        assert _equal(cat_a[by_row_a[r]], cat_b[j])
    assert cat_a["seed"].unique().numel() == 7
    plain = torch.cat(list(loader(files, 3, seed=3).epoch(1)))
    assert not torch.equal(plain["x"], cat_a["x"])
    again = torch.cat(list(loader(files, 3, num_workers=workers, **kw).epoch(2)))
    assert not torch.equal(again["x"], torch.cat(list(loader(files, 3, **kw).epoch(1)))["x"])


def test_nyu_augment_matches_a_hand_rolled_scale_crop_flip():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 12, 15, generator=g)
    seg = torch.randint(-1, 13, (12, 15), generator=g)
    depth = torch.rand(1, 12, 15, generator=g) + 1
    normal = torch.nn.functional.normalize(torch.randn(3, 12, 15, generator=g), dim=0)
    sample = TensorDict({"x": x, "y": {"segmentation": seg, "depth": depth, "normal": normal}}, [])
    seen_scales, flips = set(), set()
    for s in range(40):
        gen = torch.Generator().manual_seed(s)
        out = nyu_augment(sample, gen)
        # replay the draws: scale index, crop corner, flip
        gen = torch.Generator().manual_seed(s)
        sc = (1.0, 1.2, 1.5)[int(torch.randint(3, (1,), generator=gen))]
        h, w = int(12 / sc), int(15 / sc)
        i = int(torch.randint(12 - h + 1, (1,), generator=gen))
        j = int(torch.randint(15 - w + 1, (1,), generator=gen))
        flip = bool(torch.rand((), generator=gen) < 0.5)
        seen_scales.add(sc)
        flips.add(flip)
        up = torch.nn.functional.interpolate
        ref_d = up(depth[None, :, i : i + h, j : j + w], size=(12, 15), mode="nearest")[0] / sc
        ref_n = up(normal[None, :, i : i + h, j : j + w], size=(12, 15), mode="bilinear", align_corners=True)[0]
        ref_s = up(seg[None, None, i : i + h, j : j + w].float(), size=(12, 15), mode="nearest")[0, 0].long()
        if flip:
            ref_d, ref_n, ref_s = ref_d.flip(-1), ref_n.flip(-1), ref_s.flip(-1)
            ref_n = torch.cat([-ref_n[:1], ref_n[1:]])
        torch.testing.assert_close(out["y", "depth"], ref_d)
        torch.testing.assert_close(out["y", "normal"], ref_n)
        assert torch.equal(out["y", "segmentation"], ref_s)
        assert set(out["y", "segmentation"].unique().tolist()) <= set(seg.unique().tolist())
    assert seen_scales == {1.0, 1.2, 1.5} and flips == {True, False}


@pytest.mark.parametrize("workers", [0, 2])
def test_multi_input_stream_follows_the_multi_input_order(office, workers):
    files = load("office31", "train", root=office, image_size=8, streaming=True)
    memory = load("office31", "train", root=office, image_size=8, cache=False)
    stream = loader(files, 4, seed=2, num_workers=workers, sample_seeds=True)
    got = list(stream.epoch(0))
    order = list(multi_input_batch_indices(files.sizes, 4, seed=2, epoch=0))
    assert len(got) == len(order) == len(stream)
    for batch, rows in zip(got, order, strict=True):
        for d in files.tasks:
            torch.testing.assert_close(batch[d, "x"], normalize_imagenet(memory.images[d][rows[d]]))
            assert torch.equal(batch[d, "y"], memory.labels[d][rows[d]])
    assert got[0]["amazon", "seed"].shape == (4,)
    assert not torch.equal(got[0]["amazon", "seed"], got[0]["dslr", "seed"])  # tasks get their own seeds
    del stream


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 13), min_size=1, max_size=4),
    b=st.integers(1, 6),
    drop_last=st.booleans(),
    epoch=st.integers(0, 3),
    start=st.integers(0, 4),
)
def test_multi_input_order(sizes, b, drop_last, epoch, start):
    sz = {f"t{i}": n for i, n in enumerate(sizes)}
    full = list(multi_input_batch_indices(sz, b, seed=0, epoch=epoch, drop_last=drop_last))
    n_max = max(sizes)
    assert len(full) == (n_max // b if drop_last else -(-n_max // b))
    for t, n in sz.items():
        stream = torch.cat([k[t] for k in full]) if full else torch.zeros(0, dtype=torch.long)
        # each permutation cycle of task t visits its rows once; batches all have the same size
        for c in range(0, len(stream), n):
            chunk = stream[c : c + n]
            assert chunk.unique().numel() == chunk.numel() and int(chunk.max()) < n
        assert all(k[t].numel() == full[i]["t0"].numel() for i, k in enumerate(full))
    assert all({t: r.tolist() for t, r in a.items()} == {t: r.tolist() for t, r in c.items()}
               for a, c in zip(list(multi_input_batch_indices(sz, b, seed=0, epoch=epoch, drop_last=drop_last,
                                                              start=start)), full[start:], strict=True))  # fmt: skip
    shards = [list(multi_input_batch_indices(sz, b, seed=0, epoch=epoch, drop_last=drop_last, rank=r, world_size=2))
              for r in (0, 1)]  # fmt: skip
    for k, batch in enumerate(full):
        for t in sz:
            assert torch.equal(torch.cat([shards[0][k][t], shards[1][k][t]]), batch[t])


def test_image_files_decode_per_item_and_name_bad_files(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not an image")

    ds = ImageFiles([(tmp_path / "bad.jpg", 0)], 4, "a", TaskInfo("classification", ("accuracy",), (True,)))
    with pytest.raises(OSError, match="bad.jpg"):
        ds[[0]]


def test_pinned_batches_when_cuda_is_available(nyu):
    if not torch.cuda.is_available():
        stream = loader(load("nyuv2", "train", root=nyu, streaming=True), 2, seed=0)
        assert stream.pin_memory is False
        pytest.skip("no CUDA: pinned memory is off by default")
    stream = loader(load("nyuv2", "train", root=nyu, streaming=True), 2, seed=0, num_workers=2)
    batch = next(iter(stream.epoch(0)))
    assert batch["x"].is_pinned() and batch["y", "depth"].is_pinned()

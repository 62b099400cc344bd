"""The streaming pipeline on fabricated copies: same batches as the in-memory loaders and
``fmtl.data.batches``, with 0 and 2 workers, resumable mid-epoch, equal rank shards,
deterministic augmentation, and per-item decoding (nothing but paths held). Office-31 / Office-Home
as ``fmtl train`` streams them by default: bitwise the batches of the in-memory cache through the
training loop's reader, memory that does not grow with the dataset, one-line option errors."""

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
from fmtl.data.office import OfficeFiles
from fmtl.train import problems
from fmtl.train.cli import main
from fmtl.train.config import DEFAULTS
from fmtl.train.loop import train_batches
from fmtl.train.problem import SPLITS
from fmtl.train.problems.office import _splits
from fmtl.train.world import World


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


# ------------------------------------------------- Office streamed by fmtl train (the default)

TINY_OFFICE = {"layers": [1], "widths": [2], "hidden": 4, "stem": "cifar"}


def _problem(root: Path, **data):
    cfg = problems.resolve({**DEFAULTS, "benchmark": "office31", "batch_size": 4, "model": TINY_OFFICE,
                            "data": {"root": str(root), "image_size": 8, **data}})  # fmt: skip
    return problems.build(cfg), cfg


def _world(rank: int = 0, size: int = 1) -> World:
    return World(rank, size, None, torch.device("cpu"))


def test_streaming_is_the_default_and_the_cache_is_opt_in(office, tmp_path):
    streamed, _ = _problem(office)
    cached, _ = _problem(office, cache=True, cache_dir=str(tmp_path / "cache"))
    assert all(isinstance(streamed.splits[s], OfficeFiles) for s in SPLITS)
    assert streamed.stream == {"num_workers": 0} and cached.stream is None
    assert list((tmp_path / "cache").glob("office31_*.pt"))  # the opt-in cache is written where asked


def test_streamed_batches_equal_the_cached_ones_bitwise(office, tmp_path):
    files = _splits("office31", {"root": str(office), "image_size": 8})
    memory = _splits("office31", {"root": str(office), "image_size": 8, "cache": True,
                                  "cache_dir": str(tmp_path)})  # fmt: skip
    for s in SPLITS:
        assert len(files[s]) == len(memory[s]) and files[s].sizes == memory[s].sizes
        assert _equal(files[s][torch.arange(len(files[s]))], memory[s][torch.arange(len(memory[s]))])
    # and through the training loop's reader: the DataLoader path against the in-process one
    streamed, cfg = _problem(office)
    cached, _ = _problem(office, cache=True, cache_dir=str(tmp_path))
    for epoch in (0, 1):
        got = list(train_batches(streamed, cfg, _world(), epoch, 0, False))
        want = list(train_batches(cached, cfg, _world(), epoch, 0, False))
        assert len(got) == len(want) >= 2 and all(_equal(a, b) for a, b in zip(got, want, strict=True))


@pytest.mark.parametrize("workers", [0, 2])
def test_workers_do_not_change_the_batches(office, workers):
    files = load("office31", "train", root=office, image_size=8, streaming="aligned")
    memory = load("office31", "train", root=office, image_size=8, cache=False)
    stream = loader(files, 4, seed=3, num_workers=workers)
    for epoch in (0, 2):
        got = list(stream.epoch(epoch))
        want = list(batches(memory, 4, seed=3, epoch=epoch))
        assert len(got) == len(want) == len(stream) and all(_equal(a, b) for a, b in zip(got, want, strict=True))
    del stream


def test_a_resumed_epoch_sees_the_remaining_batches(office):
    problem, cfg = _problem(office, workers=2)
    full = list(train_batches(problem, cfg, _world(), 4, 0, False))
    for start in range(len(full) + 1):
        rest = list(train_batches(problem, cfg, _world(), 4, start, False))
        assert len(rest) == len(full) - start and all(_equal(a, b) for a, b in zip(rest, full[start:], strict=True))


def test_rank_shards_are_equal_and_concatenate_to_the_global_batch(office):
    problem, cfg = _problem(office)
    whole = list(train_batches(problem, cfg, _world(), 1, 0, True))
    shards = [list(train_batches(problem, cfg, _world(r, 2), 1, 0, True)) for r in (0, 1)]
    assert len(whole) == len(shards[0]) == len(shards[1]) >= 1
    for k, batch in enumerate(whole):
        assert [s[k].batch_size[0] for s in shards] == [2, 2]
        assert _equal(torch.cat([shards[0][k], shards[1][k]]), batch)


def _arrays(obj, seen=None) -> list:
    """Every tensor or array reachable from ``obj``'s attributes, dicts and lists."""
    import numpy as np

    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor | np.ndarray):
        return [obj]
    if isinstance(obj, dict):
        return [a for v in obj.values() for a in _arrays(v, seen)]
    if isinstance(obj, list | tuple):
        return [a for v in obj for a in _arrays(v, seen)]
    return [a for v in vars(obj).values() for a in _arrays(v, seen)] if hasattr(obj, "__dict__") else []


def test_the_streamed_dataset_holds_no_pixels_whatever_its_size(tmp_path):
    held = {}
    for per_class in (2, 6):
        root = fabricate("office31", tmp_path / str(per_class), per_class=per_class, size=(10, 12))
        ds = load("office31", "train", root=root, image_size=8, streaming="aligned")
        arrays = _arrays(ds)
        # only the labels: one int64 per image, no decoded uint8/float pixels
        assert all(a.dtype == torch.long and a.ndim == 1 for a in arrays)
        assert sum(a.numel() for a in arrays) == sum(ds.sizes.values())
        held[per_class] = sum(a.numel() * a.element_size() for a in arrays)
        assert ds[[0]]["amazon", "x"].shape == (1, 3, 8, 8)  # the pixels are decoded when asked for
    memory = load("office31", "train", root=tmp_path / "6", image_size=8, cache=False)
    pixels = sum(a.numel() * a.element_size() for a in _arrays(memory))
    assert held[6] * 8 < pixels  # the in-memory table, for scale: its bytes are the decoded images


@pytest.mark.parametrize(("option", "message"), [
    ("workers=-1", "--data workers: input should be greater than or equal to 0 (got -1)"),
    ("image_size=0", "--data image_size: input should be greater than or equal to 1 (got 0)"),
    ("cache=maybe", "--data cache: input should be a valid boolean (got 'maybe')"),
    ("cache_dir=/tmp/x", "office31: --data cache_dir applies to cache=true only"),
])  # fmt: skip
def test_bad_streaming_options_are_one_line_errors(office, tmp_path, capsys, option, message):
    assert main(["train", "--benchmark", "office31", "--data", f"root={office}", "--data", option, "--quiet",
                 "--stl", "none", "--out", str(tmp_path / "run")]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "run").exists()

"""Office-31 / Office-Home streamed from the image files (the default of ``fmtl train``): bitwise the
batches of the in-memory cache, the same with 0 or 2 DataLoader workers, resumable mid-epoch, equal
rank shards, only file lists held (memory does not grow with the dataset), one-line option errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensordict import TensorDict

from fmtl.data import batches, load, loader
from fmtl.data.fabricate import fabricate
from fmtl.data.office import OfficeFiles, office_files
from fmtl.train import problems
from fmtl.train.cli import main
from fmtl.train.config import DEFAULTS
from fmtl.train.loop import train_batches
from fmtl.train.problem import SPLITS
from fmtl.train.problems.office import _splits
from fmtl.train.world import World

TINY = {"layers": [1], "widths": [2], "hidden": 4, "stem": "cifar"}


@pytest.fixture(scope="module")
def office(tmp_path_factory) -> Path:
    return fabricate("office31", tmp_path_factory.mktemp("office31"), per_class=4, size=(10, 12))


def _equal(a: TensorDict, b: TensorDict) -> bool:
    keys = sorted(a.keys(True, True), key=str)
    return keys == sorted(b.keys(True, True), key=str) and all(torch.equal(a[k], b[k]) for k in keys)


def _problem(root: Path, **data):
    cfg = problems.resolve({**DEFAULTS, "benchmark": "office31", "batch_size": 4, "model": TINY,
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
    files = office_files("train", office, name="office31", image_size=8)
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
        ds = office_files("train", root, name="office31", image_size=8)
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

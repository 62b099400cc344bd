"""Fabricated copies are in the real layouts: every loader reads them, in memory and streamed alike,
and the paper-default structures are complete and consistent with the loaders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fmtl.data import MultiInputDataset, load
from fmtl.data.dense import PAPER_DEFAULTS as DENSE_DEFAULTS
from fmtl.data.fabricate import NAMES, fabricate
from fmtl.data.multimnist import PAPER_DEFAULTS as MNIST_DEFAULTS
from fmtl.data.office import PAPER_DEFAULTS as OFFICE_DEFAULTS

ALL_DEFAULTS = {**DENSE_DEFAULTS, **OFFICE_DEFAULTS, **MNIST_DEFAULTS}


@pytest.mark.parametrize("name", ["nyuv2", "cityscapes"])
def test_dense_copies_load_with_valid_targets(tmp_path: Path, name: str) -> None:
    root = fabricate(name, tmp_path / name, n_train=3, n_val=2, size=(8, 12))
    assert (root / "train" / "image" / "2.npy").is_file() and (root / "val" / "depth" / "1.npy").is_file()
    assert (root / "train" / "normal").is_dir() == (name == "nyuv2")
    for split, n in (("train", 3), ("val", 2), ("test", 2)):
        ds = load(name, split, root=root)
        streamed = load(name, split, root=root, streaming=True)
        assert len(ds) == len(streamed) == n
        a, b = ds[[1, 0]], streamed[[1, 0]]
        assert all(torch.equal(a[k], b[k]) for k in a.keys(True, True))
        seg = a["y", "segmentation"]
        classes = ds.task_info["segmentation"].num_classes
        assert seg.min() == -1 and seg.max() == classes - 1
        assert (a["y", "depth"] == 0).any() and (a["y", "depth"] > 0).any()
        if name == "nyuv2":
            norms = a["y", "normal"].norm(dim=1)
            assert ((norms - 1).abs() < 1e-5).logical_or(norms == 0).all() and (norms == 0).any()


def test_cityscapes_label_7_directory(tmp_path: Path) -> None:
    root = fabricate("cityscapes", tmp_path / "c", label_dir="label_7")
    assert load("cityscapes", "train", root=root, streaming=True)[[0]]["y", "segmentation"].shape == (1, 16, 16)


@pytest.mark.parametrize("name,lists", [("office31", False), ("officehome", False), ("officehome", True)])
def test_office_copies_load_in_memory_and_streamed(tmp_path: Path, name: str, lists: bool) -> None:
    root = fabricate(name, tmp_path / name, per_class=5, size=(9, 11), lists=lists)
    if name == "office31":
        assert (root / "amazon" / "images" / "bike" / "frame_0001.jpg").is_file()
    else:
        assert (root / "Real World" / "Backpack" / "00001.jpg").is_file()
        assert (root / "Real_World_val.txt").is_file() == lists
    for split, n in (("train", 9), ("val", 3), ("test", 3)):
        memory = load(name, split, root=root, image_size=6, cache=False)
        files = load(name, split, root=root, image_size=6, streaming=True)
        assert isinstance(files, MultiInputDataset) and files.sizes == memory.sizes
        assert set(memory.sizes.values()) == {n}
        for d in files.tasks:
            got = files[{d: torch.arange(n)}][d]
            assert torch.equal(got["y"], memory.labels[d])
            ref = memory[torch.arange(n)][d, "x"]
            torch.testing.assert_close(got["x"], ref)


def test_fabricate_refuses_a_non_empty_root_and_unknown_names(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        fabricate("nyuv2", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    with pytest.raises(ValueError, match="valid names"):
        fabricate("imagenet", tmp_path / "x")
    assert set(NAMES) == {"nyuv2", "cityscapes", "office31", "officehome"}


@pytest.mark.parametrize("key", sorted(ALL_DEFAULTS))
def test_paper_defaults_are_complete(key: str) -> None:
    d = ALL_DEFAULTS[key]
    assert d.tasks and set(d.task_info) == set(d.tasks) == set(d.losses)
    for info in d.task_info.values():
        assert len(info.metrics) == len(info.higher_is_better) >= 1
    assert d.batch_size > 0 and d.epochs > 0 and d.optimizer["name"] in ("adam", "sgd")
    assert d.scheduler["name"] in ("none", "step")
    assert d.model["builder"] and d.data.get("source")
    import fmtl.losses as L
    import fmtl.models as fm

    assert all(hasattr(L, loss) for loss in d.losses.values())
    assert hasattr(fm, d.model["builder"])


def test_paper_defaults_match_the_paper() -> None:
    nyu, city, o31 = DENSE_DEFAULTS["nyuv2"], DENSE_DEFAULTS["cityscapes"], OFFICE_DEFAULTS["office31"]
    assert (nyu.batch_size, city.batch_size, DENSE_DEFAULTS["nyuv2_segnet"].batch_size) == (8, 64, 2)
    assert (nyu.image_size, city.image_size, o31.image_size) == ((288, 384), (128, 256), (224, 224))
    assert nyu.epochs == city.epochs == 200 and o31.epochs == OFFICE_DEFAULTS["officehome"].epochs == 100
    assert nyu.optimizer == {"name": "adam", "lr": 1e-4, "weight_decay": 1e-5} == o31.optimizer
    assert nyu.scheduler == {"name": "step", "step_size": 100, "gamma": 0.5}
    assert o31.multi_input and not nyu.multi_input and o31.batch_size == 64
    assert nyu.task_info["normal"].higher_is_better == (False, False, True, True, True)
    assert city.tasks == ("segmentation", "depth") and city.task_info["segmentation"].num_classes == 7
    assert OFFICE_DEFAULTS["officehome"].task_info["Art"].num_classes == 65

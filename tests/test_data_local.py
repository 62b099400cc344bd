"""Loaders for users' local copies: NYUv2/Cityscapes (.npy) and Office-31/Office-Home (images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fmtl.data import batches, load


def _write_dense(root: Path, split: str, n: int, normal: bool, label_dir: str = "label") -> None:
    rng = np.random.default_rng(0)
    dirs = ["image", label_dir, "depth"] + (["normal"] if normal else [])
    for d in dirs:
        (root / split / d).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        np.save(root / split / "image" / f"{i}.npy", rng.random((6, 8, 3), dtype=np.float32) + i)
        np.save(
            root / split / label_dir / f"{i}.npy", rng.integers(-1, 7, (6, 8)).astype(np.float32)
        )
        np.save(root / split / "depth" / f"{i}.npy", rng.random((6, 8, 1), dtype=np.float32))
        if normal:
            v = rng.normal(size=(6, 8, 3)).astype(np.float32)
            np.save(
                root / split / "normal" / f"{i}.npy", v / np.linalg.norm(v, axis=-1, keepdims=True)
            )


def test_nyuv2_layout_shapes_and_tasks(tmp_path: Path) -> None:
    _write_dense(tmp_path, "train", 3, normal=True)
    ds = load("nyuv2", "train", root=tmp_path)
    assert len(ds) == 3 and ds.tasks == ("segmentation", "depth", "normal")
    assert ds.task_info["segmentation"].num_classes == 13
    assert ds.task_info["normal"].higher_is_better == (False, False, True, True, True)
    b = ds[[2, 0]]
    assert b["x"].shape == (2, 3, 6, 8) and b["x"].dtype == torch.float32
    assert b["y", "segmentation"].shape == (2, 6, 8) and b["y", "segmentation"].dtype == torch.long
    assert b["y", "depth"].shape == (2, 1, 6, 8) and b["y", "normal"].shape == (2, 3, 6, 8)
    img = np.load(tmp_path / "train" / "image" / "2.npy")
    torch.testing.assert_close(b["x"][0], torch.from_numpy(img).permute(2, 0, 1))  # HWC → CHW
    small = load("nyuv2", "train", root=tmp_path, resize=(3, 4))
    assert small[[0]]["x"].shape == (1, 3, 3, 4) and small[[0]]["y", "segmentation"].shape == (
        1,
        3,
        4,
    )
    assert set(small.y["segmentation"].unique().tolist()) <= set(range(-1, 7))


def test_cityscapes_accepts_label_7_and_test_reads_val(tmp_path: Path) -> None:
    _write_dense(tmp_path, "val", 2, normal=False, label_dir="label_7")
    ds = load("cityscapes", "test", root=tmp_path)
    assert ds.tasks == ("segmentation", "depth") and ds.task_info["segmentation"].num_classes == 7
    assert [b.batch_size[0] for b in batches(ds, 1, seed=0)] == [1, 1]


def test_dense_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="root="):
        load("nyuv2")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "train" / "image")):
        load("nyuv2", root=tmp_path)
    _write_dense(tmp_path, "train", 2, normal=False)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "train" / "normal")):
        load("nyuv2", root=tmp_path)
    _write_dense(tmp_path, "train", 2, normal=True)
    (tmp_path / "train" / "depth" / "1.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"depth/1\.npy"):
        load("nyuv2", root=tmp_path)


def _write_office(root: Path, domains: dict[str, int], classes=("bike", "mug")) -> None:
    rng = np.random.default_rng(1)
    for domain, per_class in domains.items():
        for c in classes:
            d = root / domain / c
            d.mkdir(parents=True)
            for i in range(per_class):
                colour = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(colour).save(d / f"{i}.{'png' if i % 2 else 'jpg'}")


def test_office31_split_sizes_disjoint_and_batches(tmp_path: Path) -> None:
    _write_office(tmp_path, {"amazon": 10, "dslr": 5, "webcam": 5})
    kw = dict(root=tmp_path, image_size=4, cache_dir=tmp_path / "cache")
    parts = {s: load("office31", s, **kw) for s in ("train", "val", "test")}
    assert [parts[s].sizes["amazon"] for s in parts] == [12, 4, 4]
    assert [parts[s].sizes["dslr"] for s in parts] == [6, 2, 2]
    train = parts["train"]
    assert train.tasks == ("amazon", "dslr", "webcam") and len(train) == 12
    b = train[torch.arange(12)]
    assert b["amazon", "x"].shape == (12, 3, 4, 4) and b["dslr", "y"].dtype == torch.long
    assert b["dslr", "mask"].sum() == 6  # each dslr sample exactly once
    assert torch.equal(b["dslr", "y"][6:], b["dslr", "y"][:6])  # smaller domains cycle
    again = load("office31", "train", **kw)  # from the cache
    assert torch.equal(again.images["webcam"], train.images["webcam"])


def test_officehome_list_files_and_spaces(tmp_path: Path) -> None:
    _write_office(tmp_path, {"Art": 5, "Clipart": 5, "Product": 5, "Real World": 5})
    (tmp_path / "Art_train.txt").write_text("Art/mug/1.png 1\nArt/bike/0.jpg 0\n")
    ds = load("officehome", "train", root=tmp_path, image_size=4, cache=False)
    assert ds.sizes["Art"] == 2 and ds.labels["Art"].tolist() == [1, 0]
    assert ds.sizes["Real_World"] == 6 and ds.num_classes == 2
    (tmp_path / "Art_train.txt").write_text("Art/mug/99.png 1\n")
    with pytest.raises(FileNotFoundError, match="99.png"):
        load("officehome", "train", root=tmp_path, image_size=4, cache=False)


def test_office_missing_domain(tmp_path: Path) -> None:
    _write_office(tmp_path, {"amazon": 5, "webcam": 5})
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "dslr")):
        load("office31", root=tmp_path, image_size=4, cache=False)

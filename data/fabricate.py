"""Tiny fabricated copies of NYUv2, Cityscapes, Office-31 and Office-Home in their real on-disk layouts.

For tests and smoke runs where the real data cannot be had: ``fabricate(name, root)`` writes a
handful of small random samples per split exactly where the loaders (and LibMTL) look for them:

* ``nyuv2`` / ``cityscapes`` — MTAN/LibMTL's preprocessed ``.npy`` files:
  ``root/{train,val}/image/{i}.npy`` (float32 H×W×3 in [0, 1]), ``label/{i}.npy`` (float32 H×W
  class ids, −1 = ignore; 13 / 7 classes), ``depth/{i}.npy`` (float32 H×W×1, 0 = missing) and for
  NYUv2 ``normal/{i}.npy`` (float32 H×W×3 unit vectors, 0 = missing);
* ``office31`` — ``root/{amazon,dslr,webcam}/images/{class}/frame_{i:04d}.jpg``;
* ``officehome`` — ``root/{Art,Clipart,Product,Real World}/{class}/{i:05d}.jpg`` (the real
  "Real World" spelling with a space); with ``lists=True`` also LibMTL's split files
  ``root/{domain}_{split}.txt`` (``relative/path label`` lines, 60/20/20).

Values are random but valid (unit normals, masked pixels present, every class used), so losses,
metrics and the loaders' masking all have something to do.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["fabricate", "NAMES"]

NAMES = ("nyuv2", "cityscapes", "office31", "officehome")
_DOMAINS = {"office31": ("amazon", "dslr", "webcam"), "officehome": ("Art", "Clipart", "Product", "Real World")}
_CLASSES = {"office31": ("back_pack", "bike", "calculator"), "officehome": ("Alarm_Clock", "Backpack", "Batteries")}


def _dense(root: Path, name: str, n: dict[str, int], size: tuple[int, int], rng: np.random.Generator,
           label_dir: str) -> None:  # fmt: skip
    classes = 13 if name == "nyuv2" else 7
    h, w = size
    for split, count in n.items():
        dirs = ["image", label_dir, "depth"] + (["normal"] if name == "nyuv2" else [])
        for d in dirs:
            (root / split / d).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            np.save(root / split / "image" / f"{i}.npy", rng.random((h, w, 3), dtype=np.float32))
            label = rng.integers(-1, classes, (h, w)).astype(np.float32)
            label.flat[: classes + 1] = np.arange(-1, classes)  # every class (and ignore) appears
            np.save(root / split / label_dir / f"{i}.npy", label)
            depth = (rng.random((h, w, 1), dtype=np.float32) * 9 + 0.5) * (rng.random((h, w, 1)) > 0.15)
            np.save(root / split / "depth" / f"{i}.npy", depth.astype(np.float32))
            if name == "nyuv2":
                v = rng.normal(size=(h, w, 3)).astype(np.float32)
                v /= np.linalg.norm(v, axis=-1, keepdims=True)
                v[: max(h // 8, 1)] = 0.0  # missing normals (LibMTL masks Σ_c n = 0)
                np.save(root / split / "normal" / f"{i}.npy", v)


def _office(root: Path, name: str, per_class: int, size: tuple[int, int], rng: np.random.Generator,
            lists: bool) -> None:  # fmt: skip
    from PIL import Image

    for domain in _DOMAINS[name]:
        base = root / domain / "images" if name == "office31" else root / domain
        rows = []
        for label, c in enumerate(_CLASSES[name]):
            (base / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                fname = f"frame_{i + 1:04d}.jpg" if name == "office31" else f"{i + 1:05d}.jpg"
                pixels = rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(base / c / fname, quality=90)
                rows.append(f"{(base / c / fname).relative_to(root).as_posix()} {label}")
        if lists:
            order = rng.permutation(len(rows))
            n = len(rows)
            cuts = {"train": (0, round(0.6 * n)), "val": (round(0.6 * n), round(0.8 * n)), "test": (round(0.8 * n), n)}
            key = domain.replace(" ", "_")
            for split, (lo, hi) in cuts.items():
                (root / f"{key}_{split}.txt").write_text("".join(rows[j] + "\n" for j in order[lo:hi]))


def fabricate(
    name: str,
    root: str | os.PathLike[str],
    *,
    n_train: int = 4,
    n_val: int = 2,
    size: tuple[int, int] = (16, 16),
    per_class: int = 5,
    label_dir: str = "label",
    lists: bool = False,
    seed: int = 0,
) -> Path:
    """Write a tiny copy of dataset ``name`` under ``root`` (module docstring); returns ``root``.

    Args:
        name: one of :data:`NAMES`.
        root: an empty or missing directory.
        n_train, n_val: samples of the dense datasets' ``train`` and ``val`` splits.
        size: (H, W) of every image.
        per_class: images per class and domain (Office).
        label_dir: ``"label"`` (LibMTL) or ``"label_7"`` (MTAN's Cityscapes).
        lists: also write LibMTL's Office split lists.

    Raises:
        ValueError: an unknown name, or a ``root`` that already holds files (nothing is written).

    Example:
        >>> import tempfile
        >>> from fmtl.data import load
        >>> root = fabricate("nyuv2", tempfile.mkdtemp(), n_train=3)
        >>> ds = load("nyuv2", "train", root=root)
        >>> len(ds), ds[[0]]["y", "normal"].shape
        (3, torch.Size([1, 3, 16, 16]))
    """
    if name not in NAMES:
        raise ValueError(f"cannot fabricate {name!r}; valid names: {', '.join(NAMES)}")
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"{root} is not empty: fabricate writes only into an empty or new directory")
    rng = np.random.default_rng(seed)
    if name in ("nyuv2", "cityscapes"):
        _dense(root, name, {"train": n_train, "val": n_val}, size, rng, label_dir)
    else:
        _office(root, name, per_class, size, rng, lists)
    return root

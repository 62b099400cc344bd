"""Office-31 and Office-Home from a local copy: one classification task per domain.

Layout: ``root/{domain}/{class}/{image}`` (Office-31's extra ``{domain}/images/`` level is
accepted; Office-Home's ``Real World`` may be spelled ``Real_World``). Classes are the sorted
class-directory names of the first domain. Splits, per domain:

* if ``root/{domain}_{split}.txt`` exists (LibMTL's lists), its ``relative/path label`` lines;
* otherwise a 60 / 20 / 20 train / val / test split of the domain's images (sorted by path)
  from the permutation ``torch.Generator().manual_seed(epoch_seed(seed, d))`` for domain d.

Images are decoded once with Pillow, resized to ``image_size``² (bilinear) and kept as uint8;
batches are ImageNet-normalised float32.

Batches: the domains have different sizes, so ``len(ds) = max_d n_d`` and ``ds[idx]`` holds one
sub-TensorDict per domain, each with ``batch_size=[B]``: ``x`` float32 [B, 3, S, S], ``y`` long
[B] and ``mask`` bool [B]. Domain d serves its sample ``idx mod n_d`` (smaller domains cycle, as
LibMTL's multi-input loaders do) and ``mask = idx < n_d`` is True exactly once per sample over
``idx = 0 … len(ds)-1`` — use it to evaluate each sample once.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from tensordict import TensorDict

from .base import Index, TaskInfo, as_index
from .batching import epoch_seed
from .cache import cache_dir as default_cache_dir
from .cache import load_tensors, save_tensors

__all__ = ["DOMAINS", "OfficeDataset", "load_office"]

DOMAINS = {
    "office31": ("amazon", "dslr", "webcam"),
    "officehome": ("Art", "Clipart", "Product", "Real_World"),
}
_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
_SPLIT_FRACTIONS = {"train": (0.0, 0.6), "val": (0.6, 0.8), "test": (0.8, 1.0)}


class OfficeDataset:
    """Per-domain image tables; ``ds[idx]`` is ``{domain: {"x", "y", "mask"}}`` (see module)."""

    def __init__(self, name: str, images: dict[str, torch.Tensor], labels: dict[str, torch.Tensor],
                 num_classes: int, normalize: bool = True) -> None:  # fmt: skip
        self.name, self.images, self.labels = name, images, labels
        self.tasks = tuple(images)
        self.num_classes, self.normalize = num_classes, normalize
        info = TaskInfo("classification", ("accuracy",), (True,), num_classes=num_classes)
        self.task_info = dict.fromkeys(self.tasks, info)
        self.sizes = {d: len(v) for d, v in labels.items()}

    def __len__(self) -> int:
        return max(self.sizes.values())

    def __repr__(self) -> str:
        return f"OfficeDataset({self.name!r}, sizes={self.sizes})"

    def __getitem__(self, index: Index) -> TensorDict:
        rows = as_index(index, len(self))
        out = {}
        for d in self.tasks:
            own = rows % self.sizes[d]
            x = self.images[d][own].float().div_(255.0)
            if self.normalize:
                x = (x - _MEAN) / _STD
            out[d] = TensorDict(
                {"x": x, "y": self.labels[d][own], "mask": rows < self.sizes[d]}, [len(rows)]
            )
        return TensorDict(out, batch_size=[len(rows)])


def _domain_dir(root: Path, domain: str) -> Path:
    for cand in (domain, domain.replace("_", " ")):
        d = root / cand
        if d.is_dir():
            return d / "images" if (d / "images").is_dir() else d
    raise FileNotFoundError(f"expected the domain directory {root / domain}")


def _listing(root: Path, domain: str, classes: list[str]) -> list[tuple[Path, int]]:
    base = _domain_dir(root, domain)
    out = []
    for label, c in enumerate(classes):
        files = sorted(p for p in (base / c).glob("*") if p.suffix.lower() in _SUFFIXES)
        out.extend((p, label) for p in files)
    if not out:
        raise FileNotFoundError(f"no images under {base}/<class>/")
    return out


def _split_list(root: Path, domain: str, split: str) -> list[tuple[Path, int]] | None:
    path = root / f"{domain}_{split}.txt"
    if not path.is_file():
        return None
    items = []
    for line in path.read_text().splitlines():
        if line.strip():
            rel, label = line.rsplit(maxsplit=1)
            p = root / rel
            if not p.is_file():
                raise FileNotFoundError(f"{path} lists {p}, which does not exist")
            items.append((p, int(label)))
    return items


def _decode(paths: list[Path], size: int) -> torch.Tensor:
    from PIL import Image

    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            out[i] = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def load_office(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    *,
    name: str,
    image_size: int = 224,
    seed: int = 0,
    normalize: bool = True,
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> OfficeDataset:
    """Load split ``split`` of Office-31 (``name="office31"``) or Office-Home (``"officehome"``).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        root: the dataset directory (required).
        image_size: side length S of the resized images.
        seed: seed of the 60/20/20 split (ignored for domains with a list file).
        normalize: ImageNet mean/std normalisation of ``x``.
        cache, cache_dir: cache decoded images (keyed by the file list and size) under
            ``cache_dir`` (default ``$FMTL_CACHE`` or ``~/.cache/fmtl``).

    Example:
        >>> ds = load_office("train", "/data/office31", name="office31")  # doctest: +SKIP
        >>> ds[[0, 1]]["amazon", "x"].shape  # doctest: +SKIP
        torch.Size([2, 3, 224, 224])
    """
    if root is None:
        raise ValueError(f"{name} needs root= (a local copy: root/<domain>/<class>/<image>)")
    if split not in _SPLIT_FRACTIONS:
        raise ValueError(f"{name} split must be train, val or test; got {split!r}")
    root = Path(root)
    domains = DOMAINS[name]
    classes = sorted(p.name for p in _domain_dir(root, domains[0]).iterdir() if p.is_dir())
    items: dict[str, list[tuple[Path, int]]] = {}
    for d_index, domain in enumerate(domains):
        listed = _split_list(root, domain, split)
        if listed is not None:
            items[domain] = listed
            continue
        everything = _listing(root, domain, classes)
        g = torch.Generator().manual_seed(epoch_seed(seed, d_index))
        perm = torch.randperm(len(everything), generator=g).tolist()
        lo, hi = _SPLIT_FRACTIONS[split]
        n = len(everything)
        items[domain] = [everything[i] for i in perm[round(lo * n) : round(hi * n)]]
    for domain in domains:
        if not items[domain]:
            raise ValueError(f"{name}: the {split} split of {domain} is empty")
    key = hashlib.sha1(
        repr([(str(p), y) for d in domains for p, y in items[d]] + [image_size]).encode()
    ).hexdigest()[:16]
    path = default_cache_dir(cache_dir) / f"{name}_{split}_{key}.pt"
    data = load_tensors(path, tuple(f"{d}_{k}" for d in domains for k in "xy")) if cache else None
    if data is None:
        data = {}
        for d in domains:
            data[f"{d}_x"] = _decode([p for p, _ in items[d]], image_size)
            data[f"{d}_y"] = torch.tensor([y for _, y in items[d]], dtype=torch.long)
        if cache:
            save_tensors(path, data)
    images = {d: data[f"{d}_x"] for d in domains}
    labels = {d: data[f"{d}_y"] for d in domains}
    return OfficeDataset(name, images, labels, len(classes), normalize)

"""Office-31 and Office-Home from a local copy: one classification task per domain.

Layout: ``root/{domain}/{class}/{image}`` (Office-31's extra ``{domain}/images/`` level is
accepted; Office-Home's ``Real World`` may be spelled ``Real_World``). Classes are the sorted
class-directory names of the first domain. Splits, per domain:

* if ``root/{domain}_{split}.txt`` exists (LibMTL's lists), its ``relative/path label`` lines;
* otherwise a 60 / 20 / 20 train / val / test split of the domain's images (sorted by path)
  from the permutation ``torch.Generator().manual_seed(epoch_seed(seed, d))`` for domain d.

Three forms of one split (Office-Home at 224² is 2.3 GB decoded):

* :func:`load_office` (``load(name, split, root=…)``): an :class:`OfficeDataset`, every image
  decoded once with Pillow, resized to ``image_size``² (bilinear) and kept as uint8 (cached on
  disk, ``cache=True``); batches are ImageNet-normalised float32;
* ``load(..., streaming="aligned")``: an :class:`OfficeFiles`, the same batches bitwise, decoded from the files
  when a batch is asked for (only the file lists and labels are held): what ``fmtl train``
  streams through :func:`fmtl.data.stream.loader`'s workers by default;
* ``load(..., streaming=True)``: a :class:`~fmtl.data.multi_input.MultiInputDataset` of
  :class:`~fmtl.data.images.ImageFiles`, batches ``{domain: {"x", "y"}}`` with each domain's own
  rows (LibMTL's independent per-domain order, :func:`fmtl.data.multi_input_batch_indices`).

No augmentation: LibMTL's Office transform is resize + normalize only.

Getting the data: Office-31 (Saenko et al., 2010; 4,110 images, 3 domains × 31 classes) and
Office-Home (Venkateswara et al., 2017; 15,500 images, 4 domains × 65 classes) from their
authors' pages; LibMTL's ``examples/office/data_txt`` has the 60/20/20 split lists of the paper
(``{domain}_{split}.txt``, ``relative/path label`` lines; put them in ``root``). Layouts::

    office31/amazon/images/back_pack/frame_0001.jpg   (also dslr/, webcam/)
    officehome/Art/Alarm_Clock/00001.jpg               (also Clipart/, Product/, "Real World"/)

The paper's settings are :data:`PAPER_DEFAULTS` (§4.3).

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

from .base import Index, PaperDefaults, TaskInfo, as_index
from .batching import epoch_seed
from .cache import cache_dir as default_cache_dir
from .cache import load_tensors, save_tensors
from .images import ImageFiles, decode_image, normalize_imagenet
from .multi_input import MultiInputDataset

__all__ = ["DOMAINS", "OfficeDataset", "OfficeFiles", "load_office", "office_items", "PAPER_DEFAULTS"]

DOMAINS = {
    "office31": ("amazon", "dslr", "webcam"),
    "officehome": ("Art", "Clipart", "Product", "Real_World"),
}
_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
_SPLIT_FRACTIONS = {"train": (0.0, 0.6), "val": (0.6, 0.8), "test": (0.8, 1.0)}


class _OfficeTable:
    """What the in-memory and the file-backed Office tables share: sizes, tasks and ``ds[idx]`` (module docstring)."""

    name: str
    labels: dict[str, torch.Tensor]
    normalize: bool

    def _setup(self, name: str, labels: dict[str, torch.Tensor], num_classes: int, normalize: bool) -> None:
        self.name, self.labels = name, labels
        self.tasks = tuple(labels)
        self.num_classes, self.normalize = num_classes, normalize
        info = TaskInfo("classification", ("accuracy",), (True,), num_classes=num_classes)
        self.task_info = dict.fromkeys(self.tasks, info)
        self.sizes = {d: len(v) for d, v in labels.items()}

    def _pixels(self, domain: str, rows: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, S, S] of ``domain``'s images ``rows``."""
        raise NotImplementedError

    def __len__(self) -> int:
        return max(self.sizes.values())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, sizes={self.sizes})"

    def __getitem__(self, index: Index) -> TensorDict:
        rows = as_index(index, len(self))
        out = {}
        for d in self.tasks:
            own = rows % self.sizes[d]
            pixels = self._pixels(d, own)
            x = normalize_imagenet(pixels) if self.normalize else pixels.float() / 255.0
            out[d] = TensorDict({"x": x, "y": self.labels[d][own], "mask": rows < self.sizes[d]}, [len(rows)])
        return TensorDict(out, batch_size=[len(rows)])


class OfficeDataset(_OfficeTable):
    """Per-domain image tables decoded in memory; ``ds[idx]`` is ``{domain: {"x", "y", "mask"}}`` (see module)."""

    def __init__(self, name: str, images: dict[str, torch.Tensor], labels: dict[str, torch.Tensor],
                 num_classes: int, normalize: bool = True) -> None:  # fmt: skip
        self.images = images
        self._setup(name, labels, num_classes, normalize)

    def _pixels(self, domain: str, rows: torch.Tensor) -> torch.Tensor:
        return self.images[domain][rows]


class OfficeFiles(_OfficeTable):
    """The batches of :class:`OfficeDataset`, decoded from the image files when asked (module docstring).

    Holds each domain's file list and labels only: ``ds[idx]`` opens and resizes the batch's
    images one at a time (in a DataLoader worker when streamed with :func:`fmtl.data.loader`), so
    its memory is one batch whatever the dataset's size, and the batch is bitwise the in-memory
    table's (the same :func:`~fmtl.data.images.decode_image` of the same files).

    Example:
        >>> import tempfile
        >>> from fmtl.data.fabricate import fabricate
        >>> root = fabricate("office31", Path(tempfile.mkdtemp()) / "o31", per_class=2, size=(6, 6))
        >>> ds = load_office("train", root, name="office31", image_size=4, streaming="aligned")
        >>> memory = load_office("train", root, name="office31", image_size=4, cache=False)
        >>> b = ds[[3, 0]]
        >>> b["dslr", "x"].shape, torch.equal(b["dslr", "x"], memory[[3, 0]]["dslr", "x"]), ds.sizes["amazon"]
        (torch.Size([2, 3, 4, 4]), True, 4)
    """

    def __init__(self, name: str, items: dict[str, list[tuple[Path, int]]], num_classes: int, image_size: int,
                 normalize: bool = True) -> None:  # fmt: skip
        self.paths = {d: [Path(p) for p, _ in v] for d, v in items.items()}
        self.image_size = int(image_size)
        labels = {d: torch.tensor([int(y) for _, y in v], dtype=torch.long) for d, v in items.items()}
        self._setup(name, labels, num_classes, normalize)

    def _pixels(self, domain: str, rows: torch.Tensor) -> torch.Tensor:
        return _decode([self.paths[domain][i] for i in rows.tolist()], self.image_size)


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
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        out[i] = decode_image(p, size)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def office_items(
    root: str | os.PathLike[str], name: str, split: str, seed: int = 0
) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """The class names and each domain's ``(path, label)`` list of one split (module docstring).

    Example:
        >>> office_items("/data/office31", "office31", "train")  # doctest: +SKIP
        (['back_pack', ...], {'amazon': [(PosixPath('.../frame_0001.jpg'), 0), ...], ...})
    """
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
    return classes, items


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
    streaming: bool | str = False,
) -> OfficeDataset | OfficeFiles | MultiInputDataset:
    """Load split ``split`` of Office-31 (``name="office31"``) or Office-Home (``"officehome"``).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        root: the dataset directory (required).
        image_size: side length S of the resized images.
        seed: seed of the 60/20/20 split (ignored for domains with a list file).
        normalize: ImageNet mean/std normalisation of ``x``.
        cache, cache_dir: cache decoded images (keyed by the file list and size) under
            ``cache_dir`` (default ``$FMTL_CACHE`` or ``~/.cache/fmtl``).
        streaming: ``True``: a per-item-decoding multi-input dataset in LibMTL's per-domain order;
            ``"aligned"``: an :class:`OfficeFiles`, this table's batches decoded per batch (module docstring).

    Example:
        >>> ds = load_office("train", "/data/office31", name="office31")  # doctest: +SKIP
        >>> ds[[0, 1]]["amazon", "x"].shape  # doctest: +SKIP
        torch.Size([2, 3, 224, 224])
    """
    if root is None:
        raise ValueError(f"{name} needs root= (a local copy: root/<domain>/<class>/<image>)")
    domains = DOMAINS[name]
    classes, items = office_items(root, name, split, seed)
    info = TaskInfo("classification", ("accuracy",), (True,), num_classes=len(classes))
    if streaming == "aligned":
        return OfficeFiles(name, {d: items[d] for d in domains}, len(classes), image_size, normalize)
    if streaming not in (True, False):
        raise ValueError(f"{name}: streaming must be False, True or 'aligned'; got {streaming!r}")
    if streaming:
        files = {d: ImageFiles(items[d], image_size, d, info, normalize) for d in domains}
        return MultiInputDataset(files, dict.fromkeys(domains, info))
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


_OFFICE_NOTES = (
    "model: LibMTL's Office encoder, ResNet-18 + GAP + Linear(512, 512)-BN-ReLU-Dropout(0.5); the paper names "
    "only the ResNet-18 and the linear heads",
    "β of DB-MTL chosen by grid search in the paper (§4.1); not a default here",
    "evaluation: each domain's split once (LibMTL), selection on validation Δp",
)


def _office_defaults(name: str, classes: int, domains: tuple[str, ...], where: str, layout: str) -> PaperDefaults:
    info = TaskInfo("classification", ("accuracy",), (True,), num_classes=classes)
    return PaperDefaults(
        benchmark=name,
        section="§4.3 (Implementation Details)",
        tasks=domains,
        task_info=dict.fromkeys(domains, info),
        losses=dict.fromkeys(domains, "cross_entropy"),
        model={"builder": "office_resnet18", "num_classes": classes, "weights": "torchvision resnet18 (ImageNet)"},
        batch_size=64,
        epochs=100,
        optimizer={"name": "adam", "lr": 1e-4, "weight_decay": 1e-5},
        scheduler={"name": "none"},
        image_size=(224, 224),
        multi_input=True,
        data={"source": where, "layout": layout, "splits": "60/20/20 per domain (RLW; LibMTL's data_txt lists)"},
        notes=_OFFICE_NOTES,
    )


#: The paper's Office-31 and Office-Home settings (§4.3): multi-input, ResNet-18, Adam 1e-4.
PAPER_DEFAULTS: dict[str, PaperDefaults] = {
    "office31": _office_defaults("office31", 31, DOMAINS["office31"], "Office-31 (Saenko et al., 2010)",
                                 "root/{amazon,dslr,webcam}/images/<class>/<image>.jpg"),
    "officehome": _office_defaults("officehome", 65, DOMAINS["officehome"], "Office-Home (Venkateswara et al., 2017)",
                                   "root/{Art,Clipart,Product,Real World}/<class>/<image>.jpg"),
}  # fmt: skip

"""The multi-input benchmarks ``office31`` and ``officehome`` (paper §4.3, Tables 4–5): one task per domain.

Data: ``root/{domain}/{class}/{image}`` under ``--data root=DIR`` (:mod:`fmtl.data.office`:
Office-31's ``images/`` level, Office-Home's ``Real World`` spelling, LibMTL's
``{domain}_{split}.txt`` lists when present, else a 60/20/20 split per domain), streamed by
default: every split is an :class:`~fmtl.data.office.OfficeFiles` (file lists and labels only),
whose training batches ``workers=N`` DataLoader worker processes decode, resize to
``image_size``² and prefetch (:func:`fmtl.data.loader`, pinned on CUDA; ``workers=0``: decoded in
the training process) in the order of :func:`fmtl.data.batch_indices` — the same batches, bitwise,
as the in-memory table, for any number of workers, ranks (equal shards) or resumes; validation
and test batches are decoded in the training process. ``cache=true`` decodes every split into
memory once instead (uint8, cached on disk under ``cache_dir``, default ``$FMTL_CACHE``): faster
epochs for the price of the memory (Office-Home at 224² is 2.3 GB). Options: ``image_size``
(default 224), ``seed`` (of the 60/20/20 split, 0 by default and independent of the run's seed),
``normalize``, ``workers``, ``cache``, ``cache_dir``.

Multi-input (LibMTL's ``multi_input``): every domain d has its own images and its own batch
B_d; the encoder runs once per domain's sub-batch and head d scores only domain d
(:meth:`fmtl.train.Problem.from_model` with ``multi_input=True``), so every balancer and
task-gradient strategy applies unchanged. A step draws the same row positions of every domain,
smaller domains cycling (``idx mod n_d``); evaluation scores each domain's split once
(:func:`fmtl.train.evaluate.masked`).

Model: :func:`fmtl.models.office_resnet18` (ResNet-18, LibMTL's hidden layer, one linear head
per domain; ``--model weights=PATH`` for a local torchvision ``resnet18`` state dict, else random
init and a one-line note). HPS only. Loss: cross-entropy; metric: accuracy (↑) per domain.
Settings (§4.3), all defaults: Adam, lr 10⁻⁴, weight decay 10⁻⁵, batch 64, 100 epochs, a constant
learning rate (the paper names no schedule for Office; LibMTL's ``--scheduler`` is off by default
too). The hidden layer's dropout is inactive in training (no per-sample seeds in the batches).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...losses import cross_entropy
from ..evaluate import accuracy, masked
from ..problem import SPLITS, Problem
from .options import accepted, check_options, root_of, weights_note

__all__ = ["build", "register_office", "LAYOUT"]

#: The expected on-disk layout, named in every error about ``root``.
LAYOUT = {
    "office31": "root/{amazon,dslr,webcam}/images/<class>/<image>.jpg (Office-31)",
    "officehome": "root/{Art,Clipart,Product,Real World}/<class>/<image>.jpg (Office-Home)",
}


#: The ``--data`` options this benchmark takes (:func:`data_options` gives their types).
DATA_OPTIONS = ("root", "image_size", "seed", "normalize", "workers", "cache", "cache_dir")


def data_options() -> dict[str, Any]:
    """The type of each of :data:`DATA_OPTIONS` (checked by :func:`fmtl.train.validate.tables`, one-line errors).

    Example:
        >>> sorted(data_options()) == sorted(DATA_OPTIONS)
        True
    """
    from ..validate import NonNegative, Positive

    return {"root": str, "image_size": Positive, "seed": NonNegative, "normalize": bool, "workers": NonNegative,
            "cache": bool, "cache_dir": str}  # fmt: skip


def _splits(name: str, data: Mapping[str, Any]) -> dict[str, Any]:
    from ... import data as fdata

    root = root_of(name, data, LAYOUT[name])
    check_options(name, data, DATA_OPTIONS)
    cache = bool(data.get("cache", False))
    if "cache_dir" in data and not cache:
        raise ValueError(f"{name}: --data cache_dir applies to cache=true only (the images are streamed from "
                         "the files by default)")  # fmt: skip
    opts = {k: data[k] for k in ("image_size", "seed", "normalize") if k in data}
    try:
        if cache:
            return {s: fdata.load(name, s, root=root, cache=True, cache_dir=data.get("cache_dir"), **opts)
                    for s in SPLITS}  # fmt: skip
        return {s: fdata.load(name, s, root=root, streaming="aligned", **opts) for s in SPLITS}
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"{e}; the expected layout is {LAYOUT[name]}") from None


def build(name: str, cfg: Mapping[str, Any]) -> Problem:
    """The ``office31`` or ``officehome`` problem of a resolved configuration (module docstring)."""
    from ... import models

    splits = _splits(name, cfg["data"])
    train = splits["train"]
    model_opts = dict(cfg["model"])
    model_opts.pop("arch", None)  # HPS only (checked by the registry)
    weights_note(model_opts, "resnet18")
    model = models.office_resnet18(train.tasks, train.num_classes, seed=cfg["seed"], **model_opts)
    metrics = {d: masked(accuracy()) for d in train.tasks}
    problem = Problem.from_model(model, splits, dict.fromkeys(train.tasks, cross_entropy), metrics, name=name,
                                 multi_input=True)  # fmt: skip
    if cfg["data"].get("cache", False):
        return problem
    return problem._replace(stream={"num_workers": int(cfg["data"].get("workers", 0))})


def register_office(name: str) -> None:
    """Registers ``name`` (``office31`` or ``officehome``) with the paper's §4.3 settings."""
    from functools import partial

    from . import register

    register(name, partial(build, name),
             settings={"epochs": 100, "batch_size": 64, "lr": 1e-4, "weight_decay": 1e-5, "scheduler": "constant",
                       "eval_batch_size": 64, "log_every": 10},
             data={"image_size": 224}, model={"arch": "hps"}, options=accepted(data_options()))  # fmt: skip

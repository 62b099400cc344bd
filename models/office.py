"""The paper's Office-31 / Office-Home model (§4.3): a ResNet-18 encoder and one linear head per domain.

As LibMTL's ``examples/office``: the shared encoder θ is torchvision's ResNet-18 (ImageNet
weights), global average pooling and a hidden layer Linear(512, 512) (weights N(0, 0.005²),
bias 0.1) → BatchNorm1d → ReLU → dropout 0.5; each domain's head ψ_t is Linear(512, C). The
paper's text names only the ResNet-18 and the linear heads; ``hidden=None`` drops the hidden
layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tensordict import TensorDict

from ._core import Model, Norm, SeedLike, bn_init, linear, td
from ._core import Path as TreePath
from .blocks import Block, Encoder, EncoderFactory, linear_head
from .hps import hps
from .resnet import resnet_encoder, with_weights

__all__ = ["office_resnet18", "hidden_block"]

Tensor = torch.Tensor


def hidden_block(g: torch.Generator, c_in: int, width: int, dropout: float, dtype: torch.dtype) -> Block:
    """GAP → Linear(c_in, width) → BatchNorm1d → ReLU → dropout, LibMTL's Office hidden layer.

    Example:
        >>> import torch
        >>> from fmtl.models._core import Norm
        >>> b = hidden_block(torch.Generator().manual_seed(0), 4, 3, 0.5, torch.float32)
        >>> p = td({"hidden": b.params})
        >>> b.forward(b.params, torch.randn(5, 4, 2, 2), Norm(p, "train"), ("hidden",)).shape
        torch.Size([5, 3])
    """
    w = torch.randn(width, c_in, generator=g, dtype=dtype) * 0.005
    bn_p, bn_b = bn_init(width, dtype)
    params = td({"linear": td({"weight": w, "bias": torch.full((width,), 0.1, dtype=dtype)}), "bn": bn_p})

    def forward(p: TensorDict, h: Tensor, norm: Norm, where: TreePath) -> Tensor:
        h = h.mean(dim=(2, 3)) if h.dim() == 4 else h
        h = torch.relu(norm(where + ("bn",), linear(p["linear"], h)))
        return norm.dropout(where + ("dropout",), h, dropout)

    return Block(("hidden",), params, td({"bn": bn_b}), forward, width)


def _with_hidden(encoder: EncoderFactory, width: int, dropout: float) -> EncoderFactory:
    def factory(g: torch.Generator, dtype: torch.dtype) -> Encoder:
        enc = encoder(g, dtype)
        return enc._replace(stages=enc.stages + [[hidden_block(g, enc.channels, width, dropout, dtype)]],
                            channels=width)  # fmt: skip

    return factory


def office_resnet18(
    domains: Sequence[str],
    num_classes: int,
    *,
    hidden: int | None = 512,
    dropout: float = 0.5,
    weights: str | Path | None = None,
    layers: Sequence[int] = (2, 2, 2, 2),
    widths: Sequence[int] = (64, 128, 256, 512),
    stem: str = "imagenet",
    seed: SeedLike = 0,
    dtype: torch.dtype = torch.float32,
) -> Model:
    """HPS ResNet-18 (+ LibMTL's hidden layer) with a ``num_classes``-way linear head per domain.

    ``weights``: a LOCAL torchvision ``resnet18`` state dict (the hidden layer and heads keep
    their initialization); without it, random init. ``layers``/``widths``/``stem`` shrink it
    for tests. In a multi-input problem (:func:`fmtl.losses.make_multi_input_loss_fn`) the
    encoder runs once per domain's sub-batch, so BatchNorm sees each domain's batch
    statistics, as LibMTL's per-task forwards.

    Example:
        >>> import torch
        >>> from fmtl.models import office_resnet18
        >>> m = office_resnet18(("amazon", "dslr"), 31, hidden=8, layers=(1, 1), widths=(4, 8), stem="cifar")
        >>> m.apply(m.params, torch.randn(2, 3, 16, 16))["dslr"].shape, sorted(m.params["shared"].keys())[:3]
        (torch.Size([2, 31]), ['bn1', 'conv1', 'hidden'])
    """
    encoder = resnet_encoder(layers, widths, stem=stem)
    if hidden is not None:
        encoder = _with_hidden(encoder, hidden, dropout)
    model = hps(dict.fromkeys(domains, num_classes), encoder=encoder, head=linear_head, seed=seed, dtype=dtype)
    return model if weights is None else with_weights(model, weights)

"""SegNet (Badrinarayanan et al., 2017) for the paper's Table 6, with HPS, MTAN and cross-stitch.

The backbone is LibMTL's / MTAN's SegNet (``examples/nyu/segnet_mtan.py``): five encoder stages
(widths 64, 128, 256, 512, 512; one 3×3 conv-BN-ReLU, then 1, 1, 2, 2, 2 more) each followed
by a 2×2 max-pool that keeps its indices, and five mirrored decoder stages that max-unpool with
those indices; convolutions Xavier-normal with zero bias. The heads are LibMTL's SegNet decoder
(3×3 conv → 1×1 conv at full resolution).

As zoo stages, pooling sits at the start of the next stage (the decoder's first stage pools the
last encoder output and unpools it at once, as SegNet does), so every stage is
``[first conv, the other convs]`` and MTAN attends to each stage's (u, p) = (first conv's
output, the stage's output). Deviations from MTAN's SegNet: its decoder attention reads the
unpooled input instead of the first conv's output, and its shared task-branch blocks are 3×3
conv-BN-ReLU here too but placed after (not before) the resize. Unpooling is a ``scatter``
(vmap- and compile-safe) equal to ``F.max_unpool2d``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from tensordict import TensorDict

from ._core import Model, Norm, SeedLike, bn_init, conv, td
from ._core import Path as TreePath
from .blocks import Block, Encoder, EncoderFactory, conv_head
from .cross_stitch import cross_stitch
from .hps import hps
from .mtan import mtan

__all__ = ["segnet_encoder", "segnet", "max_unpool"]

Tensor = torch.Tensor

_EXTRA = (1, 1, 2, 2, 2)  # convolutions after the first one, per encoder stage (LibMTL / MTAN)


def max_unpool(h: Tensor, indices: Tensor, size: tuple[int, int]) -> Tensor:
    """``F.max_unpool2d`` as a scatter: each value back at the flat position its max-pool took it from.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> x = torch.randn(1, 2, 4, 4)
        >>> y, i = F.max_pool2d(x, 2, return_indices=True)
        >>> torch.equal(max_unpool(y, i, (4, 4)), F.max_unpool2d(y, i, 2))
        True
    """
    b, c = h.shape[:2]
    out = h.new_zeros(b, c, size[0] * size[1])
    return out.scatter(2, indices.flatten(2), h.flatten(2)).view(b, c, *size)


def _xavier_cbr(g: torch.Generator, c_in: int, c_out: int, dtype) -> tuple[TensorDict, TensorDict]:
    std = math.sqrt(2.0 / (9 * (c_in + c_out)))
    bn_p, bn_b = bn_init(c_out, dtype)
    w = torch.randn(c_out, c_in, 3, 3, generator=g, dtype=dtype) * std
    return td({"conv": td({"weight": w, "bias": torch.zeros(c_out, dtype=dtype)}), "bn": bn_p}), td({"bn": bn_b})


def _block(g, chans: Sequence[tuple[int, int]], dtype, path: TreePath, pool_key: str | None = None,
           unpool_key: str | None = None) -> Block:  # fmt: skip
    """conv-BN-ReLU layers ``chans``, after a max-pool (its indices stored under ``pool_key``)
    and/or a max-unpool (with the indices stored under ``unpool_key``)."""
    p, b = {}, {}
    for i, (ci, co) in enumerate(chans):
        p[str(i)], b[str(i)] = _xavier_cbr(g, ci, co, dtype)
    n = len(chans)

    def forward(q: TensorDict, h: Tensor, norm: Norm, where: TreePath) -> Tensor:
        column = where[:-2]  # memo keys are per encoder copy (cross-stitch columns)
        if pool_key is not None:
            size = tuple(h.shape[-2:])
            h, idx = F.max_pool2d(h, 2, return_indices=True)
            norm.memo[column + (pool_key,)] = (idx, size)
        if unpool_key is not None:
            idx, size = norm.memo[column + (unpool_key,)]
            h = max_unpool(h, idx, size)
        for i in range(n):
            h = torch.relu(norm(where + (str(i), "bn"), conv(q[str(i), "conv"], h)))
        return h

    return Block(path, td(p), td(b), forward, chans[-1][1])


def segnet_encoder(widths: Sequence[int] = (64, 128, 256, 512, 512), in_channels: int = 3) -> EncoderFactory:
    """SegNet's encoder–decoder as an encoder factory (module docstring): 10 stages, ``widths[0]`` channels out.

    Example:
        >>> import torch
        >>> from fmtl.models._core import Norm
        >>> from fmtl.models.blocks import encoder_tree, run
        >>> enc = segnet_encoder((2, 3, 4, 5, 5))(torch.Generator().manual_seed(0), torch.float32)
        >>> p, _ = encoder_tree([b for s in enc.stages for b in s])
        >>> len(enc.stages), run(enc, p, torch.randn(1, 3, 32, 32), Norm(p, "train"), ()).shape
        (10, torch.Size([1, 2, 32, 32]))
    """
    f = list(widths)
    if len(f) != 5:
        raise ValueError(f"SegNet has 5 stage widths, got {len(f)}")

    def factory(g: torch.Generator, dtype: torch.dtype) -> Encoder:
        stages, c = [], in_channels
        for i in range(5):
            pool = f"pool{i - 1}" if i > 0 else None
            first = _block(g, [(c, f[i])], dtype, (f"enc{i}", "a"), pool_key=pool)
            rest = _block(g, [(f[i], f[i])] * _EXTRA[i], dtype, (f"enc{i}", "b"))
            stages.append([first, rest])
            c = f[i]
        for i in range(5):
            k = 4 - i  # decoder stage i unpools encoder stage k's pooling and maps f[k] → f[k-1]
            c_out = f[k - 1] if k > 0 else f[0]
            pool = "pool4" if i == 0 else None
            first = _block(g, [(f[k], c_out)], dtype, (f"dec{i}", "a"), pool_key=pool, unpool_key=f"pool{k}")
            rest = _block(g, [(c_out, c_out)] * _EXTRA[k], dtype, (f"dec{i}", "b"))
            stages.append([first, rest])
        return Encoder(stages, f[0])

    return factory


def segnet(
    tasks: Mapping[str, int],
    *,
    arch: str = "hps",
    widths: Sequence[int] = (64, 128, 256, 512, 512),
    in_channels: int = 3,
    normalize: Sequence[str] = (),
    seed: SeedLike = 0,
    dtype: torch.dtype = torch.float32,
) -> Model:
    """SegNet with ``arch`` = ``"hps"``, ``"mtan"`` (SegNet-MTAN) or ``"cross_stitch"`` (paper Table 6).

    HPS shares the whole encoder–decoder θ and gives each task LibMTL's SegNet decoder head
    ψ_t; MTAN adds per-task attention ψ_t over all ten stages (:func:`~fmtl.models.mtan`);
    cross-stitch runs one SegNet per task, mixed after every stage
    (:func:`~fmtl.models.cross_stitch`, Misra's 0.9 self-weight, one unit per channel).
    Inputs need sides divisible by 32.

    Example:
        >>> import torch
        >>> from fmtl.models import segnet
        >>> m = segnet({"segmentation": 13, "depth": 1}, arch="mtan", widths=(2, 2, 2, 2, 2))
        >>> m.apply(m.params, torch.randn(2, 3, 32, 32))["segmentation"].shape
        torch.Size([2, 13, 32, 32])
    """
    kw = dict(encoder=segnet_encoder(widths, in_channels), head=conv_head(), normalize=normalize, seed=seed,
              dtype=dtype)  # fmt: skip
    if arch == "hps":
        return hps(tasks, **kw)
    if arch == "mtan":
        return mtan(tasks, **kw)
    if arch == "cross_stitch":
        return cross_stitch(tasks, **kw)
    raise ValueError(f"unknown architecture {arch!r}; valid: hps, mtan, cross_stitch")

"""Encoders and heads as data: the pieces every architecture of the zoo is assembled from.

An **encoder** is a list of *stages*, each a list of :class:`Block` s (ResNet: the stem, then
``layer1`` … ``layer4``; SegNet: its encoder and decoder stages). A block knows where its
parameters sit inside the encoder's tree (``path``, torchvision's names for the ResNets), its
BatchNorm buffers and a pure ``forward(p, h, norm, where)`` (``where`` is the absolute path of
``p`` in the model's params, for BatchNorm and dropout). An :data:`EncoderFactory` draws a fresh
encoder from a generator, so architectures that need several copies (cross-stitch columns, MMoE
experts) get independently initialized ones.

A **head** ψ_t is a :class:`Head`: parameters, buffers and ``forward(p, z, norm, where, size)``,
where ``size`` is the input's spatial size (dense heads upsample to it). A :data:`HeadFactory`
``(gen, in_channels, out_channels, dtype) -> Head`` builds one per task.

The architectures (:mod:`fmtl.models.hps`, :mod:`~fmtl.models.mtan`,
:mod:`~fmtl.models.cross_stitch`, :mod:`~fmtl.models.mmoe`, …) take ``encoder=`` and
``head=`` factories, so each one works over any backbone of the zoo.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from tensordict import TensorDict

from fmtl.heads import linear_heads

from ._core import Norm, Path, bn_init, conv, conv_init, linear, linear_init, td

__all__ = [
    "Block", "Encoder", "EncoderFactory", "Head", "HeadFactory", "run", "run_stage", "encoder_tree",
    "cbr_block", "conv_encoder", "mlp_encoder", "linear_head", "conv_head", "heads_for",
    "apply_heads", "upsample", "resize",
]  # fmt: skip

Tensor = torch.Tensor


class Block(NamedTuple):
    """One block of an encoder (module docstring).

    Attributes:
        path: where ``params`` sit inside the encoder's tree (``()``: at its root).
        params, buffers: the block's parameters and BatchNorm running statistics.
        forward: ``forward(p, h, norm, where) -> h'``, pure; ``p = tree[path]``.
        channels: channels (features) of the output.
    """

    path: Path
    params: TensorDict
    buffers: TensorDict
    forward: Callable[[TensorDict, Tensor, Norm, Path], Tensor]
    channels: int


class Encoder(NamedTuple):
    """Stages of blocks; ``channels`` of the output of the last stage; ``stem``: stage 0 is a
    stem (a ResNet's conv1/pool), which MTAN does not attend to and cross-stitch does not mix
    after (as LibMTL's ResNet versions)."""

    stages: list[list[Block]]
    channels: int
    stem: bool = False


EncoderFactory = Callable[[torch.Generator, torch.dtype], Encoder]


class Head(NamedTuple):
    """A task head ψ_t: ``forward(p, z, norm, where, size) -> prediction``; ``linear`` marks
    heads that are one ``nn.Linear`` on pooled features (applied together, :mod:`fmtl.heads`)."""

    params: TensorDict
    buffers: TensorDict
    forward: Callable[[TensorDict, Tensor, Norm, Path, tuple[int, int]], Tensor]
    linear: bool = False


HeadFactory = Callable[[torch.Generator, int, int, torch.dtype], Head]


def _at(tree: TensorDict, path: Path) -> TensorDict:
    return tree[path] if path else tree


def encoder_tree(blocks: Sequence[Block]) -> tuple[TensorDict, TensorDict]:
    """The encoder's parameter and buffer trees: every block's leaves placed under its path.

    Example:
        >>> import torch
        >>> enc = conv_encoder((2, 4))(torch.Generator().manual_seed(0), torch.float32)
        >>> p, b = encoder_tree([blk for stage in enc.stages for blk in stage])
        >>> sorted(p.keys()), sorted(b["0"].keys())
        (['0', '1'], ['bn'])
    """
    params, buffers = td({}), td({})
    for blk in blocks:
        for out, tree in ((params, blk.params), (buffers, blk.buffers)):
            for k, v in tree.items(include_nested=True, leaves_only=True):
                out[blk.path + (k if isinstance(k, tuple) else (k,))] = v
    return params, buffers


def run_stage(stage: Sequence[Block], tree: TensorDict, h: Tensor, norm: Norm, where: Path) -> Tensor:
    """Applies the blocks of one stage; ``tree`` is the encoder's parameters at ``where``."""
    for blk in stage:
        h = blk.forward(_at(tree, blk.path), h, norm, where + blk.path)
    return h


def run(encoder: Encoder, tree: TensorDict, x: Tensor, norm: Norm, where: Path) -> Tensor:
    """The encoder's output: every stage in order.

    Example:
        >>> import torch
        >>> from fmtl.models._core import Norm
        >>> enc = mlp_encoder(3, (5,))(torch.Generator().manual_seed(0), torch.float32)
        >>> p, _ = encoder_tree([b for s in enc.stages for b in s])
        >>> run(enc, p, torch.randn(2, 3), Norm(p, "train"), ()).shape
        torch.Size([2, 5])
    """
    for stage in encoder.stages:
        x = run_stage(stage, tree, x, norm, where)
    return x


# ---------------------------------------------------------------------------- small encoders


def cbr_block(
    g: torch.Generator, c_in: int, c_out: int, dtype: torch.dtype, path: Path, *, k: int = 3, pool: bool = False,
    bias: bool = False,
) -> Block:
    """(2×2 max-pool →) conv k×k → BatchNorm → ReLU, its parameters at ``path``."""
    bn_p, bn_b = bn_init(c_out, dtype)
    params = td({"conv": conv_init(g, c_in, c_out, k, dtype, bias=bias), "bn": bn_p})

    def forward(p: TensorDict, h: Tensor, norm: Norm, where: Path) -> Tensor:
        if pool:
            h = F.max_pool2d(h, 2)
        return torch.relu(norm(where + ("bn",), conv(p["conv"], h)))

    return Block(path, params, td({"bn": bn_b}), forward, c_out)


def conv_encoder(widths: Sequence[int] = (16, 32, 64), in_channels: int = 3, blocks: int = 1) -> EncoderFactory:
    """A small conv encoder: stage i = ``blocks`` conv-BN-ReLU blocks, stages > 0 start with a 2×2 pool.

    Example:
        >>> import torch
        >>> enc = conv_encoder((2, 4), blocks=2)(torch.Generator().manual_seed(0), torch.float32)
        >>> [[b.path for b in s] for s in enc.stages], enc.channels
        ([[('0',), ('1',)], [('2',), ('3',)]], 4)
    """

    def factory(g: torch.Generator, dtype: torch.dtype) -> Encoder:
        stages, c, n = [], in_channels, 0
        for i, w in enumerate(widths):
            stage = []
            for j in range(blocks):
                stage.append(cbr_block(g, c, w, dtype, (str(n),), pool=i > 0 and j == 0))
                c, n = w, n + 1
            stages.append(stage)
        return Encoder(stages, c)

    return factory


def mlp_encoder(in_dim: int, hidden: Sequence[int] = (64,), activation: Callable[[Tensor], Tensor] = torch.relu,
                flatten: bool = True) -> EncoderFactory:  # fmt: skip
    """An MLP encoder factory (one stage per layer), e.g. the experts of MMoE on tabular inputs.

    Example:
        >>> import torch
        >>> enc = mlp_encoder(4, (8, 6))(torch.Generator().manual_seed(0), torch.float32)
        >>> len(enc.stages), enc.channels
        (2, 6)
    """

    def factory(g: torch.Generator, dtype: torch.dtype) -> Encoder:
        dims, stages = [in_dim, *hidden], []
        for i in range(len(hidden)):
            def forward(p: TensorDict, h: Tensor, norm: Norm, where: Path, first: bool = i == 0) -> Tensor:
                if first and flatten:
                    h = h.flatten(1)
                return activation(linear(p, h))

            stages.append([Block((str(i),), linear_init(g, dims[i], dims[i + 1], dtype), td({}), forward, dims[i + 1])])
        return Encoder(stages, dims[-1])

    return factory


# ---------------------------------------------------------------------------- heads


def linear_head(g: torch.Generator, c_in: int, c_out: int, dtype: torch.dtype) -> Head:
    """ψ_t = (A_t, c_t): ŷ_t = A_t GAP(z) + c_t (global average pooling when z is a feature map).

    Example:
        >>> import torch
        >>> from fmtl.models._core import Norm
        >>> h = linear_head(torch.Generator().manual_seed(0), 4, 2, torch.float32)
        >>> h.forward(h.params, torch.randn(3, 4, 5, 5), None, (), (5, 5)).shape, h.linear
        (torch.Size([3, 2]), True)
    """

    def forward(p: TensorDict, z: Tensor, norm: Norm, where: Path, size: tuple[int, int]) -> Tensor:
        return linear(p, z.mean(dim=(2, 3)) if z.dim() == 4 else z)

    return Head(linear_init(g, c_in, c_out, dtype), td({}), forward, linear=True)


def conv_head(width: int | None = None, relu: bool = False) -> HeadFactory:
    """Dense head: conv 3×3 (``width`` channels, default ``in``) → conv 1×1 → bilinear upsampling.

    LibMTL's SegNet decoder (``relu=False``: the two convolutions are not separated by a
    nonlinearity there); the output is upsampled to the input size (align_corners=True, as
    LibMTL's ``process_preds``) when the features are smaller.

    Example:
        >>> import torch
        >>> h = conv_head(3)(torch.Generator().manual_seed(0), 4, 2, torch.float32)
        >>> h.forward(h.params, torch.randn(1, 4, 4, 4), None, (), (8, 8)).shape
        torch.Size([1, 2, 8, 8])
    """

    def factory(g: torch.Generator, c_in: int, c_out: int, dtype: torch.dtype) -> Head:
        w = width or c_in
        params = td({"0": conv_init(g, c_in, w, 3, dtype), "1": conv_init(g, w, c_out, 1, dtype)})

        def forward(p: TensorDict, z: Tensor, norm: Norm, where: Path, size: tuple[int, int]) -> Tensor:
            h = conv(p["0"], z)
            return upsample(conv(p["1"], torch.relu(h) if relu else h), size)

        return Head(params, td({}), forward)

    return factory


def upsample(y: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize to ``size`` (align_corners=True, as LibMTL's dense heads); identity if equal."""
    if tuple(y.shape[-2:]) == tuple(size):
        return y
    return F.interpolate(y, size=size, mode="bilinear", align_corners=True)


def apply_heads(
    heads: Mapping[str, Head], params: TensorDict, z: Tensor | Mapping[str, Tensor], norm: Norm,
    size: tuple[int, int], sub: Path = (), normalize: Sequence[str] = (),
) -> dict[str, Tensor]:
    """``{t: head_t(z_t)}`` with ψ_t at ``params["tasks", t, *sub]``; ``z`` shared or one per task.

    Tasks in ``normalize`` (surface normals) are unit-normalized over channels.

    Linear heads on one shared z run as a single product (:func:`fmtl.heads.linear_heads`: the
    vectorized task gradients then avoid a T² term).

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> hs = heads_for(g, {"a": 2, "b": 1}, linear_head, 3, torch.float32)
        >>> p = td({"tasks": td({t: h.params for t, h in hs.items()})})
        >>> {t: y.shape for t, y in apply_heads(hs, p, torch.randn(4, 3), None, (1, 1)).items()}
        {'a': torch.Size([4, 2]), 'b': torch.Size([4, 1])}
    """
    names = list(heads)
    if isinstance(z, Tensor) and not sub and len(names) > 1 and all(h.linear for h in heads.values()):
        out = linear_heads(params["tasks"], z.mean(dim=(2, 3)) if z.dim() == 4 else z, names)
    else:
        out = {}
        for t in names:
            where = ("tasks", t) + sub
            out[t] = heads[t].forward(params[where], z if isinstance(z, Tensor) else z[t], norm, where, size)
    for t in normalize:
        if t in out:
            out[t] = out[t] / out[t].norm(dim=1, keepdim=True).clamp_min(1e-12)
    return out


def resize(h: Tensor, size: tuple[int, int]) -> Tensor:
    """``h`` at spatial ``size``: max-pooled when larger by an integer factor (MTAN's task branch),
    bilinearly interpolated otherwise (align_corners=True); identity when equal.

    Example:
        >>> import torch
        >>> resize(torch.arange(16.).view(1, 1, 4, 4), (2, 2)).flatten().tolist()
        [5.0, 7.0, 13.0, 15.0]
    """
    hw = tuple(h.shape[-2:])
    if hw == tuple(size):
        return h
    if hw[0] % size[0] == 0 and hw[1] % size[1] == 0 and hw[0] // size[0] == hw[1] // size[1]:
        return F.max_pool2d(h, hw[0] // size[0])
    return F.interpolate(h, size=size, mode="bilinear", align_corners=True)


def heads_for(
    g: torch.Generator, tasks: Mapping[str, int], head: HeadFactory | Mapping[str, HeadFactory], c_in: int,
    dtype: torch.dtype,
) -> dict[str, Head]:
    """One head per task (``head`` one factory for all, or one per task).

    Example:
        >>> import torch
        >>> hs = heads_for(torch.Generator().manual_seed(0), {"a": 2, "b": 3}, linear_head, 4, torch.float32)
        >>> {t: tuple(h.params["weight"].shape) for t, h in hs.items()}
        {'a': (2, 4), 'b': (3, 4)}
    """
    if isinstance(head, Mapping):
        missing = [t for t in tasks if t not in head]
        if missing:
            raise ValueError(f"no head factory for tasks {missing}")
        return {t: head[t](g, c_in, k, dtype) for t, k in tasks.items()}
    return {t: head(g, c_in, k, dtype) for t, k in tasks.items()}

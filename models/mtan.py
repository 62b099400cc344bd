"""MTAN (Liu et al., 2019): a shared backbone θ and per-task soft-attention branches ψ_t."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from tensordict import TensorDict

from ._core import Model, Norm, SeedLike, bn_init, build, conv, conv_init, generator, td
from .blocks import (
    EncoderFactory,
    HeadFactory,
    apply_heads,
    cbr_block,
    conv_encoder,
    conv_head,
    encoder_tree,
    heads_for,
    resize,
    run_stage,
)
from .dense import NYUV2_TASKS

__all__ = ["mtan"]

Tensor = torch.Tensor


def _attention_init(g: torch.Generator, c_in: int, c_mid: int, c_out: int, dtype) -> tuple[TensorDict, TensorDict]:
    layers_p, layers_b = {}, {}
    for i, (ci, co) in enumerate(((c_in, c_mid), (c_mid, c_out))):
        bn_p, bn_b = bn_init(co, dtype)
        layers_p[str(i)] = td({"conv": conv_init(g, ci, co, 1, dtype), "bn": bn_p})
        layers_b[str(i)] = td({"bn": bn_b})
    return td(layers_p), td(layers_b)


def mtan(
    tasks: Mapping[str, int] = NYUV2_TASKS,
    *,
    encoder: EncoderFactory | None = None,
    head: HeadFactory | Mapping[str, HeadFactory] | None = None,
    reduction: int = 1,
    in_channels: int = 3,
    width: int = 16,
    normalize: Sequence[str] = ("normal",),
    seed: SeedLike = 0,
    dtype: torch.dtype = torch.float32,
) -> Model:
    """MTAN over any encoder: task t's attention masks the backbone's features stage by stage.

    Stage j of the backbone (all stages but a stem) is split into u_j (all its blocks but the
    last) and p_j (the last block's output). Task t's attention module (ψ_t) computes

    .. math::
        m^t_j = σ\\big(\\mathrm{BN}(W^t_{j,2}\\, \\mathrm{ReLU}(\\mathrm{BN}(W^t_{j,1}
        [u_j; \\mathrm{rs}(f_{j−1}(a^t_{j−1}))])))\\big), \\qquad a^t_j = m^t_j ⊙ p_j

    (1×1 convolutions, middle width c_j / ``reduction``; the first attended stage sees u_1
    only), where f_j is a shared conv-BN-ReLU θ mapping a^t_j to u_{j+1}'s channels and rs
    max-pools (or interpolates) to p_j's size (u_j too, when a one-block stage strides).
    Head ψ_t reads a^t_J.

    ``params["shared"]`` = ``{"backbone": encoder tree, "f": {j: conv-BN-ReLU}}``,
    ``params["tasks"][t]`` = ``{"att": {j: attention}, "head": head}``.

    Deviations: LibMTL's ResNet MTAN builds its attention lists as ``[module] * T``, i.e. ONE
    attention module per stage shared by all tasks (so it is θ there); here each task has its
    own, as in the MTAN paper, and they are ψ_t. LibMTL's f_j is a residual block; here a
    3×3 conv-BN-ReLU (the MTAN paper's SegNet version).

    Args:
        tasks: ``{name: output channels}``.
        encoder: encoder factory (default: a small 3-stage conv encoder of ``width``, two
            conv-BN-ReLU blocks per stage, for ``in_channels``-channel images).
        head: head factory or ``{task: factory}`` (default :func:`~fmtl.models.blocks.conv_head`
            of ``width``).
        reduction: attention's middle width divisor (LibMTL: 4 for Bottleneck ResNets).
        normalize: tasks whose output is unit-normalized over channels.

    Example:
        >>> import torch
        >>> from fmtl.models import mtan
        >>> m = mtan({"seg": 4, "depth": 1}, width=4, seed=0)
        >>> out = m.apply(m.params, torch.randn(2, 3, 16, 16))
        >>> out["seg"].shape, sorted(m.params["tasks", "seg"].keys())
        (torch.Size([2, 4, 16, 16]), ['att', 'head'])
    """
    g = generator(seed)
    if encoder is None:
        encoder = conv_encoder((width, 2 * width, 4 * width), in_channels, blocks=2)
    head = conv_head(width, relu=True) if head is None else head
    enc = encoder(g, dtype)
    backbone, backbone_b = encoder_tree([b for s in enc.stages for b in s])
    first = 1 if enc.stem else 0
    attended = list(range(first, len(enc.stages)))
    # channels of u_j (input of the stage's last block) and p_j (its output)
    c_in = [enc.stages[first - 1][-1].channels if first else in_channels]
    c_u, c_p = [], []
    for j in attended:
        stage = enc.stages[j]
        c_u.append(stage[-2].channels if len(stage) > 1 else (c_in[-1] if j == first else c_p[-1]))
        c_p.append(stage[-1].channels)
    f_blocks = [cbr_block(g, c_p[j], c_u[j + 1], dtype, ()) for j in range(len(attended) - 1)]
    f_p = {str(j): blk.params for j, blk in enumerate(f_blocks)}
    f_b = {str(j): blk.buffers for j, blk in enumerate(f_blocks)}
    heads = heads_for(g, tasks, head, c_p[-1], dtype)
    tp, tb = {}, {}
    for t in tasks:
        ap, ab = {}, {}
        for j in range(len(attended)):
            c_att_in = c_u[j] if j == 0 else 2 * c_u[j]
            ap[str(j)], ab[str(j)] = _attention_init(g, c_att_in, max(c_p[j] // reduction, 1), c_p[j], dtype)
        tp[t] = td({"att": td(ap), "head": heads[t].params})
        tb[t] = td({"att": td(ab), "head": heads[t].buffers})
    params = td({"shared": td({"backbone": backbone, "f": td(f_p)}), "tasks": td(tp)})
    buffers = td({"shared": td({"backbone": backbone_b, "f": td(f_b)}), "tasks": td(tb)})
    names = list(tasks)

    def forward(params: TensorDict, x: Tensor, norm: Norm) -> dict[str, Tensor]:
        size = tuple(x.shape[-2:])
        bb, where = params["shared", "backbone"], ("shared", "backbone")
        h = x
        us, ps = [], []
        for j, stage in enumerate(enc.stages):
            if j < first:
                h = run_stage(stage, bb, h, norm, where)
                continue
            u = run_stage(stage[:-1], bb, h, norm, where)
            h = run_stage(stage[-1:], bb, u, norm, where)
            us.append(u)
            ps.append(h)
        feats = {}
        for t in names:
            a = None
            for j in range(len(attended)):
                q, path = params["tasks", t, "att", str(j)], ("tasks", t, "att", str(j))
                hw = tuple(ps[j].shape[-2:])  # u_j is larger than p_j when a one-block stage strides
                u = resize(us[j], hw)
                inp = u if a is None else torch.cat([u, resize(a, hw)], dim=1)
                m = torch.relu(norm(path + ("0", "bn"), conv(q["0", "conv"], inp)))
                m = torch.sigmoid(norm(path + ("1", "bn"), conv(q["1", "conv"], m)))
                a = m * ps[j]
                if j < len(attended) - 1:
                    a = f_blocks[j].forward(params["shared", "f", str(j)], a, norm, ("shared", "f", str(j)))
            feats[t] = a
        return apply_heads(heads, params, feats, norm, size, sub=("head",), normalize=normalize)

    return build(forward, params, buffers, (("shared", "backbone"),))

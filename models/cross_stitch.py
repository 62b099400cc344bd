"""Cross-stitch networks (Misra et al., 2016): one encoder column per task, mixed between stages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from tensordict import TensorDict

from ._core import Model, Norm, SeedLike, build, generator, td
from .blocks import (
    EncoderFactory,
    HeadFactory,
    apply_heads,
    conv_encoder,
    conv_head,
    encoder_tree,
    heads_for,
    run_stage,
)
from .dense import NYUV2_TASKS

__all__ = ["cross_stitch"]

Tensor = torch.Tensor


def cross_stitch(
    tasks: Mapping[str, int] = NYUV2_TASKS,
    *,
    encoder: EncoderFactory | None = None,
    head: HeadFactory | Mapping[str, HeadFactory] | None = None,
    self_weight: float | None = 0.9,
    per_channel: bool = True,
    in_channels: int = 3,
    width: int = 16,
    stages: int = 3,
    normalize: Sequence[str] = ("normal",),
    seed: SeedLike = 0,
    dtype: torch.dtype = torch.float32,
) -> Model:
    """Cross-stitch network over any encoder: T columns, mixed by cross-stitch units after every stage.

    After stage j (every stage but the last, and not after a ResNet stem, as LibMTL) the
    columns' activations are mixed

    .. math:: \\tilde x^t_j = \\sum_{s=1}^T α^j_{t,s}\\, x^s_j, \\qquad
              α^j_{t,t} = \\text{self\\_weight},\\ α^j_{t,s≠t} = \\frac{1 − \\text{self\\_weight}}{T − 1}
              \\text{ at init}

    (``self_weight=None``: every α = 1 at init, LibMTL's ``Cross_stitch``; ``per_channel``:
    one α per channel, α ∈ R^{T×T×C}, else one per column pair, LibMTL's). Every column and
    unit reaches every loss, so all are θ: ``params["shared"]`` = ``{"columns": {t: encoder
    tree}, "stitch": {j: α^j}}``; head ψ_t = ``params["tasks"][t]`` decodes column t.

    Args:
        encoder: encoder factory, instantiated once per column (default: a small conv encoder
            of ``stages`` conv-BN-ReLU stages, ``width``·2^j channels).
        head: head factory or ``{task: factory}`` (default: conv head of ``width``).

    Example:
        >>> import torch
        >>> from fmtl.models import cross_stitch
        >>> m = cross_stitch({"seg": 4, "depth": 1}, width=4, seed=0)
        >>> m.params["shared", "stitch", "0"].shape
        torch.Size([2, 2, 4])
        >>> m.apply(m.params, torch.randn(2, 3, 8, 8))["depth"].shape
        torch.Size([2, 1, 8, 8])
    """
    g = generator(seed)
    if encoder is None:
        encoder = conv_encoder(tuple(width * 2**j for j in range(stages)), in_channels)
    head = conv_head(width, relu=True) if head is None else head
    names = list(tasks)
    n_t = len(names)
    encs = {t: encoder(g, dtype) for t in names}
    enc = encs[names[0]]
    cols_p, cols_b = {}, {}
    for t in names:
        cols_p[t], cols_b[t] = encoder_tree([b for s in encs[t].stages for b in s])
    mixed = list(range(1 if enc.stem else 0, len(enc.stages) - 1))
    if self_weight is None:
        alpha = torch.ones(n_t, n_t, dtype=dtype)
    else:
        off = (1.0 - self_weight) / max(n_t - 1, 1)
        alpha = torch.full((n_t, n_t), off, dtype=dtype).fill_diagonal_(self_weight if n_t > 1 else 1.0)
    stitch = {}
    for j in mixed:
        c = enc.stages[j][-1].channels
        stitch[str(j)] = alpha[:, :, None].expand(n_t, n_t, c).clone() if per_channel else alpha.clone()
    heads = heads_for(g, tasks, head, enc.channels, dtype)
    params = td({"shared": td({"columns": td(cols_p), "stitch": td(stitch)}),
                 "tasks": td({t: h.params for t, h in heads.items()})})  # fmt: skip
    buffers = td({"shared": td({"columns": td(cols_b)}), "tasks": td({t: h.buffers for t, h in heads.items()})})

    def forward(params: TensorDict, x: Tensor, norm: Norm) -> dict[str, Tensor]:
        size = tuple(x.shape[-2:])
        s = params["shared"]
        hs = [x] * n_t
        for j in range(len(enc.stages)):
            hs = [run_stage(encs[t].stages[j], s["columns", t], hs[i], norm, ("shared", "columns", t))
                  for i, t in enumerate(names)]  # fmt: skip
            if str(j) in stitch:
                a = s["stitch", str(j)]
                eq = "tsc,sbc...->tbc..." if per_channel else "ts,sb...->tb..."
                hs = list(torch.einsum(eq, a, torch.stack(hs)).unbind(0))
        return apply_heads(heads, params, dict(zip(names, hs, strict=True)), norm, size, normalize=normalize)

    return build(forward, params, buffers, tuple(("shared", "columns", t) for t in names))

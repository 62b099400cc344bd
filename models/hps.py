"""Hard parameter sharing (HPS): one shared encoder θ, one head ψ_t per task (Caruana, 1993)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from tensordict import TensorDict

from ._core import Model, Norm, SeedLike, build, generator, td
from .blocks import EncoderFactory, HeadFactory, apply_heads, encoder_tree, heads_for, run

__all__ = ["hps"]


def hps(
    tasks: Mapping[str, int],
    *,
    encoder: EncoderFactory,
    head: HeadFactory | Mapping[str, HeadFactory],
    normalize: Sequence[str] = (),
    seed: SeedLike = 0,
    dtype: torch.dtype = torch.float32,
) -> Model:
    """HPS: ŷ_t = h_{ψ_t}(E_θ(x)), the architecture of every main result of the paper (§4).

    .. math:: z = E_θ(x), \\qquad \\hat y_t = h_{ψ_t}(z), \\quad t = 1, …, T

    ``params["shared"]`` is the encoder's tree (torchvision names for the ResNets, so
    :func:`~fmtl.models.load_torchvision_weights` maps a state dict onto it) and
    ``params["tasks"][t]`` head t's parameters.

    Args:
        tasks: ``{name: output channels}`` in task order.
        encoder: an encoder factory (:mod:`fmtl.models.blocks`, :func:`~fmtl.models.resnet_encoder`).
        head: one head factory for every task, or ``{task: factory}``.
        normalize: tasks whose output is unit-normalized over channels (surface normals).

    Example:
        >>> import torch
        >>> from fmtl.models import hps
        >>> from fmtl.models.blocks import conv_encoder, conv_head
        >>> m = hps({"seg": 4, "depth": 1}, encoder=conv_encoder((4, 8)), head=conv_head(4))
        >>> {t: tuple(y.shape) for t, y in m.apply(m.params, torch.randn(2, 3, 8, 8)).items()}
        {'seg': (2, 4, 8, 8), 'depth': (2, 1, 8, 8)}
    """
    g = generator(seed)
    enc = encoder(g, dtype)
    shared, shared_b = encoder_tree([b for s in enc.stages for b in s])
    heads = heads_for(g, tasks, head, enc.channels, dtype)
    params = td({"shared": shared, "tasks": td({t: h.params for t, h in heads.items()})})
    buffers = td({"shared": shared_b, "tasks": td({t: h.buffers for t, h in heads.items()})})

    def forward(params: TensorDict, x: torch.Tensor, norm: Norm) -> dict[str, torch.Tensor]:
        z = run(enc, params["shared"], x, norm, ("shared",))
        return apply_heads(heads, params, z, norm, tuple(x.shape[-2:]), normalize=normalize)

    return build(forward, params, buffers, (("shared",),))

"""A reduced-size dense-prediction model for NYUv2-style tasks (paper §4.1), for tests and CPU runs.

* :func:`encoder_decoder` — HPS: a shared conv encoder θ and a small conv decoder ψ_t per task.

The reduced MTAN and cross-stitch models are :func:`fmtl.models.mtan` and
:func:`fmtl.models.cross_stitch` with their default (small conv) encoders.

Heads output [B, C_t, H, W] at the input resolution; tasks listed in ``normalize`` (default
``"normal"``) are unit-normalized over channels. All use BatchNorm: see :mod:`fmtl.models`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from tensordict import TensorDict

from ._core import Model, Norm, SeedLike, bn_init, conv, conv_init, generator, td, with_batch_norm

__all__ = ["encoder_decoder", "NYUV2_TASKS"]

Tensor = torch.Tensor

#: NYUv2's three tasks and their output channels (13-class segmentation, depth, normals).
NYUV2_TASKS: dict[str, int] = {"segmentation": 13, "depth": 1, "normal": 3}


def _decoder_init(g: torch.Generator, c_in: int, width: int, c_out: int, dtype) -> TensorDict:
    return td({"0": conv_init(g, c_in, width, 3, dtype), "1": conv_init(g, width, c_out, 1, dtype)})


def _decoder(p: TensorDict, z: Tensor, size: tuple[int, int], unit: bool) -> Tensor:
    """conv3×3 → ReLU → bilinear upsampling to ``size`` → conv1×1 (→ unit-normalize)."""
    h = torch.relu(conv(p["0"], z))
    h = F.interpolate(h, size=size, mode="bilinear", align_corners=False)
    y = conv(p["1"], h)
    if unit:
        y = y / y.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return y


def _cbr_init(g, c_in, c_out, dtype, k=3) -> tuple[TensorDict, TensorDict]:
    """conv(k×k, no bias) + BN parameters and BN buffers."""
    bn_p, bn_b = bn_init(c_out, dtype)
    return td({"conv": conv_init(g, c_in, c_out, k, dtype, bias=False), "bn": bn_p}), td({"bn": bn_b})


def _cbr(p: TensorDict, path: tuple[str, ...], x: Tensor, norm: Norm, stride: int = 1) -> Tensor:
    return torch.relu(norm(path + ("bn",), conv(p["conv"], x, stride=stride)))


def encoder_decoder(
    tasks: Mapping[str, int] = NYUV2_TASKS,
    *,
    in_channels: int = 3,
    width: int = 16,
    normalize: Sequence[str] = ("normal",),
    seed: SeedLike = 0,
    dtype: torch.dtype = torch.float32,
) -> Model:
    """HPS encoder–decoder: 3 conv-BN-ReLU stages (÷4 resolution) θ, conv decoders ψ_t.

    .. math::
        z = E_θ(x) ∈ R^{4w × H/4 × W/4}, \\qquad
        \\hat y_t = \\mathrm{conv}_{1×1}\\big(\\mathrm{up}(\\mathrm{ReLU}(\\mathrm{conv}_{3×3}(z)))\\big)

    Example:
        >>> import torch
        >>> from fmtl.models import encoder_decoder
        >>> m = encoder_decoder(width=4, seed=0)
        >>> out = m.apply(m.params, torch.randn(2, 3, 16, 24))
        >>> {k: tuple(v.shape) for k, v in out.items()}
        {'segmentation': (2, 13, 16, 24), 'depth': (2, 1, 16, 24), 'normal': (2, 3, 16, 24)}
    """
    g = generator(seed)
    names, unit = list(tasks), {t: t in normalize for t in tasks}
    chans = [in_channels, width, 2 * width, 4 * width]
    sp, sb = {}, {}
    for i in range(3):
        sp[str(i)], sb[str(i)] = _cbr_init(g, chans[i], chans[i + 1], dtype)
    heads = {t: _decoder_init(g, chans[-1], width, c, dtype) for t, c in tasks.items()}
    params = td({"shared": td(sp), "tasks": td(heads)})
    buffers = td({"shared": td(sb), "tasks": td({})})

    def forward(params: TensorDict, x: Tensor, norm: Norm) -> dict[str, Tensor]:
        size = (x.shape[-2], x.shape[-1])
        h = x
        for i in range(3):
            h = _cbr(params["shared", str(i)], ("shared", str(i)), h, norm, 1 if i == 0 else 2)
        return {t: _decoder(params["tasks", t], h, size, unit[t]) for t in names}

    return with_batch_norm(forward, params, buffers)

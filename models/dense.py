"""Dense-prediction models for NYUv2-style tasks, in reduced size (paper §4.1 and Fig. 4).

* :func:`encoder_decoder` — HPS: a shared conv encoder θ and a small conv decoder ψ_t per task;
* :func:`mtan` — MTAN (Liu et al., 2019): a shared backbone θ and per-task attention
  modules ψ_t that mask the backbone's features;
* :func:`cross_stitch` — Cross-stitch (Misra et al., 2016): one column per task, mixed after
  every stage by learned cross-stitch units (columns and units are θ: every loss depends on
  them), with one decoder head ψ_t per column.

Heads output [B, C_t, H, W] at the input resolution; tasks listed in ``normalize`` (default
``"normal"``) are unit-normalized over channels. All use BatchNorm: see :mod:`fmtl.models`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from tensordict import TensorDict

from ._core import Model, Norm, SeedLike, bn_init, conv, conv_init, generator, td, with_batch_norm

__all__ = ["encoder_decoder", "mtan", "cross_stitch", "NYUV2_TASKS"]

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


def mtan(
    tasks: Mapping[str, int] = NYUV2_TASKS,
    *,
    in_channels: int = 3,
    width: int = 16,
    normalize: Sequence[str] = ("normal",),
    seed: SeedLike = 0,
    dtype: torch.dtype = torch.float32,
) -> Model:
    """MTAN: shared backbone θ, per-task soft attention masks ψ_t over its features.

    Stage j of the backbone computes u_j = CBR(·) and p_j = CBR(u_j). Task t's attention
    module (ψ_t) computes

    .. math::
        a^t_j = σ\\big(\\mathrm{BN}(W^t_{j,2}\\, \\mathrm{ReLU}(\\mathrm{BN}(W^t_{j,1}
        [u_j; f_{j−1}(a^t_{j−1})])))\\big) ⊙ p_j

    (1×1 convs; the first stage sees u_1 only), where f_j is a shared conv-BN-ReLU + 2×2
    max-pool (θ, as in MTAN). The task's decoder ψ_t reads a^t_3.

    Example:
        >>> import torch
        >>> from fmtl.models import mtan
        >>> m = mtan({"seg": 4, "depth": 1}, width=4, seed=0)
        >>> out = m.apply(m.params, torch.randn(2, 3, 16, 16))
        >>> out["seg"].shape, sorted(m.buffers["tasks", "seg"].keys())
        (torch.Size([2, 4, 16, 16]), ['att'])
    """
    g = generator(seed)
    names, unit = list(tasks), {t: t in normalize for t in tasks}
    c = [in_channels, width, 2 * width, 4 * width]
    sp, sb = {}, {}
    for j in range(3):
        u_p, u_b = _cbr_init(g, c[j], c[j + 1], dtype)
        p_p, p_b = _cbr_init(g, c[j + 1], c[j + 1], dtype)
        sp[f"stage{j}"], sb[f"stage{j}"] = td({"u": u_p, "p": p_p}), td({"u": u_b, "p": p_b})
        if j < 2:
            sp[f"f{j}"], sb[f"f{j}"] = _cbr_init(g, c[j + 1], c[j + 2], dtype)
    tp, tb = {}, {}
    for t, k in tasks.items():
        ap, ab = {}, {}
        for j in range(3):
            c_in = c[j + 1] if j == 0 else 2 * c[j + 1]
            a0, b0 = _cbr_init(g, c_in, c[j + 1], dtype, k=1)
            a1, b1 = _cbr_init(g, c[j + 1], c[j + 1], dtype, k=1)
            ap[str(j)], ab[str(j)] = td({"0": a0, "1": a1}), td({"0": b0, "1": b1})
        tp[t] = td({"att": td(ap), "head": _decoder_init(g, c[3], width, k, dtype)})
        tb[t] = td({"att": td(ab)})
    params = td({"shared": td(sp), "tasks": td(tp)})
    buffers = td({"shared": td(sb), "tasks": td(tb)})

    def forward(params: TensorDict, x: Tensor, norm: Norm) -> dict[str, Tensor]:
        size = (x.shape[-2], x.shape[-1])
        s = params["shared"]
        us, ps = [], []
        h = x
        for j in range(3):
            st, path = s[f"stage{j}"], ("shared", f"stage{j}")
            u = _cbr(st["u"], path + ("u",), h, norm)
            p = _cbr(st["p"], path + ("p",), u, norm)
            us.append(u)
            ps.append(p)
            h = F.max_pool2d(p, 2) if j < 2 else p
        out = {}
        for t in names:
            a = None
            for j in range(3):
                q, path = params["tasks", t, "att", str(j)], ("tasks", t, "att", str(j))
                inp = us[j] if a is None else torch.cat([us[j], a], dim=1)
                m = torch.relu(norm(path + ("0", "bn"), conv(q["0", "conv"], inp)))
                m = torch.sigmoid(norm(path + ("1", "bn"), conv(q["1", "conv"], m)))
                a = m * ps[j]
                if j < 2:
                    a = F.max_pool2d(_cbr(s[f"f{j}"], ("shared", f"f{j}"), a, norm), 2)
            out[t] = _decoder(params["tasks", t, "head"], a, size, unit[t])
        return out

    return with_batch_norm(forward, params, buffers)


def cross_stitch(
    tasks: Mapping[str, int] = NYUV2_TASKS,
    *,
    in_channels: int = 3,
    width: int = 16,
    stages: int = 3,
    normalize: Sequence[str] = ("normal",),
    self_weight: float = 0.9,
    seed: SeedLike = 0,
    dtype: torch.dtype = torch.float32,
) -> Model:
    """Cross-stitch network: one conv column per task, mixed by cross-stitch units.

    After stage j (but the last) the columns' activations are mixed channel-wise

    .. math:: \\tilde x^t_j = \\sum_{s=1}^T α^j_{t,s,c}\\, x^s_j, \\qquad
              α^j_{t,t} = \\text{self\\_weight},\\ α^j_{t,s≠t} = \\frac{1 − \\text{self\\_weight}}{T − 1}
              \\text{ at init}

    Columns and units are shared θ (``params["shared"]["columns"][t]``, ``["stitch"][j]``
    of shape [T, T, C]); head ψ_t decodes column t.

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
    names, unit = list(tasks), {t: t in normalize for t in tasks}
    n_t = len(names)
    c = [in_channels] + [width * 2**j for j in range(stages)]
    cols_p, cols_b = {}, {}
    for t in names:
        cp, cb = {}, {}
        for j in range(stages):
            cp[str(j)], cb[str(j)] = _cbr_init(g, c[j], c[j + 1], dtype)
        cols_p[t], cols_b[t] = td(cp), td(cb)
    off = (1.0 - self_weight) / max(n_t - 1, 1)
    alpha = torch.full((n_t, n_t), off, dtype=dtype).fill_diagonal_(self_weight if n_t > 1 else 1.0)
    stitch = {str(j): alpha[:, :, None].expand(n_t, n_t, c[j + 1]).clone() for j in range(stages - 1)}
    heads = {t: _decoder_init(g, c[-1], width, k, dtype) for t, k in tasks.items()}
    params = td({"shared": td({"columns": td(cols_p), "stitch": td(stitch)}), "tasks": td(heads)})
    buffers = td({"shared": td({"columns": td(cols_b)}), "tasks": td({})})

    def forward(params: TensorDict, x: Tensor, norm: Norm) -> dict[str, Tensor]:
        size = (x.shape[-2], x.shape[-1])
        s = params["shared"]
        hs = [x] * n_t
        for j in range(stages):
            hs = [
                _cbr(s["columns", t, str(j)], ("shared", "columns", t, str(j)), hs[i], norm,
                     1 if j == 0 else 2)
                for i, t in enumerate(names)
            ]  # fmt: skip
            if j < stages - 1:
                mixed = torch.einsum("tsc,sbchw->tbchw", s["stitch", str(j)], torch.stack(hs))
                hs = list(mixed.unbind(0))
        return {t: _decoder(params["tasks", t], hs[i], size, unit[t]) for i, t in enumerate(names)}

    return with_batch_norm(forward, params, buffers)

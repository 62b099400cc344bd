"""DeepLab for NYUv2 and Cityscapes (paper §4.1): a dilated ResNet-50 encoder and ASPP heads.

The paper follows RLW/LibMTL: ``resnet_dilated('resnet50')`` (output stride 8) pre-trained on
ImageNet as θ and LibMTL's ``DeepLabHead(2048, C_t)`` as each ψ_t: ASPP (a 1×1 branch, three
3×3 branches dilated 12/24/36, an image-pooling branch; 256 channels each, concatenated and
projected by 1×1 conv-BN-ReLU + dropout 0.5), then 3×3 conv-BN-ReLU and a 1×1 classifier; the
output is bilinearly upsampled (align_corners=True) to the input size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from tensordict import TensorDict

from ._core import Model, Norm, SeedLike, bn_init, conv, conv_init, td
from ._core import Path as TreePath
from .blocks import Head, HeadFactory, upsample
from .cross_stitch import cross_stitch
from .hps import hps
from .mtan import mtan
from .resnet import DEPTHS, resnet_encoder, with_weights

__all__ = ["aspp_head", "deeplab", "ARCHITECTURES"]

Tensor = torch.Tensor

#: The paper's Table 6 / Fig. 4 architectures on the dense benchmarks.
ARCHITECTURES = ("hps", "mtan", "cross_stitch")


def _cbr_init(g, c_in: int, c_out: int, k: int, dtype) -> tuple[TensorDict, TensorDict]:
    bn_p, bn_b = bn_init(c_out, dtype)
    return td({"conv": conv_init(g, c_in, c_out, k, dtype, bias=False), "bn": bn_p}), td({"bn": bn_b})


def aspp_head(width: int = 256, rates: Sequence[int] = (12, 24, 36), dropout: float = 0.5) -> HeadFactory:
    """LibMTL's ``DeepLabHead``: ASPP(``rates``, ``width``) → 3×3 conv-BN-ReLU → 1×1 conv → upsample.

    .. math::
        \\mathrm{ASPP}(z) = \\mathrm{drop}\\big(\\mathrm{CBR}_{1×1}[\\mathrm{CBR}_{1×1}(z);
        \\mathrm{CBR}^{r_1}_{3×3}(z); \\mathrm{CBR}^{r_2}_{3×3}(z); \\mathrm{CBR}^{r_3}_{3×3}(z);
        \\mathrm{up}(\\mathrm{CBR}_{1×1}(\\mathrm{GAP}(z)))]\\big)

    Dropout is the zoo's pure per-sample dropout (active only with ``apply(..., key=seeds)``,
    :mod:`fmtl.models._core`). The pooling branch's upsampling is align_corners=False, the
    output's align_corners=True, as LibMTL.

    Example:
        >>> import torch
        >>> from fmtl.models._core import Norm
        >>> h = aspp_head(4, rates=(1, 2, 3))(torch.Generator().manual_seed(0), 6, 2, torch.float32)
        >>> p = td({"h": h.params})
        >>> h.forward(h.params, torch.randn(2, 6, 4, 4), Norm(p, "train"), ("h",), (16, 16)).shape
        torch.Size([2, 2, 16, 16])
    """
    rates = tuple(rates)

    def factory(g: torch.Generator, c_in: int, c_out: int, dtype: torch.dtype) -> Head:
        p, b = {}, {}
        kernels = [1, 3, 3, 3, 1]  # branch 4 is the image-pooling branch
        for i, k in enumerate(kernels):
            p[f"b{i}"], b[f"b{i}"] = _cbr_init(g, c_in, width, k, dtype)
        p["project"], b["project"] = _cbr_init(g, len(kernels) * width, width, 1, dtype)
        p["conv"], b["conv"] = _cbr_init(g, width, width, 3, dtype)
        p["classifier"] = conv_init(g, width, c_out, 1, dtype)

        def cbr(q: TensorDict, h: Tensor, norm: Norm, where: TreePath, dilation: int = 1) -> Tensor:
            return torch.relu(norm(where + ("bn",), conv(q["conv"], h, dilation=dilation)))

        def forward(q: TensorDict, z: Tensor, norm: Norm, where: TreePath, size: tuple[int, int]) -> Tensor:
            hw = tuple(z.shape[-2:])
            branches = [cbr(q["b0"], z, norm, where + ("b0",))]
            branches += [cbr(q[f"b{i}"], z, norm, where + (f"b{i}",), r) for i, r in enumerate(rates, start=1)]
            pooled = cbr(q["b4"], z.mean(dim=(2, 3), keepdim=True), norm, where + ("b4",))
            branches.append(torch.nn.functional.interpolate(pooled, size=hw, mode="bilinear", align_corners=False))
            h = cbr(q["project"], torch.cat(branches, dim=1), norm, where + ("project",))
            h = norm.dropout(where + ("project", "dropout"), h, dropout)
            h = cbr(q["conv"], h, norm, where + ("conv",))
            return upsample(conv(q["classifier"], h), size)

        return Head(td(p), td(b), forward)

    return factory


def deeplab(
    tasks: Mapping[str, int],
    *,
    arch: str = "hps",
    weights: str | Path | None = None,
    layers: Sequence[int] = DEPTHS["resnet50"],
    widths: Sequence[int] = (64, 128, 256, 512),
    output_stride: int = 8,
    aspp_width: int = 256,
    rates: Sequence[int] = (12, 24, 36),
    dropout: float = 0.5,
    in_channels: int = 3,
    normalize: Sequence[str] = (),
    seed: SeedLike = 0,
    dtype: torch.dtype = torch.float32,
) -> Model:
    """The paper's NYUv2 / Cityscapes model: dilated ResNet-50 θ + one ASPP head ψ_t per task.

    ``arch`` picks the MTL architecture over that backbone (paper §4.1 and Fig. 4):
    ``"hps"`` (:func:`~fmtl.models.hps`), ``"mtan"`` (:func:`~fmtl.models.mtan`, attention
    width 1/4 as LibMTL's Bottleneck MTAN) or ``"cross_stitch"``
    (:func:`~fmtl.models.cross_stitch` with LibMTL's all-ones scalar units).
    ``weights``: a LOCAL torchvision ``resnet50`` state dict (ImageNet), loaded into every
    backbone copy; without it the backbone is randomly initialized. ``layers``, ``widths``,
    ``aspp_width`` and ``rates`` shrink the model for tests.

    Example:
        >>> import torch
        >>> from fmtl.models import deeplab
        >>> m = deeplab({"segmentation": 13, "depth": 1}, layers=(1, 1, 1, 1), widths=(2, 2, 2, 2),
        ...             aspp_width=4, rates=(1, 2, 3))
        >>> {t: tuple(y.shape) for t, y in m.apply(m.params, torch.randn(2, 3, 32, 32)).items()}
        {'segmentation': (2, 13, 32, 32), 'depth': (2, 1, 32, 32)}
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; valid: {', '.join(ARCHITECTURES)}")
    encoder = resnet_encoder(layers, widths, bottleneck=True, in_channels=in_channels, output_stride=output_stride)
    kw = dict(encoder=encoder, head=aspp_head(aspp_width, rates, dropout), normalize=normalize, seed=seed, dtype=dtype)
    if arch == "hps":
        model = hps(tasks, **kw)
    elif arch == "mtan":
        model = mtan(tasks, reduction=4, **kw)
    else:
        model = cross_stitch(tasks, self_weight=None, per_channel=False, **kw)
    return model if weights is None else with_weights(model, weights)

"""ResNet encoders in torchvision's layout (BasicBlock / Bottleneck, optional dilation) and
loading a local torchvision ``state_dict`` onto them.

Parameter names follow torchvision (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer2.0.downsample.0`` …; BatchNorm ``weight``/``bias`` in ``params`` and
``running_mean``/``running_var`` as ``mean``/``var`` in ``buffers``), so a ``resnet18`` or
``resnet50`` state dict maps one to one. Initialization is torchvision's (Kaiming-normal
fan-out convolutions, BN γ = 1, β = 0).

Dilation (Yu et al., 2017; LibMTL's ``resnet_dilated``): ``output_stride=8`` removes the
stride of ``layer3`` and ``layer4`` and dilates their 3×3 convolutions (the first block of a
layer keeps the previous dilation, as torchvision's ``replace_stride_with_dilation`` and
LibMTL's ``_nostride_dilate`` both do); ``output_stride=16`` does so for ``layer4`` only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from tensordict import TensorDict

from ._core import Model, Norm, SeedLike, bn_init, conv, kaiming_conv_init, td
from ._core import Path as TreePath
from .blocks import Block, Encoder, EncoderFactory, linear_head
from .hps import hps

__all__ = ["resnet_encoder", "resnet", "resnet18", "resnet50", "load_torchvision_weights", "with_weights"]

Tensor = torch.Tensor

#: torchvision's stage depths.
DEPTHS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3), "resnet50": (3, 4, 6, 3)}


def _stem(g: torch.Generator, c_in: int, width: int, kind: str, dtype: torch.dtype) -> Block:
    k = 7 if kind == "imagenet" else 3
    bn_p, bn_b = bn_init(width, dtype)
    params = td({"conv1": kaiming_conv_init(g, c_in, width, k, dtype), "bn1": bn_p})
    imagenet = kind == "imagenet"

    def forward(p: TensorDict, h: Tensor, norm: Norm, where: TreePath) -> Tensor:
        h = torch.relu(norm(where + ("bn1",), conv(p["conv1"], h, stride=2 if imagenet else 1)))
        return F.max_pool2d(h, 3, stride=2, padding=1) if imagenet else h

    return Block((), params, td({"bn1": bn_b}), forward, width)


def _block(
    g: torch.Generator, c_in: int, planes: int, stride: int, dilation: int, first_dilation: int,
    bottleneck: bool, dtype: torch.dtype, path: TreePath,
) -> Block:  # fmt: skip
    """One BasicBlock (3×3, 3×3) or Bottleneck (1×1, 3×3 with the stride, 1×1 to 4·planes)."""
    c_out = planes * (4 if bottleneck else 1)
    kernels = [(c_in, planes, 1), (planes, planes, 3), (planes, c_out, 1)] if bottleneck else \
        [(c_in, planes, 3), (planes, planes, 3)]  # fmt: skip
    p, b = {}, {}
    for i, (ci, co, k) in enumerate(kernels, start=1):
        p[f"conv{i}"] = kaiming_conv_init(g, ci, co, k, dtype)
        p[f"bn{i}"], b[f"bn{i}"] = bn_init(co, dtype)
    down = stride != 1 or c_in != c_out
    if down:
        bn_p, bn_b = bn_init(c_out, dtype)
        p["downsample"] = td({"0": kaiming_conv_init(g, c_in, c_out, 1, dtype), "1": bn_p})
        b["downsample"] = td({"1": bn_b})
    # The strided 3×3 conv (BasicBlock's first, Bottleneck's second) keeps the previous dilation.
    strided = 2 if bottleneck else 1
    n = len(kernels)

    def forward(q: TensorDict, h: Tensor, norm: Norm, where: TreePath) -> Tensor:
        y = h
        for i in range(1, n + 1):
            k = q[f"conv{i}", "weight"].shape[-1]
            d = (first_dilation if i == strided else dilation) if k == 3 else 1
            y = conv(q[f"conv{i}"], y, stride=stride if i == strided else 1, dilation=d,
                     padding=d if k == 3 else 0)  # fmt: skip
            y = norm(where + (f"bn{i}",), y)
            if i < n:
                y = torch.relu(y)
        if down:
            h = norm(where + ("downsample", "1"), conv(q["downsample", "0"], h, stride=stride, padding=0))
        return torch.relu(y + h)

    return Block(path, td(p), td(b), forward, c_out)


def resnet_encoder(
    layers: Sequence[int] = (2, 2, 2, 2),
    widths: Sequence[int] = (64, 128, 256, 512),
    *,
    bottleneck: bool = False,
    stem: str = "imagenet",
    in_channels: int = 3,
    output_stride: int = 32,
) -> EncoderFactory:
    """A ResNet encoder factory: stages ``[stem, layer1, …]`` (module docstring for dilation).

    Args:
        layers: blocks per stage; widths: ``planes`` per stage (a Bottleneck outputs 4·planes).
        bottleneck: Bottleneck blocks (ResNet-50) instead of BasicBlocks (ResNet-18).
        stem: ``"imagenet"`` (7×7/2 conv + 3×3/2 max-pool) or ``"cifar"`` (3×3/1 conv; tiny inputs).
        output_stride: 32 (plain), 16 or 8 (dilated, LibMTL's ``resnet_dilated``; needs 4 stages).

    Example:
        >>> import torch
        >>> enc = resnet_encoder((1, 1), (4, 8), stem="cifar")(torch.Generator().manual_seed(0), torch.float32)
        >>> [[b.path for b in s] for s in enc.stages], enc.channels
        ([[()], [('layer1', '0')], [('layer2', '0')]], 8)
    """
    if stem not in ("imagenet", "cifar"):
        raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
    if output_stride not in (8, 16, 32) or (output_stride != 32 and len(layers) != 4):
        raise ValueError(f"output_stride must be 32, or 8/16 with 4 stages; got {output_stride} with {len(layers)}")
    dilate = {32: (), 16: (3,), 8: (2, 3)}[output_stride]  # stage indices whose stride becomes dilation

    def factory(g: torch.Generator, dtype: torch.dtype) -> Encoder:
        stages = [[_stem(g, in_channels, widths[0], stem, dtype)]]
        c_in, dilation = widths[0], 1
        for i, (n, planes) in enumerate(zip(layers, widths, strict=True)):
            stride, previous = (2 if i > 0 else 1), dilation
            if i in dilate:
                dilation, stride = dilation * stride, 1
            stage = []
            for j in range(n):
                blk = _block(g, c_in, planes, stride if j == 0 else 1, dilation, previous if j == 0 else dilation,
                             bottleneck, dtype, (f"layer{i + 1}", str(j)))  # fmt: skip
                stage.append(blk)
                c_in = blk.channels
            stages.append(stage)
        return Encoder(stages, c_in, stem=True)

    return factory


def resnet(
    tasks: Mapping[str, int],
    *,
    layers: Sequence[int] = (2, 2, 2, 2),
    widths: Sequence[int] = (64, 128, 256, 512),
    in_channels: int = 3,
    stem: str = "imagenet",
    bottleneck: bool = False,
    seed: SeedLike = 0,
    dtype: torch.dtype = torch.float32,
) -> Model:
    """HPS ResNet: encoder θ (global-average-pooled), linear heads ψ_t.

    .. math::
        \\mathrm{block}(x) = \\mathrm{ReLU}\\big(\\mathrm{BN}(W_2 * \\mathrm{ReLU}(\\mathrm{BN}(
        W_1 * x))) + \\mathrm{shortcut}(x)\\big), \\qquad \\hat y_t = A_t\\, \\mathrm{GAP}(z) + c_t

    Uses BatchNorm: see :mod:`fmtl.models` for the buffers.

    Args:
        tasks: ``{name: num_classes}`` in task order (Office-31: 3 tasks × 31 classes).
        layers, widths, in_channels, stem, bottleneck: as :func:`resnet_encoder`.

    Example:
        >>> import torch
        >>> from fmtl.models import resnet
        >>> m = resnet({"a": 5, "b": 2}, layers=(1, 1), widths=(4, 8), stem="cifar", seed=0)
        >>> out = m.apply(m.params, torch.randn(2, 3, 8, 8))
        >>> out["a"].shape, out["b"].shape
        (torch.Size([2, 5]), torch.Size([2, 2]))
    """
    enc = resnet_encoder(layers, widths, bottleneck=bottleneck, stem=stem, in_channels=in_channels)
    return hps(tasks, encoder=enc, head=linear_head, seed=seed, dtype=dtype)


def resnet18(tasks: Mapping[str, int], **kwargs) -> Model:
    """torchvision's resnet18 layout (layers (2, 2, 2, 2), widths 64…512, ImageNet stem).

    Example:
        >>> from fmtl.models import resnet18
        >>> m = resnet18({"amazon": 31})
        >>> sum(v.numel() for v in m.params["shared"].values(True, True))
        11176512
    """
    return resnet(tasks, layers=(2, 2, 2, 2), widths=(64, 128, 256, 512), **kwargs)


def resnet50(tasks: Mapping[str, int], **kwargs) -> Model:
    """torchvision's resnet50 layout (Bottlenecks (3, 4, 6, 3), 2048 features), linear heads.

    Example:
        >>> from fmtl.models import resnet50
        >>> m = resnet50({"a": 10})
        >>> sum(v.numel() for v in m.params["shared"].values(True, True))  # torchvision: 23,508,032
        23508032
    """
    return resnet(tasks, layers=DEPTHS["resnet50"], widths=(64, 128, 256, 512), bottleneck=True, **kwargs)


_SKIPPED = ("fc.",)


def load_torchvision_weights(
    params: TensorDict,
    path: str | Path,
    buffers: TensorDict | None = None,
    *,
    at: Sequence[TreePath] = (("shared",),),
) -> tuple[TensorDict, TensorDict | None]:
    """Copies a LOCAL torchvision ResNet ``state_dict`` file onto every backbone tree in ``at``.

    The file is read with ``torch.load(path, weights_only=True)``; nothing is downloaded. At
    each path of ``at`` (default θ = ``params["shared"]``; :attr:`Model.encoders` lists a
    model's), every leaf under ``conv1``, ``bn1`` and ``layer*`` takes the tensor of the same
    dotted name (``running_mean`` / ``running_var`` go to ``buffers[..., "mean" / "var"]`` when
    given); other leaves of the tree (heads, gates, cross-stitch units, LibMTL's Office hidden
    layer) keep their initialization. ``fc.*`` and ``num_batches_tracked`` are skipped.

    Raises:
        KeyError: the file lacks a backbone tensor of the model (named).
        ValueError: a tensor of another shape, or a backbone tensor the model does not have
            (e.g. a resnet50 file for a resnet18), named.

    Returns:
        ``(params, buffers)``: new trees (the inputs are not modified).

    Example:
        >>> import tempfile, torch
        >>> from fmtl.models import resnet
        >>> m = resnet({"a": 2}, layers=(1,), widths=(4,), seed=0)
        >>> sd = {"conv1.weight": torch.ones(4, 3, 7, 7), "fc.weight": torch.ones(1000, 512)}
        >>> f = tempfile.NamedTemporaryFile(suffix=".pt", delete=False)
        >>> torch.save(sd, f.name)
        >>> p, _ = load_torchvision_weights(m.params, f.name)  # partial files are refused
        Traceback (most recent call last):
        ...
        KeyError: '... lacks bn1.weight (shape (4,)), which the model has at shared'
    """
    sd = torch.load(path, weights_only=True, map_location="cpu")
    if not isinstance(sd, Mapping):
        raise ValueError(f"{path}: expected a state_dict (a mapping of tensors), got {type(sd).__name__}")
    new_params = params.clone()
    new_buffers = None if buffers is None else buffers.clone()
    for where in at:
        used = set()
        trees = [(new_params, params[where], {})]
        if buffers is not None:
            trees.append((new_buffers, buffers[where], {"mean": "running_mean", "var": "running_var"}))
        for out, tree, rename in trees:
            for key, leaf in tree.items(include_nested=True, leaves_only=True):
                key = key if isinstance(key, tuple) else (key,)
                if not (key[0] in ("conv1", "bn1") or key[0].startswith("layer")):
                    continue
                name = ".".join(key[:-1] + (rename.get(key[-1], key[-1]),))
                if name not in sd:
                    raise KeyError(f"{path} lacks {name} (shape {tuple(leaf.shape)}), which the model has at "
                                   f"{'.'.join(where)}")  # fmt: skip
                if sd[name].shape != leaf.shape:
                    raise ValueError(f"{path}: {name} has shape {tuple(sd[name].shape)}, the model's "
                                     f"{'.'.join(where)}.{name} {tuple(leaf.shape)}")  # fmt: skip
                out[where + key] = sd[name].to(leaf)
                used.add(name)
        ignored = ("num_batches_tracked",) + (() if buffers is not None else ("running_mean", "running_var"))
        extra = sorted(k for k in sd if k not in used and not k.startswith(_SKIPPED) and not k.endswith(ignored))
        if extra:
            raise ValueError(f"{path} has {extra[0]} (and {len(extra) - 1} more backbone tensors) that the model "
                             f"at {'.'.join(where)} lacks: another ResNet depth?")  # fmt: skip
    return new_params, new_buffers


def with_weights(model: Model, path: str | Path) -> Model:
    """``model`` with every backbone of :attr:`Model.encoders` loaded from a local torchvision file.

    Example:
        >>> import tempfile, torch
        >>> from fmtl.models import resnet
        >>> m = resnet({"a": 2}, layers=(1,), widths=(4,), stem="cifar", seed=0)
        >>> sd = {".".join(k): torch.zeros_like(v) for k, v in m.params["shared"].items(True, True)}
        >>> sd.update({".".join(k[:-1]) + ".running_" + k[-1]: torch.ones_like(v)
        ...            for k, v in m.buffers["shared"].items(True, True)})
        >>> f = tempfile.NamedTemporaryFile(suffix=".pt", delete=False); torch.save(sd, f.name)
        >>> float(with_weights(m, f.name).params["shared", "conv1", "weight"].abs().sum())
        0.0
    """
    if not model.encoders:
        raise ValueError("this model declares no backbone to load weights into (Model.encoders is empty)")
    params, buffers = load_torchvision_weights(model.params, path, model.buffers, at=model.encoders)
    return model._replace(params=params, buffers=buffers)

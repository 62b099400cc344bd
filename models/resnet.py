"""ResNet encoder (BasicBlocks, torchvision layout) with one linear head ψ_t per task."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from tensordict import TensorDict

from fmtl.heads import linear_heads

from ._core import (
    Model,
    Norm,
    SeedLike,
    bn_init,
    conv,
    generator,
    kaiming_conv_init,
    linear_init,
    td,
    with_batch_norm,
)

__all__ = ["resnet", "resnet18", "load_torchvision_weights"]

Tensor = torch.Tensor


def resnet(
    tasks: Mapping[str, int],
    *,
    layers: Sequence[int] = (2, 2, 2, 2),
    widths: Sequence[int] = (64, 128, 256, 512),
    in_channels: int = 3,
    stem: str = "imagenet",
    seed: SeedLike = 0,
    dtype: torch.dtype = torch.float32,
) -> Model:
    """HPS ResNet: BasicBlock encoder θ (global-average-pooled), linear heads ψ_t.

    .. math::
        \\mathrm{block}(x) = \\mathrm{ReLU}\\big(\\mathrm{BN}(W_2 * \\mathrm{ReLU}(\\mathrm{BN}(
        W_1 * x))) + \\mathrm{shortcut}(x)\\big), \\qquad \\hat y_t = A_t\\, \\mathrm{GAP}(z) + c_t

    Parameter names follow torchvision (``conv1``, ``bn1``, ``layer1.0.conv1``,
    ``layer2.0.downsample.0`` …), so :func:`load_torchvision_weights` maps a resnet18
    ``state_dict`` one to one. Uses BatchNorm: see :mod:`fmtl.models` for the buffers.

    Args:
        tasks: ``{name: num_classes}`` in task order (Office-31: 3 tasks × 31 classes).
        layers: BasicBlocks per stage; widths: channels per stage (stage i > 1 has stride 2).
        in_channels: image channels.
        stem: ``"imagenet"`` (7×7/2 conv + 3×3/2 max-pool, resnet18's) or ``"cifar"`` (3×3/1
            conv, no pool; for tiny inputs).

    Example:
        >>> import torch
        >>> from fmtl.models import resnet
        >>> m = resnet({"a": 5, "b": 2}, layers=(1, 1), widths=(4, 8), stem="cifar", seed=0)
        >>> out = m.apply(m.params, torch.randn(2, 3, 8, 8))
        >>> out["a"].shape, out["b"].shape
        (torch.Size([2, 5]), torch.Size([2, 2]))
    """
    if stem not in ("imagenet", "cifar"):
        raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
    g = generator(seed)
    names = list(tasks)
    k0 = 7 if stem == "imagenet" else 3
    shared: dict = {"conv1": kaiming_conv_init(g, in_channels, widths[0], k0, dtype)}
    bufs: dict = {}
    shared["bn1"], bufs["bn1"] = bn_init(widths[0], dtype)
    plan: list[tuple[str, str, int, bool]] = []  # (stage, block, stride, has downsample)
    c_in = widths[0]
    for i, (n, c) in enumerate(zip(layers, widths, strict=True)):
        stage, sp, sb = f"layer{i + 1}", {}, {}
        for j in range(n):
            stride = 2 if (i > 0 and j == 0) else 1
            down = stride != 1 or c_in != c
            p = {"conv1": kaiming_conv_init(g, c_in, c, 3, dtype)}
            b = {}
            p["bn1"], b["bn1"] = bn_init(c, dtype)
            p["conv2"] = kaiming_conv_init(g, c, c, 3, dtype)
            p["bn2"], b["bn2"] = bn_init(c, dtype)
            if down:
                bn_p, bn_b = bn_init(c, dtype)
                p["downsample"] = td({"0": kaiming_conv_init(g, c_in, c, 1, dtype), "1": bn_p})
                b["downsample"] = td({"1": bn_b})
            sp[str(j)], sb[str(j)] = td(p), td(b)
            plan.append((stage, str(j), stride, down))
            c_in = c
        shared[stage], bufs[stage] = td(sp), td(sb)
    heads = {t: linear_init(g, c_in, k, dtype) for t, k in tasks.items()}
    params = td({"shared": td(shared), "tasks": td(heads)})
    buffers = td({"shared": td(bufs), "tasks": td({t: td({}) for t in names})})
    imagenet = stem == "imagenet"

    def forward(params: TensorDict, x: Tensor, norm: Norm) -> dict[str, Tensor]:
        p = params["shared"]
        h = conv(p["conv1"], x, stride=2 if imagenet else 1)
        h = torch.relu(norm(("shared", "bn1"), h))
        if imagenet:
            h = F.max_pool2d(h, 3, stride=2, padding=1)
        for stage, j, stride, down in plan:
            q, path = p[stage, j], ("shared", stage, j)
            y = torch.relu(norm(path + ("bn1",), conv(q["conv1"], h, stride=stride)))
            y = norm(path + ("bn2",), conv(q["conv2"], y))
            if down:
                sc = conv(q["downsample", "0"], h, stride=stride, padding=0)
                h = norm(path + ("downsample", "1"), sc)
            h = torch.relu(y + h)
        z = h.mean(dim=(2, 3))
        return linear_heads(params["tasks"], z, names)

    return with_batch_norm(forward, params, buffers)


def resnet18(tasks: Mapping[str, int], **kwargs) -> Model:
    """torchvision's resnet18 layout (layers (2, 2, 2, 2), widths 64…512, ImageNet stem).

    Example:
        >>> from fmtl.models import resnet18
        >>> m = resnet18({"amazon": 31})
        >>> sum(v.numel() for v in m.params["shared"].values(True, True))
        11176512
    """
    return resnet(tasks, layers=(2, 2, 2, 2), widths=(64, 128, 256, 512), **kwargs)


def load_torchvision_weights(
    params: TensorDict, path: str | Path, buffers: TensorDict | None = None
) -> tuple[TensorDict, TensorDict | None]:
    """Copies a LOCAL torchvision ResNet ``state_dict`` file onto θ (and the BN buffers).

    The file is read with ``torch.load(path, weights_only=True)``; nothing is downloaded.
    ``fc.*`` and ``num_batches_tracked`` are skipped (the heads ψ_t stay as initialized);
    ``running_mean`` / ``running_var`` go to ``buffers[..., "mean" / "var"]`` when given.
    Every shared parameter must be present with the same shape.

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
        KeyError: 'state_dict lacks bn1.weight'
    """
    sd = torch.load(path, weights_only=True, map_location="cpu")
    shared = params["shared"].clone()
    for key, leaf in params["shared"].items(include_nested=True, leaves_only=True):
        name = ".".join(key)
        if name not in sd:
            raise KeyError(f"state_dict lacks {name}")
        if sd[name].shape != leaf.shape:
            raise ValueError(f"{name}: shape {tuple(sd[name].shape)} != {tuple(leaf.shape)}")
        shared[key] = sd[name].to(leaf)
    new_params = params.clone()
    new_params["shared"] = shared
    new_buffers = None
    if buffers is not None:
        new_buffers = buffers.clone()
        for key, leaf in buffers["shared"].items(include_nested=True, leaves_only=True):
            stat = {"mean": "running_mean", "var": "running_var"}[key[-1]]
            name = ".".join(key[:-1] + (stat,))
            if name not in sd:
                raise KeyError(f"state_dict lacks {name}")
            new_buffers[("shared",) + tuple(key)] = sd[name].to(leaf)
    return new_params, new_buffers

"""torchvision-format weights: the zoo's ResNets equal an nn.Module ResNet in torchvision's layout
(and torchvision itself, when installed) on the same state dict; every backbone copy is loaded;
bad files are refused with one line naming the key."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fmtl import models as fm
from fmtl.models._core import Norm
from fmtl.models.blocks import run
from fmtl.models.resnet import DEPTHS

D = torch.float64


class _Basic(nn.Module):
    expansion = 1

    def __init__(self, c_in, planes, stride, dilation, first_dilation):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, first_dilation, first_dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or c_in != planes:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in, planes, stride, dilation, first_dilation):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, first_dilation, first_dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * planes)
        self.downsample = None
        if stride != 1 or c_in != 4 * planes:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, 4 * planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(4 * planes))  # fmt: skip

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn3(self.conv3(torch.relu(self.bn2(self.conv2(y)))))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class RefResNet(nn.Module):
    """A ResNet trunk written like torchvision's (names, strides, ``replace_stride_with_dilation``)."""

    def __init__(self, layers, widths, bottleneck=False, dilate=(False, False, False)):
        super().__init__()
        block = _Bottleneck if bottleneck else _Basic
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        c_in, dilation = widths[0], 1
        for i, (n, planes) in enumerate(zip(layers, widths, strict=True)):
            stride, previous = (2 if i else 1), dilation
            if i and dilate[i - 1]:
                dilation, stride = dilation * stride, 1
            blocks = []
            for j in range(n):
                blocks.append(block(c_in, planes, stride if j == 0 else 1, dilation, previous if j == 0 else dilation))
                c_in = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(c_in, 10)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
        return x


def _randomized_state_dict(module: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in module.state_dict().items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(3)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(v.shape, generator=g) + 0.5
        else:
            sd[k] = torch.randn(v.shape, generator=g) * 0.2
    return sd


def _zoo_features(encoder, params, buffers, x, train):
    enc = encoder(torch.Generator().manual_seed(0), D)
    return run(enc, params["shared"], x, Norm(params, "train" if train else "eval", buffers), ("shared",))


@pytest.mark.parametrize("bottleneck,output_stride", [(False, 32), (True, 32), (True, 8), (True, 16)])
def test_zoo_resnet_equals_a_torchvision_layout_module(tmp_path, bottleneck, output_stride):
    layers, widths = (2, 1, 2, 2), (2, 3, 2, 3)
    dilate = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}[output_stride]
    ref = RefResNet(layers, widths, bottleneck, dilate).double()
    sd = _randomized_state_dict(ref)
    ref.load_state_dict(sd)
    torch.save(sd, tmp_path / "w.pth")
    encoder = fm.resnet_encoder(layers, widths, bottleneck=bottleneck, output_stride=output_stride)
    model = fm.hps({"a": 2}, encoder=encoder, head=fm.blocks.linear_head, dtype=D)
    loaded = fm.with_weights(model, tmp_path / "w.pth")
    x = torch.randn(2, 3, 40, 40, dtype=D)
    ref.eval()
    torch.testing.assert_close(_zoo_features(encoder, loaded.params, loaded.buffers, x, False), ref(x))
    ref.train()
    torch.testing.assert_close(_zoo_features(encoder, loaded.params, None, x, True), ref(x))
    assert torch.equal(loaded.params["tasks", "a", "weight"], model.params["tasks", "a", "weight"])


@pytest.mark.parametrize("arch", ["hps", "mtan", "cross_stitch"])
def test_full_size_resnet50_file_loads_into_every_deeplab_backbone(tmp_path, arch):
    sd = {k: v for k, v in _randomized_state_dict(RefResNet((3, 4, 6, 3), (64, 128, 256, 512), True)).items()}
    torch.save(sd, tmp_path / "resnet50.pth")
    m = fm.deeplab({"seg": 3, "depth": 1}, arch=arch, aspp_width=2, rates=(1, 2, 3), weights=tmp_path / "resnet50.pth")
    assert len(m.encoders) == (2 if arch == "cross_stitch" else 1)
    for where in m.encoders:
        assert torch.equal(m.params[where + ("layer3", "5", "conv3", "weight")], sd["layer3.5.conv3.weight"])
        assert torch.equal(m.buffers[where + ("layer4", "0", "downsample", "1", "var")],
                           sd["layer4.0.downsample.1.running_var"])  # fmt: skip


def test_resnet18_file_into_office_model_and_bad_files(tmp_path):
    sd = _randomized_state_dict(RefResNet((2, 2, 2, 2), (64, 128, 256, 512)))
    path = tmp_path / "resnet18.pth"
    torch.save(sd, path)
    fresh = fm.office_resnet18(("amazon", "dslr", "webcam"), 31, seed=1)
    m = fm.office_resnet18(("amazon", "dslr", "webcam"), 31, seed=1, weights=path)
    down = ("shared", "layer2", "0", "downsample", "0", "weight")
    assert torch.equal(m.params[down], sd["layer2.0.downsample.0.weight"])
    hidden = ("shared", "hidden", "linear", "weight")
    assert torch.equal(m.params[hidden], fresh.params[hidden])  # not a torchvision tensor: kept
    r50 = tmp_path / "resnet50.pth"
    torch.save(_randomized_state_dict(RefResNet((3, 4, 6, 3), (64, 128, 256, 512), True)), r50)
    with pytest.raises(ValueError, match=r"layer1\.0\.conv1\.weight has shape \(64, 64, 1, 1\)"):
        fm.with_weights(fresh, r50)
    del sd["layer4.1.bn2.running_mean"]
    torch.save(sd, path)
    with pytest.raises(KeyError, match=r"lacks layer4\.1\.bn2\.running_mean"):
        fm.with_weights(fresh, path)
    sd["layer4.1.bn2.running_mean"] = torch.zeros(512)
    sd["layer5.0.conv1.weight"] = torch.zeros(1)
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"layer5\.0\.conv1\.weight"):
        fm.with_weights(fresh, path)
    torch.save([1, 2], path)
    with pytest.raises(ValueError, match="state_dict"):
        fm.with_weights(fresh, path)


def test_against_torchvision_itself(tmp_path):
    tv = pytest.importorskip("torchvision")
    for name, bottleneck in (("resnet18", False), ("resnet50", True)):
        ref = getattr(tv.models, name)(weights=None).double().eval()
        torch.save(ref.state_dict(), tmp_path / "w.pth")
        encoder = fm.resnet_encoder(DEPTHS[name], bottleneck=bottleneck)
        model = fm.hps({"a": 2}, encoder=encoder, head=fm.blocks.linear_head, dtype=D)
        model = fm.with_weights(model, tmp_path / "w.pth")
        x = torch.randn(1, 3, 64, 64, dtype=D)
        trunk = torch.nn.Sequential(*list(ref.children())[:-2])
        torch.testing.assert_close(_zoo_features(encoder, model.params, model.buffers, x, False), trunk(x))

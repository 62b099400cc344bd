"""BatchNorm buffers (update_buffers vs nn.BatchNorm2d) and torchvision weight loading."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fmtl import models as fm

D = torch.float64


def test_running_stats_match_nn_batchnorm():
    m = fm.resnet({"a": 2}, layers=(1,), widths=(5,), stem="cifar", seed=0, dtype=D)
    x = torch.randn(4, 3, 6, 6, dtype=D)
    new = fm.update_buffers(m, m.params, m.buffers, x, momentum=0.1)
    h = F.conv2d(x, m.params["shared", "conv1", "weight"], padding=1)
    bn = torch.nn.BatchNorm2d(5, momentum=0.1).to(D).train()
    bn(h)
    torch.testing.assert_close(new["shared", "bn1", "mean"], bn.running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(new["shared", "bn1", "var"], bn.running_var, rtol=1e-12, atol=1e-12)
    # the inputs are untouched (pure) and every BN layer got new statistics
    assert torch.equal(m.buffers["shared", "bn1", "mean"], torch.zeros(5, dtype=D))
    for k in new.keys(include_nested=True, leaves_only=True):
        assert not torch.equal(new[k], m.buffers[k]), k
    # eval mode = nn.BatchNorm2d in eval mode, layer by layer (first layer here)
    bn.eval()
    out_nn = torch.relu(bn(h))
    pb = new["shared", "bn1"]
    out = torch.relu((h - pb["mean"].view(1, -1, 1, 1)) / torch.sqrt(pb["var"].view(1, -1, 1, 1) + 1e-5))
    torch.testing.assert_close(out, out_nn)


@pytest.mark.parametrize("builder", [fm.encoder_decoder, fm.mtan, fm.cross_stitch])
def test_dense_models_update_all_buffers(builder):
    m = builder({"seg": 3, "normal": 3}, width=3, seed=0, dtype=D)
    x = torch.randn(2, 3, 8, 8, dtype=D)
    new = fm.update_buffers(m, m.params, m.buffers, x)
    keys = list(m.buffers.keys(include_nested=True, leaves_only=True))
    assert keys and set(keys) == set(new.keys(include_nested=True, leaves_only=True))
    for k in keys:
        assert not torch.equal(new[k], m.buffers[k]), k
    out = m.apply(m.params, x, buffers=new, train=False)
    assert torch.isfinite(out["seg"]).all()


def test_train_mode_batchnorm_matches_functional():
    m = fm.resnet({"a": 2}, layers=(1,), widths=(5,), stem="cifar", seed=0, dtype=D)
    x = torch.randn(4, 3, 6, 6, dtype=D)
    stats = m.stats(m.params, x)
    h = F.conv2d(x, m.params["shared", "conv1", "weight"], padding=1)
    ref = F.batch_norm(h, None, None, training=True)
    mean, var = stats["shared", "bn1", "mean"], stats["shared", "bn1", "var"]
    n = 4 * 6 * 6
    mine = (h - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) * (n - 1) / n + 1e-5)
    torch.testing.assert_close(mine, ref)


def _fake_torchvision_resnet18_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state_dict with torchvision resnet18's keys and shapes (no torchvision needed)."""
    g = torch.Generator().manual_seed(seed)
    m = fm.resnet18({"x": 1})
    sd = {}
    for k, v in m.params["shared"].items(include_nested=True, leaves_only=True):
        sd[".".join(k)] = torch.randn(v.shape, generator=g)
    for k, v in m.buffers["shared"].items(include_nested=True, leaves_only=True):
        name = ".".join(k[:-1]) + (".running_mean" if k[-1] == "mean" else ".running_var")
        sd[name] = torch.rand(v.shape, generator=g) + 0.5
        sd[".".join(k[:-1]) + ".num_batches_tracked"] = torch.tensor(7)
    sd["fc.weight"] = torch.randn(1000, 512, generator=g)
    sd["fc.bias"] = torch.randn(1000, generator=g)
    return sd


def test_load_torchvision_weights(tmp_path):
    sd = _fake_torchvision_resnet18_state_dict()
    assert len([k for k in sd if k.endswith("num_batches_tracked")]) == 20  # like torchvision
    assert sum(v.numel() for k, v in sd.items() if not k.startswith("fc") and v.dim() and
               "running" not in k) == 11176512  # fmt: skip
    path = tmp_path / "resnet18.pth"
    torch.save(sd, path)
    m = fm.resnet18({"amazon": 31, "dslr": 31}, seed=1)
    params, buffers = fm.load_torchvision_weights(m.params, path, m.buffers)
    assert torch.equal(params["shared", "layer2", "0", "downsample", "0", "weight"],
                       sd["layer2.0.downsample.0.weight"])  # fmt: skip
    for k, v in params["shared"].items(include_nested=True, leaves_only=True):
        assert torch.equal(v, sd[".".join(k)])
    assert torch.equal(buffers["shared", "layer4", "1", "bn2", "var"], sd["layer4.1.bn2.running_var"])
    assert torch.equal(params["tasks", "amazon", "weight"], m.params["tasks", "amazon", "weight"])
    assert not torch.equal(m.params["shared", "conv1", "weight"], params["shared", "conv1", "weight"])
    out = m.apply(params, torch.randn(1, 3, 32, 32), buffers=buffers, train=False)
    assert out["dslr"].shape == (1, 31)
    p2, b2 = fm.load_torchvision_weights(m.params, path)
    assert b2 is None and torch.equal(p2["shared", "bn1", "bias"], sd["bn1.bias"])
    sd["layer1.0.conv1.weight"] = torch.zeros(1)
    torch.save(sd, path)
    with pytest.raises(ValueError, match="layer1.0.conv1.weight"):
        fm.load_torchvision_weights(m.params, path)

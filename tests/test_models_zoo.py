"""The architectures of the zoo at tiny sizes: shapes, every task-gradient strategy against the
autograd loop, BatchNorm buffers, pure dropout, and nn.Module references where cheap."""

from __future__ import annotations

import functools

import pytest
import torch
from tensordict import TensorDict
from test_strategies import _assert_matches, _reference

import fmtl
from fmtl import losses as L
from fmtl import models as fm
from fmtl.models.blocks import conv_encoder, conv_head, linear_head, mlp_encoder

D = torch.float64
DENSE = {"segmentation": 3, "depth": 1, "normal": 3}
DENSE_LOSSES = {"segmentation": L.cross_entropy, "depth": L.depth_l1, "normal": L.normal_cosine}
TINY_RESNET50 = dict(layers=(1, 1, 1, 1), widths=(2, 2, 2, 2), aspp_width=3, rates=(1, 2, 3))


def dense_batch(b: int = 2, h: int = 16, w: int = 16, seed: int = 0, classes: int = 3) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    seg = torch.randint(-1, classes, (b, h, w), generator=g)
    depth = torch.rand(b, 1, h, w, generator=g, dtype=D) * (torch.rand(b, 1, h, w, generator=g) > 0.2)
    normal = torch.nn.functional.normalize(torch.randn(b, 3, h, w, generator=g, dtype=D), dim=1)
    x = torch.randn(b, 3, h, w, generator=g, dtype=D)
    return TensorDict({"x": x, "segmentation": seg, "depth": depth, "normal": normal,
                       "seed": torch.arange(b) + 100 * seed}, [b])  # fmt: skip


def tabular_batch(b: int = 5, d: int = 4, seed: int = 0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    return TensorDict({"x": torch.randn(b, d, generator=g, dtype=D), "a": torch.randn(b, 1, generator=g, dtype=D),
                       "b": torch.randint(0, 3, (b,), generator=g)}, [b])  # fmt: skip


TAB = {"a": 1, "b": 3}
TAB_LOSSES = {"a": L.mse, "b": L.cross_entropy}
MOE = dict(encoder=mlp_encoder(4, (5, 3), activation=torch.tanh), head=linear_head, seed=0, dtype=D)


def _case(name: str):
    """(model, loss_fn, batch) for each new architecture, tiny and in float64."""
    dense = functools.partial(L.make_loss_fn, losses=DENSE_LOSSES, targets={t: t for t in DENSE}, key="seed")
    if name.startswith("deeplab_"):
        m = fm.deeplab(DENSE, arch=name.removeprefix("deeplab_"), dtype=D, **TINY_RESNET50)
        return m, dense(m.apply), dense_batch()
    if name.startswith("segnet_"):  # 10 stages: two tasks and one 32×32 image keep it quick
        two = {t: DENSE[t] for t in ("segmentation", "depth")}
        m = fm.segnet(two, arch=name.removeprefix("segnet_"), widths=(2, 2, 2, 2, 2), dtype=D)
        lf = L.make_loss_fn(m.apply, {t: DENSE_LOSSES[t] for t in two}, targets={t: t for t in two}, key="seed")
        return m, lf, dense_batch(b=1, h=32, w=32)
    if name == "hps_conv":
        m = fm.hps(DENSE, encoder=conv_encoder((2, 3)), head=conv_head(2), dtype=D)
        return m, dense(m.apply), dense_batch()
    if name == "office":
        m = fm.office_resnet18(("amazon", "dslr"), 3, hidden=4, layers=(1, 1), widths=(2, 3), stem="cifar", dtype=D)
        lf = L.make_multi_input_loss_fn(m.apply, {"amazon": L.cross_entropy, "dslr": L.cross_entropy}, key="seed")
        g = torch.Generator().manual_seed(3)
        batch = TensorDict({d: TensorDict({"x": torch.randn(3, 3, 8, 8, generator=g, dtype=D),
                                           "y": torch.randint(0, 3, (3,), generator=g),
                                           "seed": torch.arange(3) + 10 * i}, [3])
                            for i, d in enumerate(("amazon", "dslr"))}, [])  # fmt: skip
        return m, lf, batch
    tab = functools.partial(L.make_loss_fn, losses=TAB_LOSSES, targets={"a": "a", "b": "b"})
    if name == "ltb":
        m = fm.ltb(TAB, **MOE)

        def lf(p, batch):  # LTB's schedule enters through apply's tau / seed
            return tab(lambda q, x: m.apply(q, x, tau=0.5, seed=torch.tensor(7)))(p, batch)

        return m, lf, tabular_batch()
    builder = {"mmoe": fm.mmoe, "cgc": fm.cgc, "ple": fm.ple, "dselect_k": fm.dselect_k}[name]
    m = builder(TAB, input_shape=(4,), **MOE)
    return m, tab(m.apply), tabular_batch()


NAMES = ["deeplab_hps", "deeplab_mtan", "deeplab_cross_stitch", "segnet_hps", "segnet_mtan", "segnet_cross_stitch",
         "hps_conv", "office", "mmoe", "cgc", "ple", "dselect_k", "ltb"]  # fmt: skip


@functools.cache
def case(name: str):
    return _case(name)


@pytest.mark.parametrize("name", NAMES)
def test_every_strategy_equals_the_autograd_loop(name):
    m, lf, batch = case(name)
    losses = lf(m.params, batch)
    assert losses.shape == (len(m.params["tasks"].keys()),) and torch.isfinite(losses).all()
    ref = _reference(lf, m.params, batch)
    for strategy in ("jacrev", "vmap_grad", "loop"):
        _assert_matches(fmtl.task_gradients(lf, m.params, batch, strategy=strategy), ref, D)
    # every shared leaf gets a gradient from some task (nothing in θ is dead)
    for k, v in ref[1].items():
        assert v.abs().sum() > 0, k


@pytest.mark.parametrize("name", ["deeplab_hps", "segnet_mtan", "office", "cgc"])
def test_task_specific_parameters_reach_only_their_task(name):
    m, lf, batch = case(name)
    _, _, heads = _reference(lf, m.params, batch)
    losses = lf(m.params, batch)
    names = list(m.params["tasks"].keys())
    for t in names:  # ∂ℓ_s/∂ψ_t = 0 for s ≠ t: perturbing ψ_t leaves the other losses unchanged
        p = m.params.clone()
        p["tasks", t] = p["tasks", t].apply(lambda v: v + 0.1)
        other = [i for i, s in enumerate(names) if s != t]
        torch.testing.assert_close(lf(p, batch)[other], losses[other])
        assert any(v.abs().sum() > 0 for v in heads[t].values(True, True))


@pytest.mark.parametrize("name", ["deeplab_mtan", "deeplab_cross_stitch", "segnet_hps", "office", "ple"])
def test_batchnorm_buffers_and_eval_mode(name):
    m, _, batch = case(name)
    x = batch["amazon", "x"] if name == "office" else batch["x"]
    if m.buffers is None:
        assert name == "ple"  # MLP experts: no BatchNorm
        return
    new = fm.update_buffers(m, m.params, m.buffers, x, momentum=1.0)
    keys = list(m.buffers.keys(True, True))
    changed = [k for k in keys if not torch.equal(new[k], m.buffers[k])]
    assert keys and len(changed) == len(keys)
    out = m.apply(m.params, x, buffers=new, train=False)
    assert all(torch.isfinite(v).all() for v in out.values())


def test_dropout_masks_are_a_function_of_the_sample_seeds():
    m = fm.deeplab({"seg": 2}, dtype=D, **TINY_RESNET50)
    x = torch.randn(2, 3, 16, 16, dtype=D)
    a = m.apply(m.params, x, key=torch.tensor([1, 2]))["seg"]
    assert torch.equal(a, m.apply(m.params, x, key=torch.tensor([1, 2]))["seg"])
    assert not torch.equal(a, m.apply(m.params, x, key=torch.tensor([1, 3]))["seg"])
    # sample 0's output does not depend on sample 1's seed (but BN couples them: same batch here)
    b = m.apply(m.params, x, key=torch.tensor([1, 3]))["seg"]
    assert not torch.equal(a[1], b[1])
    no_drop = m.apply(m.params, x)["seg"]
    assert not torch.equal(a, no_drop)
    n = fm._core.Norm(TensorDict({}, []), "train", key=torch.arange(4))
    y = n.dropout(("p",), torch.ones(4, 20000, dtype=D), 0.3)
    assert abs((y == 0).double().mean().item() - 0.3) < 0.01 and set(y.unique().tolist()) == {0.0, 1 / 0.7}
    with pytest.raises(ValueError, match="one seed per sample"):
        n.dropout(("p",), torch.ones(3, 2), 0.5)


def test_ltb_warmup_sums_and_hard_samples_are_one_hot():
    m = fm.ltb(TAB, **MOE)
    x = tabular_batch()["x"]
    warm = m.apply(m.params, x)
    assert all(torch.isfinite(v).all() for v in warm.values())
    p = m.params.clone()
    p["shared", "alpha"] = torch.tensor([[[0.0, 0.0], [0.0, 0.0]], [[9.0, -9.0], [9.0, -9.0]]], dtype=D)
    hard = m.apply(p, x, tau=1.0)  # no noise: both columns read column 0 at stage 1
    cols = p["shared", "columns"]
    h0 = torch.tanh(torch.nn.functional.linear(x, cols["a", "0", "weight"], cols["a", "0", "bias"]))
    za = torch.tanh(torch.nn.functional.linear(h0, cols["a", "1", "weight"], cols["a", "1", "bias"]))
    ref = torch.nn.functional.linear(za, p["tasks", "a", "weight"], p["tasks", "a", "bias"])
    torch.testing.assert_close(hard["a"], ref)
    assert fm.ltb_temperature(0, 300) is None and fm.ltb_temperature(10, 300) == pytest.approx(15 / 11**0.5)


def test_mmoe_matches_an_nn_module_reference():
    torch.manual_seed(0)
    m = fm.mmoe(TAB, input_shape=(4,), num_experts=3, **MOE)
    experts = [torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3), torch.nn.Tanh())
               for _ in range(3)]  # fmt: skip
    with torch.no_grad():
        for e, ex in enumerate(experts):
            for i, layer in ((0, ex[0]), (1, ex[2])):
                layer.weight.copy_(m.params["shared", "experts", str(e), str(i), "weight"])
                layer.bias.copy_(m.params["shared", "experts", str(e), str(i), "bias"])
    x = tabular_batch()["x"]
    out = m.apply(m.params, x)
    reps = torch.stack([ex.double()(x) for ex in experts])
    for t in TAB:
        gp, hp = m.params["tasks", t, "gate"], m.params["tasks", t, "head"]
        w = torch.softmax(x @ gp["weight"].T + gp["bias"], dim=-1)
        z = (reps * w.T[..., None]).sum(0)
        torch.testing.assert_close(out[t], z @ hp["weight"].T + hp["bias"])

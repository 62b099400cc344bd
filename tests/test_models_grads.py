"""Every model: shapes, and vectorized per-task gradients (vjp + vmap) == a loop of autograd.grad."""

from __future__ import annotations

import functools

import pytest
import torch
from tensordict import TensorDict
from torch.func import vjp, vmap

import fmtl
from fmtl import losses as L
from fmtl import models as fm

D = torch.float64


def graph_batch(num_graphs: int = 4, node_dim: int = 5, edge_dim: int = 3, seed: int = 0):
    """A random batch of chain/ring molecules in the fmtl.data QM9 graph layout."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(2, 7, (num_graphs,), generator=g)
    offs = torch.cumsum(sizes, 0) - sizes
    src, dst = [], []
    for n, o in zip(sizes.tolist(), offs.tolist(), strict=True):
        for i in range(n - 1):
            src += [o + i, o + i + 1]
            dst += [o + i + 1, o + i]
    n_nodes = int(sizes.sum())
    ei = torch.tensor([src, dst])
    return TensorDict(
        {
            "z": torch.ones(n_nodes, dtype=torch.long),
            "pos": torch.randn(n_nodes, 3, generator=g),
            "node_attr": torch.randn(n_nodes, node_dim, generator=g),
            "edge_index": ei,
            "edge_attr": torch.randn(ei.shape[1], edge_dim, generator=g),
            "graph": torch.repeat_interleave(torch.arange(num_graphs), sizes),
            "num_atoms": sizes,
            "y": torch.randn(num_graphs, 11, generator=g),
        },
        [],
    )


def dense_batch(b: int = 2, h: int = 8, w: int = 8, seed: int = 0, classes: int = 4):
    g = torch.Generator().manual_seed(seed)
    seg = torch.randint(-1, classes, (b, h, w), generator=g)
    depth = torch.rand(b, 1, h, w, generator=g, dtype=D) * (torch.rand(b, 1, h, w, generator=g) > 0.2)
    normal = torch.nn.functional.normalize(torch.randn(b, 3, h, w, generator=g, dtype=D), dim=1)
    return TensorDict(
        {"x": torch.randn(b, 3, h, w, generator=g, dtype=D), "segmentation": seg,
         "depth": depth, "normal": normal},
        [b],
    )  # fmt: skip


DENSE = {"segmentation": 4, "depth": 1, "normal": 3}
DENSE_LOSSES = {
    "segmentation": L.cross_entropy,
    "depth": L.depth_l1,
    "normal": L.normal_cosine,
}
DENSE_TARGETS = {t: t for t in DENSE}


def _case(name: str):
    """(model, loss_fn, batch, expected output shapes) for each registered model."""
    if name == "mlp_hps":
        m = fm.mlp_hps(5, hidden=(6, 7), tasks={"a": 1, "b": 2, "c": 1}, seed=0, dtype=D)
        g = torch.Generator().manual_seed(1)
        batch = TensorDict(
            {"x": torch.randn(9, 5, generator=g, dtype=D), "y": torch.randn(9, 3, generator=g, dtype=D)},
            [9],
        )
        lf = L.make_loss_fn(m.apply, {"a": L.mse, "b": L.l1, "c": L.mse}, targets={"b": "yb", "c": 2})
        batch["yb"] = torch.randn(9, 2, generator=g, dtype=D)
        return m, lf, batch, {"a": (9, 1), "b": (9, 2), "c": (9, 1)}
    if name == "qm9_gnn":
        m = fm.qm9_gnn(5, 3, hidden=6, steps=2, set2set_steps=2, edge_hidden=7, seed=0, dtype=D)
        batch = graph_batch()
        lf = L.make_loss_fn(m.apply, {t: L.mse for t in fm.QM9_TASKS}, input_key=None)
        return m, lf, batch, {t: (4, 1) for t in fm.QM9_TASKS}
    if name == "resnet":
        m = fm.resnet({"a": 3, "b": 5}, layers=(1, 1), widths=(4, 6), stem="cifar", seed=0, dtype=D)
        g = torch.Generator().manual_seed(1)
        batch = TensorDict(
            {"x": torch.randn(3, 3, 8, 8, generator=g, dtype=D),
             "ya": torch.tensor([0, 2, 1]), "yb": torch.tensor([4, 0, 1])},
            [3],
        )  # fmt: skip
        lf = L.make_loss_fn(m.apply, {"a": L.cross_entropy, "b": L.cross_entropy}, targets={"a": "ya", "b": "yb"})
        return m, lf, batch, {"a": (3, 3), "b": (3, 5)}
    builder = {"encoder_decoder": fm.encoder_decoder, "mtan": fm.mtan, "cross_stitch": fm.cross_stitch}[name]
    m = builder(DENSE, width=3, seed=0, dtype=D)
    lf = L.make_loss_fn(m.apply, DENSE_LOSSES, targets=DENSE_TARGETS)
    shapes = {t: (2, c, 8, 8) for t, c in DENSE.items()}
    return m, lf, dense_batch(), shapes


MODELS = ["mlp_hps", "qm9_gnn", "resnet", "encoder_decoder", "mtan", "cross_stitch"]


@functools.cache
def case(name: str):
    return _case(name)


@pytest.mark.parametrize("name", MODELS)
def test_shapes_and_task_order(name):
    m, lf, batch, shapes = case(name)
    x = batch if name == "qm9_gnn" else batch["x"]
    out = m.apply(m.params, x)
    assert list(out) == list(m.params["tasks"].keys()) == list(shapes)
    assert {t: tuple(v.shape) for t, v in out.items()} == shapes
    losses = lf(m.params, batch)
    assert losses.shape == (len(shapes),) and torch.isfinite(losses).all()
    if name == "encoder_decoder":
        n = out["normal"].norm(dim=1)
        torch.testing.assert_close(n, torch.ones_like(n))


@pytest.mark.parametrize("name", MODELS)
def test_vectorized_task_gradients_match_loop(name):
    m, lf, batch, _ = case(name)
    n_t = len(m.params["tasks"].keys())
    losses, pullback = vjp(lambda p: lf(p, batch), m.params)
    (jac,) = vmap(pullback)(torch.eye(n_t, dtype=losses.dtype))

    p = m.params.apply(lambda v: v.detach().clone().requires_grad_())
    keys = list(p.keys(include_nested=True, leaves_only=True))
    leaves = [p[k] for k in keys]
    ref_losses = lf(p, batch)
    torch.testing.assert_close(losses, ref_losses.detach(), rtol=1e-12, atol=1e-12)
    for t in range(n_t):
        grads = torch.autograd.grad(ref_losses[t], leaves, retain_graph=True, allow_unused=True)
        for k, gk in zip(keys, grads, strict=True):
            expected = torch.zeros_like(leaves[keys.index(k)]) if gk is None else gk
            torch.testing.assert_close(jac[k][t], expected, rtol=1e-9, atol=1e-12, msg=str(k))
    # every task's loss reaches the shared parameters
    for k in m.params["shared"].keys(include_nested=True, leaves_only=True):
        assert jac["shared"][k].abs().flatten(1).sum(1).gt(0).any(), k


@pytest.mark.parametrize("name", MODELS)
def test_vmap_grad_matches(name):
    m, lf, batch, _ = case(name)
    n_t = len(m.params["tasks"].keys())
    _, pullback = vjp(lambda p: lf(p, batch), m.params)
    (jac,) = vmap(pullback)(torch.eye(n_t, dtype=D))
    g = vmap(torch.func.grad(lambda p, e: (lf(p, batch) * e).sum()), in_dims=(None, 0))(
        m.params, torch.eye(n_t, dtype=D)
    )
    for k in jac.keys(include_nested=True, leaves_only=True):
        torch.testing.assert_close(g[k], jac[k], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["resnet", "encoder_decoder", "mtan", "cross_stitch"])
def test_eval_mode_uses_buffers(name):
    m, _, batch, _ = case(name)
    x = batch["x"]
    new = fm.update_buffers(m, m.params, m.buffers, x, momentum=1.0)
    # with momentum 1 the running stats are this batch's (unbiased) stats: eval ≈ train
    a = m.apply(m.params, x)
    b = m.apply(m.params, x, buffers=new, train=False)
    assert all(torch.isfinite(v).all() for v in b.values())
    assert all(not torch.equal(a[t], b[t]) for t in a)  # unbiased vs biased variance
    with pytest.raises(ValueError):
        m.apply(m.params, x, train=False)


def test_compile_fullgraph_gnn_and_mlp():
    for name in ["qm9_gnn", "mlp_hps"]:
        m, lf, batch, _ = case(name)
        n_t = len(m.params["tasks"].keys())

        def jac(params, batch, lf=lf, n_t=n_t):
            _, pb = vjp(lambda p: lf(p, batch), params)
            return vmap(pb)(torch.eye(n_t, dtype=D))[0]

        torch._dynamo.reset()
        got = torch.compile(jac, fullgraph=True)(m.params, batch)
        want = jac(m.params, batch)
        for k in want.keys(include_nested=True, leaves_only=True):
            torch.testing.assert_close(got[k], want[k], rtol=1e-7, atol=1e-9)


@pytest.mark.skipif(
    not all(hasattr(fmtl, a) for a in ["make_step"])
    or not hasattr(fmtl.balancers, "dbmtl")
    or not hasattr(fmtl.optim, "adam"),
    reason="fmtl.make_step / balancers.dbmtl / optim.adam not available",
)
@pytest.mark.parametrize("name", MODELS)
def test_two_dbmtl_steps(name):
    m, lf, batch, _ = case(name)
    step = fmtl.make_step(lf, fmtl.balancers.dbmtl(), fmtl.optim.adam(1e-3))
    params = m.params
    state = step.init(params)
    for _ in range(2):
        params, state, info = step(params, state, batch)
        assert torch.isfinite(lf(params, batch)).all()
    changed = [not torch.equal(params[k], m.params[k])
               for k in m.params.keys(include_nested=True, leaves_only=True)]  # fmt: skip
    assert any(changed)

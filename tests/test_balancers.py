"""Registry-driven properties of every balancer (optax's alias_test pattern).

One list, ``METHODS``, names every registered method with small hyperparameters; every property
below is parametrized over it.
"""

from __future__ import annotations

import os

import pytest
import torch
from _balancer_samplers import params_for, task_gradients
from tensordict import TensorDict
from torch.utils import _pytree as pytree

import fmtl
from fmtl.tree import combine

METHODS: dict[str, dict] = {
    "ew": {},
    "gls": {},
    "rlw": {"seed": 3},
    "uw": {"lr": 0.05},
    "dwa": {"temperature": 2.0},
    "imtl_l": {"lr": 0.05},
    "famo": {},
    "mgda": {},
    "gradnorm": {"lr": 0.05},
    "pcgrad": {"seed": 1},
    "graddrop": {"seed": 1},
    "gradvac": {"seed": 1},
    "imtl_g": {},
    "cagrad": {},
    "nash_mtl": {},
    "metabalance": {},
    "moco": {},
    "aligned_mtl": {},
    "upgrad": {},
    "imtl": {"lr": 0.05},
    "dbmtl": {},
}
LOSS_METHODS = ["ew", "gls", "rlw", "uw", "dwa", "imtl_l", "famo"]
GRADIENT_METHODS = [m for m in METHODS if m not in LOSS_METHODS and m != "dbmtl"]
# random order of the other tasks: equivariant only when there is one other task
ORDER_RANDOM = {"pcgrad", "gradvac"}


def build(name: str, **extra) -> fmtl.Balancer:
    return fmtl.balancers.get(name, **{**METHODS[name], **extra})


def run(balancer, grads_seq, params):
    state = balancer.init(params, len(grads_seq[0].losses))
    outs = []
    for grads in grads_seq:
        out, state, info = balancer.update(grads, state, params)
        outs.append((out, info))
    return outs, state


def leaves(td: TensorDict) -> list[torch.Tensor]:
    return list(td.values(True, True))


def test_registry_lists_exactly_the_paper_methods():
    assert sorted(fmtl.balancers.names()) == sorted(METHODS)


def test_unknown_name_and_hyperparameter_are_clear_errors():
    with pytest.raises(ValueError, match="unknown balancer 'nope'.*mgda"):
        fmtl.balancers.get("nope")
    with pytest.raises(ValueError, match="'mgda' has no hyperparameter.*'lr'"):
        fmtl.balancers.get("mgda", lr=1.0)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("T,rank", [(1, 1), (1, 0), (2, 2), (3, 1), (3, 2), (4, 4), (2, 0)])
def test_finite_and_shaped_like_params(name, T, rank):
    params = params_for(T)
    grads = task_gradients(T, rank, seed=T * 10 + rank)
    (first, second), _ = run(build(name), [grads, task_gradients(T, rank, seed=99)], params)
    for out, info in (first, second):
        assert sorted(out.keys(True, True)) == sorted(params.keys(True, True))
        for k, p in params.items(True, True):
            assert out[k].shape == p.shape, k
            assert torch.isfinite(out[k]).all(), (name, k, out[k])
        assert info["weights"].shape == (T,) and torch.isfinite(info["weights"]).all()


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_preserved_and_state_shapes_stable(name, dtype):
    params = params_for(3, dtype)
    b = build(name)
    state0 = b.init(params, 3)
    state = state0
    for seed in range(3):
        out, state, info = b.update(task_gradients(3, 3, seed, dtype), state, params)
        assert all(v.dtype == dtype for v in leaves(out)), name
        assert info["weights"].dtype == dtype, name
        assert pytree.tree_structure(state) == pytree.tree_structure(state0)
        for a, s in zip(pytree.tree_leaves(state), pytree.tree_leaves(state0), strict=True):
            assert (a.shape, a.dtype, a.device) == (s.shape, s.dtype, s.device), name


def _permuted(grads: fmtl.TaskGradients, perm: list[int]) -> fmtl.TaskGradients:
    names = list(grads.tasks.keys())
    shared = grads.shared.apply(lambda v: v[perm])
    tasks = TensorDict({names[i]: grads.tasks[names[i]] for i in perm}, [])
    return fmtl.TaskGradients(grads.losses[perm], shared, tasks)


@pytest.mark.parametrize("name", METHODS)
def test_permutation_equivariance(name):
    if name == "rlw":
        pytest.skip("RLW draws weight t from its (seed, step) stream position t: not equivariant by design")
    T = 2 if name in ORDER_RANDOM else 3
    perm = [1, 0] if T == 2 else [2, 0, 1]
    seq = [task_gradients(T, T, seed) for seed in (5, 6)]
    names = list(seq[0].tasks.keys())
    outs, _ = run(build(name), seq, params_for(T))
    perm_outs, _ = run(build(name), [_permuted(g, perm) for g in seq], params_for(T, names=[names[i] for i in perm]))
    for (out, info), (pout, pinfo) in zip(outs, perm_outs, strict=True):
        for k in out["shared"].keys(True, True):
            torch.testing.assert_close(pout["shared", k], out["shared", k], rtol=1e-4, atol=1e-5)
        for n in names:
            torch.testing.assert_close(pout["tasks", n, "w"], out["tasks", n, "w"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(pinfo["weights"], info["weights"][perm], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", METHODS)
def test_pure_same_state_same_output_and_inputs_untouched(name):
    params, grads = params_for(3), task_gradients(3, 2, seed=4)
    b = build(name)
    state = b.init(params, 3)
    snapshot = [v.clone() for v in leaves(grads.shared)] + [s.clone() for s in pytree.tree_leaves(state)]
    out1, _, _ = b.update(grads, state, params)
    out2, _, _ = b.update(grads, state, params)
    for a, c in zip(leaves(out1), leaves(out2), strict=True):
        assert torch.equal(a, c)
    now = [v for v in leaves(grads.shared)] + list(pytree.tree_leaves(state))
    assert all(torch.equal(a, c) for a, c in zip(snapshot, now, strict=True))


@pytest.mark.parametrize("name", LOSS_METHODS)
def test_loss_balancer_update_is_the_weighted_sum_its_loss_weights_give(name):
    params, grads = params_for(3), task_gradients(3, 3, seed=8)
    b = build(name)
    state = b.init(params, 3)
    for _ in range(3):  # past DWA's two warm-up epochs and FAMO's first step
        w, wstate, _ = b.loss_weights(grads.losses, state, params)
        out, ustate, info = b.update(grads, state, params)
        torch.testing.assert_close(info["weights"], w)
        torch.testing.assert_close(out["shared"], combine(w, grads.shared))
        for i, n in enumerate(grads.tasks.keys()):
            torch.testing.assert_close(out["tasks", n, "w"], w[i] * grads.tasks[n, "w"])
        for a, c in zip(pytree.tree_leaves(wstate), pytree.tree_leaves(ustate), strict=True):
            torch.testing.assert_close(a, c)
        state = ustate


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_log_transform_is_the_method_on_log_loss_gradients(name):
    params, grads = params_for(3), task_gradients(3, 3, seed=2)
    eps = 1e-8
    scale = 1 / (grads.losses + eps)
    transformed = fmtl.TaskGradients(
        torch.log(grads.losses + eps),
        grads.shared.apply(lambda v: v * scale.reshape(-1, *([1] * (v.dim() - 1)))),
        TensorDict({n: grads.tasks[n].apply(lambda v, s=scale[i]: v * s) for i, n in enumerate(grads.tasks.keys())}),
    )
    b, plain = build(name, log_transform=True), build(name)
    out, _, _ = b.update(grads, b.init(params, 3), params)
    ref, _, _ = plain.update(transformed, plain.init(params, 3), params)
    for a, c in zip(leaves(out), leaves(ref), strict=True):
        torch.testing.assert_close(a, c)


def _compiled_matches_eager(name: str, backend: str) -> None:
    torch._dynamo.reset()  # the methods share code objects (gramian_balancer's update, ...)
    params, b = params_for(3), build(name)
    state = b.init(params, 3)
    compiled = torch.compile(b.update, fullgraph=True, backend=backend)
    for seed in (0, 1):
        grads = task_gradients(3, 3, seed)
        out, cstate, info = compiled(grads, state, params)
        ref, rstate, rinfo = b.update(grads, state, params)
        for a, c in zip(leaves(out), leaves(ref), strict=True):
            torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-5)
        for a, c in zip(pytree.tree_leaves(cstate), pytree.tree_leaves(rstate), strict=True):
            torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-5)
        state = rstate


@pytest.mark.parametrize("name", METHODS)
def test_update_traces_as_one_graph_and_matches_eager(name):
    # aot_eager: dynamo + AOT autograd with fullgraph=True (no graph breaks, no data-dependent
    # Python control flow), without inductor's C++ compile (tens of seconds per method here)
    _compiled_matches_eager(name, "aot_eager")


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.skipif(n != "mgda" and not os.environ.get("FMTL_SLOW"), reason="FMTL_SLOW=1"))
     for n in METHODS],
)
def test_inductor_compiled_matches_eager(name):
    _compiled_matches_eager(name, "inductor")


def _toy_problem():
    g = torch.Generator().manual_seed(0)
    enc = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh())
    torch.manual_seed(0)
    params, apply = fmtl.functionalize(enc, {"a": torch.nn.Linear(8, 1), "b": torch.nn.Linear(8, 1)})
    x = torch.randn(64, 3, generator=g)
    y = torch.stack([x.sum(1), x[:, 0] - 2 * x[:, 1]], 1) + 1.0
    batch = TensorDict({"x": x, "y": y}, [64])

    def loss_fn(p, b):
        out = apply(p, b["x"])
        return torch.stack([(out[k].squeeze(-1) - b["y"][:, i]).pow(2).mean() for i, k in enumerate(out)])

    return params, batch, loss_fn


@pytest.mark.parametrize("name", METHODS)
def test_short_run_through_make_step_decreases_both_losses(name):
    params, batch, loss_fn = _toy_problem()
    step = fmtl.make_step(loss_fn, build(name), fmtl.optim.adam(2e-2))
    state = step.init(params)
    before = loss_fn(params, batch)
    for _ in range(25):
        params, state, info = step(params, state, batch)
        assert bool(info["ok"])
    after = loss_fn(params, batch)
    assert (after < before).all(), (name, before, after)

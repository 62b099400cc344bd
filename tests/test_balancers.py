"""Registry-driven properties of every balancer (optax's alias_test pattern), through ``fmtl.testing``.

One table, ``METHODS``, names every registered method with small hyperparameters and the
properties it claims; :func:`fmtl.testing.check_balancer` checks them all on random multi-leaf
Jacobians (every rank, conditioning, norm spread and hard structure), so a tree operation that
drops a leaf, a solver that loses non-conflict or a step that differs under compile fails here.
"""

from __future__ import annotations

import functools
import os

import pytest
import torch

import fmtl
import fmtl.testing

EXAMPLES = 8 if os.environ.get("CI") else 12

# id -> (registered name, hyperparameters, claims for check_balancer)
METHODS: dict[str, tuple[str, dict, dict]] = {
    "ew": ("ew", {}, {}),
    "gls": ("gls", {}, {}),
    # RLW draws weight t from its stream position t: not equivariant by design
    "rlw": ("rlw", {"seed": 3}, {"permutation_tasks": ()}),
    "uw": ("uw", {"lr": 0.05}, {}),
    "dwa": ("dwa", {"temperature": 2.0}, {}),
    "imtl_l": ("imtl_l", {"lr": 0.05}, {}),
    "famo": ("famo", {}, {}),
    "constant": ("constant", {}, {}),
    "stch": ("stch", {"warmup_epochs": 0}, {}),
    "mgda": ("mgda", {}, {"non_conflicting": True}),
    # unit gradients: the update is invariant to their scale
    "mgda[l2,weight_heads]": ("mgda", {"normalization": "l2", "weight_heads": True},
                              {"non_conflicting": True, "scale": "invariant"}),
    "gradnorm": ("gradnorm", {"lr": 0.05}, {}),
    # a random order of the other tasks: equivariant only when there is one other task
    "pcgrad": ("pcgrad", {"seed": 1}, {"permutation_tasks": (2, 2)}),
    # GradDrop's uniform draws are per leaf (stream = leaf index): a flat θ draws other numbers
    "graddrop": ("graddrop", {"seed": 1}, {"leafwise": True}),
    "gradvac": ("gradvac", {"seed": 1}, {"permutation_tasks": (2, 2)}),
    "imtl_g": ("imtl_g", {}, {}),
    "cagrad": ("cagrad", {}, {}),
    # c ≥ 1: 0 lies in the ball, so the optimum conflicts with no task
    "cagrad[c=2]": ("cagrad", {"c": 2.0}, {"non_conflicting": True}),
    "nash_mtl": ("nash_mtl", {}, {"scale": "invariant"}),
    # MetaBalance rescales each leaf of θ on its own (as the original, per parameter tensor)
    "metabalance": ("metabalance", {}, {"leafwise": True}),
    "moco": ("moco", {}, {"scale": "invariant"}),
    "aligned_mtl": ("aligned_mtl", {}, {}),
    "aligned_mtl[median]": ("aligned_mtl", {"scale_mode": "median"}, {}),
    "aligned_mtl[rmse]": ("aligned_mtl", {"scale_mode": "rmse"}, {}),
    "upgrad": ("upgrad", {}, {}),
    "upgrad[reg_eps=0]": ("upgrad", {"reg_eps": 0.0}, {"non_conflicting": True}),
    "imtl": ("imtl", {"lr": 0.05}, {}),
    # the paper's absolute ε = 10⁻⁸ in ‖ĝ‖ + ε holds equal contributions to ~10⁻⁶ for tiny ĝ
    "dbmtl": ("dbmtl", {}, {"equal_contributions": True, "rtol": 1e-4}),
    "excess_mtl": ("excess_mtl", {}, {}),
    "fairgrad": ("fairgrad", {}, {"scale": "invariant"}),
    "fairgrad[alpha=2]": ("fairgrad", {"alpha": 2.0}, {"scale": None}),
    "modo": ("modo", {}, {"scale": None}),  # γ G λ: the step size is not relative to G
    # 20 projected steps of size 5: round-off differences grow to ~10⁻⁶
    "sdmgrad": ("sdmgrad", {}, {"rtol": 1e-4}),
    "dualproj": ("dualproj", {}, {}),
    "dualproj[reg_eps=0]": ("dualproj", {"reg_eps": 0.0}, {"non_conflicting": True}),
    "config": ("config", {}, {}),
    # T ≥ n_byzantine + 3; with T = 3 the two nearest tasks always tie. Distances from the Gramian
    # cancel for nearby gradients, so a near-tie can flip with the summation order (no "flat").
    "krum": ("krum", {}, {"tasks": (3, 5), "permutation_tasks": (4, 5), "skip": ("flat",)}),
    "trimmed_mean": ("trimmed_mean", {}, {"tasks": (3, 5)}),
}


def factory(key: str):
    name, hp, _ = METHODS[key]
    return functools.partial(fmtl.balancers.get, name, **hp)


def claims(key: str) -> dict:
    return dict(METHODS[key][2])


def test_the_table_covers_every_registered_method():
    assert {name for name, _, _ in METHODS.values()} == set(fmtl.balancers.names())


@pytest.mark.parametrize("key", METHODS)
def test_properties(key):
    c = claims(key)
    c["skip"] = (*c.get("skip", ()), "compiled", "strategies")
    checked = fmtl.testing.check_balancer(factory(key), name=key, max_examples=EXAMPLES, **c)
    expected = {"finite", "pure", "state"} | ({"flat"} - set(c["skip"]) if not c.get("leafwise") else set())
    assert expected <= set(checked)


@pytest.mark.parametrize("key", METHODS)
def test_update_traces_as_one_graph_and_matches_eager(key):
    # aot_eager: dynamo + AOT autograd with fullgraph=True (no graph breaks, no data-dependent
    # Python control flow; the solvers' loops are torch.while_loop), without inductor's C++ compile
    c = {k: v for k, v in claims(key).items() if k in ("tasks", "rtol")}
    fmtl.testing.check_balancer(factory(key), name=key, properties=["compiled"], **c)


@pytest.mark.parametrize(
    "key",
    [pytest.param(k, marks=pytest.mark.skipif(k != "mgda" and not os.environ.get("FMTL_SLOW"), reason="FMTL_SLOW=1"))
     for k in METHODS],
)
def test_inductor_compiled_matches_eager(key):
    torch._dynamo.reset()
    T = claims(key).get("tasks", (3, 3))[0]
    c = fmtl.testing.case(T, seed=2, dtype=torch.float32)
    b = factory(key)()
    compiled = torch.compile(b.update, fullgraph=True, backend="inductor")
    state = b.init(c.params, T)
    for grads in c.grads:
        out, cstate, _ = compiled(grads, state, c.params)
        ref, state, _ = b.update(grads, state, c.params)
        for k in ref.keys(True, True):
            torch.testing.assert_close(out[k], ref[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("key", METHODS)
def test_every_strategy_matches_the_loop(key):
    c = {k: v for k, v in claims(key).items() if k in ("tasks", "rtol")}
    fmtl.testing.check_balancer(factory(key), name=key, properties=["strategies"], **c)


# Krum keeps one task's gradient per step (a Byzantine-robust rule): the others may go up.
NO_DESCENT = {"krum"}


@pytest.mark.parametrize("key", [k for k in METHODS if k not in NO_DESCENT])
def test_short_run_through_make_step_decreases_every_loss(key):
    T = max(2, claims(key).get("tasks", (2, 2))[0])
    params, loss_fn, batch = fmtl.testing.toy_problem(T, dtype=torch.float32)
    step = fmtl.make_step(loss_fn, factory(key)(), fmtl.optim.adam(2e-2))
    state = step.init(params)
    before = loss_fn(params, batch)
    for _ in range(25):
        params, state, info = step(params, state, batch)
        assert bool(info["ok"])
    after = loss_fn(params, batch)
    assert (after < before).all(), (key, before, after)

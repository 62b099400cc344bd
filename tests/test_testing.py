"""fmtl.testing: its strategies build what they promise, and check_balancer catches broken balancers."""

from __future__ import annotations

import builtins
import importlib
import sys

import pytest
import torch
from hypothesis import given, settings
from tensordict import TensorDict

import fmtl
import fmtl.testing
from fmtl.testing import flatten
from fmtl.testing.strategies import cases, jacobians, loss_vectors, problems


@settings(max_examples=30, deadline=None)
@given(cases(num_tasks=(1, 6)))
def test_cases_have_the_rank_and_structure_they_describe(c):
    T, spec = c.num_tasks, c.spec
    assert len(c.grads) == spec["steps"] and list(c.params["tasks"].keys()) == [f"t{i}" for i in range(T)]
    for g in c.grads:
        M = flatten(g.shared)
        rank = int(torch.linalg.matrix_rank(M))
        if spec["structure"] == "generic" and spec["condition"] == 1.0:
            assert rank == spec["rank"]
        if spec["structure"] in ("opposite", "parallel"):
            assert rank == 1
            signs = torch.sign(M @ M[0])
            assert (signs > 0).all() if spec["structure"] == "parallel" else (signs < 0).any() or T == 1
        if spec["structure"] == "zero_row":
            assert (M[-1] == 0).all()
        if spec["structure"] == "duplicate" and T > 1:
            assert torch.equal(M[-1], M[0])
        assert (g.losses > 0).all() and torch.isfinite(M).all()


@settings(max_examples=20, deadline=None)
@given(jacobians(num_tasks=4, ranks="full", norm_spreads=(1e6,), conditions=(1e3,)))
def test_jacobians_have_the_asked_norm_spread_and_conditioning(J):
    M = flatten(J)
    norms = M.norm(dim=1)
    assert 1e6 / 1.5 <= float(norms.max() / norms.min()) <= 1.5e6
    assert int(torch.linalg.matrix_rank(M)) == 4


@settings(max_examples=10, deadline=None)
@given(loss_vectors(num_tasks=3, spreads=(100.0,)), problems(num_tasks=(2, 3)))
def test_losses_and_problems(losses, problem):
    assert losses.shape == (3,) and (losses >= 0.1).all() and (losses <= 10).all()
    params, loss_fn, batch = problem
    assert loss_fn(params, batch).shape == (len(params["tasks"].keys()),)


def _weights_from_position():
    """Not permutation equivariant: weight t depends on t's position."""

    def weights(losses, state):
        return torch.arange(1, losses.shape[0] + 1, dtype=losses.dtype), state, {}

    return fmtl.balancers.loss_balancer(lambda p, T: fmtl.EmptyState(), weights)


def test_check_balancer_names_the_property_and_a_minimal_counterexample():
    with pytest.raises(AssertionError) as info:
        fmtl.testing.check_balancer(_weights_from_position, properties=["permutation"], max_examples=20)
    message = str(info.value)
    assert "property 'permutation' fails" in message
    assert "fmtl.testing.case(num_tasks=2," in message  # shrunk to the fewest tasks that show it
    assert "J (flattened, step 0)" in message


def _mutating():
    b = fmtl.balancers.ew()

    def update(grads, state, params):
        out = b.update(grads, state, params)
        grads.shared.apply_(lambda v: v.mul_(2))
        return out

    return b._replace(update=update, loss_weights=None)


def _not_finite():
    def weighting(G, losses, state):
        return 1.0 / torch.diagonal(G), None, state, {}  # 1/0 for a zero gradient

    return fmtl.balancers.gramian_balancer(weighting)


def _changes_dtype():
    def weighting(G, losses, state):
        return torch.ones(G.shape[0], dtype=torch.float64), None, state, {}

    return fmtl.balancers.gramian_balancer(weighting)


def _conflicting():  # the mean gradient: it can conflict
    return fmtl.balancers.gramian_balancer(lambda G, losses, state: (torch.full_like(losses, 0.5), None, state, {}))


@pytest.mark.parametrize("factory,prop,claims", [
    (_mutating, "pure", {}),
    (_not_finite, "finite", {}),
    (_changes_dtype, "state", {}),
    (_conflicting, "non_conflict", {"non_conflicting": True}),
    (fmtl.balancers.ew, "equal_contributions", {"equal_contributions": True}),
    (lambda: fmtl.balancers.nash_mtl(max_norm=0.0), "scale", {}),  # invariant, claimed equivariant
])  # fmt: skip
def test_check_balancer_catches_each_kind_of_defect(factory, prop, claims):
    with pytest.raises(AssertionError, match=f"property '{prop}' fails"):
        fmtl.testing.check_balancer(factory, properties=[prop], max_examples=20, **claims)


def test_check_balancer_runs_the_applicable_properties_only():
    checked = fmtl.testing.check_balancer(fmtl.balancers.ew, skip=["compiled", "strategies"], max_examples=3)
    assert "loss_weights" in checked and "non_conflict" not in checked and "equal_contributions" not in checked
    checked = fmtl.testing.check_balancer(fmtl.balancers.mgda, properties=["loss_weights", "log_transform"],
                                          max_examples=3)  # fmt: skip
    assert checked == ["log_transform"]
    with pytest.raises(ValueError, match="unknown properties.*'speed'"):
        fmtl.testing.check_balancer(fmtl.balancers.ew, properties=["speed"])
    with pytest.raises(TypeError, match="returned int, not a fmtl.Balancer"):
        fmtl.testing.check_balancer(lambda: 1)


def test_check_balancer_compiles_and_trains_a_users_balancer():
    def user_mean():
        return fmtl.balancers.gramian_balancer(lambda G, losses, state: (torch.full_like(losses, 0.5), None, state, {}))

    assert fmtl.testing.check_balancer(user_mean, tasks=(2, 2), properties=["compiled", "strategies"]) == [
        "compiled", "strategies"]  # fmt: skip


def test_strategies_need_hypothesis_and_say_so(monkeypatch):
    real_import = builtins.__import__

    def without_hypothesis(name, *args, **kwargs):
        if name == "hypothesis" or name.startswith("hypothesis."):
            raise ImportError("No module named 'hypothesis'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_hypothesis)
    monkeypatch.delitem(sys.modules, "fmtl.testing.strategies")
    with pytest.raises(ImportError, match=r"pip install 'fmtl\[testing\]'"):
        importlib.import_module("fmtl.testing.strategies")
    monkeypatch.undo()
    importlib.import_module("fmtl.testing.strategies")


def test_flat_case_is_the_same_jacobian():
    c = fmtl.testing.case(3, rank=2, seed=4)
    f = fmtl.testing.flat_case(c)
    for g, h in zip(c.grads, f.grads, strict=True):
        torch.testing.assert_close(flatten(g.shared), h.shared["flat"])
        assert isinstance(h.shared, TensorDict) and h.shared.batch_size == torch.Size([3])

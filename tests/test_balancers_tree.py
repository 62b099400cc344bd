"""Issue 18: every tree operation on multi-leaf Jacobians equals its flattened [T, P] version, and
the balancer property suite fails when one of them drops a leaf."""

from __future__ import annotations

import importlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tensordict import TensorDict

import fmtl
import fmtl.testing
from fmtl import tree
from fmtl.balancers import _gradient
from fmtl.testing import flatten
from fmtl.testing.strategies import jacobians

# leaves of different shapes and ranks, nested, one of them a scalar per task
SHAPES = {"enc": {"w": (3, 2), "b": (3,)}, "mix": (2, 1, 2), "scale": ()}


@settings(max_examples=40, deadline=None)
@given(jacobians(num_tasks=(1, 5), shapes=SHAPES), st.integers(0, 1000))
def test_tree_operations_equal_their_flattened_versions(J, seed):
    M = flatten(J)
    T = M.shape[0]
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(T, generator=g, dtype=M.dtype)
    v = fmtl.testing.jacobian(1, shapes=SHAPES, seed=seed + 1).apply(lambda x: x[0], batch_size=[])
    torch.testing.assert_close(tree.row_sq_norms(J), (M * M).sum(1))
    torch.testing.assert_close(tree.row_norms(J), M.norm(dim=1))
    torch.testing.assert_close(tree.gramian(J), M @ M.T)
    torch.testing.assert_close(flatten(tree.combine(w, J).unsqueeze(0))[0], w @ M)
    torch.testing.assert_close(tree.rows_dot(J, v), M @ flatten(v.unsqueeze(0))[0])
    torch.testing.assert_close(flatten(tree.scale_rows(w, J)), w[:, None] * M)
    assert [x.shape[1:] for x in tree.leaves(tree.scale_rows(w, J))] == [x.shape[1:] for x in tree.leaves(J)]


def _drop_last_leaf(J: TensorDict) -> torch.Tensor:
    """A Gramian that forgets one leaf of θ (the mutation of issue 18)."""
    rows = [x.reshape(x.shape[0], -1) for x in tree.leaves(J)][:-1]
    return sum(r @ r.T for r in rows) if rows else torch.zeros(J.batch_size[0], J.batch_size[0])


@pytest.mark.parametrize("name", ["mgda", "upgrad", "cagrad", "nash_mtl", "pcgrad"])
def test_a_gramian_that_drops_a_leaf_fails_the_balancer_suite(name, monkeypatch):
    monkeypatch.setattr(_gradient, "gramian", _drop_last_leaf)
    factory = lambda: fmtl.balancers.get(name)  # noqa: E731
    with pytest.raises(AssertionError, match="property 'flat' fails"):
        fmtl.testing.check_balancer(factory, properties=["flat"], max_examples=10)


def test_a_combine_that_drops_a_leaf_fails_the_balancer_suite(monkeypatch):
    def combine(weights, J):  # Jᵀw, but the last leaf is left at zero
        out = J.apply(lambda v: torch.tensordot(weights.to(v.dtype), v, dims=1), batch_size=[])
        last = list(out.keys(True, True))[-1]
        out[last] = torch.zeros_like(out[last])
        return out

    monkeypatch.setattr(_gradient, "combine", combine)
    with pytest.raises(AssertionError, match="property 'flat' fails"):
        fmtl.testing.check_balancer(fmtl.balancers.mgda, properties=["flat"], max_examples=10)


def test_row_norms_that_drop_a_leaf_fail_the_balancer_suite(monkeypatch):
    module = importlib.import_module("fmtl.balancers.dbmtl")  # (fmtl.balancers.dbmtl is the factory)

    def row_sq_norms(J):
        rows = [x.reshape(x.shape[0], -1) for x in tree.leaves(J)][:-1]
        return sum((r * r).sum(1) for r in rows)

    patched = {"row_sq_norms": row_sq_norms, "row_norms": lambda J: row_sq_norms(J).sqrt()}
    used = [name for name in patched if hasattr(module, name)]
    if not used:
        pytest.skip("DB-MTL no longer takes its norms from fmtl.tree")
    for name in used:
        monkeypatch.setattr(module, name, patched[name])
    with pytest.raises(AssertionError, match="property 'flat' fails"):
        fmtl.testing.check_balancer(fmtl.balancers.dbmtl, properties=["flat"], max_examples=10)

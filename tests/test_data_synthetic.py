"""The synthetic imbalance benchmark: determinism, scales, shared low-rank structure."""

from __future__ import annotations

import pytest
import torch

from fmtl.data import load
from fmtl.data.synthetic import default_scales


def test_deterministic_from_seed() -> None:
    a = load("synthetic", "train", n=100, seed=3)
    b = load("synthetic", "train", n=100, seed=3)
    c = load("synthetic", "train", n=100, seed=4)
    assert torch.equal(a.table["x"], b.table["x"]) and torch.equal(a.table["y"], b.table["y"])
    assert not torch.equal(a.table["x"], c.table["x"])


def test_splits_share_weights_but_not_samples() -> None:
    tr, va, te = (load("synthetic", s, n=64, n_eval=32, seed=1) for s in ("train", "val", "test"))
    assert torch.equal(tr.weights, va.weights) and torch.equal(tr.weights, te.weights)
    assert (len(tr), len(va), len(te)) == (64, 32, 32)
    assert not torch.equal(va.table["x"], te.table["x"])
    with pytest.raises(ValueError, match="split"):
        load("synthetic", "all")


def test_target_std_follows_scales() -> None:
    scales = [1.0, 4.0, 16.0, 64.0]
    ds = load("synthetic", n=40_000, num_tasks=4, dim=8, noise=0.5, scales=scales)
    std = ds.table["y"].std(0)
    torch.testing.assert_close(std / std[0], torch.tensor(scales), rtol=0.03, atol=0)
    torch.testing.assert_close(std, torch.tensor(scales) * (1 + 0.5**2) ** 0.5, rtol=0.03, atol=0)


def test_default_scales_are_geometric() -> None:
    s = default_scales(5)
    torch.testing.assert_close(s[1:] / s[:-1], torch.full((4,), 100**0.25, dtype=s.dtype))
    assert load("synthetic", n=4, num_tasks=5).scales[-1] == pytest.approx(100.0)


def test_conflict_zero_shares_a_rank_r_subspace() -> None:
    ds = load("synthetic", n=4, num_tasks=6, dim=16, rank=2, conflict=0.0)
    sv = torch.linalg.svdvals(ds.weights.double())
    assert bool((sv[2:] < 1e-5).all()) and bool((sv[:2] > 0.1).all())
    torch.testing.assert_close(ds.weights.norm(dim=1), torch.ones(6))
    full = load("synthetic", n=4, num_tasks=6, dim=16, rank=2, conflict=0.5)
    assert bool((torch.linalg.svdvals(full.weights.double()) > 0.1).all())


def test_noiseless_targets_are_exactly_linear() -> None:
    ds = load("synthetic", n=50, num_tasks=3, dim=5, noise=0.0, scales=[1.0, 2.0, 3.0])
    b = ds[torch.arange(50)]
    torch.testing.assert_close(b["y"], (b["x"] @ ds.weights.T) * ds.scales)
    assert b.batch_size == torch.Size([50]) and ds.tasks == ("t0", "t1", "t2")

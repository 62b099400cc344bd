"""Parity with TorchJD 0.18 where it has the method (skipped when torchjd is not installed).

The weightings take the Gramian (TorchJD's weighting/aggregator split): fmtl's weights are compared
with TorchJD's, or, where TorchJD's solver is iterative and stops early (MGDA's Frank–Wolfe) or
fmtl deliberately differs (documented in the docstrings), the optimality of fmtl's answer is.
"""

from __future__ import annotations

import pytest
import torch
from _balancer_samplers import random_gramian

import fmtl
from fmtl.balancers import _solvers
from fmtl.balancers.aligned_mtl import aligned_mtl_matrix
from fmtl.balancers.config import config_weights
from fmtl.balancers.dualproj import dualproj_weights
from fmtl.balancers.imtl_g import imtl_g_weights
from fmtl.balancers.krum import krum_weights
from fmtl.balancers.upgrad import upgrad_weights
from fmtl.testing import flatten, jacobian

aggregation = pytest.importorskip("torchjd.aggregation")
F64 = torch.float64
CASES = [(T, rank, seed) for T in (2, 3, 5, 8) for rank in sorted({1, max(1, T // 2), T}) for seed in (0, 1)]


def _quadprog():
    pytest.importorskip("quadprog")
    pytest.importorskip("qpsolvers")


@pytest.mark.parametrize("T,rank,seed", [c for c in CASES if c[1] == c[0]])
def test_upgrad_and_dualproj_match_quadprog(T, rank, seed):
    _quadprog()
    G = random_gramian(T, rank, seed, norm_spread=10.0)
    torch.testing.assert_close(upgrad_weights(G), aggregation.UPGradWeighting()(G), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(dualproj_weights(G), aggregation.DualProjWeighting()(G), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("T,rank,seed", CASES)
def test_mgda_is_at_least_as_good_as_frank_wolfe(T, rank, seed):
    G = random_gramian(T, rank, seed, norm_spread=10.0)
    ours = _solvers.min_norm_simplex(G)
    theirs = aggregation.MGDAWeighting()(G)
    assert float(ours @ G @ ours) <= float(theirs @ G @ theirs) + 1e-12
    assert _solvers.kkt_min_norm(G, ours) <= 1e-10


@pytest.mark.parametrize("T,rank,seed", CASES)
def test_imtl_g_config_and_aligned_mtl_match(T, rank, seed):
    J = flatten(jacobian(T, rank, seed=seed, norm_spread=10.0))
    G = J @ J.T
    torch.testing.assert_close(imtl_g_weights(G), aggregation.IMTLGWeighting()(G), rtol=1e-6, atol=1e-8)
    if rank == T:  # (for dependent rows the two pseudo-inverses use different cut-offs)
        torch.testing.assert_close(config_weights(G) @ J, aggregation.ConFIG()(J), rtol=1e-7, atol=1e-9)
    for mode in ("min", "median", "rmse"):  # TorchJD combines with the mean, fmtl (LibMTL) with the sum
        torch.testing.assert_close(aligned_mtl_matrix(G, mode).sum(0) / T,
                                   aggregation.AlignedMTLWeighting(scale_mode=mode)(G))  # fmt: skip


@pytest.mark.parametrize("seed", range(4))
def test_krum_and_trimmed_mean_match(seed):
    J = flatten(jacobian(6, seed=seed, norm_spread=3.0))
    G = J @ J.T
    for f, m in ((0, 1), (1, 1), (2, 3)):
        torch.testing.assert_close(krum_weights(G, f, m), aggregation.KrumWeighting(f, m)(G))
    b = fmtl.balancers.trimmed_mean(trim_number=2)
    params = fmtl.testing.params_for(6, shapes={"w": (J.shape[1],)})
    grads = fmtl.TaskGradients(torch.ones(6, dtype=F64), fmtl.testing.unflatten(J, {"w": (J.shape[1],)}),
                               params["tasks"].apply(torch.zeros_like))  # fmt: skip
    out, _, _ = b.update(grads, b.init(params, 6), params)
    torch.testing.assert_close(out["shared", "w"], aggregation.TrimmedMean(2)(J))


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_fairgrad_solves_the_equation_scipy_approximates(alpha):
    pytest.importorskip("scipy")
    G = random_gramian(4, 4, 3, norm_spread=5.0)
    ours = _solvers.alpha_fair(G, alpha)
    theirs = aggregation.FairGradWeighting(alpha)(G)
    residual = lambda w: float((G @ w - w.pow(-1 / alpha)).abs().max())  # noqa: E731
    assert residual(ours) <= 1e-9 and residual(ours) <= residual(theirs) + 1e-12
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def test_modo_and_sdmgrad_follow_the_same_iterations():
    G = random_gramian(3, 3, 1, norm_spread=4.0)
    T = 3
    params = fmtl.testing.params_for(T)
    modo = fmtl.balancers.modo(gamma=0.1, rho=0.1)
    sdm = fmtl.balancers.sdmgrad(lr=10.0)  # TorchJD's default learning rate (LibMTL's is 5)
    theirs_modo, theirs_sdm = aggregation.MoDoWeighting(gamma=0.1, rho=0.1), aggregation.SDMGradWeighting()
    s_modo, s_sdm = modo.init(params, T), sdm.init(params, T)
    # one fixed Jacobian whose Gramian is G: build it from the Cholesky factor
    L = torch.linalg.cholesky(G)
    J = fmtl.testing.unflatten(torch.cat([L, torch.zeros(T, 23 - T, dtype=F64)], 1), fmtl.testing.SHAPES)
    grads = fmtl.TaskGradients(torch.ones(T, dtype=F64), J, params["tasks"].apply(torch.zeros_like))
    for _ in range(3):
        _, s_modo, info = modo.update(grads, s_modo, params)
        torch.testing.assert_close(info["weights"], theirs_modo(G))
        _, s_sdm, info = sdm.update(grads, s_sdm, params)
        # TorchJD divides by s² + 10⁻⁸ (fmtl by s²): 10⁻⁹ relative, grown by 20 steps of size 10
        torch.testing.assert_close(info["weights"], theirs_sdm(G), rtol=1e-4, atol=1e-6)


def test_gradvac_matches_for_two_tasks():
    # with two tasks each visits the other only: no dependence on the random order
    G = random_gramian(2, 2, 5)
    theirs = aggregation.GradVacWeighting(beta=0.5)
    b = fmtl.balancers.gradvac(beta=0.5)
    params = fmtl.testing.params_for(2)
    state = b.init(params, 2)
    L = torch.linalg.cholesky(G)
    J = fmtl.testing.unflatten(torch.cat([L, torch.zeros(2, 21, dtype=F64)], 1), fmtl.testing.SHAPES)
    grads = fmtl.TaskGradients(torch.ones(2, dtype=F64), J, params["tasks"].apply(torch.zeros_like))
    for _ in range(4):
        _, state, info = b.update(grads, state, params)
        torch.testing.assert_close(info["weights"], theirs(G), rtol=1e-7, atol=1e-9)

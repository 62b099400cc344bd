"""The exact solvers: optimality conditions up to T = 64, a brute-force reference, compile, bounds."""

from __future__ import annotations

import itertools

import pytest
import torch
from _balancer_samplers import random_gramian
from hypothesis import given, settings
from hypothesis import strategies as st

from fmtl.balancers import _qp, _solvers
from fmtl.balancers.dualproj import dualproj_weights
from fmtl.balancers.upgrad import upgrad_gramian, upgrad_weights

F64 = torch.float64


@pytest.mark.parametrize("T", [2, 5, 12, 32, 48, 64])
@pytest.mark.parametrize("seed", [0, 1])
def test_kkt_residuals_at_most_1e_minus_10_up_to_64_tasks(T, seed):
    G = random_gramian(T, T, seed, condition=10.0)
    assert _solvers.kkt_min_norm(G, _solvers.min_norm_simplex(G)) <= 1e-10
    assert _solvers.kkt_cagrad(G, 0.5, _solvers.cagrad_dual(G, 0.5)) <= 1e-10
    U = torch.eye(T, dtype=F64) / T
    for Gn in (G, upgrad_gramian(G, 1e-4, 1e-4)):  # raw, and UPGrad's normalized and regularized
        assert _solvers.kkt_dual_cone(Gn, U, _solvers.project_dual_cone(Gn, U)) <= 1e-10
    u = torch.full((1, T), 1.0 / T, dtype=F64)
    assert _solvers.kkt_dual_cone(G, u, _solvers.project_dual_cone(G, u)) <= 1e-10  # DualProj's


problems = st.tuples(st.integers(1, 40), st.integers(0, 40), st.sampled_from([1.0, 1e3, 1e6]),
                     st.sampled_from([1.0, 1e2, 1e4]), st.integers(0, 10_000))  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(problems)
def test_kkt_on_any_rank_conditioning_and_norm_spread(problem):
    T, deficit, spread, condition, seed = problem
    G = random_gramian(T, max(T - deficit, 0), seed, spread, condition)
    assert _solvers.kkt_min_norm(G, _solvers.min_norm_simplex(G)) <= 1e-9
    w = _solvers.cagrad_dual(G, 0.5)
    assert torch.isfinite(w).all() and (w >= 0).all() and abs(float(w.sum()) - 1) < 1e-9
    U = torch.eye(T, dtype=F64) / T
    Gn = upgrad_gramian(G, 1e-4, 0.0)  # unregularized: singular whenever rank < T
    assert _solvers.kkt_dual_cone(Gn, U, _solvers.project_dual_cone(Gn, U)) <= 1e-9


def _cagrad_objective(G: torch.Tensor, w: torch.Tensor) -> float:
    mean = torch.full((G.shape[0],), 1.0 / G.shape[0], dtype=F64)
    return float(w @ G @ mean + 0.5 * (mean @ G @ mean).sqrt() * (w @ G @ w).clamp_min(0).sqrt())


@settings(max_examples=40, deadline=None)
@given(problems)
def test_cagrads_interior_start_reaches_the_optimum_of_the_vertex_start(problem):
    """The dual from the interior face (one solve when every task is in the support) against the
    one-index-at-a-time path from the best vertex: the same optimum, on any rank and conditioning."""
    T, deficit, spread, condition, seed = problem
    G = random_gramian(T, max(T - deficit, 0), seed, spread, condition)
    iterations, program = [], _qp.simplex_program

    def counted(*args, **kwargs):
        y, n = program(*args, **kwargs)
        iterations.append(int(n))
        return y, n

    with pytest.MonkeyPatch.context() as m:
        m.setattr(_solvers, "simplex_program", counted)
        w = _solvers.cagrad_dual(G, 0.5)
        m.setattr(_solvers, "simplex_program", lambda *a, interior_start, **k: program(*a, **k))
        vertex = _solvers.cagrad_dual(G, 0.5)
    scale = float(torch.diagonal(G).amax())
    assert _cagrad_objective(G, w) <= _cagrad_objective(G, vertex) + 1e-10 * scale
    assert _solvers.kkt_cagrad(G, 0.5, w) <= 1e-9
    if bool((w > 0).all()):
        assert iterations == [1]  # started at the optimum: one confirming step


def _nnqp_reference(C: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """min ½xᵀCx + cᵀx over x ≥ 0 by enumerating the free sets (C positive definite, tiny n)."""
    n = C.shape[0]
    best, value = None, float("inf")
    for free in itertools.product([False, True], repeat=n):
        F = torch.tensor(free)
        x = torch.zeros(n, dtype=C.dtype)
        if F.any():
            x[F] = torch.linalg.solve(C[F][:, F], -c[F])
        f = float(0.5 * x @ C @ x + c @ x)
        if (x >= -1e-12).all() and f < value:
            best, value = x, f
    return best


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 4), st.integers(0, 10_000))
def test_nnqp_matches_enumeration(n, batch, seed):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n + 2, generator=g, dtype=F64)
    C = A @ A.T + 1e-3 * torch.eye(n, dtype=F64)
    c = torch.randn(batch, n, generator=g, dtype=F64)
    x, iterations = _qp.nnqp(C, c)
    for b in range(batch):
        torch.testing.assert_close(x[b], _nnqp_reference(C, c[b]), rtol=1e-9, atol=1e-12)
    assert int(iterations) < 4 * n + 20  # the bound is never reached


def _dual_cone_general(G: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """project_dual_cone's general path (what it compiles to), written out from the _qp pieces."""
    C, d, zero = _qp.equilibrate(G)
    lower = torch.where(zero, 0.0, U.to(F64) * d)
    x, _ = _qp.nnqp(C, lower @ C, zero)
    return torch.where(zero, U.to(F64), (lower + x) / d).to(U.dtype)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 24), st.integers(0, 24), st.sampled_from([1.0, 1e4, 1e8]), st.sampled_from([1.0, 1e3]),
       st.sampled_from([0.0, 1e-4]), st.booleans(), st.integers(0, 10_000))  # fmt: skip
def test_the_eager_fast_path_gives_the_general_paths_answer(T, deficit, spread, condition, ridge, one, seed):
    # the eager fast path (equilibrate_definite + pivoting_definite, Python bookkeeping for one row)
    # against the general path it falls back to: the same projections, whatever the rank
    G = random_gramian(T, max(T - deficit, 0), seed, spread, condition)
    ridge = ridge * float(torch.trace(G))
    U = torch.full((1, T), 1.0 / T, dtype=F64) if one else torch.eye(T, dtype=F64) / T
    V = _solvers.project_dual_cone(G, U, ridge)
    Gr = G + ridge * torch.eye(T, dtype=F64)
    assert _solvers.kkt_dual_cone(Gr, U, V) <= 1e-9
    if ridge > 0:  # (without it a singular G has many minimizers v: only Jᵀv is unique)
        torch.testing.assert_close(V, _dual_cone_general(Gr, U), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("B", [1, 3])
def test_pivoting_definite_matches_pivoting_and_declines_what_it_cannot_certify(B):
    g = torch.Generator().manual_seed(B)
    for n in (1, 4, 12):
        A = torch.randn(n, n + 2, generator=g, dtype=F64)
        C, _, info = _qp.equilibrate_definite(A @ A.T)
        c = torch.randn(B, n, generator=g, dtype=F64)
        x = _qp.pivoting_definite(C, c, info, 4 * n + 20, 1e-13 * n)
        for b in range(B):
            torch.testing.assert_close(x[b], _nnqp_reference(C, c[b]), rtol=1e-9, atol=1e-12)
        # not positive definite (info), a zero row (NaN in C), or too few iterations: None
        assert _qp.pivoting_definite(C, c, torch.tensor(1), 4 * n + 20, 1e-13 * n) is None
        assert _qp.pivoting_definite(C, torch.full_like(c, float("nan")), info, 4 * n + 20, 1e-13 * n) is None
    hard = -torch.ones(B, 12, dtype=F64)  # no iteration allowed: nothing is certified
    C = torch.eye(12, dtype=F64) - 0.05
    assert _qp.pivoting_definite(C, hard, torch.tensor(0), 0, 1e-12) is None


def test_equilibrate_definite_is_equilibrate_of_the_ridged_gramian():
    G = random_gramian(6, 6, 0, norm_spread=1e3)
    for ridge in (0.0, 0.5):
        C, inv, info = _qp.equilibrate_definite(G, ridge)
        C0, d, zero = _qp.equilibrate(G + ridge * torch.eye(6, dtype=F64))
        assert int(info) == 0 and not zero.any()
        torch.testing.assert_close(C, C0, rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(inv, 1 / d, rtol=1e-15, atol=0)
    # a zero row: NaN in C (so c = Cl is NaN and the fast path declines), even for T = 1
    for Z in (torch.zeros(1, 1, dtype=F64), torch.block_diag(G[:2, :2], torch.zeros(1, 1, dtype=F64))):
        C, _, _ = _qp.equilibrate_definite(Z)
        assert torch.isnan(C).any()
    # indefinite by round-off: info ≠ 0
    assert int(_qp.equilibrate_definite(torch.tensor([[1.0, -1.0 - 1e-6], [-1.0 - 1e-6, 1.0]]))[2]) != 0


def test_zero_rows_and_tiny_gramians_take_the_general_path():
    # a zero gradient keeps v_t = u_t; G = 0 (T = 1 included) gives v = u; tr(G) < norm_eps is the mean
    conflict, zero = torch.tensor([[1.0, -1.0], [-1.0, 2.0]], dtype=F64), torch.zeros(1, 1, dtype=F64)
    for G in (zero, torch.zeros(3, 3, dtype=F64), torch.block_diag(conflict, zero)):
        T = G.shape[0]
        u = torch.full((1, T), 1.0 / T, dtype=F64)
        V = _solvers.project_dual_cone(G, u)
        assert torch.isfinite(V).all()
        torch.testing.assert_close(V, _dual_cone_general(G, u))
    torch.testing.assert_close(dualproj_weights(1e-6 * torch.eye(3, dtype=F64)), torch.full((3,), 1 / 3, dtype=F64))


def test_project_simplex_is_the_euclidean_projection():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        y = 3 * torch.randn(5, generator=g, dtype=F64)
        p = _qp.project_simplex(y)
        assert (p >= 0).all() and abs(float(p.sum()) - 1) < 1e-12
        # optimality: y − p = θ1 on the support and ≤ θ off it
        theta = (y - p)[p > 0]
        assert torch.allclose(theta, theta[0].expand_as(theta))
        assert ((y - p)[p == 0] <= theta[0] + 1e-12).all()


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 4.0])
def test_alpha_fair_weights_solve_their_equation(alpha):
    for seed in range(5):
        G = random_gramian(4, 4, seed, norm_spread=10.0) * 7.0
        w = _solvers.alpha_fair(G, alpha)
        assert (w > 0).all()
        torch.testing.assert_close(G @ w, w.pow(-1.0 / alpha), rtol=1e-9, atol=0)
    torch.testing.assert_close(_solvers.alpha_fair(torch.eye(3, dtype=F64), 0.0), torch.full((3,), 1 / 3, dtype=F64))


@pytest.mark.parametrize("T", [12, 32])
def test_solvers_compile_to_one_graph_and_match_eager(T):
    # the loops are torch.while_loop under compile: one graph whatever the number of iterations
    torch._dynamo.reset()
    G = random_gramian(T, T, 3, norm_spread=10.0)
    u = torch.full((1, T), 1.0 / T, dtype=F64)
    tiny = 1e-6 * G / torch.trace(G)  # tr(G) < norm_eps: the mean, by a branch eagerly
    for fn, args in ((_solvers.min_norm_simplex, (G,)), (_solvers.project_dual_cone, (G, u)),
                     (dualproj_weights, (G,)), (dualproj_weights, (tiny,)), (upgrad_weights, (G,)),
                     (_solvers.cagrad_dual, (G, 0.5))):  # fmt: skip
        compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(*args), fn(*args), rtol=1e-10, atol=1e-12)


def test_bounded_loop_stops_at_the_bound_in_both_modes():
    def count_up(running, x):
        return x < 100, x + 1

    start = (torch.tensor(True), torch.tensor(0))
    n, (_, x) = _qp.bounded_loop(count_up, start, 7)
    assert (int(n), int(x)) == (7, 7)
    torch._dynamo.reset()
    compiled = torch.compile(lambda s: _qp.bounded_loop(count_up, s, 7), fullgraph=True, backend="aot_eager")
    n, (_, x) = compiled(start)
    assert (int(n), int(x)) == (7, 7)


def test_the_ridge_is_relative_to_each_task_norm():
    # gradient norms 10⁸ apart: C is the cosine matrix whatever the spread, the ridge T·ε₆₄ on it
    G = torch.diag(torch.tensor([1e16, 1.0, 1e-16], dtype=F64))
    C, d, zero = _qp.equilibrate(G)
    torch.testing.assert_close(C, (1 + 3 * torch.finfo(F64).eps) * torch.eye(3, dtype=F64))
    torch.testing.assert_close(d, torch.tensor([1e8, 1.0, 1e-8], dtype=F64))
    assert not zero.any()
    # a float32 Gramian that is indefinite by round-off gets the float32 ridge instead
    bad = torch.tensor([[1.0, -1.0 - 1e-6], [-1.0 - 1e-6, 1.0]])
    C, _, _ = _qp.equilibrate(bad)
    assert torch.linalg.eigvalsh(C).min() > 0

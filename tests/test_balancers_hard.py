"""The hard inputs of issue 16, each pinned: a finite, correct direction (or a clear error).

References are plain enumerations written for tiny T (every free set, pseudo-inverse solutions),
or the optimality conditions themselves.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from tensordict import TensorDict

import fmtl
from fmtl.balancers import _random, _solvers
from fmtl.balancers.cagrad import cagrad_weights
from fmtl.balancers.imtl_g import imtl_g_weights
from fmtl.balancers.mgda import mgda_weights
from fmtl.balancers.pcgrad import pcgrad_coefficients
from fmtl.balancers.upgrad import upgrad_gramian, upgrad_weights

F64 = torch.float64


def _update(name: str, J: torch.Tensor, steps: int = 1, **hp) -> list[torch.Tensor]:
    """θ-updates of ``steps`` calls of balancer ``name`` on the [T, P] Jacobian J (one leaf)."""
    T, P = J.shape
    params = TensorDict({"shared": {"w": torch.zeros(P, dtype=J.dtype)},
                         "tasks": {f"t{i}": {} for i in range(T)}}, [])  # fmt: skip
    b = fmtl.balancers.get(name, **hp)
    state = b.init(params, T)
    out = []
    for _ in range(steps):
        g, state, _ = b.update(fmtl.TaskGradients(torch.ones(T, dtype=J.dtype), TensorDict({"w": J}, [T]),
                                                  params["tasks"]), state, params)  # fmt: skip
        out.append(g["shared", "w"])
    return out


def _box_reference(G: torch.Tensor, u: torch.Tensor) -> float:
    """min vᵀGv over v ≥ u by enumerating the free sets (pseudo-inverse on each): the optimal value."""
    T = G.shape[0]
    best = math.inf
    for free in itertools.product([False, True], repeat=T):
        F = torch.tensor(free)
        v = u.clone()
        if F.any():
            v[F] = -torch.linalg.pinv(G[F][:, F]) @ (G[F][:, ~F] @ u[~F])
        if (v >= u - 1e-12).all():
            best = min(best, float(v @ G @ v))
    return best


# ---------------------------------------------------------------- UPGrad with reg_eps = 0

SINGULAR = {
    "duplicate rows": [[1.0, 0.0], [1.0, 0.0], [-1.0, 1.0]],
    "a zero row": [[1.0, 0.0], [0.0, 0.0], [-1.0, 1.0]],
    "opposite rows": [[1.0, 2.0], [-2.0, -4.0], [0.5, 1.0]],
}


@pytest.mark.parametrize("what", SINGULAR)
def test_upgrad_without_regularization_is_exact_on_a_singular_gramian(what):
    # before: numpy.linalg.LinAlgError (every candidate active set of a singular G was singular)
    J = torch.tensor(SINGULAR[what], dtype=F64)
    G = J @ J.T
    T = G.shape[0]
    Gn = upgrad_gramian(G, 1e-4, 0.0)
    V = _solvers.project_dual_cone(Gn, torch.eye(T, dtype=F64) / T)
    assert torch.isfinite(V).all()
    for i in range(T):  # each projection reaches the enumerated optimum
        u = torch.eye(T, dtype=F64)[i] / T
        assert float(V[i] @ Gn @ V[i]) == pytest.approx(_box_reference(Gn, u), rel=1e-9, abs=1e-15)
    assert _solvers.kkt_dual_cone(Gn, torch.eye(T, dtype=F64) / T, V) < 1e-10
    d = _update("upgrad", J, reg_eps=0.0)[0]
    assert (J @ d >= -1e-12).all(), J @ d  # non-conflicting


@pytest.mark.parametrize("scale", [1e-3, 1e-10, 0.0])
def test_upgrad_without_regularization_on_a_tiny_jacobian_is_the_mean(scale):
    # ‖J‖² < norm_eps = 1e-4: TorchJD's normalization zeroes the Gramian, every v_i = e_i/T
    J = scale * torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=F64)
    torch.testing.assert_close(upgrad_weights(J @ J.T, reg_eps=0.0), torch.full((2,), 0.5, dtype=F64))
    torch.testing.assert_close(_update("upgrad", J, reg_eps=0.0)[0], J.mean(0))


# ---------------------------------------------------------------- CAGrad with 0 in the hull


@pytest.mark.parametrize("c", [1.0, 2.0, 5.0])
def test_cagrad_with_zero_in_the_hull_and_c_at_least_one_does_not_conflict(c):
    # g₁ + g₂ + g₃ ≠ 0 but ½g₁ + ¼g₂ + ¼g₃ = 0; J d ≥ 0 only for d = 0, which lies in the ball for
    # c ≥ 1. Before: d = g₀ = (−⅓, 0) and J d = (−⅓, ⅓, ⅓).
    J = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=F64)
    d = J.T @ cagrad_weights(J @ J.T, c)
    torch.testing.assert_close(d, torch.zeros(2, dtype=F64), atol=1e-12, rtol=0)
    assert (J @ _update("cagrad", J, c=c)[0] >= -1e-12).all()


def test_cagrad_with_zero_in_the_hull_keeps_the_conflict_free_point_closest_to_the_mean():
    # g₁ = −g₂ (0 in the hull), g₃ = (0, 1): the cone J d ≥ 0 is {d₁ = 0, d₂ ≥ 0} and g₀ = (0, ⅓) in it
    J = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], dtype=F64)
    for c in (0.5, 2.0):
        torch.testing.assert_close(J.T @ cagrad_weights(J @ J.T, c), torch.tensor([0.0, 1 / 3], dtype=F64))


def test_cagrad_with_zero_in_the_hull_and_a_small_ball_stays_in_the_ball():
    # g₀ = (−⅓, 0) is √2/3·… away from the cone {0}: with c = ½ the ball (radius ⅙) misses it; the
    # dual optimum then has g_w ≠ 0 and the usual formula applies: ‖d − g₀‖ = c‖g₀‖
    J = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=F64)
    G, a = J @ J.T, torch.full((3,), 1 / 3, dtype=F64)
    coef = cagrad_weights(G, 0.5)
    assert torch.isfinite(coef).all()
    torch.testing.assert_close(torch.sqrt((coef - a) @ G @ (coef - a)), 0.5 * torch.sqrt(a @ G @ a))


# ---------------------------------------------------------------- MGDA across norm spreads


def test_mgda_is_exact_for_gradient_norms_a_million_apart():
    # orthogonal g₁ = 10⁶e₁, g₂ = e₂: w ∝ 1/‖g_t‖², d = (10⁻⁶, 1)/(1 + 10⁻¹²). The fixed ridge of
    # before made d 44 % too long.
    J = torch.tensor([[1e6, 0.0], [0.0, 1.0]], dtype=F64)
    w = mgda_weights(J @ J.T, torch.ones(2, dtype=F64))
    torch.testing.assert_close(w, torch.tensor([1e-12, 1.0], dtype=F64) / (1 + 1e-12), rtol=1e-12, atol=0)


@pytest.mark.parametrize("seed", range(5))
def test_mgda_with_norms_from_1e_minus_8_to_1e8_meets_its_optimality_conditions(seed):
    # the min-norm point d satisfies ⟨g_t, d⟩ ≥ ‖d‖² for every task, with equality on the support
    # (so there is no conflict), here measured relative to ‖g_t‖‖d‖ (d ~ 10⁻⁸, ‖g₄‖ = 10⁸). The
    # fixed ridge of before made the direction conflict with a 1e-8…1e8 spread.
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(4, 6, generator=g, dtype=F64)
    J = J / J.norm(dim=1, keepdim=True) * torch.tensor([1e-8, 1.0, 1e4, 1e8], dtype=F64)[:, None]
    w = mgda_weights(J @ J.T, torch.ones(4, dtype=F64))
    assert (w >= 0).all() and abs(float(w.sum()) - 1) < 1e-12
    d = J.T @ w
    gap = (J @ d - d @ d) / (J.norm(dim=1) * d.norm())
    assert (gap >= -1e-12).all(), gap
    assert (gap[w > 0].abs() < 1e-12).all(), (w, gap)


# ---------------------------------------------------------------- GradVac in float32


def test_gradvac_stays_bounded_on_float32_rank_one_mixed_sign_jacobians():
    # before: ‖g̃‖ = 2·10¹⁰ by the third call (round-off made |φ| > 1 and the targets left [−1, 1])
    v = torch.tensor([0.3, -1.2, 0.7, 0.1])
    for c in ([-0.66, 1.32, 0.037, -0.28], [1.0, -1.0], [0.5, -2.0, 1.0]):
        J = torch.tensor(c)[:, None] * v[None]
        for out in _update("gradvac", J, steps=40, seed=7):
            assert torch.isfinite(out).all() and out.norm() <= 10 * J.norm(), out.norm()


# ---------------------------------------------------------------- IMTL-G on dependent gradients


def test_imtl_g_on_a_rank_deficient_jacobian_is_the_pseudo_inverse_answer():
    # g₂ = 2g₁: (DUᵀ)⁻¹ does not exist; TorchJD's α = G⁺d / 1ᵀG⁺d. Before: α ≈ 0.
    J = torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 1.0, 1.0]], dtype=F64)
    G = J @ J.T
    d = torch.diagonal(G).sqrt()
    v = torch.linalg.pinv(G) @ d
    alpha = imtl_g_weights(G)
    torch.testing.assert_close(alpha, v / v.sum())
    assert alpha.abs().sum() > 0.5
    proj = J @ (J.T @ alpha) / J.norm(dim=1)  # equal projections on the unit gradients
    torch.testing.assert_close(proj, proj.mean().expand(3))


def test_imtl_g_returns_zero_when_no_direction_has_equal_projections():
    # g₂ = −g₁: G⁺d = 0
    J = torch.tensor([[1.0, 2.0], [-1.0, -2.0]], dtype=F64)
    torch.testing.assert_close(imtl_g_weights(J @ J.T), torch.zeros(2, dtype=F64))


# ---------------------------------------------------------------- the counter-based RNG


def test_first_draws_are_well_spread_from_the_first_step():
    # before: seed 0, step 0 drew the integer 0, i.e. the uniform 2⁻³³
    first = _random.uniform(torch.tensor(0), torch.tensor(0), 4, dtype=F64)
    assert first.min() > 1e-3 and first.max() < 1 - 1e-3, first
    # over seeds (first draw of step 0) and over steps (first draw of seed 0): Kolmogorov–Smirnov
    for draws in (
        torch.stack([_random.uniform(torch.tensor(s), torch.tensor(0), 1, dtype=F64)[0] for s in range(1000)]),
        torch.stack([_random.uniform(torch.tensor(0), torch.tensor(k), 1, dtype=F64)[0] for k in range(1000)]),
    ):
        x, _ = torch.sort(draws)
        n = x.numel()
        ks = torch.maximum((torch.arange(1, n + 1) / n - x).abs(), (x - torch.arange(n) / n).abs()).max()
        assert ks < 1.63 / math.sqrt(n), ks  # the 1 % critical value


def test_rlw_step_zero_weights_are_not_degenerate():
    # before: [0.986, 0.005, 0.009] for seed 0, T = 3
    b = fmtl.balancers.get("rlw", seed=0)
    w, _, _ = b.loss_weights(torch.ones(3), b.init(None, 3), None)
    assert w.max() < 0.9, w


# ---------------------------------------------------------------- PCGrad visits g_i itself


def _pcgrad_loop(J: torch.Tensor, orders: list[list[int]], skip_self: bool) -> torch.Tensor:
    """PCGrad as LibMTL writes it (a loop over the visiting order), or TorchJD's (skipping j = i)."""
    out = []
    for i, order in enumerate(orders):
        g = J[i].clone()
        for j in order:
            if skip_self and j == i:
                continue
            dot = g @ J[j]
            if dot < 0:
                g = g - dot / (J[j] @ J[j]) * J[j]
        out.append(g)
    return torch.stack(out).sum(0)


def test_pcgrad_visits_each_gradient_itself_as_libmtl():
    g = torch.Generator().manual_seed(0)
    differ = 0
    for _ in range(200):
        orders = [list(torch.randperm(3, generator=g).tolist()) for _ in range(3)]
        J = torch.randn(3, 2, generator=g, dtype=F64)
        C = pcgrad_coefficients(J @ J.T, torch.tensor(orders))
        torch.testing.assert_close(C.sum(0) @ J, _pcgrad_loop(J, orders, skip_self=False))
        differ += not torch.allclose(_pcgrad_loop(J, orders, True), _pcgrad_loop(J, orders, False))
    assert 0.02 < differ / 200 < 0.2, differ  # 6.5 % of 2,000 such draws

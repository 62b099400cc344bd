"""Pinned values on a tiny Jacobian for every method, and each solver's optimality conditions.

The running example (unless a test says otherwise) is the 2×3 Jacobian

    g₁ = (2, 0, 0),  g₂ = (−1, 1, 0),  G = J Jᵀ = [[4, −2], [−2, 2]],  losses ℓ = (1, 4),

two conflicting tasks (g₁·g₂ = −2) of different norms (‖g₁‖ = 2, ‖g₂‖ = √2).
"""

from __future__ import annotations

import math

import pytest
import torch
from _balancer_samplers import random_gramian
from hypothesis import example, given, settings
from hypothesis import strategies as st
from tensordict import TensorDict

import fmtl
from fmtl.balancers import _random, _solvers
from fmtl.balancers.aligned_mtl import aligned_mtl_matrix
from fmtl.balancers.cagrad import cagrad_weights
from fmtl.balancers.imtl_g import imtl_g_weights
from fmtl.balancers.mgda import mgda_weights
from fmtl.balancers.pcgrad import pcgrad_coefficients
from fmtl.balancers.upgrad import upgrad_weights

S2 = math.sqrt(2.0)
RMSE = math.sqrt(3.0 / (3.0 - math.sqrt(5.0)))
J2 = torch.tensor([[2.0, 0.0, 0.0], [-1.0, 1.0, 0.0]], dtype=torch.float64)
G2 = J2 @ J2.T
LOSSES = torch.tensor([1.0, 4.0], dtype=torch.float64)


def _params():
    heads = {"a": {"h": torch.zeros(1)}, "b": {"h": torch.zeros(1)}}
    return TensorDict({"shared": {"w": torch.zeros(3)}, "tasks": heads}, []).apply(lambda v: v.double())


def _first_step(name: str, **hp):
    """θ-gradient, head gradients (heads' raw gradient is 1 for both tasks), info, state."""
    params = _params()
    heads = params["tasks"].apply(torch.ones_like)
    grads = fmtl.TaskGradients(LOSSES, TensorDict({"w": J2}, [2]), heads)
    b = fmtl.balancers.get(name, **hp)
    out, state, info = b.update(grads, b.init(params, 2), params)
    head = torch.stack([out["tasks", "a", "h"][0], out["tasks", "b", "h"][0]])
    return out["shared", "w"], head, info, state


def _close(actual, expected, atol=1e-6):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=1e-6)


ONES = (1.0, 1.0)

# name, hyperparameters, θ-gradient, head weights — each derived in its comment
PINNED = [
    # EW: g₁ + g₂
    ("ew", {}, (1.0, 1.0, 0.0), ONES),
    # GLS: w_t = GM/(T ℓ_t), GM = √(1·4) = 2 → w = (1, ¼); g₁ + ¼g₂
    ("gls", {}, (1.75, 0.25, 0.0), (1.0, 0.25)),
    # UW: s = −½ → w = e^{½}/2 = 0.824361 for both
    ("uw", {}, (0.824361, 0.824361, 0.0), (0.824361, 0.824361)),
    # DWA: first two epochs use w = 1
    ("dwa", {}, (1.0, 1.0, 0.0), ONES),
    # IMTL-L: s = 0 → w = e⁰ = 1
    ("imtl_l", {}, (1.0, 1.0, 0.0), ONES),
    # FAMO: z = ½, w_t ∝ z_t/ℓ_t normalized: (1, ¼)/1.25 = (0.8, 0.2); 0.8g₁ + 0.2g₂
    ("famo", {}, (1.4, 0.2, 0.0), (0.8, 0.2)),
    # MGDA: min over the segment: w₁ = (G₂₂ − G₁₂)/(G₁₁ + G₂₂ − 2G₁₂) = 4/10 → 0.4g₁ + 0.6g₂;
    # heads unweighted (LibMTL), or weighted by w with weight_heads (the original)
    ("mgda", {}, (0.2, 0.6, 0.0), ONES),
    ("mgda", {"weight_heads": True}, (0.2, 0.6, 0.0), (0.4, 0.6)),
    # GradNorm: logits 0 → w = 2·softmax = 1
    ("gradnorm", {}, (1.0, 1.0, 0.0), ONES),
    # PCGrad: g₁ − (−2/2)g₂ = (1, 1, 0); g₂ − (−2/4)g₁ = (0, 1, 0); sum
    ("pcgrad", {}, (1.0, 2.0, 0.0), ONES),
    # GradVac, targets φ̂ = 0: w = −‖g_i‖φ_ij/‖g_j‖ = −⟨g_i, g_j⟩/‖g_j‖²: PCGrad's projection
    ("gradvac", {}, (1.0, 2.0, 0.0), ONES),
    # IMTL-G: d = α₁g₁ + α₂g₂, d·u₁ = 2α₁ − α₂ = d·u₂ = √2(α₂ − α₁), α₁ + α₂ = 1
    #   → α₁ = 1/(1 + √2) = √2 − 1, α₂ = 2 − √2; d = (3√2 − 4, 2 − √2, 0)
    ("imtl_g", {}, (3 * S2 - 4, 2 - S2, 0.0), ONES),
    # IMTL: s = 0 at the first step → IMTL-G; heads get e^{s} = 1
    ("imtl", {}, (3 * S2 - 4, 2 - S2, 0.0), ONES),
    # Nash-MTL (no clipping): α₁(4α₁ − 2α₂) = 1 = α₂(2α₂ − 2α₁) → 4α₁² = 2α₂², α₂ = √2α₁,
    #   α₁ = 1/√(4 − 2√2) = 0.923880, α₂ = 1.306563; Jᵀα = (2α₁ − α₂, α₂, 0)
    ("nash_mtl", {"max_norm": 0.0}, (0.541196, 1.306563, 0.0), (0.923880, 1.306563)),
    # with clipping to 1: ‖Jᵀα‖² = αᵀGα = T = 2 → scale 1/(√2 + 1e-6); heads unclipped
    ("nash_mtl", {}, (0.541196 / (S2 + 1e-6), 1.306563 / (S2 + 1e-6), 0.0), (0.923880, 1.306563)),
    # Aligned-MTL: w = √λ_min G^{-1/2} 1; G^{1/2} = (G + √det·I)/√(tr + 2√det) = [[6, −2], [−2, 4]]/√10,
    #   G^{-1/2} = [[2, 1], [1, 3]]/√10, λ_min = 3 − √5 → w = √(3 − √5)(3, 4)/√10 = (0.829180, 1.105573)
    ("aligned_mtl", {}, (2 * 0.829180 - 1.105573, 1.105573, 0.0), ONES),
    # UPGrad (reg 0): u₁ = (½, 0) conflicts with g₂ → v = (½, v₂), min 1 − 2v₂ + 2v₂² → v₂ = ½;
    #   u₂ = (0, ½) → v = (v₁, ½), min 4v₁² − 2v₁ + ½ → v₁ = ¼; w = (¾, 1): ¾g₁ + g₂
    ("upgrad", {"reg_eps": 0.0}, (0.5, 1.0, 0.0), ONES),
    # MetaBalance (r = 0.7): m = (2, √2), m⋆ = 2 → factors (1, 0.7√2 + 0.3); g₁ + 1.289949 g₂
    ("metabalance", {}, (2 - 1.289949, 1.289949, 0.0), ONES),
    # CAGrad, rescale 0 and c = 0 → g₀ = (g₁ + g₂)/2
    ("cagrad", {"c": 0.0, "rescale": 0}, (0.5, 0.5, 0.0), ONES),
    # DB-MTL (β = 0.9, no log): ĝ = 0.1g, α = max‖ĝ‖ = 0.2 → 0.2(u₁ + u₂) = (0.2 − 0.1√2, 0.1√2, 0)
    ("dbmtl", {"log_transform": False}, (0.2 - 0.1 * S2, 0.1 * S2, 0.0), ONES),
    # Aligned-MTL, rmse: λ̄ = mean(3 ± √5) = 3 instead of λ_min = 3 − √5: B scales by √(3/(3 − √5))
    ("aligned_mtl", {"scale_mode": "rmse"}, tuple(RMSE * v for v in (2 * 0.829180 - 1.105573, 1.105573, 0.0)), ONES),
    # (median of two eigenvalues = the lower one = λ_min)
    ("aligned_mtl", {"scale_mode": "median"}, (2 * 0.829180 - 1.105573, 1.105573, 0.0), ONES),
    # Constant w = (1, ½): g₁ + ½g₂, heads weighted too (a loss weighting)
    ("constant", {"weights": [1.0, 0.5]}, (1.5, 0.5, 0.0), (1.0, 0.5)),
    ("constant", {}, (1.0, 1.0, 0.0), ONES),
    # STCH during the warm-up: log losses, w = 1/(ℓ + 10⁻²⁰) = (1, ¼)
    ("stch", {}, (1.75, 0.25, 0.0), (1.0, 0.25)),
    # ExcessMTL: the first step fixes E⁽⁰⁾ and keeps w = 1
    ("excess_mtl", {}, (1.0, 1.0, 0.0), ONES),
    # FairGrad, α = 1: G w = 1/w is Nash-MTL's equation (above); heads weighted (LibMTL)
    ("fairgrad", {}, (0.541196, 1.306563, 0.0), (0.923880, 1.306563)),
    # MoDo: λ − γ(Gλ + ρλ) = ½ − 10⁻³((1, 0) + 0.05) = (0.49895, 0.49995), + 0.00055 each onto Δ
    #   → λ = (0.4995, 0.5005): 0.4995 g₁ + 0.5005 g₂
    ("modo", {}, (0.999 - 0.5005, 0.5005, 0.0), ONES),
    # SDMGrad, one inner step: s = (2 + √2)/2, Ĝ = G/s², ∇ = Ĝ(w + 0.3/2) = (1.3/s², 0) = (0.446089, 0);
    #   w − 5∇ = (−1.730445, 0.5) → Π_Δ = (0, 1); coef = (w + 0.15)/1.3 = (0.115385, 0.884615)
    ("sdmgrad", {"niter": 1}, (2 * 0.15 / 1.3 - 1.15 / 1.3, 1.15 / 1.3, 0.0), ONES),
    # DualProj (reg 0): G·½ = (1, 0) ≥ 0, g₀ conflicts with neither task: w = ½
    ("dualproj", {"reg_eps": 0.0}, (0.5, 0.5, 0.0), ONES),
    # ConFIG: C = [[1, −1/√2], [−1/√2, 1]], C⁻¹1 = 2(1 + 1/√2)(1, 1), β = D⁻¹C⁻¹1 = (1 + 1/√2)(1, √2);
    #   b = Jᵀβ = (1, 1 + √2, 0), Σ⟨g_t, b⟩ = 2 + √2 = ‖b‖²/2 → update b/2
    ("config", {}, (0.5, (1 + S2) / 2, 0.0), ONES),
]


@pytest.mark.parametrize("name,hp,shared,heads", PINNED, ids=[f"{p[0]}-{i}" for i, p in enumerate(PINNED)])
def test_pinned_first_step(name, hp, shared, heads):
    g, head, _, _ = _first_step(name, **hp)
    _close(g, shared, atol=1e-5)
    _close(head, heads, atol=1e-5)


def test_pinned_covers_every_method():
    # these below: three random, two that need T ≥ 3
    covered = {p[0] for p in PINNED} | {"rlw", "graddrop", "moco", "krum", "trimmed_mean"}
    assert covered == set(fmtl.balancers.names())


def test_rlw_weights_are_softmax_of_the_counter_based_normals():
    # z = the (seed 3, step 0) normal draws: w = softmax(z); the next step uses step 1's draws
    b = fmtl.balancers.get("rlw", seed=3)
    state = b.init(None, 2)
    for step in range(2):
        z = _random.normal(torch.tensor(3), torch.tensor(step), 2, dtype=torch.float64)
        w, state, _ = b.loss_weights(LOSSES, state, None)
        _close(w, torch.softmax(z, 0))


def test_graddrop_keeps_the_sign_chosen_by_the_purity():
    # coordinate 0: signs (+2, −1), P = ½(1 + 1/3) = ⅔ → keeps 2 if P > U else −1;
    # coordinate 1: only +1, P = 1 → kept; coordinate 2: zero.
    u = _random.uniform(torch.tensor(0), torch.tensor(0), 3, 0, torch.float64)
    g, head, _, _ = _first_step("graddrop")
    _close(g, (2.0 if 2 / 3 > u[0] else -1.0, 1.0, 0.0))
    _close(head, ONES)


def test_moco_first_step():
    # β₁ = ½, y = ½ĝ with ĝ_t = ℓ_t g_t/‖g_t‖: ĝ₁ = (1, 0, 0), ĝ₂ = 4(−1, 1, 0)/√2.
    # λ₁ = softmax(λ₀ − γ yyᵀλ₀), λ₀ = ½, γ₁ = 0.1; output yᵀλ₁.
    y = 0.5 * torch.stack([torch.tensor([1.0, 0, 0]), 4 * torch.tensor([-1.0, 1, 0]) / S2]).double()
    lam0 = torch.full((2,), 0.5, dtype=torch.float64)
    lam = torch.softmax(lam0 - 0.1 * (y @ y.T) @ lam0, 0)
    g, head, info, _ = _first_step("moco")
    _close(info["weights"], lam)
    _close(g, lam @ y)
    _close(head, ONES)


def test_cagrad_pinned_boundary_solution():
    # g₁ = (1, 0, 0), g₂ = (0, 2, 0): G = diag(1, 4), g₀ = (½, 1, 0), ‖g₀‖ = √1.25, φ = c‖g₀‖.
    # Dual F(t) = t/2 + 2(1 − t) + φ√(t² + 4(1 − t)²) over w = (t, 1 − t): F'(t) = −1.5 + φ(5t − 4)/√(…)
    # and |(5t − 4)/√(…)| ≤ √5 < 1.5/φ = 2.68, so F decreases: w = (1, 0), g_w = g₁.
    # d = g₀ + φ g₁ = (½ + φ, 1, 0); rescale 1 divides by 1 + c² = 1.25.
    phi = 0.5 * math.sqrt(1.25)
    G = torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64))
    _close(_solvers.cagrad_dual(G, 0.5), (1.0, 0.0))
    J = torch.tensor([[1.0, 0, 0], [0, 2.0, 0]], dtype=torch.float64)
    params = _params()
    b = fmtl.balancers.get("cagrad")
    grads = fmtl.TaskGradients(LOSSES, TensorDict({"w": J}, [2]), params["tasks"].apply(torch.ones_like))
    out, _, _ = b.update(grads, b.init(params, 2), params)
    _close(out["shared", "w"], ((0.5 + phi) / 1.25, 1 / 1.25, 0.0))


# ---------------------------------------------------------------- optimality conditions

shapes = st.tuples(st.integers(1, 6), st.integers(0, 6), st.integers(0, 10_000)).map(
    lambda t: (t[0], min(t[1], t[0]), t[2])
)


@settings(max_examples=40, deadline=None)
@given(shapes)
def test_mgda_kkt(shape):
    T, rank, seed = shape
    G = random_gramian(T, rank, seed)
    w = _solvers.min_norm_simplex(G)
    scale = torch.diagonal(G).mean().clamp_min(1e-12)
    assert (w >= 0).all() and abs(w.sum() - 1) < 1e-9
    grad = G @ w / scale  # ∇(½wᵀGw); KKT: equal to ν on the support, ≥ ν elsewhere, ν = wᵀGw
    nu = w @ G @ w / scale
    assert (grad >= nu - 1e-6).all()
    assert (grad[w > 1e-9] <= nu + 1e-6).all()


@settings(max_examples=25, deadline=None)
@given(shapes)
def test_upgrad_projection_kkt_and_no_conflict(shape):
    T, rank, seed = shape
    G = random_gramian(T, rank, seed) + 1e-3 * torch.eye(T, dtype=torch.float64)
    U = torch.eye(T, dtype=torch.float64) / T
    V = _solvers.project_dual_cone(G, U)
    scale = torch.diagonal(G).mean()
    for u, v in zip(U, V, strict=True):
        mult = G @ v / scale  # KKT: ≥ 0, and zero where v > u
        assert (v >= u - 1e-9).all() and (mult >= -1e-6).all()
        assert (mult[v > u + 1e-7].abs() <= 1e-6).all()
    w = upgrad_weights(G, reg_eps=0.0)
    assert (G @ w >= -1e-6 * scale).all()  # ⟨g_t, Jᵀw⟩ ≥ 0 for all t


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(0, 10_000))
def test_nash_weights_solve_the_bargaining_equation(T, seed):
    G = random_gramian(T, T, seed)  # full rank: the solution exists
    alpha, _ = _solvers.nash_bargaining(G, torch.ones(T, dtype=torch.float64), steps=40)
    torch.testing.assert_close(G @ alpha, 1 / alpha, rtol=1e-6, atol=1e-8)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 6), st.integers(0, 10_000))
def test_imtl_g_equal_projections_on_unit_gradients(T, seed):
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(T, 8, generator=g, dtype=torch.float64)
    alpha = imtl_g_weights(J @ J.T)
    d = alpha @ J
    proj = J @ d / J.norm(dim=1)
    torch.testing.assert_close(proj, proj.mean().expand(T), rtol=1e-6, atol=1e-8)
    assert abs(alpha.sum() - 1) < 1e-9


@example((5, 2, 5), 1.828125)  # 0 in the hull of 5 gradients of rank 2: ‖g_w‖ ≈ 1e-6 ‖G‖^½
@settings(max_examples=30, deadline=None)
@given(shapes, st.floats(0.1, 2.0))
def test_cagrad_stays_in_the_ball_and_beats_a_grid(shape, c):
    T, rank, seed = shape
    G = random_gramian(T, max(rank, 1), seed)
    a = torch.full((T,), 1 / T, dtype=torch.float64)
    coef = cagrad_weights(G, c)  # d = Jᵀ coef before rescaling
    diff = coef - a
    g0 = torch.sqrt(a @ G @ a)
    w = _solvers.cagrad_dual(G, c)
    # d − g₀ = (c‖g₀‖/‖g_w‖) g_w: evaluating its norm through G loses (‖G‖/‖g_w‖²)·1e-16 relative
    gw2 = (w @ G @ w).clamp_min(1e-300)
    slack = 1e-6 + 1e-14 * torch.diagonal(G).max() / gw2
    assert torch.isfinite(coef).all()
    assert torch.sqrt((diff @ G @ diff).clamp_min(0)) <= c * g0 * (1 + slack) + 1e-12
    F = lambda w: w @ G @ a + c * g0 * torch.sqrt((w @ G @ w).clamp_min(0))  # noqa: E731
    # the exact dual optimum is no worse than random points of the simplex
    rand = torch.distributions.Dirichlet(torch.ones(T, dtype=torch.float64)).sample((200,))
    assert all(F(w) <= F(r) + 1e-9 for r in rand)


def test_pcgrad_projected_gradients_no_longer_conflict():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        J = torch.randn(2, 5, generator=g, dtype=torch.float64)
        G = J @ J.T
        C = pcgrad_coefficients(G, torch.tensor([[0, 1], [0, 1]]))
        pc = C @ J
        assert pc[0] @ J[1] >= -1e-12 and pc[1] @ J[0] >= -1e-12


@settings(max_examples=30, deadline=None)
@given(shapes)
def test_aligned_matrix_has_condition_number_one(shape):
    T, rank, seed = shape
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(T, max(rank, 1), generator=g, dtype=torch.float64) @ torch.randn(
        max(rank, 1), 7, generator=g, dtype=torch.float64
    )
    B = aligned_mtl_matrix(J @ J.T)
    s = torch.linalg.svdvals(B @ J)
    s = s[s > 1e-6 * s.max()]
    assert s.max() / s.min() < 1 + 1e-6
    assert s.numel() == torch.linalg.matrix_rank(J)


def test_mgda_normalizations_divide_the_gradients():
    # l2: unit gradients u₁ = (1,0,0), u₂ = (−1,1,0)/√2; min-norm on them, then w/‖g‖ on raw g
    w = mgda_weights(G2, LOSSES, "l2")
    point = w @ J2
    u = J2 / J2.norm(dim=1, keepdim=True)
    v = _solvers.min_norm_simplex(u @ u.T)
    _close(point, v @ u)


def test_cagrad_with_zero_in_the_hull_returns_the_mean_gradient():
    """g₁ = −g₂ and g₃ ⟂ them: the dual optimum has g_w = 0 exactly; d is the conflict-free point
    of the ball closest to g₀ = (0, ⅓), which conflicts with no task here: g₀ itself."""
    J = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    coef = cagrad_weights(J @ J.T, 0.5)
    torch.testing.assert_close(coef, torch.full((3,), 1 / 3, dtype=torch.float64))

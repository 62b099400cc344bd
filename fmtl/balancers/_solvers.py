"""The Gramian-based methods' optimization problems, solved exactly in torch at any T.

Every solver takes the T×T Gramian ``G = J Jᵀ`` and works in float64 on its cosine matrix
C = D⁻¹GD⁻¹ (:func:`fmtl.balancers._qp.equilibrate`: D = diag(‖g_t‖), plus a ridge of T·ε of
the input dtype relative to each task's own squared norm), so the answers are exact whatever
the spread of the gradient norms (10⁻⁸ to 10⁸ included) and rows that are exactly zero get
their exact answer. The constrained problems are solved by active-set methods
(:mod:`fmtl.balancers._qp`): a handful of batched linear solves, each iteration bounded in
number and written without data-dependent Python control flow, so the solvers compile (a
``torch.while_loop``). ``kkt_*`` measure how far an answer is from the optimality conditions
(the tests and ``benchmarks/solvers.py`` use them).

Earlier versions enumerated the 2ᵀ active sets up to T = 12 and fell back to projected
gradient steps beyond; these solvers replace both.
"""

from __future__ import annotations

import torch

from ._qp import (
    bounded_loop,
    eager_inference,
    equilibrate,
    equilibrate_definite,
    nnqp,
    pivoting,
    pivoting_definite,
    simplex_program,
)

__all__ = [
    "min_norm_simplex",
    "cagrad_dual",
    "project_dual_cone",
    "nash_bargaining",
    "alpha_fair",
    "kkt_min_norm",
    "kkt_dual_cone",
    "kkt_cagrad",
]

_RIDGE = 1e-10  # Nash-MTL's Newton iterations only (an interior method: no active sets)


def _normalized(G: torch.Tensor, ridge: float = _RIDGE) -> tuple[torch.Tensor, torch.Tensor]:
    G = G.to(torch.float64)
    G = (G + G.T) / 2
    T = G.shape[0]
    scale = (torch.diagonal(G).sum() / T).clamp_min(torch.finfo(torch.float64).tiny)
    return G / scale + ridge * torch.eye(T, dtype=G.dtype, device=G.device), scale


def _quad(w: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    return ((w @ G) * w).sum(-1)


def _max_iter(T: int) -> int:
    return 4 * T + 20


def _weights_on_simplex(d: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """a with aᵀy = 1 ⇔ Σ_t w_t = 1 for w = a ⊙ y, y = D w / m (m = the smallest non-zero norm)."""
    m = torch.where(zero, torch.full_like(d, float("inf")), d).amin()
    return torch.where(zero, 0.0, m / d)


@eager_inference
def min_norm_simplex(G: torch.Tensor) -> torch.Tensor:
    """The minimum-norm point of the convex hull of the rows of J: ``argmin_{w ∈ Δ} wᵀ G w``.

    In the scaled variables y = Dw/m it is ``min yᵀCy`` over {y ≥ 0, aᵀy = 1}, a_t = m/‖g_t‖:
    a guess from the equivalent ``min_{x ≥ 0} ½xᵀCx − aᵀx`` (y = x/aᵀx; block principal
    pivoting), confirmed or corrected by Wolfe's active-set method
    (:func:`fmtl.balancers._qp.simplex_program`), which also handles 0 in the hull. With zero
    rows the minimum norm is 0: w is uniform over them.

    Example:
        >>> min_norm_simplex(torch.tensor([[1.0, 0.0], [0.0, 4.0]]))  # ‖w₁g₁+w₂g₂‖² = w₁² + 4w₂²
        tensor([0.8000, 0.2000])
    """
    T = G.shape[0]
    C, d, zero = equilibrate(G)
    a = _weights_on_simplex(d, zero)
    x, converged = pivoting(C, -a[None], zero, _max_iter(T), 1e-13 * T)
    x = x[0].clamp_min(0.0)
    s = a @ x
    start = converged[0] & (s > 0)
    vertex = torch.nn.functional.one_hot(torch.argmax(a), T).to(C.dtype)
    y0 = torch.where(start, x / s.clamp_min(torch.finfo(C.dtype).tiny), vertex / a.amax())
    y, _ = simplex_program(C, a, torch.zeros_like(a), 1.0, zero, y0, y0 > 0, _max_iter(T))
    w = a * y
    w = torch.where(zero.any(), zero.to(C.dtype) / zero.sum().clamp_min(1), w / w.sum())
    return w.to(G.dtype)


@eager_inference
def cagrad_dual(G: torch.Tensor, c: float) -> torch.Tensor:
    """CAGrad's dual: ``argmin_{w ∈ Δ} wᵀ G a + c ‖g₀‖ √(wᵀ G w)`` with a = 1/T, ‖g₀‖ = √(aᵀGa).

    Solved in the scaled variables y = Dw/m by :func:`fmtl.balancers._qp.simplex_program`
    (b_t = (Ga)_t/‖g_t‖, φ = c‖g₀‖), from the minimum on the whole simplex's interior face
    when it is feasible (the usual case: every task in the support; one solve instead of T),
    else from the best vertex. Zero rows are left out (their
    vertex has g_w = 0; :func:`fmtl.balancers.cagrad.cagrad_weights` handles that case); for
    G = 0 every w is optimal and w = 1/T.

    Example:
        >>> w = cagrad_dual(torch.tensor([[1.0, -0.5], [-0.5, 1.0]]), 0.5)
        >>> w  # symmetric tasks: the dual optimum is the midpoint
        tensor([0.5000, 0.5000])
    """
    T = G.shape[0]
    C, d, zero = equilibrate(G)
    G64 = G.to(torch.float64)
    scale = torch.where(zero, 0.0, d).amax().clamp_min(torch.finfo(torch.float64).tiny)
    mean = torch.full((T,), 1.0 / T, dtype=torch.float64, device=G.device)
    Ga = G64 @ mean / (scale * scale)
    phi = c * (mean @ Ga).clamp_min(0.0).sqrt()
    a = _weights_on_simplex(d, zero)
    b = torch.where(zero, 0.0, Ga * scale / d)
    vertex_cost = torch.where(zero, float("inf"), Ga + phi * d / scale)
    y0 = torch.nn.functional.one_hot(torch.argmin(vertex_cost), T).to(C.dtype)
    y0 = y0 / (a @ y0).clamp_min(torch.finfo(C.dtype).tiny)
    y, _ = simplex_program(C, a, b, phi, zero, y0, y0 > 0, _max_iter(T), interior_start=True)
    w = a * y
    w = w / w.sum().clamp_min(torch.finfo(C.dtype).tiny)
    return torch.where(zero.all(), mean, w).to(G.dtype)  # G = 0: every w is optimal


@eager_inference
def project_dual_cone(G: torch.Tensor, U: torch.Tensor, ridge: float = 0.0) -> torch.Tensor:
    """UPGrad's projections: row i of the result is ``argmin_{v ≥ u_i} vᵀ (G + ridge·I) v``.

    ``Jᵀv`` is then the projection of ``Jᵀu_i`` onto the dual cone {x : J x ≥ 0} (TorchJD,
    Prop. 1 of "Jacobian Descent"). In the scaled variables y = Dv the problem is
    ``min_{x ≥ 0} ½xᵀCx + (Cl)ᵀx`` with l = Du and y = l + x, solved for all rows at once
    (:func:`fmtl.balancers._qp.nnqp`). G may be singular; a zero row t does not enter the
    objective and keeps v_t = u_t. Eagerly, the common case (no zero row, C positive definite,
    pivoting certified: :func:`fmtl.balancers._qp.equilibrate_definite` and
    :func:`fmtl.balancers._qp.pivoting_definite`) takes a third of the ops; the answers are
    the same to round-off.

    Example:
        >>> G = torch.tensor([[1.0, -1.0], [-1.0, 2.0]])
        >>> project_dual_cone(G, torch.eye(2))  # g₁·g₂ < 0: each is moved until Jᵀv ⟂ the other
        tensor([[1.0000, 0.5000],
                [1.0000, 1.0000]])
    """
    T = G.shape[0]
    u = U if U.dtype == torch.float64 else U.to(torch.float64)
    if not torch.compiler.is_compiling():
        C, inv, info = equilibrate_definite(G, ridge)
        lower = u / inv
        x = pivoting_definite(C, lower @ C, info, _max_iter(T), 1e-13 * T)
        if x is not None:
            v = torch.addcmul(u, x, inv)  # v = u + x/d
            return v if v.dtype == U.dtype else v.to(U.dtype)
    if ridge:
        G = G + ridge * torch.eye(T, dtype=G.dtype, device=G.device)
    C, d, zero = equilibrate(G)
    lower = torch.where(zero, 0.0, u * d)
    x, _ = nnqp(C, lower @ C, zero, _max_iter(T))
    return torch.where(zero, u, (lower + x) / d).to(U.dtype)


def kkt_min_norm(G: torch.Tensor, w: torch.Tensor) -> float:
    """How far ``w`` is from MGDA's optimality conditions, relative to max_t G_tt.

    With ν = wᵀGw: w ∈ Δ, (Gw)_t ≥ ν for all t, (Gw)_t = ν where w_t > 0.

    Example:
        >>> kkt_min_norm(torch.eye(2, dtype=torch.float64), torch.tensor([0.5, 0.5], dtype=torch.float64))
        0.0
    """
    G, w = G.to(torch.float64), w.to(torch.float64)
    s = torch.diagonal(G).amax().clamp_min(torch.finfo(G.dtype).tiny)
    Gw = G @ w
    nu = w @ Gw
    parts = [(w.sum() - 1).abs(), (-w).clamp_min(0).amax(), (nu - Gw).clamp_min(0).amax() / s,
             (w.clamp_min(0) * (Gw - nu).abs()).amax() / s]
    return float(torch.stack(parts).amax())


def kkt_dual_cone(G: torch.Tensor, U: torch.Tensor, V: torch.Tensor) -> float:
    """How far each row v of ``V`` is from ``argmin_{v ≥ u} vᵀGv``'s optimality conditions (the largest).

    v ≥ u, Gv ≥ 0 and (Gv)_t (v_t − u_t) = 0, relative to max_t G_tt and to the size of the
    problem, max(|u|, |v|) (v is homogeneous in u).

    Example:
        >>> G = torch.tensor([[1.0, -1.0], [-1.0, 2.0]], dtype=torch.float64)
        >>> V = torch.tensor([[1.0, 0.5], [1.0, 1.0]], dtype=torch.float64)
        >>> kkt_dual_cone(G, torch.eye(2, dtype=torch.float64), V)
        0.0
    """
    G, U, V = G.to(torch.float64), U.to(torch.float64), V.to(torch.float64)
    s = torch.diagonal(G).amax().clamp_min(torch.finfo(G.dtype).tiny)
    size = torch.maximum(U.abs().amax(1), V.abs().amax(1)).clamp_min(torch.finfo(G.dtype).tiny)
    GV = V @ G
    parts = [((U - V).clamp_min(0).amax(1) / size), ((-GV).clamp_min(0).amax(1) / (s * size)),
             ((GV * (V - U)).abs().amax(1) / (s * size * size))]
    return float(torch.stack(parts).amax())


def kkt_cagrad(G: torch.Tensor, c: float, w: torch.Tensor) -> float:
    """How far ``w`` is from CAGrad's dual optimality conditions, relative to max_t G_tt.

    With F(w) = bᵀw + φ‖Jᵀw‖ (b = Ga, φ = c‖g₀‖) and its gradient ∇F: w ∈ Δ, ∇F_t ≥ F(w) for
    all t (F is homogeneous, so wᵀ∇F = F), with equality where w_t > 0.

    Example:
        >>> kkt_cagrad(torch.eye(2, dtype=torch.float64), 0.5, torch.tensor([0.5, 0.5], dtype=torch.float64))
        0.0
    """
    G, w = G.to(torch.float64), w.to(torch.float64)
    T = G.shape[0]
    s = torch.diagonal(G).amax().clamp_min(torch.finfo(G.dtype).tiny)
    mean = torch.full((T,), 1.0 / T, dtype=G.dtype)
    b = G @ mean
    phi = c * (mean @ b).clamp_min(0).sqrt()
    r = (w @ G @ w).clamp_min(torch.finfo(G.dtype).tiny).sqrt()
    grad = b + phi * (G @ w) / r
    F = w @ b + phi * r
    parts = [(w.sum() - 1).abs(), (-w).clamp_min(0).amax(), (F - grad).clamp_min(0).amax() / s,
             (w.clamp_min(0) * (grad - F).abs()).amax() / s]
    return float(torch.stack(parts).amax())


def nash_bargaining(G: torch.Tensor, alpha0: torch.Tensor, steps: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Nash-MTL's bargaining solution: α > 0 with ``(G α)_t = 1/α_t`` (Navon et al., Eq. 4).

    α minimizes the self-concordant ``f(α) = ½ αᵀGα − Σ_t log α_t``, so ``steps`` damped
    Newton iterations α ← α − H⁻¹∇f / (1 + λ) (λ the Newton decrement) keep α > 0 and converge
    quadratically once close. The start ``alpha0`` (the previous solution) is first rescaled along
    its ray to the optimum there (αᵀGα = T). Solved on the unit-mean-diagonal Gramian Ĝ = G/s and
    mapped back by α = α̂/√s. A zero Gramian has no solution: α = α̂ is returned.

    Returns:
        ``(alpha, alpha_hat)``: α for G and α̂ for Ĝ (a scale-free warm start for the next call).

    Example:
        >>> alpha, _ = nash_bargaining(torch.tensor([[4.0, 0.0], [0.0, 1.0]]), torch.ones(2))
        >>> alpha  # G α = 1/α  ⇒  α_t = 1/‖g_t‖ for orthogonal gradients
        tensor([0.5000, 1.0000])
    """
    T = G.shape[0]
    # a smaller ridge: α̂ grows like 1/√(λ_min), so the ridge's error δα̂ is relative to 1/α̂
    Gn, scale = _normalized(G, _RIDGE * 1e-4)
    a = alpha0.to(torch.float64).clamp_min(1e-12)
    a = a * torch.sqrt(T / _quad(a, Gn).clamp_min(1e-30))
    eye = torch.eye(T, dtype=Gn.dtype, device=Gn.device)
    for _ in range(steps):
        grad = Gn @ a - 1.0 / a
        step = torch.linalg.solve(Gn + eye / (a * a), grad)
        decrement = torch.sqrt((grad * step).sum().clamp_min(0.0))
        a = a - step / (1.0 + decrement)
    # all gradients zero: no bargaining solution exists; keep the (scale-free) previous weights
    alpha = torch.where(torch.diagonal(G).sum() > 0, a / torch.sqrt(scale), a)
    return alpha.to(G.dtype), a.to(G.dtype)


@eager_inference
def alpha_fair(G: torch.Tensor, alpha: float, max_iter: int = 50) -> torch.Tensor:
    """FairGrad's α-fair weights: w > 0 with ``(G w)_t = w_t^{-1/α}`` (Ban & Ji, 2024, Eq. 4).

    w minimizes the strictly convex f(w) = ½wᵀGw + Σ_t h(w_t) with h' (w) = −w^{−1/α}
    (h = −log w for α = 1: Nash-MTL's equation). Damped Newton steps w ← w − τ H⁻¹∇f,
    H = G + diag(h''(w)), τ = min(1/(1 + λ), 0.99 × the largest step keeping w > 0) (λ the Newton
    decrement), until λ² < 10⁻²⁰ (at most ``max_iter``), from the best multiple of 1. Solved on
    Ĝ = G/s (s = the mean diagonal) and mapped back by w = ŵ s^{−α/(α+1)}. α = 0 (linear
    scalarization) gives w = 1/T; a zero Gramian has no solution and gives w = 1.

    Example:
        >>> alpha_fair(torch.tensor([[4.0, 0.0], [0.0, 1.0]]), 1.0)  # orthogonal: w_t = 1/‖g_t‖ for α = 1
        tensor([0.5000, 1.0000])
    """
    T = G.shape[0]
    if alpha == 0:
        return torch.full((T,), 1.0 / T, dtype=G.dtype, device=G.device)
    Gn, scale = _normalized(G, 0.0)
    p = -1.0 / alpha
    ones = torch.ones(T, dtype=Gn.dtype, device=Gn.device)
    # on the ray κ1: κ (1ᵀĜ1) = T κ^{−1/α}
    kappa = (T / (ones @ Gn @ ones).clamp_min(1e-12)) ** (alpha / (alpha + 1.0))
    tiny = torch.finfo(Gn.dtype).tiny

    def body(running, w):
        grad = Gn @ w - w.pow(p)
        H = Gn + torch.diag_embed(-p * w.pow(p - 1.0))
        step = torch.linalg.solve_ex(H, grad[:, None])[0][:, 0]
        decrement = (grad * step).sum().clamp_min(0.0)
        boundary = torch.where(step > 0, w / step.clamp_min(tiny), torch.full_like(w, float("inf"))).amin()
        tau = torch.minimum(1.0 / (1.0 + decrement.sqrt()), 0.99 * boundary)
        w = torch.where(running, w - tau * step, w)
        return running & (decrement >= 1e-20), w

    running = torch.ones((), dtype=torch.bool, device=Gn.device)
    _, (_, w) = bounded_loop(body, (running, kappa * ones), max_iter)
    w = torch.where(torch.diagonal(G).sum() > 0, w * scale ** (-alpha / (alpha + 1.0)), ones)
    return w.to(G.dtype)

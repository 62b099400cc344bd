"""Exact small-T solvers for the Gramian-based methods (MGDA, CAGrad, UPGrad, Nash-MTL).

Every solver takes the T×T Gramian ``G = J Jᵀ`` and works in float64 on a copy scaled to unit
mean diagonal (all the problems below are invariant to that scale), with a ridge δI so every
linear system is non-singular. The constrained problems are solved *exactly* by enumerating the
2ᵀ candidate active sets in one batched linear solve: the optimum's KKT system is one of them, so
the best feasible candidate is the optimum. There are no data-dependent Python loops, so the
solvers compile. Above ``MAX_ENUM`` tasks they fall back to a fixed number of projected-gradient
iterations (approximate).
"""

from __future__ import annotations

import torch

__all__ = ["MAX_ENUM", "min_norm_simplex", "cagrad_dual", "project_dual_cone", "nash_bargaining"]

MAX_ENUM = 12
_RIDGE = 1e-10
_FEASIBLE = 1e-7
_PGD_STEPS = 500


def _normalized(G: torch.Tensor, ridge: float = _RIDGE) -> tuple[torch.Tensor, torch.Tensor]:
    G = G.to(torch.float64)
    G = (G + G.T) / 2
    T = G.shape[0]
    scale = (torch.diagonal(G).sum() / T).clamp_min(torch.finfo(torch.float64).tiny)
    return G / scale + ridge * torch.eye(T, dtype=G.dtype, device=G.device), scale


def _supports(T: int, device: torch.device, empty: bool = False) -> torch.Tensor:
    """All subsets of range(T) as a [K, T] float64 0/1 matrix (bit b of code k ↔ task b)."""
    codes = torch.arange(0 if empty else 1, 2**T, device=device)
    return ((codes[:, None] >> torch.arange(T, device=device)) & 1).to(torch.float64)


def _masked_system(G: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """Rows/columns of G on the support S, the identity elsewhere: [K, T, T]."""
    return S[:, :, None] * G * S[:, None, :] + torch.diag_embed(1.0 - S)


def _quad(w: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    return ((w @ G) * w).sum(-1)


def _pick(candidates: torch.Tensor, feasible: torch.Tensor, objective: torch.Tensor) -> torch.Tensor:
    objective = torch.where(feasible, objective, torch.full_like(objective, float("inf")))
    best = torch.argmin(objective, dim=-1, keepdim=True)
    return torch.take_along_dim(candidates, best[..., None], dim=-2).squeeze(-2)


def _project_simplex(y: torch.Tensor) -> torch.Tensor:
    u, _ = torch.sort(y, descending=True)
    css = u.cumsum(0) - 1.0
    k = torch.arange(1, y.shape[0] + 1, dtype=y.dtype, device=y.device)
    rho = (u - css / k > 0).sum().clamp_min(1)
    theta = css.gather(0, (rho - 1).reshape(1)) / rho.to(y.dtype)
    return (y - theta).clamp_min(0.0)


def _pgd(grad, project, x: torch.Tensor, step: float) -> torch.Tensor:
    for _ in range(_PGD_STEPS):
        x = project(x - step * grad(x))
    return x


def min_norm_simplex(G: torch.Tensor) -> torch.Tensor:
    """The minimum-norm point of the convex hull of the rows of J: ``argmin_{w ∈ Δ} wᵀ G w``.

    For a support S the KKT conditions are ``(G w)_S = ν 1``, ``1ᵀ w = 1``, ``w_{S̄} = 0``;
    each support's system is solved and the best non-negative solution kept.

    Example:
        >>> min_norm_simplex(torch.tensor([[1.0, 0.0], [0.0, 4.0]]))  # ‖w₁g₁+w₂g₂‖² = w₁² + 4w₂²
        tensor([0.8000, 0.2000])
    """
    T = G.shape[0]
    Gn, _ = _normalized(G)
    if T > MAX_ENUM:
        w0 = torch.full((T,), 1.0 / T, dtype=Gn.dtype, device=Gn.device)
        return _pgd(lambda w: Gn @ w, _project_simplex, w0, 1.0 / T).to(G.dtype)
    S = _supports(T, G.device)
    K = S.shape[0]
    top = torch.cat([_masked_system(Gn, S), S[:, :, None]], dim=2)
    bottom = torch.cat([S, S.new_zeros(K, 1)], dim=1)[:, None, :]
    rhs = torch.cat([S.new_zeros(K, T), S.new_ones(K, 1)], dim=1)
    w = torch.linalg.solve(torch.cat([top, bottom], dim=1), rhs)[:, :T]
    feasible = (w >= -_FEASIBLE).all(-1)
    w = w.clamp_min(0.0)
    w = w / w.sum(-1, keepdim=True).clamp_min(_FEASIBLE)
    return _pick(w, feasible, _quad(w, Gn)).to(G.dtype)


def cagrad_dual(G: torch.Tensor, c: float) -> torch.Tensor:
    """CAGrad's dual: ``argmin_{w ∈ Δ} wᵀ G a + c ‖g₀‖ √(wᵀ G w)`` with a = 1/T, ‖g₀‖ = √(aᵀGa).

    On a support S with r = ‖Jᵀw‖ the stationarity condition ``G_S w_S = (r/φ)(μ1 − b_S)``
    (b = G a, φ = c‖g₀‖) gives w = κ(μ p − q) with p = G_S⁻¹1, q = G_S⁻¹b, and the two scalar
    conditions 1ᵀw = 1, wᵀGw = r² fix μ as the larger root of A μ² − 2Bμ + C − φ² = 0
    (A = 1ᵀp, B = 1ᵀq, C = bᵀq) and κ = 1/(μA − B).

    Example:
        >>> w = cagrad_dual(torch.tensor([[1.0, -0.5], [-0.5, 1.0]]), 0.5)
        >>> w  # symmetric tasks: the dual optimum is the midpoint
        tensor([0.5000, 0.5000])
    """
    T = G.shape[0]
    Gn, _ = _normalized(G)
    a = torch.full((T,), 1.0 / T, dtype=Gn.dtype, device=Gn.device)
    b = Gn @ a
    phi = c * torch.sqrt(a @ b)

    def objective(w):
        return w @ b + phi * torch.sqrt(_quad(w, Gn).clamp_min(0.0))

    if T > MAX_ENUM:
        grad = lambda w: b + phi * (Gn @ w) / torch.sqrt(_quad(w, Gn)).clamp_min(1e-12)  # noqa: E731
        return _pgd(grad, _project_simplex, a, 1.0 / (T * (1.0 + c))).to(G.dtype)
    S = _supports(T, G.device)
    pq = torch.linalg.solve(_masked_system(Gn, S), torch.stack([S, S * b], dim=-1))
    p, q = pq[..., 0], pq[..., 1]
    A, B, C = p.sum(-1), q.sum(-1), q @ b
    disc = B * B - A * (C - phi * phi)
    mu = (B + torch.sqrt(disc.clamp_min(0.0))) / A
    kappa = 1.0 / (mu * A - B)
    w = kappa[:, None] * (mu[:, None] * p - q)
    feasible = (disc >= 0) & (kappa > 0) & torch.isfinite(kappa) & (w >= -_FEASIBLE).all(-1)
    w = torch.nan_to_num(w).clamp_min(0.0)
    w = w / w.sum(-1, keepdim=True).clamp_min(_FEASIBLE)
    return _pick(w, feasible, objective(w)).to(G.dtype)


def project_dual_cone(G: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """UPGrad's projections: row i of the result is ``argmin_{v ≥ u_i} vᵀ G v``.

    ``Jᵀv`` is then the projection of ``Jᵀu_i`` onto the dual cone {x : J x ≥ 0} (TorchJD,
    Prop. 1 of "Jacobian Descent"). On a free set F (v_{F̄} = u_{F̄}) the KKT condition is
    ``(G v)_F = 0``; each free set's system is solved and the best feasible solution kept.
    ``G`` must be positive definite (UPGrad regularizes it).

    Example:
        >>> G = torch.tensor([[1.0, -1.0], [-1.0, 2.0]])
        >>> project_dual_cone(G, torch.eye(2))  # g₁·g₂ < 0: each is moved until Jᵀv ⟂ the other
        tensor([[1.0000, 0.5000],
                [1.0000, 1.0000]])
    """
    T = G.shape[0]
    G = G.to(torch.float64)
    G = (G + G.T) / 2
    u = U.to(torch.float64)
    if T > MAX_ENUM:
        step = 1.0 / (2 * torch.diagonal(G).sum().clamp_min(1e-30))
        v = torch.stack([_pgd(lambda v: 2 * G @ v, lambda v, ui=ui: torch.maximum(v, ui), ui, step) for ui in u])
        return v.to(U.dtype)
    F = _supports(T, G.device, empty=True)  # [K, T], 1 = free
    fixed = u[:, None, :] * (1.0 - F)  # [T, K, T]: u on the fixed coordinates
    rhs = fixed - F * (fixed @ G)
    v = torch.linalg.solve(_masked_system(G, F), rhs[..., None])[..., 0]  # [T, K, T]
    feasible = (v >= u[:, None, :] - _FEASIBLE * u.abs().amax().clamp_min(1.0)).all(-1)
    return _pick(v, feasible, _quad(v, G)).to(U.dtype)


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

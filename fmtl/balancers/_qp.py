"""Exact convex quadratic programs in torch: non-negative QPs by block principal pivoting.

The Gramian-based methods (MGDA, UPGrad, DualProj, CAGrad) reduce to small convex programs over
the T×T Gramian. This module holds the machinery they share:

* :func:`equilibrate` rescales G to its cosine matrix C = D⁻¹GD⁻¹ (D = diag(‖g_t‖)) plus a
  ridge of ``T·ε`` of the input dtype: a regularization *relative to each task's own squared
  norm*, so gradient norms that differ by 10¹⁶ are solved as accurately as equal ones, and rows
  that are exactly zero are set aside (each problem says what they get).
* :func:`nnqp` solves ``min_{x ≥ 0} ½ xᵀCx + cᵀx`` for a batch of linear terms exactly, by
  block principal pivoting (Júdice & Pires, 1994; Kim & Park, 2011) with Murty's single-pivot
  backup, which is finite for positive-definite C. Each iteration is one batched linear solve on
  the current free set; a few iterations suffice in practice, whatever T.
* :func:`bounded_loop` runs an iteration until every problem is done, at most ``max_iter``
  times: a Python loop with an early exit in eager mode, a ``torch.while_loop`` under
  ``torch.compile`` (one graph whatever the number of iterations, no data-dependent Python
  control flow).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["bounded_loop", "equilibrate", "masked_system", "nnqp", "pivoting", "simplex_program", "project_simplex"]

_while_loop = getattr(torch, "while_loop", None)
if _while_loop is None:  # torch < 2.13 keeps it private
    from torch._higher_order_ops.while_loop import while_loop as _while_loop

# A task whose squared gradient norm is below 2⁻⁹⁰⁰ (≈ 1e-271) of the largest is zero: every
# smaller ratio is representable in float64, so only exact zeros (and underflow) fall under it.
_ZERO = 2.0**-900


def bounded_loop(
    body: Callable[..., tuple[torch.Tensor, ...]], carry: tuple[torch.Tensor, ...], max_iter: int
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """``carry = body(*carry)`` until ``carry[0]`` (a bool tensor, "done") is all true, ≤ ``max_iter`` times.

    Returns ``(iterations, carry)``. ``body`` must return tensors shaped like its inputs.

    Example:
        >>> def halve(done, x):
        ...     x = x / 2
        ...     return x < 1, x
        >>> n, (done, x) = bounded_loop(halve, (torch.tensor(False), torch.tensor(10.0)), 100)
        >>> int(n), float(x)
        (4, 0.625)
    """
    count = torch.zeros((), dtype=torch.int64, device=carry[0].device)
    if torch.compiler.is_compiling():

        def cond(i, *c):
            return (i < max_iter) & ~c[0].all()

        def step(i, *c):
            return (i + 1, *body(*c))

        out = _while_loop(cond, step, (count, *carry))
        return out[0], tuple(out[1:])
    for _ in range(max_iter):
        if bool(carry[0].all()):
            break
        carry = tuple(body(*carry))
        count = count + 1
    return count, carry


def equilibrate(G: torch.Tensor, ridge: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(C, d, zero)``: the cosine matrix C = D⁻¹GD⁻¹ + δI in float64, d_t = ‖g_t‖, and the zero rows.

    The ridge δ is relative to each task's own squared norm, never to the Gramian's trace: by
    default T·ε₆₄ where C + T·ε₆₄·I is numerically positive definite, else T·ε of ``G``'s dtype
    (a float32 Gramian of nearly dependent gradients can be indefinite by ~10⁻⁷). Zero rows
    (G_tt ≤ 2⁻⁹⁰⁰ max_s G_ss, or all of them if G = 0) get d_t = 1 and a zero row and column
    in C (δ on the diagonal).

    Example:
        >>> C, d, zero = equilibrate(torch.tensor([[4.0, -2.0, 0.0], [-2.0, 4.0, 0.0], [0.0, 0.0, 0.0]]), 0.0)
        >>> C
        tensor([[ 1.0000, -0.5000,  0.0000],
                [-0.5000,  1.0000,  0.0000],
                [ 0.0000,  0.0000,  0.0000]], dtype=torch.float64)
        >>> d, zero
        (tensor([2., 2., 1.], dtype=torch.float64), tensor([False, False,  True]))
    """
    T = G.shape[0]
    G64 = G.to(torch.float64)
    G64 = (G64 + G64.T) / 2
    diag = torch.diagonal(G64).clamp_min(0.0)
    zero = diag <= diag.amax() * _ZERO
    d = torch.where(zero, torch.ones_like(diag), diag.sqrt())
    C = G64 / (d[:, None] * d[None, :])
    C = torch.where(zero[:, None] | zero[None, :], torch.zeros_like(C), C)
    eye = torch.eye(T, dtype=C.dtype, device=C.device)
    if ridge is not None:
        return C + ridge * eye, d, zero
    small = C + T * torch.finfo(torch.float64).eps * eye
    definite = torch.linalg.cholesky_ex(small)[1] == 0
    return torch.where(definite, small, C + T * torch.finfo(G.dtype).eps * eye), d, zero


def masked_system(C: torch.Tensor, free: torch.Tensor, eye: torch.Tensor | None = None) -> torch.Tensor:
    """Rows and columns of C on each free set, the identity elsewhere: ``[..., T, T]``.

    Example:
        >>> masked_system(torch.full((2, 2), 3.0), torch.tensor([True, False]))
        tensor([[3., 0.],
                [0., 1.]])
    """
    eye = torch.eye(C.shape[-1], dtype=C.dtype, device=C.device) if eye is None else eye
    return torch.where(free[..., :, None] & free[..., None, :], C, eye)


def _solve(M: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    # solve_ex: no check of the factorization's info, so no device synchronization (and inductor
# compiles it inside a while_loop, which it does not for torch.linalg.solve)
    return torch.linalg.solve_ex(M, rhs)[0]


def pivoting(
    C: torch.Tensor, c: torch.Tensor, frozen: torch.Tensor, max_iter: int, tol: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block principal pivoting for :func:`nnqp`'s problem: ``(x, converged)`` (fast; see :func:`nnqp`).

    Example:
        >>> C = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> pivoting(C, torch.tensor([[-1.0, 1.0]], dtype=torch.float64), torch.zeros(2, dtype=torch.bool), 20, 1e-12)
        (tensor([[0.5000, 0.0000]], dtype=torch.float64), tensor([True]))
    """
    B, n = c.shape
    eye = torch.eye(n, dtype=C.dtype, device=C.device)
    index = torch.arange(n, device=c.device)
    live, negative, zeros = ~frozen, -c, torch.zeros_like(c)
    three = torch.full((B,), 3, dtype=torch.int64, device=c.device)

    def body(done, x, lam, free, tries, best):
        # x on the free set, λ off it: the KKT conditions ask both to be non-negative
        bad = (torch.where(free, x, lam) < -tol * (1.0 + x.abs().amax(1, keepdim=True))) & live
        count = bad.sum(1)
        done = done | (count == 0)
        better = count < best
        single = index == (bad * index).argmax(1, keepdim=True)  # Murty: the largest infeasible index
        free = free ^ (torch.where((better | (tries > 0))[:, None], bad, single) & ~done[:, None])
        tries = torch.where(better, three, tries - 1)
        best = torch.where(better, count, best)
        new = _solve(masked_system(C, free, eye), torch.where(free, negative, zeros)[..., None])[..., 0]
        x = torch.where(done[:, None], x, new)
        return done, x, x @ C + c, free, tries, best

    done = torch.zeros(B, dtype=torch.bool, device=c.device)
    tries = torch.full((B,), 3, dtype=torch.int64, device=c.device)
    best = torch.full((B,), n + 1, dtype=torch.int64, device=c.device)
    none = torch.zeros_like(c, dtype=torch.bool)
    # λ starts as a copy of c: a carried input must not alias what the body closes over (while_loop)
    _, (done, x, *_) = bounded_loop(body, (done, torch.zeros_like(c), c.clone(), none, tries, best), max_iter)
    # a singular C makes the iterates huge (≈ 1/ridge) and the test above meaningless
    return x, done & (x.abs().amax(1) < 1e8)


def _active_set(C, c, frozen, x, free, done, max_iter: int, tol: float):
    """The primal active-set method from a feasible ``(x, free)``: ``(x, iterations)``."""
    B, n = c.shape
    eye = torch.eye(n, dtype=C.dtype, device=C.device)
    index = torch.arange(n, device=c.device)
    inf = torch.full_like(c, float("inf"))
    negative, zeros = -c, torch.zeros_like(c)

    def body(done, x, free):
        z = _solve(masked_system(C, free, eye), torch.where(free, negative, zeros)[..., None])[..., 0]
        alpha, block = torch.where(free & (z < 0), x / (x - z), inf).min(1)  # x − z > 0 there
        blocked = alpha < 1
        kept = free & ~((index == block[:, None]) & blocked[:, None])
        moved = torch.where(kept, (x + alpha.clamp_max(1.0)[:, None] * (z - x)).clamp_min(0.0), zeros)
        most, enter = torch.where(kept | frozen, inf, moved @ C + c).min(1)
        joins = (most < -tol * (1.0 + moved.abs().amax(1))) & ~blocked
        keep = done[:, None]
        x = torch.where(keep, x, moved)
        free = torch.where(keep, free, kept | ((index == enter[:, None]) & joins[:, None]))
        return done | (~blocked & ~joins), x, free

    iterations, (_, x, _) = bounded_loop(body, (done, x, free), max_iter)
    return x, iterations


def nnqp(
    C: torch.Tensor, c: torch.Tensor, frozen: torch.Tensor | None = None, max_iter: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x_b = argmin_{x ≥ 0} ½ xᵀCx + c_bᵀx`` for each row c_b of ``c`` ([B, n]); C positive (semi)definite.

    Two exact methods on all B problems at once, each iteration one batched linear solve on the
    free sets F (x_F = −C_FF⁻¹c_F, x_{F̄} = 0):

    1. block principal pivoting (Júdice & Pires, 1994; Kim & Park, 2011) on the KKT conditions
       x ≥ 0, λ = Cx + c ≥ 0, xᵀλ = 0: every infeasible index changes side at once while that
       lowers their number, else only the largest one (Murty's finite rule). It needs a handful
       of iterations whatever n, but its iterates are infeasible and, for a singular C, huge;
    2. where that did not converge (a singular or badly conditioned C), the primal active-set
       method (Nocedal & Wright, Alg. 16.3) from x = 0: x stays feasible and the objective
       decreases at every step; an index joins F only with a clearly negative multiplier, which
       keeps C_FF non-singular even when C is not.

    ``frozen`` indices stay at 0. Each row of c is scaled to unit max-norm first (x is linear in
    c). Returns ``(x, iterations of the second method)``; ``max_iter`` bounds each method
    (default 4n + 20; fmtl's tests never reach it).

    Example:
        >>> C = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> x, _ = nnqp(C, torch.tensor([[-1.0, 1.0], [-3.0, -3.0]], dtype=torch.float64))
        >>> x  # first: x₂ at its bound, x₁ = ½; second: interior, C x = (3, 3)
        tensor([[0.5000, 0.0000],
                [1.0000, 1.0000]], dtype=torch.float64)
    """
    B, n = c.shape
    frozen = torch.zeros(n, dtype=torch.bool, device=c.device) if frozen is None else frozen
    max_iter = 4 * n + 20 if max_iter is None else max_iter
    scale = c.abs().amax(1, keepdim=True).clamp_min(torch.finfo(c.dtype).tiny)
    c = c / scale
    tol = 1e-13 * n
    guess, converged = pivoting(C, c, frozen, max_iter, tol)
    ok = converged[:, None]
    x0 = guess.clamp_min(0.0) * ok
    free = (x0 > 0) & ok
    x, iterations = _active_set(C, c, frozen, x0, free, converged, max_iter, tol)
    return x * scale, iterations


def simplex_program(
    C: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    phi: torch.Tensor | float,
    frozen: torch.Tensor,
    y: torch.Tensor,
    support: torch.Tensor,
    max_iter: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``argmin_{y ≥ 0, aᵀy = 1} bᵀy + φ √(yᵀCy)`` (a > 0) from a feasible ``(y, support)``: ``(y, iterations)``.

    MGDA (b = 0) and CAGrad's dual are this problem. A primal active-set method whose face
    problems have a closed form: on a support S with p = C_S⁻¹a_S, q = C_S⁻¹b_S, A = aᵀp,
    B = aᵀq, c₀ = bᵀq, stationarity b + φCy/r = μa (r = √(yᵀCy)) gives
    y = (μp − q)/√Δ with μ = (B + √Δ)/A, Δ = B² − A(c₀ − φ²). If Δ ≤ 0 the face has no minimum:
    f decreases without bound along z = (B/A)p − q (aᵀz = 0), which is followed until a
    coordinate reaches 0. At a face minimum every index with a negative multiplier
    λ = ∇f − f a joins S, one at a time (Wolfe's rule, which keeps the support's system
    non-singular); f decreases at every step. ``frozen`` indices never join.

    Example:
        >>> C = torch.eye(2, dtype=torch.float64)
        >>> y, _ = simplex_program(C, torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64),
        ...                        1.0, torch.zeros(2, dtype=torch.bool), torch.tensor([1.0, 0.0], dtype=torch.float64),
        ...                        torch.tensor([True, False]), 10)
        >>> y  # the midpoint of two orthonormal vectors
        tensor([0.5000, 0.5000], dtype=torch.float64)
    """
    n = C.shape[0]
    inf = torch.tensor(float("inf"), dtype=C.dtype, device=C.device)
    tiny = torch.finfo(C.dtype).tiny
    tol = 1e-13 * n
    eye, zeros = torch.eye(n, dtype=C.dtype, device=C.device), torch.zeros_like(a)

    def body(done, y, S):
        pq = _solve(masked_system(C, S, eye), torch.stack([torch.where(S, a, zeros), torch.where(S, b, zeros)], 1))
        p, q = pq[:, 0], pq[:, 1]
        A, B, c0 = a @ p, a @ q, b @ q
        disc = B * B - A * (c0 - phi * phi)
        bounded = disc > 1e-14 * (B * B + A * (c0.abs() + phi * phi))
        root = disc.clamp_min(tiny).sqrt()
        target = ((B + root) / A * p - q) / root
        direction = torch.where(S, torch.where(bounded, target - y, B / A * p - q), 0.0)
        ratio = torch.where(S & (direction < 0), y / (-direction).clamp_min(tiny), inf)
        alpha, block = ratio.min(0)
        blocked = alpha < torch.where(bounded, 1.0, inf)
        kept = S & ~(torch.nn.functional.one_hot(block, n).to(torch.bool) & blocked)
        step = torch.where(blocked, alpha, 1.0)
        moved = torch.where(kept, (y + step * direction).clamp_min(0.0), 0.0)
        moved = moved / (a @ moved).clamp_min(tiny)
        Cy = C @ moved
        r = (moved @ Cy).clamp_min(tiny).sqrt()
        grad = b + phi * Cy / r
        lam = grad - (b @ moved + phi * r) * a
        slack = tol * (grad.abs().amax() + lam.abs().amax())
        most, enter = torch.where(~kept & ~frozen & ~blocked, lam, inf).min(0)
        joins = most < -slack
        finished = ~blocked & ~joins
        y = torch.where(done, y, moved)
        S = torch.where(done, S, kept | (torch.nn.functional.one_hot(enter, n).to(torch.bool) & joins))
        return done | finished, y, S

    done = torch.zeros((), dtype=torch.bool, device=C.device)
    iterations, (_, y, _) = bounded_loop(body, (done, y, support), max_iter)
    return y, iterations


def project_simplex(y: torch.Tensor) -> torch.Tensor:
    """The Euclidean projection of ``y`` ([T]) onto the probability simplex (sort-based, exact).

    With u = y sorted in decreasing order, ρ = max{k : u_k > (Σ_{j≤k} u_j − 1)/k} and
    θ = (Σ_{j≤ρ} u_j − 1)/ρ, the projection is max(y − θ, 0) (Held et al., 1974).

    Example:
        >>> project_simplex(torch.tensor([0.5, 0.5, 1.0]))  # θ = ⅓
        tensor([0.1667, 0.1667, 0.6667])
    """
    u, _ = torch.sort(y, descending=True)
    css = u.cumsum(0) - 1.0
    k = torch.arange(1, y.shape[0] + 1, dtype=y.dtype, device=y.device)
    rho = (u - css / k > 0).sum().clamp_min(1)
    theta = css.gather(0, (rho - 1).reshape(1)) / rho.to(y.dtype)
    return (y - theta).clamp_min(0.0)

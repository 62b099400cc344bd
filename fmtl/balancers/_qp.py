"""Exact convex programs in torch: non-negative QPs and simplex problems by active-set methods.

The Gramian-based methods (MGDA, UPGrad, DualProj, CAGrad) reduce to small convex programs over
the T×T Gramian. This module holds the machinery they share:

* :func:`equilibrate` rescales G to its cosine matrix C = D⁻¹GD⁻¹ (D = diag(‖g_t‖)) plus a
  ridge of T·ε: a regularization *relative to each task's own squared norm*, so gradient norms
  that differ by 10¹⁶ are solved as accurately as equal ones, and rows that are exactly zero
  are set aside (each problem says what they get).
* :func:`nnqp` solves ``min_{x ≥ 0} ½ xᵀCx + cᵀx`` for a batch of linear terms exactly: block
  principal pivoting (:func:`pivoting`, a handful of batched Cholesky solves whatever T),
  whose answer is kept where it meets the KKT conditions, and a primal active-set method
  (robust to a singular C) where it does not.
* :func:`simplex_program` minimizes bᵀy + φ√(yᵀCy) on a weighted simplex (MGDA, CAGrad's dual)
  by Wolfe's active-set method with closed-form faces.
* :func:`equilibrate_definite` and :func:`pivoting_definite` are the eager fast path of the two
  for the common case (no zero row, C positive definite, nothing frozen): the same answers in a
  third of the ops, since an eager solve of a dozen tasks costs what its ops cost (~2–10 µs
  each, more on a cold cache), or None where they cannot certify one, and the caller falls back.
* :func:`bounded_loop` runs an iteration while a problem is unfinished, at most ``max_iter``
  times: a Python loop with an early exit in eager mode, a ``torch.while_loop`` under
  ``torch.compile`` (one graph whatever the number of iterations, no data-dependent Python
  control flow). :func:`eager_inference` runs the many small ops without autograd's bookkeeping.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TypeVar

import torch
from torch.utils import _pytree as pytree

__all__ = [
    "bounded_loop", "eager_inference", "equilibrate", "equilibrate_definite", "masked_system", "nnqp", "pivoting",
    "pivoting_definite", "simplex_program", "project_simplex",
]  # fmt: skip

F = TypeVar("F", bound=Callable)

_while_loop = getattr(torch, "while_loop", None)
if _while_loop is None:  # torch < 2.13 keeps it private
    from torch._higher_order_ops.while_loop import while_loop as _while_loop

# A task whose squared gradient norm is below 2⁻⁹⁰⁰ (≈ 1e-271) of the largest is zero: every
# smaller ratio is representable in float64, so only exact zeros (and underflow) fall under it.
_ZERO = 2.0**-900


def eager_inference(fn: F) -> F:
    """Runs ``fn`` under ``torch.inference_mode`` when not compiling, and returns ordinary tensors.

    The solvers are many small ops; without autograd's bookkeeping each costs ~20 % less. They
    are not differentiable anyway (their active sets are discrete). Outputs are cloned outside
    inference mode, so callers may modify them in place.

    Example:
        >>> double = eager_inference(lambda x: 2 * x)
        >>> y = double(torch.ones(2)); y.add_(1)
        tensor([3., 3.])
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        with torch.inference_mode():
            out = fn(*args, **kwargs)
        if isinstance(out, torch.Tensor):  # (the common case without pytree's few microseconds)
            return out.clone()
        return pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, out)

    return wrapper  # type: ignore[return-value]


def bounded_loop(
    body: Callable[..., tuple[torch.Tensor, ...]], carry: tuple[torch.Tensor, ...], max_iter: int
) -> tuple[int | torch.Tensor, tuple[torch.Tensor, ...]]:
    """``carry = body(*carry)`` while ``carry[0]`` (a bool tensor, "running") has a true entry, ≤ ``max_iter`` times.

    Returns ``(iterations, carry)``: an int eagerly, a 0-d tensor under compile. ``body`` must
    return tensors shaped like its inputs.

    Example:
        >>> def halve(running, x):
        ...     x = x / 2
        ...     return x >= 1, x
        >>> n, (running, x) = bounded_loop(halve, (torch.tensor(True), torch.tensor(10.0)), 100)
        >>> int(n), float(x)
        (4, 0.625)
    """
    if torch.compiler.is_compiling():

        def cond(i, *c):
            return (i < max_iter) & c[0].any()

        def step(i, *c):
            return (i + 1, *body(*c))

        out = _while_loop(cond, step, (torch.zeros((), dtype=torch.int64, device=carry[0].device), *carry))
        return out[0], tuple(out[1:])
    count = 0
    while count < max_iter and bool(carry[0] if carry[0].dim() == 0 else carry[0].any()):
        carry = tuple(body(*carry))
        count += 1
    return count, carry


def equilibrate(G: torch.Tensor, ridge: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(C, d, zero)``: the cosine matrix C = D⁻¹GD⁻¹ + δI in float64, d_t = ‖g_t‖, and the zero rows.

    The ridge δ is relative to each task's own squared norm, never to the Gramian's trace: by
    default T·ε₆₄ where C + T·ε₆₄·I is numerically positive definite, else the shift that lifts
    C's smallest eigenvalue to T·ε of ``G``'s dtype (a float32 Gramian of nearly dependent
    gradients is indefinite by round-off, ~√P·ε₃₂ for P parameters). Zero rows
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
    # (G is not symmetrized: the factorizations read one triangle, and an asymmetry of round-off
    # size moves the multipliers by as much)
    G64 = G.to(torch.float64)
    diag = torch.diagonal(G64).clamp_min(0.0)
    zero = diag <= diag.amax() * _ZERO
    inv = torch.where(zero, 1.0, diag.rsqrt())
    # a zero row of G (a zero gradient) stays a zero row of C: its d_t is 1
    C = G64 * torch.outer(inv, inv)
    d = inv.reciprocal()
    small = T * torch.finfo(torch.float64).eps if ridge is None else ridge
    C.diagonal().add_(small)
    if ridge is not None:
        return C, d, zero
    definite = torch.linalg.cholesky_ex(C)[1] == 0
    if not torch.compiler.is_compiling() and bool(definite):  # the common case: no eigenvalues needed
        return C, d, zero
    # indefinite by round-off: lift the smallest eigenvalue to T·ε of G's dtype. (eigvalsh raises
    # on a non-finite matrix, even compiled: it sees zeros there, and the NaN stays in C, so the
    # step's finiteness guard refuses the update instead)
    finite = torch.where(torch.isfinite(C), C, 0.0)
    shift = (T * torch.finfo(G.dtype).eps - torch.linalg.eigvalsh(finite)[0]).clamp_min(0.0)
    return C + torch.where(definite, 0.0, shift) * torch.eye(T, dtype=C.dtype, device=C.device), d, zero


def equilibrate_definite(G: torch.Tensor, ridge: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`equilibrate` of G + ridge·I in its common case, eagerly: ``(C, d⁻¹, info)``.

    C = D⁻¹(G + ridge·I)D⁻¹ + T·ε₆₄·I, D² = diag(G) + ridge, as :func:`equilibrate` finds it when
    no row is zero and C is positive definite, in a third of its ops (eager cost is per op; C's
    diagonal is its exact value, 1 + T·ε₆₄). ``info`` (0-d) is non-zero where C is not numerically
    positive definite; a zero row gives d⁻¹ = ∞ and NaNs in C, which callers must catch (c = Cl
    is then not finite). Either way they fall back to :func:`equilibrate`. A row below :func:`equilibrate`'s
    2⁻⁹⁰⁰ threshold but not zero is kept as the non-zero row it is.

    Example:
        >>> C, inv, info = equilibrate_definite(torch.tensor([[3.0, -2.0], [-2.0, 3.0]]), 1.0)
        >>> C, inv, int(info)
        (tensor([[ 1.0000, -0.5000],
                [-0.5000,  1.0000]], dtype=torch.float64), tensor([0.5000, 0.5000], dtype=torch.float64), 0)
    """
    G64 = G if G.dtype == torch.float64 else G.to(torch.float64)
    inv = (G64.diagonal() + ridge).rsqrt_()
    C = G64 * torch.outer(inv, inv)
    one = 1.0 + G.shape[0] * torch.finfo(torch.float64).eps
    C.diagonal().clamp_(one, one)  # (a fill that keeps a zero row's NaN: 0·∞²)
    return C, inv, torch.linalg.cholesky_ex(C)[1]


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


def _free_solve(C: torch.Tensor, rhs: torch.Tensor, free: torch.Tensor, eye: torch.Tensor):
    """``(x, info)``: C_FF x_F = rhs_F and x_{F̄} = 0 for each row's free set F, by Cholesky.

    ``info`` is non-zero for the rows whose C_FF is not numerically positive definite (x is then
    garbage).
    Eagerly, for large batches of large systems (UPGrad at T ≥ 32), only the free block is
    factorized, padded to the largest free set of the batch (UPGrad's free sets are the few
    conflicting tasks); under compile shapes stay fixed.
    """
    B, n = free.shape
    if B * n >= 1024 and not torch.compiler.is_compiling():
        k = int(free.sum(1).max())
        if k == 0:
            return torch.zeros_like(rhs), torch.zeros(B, dtype=torch.int32, device=rhs.device)
        if k < n:
            order = torch.argsort(free.to(torch.int8), dim=1, descending=True, stable=True)[:, :k]
            sub = torch.gather(free, 1, order)
            M = torch.where(sub[:, :, None] & sub[:, None, :], C[order[:, :, None], order[:, None, :]], eye[:k, :k])
            L, info = torch.linalg.cholesky_ex(M)
            y = torch.cholesky_solve(torch.where(sub, torch.gather(rhs, 1, order), 0.0)[..., None], L)[..., 0]
            return torch.zeros_like(rhs).scatter(1, order, y), info
    L, info = torch.linalg.cholesky_ex(masked_system(C, free, eye))
    return torch.cholesky_solve(torch.where(free, rhs, 0.0)[..., None], L)[..., 0], info


def pivoting(
    C: torch.Tensor, c: torch.Tensor, frozen: torch.Tensor, max_iter: int, tol: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block principal pivoting for :func:`nnqp`'s problem: ``(x, certified)`` (fast; see :func:`nnqp`).

    Every infeasible index changes side at once (the full exchange of Kim & Park, 2011, without
    Murty's backup: a row that does not settle within ``max_iter`` is left to the active-set
    method). The loop stops once no index is infeasible — x_F ≥ 0 and λ_{F̄} ≥ 0 up to ``tol``
    relative to 1 + max|x|, with λ_F = 0 by the solve — so the answer meets the KKT conditions;
    it is ``certified`` unless a factorization failed (a singular C_FF) or x is huge (≥ 10⁸, the
    ridge at work: round-off then swamps the signs). Uncertified rows of x are not to be used.

    Example:
        >>> C = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> pivoting(C, torch.tensor([[-1.0, 1.0]], dtype=torch.float64), torch.zeros(2, dtype=torch.bool), 20, 1e-12)
        (tensor([[0.5000, 0.0000]], dtype=torch.float64), tensor([True]))
    """
    n = c.shape[1]
    eye = torch.eye(n, dtype=C.dtype, device=C.device)
    negative = -c
    # eagerly, skip the mask when nothing is frozen (one op less per iteration)
    live = None if not torch.compiler.is_compiling() and not bool(frozen.any()) else ~frozen

    def infeasible(x: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
        # x on the free set, λ = Cx + c off it: the KKT conditions ask both to be non-negative
        slack = x.abs().amax(1, keepdim=True).mul_(-tol).sub_(tol)  # −tol (1 + max|x|)
        bad = torch.where(free, x, torch.addmm(c, x, C)) < slack
        return bad if live is None else bad & live

    def body(running, x, free, bad, info):
        free = free ^ bad
        x, info = _free_solve(C, negative, free, eye)  # (only the last solve's answer is kept)
        bad = infeasible(x, free)
        return bad.any(), x, free, bad, info

    # at x = 0 (nothing free) the infeasible indices are those with c < 0
    bad = c < -tol if live is None else (c < -tol) & live
    none = torch.zeros_like(bad)
    start = (bad.any(), torch.zeros_like(c), none, bad, torch.zeros(c.shape[0], dtype=torch.int32, device=c.device))
    _, (_, x, _, bad, info) = bounded_loop(body, start, max_iter)
    return x, ~bad.any(1) & (info == 0) & (x.abs().amax(1) < 1e8)


def pivoting_definite(
    C: torch.Tensor, c: torch.Tensor, info: torch.Tensor, max_iter: int, tol: float
) -> torch.Tensor | None:
    """:func:`pivoting` eagerly for a positive definite C, nothing frozen: x ≥ 0, or None unless every row is certified.

    The same exchanges, tolerance and certificate as :func:`pivoting` in half its ops (eager
    cost is per op): c is not rescaled (the tolerance is relative to max|c| instead, the same
    test) and the loop starts from the first solve. One problem (B = 1, DualProj) keeps its
    O(n) bookkeeping in Python floats, a few times cheaper than torch ops on [1, n] tensors.
    ``info`` is :func:`equilibrate_definite`'s; with it non-zero, or c not finite (a zero
    row there), the answer is None.

    Example:
        >>> C = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> x = pivoting_definite(C, torch.tensor([[-1.0, 1.0]], dtype=torch.float64), torch.tensor(0), 20, 1e-12)
        >>> x + 0.0  # (+ 0.0: an index at its bound may come back as −0.0)
        tensor([[0.5000, 0.0000]], dtype=torch.float64)
    """
    if c.shape[0] == 1:
        return _pivoting_one(C, c, info, max_iter, tol)
    floor = torch.linalg.vector_norm(c, float("inf"), 1, keepdim=True).mul_(-tol)  # −tol·max|c|
    if info or not math.isfinite(floor.sum()):
        return None
    free = c < floor  # the infeasible indices at x = 0
    if not free.any():
        return torch.zeros_like(c)
    eye = torch.eye(c.shape[1], dtype=C.dtype, device=C.device)
    negative = -c
    for _ in range(max_iter):
        x, solved = _free_solve(C, negative, free, eye)
        size = torch.linalg.vector_norm(x, float("inf"), 1, keepdim=True)
        bad = torch.where(free, x, torch.addmm(c, x, C)) < torch.add(floor, size, alpha=-tol)
        if not bad.any():
            break
        free = free ^ bad
    else:
        return None
    # uncertified as in :func:`pivoting`: a failed factorization, or x ≥ 10⁸ (for max|c| = 1)
    if (solved != 0).any() or (size * tol >= floor * -1e8).any():
        return None
    return x.clamp_min_(0.0)


def _pivoting_one(C: torch.Tensor, c: torch.Tensor, info: torch.Tensor, max_iter: int, tol: float):
    """:func:`pivoting_definite` for c of shape [1, n]: the signs and sizes read as Python floats, 2-D solves."""
    row = c.tolist()[0]
    floor = tol * max(map(abs, row))
    if info or not math.isfinite(floor):
        return None
    free = [value < -floor for value in row]
    if not any(free):
        return torch.zeros_like(c)
    mask = c < -floor  # (free as a tensor: a comparison costs less than building one from a list)
    eye = torch.eye(len(row), dtype=C.dtype, device=C.device)
    negative = -c
    for _ in range(max_iter):
        L, solved = torch.linalg.cholesky_ex(torch.where(mask.mT & mask, C, eye))
        # (two triangular solves: cholesky_solve costs about twice as much on a cold cache)
        y = torch.linalg.solve_triangular(L, (negative * mask).mT, upper=False)  # (c is finite)
        x = torch.linalg.solve_triangular(L.mT, y, upper=True).mT
        xs, lam = x.tolist()[0], torch.addmm(c, x, C).tolist()[0]
        size = max(map(abs, xs))
        slack = -floor - tol * size
        bad = [(xt if ft else lt) < slack for ft, xt, lt in zip(free, xs, lam, strict=True)]
        if not any(bad):
            break
        free = [ft != bt for ft, bt in zip(free, bad, strict=True)]
        mask = torch.frombuffer(bytearray(free), dtype=torch.bool).view(1, -1).to(c.device)  # (torch.tensor: 2×)
    else:
        return None
    if solved or not size < 1e8 * floor / tol:  # (not <: a NaN is uncertified too)
        return None
    return x.clamp_min_(0.0)


def _active_set(C, c, frozen, x, free, done, max_iter: int, tol: float):
    """The primal active-set method from a feasible ``(x, free)``: ``(x, iterations)``."""
    B, n = c.shape
    eye = torch.eye(n, dtype=C.dtype, device=C.device)
    index = torch.arange(n, device=c.device)
    inf = torch.full_like(c, float("inf"))
    negative, zeros = -c, torch.zeros_like(c)

    def body(running, x, free):
        z = _solve(masked_system(C, free, eye), torch.where(free, negative, zeros)[..., None])[..., 0]
        alpha, block = torch.where(free & (z < 0), x / (x - z), inf).min(1)  # x − z > 0 there
        blocked = alpha < 1
        kept = free & ~((index == block[:, None]) & blocked[:, None])
        moved = torch.where(kept, (x + alpha.clamp_max(1.0)[:, None] * (z - x)).clamp_min(0.0), zeros)
        most, enter = torch.where(kept | frozen, inf, moved @ C + c).min(1)
        joins = (most < -tol * (1.0 + moved.abs().amax(1))) & ~blocked
        keep = ~running[:, None]
        x = torch.where(keep, x, moved)
        free = torch.where(keep, free, kept | ((index == enter[:, None]) & joins[:, None]))
        return running & (blocked | joins), x, free

    iterations, (_, x, _) = bounded_loop(body, (~done, x, free), max_iter)
    return x, iterations


def nnqp(
    C: torch.Tensor, c: torch.Tensor, frozen: torch.Tensor | None = None, max_iter: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x_b = argmin_{x ≥ 0} ½ xᵀCx + c_bᵀx`` for each row c_b of ``c`` ([B, n]); C positive (semi)definite.

    Two exact methods on all B problems at once, each iteration one batched linear solve on the
    free sets F (x_F = −C_FF⁻¹c_F, x_{F̄} = 0):

    1. block principal pivoting (Júdice & Pires, 1994; Kim & Park, 2011) on the KKT conditions
       x ≥ 0, λ = Cx + c ≥ 0, xᵀλ = 0: every infeasible index changes side at once
       (:func:`pivoting`). It needs a handful of iterations whatever n, but its iterates are
       infeasible and, for a singular C, huge, so its answer is kept only where it meets the
       KKT conditions;
    2. where it does not (a singular or badly conditioned C, or a cycle), the primal active-set
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
    guess, certified = pivoting(C, c, frozen, max_iter, tol)
    if not torch.compiler.is_compiling() and bool(certified.all()):
        return guess.clamp_min(0.0) * scale, 0
    ok = certified[:, None]
    x0 = torch.where(ok, guess.clamp_min(0.0), 0.0)
    x, iterations = _active_set(C, c, frozen, x0, (x0 > 0) & ok, certified, max_iter, tol)
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
    *,
    interior_start: bool = False,
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

    ``interior_start``: first try the face of every index that is not frozen; if its minimum is
    strictly feasible (y > 0), it is the optimum (f is convex and the face's stationarity is
    the KKT system with no active bound), and the loop only confirms it. One solve more where the
    optimum has a smaller support, T − 1 fewer where it has them all (CAGrad's dual, usually).

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

    def face(S):
        # the minimum of f on the face of support S (stationarity b + φCy/r = μa), if bounded
        pq = _solve(masked_system(C, S, eye), torch.stack([torch.where(S, a, zeros), torch.where(S, b, zeros)], 1))
        p, q = pq[:, 0], pq[:, 1]
        A, B, c0 = a @ p, a @ q, b @ q
        disc = B * B - A * (c0 - phi * phi)
        bounded = disc > 1e-14 * (B * B + A * (c0.abs() + phi * phi))
        root = disc.clamp_min(tiny).sqrt()
        return p, q, A, B, bounded, ((B + root) / A * p - q) / root

    def body(running, y, S):
        p, q, A, B, bounded, target = face(S)
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
        y = torch.where(running, moved, y)
        S = torch.where(running, kept | (torch.nn.functional.one_hot(enter, n).to(torch.bool) & joins), S)
        return running & (blocked | joins), y, S

    if interior_start:
        # the loop then stops after one confirming step; from a vertex it would take T steps to
        # let every index join (benchmarks/RESULTS.md §10.10)
        free = ~frozen
        *_, bounded, target = face(free)
        interior = bounded & (torch.where(free, target, 1.0).amin() > 0) & free.any()
        y = torch.where(interior, torch.where(free, target, 0.0), y)
        support = torch.where(interior, free, support)
    running = torch.ones((), dtype=torch.bool, device=C.device)
    iterations, (_, y, _) = bounded_loop(body, (running, y, support), max_iter)
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

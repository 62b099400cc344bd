"""DB-MTL: dual balancing of loss scales and gradient magnitudes (paper Algorithm 1)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from tensordict import TensorDict

from ..base import Balancer, TaskGradients
from ..params import task_names
from ..tree import combine, row_sq_norms, scale_rows
from ._common import assemble, log_scale, scale_heads, zeros_like_rows
from ._common import log_transform as _log_transform

__all__ = ["ALPHAS", "DBMTLState", "alpha_scale", "dbmtl", "ema_carry", "ema_rows", "ema_sq_norms"]

ALPHAS = ("max", "min", "mean", "median")
"""The named choices of α_k (paper Fig. 6): ``alpha_scale(name, norms)``."""


class DBMTLState(NamedTuple):
    """DB-MTL's state: the step count k and the EMA ĝ_t, stored per row as ĝ_t = s_t u_t.

    Attributes:
        count: k, 0-d int64.
        rows: u, a ``[T]``-stacked TensorDict shaped like θ.
        scale: s, ``Tensor[T]``.

    Why scaled rows: the EMA ĝ_t ← β_k ĝ_t + c_t g_t (c_t = (1−β_k)/(ℓ_t+ε)) then costs one pass
    over [T, P] (one ``addcmul``: u_t ← g_t + (β_k s_t/c_t) u_t, s_t ← c_t) instead of two, and the
    factor 1/(ℓ_t+ε) of the log transform never touches J. ``ema`` gives ĝ itself.

    Example:
        >>> s = DBMTLState(torch.tensor(1), TensorDict({"w": torch.ones(2, 3)}, [2]), torch.tensor([2.0, 0.5]))
        >>> s.ema["w"]
        tensor([[2.0000, 2.0000, 2.0000],
                [0.5000, 0.5000, 0.5000]])
    """

    count: torch.Tensor
    rows: TensorDict
    scale: torch.Tensor

    @property
    def ema(self) -> TensorDict:
        """ĝ_t = s_t u_t, a fresh ``[T]``-stacked TensorDict."""
        return scale_rows(self.scale, self.rows)


def alpha_scale(alpha: str | float, norms: torch.Tensor) -> torch.Tensor:
    """α_k of Eq. 2 from the EMA norms ‖ĝ_t‖: their max (the paper), min, mean, median, or a constant.

    Example:
        >>> alpha_scale("max", torch.tensor([1.0, 3.0])), alpha_scale(2.0, torch.tensor([1.0, 3.0]))
        (tensor(3.), tensor(2.))
    """
    if isinstance(alpha, str):
        return {"max": torch.amax, "min": torch.amin, "mean": torch.mean}.get(
            alpha, lambda x: torch.median(x)
        )(norms)
    return torch.as_tensor(float(alpha), dtype=norms.dtype, device=norms.device)


def ema_carry(
    scale: torch.Tensor, losses: torch.Tensor, count: torch.Tensor, beta: float, beta_sigma: float, eps: float,
    log_transform: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-row factors of one EMA step on scaled rows: ``(carry, new_scale)``, both ``Tensor[T]``.

    .. math::
        c_t = \\frac{1-\\beta_k}{\\ell_t+\\epsilon}\\ (\\text{or } 1-\\beta_k \\text{ without the log}),\\quad
        \\beta_k = \\beta / k^{\\sigma},\\quad
        \\text{carry}_t = \\beta_k s_t / c_t,\\quad s_t \\leftarrow c_t

    so that ĝ_t = s_t u_t becomes β_k ĝ_t + c_t g_t with u_t ← g_t + carry_t u_t (:func:`ema_rows`).
    ``count`` is k (from 1). A negative loss under the log transform gives NaN factors, so a
    compiled step reports ``ok = False`` instead of stepping along a sign-flipped gradient.

    Example:
        >>> carry, s = ema_carry(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 3.0]), torch.tensor(1), 0.5, 0.0, 0.0)
        >>> carry, s
        (tensor([0., 0.]), tensor([0.5000, 0.1667]))
    """
    dtype = losses.dtype
    beta_k = beta / count.to(dtype) ** beta_sigma
    c = (1.0 - beta_k).expand_as(losses)
    if log_transform:
        c = c * log_scale(losses, None, eps)
    return beta_k * scale.to(dtype) / c, c


def ema_rows(rows: torch.Tensor, g: torch.Tensor, carry: torch.Tensor) -> torch.Tensor:
    """``g + carry_t · rows`` for a ``[T, ...]`` leaf: the EMA step on scaled rows, in one pass.

    Example:
        >>> ema_rows(torch.ones(2, 2), torch.zeros(2, 2), torch.tensor([2.0, 3.0]))
        tensor([[2., 2.],
                [3., 3.]])
    """
    return torch.addcmul(g, rows, carry.to(rows.dtype).reshape((-1,) + (1,) * (rows.dim() - 1)))


def ema_sq_norms(rows: TensorDict, scale: torch.Tensor) -> torch.Tensor:
    """‖ĝ_t‖² = s_t² ‖u_t‖² over all leaves of the scaled rows, ``Tensor[T]``.

    Eagerly ‖u_t‖ is taken first and scaled after (one read of u); where that overflows (u holds
    the unscaled gradients, so float32 entries ≳ 1e19 do) the norm of s_t u_t is taken instead, as
    under ``torch.compile``, where the product is fused into the reduction and costs nothing.

    Example:
        >>> ema_sq_norms(TensorDict({"w": torch.full((2, 4), 1e20)}, [2]), torch.tensor([1e-20, 1e-21]))
        tensor([4.0000, 0.0400])
    """
    if not torch.compiler.is_compiling():
        sq = scale.square() * row_sq_norms(rows).to(scale.dtype)
        if bool(torch.isfinite(sq).all()) or not bool(torch.isfinite(scale).all()):
            return sq
    return row_sq_norms(scale_rows(scale, rows)).to(scale.dtype)


def dbmtl(
    beta: float = 0.9,
    beta_sigma: float = 0.0,
    eps: float = 1e-8,
    alpha: str | float = "max",
    log_transform: bool = True,
    normalize: bool = True,
) -> Balancer:
    """DB-MTL (Algorithm 1): log-transformed losses, EMA'd and norm-balanced task gradients.

    .. math::
        g_{t,k} &= \\nabla_\\theta \\log(\\ell_t + \\epsilon) \\\\
        \\hat g_{t,k} &= \\beta_k \\hat g_{t,k-1} + (1-\\beta_k) g_{t,k},
            \\quad \\beta_k = \\beta / k^{\\sigma},\\ \\hat g_{t,-1} = 0 \\\\
        \\tilde g_k &= \\alpha_k \\sum_t \\frac{\\hat g_{t,k}}{\\|\\hat g_{t,k}\\|_2 + \\epsilon},
            \\quad \\alpha_k = \\max_t \\|\\hat g_{t,k}\\|_2

    (Eq. 1–2; k counts steps from 1; no bias correction, as in LibMTL.) The norm runs over all
    shared leaves together. Each ψ_t receives ∇ψ_t log(ℓ_t + ε), without EMA or
    normalization (steps 11–13).

    Args:
        beta: EMA rate β of Eq. 1.
        beta_sigma: σ in the schedule β_k = β / k^σ.
        eps: ε in log(ℓ + ε) and in the normalization.
        alpha: ``"max"`` (the paper), ``"min"``, ``"mean"``, ``"median"`` or a constant
            (paper Fig. 6).
        log_transform: the loss-scale component (Sec. 3.1).
        normalize: the gradient-magnitude component (Sec. 3.2: EMA and normalization);
            ``False`` sums the (transformed) task gradients. Both off is EW (Table 5).

    ``info["weights"]`` holds the coefficient applied to each ĝ_t, α/(‖ĝ_t‖+ε), and
    ``info["ema_norms"]`` (with ``normalize``) the norms ‖ĝ_t‖. They are non-finite whenever J_t is
    (1 − β_k > 0), so :func:`fmtl.make_step` guards on them instead of a pass over J.

    Example:
        >>> import torch, fmtl
        >>> from tensordict import TensorDict
        >>> params = TensorDict({"shared": {"w": torch.zeros(2)},
        ...                      "tasks": {"a": {"b": torch.zeros(1)}, "b": {"b": torch.zeros(1)}}}, [])
        >>> balancer = fmtl.balancers.dbmtl(beta=0.0, log_transform=False)
        >>> state = balancer.init(params, 2)
        >>> g = fmtl.TaskGradients(torch.ones(2), TensorDict({"w": torch.tensor([[3.0, 0.0], [0.0, 0.1]])}, [2]),
        ...                        params["tasks"].apply(torch.ones_like))
        >>> grad, state, info = balancer.update(g, state, params)
        >>> grad["shared", "w"].round(decimals=4)  # both tasks contribute with norm max_t ‖g_t‖ = 3
        tensor([3., 3.])
    """
    if isinstance(alpha, str) and alpha not in ALPHAS:
        raise ValueError(f"alpha must be one of {ALPHAS} or a number; got {alpha!r}")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must lie in [0, 1); got {beta}")

    def init(params: TensorDict, num_tasks: int) -> DBMTLState:
        first = next(iter(params.values(True, True)))
        return DBMTLState(
            torch.zeros((), dtype=torch.int64, device=first.device),
            zeros_like_rows(params["shared"], num_tasks),
            torch.zeros(num_tasks, dtype=first.dtype, device=first.device),
        )

    def update(
        grads: TaskGradients, state: DBMTLState, params: TensorDict
    ) -> tuple[TensorDict, DBMTLState, dict]:
        count = state.count + 1
        if not normalize:
            if log_transform:
                grads = _log_transform(grads, params, eps)
            weights = torch.ones_like(grads.losses)
            return (
                assemble(combine(weights, grads.shared), grads.tasks),
                DBMTLState(count, state.rows, state.scale),
                {"weights": weights},
            )
        tasks = grads.tasks
        if log_transform:
            # Only the heads and the losses go through the transform here; for θ, the factor
            # 1/(ℓ_t + ε) lives in the rows' scale (ema_carry), so no scaled copy of J is made.
            tasks = scale_heads(log_scale(grads.losses, params, eps), tasks, task_names(params))
        carry, scale = ema_carry(state.scale, grads.losses, count, beta, beta_sigma, eps, log_transform)
        rows = state.rows.apply(lambda u, g: ema_rows(u, g, carry), grads.shared)
        norms = ema_sq_norms(rows, scale).sqrt()
        weights = alpha_scale(alpha, norms) / (norms + eps)
        shared = combine(weights * scale, rows)
        info = {"weights": weights, "ema_norms": norms}
        return assemble(shared, tasks), DBMTLState(count, rows, scale.to(state.scale.dtype)), info

    return Balancer(init, update)

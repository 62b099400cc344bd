"""DB-MTL: dual balancing of loss scales and gradient magnitudes (paper Algorithm 1)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from tensordict import TensorDict

from ..base import Balancer, TaskGradients
from ..tree import combine, row_norms
from ._common import assemble, log_scale, zeros_like_rows
from ._common import log_transform as _log_transform

__all__ = ["DBMTLState", "dbmtl"]

_ALPHAS = ("max", "min", "mean", "median")


class DBMTLState(NamedTuple):
    """DB-MTL's state: the step count k (0-d int64) and the EMA ĝ_t of shared gradients ([T])."""

    count: torch.Tensor
    ema: TensorDict


def _scale(alpha: str | float, norms: torch.Tensor) -> torch.Tensor:
    if isinstance(alpha, str):
        return {"max": torch.amax, "min": torch.amin, "mean": torch.mean}.get(
            alpha, lambda x: torch.median(x)
        )(norms)
    return torch.as_tensor(float(alpha), dtype=norms.dtype, device=norms.device)


def _ema_step(beta_k: torch.Tensor, coef: torch.Tensor):
    """ĝ ↦ β_k ĝ + c_t g per leaf (Eq. 1 with c_t = (1-β_k)/(ℓ_t+ε)): one fresh tensor, no temporaries."""

    def step(ema: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        out = torch.mul(ema, beta_k.to(ema.dtype))
        return out.addcmul_(g, coef.to(g.dtype).reshape((-1,) + (1,) * (g.dim() - 1)))

    return step


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

    ``info["weights"]`` holds the coefficient applied to each ĝ_t, α/(‖ĝ_t‖+ε).

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
    if isinstance(alpha, str) and alpha not in _ALPHAS:
        raise ValueError(f"alpha must be one of {_ALPHAS} or a number; got {alpha!r}")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must lie in [0, 1); got {beta}")

    def init(params: TensorDict, num_tasks: int) -> DBMTLState:
        device = next(iter(params.values(True, True))).device
        return DBMTLState(
            torch.zeros((), dtype=torch.int64, device=device),
            zeros_like_rows(params["shared"], num_tasks),
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
                DBMTLState(count, state.ema),
                {"weights": weights},
            )
        dtype = grads.losses.dtype
        beta_k = beta / count.to(dtype) ** beta_sigma
        scale = torch.ones_like(grads.losses)
        tasks = grads.tasks
        if log_transform:
            # Only the heads and the losses go through the transform here; for θ, the factor
            # 1/(ℓ_t + ε) is folded into the EMA below, so no scaled copy of J is made.
            T = grads.losses.shape[0]
            tasks = _log_transform(TaskGradients(grads.losses, TensorDict({}, [T]), tasks), params, eps).tasks
            scale = log_scale(grads.losses, None, eps)  # domain checked just above; NaN under compile
        ema = state.ema.apply(_ema_step(beta_k, (1.0 - beta_k) * scale), grads.shared)
        norms = row_norms(ema)
        weights = _scale(alpha, norms) / (norms + eps)
        shared = combine(weights, ema)
        return assemble(shared, tasks), DBMTLState(count, ema), {"weights": weights}

    return Balancer(init, update)

"""MoCo: MGDA with a momentum estimate of the task gradients and a single-step weight update."""

from __future__ import annotations

from typing import NamedTuple

import torch
from tensordict import TensorDict

from ..base import Balancer, TaskGradients
from ..tree import combine, gramian, row_norms, scale_rows
from ._common import zeros_like_rows
from ._gradient import finish, prepare
from ._loss import like

__all__ = ["MoCoState", "moco"]


class MoCoState(NamedTuple):
    """Step count, the tracked gradients y ([T]-stacked like θ) and the weights λ ([T])."""

    count: torch.Tensor
    y: TensorDict
    lam: torch.Tensor


def moco(
    beta: float = 0.5,
    beta_sigma: float = 0.5,
    gamma: float = 0.1,
    gamma_sigma: float = 0.5,
    rho: float = 0.0,
    log_transform: bool = False,
    eps: float = 1e-8,
) -> Balancer:
    """MoCo (Fernando et al., 2023) as in LibMTL (needs J: y is a tracked copy of it).

    .. math::
        \\hat g_t = \\ell_t \\frac{g_t}{\\|g_t\\| + 10^{-8}},\\quad
        y \\leftarrow y - \\beta_k (y - \\hat g),\\quad
        \\lambda \\leftarrow \\mathrm{softmax}\\big(\\lambda - \\gamma_k (y y^\\top + \\rho I)\\lambda\\big),
        \\quad \\tilde g_\\theta = y^\\top \\lambda

    with β_k = β / k^{σ_β}, γ_k = γ / k^{σ_γ} (k counts from 1), y₀ = 0 and λ₀ = 1/T. Only θ
    is touched (paper Sec. 2.2); ψ_t gets ∇ψ_t ℓ_t. ``info["weights"]`` is λ.

    Example:
        >>> import torch, fmtl
        >>> from tensordict import TensorDict
        >>> b = fmtl.balancers.get("moco", beta=1.0)
        >>> p = TensorDict({"shared": {"w": torch.zeros(2)}, "tasks": {"a": {}, "b": {}}}, [])
        >>> J = TensorDict({"w": torch.tensor([[3.0, 0.0], [0.0, 1.0]])}, [2])
        >>> g, s, info = b.update(fmtl.TaskGradients(torch.ones(2), J, p["tasks"]), b.init(p, 2), p)
        >>> g["shared", "w"]  # β₁ = 1: y = unit gradients (ℓ = 1); yyᵀ = I keeps λ = ½
        tensor([0.5000, 0.5000])
    """

    def init(params: TensorDict, num_tasks: int) -> MoCoState:
        kw = like(params)
        return MoCoState(
            torch.zeros((), dtype=torch.int64, device=kw["device"]),
            zeros_like_rows(params["shared"], num_tasks),
            torch.full((num_tasks,), 1.0 / num_tasks, **kw),
        )

    def update(grads: TaskGradients, state: MoCoState, params: TensorDict):
        grads = prepare(grads, params, log_transform, eps)
        count = state.count + 1
        k = count.to(grads.losses.dtype)
        normalized = scale_rows(grads.losses / (row_norms(grads.shared) + 1e-8), grads.shared)
        y = state.y.lerp(normalized, beta / k**beta_sigma)
        G = gramian(y)
        eye = torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
        lam = torch.softmax(state.lam - (gamma / k**gamma_sigma).to(G.dtype) * ((G + rho * eye) @ state.lam), dim=0)
        return finish(combine(lam, y), None, grads.tasks), MoCoState(count, y, lam), {"weights": lam}

    return Balancer(init, update)

"""MetaBalance: move each task's gradient magnitude toward a target magnitude, layer by layer."""

from __future__ import annotations

from typing import NamedTuple

import torch
from tensordict import TensorDict

from ..base import Balancer, TaskGradients
from ..tree import leaves
from ._gradient import finish, prepare
from ._loss import like

__all__ = ["MetaBalanceState", "metabalance"]


class MetaBalanceState(NamedTuple):
    """Step count and the moving averages m of per-leaf task gradient norms (leaves of shape [T])."""

    count: torch.Tensor
    norms: TensorDict


def metabalance(
    relax: float = 0.7, beta: float = 0.9, target: int | None = None, log_transform: bool = False, eps: float = 1e-8
) -> Balancer:
    """MetaBalance (He et al., 2022): per shared tensor, scale g_t toward the target's magnitude.

    .. math::
        m_t \\leftarrow \\beta m_t + (1-\\beta) \\|g_t\\|,\\quad
        g_t \\leftarrow g_t \\Big(r \\frac{m_\\star}{m_t} + 1 - r\\Big),\\quad
        \\tilde g_\\theta = \\sum_t g_t

    per leaf of θ (the original works per parameter tensor), with relax factor r and m
    initialized to the first step's norms. The original has one target task and auxiliaries:
    ``target=i`` uses m_⋆ = m_i; the default ``None`` treats all tasks alike with
    m_⋆ = max_t m_t (every task is lifted toward the largest magnitude, like DB-MTL's α = max).
    Needs J (per-leaf norms). A task whose moving norm on a leaf is 0 keeps factor 1 there. Only θ
    is touched; ψ_t gets ∇ψ_t ℓ_t. ``info["weights"]`` is the mean scale factor of each task over
    the leaves.

    Example:
        >>> import torch, fmtl
        >>> from tensordict import TensorDict
        >>> b = fmtl.balancers.get("metabalance", relax=1.0)
        >>> p = TensorDict({"shared": {"w": torch.zeros(2)}, "tasks": {"a": {}, "b": {}}}, [])
        >>> J = TensorDict({"w": torch.tensor([[4.0, 0.0], [0.0, 1.0]])}, [2])
        >>> g, s, info = b.update(fmtl.TaskGradients(torch.ones(2), J, p["tasks"]), b.init(p, 2), p)
        >>> g["shared", "w"], info["weights"]  # r = 1: both gradients get the largest norm, 4
        (tensor([4., 4.]), tensor([1., 4.]))
    """

    def init(params: TensorDict, num_tasks: int) -> MetaBalanceState:
        kw = like(params)
        norms = params["shared"].apply(
            lambda v: torch.zeros(num_tasks, dtype=v.dtype, device=v.device), batch_size=[num_tasks]
        )
        return MetaBalanceState(torch.zeros((), dtype=torch.int64, device=kw["device"]), norms)

    def factor(m: torch.Tensor) -> torch.Tensor:
        star = m.amax() if target is None else m[target]
        # a task whose gradient on this leaf has been 0 has nothing to scale: factor 1, not ∞·0
        return torch.where(m > 0, relax * star / m.clamp_min(torch.finfo(m.dtype).tiny) + (1 - relax), 1.0)

    def update(grads: TaskGradients, state: MetaBalanceState, params: TensorDict):
        grads = prepare(grads, params, log_transform, eps)
        first = state.count == 0
        now = grads.shared.apply(lambda g: g.reshape(g.shape[0], -1).norm(dim=1))
        norms = state.norms.apply(lambda m, n: torch.where(first, n, beta * m + (1 - beta) * n), now)
        shared = grads.shared.apply(lambda g, m: torch.tensordot(factor(m), g, dims=1), norms, batch_size=[])
        factors = [factor(m) for m in leaves(norms)]
        w = torch.stack(factors).mean(0) if factors else torch.ones_like(grads.losses)
        return finish(shared, None, grads.tasks), MetaBalanceState(state.count + 1, norms), {"weights": w}

    return Balancer(init, update)

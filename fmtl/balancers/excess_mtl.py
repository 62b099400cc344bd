"""ExcessMTL: task weights that grow with each task's estimated excess risk."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from tensordict import TensorDict

from ..base import Balancer, TaskGradients
from ..tree import combine, leaves
from ._common import zeros_like_rows
from ._gradient import finish, prepare
from ._loss import like

__all__ = ["ExcessMTLState", "excess_mtl"]


class ExcessMTLState(NamedTuple):
    """Step count, Σ_k g_{t,k}² per shared coordinate ([T]-stacked like θ), the first excess risks, log w."""

    count: torch.Tensor
    squares: TensorDict
    initial: torch.Tensor
    log_weights: torch.Tensor


def excess_mtl(robust_step_size: float = 1e-2, log_transform: bool = False, eps: float = 1e-8) -> Balancer:
    """ExcessMTL (He et al., ICML 2024, "Robust Multi-Task Learning with Excess Risks"), needs J.

    The excess risk of task t is estimated with an AdaGrad-style diagonal Hessian (Eq. 6–7) and
    the weights take an exponentiated-gradient step on it, relative to the first step's (Eq. 9,
    Sec. 3.2):

    .. math::
        S_t \\leftarrow S_t + g_t^2,\\quad
        E_t = \\sum_p \\frac{g_{t,p}^2}{\\sqrt{S_{t,p} + 10^{-7}}},\\quad
        w \\leftarrow T\\, \\frac{w \\odot \\exp(\\eta E / E^{(0)})}{\\sum_s w_s \\exp(\\eta E_s / E^{(0)}_s)}

    with E⁽⁰⁾ the first step's E (that step keeps w = 1) and η = ``robust_step_size``
    (LibMTL's default 10⁻²). As LibMTL, w starts at 1 and sums to T, and the loss Σ_t w_t ℓ_t is
    back-propagated: the weights touch θ and every ψ_t. TorchJD keeps w on the simplex (w₀ = 1/T)
    and already updates w at the first call. The update runs in log space (a task whose first
    excess risk was 0 saturates the weights instead of turning them into NaN). The state holds S,
    a [T, P] copy of θ's shape, like DB-MTL's EMA.

    Example:
        >>> import torch, fmtl
        >>> from tensordict import TensorDict
        >>> b = fmtl.balancers.get("excess_mtl", robust_step_size=1.0)
        >>> p = TensorDict({"shared": {"w": torch.zeros(2)}, "tasks": {"a": {}, "b": {}}}, [])
        >>> g = fmtl.TaskGradients(torch.ones(2), TensorDict({"w": torch.tensor([[1.0, 0.0], [0.0, 2.0]])}, [2]),
        ...                        p["tasks"])
        >>> s = b.init(p, 2)
        >>> _, s, info = b.update(g, s, p)
        >>> info["weights"]  # the first step sets E⁽⁰⁾ and keeps w = 1
        tensor([1., 1.])
        >>> _, s, info = b.update(g, s, p)  # same gradients: E/E⁽⁰⁾ = 1/√2 for both, w stays equal
        >>> info["weights"]
        tensor([1., 1.])
    """
    if robust_step_size <= 0:
        raise ValueError(f"robust_step_size must be positive; got {robust_step_size}")

    def init(params: TensorDict, num_tasks: int) -> ExcessMTLState:
        kw = like(params)
        return ExcessMTLState(
            torch.zeros((), dtype=torch.int64, device=kw["device"]),
            zeros_like_rows(params["shared"], num_tasks),
            torch.ones(num_tasks, **kw),
            torch.zeros(num_tasks, **kw),
        )

    def update(grads: TaskGradients, state: ExcessMTLState, params: TensorDict):
        grads = prepare(grads, params, log_transform, eps)
        T = grads.losses.shape[0]
        squares = state.squares.apply(lambda s, g: s + g * g, grads.shared)
        parts = [
            (g * g / torch.sqrt(s + 1e-7)).reshape(T, -1).sum(1)
            for g, s in zip(leaves(grads.shared), leaves(squares), strict=True)
        ]
        excess = sum(parts) if parts else torch.zeros_like(grads.losses)
        first = state.count == 0
        initial = torch.where(first, excess.to(state.initial.dtype), state.initial)
        ratio = excess / initial.to(excess.dtype).clamp_min(torch.finfo(excess.dtype).tiny)
        # log w ← log_softmax(log w + η E/E⁽⁰⁾) + log T, capped so that a huge ratio saturates
        step = (state.log_weights.to(excess.dtype) + robust_step_size * ratio).clamp_max(1e30)
        log_weights = torch.where(first, state.log_weights.to(excess.dtype), torch.log_softmax(step, 0) + math.log(T))
        w = torch.exp(log_weights)
        out = finish(combine(w, grads.shared), w, grads.tasks)
        new = ExcessMTLState(state.count + 1, squares, initial, log_weights.to(state.log_weights.dtype))
        return out, new, {"weights": w, "excess": excess}

    return Balancer(init, update)

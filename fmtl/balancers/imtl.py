"""IMTL: the hybrid of IMTL-L's learned loss scales and IMTL-G's equal-projection aggregate."""

from __future__ import annotations

import torch

from ..base import Balancer
from ..optim import adam
from ._gradient import gramian_balancer
from ._loss import LearnedState
from .imtl_g import imtl_g_weights
from .imtl_l import scale_init, scale_step

__all__ = ["imtl"]


def imtl(lr: float = 1e-3, log_transform: bool = False, eps: float = 1e-8) -> Balancer:
    """IMTL (Liu et al., 2021b; paper Sec. 2.3): IMTL-G applied to the gradients of e^{s_t} ℓ_t − s_t.

    .. math::
        \\hat g_t = e^{s_t} g_t,\\quad \\alpha = \\mathrm{IMTL\\text{-}G}(\\hat G),\\
        \\hat G = \\mathrm{diag}(e^{s}) G\\, \\mathrm{diag}(e^{s}),\\quad
        \\tilde g_\\theta = \\sum_t \\alpha_t e^{s_t} g_t,\\quad
        \\tilde g_{\\psi_t} = e^{s_t} \\nabla_{\\psi_t} \\ell_t

    s is learned as in :func:`fmtl.balancers.imtl_l.imtl_l` (state, own Adam with ``lr``). The
    weights depend on the Gramian and the losses only. ``info["weights"]`` is α_t e^{s_t}.

    Example:
        >>> import torch, fmtl
        >>> from tensordict import TensorDict
        >>> b = fmtl.balancers.get("imtl")
        >>> p = TensorDict({"shared": {"w": torch.zeros(2)}, "tasks": {"a": {}, "b": {}}}, [])
        >>> J = TensorDict({"w": torch.tensor([[1.0, 0.0], [0.0, 2.0]])}, [2])
        >>> g, s, info = b.update(fmtl.TaskGradients(torch.ones(2), J, p["tasks"]), b.init(p, 2), p)
        >>> g["shared", "w"]  # s = 0 at the first step: IMTL-G
        tensor([0.6667, 0.6667])
    """
    optimizer = adam(lr)

    def weighting(G: torch.Tensor, losses: torch.Tensor, state: LearnedState):
        scales, new_state = scale_step(losses, state, optimizer)
        e = scales.to(G.dtype)
        alpha = imtl_g_weights(e[:, None] * G * e[None, :])
        return alpha * e, scales, new_state, {"scales": state.value}

    return gramian_balancer(weighting, scale_init(optimizer), log_transform=log_transform, eps=eps)

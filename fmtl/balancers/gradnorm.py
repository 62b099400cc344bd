"""GradNorm: learned task weights that equalize weighted gradient norms at matching training rates."""

from __future__ import annotations

from typing import NamedTuple

import torch
from tensordict import TensorDict

from ..base import Balancer
from ..optim import adam
from ._gradient import gramian_balancer
from ._loss import LearnedState, learned_init, learned_step, like

__all__ = ["GradNormState", "gradnorm"]


class GradNormState(NamedTuple):
    """Step count, the weight logits ξ with their Adam state, and the initial losses ℓ(0)."""

    count: torch.Tensor
    logits: LearnedState
    initial: torch.Tensor


def gradnorm(
    alpha: float = 1.5, lr: float = 1e-3, log_transform: bool = False, eps: float = 1e-8, weight_heads: bool = False
) -> Balancer:
    """GradNorm (Chen et al., 2018b): weights w = T softmax(ξ), ξ trained on the GradNorm loss.

    .. math::
        G_t = w_t \\|g_t\\|,\\quad r_t = \\frac{\\ell_t/\\ell_t(0)}{\\frac1T\\sum_s \\ell_s/\\ell_s(0)},
        \\quad L_{grad} = \\sum_t \\big|G_t - \\bar G\\, r_t^{\\alpha}\\big|

    with the target Ḡ r^α held constant. ∂L_grad/∂ξ = z ⊙ (v − zᵀv), v_t = T‖g_t‖
    sign(G_t − Ḡ r_t^α), z = softmax(ξ); ξ takes one Adam step (``lr``) per call after the
    weights are read. Norms come from the Gramian's diagonal. As LibMTL, w = T softmax(ξ);
    ℓ(0) are the first step's losses (the original paper; LibMTL uses the first epoch's mean
    after an EW epoch). Heads: by default ψ_t gets ∇ψ_t ℓ_t unweighted, as LibMTL (every loss is
    back-propagated once, then only the shared gradients are replaced by Jᵀw), whose
    implementation produced the paper's GradNorm numbers; ``weight_heads=True`` scales them by
    w_t, as the original's weighted loss Σ_t w_t ℓ_t and the paper's Sec. 2.2.

    Example:
        >>> import torch, fmtl
        >>> from tensordict import TensorDict
        >>> b = fmtl.balancers.get("gradnorm", lr=0.1)
        >>> p = TensorDict({"shared": {"w": torch.zeros(2)}, "tasks": {"a": {}, "b": {}}}, [])
        >>> J = TensorDict({"w": torch.tensor([[3.0, 0.0], [0.0, 1.0]])}, [2])
        >>> g, s, info = b.update(fmtl.TaskGradients(torch.ones(2), J, p["tasks"]), b.init(p, 2), p)
        >>> info["weights"], s.logits.value  # w = 1 first; the larger-norm task's logit goes down
        (tensor([1., 1.]), tensor([-0.1000,  0.1000]))
    """
    optimizer = adam(lr)

    def init(params: TensorDict, num_tasks: int) -> GradNormState:
        kw = like(params)
        return GradNormState(
            torch.zeros((), dtype=torch.int64, device=kw["device"]),
            learned_init(torch.zeros(num_tasks, **kw), optimizer),
            torch.ones(num_tasks, **kw),
        )

    def weighting(G: torch.Tensor, losses: torch.Tensor, state: GradNormState):
        T = losses.shape[0]
        initial = torch.where(state.count == 0, losses.to(state.initial.dtype), state.initial)
        z = torch.softmax(state.logits.value, dim=0).to(G.dtype)
        w = T * z
        norms = torch.diagonal(G).clamp_min(0).sqrt()
        weighted = w * norms
        rate = losses.to(G.dtype) / initial.to(G.dtype)
        target = weighted.mean() * (rate / rate.mean()) ** alpha
        v = T * norms * torch.sign(weighted - target)
        logits = learned_step(state.logits, z * (v - (z * v).sum()), optimizer)
        heads = w if weight_heads else None
        return w, heads, GradNormState(state.count + 1, logits, initial), {"logits": state.logits.value}

    return gramian_balancer(weighting, init, log_transform=log_transform, eps=eps)

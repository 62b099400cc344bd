"""GradDrop: keep, per shared coordinate, only the gradients of one randomly chosen sign."""

from __future__ import annotations

import itertools

import torch
from tensordict import TensorDict

from ..base import Balancer, TaskGradients
from ..tree import leaves
from ._gradient import finish, prepare
from ._random import RandomState, random_init, uniform

__all__ = ["graddrop"]


def _drop(g: torch.Tensor, seed: torch.Tensor, count: torch.Tensor, stream: int, leak: float):
    flat = g.reshape(g.shape[0], -1)
    purity = 0.5 * (1 + flat.sum(0) / (flat.abs().sum(0) + 1e-7))
    u = uniform(seed, count, flat.shape[1], stream, flat.dtype).to(flat.device)
    keep = ((purity > u) & (flat > 0)) | ((purity < u) & (flat < 0))
    mask = leak + (1 - leak) * keep.to(flat.dtype)
    return (flat * mask).sum(0).reshape(g.shape[1:]), mask.mean(1)


def graddrop(leak: float = 0.0, seed: int = 0, log_transform: bool = False, eps: float = 1e-8) -> Balancer:
    """GradDrop (Chen et al., 2020) on the shared parameter gradients (needs J, elementwise).

    .. math::
        P = \\tfrac12\\Big(1 + \\frac{\\sum_t g_t}{\\sum_t |g_t|}\\Big),\\quad
        M_t = \\mathbb 1[P > U]\\,\\mathbb 1[g_t > 0] + \\mathbb 1[P < U]\\,\\mathbb 1[g_t < 0],\\quad
        \\tilde g_\\theta = \\sum_t (\\ell + (1-\\ell) M_t) \\odot g_t

    with U uniform per coordinate (drawn from ``(seed, step count, leaf)``, so permuting the
    tasks permutes nothing else) and leak ℓ. The original and LibMTL apply the mask to the
    gradients of a shared *activation* (sign-corrected by the input); fmtl applies it to the
    gradients of the shared parameters θ directly. Only θ is touched; ψ_t gets ∇ψ_t ℓ_t.
    ``info["weights"]`` is the kept fraction of each task's coordinates.

    Example:
        >>> import torch, fmtl
        >>> from tensordict import TensorDict
        >>> b = fmtl.balancers.get("graddrop")
        >>> p = TensorDict({"shared": {"w": torch.zeros(2)}, "tasks": {"a": {}, "b": {}}}, [])
        >>> J = TensorDict({"w": torch.tensor([[1.0, 2.0], [3.0, -2.0]])}, [2])
        >>> g, _, info = b.update(fmtl.TaskGradients(torch.ones(2), J, p["tasks"]), b.init(p, 2), p)
        >>> g["shared", "w"][0]  # no sign conflict on the first coordinate: both kept
        tensor(4.)
    """

    def update(grads: TaskGradients, state: RandomState, params: TensorDict):
        grads = prepare(grads, params, log_transform, eps)
        streams, kept = itertools.count(), []

        def drop(g):
            out, fraction = _drop(g, state.seed, state.count, next(streams), leak)
            kept.append(fraction * g[0].numel())
            return out

        shared = grads.shared.apply(drop, batch_size=[])
        size = sum(v[0].numel() for v in leaves(grads.shared))
        w = sum(kept) / max(size, 1) if kept else torch.ones_like(grads.losses)
        return finish(shared, None, grads.tasks), RandomState(state.seed, state.count + 1), {"weights": w}

    return Balancer(random_init(seed), update)

"""LTB, Learning To Branch (Guo et al., ICML 2020): T encoder columns whose stages pick parents by Gumbel-softmax."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from tensordict import TensorDict

from fmtl.balancers._random import uniform

from ._core import Model, Norm, SeedLike, build, generator, td
from .blocks import EncoderFactory, HeadFactory, apply_heads, encoder_tree, heads_for, run_stage

__all__ = ["ltb", "ltb_temperature"]

Tensor = torch.Tensor


def ltb_temperature(epoch: int, epochs: int) -> float | None:
    """LibMTL's schedule: ``None`` (warm-up: every parent weight 1) while epoch < epochs/100, then
    τ = (epochs/20)/√(epoch+1).

    Example:
        >>> ltb_temperature(0, 200), round(ltb_temperature(3, 200), 3)
        (None, 5.0)
    """
    if epoch < epochs / 100:
        return None
    return epochs / 20 / math.sqrt(epoch + 1)


def ltb(
    tasks: Mapping[str, int],
    *,
    encoder: EncoderFactory,
    head: HeadFactory | Mapping[str, HeadFactory],
    normalize: Sequence[str] = (),
    seed: SeedLike = 0,
    dtype: torch.dtype = torch.float32,
) -> Model:
    """LTB: column t's stage i reads a Gumbel-softmax-chosen mix of the columns' stage i−1 outputs.

    .. math:: r^t_0 = E^t_0(x), \\qquad r^t_i = E^t_i\\Big(\\sum_{s=1}^T A_{i,t,s}\\, r^s_{i−1}\\Big),
              \\qquad A_{i,t,·} = \\mathrm{gumbel\\_softmax}(α_{i,t,·}, τ, \\text{hard})

    Every column and the branching logits α (init 1) reach every loss, so all are θ
    (``params["shared"]`` = ``{"columns": {t: tree}, "alpha": [L, T, T]}``); head ψ_t reads
    column t. It fits the ``(params, batch)`` contract, but its schedule does not live in the
    parameters: ``apply(params, x, tau=τ, seed=s)`` takes the temperature (``None``: LibMTL's
    warm-up, A = 1; :func:`ltb_temperature`) and a 0-d int seed for the Gumbel noise (one draw
    per forward, counter-based, so every task-gradient strategy sees the same architecture;
    a loss builder passes both from the batch). Without ``seed`` A = hard one-hot of
    softmax(α/τ) (no noise); in eval mode (``train=False``) with a τ, A = one-hot argmax α.
    The straight-through hard sample is ``y_hard − sg(y_soft) + y_soft`` as ``F.gumbel_softmax``.

    Example:
        >>> import torch
        >>> from fmtl.models import ltb
        >>> from fmtl.models.blocks import linear_head, mlp_encoder
        >>> m = ltb({"a": 1, "b": 2}, encoder=mlp_encoder(5, (4, 3)), head=linear_head)
        >>> x = torch.randn(3, 5)
        >>> m.apply(m.params, x, tau=1.0, seed=torch.tensor(0))["b"].shape, m.params["shared", "alpha"].shape
        (torch.Size([3, 2]), torch.Size([2, 2, 2]))
    """
    g = generator(seed)
    names = list(tasks)
    n_t = len(names)
    encs = {t: encoder(g, dtype) for t in names}
    cols_p, cols_b = {}, {}
    for t in names:
        cols_p[t], cols_b[t] = encoder_tree([b for s in encs[t].stages for b in s])
    n_stages = len(encs[names[0]].stages)
    heads = heads_for(g, tasks, head, encs[names[0]].channels, dtype)
    alpha = torch.ones(n_stages, n_t, n_t, dtype=dtype)  # row 0 unused (stage 0 reads x), as LibMTL
    params = td({"shared": td({"columns": td(cols_p), "alpha": alpha}),
                 "tasks": td({t: h.params for t, h in heads.items()})})  # fmt: skip
    buffers = td({"shared": td({"columns": td(cols_b)}), "tasks": td({t: h.buffers for t, h in heads.items()})})

    def branching(a: Tensor, norm: Norm, tau: float | None, seed: Tensor | None) -> Tensor:
        if tau is None:
            return torch.ones_like(a)
        if norm.mode == "eval":
            return torch.nn.functional.one_hot(a.argmax(-1), n_t).to(a.dtype)
        logits = a
        if seed is not None:
            u = uniform(seed, torch.tensor(0), a.numel(), dtype=a.dtype).view(a.shape)
            logits = a - torch.log(-torch.log(u))
        soft = torch.softmax(logits / tau, dim=-1)
        hard = torch.nn.functional.one_hot(soft.argmax(-1), n_t).to(a.dtype)
        return hard - soft.detach() + soft

    def forward(params: TensorDict, x: Tensor, norm: Norm, tau: float | None = None,
                seed: Tensor | None = None) -> dict[str, Tensor]:  # fmt: skip
        s = params["shared"]
        A = branching(s["alpha"], norm, tau, seed)
        reps = [run_stage(encs[t].stages[0], s["columns", t], x, norm, ("shared", "columns", t)) for t in names]
        for i in range(1, n_stages):
            stacked = torch.stack(reps)
            reps = [run_stage(encs[t].stages[i], s["columns", t], torch.einsum("s,sb...->b...", A[i, j], stacked),
                              norm, ("shared", "columns", t)) for j, t in enumerate(names)]  # fmt: skip
        return apply_heads(heads, params, dict(zip(names, reps, strict=True)), norm, tuple(x.shape[-2:]),
                           normalize=normalize)  # fmt: skip

    return build(forward, params, buffers, tuple(("shared", "columns", t) for t in names))

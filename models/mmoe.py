"""MMoE (Ma et al., KDD 2018): shared experts θ mixed by one softmax gate per task ψ_t."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from tensordict import TensorDict

from ._core import Model, Norm, SeedLike, build, generator, td
from ._experts import experts_init, gate, gate_init, mix, run_experts
from .blocks import EncoderFactory, HeadFactory, apply_heads, heads_for

__all__ = ["mmoe"]


def mmoe(
    tasks: Mapping[str, int],
    *,
    encoder: EncoderFactory,
    head: HeadFactory | Mapping[str, HeadFactory],
    input_shape: Sequence[int],
    num_experts: int = 4,
    normalize: Sequence[str] = (),
    seed: SeedLike = 0,
    dtype: torch.dtype = torch.float32,
) -> Model:
    """Multi-gate mixture of experts: z_t = Σ_e g_{t,e}(x) E_e(x), ŷ_t = h_{ψ_t}(z_t).

    .. math:: g_t(x) = \\mathrm{softmax}(W_t\\, \\mathrm{vec}(x) + b_t) ∈ Δ^{E}, \\qquad
              z_t = \\sum_{e=1}^{E} g_{t,e}(x)\\, E_e(x)

    The E experts are copies of ``encoder`` (θ: ``params["shared"]["experts"][e]``); gate t
    reads the flattened input, as in the paper and LibMTL (``img_size``), and only reaches ℓ_t,
    so it is task-specific: ``params["tasks"][t]`` = ``{"gate": …, "head": …}``.

    Args:
        input_shape: shape of one input sample (the gates' input size).
        num_experts: E.

    Example:
        >>> import torch
        >>> from fmtl.models import mmoe
        >>> from fmtl.models.blocks import linear_head, mlp_encoder
        >>> m = mmoe({"a": 1, "b": 3}, encoder=mlp_encoder(5, (4,)), head=linear_head, input_shape=(5,),
        ...          num_experts=3)
        >>> m.apply(m.params, torch.randn(2, 5))["b"].shape, m.params["tasks", "a", "gate", "weight"].shape
        (torch.Size([2, 3]), torch.Size([3, 5]))
    """
    g = generator(seed)
    encs, experts, experts_b = experts_init(g, encoder, num_experts, dtype)
    heads = heads_for(g, tasks, head, encs[0].channels, dtype)
    n_in = math.prod(input_shape)
    tp = {t: td({"gate": gate_init(g, n_in, num_experts, dtype), "head": heads[t].params}) for t in tasks}
    tb = {t: td({"head": heads[t].buffers}) for t in tasks}
    params = td({"shared": td({"experts": experts}), "tasks": td(tp)})
    buffers = td({"shared": td({"experts": experts_b}), "tasks": td(tb)})
    names = list(tasks)

    def forward(params: TensorDict, x: torch.Tensor, norm: Norm) -> dict[str, torch.Tensor]:
        reps = run_experts(encs, params["shared", "experts"], x, norm, ("shared", "experts"))
        feats = {t: mix(reps, gate(params["tasks", t, "gate"], x)) for t in names}
        return apply_heads(heads, params, feats, norm, tuple(x.shape[-2:]), sub=("head",), normalize=normalize)

    return build(forward, params, buffers, tuple(("shared", "experts", str(e)) for e in range(num_experts)))

"""CGC (Tang et al., RecSys 2020): shared experts θ plus each task's own experts and gate ψ_t."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from tensordict import TensorDict

from ._core import Model, Norm, SeedLike, build, generator, td
from ._experts import gate, gate_init, mix, run_experts, shared_and_own_experts
from .blocks import EncoderFactory, HeadFactory, apply_heads, heads_for

__all__ = ["cgc"]


def cgc(
    tasks: Mapping[str, int],
    *,
    encoder: EncoderFactory,
    head: HeadFactory | Mapping[str, HeadFactory],
    input_shape: Sequence[int],
    num_shared: int = 2,
    num_specific: int | Mapping[str, int] = 1,
    normalize: Sequence[str] = (),
    seed: SeedLike = 0,
    dtype: torch.dtype = torch.float32,
) -> Model:
    """Customized gate control: task t mixes the shared experts and its own.

    .. math:: z_t = \\sum_{e ∈ S ∪ S_t} g_{t,e}(x)\\, E_e(x), \\qquad
              g_t(x) = \\mathrm{softmax}(W_t\\, \\mathrm{vec}(x) + b_t)

    The shared experts S are θ (``params["shared"]["experts"]``); task t's experts S_t, gate
    and head reach only ℓ_t and are ψ_t (``params["tasks"][t]`` = ``{"experts", "gate",
    "head"}``). LibMTL's CGC (``num_experts = [shared, per task…]``) builds its task experts
    as ``ModuleList([encoder] * n)``; here each is its own, freshly initialized encoder.

    Example:
        >>> import torch
        >>> from fmtl.models import cgc
        >>> from fmtl.models.blocks import linear_head, mlp_encoder
        >>> m = cgc({"a": 1, "b": 2}, encoder=mlp_encoder(5, (4,)), head=linear_head, input_shape=(5,))
        >>> m.apply(m.params, torch.randn(3, 5))["b"].shape, sorted(m.params["tasks", "a"].keys())
        (torch.Size([3, 2]), ['experts', 'gate', 'head'])
    """
    g = generator(seed)
    ex = shared_and_own_experts(g, encoder, list(tasks), num_shared, num_specific, dtype)
    encs, own = ex.shared, ex.own
    heads = heads_for(g, tasks, head, encs[0].channels, dtype)
    n_in = math.prod(input_shape)
    tp = {t: td({"experts": own[t][1], "gate": gate_init(g, n_in, num_shared + len(own[t][0]), dtype),
                 "head": heads[t].params}) for t in tasks}  # fmt: skip
    tb = {t: td({"experts": own[t][2], "head": heads[t].buffers}) for t in tasks}
    params = td({"shared": td({"experts": ex.shared_params}), "tasks": td(tp)})
    buffers = td({"shared": td({"experts": ex.shared_buffers}), "tasks": td(tb)})
    names = list(tasks)

    def forward(params: TensorDict, x: torch.Tensor, norm: Norm) -> dict[str, torch.Tensor]:
        reps = run_experts(encs, params["shared", "experts"], x, norm, ("shared", "experts"))
        feats = {}
        for t in names:
            mine = run_experts(own[t][0], params["tasks", t, "experts"], x, norm, ("tasks", t, "experts"))
            feats[t] = mix(reps + mine, gate(params["tasks", t, "gate"], x))
        return apply_heads(heads, params, feats, norm, tuple(x.shape[-2:]), sub=("head",), normalize=normalize)

    return build(forward, params, buffers, ex.encoders)

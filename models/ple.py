"""PLE (Tang et al., RecSys 2020): CGC layers stacked along the encoder's stages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from tensordict import TensorDict

from ._core import Model, Norm, SeedLike, build, generator, td
from ._experts import feature_sizes, gate, gate_init, mix, run_experts_stage, shared_and_own_experts
from .blocks import EncoderFactory, HeadFactory, apply_heads, heads_for

__all__ = ["ple"]


def ple(
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
    """Progressive layered extraction: at every stage i of the experts, task t re-mixes.

    .. math:: r^t_0 = x, \\qquad r^t_i = \\sum_{e ∈ S ∪ S_t} g_{t,i,e}(r^t_{i−1})\\,
              E_{e,i}(r^t_{i−1}), \\qquad \\hat y_t = h_{ψ_t}(r^t_L)

    with E_{e,i} stage i of expert e and g_{t,i} a softmax gate on the flattened r^t_{i−1}.
    This is LibMTL's PLE: the shared experts run on each task's own representation and there
    is no shared gate. The original PLE also routes a shared representation through a shared
    gate over *all* experts; that would make every task's experts reach every loss (θ, not
    ψ_t), so it is not done here: the shared experts are θ, each task's experts and gates ψ_t.

    Args:
        input_shape: one sample's shape (fixes every gate's input size).

    Example:
        >>> import torch
        >>> from fmtl.models import ple
        >>> from fmtl.models.blocks import linear_head, mlp_encoder
        >>> m = ple({"a": 1, "b": 2}, encoder=mlp_encoder(5, (4, 3)), head=linear_head, input_shape=(5,))
        >>> m.apply(m.params, torch.randn(3, 5))["b"].shape, sorted(m.params["tasks", "a", "gates"].keys())
        (torch.Size([3, 2]), ['0', '1'])
    """
    g = generator(seed)
    ex = shared_and_own_experts(g, encoder, list(tasks), num_shared, num_specific, dtype)
    encs, own = ex.shared, ex.own
    sizes = feature_sizes(encs[0], ex.shared_params["0"], input_shape, dtype)
    levels = len(encs[0].stages)
    heads = heads_for(g, tasks, head, encs[0].channels, dtype)
    tp, tb = {}, {}
    for t in tasks:
        gates = td({str(i): gate_init(g, sizes[i], num_shared + len(own[t][0]), dtype) for i in range(levels)})
        tp[t] = td({"experts": own[t][1], "gates": gates, "head": heads[t].params})
        tb[t] = td({"experts": own[t][2], "head": heads[t].buffers})
    params = td({"shared": td({"experts": ex.shared_params}), "tasks": td(tp)})
    buffers = td({"shared": td({"experts": ex.shared_buffers}), "tasks": td(tb)})
    names = list(tasks)

    def forward(params: TensorDict, x: torch.Tensor, norm: Norm) -> dict[str, torch.Tensor]:
        reps = dict.fromkeys(names, x)
        for i in range(levels):
            for t in names:
                r = reps[t]
                outs = run_experts_stage(encs, i, params["shared", "experts"], r, norm, ("shared", "experts"))
                outs += run_experts_stage(own[t][0], i, params["tasks", t, "experts"], r, norm,
                                          ("tasks", t, "experts"))  # fmt: skip
                reps[t] = mix(outs, gate(params["tasks", t, "gates", str(i)], r))
        return apply_heads(heads, params, reps, norm, tuple(x.shape[-2:]), sub=("head",), normalize=normalize)

    return build(forward, params, buffers, ex.encoders)

"""DSelect-k (Hazimeh et al., NeurIPS 2021): a differentiable k-sparse gate per task over shared experts."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from tensordict import TensorDict

from ._core import Model, Norm, SeedLike, build, generator, linear, td
from ._experts import experts_init, mix, run_experts
from .blocks import EncoderFactory, HeadFactory, apply_heads, heads_for

__all__ = ["dselect_k", "smooth_step"]

Tensor = torch.Tensor


def smooth_step(t: Tensor, gamma: float = 1.0) -> Tensor:
    """The cubic smooth step S(t): 0 below −γ/2, 1 above γ/2, −2t³/γ³ + 3t/(2γ) + 1/2 between.

    Example:
        >>> import torch
        >>> smooth_step(torch.tensor([-1.0, 0.0, 0.25, 1.0])).tolist()
        [0.0, 0.5, 0.84375, 1.0]
    """
    cubic = -2.0 / gamma**3 * t**3 + 3.0 / (2.0 * gamma) * t + 0.5
    return torch.where(t <= -gamma / 2, torch.zeros_like(t), torch.where(t >= gamma / 2, torch.ones_like(t), cubic))


def dselect_k(
    tasks: Mapping[str, int],
    *,
    encoder: EncoderFactory,
    head: HeadFactory | Mapping[str, HeadFactory],
    input_shape: Sequence[int],
    num_experts: int = 4,
    k: int = 2,
    gamma: float = 1.0,
    normalize: Sequence[str] = (),
    seed: SeedLike = 0,
    dtype: torch.dtype = torch.float32,
) -> Model:
    """DSelect-k: task t's gate picks (softly) k of the E shared experts through binary codes.

    With m = ⌈log₂ E⌉ and the binary code c_e ∈ {0,1}^m of expert e, selector i of task t
    (i = 1 … k) has logits z_{t,i}(x) ∈ R^m and puts weight

    .. math:: r_{t,i,e}(x) = \\prod_{j=1}^{m} S(z_{t,i,j})^{c_{e,j}} (1 − S(z_{t,i,j}))^{1 − c_{e,j}},
              \\qquad g_t(x) = \\sum_{i=1}^{k} \\mathrm{softmax}(w_t(x))_i\\, r_{t,i}(x)

    on expert e, and z_t = Σ_e g_{t,e}(x) E_e(x). The experts are θ; z_t, w_t (linear in the
    flattened input, initialized U(±γ/100) and U(±0.05) as LibMTL) and the head are ψ_t.

    Deviation: LibMTL adds an entropy regularizer (×10⁻⁶, plus 1/Σr when E is not a power of
    two) by calling ``backward`` inside ``forward`` — on the last task's selector only. That
    term is not one of the T task losses of ``loss_fn(params, batch) -> Tensor[T]`` and is
    left out; with E a power of two the selectors sum to one without it.

    Example:
        >>> import torch
        >>> from fmtl.models import dselect_k
        >>> from fmtl.models.blocks import linear_head, mlp_encoder
        >>> m = dselect_k({"a": 1, "b": 2}, encoder=mlp_encoder(5, (4,)), head=linear_head, input_shape=(5,))
        >>> m.apply(m.params, torch.randn(3, 5))["b"].shape, m.params["tasks", "a", "z", "weight"].shape
        (torch.Size([3, 2]), torch.Size([4, 5]))
    """
    g = generator(seed)
    m = max(math.ceil(math.log2(num_experts)), 1)
    codes = torch.tensor([[(e >> (m - 1 - j)) & 1 for j in range(m)] for e in range(num_experts)], dtype=torch.bool)
    encs, experts, experts_b = experts_init(g, encoder, num_experts, dtype)
    heads = heads_for(g, tasks, head, encs[0].channels, dtype)
    n_in = math.prod(input_shape)

    def uniform(shape: tuple[int, ...], bound: float) -> Tensor:
        return (torch.rand(shape, generator=g, dtype=dtype) * 2 - 1) * bound

    tp = {}
    for t in tasks:
        z = td({"weight": uniform((k * m, n_in), gamma / 100), "bias": uniform((k * m,), gamma / 100)})
        w = td({"weight": uniform((k, n_in), 0.05), "bias": uniform((k,), 0.05)})
        tp[t] = td({"z": z, "w": w, "head": heads[t].params})
    params = td({"shared": td({"experts": experts}), "tasks": td(tp)})
    head_b = td({t: td({"head": heads[t].buffers}) for t in tasks})
    buffers = td({"shared": td({"experts": experts_b}), "tasks": head_b})
    names = list(tasks)

    def expert_weights(q: TensorDict, x: Tensor) -> Tensor:
        flat = x.flatten(1)
        s = smooth_step(linear(q["z"], flat).view(-1, k, 1, m), gamma)  # [B, k, 1, m]
        r = torch.where(codes.to(s.device), s, 1 - s).prod(dim=3)  # [B, k, E]
        return torch.einsum("bi,bie->be", torch.softmax(linear(q["w"], flat), dim=1), r)

    def forward(params: TensorDict, x: Tensor, norm: Norm) -> dict[str, Tensor]:
        reps = run_experts(encs, params["shared", "experts"], x, norm, ("shared", "experts"))
        feats = {t: mix(reps, expert_weights(params["tasks", t], x)) for t in names}
        return apply_heads(heads, params, feats, norm, tuple(x.shape[-2:]), sub=("head",), normalize=normalize)

    return build(forward, params, buffers, tuple(("shared", "experts", str(e)) for e in range(num_experts)))

"""Pieces shared by the mixture-of-experts architectures (MMoE, CGC, PLE, DSelect-k, LTB)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from tensordict import TensorDict

from ._core import Norm, Path, linear, linear_init, td
from .blocks import Encoder, EncoderFactory, encoder_tree, run, run_stage

Tensor = torch.Tensor


def experts_init(
    g: torch.Generator, encoder: EncoderFactory, n: int, dtype: torch.dtype
) -> tuple[list[Encoder], TensorDict, TensorDict]:
    """``n`` independently initialized encoders and their trees ``{"0": tree, "1": …}``."""
    encs = [encoder(g, dtype) for _ in range(n)]
    trees = [encoder_tree([b for s in e.stages for b in s]) for e in encs]
    return encs, td({str(e): p for e, (p, _) in enumerate(trees)}), td({str(e): b for e, (_, b) in enumerate(trees)})


def run_experts(encs: Sequence[Encoder], tree: TensorDict, x: Tensor, norm: Norm, where: Path) -> list[Tensor]:
    """Each expert's output on ``x`` (expert e's parameters at ``where + (str(e),)``)."""
    return [run(enc, tree[str(e)], x, norm, where + (str(e),)) for e, enc in enumerate(encs)]


def run_experts_stage(
    encs: Sequence[Encoder], j: int, tree: TensorDict, x: Tensor, norm: Norm, where: Path
) -> list[Tensor]:
    """Each expert's stage ``j`` on ``x``."""
    return [run_stage(enc.stages[j], tree[str(e)], x, norm, where + (str(e),)) for e, enc in enumerate(encs)]


def gate_init(g: torch.Generator, in_features: int, n: int, dtype: torch.dtype) -> TensorDict:
    """A softmax gate's linear layer (``nn.Linear`` init)."""
    return linear_init(g, in_features, n, dtype)


def gate(p: TensorDict, x: Tensor) -> Tensor:
    """Gate weights softmax(W flatten(x) + b) ∈ Δ^{E}, one row per sample: [B, E]."""
    return torch.softmax(linear(p, x.flatten(1)), dim=-1)


def mix(reps: Sequence[Tensor], weights: Tensor) -> Tensor:
    """Σ_e w_{b,e} r_e[b]: the gated combination of the experts' outputs (reps [B, …], weights [B, E])."""
    return torch.einsum("eb...,be->b...", torch.stack(list(reps)), weights)


def feature_sizes(encoder: Encoder, tree: TensorDict, input_shape: Sequence[int], dtype: torch.dtype) -> list[int]:
    """Features per sample entering each stage (and leaving the last), from one no-grad forward."""
    with torch.no_grad():
        h = torch.zeros(2, *input_shape, dtype=dtype)
        norm = Norm(td({"e": tree}), "train")
        sizes = [h[0].numel()]
        for stage in encoder.stages:
            h = run_stage(stage, tree, h, norm, ("e",))
            sizes.append(h[0].numel())
    return sizes


class SharedAndOwn(NamedTuple):
    """CGC/PLE experts: the shared ones (θ) and each task's own (ψ_t), with their trees."""

    shared: list[Encoder]
    shared_params: TensorDict
    shared_buffers: TensorDict
    own: dict[str, tuple[list[Encoder], TensorDict, TensorDict]]
    encoders: tuple[Path, ...]


def shared_and_own_experts(
    g: torch.Generator, encoder: EncoderFactory, tasks: Sequence[str], num_shared: int,
    num_specific: int | Mapping[str, int], dtype: torch.dtype,
) -> SharedAndOwn:
    """``num_shared`` shared experts and ``num_specific`` (per task, or ``{task: n}``) of each task's own."""
    n_own = dict.fromkeys(tasks, num_specific) if isinstance(num_specific, int) else dict(num_specific)
    encs, shared, shared_b = experts_init(g, encoder, num_shared, dtype)
    own = {t: experts_init(g, encoder, n_own[t], dtype) for t in tasks}
    paths = tuple(("shared", "experts", str(e)) for e in range(num_shared))
    paths += tuple(("tasks", t, "experts", str(e)) for t in tasks for e in range(n_own[t]))
    return SharedAndOwn(encs, shared, shared_b, own, paths)

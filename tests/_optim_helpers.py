"""fmtl's functional optimizers side by side with torch.optim on the same random gradients."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDict

import fmtl


def trajectories(
    ours: fmtl.optim.Optimizer,
    make_torch: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    *,
    steps: int = 20,
    seed: int = 0,
    scale: float = 1.0,
    dtypes: tuple[torch.dtype, torch.dtype] = (torch.float64, torch.float64),
    make_sched: Callable | None = None,
    before_step: Callable[[list[torch.Tensor]], None] | None = None,
) -> tuple[TensorDict, list[torch.Tensor]]:
    """Params after ``steps`` updates of fmtl's optimizer, and torch's tensors after as many ``step()``s.

    The tree has a nested leaf (``a``, ``b.c``) of the given dtypes; torch steps its scheduler
    (``make_sched(opt)``) after every update and calls ``before_step(tensors)`` (e.g. clipping)
    before it.
    """
    gen = torch.Generator().manual_seed(seed)
    shapes = {"a": (3, 4), ("b", "c"): (5,)}

    def draw(s):
        return {k: torch.randn(shape, generator=gen, dtype=torch.float64).to(d) * s
                for (k, shape), d in zip(shapes.items(), dtypes, strict=True)}  # fmt: skip

    def tree(d):
        return TensorDict({"a": d["a"], "b": {"c": d[("b", "c")]}}, [])

    init = draw(1.0)
    grads = [tree(draw(scale)) for _ in range(steps)]
    params = tree(init).clone()
    state = ours.init(params)
    for g in grads:
        updates, state = ours.update(g, state, params)
        params = params + updates
    tensors = [init["a"].clone().requires_grad_(), init[("b", "c")].clone().requires_grad_()]
    opt = make_torch(tensors)
    sched = make_sched(opt) if make_sched is not None else None
    for g in grads:
        tensors[0].grad, tensors[1].grad = g["a"].clone(), g["b", "c"].clone()
        if before_step is not None:
            before_step(tensors)
        opt.step()
        if sched is not None:
            sched.step()
    return params, [t.detach() for t in tensors]


def assert_same(params: TensorDict, tensors: list[torch.Tensor]) -> None:
    """Equal to 1e-12 (float64 leaves) or 1e-6 (lower precision), and of the same dtype."""
    for ours, theirs in zip((params["a"], params["b", "c"]), tensors, strict=True):
        assert ours.dtype == theirs.dtype
        tol = 1e-12 if ours.dtype == torch.float64 else 1e-6
        torch.testing.assert_close(ours, theirs, rtol=tol, atol=tol)

"""Deterministic test inputs for balancers: multi-leaf task Jacobians, losses, cases and a toy problem.

Everything here is a pure function of its arguments (a seed included), so a hypothesis strategy
only has to draw the arguments (:mod:`fmtl.testing.strategies`) and a failing example is
reproduced exactly from its :meth:`Case.describe`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from tensordict import TensorDict

from ..base import TaskGradients

__all__ = [
    "SHAPES",
    "HEAD",
    "STRUCTURES",
    "Case",
    "jacobian",
    "losses",
    "params_for",
    "case",
    "flatten",
    "unflatten",
    "flat_case",
    "toy_problem",
]

# θ's default layout: three leaves of different shapes, one nested (P = 12 + 3 + 8 = 23)
SHAPES: dict[str, Any] = {"encoder": {"weight": (3, 4), "bias": (3,)}, "mix": (2, 2, 2)}
HEAD = (2,)
# "generic": rank-r with the chosen conditioning and norm spread; the others are the hard inputs
STRUCTURES = ("generic", "duplicate", "zero_row", "opposite", "parallel")


def _leaf_shapes(shapes: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], tuple]]:
    out = []
    for key, value in shapes.items():
        if isinstance(value, Mapping):
            out += _leaf_shapes(value, (*prefix, key))
        else:
            out.append(((*prefix, key), tuple(value)))
    return out


def _size(shapes: Mapping[str, Any]) -> int:
    return sum(math.prod(s) for _, s in _leaf_shapes(shapes))


def unflatten(matrix: torch.Tensor, shapes: Mapping[str, Any] = SHAPES) -> TensorDict:
    """A [T, P] matrix as a [T]-stacked TensorDict shaped like ``shapes`` (row-major, in order).

    Example:
        >>> unflatten(torch.arange(6.0).reshape(2, 3), {"a": (2,), "b": (1,)})["b"]
        tensor([[2.],
                [5.]])
    """
    T = matrix.shape[0]
    out, start = {}, 0
    for key, shape in _leaf_shapes(shapes):
        n = math.prod(shape)
        node = out
        for k in key[:-1]:
            node = node.setdefault(k, {})
        node[key[-1]] = matrix[:, start : start + n].reshape(T, *shape)
        start += n
    return TensorDict(out, [T])


def flatten(J: TensorDict) -> torch.Tensor:
    """The [T, P] matrix a [T]-stacked TensorDict stands for (its leaves in order, row-major).

    Example:
        >>> flatten(TensorDict({"a": torch.ones(2, 2), "b": torch.zeros(2, 1)}, [2]))
        tensor([[1., 1., 0.],
                [1., 1., 0.]])
    """
    rows = [v.reshape(v.shape[0], -1) for v in J.values(True, True)]
    return torch.cat(rows, 1) if rows else torch.zeros(J.batch_size[0], 0)


def jacobian(
    num_tasks: int,
    rank: int | None = None,
    condition: float = 1.0,
    norm_spread: float = 1.0,
    structure: str = "generic",
    seed: int = 0,
    shapes: Mapping[str, Any] = SHAPES,
    dtype: torch.dtype = torch.float64,
) -> TensorDict:
    """A task Jacobian (a [T]-stacked TensorDict shaped like ``shapes``) with the asked-for structure.

    ``generic``: J = U diag(σ) Vᵀ of rank ``rank`` (default min(T, P)) with singular values
    log-spaced from 1 to 1/``condition``, then rows rescaled to norms log-spaced over
    [1, ``norm_spread``] (in random order, each times a random factor in [1, 1.5)). The hard
    inputs: ``duplicate`` (the last row repeats the first), ``zero_row`` (the last row is 0),
    ``opposite`` (rank 1, rows of both signs),
    ``parallel`` (rank 1, one sign). ``rank=0`` is the zero matrix.

    Example:
        >>> J = jacobian(3, rank=2, norm_spread=100.0)
        >>> torch.linalg.matrix_rank(flatten(J)).item(), list(J.keys(True, True))
        (2, [('encoder', 'weight'), ('encoder', 'bias'), 'mix'])
    """
    if structure not in STRUCTURES:
        raise ValueError(f"structure must be one of {STRUCTURES}; got {structure!r}")
    P = _size(shapes)
    g = torch.Generator().manual_seed(seed)
    T = num_tasks
    rank = min(T, P) if rank is None else min(rank, T, P)
    if structure in ("opposite", "parallel"):
        v = torch.randn(P, generator=g, dtype=torch.float64)
        c = torch.rand(T, generator=g, dtype=torch.float64) + 0.5
        if structure == "opposite":
            c = c * torch.where(torch.arange(T) % 2 == 0, 1.0, -1.0).to(c.dtype)
        M = c[:, None] * v[None, :]
    elif rank == 0:
        M = torch.zeros(T, P, dtype=torch.float64)
    else:
        U, _ = torch.linalg.qr(torch.randn(T, rank, generator=g, dtype=torch.float64))
        V, _ = torch.linalg.qr(torch.randn(P, rank, generator=g, dtype=torch.float64))
        sigma = torch.logspace(0, -math.log10(condition), rank, dtype=torch.float64) if condition > 1 else torch.ones(
            rank, dtype=torch.float64
        )
        M = (U * sigma) @ V.T
        norms = M.norm(dim=1, keepdim=True)
        # a random factor in [1, 1.5) too: exactly equal norms are ties for sign-based rules (GradNorm)
        target = torch.logspace(0, math.log10(norm_spread), T, dtype=torch.float64)[torch.randperm(T, generator=g)]
        target = target * (1.0 + 0.5 * torch.rand(T, generator=g, dtype=torch.float64))
        M = torch.where(norms > 0, M / norms.clamp_min(1e-300) * target[:, None], M)
        if structure == "duplicate" and T >= 2:
            M[-1] = M[0]
        elif structure == "zero_row":
            M[-1] = 0.0
    return unflatten(M.to(dtype), shapes)


def losses(num_tasks: int, spread: float = 10.0, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Positive losses, log-uniform over [1/√spread, √spread].

    Example:
        >>> l = losses(4, spread=100.0)
        >>> bool((l >= 0.1).all() and (l <= 10).all())
        True
    """
    g = torch.Generator().manual_seed(seed + 7919)
    u = torch.rand(num_tasks, generator=g, dtype=torch.float64)
    return (spread ** (u - 0.5)).to(dtype)


def params_for(
    num_tasks: int,
    shapes: Mapping[str, Any] = SHAPES,
    dtype: torch.dtype = torch.float64,
    names: list[str] | None = None,
) -> TensorDict:
    """Zero parameters ``{"shared": shapes, "tasks": {t: {"w": HEAD}}}`` for ``num_tasks`` tasks.

    Example:
        >>> p = params_for(2)
        >>> list(p["tasks"].keys()), p["shared", "mix"].shape
        (['t0', 't1'], torch.Size([2, 2, 2]))
    """
    names = names or [f"t{i}" for i in range(num_tasks)]
    shared = unflatten(torch.zeros(1, _size(shapes), dtype=dtype), shapes).apply(lambda v: v[0], batch_size=[])
    return TensorDict({"shared": shared, "tasks": {n: {"w": torch.zeros(HEAD, dtype=dtype)} for n in names}}, [])


@dataclass
class Case:
    """A balancer test case: parameters and the task gradients of ``len(grads)`` consecutive steps.

    ``spec`` holds the arguments of :func:`case` that rebuild it (shown by :meth:`describe`).
    """

    params: TensorDict
    grads: tuple[TaskGradients, ...]
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def num_tasks(self) -> int:
        return len(self.grads[0].losses)

    def describe(self) -> str:
        """The arguments that rebuild the case, and its first step's Jacobian as a [T, P] matrix."""
        args = ", ".join(f"{k}={v!r}" for k, v in self.spec.items())
        g = self.grads[0]
        with torch.no_grad():
            return (f"fmtl.testing.case({args})\n  losses = {g.losses.tolist()}\n"
                    f"  J (flattened, step 0) =\n{flatten(g.shared)}")  # fmt: skip


def case(
    num_tasks: int,
    steps: int = 2,
    rank: int | None = None,
    condition: float = 1.0,
    norm_spread: float = 1.0,
    structure: str = "generic",
    loss_spread: float = 10.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    shapes: Mapping[str, Any] = SHAPES,
) -> Case:
    """``steps`` steps of task gradients (new J, losses and head gradients each step) for zero params.

    Example:
        >>> c = case(3, steps=2, rank=1)
        >>> c.num_tasks, len(c.grads), c.grads[0].shared.batch_size
        (3, 2, torch.Size([3]))
    """
    spec = dict(num_tasks=num_tasks, steps=steps, rank=rank, condition=condition, norm_spread=norm_spread,
                structure=structure, loss_spread=loss_spread, seed=seed, dtype=dtype)  # fmt: skip
    if shapes is not SHAPES:
        spec["shapes"] = shapes
    params = params_for(num_tasks, shapes, dtype)
    names = list(params["tasks"].keys())
    grads = []
    for k in range(steps):
        s = seed * 1009 + k
        J = jacobian(num_tasks, rank, condition, norm_spread, structure, s, shapes, dtype)
        g = torch.Generator().manual_seed(s + 104729)
        heads = TensorDict({n: {"w": torch.randn(HEAD, generator=g, dtype=torch.float64).to(dtype)} for n in names}, [])
        grads.append(TaskGradients(losses(num_tasks, loss_spread, s, dtype), J, heads))
    return Case(params, tuple(grads), spec)


def flat_case(c: Case) -> Case:
    """The same case with θ as one flat leaf ``{"flat": [P]}``: every balancer that treats θ as one
    vector (not leaf by leaf) must give the same answer on it.

    Example:
        >>> f = flat_case(case(2))
        >>> list(f.params["shared"].keys()), f.grads[0].shared["flat"].shape
        (['flat'], torch.Size([2, 23]))
    """
    shared = TensorDict({"flat": flatten(c.params["shared"].unsqueeze(0))[0]}, [])
    params = TensorDict({"shared": shared, "tasks": c.params["tasks"]}, [])
    grads = tuple(TaskGradients(g.losses, TensorDict({"flat": flatten(g.shared)}, [g.losses.shape[0]]), g.tasks)
                  for g in c.grads)  # fmt: skip
    return Case(params, grads, {**c.spec, "flat": True})


def toy_problem(
    num_tasks: int = 2, seed: int = 0, dtype: torch.dtype = torch.float64, batch: int = 32
) -> tuple[TensorDict, Callable[[TensorDict, TensorDict], torch.Tensor], TensorDict]:
    """``(params, loss_fn, batch)``: a Linear-Tanh-Linear encoder and one linear head per task.

    Task t regresses a different linear function of the input, scaled by 10^(t/2) (losses of
    different scales that conflict).

    Example:
        >>> params, loss_fn, batch = toy_problem(3)
        >>> loss_fn(params, batch).shape
        torch.Size([3])
    """
    from ..params import functionalize

    g = torch.Generator().manual_seed(seed)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        encoder = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 6))
        heads = {f"t{t}": torch.nn.Linear(6, 1) for t in range(num_tasks)}
    finally:
        torch.random.set_rng_state(torch_state)
    params, apply = functionalize(encoder.to(dtype), {k: h.to(dtype) for k, h in heads.items()})
    x = torch.randn(batch, 3, generator=g, dtype=dtype)
    A = torch.randn(3, num_tasks, generator=g, dtype=dtype)
    y = (x @ A) * torch.tensor([10 ** (t / 2) for t in range(num_tasks)], dtype=dtype) + 1.0
    data = TensorDict({"x": x, "y": y}, [batch])

    def loss_fn(p: TensorDict, b: TensorDict) -> torch.Tensor:
        out = apply(p, b["x"])
        return torch.stack([(out[k].squeeze(-1) - b["y"][:, i]).pow(2).mean() for i, k in enumerate(out)])

    return params, loss_fn, data

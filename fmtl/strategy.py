"""How ``task_gradients(strategy="auto")`` picks a strategy: time the candidates once, then cache.

Every strategy returns the same numbers (they differ only in how the T backward passes are
scheduled), so the choice affects speed and memory only, never results. ``"auto"`` therefore
decides empirically, the first time it meets a problem:

1. **Eager, first call for a key** — the key is the loss function's code, the task count T,
   the shapes and dtypes of every parameter and batch leaf, the device and ``chunk_size``.
   Each candidate (``"jacrev"``, ``"vmap_grad"``, ``"loop"``) runs once as a warm-up;
   candidates more than :data:`PRUNE`× slower than the best warm-up are dropped; the rest run
   :data:`ROUNDS` interleaved rounds and the fastest by median wins. The winner is
   cached for the life of the process (:func:`decisions` lists them, :func:`clear` forgets).
2. **Eager, later calls** — the cached winner.
3. **Under** ``torch.compile`` — nothing is timed (timing is not traceable) and eager timings
   are not reused, because they do not transfer: compiled, the vmapped backward is fused and
   its temporaries planned (QM9 MPNN, T=11, 2 threads: ``jacrev`` is 2.6× the loop eagerly,
   1.0× compiled).
   :func:`rule` decides. Pass ``strategy="loop"`` or a ``chunk_size`` explicitly where the
   vectorized working set is too large (convolutions at large T).

The rule: ``"jacrev"`` (one forward, the T backwards vmapped). Compiled, it beats or matches the
eager loop baseline on the MLP (0.76–0.77× at T = 11 and 40), the 4-layer CNN at T=11 (0.83×)
and the QM9 MPNN (1.0×), not on the CNN at T=40 (1.66×); see ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from tensordict import TensorDict
from torch.utils import _pytree as pytree

__all__ = ["CANDIDATES", "PRUNE", "ROUNDS", "choose_strategy", "rule", "cache_key", "decisions", "clear"]

CANDIDATES = ("jacrev", "vmap_grad", "loop")
PRUNE = 2.0
ROUNDS = 3

_DECISIONS: dict[str, str] = {}


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"{tuple(x.shape)}:{x.dtype}:{x.device.type}"
    return type(x).__name__


def _identity(fn: Callable) -> str:
    """The loss function's code, plus the objects it is bound to or closes over that are callable.

    One code object serves many models (a method of a problem class, a closure made by a factory
    around each model's ``apply``): the code alone would hand one model's decision to another of
    the same shapes. Only callables count, so a closure re-made around the same model each step
    keeps its key.
    """
    owner = getattr(fn, "__self__", None)
    fn = getattr(fn, "__func__", fn)
    code = getattr(fn, "__code__", None)
    if code is None:
        return type(fn).__name__
    captured = [c.cell_contents for c in (getattr(fn, "__closure__", None) or ()) if _filled(c)]
    ids = [id(x) for x in captured if callable(x)] + ([id(owner)] if owner is not None else [])
    return f"{code.co_filename}:{code.co_firstlineno}:{code.co_name}" + "".join(f"@{i:x}" for i in ids)


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 (an empty cell raises)
    except ValueError:
        return False
    return True


def cache_key(loss_fn: Callable, params: TensorDict, batch: Any, *, chunk_size: int | None = None) -> str:
    """The key ``"auto"`` caches its decision under: the loss function (its code and the callables it
    is bound to or closes over), task count, shapes, dtypes, device, chunk.

    Example:
        >>> p = TensorDict({"shared": {"w": torch.zeros(3)}, "tasks": {"a": {"b": torch.zeros(1)}}}, [])
        >>> cache_key(len, p, torch.zeros(2)).split("|")[1]
        'T=1'
        >>> cache_key(len, p, torch.zeros(2)).split("|")[3]
        'batch=(2,):torch.float32:cpu'
    """
    where = _identity(loss_fn)
    num_tasks = len(list(params["tasks"].keys())) if "tasks" in params.keys() else 0
    # lists, not generators: dynamo traces str.join of a list but not of a generator
    leaves = ",".join([f"{'.'.join(k)}={_describe(v)}" for k, v in params.items(True, True)])
    batch_leaves = ",".join([_describe(v) for v in pytree.tree_leaves(batch)])
    return f"{where}|T={num_tasks}|{leaves}|batch={batch_leaves}|chunk={chunk_size}"


def rule(params: TensorDict) -> str:
    """The strategy used under ``torch.compile`` (where nothing is measured): ``"jacrev"``.

    Example:
        >>> rule(TensorDict({"shared": {"w": torch.zeros(2)}, "tasks": {}}, []))
        'jacrev'
    """
    return "jacrev"


def _time(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _measure(run: Callable[[str], Any]) -> str:
    warm = {}
    for s in CANDIDATES:
        try:
            warm[s] = _time(lambda s=s: run(s))
        except torch.OutOfMemoryError:  # a vectorized candidate may not fit where the loop does
            continue
    if not warm:
        raise torch.OutOfMemoryError("task_gradients: no strategy fits in memory; pass chunk_size")
    best = min(warm.values())
    alive = [s for s in warm if warm[s] <= PRUNE * best]
    if len(alive) == 1:
        return alive[0]
    times: dict[str, list[float]] = {s: [] for s in alive}
    for _ in range(ROUNDS):
        for s in alive:
            times[s].append(_time(lambda s=s: run(s)))
    return min(alive, key=lambda s: statistics.median(times[s]))


def choose_strategy(loss_fn: Callable, params: TensorDict, batch: Any, *, chunk_size: int | None = None) -> str:
    """The concrete strategy ``"auto"`` resolves to for this problem (timed once, then cached).

    Args:
        loss_fn, params, batch, chunk_size: as passed to :func:`fmtl.task_gradients`.

    Returns:
        One of :data:`CANDIDATES`.

    Example:
        >>> import torch, fmtl
        >>> params, apply = fmtl.functionalize(torch.nn.Linear(3, 4), {"a": torch.nn.Linear(4, 1)})
        >>> loss_fn = lambda p, b: apply(p, b)["a"].pow(2).mean().reshape(1)
        >>> choose_strategy(loss_fn, params, torch.randn(8, 3)) in CANDIDATES
        True
        >>> cache_key(loss_fn, params, torch.randn(8, 3)) in decisions()
        True
    """
    if torch.compiler.is_compiling():
        return rule(params)
    key = cache_key(loss_fn, params, batch, chunk_size=chunk_size)
    cached = _DECISIONS.get(key)
    if cached is not None:
        return cached
    from .task_gradients import task_gradients

    # Timing runs the forward several times: it must not move the caller's random stream (dropout).
    device = next(iter(params.values(True, True))).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        chosen = _measure(lambda s: task_gradients(loss_fn, params, batch, chunk_size=chunk_size, strategy=s))
    _DECISIONS[key] = chosen
    return chosen


def decisions() -> dict[str, str]:
    """A copy of the cached decisions, ``{cache_key: strategy}``.

    Example:
        >>> isinstance(decisions(), dict)
        True
    """
    return dict(_DECISIONS)


def clear() -> None:
    """Forgets every cached decision (the next ``"auto"`` call measures again).

    Example:
        >>> clear(); decisions()
        {}
    """
    _DECISIONS.clear()

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

**Bounded memory** (``max_memory``, bytes): before anything is timed, each candidate's peak is
measured (:func:`fmtl.memory.peak_bytes`: the allocator's peak on CUDA, the profiler's allocation
events on the CPU). A vectorized candidate gets a chunk: its peak is measured at chunks of 1 and
2 tasks, the largest chunk that fits (all T if they fit) is extrapolated from the two (the peak
grows linearly in the chunk: the forward and the T output rows are fixed, the backward's working
set is one chunk's), checked by one more measurement and shrunk until it fits; nothing far over
the budget is run to be measured. Only the
candidates that fit are timed; when none does, the one with the smallest peak is kept. Under
``torch.compile`` nothing can be measured, so a ``max_memory`` without a ``chunk_size`` uses the
``"loop"`` (its compiled form, one ``vjp`` and T pullbacks, has the smallest working set).

The rule: ``"jacrev"`` (one forward, the T backwards vmapped). Compiled, it beats or matches the
eager loop baseline on the MLP (0.76–0.77× at T = 11 and 40), the 4-layer CNN at T=11 (0.83×)
and the QM9 MPNN (1.0×), not on the CNN at T=40 (1.66×); see ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from tensordict import TensorDict
from torch.utils import _pytree as pytree

from .jacobian import CONCRETE, LossFn, compute
from .memory import peak_bytes
from .params import check_params, task_names

__all__ = [
    "CANDIDATES", "PRUNE", "ROUNDS", "Plan", "choose", "choose_strategy", "rule", "cache_key", "decisions", "clear",
    "out_of_memory",
]  # fmt: skip

CANDIDATES = CONCRETE
PRUNE = 2.0
ROUNDS = 3


class Plan(NamedTuple):
    """A decision of :func:`choose`: the strategy and the chunk (``None``: all T tasks at once)."""

    strategy: str
    chunk_size: int | None


_DECISIONS: dict[str, Plan] = {}


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"{tuple(x.shape)}:{x.dtype}:{x.device.type}"
    return type(x).__name__


def _identity(fn: Callable) -> str:
    """The loss function's code, plus the objects it is bound to or closes over that are callable.

    One code object serves many models (a method of a problem class, a closure made by a factory
    around each model's ``apply``): the code alone would hand one model's decision to another of
    the same shapes. Only callables count, so a closure re-made around the same model each step
    keeps its key. A callable object without code (``fmtl.TwoStageLoss``, a ``functools.partial``)
    is known by the identities of the callables it holds, else by its own id.
    """
    owner = getattr(fn, "__self__", None)
    fn = getattr(fn, "__func__", fn)
    code = getattr(fn, "__code__", None)
    if code is None:
        parts = [getattr(fn, f) for f in getattr(fn, "_fields", ())] + [getattr(fn, "func", None)]
        held = [_identity(x) for x in parts if callable(x)]
        return f"{type(fn).__qualname__}(" + ",".join(held) + ")" if held else f"{type(fn).__qualname__}@{id(fn):x}"
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


def out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure: CUDA's ``OutOfMemoryError``, or the CPU allocator's.

    The CPU allocator raises a plain ``RuntimeError`` ("DefaultCPUAllocator: can't allocate memory"),
    so a vectorized candidate that does not fit in host memory must be recognized by its message.

    Example:
        >>> out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 4 GB"))
        True
        >>> out_of_memory(torch.OutOfMemoryError("CUDA out of memory")), out_of_memory(RuntimeError("shape"))
        (True, False)
    """
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)


def _measure(run: Callable[[Any], Any], candidates: Sequence[Any] = CANDIDATES) -> Any:
    warm = {}
    for s in candidates:
        try:
            warm[s] = _time(lambda s=s: run(s))
        except RuntimeError as e:  # a vectorized candidate may not fit where the loop does
            if not out_of_memory(e):
                raise
            continue
    if not warm:
        raise torch.OutOfMemoryError("task_gradients: no strategy fits in memory; pass chunk_size")
    best = min(warm.values())
    alive = [s for s in warm if warm[s] <= PRUNE * best]
    if len(alive) == 1:
        return alive[0]
    times: dict[Any, list[float]] = {s: [] for s in alive}
    for _ in range(ROUNDS):
        for s in alive:
            times[s].append(_time(lambda s=s: run(s)))
    return min(alive, key=lambda s: statistics.median(times[s]))


def _device(params: TensorDict) -> torch.device:
    return next(iter(params.values(True, True))).device


def _peak(run: Callable[[Plan], Any], plan: Plan, device: torch.device) -> float:
    try:
        return float(peak_bytes(lambda: run(plan), device))
    except RuntimeError as e:
        if not out_of_memory(e):
            raise
        return float("inf")


def _fit_chunk(peak: Callable[[Plan], float], strategy: str, T: int, max_memory: int) -> tuple[Plan, float]:
    """The largest chunk of ``strategy`` whose ``peak(plan)`` fits (or chunk 1, the smallest, if none does).

    Chunks 1 and 2 are measured first and the rest extrapolated, so that no candidate far over the
    budget (the whole T at once, say) is ever run just to be measured. All T at once is tried when
    the extrapolation puts it within twice the budget: it skips the chunks' copies into the rows,
    so it can fit where large chunks do not (the MLP at T = 40: 104 MiB unchunked, 148 MiB in
    chunks of 27).
    """
    one = peak(Plan(strategy, 1 if T > 1 else None))
    if one > max_memory or T == 1:
        return Plan(strategy, 1 if T > 1 else None), one
    two = peak(Plan(strategy, 2 if T > 2 else None))
    if two > max_memory:
        return Plan(strategy, 1), one
    if T == 2:
        return Plan(strategy, None), two
    per_task = max(two - one, 1.0)
    if one + per_task * (T - 1) <= 2 * max_memory:
        full = peak(Plan(strategy, None))
        if full <= max_memory:
            return Plan(strategy, None), full
    chunk = int(min(T - 1, (max_memory - (one - per_task)) // per_task))
    while chunk > 2:
        plan = Plan(strategy, None if chunk >= T else chunk)
        measured = peak(plan)
        if measured <= max_memory:
            return plan, measured
        chunk = min(chunk - 1, chunk * 3 // 4 + 1)
    return Plan(strategy, 2), two


def _within(peak: Callable[[Plan], float], options: list[Plan], T: int, max_memory: int) -> list[Plan]:
    """The options that fit in ``max_memory`` (vectorized ones chunked to fit), or the smallest one."""
    measured = []
    for plan in options:
        if plan.strategy == "loop" or plan.chunk_size is not None:
            measured.append((plan, peak(plan)))
        else:
            measured.append(_fit_chunk(peak, plan.strategy, T, max_memory))
    fits = [plan for plan, bytes_ in measured if bytes_ <= max_memory]
    return fits or [min(measured, key=lambda m: m[1])[0]]


def choose(
    loss_fn: LossFn,
    params: TensorDict,
    batch: Any,
    *,
    chunk_size: int | None = None,
    max_memory: int | None = None,
    strategy: str | None = None,
) -> Plan:
    """The strategy and chunk ``task_gradients`` uses for this problem (measured once, then cached).

    Args:
        loss_fn, params, batch, chunk_size: as passed to :func:`fmtl.task_gradients`.
        max_memory: bytes the call may allocate at its peak; ``None``: no bound.
        strategy: a concrete strategy to keep (only its chunk is chosen); ``None``: any of
            :data:`CANDIDATES`.

    Example:
        >>> import torch, fmtl
        >>> params, apply = fmtl.functionalize(torch.nn.Linear(3, 4), {"a": torch.nn.Linear(4, 1)})
        >>> loss_fn = lambda p, b: apply(p, b)["a"].pow(2).mean().reshape(1)
        >>> choose(loss_fn, params, torch.randn(8, 3)).strategy in CANDIDATES
        True
    """
    names = CANDIDATES if strategy is None else (strategy,)
    if torch.compiler.is_compiling():
        if max_memory is not None and chunk_size is None:
            return Plan("loop", None)
        return Plan(rule(params) if strategy is None else strategy, chunk_size)
    check_params(params)
    key = cache_key(loss_fn, params, batch, chunk_size=chunk_size)
    if max_memory is not None or strategy is not None:
        key += f"|max_memory={max_memory}|strategy={strategy}"
    cached = _DECISIONS.get(key)
    if cached is not None:
        return cached

    def run(plan: Plan) -> Any:
        return compute(plan.strategy, loss_fn, params, batch, chunk_size=plan.chunk_size)

    options = [Plan(s, chunk_size) for s in names]
    device = _device(params)
    # Measuring runs the forward several times: it must not move the caller's random stream (dropout).
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if max_memory is not None:
            options = _within(lambda plan: _peak(run, plan, device), options, len(task_names(params)), max_memory)
        if len(options) == 1:
            chosen = options[0]
        elif max_memory is None and chunk_size is None:
            chosen = Plan(_measure(lambda s: run(Plan(s, None))), None)
        else:
            chosen = _measure(run, options)
    _DECISIONS[key] = chosen
    return chosen


def choose_strategy(loss_fn: Callable, params: TensorDict, batch: Any, *, chunk_size: int | None = None) -> str:
    """The concrete strategy ``"auto"`` resolves to for this problem (timed once, then cached).

    Args:
        loss_fn, params, batch, chunk_size: as passed to :func:`fmtl.task_gradients`.

    Returns:
        One of :data:`CANDIDATES` (:func:`choose` also returns the chunk, under ``max_memory``).

    Example:
        >>> import torch, fmtl
        >>> params, apply = fmtl.functionalize(torch.nn.Linear(3, 4), {"a": torch.nn.Linear(4, 1)})
        >>> loss_fn = lambda p, b: apply(p, b)["a"].pow(2).mean().reshape(1)
        >>> choose_strategy(loss_fn, params, torch.randn(8, 3)) in CANDIDATES
        True
        >>> cache_key(loss_fn, params, torch.randn(8, 3)) in decisions()
        True
    """
    return choose(loss_fn, params, batch, chunk_size=chunk_size).strategy


def decisions() -> dict[str, Plan]:
    """A copy of the cached decisions, ``{cache_key: Plan(strategy, chunk_size)}``.

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

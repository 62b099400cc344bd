"""``check_balancer``: the properties an MTL balancer should have, checked on any balancer factory.

Each property is a function of one :class:`fmtl.testing.Case` that raises ``AssertionError``;
hypothesis searches the cases of its strategy for one that fails and shrinks it, and the error
names the property and prints that minimal counterexample. ``compiled`` and ``strategies`` run
on one fixed case (they compile, or train a toy problem).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
from tensordict import TensorDict
from torch.utils import _pytree as pytree

from ..base import Balancer, TaskGradients
from ._cases import Case, case, flat_case, flatten, params_for, toy_problem

__all__ = ["PROPERTIES", "check_balancer"]

PROPERTIES = (
    "finite", "pure", "state", "permutation", "scale", "non_conflict", "equal_contributions", "flat",
    "loss_weights", "log_transform", "compiled", "strategies",
)  # fmt: skip

Factory = Callable[..., Balancer]


def _leaves(td: TensorDict) -> list[torch.Tensor]:
    return list(td.values(True, True))


def _run(balancer: Balancer, c: Case) -> list[tuple[TensorDict, Any, dict]]:
    state = balancer.init(c.params, c.num_tasks)
    out = []
    for grads in c.grads:
        g, state, info = balancer.update(grads, state, c.params)
        out.append((g, state, info))
    return out


def _close(
    actual: torch.Tensor, expected: torch.Tensor, what: str, rtol: float = 1e-6, atol: float = 1e-7, floor: float = 0.0
) -> None:
    """|actual − expected| ≤ rtol |expected| + atol max(max|expected|, floor) elementwise.

    ``floor`` is the scale of the inputs (max_t ‖g_t‖): an answer that is 0 up to round-off is
    compared at the inputs' scale, not at its own.
    """
    if not actual.is_floating_point():
        if not torch.equal(actual, expected):
            raise AssertionError(f"{what}: got {actual.tolist()}, expected {expected.tolist()}")
        return
    expected = expected.to(actual.dtype)
    scale = max(float(expected.abs().max()) if expected.numel() else 0.0, floor)
    if not torch.allclose(actual, expected, rtol=rtol, atol=atol * scale + 1e-300, equal_nan=False):
        diff = float((actual - expected).abs().max()) if actual.numel() else float("nan")
        raise AssertionError(f"{what}: got {actual.tolist()}, expected {expected.tolist()} (max |diff| {diff:.3g})")


def _trees_close(
    a: TensorDict, b: TensorDict, what: str, rtol: float = 1e-6, atol: float = 1e-7, floor: float = 0.0
) -> None:
    for k in b.keys(True, True):
        _close(a[k], b[k], f"{what}[{k}]", rtol, atol, floor)


def _input_scale(grads: TaskGradients) -> float:
    return float(flatten(grads.shared).norm(dim=1).max()) if grads.losses.numel() else 0.0


# ------------------------------------------------------------------------------- the properties


def _finite(factory: Factory, c: Case) -> None:
    T = c.num_tasks
    for k, (g, _, info) in enumerate(_run(factory(), c)):
        if sorted(map(str, g.keys(True, True))) != sorted(map(str, c.params.keys(True, True))):
            raise AssertionError(f"step {k}: the update's keys {list(g.keys(True, True))} are not the params'")
        for key, p in c.params.items(True, True):
            if g[key].shape != p.shape:
                raise AssertionError(f"step {k}: update[{key}] has shape {tuple(g[key].shape)}, "
                                     f"params {tuple(p.shape)}")  # fmt: skip
            if not torch.isfinite(g[key]).all():
                raise AssertionError(f"step {k}: update[{key}] is not finite: {g[key].tolist()}")
        w = info.get("weights")
        if w is None or w.shape != (T,) or not torch.isfinite(w).all():
            raise AssertionError(f"step {k}: info['weights'] must be a finite Tensor[{T}]; got {w}")


def _pure(factory: Factory, c: Case) -> None:
    b = factory()
    state = b.init(c.params, c.num_tasks)
    grads = c.grads[0]
    before = [v.clone() for v in _leaves(grads.shared) + _leaves(grads.tasks)] + [
        s.clone() for s in pytree.tree_leaves(state)
    ]
    first, _, _ = b.update(grads, state, c.params)
    second, _, _ = b.update(grads, state, c.params)
    for key in first.keys(True, True):
        if not torch.equal(first[key], second[key]):
            raise AssertionError(f"two calls with the same state give different update[{key}]")
    after = _leaves(grads.shared) + _leaves(grads.tasks) + list(pytree.tree_leaves(state))
    if not all(torch.equal(x, y) for x, y in zip(before, after, strict=True)):
        raise AssertionError("update mutated its inputs (the task gradients or the state)")


def _state(factory: Factory, c: Case) -> None:
    for dtype in (torch.float32, torch.float64):
        d = case(**{**c.spec, "dtype": dtype})
        b = factory()
        state0 = b.init(d.params, d.num_tasks)
        layout = [(x.shape, x.dtype, x.device) for x in pytree.tree_leaves(state0)]
        state = state0
        for k, grads in enumerate(d.grads):
            g, state, info = b.update(grads, state, d.params)
            wrong = [key for key, v in g.items(True, True) if v.dtype != dtype]
            if wrong or info["weights"].dtype != dtype:
                raise AssertionError(f"{dtype} inputs: update{wrong} or info['weights'] changed dtype at step {k}")
            if pytree.tree_structure(state) != pytree.tree_structure(state0):
                raise AssertionError(f"{dtype}: the state's structure changed at step {k}")
            now = [(x.shape, x.dtype, x.device) for x in pytree.tree_leaves(state)]
            if now != layout:
                raise AssertionError(f"{dtype}: state leaves (shape, dtype, device) went from {layout} to {now}")


def _permuted(c: Case, perm: list[int]) -> Case:
    names = list(c.params["tasks"].keys())
    params = params_for(c.num_tasks, _shapes(c), c.spec["dtype"], [names[i] for i in perm])
    def permute(g: TaskGradients) -> TaskGradients:
        heads = TensorDict({names[i]: g.tasks[names[i]] for i in perm}, [])
        return TaskGradients(g.losses[perm], g.shared.apply(lambda v: v[perm]), heads)

    grads = tuple(permute(g) for g in c.grads)
    return Case(params, grads, {**c.spec, "permutation": perm})


def _shapes(c: Case) -> dict:
    def shape_of(td):
        return {k: shape_of(v) if isinstance(v, TensorDict) else tuple(v.shape) for k, v in td.items()}

    return shape_of(c.params["shared"])


def _permutation(factory: Factory, c: Case, rtol: float, atol: float) -> None:
    T = c.num_tasks
    perm = list(range(1, T)) + [0]
    names = list(c.params["tasks"].keys())
    runs = zip(_run(factory(), c), _run(factory(), _permuted(c, perm)), strict=True)
    for k, ((g, _, info), (pg, _, pinfo)) in enumerate(runs):
        _trees_close(pg["shared"], g["shared"], f"step {k}: the shared update after permuting the tasks by {perm}",
                     rtol, atol, _input_scale(c.grads[k]))  # fmt: skip
        for n in names:
            _trees_close(pg["tasks", n], g["tasks", n], f"step {k}: task {n!r}'s head update after permuting",
                         rtol, atol)  # fmt: skip
        _close(pinfo["weights"], info["weights"][perm], f"step {k}: info['weights'] after permuting by {perm}",
               rtol, atol)  # fmt: skip


def _scaled(c: Case, s: float) -> Case:
    grads = tuple(TaskGradients(g.losses, g.shared.apply(lambda v: v * s), g.tasks.apply(lambda v: v * s))
                  for g in c.grads)  # fmt: skip
    return Case(c.params, grads, {**c.spec, "scaled_by": s})


def _scale(factory: Factory, c: Case, power: int, rtol: float, atol: float) -> None:
    (g, _, _), *_ = _run(factory(), c)
    for s in (4.0, 0.25):  # powers of two: the scaling itself is exact
        (sg, _, _), *_ = _run(factory(), _scaled(c, s))
        expected = g["shared"].apply(lambda v, s=s: v * s**power)
        what = "equivariant: update(sJ) = s·update(J)" if power else "invariant: update(sJ) = update(J)"
        # LibMTL's absolute ε (e.g. ‖g‖ + 10⁻⁸) make this hold to ~10⁻⁸ relative, not exactly
        _trees_close(sg["shared"], expected, f"scale {what}, s = {s}, shared update", max(rtol, 1e-5), max(atol, 1e-6),
                     _input_scale(c.grads[0]) * s**power)  # fmt: skip


def _non_conflict(factory: Factory, c: Case) -> None:
    for k, (g, _, _) in enumerate(_run(factory(), c)):
        J = flatten(c.grads[k].shared)
        d = flatten(g["shared"].unsqueeze(0))[0]
        dots = J @ d
        norms = J.norm(dim=1)
        slack = 1e-8 * norms * (d.norm() + 1e-6 * norms.amax())  # round-off of d is relative to ‖J‖
        if (dots < -slack).any():
            raise AssertionError(f"step {k}: ⟨g_t, update⟩ = {dots.tolist()} conflicts with task(s) "
                                 f"{(dots < -slack).nonzero().flatten().tolist()}")  # fmt: skip


def _equal_contributions(factory: Factory, c: Case, rtol: float) -> None:
    (g, _, _), *_ = _run(factory(), c)
    J = flatten(c.grads[0].shared)
    d = flatten(g["shared"].unsqueeze(0))[0]
    coef = torch.linalg.lstsq(J.T, d[:, None]).solution[:, 0]
    contributions = coef * J.norm(dim=1)
    if not (contributions > 0).all():
        raise AssertionError(f"the update's components c_t‖g_t‖ along the task gradients are {contributions.tolist()}")
    _close(contributions, contributions.mean().expand_as(contributions), "c_t‖g_t‖ (equal for every task)", rtol, 0.0)


def _unique(c: Case) -> bool:
    """Full-rank J: the weights of the Gramian methods are unique (else only Jᵀw is)."""
    return c.spec.get("structure") == "generic" and c.spec.get("rank") in (None, c.num_tasks)


def _flat(factory: Factory, c: Case, rtol: float, atol: float) -> None:
    f = flat_case(c)
    for k, ((g, _, info), (fg, _, finfo)) in enumerate(zip(_run(factory(), c), _run(factory(), f), strict=True)):
        _close(flatten(g["shared"].unsqueeze(0))[0], fg["shared", "flat"],
               f"step {k}: the update of a multi-leaf θ, flattened, vs the update of the flat θ", rtol, atol,
               _input_scale(c.grads[k]))  # fmt: skip
        if _unique(c):
            _trees_close(g["tasks"], fg["tasks"], f"step {k}: head updates, multi-leaf vs flat θ", rtol, atol)
            _close(info["weights"], finfo["weights"], f"step {k}: info['weights'], multi-leaf vs flat θ", rtol, atol)


def _loss_weights(factory: Factory, c: Case) -> None:
    b = factory()
    state = b.init(c.params, c.num_tasks)
    for k, grads in enumerate(c.grads):
        w, wstate, _ = b.loss_weights(grads.losses, state, c.params)
        out, ustate, info = b.update(grads, state, c.params)
        _close(info["weights"], w, f"step {k}: update's info['weights'] vs loss_weights")
        _close(flatten(out["shared"].unsqueeze(0))[0], w @ flatten(grads.shared), f"step {k}: update vs Jᵀw")
        for i, n in enumerate(grads.tasks.keys()):
            weighted = grads.tasks[n].apply(lambda v, s=w[i]: v * s)
            _trees_close(out["tasks", n], weighted, f"step {k}: head {n!r} vs w_t∇ψ_t")
        for a, s in zip(pytree.tree_leaves(wstate), pytree.tree_leaves(ustate), strict=True):
            _close(a, s, f"step {k}: the state from loss_weights vs from update")
        state = ustate


def _log_transform(factory: Factory, c: Case, eps: float) -> None:
    def transformed(g: TaskGradients) -> TaskGradients:
        scale = 1.0 / (g.losses + eps)
        tasks = TensorDict({n: g.tasks[n].apply(lambda v, s=scale[i]: v * s) for i, n in enumerate(g.tasks.keys())}, [])
        shared = g.shared.apply(lambda v: v * scale.reshape(-1, *([1] * (v.dim() - 1))))
        return TaskGradients(torch.log(g.losses + eps), shared, tasks)

    reference = Case(c.params, tuple(transformed(g) for g in c.grads), c.spec)
    runs = zip(_run(factory(log_transform=True), c), _run(factory(), reference), strict=True)
    for k, ((g, _, _), (r, _, _)) in enumerate(runs):
        _trees_close(g, r, f"step {k}: log_transform=True vs the method on the gradients of log(ℓ + ε)")


def _compiled(factory: Factory, c: Case, rtol: float, atol: float) -> None:
    torch._dynamo.reset()  # balancers share code objects (gramian_balancer's update, …)
    b = factory()
    compiled = torch.compile(b.update, fullgraph=True, backend="aot_eager")
    state = b.init(c.params, c.num_tasks)
    for k, grads in enumerate(c.grads):
        out, cstate, _ = compiled(grads, state, c.params)
        ref, rstate, _ = b.update(grads, state, c.params)
        _trees_close(out, ref, f"step {k}: torch.compile(update, fullgraph=True) vs eager", rtol, atol)
        for x, y in zip(pytree.tree_leaves(cstate), pytree.tree_leaves(rstate), strict=True):
            if x.is_floating_point():
                _close(x, y, f"step {k}: compiled vs eager state", rtol, atol)
            elif not torch.equal(x, y):
                raise AssertionError(f"step {k}: compiled vs eager state: {x.tolist()} != {y.tolist()}")
        state = rstate


def _strategies(factory: Factory, num_tasks: int, rtol: float, atol: float) -> None:
    from .. import optim
    from ..step import make_step

    params, loss_fn, batch = toy_problem(num_tasks)
    results = {}
    for strategy in ("loop", "jacrev", "vmap_grad"):
        step = make_step(loss_fn, factory(), optim.sgd(1e-2), strategy=strategy)
        p, state = params, step.init(params)
        for _ in range(2):
            p, state, _ = step(p, state, batch)
        results[strategy] = p
    for strategy in ("jacrev", "vmap_grad"):
        _trees_close(results[strategy], results["loop"], f"two steps with strategy={strategy!r} vs 'loop'", rtol, atol)


# ------------------------------------------------------------------------------- the search


def _settings(max_examples: int, derandomize: bool):
    from hypothesis import HealthCheck, Phase, settings

    return settings(max_examples=max_examples, derandomize=derandomize, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck), phases=(Phase.generate, Phase.shrink))  # fmt: skip


def _report(label: str, prop: str, c: Case | str, error: BaseException) -> AssertionError:
    where = c.describe() if isinstance(c, Case) else c
    detail = error if isinstance(error, AssertionError) else f"{type(error).__name__}: {error}"
    return AssertionError(f"check_balancer({label}): property {prop!r} fails: {detail}\n"
                          f"minimal counterexample: {where}")  # fmt: skip


def _search(label: str, prop: str, check: Callable[[Case], None], strategy, max_examples: int, derandomize: bool):
    from hypothesis import find
    from hypothesis.errors import NoSuchExample

    def fails(c: Case) -> bool:
        try:
            check(c)
        except Exception:  # noqa: BLE001 - a crash on a valid input is a failure too
            return True
        return False

    try:
        counterexample = find(strategy, fails, settings=_settings(max_examples, derandomize))
    except NoSuchExample:
        return
    try:
        check(counterexample)
    except Exception as error:  # noqa: BLE001
        raise _report(label, prop, counterexample, error) from None
    raise AssertionError(f"check_balancer({label}): property {prop!r} failed on {counterexample.describe()} "
                         "but passes when rerun: the balancer is not deterministic")  # fmt: skip


def _accepts(factory: Factory, name: str) -> inspect.Parameter | None:
    try:
        return inspect.signature(factory).parameters.get(name)
    except (TypeError, ValueError):
        return None


def check_balancer(
    factory: Factory,
    *,
    tasks: tuple[int, int] = (1, 4),
    properties: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    non_conflicting: bool = False,
    equal_contributions: bool = False,
    scale: str | None = "equivariant",
    leafwise: bool = False,
    permutation_tasks: tuple[int, int] | None = None,
    max_examples: int = 20,
    derandomize: bool = True,
    rtol: float = 1e-6,
    atol: float = 1e-7,
    name: str | None = None,
) -> list[str]:
    """Checks the applicable properties of the balancer that ``factory()`` builds; returns their names.

    Raises ``AssertionError`` naming the first property that fails and the minimal counterexample
    hypothesis found (a :func:`fmtl.testing.case` call that rebuilds it, and its Jacobian). Cases
    are multi-leaf Jacobians of ``tasks = (min T, max T)`` tasks and every rank, conditioning,
    norm spread and hard structure of :data:`fmtl.testing.STRUCTURES`, with losses and head
    gradients, over two steps. The properties:

    - ``finite``: the update is finite and shaped like the params; ``info["weights"]`` is a
      finite Tensor[T];
    - ``pure``: the same inputs give the same output, and inputs are not mutated;
    - ``state``: float32 and float64 are preserved; the state's structure and leaf shapes stay;
    - ``permutation``: permuting the tasks permutes the weights and head updates and leaves the
      shared update (full-rank cases; ``permutation_tasks`` restricts T, e.g. ``(2, 2)`` for a
      random visiting order);
    - ``scale``: ``"equivariant"`` (update(sJ) = s·update(J)) or ``"invariant"`` on the first
      step (``None`` skips it);
    - ``non_conflict`` (if ``non_conflicting``): ⟨g_t, update⟩ ≥ 0 for every task;
    - ``equal_contributions`` (if claimed, DB-MTL-like): the first update is Σ c_t g_t with the
      same c_t‖g_t‖ > 0 for every task (full-rank cases);
    - ``flat`` (unless ``leafwise``): a multi-leaf θ gives the update of the same θ as one flat
      vector, so a Gramian, norm or Jᵀw that skips a leaf fails;
    - ``loss_weights`` (loss balancers): ``update`` equals the weighted sum from ``loss_weights``;
    - ``log_transform`` (if the factory takes ``log_transform``): it is the method applied to the
      gradients of log(ℓ_t + ε);
    - ``compiled``: ``torch.compile(update, fullgraph=True)`` (aot_eager) equals eager;
    - ``strategies``: two training steps of :func:`fmtl.make_step` are the same with the
      ``jacrev``, ``vmap_grad`` and ``loop`` strategies.

    ``properties`` picks some of them, ``skip`` leaves some out. Comparisons hold to ``rtol``
    relative to each entry plus ``atol`` relative to the largest entry of the tensor (float64
    cases; ``scale`` allows at least 10⁻⁵ and 10⁻⁶). Needs hypothesis.

    Example:
        >>> import fmtl, fmtl.testing
        >>> checked = fmtl.testing.check_balancer(fmtl.balancers.mgda, non_conflicting=True, max_examples=5,
        ...                                       properties=["finite", "non_conflict", "flat"])
        >>> checked
        ['finite', 'non_conflict', 'flat']
    """
    try:
        from . import strategies as st
    except ImportError as error:
        raise ImportError(f"check_balancer needs hypothesis: {error}") from None
    label = name or getattr(factory, "__name__", None) or repr(factory)
    wanted = list(PROPERTIES if properties is None else properties)
    unknown = sorted((set(wanted) | set(skip)) - set(PROPERTIES))
    if unknown:
        raise ValueError(f"unknown properties {unknown}; choose from {list(PROPERTIES)}")
    if scale not in ("equivariant", "invariant", None):
        raise ValueError(f"scale must be 'equivariant', 'invariant' or None; got {scale!r}")
    probe = factory()
    if not isinstance(probe, Balancer):
        raise TypeError(f"check_balancer({label}): the factory returned {type(probe).__name__}, not a fmtl.Balancer")
    log_param = _accepts(factory, "log_transform")
    eps_param = _accepts(factory, "eps")
    eps = eps_param.default if eps_param is not None and isinstance(eps_param.default, float) else 1e-8
    applicable = {
        "permutation": permutation_tasks != (),
        "scale": scale is not None,
        "non_conflict": non_conflicting,
        "equal_contributions": equal_contributions,
        "flat": not leafwise,
        "loss_weights": probe.loss_weights is not None,
        "log_transform": log_param is not None,
    }
    chosen = [p for p in wanted if p not in set(skip) and applicable.get(p, True)]
    lo, hi = tasks
    perm = permutation_tasks or (max(lo, 2), hi)
    every = st.cases(num_tasks=(lo, hi))
    full = st.cases(num_tasks=(lo, hi), ranks="full", norm_spreads=(1.0, 10.0), conditions=(1.0, 100.0))
    searches = {
        "finite": (_finite, every),
        "pure": (_pure, every),
        "state": (_state, st.cases(num_tasks=(lo, hi), norm_spreads=(1.0, 10.0))),
        "permutation": (functools.partial(_permutation, rtol=rtol, atol=atol),
                        st.cases(num_tasks=perm, ranks="full", norm_spreads=(1.0, 10.0))),
        "scale": (functools.partial(_scale, power=1 if scale == "equivariant" else 0, rtol=rtol, atol=atol), full),
        "non_conflict": (_non_conflict, every),
        "equal_contributions": (functools.partial(_equal_contributions, rtol=rtol), full),
        "flat": (functools.partial(_flat, rtol=rtol, atol=atol), every),
        "loss_weights": (_loss_weights, every),
        "log_transform": (functools.partial(_log_transform, eps=eps), full),
    }
    fixed_T = min(max(lo, 3), hi)
    for prop in chosen:
        if prop in searches:
            check, strategy = searches[prop]
            _search(label, prop, functools.partial(check, factory), strategy, max_examples, derandomize)
        elif prop == "compiled":
            c = case(fixed_T, seed=1)
            try:
                _compiled(factory, c, rtol, atol)
            except Exception as error:  # noqa: BLE001
                raise _report(label, prop, c, error) from None
        elif prop == "strategies":
            try:
                _strategies(factory, fixed_T, rtol, atol)
            except Exception as error:  # noqa: BLE001
                raise _report(label, prop, f"fmtl.testing.toy_problem({fixed_T})", error) from None
    return chosen

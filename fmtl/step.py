"""The training step as one pure function: ``(params, state, batch) -> (params, state, info)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from tensordict import TensorDict
from torch.func import vjp
from torch.utils import _pytree as pytree

from . import rng
from .balancers._gradient import finish
from .balancers.dbmtl import DBMTLState
from .base import Balancer, TaskGradients
from .heads import LinearHeads
from .linear_representation import linear_representation
from .optim import Optimizer, require_functional
from .params import check_params, task_names
from .representation import TwoStageLoss, check_support, check_task_axis, representation_gradients
from .task_gradients import LossFn, checked_loss, task_gradients
from .tree import gramian, leaves, leaves_at, row_norms, with_leaves

__all__ = ["StepState", "Step", "make_step", "Reduce", "BufferUpdate"]

Reduce = Callable[[Any], Any]
#: ``update_buffers(params, buffers, batch) -> buffers``: running statistics after one batch.
BufferUpdate = Callable[[TensorDict, Any, Any], Any]


class StepState(NamedTuple):
    """The step's state: its count (0-d int64), the balancer's and optimizer's states, the model's buffers.

    ``buffers`` holds what the model carries besides its parameters (BatchNorm running
    statistics), ``()`` for a model without any; it travels with the state so that the step stays
    ``(params, state, batch) -> (params, state, info)`` and checkpoints hold it like any state.
    """

    count: torch.Tensor
    balancer: Any
    optimizer: Any
    buffers: Any = ()


class Step:
    """A pure training step; ``step.init(params)`` builds its state (see :func:`make_step`)."""

    def __init__(self, init: Callable[[TensorDict], StepState], apply: Callable) -> None:
        self.init = init
        self._apply = apply

    def __call__(
        self, params: TensorDict, state: StepState, batch: Any
    ) -> tuple[TensorDict, StepState, dict[str, torch.Tensor]]:
        return self._apply(params, state, batch)


def _signature(params: TensorDict) -> tuple:
    return tuple((k, tuple(v.shape), v.dtype, v.device) for k, v in params.items(True, True))


def _state_layout(state: Any) -> tuple:
    leaves_, spec = pytree.tree_flatten(state)  # once: flattening TensorDicts is most of the cost
    return spec, [(tuple(x.shape), x.dtype, x.device) for x in leaves_]


def _layout_mismatch(state: Any, got: tuple, want: tuple) -> str:
    """What differs between two state layouts, in words (the first differing leaf, if any)."""
    if got[0] == want[0] and len(got[1]) == len(want[1]):
        paths = [pytree.keystr(path) for path, _ in pytree.tree_flatten_with_path(state)[0]]
        for path, (gs, gd, gv), (ws, wd, wv) in zip(paths, got[1], want[1], strict=True):
            if (gs, gd, gv) != (ws, wd, wv):
                return f"state{path} is {list(gs)} {gd} on {gv}, step.init(params) makes {list(ws)} {wd} on {wv}"
    return "it was built for parameters of another structure or task count"


def _check_state(params: TensorDict, state: Any, init: Callable, layouts: dict | None = None) -> None:
    if not isinstance(state, StepState):
        raise TypeError(f"state must be the StepState made by step.init(params); got {type(state)}")
    # init(params) allocates a whole state (a [T, P] EMA for DB-MTL): build it once per
    # parameter signature and keep only its layout.
    key = _signature(params)
    want = layouts.get(key) if layouts is not None else None
    if want is None:
        want = _state_layout(init(params))
        if layouts is not None:
            layouts[key] = want
    bare = state._replace(buffers=())  # the model's buffers are checked by the buffer update itself
    got = _state_layout(bare)
    if got != want:
        raise ValueError(
            f"state does not match params: {_layout_mismatch(bare, got, want)}; build it with step.init(params)"
        )


def _nonfinite_error(
    names: list[str], losses: torch.Tensor, finite_grads: torch.Tensor | None = None, updates: TensorDict | None = None
) -> str:
    bad_loss = [n for n, ok in zip(names, torch.isfinite(losses).tolist(), strict=True) if not ok]
    bad_grad = [] if finite_grads is None else [n for n, ok in zip(names, finite_grads.tolist(), strict=True) if not ok]
    parts = []
    if bad_loss:
        parts.append(f"non-finite loss in tasks {bad_loss}")
    if bad_grad:
        parts.append(f"non-finite gradient in tasks {bad_grad}")
    if not parts:
        items = [] if updates is None else updates.items(True, True)
        bad = [".".join(k) for k, v in items if not torch.isfinite(v).all()]
        parts.append(f"the balanced update is non-finite in {bad}" if bad else "the balanced update is non-finite")
    return "; ".join(parts) + " (params and state left unchanged)"


def _nans(like: torch.Tensor, *shape: int) -> torch.Tensor:
    return torch.full(shape, float("nan"), dtype=like.dtype, device=like.device)


def _select(ok: torch.Tensor, new: Any, old: Any) -> Any:
    return pytree.tree_map(lambda a, b: torch.where(ok, a, b), new, old)


def _finite_rows(J: TensorDict) -> torch.Tensor:
    """``Tensor[T]`` of bools: row t of the task-stacked ``J`` holds only finite numbers."""
    return torch.stack([torch.isfinite(v.reshape(v.shape[0], -1)).all(1) for v in leaves(J)]).all(0)


def _finite_heads(tasks: TensorDict, names: list[str]) -> torch.Tensor:
    """``Tensor[T]`` of bools: every leaf of ∇ψ_t ℓ_t is finite (error path only: it syncs per leaf)."""
    return torch.tensor([all(bool(torch.isfinite(v).all()) for v in leaves(tasks[n])) for n in names])


def _all_finite(td: TensorDict) -> torch.Tensor:
    # min and max propagate NaN and keep ±inf, and unlike isfinite(v).all() they make no
    # boolean copy of v (16x faster on a 558k-entry update); a sum could overflow for large
    # but finite entries.
    ends = [torch.stack(torch.aminmax(v)) for v in leaves(td) if v.numel()]
    return torch.isfinite(torch.cat(ends)).all() if ends else torch.ones((), dtype=torch.bool)


def _probably_finite(td: TensorDict) -> torch.Tensor:
    """0-d bool: every leaf's ‖v‖₂ is finite — true if ``td`` is finite, unless a norm overflows.

    The eager fast path of :func:`_all_finite`: one multi-tensor norm call instead of an
    ``aminmax`` and a ``stack`` per leaf (a third of the time on an MLP's 28 leaves). A NaN or
    ±inf entry always makes its norm non-finite; huge but finite entries (≳ 1e19 in float32) can
    overflow it too, so a ``False`` is only a reason to look again with :func:`_all_finite`.
    """
    vs = [v for v in leaves(td) if v.numel() > 0]
    if not vs:
        return torch.ones((), dtype=torch.bool)
    if not all(v.is_floating_point() for v in vs):
        return _all_finite(td)
    return torch.isfinite(torch.stack([n.to(vs[0].dtype) for n in torch._foreach_norm(vs)])).all()


def make_step(
    loss_fn: LossFn,
    balancer: Balancer,
    optimizer: Optimizer,
    *,
    reduce: Reduce | None = None,
    strategy: str = "auto",
    chunk_size: int | None = None,
    diagnostics: bool = False,
    rep_grad: bool = False,
    max_memory: int | None = None,
    update_buffers: BufferUpdate | None = None,
) -> Step:
    """Builds the pure MTL training step ``step(params, state, batch) -> (params, state, info)``.

    Gradient balancers: the T task gradients in one vectorized pass (:func:`task_gradients`),
    then ``reduce`` (e.g. a cross-process mean), then the balancer, then the optimizer:

    .. math::
        (\\ell, J) \\to \\tilde g = \\mathrm{balancer}(\\ell, J) \\to
        \\theta_{k+1}, \\psi_{k+1} = \\mathrm{optimizer}(\\tilde g)

    Loss balancers (``balancer.loss_weights`` set) cost what equal weighting costs: one
    forward, weights w from the (reduced) losses, one backward of Σ_t w_t ℓ_t.

    ``info`` holds ``losses`` [T], ``grad_norms`` [T] (‖∇θ ℓ_t‖), ``weights`` [T] (from the
    balancer), ``cosine`` [T, T] (cosine similarity of the raw shared task gradients), ``ok``
    (0-d bool) and the balancer's own entries. ``cosine`` needs the T×T Gramian J Jᵀ, an extra
    pass over J that costs up to 15 % of a step, so it is NaN unless ``diagnostics=True``; a
    training loop builds a second step with it for the steps it logs (both update identically).
    Loss balancers compute no task gradients, so they also report NaN norms unless
    ``diagnostics=True``; so does DB-MTL, whose step guards on its own ‖ĝ_t‖
    (``info["ema_norms"]``) and skips the pass over J for ‖J_t‖.

    Bad input: eager calls raise — wrong loss shape or task count (``ValueError``), a state
    that does not match the params in structure, shape, dtype or device (``ValueError`` naming
    the first leaf that differs), a negative loss under a log transform (``ValueError`` naming
    the task), a non-finite loss, shared or head gradient (``FloatingPointError`` naming the
    tasks), a non-finite update (``FloatingPointError`` naming the parameters). A compiled step
    cannot raise on values: it returns params and state unchanged and ``info["ok"] = False``
    instead. Inputs are never mutated.

    Args:
        loss_fn: ``loss_fn(params, batch) -> Tensor[T]``.
        balancer: a :class:`fmtl.Balancer`, e.g. ``fmtl.balancers.dbmtl()``.
        optimizer: e.g. ``fmtl.optim.adam(1e-3)``.
        reduce: hook applied to the losses and raw task gradients before the balancer
            (``reduce(TaskGradients) -> TaskGradients``; for loss balancers it is applied
            to the loss vector and to the weighted gradient instead).
        strategy, chunk_size, max_memory: passed to :func:`task_gradients` (``max_memory``: the
            bytes its call may allocate at its peak; the chunk is chosen to fit).
        diagnostics: also compute the cosines (and, for loss balancers, the task gradients
            and their norms); the update is the same either way.
        update_buffers: ``update_buffers(params, buffers, batch) -> buffers`` for a model with
            running statistics (BatchNorm), e.g. ``lambda p, b, batch: model.update(p, b, batch["x"])``
            with ``model = fmtl.functionalize(...)``; ``step.init(params, model.buffers)`` puts
            them in ``state.buffers``. The gradient pass normalizes with batch statistics (pure);
            the running statistics are then updated once per step, outside the gradient pass,
            by this no-grad forward at the step's input params (as ``nn.BatchNorm`` does in the
            training forward). Eagerly it replays the random state of the step's first forward,
            so its dropout masks are the gradient pass's; a compiled step cannot read the random
            state (dynamo does not trace ``torch.get_rng_state``) and draws its own masks there.
        rep_grad: representation gradients (MGDA-UB; :mod:`fmtl.representation`): ``loss_fn``
            must be a :class:`fmtl.TwoStageLoss` ``(encode, heads)``; the T task gradients are
            taken w.r.t. the shared representation z (T backwards through the heads), the
            balancer weighs them, and one backward through the encoder gives θ's gradient.
            ``info["grad_norms"]`` and ``info["cosine"]`` are then those of ∇z ℓ_t. Gramian
            methods and GradDrop only (DB-MTL, MoCo and MetaBalance raise ``ValueError`` at
            ``init``); loss balancers are unaffected; no ``reduce`` hook.

    Example:
        >>> import torch, fmtl
        >>> from tensordict import TensorDict
        >>> params, apply = fmtl.functionalize(torch.nn.Linear(3, 4),
        ...     {"a": torch.nn.Linear(4, 1), "b": torch.nn.Linear(4, 1)})
        >>> def loss_fn(p, batch):
        ...     out = apply(p, batch["x"])
        ...     return torch.stack([(out[k].squeeze(-1) - batch["y"][:, i]).pow(2).mean()
        ...                         for i, k in enumerate(out)])
        >>> step = fmtl.make_step(loss_fn, fmtl.balancers.dbmtl(), fmtl.optim.adam(1e-2))
        >>> state = step.init(params)
        >>> batch = TensorDict({"x": torch.randn(16, 3), "y": torch.randn(16, 2)}, [16])
        >>> params2, state, info = step(params, state, batch)
        >>> sorted(info)
        ['cosine', 'ema_norms', 'grad_norms', 'losses', 'ok', 'weights']
    """
    optimizer = require_functional(optimizer)  # a torch.optim object is pointed at fmtl.TorchOptimizer
    loss_only = balancer.loss_weights is not None
    with_diagnostics = bool(diagnostics)
    jacobian = {"strategy": strategy, "chunk_size": chunk_size, "max_memory": max_memory}
    if rep_grad:
        if not isinstance(loss_fn, TwoStageLoss):
            raise TypeError(
                f"rep_grad=True needs loss_fn = fmtl.TwoStageLoss(encode, heads); got {type(loss_fn).__name__}"
            )
        if reduce is not None:
            raise ValueError("rep_grad=True does not support a reduce hook (fmtl.representation says why)")
        check_task_axis(loss_fn, strategy, chunk_size, max_memory)
    # linear heads let a Gramian method take G_z from the heads' factors (fmtl.linear_representation);
    # an explicit strategy, chunk or memory bound asks for Z itself
    factored = (rep_grad and isinstance(loss_fn.heads, LinearHeads) and balancer.from_gramian is not None
                and strategy == "auto" and chunk_size is None and max_memory is None)  # fmt: skip

    layouts: dict = {}

    def init(params: TensorDict, buffers: Any = ()) -> StepState:
        check_params(params)
        count = torch.zeros((), dtype=torch.int64, device=next(iter(leaves(params))).device)
        buffers = () if buffers is None else buffers
        if rep_grad and not loss_only:
            check_support(balancer, params, len(task_names(params)))
        return StepState(count, balancer.init(params, len(task_names(params))), optimizer.init(params), buffers)

    def gradient_method(params, state, batch):
        if factored:
            return linear_heads_method(params, state, batch)
        if rep_grad:
            return representation_method(params, state, batch)
        grads = task_gradients(loss_fn, params, batch, **jacobian)
        if reduce is not None:
            grads = reduce(grads)
        if isinstance(state.balancer, DBMTLState) and not with_diagnostics:
            return grads, None, None, *_ema_guarded_balance(grads, state, params)
        G, norms = _norms(grads)
        g, bstate, binfo = _guarded_balance(grads, norms, state, params)
        return grads, G, norms, g, bstate, binfo

    def representation_method(params, state, batch):
        # the balancer weighs Z_t = ∇z ℓ_t as if z were θ; its z-shaped output goes back through
        # the encoder in one backward
        grads, z_params, pullback = representation_gradients(loss_fn, params, batch, **jacobian)
        G, norms = _norms(grads)
        g, bstate, binfo = _guarded_balance(grads, norms, state, z_params)
        g = TensorDict({"shared": pullback(g["shared", "z"]), "tasks": g["tasks"]}, [])
        return grads, G, norms, g, bstate, binfo

    def linear_heads_method(params, state, batch):
        # linear heads and a Gramian method: G_z from the heads' factors, Z itself never formed
        rep, pullback = linear_representation(loss_fn, params, batch)
        norms = torch.diagonal(rep.gramian).clamp_min(0).sqrt()
        T = rep.losses.shape[0]
        _guard(rep.losses, norms, rep.tasks, params, lambda: TensorDict({"z": rep.rows()}, [T]))
        w, w_tasks, bstate, binfo = balancer.from_gramian(rep.gramian, rep.losses, state.balancer, params)
        g = finish(pullback(rep.combine(w)), w_tasks, rep.tasks)
        grads = TaskGradients(rep.losses, TensorDict({}, [T]), rep.tasks)
        return grads, rep.gramian if with_diagnostics else None, norms, g, bstate, binfo

    def _norms(grads: TaskGradients | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        # ‖J_t‖ feed both info["grad_norms"] and the finiteness guard; with the diagnostics on,
        # the Gramian's diagonal gives them for free.
        if grads is None:
            return None, None
        if with_diagnostics:
            G = gramian(grads.shared)
            return G, torch.diagonal(G).clamp_min(0).sqrt()
        return None, row_norms(grads.shared)

    def _guard(losses: torch.Tensor, norms: torch.Tensor, tasks: TensorDict, params: TensorDict,
               rows: Callable[[], TensorDict]) -> None:  # fmt: skip
        if torch.compiler.is_compiling():
            return
        heads_ok = _probably_finite(tasks) if leaves(tasks) else True
        if not bool(torch.isfinite(losses).all() & torch.isfinite(norms).all() & heads_ok):  # one sync
            # ‖J_t‖² and the heads' norms overflow for huge but finite gradients: only the
            # error path looks leaf by leaf (at the rows themselves: `rows()`)
            names = task_names(params)
            finite = _finite_rows(rows()) & _finite_heads(tasks, names)
            if not bool(finite.all() & torch.isfinite(losses).all()):
                raise FloatingPointError(_nonfinite_error(names, losses, finite))

    def _guarded_balance(grads: TaskGradients, norms: torch.Tensor, state: StepState, params: TensorDict):
        _guard(grads.losses, norms, grads.tasks, params, lambda: grads.shared)
        return balancer.update(grads, state.balancer, params)

    def _ema_guarded_balance(grads: TaskGradients, state: StepState, params: TensorDict):
        # DB-MTL's ‖ĝ_t‖ (info["ema_norms"]) are non-finite whenever J_t is: ĝ_t = β_k ĝ_t + (1 − β_k) g_t
        # with 1 − β_k > 0. Guarding on them after its update (the step is pure, so nothing is
        # half-updated) skips the pass over J for ‖J_t‖, 2–3 % of the step (benchmarks/RESULTS.md
        # §10.10); info["grad_norms"] is then NaN, as for the cosines. Without normalization there
        # are no EMA norms, and ‖J_t‖ is taken after the update instead. The losses and heads are
        # checked first (the losses stand in for the row norms, which come after): the log
        # transform would raise on a loss of -inf.
        _guard(grads.losses, grads.losses, grads.tasks, params, lambda: grads.shared)
        g, bstate, binfo = balancer.update(grads, state.balancer, params)
        rows = binfo.get("ema_norms")
        rows = row_norms(grads.shared) if rows is None else rows
        if not torch.compiler.is_compiling() and not bool(torch.isfinite(rows).all()):
            # (the losses and heads passed above) ‖ĝ_t‖ overflows for huge but finite gradients
            finite = _finite_rows(grads.shared)
            if not bool(finite.all()):
                raise FloatingPointError(_nonfinite_error(task_names(params), grads.losses, finite))
        return g, bstate, binfo

    def loss_method(params, state, batch):
        names = task_names(params)
        losses, pullback = vjp(checked_loss(loss_fn, batch, names), params)
        global_losses = reduce(losses) if reduce is not None else losses
        if not torch.compiler.is_compiling() and not bool(torch.isfinite(global_losses).all()):
            raise FloatingPointError(_nonfinite_error(names, global_losses))
        w, bstate, binfo = balancer.loss_weights(global_losses.detach(), state.balancer, params)
        (g,) = pullback(w.to(losses.dtype))
        if reduce is not None:
            g = reduce(g)
        grads = None
        if with_diagnostics:
            grads = task_gradients(loss_fn, params, batch, **jacobian)
            if reduce is not None:
                grads = reduce(grads)
        return global_losses, grads, g, bstate, binfo

    def apply(params: TensorDict, state: StepState, batch: Any):
        compiling = torch.compiler.is_compiling()
        if not compiling:
            check_params(params)
            _check_state(params, state, init, layouts)
        names = task_names(params)
        T = len(names)
        device = next(iter(leaves(params))).device
        replay = update_buffers is not None and not compiling
        before = rng.get(device) if replay else None
        if loss_only:
            losses, grads, g, bstate, binfo = loss_method(params, state, batch)
            G, norms = _norms(grads)
        else:
            grads, G, norms, g, bstate, binfo = gradient_method(params, state, batch)
            losses = grads.losses
        if norms is None:
            norms = _nans(losses, T)
        if G is not None:
            cosine = G / (norms[:, None] * norms[None, :]).clamp_min(torch.finfo(G.dtype).tiny)
        else:
            cosine = _nans(losses, T, T)
        updates, ostate = optimizer.update(g, state.optimizer, params)
        # one multi-tensor add over the leaves (updates paired in params' key order): cheaper than
        # `params.apply(torch.add, updates)`, itself a third cheaper than `params + updates`
        keys = list(params.keys(True, True))
        new_params = with_leaves(params, torch._foreach_add(leaves_at(params, keys), leaves_at(updates, keys)))
        new_buffers = state.buffers
        if update_buffers is not None:
            after = rng.get(device) if replay else None
            if replay:
                rng.set(before, device)  # the masks of the step's first forward
            new_buffers = update_buffers(params, state.buffers, batch)
            if replay:
                rng.set(after, device)
        new_state = StepState(state.count + 1, bstate, ostate, new_buffers)
        ok = torch.isfinite(losses).all() & (_all_finite(updates) if compiling else _probably_finite(updates))
        if compiling:
            new_params = _select(ok, new_params, params)
            new_state = _select(ok, new_state, state)
        elif not bool(ok):
            ok = torch.isfinite(losses).all() & _all_finite(updates)  # exact: a norm overflowed, or not
            if not bool(ok):
                raise FloatingPointError(_nonfinite_error(names, losses, updates=updates))
        info = {**binfo, "losses": losses.detach(), "grad_norms": norms, "cosine": cosine, "ok": ok}
        return new_params, new_state, info

    return Step(init, apply)

"""Assembling a run: the problem (or its STL ensemble), balancer, optimizer, mixed precision,
gradient accumulation and the BatchNorm update, composed into ``make_step`` on the run's device.

Everything here is the engine's (:func:`fmtl.make_step`, :func:`fmtl.balancers.get`,
:func:`fmtl.optim.get`, :func:`fmtl.amp.autocast`, :class:`fmtl.accumulate.Accumulator`); this
module only reads the run configuration and puts the pieces together:

.. math::
    \\text{step} = \\text{optimizer} \\circ \\text{balancer} \\circ \\text{reduce}
    \\circ \\text{task\\_gradients}(\\text{autocast}(\\ell))
    \\quad(+\\ \\text{running statistics, outside the gradient pass})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from tensordict import TensorDict

from .. import balancers, optim, rng, schedules, transforms
from ..accumulate import Accumulator, gradient_form
from ..amp import autocast
from ..base import Balancer
from ..data import num_batches
from ..representation import TwoStageLoss
from ..step import Step, StepState, make_step
from ..task_gradients import LossFn
from . import stl
from .controls import plateau_options
from .problem import Problem
from .world import World, check_shards, mean_buffers

__all__ = ["Run", "Steps", "assemble", "build_steps", "choose_strategy", "strategy_of", "build_optimizer",
           "steps_per_epoch", "hyperparameters"]  # fmt: skip


class Run(NamedTuple):
    """The assembled, not yet trained run.

    Attributes:
        problem: what is trained (the STL ensemble of the problem for method ``"stl"``).
        params: the initial parameters, on the run's device.
        state: ``step.init(params, buffers)``.
        loss_fn: the problem's loss under ``--amp`` autocast.
        balancer: from ``method``/``opts``.
        optimizer: :func:`build_optimizer` (``optimizer``, ``lr``, ``weight_decay``, ``scheduler``,
            ``schedule``, ``clip_norm``).
        update_buffers: the problem's BatchNorm update (averaged over ranks), or ``None``.
    """

    problem: Problem
    params: TensorDict
    state: StepState
    loss_fn: LossFn
    balancer: Balancer
    optimizer: optim.Optimizer
    update_buffers: Callable | None


class Steps(NamedTuple):
    """The step, the step used on logged steps (it also computes the T×T cosines), the accumulator."""

    step: Callable
    logged: Callable
    accumulator: Accumulator | None


def _balancer(cfg: Mapping[str, Any]) -> Balancer:
    if cfg["method"] == "stl":
        if cfg["opts"]:
            raise ValueError(f"method 'stl' takes no --opt hyperparameters; got {sorted(cfg['opts'])}")
        return balancers.get("ew")  # members share no parameters: Σ_t ℓ_t trains each on its own task
    return balancers.get(cfg["method"], **cfg["opts"])


def steps_per_epoch(cfg: Mapping[str, Any], problem: Problem, world: World) -> int:
    """Optimizer steps per epoch: global batches of the train split (a short last one kept on one process)."""
    import warnings

    n = len(problem.splits["train"])
    with warnings.catch_warnings():  # the loop warns about a dropped last batch, once
        warnings.simplefilter("ignore")
        drop_last = check_shards(n, int(cfg["batch_size"]), world)
    return num_batches(n, int(cfg["batch_size"]), drop_last=drop_last)


def _schedule_options(cfg: Mapping[str, Any], total: int) -> dict[str, Any]:
    given = dict(cfg.get("schedule") or {})
    if cfg["scheduler"] == "plateau":
        return plateau_options(given)
    if cfg["scheduler"] == "step" and "every_epochs" in given:
        given["every"] = _every_epochs(given, total // max(int(cfg["epochs"]), 1))
    return schedules.options(cfg["scheduler"], total, **given)


def _every_epochs(given: dict[str, Any], per_epoch: int) -> int:
    """``step``'s ``every`` from ``every_epochs`` (LibMTL's ``StepLR(step_size)``, stepped once per epoch)."""
    n = given.pop("every_epochs")
    if "every" in given:
        raise ValueError("schedule 'step' takes every (updates) or every_epochs (epochs), not both")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"schedule 'step': every_epochs must be a whole number of epochs >= 1; got {n!r}")
    return n * max(per_epoch, 1)


def build_optimizer(cfg: Mapping[str, Any], total_steps: int) -> optim.Optimizer:
    """``chain(clip_norm, optimizer(schedule), lr_scale)`` of a run of ``total_steps`` updates.

    The schedule is :func:`fmtl.schedules.get` of ``scheduler`` over the whole run (``plateau``: a
    constant rate whose factor :mod:`fmtl.train.controls` lowers between epochs through
    :func:`fmtl.transforms.lr_scale`); ``clip_norm`` clips the balanced gradient g̃ to that global
    L2 norm before the optimizer sees it. Only the pieces a run asks for are chained (no clipping,
    a step-count schedule: the bare optimizer, whose state is what it always was).

    Deviation: ``cosine``, ``step`` and ``warmup`` span ``epochs`` × steps per epoch; a run extended
    with ``--resume DIR --epochs N`` continues on the schedule of its new length. ``step`` with
    ``every_epochs = E`` multiplies the rate by γ every E epochs (``every`` = E × steps per epoch:
    η_k = η·γ^⌊(k−1)/(E·K)⌋ for update k of K per epoch, LibMTL's per-epoch ``StepLR(step_size=E)``).

    Example:
        >>> from fmtl.train.config import DEFAULTS
        >>> opt = build_optimizer({**DEFAULTS, "lr": 0.1, "weight_decay": 0.0, "scheduler": "plateau",
        ...                        "clip_norm": 1.0}, 100)
        >>> from tensordict import TensorDict
        >>> [type(s).__name__ for s in opt.init(TensorDict({"w": torch.zeros(1)}, []))]
        ['EmptyState', 'AdamState', 'LRScaleState']
    """
    name, lr = cfg["scheduler"], float(cfg["lr"])
    options = _schedule_options(cfg, total_steps)
    rate = lr if name in ("constant", "plateau") else schedules.get(name, lr, total_steps, **options)
    base = optim.get(cfg["optimizer"], rate, weight_decay=float(cfg["weight_decay"]))
    pieces = ([transforms.clip_norm(float(cfg["clip_norm"]))] if cfg.get("clip_norm") else []) + [base] + \
        ([transforms.lr_scale()] if name == "plateau" else [])  # fmt: skip
    return pieces[0] if len(pieces) == 1 else transforms.chain(*pieces)


def hyperparameters(cfg: Mapping[str, Any], total_steps: int) -> dict[str, dict[str, Any]]:
    """The resolved hyperparameters of a run's method, optimizer and scheduler (defaults filled in).

    What ``config.toml`` (the record-only ``[resolved]`` table) and ``results.json`` record.

    Example:
        >>> from fmtl.train.config import DEFAULTS
        >>> cfg = {**DEFAULTS, "lr": 0.1, "weight_decay": 0.0, "opts": {"beta": 0.5}, "scheduler": "step"}
        >>> hp = hyperparameters(cfg, 30)
        >>> hp["method"]["beta"], hp["optimizer"]["betas"], hp["scheduler"]
        (0.5, [0.9, 0.999], {'name': 'step', 'steps': 30, 'every': 10, 'gamma': 0.1})
        >>> hyperparameters({**cfg, "epochs": 3, "schedule": {"every_epochs": 2, "gamma": 0.5}}, 30)["scheduler"]
        {'name': 'step', 'steps': 30, 'every': 20, 'gamma': 0.5, 'every_epochs': 2}
    """
    method = {} if cfg["method"] == "stl" else {**balancers.defaults(cfg["method"]), **cfg["opts"]}
    opt = {**optim.defaults(cfg["optimizer"]), "lr": float(cfg["lr"]), "weight_decay": float(cfg["weight_decay"]),
           "clip_norm": cfg.get("clip_norm")}  # fmt: skip
    sched = {"name": cfg["scheduler"], "steps": int(total_steps), **_schedule_options(cfg, total_steps)}
    if cfg["scheduler"] == "step" and "every_epochs" in (cfg.get("schedule") or {}):
        sched["every_epochs"] = cfg["schedule"]["every_epochs"]

    def plain(d: Mapping[str, Any]) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    return {"method": {"name": cfg["method"], **plain(method)}, "optimizer": {"name": cfg["optimizer"], **plain(opt)},
            "scheduler": plain(sched)}  # fmt: skip


def assemble(cfg: Mapping[str, Any], problem: Problem, world: World) -> Run:
    """The run of ``cfg`` on ``problem``: trained problem, initial params and state on ``world.device``.

    Example:
        >>> from fmtl.train import problems
        >>> from fmtl.train.config import DEFAULTS
        >>> cfg = problems.resolve({**DEFAULTS, "benchmark": "synthetic", "method": "stl", "data": {"n": 16}})
        >>> run = assemble(cfg, problems.build(cfg), World(0, 1, None, torch.device("cpu")))
        >>> run.problem.name, run.params["shared", "members"].batch_size
        ('synthetic-stl', torch.Size([4]))
    """
    if int(cfg["accumulate"]) < 1:
        raise ValueError(f"accumulate must be >= 1; got {cfg['accumulate']}")
    balancer = _balancer(cfg)
    trained = stl.ensemble(problem) if cfg["method"] == "stl" else problem
    optimizer = build_optimizer(cfg, int(cfg["epochs"]) * steps_per_epoch(cfg, trained, world))
    loss_fn = autocast(trained.loss_fn, cfg["amp"], world.device.type)
    update = mean_buffers(trained.update_buffers, world)
    params = world.broadcast(trained.params.to(world.device))  # every rank starts from rank 0's θ, ψ_t
    buffers = trained.buffers.to(world.device) if trained.buffers is not None else ()
    if cfg.get("rep_grad") and not isinstance(loss_fn, TwoStageLoss):
        raise ValueError(f"--rep-grad: benchmark {problem.name!r} has no loss written as encoder and heads "
                         "(fmtl.TwoStageLoss); synthetic and qm9's descriptor MLP have one")  # fmt: skip
    state = make_step(loss_fn, balancer, optimizer, rep_grad=bool(cfg.get("rep_grad"))).init(params, buffers)
    return Run(trained, params, state, loss_fn, balancer, optimizer, update)


def build_steps(run: Run, cfg: Mapping[str, Any], strategy: str, world: World) -> Steps:
    """The (compiled, with ``compile = true``) steps of ``run`` with the concrete task-gradient ``strategy``.

    ``accumulate = K > 1`` puts an :class:`~fmtl.accumulate.Accumulator` in front of the cross-rank
    reduce and runs the balancer in its gradient form (its weights need all K micro-batches).
    """
    K = int(cfg["accumulate"])
    accumulator = Accumulator(run.loss_fn, strategy, cfg["chunk_size"], world.reduce) if K > 1 else None
    balancer = gradient_form(run.balancer) if accumulator is not None else run.balancer

    rep_grad = bool(cfg.get("rep_grad"))
    if rep_grad and world.reduce is not None:
        raise ValueError(f"--rep-grad does not run on {world.size} processes yet (the ranks' representation "
                         "Gramians would have to be summed; fmtl.representation says why)")  # fmt: skip

    # with representation gradients the strategy is the heads' (θ's measured choice does not apply);
    # "auto" runs them in plain autograd eagerly (fmtl.representation). strategy_of no longer measures
    # one for such runs; this maps the θ strategy that checkpoints from before that change hold.
    strategy = "auto" if rep_grad and cfg["strategy"] == "auto" else strategy

    def build(diagnostics: bool) -> Step:
        return make_step(run.loss_fn, balancer, run.optimizer, reduce=accumulator or world.reduce, strategy=strategy,
                         chunk_size=cfg["chunk_size"], diagnostics=diagnostics, rep_grad=rep_grad,
                         update_buffers=run.update_buffers)  # fmt: skip

    def compiled(step: Step) -> Callable:
        return torch.compile(step.__call__, fullgraph=True) if cfg["compile"] else step

    # The logged steps of a gradient balancer also compute the gradient cosines (the T×T Gramian,
    # an extra pass over the task gradients that the other steps skip; the update is the same).
    # A loss balancer logs without them: they would cost it a whole task Jacobian.
    step = compiled(build(False))
    logged = compiled(build(True)) if balancer.loss_weights is None else step
    return Steps(step, logged, accumulator)


def choose_strategy(run: Run, batch: Any, chunk_size: int | None, world: World) -> str:
    """The concrete strategy ``"auto"`` picks for this run, decided once by rank 0 and shared.

    Strategies agree only up to rounding, so a run (and its resume, and every rank) must use one
    and the same: the choice is made once, saved in the checkpoint and reused on resume.
    """
    from ..strategy import choose_strategy as measure

    before = rng.get(world.device)
    choice = [measure(run.loss_fn, run.params, batch, chunk_size=chunk_size)]
    rng.set(before, world.device)  # timing must not move the run's random stream
    if world.size > 1:
        import torch.distributed as dist

        dist.broadcast_object_list(choice, src=0)
    return choice[0]


def strategy_of(run: Run, cfg: Mapping[str, Any], params: TensorDict, extra: dict[str, Any], world: World) -> str:
    """The run's task-gradient strategy: ``cfg["strategy"]``, or for ``"auto"`` the one decided once.

    ``"auto"`` is measured on one micro-batch shard at the run's (restored) ``params`` the first
    time and saved in ``extra["strategy"]`` (the checkpoint's bookkeeping), so that a resumed run
    keeps it. Steps that never take θ's task gradients are not measured: a loss balancer's gets
    ``"loop"``, a representation-gradient run's ``"auto"`` (the heads' own choice).
    """
    if cfg["strategy"] != "auto":
        return cfg["strategy"]
    if "strategy" not in extra and run.balancer.loss_weights is not None and int(cfg["accumulate"]) == 1:
        # A loss balancer's step takes one backward of Σ_t w_t ℓ_t and never the task gradients:
        # measuring their strategies would cost it T backwards (and, for the GNN, a Jacobian pass
        # larger than host memory) for a choice it does not use.
        extra["strategy"] = "loop"
    if "strategy" not in extra and cfg.get("rep_grad"):
        # Representation gradients never take θ's task gradients: the heads' strategy is "auto"
        # (plain autograd eagerly, torch.func compiled; fmtl.representation), so measuring θ's
        # strategies would cost a Jacobian pass per strategy for a choice the step ignores.
        extra["strategy"] = "auto"
    if "strategy" not in extra:
        train_ds, B, K = run.problem.splits["train"], int(cfg["batch_size"]), int(cfg["accumulate"])
        shard = train_ds[torch.arange(min(len(train_ds), max(1, B // world.size // K)))].to(world.device)
        extra["strategy"] = choose_strategy(run._replace(params=params), shard, cfg["chunk_size"], world)
    return extra["strategy"]

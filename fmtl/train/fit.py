"""``fit``: one training run, read top to bottom — configure, prepare, reference, assemble, restore, loop, finish.

:func:`fit` is what ``fmtl train`` does, callable from Python with a :class:`fmtl.train.Problem`
of your own:

1. **configure** — the settings resolved against the problem's defaults and checked
   (:func:`configure`); the resolved configuration identifies the run;
2. **prepare** — the output directory: new, resumable, finished (then the results are reused)
   or another run's (refused) (:func:`fmtl.train.runs.prepare`);
3. **reference** — the STL baseline Δp is measured against: found, or trained first as one
   vectorized ensemble (:func:`fmtl.train.runs.find_stl`, :mod:`fmtl.train.stl`);
4. **assemble** — balancer, optimizer, autocast, accumulation and BatchNorm update composed into
   the pure step on the run's device (:mod:`fmtl.train.assemble`);
5. **restore** — from the checkpoint when resuming (:mod:`fmtl.train.restore`);
6. **loop** — the epochs (:mod:`fmtl.train.loop`), with evaluation and checkpoints;
   after each epoch, the plateau scheduler, early stopping and the ``best.pt`` checkpoint
   (:mod:`fmtl.train.controls`);
7. **finish** — the selected epoch, ``results.json``, plots (:mod:`fmtl.train.finish`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .. import atomic, balancers
from ..amp import DTYPES
from ..optim import names as optimizers
from ..schedules import SCHEDULES
from . import device as devices
from . import problems, runs, validate
from . import world as worlds
from .assemble import assemble, build_optimizer, build_steps, hyperparameters, steps_per_epoch, strategy_of
from .config import DEFAULTS, TABLES, dumps, merge
from .controls import EpochControls
from .evaluate import evaluate_epoch
from .finish import finish, results
from .log import Log
from .loop import TrainingDiverged, loop
from .problem import Problem
from .records import environment
from .restore import Saver, restore
from .selection import stl_reference

__all__ = ["fit", "train", "configure", "resumed", "check", "SCHEDULERS"]

#: The values of ``scheduler`` (``--scheduler``): the step-count schedules, and ``plateau``.
SCHEDULERS = (*SCHEDULES, "plateau")


def check(cfg: Mapping[str, Any], problem: Problem | None = None) -> None:
    """Raises ``ValueError`` naming the first setting of a resolved configuration that cannot run.

    Checked before any data is loaded: the problem (a problem file is imported, so that what
    its top level registers counts), the method and its hyperparameters (their types, then the
    balancer is built once), the optimizer, the scheduler and its options, ``clip_norm``,
    ``patience``, ``amp``, every other setting's type and range and the ``data``/``model`` options
    (:mod:`fmtl.train.validate`). With a ``problem`` object its name need not be registered.

    Example:
        >>> check(configure(None, None, {"benchmark": "synthetic", "method": "nope"}))
        Traceback (most recent call last):
        ...
        ValueError: unknown method 'nope'; valid methods: ...
    """
    name = cfg["benchmark"]
    if problems.is_file(name):
        problems.load_module(name)  # its top level may register the method by name
    elif problem is None and name not in problems.names():
        raise ValueError(f"unknown benchmark {name!r}; valid benchmarks: {', '.join(problems.names())} "
                         "(or --problem FILE.py:NAME)")  # fmt: skip
    method, opts = cfg["method"], cfg["opts"]
    if method == "stl":
        if opts:
            raise ValueError(f"method 'stl' takes no --opt hyperparameters; got {sorted(opts)}")
    elif method not in balancers.names():
        valid = sorted(balancers.names()) + ["stl"]
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(valid)}")
    else:
        validate.opts(method, opts, balancers.factory(method))
        try:
            balancers.get(method, **opts)  # the factory's own range checks, before any data is loaded
        except (TypeError, ValueError, ArithmeticError) as e:
            raise ValueError(f"--opt for method {method!r}: {e}") from None
    if cfg["optimizer"] not in optimizers():
        raise ValueError(f"unknown optimizer {cfg['optimizer']!r}; valid: {', '.join(optimizers())}")
    if cfg["amp"] not in DTYPES:
        raise ValueError(f"amp must be one of {list(DTYPES)}; got {cfg['amp']!r}")
    validate.settings(cfg)
    validate.tables(cfg)
    validate.rep_grad(cfg)
    if cfg["scheduler"] not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {cfg['scheduler']!r}; valid: {', '.join(SCHEDULERS)}")
    try:
        build_optimizer(cfg, 1)  # unknown or ill-typed scheduler options fail here, before any data is loaded
    except (TypeError, ValueError, ArithmeticError) as e:
        raise ValueError(f"--schedule: {e}") from None


def resumed(saved: Mapping[str, Any], file_layer: Mapping[str, Any] | None, flags: Mapping[str, Any],
            out: str | os.PathLike[str]) -> dict[str, Any]:  # fmt: skip
    """The configuration of ``--resume DIR``: the saved one; a setting given that differs from it is refused.

    Only :data:`fmtl.train.config.RESUMABLE` settings (``epochs``: train longer) may change.

    Example:
        >>> saved = configure(None, None, {"benchmark": "synthetic", "method": "ew", "lr": 0.01})
        >>> resumed(saved, None, {"epochs": 9, "lr": 0.01}, "runs/x")["epochs"]
        9
        >>> resumed(saved, None, {"lr": 0.02}, "runs/x")
        Traceback (most recent call last):
        ...
        ValueError: --resume runs/x: lr was 0.01 when the run started, not 0.02; a resumed run keeps ...
    """
    from .config import RESUMABLE, differences

    new = configure(None, saved, {"benchmark": saved["benchmark"], **(file_layer or {})})
    new = configure(None, new, flags)
    diff = differences(saved, new)
    if diff:
        key = diff[0]
        raise ValueError(f"--resume {out}: {key} was {validate.shown(saved.get(key))} when the run started, not "
                         f"{validate.shown(new.get(key))}; a resumed run keeps its settings except {list(RESUMABLE)} "
                         "(start a new run with another --out, or --overwrite)")  # fmt: skip
    return new


def configure(problem: Problem | None, config: Mapping[str, Any] | None, settings: Mapping[str, Any]) -> dict:
    """The resolved run configuration: defaults ← ``config`` ← ``settings``, the problem's defaults filled in.

    A :class:`Problem` object names the run's ``benchmark`` (its ``name``); problems that are not
    registered get :data:`fmtl.train.problems.GENERIC_SETTINGS`. A benchmark's defaults for the
    method (:func:`fmtl.train.problems.method_defaults`) go under the given ``opts``.

    Example:
        >>> cfg = configure(None, {"benchmark": "synthetic"}, {"method": "ew", "opts": {}, "epochs": 2})
        >>> cfg["method"], cfg["epochs"], cfg["batch_size"]
        ('ew', 2, 64)
        >>> configure(None, None, {"benchmark": "qm9", "method": "dbmtl", "opts": {"beta": 0.9}})["opts"]
        {'beta': 0.9, 'beta_sigma': 0.5}
        >>> configure(None, None, {"epoch": 2})
        Traceback (most recent call last):
        ...
        ValueError: unknown setting(s) ['epoch']; valid: ...
    """
    unknown = sorted(set(settings) - set(DEFAULTS) - set(TABLES))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; valid: {sorted(DEFAULTS) + list(TABLES)}")
    for layer in (config or {}, settings):
        validate.layer(layer)
    cfg = merge(DEFAULTS, config or {}, settings)
    if problem is not None:
        cfg["benchmark"] = problem.name
    # The benchmark's own defaults for this method (e.g. qm9's β for DB-MTL), under what was given.
    cfg["opts"] = {**problems.method_defaults(cfg["benchmark"], cfg["method"]), **(cfg.get("opts") or {})}
    return runs.normalize(cfg)


def _rng_fork(device: torch.device):
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def fit(
    problem: Problem | None = None,
    out: str | os.PathLike[str] | None = None,
    *,
    config: Mapping[str, Any] | None = None,
    stl: str | os.PathLike[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device | None = None,
    quiet: bool = False,
    tensorboard: bool = False,
    plots: bool = True,
    **settings: Any,
) -> dict[str, Any]:
    """Trains ``problem`` with one method into ``out`` and returns its results (``results.json``).

    Args:
        problem: a :class:`fmtl.train.Problem` (e.g. :meth:`~fmtl.train.Problem.from_modules`), or
            ``None`` to build the one the configuration names (``benchmark = "qm9"``, or a
            ``"FILE.py:NAME"`` problem file).
        out: the run directory (default ``runs/<problem>-<method>-seed<S>``).
        config: a configuration (e.g. a run's ``config.toml``), under ``settings``.
        stl: the STL reference for Δp: ``None`` (trained first into a sibling directory, then
            reused), ``"none"`` (no Δp), or a finished STL run's directory.
        resume: continue the unfinished run in ``out`` (bitwise equal to an uninterrupted run).
        overwrite: replace a different run in ``out`` (only fmtl's files are deleted).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` … (default: CUDA when available, else CPU).
        quiet: no progress bar and no per-epoch lines.
        tensorboard: also write TensorBoard events (if the package is installed).
        plots: write the PNG plots at the end.
        **settings: run settings (:data:`fmtl.train.config.DEFAULTS`: ``method``, ``epochs``,
            ``batch_size``, ``lr``, ``optimizer``, ``seed``, ``amp``, ``accumulate``, ``compile`` …)
            and the tables ``opts`` (the method's hyperparameters), ``data``, ``model``.

    Returns:
        The run's results, plus ``"reused": True`` when ``out`` held this finished run already.

    Raises:
        TrainingDiverged: a non-finite loss or gradient (names the tasks and the step).
        fmtl.train.runs.RunDirError: ``out`` holds another run, or an unfinished one without ``resume``.
        fmtl.train.checkpoint.CheckpointError: ``resume`` with an unusable checkpoint.
    """
    cfg = configure(problem, config, settings)
    check(cfg, problem)
    out = Path(out) if out is not None else runs.default_out(cfg)
    world = worlds.start(devices.resolve(device))
    try:
        with contextlib.ExitStack() as held:
            todo, stl_todo, stl_dir, reference = world.decide(lambda: _plan(held, cfg, out, stl, resume, overwrite))
            if todo == "finished":
                return {**runs.read_results(out), "reused": True} if world.main else {"reused": True}
            if problem is None:
                with _rng_fork(torch.device("cpu")):
                    problem = problems.build(cfg)
            if stl_todo in ("new", "resume"):
                if not quiet and world.main:
                    print(f"fmtl: training the STL baseline first (all single-task models as one vectorized "
                          f"ensemble) into {stl_dir}; later runs with the same settings reuse it",
                          flush=True)  # fmt: skip
                scfg = runs.normalize(runs.stl_config(cfg))
                res = train(scfg, stl_dir, problem=problem, resume=stl_todo == "resume", quiet=quiet, device=device,
                            world=world)  # fmt: skip
                reference = stl_reference(res) if world.main else None  # only rank 0 evaluates
            res = train(cfg, out, problem=problem, resume=todo == "resume", stl_reference=reference,
                        stl_dir=None if stl_dir is None else str(stl_dir), quiet=quiet, tensorboard=tensorboard,
                        plots=plots, device=device, world=world)  # fmt: skip
    finally:
        world.stop()
    return {**res, "reused": False}


def _plan(held: contextlib.ExitStack, cfg: Mapping[str, Any], out: Path, stl: Any, resume: bool,
          overwrite: bool) -> tuple[str, str, Path | None, dict | None]:  # fmt: skip
    """What to do (rank 0 only): lock ``out`` (and the default STL directory), then prepare both."""
    held.enter_context(runs.lock(out))
    stl = runs.stl_choice(out, None if stl is None else str(stl), resume)
    todo = runs.prepare(out, cfg, resume=resume, overwrite=overwrite)
    if todo == "finished":
        return todo, "none", None, None
    if stl is None and cfg["method"] != "stl":
        held.enter_context(runs.lock(runs.default_stl_dir(out, cfg)))
    reference, stl_dir, stl_todo = runs.find_stl(cfg, out, stl)
    return todo, stl_todo, stl_dir, reference


def train(
    cfg: Mapping[str, Any],
    out: str | os.PathLike[str],
    *,
    problem: Problem | None = None,
    resume: bool = False,
    stl_reference: Mapping[str, Any] | None = None,
    stl_dir: str | None = None,
    quiet: bool = False,
    tensorboard: bool = False,
    plots: bool = True,
    device: str | torch.device | None = None,
    world: worlds.World | None = None,
) -> dict[str, Any]:
    """Trains the run ``cfg`` into the prepared directory ``out``: assemble → restore → loop → finish.

    Args:
        cfg: a resolved configuration (:func:`configure`).
        out: output directory (created; its contents are managed by :mod:`fmtl.train.runs`).
        problem: the problem (default: built from ``cfg["benchmark"]``).
        resume: continue from ``out/checkpoint.pt`` (bitwise equal to an uninterrupted run).
        stl_reference: STL's ``{"val", "test"}`` metrics for Δp and model selection.
        stl_dir: where the reference came from (recorded in the results).
        quiet, tensorboard, plots, device: as for :func:`fit`.
        world: the processes of the run, when the caller started them (:func:`fit` trains STL and then
            the method in one process group); default: started here and stopped at the end.
    """
    out = Path(out)
    own = world is None
    world = worlds.start(devices.resolve(device)) if own else world
    if world.main:
        out.mkdir(parents=True, exist_ok=True)
    with _rng_fork(world.device):
        torch.manual_seed(int(cfg["seed"]))  # dropout masks follow the run's seed
        problem = problem if problem is not None else problems.build(cfg)
        run = assemble(cfg, problem, world)
        params, state, progress, resumed = restore(out, dict(cfg), run.params, run.state, len(run.problem.tasks),
                                                   world.device, resume)  # fmt: skip
        steps = build_steps(run, cfg, strategy_of(run, cfg, params, progress.extra, world), world)
        # a run not resumed from a checkpoint starts metrics.jsonl afresh (a killed start may have left one)
        truncate = progress.extra["metrics_bytes"] if resumed else 0
        reference = stl_reference if cfg["method"] != "stl" else None
        hp = hyperparameters(cfg, int(cfg["epochs"]) * steps_per_epoch(cfg, run.problem, world))
        env = environment(world.device)
        controls = EpochControls(cfg, run.problem.metrics, reference, progress.extra, world)
        if world.main:  # first: a directory with any other file of the run then always says which run it is
            record = runs.reference_record(stl_dir) if cfg["method"] != "stl" else {}
            atomic.write(out / runs.CONFIG, dumps({**cfg, **record, "environment": env, "resolved": hp}))
        with Log(out, world.main, tensorboard, truncate, run.problem.tasks,
                 progress.position["step"] if resumed else None) as log:  # fmt: skip
            save = Saver(out, dict(cfg), progress, log, world.main, world.device)
            save_best = Saver(out, dict(cfg), progress, log, world.main, world.device, name=runs.BEST)

            def after_epoch(history: list, p: Any, s: Any) -> tuple[Any, bool]:
                decision = controls(history, s)
                if decision.best:
                    save_best(p, decision.state)
                return decision.state, decision.stop

            def evaluate(p: Any, s: Any, epoch: int) -> dict[str, Any]:
                buffers = s.buffers if run.problem.buffers is not None else None
                return {"epoch": epoch, "step": progress.position["step"],
                        **evaluate_epoch(run.problem, p, buffers, batch_size=int(cfg["eval_batch_size"]),
                                         device=world.device, reference=reference)}  # fmt: skip

            t0 = time.perf_counter() - float(progress.extra["wall_s"])
            try:
                params, state = loop(cfg, run.problem, steps, params, state, progress, world=world, log=log,
                                     save=save, evaluate=evaluate, after_epoch=after_epoch, quiet=quiet)  # fmt: skip
            except TrainingDiverged as e:
                raise TrainingDiverged(f"training diverged at {e}; {save.intact()}") from None
            res = results(cfg, run.problem, progress, reference=stl_reference, stl_dir=stl_dir,
                          wall=time.perf_counter() - t0, world_size=world.size, device=str(world.device),
                          hyperparameters=hp, environment=env) if world.main else {}  # fmt: skip
            log.hparams(cfg, res)
        if world.main:
            finish(out, res, plots)
    if own:
        world.stop()
    return res


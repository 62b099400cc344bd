"""The training loop: a thin, resumable driver around the pure ``make_step``.

One run = one resolved configuration (:mod:`fmtl.train.config`) trained into one output directory:

* data order: epoch e visits ``fmtl.data.batch_indices(seed, e)``; a checkpoint stores
  ``(epoch, batch, step)`` so a resumed run sees exactly the batches it would have seen;
* each optimizer step is ``params, state, info = step(params, state, batch)`` — per-task
  gradients, balancer, optimizer all inside the pure step (``torch.compile(fullgraph=True)``
  with ``compile = true``);
* ``accumulate = K`` splits each batch into K micro-batches and sums their *per-task*
  gradients, weighted by size, before the balancer (:class:`Accumulator`), so the balancer —
  DB-MTL's log transform, EMA ĝ_t and norms — sees the full-batch task gradients;
* every epoch: validation and test metrics (:mod:`fmtl.train.evaluate`), a checkpoint
  (:mod:`fmtl.train.checkpoint`); at the end the epoch selected on validation (:mod:`fmtl.train.selection`),
  ``results.json`` and plots.

Under ``torchrun`` (``WORLD_SIZE > 1``) each rank reads its shard of every global batch, the
step averages losses and task gradients over ranks before the balancer
(``fmtl.distributed.allreduce``) and only rank 0 evaluates and writes files.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict

from .. import balancers, optim
from ..base import Balancer, TaskGradients
from ..data import batch_indices, num_batches
from ..step import Step, make_step
from ..task_gradients import LossFn, task_gradients
from . import checkpoint, problems, stl
from .config import dumps
from .evaluate import evaluate
from .selection import directions, select

__all__ = ["TrainingDiverged", "Accumulator", "make_optimizer", "autocast_loss", "train", "OPTIMIZERS"]

OPTIMIZERS = ("adam", "adamw", "sgd")
CHECKPOINT, METRICS, RESULTS, CONFIG = "checkpoint.pt", "metrics.jsonl", "results.json", "config.toml"


class TrainingDiverged(RuntimeError):
    """A loss or gradient became non-finite; the last good checkpoint was left untouched."""


def make_optimizer(name: str, lr: float, weight_decay: float = 0.0) -> optim.Optimizer:
    """The functional optimizer called ``name`` (one of :data:`OPTIMIZERS`).

    Example:
        >>> make_optimizer("sgd", 0.1).init.__name__
        'init'
        >>> make_optimizer("lion", 0.1)
        Traceback (most recent call last):
        ...
        ValueError: unknown optimizer 'lion'; valid: adam, adamw, sgd
    """
    if name == "adam":
        return optim.adam(lr, weight_decay=weight_decay)
    if name == "adamw":
        return optim.adamw(lr, weight_decay=weight_decay)
    if name == "sgd":
        return optim.sgd(lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")


def autocast_loss(loss_fn: LossFn, amp: str) -> LossFn:
    """``loss_fn`` under ``torch.autocast(dtype=bfloat16)`` for ``amp="bf16"``; losses come back fp32.

    Example:
        >>> import torch
        >>> f = autocast_loss(lambda p, b: (b @ b).reshape(1), "bf16")
        >>> f(None, torch.ones(3)).dtype
        torch.float32
    """
    if amp in ("none", "", None):
        return loss_fn
    if amp != "bf16":
        raise ValueError(f"amp must be 'none' or 'bf16'; got {amp!r}")

    def amp_loss(params: TensorDict, batch: Any) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = loss_fn(params, batch)
        return losses.float()

    return amp_loss


def _axpy(a: float, x: TaskGradients, y: TaskGradients | None) -> TaskGradients:
    """a·x + y over every field of a TaskGradients (y = None means 0)."""
    if y is None:
        return TaskGradients(x.losses * a, x.shared.apply(lambda u: u * a), x.tasks.apply(lambda u: u * a))
    return TaskGradients(
        y.losses + x.losses * a,
        y.shared.apply(lambda v, u: v + u * a, x.shared),
        y.tasks.apply(lambda v, u: v + u * a, x.tasks),
    )


class Accumulator:
    """Gradient accumulation *before* the balancer, as the ``reduce`` hook of ``make_step``.

    For K micro-batches B_1…B_K of one batch B (sizes n_k, Σ n_k = n) and mean-reduced losses:

    .. math::
        \\ell_t(B) = \\sum_k \\frac{n_k}{n} \\ell_t(B_k), \\qquad
        J(B) = \\sum_k \\frac{n_k}{n} J(B_k)

    The driver calls :meth:`add` for micro-batches 1…K−1 (``task_gradients``, no update), then
    the step on micro-batch K; the step's ``reduce`` hook (this object) adds the pending sum to
    the step's own task gradients before the balancer sees them (then applies ``outer``, e.g.
    the cross-rank mean). The step's balancer, optimizer and non-finite checks are untouched.
    Loss balancers must run in their gradient form (``Balancer(init, update)``), because their
    weights are only known once all micro-batches are in.
    """

    def __init__(self, loss_fn: LossFn, strategy: str, chunk_size: int | None, outer: Callable | None) -> None:
        self.loss_fn, self.strategy, self.chunk_size, self.outer = loss_fn, strategy, chunk_size, outer
        self.pending: TaskGradients | None = None
        self.last_fraction = 1.0

    def add(self, params: TensorDict, batch: Any, fraction: float) -> None:
        """Adds ``fraction`` × the task gradients of one micro-batch to the pending sum."""
        g = task_gradients(self.loss_fn, params, batch, strategy=self.strategy, chunk_size=self.chunk_size)
        self.pending = _axpy(fraction, g, self.pending)

    def __call__(self, grads: TaskGradients) -> TaskGradients:
        total = _axpy(self.last_fraction, grads, self.pending)
        self.pending = None
        return self.outer(total) if self.outer is not None else total


def write_atomic(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and ``os.replace`` (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _gradient_form(balancer: Balancer) -> Balancer:
    return Balancer(balancer.init, balancer.update, None)


def _distributed() -> tuple[int, int, Callable | None]:
    """(rank, world size, reduce hook); a single process unless torchrun started several."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and not (dist.is_available() and dist.is_initialized()):
        return 0, 1, None
    from .. import distributed

    ctx = distributed.setup()
    if ctx.world_size <= 1:
        return 0, 1, None
    return ctx.rank, ctx.world_size, distributed.allreduce()


def _check_shards(n: int, batch_size: int, world: int, main: bool) -> bool:
    """``drop_last`` for a run on ``world`` ranks: equal shards or a clear error.

    The cross-rank mean of per-rank mean losses is the global-batch mean only when every rank
    holds as many rows as the others, so the global batch must split evenly; a short last batch
    that does not split evenly is dropped (a single process keeps it, so say so).
    """
    if world <= 1:
        return False
    if batch_size % world:
        raise ValueError(f"--batch-size {batch_size} is the global batch and must be divisible by the "
                         f"{world} processes (equal shards keep the run equal to one process)")  # fmt: skip
    drop = (n % batch_size) % world != 0
    if drop and main:
        warnings.warn(f"the last batch of {n % batch_size} rows does not split evenly over {world} "
                      "processes: it is dropped every epoch, so this run differs from a single-process run",
                      stacklevel=2)  # fmt: skip
    return drop


def _floats(x: torch.Tensor) -> list:
    return [float(v) for v in x.detach().double().reshape(-1).tolist()] if x.dim() <= 1 else [_floats(r) for r in x]


def _nonfinite_tasks(tasks: tuple[str, ...], losses: torch.Tensor) -> list[str]:
    return [t for t, ok in zip(tasks, torch.isfinite(losses).tolist(), strict=True) if not ok]


class _Log:
    """metrics.jsonl (+ TensorBoard) writer; a no-op on ranks other than 0."""

    def __init__(self, out: Path, active: bool, tensorboard: bool, truncate_to: int | None) -> None:
        self.active, self.tb, self.f = active, None, None
        if not active:
            return
        path = out / METRICS
        if truncate_to is not None and path.exists():
            # Lines written after the checkpoint describe steps that will be redone.
            with open(path, "r+b") as f:
                f.truncate(truncate_to)
        self.f = open(path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                print("fmtl: --tensorboard needs the tensorboard package (pip install tensorboard); "
                      "continuing without it", file=sys.stderr)  # fmt: skip

    def write(self, record: Mapping[str, Any]) -> None:
        if self.f is not None:
            self.f.write(json.dumps(record, allow_nan=True) + "\n")

    def scalars(self, prefix: str, values: Mapping[str, float], step: int) -> None:
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"{prefix}/{k}", v, step)

    def size(self) -> int:
        if self.f is None:
            return 0
        self.f.flush()
        os.fsync(self.f.fileno())
        return self.f.tell()

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
        if self.tb is not None:
            self.tb.close()


def _progress(total: int, initial: int, desc: str, quiet: bool, active: bool):
    from tqdm import tqdm

    disable = quiet or not active or not sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, unit="step", file=sys.stderr, disable=disable,
                dynamic_ncols=True, leave=False)  # fmt: skip


def _say(msg: str, quiet: bool, active: bool) -> None:
    if active and not quiet:
        from tqdm import tqdm

        tqdm.write(msg, file=sys.stderr)


def _short(tasks: tuple[str, ...], values: list[float]) -> str:
    return " ".join(f"{t}={v:.3g}" for t, v in zip(tasks, values, strict=True))


def _assemble(cfg: Mapping[str, Any], problem: problems.Problem, dist_reduce: Callable | None, strategy: str):
    """(initial params, predict, step, accumulator, loss_fn) of a run: the model (or the STL
    ensemble), the balancer, the optimizer, bf16 autocast and gradient accumulation composed into
    ``make_step`` with the task-gradient ``strategy``."""
    model, tasks, method = problem.model, problem.tasks, cfg["method"]
    if model.buffers is not None:
        raise NotImplementedError("models with BatchNorm running statistics are not supported by the training loop yet")
    K = int(cfg["accumulate"])
    if K < 1:
        raise ValueError(f"accumulate must be >= 1; got {K}")
    if method == "stl":
        if cfg["opts"]:
            raise ValueError(f"method 'stl' takes no --opt hyperparameters; got {sorted(cfg['opts'])}")
        params, loss_fn, predict = stl.ensemble(model.params, model.apply, problem.loss_fn, tasks, problem.input_key)
        balancer = balancers.get("ew")
    else:
        params, loss_fn = model.params, problem.loss_fn
        balancer = balancers.get(method, **cfg["opts"])

        def predict(p: TensorDict, batch: Any) -> dict[str, torch.Tensor]:
            return model.apply(p, batch if problem.input_key is None else batch[problem.input_key])

    loss_fn = autocast_loss(loss_fn, cfg["amp"])
    optimizer = make_optimizer(cfg["optimizer"], float(cfg["lr"]), float(cfg["weight_decay"]))
    accumulator = Accumulator(loss_fn, strategy, cfg["chunk_size"], dist_reduce) if K > 1 else None
    balancer = _gradient_form(balancer) if accumulator is not None else balancer

    def build(diagnostics: bool) -> Step:
        return make_step(loss_fn, balancer, optimizer, reduce=accumulator if accumulator is not None else dist_reduce,
                         strategy=strategy, chunk_size=cfg["chunk_size"], diagnostics=diagnostics)  # fmt: skip

    # The logged steps of a gradient balancer also compute the gradient cosines (the T×T Gramian,
    # an extra pass over the task gradients that the other steps skip; the update is the same).
    # A loss balancer logs without them: they would cost it a whole task Jacobian.
    step = build(False)
    logged_step = build(True) if balancer.loss_weights is None else step
    return params, predict, (step, logged_step), accumulator, loss_fn


def _resolve_strategy(loss_fn: LossFn, params: TensorDict, batch: Any, chunk_size: int | None, world: int) -> str:
    """The concrete strategy ``"auto"`` picks for this run, decided once by rank 0 and shared.

    Strategies agree only up to rounding, so a run (and its resume, and every rank) must use one
    and the same: the choice is made here, saved in the checkpoint and reused on resume.
    """
    from ..strategy import choose_strategy

    rng = torch.get_rng_state()
    choice = [choose_strategy(loss_fn, params, batch, chunk_size=chunk_size)]
    torch.set_rng_state(rng)  # timing must not move the run's random stream
    if world > 1:
        import torch.distributed as dist

        dist.broadcast_object_list(choice, src=0)
    return choice[0]


def train(
    cfg: Mapping[str, Any],
    out: str | os.PathLike[str],
    *,
    resume: bool = False,
    stl_reference: Mapping[str, Any] | None = None,
    stl_dir: str | None = None,
    quiet: bool = False,
    tensorboard: bool = False,
    plots: bool = True,
) -> dict[str, Any]:
    """Trains one run into ``out`` and returns its results (also written to ``results.json``).

    Args:
        cfg: a resolved configuration (``fmtl.train.problems.resolve``).
        out: output directory (created; its contents are managed by :mod:`fmtl.train.runs`).
        resume: continue from ``out/checkpoint.pt`` (bitwise equal to an uninterrupted run).
        stl_reference: STL's ``{"val", "test"}`` metrics for Δp and model selection.
        stl_dir: where the reference came from (recorded in the results).
        quiet: no progress bar and no epoch lines.
        tensorboard: also write TensorBoard events (if the package is installed).
        plots: write the PNG plots at the end.

    Raises:
        TrainingDiverged: a non-finite loss or gradient (names the tasks and the step).
        fmtl.train.checkpoint.CheckpointError: ``resume`` with an unusable checkpoint.
    """
    out = Path(out)
    rank, world, dist_reduce = _distributed()
    main = rank == 0
    if main:
        out.mkdir(parents=True, exist_ok=True)
    problem = problems.build(cfg)
    tasks, method = problem.tasks, cfg["method"]
    hib = directions(problem.task_info)
    K = int(cfg["accumulate"])
    params, predict, steps, accumulator, loss_fn = _assemble(cfg, problem, dist_reduce, cfg["strategy"])
    state = steps[0].init(params)

    train_ds = problem.splits["train"]
    B, E = int(cfg["batch_size"]), int(cfg["epochs"])
    drop_last = _check_shards(len(train_ds), B, world, main)
    steps_per_epoch = num_batches(len(train_ds), B, drop_last=drop_last)
    if world > 1:
        from .. import distributed

        params = distributed.broadcast(params)  # every rank starts from rank 0's θ, ψ_t
    history: list[dict] = []
    position = {"epoch": 0, "batch": 0, "step": 0}
    extra: dict[str, Any] = {"wall_s": 0.0, "epoch_loss_sum": [0.0] * len(tasks), "epoch_steps": 0,
                             "metrics_bytes": 0}  # fmt: skip
    ckpt_path = out / CHECKPOINT
    if resume and ckpt_path.exists():
        payload = checkpoint.load(ckpt_path)
        saved = {k: v for k, v in payload["config"].items() if k != "epochs"}
        if saved != {k: v for k, v in json.loads(json.dumps(cfg)).items() if k != "epochs"}:
            raise checkpoint.CheckpointError(
                f"{ckpt_path} was written by a different configuration than {out / CONFIG}; "
                "refusing to resume (start over with --overwrite)"
            )
        params, state = checkpoint.restore(payload, params, state)
        position, history, extra = dict(payload["position"]), list(payload["history"]), {**extra, **payload["extra"]}
        torch.set_rng_state(payload["rng"])
    if cfg["strategy"] == "auto":
        if "strategy" not in extra:
            shard = train_ds[torch.arange(min(len(train_ds), max(1, B // world // K)))]
            extra["strategy"] = _resolve_strategy(loss_fn, params, shard, cfg["chunk_size"], world)
        _, predict, steps, accumulator, _ = _assemble(cfg, problem, dist_reduce, extra["strategy"])
    run_step = torch.compile(steps[0].__call__, fullgraph=True) if cfg["compile"] else steps[0]
    run_logged_step = run_step if steps[1] is steps[0] else (
        torch.compile(steps[1].__call__, fullgraph=True) if cfg["compile"] else steps[1])  # fmt: skip
    # Resuming drops log lines written after the checkpoint (or all of them when none was written).
    log = _Log(out, main, tensorboard, (extra["metrics_bytes"] if ckpt_path.exists() else 0) if resume else None)
    if main:
        write_atomic(out / CONFIG, dumps(cfg))
    if main and position["step"] == 0:
        log.write({"type": "header", "tasks": list(tasks), "method": method, "benchmark": cfg["benchmark"],
                   "steps_per_epoch": steps_per_epoch, "world_size": world})  # fmt: skip

    def save_checkpoint() -> None:
        if main:
            extra["metrics_bytes"] = log.size()
            checkpoint.save(ckpt_path, params=params, state=state, position=position, config=cfg,
                            history=history, extra=extra)  # fmt: skip

    def evaluate_epoch(epoch: int) -> dict[str, Any]:
        bs = int(cfg["eval_batch_size"])
        with torch.no_grad():
            val = evaluate(lambda b: predict(params, b), problem.splits["val"], tasks, bs)
            test = evaluate(lambda b: predict(params, b), problem.splits["test"], tasks, bs)
        rec = {"epoch": epoch, "step": position["step"], "val": val, "test": test}
        if stl_reference is not None and method != "stl":
            from ..metrics import delta_p

            rec["val_delta_p"] = delta_p(val["metrics"], stl_reference["val"], hib)
            rec["test_delta_p"] = delta_p(test["metrics"], stl_reference["test"], hib)
        return rec

    last_good = f"{ckpt_path} (epoch {position['epoch']}, step {position['step']})" if ckpt_path.exists() else None
    log_every, ckpt_every = max(1, int(cfg["log_every"])), int(cfg["checkpoint_every"])
    t_start = time.perf_counter() - float(extra["wall_s"])
    try:
        while position["epoch"] < E:
            epoch = position["epoch"]
            bar = _progress(steps_per_epoch, position["batch"], f"{method} epoch {epoch + 1}/{E}", quiet, main)
            t_window, n_window = time.perf_counter(), 0
            for idx in batch_indices(len(train_ds), B, seed=int(cfg["seed"]), epoch=epoch, rank=rank,
                                     world_size=world, start=position["batch"], drop_last=drop_last):  # fmt: skip
                if accumulator is not None:
                    micro = [m for m in torch.tensor_split(idx, K) if len(m)]
                    for m in micro[:-1]:
                        accumulator.add(params, train_ds[m], len(m) / len(idx))
                    accumulator.last_fraction = len(micro[-1]) / len(idx)
                    batch = train_ds[micro[-1]]
                else:
                    batch = train_ds[idx]
                k = position["step"]
                try:
                    logged = (k + 1) % log_every == 0
                    new_params, new_state, info = (run_logged_step if logged else run_step)(params, state, batch)
                except FloatingPointError as e:
                    raise TrainingDiverged(
                        f"step {k + 1} (epoch {epoch + 1}, batch {position['batch'] + 1}): {e}"
                    ) from None
                if cfg["compile"] and not bool(info["ok"]):
                    bad = _nonfinite_tasks(tasks, info["losses"]) or ["(the balanced update)"]
                    raise TrainingDiverged(f"step {k + 1} (epoch {epoch + 1}, batch {position['batch'] + 1}): "
                                           f"non-finite loss or gradient in tasks {bad}")  # fmt: skip
                params, state = new_params, new_state
                if world > 1:
                    distributed.check_replicated((params, state), what="params and state")  # FMTL_DISTRIBUTED_DEBUG=1
                position["batch"] += 1
                position["step"] += 1
                losses = _floats(info["losses"])
                extra["epoch_loss_sum"] = [a + b for a, b in zip(extra["epoch_loss_sum"], losses, strict=True)]
                extra["epoch_steps"] += 1
                n_window += len(idx) * world
                bar.update(1)
                if position["step"] % log_every == 0:
                    now = time.perf_counter()
                    rate = n_window / max(now - t_window, 1e-9)
                    t_window, n_window = now, 0
                    rec = {"type": "step", "step": position["step"], "epoch": epoch, "batch": position["batch"],
                           "losses": dict(zip(tasks, losses, strict=True)),
                           "weights": dict(zip(tasks, _floats(info["weights"]), strict=True)),
                           "grad_norms": dict(zip(tasks, _floats(info["grad_norms"]), strict=True)),
                           "cosine": _floats(info["cosine"]), "samples_per_s": rate}  # fmt: skip
                    log.write(rec)
                    log.scalars("train_loss", rec["losses"], position["step"])
                    log.scalars("weight", rec["weights"], position["step"])
                    bar.set_postfix_str(f"{rate:.0f} samples/s {_short(tasks, losses)}", refresh=False)
                if ckpt_every and position["step"] % ckpt_every == 0 and position["batch"] < steps_per_epoch:
                    extra["wall_s"] = time.perf_counter() - t_start
                    save_checkpoint()
                    last_good = f"{ckpt_path} (epoch {epoch}, step {position['step']})"
            bar.close()
            rec = evaluate_epoch(epoch) if main else {"epoch": epoch}
            n = max(extra["epoch_steps"], 1)
            rec["train_loss"] = {t: s / n for t, s in zip(tasks, extra["epoch_loss_sum"], strict=True)}
            position = {"epoch": epoch + 1, "batch": 0, "step": position["step"]}
            extra["epoch_loss_sum"], extra["epoch_steps"] = [0.0] * len(tasks), 0
            extra["wall_s"] = time.perf_counter() - t_start
            rec["wall_s"] = extra["wall_s"]
            history.append(rec)
            if main:
                log.write({"type": "epoch", **rec})
                log.scalars("val_normalized_error", rec["val"]["normalized"], position["step"])
                dp = f", val Δp {rec['val_delta_p']:+.2f}%" if "val_delta_p" in rec else ""
                mne = sum(rec["val"]["normalized"].values()) / len(tasks)
                _say(f"[{method}] epoch {epoch + 1}/{E}: train loss {sum(rec['train_loss'].values()):.4g}, "
                     f"val mean normalized error {mne:.4f}{dp} ({extra['wall_s']:.0f} s)", quiet, main)  # fmt: skip
            save_checkpoint()
            last_good = f"{ckpt_path} (epoch {position['epoch']}, step {position['step']})"
    except TrainingDiverged as e:
        log.close()
        where = f"the last good checkpoint {last_good} is intact" if last_good else "no checkpoint was written yet"
        raise TrainingDiverged(f"training diverged at {e}; {where}") from None
    except BaseException:
        log.close()
        raise
    wall = time.perf_counter() - t_start
    results: dict[str, Any] = {}
    if main:
        selected = select(history, hib, None if method == "stl" else stl_reference, per_task=method == "stl")
        results = {
            "benchmark": cfg["benchmark"], "method": method, "seed": cfg["seed"], "tasks": list(tasks),
            "units": {t: problem.task_info[t].unit for t in tasks},
            "metrics": {t: list(problem.task_info[t].metrics) for t in tasks},
            "higher_is_better": hib, "selected": selected, "delta_p": selected["delta_p"],
            "final_test": history[-1]["test"]["metrics"], "epochs": E, "steps": position["step"],
            "wall_time_s": wall, "stl_dir": stl_dir, "world_size": world, "config": dict(cfg),
        }  # fmt: skip
        if method != "stl" and stl_reference is None:
            results["note"] = ("no STL reference: the epoch was selected on the validation mean normalized "
                               "error and Δp is not available")  # fmt: skip
        write_atomic(out / RESULTS, json.dumps(results, indent=1, allow_nan=True))
        log.close()
        if plots:
            from .plots import plot_run

            plot_run(out)
    else:
        log.close()
    if world > 1:
        distributed.shutdown()
    return results

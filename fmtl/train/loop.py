"""The training loop: epochs of ``params, state, info = step(params, state, batch)``, resumable mid-epoch.

* data order: epoch e visits ``fmtl.data.batch_indices(seed, e)`` (:func:`train_batches`: read in
  this process, or by DataLoader workers for a problem with ``stream`` options);
  :class:`~fmtl.train.restore.Progress` stores ``(epoch, batch, step)`` so a resumed run sees exactly
  the batches it would have seen;
* each optimizer step is one call of the pure step (per-task gradients, balancer, optimizer and
  the BatchNorm update inside; compiled with ``compile = true``);
* ``accumulate = K`` splits each batch into K micro-batches whose *per-task* gradients the
  accumulator sums, weighted by size, before the balancer (:mod:`fmtl.accumulate`);
* every ``log_every`` steps a step record goes to ``metrics.jsonl``; every epoch the validation
  and test metrics are evaluated and a checkpoint is written (also every ``checkpoint_every``
  steps inside an epoch);
* after each epoch, ``after_epoch`` may change the learning-rate factor or stop the run
  (:mod:`fmtl.train.controls`); the epoch line shows the mean normalized training loss
  (each task's mean loss over the epoch divided by its epoch-1 value,
  :func:`fmtl.train.report.mean_normalized_loss`: a raw sum would be the largest-scale task's);
* a non-finite loss or gradient, a loss above :data:`LOSS_BOUND`, or non-finite validation
  metrics at the end of an epoch stop the run with :class:`TrainingDiverged`, naming the tasks
  and the step; the last checkpoint (of the last good epoch or step) is left as it was.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from tensordict import TensorDict

from ..data import batch_indices, num_batches
from .assemble import Steps
from .log import Log, floats, progress, say, short
from .problem import Problem
from .report import mean_normalized_loss
from .restore import Progress
from .world import World, check_shards

__all__ = ["TrainingDiverged", "loop", "train_batches", "LOSS_BOUND"]


class TrainingDiverged(RuntimeError):
    """A loss or gradient became non-finite; the last good checkpoint was left untouched."""


#: A training loss above this (in absolute value) stops the run as diverged: no loss of a
#: working run comes near it, and beyond it float32 gradients overflow soon after.
LOSS_BOUND = 1e30


def _nonfinite_metrics(metrics: Mapping[str, Mapping[str, float]]) -> list[str]:
    return [f"{t}.{name}" for t, per in metrics.items() for name, v in per.items()
            if v is None or not math.isfinite(float(v))]  # fmt: skip


def _nonfinite_tasks(tasks: tuple[str, ...], losses: torch.Tensor) -> list[str]:
    return [t for t, ok in zip(tasks, torch.isfinite(losses).tolist(), strict=True) if not ok]


def train_batches(problem: Problem, cfg: Mapping[str, Any], world: World, epoch: int, start: int,
                  drop_last: bool) -> Iterator[Any]:  # fmt: skip
    """This rank's training batches of ``epoch`` from batch ``start`` on: ``train[rows]`` for the rows of
    :func:`fmtl.data.batch_indices`, read here or (``problem.stream``) by a :func:`fmtl.data.loader`'s workers.

    Both give the same batches (the loader's sampler is ``batch_indices``), so a run and its resume
    see the same data whichever reads it.
    """
    train_ds, B, seed = problem.splits["train"], int(cfg["batch_size"]), int(cfg["seed"])
    if problem.stream is None:
        for idx in batch_indices(len(train_ds), B, seed=seed, epoch=epoch, rank=world.rank, world_size=world.size,
                                 start=start, drop_last=drop_last):  # fmt: skip
            yield train_ds[idx]
        return
    from ..data import loader

    stream = loader(train_ds, B, seed=seed, rank=world.rank, world_size=world.size, drop_last=drop_last,
                    **{"pin_memory": world.device.type == "cuda", **problem.stream})  # fmt: skip
    yield from stream.epoch(epoch, start)


def _best_epoch(history: list[dict[str, Any]]) -> int:
    return max((r["epoch"] for r in history if r.get("best")), default=-1) + 1


def loop(
    cfg: Mapping[str, Any],
    problem: Problem,
    steps: Steps,
    params: TensorDict,
    state: Any,
    progress_: Progress,
    *,
    world: World,
    log: Log,
    save: Callable[[TensorDict, Any], None],
    evaluate: Callable[[TensorDict, Any, int], dict[str, Any]],
    after_epoch: Callable[[list[dict[str, Any]], TensorDict, Any], tuple[Any, bool]] | None = None,
    quiet: bool = False,
) -> tuple[TensorDict, Any]:
    """Trains from ``progress_`` to ``cfg["epochs"]``; returns the final params and state.

    Args:
        cfg: the resolved run configuration.
        problem: the trained problem (its train split and task names).
        steps: the assembled steps (:func:`fmtl.train.assemble.build_steps`).
        params, state: where training continues from (on ``world.device``).
        progress_: the run's progress, updated in place (position, history, bookkeeping).
        world: the run's processes and device.
        log: the ``metrics.jsonl`` writer.
        save: ``save(params, state)`` writes a checkpoint (rank 0) of the current progress.
        evaluate: ``evaluate(params, state, epoch)`` → the epoch's validation/test record.
        after_epoch: ``after_epoch(history, params, state) -> (state, stop)`` once the epoch is in
            the history, before it is logged and checkpointed (:mod:`fmtl.train.controls`: the
            plateau's learning-rate factor, early stopping, the ``best`` checkpoint); ``stop``
            ends the run after this epoch (remembered in ``extra["stopped"]``).
        quiet: no progress bar and no epoch lines.

    Raises:
        TrainingDiverged: a non-finite loss or gradient (names the tasks and the step).
    """
    tasks, method = problem.tasks, cfg["method"]
    train_ds = problem.splits["train"]
    B, E, K = int(cfg["batch_size"]), int(cfg["epochs"]), int(cfg["accumulate"])
    drop_last = check_shards(len(train_ds), B, world)
    steps_per_epoch = num_batches(len(train_ds), B, drop_last=drop_last)
    position, extra, history = progress_.position, progress_.extra, progress_.history
    if world.main and position["step"] == 0:
        log.write({"type": "header", "tasks": list(tasks), "method": method, "benchmark": cfg["benchmark"],
                   "steps_per_epoch": steps_per_epoch, "world_size": world.size})  # fmt: skip
    log_every, ckpt_every = max(1, int(cfg["log_every"])), int(cfg["checkpoint_every"])
    t_start = time.perf_counter() - float(extra["wall_s"])
    while position["epoch"] < E and not extra.get("stopped", False):
        epoch = position["epoch"]
        bar = progress(steps_per_epoch, position["batch"], f"{method} epoch {epoch + 1}/{E}", quiet, world.main)
        t_window, n_window = time.perf_counter(), 0
        for rows in train_batches(problem, cfg, world, epoch, position["batch"], drop_last):
            if steps.accumulator is not None:
                micro = [m for m in torch.tensor_split(torch.arange(len(rows)), K) if len(m)]
                for m in micro[:-1]:
                    steps.accumulator.add(params, rows[m].to(world.device), len(m) / len(rows))
                steps.accumulator.last_fraction = len(micro[-1]) / len(rows)
                batch = rows[micro[-1]].to(world.device)
            else:
                batch = rows.to(world.device)
            k = position["step"]
            where = f"step {k + 1} (epoch {epoch + 1}, batch {position['batch'] + 1})"
            try:
                step = steps.logged if (k + 1) % log_every == 0 else steps.step
                new_params, new_state, info = step(params, state, batch)
            except FloatingPointError as e:
                raise TrainingDiverged(f"{where}: {e}") from None
            if cfg["compile"] and not bool(info["ok"]):
                bad = _nonfinite_tasks(tasks, info["losses"]) or ["(the balanced update)"]
                raise TrainingDiverged(f"{where}: non-finite loss or gradient in tasks {bad}")
            losses = floats(info["losses"])
            huge = [t for t, v in zip(tasks, losses, strict=True) if abs(v) > LOSS_BOUND]
            if huge:
                raise TrainingDiverged(f"{where}: the loss of tasks {huge} exceeds {LOSS_BOUND:g}")
            params, state = new_params, new_state
            world.check_replicated((params, state))  # FMTL_DISTRIBUTED_DEBUG=1
            position["batch"] += 1
            position["step"] += 1
            extra["epoch_loss_sum"] = [a + b for a, b in zip(extra["epoch_loss_sum"], losses, strict=True)]
            extra["epoch_steps"] += 1
            n_window += len(rows) * world.size
            bar.update(1)
            if position["step"] % log_every == 0:
                now = time.perf_counter()
                rate = n_window / max(now - t_window, 1e-9)
                t_window, n_window = now, 0
                rec = {"type": "step", "step": position["step"], "epoch": epoch, "batch": position["batch"],
                       "losses": dict(zip(tasks, losses, strict=True)),
                       "weights": dict(zip(tasks, floats(info["weights"]), strict=True)),
                       "grad_norms": dict(zip(tasks, floats(info["grad_norms"]), strict=True)),
                       "cosine": floats(info["cosine"]), "samples_per_s": rate}  # fmt: skip
                log.write(rec)
                bar.set_postfix_str(f"{rate:.0f} samples/s {short(tasks, losses)}", refresh=False)
            if ckpt_every and position["step"] % ckpt_every == 0 and position["batch"] < steps_per_epoch:
                extra["wall_s"] = time.perf_counter() - t_start
                save(params, state)
        bar.close()
        rec = evaluate(params, state, epoch) if world.main else {"epoch": epoch}
        bad = _nonfinite_metrics(rec.get("val", {}).get("metrics", {})) if world.main else []
        if world.reduce is not None:  # every rank stops together
            bad = bad if world.main else []
            flag = world.reduce([torch.tensor([float(bool(bad))])])[0]
            bad = bad or (["(on rank 0)"] if float(flag) > 0 else [])
        if bad:
            raise TrainingDiverged(f"the end of epoch {epoch + 1}: non-finite validation metrics {bad}")
        n = max(extra["epoch_steps"], 1)
        rec["train_loss"] = {t: s / n for t, s in zip(tasks, extra["epoch_loss_sum"], strict=True)}
        position.update(epoch=epoch + 1, batch=0)
        extra["epoch_loss_sum"], extra["epoch_steps"] = [0.0] * len(tasks), 0
        extra["wall_s"] = time.perf_counter() - t_start
        rec["wall_s"] = extra["wall_s"]
        first = (history[0] if history else rec)["train_loss"]
        rec["train_loss_normalized"] = mean_normalized_loss(list(rec["train_loss"].values()), list(first.values()))
        history.append(rec)
        if after_epoch is not None:
            state, stop = after_epoch(history, params, state)
            if stop:
                extra["stopped"] = True
        if world.main:
            log.write({"type": "epoch", **rec})
            dp = f", val Δp {rec['val_delta_p']:+.2f}%" if "val_delta_p" in rec else ""
            norm = list(rec["val"]["normalized"].values())
            mne = f", val mean normalized error {sum(norm) / len(norm):.4f}" if None not in norm else ""
            lr = f", lr ×{rec['lr_scale']:.3g}" if "lr_scale" in rec else ""
            stopped = f"; stopping early (no better validation score for {epoch + 1 - _best_epoch(history)} epochs)" \
                if extra.get("stopped") else ""  # fmt: skip
            say(f"[{method}] epoch {epoch + 1}/{E}: train loss {rec['train_loss_normalized']:.4g} (mean ℓ_t/ℓ_t at "
                f"epoch 1){mne}{dp}{lr}{' *' if rec.get('best') else ''} ({extra['wall_s']:.0f} s){stopped}", quiet,
                world.main)  # fmt: skip
        save(params, state)
    return params, state

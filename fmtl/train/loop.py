"""The training loop: epochs of ``params, state, info = step(params, state, batch)``, resumable mid-epoch.

* data order: epoch e visits ``fmtl.data.batch_indices(seed, e)``; :class:`~fmtl.train.restore.Progress`
  stores ``(epoch, batch, step)`` so a resumed run sees exactly the batches it would have seen;
* each optimizer step is one call of the pure step (per-task gradients, balancer, optimizer and
  the BatchNorm update inside; compiled with ``compile = true``);
* ``accumulate = K`` splits each batch into K micro-batches whose *per-task* gradients the
  accumulator sums, weighted by size, before the balancer (:mod:`fmtl.accumulate`);
* every ``log_every`` steps a step record goes to ``metrics.jsonl``; every epoch the validation
  and test metrics are evaluated and a checkpoint is written (also every ``checkpoint_every``
  steps inside an epoch);
* a non-finite loss or gradient stops the run with :class:`TrainingDiverged`, naming the tasks
  and the step; the last checkpoint is left as it was.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from tensordict import TensorDict

from ..data import batch_indices, num_batches
from .assemble import Steps
from .log import Log, floats, progress, say, short
from .problem import Problem
from .restore import Progress
from .world import World, check_shards

__all__ = ["TrainingDiverged", "loop"]


class TrainingDiverged(RuntimeError):
    """A loss or gradient became non-finite; the last good checkpoint was left untouched."""


def _nonfinite_tasks(tasks: tuple[str, ...], losses: torch.Tensor) -> list[str]:
    return [t for t, ok in zip(tasks, torch.isfinite(losses).tolist(), strict=True) if not ok]


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
    while position["epoch"] < E:
        epoch = position["epoch"]
        bar = progress(steps_per_epoch, position["batch"], f"{method} epoch {epoch + 1}/{E}", quiet, world.main)
        t_window, n_window = time.perf_counter(), 0
        for idx in batch_indices(len(train_ds), B, seed=int(cfg["seed"]), epoch=epoch, rank=world.rank,
                                 world_size=world.size, start=position["batch"], drop_last=drop_last):  # fmt: skip
            if steps.accumulator is not None:
                micro = [m for m in torch.tensor_split(idx, K) if len(m)]
                for m in micro[:-1]:
                    steps.accumulator.add(params, train_ds[m].to(world.device), len(m) / len(idx))
                steps.accumulator.last_fraction = len(micro[-1]) / len(idx)
                batch = train_ds[micro[-1]].to(world.device)
            else:
                batch = train_ds[idx].to(world.device)
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
            params, state = new_params, new_state
            world.check_replicated((params, state))  # FMTL_DISTRIBUTED_DEBUG=1
            position["batch"] += 1
            position["step"] += 1
            losses = floats(info["losses"])
            extra["epoch_loss_sum"] = [a + b for a, b in zip(extra["epoch_loss_sum"], losses, strict=True)]
            extra["epoch_steps"] += 1
            n_window += len(idx) * world.size
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
                log.scalars("train_loss", rec["losses"], position["step"])
                log.scalars("weight", rec["weights"], position["step"])
                bar.set_postfix_str(f"{rate:.0f} samples/s {short(tasks, losses)}", refresh=False)
            if ckpt_every and position["step"] % ckpt_every == 0 and position["batch"] < steps_per_epoch:
                extra["wall_s"] = time.perf_counter() - t_start
                save(params, state)
        bar.close()
        rec = evaluate(params, state, epoch) if world.main else {"epoch": epoch}
        n = max(extra["epoch_steps"], 1)
        rec["train_loss"] = {t: s / n for t, s in zip(tasks, extra["epoch_loss_sum"], strict=True)}
        position.update(epoch=epoch + 1, batch=0)
        extra["epoch_loss_sum"], extra["epoch_steps"] = [0.0] * len(tasks), 0
        extra["wall_s"] = time.perf_counter() - t_start
        rec["wall_s"] = extra["wall_s"]
        history.append(rec)
        if world.main:
            log.write({"type": "epoch", **rec})
            log.scalars("val_normalized_error", {t: v for t, v in rec["val"]["normalized"].items() if v is not None},
                        position["step"])  # fmt: skip
            dp = f", val Δp {rec['val_delta_p']:+.2f}%" if "val_delta_p" in rec else ""
            norm = list(rec["val"]["normalized"].values())
            mne = f", val mean normalized error {sum(norm) / len(norm):.4f}" if None not in norm else ""
            say(f"[{method}] epoch {epoch + 1}/{E}: train loss {sum(rec['train_loss'].values()):.4g}"
                f"{mne}{dp} ({extra['wall_s']:.0f} s)", quiet, world.main)  # fmt: skip
        save(params, state)
    return params, state

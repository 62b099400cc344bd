"""``fmtl evaluate RUN``: the validation and test metrics, and Δp, of a run's saved checkpoint.

A run directory holds ``best.pt`` (the epoch selected on validation, :mod:`fmtl.train.controls`)
and ``checkpoint.pt`` (the last one written). :func:`evaluate_run` rebuilds the run's problem and
model from its ``config.toml``, loads the checkpoint (verified, ``weights_only``; it must have been
written by this configuration), and evaluates it on the validation and test splits, with Δp (Eq.
3–4) against the run's STL reference when one is finished. Nothing in the run directory is changed.

For an MTL run, ``best.pt`` reproduces ``results.json``'s selected test metrics and Δp, and
``checkpoint.pt`` of a finished run its ``final_test``. The STL ensemble's ``results.json`` selects
each task's epoch separately; its ``best.pt`` is the ensemble at its best mean epoch (see
:mod:`fmtl.train.controls`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..metrics import delta_p_tasks
from . import checkpoint, problems, runs
from .assemble import assemble
from .evaluate import evaluate_epoch
from .restore import load_for
from .selection import directions, stl_reference
from .world import World

__all__ = ["CHECKPOINTS", "evaluate_run"]

#: ``--checkpoint`` names: the selected epoch's, or the last one written.
CHECKPOINTS = {"best": runs.BEST, "last": runs.CHECKPOINT}


def _reference(out: Path, cfg: dict[str, Any]) -> tuple[dict | None, str | None]:
    if cfg["method"] == "stl":
        return None, None
    stl_dir = None
    if (out / runs.RESULTS).is_file():
        stl_dir = runs.read_results(out).get("stl_dir")
    else:
        stl_dir = str(runs.default_stl_dir(out, cfg))
    if stl_dir and (Path(stl_dir) / runs.RESULTS).is_file():
        return stl_reference(runs.read_results(stl_dir)), stl_dir
    return None, None


def evaluate_run(run: str | os.PathLike[str], which: str = "best", *, device: str | torch.device | None = None,
                 batch_size: int | None = None) -> dict[str, Any]:  # fmt: skip
    """The metrics of ``run``'s ``which`` checkpoint (``"best"`` or ``"last"``), in ``results.json``'s layout.

    Returns:
        ``{"run", "checkpoint", "epoch", "benchmark", "method", "seed", "tasks", "metrics", "units",
        "higher_is_better", "selected": {"val", "test", "delta_p", "delta_p_tasks"}, "delta_p",
        "val_delta_p", "stl_dir"}`` — ``selected`` holds the checkpoint's metrics (so
        :func:`fmtl.train.report.run_table` prints them); Δp entries are ``None`` without a finished
        STL reference.

    Raises:
        fmtl.train.runs.RunDirError: ``run`` holds no run.
        fmtl.train.checkpoint.CheckpointError: the checkpoint is missing, unusable or another run's.
    """
    if which not in CHECKPOINTS:
        raise ValueError(f"--checkpoint must be one of {list(CHECKPOINTS)}; got {which!r}")
    out = Path(run)
    cfg = runs.read_config(out)
    path = out / CHECKPOINTS[which]
    payload = load_for(path, cfg, "it is not this run's")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg["seed"]))
        problem = problems.build(cfg)
        built = assemble(cfg, problem, World(0, 1, None, dev))
    params, state = checkpoint.restore(payload, built.params, built.state)
    reference, stl_dir = _reference(out, cfg)
    buffers = state.buffers if built.problem.buffers is not None else None
    rec = evaluate_epoch(built.problem, params, buffers, batch_size=int(batch_size or cfg["eval_batch_size"]),
                         device=dev, reference=reference)  # fmt: skip
    hib = directions(built.problem.metrics)
    test = rec["test"]["metrics"]
    tasks = list(built.problem.tasks)
    return {
        "run": str(out), "checkpoint": path.name, "epoch": int(payload["position"]["epoch"]) - 1,
        "benchmark": cfg["benchmark"], "method": cfg["method"], "seed": cfg["seed"], "tasks": tasks,
        "metrics": {t: list(built.problem.metrics[t].names) for t in tasks},
        "units": {t: built.problem.metrics[t].unit for t in tasks}, "higher_is_better": hib,
        "selected": {"val": rec["val"]["metrics"], "test": test, "delta_p": rec.get("test_delta_p"),
                     "delta_p_tasks": delta_p_tasks(test, reference["test"], hib) if reference else None},
        "delta_p": rec.get("test_delta_p"), "val_delta_p": rec.get("val_delta_p"), "stl_dir": stl_dir,
    }  # fmt: skip

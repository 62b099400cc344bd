"""Finishing a run: the epoch selected on validation, ``results.json`` and the plots.

The selected epoch (:mod:`fmtl.train.selection`: validation Δp against STL, or the mean
normalized error without a reference, or each task's own epoch for the STL ensemble) gives the
reported *test* metrics, in the metrics' units; ``results.json`` also records the directions Δp
reads them with, the last epoch's test metrics, the wall time, the world size, the device and
the resolved configuration.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import atomic
from .problem import Problem
from .restore import Progress
from .runs import RESULTS
from .selection import directions, select

__all__ = ["results", "finish", "CRITERIA_TEXT"]

#: How each selection criterion reads in messages.
CRITERIA_TEXT = {"val_delta_p": "validation Δp", "val_normalized_error": "validation mean normalized error",
                 "val_delta_p_vs_first_epoch": "validation Δp against the first epoch",
                 "per_task_val": "each task's own validation metric"}  # fmt: skip


def results(cfg: Mapping[str, Any], problem: Problem, progress: Progress, *, reference: Mapping[str, Any] | None,
            stl_dir: str | None, wall: float, world_size: int, device: str) -> dict[str, Any]:  # fmt: skip
    """The results of a finished run (what ``results.json`` holds)."""
    method, tasks = cfg["method"], problem.tasks
    hib = directions(problem.metrics)
    selected = select(progress.history, hib, None if method == "stl" else reference, per_task=method == "stl")
    out = {
        "benchmark": cfg["benchmark"], "method": method, "seed": cfg["seed"], "tasks": list(tasks),
        "units": {t: problem.metrics[t].unit for t in tasks},
        "metrics": {t: list(problem.metrics[t].names) for t in tasks},
        "higher_is_better": hib, "selected": selected, "delta_p": selected["delta_p"],
        "final_test": progress.history[-1]["test"]["metrics"], "epochs": cfg["epochs"],
        "steps": progress.position["step"], "wall_time_s": wall, "stl_dir": stl_dir, "world_size": world_size,
        "device": device, "config": dict(cfg),
    }  # fmt: skip
    if method != "stl" and reference is None:
        out["note"] = (f"no STL reference: the epoch was selected on the {CRITERIA_TEXT[selected['criterion']]} "
                       "and Δp is not available")  # fmt: skip
    return out


def finish(out: Path, res: Mapping[str, Any], plots: bool) -> None:
    """Writes ``results.json`` atomically, then the PNG plots of ``metrics.jsonl`` (with ``plots``)."""
    atomic.write(Path(out) / RESULTS, json.dumps(res, indent=1, allow_nan=True))
    if plots:
        from .plots import plot_run

        plot_run(out)

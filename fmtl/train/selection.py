"""Model selection over epochs: validation Δp against STL (Eq. 3–4), or mean normalized error.

Every epoch's validation and test metrics are kept in the run's history; the selected epoch is
the one with the best *validation* score and the reported numbers are its *test* metrics.

* MTL methods with an STL reference: maximize validation Δp (Eq. 3) against STL's validation
  metrics.
* Without a reference (the STL run itself, or ``--stl none``): minimize the validation mean
  normalized error (:mod:`fmtl.train.evaluate`), and say so in ``results.json``; when a task's
  metric has no normalized error (e.g. accuracy), maximize instead the validation Δp against the
  first epoch's validation metrics (scale-free like Δp, and the same for every epoch's reference).
* The STL ensemble: each member is an independent model, so each task picks its own best
  epoch by its own validation metric (the single-task baseline at its best).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..metrics import delta_p, delta_p_tasks

__all__ = ["directions", "select", "stl_reference", "CRITERIA"]

CRITERIA = ("val_delta_p", "val_normalized_error", "val_delta_p_vs_first_epoch", "per_task_val")


def directions(metrics: Mapping[str, Any]) -> dict[str, dict[str, bool]]:
    """``{task: {metric: higher_is_better}}`` from ``{task: fmtl.train.Metric}``.

    Example:
        >>> from fmtl.train.evaluate import regression
        >>> directions({"mu": regression(("mae",))})
        {'mu': {'mae': False}}
    """
    return {t: dict(zip(m.names, m.higher_is_better, strict=True)) for t, m in metrics.items()}


def _main_metric_better(a: float, b: float, higher: bool) -> bool:
    return a > b if higher else a < b


def select(
    history: Sequence[Mapping[str, Any]],
    hib: Mapping[str, Mapping[str, bool]],
    stl: Mapping[str, Any] | None = None,
    per_task: bool = False,
) -> dict[str, Any]:
    """The selected epoch(s) and their test metrics (and test Δp when ``stl`` is given).

    Args:
        history: one record per epoch with ``val`` and ``test`` evaluations
            (``{"metrics": ..., "normalized": ...}``).
        hib: :func:`directions`.
        stl: STL's ``{"val": metrics, "test": metrics}`` (see :func:`stl_reference`) or None.
        per_task: select each task's epoch separately (the STL ensemble).

    Returns:
        ``{"criterion", "epoch" (or "epochs" per task), "val", "test", "delta_p",
        "delta_p_tasks"}`` — Δp entries are ``None`` without ``stl``.

    Example:
        >>> hib = {"a": {"mae": False}, "b": {"mae": False}}
        >>> ev = lambda a, b: {"metrics": {"a": {"mae": a}, "b": {"mae": b}}, "normalized": {"a": a, "b": b}}
        >>> hist = [{"epoch": 0, "val": ev(2, 2), "test": ev(2, 2)}, {"epoch": 1, "val": ev(1, 3), "test": ev(1, 3)}]
        >>> select(hist, hib)["epoch"], select(hist, hib, per_task=True)["epochs"]
        (0, {'a': 1, 'b': 0})
        >>> stl = {"val": {"a": {"mae": 1.0}, "b": {"mae": 1.0}}, "test": {"a": {"mae": 1.0}, "b": {"mae": 1.0}}}
        >>> select(hist, hib, stl)["delta_p"]
        -100.0
    """
    if not history:
        raise ValueError("no evaluated epoch to select from")
    if per_task:
        epochs, val, test = {}, {}, {}
        for t, dirs in hib.items():
            m0, up = next(iter(dirs.items()))
            best = history[0]
            for rec in history[1:]:
                if _main_metric_better(rec["val"]["metrics"][t][m0], best["val"]["metrics"][t][m0], up):
                    best = rec
            epochs[t], val[t], test[t] = best["epoch"], best["val"]["metrics"][t], best["test"]["metrics"][t]
        out: dict[str, Any] = {"criterion": "per_task_val", "epochs": epochs, "val": val, "test": test}
    else:
        if stl is not None:
            scores = [delta_p(r["val"]["metrics"], stl["val"], hib) for r in history]
            k = max(range(len(history)), key=lambda i: scores[i])
            criterion = "val_delta_p"
        elif all(v is not None for r in history for v in r["val"]["normalized"].values()):
            scores = [sum(r["val"]["normalized"].values()) / len(hib) for r in history]
            k = min(range(len(history)), key=lambda i: scores[i])
            criterion = "val_normalized_error"
        else:
            scores = [delta_p(r["val"]["metrics"], history[0]["val"]["metrics"], hib) for r in history]
            k = max(range(len(history)), key=lambda i: scores[i])
            criterion = "val_delta_p_vs_first_epoch"
        best = history[k]
        out = {"criterion": criterion, "epoch": best["epoch"], "score": scores[k],
               "val": best["val"]["metrics"], "test": best["test"]["metrics"]}  # fmt: skip
    out["delta_p"] = delta_p(out["test"], stl["test"], hib) if stl is not None else None
    out["delta_p_tasks"] = delta_p_tasks(out["test"], stl["test"], hib) if stl is not None else None
    return out


def stl_reference(stl_results: Mapping[str, Any]) -> dict[str, Any]:
    """The reference metrics Δp is measured against, from an STL run's ``results.json``.

    Example:
        >>> stl_reference({"selected": {"val": {"a": {"mae": 1}}, "test": {"a": {"mae": 2}}}})
        {'val': {'a': {'mae': 1}}, 'test': {'a': {'mae': 2}}}
    """
    sel = stl_results["selected"]
    return {"val": sel["val"], "test": sel["test"]}

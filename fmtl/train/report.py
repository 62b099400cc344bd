"""Result tables in the paper's layout (Table 3): one column per task metric, then Δp.

:func:`run_table` prints one run against STL (per-task metric, STL, Δp_t); :func:`compare_table`
builds the method × task table of ``fmtl compare`` (mean over seeds, Δp mean ± std, best value
of each column in bold) as Markdown and CSV.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["fmt", "run_table", "aggregate", "compare_table"]


def fmt(v: float | None) -> str:
    """Four significant digits (the paper's precision), ``-`` for missing values.

    Example:
        >>> [fmt(x) for x in (0.06213, 58.8249, 128.31, None)]
        ['0.06213', '58.82', '128.3', '-']
    """
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.4g}"


def _columns(results: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(t, m) for t in results["tasks"] for m in results["metrics"][t]]


def _label(results: Mapping[str, Any], t: str, m: str) -> str:
    unit = results["units"].get(t, "")
    arrow = "↑" if results["higher_is_better"][t][m] else "↓"
    return f"{t} {m.upper()}{f' [{unit}]' if unit else ''} {arrow}"


def run_table(results: Mapping[str, Any], stl: Mapping[str, Any] | None = None) -> str:
    """A Markdown table of one run's selected test metrics, STL's, and Δp_t (Eq. 4).

    Example:
        >>> r = {"method": "dbmtl", "tasks": ["mu"], "metrics": {"mu": ["mae"]}, "units": {"mu": "D"},
        ...      "higher_is_better": {"mu": {"mae": False}}, "delta_p": -50.0, "delta_p_tasks": None,
        ...      "selected": {"test": {"mu": {"mae": 0.09}}, "delta_p_tasks": {"mu": -50.0}, "delta_p": -50.0}}
        >>> print(run_table(r, {"mu": {"mae": 0.06}}))
        | task | metric | dbmtl | STL | Δp_t |
        |---|---|---|---|---|
        | mu | MAE [D] ↓ | 0.09 | 0.06 | -50.00% |
        | **Δp** | | | | **-50.00%** |
    """
    sel = results["selected"]
    dpt = sel.get("delta_p_tasks") or {}
    lines = [f"| task | metric | {results['method']} | STL | Δp_t |", "|---|---|---|---|---|"]
    for t, m in _columns(results):
        label = _label(results, t, m).split(" ", 1)[1]
        ref = stl[t][m] if stl is not None else None
        d = f"{dpt[t]:+.2f}%" if t in dpt else "-"
        lines.append(f"| {t} | {label} | {fmt(sel['test'][t][m])} | {fmt(ref)} | {d} |")
    if sel.get("delta_p") is not None:
        lines.append(f"| **Δp** | | | | **{sel['delta_p']:+.2f}%** |")
    return "\n".join(lines)


def aggregate(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean over seeds of each test metric, and Δp mean ± std (sample std; 0 for one seed).

    Example:
        >>> r = lambda v, d: {"selected": {"test": {"a": {"mae": v}}}, "delta_p": d}
        >>> aggregate([r(1.0, -2.0), r(3.0, -4.0)])
        {'metrics': {'a': {'mae': 2.0}}, 'delta_p': (-3.0, 1.4142135623730951), 'seeds': 2}
    """
    first = runs[0]["selected"]["test"]
    metrics = {t: {m: statistics.fmean(r["selected"]["test"][t][m] for r in runs) for m in ms}
               for t, ms in first.items()}  # fmt: skip
    dps = [r["delta_p"] for r in runs if r.get("delta_p") is not None]
    dp = (statistics.fmean(dps), statistics.stdev(dps) if len(dps) > 1 else 0.0) if dps else (math.nan, math.nan)
    return {"metrics": metrics, "delta_p": dp, "seeds": len(runs)}


def compare_table(rows: Mapping[str, Mapping[str, Any]], template: Mapping[str, Any]) -> tuple[str, str]:
    """(Markdown, CSV) of ``{method: aggregate(...)}``; best value per column in bold.

    ``template`` is any run's ``results.json`` (task names, metrics, units, directions).

    Example:
        >>> t = {"tasks": ["a"], "metrics": {"a": ["mae"]}, "units": {"a": ""},
        ...      "higher_is_better": {"a": {"mae": False}}}
        >>> md, csv_text = compare_table({"stl": {"metrics": {"a": {"mae": 1.0}}, "delta_p": (0.0, 0.0)},
        ...                               "ew": {"metrics": {"a": {"mae": 2.0}}, "delta_p": (-100.0, 5.0)}}, t)
        >>> print(md)
        | method | a MAE ↓ | Δp (%) ↑ |
        |---|---|---|
        | stl | **1** | **+0.00 ± 0.00** |
        | ew | 2 | -100.00 ± 5.00 |
        >>> csv_text.splitlines()[1]
        'stl,1.0,0.0,0.0'
    """
    cols = _columns(template)
    best = {}
    for t, m in cols:
        vals = [r["metrics"][t][m] for r in rows.values()]
        best[(t, m)] = max(vals) if template["higher_is_better"][t][m] else min(vals)
    dps = [r["delta_p"][0] for r in rows.values() if not math.isnan(r["delta_p"][0])]
    best_dp = max(dps) if dps else None
    head = ["method"] + [_label(template, t, m) for t, m in cols] + ["Δp (%) ↑"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method"] + [f"{t}_{m}" for t, m in cols] + ["delta_p_mean", "delta_p_std"])
    for name, r in rows.items():
        cells = []
        for t, m in cols:
            v = r["metrics"][t][m]
            cells.append(f"**{fmt(v)}**" if v == best[(t, m)] else fmt(v))
        mean, std = r["delta_p"]
        dp = "-" if math.isnan(mean) else f"{mean:+.2f} ± {std:.2f}"
        cells.append(f"**{dp}**" if best_dp is not None and mean == best_dp else dp)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        w.writerow([name] + [r["metrics"][t][m] for t, m in cols] + [mean, std])
    return "\n".join(lines), buf.getvalue()

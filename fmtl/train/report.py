"""Result tables in the paper's layout (Table 3): one column per task metric, then Δp.

:func:`run_table` prints one run against STL (per-task metric, STL, Δp_t); :func:`compare_table`
builds the method × task table of ``fmtl compare`` (mean over seeds, Δp mean ± std, the best MTL
method of each column in bold — the STL reference row is never marked, its Δp is 0 by definition)
as Markdown (``tabulate``'s GitHub format) and CSV (one row per method and seed, then the mean and
the std over seeds); :func:`compare_tex` writes the same table as LaTeX (booktabs rules).
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from tabulate import tabulate

__all__ = ["fmt", "run_table", "aggregate", "compare_table", "compare_tex", "mean_normalized_loss"]


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


def _num(v: Any) -> float:
    """A metric as a float; a missing or ``null`` (non-finite in strict JSON) value is NaN."""
    return math.nan if v is None else float(v)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def aggregate(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and std over seeds of each test metric and of Δp (sample std; 0 for one seed), and the per-seed values.

    Example:
        >>> r = lambda s, v, d: {"seed": s, "selected": {"test": {"a": {"mae": v}}}, "delta_p": d}
        >>> agg = aggregate([r(0, 1.0, -2.0), r(1, 3.0, -4.0)])
        >>> agg["metrics"], agg["delta_p"], agg["seeds"]
        ({'a': {'mae': 2.0}}, (-3.0, 1.4142135623730951), 2)
        >>> agg["per_seed"][1]
        {'seed': 1, 'metrics': {'a': {'mae': 3.0}}, 'delta_p': -4.0}
    """
    per_seed = [{"seed": r.get("seed", i), "metrics": {t: {m: _num(v) for m, v in ms.items()}
                                                       for t, ms in r["selected"]["test"].items()},
                 "delta_p": _num(r.get("delta_p"))} for i, r in enumerate(runs)]  # fmt: skip
    first = per_seed[0]["metrics"]
    stats = {t: {m: _mean_std([s["metrics"][t][m] for s in per_seed]) for m in ms} for t, ms in first.items()}
    return {"metrics": {t: {m: v[0] for m, v in ms.items()} for t, ms in stats.items()},
            "metrics_std": {t: {m: v[1] for m, v in ms.items()} for t, ms in stats.items()},
            "delta_p": _mean_std([s["delta_p"] for s in per_seed]), "seeds": len(runs),
            "per_seed": per_seed}  # fmt: skip


def _best(rows: Mapping[str, Mapping[str, Any]], template: Mapping[str, Any], reference: str | None) -> dict:
    """The best value of each metric column and of Δp among the MTL rows (never the reference)."""
    mtl = [r for name, r in rows.items() if name != reference]
    best: dict = {}
    for t, m in _columns(template):
        vals = [v for r in mtl if not math.isnan(v := _num(r["metrics"][t][m]))]
        if vals:
            best[(t, m)] = max(vals) if template["higher_is_better"][t][m] else min(vals)
    dps = [r["delta_p"][0] for r in mtl if not math.isnan(r["delta_p"][0])]
    best["delta_p"] = max(dps) if dps else None
    return best


def _delta_p_cell(name: str, r: Mapping[str, Any], reference: str | None, pm: str) -> str:
    if name == reference:
        return "0 (reference)"
    mean, std = r["delta_p"]
    return "-" if math.isnan(mean) else f"{mean:+.2f} {pm} {std:.2f}"


def compare_table(
    rows: Mapping[str, Mapping[str, Any]], template: Mapping[str, Any], reference: str | None = "stl"
) -> tuple[str, str]:
    """(Markdown, CSV) of ``{row: aggregate(...)}``; the best MTL value of each column in bold.

    ``template`` is any run's ``results.json`` (task names, metrics, units, directions);
    ``reference`` names the STL row (shown first as it comes, never marked best).

    Example:
        >>> t = {"tasks": ["a"], "metrics": {"a": ["mae"]}, "units": {"a": ""},
        ...      "higher_is_better": {"a": {"mae": False}}}
        >>> run = lambda s, v, d: {"seed": s, "selected": {"test": {"a": {"mae": v}}}, "delta_p": d}
        >>> rows = {"stl": aggregate([run(0, 1.0, None), run(1, 1.0, None)]),
        ...         "ew": aggregate([run(0, 2.0, -100.0), run(1, 2.0, -90.0)]),
        ...         "dbmtl": aggregate([run(0, 1.5, -50.0), run(1, 1.7, -40.0)])}
        >>> md, csv_text = compare_table(rows, t)
        >>> print(md)
        | method   | a MAE ↓   | Δp (%) ↑          |
        |----------|-----------|-------------------|
        | stl      | 1         | 0 (reference)     |
        | ew       | 2         | -95.00 ± 7.07     |
        | dbmtl    | **1.6**   | **-45.00 ± 7.07** |
        >>> print(csv_text)
        method,seed,a_mae,delta_p
        stl,0,1.0,0.0
        stl,1,1.0,0.0
        stl,mean,1.0,0.0
        stl,std,0.0,0.0
        ew,0,2.0,-100.0
        ew,1,2.0,-90.0
        ew,mean,2.0,-95.0
        ew,std,0.0,7.0710678118654755
        dbmtl,0,1.5,-50.0
        dbmtl,1,1.7,-40.0
        dbmtl,mean,1.6,-45.0
        dbmtl,std,0.14142135623730948,7.0710678118654755
        <BLANKLINE>
    """
    cols = _columns(template)
    best = _best(rows, template, reference)
    head = ["method"] + [_label(template, t, m) for t, m in cols] + ["Δp (%) ↑"]
    body = []
    for name, r in rows.items():
        cells = [name]
        for t, m in cols:
            v = _num(r["metrics"][t][m])
            cells.append(f"**{fmt(v)}**" if name != reference and v == best.get((t, m)) else fmt(v))
        dp = _delta_p_cell(name, r, reference, "±")
        cells.append(f"**{dp}**" if name != reference and r["delta_p"][0] == best["delta_p"] else dp)
        body.append(cells)
    markdown = tabulate(body, headers=head, tablefmt="github", disable_numparse=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "seed"] + [f"{t}_{m}" for t, m in cols] + ["delta_p"])
    for name, r in rows.items():
        ref = name == reference
        for s in r.get("per_seed", []):
            w.writerow([name, s["seed"]] + [s["metrics"][t][m] for t, m in cols] + [0.0 if ref else s["delta_p"]])
        std = r.get("metrics_std", {})
        w.writerow([name, "mean"] + [r["metrics"][t][m] for t, m in cols] + [0.0 if ref else r["delta_p"][0]])
        w.writerow([name, "std"] + [std.get(t, {}).get(m, math.nan) for t, m in cols]
                   + [0.0 if ref else r["delta_p"][1]])  # fmt: skip
    return markdown, buf.getvalue()


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                "↑": r"$\uparrow$", "↓": r"$\downarrow$", "±": r"$\pm$", "Δ": r"$\Delta$"}  # fmt: skip


def _tex(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(c, c) for c in str(text))


def compare_tex(
    rows: Mapping[str, Mapping[str, Any]], template: Mapping[str, Any], reference: str | None = "stl",
    caption: str | None = None,
) -> str:
    r"""The table of :func:`compare_table` as a LaTeX ``tabular`` with booktabs rules (``\usepackage{booktabs}``).

    Text is escaped for LaTeX (``nash_mtl`` → ``nash\_mtl``); the best MTL value of each column is
    ``\textbf``; the STL reference row is set apart by a rule. Written by hand: ``tabulate``'s
    booktabs format escapes every cell, so it cannot bold one.

    Example:
        >>> t = {"tasks": ["a"], "metrics": {"a": ["mae"]}, "units": {"a": "meV"},
        ...      "higher_is_better": {"a": {"mae": False}}}
        >>> rows = {"stl": {"metrics": {"a": {"mae": 1.0}}, "delta_p": (0.0, 0.0)},
        ...         "nash_mtl": {"metrics": {"a": {"mae": 2.0}}, "delta_p": (-100.0, 5.0)}}
        >>> print(compare_tex(rows, t))
        \begin{tabular}{lrr}
        \toprule
        method & a MAE [meV] $\downarrow$ & $\Delta$p (\%) $\uparrow$ \\
        \midrule
        stl & 1 & 0 (reference) \\
        \midrule
        nash\_mtl & \textbf{2} & \textbf{$-$100.00 $\pm$ 5.00} \\
        \bottomrule
        \end{tabular}
    """
    cols = _columns(template)
    best = _best(rows, template, reference)
    lines = [r"\begin{tabular}{l" + "r" * (len(cols) + 1) + "}", r"\toprule",
             " & ".join(["method"] + [_tex(_label(template, t, m)) for t, m in cols] + [_tex("Δp (%) ↑")]) + r" \\",
             r"\midrule"]  # fmt: skip
    for name, r in rows.items():
        cells = [_tex(name)]
        for t, m in cols:
            v = _num(r["metrics"][t][m])
            cells.append(rf"\textbf{{{fmt(v)}}}" if name != reference and v == best.get((t, m)) else fmt(v))
        dp = _tex(_delta_p_cell(name, r, reference, "±"))
        dp = "$-$" + dp[1:] if dp.startswith("-") else dp  # a minus sign, not a hyphen
        cells.append(rf"\textbf{{{dp}}}" if name != reference and r["delta_p"][0] == best["delta_p"] else dp)
        lines.append(" & ".join(cells) + r" \\")
        if name == reference:
            lines.append(r"\midrule")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines = [r"\begin{table}", r"\centering", rf"\caption{{{_tex(caption)}}}", *lines, r"\end{table}"]
    return "\n".join(lines)


def mean_normalized_loss(losses: Sequence[float], reference: Sequence[float]) -> float:
    """The mean over tasks of ℓ_t / ℓ_t⁰: the epoch line's training loss, comparable across task scales.

    Summing raw task losses lets the largest-scale task dominate (QM9's targets differ by orders of
    magnitude); dividing each by a reference ℓ_t⁰ (e.g. the first logged epoch's, or STL's) puts
    every task at 1 when it is where the reference was. Tasks with a zero or non-finite reference
    are left out.

    Example:
        >>> mean_normalized_loss([0.5, 300.0], [1.0, 1000.0])
        0.4
    """
    pairs = [(v / r) for v, r in zip(losses, reference, strict=True) if r and math.isfinite(r) and r > 0]
    return statistics.fmean(pairs) if pairs else math.nan

"""The paper's ablations as ``fmtl compare --preset NAME``: Table 5 and Figs. 1, 5 and 6, one command each.

Each preset is a fixed set of named variants (:func:`fmtl.train.compare.parse_variant` rows) run
by :func:`fmtl.train.compare.compare` — the per-task table (``table.md``/``.csv``/``.tex``) and the
Δp bar chart as for any comparison — plus one table and one plot in the paper's form,
``<NAME>.md``/``<NAME>.csv`` and ``<NAME>.png`` (Δp mean ± std over seeds, error bars = std):

* ``table5`` — the four combinations of the two components (Table 5): EW; loss-scale balancing
  only (``dbmtl`` with ``normalize=false``: the log transform, no EMA/normalization); gradient-
  magnitude balancing only (``dbmtl`` with ``log_transform=false``); DB-MTL. Bar chart.
* ``fig1`` — PCGrad, GradVac, IMTL-G, CAGrad, Nash-MTL and Aligned-MTL, each vanilla and with the
  log transform (every gradient balancer's ``log_transform=true``: the loss transform composed
  with the aggregator), and DB-MTL. Grouped bar chart.
* ``fig5`` — DB-MTL over the forgetting rate β of Eq. 1: β ∈ {0, 0.1, …, 0.9} and
  β/k^0.5 for β ∈ {0.1, …, 0.9} (``beta_sigma=0.5``), the paper's 19 settings. Δp against β,
  one line per schedule, β = 0 (no EMA) as a dotted line. The labels are
  :func:`fmtl.train.tune.point_label`'s, so ``fmtl tune --grid-preset paper-beta`` run into the
  same ``--out`` reuses these runs (and vice versa).
* ``fig6`` — DB-MTL with α_k of Eq. 2 the max (the paper's), min, mean or median of
  ‖ĝ_t,k‖₂, or constant. Bar chart. *Deviation:* the paper does not state its constant; it is 1
  here (the update is then the sum of the T unit vectors ĝ_t/‖ĝ_t‖).

Hyperparameters from ``--opt dbmtl.key=value`` (or a ``[opts.dbmtl]`` table, e.g. ``fmtl tune``'s
``selected.toml``) apply to every DB-MTL row; a row's own keys win.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from tabulate import tabulate

from .. import atomic
from .compare import Row, compare, parse_variant
from .plots import plot_delta_p, plot_delta_p_groups, plot_delta_p_lines
from .problems import label as problem_label
from .report import pm
from .tune import point_label

__all__ = ["Preset", "PRESETS", "names", "get", "variants", "paper_table", "plot_preset", "run_preset"]


class Preset(NamedTuple):
    """A paper experiment: its title, the leading columns of its table, its rows and its plot kind.

    ``rows`` are ``(variant, cells)``: a ``LABEL=METHOD:key=value,…`` variant and its cells under
    ``columns``; ``plot`` is ``"bars"`` (labelled by the first cell), ``"groups"`` (grouped by the
    first cell, one bar per second cell) or ``"beta"`` (Δp against ``beta``, one line per ``beta_sigma``).
    """

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, tuple[str, ...]], ...]
    plot: str


_FIG1 = (("pcgrad", "PCGrad"), ("gradvac", "GradVac"), ("imtl_g", "IMTL-G"), ("cagrad", "CAGrad"),
         ("nash_mtl", "Nash-MTL"), ("aligned_mtl", "Aligned-MTL"))  # fmt: skip


def _beta_row(beta: float, sigma: float) -> tuple[str, tuple[str, ...]]:
    label = point_label({"beta": beta, "beta_sigma": sigma})
    return f"{label}=dbmtl:beta={beta},beta_sigma={sigma}", (f"{beta:g}" + (f"/k^{sigma:g}" if sigma else ""),)


#: The presets by name.
PRESETS: dict[str, Preset] = {
    "table5": Preset(
        "Table 5: effect of each component of DB-MTL",
        ("method", "loss-scale balancing", "gradient-magnitude balancing"),
        (("ew=ew", ("EW", "✗", "✗")),
         ("log-only=dbmtl:normalize=false", ("log only", "✓", "✗")),
         ("grad-only=dbmtl:log_transform=false", ("grad only", "✗", "✓")),
         ("dbmtl=dbmtl", ("DB-MTL", "✓", "✓"))),
        "bars"),
    "fig1": Preset(
        "Fig. 1: gradient balancing methods with the loss-scale balancing (log transform)",
        ("method", "loss"),
        tuple(r for m, name in _FIG1 for r in ((f"{m}={m}", (name, "vanilla")),
                                               (f"{m}+log={m}:log_transform=true", (name, "+ log"))))
        + (("dbmtl=dbmtl", ("DB-MTL", "+ log")),),
        "groups"),
    "fig5": Preset(
        "Fig. 5: effect of the EMA's forgetting rate β (Eq. 1)",
        ("β",),
        tuple(_beta_row(b / 10, 0.0) for b in range(10)) + tuple(_beta_row(b / 10, 0.5) for b in range(1, 10)),
        "beta"),
    "fig6": Preset(
        "Fig. 6: strategies for α_k (Eq. 2)",
        ("α_k",),
        tuple((f"{point_label({'alpha': a})}=dbmtl:alpha={a}", (name,))
              for a, name in (("max", "max"), ("min", "min"), ("mean", "mean"), ("median", "median"),
                              ("1.0", "constant (1)"))),
        "bars"),
}  # fmt: skip


def names() -> list[str]:
    """The preset names.

    Example:
        >>> names()
        ['table5', 'fig1', 'fig5', 'fig6']
    """
    return list(PRESETS)


def get(name: str) -> Preset:
    """The preset ``name``; an unknown name is an error listing the valid ones.

    Example:
        >>> get("table5").columns
        ('method', 'loss-scale balancing', 'gradient-magnitude balancing')
        >>> get("fig7")
        Traceback (most recent call last):
        ...
        ValueError: unknown --preset 'fig7'; valid: table5, fig1, fig5, fig6
    """
    if name not in PRESETS:
        raise ValueError(f"unknown --preset {name!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[name]


def variants(name: str) -> list[Row]:
    """The rows of preset ``name`` as compare variants.

    Example:
        >>> [(r.label, r.method, r.opts) for r in variants("table5")][1:3]
        [('log-only', 'dbmtl', {'normalize': False}), ('grad-only', 'dbmtl', {'log_transform': False})]
        >>> [r.label for r in variants("fig5")][9:11]
        ['beta0.9-beta_sigma0.0', 'beta0.1-beta_sigma0.5']
    """
    return [parse_variant(text) for text, _ in get(name).rows]


def paper_table(name: str, delta_p: Mapping[str, tuple[float, float]]) -> tuple[str, str]:
    """(Markdown, CSV) of preset ``name`` in the paper's form: its columns, then Δp mean ± std per row.

    Args:
        delta_p: ``{row label: (mean, std)}`` (a comparison's ``rows[label]["delta_p"]``).

    Example:
        >>> dp = {"ew": (-60.0, 15.0), "log-only": (5.5, 1.8), "grad-only": (-188.0, 56.0), "dbmtl": (-115.0, 3.3)}
        >>> md, text = paper_table("table5", dp)
        >>> print(md)
        | method    | loss-scale balancing   | gradient-magnitude balancing   | Δp (%) ↑        |
        |-----------|------------------------|--------------------------------|-----------------|
        | EW        | ✗                      | ✗                              | -60.00 ± 15.00  |
        | log only  | ✓                      | ✗                              | +5.50 ± 1.80    |
        | grad only | ✗                      | ✓                              | -188.00 ± 56.00 |
        | DB-MTL    | ✓                      | ✓                              | -115.00 ± 3.30  |
        >>> print(text.splitlines()[1])
        ew,EW,✗,✗,-60.0,15.0
    """
    p = get(name)
    body, buf = [], io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["label", *p.columns, "delta_p_mean", "delta_p_std"])
    for row, label in zip(p.rows, (v.label for v in variants(name)), strict=True):
        body.append([*row[1], pm(delta_p[label])])
        w.writerow([label, *row[1], *delta_p[label]])
    md = tabulate(body, headers=[*p.columns, "Δp (%) ↑"], tablefmt="github", disable_numparse=True)
    return md, buf.getvalue()


def plot_preset(name: str, delta_p: Mapping[str, tuple[float, float]], path: str | Path, subtitle: str = "") -> Path:
    """The plot of preset ``name`` in the paper's form (bars, grouped bars, or Δp against β).

    Example:
        >>> import tempfile, pathlib
        >>> dp = {r.label: (float(i), 1.0) for i, r in enumerate(variants("fig5"))}
        >>> plot_preset("fig5", dp, pathlib.Path(tempfile.mkdtemp()) / "fig5.png").exists()
        True
    """
    p = get(name)
    title = p.title + (f"\n{subtitle}" if subtitle else "")
    labelled = list(zip(variants(name), (cells for _, cells in p.rows), strict=True))
    if p.plot == "bars":
        return plot_delta_p({cells[0]: delta_p[r.label] for r, cells in labelled}, path, title=title)
    if p.plot == "groups":
        groups: dict[str, dict[str, tuple[float, float]]] = {}
        for r, cells in labelled:
            groups.setdefault(cells[0], {})[cells[1]] = delta_p[r.label]
        return plot_delta_p_groups(groups, path, title=title)
    lines: dict[str, list[tuple[float, float, float]]] = {"constant β": [], "β / k^0.5": []}
    reference = None
    for r, _ in labelled:
        beta, sigma = float(r.opts["beta"]), float(r.opts["beta_sigma"])
        if beta == 0.0:
            reference = (f"β = 0 (no EMA): {pm(delta_p[r.label])}", delta_p[r.label][0])
            continue
        lines["constant β" if sigma == 0.0 else "β / k^0.5"].append((beta, *delta_p[r.label]))
    return plot_delta_p_lines(lines, path, "β", title=title, reference=reference)


def run_preset(base: Mapping[str, Any], name: str, seeds: int, out: str | Path, **options: Any) -> dict[str, Any]:
    """Runs (or reuses) preset ``name``'s rows × seeds; writes compare's outputs and the paper-form table and plot.

    Args:
        base: a configuration, as for :func:`fmtl.train.compare.compare`.
        name: a preset (:func:`names`).
        seeds, out: as for :func:`fmtl.train.compare.compare`.
        **options: ``overwrite``, ``quiet``, ``device``, as for :func:`fmtl.train.compare.compare`.

    Returns:
        compare's result, with ``"paper"`` (the paper-form Markdown) and its files added to ``"paths"``.
    """
    out = Path(out)
    res = compare(base, [], seeds, out, variants=variants(name), **options)
    delta_p = {label: row["delta_p"] for label, row in res["rows"].items()}
    md, csv_text = paper_table(name, delta_p)
    s = f"Δp vs STL in %, mean ± std over {seeds} seed{'s' if seeds > 1 else ''} (test split, selected on validation)"
    bench = problem_label(base["benchmark"])
    title = f"{get(name).title}; {bench}: {s}"
    atomic.write(out / f"{name}.md", f"{title}\n\n{md}\n")
    atomic.write(out / f"{name}.csv", csv_text)
    png = plot_preset(name, delta_p, out / f"{name}.png", subtitle=f"{bench}, {seeds} seed(s)")
    return {**res, "paper": f"{title}\n\n{md}", "paths": [*res["paths"], out / f"{name}.md", out / f"{name}.csv", png]}

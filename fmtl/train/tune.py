"""``fmtl tune``: the paper's protocol as a command — a hyperparameter grid, selected on validation Δp only.

The paper grid-searches DB-MTL's β over {0.1, 0.5, 0.9, 0.1/k^0.5, 0.5/k^0.5, 0.9/k^0.5} for each
dataset (Section 4.1); with ``beta`` = β and ``beta_sigma`` = σ in β_k = β / k^σ (Eq. 1) that grid
is ``beta ∈ {0.1, 0.5, 0.9} × beta_sigma ∈ {0, 0.5}``, the preset ``paper-beta`` (:data:`GRIDS`).

* **Grid.** ``--grid KEY=V1,V2,…`` (repeatable; values typed as for ``--opt``, commas inside
  ``[…]`` kept) over the method's hyperparameters; the points are the cartesian product
  (:func:`grid_points`), the first key varying slowest. A key both in the grid and in
  ``--opt``/``--config`` takes the grid's values. Every point is checked (the balancer is built)
  before anything is trained or written.
* **Runs.** Each point × seed is a row of :func:`fmtl.train.compare.run_rows`: the STL reference
  of each seed is trained once into ``<out>/stl/seed<s>`` and shared, each point goes to
  ``<out>/<point label>/seed<s>`` (:func:`point_label`), finished runs are reused.
* **Selection** (:func:`select_point`): the point with the best *validation* Δp (Eq. 3, against
  STL's validation metrics, at each run's epoch selected on validation) averaged over the seeds;
  test metrics never enter it. The selected point's *test* Δp mean ± std is what is reported.
* **Outputs**: ``tune.md`` and ``tune.csv`` (every point: validation and test Δp mean ± std over
  seeds, the selected one marked), ``tune.json`` (every seed's values), and ``selected.toml`` —
  the job with the selected hyperparameters as a ``[opts.METHOD]`` table, which
  ``fmtl train --config selected.toml`` and ``fmtl compare --config selected.toml --methods …``
  read (verified to resolve to the selected run's configuration when written).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate

from .. import atomic
from .compare import Row, run_rows
from .config import DEFAULTS, differences, dumps, for_method, load_toml, merge, method_opts, parse_value, tomllib
from .problems import label as problem_label
from .records import to_json
from .report import mean_std, pm

__all__ = ["GRIDS", "parse_grid", "grid_from", "grid_points", "point_label", "select_point", "tune_table",
           "selected_config", "tune", "command"]  # fmt: skip

#: Named grids: ``{name: (method, {key: values})}``. ``paper-beta`` is Section 4.1's β grid.
GRIDS: dict[str, tuple[str, dict[str, list[Any]]]] = {
    "paper-beta": ("dbmtl", {"beta": [0.1, 0.5, 0.9], "beta_sigma": [0.0, 0.5]}),
}

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]")


def _split_values(text: str) -> list[str]:
    """``"0.1,[1,2],max"`` → ``["0.1", "[1,2]", "max"]``: commas inside brackets or quotes stay."""
    parts, depth, quote, cur = [], 0, "", ""
    for c in text:
        if quote:
            quote = "" if c == quote else quote
        elif c in "\"'":
            quote = c
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        cur += c
    return [*parts, cur]


def parse_grid(text: str) -> tuple[str, list[Any]]:
    """Parses ``KEY=V1,V2,…`` into ``(key, values)`` (values typed as for ``--opt``).

    Example:
        >>> parse_grid("beta=0.1,0.5,0.9")
        ('beta', [0.1, 0.5, 0.9])
        >>> parse_grid("alpha=max, mean, 1.0")
        ('alpha', ['max', 'mean', 1.0])
        >>> parse_grid("beta=0.1,,0.5")
        Traceback (most recent call last):
        ...
        ValueError: --grid 'beta=0.1,,0.5': an empty value; expected KEY=V1,V2,...
        >>> parse_grid("beta=0.1,0.1")
        Traceback (most recent call last):
        ...
        ValueError: --grid 'beta=0.1,0.1': the value 0.1 is given twice
    """
    key, eq, rest = text.partition("=")
    key = key.strip()
    if not eq or not _KEY.fullmatch(key):
        raise ValueError(f"--grid {text!r}: expected KEY=V1,V2,... (KEY a hyperparameter name)")
    raw = [v.strip() for v in _split_values(rest)]
    if any(not v for v in raw):
        raise ValueError(f"--grid {text!r}: an empty value; expected KEY=V1,V2,...")
    values = [parse_value(v) for v in raw]
    for i, v in enumerate(values):
        if any(type(v) is type(w) and v == w for w in values[:i]):
            raise ValueError(f"--grid {text!r}: the value {raw[i]} is given twice")
    return key, values


def grid_from(texts: Sequence[str], preset: str | None, method: str | None) -> tuple[str, dict[str, list[Any]]]:
    """The method and the grid of ``--grid-preset`` (if any) and the ``--grid`` arguments.

    Args:
        texts: the ``--grid KEY=V1,V2,…`` arguments.
        preset: a name in :data:`GRIDS`, or None.
        method: ``--method`` as given (None: the preset's, else DB-MTL).

    Example:
        >>> grid_from(["alpha=max,mean"], "paper-beta", None)
        ('dbmtl', {'beta': [0.1, 0.5, 0.9], 'beta_sigma': [0.0, 0.5], 'alpha': ['max', 'mean']})
        >>> grid_from([], "paper-beta", "pcgrad")
        Traceback (most recent call last):
        ...
        ValueError: --grid-preset paper-beta is a grid of dbmtl, not of --method pcgrad
        >>> grid_from(["beta=0.1", "beta=0.5"], None, None)
        Traceback (most recent call last):
        ...
        ValueError: --grid beta=0.5: beta is already a key of the grid; give its values once (beta=V1,V2,...)
    """
    grid: dict[str, list[Any]] = {}
    if preset is not None:
        if preset not in GRIDS:
            raise ValueError(f"unknown --grid-preset {preset!r}; valid: {', '.join(GRIDS)}")
        owner, values = GRIDS[preset]
        if method is not None and method != owner:
            raise ValueError(f"--grid-preset {preset} is a grid of {owner}, not of --method {method}")
        method = owner
        grid.update({k: list(v) for k, v in values.items()})
    for text in texts:
        key, values = parse_grid(text)
        if key in grid:
            raise ValueError(f"--grid {text}: {key} is already a key of the grid; give its values once "
                             f"({key}=V1,V2,...)")  # fmt: skip
        grid[key] = values
    if not grid:
        raise ValueError(f"fmtl tune needs --grid KEY=V1,V2,... or --grid-preset NAME ({', '.join(GRIDS)})")
    labels = [point_label(p) for p in grid_points(grid)]
    same = next((label for i, label in enumerate(labels) if label in labels[:i]), None)
    if same is not None:
        raise ValueError(f"--grid: two points would share the run directory {same!r}; give values that differ in "
                         "more than punctuation")  # fmt: skip
    return method or DEFAULTS["method"], grid


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of the grid, the first key varying slowest.

    Example:
        >>> grid_points({"beta": [0.1, 0.9], "beta_sigma": [0.0, 0.5]})  # doctest: +NORMALIZE_WHITESPACE
        [{'beta': 0.1, 'beta_sigma': 0.0}, {'beta': 0.1, 'beta_sigma': 0.5},
         {'beta': 0.9, 'beta_sigma': 0.0}, {'beta': 0.9, 'beta_sigma': 0.5}]
    """
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]


def _text(v: Any) -> str:
    return json.dumps(v, separators=(",", ":")) if not isinstance(v, str) else v


def point_label(point: Mapping[str, Any]) -> str:
    """The directory name of a grid point: ``key`` + value per key in sorted order, joined by ``-``.

    Sorted keys make the label independent of the grid's key order, so ``fmtl compare --preset fig5``
    and ``fmtl tune --grid-preset paper-beta`` with the same ``--out`` share their runs.

    Example:
        >>> point_label({"beta_sigma": 0.5, "beta": 0.1}), point_label({"alpha": "max", "w": [1, 2]})
        ('beta0.1-beta_sigma0.5', 'alphamax-w_1_2_')
    """
    return "-".join(_UNSAFE.sub("_", f"{k}{_text(point[k])}") for k in sorted(point))


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def _num(v: Any) -> float:
    return float(v) if _finite(v) else math.nan


def _setting(point: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_text(v)}" for k, v in point.items())


def select_point(val: Mapping[str, Sequence[float]]) -> str:
    """The label with the best mean validation Δp over seeds (ties: the first); test values are not an argument.

    A point with a missing or non-finite validation Δp on any seed is never selected.

    Example:
        >>> select_point({"b0.1": [1.0, 3.0], "b0.5": [2.5, 2.0], "b0.9": [float("nan"), 9.0]})
        'b0.5'
    """
    means = {label: statistics.fmean(v) if v and all(_finite(x) for x in v) else math.nan for label, v in val.items()}
    finite = [label for label, m in means.items() if math.isfinite(m)]
    if not finite:
        raise ValueError("no grid point has a finite validation Δp on every seed; nothing to select")
    return max(finite, key=lambda label: means[label])  # max keeps the first of equal means


def tune_table(points: Mapping[str, Mapping[str, Any]], keys: Sequence[str], selected: str) -> tuple[str, str]:
    """(Markdown, CSV) of every grid point: its values, validation and test Δp mean ± std, the selected one marked.

    Args:
        points: ``{label: {"point": {key: value}, "val": [Δp per seed], "test": [Δp per seed]}}``.
        keys: the grid's keys (one column each).
        selected: the selected label.

    Example:
        >>> pts = {"beta0.1": {"point": {"beta": 0.1}, "val": [1.0, 3.0], "test": [5.0, 5.0]},
        ...        "beta0.5": {"point": {"beta": 0.5}, "val": [2.5, 2.0], "test": [0.0, 1.0]}}
        >>> md, text = tune_table(pts, ["beta"], "beta0.5")
        >>> print(md)
        | beta    | validation Δp (%) ↑   | test Δp (%)      | selected   |
        |---------|-----------------------|------------------|------------|
        | 0.1     | +2.00 ± 1.41          | +5.00 ± 0.00     |            |
        | **0.5** | **+2.25 ± 0.35**      | **+0.50 ± 0.71** | ✓          |
        >>> print(text)
        label,beta,seeds,val_delta_p_mean,val_delta_p_std,test_delta_p_mean,test_delta_p_std,selected
        beta0.1,0.1,2,2.0,1.4142135623730951,5.0,0.0,false
        beta0.5,0.5,2,2.25,0.3535533905932738,0.5,0.7071067811865476,true
        <BLANKLINE>
    """
    head = [*keys, "validation Δp (%) ↑", "test Δp (%)", "selected"]
    body = []
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["label", *keys, "seeds", "val_delta_p_mean", "val_delta_p_std", "test_delta_p_mean",
                "test_delta_p_std", "selected"])  # fmt: skip
    for label, p in points.items():
        chosen = label == selected
        val, test = mean_std(p["val"]), mean_std(p["test"])
        cells = [_text(p["point"][k]) for k in keys] + [pm(val), pm(test)]
        body.append([f"**{c}**" if chosen else c for c in cells] + ["✓" if chosen else ""])
        w.writerow([label, *(_text(p["point"][k]) for k in keys), len(p["val"]), *val, *test,
                    "true" if chosen else "false"])  # fmt: skip
    return tabulate(body, headers=head, tablefmt="github", disable_numparse=True), buf.getvalue()


def selected_config(base: Mapping[str, Any], method: str, opts: Mapping[str, Any]) -> dict[str, Any]:
    """The job of ``base`` with ``method`` and its selected ``opts`` as an ``[opts.METHOD]`` table (no seed).

    Example:
        >>> cfg = selected_config({"benchmark": "synthetic", "seed": 2, "epochs": 3, "opts": {"eps": 1e-6}},
        ...                       "dbmtl", {"eps": 1e-6, "beta": 0.5})
        >>> cfg
        {'benchmark': 'synthetic', 'epochs': 3, 'method': 'dbmtl', 'opts': {'dbmtl': {'eps': 1e-06, 'beta': 0.5}}}
        >>> for_method(merge(DEFAULTS, cfg))["opts"]
        {'eps': 1e-06, 'beta': 0.5}
    """
    job = {k: v for k, v in base.items() if k not in ("seed", "opts", "method")}
    return {**job, "method": method, "opts": {method: dict(opts)}}


def _selected_toml(cfg: Mapping[str, Any], header: Sequence[str], path: Path, run_config: Mapping[str, Any]) -> None:
    """Writes ``selected.toml`` atomically once its text resolves to the selected run's configuration; verifies it."""
    from .runs import normalize

    text = "".join(f"# {line}\n" for line in header) + dumps(cfg)
    back = normalize(for_method(merge(DEFAULTS, tomllib.loads(text), {"seed": run_config["seed"]})))
    if back != normalize(run_config):
        diff = differences(back, normalize(run_config), ignore=())
        raise RuntimeError(f"{path}: the selected setting does not read back as the selected run (differs: {diff})")
    atomic.write(path, text)
    if load_toml(path) != tomllib.loads(text):
        raise RuntimeError(f"{path} does not read back as written")


def tune(
    base: Mapping[str, Any],
    method: str,
    grid: Mapping[str, Sequence[Any]],
    seeds: int,
    out: str | Path,
    *,
    overwrite: bool = False,
    quiet: bool = False,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Trains (or reuses) every grid point × seed, selects on validation Δp, writes the table and ``selected.toml``.

    Args:
        base: a resolved configuration (its ``opts`` hold the hyperparameters shared by every
            point; the grid's keys replace theirs).
        method: the method tuned.
        grid: ``{key: values}`` (:func:`grid_from`); every point must already be checked.
        seeds: seeds 0 … seeds−1 per point.
        out: the directory of the runs and the outputs.
        overwrite, quiet, device: as for :func:`fmtl.train.fit`.

    Returns:
        ``{"selected", "point", "val", "test", "markdown", "csv", "points", "paths"}`` with
        ``val``/``test`` the selected point's (mean, std) Δp over seeds.
    """
    out = Path(out)
    shared = method_opts(base.get("opts") or {}, method)
    points = {point_label(p): p for p in grid_points(grid)}
    rows = {label: Row(label, method, {**shared, **p}) for label, p in points.items()}
    results = run_rows(base, rows, seeds, out, overwrite=overwrite, quiet=quiet, device=device)
    table: dict[str, dict[str, Any]] = {}
    for label, p in points.items():
        rs = results[label]
        bad = [r["seed"] for r in rs if r["selected"].get("criterion") != "val_delta_p"]
        if bad:
            raise ValueError(f"{label} seed {bad[0]}: selected without an STL reference; no validation Δp to tune on")
        table[label] = {"point": p, "opts": rows[label].opts, "seeds": [r["seed"] for r in rs],
                        "val": [_num(r["selected"]["score"]) for r in rs],
                        "test": [_num(r["delta_p"]) for r in rs]}  # fmt: skip
    chosen = select_point({label: t["val"] for label, t in table.items()})
    val, test = mean_std(table[chosen]["val"]), mean_std(table[chosen]["test"])
    markdown, csv_text = tune_table(table, list(grid), chosen)
    s = f"{seeds} seed{'s' if seeds > 1 else ''}"
    title = (f"{problem_label(base['benchmark'])}: {method} over {len(points)} grid points × {s}; selected on the "
             f"validation Δp mean, test Δp reported (mean ± std over seeds)")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    atomic.write(out / "tune.md", f"{title}\n\n{markdown}\n")
    atomic.write(out / "tune.csv", csv_text)
    atomic.write(out / "tune.json", to_json({"method": method, "grid": dict(grid), "seeds": seeds, "selected": chosen,
                                             "points": table}, indent=1))  # fmt: skip
    header = [f"fmtl tune: {method} on {base['benchmark']}, selected on the validation Δp (mean over {s}) among "
              f"{len(points)} grid points ({'; '.join(f'{k} = {_text(v)}' for k, v in grid.items())})",
              f"selected: {_setting(points[chosen])} (validation Δp {pm(val)} %, test Δp {pm(test)} %)",
              f"runs in {out}; reuse: fmtl train --config selected.toml  |  "
              f"fmtl compare --config selected.toml --methods ew,{method}"]  # fmt: skip
    first = results[chosen][0]["config"]
    _selected_toml(selected_config(base, method, rows[chosen].opts), header, out / "selected.toml", first)
    paths = [out / "tune.md", out / "tune.csv", out / "tune.json", out / "selected.toml"]
    return {"selected": chosen, "point": points[chosen], "val": val, "test": test, "title": title,
            "markdown": markdown, "csv": csv_text, "points": table, "paths": paths}  # fmt: skip


def command(args: Any, cfg: Mapping[str, Any], set_threads: Any) -> int:
    """``fmtl tune``: checks the grid and every point (nothing written before), then :func:`tune` and prints.

    Args:
        args: the parsed ``fmtl tune`` arguments.
        cfg: their resolved configuration (:func:`fmtl.train.cli.config_from_args`).
        set_threads: sets torch's thread count for the run (``(args, cfg) -> None``).

    Example:
        >>> from fmtl.train.cli import build_parser, config_from_args
        >>> a = build_parser().parse_args(["tune", "--benchmark", "synthetic", "--grid", "gamma=1,2"])
        >>> command(a, config_from_args(a), None)
        Traceback (most recent call last):
        ...
        ValueError: --grid point gamma=1: --opt: method 'dbmtl' has no option(s) ['gamma']; valid: [...]
    """
    from .device import resolve
    from .fit import check

    method, grid = grid_from(args.grid, args.grid_preset, args.method)
    if method == "stl":
        raise ValueError("fmtl tune tunes an MTL method's hyperparameters; 'stl' has none")
    if args.seeds < 1:
        raise ValueError("--seeds must be >= 1")
    base = for_method({**cfg, "method": method})
    check({**base, "method": "stl", "opts": {}})
    for point in grid_points(grid):
        try:
            check({**base, "opts": {**base["opts"], **point}})
        except (TypeError, ValueError) as e:  # a wrongly typed value fails inside the factory as a TypeError
            raise ValueError(f"--grid point {_setting(point)}: {e}") from None
    device = resolve(args.device)
    set_threads(args, base)
    out = Path(args.out or f"runs/tune-{problem_label(base['benchmark'])}-{method}")
    res = tune(base, method, grid, args.seeds, out, overwrite=args.overwrite, quiet=args.quiet, device=device)
    print(f"{res['title']}\n\n{res['markdown']}\n")
    print(f"selected on validation: {_setting(res['point'])} (validation Δp {pm(res['val'])} %); "
          f"its test Δp: {pm(res['test'])} % (mean ± std over {args.seeds} seed{'s' if args.seeds > 1 else ''})")
    print("written: " + ", ".join(str(p) for p in res["paths"]))
    return 0

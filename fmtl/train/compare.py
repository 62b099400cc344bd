"""``fmtl compare``: several methods × seeds on one benchmark, one paper-style table.

For each seed s the STL ensemble is trained once into ``<out>/stl/seed<s>`` and every method
into ``<out>/<method>/seed<s>`` with Δp measured against that seed's STL; finished runs are
reused, unfinished ones resumed. The table (Table 3 layout: the mean over seeds of each
task's test metric, Δp mean ± std, the best value of each column in bold) is written as
``table.md`` and ``table.csv``, with a bar chart of Δp per method in ``delta_p.png``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import runs
from .config import nest_opts
from .loop import write_atomic
from .plots import plot_delta_p
from .report import aggregate, compare_table

__all__ = ["split_opts", "compare"]


def split_opts(opts: Mapping[str, Any], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per-method hyperparameters: ``method.key`` (or a ``[opts.method]`` table) applies to one method,
    ``key`` to all; the per-method value wins.

    Example:
        >>> split_opts({"dbmtl.beta": 0.5, "eps": 1e-6}, ["ew", "dbmtl"])
        {'ew': {'eps': 1e-06}, 'dbmtl': {'eps': 1e-06, 'beta': 0.5}}
        >>> split_opts({"dbmtl": {"beta": 0.5}}, ["dbmtl"])  # the form config.toml holds
        {'dbmtl': {'beta': 0.5}}
        >>> split_opts({"pcgrad.seed": 1}, ["ew", "dbmtl"])
        Traceback (most recent call last):
        ...
        ValueError: --opt pcgrad.*: 'pcgrad' is not one of the methods being run (ew, dbmtl)
    """
    nested = nest_opts(opts)
    shared = {k: v for k, v in nested.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in nested.items() if isinstance(v, dict)}
    unknown = [m for m in tables if m not in methods]
    if unknown:
        raise ValueError(f"--opt {unknown[0]}.*: {unknown[0]!r} is not one of the methods being run "
                         f"({', '.join(methods)})")  # fmt: skip
    return {m: {**shared, **tables.get(m, {})} for m in methods}


def compare(
    base: Mapping[str, Any],
    methods: Sequence[str],
    seeds: int,
    out: str | Path,
    *,
    overwrite: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Runs (or reuses) every method and seed, then writes and returns the comparison table.

    Args:
        base: a configuration (the method and seed in it are replaced; ``base["opts"]`` is split
            with :func:`split_opts`).
        methods: balancer names (``"stl"`` is always included as the reference row).
        seeds: seeds 0 … seeds−1.
        out: the comparison's directory.

    Returns:
        ``{"markdown", "csv", "rows", "paths"}``.
    """
    out = Path(out)
    methods = [m for m in methods if m != "stl"]
    per_method = split_opts(base.get("opts") or {}, methods)
    results: dict[str, list] = {"stl": []}
    for m in methods:
        results[m] = []
    for s in range(seeds):
        seed_cfg = {**base, "seed": s, "opts": {}}
        stl_dir = out / "stl" / f"seed{s}"
        stl_res, _ = runs.run(runs.stl_config(seed_cfg), stl_dir, resume=True, overwrite=overwrite, quiet=quiet)
        results["stl"].append(stl_res)
        for m in methods:
            cfg = {**seed_cfg, "method": m, "opts": per_method[m]}
            res, reused = runs.run(cfg, out / m / f"seed{s}", resume=True, overwrite=overwrite, stl=str(stl_dir),
                                   quiet=quiet)  # fmt: skip
            if reused and not quiet:
                print(f"fmtl: reusing the finished run {out / m / f'seed{s}'}", flush=True)
            results[m].append(res)
    rows = {}
    for name, rs in results.items():
        agg = aggregate(rs)
        if name == "stl":
            agg["delta_p"] = (0.0, 0.0)
        rows[name] = agg
    markdown, csv_text = compare_table(rows, results["stl"][0])
    out.mkdir(parents=True, exist_ok=True)
    title = f"{base['benchmark']}: test metrics (mean over {seeds} seed{'s' if seeds > 1 else ''}), Δp vs STL"
    write_atomic(out / "table.md", f"{title}\n\n{markdown}\n")
    write_atomic(out / "table.csv", csv_text)
    png = plot_delta_p({k: v["delta_p"] for k, v in rows.items() if k != "stl"}, out / "delta_p.png",
                       title=f"{base['benchmark']}: Δp vs STL ({seeds} seed{'s' if seeds > 1 else ''})")  # fmt: skip
    return {"markdown": f"{title}\n\n{markdown}", "csv": csv_text, "rows": rows,
            "paths": [out / "table.md", out / "table.csv", png]}  # fmt: skip

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

import torch

from .. import atomic
from . import runs
from .fit import fit
from .plots import plot_delta_p
from .problems import label
from .report import aggregate, compare_table

__all__ = ["split_opts", "compare"]


def split_opts(opts: Mapping[str, Any], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per-method hyperparameters: ``method.key`` applies to one method, ``key`` to all.

    Example:
        >>> split_opts({"dbmtl.beta": 0.5, "eps": 1e-6}, ["ew", "dbmtl"])
        {'ew': {'eps': 1e-06}, 'dbmtl': {'eps': 1e-06, 'beta': 0.5}}
    """
    out: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for key, v in opts.items():
        prefix, dot, rest = key.partition(".")
        if dot and prefix in out:
            continue
        for m in methods:
            out[m][key] = v
    for key, v in opts.items():
        prefix, dot, rest = key.partition(".")
        if dot and prefix in out:
            out[prefix][rest] = v
    return out


def compare(
    base: Mapping[str, Any],
    methods: Sequence[str],
    seeds: int,
    out: str | Path,
    *,
    overwrite: bool = False,
    quiet: bool = False,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Runs (or reuses) every method and seed, then writes and returns the comparison table.

    Args:
        base: a configuration (the method and seed in it are replaced; ``base["opts"]`` is split
            with :func:`split_opts`).
        methods: balancer names (``"stl"`` is always included as the reference row).
        seeds: seeds 0 … seeds−1.
        out: the comparison's directory.
        overwrite, quiet, device: as for :func:`fmtl.train.fit`.

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
        stl_res = fit(None, stl_dir, config=runs.stl_config(seed_cfg), resume=True, overwrite=overwrite, quiet=quiet,
                      device=device)  # fmt: skip
        stl_res.pop("reused")
        results["stl"].append(stl_res)
        for m in methods:
            cfg = {**seed_cfg, "method": m, "opts": per_method[m]}
            res = fit(None, out / m / f"seed{s}", config=cfg, resume=True, overwrite=overwrite, stl=str(stl_dir),
                      quiet=quiet, device=device)  # fmt: skip
            if res.pop("reused") and not quiet:
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
    name = label(base["benchmark"])
    title = f"{name}: test metrics (mean over {seeds} seed{'s' if seeds > 1 else ''}), Δp vs STL"
    atomic.write(out / "table.md", f"{title}\n\n{markdown}\n")
    atomic.write(out / "table.csv", csv_text)
    png = plot_delta_p({k: v["delta_p"] for k, v in rows.items() if k != "stl"}, out / "delta_p.png",
                       title=f"{name}: Δp vs STL ({seeds} seed{'s' if seeds > 1 else ''})")  # fmt: skip
    return {"markdown": f"{title}\n\n{markdown}", "csv": csv_text, "rows": rows,
            "paths": [out / "table.md", out / "table.csv", png]}  # fmt: skip

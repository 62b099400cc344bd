"""``fmtl compare``: several methods (and named variants of them) × seeds on one benchmark, one paper-style table.

For each seed s the STL ensemble is trained once into ``<out>/stl/seed<s>`` and every row into
``<out>/<row>/seed<s>`` with Δp measured against that seed's STL; finished runs are reused,
unfinished ones resumed. A row is a method (``--methods ew,dbmtl``) or a named variant
``LABEL=METHOD:key=value,key=value`` (``--variant``, repeatable; :func:`parse_variant`), e.g.
``dbmtl-b05=dbmtl:beta=0.5`` next to plain ``dbmtl``. Hyperparameters: ``--opt key=value`` applies to
every row, ``--opt METHOD.key=value`` to the rows of that method, a variant's own keys to it alone
(:func:`expand_rows`). Each run is announced as "run 3 of 8: dbmtl seed 1" (:func:`plan`).

The table (Table 3 layout: the mean over seeds of each task's test metric, Δp mean ± std, the
best MTL row of each column in bold) is written as ``table.md``, ``table.csv`` (per-seed values,
then mean and std) and ``table.tex`` (booktabs), with a bar chart of Δp per row in ``delta_p.png``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .. import atomic
from . import runs
from .config import nest_opts, parse_value
from .fit import fit
from .plots import plot_delta_p
from .problems import label as problem_label
from .report import aggregate, compare_table, compare_tex

__all__ = ["Row", "Job", "split_opts", "parse_variant", "expand_rows", "plan", "compare", "REFERENCE"]

#: The name of the STL reference row (and of its runs' directory).
REFERENCE = "stl"

_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
# a comma that starts the next key=value (so list values such as [64,64] keep their commas)
_NEXT_PAIR = re.compile(r",\s*(?=[A-Za-z_][A-Za-z0-9_]*\s*=)")


class Row(NamedTuple):
    """One row of the table: its label (also its directory), the method and its hyperparameters."""

    label: str
    method: str
    opts: dict[str, Any]


class Job(NamedTuple):
    """One run of a comparison: a row (or the STL reference) and a seed."""

    label: str
    method: str
    opts: dict[str, Any]
    seed: int


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


def parse_variant(text: str) -> Row:
    """Parses ``LABEL=METHOD`` or ``LABEL=METHOD:key=value,key=value`` (values typed as for ``--opt``).

    Example:
        >>> parse_variant("dbmtl-b05=dbmtl:beta=0.5,alpha=max")
        Row(label='dbmtl-b05', method='dbmtl', opts={'beta': 0.5, 'alpha': 'max'})
        >>> parse_variant("pcg-log=pcgrad:log_transform=true").opts
        {'log_transform': True}
        >>> parse_variant("dbmtl:beta=0.5")
        Traceback (most recent call last):
        ...
        ValueError: --variant 'dbmtl:beta=0.5': expected LABEL=METHOD:key=value,key=value
    """
    label, eq, rest = text.partition("=")
    method, colon, pairs = rest.partition(":")
    label, method = label.strip(), method.strip()
    if not eq or not label or not method or ":" in label:
        raise ValueError(f"--variant {text!r}: expected LABEL=METHOD:key=value,key=value")
    if not _LABEL.fullmatch(label):
        raise ValueError(f"--variant {text!r}: the label {label!r} names a directory: use letters, digits and _ . + -")
    opts: dict[str, Any] = {}
    for pair in _NEXT_PAIR.split(pairs) if pairs.strip() else []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--variant {text!r}: expected key=value, got {pair!r}")
        opts[key.strip()] = parse_value(value.strip())
    return Row(label, method, opts)


def expand_rows(methods: Sequence[str], variants: Sequence[Row], opts: Mapping[str, Any]) -> dict[str, Row]:
    """The table's rows: one per method, then the variants; each with its resolved hyperparameters.

    A row's hyperparameters are the shared ``--opt`` keys, then its method's ``METHOD.key`` keys,
    then (for a variant) its own. Labels must be unique and must not be ``stl``.

    Example:
        >>> rows = expand_rows(["ew", "dbmtl"], [parse_variant("b05=dbmtl:beta=0.5")],
        ...                    {"dbmtl.alpha": "max", "eps": 1e-6})
        >>> [(r.label, r.method, r.opts) for r in rows.values()]  # doctest: +NORMALIZE_WHITESPACE
        [('ew', 'ew', {'eps': 1e-06}), ('dbmtl', 'dbmtl', {'eps': 1e-06, 'alpha': 'max'}),
         ('b05', 'dbmtl', {'eps': 1e-06, 'alpha': 'max', 'beta': 0.5})]
        >>> expand_rows(["dbmtl"], [parse_variant("dbmtl=dbmtl:beta=0.5")], {})
        Traceback (most recent call last):
        ...
        ValueError: --variant dbmtl: the label is already a row of the table; labels must be unique
    """
    names = list(dict.fromkeys([*methods, *(v.method for v in variants)]))
    per_method = split_opts(opts, names)
    rows = {m: Row(m, m, dict(per_method[m])) for m in methods}
    for v in variants:
        if v.label == REFERENCE or v.label in rows:
            what = "is the STL reference" if v.label == REFERENCE else "is already a row of the table"
            raise ValueError(f"--variant {v.label}: the label {what}; labels must be unique")
        rows[v.label] = Row(v.label, v.method, {**per_method[v.method], **v.opts})
    return rows


def plan(rows: Mapping[str, Row], seeds: int) -> list[Job]:
    """Every run of the comparison in order: per seed the STL reference first, then each row.

    Example:
        >>> jobs = plan({"ew": Row("ew", "ew", {}), "dbmtl": Row("dbmtl", "dbmtl", {})}, 2)
        >>> [f"run {i} of {len(jobs)}: {j.label} seed {j.seed}" for i, j in enumerate(jobs, 1)][4]
        'run 5 of 6: ew seed 1'
    """
    jobs = []
    for s in range(seeds):
        jobs.append(Job(REFERENCE, REFERENCE, {}, s))
        jobs += [Job(r.label, r.method, dict(r.opts), s) for r in rows.values()]
    return jobs


def compare(
    base: Mapping[str, Any],
    methods: Sequence[str],
    seeds: int,
    out: str | Path,
    *,
    variants: Sequence[Row] = (),
    overwrite: bool = False,
    quiet: bool = False,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Runs (or reuses) every row and seed, then writes and returns the comparison table.

    Args:
        base: a configuration (the method, seed and hyperparameters are replaced per run;
            ``base["opts"]`` is split with :func:`expand_rows`).
        methods: balancer names (``"stl"`` is always included as the reference row).
        seeds: seeds 0 … seeds−1.
        out: the comparison's directory.
        variants: extra rows (:func:`parse_variant`).
        overwrite, quiet, device: as for :func:`fmtl.train.fit`.

    Returns:
        ``{"markdown", "csv", "tex", "rows", "paths"}``.
    """
    out = Path(out)
    rows = expand_rows([m for m in methods if m != REFERENCE], variants, base.get("opts") or {})
    jobs = plan(rows, seeds)
    results: dict[str, list] = {REFERENCE: [], **{label: [] for label in rows}}
    for i, job in enumerate(jobs, 1):
        if not quiet:
            print(f"fmtl: run {i} of {len(jobs)}: {job.label} seed {job.seed}", flush=True)
        seed_cfg = {**base, "seed": job.seed, "opts": {}}
        stl_dir = out / REFERENCE / f"seed{job.seed}"
        run_dir = out / job.label / f"seed{job.seed}"
        if job.label == REFERENCE:
            res = fit(None, stl_dir, config=runs.stl_config(seed_cfg), resume=True, overwrite=overwrite, quiet=quiet,
                      device=device)  # fmt: skip
        else:
            res = fit(None, run_dir, config={**seed_cfg, "method": job.method, "opts": job.opts}, resume=True,
                      overwrite=overwrite, stl=str(stl_dir), quiet=quiet, device=device)  # fmt: skip
        if res.pop("reused") and not quiet:
            print(f"fmtl: reusing the finished run {run_dir}", flush=True)
        results[job.label].append(res)
    table = {name: aggregate(rs) for name, rs in results.items()}
    table[REFERENCE]["delta_p"] = (0.0, 0.0)
    template = results[REFERENCE][0]
    markdown, csv_text = compare_table(table, template, reference=REFERENCE)
    s = f"{seeds} seed{'s' if seeds > 1 else ''}"
    name = problem_label(base["benchmark"])
    title = f"{name}: test metrics (mean over {s}), Δp vs STL"
    tex = compare_tex(table, template, reference=REFERENCE, caption=title)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write(out / "table.md", f"{title}\n\n{markdown}\n")
    atomic.write(out / "table.csv", csv_text)
    atomic.write(out / "table.tex", tex + "\n")
    png = plot_delta_p({k: v["delta_p"] for k, v in table.items() if k != REFERENCE}, out / "delta_p.png",
                       title=f"{name}: Δp vs STL ({s})")  # fmt: skip
    return {"markdown": f"{title}\n\n{markdown}", "csv": csv_text, "tex": tex, "rows": table,
            "paths": [out / "table.md", out / "table.csv", out / "table.tex", png]}  # fmt: skip

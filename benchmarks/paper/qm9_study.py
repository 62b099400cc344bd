"""The QM9 study of issue 15: named experiments run through ``fmtl train``, collected into JSON.

Every run is one ``fmtl train`` subprocess (``--threads 1 --quiet``) with an explicit ``--out`` under
``--runs`` (default ``/work/runs/study``) and, for the MTL methods, an explicit ``--stl DIR``: the STL
ensemble of the same training setting (data options, batch size, epochs, optimizer, learning rate,
seed) is scheduled once, before the first run that needs it, and never trained by two processes at
once. A run whose ``results.json`` exists is skipped (the CLI would reuse it too); a run directory
without one (a run stopped midway) is trained again from scratch (``--overwrite``). At most ``--jobs``
(default 2) processes run at a time.

Usage::

    python benchmarks/paper/qm9_study.py list
    python benchmarks/paper/qm9_study.py run table5 beta_grid          # experiments, in this order
    python benchmarks/paper/qm9_study.py collect                       # results/ JSON + tables

``collect`` writes ``results/qm9_runs.json`` (one record per run: validation Δp of the selected epoch,
test Δp, per-task test MAE, seed, the full resolved configuration, wall time, the fmtl commit) and
``results/qm9_summary.json`` + ``results/qm9_tables.md`` (mean ± sample std over seeds per row).
Selection is on validation only: ``val_dp`` is ``selected.score`` (the validation Δp of the epoch the
run selected on validation), ``test_dp`` is the test Δp of that epoch.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RESULTS = HERE / "results"
DEFAULT_RUNS = Path("/work/runs/study")
SEEDS = (0, 1, 2)
FMTL = Path(sys.executable).parent / "fmtl"

#: DB-MTL's own defaults (fmtl.balancers.dbmtl = LibMTL's): left out of a run's name and command so
#: that the same configuration reached from two experiments is one run directory.
DBMTL_DEFAULTS = {"beta": 0.9, "beta_sigma": 0.0, "alpha": "max", "log_transform": True, "normalize": True}
#: The job's training settings (the qm9 benchmark's defaults), left out of names for the same reason.
SETTING_DEFAULTS = {"batch_size": 256, "epochs": 10, "optimizer": "adam", "lr": 1e-3}
#: The paper's β grid (Section 4.1): β_k = β / k^σ.
#: (0.01, 0.03, 0.1, 0.3) all diverged within 250 steps for EW (the descriptor's outliers; see
#: ``results/qm9_runs.json``'s failed runs in the driver log), hence the lower grid.
SGD_LRS = (1e-4, 3e-4, 1e-3, 3e-3)
#: Plain SGD on the clipped inputs (``--data clip=5``): the sweep of each method (seed 0). Every
#: method started on 1e-3…1e-1; the methods with the log transform had their best at 1e-3, the
#: lower edge, so their sweep went on downwards (rows of lrs never run stay empty and are not
#: candidates): the selected lr is inside every method's swept range.
SGD_CLIP_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
CLIP = {"clip": 5.0}
BETA_GRID = [(0.1, 0.0), (0.5, 0.0), (0.9, 0.0), (0.1, 0.5), (0.5, 0.5), (0.9, 0.5)]


def beta_label(beta: float, sigma: float) -> str:
    """``0.5`` or ``0.5/k^0.5``."""
    return f"{beta:g}" if not sigma else f"{beta:g}/k^{sigma:g}"


@dataclass(frozen=True)
class Run:
    """One ``fmtl train`` run: a method with hyperparameters, data options, training settings, a seed."""

    method: str
    seed: int
    opts: tuple = ()  # sorted (key, value) pairs, defaults dropped
    data: tuple = ()
    settings: tuple = ()
    ref: str = "same"  # the Δp reference: "same" (STL of this setting) or "default" (the default job's STL)

    @staticmethod
    def make(method: str, seed: int, opts: dict | None = None, data: dict | None = None,
             settings: dict | None = None, ref: str = "same") -> Run:
        opts = dict(opts or {})
        if method == "dbmtl":
            opts = {k: v for k, v in opts.items() if DBMTL_DEFAULTS.get(k, object()) != v}
        settings = {k: v for k, v in (settings or {}).items() if SETTING_DEFAULTS.get(k, object()) != v}
        run = Run(method, seed, _items(opts), _items(data or {}), _items(settings))
        return run if method == "stl" or ref == "same" or run.setting_stl() == run.default_stl() else \
            Run(method, seed, run.opts, run.data, run.settings, ref)  # fmt: skip

    def setting_stl(self) -> Run:
        """STL with the same data (all tasks: a task subset has the same STL models) and settings."""
        data = {k: v for k, v in self.data if k != "tasks"}
        return Run("stl", self.seed, (), _items(data), self.settings)

    def default_stl(self) -> Run:
        """STL of the default job, same seed."""
        return Run("stl", self.seed)

    def stl(self) -> Run | None:
        """The STL run this run's Δp (and validation selection) is measured against."""
        if self.method == "stl":
            return None
        return self.default_stl() if self.ref == "default" else self.setting_stl()

    def spec(self) -> dict:
        spec = {"method": self.method, "seed": self.seed, "opts": dict(self.opts), "data": dict(self.data),
                "settings": dict(self.settings)}
        return spec if self.ref == "same" else {**spec, "ref": self.ref}

    @property
    def name(self) -> str:
        parts = [self.method] + [f"{k}={_fmt(v)}" for k, v in self.opts + self.data + self.settings]
        digest = hashlib.sha1(json.dumps(self.spec(), sort_keys=True).encode()).hexdigest()[:6]
        slug = "_".join(parts).replace("/", "-").replace(" ", "").replace('"', "")
        return f"{slug}_seed{self.seed}_{digest}"

    def command(self, runs: Path) -> list[str]:
        cmd = [str(FMTL), "train", "--benchmark", "qm9", "--method", self.method, "--seed", str(self.seed),
               "--out", str(runs / self.name), "--threads", "1", "--quiet"]
        stl = self.stl()
        if stl is not None:
            cmd += ["--stl", str(runs / stl.name)]
        for k, v in self.settings:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
        opts = dict(self.opts)
        if self.method == "dbmtl":
            # β always explicit: the qm9 benchmark may set its own default β (issue 15's "act on
            # it"), and a run named without β means LibMTL's β = 0.9, σ = 0 here.
            opts = {"beta": DBMTL_DEFAULTS["beta"], "beta_sigma": DBMTL_DEFAULTS["beta_sigma"], **opts}
        cmd += [x for k, v in sorted(opts.items()) for x in ("--opt", f"{k}={_toml(v)}")]
        cmd += [x for k, v in self.data for x in ("--data", f"{k}={_toml(v)}")]
        return cmd


def _items(d: dict) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in d.items()))


def _fmt(v: Any) -> str:
    return "+".join(map(str, v)) if isinstance(v, tuple) else f"{v:g}" if isinstance(v, float) else str(v)


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple | list):
        return "[" + ",".join(_toml(x) for x in v) + "]"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


# ---------------------------------------------------------------------------------------------------
# Experiments: name -> rows; a row is (label, [runs over seeds]).


@dataclass
class Experiment:
    name: str
    title: str
    rows: list[tuple[str, list[Run]]] = field(default_factory=list)
    restrict: tuple[str, ...] | None = None  # also report test Δp over these tasks only
    def add(self, label: str, method: str, opts: dict | None = None, data: dict | None = None,
            settings: dict | None = None, seeds: Iterable[int] = SEEDS, ref: str = "same") -> None:
        self.rows.append((label, [Run.make(method, s, opts, data, settings, ref) for s in seeds]))


def _dbmtl(beta: float, sigma: float, **extra: Any) -> dict:
    return {"beta": beta, "beta_sigma": sigma, **extra}


def _method_specs(selected: tuple[float, float] | None, constant_beta: bool = False,
                  log_only: bool = True) -> list[tuple[str, str, dict | None]]:
    """(label, method, options) of EW, the log transform alone and DB-MTL at the selected β (and β = 0.9).

    The log-only row is the control for the gradient-magnitude half (DB-MTL = log only + EMA/max-norm):
    on the default job the two tie, so each setting asks whether the second half starts to matter.
    ``constant_beta`` adds DB-MTL at LibMTL's constant β = 0.9 (the input-scaling experiments: do the
    descriptor's outliers make a constant β collapse?); ``log_only=False`` leaves the log-only row out
    (asinh scaling, to fit the session's CPU budget: its question is β, not the second half).
    """
    specs: list[tuple[str, str, dict | None]] = [("EW", "ew", None)]
    if log_only:
        specs.append(("log only", "dbmtl", {"normalize": False}))
    if constant_beta:
        specs.append(("DB-MTL β=0.9", "dbmtl", _dbmtl(0.9, 0.0)))
    if selected is not None and selected != (0.9, 0.0):
        specs.append((f"DB-MTL β={beta_label(*selected)}", "dbmtl", _dbmtl(*selected)))
    return specs


def _method_rows(exp: Experiment, selected: tuple[float, float] | None, data: dict | None = None,
                 settings: dict | None = None, seeds: Iterable[int] = SEEDS, ref: str = "default",
                 constant_beta: bool = False, log_only: bool = True) -> None:
    """The rows of :func:`_method_specs` under one setting (data options and training settings).

    ``ref="default"``: Δp (and each run's epoch selection on validation Δp) against the default job's
    STL of the same seed, so that every setting is measured on one scale; the STL of the setting itself
    is a row of the ``stl_settings`` experiment (trained last: the STL ensemble is the slowest run here),
    and the tables add Δp against it where it exists.
    """
    for label, method, opts in _method_specs(selected, constant_beta, log_only):
        exp.add(label, method, opts, data, settings, tuple(seeds), ref)


def experiments(selected: tuple[float, float] | None) -> dict[str, Experiment]:
    """The study's experiments, in order of importance; ``selected`` is the β chosen on validation."""
    out: dict[str, Experiment] = {}

    def new(name: str, title: str) -> Experiment:
        out[name] = Experiment(name, title)
        return out[name]

    e = new("table5", "Table 5 on the default job (β = 0.9, LibMTL's default)")
    e.add("STL", "stl")
    e.add("EW (✗ log, ✗ grad)", "ew")
    e.add("log only (✓ log, ✗ grad)", "dbmtl", {"normalize": False})
    e.add("grad only (✗ log, ✓ grad), β=0.9", "dbmtl", {"log_transform": False})
    e.add("DB-MTL (✓ log, ✓ grad), β=0.9", "dbmtl")

    e = new("beta_grid", "The paper's β grid (Section 4.1), DB-MTL on the default job")
    for b, s in BETA_GRID:
        e.add(f"β={beta_label(b, s)}", "dbmtl", _dbmtl(b, s))

    if selected is None:
        return out
    sel = _dbmtl(*selected)
    e = new("default_job", f"The default job: DB-MTL at the qm9 benchmark's β = the selected {beta_label(*selected)}")
    e.add(f"DB-MTL, β={beta_label(*selected)}", "dbmtl", sel)

    e = new("table5_selected", f"Table 5 at the selected β = {beta_label(*selected)}")
    e.add("EW (✗ log, ✗ grad)", "ew")
    e.add("log only (✓ log, ✗ grad)", "dbmtl", {"normalize": False})
    e.add(f"grad only (✗ log, ✓ grad), β={beta_label(*selected)}", "dbmtl", {**sel, "log_transform": False})
    e.add(f"DB-MTL (✓ log, ✓ grad), β={beta_label(*selected)}", "dbmtl", sel)

    for b, name in ((selected, "alpha_selected"), ((0.9, 0.0), "alpha_0.9")):
        if name == "alpha_0.9" and selected == (0.9, 0.0):
            continue
        e = new(name, f"α_k of Eq. (2) (paper Fig. 6) at β = {beta_label(*b)}")
        for a in ("max", "min", "mean", "median", 1.0):
            e.add(f"β={beta_label(*b)}, α={'constant 1' if a == 1.0 else a}", "dbmtl", _dbmtl(*b, alpha=a))

    # The cheapest α comparison (one new row): the first controlled experiment run.
    e = new("alpha_mean_selected", f"α = max (the paper's) vs mean at β = {beta_label(*selected)}")
    for a in ("max", "mean"):
        e.add(f"β={beta_label(*selected)}, α={a}", "dbmtl", _dbmtl(*selected, alpha=a))

    settings_stl = []  # (label, data, settings) of every setting whose own STL is wanted
    e = new("scaling_clip", "Descriptor inputs standardized, then clipped to ±5σ (train statistics)")
    # EW and β = 0.9 are the Adam side of the SGD comparison (``sgd_clip``), same inputs.
    _method_rows(e, selected, data={"clip": 5.0}, constant_beta=True, log_only=False)
    settings_stl.append(("clip ±5σ", {"clip": 5.0}, None))

    e = new("scaling_asinh", "Descriptor inputs z = asinh((x − μ)/σ) (train statistics)")
    _method_rows(e, selected, data={"scaling": "asinh"}, constant_beta=True, log_only=False)
    settings_stl.append(("asinh", {"scaling": "asinh"}, None))

    subset = ("mu", "alpha", "homo", "lumo", "r2", "zpve", "U0", "cv")
    e = new("tasks_subset", "One of the four atomization energies: 8 tasks without U, H, G (same STL models)")
    e.restrict = subset
    _method_rows(e, selected, data={"tasks": list(subset)}, ref="same")
    full = Experiment("", "")
    _method_rows(full, selected)
    e.rows += [(f"{label}, 11-task run", rs) for label, rs in full.rows]

    e = new("batch128", "Batch size 128 (the paper's) instead of 256")
    _method_rows(e, selected, settings={"batch_size": 128})
    settings_stl.append(("batch 128", None, {"batch_size": 128}))

    e = new("sgd_lr", "SGD learning rate for the MTL runs, chosen on EW's validation Δp (seed 0)")
    for lr in SGD_LRS:
        e.add(f"EW SGD lr={lr:g}", "ew", settings={"optimizer": "sgd", "lr": lr}, seeds=(0,), ref="default")

    e = new("sgd_clip_lr", "SGD (no momentum) on inputs clipped to ±5σ: each method's lr on validation Δp (seed 0)")
    # β = 0.9 only: the hypothesis is about a constant β's EMA on top of Adam's momentum (the
    # selected β's sweep did not fit the session's CPU budget)
    for label, method, opts in _method_specs(None, constant_beta=True):
        for lr in SGD_CLIP_LRS:
            e.add(f"{label}, SGD lr={lr:g}", method, opts, CLIP, {"optimizer": "sgd", "lr": lr}, (0,), "default")

    e = new("epochs50", "50 epochs instead of 10")
    _method_rows(e, selected, settings={"epochs": 50})
    settings_stl.append(("50 epochs", None, {"epochs": 50}))

    e = new("stl_settings", "The STL ensemble under each controlled setting (Δp against the default STL)")
    for label, data, settings in settings_stl:
        e.add(f"STL, {label}", "stl", None, data, settings)
    return out


def sgd_experiment(lr: float, selected: tuple[float, float] | None) -> Experiment:
    """EW, log only and DB-MTL at β = 0.9 and the selected β under plain SGD (no momentum), at the sweep's lr.

    The test of the double-momentum hypothesis: if a constant β = 0.9 collapses because its EMA
    stacks on Adam's own momentum, it should not collapse under SGD without momentum. Δp against
    the default (Adam) STL of the seed, as every controlled setting; SGD's own STL is not trained
    (the session's CPU budget).
    """
    e = Experiment("sgd", f"SGD without momentum (lr {lr:g}, chosen on EW's validation Δp) instead of Adam")
    _method_rows(e, selected, settings={"optimizer": "sgd", "lr": lr}, constant_beta=True)
    return e


def sgd_clip_experiment(runs: Path, selected: tuple[float, float] | None) -> Experiment | None:
    """Each method of ``sgd_clip_lr`` at its own lr (best seed-0 validation Δp), 3 seeds; None until swept.

    The Adam side is ``scaling_clip`` (same clipped inputs, same rows), so the two differ in the
    optimizer only; plain SGD needs the clipped inputs here (on the raw descriptor every lr ≥ 3e-4
    diverges, ``sgd_lr``). Each method gets its own lr because the log transform and DB-MTL's
    max-norm rescaling change the gradient's scale, which Adam ignores and SGD does not.
    """
    sweep = experiments(selected)["sgd_clip_lr"]
    e = Experiment("sgd_clip", "SGD without momentum on inputs clipped to ±5σ, EW and DB-MTL β = 0.9 at "
                   "their lr (vs Adam: scaling_clip)")
    # EW and β = 0.9 with 3 seeds (the log-only row is its seed-0 sweep only: CPU budget)
    for label, method, opts in _method_specs(None, constant_beta=True, log_only=False):
        rows = [rs for row_label, rs in sweep.rows if row_label.startswith(f"{label}, SGD lr=")]
        lr = select_lr(runs, rows, partial=True)
        if lr is None:
            return None
        e.add(f"{label}, SGD lr={lr:g}", method, opts, CLIP, {"optimizer": "sgd", "lr": lr}, SEEDS, "default")
    return e


# ---------------------------------------------------------------------------------------------------
# Running.


def _commit() -> dict:
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "fmtl", "data", "models"],
                           capture_output=True, text=True).stdout.strip()
    return {"commit": head, "dirty": bool(dirty)}


def _finished(runs: Path, run: Run) -> bool:
    return (runs / run.name / "results.json").is_file()


def execute(todo: list[Run], runs: Path, jobs: int) -> None:
    """Runs ``todo`` (STL references first, as they are needed), at most ``jobs`` at a time."""
    queue: list[Run] = []
    for r in todo:
        stl = r.stl()
        for x in ([stl] if stl else []) + [r]:
            if x not in queue and not _finished(runs, x):
                queue.append(x)
    (runs / "logs").mkdir(parents=True, exist_ok=True)
    running: dict[Run, tuple[subprocess.Popen, float, Any]] = {}
    failed: set[Run] = set()
    print(f"{len(queue)} runs to do", flush=True)
    while queue or running:
        for r, (p, t0, log) in list(running.items()):
            if p.poll() is None:
                continue
            log.close()
            del running[r]
            ok = p.returncode == 0 and _finished(runs, r)
            if ok:
                _write_meta(runs / r.name, r, time.time() - t0)
            else:
                failed.add(r)
            status = "done" if ok else f"FAILED rc={p.returncode}"
            print(f"{datetime.datetime.now():%H:%M:%S} {status} "
                  f"{r.name} ({time.time() - t0:.0f} s)", flush=True)
        for r in list(queue):
            if len(running) >= jobs:
                break
            stl = r.stl()
            if stl is not None and stl in failed:
                queue.remove(r)
                failed.add(r)
                print(f"skipped {r.name}: its STL reference failed", flush=True)
                continue
            if stl is not None and not _finished(runs, stl):
                continue  # wait for the reference (it is queued before r, or running)
            queue.remove(r)
            cmd = r.command(runs)
            if (runs / r.name).exists():
                # An unfinished run (the driver or the machine stopped mid-run): start it over rather
                # than resume, so that every recorded run is one uninterrupted process.
                cmd.append("--overwrite")
            log = open(runs / "logs" / f"{r.name}.log", "w")  # noqa: SIM115 (closed when the process ends)
            p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                 env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
            running[r] = (p, time.time(), log)
            print(f"{datetime.datetime.now():%H:%M:%S} start {r.name}", flush=True)
        time.sleep(2)
    if failed:
        print(f"{len(failed)} runs failed: {sorted(r.name for r in failed)}", flush=True)


def _write_meta(out: Path, run: Run, wall: float) -> None:
    meta = {"spec": run.spec(), "command": run.command(out.parent), "process_wall_s": wall, **_commit(),
            "finished": datetime.datetime.now().isoformat(timespec="seconds")}
    tmp = out / "study_meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(out / "study_meta.json")


# ---------------------------------------------------------------------------------------------------
# Collecting.


def record(runs: Path, run: Run) -> dict | None:
    """The numbers of one finished run (None if unfinished)."""
    d = runs / run.name
    if not (d / "results.json").is_file():
        return None
    res = json.loads((d / "results.json").read_text())
    meta = json.loads((d / "study_meta.json").read_text()) if (d / "study_meta.json").is_file() else {}
    sel = res["selected"]
    rec = {"name": run.name, **run.spec(), "val_dp": sel.get("score") if run.method != "stl" else None,
           "test_dp": res.get("delta_p"), "selected_epoch": sel.get("epoch", sel.get("epochs")),
           "test_mae": {t: v["mae"] for t, v in sel["test"].items()},
           "val_mae": {t: v["mae"] for t, v in sel["val"].items()},
           "test_dp_tasks": sel.get("delta_p_tasks"), "wall_time_s": res["wall_time_s"],
           "process_wall_s": meta.get("process_wall_s"), "commit": meta.get("commit"), "dirty": meta.get("dirty"),
           "stl_dir": res.get("stl_dir"), "config": res["config"], "command": meta.get("command", run.command(runs))}
    if run.method == "stl":
        # The STL ensemble selects each task's epoch on its own validation MAE; its "score" is the mean
        # validation error normalized by the job's default STL (seed-matched) when one is available.
        rec["val_mean_mae_norm"] = None
    return rec


def _mean_std(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else math.nan)


def _pm(m: float, s: float) -> str:
    if math.isnan(m):
        return "—"
    return f"{m:+.1f} ± {s:.1f}" if not math.isnan(s) else f"{m:+.1f}"


def summarize(exp: Experiment, runs: Path, default_stl: dict[int, dict]) -> dict:
    """Per row: seeds done, mean ± std of validation Δp, test Δp, test Δp against the default STL, MAEs."""
    rows = []
    for label, rs in exp.rows:
        pairs = [(r, x) for r, x in ((r, record(runs, r)) for r in rs) if x is not None]
        recs = [x for _, x in pairs]
        row: dict[str, Any] = {"label": label, "spec": {**rs[0].spec(), "seed": None},
                               "seeds": [x["seed"] for x in recs], "runs": [x["name"] for x in recs]}
        for key in ("val_dp", "test_dp"):
            row[key] = _mean_std([x[key] for x in recs])
        # Δp against the default job's STL (same seed): comparable across settings.
        dps = []
        for x in recs:
            ref = default_stl.get(x["seed"])
            if ref is not None:
                dps.append(100.0 * statistics.fmean((ref[t] - v) / ref[t] for t, v in x["test_mae"].items()))
        row["test_dp_vs_default_stl"] = _mean_std(dps)
        # Δp against the STL of the run's own setting, where that differs from the default and exists.
        own = [(x, record(runs, r.setting_stl())) for r, x in pairs
               if r.method != "stl" and r.setting_stl() != r.default_stl()]
        row["test_dp_vs_setting_stl"] = _mean_std(
            [100.0 * statistics.fmean((ref["test_mae"][t] - v) / ref["test_mae"][t] for t, v in x["test_mae"].items())
             for x, ref in own if ref is not None])
        if exp.restrict:
            row["test_dp_restricted"] = _mean_std(
                [statistics.fmean(x["test_dp_tasks"][t] for t in exp.restrict) for x in recs])
        tasks = list(recs[0]["test_mae"]) if recs else []
        row["test_mae"] = {t: _mean_std([x["test_mae"][t] for x in recs]) for t in tasks}
        row["wall_time_s"] = _mean_std([x["wall_time_s"] for x in recs])
        rows.append(row)
    return {"name": exp.name, "title": exp.title, "rows": rows}


def select_beta(summary: dict) -> tuple[float, float] | None:
    """The β grid point with the best mean validation Δp, if every point has all seeds."""
    best = None
    for row in summary["rows"]:
        if len(row["seeds"]) < len(SEEDS):
            return None
        if best is None or row["val_dp"][0] > best[0]:
            best = (row["val_dp"][0], row["spec"]["opts"])
    opts = {**DBMTL_DEFAULTS, **best[1]}
    return float(opts["beta"]), float(opts["beta_sigma"])


def select_sgd_lr(runs: Path, exp: Experiment) -> float | None:
    """The SGD learning rate of the sweep with the best validation Δp (a diverged run counts as −∞)."""
    return select_lr(runs, [rs for _, rs in exp.rows])


def select_lr(runs: Path, rows: list[list[Run]], partial: bool = False) -> float | None:
    """The lr of the rows' first runs with the best validation Δp (diverged: −∞).

    None while a row is unfinished, or with ``partial`` while none is (``partial``: rows never run
    are not candidates).
    """
    scores = {}
    for rs in rows:
        run = rs[0]
        lr = dict(run.settings).get("lr", SETTING_DEFAULTS["lr"])  # the default lr is left out of names
        rec = record(runs, run)
        if rec is not None:
            scores[lr] = rec["val_dp"]
        elif _diverged(runs, run):
            scores[lr] = -math.inf
        elif not partial:
            return None
    if not scores:
        return None
    best = max(scores, key=scores.get)
    return None if scores[best] == -math.inf else best  # every lr diverged: nothing to select


def _diverged(runs: Path, run: Run) -> bool:
    log = runs / "logs" / f"{run.name}.log"
    return log.is_file() and "diverged" in log.read_text()


def table_md(s: dict) -> str:
    restricted = any("test_dp_restricted" in r for r in s["rows"])
    extra = " test Δp % over the shared tasks |" if restricted else ""
    own = any(not math.isnan(r["test_dp_vs_setting_stl"][0]) for r in s["rows"])
    extra += " test Δp % vs STL of this setting |" if own else ""
    lines = [f"### {s['title']} (`{s['name']}`)", "",
             f"| row | seeds | val Δp % | test Δp % | test Δp % vs default STL |{extra} wall s |",
             "|---|---|---|---|---|---|" + ("---|" if restricted else "") + ("---|" if own else "")]
    for r in s["rows"]:
        cell = f" {_pm(*r['test_dp_restricted'])} |" if restricted else ""
        cell += f" {_pm(*r['test_dp_vs_setting_stl'])} |" if own else ""
        lines.append(f"| {r['label']} | {len(r['seeds'])} | {_pm(*r['val_dp'])} | {_pm(*r['test_dp'])} | "
                     f"{_pm(*r['test_dp_vs_default_stl'])} |{cell} {r['wall_time_s'][0]:.0f} |")
    tasks = next((list(r["test_mae"]) for r in s["rows"] if r["test_mae"]), [])
    if tasks:
        lines += ["", "Per-task test MAE (mean over seeds; the paper's units):", "",
                  "| row | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
        for r in s["rows"]:
            cells = [_num(r["test_mae"].get(t, (math.nan,))[0]) for t in tasks]
            lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _num(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:.4g}"


def collect(runs: Path, selected_from: Path | None = None, prefix: str = "qm9") -> dict:
    """Writes results/PREFIX_runs.json, PREFIX_summary.json and PREFIX_tables.md; returns the summary."""
    exps = experiments(None)
    grid = summarize(exps["beta_grid"], selected_from or runs, {})
    selected = select_beta(grid)
    exps = experiments(selected)
    lr = select_sgd_lr(runs, exps["sgd_lr"]) if "sgd_lr" in exps else None
    if lr is not None:
        exps["sgd"] = sgd_experiment(lr, selected)
    if "sgd_clip_lr" in exps and (e := sgd_clip_experiment(runs, selected)) is not None:
        exps["sgd_clip"] = e
    default_stl = {}
    for s in SEEDS:
        rec = record(runs, Run.make("stl", s))
        if rec is not None:
            default_stl[s] = rec["test_mae"]
    summaries = [summarize(e, runs, default_stl) for e in exps.values()]
    seen: dict[str, dict] = {}
    for e in exps.values():
        for _, rs in e.rows:
            for r in rs:
                for x in ([r.stl()] if r.stl() else []) + [r]:
                    if x.name not in seen and (rec := record(runs, x)) is not None:
                        seen[x.name] = {**rec, "experiments": []}
                    if x.name in seen and e.name not in seen[x.name]["experiments"]:
                        seen[x.name]["experiments"].append(e.name)
    import torch

    env = {"date": datetime.date.today().isoformat(), "machine": platform.platform(), "cpu_count": os.cpu_count(),
           "python": platform.python_version(), "torch": torch.__version__, **_commit()}
    out = {"env": env, "runs_dir": str(runs), "selected_beta": selected,
           "selected_from": str(selected_from or runs), "sgd_lr": lr, "experiments": summaries}
    RESULTS.mkdir(exist_ok=True)
    _write(RESULTS / f"{prefix}_runs.json", {"env": env, "runs": list(seen.values())})
    _write(RESULTS / f"{prefix}_summary.json", out)
    md = [f"Generated by `qm9_study.py collect` on {env['date']} (torch {env['torch']}, commit "
          f"{env['commit'][:10]}). Selected β (best mean validation Δp of the grid): "
          f"{beta_label(*selected) if selected else 'grid not complete'}; SGD lr: {lr}.", ""]
    md += [table_md(s) for s in summaries]
    (RESULTS / f"{prefix}_tables.md").write_text("\n".join(md))
    return out


def _write(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, allow_nan=True))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=("list", "run", "collect"))
    p.add_argument("experiments", nargs="*", help="experiment names (run), in order")
    p.add_argument("--runs", type=Path, default=DEFAULT_RUNS, help="where run directories go")
    p.add_argument("--jobs", type=int, default=2, help="training processes at once (at most 2 on this machine)")
    p.add_argument("--seeds", help="comma-separated subset of the seeds to run (default all)")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    p.add_argument("--selected-from", type=Path,
                   help="the runs directory whose β grid selects β (default --runs): e.g. a second --runs "
                        "directory for the same experiments under newer code, its STL references linked in")
    p.add_argument("--results", default="qm9", help="prefix of the results/ files collect writes")
    p.add_argument("--rows", help="run only the rows whose label contains this text ('|' between alternatives)")
    a = p.parse_args(argv)
    grid = summarize(experiments(None)["beta_grid"], a.selected_from or a.runs, {})
    selected = select_beta(grid)
    exps = experiments(selected)
    if "sgd_lr" in exps and (lr := select_sgd_lr(a.runs, exps["sgd_lr"])) is not None:
        exps["sgd"] = sgd_experiment(lr, selected)
    if "sgd_clip_lr" in exps and (e := sgd_clip_experiment(a.runs, selected)) is not None:
        exps["sgd_clip"] = e
    if a.command == "list":
        print(f"selected β: {beta_label(*selected) if selected else '(β grid not complete)'}")
        for e in exps.values():
            n = sum(len(rs) for _, rs in e.rows)
            done = sum(_finished(a.runs, r) for _, rs in e.rows for r in rs)
            print(f"{e.name:16s} {done:3d}/{n:3d} done  {e.title}")
        return 0
    if a.command == "collect":
        collect(a.runs, a.selected_from, a.results)
        print((RESULTS / f"{a.results}_tables.md").read_text())
        return 0
    unknown = [n for n in a.experiments if n not in exps]
    if unknown:
        raise SystemExit(f"unknown or not yet available experiments {unknown} (available: {list(exps)}); "
                         "those after the β grid need the grid finished ('sgd' the sgd_lr sweep, "
                         "'sgd_clip' the sgd_clip_lr one)")
    seeds = {int(s) for s in a.seeds.split(",")} if a.seeds else None
    todo = [r for n in a.experiments for label, rs in exps[n].rows for r in rs
            if (seeds is None or r.seed in seeds) and (a.rows is None or any(x in label for x in a.rows.split("|")))]
    if a.dry_run:
        for r in todo:
            print(" ".join(r.command(a.runs)))
        return 0
    if a.jobs > 2:
        raise SystemExit("--jobs: at most 2 training processes on this machine")
    execute(todo, a.runs, a.jobs)
    collect(a.runs, a.selected_from, a.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Gradient diagnostics of finished QM9 study runs: task-gradient cosines and gradient-norm spikes.

Reads each run's ``metrics.jsonl`` step records (every ``log_every`` = 10 steps: ‖∇θ ℓ_t‖ of the raw
losses, and from them ‖∇θ log ℓ_t‖ = ‖∇θ ℓ_t‖/ℓ_t as ``log_grad_norms``; the T×T cosines of the raw
task gradients, before any log transform or balancing), and rebuilds the training batch of every
logged step (the run's seed, epoch and batch index give it exactly, as in ``fmtl.train``) to relate
the spikes to the descriptor's outlying inputs: the batch's largest |z| under the *default*
standardisation, whatever scaling the run itself used.

Usage::

    python benchmarks/paper/qm9_gradients.py RUN_DIR [RUN_DIR ...]   # → results/qm9_gradients.json
    python benchmarks/paper/qm9_gradients.py --descriptor             # + the descriptor's outliers

``_by_setting`` in the JSON holds the mean ± sample std over seeds of the main numbers of every
setting analysed so far.

A *spike* is a logged step whose per-task norms, each divided by that task's rolling median (21 logged
steps = 210 steps, centred; the norms fall during training, so a global median would flag the start),
have a median over tasks above 10.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ENERGIES = ("U0", "U", "H", "G")
SPIKE = 10.0
OUTLIER = 20.0
WINDOW = 21


def _rolling_median(x: torch.Tensor, window: int = WINDOW) -> torch.Tensor:
    """Centred rolling median over dim 0 (edges use the nearest full window's values by replication)."""
    h = window // 2
    padded = torch.cat([x[:1].expand(h, -1), x, x[-1:].expand(h, -1)])
    return padded.unfold(0, window, 1).median(-1).values


def _steps(run: Path) -> tuple[list[str], list[dict]]:
    tasks, steps = [], []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["type"] == "header":
            tasks = rec["tasks"]
        elif rec["type"] == "step":
            steps.append(rec)
    return tasks, steps


def _batch_max_z(cfg: dict, steps: list[dict]) -> list[float]:
    """max |z| (default standardisation) over the training batch of each logged step."""
    from fmtl.data import load
    from fmtl.data.batching import batch_indices

    data = {k: v for k, v in cfg["data"].items() if k not in ("scaling", "clip", "tasks")}
    x = load("qm9", "train", **data).x
    row_max = x.abs().amax(1)
    cache: dict[int, list[torch.Tensor]] = {}
    out = []
    for s in steps:
        e = int(s["epoch"])
        if e not in cache:
            cache[e] = list(batch_indices(len(x), int(cfg["batch_size"]), seed=int(cfg["seed"]), epoch=e))
        out.append(float(row_max[cache[e][int(s["batch"]) - 1]].max()))
    return out


def _spearman(a: list[float], b: list[float]) -> float:
    ra = torch.tensor(a).argsort().argsort().double()
    rb = torch.tensor(b).argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


BUCKETS = ((0, 20), (20, 50), (50, 100), (100, 500), (500, math.inf))


def _by_bucket(z: torch.Tensor, level: torch.Tensor, hot: torch.Tensor) -> dict:
    """Per range of the batch's largest input |z|: logged steps, their median level, the spike rate."""
    out = {}
    for lo, hi in BUCKETS:
        m = (z > lo) & (z <= hi)
        out[f"{lo:g}-{hi:g}"] = {"steps": int(m.sum()), "median_level": float(level[m].median()) if m.any() else None,
                                 "spike_rate": float(hot[m].double().mean()) if m.any() else None}
    return out


def analyse(run: Path) -> dict:
    """The cosine summary and the spike statistics of one run."""
    cfg = json.loads((run / "results.json").read_text())["config"]
    tasks, steps = _steps(run)
    out: dict = {"run": run.name, "method": cfg["method"], "opts": cfg["opts"], "data": cfg["data"],
                 "seed": cfg["seed"], "logged_steps": len(steps)}
    z = torch.tensor(_batch_max_z(cfg, steps))
    out["batches_with_outlier"] = float((z > OUTLIER).double().mean())
    spikes = torch.zeros(len(steps), dtype=torch.bool)
    series = {w: torch.tensor([[s[w][t] for t in tasks] for s in steps], dtype=torch.float64)
              for w in ("grad_norms", "losses")}
    # ‖∇θ log ℓ_t‖ = ‖∇θ ℓ_t‖ / ℓ_t: what the loss-scale component hands on (ε = 1e-8 is negligible here).
    series["log_grad_norms"] = series["grad_norms"] / series["losses"]
    for what, v in series.items():  # EW logs no task gradients: its norms are NaN
        if not bool(torch.isfinite(v).all()):
            continue
        ratio = v / _rolling_median(v)
        level = ratio.median(1).values  # how far the whole step is above the run's typical values
        hot = level > SPIKE
        if what == "grad_norms":
            spikes = hot
        out[what] = {
            "max_over_rolling_median": {t: float(ratio[:, i].max()) for i, t in enumerate(tasks)},
            "step_level_max": float(level.max()), "spike_steps": int(hot.sum()),
            "spike_steps_all_tasks_above_10x": int(((ratio > SPIKE).all(1) & hot).sum()),
            "spikes_with_outlier": float((z[hot] > OUTLIER).double().mean()) if hot.any() else None,
            "spearman_maxz_vs_level": _spearman(z.tolist(), level.log().tolist()),
            "by_batch_max_z": _by_bucket(z, level, hot),
        }  # fmt: skip
    w = torch.tensor([[s["weights"][t] for t in tasks] for s in steps], dtype=torch.float64)
    if bool(torch.isfinite(w).all()) and not bool((w == w[:, :1]).all()):
        # DB-MTL: w_t = α/(‖ĝ_t‖+ε); relative to the step's smallest weight (the task with the largest
        # ‖ĝ_t‖), w_t says how many times more the normalization weights task t than that task.
        rel = w / w.amin(1, keepdim=True)
        out["weights_median_rel_to_min"] = {t: float(rel[:, i].median()) for i, t in enumerate(tasks)}
        out["weights_max_over_min_median"] = float(rel.amax(1).median())
    cos = [s["cosine"] for s in steps if s.get("cosine")]
    if cos and all(math.isfinite(c) for row in cos[0] for c in row):
        c = torch.tensor(cos, dtype=torch.float64)
        c_quiet = c[~spikes] if (~spikes).any() else c
        mean = c_quiet.mean(0)
        idx = {t: i for i, t in enumerate(tasks)}
        en = [idx[t] for t in ENERGIES if t in idx]
        pairs = [(i, j) for i in range(len(tasks)) for j in range(i + 1, len(tasks))]
        energy_pairs = [(i, j) for i, j in pairs if i in en and j in en]
        other = [(i, j) for i, j in pairs if not (i in en and j in en)]
        out["cosine_mean_matrix"] = {"tasks": tasks, "matrix": mean.tolist(), "excludes_spikes": True}
        out["cosine_energy_pairs"] = statistics.fmean(float(mean[i, j]) for i, j in energy_pairs) if energy_pairs \
            else None  # fmt: skip
        out["cosine_energy_pairs_min"] = min((float(mean[i, j]) for i, j in energy_pairs), default=None)
        out["cosine_other_pairs"] = statistics.fmean(float(mean[i, j]) for i, j in other)
        if "zpve" in idx and en:
            out["cosine_zpve_energies"] = statistics.fmean(float(mean[idx["zpve"], j]) for j in en)
        out["cosine_spike_steps_mean_offdiag"] = (
            float(c[spikes][:, torch.triu_indices(len(tasks), len(tasks), 1)[0],
                            torch.triu_indices(len(tasks), len(tasks), 1)[1]].mean()) if spikes.any() else None
        )  # fmt: skip
    return out


def descriptor_outliers() -> dict:
    """How far the standardized training descriptor reaches: the input side of the spikes."""
    from fmtl.data import load

    x = load("qm9", "train", representation="descriptor").x
    z = x.abs()
    row = z.amax(1)
    feat = z.amax(0)
    return {
        "split": "train", "molecules": len(x), "features": x.shape[1], "max_abs_z": float(row.max()),
        "molecules_beyond": {f"{c:g}": int((row > c).sum()) for c in (5, 10, 20, 50, 100, 500)},
        "features_reaching": {f"{c:g}": int((feat > c).sum()) for c in (5, 10, 20, 50, 100, 500)},
        "median_molecule_max_abs_z": float(row.median()),
        "batch_256_holds_one_beyond_20": 1.0 - float((1.0 - (row > OUTLIER).double().mean()) ** 256),
    }  # fmt: skip


#: The per-run numbers summarized over seeds by :func:`by_setting` (paths into :func:`analyse`'s dict).
SUMMARY_KEYS = (
    ("batches_with_outlier",), ("grad_norms", "spike_steps"), ("grad_norms", "spike_steps_all_tasks_above_10x"),
    ("grad_norms", "spikes_with_outlier"), ("grad_norms", "step_level_max"),
    ("grad_norms", "by_batch_max_z", "500-inf", "median_level"),
    ("grad_norms", "by_batch_max_z", "20-50", "median_level"),
    ("losses", "spike_steps"), ("log_grad_norms", "by_batch_max_z", "500-inf", "median_level"),
    ("log_grad_norms", "step_level_max"), ("cosine_energy_pairs",), ("cosine_energy_pairs_min",),
    ("cosine_zpve_energies",),
    ("cosine_other_pairs",), ("cosine_spike_steps_mean_offdiag",), ("weights_max_over_min_median",),
)  # fmt: skip


def by_setting(runs: dict) -> dict:
    """Mean ± sample std over seeds of the main numbers, per (method, opts, data) setting."""
    groups: dict[str, list[dict]] = {}
    for name, r in runs.items():
        if not name.startswith("_"):
            key = json.dumps({"method": r["method"], "opts": r["opts"], "data": r["data"]}, sort_keys=True)
            groups.setdefault(key, []).append(r)
    out = {}
    for key, rs in sorted(groups.items()):
        row: dict = {**json.loads(key), "seeds": sorted(r["seed"] for r in rs), "runs": sorted(r["run"] for r in rs)}
        for path in SUMMARY_KEYS:
            xs = []
            for r in rs:
                v = r
                for k in path:
                    v = v.get(k) if isinstance(v, dict) else None
                if isinstance(v, int | float) and math.isfinite(v):
                    xs.append(float(v))
            if xs:
                row[".".join(path)] = [statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else None]
        out[key] = row
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="*", type=Path)
    p.add_argument("--descriptor", action="store_true", help="also record the descriptor's outliers")
    p.add_argument("--out", type=Path, default=RESULTS / "qm9_gradients.json")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    old = json.loads(a.out.read_text()) if a.out.is_file() else {}
    if a.descriptor:
        old["_descriptor"] = descriptor_outliers()
        print(json.dumps(old["_descriptor"], indent=1))
    for run in a.runs:
        res = analyse(run)
        old[run.name] = res
        print(json.dumps({k: v for k, v in res.items() if k != "cosine_mean_matrix"}, indent=1))
    old["_by_setting"] = by_setting(old)
    a.out.parent.mkdir(exist_ok=True)
    tmp = a.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(old, indent=1))
    tmp.replace(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

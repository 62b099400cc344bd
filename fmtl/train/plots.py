"""PNG plots of a run (paper Figs 8–10) and of a comparison (Δp per method), with matplotlib Agg.

From a run's ``metrics.jsonl``:

* ``plots/train_loss.png`` — per-task training loss ℓ_t against the step (Fig. 9);
* ``plots/grad_norm.png`` — per-task shared-gradient norm ‖∇θ ℓ_t‖₂ (Fig. 8); only when the
  method computed the task gradients (loss balancers report NaN unless run with diagnostics);
* ``plots/cosine.png`` — the mean pairwise cosine similarity of the task gradients over training
  with its min–max band (Fig. 10), and the cosine matrix averaged over training.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["read_metrics", "plot_run", "plot_delta_p"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: str | os.PathLike[str]) -> tuple[list[str], list[dict], list[dict]]:
    """(tasks, step records, epoch records) of a ``metrics.jsonl`` (a torn last line is skipped).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "m.jsonl"
        >>> _ = p.write_text('{"type": "header", "tasks": ["a"]}\\n{"type": "step", "step": 1}\\n{"type": "st')
        >>> read_metrics(p)
        (['a'], [{'type': 'step', 'step': 1}], [])
    """
    tasks: list[str] = []
    steps, epochs = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            kind = rec.get("type")
            if kind == "header":
                tasks = list(rec["tasks"])
            elif kind == "step":
                steps.append(rec)
            elif kind == "epoch":
                epochs.append(rec)
    return tasks, steps, epochs


def _finite(values: Sequence[float]) -> bool:
    return any(isinstance(v, int | float) and math.isfinite(v) for v in values)


def _curves(plt, steps: list[dict], tasks: list[str], key: str, ylabel: str, title: str, path: Path) -> Path:
    """One log-scale curve per task of ``record[key][task]`` against the step, saved to ``path``."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = [r["step"] for r in steps]
    for t in tasks:
        y = [r[key][t] for r in steps]
        ax.plot(x, y, label=t, linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, ncol=2 if len(tasks) > 6 else 1)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_run(out: str | os.PathLike[str]) -> list[Path]:
    """Writes the run's PNG plots into ``out/plots`` and returns their paths.

    Example:
        >>> import tempfile, pathlib, json
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> recs = [{"type": "header", "tasks": ["a", "b"]}] + [
        ...     {"type": "step", "step": k, "losses": {"a": 1 / k, "b": 2 / k},
        ...      "grad_norms": {"a": 1.0, "b": 0.5}, "cosine": [[1, 0.1 * k], [0.1 * k, 1]]} for k in (1, 2)]
        >>> _ = (d / "metrics.jsonl").write_text("\\n".join(json.dumps(r) for r in recs))
        >>> sorted(p.name for p in plot_run(d))
        ['cosine.png', 'grad_norm.png', 'train_loss.png']
    """
    out = Path(out)
    tasks, steps, _ = read_metrics(out / "metrics.jsonl")
    if not steps:
        return []
    plt = _pyplot()
    (out / "plots").mkdir(exist_ok=True)
    written = [_curves(plt, steps, tasks, "losses", "training loss ℓ_t", "per-task training loss",
                       out / "plots" / "train_loss.png")]  # fmt: skip
    if _finite([r["grad_norms"][t] for r in steps for t in tasks]):
        title = "per-task gradient norm (shared parameters)"
        written.append(_curves(plt, steps, tasks, "grad_norms", "‖∇θ ℓ_t‖₂", title, out / "plots" / "grad_norm.png"))

    T = len(tasks)
    pairs = [(i, j) for i in range(T) for j in range(i + 1, T)]
    valid = [r for r in steps if pairs and _finite([r["cosine"][i][j] for i, j in pairs])]
    if valid:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1.4, 1]})
        x = [r["step"] for r in valid]
        vals = [[r["cosine"][i][j] for i, j in pairs] for r in valid]
        a1.plot(x, [sum(v) / len(v) for v in vals], label="mean over task pairs")
        a1.fill_between(x, [min(v) for v in vals], [max(v) for v in vals], alpha=0.2, label="min–max")
        a1.axhline(0.0, color="k", linewidth=0.6)
        a1.set_xlabel("step")
        a1.set_ylabel("cos(∇θ ℓ_i, ∇θ ℓ_j)")
        a1.set_title("gradient cosine similarity")
        a1.legend(fontsize=8)
        a1.grid(alpha=0.3)
        mean = [[sum(r["cosine"][i][j] for r in valid) / len(valid) for j in range(T)] for i in range(T)]
        im = a2.imshow(mean, vmin=-1, vmax=1, cmap="RdBu_r")
        a2.set_xticks(range(T), tasks, rotation=90, fontsize=7)
        a2.set_yticks(range(T), tasks, fontsize=7)
        a2.set_title("mean cosine over training")
        fig.colorbar(im, ax=a2, fraction=0.046)
        written.append(out / "plots" / "cosine.png")
        fig.savefig(written[-1], dpi=110, bbox_inches="tight")
        plt.close(fig)
    return written


def plot_delta_p(
    delta_p: Mapping[str, tuple[float, float]], path: str | os.PathLike[str], title: str = "Δp vs STL"
) -> Path:
    """Bar chart of Δp (%) per method with ± std error bars; returns ``path``.

    Example:
        >>> import tempfile, pathlib
        >>> p = plot_delta_p({"ew": (-10.0, 2.0), "dbmtl": (3.0, 1.0)}, pathlib.Path(tempfile.mkdtemp()) / "d.png")
        >>> p.exists()
        True
    """
    plt = _pyplot()
    names = list(delta_p)
    means = [delta_p[m][0] for m in names]
    stds = [0.0 if not math.isfinite(delta_p[m][1]) else delta_p[m][1] for m in names]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(names) + 2), 4))
    colors = ["tab:green" if v >= 0 else "tab:red" for v in means]
    ax.bar(names, means, yerr=stds, color=colors, capsize=3)
    ax.axhline(0.0, color="k", linewidth=0.6)
    ax.set_ylabel("Δp (%) ↑")
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=45)
    ax.grid(axis="y", alpha=0.3)
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path

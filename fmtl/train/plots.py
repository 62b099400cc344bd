"""PNG plots of a run (paper Figs 8–10) and of a comparison (Δp per method), with matplotlib Agg.

From a run's ``metrics.jsonl``:

* ``plots/train_loss.png`` — per-task training loss ℓ_t against the step (Fig. 9);
* ``plots/grad_norm.png`` — per-task shared-gradient norm ‖∇θ ℓ_t‖₂ (Fig. 8); only when the
  method computed the task gradients (loss balancers report NaN unless run with diagnostics);
* ``plots/cosine.png`` — the mean pairwise cosine similarity of the task gradients over training
  with its min–max band (Fig. 10), and the cosine matrix averaged over training (its values
  written in the cells when T ≤ 12);
* ``plots/weights.png`` — the balancer's task weights w_t against the step;
* ``plots/val_metrics.png`` — per epoch: each task's validation normalized error, and the
  validation (and test) Δp when an STL reference exists, else the mean normalized error.

Tasks are told apart by colour *and* line style (:func:`task_styles`: 10 colours × 4 styles,
so up to 40 tasks are distinct; QM9 has 11). Missing values (``null`` in strict JSON) are gaps.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["read_metrics", "task_styles", "plot_run", "plot_delta_p"]


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


def _num(v) -> float:
    return float(v) if isinstance(v, int | float) else math.nan


def _finite(values: Sequence[float]) -> bool:
    return any(isinstance(v, int | float) and math.isfinite(v) for v in values)


_STYLES = ("-", "--", "-.", ":")


def task_styles(num_tasks: int) -> list[dict[str, str]]:
    """Matplotlib line properties per task: colour and line style, distinct for up to 40 tasks.

    Up to 10 tasks: the 10 ``tab10`` colours, solid lines. More: task i gets colour i mod 10 and
    line style ⌊i/10⌋ mod 4, so no two of the first 40 tasks look alike.

    Example:
        >>> s = task_styles(21)
        >>> s[0], s[10], s[20]
        ({'color': 'C0', 'linestyle': '-'}, {'color': 'C0', 'linestyle': '--'}, {'color': 'C0', 'linestyle': '-.'})
        >>> len({(d["color"], d["linestyle"]) for d in task_styles(40)})
        40
    """
    return [{"color": f"C{i % 10}", "linestyle": _STYLES[(i // 10) % len(_STYLES)]} for i in range(num_tasks)]


def _legend(ax, n: int) -> None:
    if n > 10:  # beside the axes, so the curves stay visible
        ax.legend(fontsize=7, ncol=math.ceil(n / 20), loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=7, ncol=2 if n > 6 else 1)


def _log_scale(values: Sequence[float]) -> bool:
    """Log scale when every value is positive and they span more than two decades."""
    vals = [v for v in values if math.isfinite(v)]
    return bool(vals) and min(vals) > 0 and max(vals) / min(vals) > 100


def _curves(plt, steps: list[dict], tasks: list[str], key: str, ylabel: str, title: str, path: Path) -> Path:
    """One curve per task of ``record[key][task]`` against the step (log scale when it spans decades)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = [r["step"] for r in steps]
    values = []
    for t, style in zip(tasks, task_styles(len(tasks)), strict=True):
        y = [_num(r[key][t]) for r in steps]
        values += y
        ax.plot(x, y, label=t, linewidth=1, **style)
    if _log_scale(values):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    _legend(ax, len(tasks))
    ax.grid(alpha=0.3)
    ax.set_title(title)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _val_metrics(plt, epochs: list[dict], tasks: list[str], path: Path) -> Path:
    """Per epoch: each task's validation normalized error; the validation/test Δp (or mean error)."""
    from matplotlib.ticker import MaxNLocator

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1.3, 1]})
    x = [r["epoch"] + 1 for r in epochs]
    values = []
    for t, style in zip(tasks, task_styles(len(tasks)), strict=True):
        y = [_num(r["val"]["normalized"].get(t)) for r in epochs]
        values += y
        a1.plot(x, y, label=t, linewidth=1, marker=".", **style)
    if _log_scale(values):
        a1.set_yscale("log")
    a1.set_ylabel("validation normalized error ↓")
    a1.set_title("per-task validation error")
    if len(tasks) > 10:  # right of both panels: beside the first it would cover the second
        handles, labels = a1.get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=7, ncol=math.ceil(len(tasks) / 20), loc="upper left",
                   bbox_to_anchor=(1.0, 0.9))  # fmt: skip
    else:
        _legend(a1, len(tasks))
    a1.grid(alpha=0.3)
    if any("val_delta_p" in r for r in epochs):
        for key, label in (("val_delta_p", "validation Δp"), ("test_delta_p", "test Δp")):
            a2.plot(x, [_num(r.get(key)) for r in epochs], marker="o", label=label)
        a2.axhline(0.0, color="k", linewidth=0.6)
        a2.set_ylabel("Δp (%) vs STL ↑")
        a2.set_title("Δp per epoch (selection uses validation)")
        a2.legend(fontsize=8)
    else:
        a2.plot(x, [sum(_num(v) for v in r["val"]["normalized"].values()) / max(len(tasks), 1) for r in epochs],
                marker="o", color="k")  # fmt: skip
        a2.set_ylabel("validation mean normalized error ↓")
        a2.set_title("mean over tasks (no STL reference: no Δp)")
    for ax in (a1, a2):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    a2.grid(alpha=0.3)
    fig.tight_layout()
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
    tasks, steps, epochs = read_metrics(out / "metrics.jsonl")
    if not steps and not epochs:
        return []
    plt = _pyplot()
    (out / "plots").mkdir(exist_ok=True)
    written = []
    if epochs and all("val" in r for r in epochs):
        written.append(_val_metrics(plt, epochs, tasks, out / "plots" / "val_metrics.png"))
    if not steps:
        return written
    written.append(_curves(plt, steps, tasks, "losses", "training loss ℓ_t", "per-task training loss",
                           out / "plots" / "train_loss.png"))  # fmt: skip
    if _finite([r["grad_norms"][t] for r in steps for t in tasks]):
        title = "per-task gradient norm (shared parameters)"
        written.append(_curves(plt, steps, tasks, "grad_norms", "‖∇θ ℓ_t‖₂", title, out / "plots" / "grad_norm.png"))
    if all("weights" in r for r in steps) and _finite([r["weights"][t] for r in steps for t in tasks]):
        written.append(_curves(plt, steps, tasks, "weights", "task weight w_t", "the balancer's task weights",
                               out / "plots" / "weights.png"))  # fmt: skip

    T = len(tasks)
    pairs = [(i, j) for i in range(T) for j in range(i + 1, T)]
    valid = [r for r in steps if pairs and all(math.isfinite(_num(r["cosine"][i][j])) for i, j in pairs)]
    if valid:
        big = T > 6  # room for the values in the cells
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(14, 6) if big else (12, 4.5),
                                     gridspec_kw={"width_ratios": [1.2 if big else 1.4, 1]})  # fmt: skip
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
        if T <= 12:  # the values themselves, readable on either end of the colour map
            for i in range(T):
                for j in range(T):
                    a2.text(j, i, f"{mean[i][j]:.2f}".replace("-0.00", "0.00"), ha="center", va="center",
                            fontsize=7 if big else 9, color="white" if abs(mean[i][j]) > 0.6 else "black")
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

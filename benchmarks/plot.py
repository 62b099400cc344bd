"""Plots (time vs T, memory vs T) and markdown tables from the JSON results of the benchmarks.

    python benchmarks/plot.py          # reads benchmarks/results/*.json, writes PNGs next to them
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def plot_task_gradients(path: Path) -> list[Path]:
    rows = json.loads(path.read_text())["rows"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    written = []
    for key, label, fname in (("ms", "time per call (ms)", "time"), ("peak_mib", "peak memory (MiB)", "memory")):
        fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.6), squeeze=False)
        for ax, model in zip(axes[0], models, strict=True):
            series = defaultdict(list)
            for r in rows:
                if r["model"] == model and r.get(key) is not None:
                    series[r["variant"]].append((r["T"], r[key]))
            for variant, pts in series.items():
                if len(pts) > 1:
                    pts.sort()
                    ax.plot(*zip(*pts, strict=True), marker="o", label=variant,
                            linestyle="--" if variant.startswith("loop baseline") else "-")  # fmt: skip
            ax.set_title(model)
            ax.set_xlabel("T (tasks)")
            ax.set_ylabel(label)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ts = sorted({r["T"] for r in rows if r["model"] == model})
            ax.set_xticks(ts, [str(t) for t in ts])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.grid(True, which="both", alpha=0.3)
        for ax in axes[0]:
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        fig.tight_layout()
        out = path.with_name(f"{path.stem}_{fname}_vs_T.png")
        fig.savefig(out, dpi=110)
        plt.close(fig)
        written.append(out)
    return written


def table(path: Path, columns: list[str]) -> str:
    """A markdown table of the rows of one results file."""
    rows = json.loads(path.read_text())["rows"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join("" if r.get(c) is None else str(r[c]) for c in columns) + " |")
    return "\n".join(lines)


def main() -> None:
    for path in sorted(RESULTS.glob("task_gradients*.json")):
        for out in plot_task_gradients(path):
            print("wrote", out)
    if "--tables" in sys.argv:
        for path in sorted(RESULTS.glob("*.json")):
            cols = ["model", "T", "variant", "ms"]
            sample = json.loads(path.read_text())["rows"][0]
            cols += [c for c in sample if c not in cols]
            print(f"\n### {path.name}\n")
            print(table(path, cols))


if __name__ == "__main__":
    main()

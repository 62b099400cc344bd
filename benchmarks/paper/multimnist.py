"""MultiMNIST on CPU: EW, DB-MTL and DB-MTL's two halves (the paper's Table 7 ablation), 3 seeds, Δp vs STL.

Rows: ``ew``; ``dbmtl`` (both components); ``log_only`` = ``dbmtl`` with ``normalize=false``
(the loss-scale half: log-transformed losses, no gradient normalization); ``grad_only`` =
``dbmtl`` with ``log_transform=false`` (the gradient-magnitude half). Every row and seed
through :func:`fmtl.train.compare.compare` (the code ``fmtl compare`` runs), one process, one
thread, a reduced run (``--subset`` pairs per split, ``--epochs``) so that the whole table fits
in minutes; settings otherwise the benchmark's defaults (batch 256, Adam 10⁻³, β = 0.9, α = max).
Epochs are selected on the validation Δp against that seed's STL; the table reports test.

Writes ``benchmarks/paper/multimnist.json`` (machine, torch version, date, command, the
configuration, per-seed and mean ± std metrics and Δp) and ``benchmarks/paper/multimnist.md``.

    .venv/bin/python benchmarks/paper/multimnist.py   # 51 min here (2 cores, load average ~8)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import machine  # noqa: E402

from fmtl import atomic  # noqa: E402
from fmtl.train.compare import compare, parse_variant  # noqa: E402
from fmtl.train.fit import configure  # noqa: E402

VARIANTS = ("log_only=dbmtl:normalize=false", "grad_only=dbmtl:log_transform=false")


def _finite(x):
    """NaN (the STL row's undefined per-seed Δp) as null, so the record is strict JSON."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return None if isinstance(x, float) and x != x else x


def _fmt(mean: float, std: float) -> str:
    return f"{mean:.2f} ± {std:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subset", type=int, default=4096, help="pairs per split (train, val and test)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--runs", type=Path, default=Path("runs/paper-multimnist"), help="run directories")
    p.add_argument("--out", type=Path, default=HERE)
    args = p.parse_args()
    torch.set_num_threads(1)
    env = machine()
    base = configure(None, None, {"benchmark": "multimnist", "epochs": args.epochs, "data": {"subset": args.subset},
                                  "log_every": 1000})  # fmt: skip
    t0 = time.perf_counter()
    res = compare(base, ["ew", "dbmtl"], args.seeds, args.runs, variants=[parse_variant(v) for v in VARIANTS],
                  quiet=True, device="cpu")  # fmt: skip
    wall = time.perf_counter() - t0
    rows = {name: {"test_accuracy_mean": r["metrics"], "test_accuracy_std": r["metrics_std"],
                   "delta_p": {"mean": r["delta_p"][0], "std": r["delta_p"][1]}, "per_seed": r["per_seed"]}
            for name, r in res["rows"].items()}  # fmt: skip
    record = {"benchmark": "multimnist", "machine": env, "wall_s": wall,
              "config": {k: base[k] for k in ("epochs", "batch_size", "lr", "optimizer", "data", "model")},
              "variants": list(VARIANTS), "seeds": args.seeds, "rows": rows}  # fmt: skip
    atomic.write(args.out / "multimnist.json", json.dumps(_finite(record), indent=1, allow_nan=False) + "\n")
    lines = ["# MultiMNIST: EW, DB-MTL and its two halves (3 seeds, CPU)", "",
             f"{env['date']} · torch {env['torch']} · {env['cpu']} ({env['cores']} cores, 1 thread, shared) · "
             f"total {wall:.0f} s", "", f"Command: `{env['command']}`", "",
             f"Settings: {args.subset} pairs per split, {args.epochs} epochs, batch {base['batch_size']}, "
             f"Adam lr {base['lr']}, model {base['model']}; test accuracy (%) at the epoch selected on "
             "validation Δp; mean ± std over seeds 0–2.", "",
             "| row | left ↑ | right ↑ | Δp (%) ↑ |", "|---|---|---|---|"]  # fmt: skip
    for name, r in rows.items():
        m, s = r["test_accuracy_mean"], r["test_accuracy_std"]
        lines.append(f"| {name} | {_fmt(m['left']['accuracy'], s['left']['accuracy'])} | "
                     f"{_fmt(m['right']['accuracy'], s['right']['accuracy'])} | "
                     f"{_fmt(r['delta_p']['mean'], r['delta_p']['std'])} |")  # fmt: skip
    atomic.write(args.out / "multimnist.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Benchmark: glibc malloc defaults vs ``fmtl.allocator.tune()``, in alternating processes.

The tuning is process-wide and cannot be undone cleanly, so each setting runs in its own process;
the processes alternate (default, tuned, default, tuned, …) so that machine load hits both alike,
and the per-variant median over all processes is reported.

    python benchmarks/allocator.py            # MLP T=40 and CNN T=11, jacrev vs the loop baseline
    python benchmarks/allocator.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

CASES = {"mlp": "40", "cnn": "11"}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2, help="processes per setting")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--strategies", default="jacrev,loop")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    cases = {"tiny": "2"} if args.quick else CASES
    repeats = 1 if args.quick else args.repeats
    ms: dict[tuple, list[float]] = defaultdict(list)
    script = Path(__file__).resolve().parent / "task_gradients.py"
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for malloc in ("default", "tuned"):
                for model, T in cases.items():
                    out = Path(tmp) / f"{malloc}_{model}_{r}.json"
                    cmd = [sys.executable, str(script), "--models", model, "--tasks", T, "--compiled", "",
                           "--no-memory", "--no-auto", "--strategies", args.strategies, "--malloc", malloc,
                           "--rounds", "1" if args.quick else "5", "--out", str(out)]  # fmt: skip
                    if args.threads:
                        cmd += ["--threads", str(args.threads)]
                    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "KINETO_LOG_LEVEL": "5"})
                    for row in json.loads(out.read_text())["rows"]:
                        ms[(row["model"], row["T"], row["variant"], malloc)].append(row["ms"])
    rows = []
    for (model, T, variant, malloc), v in sorted(ms.items()):
        row = {"model": model, "T": T, "variant": variant, "malloc": malloc}
        rows.append({**row, "ms": round(statistics.median(v), 3)})
    for r in rows:
        if r["malloc"] == "tuned":
            base = next(x for x in rows if x["malloc"] == "default" and x["variant"] == r["variant"]
                        and x["model"] == r["model"])  # fmt: skip
            r["speedup_vs_default"] = round(base["ms"] / r["ms"], 3)
    for r in rows:
        print(r)
    machine = common.machine()
    machine["threads"] = args.threads or machine["threads"]
    print("wrote", common.save({"machine": machine, "rows": rows}, "allocator", args.out))


if __name__ == "__main__":
    main()

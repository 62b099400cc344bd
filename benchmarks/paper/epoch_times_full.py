"""Seconds per training step of each image benchmark's REAL default model, extrapolated to an epoch (one thread).

What is measured, per benchmark: the paper's default model (``nyuv2``/``cityscapes``: DeepLab, a dilated
ResNet-50 at output stride 8 with ASPP heads, HPS; ``office31``/``officehome``: ResNet-18 with
LibMTL's hidden layer, one linear head per domain), randomly initialized, at the real input size
(288×384, 128×256, 224²) and the paper's batch size (8, 64, 64 per domain), trained with the
``dbmtl`` step (``--strategy loop``: T backward passes, the least memory) for a few steps through
the training path of ``fmtl train`` (:func:`fmtl.train.problems.build`, :func:`fmtl.train.assemble.assemble`,
:func:`fmtl.train.loop.train_batches`: reading and, for Office, decoding the batch's JPEGs
included). The data are FABRICATED copies in the real layouts (the real data are not on this
machine) with just enough images for the measured steps. Step 1 includes one-time costs; the
steady step is the mean of the later ones (or step 1 alone when only one step could be afforded).

The epoch time is EXTRAPOLATED: steady step × steps per epoch of the real training split
(:data:`REAL_STEPS`), training only (no validation/test evaluation). Each benchmark runs in its own
process under a time limit (the steps finished within it are kept); a benchmark whose real batch
is too slow for that is measured at a smaller batch (``--measured-batch``) and scaled linearly per
image (recorded as ``scaled``: an approximation, per-image cost is not exactly constant in B).

Writes ``benchmarks/paper/epoch_times_full.json`` (machine, torch version, date, command).

    python benchmarks/paper/epoch_times_full.py --steps 2 --measured-batch nyuv2=2 --measured-batch cityscapes=8
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import machine  # noqa: E402

#: Training steps per epoch on the real data (paper batch sizes). NYUv2: 795 train images minus
#: fmtl's 10 % validation hold-out = 715, ⌈715/8⌉; Cityscapes: 2,975 − 298 = 2,677, ⌈2,677/64⌉;
#: Office: the largest domain's 60 % train split (Office-31 amazon 2,817 → 1,690; Office-Home
#: Product 4,439 → 2,663), ⌈n/64⌉ (multi-input: one step per batch of the largest domain).
REAL_STEPS = {"nyuv2": 90, "cityscapes": 42, "office31": 27, "officehome": 42}
FAB = {"nyuv2": lambda n: {"n_train": -(-n * 10 // 9) + 1, "n_val": 1, "size": (288, 384)},
       "cityscapes": lambda n: {"n_train": -(-n * 10 // 9) + 1, "n_val": 1, "size": (128, 256)},
       "office31": lambda n: {"per_class": math.ceil(n / 1.8) + 1, "size": (256, 256)},  # 3 classes, 60 % train
       "officehome": lambda n: {"per_class": math.ceil(n / 1.8) + 1, "size": (256, 256)}}  # fmt: skip
BATCH = {"nyuv2": 8, "cityscapes": 64, "office31": 64, "officehome": 64}

_CHILD = r"""
import json, resource, sys, time, torch
torch.set_num_threads(1)
from fmtl.train import problems
from fmtl.train.assemble import assemble, build_steps
from fmtl.train.fit import configure
from fmtl.train.loop import train_batches
from fmtl.train.world import World
name, root, batch, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cfg = configure(None, None, {"benchmark": name, "method": "dbmtl", "strategy": "loop", "batch_size": batch,
                             "epochs": 1, "data": {"root": root}})
world = World(0, 1, None, torch.device("cpu"))
t0 = time.perf_counter()
problem = problems.build(cfg)
run = assemble(cfg, problem, world)
step = build_steps(run, cfg, "loop", world).step
build_s = time.perf_counter() - t0
params, state = run.params, run.state
times, fetch = [], []
t = time.perf_counter()
for k, batch_ in enumerate(train_batches(run.problem, cfg, world, 0, 0, False)):
    fetched = time.perf_counter()
    params, state, info = step(params, state, batch_)
    assert bool(torch.isfinite(info["losses"]).all())
    done = time.perf_counter()
    times.append(done - t)
    fetch.append(fetched - t)
    n_params = sum(v.numel() for v in run.params.values(True, True))
    # one line per step, so that the steps done before a time limit are kept
    print(json.dumps({"build_s": build_s, "step_s": times, "fetch_s": fetch, "params": n_params,
                      "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}), flush=True)
    if k + 1 == steps:
        break
    t = time.perf_counter()
"""


def _measure(name: str, root: Path, batch: int, steps: int, limit: float) -> dict | str:
    """The child's last per-step record (the steps done within ``limit`` seconds), or why there is none."""
    try:
        out = subprocess.run([sys.executable, "-c", _CHILD, name, str(root), str(batch), str(steps)],
                             capture_output=True, text=True, timeout=limit)  # fmt: skip
        stdout, why = out.stdout, None if out.returncode == 0 else f"exit {out.returncode}: " + \
            (out.stderr.strip().splitlines() or [""])[-1][:200]  # fmt: skip
    except subprocess.TimeoutExpired as e:
        stdout, why = e.stdout or "", f"stopped at the {limit:.0f} s limit"
        stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        return why or "no step finished"
    got = json.loads(lines[-1])
    if why:
        got["stopped"] = why
    return got


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--only", default=",".join(REAL_STEPS))
    ap.add_argument("--limit", type=float, default=420.0, help="seconds per benchmark process")
    ap.add_argument("--measured-batch", action="append", default=[], metavar="NAME=B",
                    help="measure NAME at batch B (< the paper's) and scale per image, e.g. nyuv2=2")
    ap.add_argument("--out", default=str(HERE / "epoch_times_full.json"))
    args = ap.parse_args()
    import torch

    from fmtl import atomic
    from fmtl.data.fabricate import fabricate

    torch.set_num_threads(1)  # what the measured processes use (recorded by machine())
    env = machine()
    env["note"] = ("2 cores shared with other agents' jobs (a loaded machine: see loadavg_at_start); one torch thread; "
                   "no GPU was lent to this session")  # fmt: skip
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only.split(","):
            batch = BATCH[name]
            attempt = int(dict(v.split("=") for v in args.measured_batch).get(name, batch))
            fab = FAB[name](attempt * args.steps)
            root = fabricate(name, Path(tmp) / f"{name}-{attempt}", **fab)
            t0 = time.perf_counter()
            got = _measure(name, root, attempt, args.steps, args.limit)
            print(name, attempt, got, f"({time.perf_counter() - t0:.0f} s)", flush=True)
            row: dict = {"batch_size": batch, "measured_batch_size": attempt, "fabricated": str(fab),
                         "real_steps_per_epoch": REAL_STEPS[name]}  # fmt: skip
            if isinstance(got, str):
                row["failed"] = got
            else:
                s = got["step_s"]
                steady = sum(s[1:]) / len(s[1:]) if len(s) > 1 else s[0]
                per_step = steady * batch / attempt
                row.update(got, steady_step_s=round(per_step, 2),
                           epoch_s_extrapolated=round(per_step * REAL_STEPS[name], 1),
                           scaled=attempt != batch)  # fmt: skip
            rows[name] = row
    result = {"what": __doc__.splitlines()[0], "machine": env,
              "command": "python benchmarks/paper/epoch_times_full.py " + " ".join(sys.argv[1:]), "rows": rows}
    atomic.write(Path(args.out), json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

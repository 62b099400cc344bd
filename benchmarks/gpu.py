"""The GPU run in one command (``benchmarks/gpu.sh`` calls this): tables, JSON and markdown.

Parts, in order of importance, each a subprocess with its own time limit inside one overall
budget (a part that fails or runs out of time is recorded and the run goes on):

1. ``step mlp`` — whole steps on the MLP at T = 11 and 40 (loop, LibMTL-style, fmtl eager and
   compiled, rep-grad rows): the issue's GPU target, fmtl's step ≥ 5× faster than the loop at T = 11.
2. ``task_gradients`` — the strategies on the MLP, CNN and QM9 GNN (and the bounded-memory row).
3. ``main job`` — ``fmtl train`` (the console script) on QM9 for one epoch, its samples/s; where QM9
   cannot be read (no ``qm9pack``, no cache) the synthetic benchmark instead, labelled as such.
4. ``step qm9_gnn``, ``step cnn``, ``step qm9_mlp`` — the other step tables.

Environment: ``FMTL_GPU_OUT`` (results folder, default ``benchmarks/results/gpu``),
``FMTL_GPU_DRYRUN=1`` (CPU, tiny models, one round, no compilation: the whole pipeline in about
a minute), ``FMTL_GPU_BUDGET`` (seconds for everything, default 570). Writes ``gpu.json``
(machine, parts, every row) and ``gpu.md`` (the tables) in the results folder, plus each part's
own JSON and log.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _python_env(extra_path: list[str]) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([*extra_path, str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _check_imports(paths: list[str]) -> dict:
    """Imports torch, tensordict and fmtl here (as the parts will), and says what it found."""
    sys.path[:0] = [*paths, str(REPO)]
    try:
        import tensordict
        import torch

        import fmtl  # noqa: F401
    except ImportError as e:
        hint = "carry tensordict's wheel in .whl/ (see benchmarks/RESULTS.md, 'The GPU run')"
        raise SystemExit(f"gpu.sh: cannot import torch, tensordict and fmtl with {sys.executable}: {e}\n{hint}") from e
    cuda = torch.cuda.is_available()
    return {"torch": torch.__version__, "tensordict": tensordict.__version__, "cuda": cuda,
            "device": torch.cuda.get_device_name(0) if cuda else "cpu"}  # fmt: skip


def _wheels(py: str, work: Path) -> list[str]:
    """Installs carried wheels (``.whl/*.whl``: tensordict and what it needs) into a private folder."""
    wheels = sorted((REPO / ".whl").glob("*.whl"))
    if not wheels:
        return []
    site = work / "site"
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--target",
                    str(site), *map(str, wheels)], check=True, timeout=300)  # fmt: skip
    return [str(site)]


def _console_script(py: str, env: dict[str, str], work: Path) -> list[str]:
    """The ``fmtl`` console script: the one on PATH or beside ``py``, else installed into ``work``."""
    beside = Path(py).parent / "fmtl"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("fmtl", path=env.get("PATH"))
    if found:
        return [found]
    target = work / "fmtl-install"
    done = subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                           str(target), str(REPO)], capture_output=True, text=True, timeout=300)  # fmt: skip
    script = target / "bin" / "fmtl"
    if done.returncode == 0 and script.exists():
        env["PYTHONPATH"] = os.pathsep.join([str(target), env["PYTHONPATH"]])
        return [py, str(script)]
    return [py, "-m", "fmtl"]  # recorded: not the console script


def _qm9_available(py: str, env: dict[str, str]) -> bool:
    code = ("import importlib.util, os, pathlib; c = pathlib.Path(os.environ.get('FMTL_CACHE', "
            "pathlib.Path.home() / '.cache' / 'fmtl')); print(bool(importlib.util.find_spec('qm9pack')) "
            "or any(c.glob('qm9_*descriptor*.pt')))")  # fmt: skip
    out = subprocess.run([py, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    return out.stdout.strip().endswith("True")


def _run(name: str, cmd: list[str], limit: float, out: Path, env: dict[str, str]) -> dict:
    log = out / f"{name.replace(' ', '_')}.log"
    start = time.monotonic()
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        try:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=limit, cwd=REPO)
            status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {limit:.0f} s"
    took = time.monotonic() - start
    print(f"gpu.sh: {name}: {status} in {took:.0f} s", flush=True)
    return {"part": name, "status": status, "seconds": round(took, 1), "command": cmd, "log": log.name}


def _rows(path: Path) -> list[dict]:
    try:
        return json.loads(path.read_text())["rows"]
    except (OSError, ValueError, KeyError):
        return []


def _throughput(run_dir: Path) -> dict:
    rates = []
    try:
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if rec.get("type") == "step" and rec.get("samples_per_s"):
                rates.append(float(rec["samples_per_s"]))
    except (OSError, ValueError):
        pass
    try:
        results = json.loads((run_dir / "results.json").read_text())
        wall, steps = results.get("wall_time_s"), results.get("steps")
    except (OSError, ValueError):
        wall, steps = None, None
    # the first logged steps include compilation and warm-up
    steady = rates[len(rates) // 4 :] or rates
    return {"samples_per_s_median": round(statistics.median(steady), 1) if steady else None,
            "logged_steps": len(rates), "steps": steps,
            "wall_time_s": round(wall, 1) if isinstance(wall, float) else wall}  # fmt: skip


def _table(rows: list[dict], columns: list[str]) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |\n" for r in rows)


def _markdown(summary: dict) -> str:
    m = summary["machine"]
    lines = [f"# fmtl GPU run ({'DRY RUN on the CPU, tiny sizes' if summary['dry_run'] else m.get('device')})\n",
             f"{m.get('date')} · torch {m.get('torch')} · tensordict {m.get('tensordict')} · device {m.get('device')}"
             f" · budget {summary['budget_s']} s, used {summary['used_s']} s\n", "## Parts\n",
             _table(summary["parts"], ["part", "status", "seconds"])]  # fmt: skip
    step = [r for r in summary["step_rows"] if "ms" in r]
    if step:
        lines += ["\n## Steps\n", _table(step, ["model", "T", "variant", "ms", "spread", "vs_loop_step",
                                                "vs_libmtl_step", "vs_own_task_gradients", "vs_ew_step", "peak_mib"])]
    tg = [r for r in summary["task_gradient_rows"] if "ms" in r]
    if tg:
        lines += ["\n## Task gradients\n", _table(tg, ["model", "T", "variant", "ms", "spread", "ratio_vs_loop",
                                                       "peak_mib", "auto_chose"])]  # fmt: skip
    job = summary.get("main_job")
    if job:
        lines += ["\n## Main job (`fmtl train`)\n", _table([job], ["benchmark", "command", "samples_per_s_median",
                                                                  "logged_steps", "steps", "wall_time_s", "note"])]
    return "\n".join(lines)


def main() -> int:
    dry = _env_flag("FMTL_GPU_DRYRUN")
    out = Path(os.environ.get("FMTL_GPU_OUT") or HERE / "results" / "gpu").resolve()
    budget = float(os.environ.get("FMTL_GPU_BUDGET", "570"))
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    py = sys.executable
    work = Path(tempfile.mkdtemp(prefix="fmtl-gpu-"))
    site = _wheels(py, work)
    env = _python_env(site)
    found = _check_imports(site)
    if not dry and not found["cuda"]:
        print(f"gpu.sh: torch {found['torch']} sees no CUDA device; run with FMTL_GPU_DRYRUN=1 for the CPU dry run",
              file=sys.stderr)  # fmt: skip
        return 2
    fmtl_cmd = _console_script(py, env, work)
    device = "cpu" if dry else "cuda"
    common = ["--device", device, "--malloc", "tuned"]
    if dry:
        # one round of everything at tiny sizes: the pipeline, not the numbers
        step_common = [*common, "--tasks", "2", "--rounds", "1", "--warmup", "0", "--no-memory", "--no-compile",
                       "--rep-methods", "pcgrad"]  # fmt: skip
        steps = [("step mlp", ["--models", "tiny,tiny_cnn,tiny_gnn"], 60)]
        tg_args = [*common, "--models", "tiny", "--tasks", "2", "--rounds", "1", "--warmup", "0", "--compiled", "",
                   "--max-memory", "loop", "--no-memory"]  # fmt: skip
        job_benchmark, job_args = "synthetic", ["--epochs", "1", "--batch-size", "64", "--threads", "1"]
    else:
        step_common = [*common, "--rounds", "15", "--warmup", "3",
                       "--compile-steps", "dbmtl step,dbmtl step|sgd,ew step|sgd"]
        steps = [("step mlp", ["--models", "mlp", "--tasks", "11,40", "--compile-models", "mlp"], 240),
                 ("step qm9_gnn", ["--models", "qm9_gnn", "--tasks", "11", "--compile-models", "qm9_gnn"], 120),
                 ("step cnn", ["--models", "cnn", "--tasks", "11", "--compile-models", ""], 60),
                 ("step qm9_mlp", ["--models", "qm9_mlp", "--tasks", "11", "--compile-models", "qm9_mlp"], 90)]
        tg_args = [*common, "--models", "mlp,cnn,qm9_gnn", "--tasks", "11,40", "--rounds", "10",
                   "--compile-tasks", "11", "--max-memory", "loop"]  # fmt: skip
        job_benchmark, job_args = "qm9", ["--epochs", "1"]
    job_note = ""
    if job_benchmark == "qm9" and not _qm9_available(py, env):
        job_benchmark, job_args = "synthetic", ["--epochs", "3"]
        job_note = "QM9 not readable here (no qm9pack, no cache): the synthetic benchmark instead"
    run_dir = out / f"run_{job_benchmark}"
    job_cmd = [*fmtl_cmd, "train", "--benchmark", job_benchmark, "--method", "dbmtl", "--stl", "none", "--quiet",
               "--overwrite", "--out", str(run_dir), *job_args]  # fmt: skip
    if not dry:  # the dry run's job runs on the CPU, every build's default
        help_text = subprocess.run([*fmtl_cmd, "train", "--help"], capture_output=True, text=True, env=env).stdout
        if "--device" in help_text:
            job_cmd += ["--device", device]
        else:
            job_note = (job_note + "; " if job_note else "") + "this fmtl train has no --device: the job ran on the CPU"

    plan = [steps[0], ("task_gradients", None, 150 if not dry else 60), ("main job", None, 150 if not dry else 90),
            *steps[1:]]  # fmt: skip
    parts = []
    for name, args, cap in plan:
        left = budget - (time.monotonic() - start)
        if left < 20:
            parts.append({"part": name, "status": "skipped (budget spent)", "seconds": 0.0})
            continue
        limit = min(cap, left)
        if name == "task_gradients":
            cmd = [py, str(HERE / "task_gradients.py"), *tg_args, "--out", str(out / "task_gradients.json")]
        elif name == "main job":
            cmd = job_cmd
        else:
            cmd = [py, str(HERE / "step.py"), *step_common, *args, "--out", str(out / f"{name.replace(' ', '_')}.json")]
        parts.append(_run(name, cmd, limit, out, env))

    machine = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **found,
               "nvidia_smi": _nvidia_smi(), "python": sys.version.split()[0]}  # fmt: skip
    step_rows = [r for name, _, _ in steps for r in _rows(out / f"{name.replace(' ', '_')}.json")]
    job = {"benchmark": job_benchmark, "command": " ".join(Path(job_cmd[0]).name if i == 0 else c
                                                          for i, c in enumerate(job_cmd)),
           **_throughput(run_dir), "note": job_note}  # fmt: skip
    summary = {"dry_run": dry, "budget_s": budget, "used_s": round(time.monotonic() - start, 1), "machine": machine,
               "parts": parts, "step_rows": step_rows, "task_gradient_rows": _rows(out / "task_gradients.json"),
               "main_job": job}  # fmt: skip
    (out / "gpu.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "gpu.md").write_text(_markdown(summary))
    shutil.rmtree(work, ignore_errors=True)
    print(f"gpu.sh: wrote {out / 'gpu.json'} and {out / 'gpu.md'}", flush=True)
    return 0 if all(p["status"] == "ok" for p in parts) else 1


def _nvidia_smi() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None


if __name__ == "__main__":
    sys.exit(main())

"""Users' own problems: the README's problem file through the real console script, fit(), registries, errors.

The README's complete problem file (an encoder with BatchNorm and Dropout, three heads, a
``torch.utils.data`` dataset of ``(x, {task: y})`` samples) is extracted from README.md, so the
file the README shows is the file these tests train.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _train_helpers import assert_bitwise_equal, crash_at_step, final_params

import fmtl
from fmtl.train import Problem, fit, problems
from fmtl.train.checkpoint import load
from fmtl.train.fit import configure, train

ROOT = Path(__file__).resolve().parents[1]
FMTL = str(Path(sys.executable).parent / "fmtl")
BASE = ["--epochs", "2", "--batch-size", "32", "--quiet", "--device", "cpu"]
FAST = [*BASE, "--data", "n=96"]


def _problem_file(where: Path) -> Path:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    (source,) = [b for b in blocks if "def make(" in b and "Problem.from_modules" in b]
    path = where / "my_problem.py"
    path.write_text(source)
    return path


def _fmtl(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FMTL, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_the_readme_problem_file_trains_through_the_console_script(tmp_path):
    _problem_file(tmp_path)
    done = _fmtl(tmp_path, "train", "--problem", "my_problem.py:make", "--method", "dbmtl", "--model", "width=16",
                 *FAST)  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = tmp_path / "runs" / "make-dbmtl-seed0"
    res = json.loads((out / "results.json").read_text())
    assert res["tasks"] == ["size", "mass", "kind"]
    assert res["metrics"] == {"size": ["mae"], "mass": ["mae"], "kind": ["accuracy"]}
    assert res["higher_is_better"]["kind"] == {"accuracy": True} and res["units"]["kind"] == "%"
    assert res["selected"]["criterion"] == "val_delta_p" and math.isfinite(res["delta_p"])
    assert res["benchmark"] == f"{(tmp_path / 'my_problem.py').resolve()}:make" and res["device"] == "cpu"
    assert 0 <= res["selected"]["test"]["kind"]["accuracy"] <= 100
    # the BatchNorm running statistics are part of the checkpointed state, and moved
    ck = load(out / "checkpoint.pt")
    assert ck["config"]["model"] == {"width": 16} and ck["config"]["data"] == {"n": 96}
    assert "| kind |" in done.stdout and "Δp" in done.stdout
    stl = json.loads((Path(res["stl_dir"]) / "results.json").read_text())
    assert stl["method"] == "stl" and stl["tasks"] == res["tasks"]


def test_the_readme_problem_file_runs_as_a_script(tmp_path):
    _problem_file(tmp_path)
    done = subprocess.run([sys.executable, "my_problem.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert re.search(r"Δp against STL: [+-]\d+\.\d\d%", done.stdout)
    assert (tmp_path / "runs" / "points-dbmtl" / "results.json").is_file()


def test_a_batchnorm_dropout_problem_resumes_bitwise(tmp_path, monkeypatch):
    """Killed mid-epoch (after a step checkpoint) and resumed: params, optimizer, balancer state and
    the BatchNorm running statistics equal the uninterrupted run's, and so do the dropout masks."""
    spec = problems.file_spec(str(_problem_file(tmp_path)) + ":make")
    # one fixed strategy: "auto" may time its way to another one in each of the two runs (they agree
    # only up to rounding); vmap_grad runs the forward under vmap(randomness="same")
    cfg = configure(None, None, {"benchmark": spec, "method": "dbmtl", "epochs": 2, "batch_size": 16,
                                 "checkpoint_every": 2, "strategy": "vmap_grad", "data": {"n": 64},
                                 "model": {"width": 8}})  # fmt: skip
    train(cfg, tmp_path / "full", quiet=True, plots=False, device="cpu")

    undo = crash_at_step(monkeypatch, 7)  # step 7 = batch 3 of epoch 2; last checkpoint at step 6
    out = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, quiet=True, plots=False, device="cpu")
    assert load(out / "checkpoint.pt")["position"] == {"epoch": 1, "batch": 2, "step": 6}
    undo()
    train(cfg, out, resume=True, quiet=True, plots=False, device="cpu")
    assert_bitwise_equal(final_params(tmp_path / "full"), final_params(out))
    a, b = load(tmp_path / "full" / "checkpoint.pt")["state"], load(out / "checkpoint.pt")["state"]
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert any(x.dtype == torch.int64 and int(x) == 8 for x in a if x.dim() == 0)  # num_batches_tracked


def _toy(name: str = "toy") -> Problem:
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(0)
    data = lambda n: TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 2, generator=g))  # noqa: E731
    heads = {"a": torch.nn.Linear(8, 1), "b": torch.nn.Linear(8, 1)}
    return Problem.from_modules(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh()), heads, train=data(48),
                                val=data(16), test=data(16), losses={"a": torch.nn.functional.mse_loss,
                                                                     "b": torch.nn.functional.mse_loss},
                                metrics={"a": "mse", "b": "mae"}, name=name)  # fmt: skip


def test_fit_trains_a_problem_object_with_its_stl_baseline(tmp_path):
    res = fit(_toy(), tmp_path / "ew", method="ew", epochs=2, batch_size=16, quiet=True, plots=False, device="cpu")
    assert res["reused"] is False and res["benchmark"] == "toy" and math.isfinite(res["delta_p"])
    assert Path(res["stl_dir"]).name.startswith("toy-stl-seed0-")
    again = fit(_toy(), tmp_path / "ew", method="ew", epochs=2, batch_size=16, quiet=True, plots=False, device="cpu")
    assert again["reused"] is True and again["delta_p"] == res["delta_p"]
    with pytest.raises(ValueError, match="unknown setting"):
        fit(_toy(), tmp_path / "x", epoch=2)


def test_a_registered_problem_is_trained_by_name(tmp_path):
    problems.register("toy_registered", lambda cfg: _toy("toy_registered"), settings={"epochs": 1, "batch_size": 16},
                      replace=True)  # fmt: skip
    try:
        assert "toy_registered" in problems.names()
        done = fit(None, tmp_path / "r", config={"benchmark": "toy_registered"}, method="dbmtl", stl="none",
                   quiet=True, plots=False, device="cpu")  # fmt: skip
        assert done["epochs"] == 1 and done["selected"]["criterion"] == "val_normalized_error"
    finally:
        problems._REGISTRY.pop("toy_registered")


def test_without_a_normalized_error_selection_uses_delta_p_against_the_first_epoch(tmp_path):
    _problem_file(tmp_path)
    done = _fmtl(tmp_path, "train", "--problem", "my_problem.py:make", "--method", "ew", "--stl", "none", *FAST)
    assert done.returncode == 0, done.stderr
    res = json.loads((tmp_path / "runs" / "make-ew-seed0" / "results.json").read_text())
    assert res["selected"]["criterion"] == "val_delta_p_vs_first_epoch" and res["delta_p"] is None
    assert "first epoch" in res["note"]


@pytest.mark.parametrize("body, message", [
    ("", "has no function 'make'"),
    ("def make():\n    return 3\n", "returned a int, not a fmtl.train.Problem"),
    ("def make():\n    return None\n", "returned a NoneType"),
])  # fmt: skip
def test_a_bad_problem_file_is_one_line_and_exit_2(tmp_path, body, message):
    (tmp_path / "p.py").write_text(body)
    done = _fmtl(tmp_path, "train", "--problem", "p.py:make", *BASE)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


@pytest.mark.parametrize("spec, message", [
    ("missing.py:make", "no such file missing.py"),
    ("p.py:", "--problem expects FILE.py:NAME"),
    ("nope", "unknown benchmark 'nope'"),
])  # fmt: skip
def test_a_bad_problem_spec_is_one_line_and_exit_2(tmp_path, spec, message):
    (tmp_path / "p.py").write_text("")
    done = _fmtl(tmp_path, "train", "--problem", spec, *BASE)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_problem_options_that_the_factory_does_not_take_are_named(tmp_path):
    _problem_file(tmp_path)
    done = _fmtl(tmp_path, "train", "--problem", "my_problem.py:make", "--model", "depth=3", *FAST)
    assert done.returncode == 2 and "depth" in done.stderr and "Traceback" not in done.stderr, done.stderr


def _registers_callables() -> bool:
    try:
        fmtl.balancers.register("_probe_ew", lambda: fmtl.balancers.get("ew"))
        fmtl.balancers.get("_probe_ew")
        return True
    except Exception:  # noqa: BLE001 - the registry of this build takes module names only
        return False


def test_a_balancer_registered_by_the_problem_file_works_with_method(tmp_path):
    if not _registers_callables():
        pytest.skip("fmtl.balancers.register(name, factory) taking a callable is not in this build yet")
    src = _problem_file(tmp_path).read_text()
    (tmp_path / "my_problem.py").write_text(
        src.replace("import fmtl.train\n", "import fmtl\nimport fmtl.train\n\n"
                    "fmtl.balancers.register('halves', lambda: fmtl.balancers.get('ew'))\n", 1))  # fmt: skip
    done = _fmtl(tmp_path, "train", "--problem", "my_problem.py:make", "--method", "halves", *FAST)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "runs" / "make-halves-seed0" / "results.json").read_text())["method"] == "halves"


def test_torchrun_trains_the_batchnorm_dropout_problem_with_replicas_kept_equal(tmp_path):
    """2 processes: every rank normalizes with its own batch statistics, the running statistics are
    averaged after each update, and FMTL_DISTRIBUTED_DEBUG=1 checks after every step that params and
    state (buffers included) are the same on both ranks."""
    import os

    from test_distributed import _free_port

    from fmtl import distributed

    _problem_file(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", distributed.DEBUG_ENV: "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         f"--master_port={_free_port()}", "-m", "fmtl", "train", "--problem", "my_problem.py:make", "--method",
         "dbmtl", "--stl", "none", "--epochs", "1", "--batch-size", "16", "--data", "n=64", "--quiet",
         "--device", "cpu", "--out", "two"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads((tmp_path / "two" / "results.json").read_text())
    assert res["world_size"] == 2 and res["steps"] == 4
    state = load(tmp_path / "two" / "checkpoint.pt")["state"]
    assert any(x.dtype == torch.int64 and x.dim() == 0 and int(x) == 4 for x in state)  # num_batches_tracked

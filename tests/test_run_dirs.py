"""Run directories under concurrency, kills and resumes: one writer, any killed start resumable, settings kept."""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _train_helpers import TINY, results, tiny_config

from fmtl.train import runs
from fmtl.train.checkpoint import load
from fmtl.train.cli import main
from fmtl.train.config import dumps, load_toml

fit_module, loop_module = importlib.import_module("fmtl.train.fit"), importlib.import_module("fmtl.train.loop")
FMTL = shutil.which("fmtl", path=str(Path(sys.executable).parent))


def _train(out: Path, *extra: str) -> int:
    return main(["train", *TINY, "--out", str(out), *extra])


def _headers(out: Path) -> int:
    return sum(json.loads(line)["type"] == "header" for line in (out / "metrics.jsonl").read_text().splitlines())


def test_a_second_writer_is_refused_naming_the_holders_pid(tmp_path):
    out = tmp_path / "run"
    with runs.lock(out):
        done = subprocess.run([FMTL, "train", *TINY, "--method", "ew", "--stl", "none", "--out", str(out)],
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert f"being written by another fmtl process (PID {os.getpid()})" in done.stderr
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
        assert sorted(p.name for p in out.iterdir()) == [runs.LOCK]
    assert _train(out, "--method", "ew", "--stl", "none") == 0  # the lock went with its holder


def test_the_default_stl_directory_is_locked_too(tmp_path, capsys):
    out = tmp_path / "run"
    with runs.lock(runs.default_stl_dir(out, tiny_config(method="ew"))):
        assert _train(out, "--method", "ew") == 2
    assert f"PID {os.getpid()}" in capsys.readouterr().err


def _config_only(out: Path, *extra: str) -> None:
    """The directory a start killed right after writing config.toml leaves."""
    assert _train(out, "--method", "ew", "--stl", "none", "--epochs", "1", *extra) == 0
    for name in ("checkpoint.pt", "results.json", "metrics.jsonl", "plots"):
        p = out / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()


@pytest.mark.parametrize("state", ["lock_only", "metrics_only", "config_only", "config_metrics_tmp"])
def test_a_directory_left_by_a_kill_during_the_first_writes_resumes(tmp_path, state):
    ref = tmp_path / "ref"
    assert _train(ref, "--method", "ew", "--stl", "none") == 0
    out = tmp_path / "run"
    if state == "lock_only":
        with runs.lock(out):
            pass
    elif state == "metrics_only":  # as fmtl wrote it before config.toml came first
        out.mkdir()
        (out / "metrics.jsonl").write_text('{"type": "header"}\n{"type": "st')
    else:
        _config_only(out)
        (out / "config.toml").write_text((ref / "config.toml").read_text())
        if state == "config_metrics_tmp":
            (out / "metrics.jsonl").write_text('{"type": "header", "tasks": []}\n')
            (out / ".checkpoint.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    resume = ["--resume", str(out)] if (out / "config.toml").exists() else []
    cmd = ["train", *resume, "--quiet"] if resume else ["train", *TINY, "--method", "ew", "--stl", "none",
                                                        "--out", str(out)]  # fmt: skip
    assert main(cmd) == 0
    assert not list(out.glob(".*.tmp"))
    assert _headers(out) == 1
    assert load(out / "checkpoint.pt")["params"] is not None
    a, b = results(ref), results(out)
    assert a["final_test"] == b["final_test"] and a["steps"] == b["steps"]


@pytest.mark.parametrize(("flags", "name"), [
    (["--method", "dbmtl"], "method"), (["--lr", "0.02"], "lr"), (["--opt", "beta=0.5"], "opts"),
    (["--batch-size", "8"], "batch_size"), (["--seed", "1"], "seed"), (["--data", "n=64"], "data"),
    (["--optimizer", "sgd"], "optimizer"),
])  # fmt: skip
def test_resume_refuses_a_changed_setting_naming_it(tmp_path, capsys, flags, name):
    out = tmp_path / "run"
    assert _train(out, "--method", "ew", "--stl", "none", "--epochs", "1") == 0
    (out / "results.json").unlink()
    before = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--quiet", *flags]) == 2
    err = capsys.readouterr().err
    assert f"--resume {out}: {name} was " in err and "Traceback" not in err
    assert (out / "checkpoint.pt").read_bytes() == before


def test_resume_accepts_the_same_settings_and_a_longer_run(tmp_path):
    out = tmp_path / "run"
    assert _train(out, "--method", "ew", "--stl", "none", "--epochs", "1") == 0
    (tmp_path / "c.toml").write_text(dumps({"lr": 0.01, "method": "ew"}))
    done = subprocess.run([FMTL, "train", "--resume", str(out), *TINY, "--method", "ew", "--config",
                           str(tmp_path / "c.toml")], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr  # TINY says --epochs 2: the one setting that may change
    assert results(out)["epochs"] == 2
    (tmp_path / "c.toml").write_text(dumps({"lr": 0.5}))
    done = subprocess.run([FMTL, "train", "--resume", str(out), "--config", str(tmp_path / "c.toml")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2 and "lr was 0.01 when the run started, not 0.5" in done.stderr


def test_resume_remembers_stl_none(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--method", "ew", "--stl", "none", "--epochs", "1") == 0
    assert load_toml(out / "config.toml")["method"] == "ew"  # the record is not a setting
    assert main(["train", "--resume", str(out), "--epochs", "2", "--quiet"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no STL baseline was trained
    assert results(out)["delta_p"] is None and results(out)["epochs"] == 2
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--epochs", "3", "--stl", str(tmp_path), "--quiet"]) == 2
    assert "was started with --stl none" in capsys.readouterr().err


def test_a_loss_above_the_bound_stops_the_run_with_exit_3(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(loop_module, "LOSS_BOUND", 1e-3)  # below every loss of the tiny problem
    assert _train(tmp_path / "run", "--method", "ew", "--stl", "none") == 3
    err = capsys.readouterr().err
    assert "exceeds 0.001" in err and "step 1 " in err and "no checkpoint was written yet" in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_non_finite_validation_metrics_stop_the_run_keeping_the_last_good_epoch(tmp_path, capsys, monkeypatch):
    real, calls = fit_module.evaluate_epoch, []

    def nan_at_epoch_2(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            out["val"]["metrics"]["t1"] = {k: math.nan for k in out["val"]["metrics"]["t1"]}
        return out

    monkeypatch.setattr(fit_module, "evaluate_epoch", nan_at_epoch_2)
    out = tmp_path / "run"
    assert _train(out, "--method", "ew", "--stl", "none", "--epochs", "3") == 3
    err = capsys.readouterr().err
    assert "end of epoch 2: non-finite validation metrics ['t1.mse']" in err and "epoch 1, step 6" in err
    assert load(out / "checkpoint.pt")["position"]["epoch"] == 1

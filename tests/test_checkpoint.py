"""Checkpoints: exact resume (in-process and after SIGKILL), atomic writes, clear errors on bad files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _train_helpers import TINY, assert_bitwise_equal, crash_at_step, final_params, tiny_config
from tensordict import TensorDict

from fmtl.train import checkpoint, train
from fmtl.train.checkpoint import CheckpointError
from fmtl.train.cli import main


def _params():
    return TensorDict({"shared": {"w": torch.randn(3, 2)}, "tasks": {"a": {"b": torch.randn(1)}}}, [])


def test_roundtrip_restores_params_state_and_position(tmp_path):
    p, state = _params(), (torch.tensor(7), TensorDict({"m": torch.randn(2)}, []))
    path = tmp_path / "ck.pt"
    checkpoint.save(path, params=p, state=state, position={"epoch": 2, "batch": 3, "step": 9},
                    config={"method": "dbmtl", "lr": 0.1}, history=[{"epoch": 0, "x": float("nan")}])  # fmt: skip
    ck = checkpoint.load(path)
    p2, s2 = checkpoint.restore(ck, _params(), (torch.tensor(0), TensorDict({"m": torch.zeros(2)}, [])))
    assert torch.equal(p2["shared", "w"], p["shared", "w"]) and torch.equal(p2["tasks", "a", "b"], p["tasks", "a", "b"])
    assert int(s2[0]) == 7 and torch.equal(s2[1]["m"], state[1]["m"])
    assert ck["position"] == {"epoch": 2, "batch": 3, "step": 9} and ck["config"]["lr"] == 0.1


def test_structure_mismatch_is_a_clear_error(tmp_path):
    path = tmp_path / "ck.pt"
    checkpoint.save(path, params=_params(), state=(torch.tensor(1),), position={}, config={}, history=[])
    other = TensorDict({"shared": {"w": torch.zeros(4, 2)}, "tasks": {"a": {"b": torch.zeros(1)}}}, [])
    with pytest.raises(CheckpointError, match="'shared.w' is"):
        checkpoint.restore(checkpoint.load(path), other, (torch.tensor(0),))
    with pytest.raises(CheckpointError, match="step state"):
        checkpoint.restore(checkpoint.load(path), _params(), (torch.tensor(0), torch.zeros(2)))


@pytest.mark.parametrize("kind", ["truncated", "garbage", "foreign_dict", "pickled_object", "empty"])
def test_corrupt_or_foreign_files_are_rejected(tmp_path, kind):
    path = tmp_path / "ck.pt"
    checkpoint.save(path, params=_params(), state=(), position={}, config={}, history=[])
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        path.write_bytes(os.urandom(256))
    elif kind == "foreign_dict":
        torch.save({"model": torch.zeros(2)}, path)
    elif kind == "pickled_object":
        torch.save({"format": checkpoint.FORMAT, "obj": Path("x")}, path)  # needs full unpickling
    else:
        path.write_bytes(b"")
    with pytest.raises(CheckpointError):
        checkpoint.load(path)


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    checkpoint.save(path, params=_params(), state=(torch.tensor(1),), position={"step": 1}, config={}, history=[])
    before = path.read_bytes()

    def exploding_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, params=_params(), state=(torch.tensor(2),), position={"step": 2}, config={}, history=[])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temp file left behind


@pytest.mark.parametrize("method", ["dbmtl", "ew"])
def test_resume_is_bitwise_equal_to_an_uninterrupted_run(tmp_path, method):
    full = tiny_config(method=method, epochs=3, checkpoint_every=4)
    train(full, tmp_path / "full", quiet=True, plots=False)
    # the same run stopped after epoch 1, then resumed to epoch 3
    train({**full, "epochs": 1}, tmp_path / "part", quiet=True, plots=False)
    train(full, tmp_path / "part", resume=True, quiet=True, plots=False)
    assert_bitwise_equal(final_params(tmp_path / "full"), final_params(tmp_path / "part"))
    a = checkpoint.load(tmp_path / "full" / "checkpoint.pt")
    b = checkpoint.load(tmp_path / "part" / "checkpoint.pt")
    assert all(torch.equal(x, y) for x, y in zip(a["state"], b["state"], strict=True))  # balancer + Adam state
    assert a["position"] == b["position"] == {"epoch": 3, "batch": 0, "step": 18}


def test_resume_mid_epoch_from_a_step_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_config(method="dbmtl", epochs=2, checkpoint_every=4)
    train(cfg, tmp_path / "full", quiet=True, plots=False)

    undo = crash_at_step(monkeypatch, 11)  # step 11 = batch 5 of epoch 2; last checkpoint at step 8
    out = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, quiet=True, plots=False)
    assert checkpoint.load(out / "checkpoint.pt")["position"] == {"epoch": 1, "batch": 2, "step": 8}
    undo()
    train(cfg, out, resume=True, quiet=True, plots=False)
    assert_bitwise_equal(final_params(tmp_path / "full"), final_params(out))


def test_resume_refuses_a_corrupt_checkpoint_and_overwrites_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--method", "ew", "--stl", "none", "--out", str(out)]) == 0
    (out / "results.json").unlink()  # make it look unfinished
    (out / "checkpoint.pt").write_bytes(b"\x00" * 100)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert main(["train", "--resume", str(out), "--stl", "none", "--quiet"]) == 4
    assert "not a readable checkpoint" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fmtl", "train", *args]


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    args = [*TINY, "--method", "dbmtl", "--stl", "none", "--epochs", "3", "--data", "n=480",
            "--checkpoint-every", "5"]  # 30 steps per epoch, a checkpoint every 5 steps  # fmt: skip
    ref = tmp_path / "ref"
    subprocess.run(_cli(*args, "--out", str(ref)), check=True, capture_output=True, timeout=300)

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_cli(*args, "--out", str(out)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)  # fmt: skip
    killed_at = None
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            ck = out / "checkpoint.pt"
            if ck.exists():
                try:
                    pos = checkpoint.load(ck)["position"]
                except CheckpointError:
                    continue
                if pos["epoch"] == 1 and 0 < pos["batch"]:  # mid epoch 2, after several checkpoints
                    proc.send_signal(signal.SIGKILL)
                    killed_at = pos
                    break
            time.sleep(0.005)
    finally:
        proc.wait(timeout=60)
    if killed_at is None:
        pytest.skip("the run finished before it could be killed (machine too fast for this schedule)")
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "results.json").exists()
    done = subprocess.run(_cli("--resume", str(out), "--stl", "none", "--quiet"), capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    a, b = final_params(ref), final_params(out)
    diff = {k: float((a[k] - b[k]).abs().max()) for k in a}
    assert all(torch.equal(a[k], b[k]) for k in a), f"killed at {killed_at}: max |Δ| per parameter {diff}"
    steps = [line for line in (out / "metrics.jsonl").read_text().splitlines() if '"type": "step"' in line]
    assert len(steps) == 90  # redone steps were truncated from the log, not duplicated

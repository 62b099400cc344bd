"""Devices: --device parsing and its one-line errors, checkpoints onto any device, autocast on the run's device."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _train_helpers import TINY, tiny_config
from tensordict import TensorDict

from fmtl.amp import autocast
from fmtl.losses import make_loss_fn, mse
from fmtl.models import mlp_hps
from fmtl.train import checkpoint, train
from fmtl.train.device import resolve

FMTL = str(Path(sys.executable).parent / "fmtl")


def test_resolve_names_the_device_or_says_why_not():
    assert resolve("cpu") == torch.device("cpu")
    default = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    assert resolve(None) == resolve("auto") == default
    for bad, message in (("gpu", "is not a device"), ("meta", "holds no data"), ("cuda:x", "is not a device")):
        with pytest.raises(ValueError, match=message):
            resolve(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it_is_one_line_and_exit_2(tmp_path):
    for device in ("cuda", "cuda:1", "meta"):
        done = subprocess.run([FMTL, "train", *TINY, "--out", str(tmp_path / "r"), "--device", device], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("fmtl: error: --device") and done.stderr.count("\n") == 1, done.stderr
        assert not (tmp_path / "r").exists()  # refused before anything was written
    assert "CUDA is not available" in subprocess.run(
        [FMTL, "train", *TINY, "--device", "cuda"], cwd=tmp_path, capture_output=True, text=True, timeout=300).stderr


def test_a_checkpoint_holds_cpu_tensors_and_restores_onto_the_templates_device(tmp_path):
    p = TensorDict({"shared": {"w": torch.arange(3.0)}, "tasks": {"a": {"b": torch.ones(1)}}}, [])
    state = (torch.tensor(4), TensorDict({"m": torch.full((2,), 0.5)}, []))
    checkpoint.save(tmp_path / "c.pt", params=p, state=state, position={"epoch": 0, "batch": 0, "step": 4},
                    config={}, history=[])  # fmt: skip
    payload = checkpoint.load(tmp_path / "c.pt")
    assert all(v.device.type == "cpu" for v in payload["params"].values())
    # "meta" stands in for an accelerator here: the templates' device is where the tensors go
    template = p.to("meta")
    new_p, new_s = checkpoint.restore(payload, template, (state[0].to("meta"), state[1].to("meta")))
    assert new_p["shared", "w"].device.type == "meta" and new_p["shared", "w"].shape == (3,)
    assert new_s[0].device.type == "meta" and new_s[1]["m"].device.type == "meta"


def test_fp16_autocast_runs_on_the_given_device_type():
    m = mlp_hps(6, hidden=(8,), tasks={"a": 1, "b": 1}, seed=0)
    f = make_loss_fn(m.apply, {"a": mse, "b": mse})
    batch = TensorDict({"x": torch.randn(16, 6), "y": torch.randn(16, 2)}, [16])
    plain, half = f(m.params, batch), autocast(f, "fp16", "cpu")(m.params, batch)
    assert half.dtype == torch.float32 and not torch.equal(plain, half)  # the matmuls ran in float16
    torch.testing.assert_close(half, plain, rtol=1e-2, atol=1e-2)
    assert torch.equal(autocast(f, "fp16", "cuda")(m.params, batch), plain)  # CPU tensors: CUDA autocast is a no-op


def test_a_run_records_its_device_and_trains_under_fp16(tmp_path):
    res = train(tiny_config(method="dbmtl", amp="fp16", epochs=1), tmp_path / "r", quiet=True, plots=False,
                device="cpu")  # fmt: skip
    assert res["device"] == "cpu"
    assert all(math.isfinite(v["mse"]) for v in res["selected"]["test"].values())
    assert json.loads((tmp_path / "r" / "results.json").read_text())["device"] == "cpu"

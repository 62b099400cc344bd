"""The application's training controls and records: schedulers, clipping, plateau, early stopping, ``best.pt``,
``fmtl evaluate``, resolved hyperparameters, strict JSON, TensorBoard, ``--help``, ``fmtl list``, compare variants."""

from __future__ import annotations

import json
import math

import pytest
import torch
from _train_helpers import TINY, assert_bitwise_equal, crash_at_step, final_params, run_fmtl, tiny_config
from tensordict import TensorDict

import fmtl
from fmtl.train import train
from fmtl.train.assemble import build_optimizer
from fmtl.train.checkpoint import load
from fmtl.train.config import DEFAULTS

#: TINY with the progress and epoch lines on
LOUD = [a for a in TINY if a != "--quiet"]


def _strict(text: str):
    def reject(name):
        raise ValueError(f"non-strict JSON constant {name}")

    return json.loads(text, parse_constant=reject)


def _flat(metrics: dict) -> dict:
    return {(t, m): v for t, ms in metrics.items() for m, v in ms.items()}


def _epochs(out) -> list[dict]:
    return [r for r in map(_strict, (out / "metrics.jsonl").read_text().splitlines()) if r["type"] == "epoch"]


# ------------------------------------------------------------------------------- optimizer assembly

@pytest.mark.parametrize("name", ["constant", "cosine", "step", "warmup"])
def test_the_assembled_optimizer_is_clip_then_the_scheduled_optimizer(name):
    """build_optimizer == clip_grad_norm_ + torch.optim.Adam stepped by the rate schedules.get gives."""
    cfg = {**DEFAULTS, "lr": 0.1, "weight_decay": 0.0, "scheduler": name, "clip_norm": 0.5}
    opt = build_optimizer(cfg, 6)
    schedule = fmtl.schedules.get(name, 0.1, 6)
    w = torch.randn(5, dtype=torch.float64)
    params = TensorDict({"w": w.clone()}, [])
    ref = w.clone().requires_grad_(True)
    torch_opt = torch.optim.Adam([ref], lr=1.0)
    state = opt.init(params)
    for k in range(1, 7):
        g = torch.randn(5, dtype=torch.float64) * 3
        updates, state = opt.update(TensorDict({"w": g}, []), state, params)
        params = params + updates
        ref.grad = g.clone()
        torch.nn.utils.clip_grad_norm_([ref], 0.5)
        torch_opt.param_groups[0]["lr"] = fmtl.schedules.value(schedule, k)
        torch_opt.step()
        assert torch.allclose(params["w"], ref.detach(), atol=1e-12), (name, k)


def test_the_bare_optimizer_is_used_when_nothing_is_chained():
    cfg = {**DEFAULTS, "lr": 0.1, "weight_decay": 0.0, "scheduler": "constant"}
    state = build_optimizer(cfg, 10).init(TensorDict({"w": torch.zeros(1)}, []))
    assert type(state).__name__ == "AdamState"  # old checkpoints keep their state layout


def test_clip_norm_bounds_every_step_of_a_run(tmp_path):
    """With SGD, ‖Δθ‖ ≤ lr·c per step: the whole run moves the parameters at most steps·lr·c."""
    base = dict(method="ew", optimizer="sgd", lr=0.01, epochs=1)
    start = train(tiny_config(**{**base, "lr": 0.0}), tmp_path / "still", quiet=True, plots=False)
    assert start["steps"] == 6
    train(tiny_config(**base, clip_norm=1e-3), tmp_path / "clipped", quiet=True, plots=False)
    train(tiny_config(**base), tmp_path / "free", quiet=True, plots=False)
    theta0 = final_params(tmp_path / "still")

    def moved(out):
        p = final_params(out)
        return math.sqrt(sum(float((p[k] - theta0[k]).double().square().sum()) for k in p))

    assert moved(tmp_path / "clipped") <= 6 * 0.01 * 1e-3 * (1 + 1e-6)
    assert moved(tmp_path / "free") > 10 * moved(tmp_path / "clipped")


# ------------------------------------------------------------------------------------ plateau

PLATEAU = ["--scheduler", "plateau", "--schedule", "patience=0", "--schedule", "factor=0.5",
           "--schedule", "threshold=1e9"]  # fmt: skip  (no epoch after the first improves by 1e9)


def test_plateau_lowers_the_rate_and_records_it_through_the_console_script(tmp_path):
    out = tmp_path / "run"
    run_fmtl("train", *TINY, "--epochs", "3", "--method", "ew", "--stl", "none", *PLATEAU, "--out", str(out),
             cwd=tmp_path)  # fmt: skip
    assert [r["lr_scale"] for r in _epochs(out)] == [1.0, 0.5, 0.25]
    res = _strict((out / "results.json").read_text())
    assert res["hyperparameters"]["scheduler"] == {"name": "plateau", "steps": 18, "factor": 0.5, "patience": 0,
                                                   "threshold": 1e9, "cooldown": 0, "min_scale": 0.01}  # fmt: skip
    assert load(out / "checkpoint.pt")["extra"]["plateau"][0] == 0.25


def test_a_plateau_run_resumes_exactly(tmp_path, monkeypatch):
    cfg = tiny_config(method="dbmtl", epochs=3, scheduler="plateau",
                      schedule={"patience": 0, "factor": 0.5, "threshold": 1e9})  # fmt: skip
    train(cfg, tmp_path / "full", quiet=True, plots=False)
    undo = crash_at_step(monkeypatch, 15)  # in epoch 3, after the second reduction
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "part", quiet=True, plots=False)
    assert load(tmp_path / "part" / "checkpoint.pt")["extra"]["plateau"][0] == 0.5
    undo()
    train(cfg, tmp_path / "part", resume=True, quiet=True, plots=False)
    assert_bitwise_equal(final_params(tmp_path / "full"), final_params(tmp_path / "part"))
    assert [r["lr_scale"] for r in _epochs(tmp_path / "part")] == [1.0, 0.5, 0.25]


# ------------------------------------------------------------------- early stopping, best.pt, evaluate

def test_patience_stops_a_run_that_no_longer_improves(tmp_path):
    out = tmp_path / "run"
    done = run_fmtl("train", *LOUD, "--epochs", "5", "--lr", "1e-300", "--method", "ew",
                    "--stl", "none", "--patience", "1", "--out", str(out), cwd=tmp_path)  # fmt: skip
    assert len(_epochs(out)) == 2  # epoch 2 is no better than epoch 1 (lr 1e-300 moves no parameter): stop after it
    res = _strict((out / "results.json").read_text())
    assert res["stopped_early"] is True and res["selected"]["epoch"] == 0
    assert "stopping early" in done.stderr
    again = run_fmtl("train", *TINY, "--epochs", "5", "--lr", "1e-300", "--method", "ew", "--stl", "none", "--patience",
                     "1", "--out", str(out), cwd=tmp_path)  # fmt: skip
    assert "reused finished run" in again.stdout


def test_best_checkpoint_and_fmtl_evaluate_reproduce_the_results(tmp_path):
    out = tmp_path / "run"
    run_fmtl("train", *TINY, "--epochs", "3", "--method", "dbmtl", "--out", str(out), cwd=tmp_path)
    res = _strict((out / "results.json").read_text())
    best = load(out / "best.pt")
    assert best["position"]["epoch"] == res["selected"]["epoch"] + 1
    assert [r["best"] for r in _epochs(out)].count(True) >= 1
    ev = _strict(run_fmtl("evaluate", str(out), "--json", cwd=tmp_path).stdout)
    assert ev["epoch"] == res["selected"]["epoch"] and ev["checkpoint"] == "best.pt"
    assert _flat(ev["selected"]["test"]) == pytest.approx(_flat(res["selected"]["test"]), rel=1e-12)
    assert ev["delta_p"] == pytest.approx(res["delta_p"], rel=1e-9)
    last = _strict(run_fmtl("evaluate", str(out), "--checkpoint", "last", "--json", cwd=tmp_path).stdout)
    assert _flat(last["selected"]["test"]) == pytest.approx(_flat(res["final_test"]), rel=1e-12)
    assert last["epoch"] == 2
    table = run_fmtl("evaluate", str(out), cwd=tmp_path).stdout
    assert "best.pt" in table and "| t2 |" in table and "Δp =" in table
    bad = run_fmtl("evaluate", str(tmp_path / "nothing"), cwd=tmp_path, ok=False)
    assert bad.returncode == 2 and "holds no run" in bad.stderr and "Traceback" not in bad.stderr


# ------------------------------------------------------------------------------------ records, outputs

def test_records_hold_resolved_hyperparameters_environment_and_strict_json(tmp_path):
    from fmtl.train.config import tomllib

    out = tmp_path / "run"
    done = run_fmtl("train", *LOUD, "--epochs", "2", "--method", "uw", "--stl",
                    "none", "--opt", "uw.lr=0.01", "--scheduler", "step", "--clip-norm", "2", "--out", str(out),
                    cwd=tmp_path)  # fmt: skip
    saved = tomllib.loads((out / "config.toml").read_text())
    assert saved["opts"] == {"lr": 0.01}  # train takes --opt METHOD.key for its method
    assert saved["resolved"]["method"] == {"name": "uw", "lr": 0.01, "init": -0.5}
    assert saved["resolved"]["optimizer"]["betas"] == [0.9, 0.999] and saved["resolved"]["optimizer"]["clip_norm"] == 2
    assert saved["resolved"]["scheduler"] == {"name": "step", "steps": 12, "every": 4, "gamma": 0.1}
    assert saved["environment"]["torch"] == torch.__version__ and saved["environment"]["device"].startswith("cpu")
    res = _strict((out / "results.json").read_text())
    assert res["hyperparameters"] == saved["resolved"] and res["environment"]["fmtl"] == fmtl.__version__
    lines = (out / "metrics.jsonl").read_text().splitlines()
    steps = [_strict(line) for line in lines if '"type": "step"' in line]
    assert steps and all(c is None for r in steps for row in r["cosine"] for c in row)  # a loss method: null, not NaN
    epochs = _epochs(out)
    # the epoch line shows the mean over tasks of each task's loss divided by its epoch-1 loss
    first, second = epochs[0]["train_loss"], epochs[1]["train_loss"]
    want = sum(second[t] / first[t] for t in first) / len(first)
    assert epochs[0]["train_loss_normalized"] == 1.0 and epochs[1]["train_loss_normalized"] == pytest.approx(want)
    assert "train loss 1 (mean ℓ_t/ℓ_t at epoch 1)" in done.stderr
    assert f"train loss {want:.4g} (mean" in done.stderr


def test_tensorboard_flag_writes_every_record_and_the_hyperparameters(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    run_fmtl("train", *TINY, "--epochs", "2", "--method", "dbmtl", "--stl", "none", "--scheduler", "plateau",
             "--tensorboard", "--out", str(out), cwd=tmp_path)  # fmt: skip
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/losses/t0", "train/weights/t2", "train/grad_norms/t1", "train/cosine/t0~t1", "epoch/lr_scale",
            "epoch/train_loss_normalized", "epoch/test/metrics/t2/mse", "epoch/val/normalized/t0"} <= tags
    assert [e.step for e in acc.Scalars("epoch/lr_scale")] == [6, 12]
    assert "_hparams_/session_start_info" in acc.summary_metadata


# --------------------------------------------------------------------------------------------- CLI

def test_help_states_every_default(tmp_path):
    text = run_fmtl("train", "--help", cwd=tmp_path).stdout
    options = [chunk for chunk in text.split("\n  --")[1:]]
    flat = {o.split()[0]: " ".join(o.split()) for o in options}
    for flag in ("epochs", "batch-size", "lr", "weight-decay", "scheduler", "eval-batch-size", "log-every"):
        assert "default: the benchmark's" in flat[flag], flag
    for flag, text_ in (("optimizer", "default: adam"),
                        ("clip-norm", "default: none, no clipping"), ("patience", "default: none, no early stopping"),
                        ("seed", "default: 0"), ("method", "default: dbmtl"), ("accumulate", "default: 1")):
        assert text_ in flat[flag], flag
    switches = ("tensorboard", "overwrite", "quiet")  # off unless given
    no_default = [f for f, t in flat.items() if "default" not in t and f not in ("config", "problem", "resume",
                                                                                  "help", *switches)]
    assert no_default == [], no_default


def test_list_shows_each_method_kind_and_hyperparameters(tmp_path):
    text = run_fmtl("list", cwd=tmp_path).stdout
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("  ")}
    for m in fmtl.balancers.names():
        assert lines[m].startswith(f"  {m} ({fmtl.balancers.get(m).kind}):"), lines[m]
        for k in fmtl.balancers.defaults(m):
            assert f"{k}=" in lines[m], (m, k)
    assert "beta=0.9" in lines["dbmtl"] and "synthetic:" in lines and "epochs=5" in lines["synthetic:"]


def test_compare_with_variants_prints_progress_and_writes_one_table(tmp_path):
    out = tmp_path / "cmp"
    done = run_fmtl("compare", *LOUD, "--epochs", "1", "--methods", "ew", "--variant", "b05=dbmtl:beta=0.5",
                    "--variant", "pc=pcgrad:log_transform=true", "--opt", "dbmtl.alpha=max", "--out", str(out),
                    cwd=tmp_path)  # fmt: skip
    for i, label in enumerate(["stl", "ew", "b05", "pc"], 1):
        assert f"run {i} of 4: {label} seed 0" in done.stdout
    md = (out / "table.md").read_text()
    assert [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ")][1:] == \
        ["stl", "ew", "b05", "pc"]  # fmt: skip
    from fmtl.train.config import load_toml

    assert load_toml(out / "b05" / "seed0" / "config.toml")["opts"] == {"alpha": "max", "beta": 0.5}
    assert load_toml(out / "pc" / "seed0" / "config.toml")["opts"] == {"log_transform": True}
    bad = run_fmtl("compare", *TINY, "--methods", "ew", "--variant", "oops", "--out", str(tmp_path / "x"),
                   cwd=tmp_path, ok=False)  # fmt: skip
    assert bad.returncode == 2 and "expected LABEL=METHOD:key=value" in bad.stderr and not (tmp_path / "x").exists()


def test_stl_runs_are_keyed_by_what_changes_their_numbers_and_shared_with_compare(tmp_path):
    from fmtl.train.runs import default_stl_dir

    base = tiny_config(method="dbmtl")
    same = [tiny_config(method="ew", compile=True, log_every=3, strategy="loop", opts={"log_transform": True})]
    assert all(default_stl_dir(tmp_path / "a", c) == default_stl_dir(tmp_path / "a", base) for c in same)
    assert default_stl_dir(tmp_path / "a", tiny_config(lr=0.02)) != default_stl_dir(tmp_path / "a", base)
    assert default_stl_dir(tmp_path / "a", tiny_config(clip_norm=1.0)) != default_stl_dir(tmp_path / "a", base)
    run_fmtl("train", *TINY, "--epochs", "1", "--method", "ew", "--out", str(tmp_path / "ew"), cwd=tmp_path)
    first = _strict((tmp_path / "ew" / "results.json").read_text())["stl_dir"]
    mtime = (tmp_path / first / "checkpoint.pt").stat().st_mtime_ns
    run_fmtl("compare", *TINY, "--epochs", "1", "--methods", "dbmtl", "--log-every", "3", "--out",
             str(tmp_path / "cmp"), cwd=tmp_path)  # fmt: skip
    assert _strict((tmp_path / "cmp" / "dbmtl" / "seed0" / "results.json").read_text())["stl_dir"] == first
    assert (tmp_path / first / "checkpoint.pt").stat().st_mtime_ns == mtime  # reused, not retrained

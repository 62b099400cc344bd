"""``fmtl train`` / ``fmtl compare`` end to end on a tiny synthetic problem, and the user-facing errors."""

from __future__ import annotations

import json
import math

import pytest
from _train_helpers import TINY, results

from fmtl import balancers
from fmtl.train.cli import main
from fmtl.train.config import load_toml

PNG = b"\x89PNG\r\n\x1a\n"


def _train(tmp_path, *extra, out="run"):
    return main(["train", *TINY, "--out", str(tmp_path / out), *extra])


def test_train_writes_every_output_and_prints_the_table(tmp_path, capsys):
    assert _train(tmp_path, "--method", "dbmtl", "--opt", "beta=0.5") == 0
    printed = capsys.readouterr().out
    out = tmp_path / "run"
    res = results(out)
    assert res["method"] == "dbmtl" and res["tasks"] == ["t0", "t1", "t2"]
    assert res["selected"]["criterion"] == "val_delta_p"
    assert math.isfinite(res["delta_p"]) and res["wall_time_s"] > 0
    # Δp is the mean of the per-task Δp_t, and the STL reference it used is a finished STL run
    assert res["delta_p"] == pytest.approx(sum(res["selected"]["delta_p_tasks"].values()) / 3)
    stl = json.loads((tmp_path / res["stl_dir"] / "results.json").read_text())
    assert stl["method"] == "stl" and stl["selected"]["criterion"] == "per_task_val"
    for name in ("train_loss", "grad_norm", "cosine"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:8] == PNG
    cfg = load_toml(out / "config.toml")
    assert cfg["method"] == "dbmtl" and cfg["opts"] == {"beta": 0.5} and cfg["data"]["n"] == 96
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["type"] == "step"]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert len(steps) == 2 * 6 and len(epochs) == 2  # 96 rows / 16 = 6 steps per epoch, logged every step
    assert set(steps[0]) >= {"losses", "weights", "grad_norms", "cosine", "samples_per_s"}
    assert len(steps[0]["cosine"]) == 3 and steps[0]["cosine"][1][1] == pytest.approx(1.0)
    assert "val_delta_p" in epochs[0] and "mse" in epochs[0]["test"]["metrics"]["t0"]
    assert "Δp" in printed and "| t2 |" in printed


def test_a_finished_run_is_reused_and_a_different_one_is_refused(tmp_path, capsys):
    assert _train(tmp_path, "--method", "ew") == 0
    before = (tmp_path / "run" / "results.json").read_text()
    assert _train(tmp_path, "--method", "ew") == 0
    assert "reused finished run" in capsys.readouterr().out
    assert (tmp_path / "run" / "results.json").read_text() == before
    assert _train(tmp_path, "--method", "ew", "--lr", "0.02") == 2
    err = capsys.readouterr().err
    assert "different run" in err and "lr" in err and "--overwrite" in err
    assert (tmp_path / "run" / "results.json").read_text() == before
    assert _train(tmp_path, "--method", "ew", "--lr", "0.02", "--overwrite") == 0
    assert results(tmp_path / "run")["config"]["lr"] == 0.02


def test_an_unfinished_run_needs_resume(tmp_path, capsys):
    assert _train(tmp_path, "--method", "ew", "--stl", "none") == 0
    (tmp_path / "run" / "results.json").unlink()
    assert _train(tmp_path, "--method", "ew", "--stl", "none") == 2
    assert "--resume" in capsys.readouterr().err


def test_unknown_method_lists_the_valid_ones(tmp_path, capsys):
    assert _train(tmp_path, "--method", "nope") == 2
    err = capsys.readouterr().err
    assert "unknown method 'nope'" in err
    for name in [*balancers.names(), "stl"]:
        assert name in err
    assert not (tmp_path / "run").exists()


def test_unknown_or_malformed_option_is_an_error(tmp_path, capsys):
    assert _train(tmp_path, "--method", "dbmtl", "--opt", "gamma=1") == 2
    err = capsys.readouterr().err
    assert "gamma" in err and "beta" in err  # names the bad key and the accepted ones
    assert _train(tmp_path, "--method", "dbmtl", "--opt", "beta") == 2
    assert "key=value" in capsys.readouterr().err
    assert main(["train", "--benchmark", "imagenet"]) == 2
    assert "qm9" in capsys.readouterr().err


def test_config_file_with_flag_override(tmp_path):
    cfg = tmp_path / "setup.toml"
    cfg.write_text('method = "dbmtl"\nepochs = 1\n[opts]\nbeta = 0.3\nalpha = "mean"\n')
    assert _train(tmp_path, "--config", str(cfg), "--opt", "beta=0.7", "--stl", "none") == 0
    res = results(tmp_path / "run")
    assert res["epochs"] == 2  # the flag in TINY overrides the file
    assert res["config"]["opts"] == {"beta": 0.7, "alpha": "mean"}
    assert "note" in res and res["selected"]["criterion"] == "val_normalized_error" and res["delta_p"] is None


def test_nan_stops_with_the_last_good_checkpoint_intact(tmp_path, capsys):
    # SGD with lr 1e12: step 1 makes the weights huge but finite, step 2 overflows the losses.
    code = _train(tmp_path, "--method", "ew", "--optimizer", "sgd", "--lr", "1e12", "--checkpoint-every", "1",
                  "--stl", "none")
    assert code == 3
    err = capsys.readouterr().err
    assert "step 2" in err and "non-finite loss" in err and "t0" in err and "intact" in err
    from fmtl.train.checkpoint import load

    ck = load(tmp_path / "run" / "checkpoint.pt")
    assert ck["position"]["step"] == 1
    assert all(bool(v.isfinite().all()) for v in ck["params"].values())


def test_missing_data_package_names_the_extra(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "qm9pack" else real(name, *a))
    code = main(["train", "--benchmark", "qm9", "--data", f"cache_dir={json.dumps(str(tmp_path / 'c'))}",
                 "--out", str(tmp_path / "q"), "--stl", "none", "--quiet"])  # fmt: skip
    assert code == 2
    assert 'pip install -e ".[data]"' in capsys.readouterr().err


def test_list_and_python_dash_m(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "dbmtl" in out and "stl" in out and "synthetic" in out


def test_compare_builds_the_table(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", *TINY, "--methods", "ew,dbmtl", "--seeds", "2", "--out", str(out), "--epochs", "1"]
    assert main(args) == 0
    md = (out / "table.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["stl", "ew", "dbmtl"]
    assert "±" in md and "**" in md
    assert "**" not in rows[1] and "0 (reference)" in rows[1]  # STL is the reference, never the best
    csv_rows = (out / "table.csv").read_text().splitlines()
    # per-seed values, then the mean and std over seeds, for each of stl, ew, dbmtl
    assert csv_rows[0].startswith("method,seed,t0_mse") and len(csv_rows) == 1 + 3 * 4
    assert [r.split(",")[1] for r in csv_rows[1:5]] == ["0", "1", "mean", "std"]
    assert (out / "table.tex").read_text().startswith("\\begin{table}")
    assert (out / "delta_p.png").read_bytes()[:8] == PNG
    for m in ("ew", "dbmtl"):
        for s in (0, 1):
            assert results(out / m / f"seed{s}")["stl_dir"] == str(out / "stl" / f"seed{s}")
    # second call: every finished run is reused (not retrained), the table is identical
    before = {p: p.stat().st_mtime_ns for p in out.rglob("checkpoint.pt")}
    assert len(before) == 6
    assert main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("checkpoint.pt")} == before
    assert (out / "table.md").read_text() == md

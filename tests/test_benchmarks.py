"""The paper's benchmarks as registered problems: one epoch of each through the console script on a
tiny fabricated copy in its real on-disk layout, STL baseline included, every metric and Δp reported;
bad roots and architectures are one-line errors; the splits and the multi-input scoring are exact."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fmtl.data import load
from fmtl.data.dense import DENSE_TASKS
from fmtl.data.fabricate import fabricate
from fmtl.train import problems
from fmtl.train.cli import main
from fmtl.train.evaluate import accuracy, evaluate, masked
from fmtl.train.problems.dense import _splits

FMTL = str(Path(sys.executable).parent / "fmtl")
TINY_RESNET = ["--model", "layers=[1,1,1,1]", "--model", "widths=[2,2,2,2]", "--model", "aspp_width=2",
               "--model", "rates=[1,2,3]"]  # fmt: skip
TINY_OFFICE = ["--data", "image_size=8", "--data", "cache=false", "--model", "layers=[1]", "--model", "widths=[2]",
               "--model", "hidden=4", "--model", "stem=cifar"]  # fmt: skip
# benchmark -> (fabricate, extra flags, the metrics every task must report)
CASES = {
    "nyuv2": (True, [*TINY_RESNET, "--strategy", "jacrev"], {t: i.metrics for t, i in DENSE_TASKS["nyuv2"].items()}),
    "cityscapes": (True, [*TINY_RESNET, "--arch", "mtan", "--strategy", "vmap_grad"],
                   {t: i.metrics for t, i in DENSE_TASKS["cityscapes"].items()}),
    "office31": (True, TINY_OFFICE, dict.fromkeys(("amazon", "dslr", "webcam"), ("accuracy",))),
    "officehome": (True, [*TINY_OFFICE, "--method", "uw", "--strategy", "loop"],
                   dict.fromkeys(("Art", "Clipart", "Product", "Real_World"), ("accuracy",))),
    "multimnist": (False, ["--data", "subset=64", "--model", "widths=[2]", "--model", "hidden=4",
                           "--strategy", "vmap_grad"],
                   dict.fromkeys(("left", "right"), ("accuracy",))),
}  # fmt: skip


def _fabricated(name: str, root: Path) -> Path:
    if name in ("nyuv2", "cityscapes"):
        return fabricate(name, root, n_train=3, n_val=2, size=(8, 8))
    return fabricate(name, root, per_class=2, size=(8, 8))


def test_the_benchmarks_are_registered():
    assert {"nyuv2", "cityscapes", "office31", "officehome", "multimnist"} <= set(problems.names())


@pytest.mark.parametrize("name", list(CASES))
def test_one_epoch_through_the_console_script_reports_every_metric_and_delta_p(tmp_path, name):
    fab, flags, want = CASES[name]
    data = ["--data", f"root={_fabricated(name, tmp_path / 'data')}"] if fab else []
    method = [] if "--method" in flags else ["--method", "dbmtl"]
    out = tmp_path / "run"
    cmd = [FMTL, "train", "--benchmark", name, *method, "--epochs", "1", "--batch-size", "2", "--threads", "1",
           "--quiet", "--out", str(out), *data, *flags]  # fmt: skip
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    res = json.loads((out / "results.json").read_text())
    stl = json.loads((Path(res["stl_dir"]) / "results.json").read_text())
    for r in (res, stl):
        test = r["selected"]["test"]
        assert list(test) == list(want)
        for task, metrics in want.items():
            assert set(test[task]) == set(metrics)
            assert all(math.isfinite(v) for v in test[task].values())
    assert math.isfinite(res["delta_p"]) and set(res["selected"]["delta_p_tasks"]) == set(want)
    assert "Δp =" in p.stdout and all(f"| {t} |" in p.stdout for t in want)


def test_a_missing_root_names_the_option_and_the_layout(capsys):
    assert main(["train", "--benchmark", "nyuv2", "--epochs", "1", "--quiet", "--stl", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--data root=DIR" in err and "{image,label,depth,normal}" in err


@pytest.mark.parametrize("name", ["cityscapes", "office31"])
def test_an_ill_formed_root_is_one_line_naming_the_layout(tmp_path, capsys, name):
    (tmp_path / "train").mkdir()  # neither a dense nor an Office layout
    assert main(["train", "--benchmark", name, "--data", f"root={tmp_path}", "--quiet", "--out",
                 str(tmp_path / "run")]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "expected layout is root/" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("name", "valid"), [("cityscapes", "hps, mtan, cross_stitch"), ("office31", "hps")])
def test_an_unknown_architecture_names_the_valid_ones(tmp_path, capsys, name, valid):
    root = _fabricated(name, tmp_path / "data")
    assert main(["train", "--benchmark", name, "--data", f"root={root}", "--arch", "mmoe", "--quiet",
                 "--out", str(tmp_path / "run")]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert err == f"fmtl: error: unknown architecture 'mmoe' for {name}; valid: {valid}"


def test_an_unknown_data_option_is_named(tmp_path, capsys):
    root = _fabricated("nyuv2", tmp_path / "data")
    assert main(["train", "--benchmark", "nyuv2", "--data", f"root={root}", "--data", "cache=false", "--quiet",
                 "--out", str(tmp_path / "run")]) == 2  # fmt: skip
    assert "benchmark 'nyuv2' has no option(s) ['cache']; valid: " in capsys.readouterr().err


def test_the_dense_validation_split_is_held_out_of_train_and_test_is_the_val_directory(tmp_path):
    root = fabricate("nyuv2", tmp_path, n_train=10, n_val=3, size=(4, 4))
    splits = _splits("nyuv2", {"root": str(root), "val_fraction": 0.2})
    train, val = splits["train"].rows.tolist(), splits["val"].rows.tolist()
    assert len(val) == 2 and sorted(train + val) == list(range(10)) and len(splits["test"]) == 3
    full = load("nyuv2", "train", root=root)
    assert torch.equal(splits["val"][[1]]["x"], full[[val[1]]]["x"])


def test_multi_input_evaluation_scores_each_domains_sample_once(tmp_path):
    root = fabricate("office31", tmp_path / "data", per_class=3, size=(4, 4))
    ds = load("office31", "test", root=root, image_size=4, cache=False)
    assert len(set(ds.sizes.values())) >= 1
    metrics = {d: masked(accuracy()) for d in ds.tasks}

    def oracle(batch):  # right on the first occurrence of each sample, wrong on every cycled repeat
        return {d: torch.nn.functional.one_hot(torch.where(batch[d, "mask"], batch[d, "y"], batch[d, "y"] + 1), 4)
                .float() for d in ds.tasks}  # fmt: skip

    out = evaluate(oracle, ds, metrics, {d: d for d in ds.tasks}, batch_size=2)
    assert out["metrics"] == {d: {"accuracy": 100.0} for d in ds.tasks}
    state = metrics["dslr"].init()
    batch = ds[torch.arange(len(ds))]
    state = metrics["dslr"].update(state, oracle(batch)["dslr"], batch["dslr"])
    assert int(state.count) == ds.sizes["dslr"]


def test_dataloader_workers_train_the_same_parameters_as_reading_in_process(tmp_path):
    from fmtl.train import fit

    root = _fabricated("nyuv2", tmp_path / "data")
    flags = {"epochs": 1, "batch_size": 2, "accumulate": 2, "method": "dbmtl", "strategy": "loop", "log_every": 1000}
    model = {"layers": [1, 1, 1, 1], "widths": [2, 2, 2, 2], "aspp_width": 2, "rates": [1, 2, 3]}
    finals = []
    for i, extra in enumerate(({}, {"workers": 2})):
        out = tmp_path / f"run{i}"
        fit(None, out, stl="none", quiet=True, plots=False, benchmark="nyuv2", data={"root": str(root), **extra},
            model=model, **flags)  # fmt: skip
        finals.append(torch.load(out / "checkpoint.pt", weights_only=True)["params"])
    assert finals[0].keys() == finals[1].keys()
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])

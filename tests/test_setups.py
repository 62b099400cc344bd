"""Named setups (``fmtl train --setup NAME``: qm9's ``paper``), and the strategy choice they exposed.

A setup is a configuration layer under ``--config`` and the flags; the run's ``config.toml`` holds
what it set. The paper's QM9 setup (the GNN) is what showed that ``auto`` measured a loss
balancer's unused task-gradient strategies, and that a vectorized candidate larger than host
memory failed the run instead of being skipped.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fmtl import strategy
from fmtl.train import problems
from fmtl.train.cli import build_parser, config_from_args
from fmtl.train.config import load_toml
from fmtl.train.problems.qm9 import PAPER_SETUP

FMTL = shutil.which("fmtl", path=str(Path(sys.executable).parent))


def _cfg(*argv: str) -> dict:
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_the_paper_setup_is_the_papers_qm9_protocol():
    cfg = _cfg("--setup", "paper")
    assert cfg["data"]["representation"] == "graph" and cfg["model"]["hidden"] == 64
    assert (cfg["batch_size"], cfg["epochs"], cfg["optimizer"], cfg["lr"], cfg["scheduler"]) == \
        (128, 300, "adam", 1e-3, "plateau")  # fmt: skip
    assert cfg["opts"] == {"beta": 0.5, "beta_sigma": 0.5}  # the benchmark's selected β still applies
    assert _cfg()["data"]["representation"] == "descriptor"  # and without --setup nothing changes


def test_flags_and_the_config_file_override_the_setup(tmp_path):
    (tmp_path / "c.toml").write_text("epochs = 7\nbatch_size = 32\n")
    cfg = _cfg("--setup", "paper", "--config", str(tmp_path / "c.toml"), "--batch-size", "16",
               "--data", "subset=100")  # fmt: skip
    assert (cfg["epochs"], cfg["batch_size"], cfg["scheduler"]) == (7, 16, "plateau")
    assert cfg["data"] == {**cfg["data"], "representation": "graph", "subset": 100}


def test_a_setup_is_a_copy_never_the_registry_itself():
    layer = problems.setup("qm9", "paper")
    layer["data"]["representation"] = "descriptor"
    assert problems.setup("qm9", "paper") == PAPER_SETUP and PAPER_SETUP["data"]["representation"] == "graph"


@pytest.mark.parametrize(("argv", "words"), [
    (["--setup", "nope"], ["--setup nope", "qm9 has no setup 'nope'", "it has paper"]),
    (["--setup", "paper", "--benchmark", "synthetic"], ["synthetic has no setup 'paper'", "it has none"]),
])  # fmt: skip
def test_an_unknown_setup_is_one_line_and_writes_nothing(tmp_path, argv, words):
    done = subprocess.run([FMTL, "train", *argv, "--out", "run"], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert all(w in done.stderr for w in words), done.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_paper_setup_trains_the_gnn_through_the_console_script(tmp_path):
    done = subprocess.run([FMTL, "train", "--setup", "paper", "--epochs", "1", "--batch-size", "8",
                           "--eval-batch-size", "8", "--data", "subset=32", "--method", "ew", "--stl", "none",
                           "--out", "run", "--quiet"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    saved = load_toml(tmp_path / "run" / "config.toml")
    assert saved["data"]["representation"] == "graph" and saved["scheduler"] == "plateau"
    assert (saved["batch_size"], saved["epochs"]) == (8, 1)  # flags over the setup
    resumed = subprocess.run([FMTL, "train", "--resume", "run", "--setup", "paper", "--quiet"],
                             capture_output=True, text=True, timeout=600, cwd=tmp_path)  # fmt: skip
    # The setup says batch 128; the run started with 8: a changed setting is refused by name.
    assert resumed.returncode == 2 and "batch_size was 8 when the run started, not 128" in resumed.stderr, \
        resumed.stderr


def test_a_loss_balancer_never_measures_task_gradient_strategies(monkeypatch):
    from fmtl.train.assemble import strategy_of

    def refuse(*args, **kwargs):
        raise AssertionError("measured")

    monkeypatch.setattr("fmtl.train.assemble.choose_strategy", refuse)

    class Fake:  # the fields strategy_of reads
        balancer = type("B", (), {"loss_weights": staticmethod(lambda losses: losses)})()

    extra: dict = {}
    assert strategy_of(Fake(), {"strategy": "auto", "accumulate": 1}, None, extra, None) == "loop"
    assert extra["strategy"] == "loop"  # saved for resume like a measured choice
    with pytest.raises(AttributeError):  # accumulation takes task gradients: it does measure
        strategy_of(Fake(), {"strategy": "auto", "accumulate": 2}, None, {}, None)


def test_a_candidate_larger_than_host_memory_is_skipped_and_other_errors_raise():
    def run(s):
        if s == "jacrev":
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")
        return torch.zeros(1)

    assert strategy._measure(run, ("jacrev", "loop")) == "loop"

    def broken(s):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):
        strategy._measure(broken, ("jacrev", "loop"))
    with pytest.raises(torch.OutOfMemoryError, match="no strategy fits"):
        strategy._measure(lambda s: run("jacrev"), ("jacrev",))

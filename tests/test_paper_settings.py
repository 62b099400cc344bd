"""The paper's optimizer and learning-rate schedule are the registered benchmarks' defaults (§4.1, §4.3):
Adam 10⁻⁴ with weight decay 10⁻⁵, the dense benchmarks' rate halved after 100 epochs, shown by ``fmtl list``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fmtl import schedules
from fmtl.data.dense import PAPER_DEFAULTS as DENSE
from fmtl.data.office import PAPER_DEFAULTS as OFFICE
from fmtl.train.assemble import _schedule_options, hyperparameters
from fmtl.train.fit import check, configure

FMTL = str(Path(sys.executable).parent / "fmtl")
PAPER = {name: DENSE[name] for name in ("nyuv2", "cityscapes")} | dict(OFFICE)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_the_resolved_defaults_are_the_papers(name):
    paper, cfg = PAPER[name], configure(None, None, {"benchmark": name})
    check(cfg)
    assert (cfg["epochs"], cfg["batch_size"]) == (paper.epochs, paper.batch_size)
    assert {"name": cfg["optimizer"], "lr": cfg["lr"], "weight_decay": cfg["weight_decay"]} == paper.optimizer
    if paper.scheduler["name"] == "step":
        assert cfg["scheduler"] == "step"
        assert cfg["schedule"] == {"every_epochs": paper.scheduler["step_size"], "gamma": paper.scheduler["gamma"]}
    else:
        assert paper.scheduler == {"name": "none"} and cfg["scheduler"] == "constant" and not cfg.get("schedule")


def test_the_dense_rate_is_halved_at_the_100th_epoch_boundary():
    cfg = configure(None, None, {"benchmark": "nyuv2"})
    per_epoch = 7
    total = cfg["epochs"] * per_epoch
    hp = hyperparameters(cfg, total)
    assert hp["optimizer"]["weight_decay"] == 1e-5
    assert hp["scheduler"] == {"name": "step", "steps": total, "every": 100 * per_epoch, "gamma": 0.5,
                               "every_epochs": 100}  # fmt: skip
    rate = schedules.get("step", cfg["lr"], total, **_schedule_options(cfg, total))
    # update k (1-based) is in epoch ⌈k / per_epoch⌉: epochs 1-100 at 1e-4, epochs 101-200 at 5e-5
    assert [schedules.value(rate, k) for k in (1, 100 * per_epoch, 100 * per_epoch + 1, total)] == \
        pytest.approx([1e-4, 1e-4, 5e-5, 5e-5])  # fmt: skip


def test_other_schedules_and_benchmarks_keep_their_own_defaults():
    assert not configure(None, None, {"benchmark": "nyuv2", "scheduler": "cosine"}).get("schedule")
    given = configure(None, None, {"benchmark": "cityscapes", "schedule": {"every": 50}})
    assert given["schedule"] == {"gamma": 0.5, "every": 50}  # updates replace the default in epochs
    for name in ("qm9", "synthetic"):
        cfg = configure(None, None, {"benchmark": name})
        assert (cfg["weight_decay"], cfg["scheduler"]) == (0.0, "constant")
    assert configure(None, None, {"benchmark": "nyuv2", "weight_decay": 0.0})["weight_decay"] == 0.0


@pytest.mark.parametrize(("schedule", "scheduler", "message"), [
    ({"every_epochs": 0}, None, "--schedule: schedule 'step': every_epochs must be a whole number of epochs >= 1"),
    ({"every_epochs": 10}, "cosine", "--schedule: schedule 'cosine' has no option(s) ['every_epochs']"),
])  # fmt: skip
def test_bad_epoch_steps_are_one_line_errors(schedule, scheduler, message):
    settings = {"benchmark": "nyuv2", "schedule": schedule, **({"scheduler": scheduler} if scheduler else {})}
    with pytest.raises(ValueError) as e:
        check(configure(None, None, settings))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_list_shows_the_optimizer_and_schedule_defaults(tmp_path):
    text = subprocess.run([FMTL, "list"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    lines = {line.split(":")[0].strip(): line for line in text.splitlines() if line.startswith("  ")}
    for name in ("nyuv2", "cityscapes"):
        assert "weight_decay=1e-05" in lines[name] and "scheduler='step'" in lines[name]
        assert "schedule={'every_epochs': 100, 'gamma': 0.5}" in lines[name]
    for name in ("office31", "officehome"):
        assert "weight_decay=1e-05" in lines[name] and "scheduler='constant'" in lines[name]
        assert "lr=0.0001" in lines[name] and "batch_size=64" in lines[name] and "epochs=100" in lines[name]
    assert "weight_decay=0.0" in lines["qm9"]

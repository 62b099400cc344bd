"""Tiny synthetic runs shared by the CLI / training / checkpoint tests (seconds each)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from fmtl.train.checkpoint import load

#: A 3-task synthetic problem small enough that a whole run takes about a second.
TINY = [
    "--benchmark", "synthetic", "--epochs", "2", "--batch-size", "16", "--lr", "0.01",
    "--data", "n=96", "--data", "n_eval=32", "--data", "num_tasks=3", "--data", "dim=8",
    "--model", "hidden=[16]", "--quiet",
]  # fmt: skip


def tiny_config(**overrides) -> dict:
    """The resolved configuration of :data:`TINY` (for calling ``fmtl.train.train`` directly)."""
    from fmtl.train.config import DEFAULTS
    from fmtl.train.runs import normalize

    cfg = {**DEFAULTS, "benchmark": "synthetic", "epochs": 2, "batch_size": 16, "lr": 0.01,
           "data": {"n": 96, "n_eval": 32, "num_tasks": 3, "dim": 8}, "model": {"hidden": [16]}}  # fmt: skip
    for k, v in overrides.items():
        if k in ("data", "model", "opts"):
            cfg[k] = {**cfg.get(k, {}), **v}
        else:
            cfg[k] = v
    return normalize(cfg)


def final_params(out: Path) -> dict[str, torch.Tensor]:
    """The parameters in a run's last checkpoint."""
    return load(Path(out) / "checkpoint.pt")["params"]


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"parameter {k} differs"


def results(out: Path) -> dict:
    return json.loads((Path(out) / "results.json").read_text())


def crash_at_step(monkeypatch, n: int) -> Callable[[], None]:
    """Makes the n-th step of the next training runs raise KeyboardInterrupt (a kill); returns the undo."""
    import fmtl.train.assemble
    from fmtl.step import Step

    real = fmtl.train.assemble.make_step

    def crashing_make_step(*args, **kwargs):
        step, calls = real(*args, **kwargs), []

        def apply(params, state, batch):
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt
            return step(params, state, batch)

        return Step(step.init, apply)

    monkeypatch.setattr(fmtl.train.assemble, "make_step", crashing_make_step)
    return lambda: monkeypatch.setattr(fmtl.train.assemble, "make_step", real)

"""The training loop: gradient accumulation before the balancer, bf16 autocast, compile, TensorBoard."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest
import torch
from _train_helpers import final_params, tiny_config

import fmtl
from fmtl.accumulate import Accumulator, gradient_form
from fmtl.amp import autocast
from fmtl.data import load
from fmtl.losses import make_loss_fn, mse
from fmtl.models import mlp_hps
from fmtl.train import train

TASKS = ("t0", "t1", "t2")


def _problem():
    ds = load("synthetic", "train", n=30, num_tasks=3, dim=6)
    m = mlp_hps(6, hidden=(8,), tasks=dict.fromkeys(TASKS, 1), seed=0, dtype=torch.float64)
    loss_fn = make_loss_fn(m.apply, {t: mse for t in TASKS})
    batch = ds[torch.arange(30)]
    return m, loss_fn, batch.apply(lambda x: x.double())


@pytest.mark.parametrize("method", ["dbmtl", "ew", "mgda"])
@pytest.mark.parametrize("K", [2, 3, 4])
def test_k_micro_batches_equal_one_full_batch(method, K):
    """Accumulating per-task gradients over K micro-batches (sizes may differ) = the full batch,
    including the balancer's state (DB-MTL's EMA ĝ_t and norms see the full-batch gradients)."""
    if method not in fmtl.balancers.names():
        pytest.skip(f"{method} is not registered yet")
    m, loss_fn, batch = _problem()
    balancer = fmtl.balancers.get(method)
    full = fmtl.make_step(loss_fn, gradient_form(balancer), fmtl.optim.adam(0.01))
    acc = Accumulator(loss_fn, "auto", None, None)
    micro_step = fmtl.make_step(loss_fn, gradient_form(balancer), fmtl.optim.adam(0.01), reduce=acc)
    p_full, s_full = m.params, full.init(m.params)
    p_acc, s_acc = m.params, micro_step.init(m.params)
    for _ in range(3):  # three optimizer steps: the balancer state carries over
        p_full, s_full, info_full = full(p_full, s_full, batch)
        parts = torch.tensor_split(torch.arange(30), K)
        for idx in parts[:-1]:
            acc.add(p_acc, batch[idx], len(idx) / 30)
        acc.last_fraction = len(parts[-1]) / 30
        p_acc, s_acc, info_acc = micro_step(p_acc, s_acc, batch[parts[-1]])
        torch.testing.assert_close(info_acc["losses"], info_full["losses"], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(info_acc["weights"], info_full["weights"], rtol=1e-10, atol=1e-12)
    for a, b in zip(p_full.values(True, True), p_acc.values(True, True), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    from torch.utils import _pytree as pytree

    for a, b in zip(pytree.tree_leaves(s_full), pytree.tree_leaves(s_acc), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_accumulate_in_the_loop_matches_the_plain_loop(tmp_path):
    # batch 16 split in 3 gives micro-batches of 6, 5, 5 (size-weighted); the last batch of 96 is full
    train(tiny_config(method="dbmtl"), tmp_path / "k1", quiet=True, plots=False)
    train(tiny_config(method="dbmtl", accumulate=3), tmp_path / "k3", quiet=True, plots=False)
    a, b = final_params(tmp_path / "k1"), final_params(tmp_path / "k3")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_bf16_autocast_wraps_the_loss():
    m, loss_fn, batch = _problem()
    p32 = m.params.apply(lambda x: x.float())
    b32 = batch.apply(lambda x: x.float())
    mlp = mlp_hps(6, hidden=(8,), tasks=dict.fromkeys(TASKS, 1), seed=0)
    f = make_loss_fn(mlp.apply, {t: mse for t in TASKS})
    plain, amp = f(p32, b32), autocast(f, "bf16")(p32, b32)
    assert amp.dtype == torch.float32
    assert not torch.equal(plain, amp)  # the matmuls ran in bfloat16
    torch.testing.assert_close(amp, plain, rtol=5e-2, atol=5e-2)
    with pytest.raises(ValueError, match="fp8"):
        autocast(f, "fp8")


def test_bf16_run_trains(tmp_path):
    res = train(tiny_config(method="dbmtl", amp="bf16"), tmp_path / "amp", quiet=True, plots=False)
    assert all(math.isfinite(v["mse"]) for v in res["selected"]["test"].values())


def test_compiled_step_matches_eager(tmp_path):
    # two full batches, the second logged: each of the two compiled steps (with and without the
    # cosines) runs once
    cfg = dict(method="dbmtl", epochs=1, data={"n": 32}, log_every=2)
    train(tiny_config(**cfg), tmp_path / "eager", quiet=True, plots=False)
    train(tiny_config(compile=True, **cfg), tmp_path / "compiled", quiet=True, plots=False)
    a, b = final_params(tmp_path / "eager"), final_params(tmp_path / "compiled")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    lines = (tmp_path / "compiled" / "metrics.jsonl").read_text().splitlines()
    steps = [r for r in map(json.loads, lines) if r["type"] == "step"]
    assert [r["step"] for r in steps] == [2] and all(math.isfinite(c) for row in steps[0]["cosine"] for c in row)


def test_tensorboard_flag_without_tensorboard_says_so_and_trains_on(tmp_path, capsys, monkeypatch):
    """Whether or not this environment has tensorboard: the import is made to fail (None in sys.modules)."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    train(tiny_config(method="ew", epochs=1), tmp_path / "tb", quiet=True, plots=False, tensorboard=True)
    # one line that names the missing package and the extra that installs it; training went on
    err = capsys.readouterr().err
    assert "needs the tensorboard package" in err and 'pip install "fmtl[tb]"' in err
    assert (tmp_path / "tb" / "checkpoint.pt").is_file()
    assert not (tmp_path / "tb" / "tensorboard").exists() or not any((tmp_path / "tb" / "tensorboard").iterdir())


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="needs tensorboard (fmtl[tb])")
def test_tensorboard_flag_writes_events(tmp_path):
    train(tiny_config(method="ew", epochs=1), tmp_path / "tb", quiet=True, plots=False, tensorboard=True)
    assert any((tmp_path / "tb" / "tensorboard").iterdir())


def test_unknown_optimizer_and_stl_options_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="adam, adamw, sgd"):
        train(tiny_config(optimizer="lion"), tmp_path / "x", quiet=True)
    with pytest.raises(ValueError, match="stl"):
        train(tiny_config(method="stl", opts={"beta": 0.5}), tmp_path / "y", quiet=True)


def test_every_training_row_is_used_once_per_epoch_with_micro_batches(tmp_path, monkeypatch):
    import fmtl.train.problems

    seen: list[torch.Tensor] = []
    real_build = fmtl.train.problems.build

    class Recording:
        def __init__(self, ds):
            self.ds, self.tasks, self.task_info = ds, ds.tasks, ds.task_info

        def __len__(self):
            return len(self.ds)

        def __getitem__(self, idx):
            seen.append(torch.as_tensor(idx).clone())
            return self.ds[idx]

    def build(cfg):
        problem = real_build(cfg)
        return problem._replace(splits={**problem.splits, "train": Recording(problem.splits["train"])})

    monkeypatch.setattr(fmtl.train.problems, "build", build)
    # a fixed strategy: "auto" reads one extra batch to time the strategies before training
    res = train(tiny_config(method="ew", epochs=2, batch_size=7, accumulate=3, strategy="jacrev"), tmp_path / "r",
                quiet=True, plots=False)  # fmt: skip
    assert res["steps"] == 2 * math.ceil(96 / 7)
    rows = torch.cat(seen)
    assert len(rows) == 2 * 96
    for epoch in (rows[:96], rows[96:]):
        assert torch.equal(epoch.sort().values, torch.arange(96))
    assert not torch.equal(rows[:96], rows[96:])  # reshuffled every epoch


def test_auto_strategy_is_decided_once_and_kept_by_the_checkpoint(tmp_path):
    """Strategies agree only up to rounding: a resumed run must reuse the first run's choice."""
    cfg = tiny_config(method="dbmtl", epochs=1)
    train(cfg, tmp_path / "r", quiet=True, plots=False)
    chosen = fmtl.train.checkpoint.load(tmp_path / "r" / "checkpoint.pt")["extra"]["strategy"]
    assert chosen in ("jacrev", "vmap_grad", "loop")


@pytest.mark.parametrize("method", fmtl.balancers.names())
def test_every_registered_method_trains_through_the_loop(method, tmp_path):
    res = train(tiny_config(method=method, epochs=1), tmp_path / method, quiet=True, plots=False)
    assert res["method"] == method and res["steps"] > 0
    assert all(math.isfinite(v) for task in res["final_test"].values() for v in task.values())


def test_logged_steps_add_cosines_only_where_the_task_gradients_exist(tmp_path):
    for method, finite in (("dbmtl", True), ("uw", False)):  # uw: no Jacobian, none computed to log
        train(tiny_config(method=method, epochs=1, log_every=2), tmp_path / method, quiet=True, plots=False)
        lines = (tmp_path / method / "metrics.jsonl").read_text().splitlines()
        steps = [r for r in map(json.loads, lines) if r["type"] == "step"]
        assert steps and all(r["step"] % 2 == 0 for r in steps)
        cosines = [c for r in steps for row in r["cosine"] for c in row]
        # strict JSON: the cosines a loss balancer does not compute are null, not NaN
        assert all((c is not None and math.isfinite(c)) == finite for c in cosines), method

"""``fmtl train --rep-grad``: the synthetic and QM9-descriptor MLPs as a TwoStageLoss, refusals in one line."""

from __future__ import annotations

import json
import math

import pytest
import torch
from _train_helpers import TINY, final_params, run_fmtl
from torch.utils.data import TensorDataset

import fmtl
import fmtl.step
from fmtl.losses import make_loss_fn, mse
from fmtl.models import mlp_hps
from fmtl.train import Problem
from fmtl.train.cli import main
from fmtl.train.config import load_toml
from fmtl.train.problems import synthetic


def test_the_synthetic_mlp_loss_is_its_model_written_in_two_stages():
    cfg = {"data": {"n": 32, "n_eval": 8, "num_tasks": 3, "dim": 5}, "model": {"hidden": [7, 6]}, "seed": 3}
    problem = synthetic.build(cfg)
    assert isinstance(problem.loss_fn, fmtl.TwoStageLoss)
    # the same ℓ as the model's apply through make_loss_fn, and the same ∇ (what the steps use)
    model = mlp_hps(5, hidden=(7, 6), tasks=dict.fromkeys(problem.tasks, 1), seed=3)
    plain = make_loss_fn(model.apply, dict.fromkeys(problem.tasks, mse), input_key="x")
    batch = problem.splits["train"][torch.arange(16)]
    torch.testing.assert_close(problem.loss_fn(problem.params, batch), plain(model.params, batch), rtol=0, atol=0)
    ours = fmtl.task_gradients(problem.loss_fn, problem.params, batch, strategy="loop")
    theirs = fmtl.task_gradients(plain, model.params, batch, strategy="loop")
    torch.testing.assert_close(ours.shared.to_dict(), theirs.shared.to_dict(), rtol=0, atol=0)


def test_the_synthetic_mlp_heads_factor_the_representation_gramian(monkeypatch):
    """Its heads are LinearHeads: a Gramian method never forms Z, and gives the step that forms it."""
    cfg = {"data": {"n": 32, "n_eval": 8, "num_tasks": 3, "dim": 5}, "model": {"hidden": [7, 6]}, "seed": 3}
    problem = synthetic.build(cfg)
    batch = problem.splits["train"][torch.arange(16)]
    b = fmtl.balancers.get("mgda")
    formed = fmtl.make_step(problem.loss_fn, b, fmtl.optim.sgd(1.0), rep_grad=True, strategy="loop")
    expected = formed(problem.params, formed.init(problem.params), batch)
    monkeypatch.setattr(fmtl.step, "representation_gradients", lambda *a, **k: pytest.fail("Z was formed"))
    step = fmtl.make_step(problem.loss_fn, b, fmtl.optim.sgd(1.0), rep_grad=True)
    got = step(problem.params, step.init(problem.params), batch)
    for k in expected[0].keys(True, True):
        torch.testing.assert_close(got[0][k], expected[0][k], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[2]["weights"], expected[2]["weights"], rtol=1e-4, atol=1e-5)


def test_a_rep_grad_run_trains_and_shares_its_stl_reference(tmp_path):
    """Without --stl the run trains its STL ensemble first (no --rep-grad there: the ensemble has no two
    stages), and a parameter-gradient run of the same setting reuses that reference."""
    run_fmtl("train", *TINY, "--method", "mgda", "--rep-grad", "--out", "rep", cwd=tmp_path)
    run_fmtl("train", *TINY, "--method", "mgda", "--out", "plain", cwd=tmp_path)
    rep = json.loads((tmp_path / "rep" / "results.json").read_text())
    plain = json.loads((tmp_path / "plain" / "results.json").read_text())
    assert rep["stl_dir"] == plain["stl_dir"] and math.isfinite(rep["delta_p"])
    assert load_toml(tmp_path / rep["stl_dir"] / "config.toml")["rep_grad"] is False


def test_train_rep_grad_through_the_console_script(tmp_path):
    run_fmtl("train", *TINY, "--method", "mgda", "--rep-grad", "--stl", "none", "--out", "rep", cwd=tmp_path)
    run_fmtl("train", *TINY, "--method", "mgda", "--stl", "none", "--out", "plain", cwd=tmp_path)
    assert load_toml(tmp_path / "rep" / "config.toml")["rep_grad"] is True
    assert load_toml(tmp_path / "plain" / "config.toml")["rep_grad"] is False
    rep, plain = final_params(tmp_path / "rep"), final_params(tmp_path / "plain")
    assert rep.keys() == plain.keys()
    # MGDA-UB weighs ∇z ℓ_t, not ∇θ ℓ_t: the runs differ
    assert any(not torch.equal(rep[k], plain[k]) for k in rep)
    done = run_fmtl("train", *TINY, "--method", "dbmtl", "--rep-grad", "--stl", "none", "--out", "db",
                    cwd=tmp_path, ok=False)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert done.stderr.startswith("fmtl: error: --rep-grad: DB-MTL does not run on representation gradients")
    assert not (tmp_path / "db").exists()  # refused before anything is written


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "moco"], "--rep-grad: this balancer keeps state shaped like the shared parameters"),
        (["--method", "uw"], "--rep-grad: method 'uw' computes no task gradients"),
        (["--method", "stl"], "--rep-grad: method 'stl' computes no task gradients"),
        (["--method", "mgda", "--accumulate", "2"], "--rep-grad does not combine with --accumulate"),
        (["--method", "mgda", "--amp", "bf16"], "--rep-grad does not combine with --amp"),
    ],
)
def test_settings_that_do_not_run_on_representation_gradients_are_refused(tmp_path, capsys, extra, message):
    assert main(["train", *TINY, "--rep-grad", "--stl", "none", "--out", str(tmp_path / "run"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fmtl: error: {message}") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_a_problem_without_two_stages_is_refused(tmp_path):
    data = lambda n: TensorDataset(torch.randn(n, 4), torch.randn(n, 2))  # noqa: E731
    problem = Problem.from_modules(torch.nn.Linear(4, 8), {"a": torch.nn.Linear(8, 1), "b": torch.nn.Linear(8, 1)},
                                   train=data(32), val=data(8), test=data(8),
                                   losses={"a": torch.nn.functional.mse_loss, "b": torch.nn.functional.mse_loss},
                                   metrics={"a": "mse", "b": "mse"}, name="toy")  # fmt: skip
    with pytest.raises(ValueError, match="--rep-grad: benchmark 'toy' has no loss written as encoder and heads"):
        fmtl.train.fit(problem, tmp_path / "run", stl="none", quiet=True, method="mgda", rep_grad=True, epochs=1)
    assert not (tmp_path / "run").exists()


def test_a_rep_grad_run_measures_no_strategy_for_theta(tmp_path, monkeypatch):
    """--rep-grad never takes θ's task gradients, so "auto" must not time θ's strategies (a Jacobian
    pass each); the step runs the heads' own "auto", and that is what the checkpoint records."""

    def refuse(*args, **kwargs):
        raise AssertionError("choose_strategy was called for a rep-grad run")

    monkeypatch.setattr(fmtl.strategy, "choose_strategy", refuse)
    cfg = {"data": {"n": 32, "n_eval": 8, "num_tasks": 3, "dim": 5}, "model": {"hidden": [7]}, "seed": 0}
    problem = synthetic.build(cfg)
    fmtl.train.fit(problem, tmp_path / "run", stl="none", quiet=True, method="mgda", rep_grad=True, epochs=1,
                   batch_size=16)  # fmt: skip
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["extra"]["strategy"] == "auto"

"""The STL ensemble: one vectorized pass trains T independent single-task models."""

from __future__ import annotations

import torch
from _train_helpers import tiny_config
from tensordict import TensorDict

import fmtl
from fmtl.losses import make_loss_fn, mse
from fmtl.models import mlp_hps
from fmtl.train import Problem, train
from fmtl.train.stl import ensemble, member

TASKS = ("a", "b", "c")


def _problem(seed: int = 0):
    m = mlp_hps(5, hidden=(8, 8), tasks=dict.fromkeys(TASKS, 1), seed=seed, dtype=torch.float64)
    loss_fn = make_loss_fn(m.apply, {t: mse for t in TASKS})
    g = torch.Generator().manual_seed(seed)
    batches = [
        TensorDict({"x": torch.randn(12, 5, generator=g, dtype=torch.float64),
                    "y": torch.randn(12, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 10.0, 100.0],
                                                                                             dtype=torch.float64)},
                   [12])
        for _ in range(6)
    ]  # fmt: skip
    return m, loss_fn, batches


def _stl(m, batches):
    """The STL ensemble of the model's problem: (stacked params, ensemble loss, ensemble predict)."""
    splits = {s: batches[0] for s in ("train", "val", "test")}
    problem = Problem.from_model(m, splits, {t: mse for t in TASKS}, {t: "mse" for t in TASKS}, name="toy")
    stl = ensemble(problem)
    return stl.params, stl.loss_fn, lambda p, b: stl.predict(p, stl.buffers, b)


def test_member_losses_and_predictions_are_each_models_own():
    m, loss_fn, batches = _problem()
    p, ens_loss, ens_predict = _stl(m, batches)
    # make the members differ so a mix-up between members would show
    p["shared", "members"] = p["shared", "members"].apply(
        lambda x: x + torch.arange(3, dtype=x.dtype).view(3, *([1] * (x.dim() - 1))) * 0.1
    )
    b = batches[0]
    losses, preds = ens_loss(p, b), ens_predict(p, b)
    for i, t in enumerate(TASKS):
        own = member(p, i)
        torch.testing.assert_close(losses[i], loss_fn(own, b)[i])
        torch.testing.assert_close(preds[t], m.apply(own, b["x"])[t])


def test_ensemble_equals_separately_trained_single_task_models():
    m, loss_fn, batches = _problem()
    p, ens_loss, _ = _stl(m, batches)
    step = fmtl.make_step(ens_loss, fmtl.balancers.get("ew"), fmtl.optim.adam(0.01))
    state = step.init(p)
    for b in batches:
        p, state, _ = step(p, state, b)

    for i, t in enumerate(TASKS):
        # reference: an ordinary single-task model trained with autograd and torch.optim.Adam on ℓ_t only
        shared = {k: v.clone().requires_grad_(True) for k, v in m.params["shared"].flatten_keys(".").items()}
        head = {k: v.clone().requires_grad_(True) for k, v in m.params["tasks", t].items()}
        opt = torch.optim.Adam([*shared.values(), *head.values()], lr=0.01)
        for b in batches:
            params = TensorDict({"shared": TensorDict(shared, []).unflatten_keys("."),
                                 "tasks": m.params["tasks"].clone().update({t: TensorDict(head, [])})}, [])  # fmt: skip
            loss = mse(m.apply(params, b["x"])[t], b["y"][:, i : i + 1])
            opt.zero_grad()
            loss.backward()
            opt.step()
        trained = member(p, i)
        for k, v in shared.items():
            torch.testing.assert_close(trained["shared"].flatten_keys(".")[k], v.detach(), rtol=1e-9, atol=1e-10)
        for k, v in head.items():
            torch.testing.assert_close(trained["tasks", t, k], v.detach(), rtol=1e-9, atol=1e-10)
        # the other tasks' heads of member t never received a gradient
        for other in TASKS:
            if other != t:
                assert torch.equal(trained["tasks", other, "weight"], m.params["tasks", other, "weight"])


def test_stl_run_selects_each_task_on_its_own_validation_metric(tmp_path):
    res = train(tiny_config(method="stl", epochs=3), tmp_path / "stl", quiet=True, plots=False)
    import json

    history = [json.loads(line) for line in (tmp_path / "stl" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in history if r["type"] == "epoch"]
    sel = res["selected"]
    assert sel["criterion"] == "per_task_val" and res["delta_p"] is None
    for t in res["tasks"]:
        vals = [e["val"]["metrics"][t]["mse"] for e in epochs]
        best = min(range(3), key=vals.__getitem__)
        assert sel["epochs"][t] == best
        assert sel["test"][t] == epochs[best]["test"]["metrics"][t]

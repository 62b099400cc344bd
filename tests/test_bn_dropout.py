"""BatchNorm and dropout in a user's nn.Module: every strategy against a plain autograd.grad loop, same masks.

The reference is what PyTorch does with the modules themselves: one train-mode forward (BatchNorm
normalizes with the batch statistics and updates its running statistics in place, dropout draws
its masks), then one ``torch.autograd.grad`` per task, then the balancer and the optimizer on
those task gradients. fmtl's step (``functionalize`` + ``make_step(update_buffers=...)``) must
give the same losses, task weights, parameters and running statistics from the same random state.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from tensordict import TensorDict
from torch import nn

import fmtl
from fmtl.base import TaskGradients

TASKS = ("a", "b", "c")
METHODS = ("dbmtl", "ew", "pcgrad")


def _modules(seed: int = 0) -> tuple[nn.Module, dict[str, nn.Module]]:
    # A bias in front of BatchNorm has a zero gradient up to rounding, which Adam would turn into
    # full-size steps of arbitrary sign: those layers have none (as is usual).
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Linear(6, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3),
                            nn.Linear(16, 8, bias=False), nn.BatchNorm1d(8, momentum=None), nn.ReLU())  # fmt: skip
    heads = {"a": nn.Linear(8, 1), "b": nn.Sequential(nn.Dropout(0.2), nn.Linear(8, 1)),
             "c": nn.Sequential(nn.Linear(8, 4, bias=False), nn.BatchNorm1d(4), nn.ReLU(),
                                nn.Linear(4, 1))}  # fmt: skip
    return encoder, heads


def _batches(n: int = 3) -> list[TensorDict]:
    g = torch.Generator().manual_seed(1)
    scale = torch.tensor([1.0, 10.0, 100.0])
    return [TensorDict({"x": torch.randn(24, 6, generator=g), "y": torch.randn(24, 3, generator=g) * scale}, [24])
            for _ in range(n)]  # fmt: skip


def _losses(out: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    return torch.stack([(out[t].squeeze(-1) - y[:, i]).pow(2).mean() for i, t in enumerate(TASKS)])


class Reference:
    """The modules trained the PyTorch way: one train-mode forward, T autograd.grad calls, then the balancer."""

    def __init__(self, encoder: nn.Module, heads: dict[str, nn.Module], balancer, optimizer, params: TensorDict):
        self.encoder = copy.deepcopy(encoder).train()
        self.heads = {k: copy.deepcopy(h).train() for k, h in heads.items()}
        self.balancer, self.optimizer = balancer, optimizer
        self.bstate, self.ostate = balancer.init(params, len(TASKS)), optimizer.init(params)

    def _params(self) -> TensorDict:
        flat = {f"shared.{k}": v.detach().clone() for k, v in self.encoder.named_parameters()}
        for t, h in self.heads.items():
            flat.update({f"tasks.{t}.{k}": v.detach().clone() for k, v in h.named_parameters()})
        return TensorDict(flat, []).unflatten_keys(".")

    def step(self, batch: TensorDict) -> dict[str, torch.Tensor]:
        z = self.encoder(batch["x"])
        losses = _losses({t: h(z) for t, h in self.heads.items()}, batch["y"])
        shared = list(self.encoder.named_parameters())
        rows, heads = [], {}
        for i, t in enumerate(TASKS):
            head = list(self.heads[t].named_parameters())
            g = torch.autograd.grad(losses[i], [p for _, p in shared + head], retain_graph=i < len(TASKS) - 1)
            rows.append(g[: len(shared)])
            heads.update({f"{t}.{k}": v for (k, _), v in zip(head, g[len(shared):], strict=True)})
        J = TensorDict({k: torch.stack([r[j] for r in rows]) for j, (k, _) in enumerate(shared)}, [len(TASKS)])
        grads = TaskGradients(losses.detach(), J.unflatten_keys("."), TensorDict(heads, []).unflatten_keys("."))
        params = self._params()
        g, self.bstate, binfo = self.balancer.update(grads, self.bstate, params)
        updates, self.ostate = self.optimizer.update(g, self.ostate, params)
        new = params + updates
        with torch.no_grad():
            for k, p in self.encoder.named_parameters():
                p.copy_(new["shared"].flatten_keys(".")[k])
            for t, h in self.heads.items():
                for k, p in h.named_parameters():
                    p.copy_(new["tasks", t].flatten_keys(".")[k])
        return {"losses": losses.detach(), "weights": binfo["weights"]}

    def buffers(self) -> dict[str, torch.Tensor]:
        out = {f"shared.{k}": v for k, v in self.encoder.named_buffers()}
        out.update({f"tasks.{t}.{k}": v for t, h in self.heads.items() for k, v in h.named_buffers()})
        return out


def _fmtl_step(method: str, strategy: str):
    encoder, heads = _modules()
    model = fmtl.functionalize(encoder, heads)

    def loss_fn(params, batch):
        return _losses(model.apply(params, batch["x"]), batch["y"])

    balancer, optimizer = fmtl.balancers.get(method), fmtl.optim.adam(1e-2)
    step = fmtl.make_step(loss_fn, balancer, optimizer, strategy=strategy,
                          update_buffers=lambda p, b, batch: model.update(p, b, batch["x"]))  # fmt: skip
    return encoder, heads, model, step, balancer, optimizer


@pytest.mark.parametrize("strategy", ["auto", "jacrev", "vmap_grad", "loop"])
@pytest.mark.parametrize("method", METHODS)
def test_every_strategy_equals_the_autograd_loop_with_the_same_masks(method, strategy):
    encoder, heads, model, step, balancer, optimizer = _fmtl_step(method, strategy)
    ref = Reference(encoder, heads, balancer, optimizer, model.params)
    params, state = model.params, step.init(model.params, model.buffers)
    for k, batch in enumerate(_batches()):
        torch.manual_seed(100 + k)
        params, state, info = step(params, state, batch)
        after = torch.get_rng_state()
        torch.manual_seed(100 + k)
        want = ref.step(batch)
        # the step consumed exactly one forward's random numbers (the next step's masks match too)
        assert torch.equal(after, torch.get_rng_state())
        torch.testing.assert_close(info["losses"], want["losses"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(info["weights"], want["weights"], rtol=1e-4, atol=1e-6)
    for k, v in ref._params().flatten_keys(".").items():
        torch.testing.assert_close(params.flatten_keys(".")[k], v, rtol=1e-4, atol=1e-5, msg=k)
    got = state.buffers.flatten_keys(".")
    for k, v in ref.buffers().items():
        torch.testing.assert_close(got[k], v, rtol=1e-4, atol=1e-5, msg=k)
    assert int(got["shared.1.num_batches_tracked"]) == 3


def test_the_training_forward_writes_nothing_and_eval_uses_the_running_statistics():
    encoder, heads = _modules()
    model = fmtl.functionalize(encoder, heads)
    before = {k: v.clone() for k, v in encoder.named_buffers()}
    x = torch.randn(16, 6)
    model.apply(model.params, x)  # train mode: batch statistics, dropout
    assert all(torch.equal(v, before[k]) for k, v in encoder.named_buffers())
    new = model.update(model.params, model.buffers, x)
    ref_enc, ref_heads = copy.deepcopy(encoder).eval(), {k: copy.deepcopy(h).eval() for k, h in heads.items()}
    for k, v in new["shared"].flatten_keys(".").items():
        dict(ref_enc.named_buffers())[k].copy_(v)
    for t, h in ref_heads.items():
        for k, v in new["tasks", t].flatten_keys(".").items():
            dict(h.named_buffers())[k].copy_(v)
    out = model.apply(model.params, x, new, train=False)
    with torch.no_grad():
        z = ref_enc(x)
        for t in TASKS:
            torch.testing.assert_close(out[t], ref_heads[t](z))
    # eval is deterministic: no dropout
    assert all(torch.equal(out[t], model.apply(model.params, x, new, train=False)[t]) for t in TASKS)


@pytest.mark.parametrize("strategy", ["jacrev", "vmap_grad", "loop"])
def test_one_dropout_mask_per_sample_is_shared_by_all_task_gradients(strategy):
    """With p = 0.5 dropout in front of two heads that read the same unit, ∇ℓ_a and ∇ℓ_b vanish
    for exactly the same samples' contributions: their shared-weight gradients are proportional."""
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(3, 1, bias=False), nn.Dropout(0.5))
    heads = {"a": nn.Linear(1, 1, bias=False), "b": nn.Linear(1, 1, bias=False)}
    model = fmtl.functionalize(encoder, heads)
    x = torch.randn(64, 3)

    def loss_fn(p, b):  # ℓ_t = mean(head_t(z)): ∇θ ℓ_t = w_t · mean over kept samples of x / (1 − p)
        out = model.apply(p, b)
        return torch.stack([out["a"].mean(), out["b"].mean()])

    g = fmtl.task_gradients(loss_fn, model.params, x, strategy=strategy)
    wa, wb = model.params["tasks", "a", "weight"], model.params["tasks", "b", "weight"]
    J = g.shared["0", "weight"]
    torch.testing.assert_close(J[0] / wa.squeeze(), J[1] / wb.squeeze())


def test_stl_ensemble_members_keep_their_own_running_statistics():
    from fmtl.train import Problem
    from fmtl.train.stl import ensemble, member

    encoder, heads = _modules()
    rows = _batches(1)[0]
    problem = Problem.from_modules(encoder, heads, train=rows, val=rows, test=rows,
                                   losses={t: torch.nn.functional.mse_loss for t in TASKS},
                                   metrics=dict.fromkeys(TASKS, "mse"))  # fmt: skip
    stl = ensemble(problem)
    p = stl.params.clone()
    p["shared", "members"] = p["shared", "members"].apply(
        lambda v: v + torch.arange(3.0).view(3, *([1] * (v.dim() - 1))) * 0.1)  # members differ
    torch.manual_seed(5)
    new = stl.update_buffers(p, stl.buffers, rows).flatten_keys(".")
    torch.manual_seed(5)  # members one after the other, each from its own stacked statistics
    for i in range(3):
        own = problem.update_buffers(member(p, i), problem.buffers, rows)
        for k, v in own.flatten_keys(".").items():
            assert torch.equal(new[k][i], v), k
    assert not torch.equal(new["shared.1.running_mean"][0], new["shared.1.running_mean"][1])


def test_compiled_step_with_batchnorm_matches_eager():
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(6, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU())  # no dropout: masks agree
    heads = {t: nn.Linear(16, 1) for t in TASKS}
    model = fmtl.functionalize(encoder, heads)

    def loss_fn(params, batch):
        return _losses(model.apply(params, batch["x"]), batch["y"])

    step = fmtl.make_step(loss_fn, fmtl.balancers.get("dbmtl"), fmtl.optim.adam(1e-2), strategy="jacrev",
                          update_buffers=lambda p, b, batch: model.update(p, b, batch["x"]))  # fmt: skip
    compiled = torch.compile(step.__call__, fullgraph=True)
    pe = pc = model.params
    se = sc = step.init(model.params, model.buffers)
    for batch in _batches(2):
        pe, se, _ = step(pe, se, batch)
        pc, sc, info = compiled(pc, sc, batch)
        assert bool(info["ok"])
    for a, b in zip(pe.values(True, True), pc.values(True, True), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(se.buffers.values(True, True), sc.buffers.values(True, True), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_compiled_step_with_batchnorm_and_dropout_runs_and_updates_the_statistics():
    """Compiled, the statistics pass draws its own dropout masks (the random state cannot be read).

    ``momentum=None`` (the cumulative average) reads the step count as a Python float, which
    dynamo cannot trace: the compiled model uses a momentum."""
    encoder, heads = _modules()
    encoder[5].momentum = 0.1
    model = fmtl.functionalize(encoder, heads)
    step = fmtl.make_step(lambda p, b: _losses(model.apply(p, b["x"]), b["y"]), fmtl.balancers.get("dbmtl"),
                          fmtl.optim.adam(1e-2), strategy="jacrev",
                          update_buffers=lambda p, b, batch: model.update(p, b, batch["x"]))  # fmt: skip
    compiled = torch.compile(step.__call__, fullgraph=True)
    params, state = model.params, step.init(model.params, model.buffers)
    for batch in _batches(2):
        params, state, info = compiled(params, state, batch)
        assert bool(info["ok"])
    buffers = state.buffers.flatten_keys(".")
    assert int(buffers["shared.1.num_batches_tracked"]) == 2
    assert not torch.equal(buffers["shared.1.running_mean"], model.buffers.flatten_keys(".")["shared.1.running_mean"])
    assert all(torch.isfinite(v).all() for v in buffers.values())


def test_a_zoo_model_with_batchnorm_trains_through_fit(tmp_path):
    """fmtl.models' pure BatchNorm (Model.stats + update_buffers) through the training application."""
    from fmtl.losses import mse
    from fmtl.models import resnet
    from fmtl.train import Problem, fit
    from fmtl.train.assemble import assemble
    from fmtl.train.checkpoint import load, restore
    from fmtl.train.fit import configure
    from fmtl.train.world import World

    g = torch.Generator().manual_seed(0)

    def rows(n: int) -> TensorDict:
        return TensorDict({"x": torch.randn(n, 3, 8, 8, generator=g), "y": torch.randn(n, 2, generator=g)}, [n])

    m = resnet({"a": 1, "b": 1}, layers=(1,), widths=(4,), stem="cifar", seed=0)
    problem = Problem.from_model(m, {"train": rows(32), "val": rows(8), "test": rows(8)}, {"a": mse, "b": mse},
                                 {"a": "mse", "b": "mse"}, name="tiny_resnet")  # fmt: skip
    res = fit(problem, tmp_path / "r", method="dbmtl", epochs=2, batch_size=8, stl="none", quiet=True, plots=False,
              device="cpu")  # fmt: skip
    assert res["steps"] == 8 and all(math.isfinite(v["mse"]) for v in res["selected"]["test"].values())
    run = assemble(configure(problem, None, {"method": "dbmtl"}), problem, World(0, 1, None, torch.device("cpu")))
    _, state = restore(load(tmp_path / "r" / "checkpoint.pt"), run.params, run.state)
    mean, var = state.buffers["shared", "bn1", "mean"], state.buffers["shared", "bn1", "var"]
    assert not torch.equal(mean, m.buffers["shared", "bn1", "mean"]) and not torch.equal(var, torch.ones_like(var))

"""fmtl.TorchOptimizer: torch.optim driven by fmtl's balanced gradients equals fmtl's own optimizers."""

from __future__ import annotations

import pytest
import torch
from _toy import toy_problem
from tensordict import TensorDict

import fmtl
from fmtl import schedules as S
from fmtl.plateau import plateau
from fmtl.torch_optim import keep_gradient
from fmtl.transforms import chain, lr_scale, set_lr_scale

LRS = torch.optim.lr_scheduler

PAIRS = {
    "sgd": (lambda lr: fmtl.optim.sgd(lr, momentum=0.9, weight_decay=1e-3),
            lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=0.9, weight_decay=1e-3)),
    "adam": (lambda lr: fmtl.optim.adam(lr, weight_decay=1e-3), lambda ps, lr: torch.optim.Adam(ps, lr=lr,
                                                                                               weight_decay=1e-3)),
    "adamw": (lambda lr: fmtl.optim.adamw(lr, weight_decay=0.1), lambda ps, lr: torch.optim.AdamW(ps, lr=lr,
                                                                                                 weight_decay=0.1)),
}  # fmt: skip


def _batches(batch: TensorDict, n: int) -> list[TensorDict]:
    gen = torch.Generator().manual_seed(3)
    return [batch[torch.randint(0, batch.shape[0], (6,), generator=gen)] for _ in range(n)]


def _close(a: TensorDict, b: TensorDict, tol: float = 1e-12) -> None:
    for k in a.keys(True, True):
        torch.testing.assert_close(a[k], b[k], rtol=tol, atol=tol, msg=f"{k} differs")


@pytest.mark.parametrize("method", ["dbmtl", "ew", "pcgrad"])
@pytest.mark.parametrize("name", sorted(PAIRS))
def test_torch_optimizer_through_the_bridge_equals_fmtls_optimizer(name, method):
    params, loss_fn, batch, _ = toy_problem(num_tasks=3)
    ours, theirs = PAIRS[name]
    step = fmtl.make_step(loss_fn, fmtl.balancers.get(method), ours(0.02))
    p, state = params.clone(), step.init(params)
    bridge_params = params.clone()
    mtl = fmtl.TorchOptimizer(loss_fn, fmtl.balancers.get(method), bridge_params,
                              theirs(bridge_params.values(True, True), 0.02))
    for b in _batches(batch, 8):
        p, state, info = step(p, state, b)
        binfo = mtl.step(b)
        torch.testing.assert_close(info["weights"], binfo["weights"], rtol=1e-12, atol=1e-12)
    _close(p, bridge_params)
    # the balancer state is the pure step's (DB-MTL's EMA, counts)
    leaves = torch.utils._pytree.tree_leaves
    for a, b in zip(leaves(state.balancer), leaves(mtl.state.balancer), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert int(mtl.state.count) == 8


def test_cosine_annealing_lr_drives_the_bridge_as_the_pure_cosine_schedule():
    params, loss_fn, batch, _ = toy_problem(num_tasks=2)
    step = fmtl.make_step(loss_fn, fmtl.balancers.get("dbmtl"), fmtl.optim.adam(S.cosine(0.05, 6, final=0.001)))
    p, state = params.clone(), step.init(params)
    bp = params.clone()
    opt = torch.optim.Adam(bp.values(True, True), lr=0.05)
    sched = LRS.CosineAnnealingLR(opt, T_max=6, eta_min=0.001)
    mtl = fmtl.TorchOptimizer(loss_fn, fmtl.balancers.get("dbmtl"), bp, opt)
    for b in _batches(batch, 6):
        p, state, _ = step(p, state, b)
        mtl.step(b)
        sched.step()
    _close(p, bp)


def test_reduce_lr_on_plateau_drives_the_bridge_as_the_pure_plateau_controller():
    params, loss_fn, batch, _ = toy_problem(num_tasks=2)
    kw = dict(mode="max", factor=0.5, patience=0, threshold=0.0, threshold_mode="abs")
    step = fmtl.make_step(loss_fn, fmtl.balancers.get("dbmtl"), chain(fmtl.optim.sgd(0.05, momentum=0.9), lr_scale()))
    ctl = plateau(**kw)
    p, state, pstate = params.clone(), step.init(params), ctl.init()
    bp = params.clone()
    opt = torch.optim.SGD(bp.values(True, True), lr=0.05, momentum=0.9)
    sched = LRS.ReduceLROnPlateau(opt, **kw)
    mtl = fmtl.TorchOptimizer(loss_fn, fmtl.balancers.get("dbmtl"), bp, opt)
    bs = _batches(batch, 12)
    for epoch, score in enumerate([1.0, 0.5, 0.5, 2.0]):  # two reductions
        for b in bs[3 * epoch: 3 * epoch + 3]:
            p, state, _ = step(p, state, b)
            mtl.step(b)
        pstate = ctl.update(pstate, score)
        state = set_lr_scale(state, pstate.scale)
        sched.step(score)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * 0.25) and pstate.scale == pytest.approx(0.25)
    _close(p, bp)


def test_backward_accumulates_into_grad_like_torch_and_step_zeroes_first():
    params, loss_fn, batch, _ = toy_problem(num_tasks=2)
    opt = torch.optim.SGD(params.values(True, True), lr=0.0)
    mtl = fmtl.TorchOptimizer(loss_fn, fmtl.balancers.get("ew"), params, opt)
    mtl.backward(batch)
    once = [p.grad.clone() for p in params.values(True, True)]
    mtl.backward(batch)
    for p, g in zip(params.values(True, True), once, strict=True):
        torch.testing.assert_close(p.grad, 2 * g)
    mtl.step(batch)
    for p, g in zip(params.values(True, True), once, strict=True):
        torch.testing.assert_close(p.grad, g)
    # EW's balanced gradient is the gradient of the summed losses
    p2 = params.apply(lambda x: x.detach().clone().requires_grad_())
    loss_fn(p2, batch).sum().backward()
    for a, b in zip(params.values(True, True), p2.values(True, True), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)


def test_a_resumed_bridge_equals_an_uninterrupted_one(tmp_path):
    params, loss_fn, batch, _ = toy_problem(num_tasks=2)
    bs = _batches(batch, 6)

    def make(p):
        return fmtl.TorchOptimizer(loss_fn, fmtl.balancers.get("dbmtl"), p, torch.optim.Adam(p.values(True, True),
                                                                                           lr=0.02))

    full = params.clone()
    a = make(full)
    for b in bs:
        a.step(b)
    half = params.clone()
    first = make(half)
    for b in bs[:3]:
        first.step(b)
    torch.save({"params": dict(half.flatten_keys(".").items()), "mtl": first.state_dict()}, tmp_path / "c.pt")
    saved = torch.load(tmp_path / "c.pt", weights_only=True)
    resumed_params = TensorDict(saved["params"], []).unflatten_keys(".")
    second = make(resumed_params)
    second.load_state_dict(saved["mtl"])
    for b in bs[3:]:
        second.step(b)
    _close(full, resumed_params)


def test_load_state_dict_refuses_another_model():
    params, loss_fn, _, _ = toy_problem(num_tasks=2)
    other, other_loss, _, _ = toy_problem(num_tasks=3)
    a = fmtl.TorchOptimizer(loss_fn, fmtl.balancers.get("dbmtl"), params, torch.optim.SGD(params.values(True, True),
                                                                                         lr=0.1))
    b = fmtl.TorchOptimizer(other_loss, fmtl.balancers.get("dbmtl"), other, torch.optim.SGD(other.values(True, True),
                                                                                           lr=0.1))
    with pytest.raises(ValueError, match="does not match"):
        a.load_state_dict(b.state_dict())


def test_bad_inputs_are_named():
    params, loss_fn, batch, _ = toy_problem(num_tasks=2)
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        fmtl.TorchOptimizer(loss_fn, fmtl.balancers.get("ew"), params, fmtl.optim.adam(0.1))
    with pytest.raises(ValueError, match="not leaves of params"):
        fmtl.TorchOptimizer(loss_fn, fmtl.balancers.get("ew"), params, torch.optim.SGD([torch.zeros(1)], lr=0.1))
    w = torch.zeros(2, requires_grad=True)
    non_leaf = TensorDict({"shared": {"w": w * 2}, "tasks": {"a": {"b": torch.zeros(1)}}}, [])
    with pytest.raises(ValueError, match="not leaf tensors"):
        fmtl.TorchOptimizer(loss_fn, fmtl.balancers.get("ew"), non_leaf, torch.optim.SGD([w], lr=0.1))


def test_a_non_finite_loss_names_the_task_and_writes_no_grad():
    params, loss_fn, batch, _ = toy_problem(num_tasks=2)
    mtl = fmtl.TorchOptimizer(loss_fn, fmtl.balancers.get("dbmtl"), params, torch.optim.SGD(params.values(True, True),
                                                                                           lr=0.1))
    bad = batch.clone()
    bad["y"][0, 1] = float("nan")
    before = params.clone()
    with pytest.raises(FloatingPointError, match="task1"):
        mtl.step(bad)
    assert all(p.grad is None for p in params.values(True, True))
    _close(before, params, tol=0.0)
    assert int(mtl.state.count) == 0


def test_keep_gradient_is_a_gradient_only_step():
    params, loss_fn, batch, _ = toy_problem(num_tasks=2)
    step = fmtl.make_step(loss_fn, fmtl.balancers.get("ew"), keep_gradient())
    state = step.init(params)
    assert all(v.stride() == (0,) * v.dim() for v in state.optimizer.grad.values(True, True))  # no memory
    new, state, _ = step(params, state, batch)
    _close(new, params, tol=0.0)
    p2 = params.apply(lambda x: x.detach().clone().requires_grad_())
    loss_fn(p2, batch).sum().backward()
    for g, p in zip(state.optimizer.grad.values(True, True), p2.values(True, True), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-12, atol=1e-12)

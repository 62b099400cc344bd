"""Multi-input MTL (each task its own images and batch): task t's loss sees only its sub-batch, and
every task-gradient strategy and every balancer handles the opaque per-task batch exactly as a
plain autograd loop of one forward per task does."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

import fmtl
from fmtl import losses as L
from fmtl import models as fm

D = torch.float64
TASKS = ("amazon", "dslr", "webcam")


def _problem():
    m = fm.mlp_hps(4, hidden=(6,), tasks=dict.fromkeys(TASKS, 3), activation=torch.tanh, seed=0, dtype=D)
    lf = L.make_multi_input_loss_fn(m.apply, dict.fromkeys(TASKS, L.cross_entropy))
    g = torch.Generator().manual_seed(1)
    sizes = {"amazon": 5, "dslr": 2, "webcam": 3}  # each task its own batch, of its own size
    batch = TensorDict({t: TensorDict({"x": torch.randn(n, 4, generator=g, dtype=D),
                                       "y": torch.randint(0, 3, (n,), generator=g)}, [n])
                        for t, n in sizes.items()}, [])  # fmt: skip
    return m, lf, batch


def _loop_gradients(m, batch) -> fmtl.TaskGradients:
    """T separate forwards, each on its task's own inputs, and T autograd.grad calls."""
    p = m.params.apply(lambda v: v.detach().clone().requires_grad_())
    shared_keys = list(p["shared"].keys(True, True))
    losses, rows, heads = [], [], {}
    for t in TASKS:
        out = m.apply(p, batch[t, "x"])[t]
        loss = torch.nn.functional.cross_entropy(out, batch[t, "y"])
        head_keys = list(p["tasks", t].keys(True, True))
        grads = torch.autograd.grad(loss, [p["shared", k] for k in shared_keys] + [p["tasks", t, k] for k in head_keys])
        rows.append(grads[: len(shared_keys)])
        heads[t] = TensorDict(dict(zip(head_keys, grads[len(shared_keys) :], strict=True)), [])
        losses.append(loss.detach())
    shared = TensorDict({k: torch.stack([r[i] for r in rows]) for i, k in enumerate(shared_keys)}, [len(TASKS)])
    return fmtl.TaskGradients(torch.stack(losses), shared, TensorDict(heads, []))


def test_each_task_loss_sees_only_its_own_sub_batch():
    m, lf, batch = _problem()
    before = lf(m.params, batch)
    other = batch.clone()
    other["dslr", "x"] = other["dslr", "x"] + 1.0
    other["dslr", "y"] = (other["dslr", "y"] + 1) % 3
    after = lf(m.params, other)
    assert after[1] != before[1]
    torch.testing.assert_close(after[[0, 2]], before[[0, 2]])
    with pytest.raises(KeyError, match="webcam"):
        lf(m.params, TensorDict({t: batch[t] for t in TASKS[:2]}, []))


@pytest.mark.parametrize("strategy", ["jacrev", "vmap_grad", "loop", "auto"])
def test_task_gradients_equal_the_per_task_autograd_loop(strategy):
    m, lf, batch = _problem()
    ref = _loop_gradients(m, batch)
    got = fmtl.task_gradients(lf, m.params, batch, strategy=strategy)
    torch.testing.assert_close(got.losses, ref.losses)
    for k in ref.shared.keys(True, True):
        torch.testing.assert_close(got.shared[k], ref.shared[k])
    for t in TASKS:
        for k in ref.tasks[t].keys(True, True):
            torch.testing.assert_close(got.tasks[t][k], ref.tasks[t][k])


@pytest.mark.parametrize("method", fmtl.balancers.names())
def test_every_balancer_steps_as_on_the_loop_gradients(method):
    m, lf, batch = _problem()
    balancer = fmtl.balancers.get(method)
    ref = _loop_gradients(m, batch)
    grad, _, info = balancer.update(ref, balancer.init(m.params, len(TASKS)), m.params)
    expected = m.params.apply(lambda p, g: p - 0.1 * g, grad)
    for strategy in ("jacrev", "loop"):
        step = fmtl.make_step(lf, balancer, fmtl.optim.sgd(0.1), strategy=strategy)
        params, _, out = step(m.params, step.init(m.params), batch)
        assert bool(out["ok"])
        torch.testing.assert_close(out["weights"], info["weights"], rtol=1e-6, atol=1e-8)
        for k in expected.keys(True, True):
            torch.testing.assert_close(params[k], expected[k], rtol=1e-6, atol=1e-8, msg=f"{method} {strategy} {k}")


def test_running_statistics_update_once_per_task_sub_batch_like_nn_batchnorm():
    m = fm.office_resnet18(TASKS, 3, hidden=None, layers=(1,), widths=(3,), stem="cifar", dtype=D)
    g = torch.Generator().manual_seed(0)
    sizes = dict(zip(TASKS, (4, 2, 3), strict=True))
    batch = TensorDict({t: {"x": torch.randn(n, 3, 6, 6, generator=g, dtype=D)} for t, n in sizes.items()}, [])
    new = fm.update_buffers_per_task(m, m.params, m.buffers, batch, momentum=0.3)
    bn = torch.nn.BatchNorm2d(3, momentum=0.3).double().train()
    for t in TASKS:  # LibMTL: one train-mode encoder forward per task, in task order
        bn(torch.nn.functional.conv2d(batch[t, "x"], m.params["shared", "conv1", "weight"], padding=1))
    torch.testing.assert_close(new["shared", "bn1", "mean"], bn.running_mean)
    torch.testing.assert_close(new["shared", "bn1", "var"], bn.running_var)

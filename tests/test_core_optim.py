"""fmtl.optim equals torch.optim (float64, 20 steps, 1e-12)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tensordict import TensorDict

import fmtl


def _run_both(make_ours, make_torch, seed: int, steps: int = 20):
    gen = torch.Generator().manual_seed(seed)
    init = {"a": torch.randn(3, 4, generator=gen, dtype=torch.float64),
            "b": {"c": torch.randn(5, generator=gen, dtype=torch.float64)}}
    grads = [TensorDict({"a": torch.randn(3, 4, generator=gen, dtype=torch.float64),
                         "b": {"c": torch.randn(5, generator=gen, dtype=torch.float64)}}, [])
             for _ in range(steps)]
    params = TensorDict(init, []).clone()
    opt = make_ours()
    state = opt.init(params)
    for g in grads:
        updates, state = opt.update(g, state, params)
        params = params + updates

    tensors = [init["a"].clone().requires_grad_(), init["b"]["c"].clone().requires_grad_()]
    topt = make_torch(tensors)
    for g in grads:
        tensors[0].grad, tensors[1].grad = g["a"].clone(), g["b", "c"].clone()
        topt.step()
    torch.testing.assert_close(params["a"], tensors[0].detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(params["b", "c"], tensors[1].detach(), rtol=1e-12, atol=1e-12)


hyper = dict(lr=st.floats(1e-4, 0.5), wd=st.sampled_from([0.0, 1e-3, 0.1]), seed=st.integers(0, 10_000))


@settings(max_examples=20, deadline=None)
@given(momentum=st.sampled_from([0.0, 0.5, 0.9]), **hyper)
def test_sgd_equals_torch(lr, wd, seed, momentum):
    _run_both(lambda: fmtl.optim.sgd(lr, momentum=momentum, weight_decay=wd),
              lambda ps: torch.optim.SGD(ps, lr=lr, momentum=momentum, weight_decay=wd), seed)


@settings(max_examples=20, deadline=None)
@given(b1=st.sampled_from([0.0, 0.5, 0.9]), b2=st.sampled_from([0.9, 0.999]), **hyper)
def test_adam_equals_torch(lr, wd, seed, b1, b2):
    _run_both(lambda: fmtl.optim.adam(lr, betas=(b1, b2), weight_decay=wd),
              lambda ps: torch.optim.Adam(ps, lr=lr, betas=(b1, b2), weight_decay=wd), seed)


@settings(max_examples=20, deadline=None)
@given(**hyper)
def test_adamw_equals_torch(lr, wd, seed):
    _run_both(lambda: fmtl.optim.adamw(lr, weight_decay=wd),
              lambda ps: torch.optim.AdamW(ps, lr=lr, weight_decay=wd), seed)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_schedule_of_the_step_count_equals_torch_lambda_lr(name):
    def schedule(k):
        return 0.1 / k

    ours = {"sgd": lambda: fmtl.optim.sgd(schedule, momentum=0.9),
            "adam": lambda: fmtl.optim.adam(schedule)}[name]

    def theirs(ps):
        opt = {"sgd": lambda: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
               "adam": lambda: torch.optim.Adam(ps, lr=0.1)}[name]()
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0 / (epoch + 1))

        class Stepper:
            def step(self):
                opt.step()
                sched.step()

        return Stepper()

    _run_both(ours, theirs, seed=3)


def test_optimizer_update_is_pure():
    params = TensorDict({"w": torch.ones(3)}, [])
    opt = fmtl.optim.adam(0.1)
    state = opt.init(params)
    grads = TensorDict({"w": torch.ones(3)}, [])
    before = (params.clone(), state.mu.clone(), state.nu.clone(), state.count.clone())
    opt.update(grads, state, params)
    assert torch.equal(params["w"], before[0]["w"]) and torch.equal(state.mu["w"], before[1]["w"])
    assert torch.equal(state.nu["w"], before[2]["w"]) and state.count.item() == 0

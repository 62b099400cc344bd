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


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_is_finite_and_exact_in_every_float_dtype(name, dtype):
    """ε = 1e-8 is 0 in float16: zero or small gradients gave 0/0 and m/0 on every step."""
    opt, ref = (getattr(fmtl.optim, name)(1e-3, weight_decay=0.1) for _ in range(2))
    g = torch.tensor([0.0, -1e-6, 1e-4, -5e-3, 1.0, -100.0], dtype=dtype)
    params = TensorDict({"w": torch.ones(6, dtype=dtype)}, [])
    state = opt.init(params)
    ref_state = ref.init(params.apply(lambda v: v.double()))
    assert state.mu["w"].dtype == state.nu["w"].dtype == torch.promote_types(dtype, torch.float32)
    for _ in range(5):
        updates, state = opt.update(TensorDict({"w": g}, []), state, params)
        want, ref_state = ref.update(TensorDict({"w": g.double()}, []), ref_state, params.apply(lambda v: v.double()))
        u = updates["w"]
        assert u.dtype == dtype and torch.isfinite(u).all(), u
        torch.testing.assert_close(u, want["w"].to(dtype), rtol=4 * torch.finfo(dtype).eps, atol=0)
        params = params + updates


def test_float16_training_steps_are_finite():
    from _toy import toy_problem

    params, loss_fn, batch, _ = toy_problem(num_tasks=2, dtype=torch.float16)
    step = fmtl.make_step(loss_fn, fmtl.balancers.dbmtl(), fmtl.optim.adam(1e-3), strategy="jacrev")
    state = step.init(params)
    for _ in range(3):
        params, state, info = step(params, state, batch)
        assert bool(info["ok"]) and all(v.dtype == torch.float16 for v in params.values(True, True))

"""fmtl.optim equals torch.optim (float64, 20 steps, 1e-12), on both of its paths.

Eager Adam/AdamW run torch's fused kernel on copies; under ``torch.compile`` they are written out in
plain tensor ops (``_fusable`` is False there). Every equality test runs on both paths.
"""

from __future__ import annotations

from contextlib import nullcontext
from unittest import mock

import pytest
import torch
from _optim_helpers import assert_same, trajectories
from hypothesis import given, settings
from hypothesis import strategies as st
from tensordict import TensorDict

import fmtl

PATHS = ("kernel", "written out")


def _path(path: str):
    """The eager default, or the written-out update that a compiled step runs."""
    return nullcontext() if path == "kernel" else mock.patch.object(fmtl.optim, "_fusable", lambda *trees: False)


def _run_both(make_ours, make_torch, seed: int, steps: int = 20, path: str = "kernel"):
    with _path(path):
        _run_both_here(make_ours, make_torch, seed, steps)


def _run_both_here(make_ours, make_torch, seed: int, steps: int):
    assert_same(*trajectories(make_ours(), make_torch, steps=steps, seed=seed))


hyper = dict(lr=st.floats(1e-4, 0.5), wd=st.sampled_from([0.0, 1e-3, 0.1]), seed=st.integers(0, 10_000))


@settings(max_examples=20, deadline=None)
@given(momentum=st.sampled_from([0.0, 0.5, 0.9]), **hyper)
def test_sgd_equals_torch(lr, wd, seed, momentum):
    _run_both(lambda: fmtl.optim.sgd(lr, momentum=momentum, weight_decay=wd),
              lambda ps: torch.optim.SGD(ps, lr=lr, momentum=momentum, weight_decay=wd), seed)


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=15, deadline=None)
@given(b1=st.sampled_from([0.0, 0.5, 0.9]), b2=st.sampled_from([0.9, 0.999]), **hyper)
def test_adam_equals_torch(path, lr, wd, seed, b1, b2):
    _run_both(lambda: fmtl.optim.adam(lr, betas=(b1, b2), weight_decay=wd),
              lambda ps: torch.optim.Adam(ps, lr=lr, betas=(b1, b2), weight_decay=wd), seed, path=path)


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=15, deadline=None)
@given(**hyper)
def test_adamw_equals_torch(path, lr, wd, seed):
    _run_both(lambda: fmtl.optim.adamw(lr, weight_decay=wd),
              lambda ps: torch.optim.AdamW(ps, lr=lr, weight_decay=wd), seed, path=path)


def test_the_eager_and_the_compiled_paths_are_the_ones_tested():
    p = TensorDict({"w": torch.zeros(3)}, [])
    assert fmtl.optim._fusable(p, p) and not fmtl.optim._fusable(p, p.double())
    seen = []
    torch.compile(lambda x: seen.append(fmtl.optim._fusable(p, p)) or x + 1, backend="eager", fullgraph=True)(
        torch.zeros(1))
    assert seen == [False]


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_compiled_update_equals_torch(name):
    """The update traced by torch.compile (written out) against torch.optim, 5 steps in float64."""
    ours = {"sgd": lambda: fmtl.optim.sgd(0.1, momentum=0.9, weight_decay=0.01),
            "adam": lambda: fmtl.optim.adam(0.05, weight_decay=0.01),
            "adamw": lambda: fmtl.optim.adamw(0.05, weight_decay=0.1)}[name]
    theirs = {"sgd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
              "adam": lambda ps: torch.optim.Adam(ps, lr=0.05, weight_decay=0.01),
              "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.1)}[name]

    def compiled():
        opt = ours()
        return fmtl.optim.Optimizer(opt.init, torch.compile(opt.update, backend="eager", fullgraph=True))

    _run_both(compiled, theirs, seed=5, steps=5)


@pytest.mark.parametrize("path", PATHS)
def test_leaves_of_several_dtypes_each_equal_torch(path):
    """The fused kernel runs once per dtype (ε may depend on it); float32 and float64 leaves mixed."""
    with _path(path):
        params, tensors = trajectories(fmtl.optim.adam(0.1), lambda ps: torch.optim.Adam(ps, lr=0.1), steps=5,
                                       dtypes=(torch.float64, torch.float32))  # fmt: skip
    assert params["b", "c"].dtype == torch.float32
    assert_same(params, tensors)


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


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("make", [lambda: fmtl.optim.adam(0.1, weight_decay=0.1), lambda: fmtl.optim.adamw(0.1),
                                  lambda: fmtl.optim.sgd(0.1, momentum=0.9, weight_decay=0.1)],
                         ids=["adam", "adamw", "sgd"])
def test_optimizer_update_is_pure(make, path):
    """Nothing passed in is written, though the kernels work in place (on copies)."""
    params = TensorDict({"w": torch.ones(3), "h": {"b": torch.full((2,), 2.0)}}, [])
    grads = TensorDict({"w": torch.ones(3), "h": {"b": -torch.ones(2)}}, [])
    opt = make()
    with _path(path):
        state = opt.init(params)
        _, state = opt.update(grads, state, params)  # a non-zero state
        before = [x.clone() for x in torch.utils._pytree.tree_leaves((params, grads, state))]
        updates, new_state = opt.update(grads, state, params)
    after = torch.utils._pytree.tree_leaves((params, grads, state))
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    new = torch.utils._pytree.tree_leaves(new_state)
    assert not any(a.data_ptr() == b.data_ptr() for a in new if a.dim() for b in after if b.dim())


def test_make_step_with_a_torch_optimizer_points_at_the_bridge():
    params = TensorDict({"shared": {"w": torch.zeros(2)}, "tasks": {"a": {"b": torch.zeros(1)}}}, [])
    with pytest.raises(TypeError, match=r"not a torch\.optim\.Adam.*fmtl\.TorchOptimizer"):
        fmtl.make_step(lambda p, b: p["shared", "w"].sum()[None], fmtl.balancers.get("ew"),
                       torch.optim.Adam(params.values(True, True)))
    with pytest.raises(TypeError, match="fmtl.optim.Optimizer"):
        fmtl.make_step(lambda p, b: p["shared", "w"].sum()[None], fmtl.balancers.get("ew"), "adam")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_gradients_laid_out_or_ordered_unlike_the_params_are_paired_by_key(name, path):
    """torch.func returns some gradients transposed (the STL ensemble's), and a balancer may order keys
    its own way: the kernels pair leaves by key and lay every tensor out like the parameter."""
    make = {"sgd": lambda: fmtl.optim.sgd(0.1, momentum=0.9, weight_decay=0.01),
            "adam": lambda: fmtl.optim.adam(0.1, weight_decay=0.01),
            "adamw": lambda: fmtl.optim.adamw(0.1)}[name]  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    params = TensorDict({"w": torch.randn(3, 4, generator=gen, dtype=torch.float64),
                         "v": torch.randn(2, generator=gen, dtype=torch.float64)}, [])  # fmt: skip
    grads = [(torch.randn(4, 3, generator=gen, dtype=torch.float64).T, torch.randn(2, generator=gen,
                                                                                dtype=torch.float64))
             for _ in range(4)]  # fmt: skip
    with _path(path):
        opt = make()
        p, ref = params.clone(), params.clone()
        s, s_ref = opt.init(p), opt.init(ref)
        for w, v in grads:
            u, s = opt.update(TensorDict({"v": v, "w": w}, []), s, p)  # transposed w, keys in the other order
            p = p + u
            u, s_ref = opt.update(TensorDict({"w": w.contiguous(), "v": v}, []), s_ref, ref)
            ref = ref + u
    assert not grads[0][0].is_contiguous()
    for k in ("w", "v"):
        torch.testing.assert_close(p[k], ref[k], rtol=1e-12, atol=1e-12)


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

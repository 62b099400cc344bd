"""Pure LR schedules, the plateau controller and the composable transforms equal torch's own."""

from __future__ import annotations

import math

import pytest
import torch
from _optim_helpers import assert_same, trajectories
from _toy import toy_problem
from hypothesis import given, settings
from hypothesis import strategies as st
from tensordict import TensorDict

import fmtl
from fmtl import schedules as S
from fmtl.plateau import PlateauState, plateau
from fmtl.transforms import chain, clip_norm, get_lr_scale, lr_scale, set_lr_scale

LRS = torch.optim.lr_scheduler

CASES = {
    "constant": (S.constant(0.1), lambda o: LRS.ConstantLR(o, factor=1.0)),
    "cosine": (S.cosine(0.1, 10, final=0.01), lambda o: LRS.CosineAnnealingLR(o, T_max=10, eta_min=0.01)),
    "step": (S.step_decay(0.1, 3, gamma=0.5), lambda o: LRS.StepLR(o, step_size=3, gamma=0.5)),
    "warmup+cosine": (S.warmup(S.cosine(0.1, 7), 4, start=0.25),
                      lambda o: LRS.SequentialLR(o, [LRS.LinearLR(o, start_factor=0.25, total_iters=4),
                                                     LRS.CosineAnnealingLR(o, T_max=7)], milestones=[4])),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_schedule_equals_the_torch_scheduler(name, opt):
    schedule, make_sched = CASES[name]
    ours = {"sgd": fmtl.optim.sgd(schedule, momentum=0.9), "adam": fmtl.optim.adam(schedule)}[opt]
    make_torch = {"sgd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
                  "adam": lambda ps: torch.optim.Adam(ps, lr=0.1)}[opt]  # fmt: skip
    assert_same(*trajectories(ours, make_torch, make_sched=make_sched, steps=11))


@pytest.mark.parametrize("name", sorted(CASES))
def test_schedule_rates_equal_the_torch_scheduler_rates(name):
    schedule, make_sched = CASES[name]
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = make_sched(opt)
    theirs = []
    for _ in range(11):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ours = [S.value(schedule, k) for k in range(1, 12)]
    assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-15)


def test_cosine_stays_at_its_final_rate_after_its_steps():
    s = S.cosine(1.0, 5, final=0.1)
    assert [S.value(s, k) for k in (6, 7, 100)] == pytest.approx([0.1, 0.1, 0.1])


@pytest.mark.parametrize("bad", [lambda: S.cosine(1.0, 0), lambda: S.step_decay(1.0, 0),
                                 lambda: S.warmup(S.constant(1.0), 0), lambda: S.warmup(S.constant(1.0), 3, 2.0)])
def test_bad_schedule_arguments_are_named(bad):
    with pytest.raises(ValueError, match="needs"):
        bad()


# ---------------------------------------------------------------------------------------- plateau

def _torch_plateau_lrs(scores, lr, **kw):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = LRS.ReduceLROnPlateau(opt, **kw)
    out = []
    for s in scores:
        sched.step(s)
        out.append(opt.param_groups[0]["lr"])
    return out


@settings(max_examples=60, deadline=None)
@given(
    scores=st.lists(st.one_of(st.floats(-5, 5), st.sampled_from([0.0, 1.0, -1.0, math.nan])), min_size=1,
                    max_size=30),
    mode=st.sampled_from(["min", "max"]), threshold_mode=st.sampled_from(["rel", "abs"]),
    factor=st.sampled_from([0.1, 0.5, 0.7]), patience=st.integers(0, 3), cooldown=st.integers(0, 2),
    threshold=st.sampled_from([0.0, 1e-4, 0.1]), min_lr=st.sampled_from([0.0, 1e-4, 1e-2]),
)
def test_plateau_equals_torch_reduce_lr_on_plateau(scores, mode, threshold_mode, factor, patience, cooldown,
                                                   threshold, min_lr):
    lr = 0.1
    theirs = _torch_plateau_lrs(scores, lr, mode=mode, factor=factor, patience=patience, threshold=threshold,
                                threshold_mode=threshold_mode, cooldown=cooldown, min_lr=min_lr, eps=0.0)
    ctl = plateau(mode=mode, factor=factor, patience=patience, threshold=threshold, threshold_mode=threshold_mode,
                  cooldown=cooldown, min_scale=min_lr / lr, eps=0.0)
    state, ours = ctl.init(), []
    for s in scores:
        state = ctl.update(state, s)
        ours.append(lr * state.scale)
    assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-15)


def test_plateau_state_is_checkpointable_with_weights_only(tmp_path):
    ctl = plateau(patience=0)
    state = ctl.init()
    for s in (1.0, 0.5, 0.2):
        state = ctl.update(state, s)
    torch.save({"plateau": state._asdict()}, tmp_path / "c.pt")
    back = PlateauState(**torch.load(tmp_path / "c.pt", weights_only=True)["plateau"])
    assert back == state and back.reductions == 2
    assert ctl.update(back, 0.1) == ctl.update(state, 0.1)


def test_plateau_update_is_pure():
    ctl = plateau(patience=0)
    state = ctl.init()
    new = ctl.update(state, 1.0)
    assert state == ctl.init() and new != state


@pytest.mark.parametrize("kw", [{"mode": "up"}, {"threshold_mode": "x"}, {"factor": 1.0}, {"patience": -1},
                                {"min_scale": -1.0}])
def test_bad_plateau_arguments_are_named(kw):
    with pytest.raises(ValueError, match="plateau"):
        plateau(**kw)


# ------------------------------------------------------------------------------------- transforms

@settings(max_examples=25, deadline=None)
@given(max_norm=st.sampled_from([0.1, 1.0, 3.0, 100.0]), scale=st.sampled_from([0.01, 1.0, 10.0]),
       seed=st.integers(0, 1000))
def test_clip_norm_then_adam_equals_torch_clip_grad_norm(max_norm, scale, seed):
    params, tensors = trajectories(chain(clip_norm(max_norm), fmtl.optim.adam(0.05)),
                                   lambda ps: torch.optim.Adam(ps, lr=0.05), steps=6, seed=seed, scale=scale,
                                   before_step=lambda ts: torch.nn.utils.clip_grad_norm_(ts, max_norm))  # fmt: skip
    assert_same(params, tensors)


def test_clip_norm_rejects_a_non_positive_bound():
    with pytest.raises(ValueError, match="max_norm > 0"):
        clip_norm(0.0)


def test_plateau_through_lr_scale_equals_torch_reduce_lr_on_plateau_on_adamw():
    """Once per 'epoch' (3 updates) a score; the scale goes into the optimizer state."""
    scores = [1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0]
    gen = torch.Generator().manual_seed(1)
    init = torch.randn(5, generator=gen, dtype=torch.float64)
    grads = [torch.randn(5, generator=gen, dtype=torch.float64) for _ in range(3 * len(scores))]
    ctl = plateau(mode="max", factor=0.5, patience=1, threshold=0.0, threshold_mode="abs")
    opt = chain(fmtl.optim.adamw(0.1, weight_decay=0.1), lr_scale())
    params = TensorDict({"w": init.clone()}, [])
    state, pstate = opt.init(params), ctl.init()
    t = init.clone()
    topt = torch.optim.AdamW([t], lr=0.1, weight_decay=0.1)
    sched = LRS.ReduceLROnPlateau(topt, mode="max", factor=0.5, patience=1, threshold=0.0, threshold_mode="abs")
    for epoch, score in enumerate(scores):
        for g in grads[3 * epoch: 3 * epoch + 3]:
            u, state = opt.update(TensorDict({"w": g}, []), state, params)
            params = params + u
            t.grad = g.clone()
            topt.step()
        pstate = ctl.update(pstate, score)
        state = set_lr_scale(state, pstate.scale)
        sched.step(score)
        assert 0.1 * get_lr_scale(state) == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12)
    assert pstate.reductions == 2
    torch.testing.assert_close(params["w"], t, rtol=1e-12, atol=1e-12)


def test_set_lr_scale_needs_an_lr_scale_in_the_state():
    state = fmtl.optim.adam(0.1).init(TensorDict({"w": torch.zeros(1)}, []))
    with pytest.raises(ValueError, match="no lr_scale"):
        set_lr_scale(state, 0.5)
    with pytest.raises(ValueError, match=">= 0"):
        set_lr_scale(chain(lr_scale()).init(TensorDict({"w": torch.zeros(1)}, [])), -1.0)


def test_a_compiled_step_does_not_recompile_as_the_schedule_and_the_plateau_move_the_rate():
    from torch._dynamo.testing import CompileCounter

    params, loss_fn, batch, _ = toy_problem(num_tasks=2, dtype=torch.float32)
    opt = chain(clip_norm(1.0), fmtl.optim.adam(S.warmup(S.cosine(1e-2, 20), 3)), lr_scale())
    step = fmtl.make_step(loss_fn, fmtl.balancers.get("dbmtl"), opt, strategy="jacrev")
    counter = CompileCounter()
    compiled = torch.compile(step.__call__, backend=counter, fullgraph=True)
    state = step.init(params)
    p_eager, s_eager = params, state
    for k in range(6):
        if k == 3:  # the plateau lowers the rate
            state, s_eager = set_lr_scale(state, 0.1), set_lr_scale(s_eager, 0.1)
        params, state, info = compiled(params, state, batch)
        p_eager, s_eager, _ = step(p_eager, s_eager, batch)
        assert bool(info["ok"])
    assert counter.frame_count == 1, f"recompiled: {counter.frame_count} graphs"
    assert get_lr_scale(state) == pytest.approx(0.1)
    for a, b in zip(params.values(True, True), p_eager.values(True, True), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name, options, direct", [
    ("constant", {}, S.constant(0.1)),
    ("cosine", {"final": 0.01}, S.cosine(0.1, 30, 0.01)),
    ("step", {}, S.step_decay(0.1, 10, 0.1)),
    ("step", {"every": 4, "gamma": 0.5}, S.step_decay(0.1, 4, 0.5)),
    ("warmup", {}, S.warmup(S.cosine(0.1, 29), 1)),
    ("warmup", {"warmup_steps": 5, "then": "constant", "start": 0.0}, S.warmup(S.constant(0.1), 5, 0.0)),
])  # fmt: skip
def test_schedules_by_name_are_the_schedules(name, options, direct):
    s = S.get(name, 0.1, 30, **options)
    assert [S.value(s, k) for k in range(1, 40)] == pytest.approx([S.value(direct, k) for k in range(1, 40)])


def test_schedule_names_and_options_are_checked():
    with pytest.raises(ValueError, match="valid: constant, cosine, step, warmup"):
        S.get("plateau", 0.1, 10)
    with pytest.raises(ValueError, match="then='cosine' or 'constant'"):
        S.get("warmup", 0.1, 10, then="step")

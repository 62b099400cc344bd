"""make_step: purity, bad input, and the compiled step."""

from __future__ import annotations

import pytest
import torch
from _toy import assert_trees_close, toy_problem
from tensordict import TensorDict

import fmtl


def _step(loss_fn, balancer=None, lr=1e-2):
    return fmtl.make_step(loss_fn, balancer or fmtl.balancers.dbmtl(), fmtl.optim.adam(lr))


def test_step_is_pure_and_deterministic():
    params, loss_fn, batch, _ = toy_problem()
    step = _step(loss_fn)
    state = step.init(params)
    p0, s0, b0 = params.clone(), state.balancer.ema.clone(), batch.clone()
    out1 = step(params, state, batch)
    out2 = step(params, state, batch)
    assert_trees_close(params, p0, rtol=0, atol=0)
    assert_trees_close(state.balancer.ema, s0, rtol=0, atol=0)
    assert_trees_close(batch, b0, rtol=0, atol=0)
    assert state.count.item() == 0 and out1[1].count.item() == 1
    assert_trees_close(out1[0], out2[0], rtol=0, atol=0)
    assert not torch.equal(out1[0]["shared", "0", "weight"], params["shared", "0", "weight"])


@pytest.mark.parametrize("diagnostics", [False, True])
def test_info_reports_losses_norms_weights_and_cosines(diagnostics):
    params, loss_fn, batch, _ = toy_problem(num_tasks=3)
    step = fmtl.make_step(loss_fn, fmtl.balancers.dbmtl(), fmtl.optim.adam(1e-2), diagnostics=diagnostics)
    _, _, info = step(params, step.init(params), batch)
    g = fmtl.task_gradients(loss_fn, params, batch)
    torch.testing.assert_close(info["losses"], g.losses)
    norms = fmtl.tree.row_norms(g.shared)
    J = torch.cat([v.reshape(3, -1) for v in g.shared.values(True, True)], 1)
    if diagnostics:
        torch.testing.assert_close(info["grad_norms"], norms)
        cosine = torch.nn.functional.cosine_similarity(J[:, None], J[None], dim=-1)
        torch.testing.assert_close(info["cosine"], cosine)
    else:  # the Gramian and (DB-MTL guards on its ‖ĝ_t‖) the pass for ‖J_t‖ are skipped unless asked for
        assert info["cosine"].shape == (3, 3) and torch.isnan(info["cosine"]).all()
        assert info["grad_norms"].shape == (3,) and torch.isnan(info["grad_norms"]).all()
    # the first EMA is (1 − β) g_t of the log-transformed losses: ‖ĝ_t‖ = 0.1 ‖J_t‖ / (ℓ_t + ε)
    torch.testing.assert_close(info["ema_norms"], 0.1 * norms / (g.losses + 1e-8))
    assert info["weights"].shape == (3,) and bool(info["ok"])


@pytest.mark.parametrize("method", ["dbmtl", "uw"])
def test_diagnostics_do_not_change_the_update(method):
    params, loss_fn, batch, _ = toy_problem(num_tasks=3)
    plain, logged = (fmtl.make_step(loss_fn, fmtl.balancers.get(method), fmtl.optim.adam(1e-2), diagnostics=d)
                     for d in (False, True))  # fmt: skip
    state_a = state_b = plain.init(params)
    pa = pb = params
    for _ in range(3):
        pa, state_a, _ = plain(pa, state_a, batch)
        pb, state_b, info = logged(pb, state_b, batch)
    assert_trees_close(pa, pb, rtol=0, atol=0)
    for a, b in zip(torch.utils._pytree.tree_leaves(state_a), torch.utils._pytree.tree_leaves(state_b), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.isfinite(info["cosine"]).all() and torch.isfinite(info["grad_norms"]).all()


def test_loss_balancer_takes_one_backward_of_the_weighted_sum():
    params, loss_fn, batch, _ = toy_problem(num_tasks=3)
    step = fmtl.make_step(loss_fn, fmtl.balancers.get("ew"), fmtl.optim.sgd(0.1))
    new, _, info = step(params, step.init(params), batch)
    g = torch.func.grad(lambda p: loss_fn(p, batch).sum())(params)
    assert_trees_close(new, params.apply(lambda p, d: p - 0.1 * d, g), rtol=1e-12, atol=1e-14)
    assert torch.isnan(info["grad_norms"]).all()  # no task gradients were computed


def test_wrong_task_count_is_refused():
    params, loss_fn, batch, _ = toy_problem(num_tasks=3)
    step = _step(lambda p, b: loss_fn(p, b)[:2])
    with pytest.raises(ValueError, match="returned 2 losses but params\\['tasks'\\] has 3 tasks"):
        step(params, step.init(params), batch)


def test_non_vector_loss_is_refused():
    params, loss_fn, batch, _ = toy_problem(num_tasks=3)
    step = _step(lambda p, b: loss_fn(p, b).sum())
    with pytest.raises(ValueError, match="1-D"):
        step(params, step.init(params), batch)


def test_negative_loss_under_the_log_is_named():
    params, loss_fn, batch, _ = toy_problem(num_tasks=3)
    step = _step(lambda p, b: loss_fn(p, b) * torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="task 'task1' has loss -"):
        step(params, step.init(params), batch)


def test_nan_loss_is_named_and_nothing_changes():
    params, loss_fn, batch, _ = toy_problem(num_tasks=3)
    bad = batch.clone()
    bad["y"][0, 2] = float("nan")
    step = _step(loss_fn)
    state = step.init(params)
    p0 = params.clone()
    with pytest.raises(FloatingPointError, match="non-finite loss in tasks \\['task2'\\]"):
        step(params, state, bad)
    assert_trees_close(params, p0, rtol=0, atol=0)
    assert state.count.item() == 0


class _NaNGradient(torch.autograd.Function):
    """Identity whose backward turns any nonzero cotangent into NaN."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return torch.where(g != 0, torch.full_like(g, float("nan")), g)


class _InfGradient(_NaNGradient):
    """Identity whose backward turns any nonzero cotangent into +inf."""

    @staticmethod
    def backward(ctx, g):
        return torch.where(g != 0, torch.full_like(g, float("inf")), g)


@pytest.mark.parametrize("bad", [_NaNGradient, _InfGradient], ids=["nan", "inf"])
@pytest.mark.parametrize("kwargs", [{}, {"alpha": 1.0}, {"normalize": False}, {"diagnostics": True}],
                         ids=["dbmtl", "constant_alpha", "no_ema", "diagnostics"])  # fmt: skip
def test_a_non_finite_gradient_with_finite_loss_is_named(bad, kwargs):
    """Without diagnostics DB-MTL's step guards on ‖ĝ_t‖, not ‖J_t‖: an inf row must still be named,
    also where a constant α would give it the weight α/(∞ + ε) = 0 (and without the EMA)."""
    params, loss_fn, batch, _ = toy_problem(num_tasks=2)

    def loss_with_bad_gradient(p, b):
        bias = p["shared", "0", "bias"]
        kink = bad.apply(bias).sum() - bias.sum().detach()  # value 0, non-finite gradient
        return loss_fn(p, b) + torch.stack([kink, torch.zeros_like(kink)])

    kwargs = dict(kwargs)
    diagnostics = kwargs.pop("diagnostics", False)
    step = fmtl.make_step(loss_with_bad_gradient, fmtl.balancers.dbmtl(log_transform=False, **kwargs),
                          fmtl.optim.adam(1e-2), diagnostics=diagnostics)  # fmt: skip
    with pytest.raises(FloatingPointError, match="non-finite gradient in tasks \\['task0'\\]"):
        step(params, step.init(params), batch)


def test_state_of_other_params_is_refused():
    params, loss_fn, batch, _ = toy_problem(num_tasks=3)
    other, _, _, _ = toy_problem(num_tasks=3, width=5)
    step = _step(loss_fn)
    with pytest.raises(ValueError, match="state does not match params"):
        step(params, step.init(other), batch)
    with pytest.raises(TypeError, match="StepState"):
        step(params, (1, 2), batch)


def test_params_without_the_shared_tasks_layout_are_refused():
    _, loss_fn, batch, _ = toy_problem()
    with pytest.raises(ValueError, match="'shared' and 'tasks'"):
        _step(loss_fn).init(TensorDict({"encoder": {"w": torch.zeros(1)}}, []))


def test_compiled_step_equals_eager_never_recompiles_and_guards_nan():
    params, loss_fn, batch, _ = toy_problem(num_tasks=3, dtype=torch.float32)
    step = fmtl.make_step(loss_fn, fmtl.balancers.dbmtl(beta_sigma=0.5), fmtl.optim.adam(lambda k: 1e-2 / k.sqrt()))
    compiled = torch.compile(step, fullgraph=True)
    state = step.init(params)
    pe, se, pc, sc = params, state, params, state
    for k in range(3):
        pe, se, ie = step(pe, se, batch)
        if k == 1:
            torch._dynamo.config.error_on_recompile = True
        try:
            pc, sc, ic = compiled(pc, sc, batch)
        finally:
            torch._dynamo.config.error_on_recompile = False
        assert_trees_close(pc, pe, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ic["losses"], ie["losses"], rtol=1e-5, atol=1e-6)
    bad = batch.clone()
    bad["y"][0, 1] = float("nan")
    torch._dynamo.config.error_on_recompile = True
    try:
        p_bad, s_bad, info = compiled(pc, sc, bad)
    finally:
        torch._dynamo.config.error_on_recompile = False
    assert not bool(info["ok"])
    assert_trees_close(p_bad, pc, rtol=0, atol=0)
    assert s_bad.count.item() == sc.count.item()


def test_huge_but_finite_gradients_are_not_called_non_finite():
    """‖J_t‖² overflows float32 for entries ~1e20; the guard must look at the entries, not the norm."""
    params, loss_fn, batch, _ = toy_problem(num_tasks=2, dtype=torch.float32)
    for diagnostics in (False, True):
        step = fmtl.make_step(lambda p, b: loss_fn(p, b) * 1e20, fmtl.balancers.dbmtl(), fmtl.optim.adam(1e-3),
                              diagnostics=diagnostics)  # fmt: skip
        new, _, info = step(params, step.init(params), batch)
        # without diagnostics the guard is ‖ĝ_t‖ = 0.1‖J_t‖/(ℓ_t + ε), finite here; with them ‖J_t‖ overflows
        assert bool(info["ok"]) and torch.isinf(info["grad_norms"]).all() == diagnostics
        assert all(torch.isfinite(v).all() for v in new.values(True, True))


@pytest.mark.parametrize("method", ["dbmtl", "ew"])
def test_state_of_another_dtype_or_device_is_refused_naming_both(method):
    params, loss_fn, batch, _ = toy_problem(num_tasks=2, dtype=torch.float32)
    step = fmtl.make_step(loss_fn, fmtl.balancers.get(method), fmtl.optim.adam(1e-2))
    state = step.init(params)
    wide = step.init(params.apply(lambda v: v.double()))
    with pytest.raises(ValueError, match="state does not match params: state.* torch.float64 on cpu, "
                                         "step.init\\(params\\) makes .* torch.float32 on cpu"):  # fmt: skip
        step(params, wide, batch)
    meta = torch.utils._pytree.tree_map(lambda x: x.to("meta"), state)
    with pytest.raises(ValueError, match="does not match params: .* on meta, step.init\\(params\\) makes .* on cpu"):
        step(params, meta, batch)
    step(params, state, batch)  # the state of these params is accepted


@pytest.mark.parametrize("method", ["gls", "rlw", "uw", "dwa", "imtl_l", "famo"])
def test_loss_balancer_step_equals_its_update_on_the_full_jacobian(method):
    """The one-backward path (Σ_t w_t ℓ_t) applies the balancer's weights exactly as its ``update``
    does on the T task gradients; EW's weights are all 1, so only other methods can tell."""
    params, loss_fn, batch, _ = toy_problem(num_tasks=3)
    balancer = fmtl.balancers.get(method)
    as_gradient = fmtl.Balancer(balancer.init, balancer.update, None)  # forces the task-Jacobian path
    one, full = (fmtl.make_step(loss_fn, b, fmtl.optim.sgd(0.1)) for b in (balancer, as_gradient))
    pa = pb = params
    sa = sb = one.init(params)
    for _ in range(4):  # DWA's and the learned weights move from 1 after the first steps
        pa, sa, ia = one(pa, sa, batch)
        pb, sb, ib = full(pb, sb, batch)
        torch.testing.assert_close(ia["weights"], ib["weights"], rtol=1e-12, atol=0)
        assert_trees_close(pa, pb, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(ia["weights"], torch.ones(3, dtype=ia["weights"].dtype))

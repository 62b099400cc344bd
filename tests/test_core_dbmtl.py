"""DB-MTL (Algorithm 1) against a LibMTL-faithful loop, and its invariants."""

from __future__ import annotations

import pytest
import torch
from _toy import assert_trees_close, toy_problem
from hypothesis import given, settings
from hypothesis import strategies as st
from tensordict import TensorDict

import fmtl
from fmtl.tree import row_norms


def _params_for(J: torch.Tensor) -> TensorDict:
    T, P = J.shape
    return TensorDict(
        {"shared": {"w": torch.zeros(P, dtype=J.dtype)},
         "tasks": {f"t{i}": {"b": torch.zeros(1, dtype=J.dtype)} for i in range(T)}},
        [],
    )


def _grads(J: torch.Tensor, losses: torch.Tensor, params: TensorDict) -> fmtl.TaskGradients:
    return fmtl.TaskGradients(losses, TensorDict({"w": J}, [J.shape[0]]), params["tasks"].apply(torch.ones_like))


def libmtl_dbmtl_run(encoder, heads, batch, steps, lr, beta, beta_sigma, eps=1e-8):
    """The reference: LibMTL's DB_MTL.backward written as a loop of autograd.grad calls + SGD."""
    shared = list(encoder.parameters())
    names = list(heads)
    buffer = None
    for k in range(1, steps + 1):
        z = encoder(batch["x"])
        losses = [(heads[n](z).squeeze(-1) - batch["y"][:, i]).pow(2).mean() for i, n in enumerate(names)]
        rows, head_grads = [], []
        for i, n in enumerate(names):
            log_loss = torch.log(losses[i] + eps)
            g = torch.autograd.grad(log_loss, shared + list(heads[n].parameters()), retain_graph=True)
            rows.append(torch.cat([x.reshape(-1) for x in g[: len(shared)]]))
            head_grads.append(g[len(shared):])
        batch_grads = torch.stack(rows)
        if buffer is None:
            buffer = torch.zeros_like(batch_grads)
        buffer = batch_grads + (beta / k**beta_sigma) * (buffer - batch_grads)
        norms = buffer.norm(dim=-1)
        alpha = norms.max() / (norms + eps)
        new = sum(alpha[i] * buffer[i] for i in range(len(names)))
        with torch.no_grad():
            offset = 0
            for p in shared:
                p -= lr * new[offset: offset + p.numel()].view_as(p)
                offset += p.numel()
            for i, n in enumerate(names):
                for p, g in zip(heads[n].parameters(), head_grads[i], strict=True):
                    p -= lr * g
    return encoder, heads


@pytest.mark.parametrize("beta,beta_sigma", [(0.9, 0.0), (0.5, 0.5)])
def test_dbmtl_matches_libmtl_loop(beta, beta_sigma):
    params, loss_fn, batch, (encoder, heads) = toy_problem(num_tasks=3)
    step = fmtl.make_step(loss_fn, fmtl.balancers.dbmtl(beta=beta, beta_sigma=beta_sigma), fmtl.optim.sgd(0.05))
    state = step.init(params)
    for _ in range(4):
        params, state, _ = step(params, state, batch)
    encoder, heads = libmtl_dbmtl_run(encoder, heads, batch, steps=4, lr=0.05, beta=beta, beta_sigma=beta_sigma)
    expected, _ = fmtl.functionalize(encoder, heads)
    assert_trees_close(params, expected, rtol=1e-10, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    exponents=st.lists(st.floats(-6, 6), min_size=1, max_size=8),
    seed=st.integers(0, 2**16),
)
def test_every_task_contributes_with_norm_alpha(exponents, seed):
    """After normalization each term α ĝ_t/(‖ĝ_t‖+ε) has norm α, whatever ‖ĝ_t‖ (1e-6..1e6)."""
    T = len(exponents)
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(16, T, generator=gen, dtype=torch.float64))
    mags = torch.tensor([10.0**e for e in exponents], dtype=torch.float64)
    J = Q.T * mags[:, None]  # orthogonal rows, so ‖Σ terms‖² = Σ ‖term‖²
    params = _params_for(J)
    eps = 1e-8
    b = fmtl.balancers.dbmtl(beta=0.0, eps=eps, log_transform=False)
    grad, _, info = b.update(_grads(J, torch.ones(T, dtype=J.dtype), params), b.init(params, T), params)
    alpha = mags.max()
    term_norms = info["weights"] * mags
    # α‖ĝ‖/(‖ĝ‖+ε) = α(1 - ε/(‖ĝ‖+ε)): equal to α up to the ε of Eq. 2
    torch.testing.assert_close(term_norms, alpha * mags / (mags + eps), rtol=1e-12, atol=0)
    assert torch.all((term_norms - alpha).abs() <= alpha * eps / mags + 1e-12 * alpha)
    total = grad["shared", "w"].norm()
    torch.testing.assert_close(total, term_norms.pow(2).sum().sqrt(), rtol=1e-9, atol=0)


@pytest.mark.parametrize("alpha,expected", [("max", 3.0), ("min", 0.5), ("mean", 1.5), ("median", 1.0), (2.0, 2.0)])
def test_alpha_variants(alpha, expected):
    J = torch.diag(torch.tensor([3.0, 1.0, 0.5], dtype=torch.float64))
    params = _params_for(J)
    b = fmtl.balancers.dbmtl(beta=0.0, eps=0.0, alpha=alpha, log_transform=False)
    grad, _, info = b.update(_grads(J, torch.ones(3, dtype=J.dtype), params), b.init(params, 3), params)
    torch.testing.assert_close(grad["shared", "w"], torch.full((3,), expected, dtype=J.dtype))


@settings(max_examples=60, deadline=None)
@given(x=st.floats(1e-8, 1e8), offset=st.floats(-0.5, 0.5))
def test_proposition_1_log_is_min_of_imtl_l_objective(x, offset):
    """Prop. 1: log x = min_s e^s x − s − 1, at s* = −log x; Newton on s reaches it."""
    x = torch.tensor(x, dtype=torch.float64)

    def f(s):
        return torch.exp(s) * x - s - 1

    s_star = -torch.log(x)
    torch.testing.assert_close(f(s_star), torch.log(x), rtol=1e-12, atol=1e-12)
    grid = s_star + torch.linspace(-3, 3, 61, dtype=torch.float64)
    assert torch.all(f(grid) >= f(s_star) - 1e-12)
    # Newton on f'(s) = e^s x − 1 from a start within half a unit of s*: quadratic convergence.
    s = s_star + offset
    for _ in range(6):
        s = s - (torch.exp(s) * x - 1) / (torch.exp(s) * x)
    torch.testing.assert_close(s, s_star, rtol=0, atol=1e-10)
    torch.testing.assert_close(f(s), torch.log(x), rtol=0, atol=1e-10)


def test_imtl_l_at_its_exact_minimizer_has_the_log_gradient():
    """With s = s*, ∇θ (e^s ℓ − s) = ∇ℓ / ℓ = ∇ log ℓ (the reason DB-MTL drops IMTL-L's s_t)."""
    params, loss_fn, batch, _ = toy_problem(num_tasks=2)
    g = fmtl.task_gradients(loss_fn, params, batch)
    s_star = -torch.log(g.losses)
    imtl = g.shared.apply(lambda v: v * torch.exp(s_star).reshape(-1, *([1] * (v.dim() - 1))))
    logged = fmtl.balancers._common.log_transform(g, params, 0.0).shared
    assert_trees_close(imtl, logged, rtol=1e-12, atol=0)


def test_single_task_is_the_ema_of_the_log_gradient():
    params, loss_fn, batch, _ = toy_problem(num_tasks=1)
    b = fmtl.balancers.dbmtl(beta=0.6, eps=1e-8)
    state = b.init(params, 1)
    ema = None
    for k in range(3):
        batch = TensorDict({"x": batch["x"] * (1 + k), "y": batch["y"]}, batch.batch_size)
        g = fmtl.task_gradients(loss_fn, params, batch)
        grad, state, _ = b.update(g, state, params)
        scale = 1 / (g.losses[0] + 1e-8)
        log_g = g.shared.apply(lambda v, s=scale: v * s)
        ema = log_g.apply(lambda v: 0.4 * v) if ema is None else ema.apply(lambda e, v: 0.6 * e + 0.4 * v, log_g)
        norm = row_norms(ema)[0]
        expected = ema.apply(lambda v, n=norm: v[0] * n / (n + 1e-8), batch_size=[])
        assert_trees_close(grad["shared"], expected, rtol=1e-12, atol=1e-15)
        # ψ_t follows ∇ψ log(ℓ+ε): no EMA, no normalization
        assert_trees_close(grad["tasks"], g.tasks.apply(lambda v, s=scale: v * s), rtol=1e-12, atol=0)


@settings(max_examples=15, deadline=None)
@given(perm_seed=st.integers(0, 1000), T=st.integers(2, 6))
def test_permuting_tasks_leaves_the_shared_update_unchanged(perm_seed, T):
    gen = torch.Generator().manual_seed(perm_seed)
    Js = [torch.randn(T, 5, generator=gen, dtype=torch.float64) * 10 ** torch.randn(T, 1, generator=gen)
          for _ in range(3)]
    losses = [torch.rand(T, generator=gen, dtype=torch.float64) + 0.1 for _ in range(3)]
    perm = torch.randperm(T, generator=gen)
    params = _params_for(Js[0])
    b = fmtl.balancers.dbmtl(beta=0.7)
    s1, s2 = b.init(params, T), b.init(params, T)
    for J, l in zip(Js, losses, strict=True):
        g1, s1, _ = b.update(_grads(J, l, params), s1, params)
        g2, s2, _ = b.update(_grads(J[perm], l[perm], params), s2, params)
        torch.testing.assert_close(g1["shared", "w"], g2["shared", "w"], rtol=1e-12, atol=1e-14)


def test_ablations_of_table_5():
    """Both components off is EW on the raw losses; log only is EW on log losses."""
    params, loss_fn, batch, _ = toy_problem(num_tasks=3)
    g = fmtl.task_gradients(loss_fn, params, batch)
    ew = fmtl.balancers.get("ew")
    off = fmtl.balancers.dbmtl(log_transform=False, normalize=False)
    a, _, _ = off.update(g, off.init(params, 3), params)
    b, _, _ = ew.update(g, ew.init(params, 3), params)
    assert_trees_close(a, b, rtol=1e-12, atol=0)
    log_only = fmtl.balancers.dbmtl(normalize=False)
    c, _, _ = log_only.update(g, log_only.init(params, 3), params)
    scale = 1 / (g.losses + 1e-8)
    expected = g.shared.apply(lambda v: torch.tensordot(scale, v, dims=1), batch_size=[])
    assert_trees_close(c["shared"], expected, rtol=1e-12, atol=0)


def test_bad_hyperparameters_are_refused():
    with pytest.raises(ValueError, match="alpha"):
        fmtl.balancers.dbmtl(alpha="largest")
    with pytest.raises(ValueError, match="beta"):
        fmtl.balancers.dbmtl(beta=1.5)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), T=st.integers(1, 5), beta=st.floats(0.0, 0.99), sigma=st.floats(0.0, 1.0),
       log=st.booleans())  # fmt: skip
def test_scaled_rows_hold_the_ema_of_algorithm_1(seed, T, beta, sigma, log):
    """ĝ = s ⊙ u after k steps equals β_k ĝ + (1−β_k) g_k written out, whatever the loss scales."""
    gen = torch.Generator().manual_seed(seed)
    params = _params_for(torch.zeros(T, 7, dtype=torch.float64))
    b = fmtl.balancers.dbmtl(beta=beta, beta_sigma=sigma, log_transform=log)
    state, ema = b.init(params, T), torch.zeros(T, 7, dtype=torch.float64)
    for k in range(1, 5):
        J = torch.randn(T, 7, generator=gen, dtype=torch.float64) * 10 ** (3 * torch.randn(T, 1, generator=gen))
        losses = 10 ** (3 * torch.rand(T, generator=gen, dtype=torch.float64) - 1)
        grad, state, info = b.update(_grads(J, losses, params), state, params)
        beta_k = beta / k**sigma
        g = J / (losses[:, None] + 1e-8) if log else J
        ema = beta_k * ema + (1 - beta_k) * g
        torch.testing.assert_close(state.ema["w"], ema, rtol=1e-12, atol=0)
        norms = ema.norm(dim=1)
        torch.testing.assert_close(grad["shared", "w"], (norms.max() / (norms + 1e-8)) @ ema, rtol=1e-11, atol=0)


def test_a_negative_loss_under_the_log_is_not_ok_when_compiled():
    params, loss_fn, batch, _ = toy_problem(num_tasks=2, dtype=torch.float32)
    step = fmtl.make_step(lambda p, b: loss_fn(p, b) * torch.tensor([1.0, -1.0]), fmtl.balancers.dbmtl(),
                          fmtl.optim.sgd(0.1))  # fmt: skip
    state = step.init(params)
    with pytest.raises(ValueError, match="non-negative"):
        step(params, state, batch)
    new, new_state, info = torch.compile(lambda p, s, b: step(p, s, b), fullgraph=True)(params, state, batch)
    assert not bool(info["ok"])
    assert_trees_close(new, params, rtol=0, atol=0)
    assert_trees_close(new_state.balancer.rows, state.balancer.rows, rtol=0, atol=0)

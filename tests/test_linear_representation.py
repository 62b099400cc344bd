"""Factored representation gradients of linear heads (``fmtl.linear_representation``) against Z itself."""

from __future__ import annotations

import pytest
import torch
from _toy import assert_trees_close
from hypothesis import given, settings
from hypothesis import strategies as st
from tensordict import TensorDict
from test_representation import _reference, _update

import fmtl
import fmtl.step
from fmtl.heads import LinearHeads
from fmtl.linear_representation import LinearRepresentation, linear_representation
from fmtl.params import flat_dict

GRAMIAN = [n for n in fmtl.balancers.names() if fmtl.balancers.get(n).from_gramian is not None]


def _problem(num_tasks: int = 3, *, widths=None, bias: bool = True, seq: int | None = None, dtype=torch.float64,
             seed: int = 0, batch: int = 8):
    """Encoder Linear-Tanh-Linear-Tanh, linear heads of ``widths`` (default 1, 2, 1, …), losses of
    different kinds and scales; ``seq``: z has a second leading axis (a [B, seq, D] representation)."""
    torch.manual_seed(seed)
    widths = widths or [1 + t % 2 for t in range(num_tasks)]
    num_tasks = len(widths)
    encoder = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 5), torch.nn.Tanh())
    heads = {f"t{t}": torch.nn.Linear(5, o, bias=bias) for t, o in enumerate(widths)}
    params, _ = fmtl.functionalize(encoder.to(dtype), {k: h.to(dtype) for k, h in heads.items()})

    def encode(shared: TensorDict, b: TensorDict) -> torch.Tensor:
        return torch.func.functional_call(encoder, flat_dict(shared), (b["x"],))

    def criterion(out: dict[str, torch.Tensor], b: TensorDict) -> torch.Tensor:
        losses = []
        for t, k in enumerate(out):
            err = out[k] - b["y"][..., t, : out[k].shape[-1]] * 2.0**t
            losses.append(err.pow(2).mean() if t % 2 == 0 else err.abs().mean() + 0.1 * err.pow(4).mean())
        return torch.stack(losses)

    gen = torch.Generator().manual_seed(seed + 1)
    lead = (batch,) if seq is None else (batch, seq)
    b = TensorDict({"x": torch.randn(*lead, 4, generator=gen, dtype=dtype),
                    "y": torch.randn(*lead, num_tasks, max(widths), generator=gen, dtype=dtype)}, [batch])  # fmt: skip
    return params, fmtl.TwoStageLoss(encode, LinearHeads(criterion)), b


PROBLEMS = {"widths 1-2": {}, "scalar": {"widths": [1, 1, 1, 1]}, "no bias": {"bias": False},
            "sequence z": {"seq": 3}}  # fmt: skip


def test_the_gramian_methods_have_a_gramian_form():
    assert {"mgda", "pcgrad", "cagrad", "upgrad", "imtl_g", "aligned_mtl", "nash_mtl", "gradvac"} <= set(GRAMIAN)
    assert fmtl.balancers.get("graddrop").from_gramian is None and fmtl.balancers.get("dbmtl").from_gramian is None


@pytest.mark.parametrize("problem", PROBLEMS.values(), ids=PROBLEMS.keys())
@pytest.mark.parametrize("name", GRAMIAN)
def test_factored_step_matches_the_autograd_reference(name, problem, monkeypatch):
    """Every Gramian method on the factored G_z equals the method on Z (T autograd calls), and Z is never formed."""
    params, loss, batch = _problem(**problem)
    balancer = fmtl.balancers.get(name)
    expected, ref_info, ref_grads = _reference(loss, balancer, params, batch)
    monkeypatch.setattr(fmtl.step, "representation_gradients", _never)
    monkeypatch.setattr(LinearRepresentation, "rows", _never)
    g, info = _update(fmtl.make_step(loss, balancer, fmtl.optim.sgd(1.0), rep_grad=True), params, batch)
    assert_trees_close(g, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(info["weights"], ref_info["weights"], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(info["grad_norms"], fmtl.tree.row_norms(ref_grads.shared), rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["pcgrad", "mgda", "imtl_g", "upgrad", "gradnorm"])
def test_the_log_transform_is_folded_into_the_weights(name, monkeypatch):
    params, loss, batch = _problem()
    balancer = fmtl.balancers.get(name, log_transform=True)
    expected, ref_info, _ = _reference(loss, balancer, params, batch)
    monkeypatch.setattr(fmtl.step, "representation_gradients", _never)
    g, info = _update(fmtl.make_step(loss, balancer, fmtl.optim.sgd(1.0), rep_grad=True), params, batch)
    assert_trees_close(g, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(info["weights"], ref_info["weights"], rtol=1e-9, atol=1e-12)


def test_with_diagnostics_the_cosines_are_those_of_z():
    params, loss, batch = _problem()
    _, _, ref = _reference(loss, fmtl.balancers.get("ew"), params, batch)
    Z = ref.shared["z"].reshape(3, -1)
    n = Z.norm(dim=1)
    step = fmtl.make_step(loss, fmtl.balancers.get("mgda"), fmtl.optim.sgd(1.0), rep_grad=True, diagnostics=True)
    _, info = _update(step, params, batch)
    torch.testing.assert_close(info["cosine"], Z @ Z.T / (n[:, None] * n[None, :]), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["graddrop", "mgda"])
def test_methods_that_read_z_or_an_explicit_strategy_take_the_general_path(name):
    """GradDrop has no Gramian form, and a strategy asks for Z: both form Z, and still match the reference."""
    params, loss, batch = _problem()
    balancer = fmtl.balancers.get(name)
    strategy = "jacrev" if name == "mgda" else "auto"
    calls = []
    general = fmtl.step.representation_gradients

    def spy(*args, **kwargs):
        calls.append(1)
        return general(*args, **kwargs)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(fmtl.step, "representation_gradients", spy)
        step = fmtl.make_step(loss, balancer, fmtl.optim.sgd(1.0), rep_grad=True, strategy=strategy)
        g, _ = _update(step, params, batch)
    assert calls
    expected, _, _ = _reference(loss, balancer, params, batch)
    assert_trees_close(g, expected, rtol=1e-9, atol=1e-12)


def test_compiled_factored_step_matches_eager():
    """Under torch.compile the factors come from torch.func (vjp, grad): the same step."""
    params, loss, batch = _problem(dtype=torch.float32)
    step = fmtl.make_step(loss, fmtl.balancers.get("pcgrad"), fmtl.optim.adam(1e-2), rep_grad=True)
    state = step.init(params)
    eager = step(params, state, batch)
    compiled = torch.compile(lambda p, s, b: step(p, s, b), fullgraph=True)(params, state, batch)
    assert_trees_close(compiled[0], eager[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled[2]["weights"], eager[2]["weights"], rtol=1e-5, atol=1e-6)
    assert bool(compiled[2]["ok"])


@settings(max_examples=25, deadline=None)
@given(widths=st.lists(st.integers(1, 3), min_size=1, max_size=4), batch=st.integers(1, 5), seq=st.none() | st.just(2),
       bias=st.booleans(), seed=st.integers(0, 2**16))  # fmt: skip
def test_the_factors_give_z_its_gramian_and_the_heads_their_gradients(widths, batch, seq, bias, seed):
    """Z = rows() is ∇z ℓ_t, G = Z Zᵀ, ∇ψ_t ℓ_t, Σ_t w_t Z_t, for any head widths, batch and z shape."""
    params, loss, b = _problem(widths=widths, bias=bias, seq=seq, seed=seed, batch=batch)
    rep, pullback = linear_representation(loss, params, b)
    _, _, ref = _reference(loss, fmtl.balancers.get("ew"), params, b)
    Z = ref.shared["z"]
    torch.testing.assert_close(rep.rows(), Z, rtol=1e-12, atol=1e-14)
    flat = Z.reshape(len(widths), -1)
    torch.testing.assert_close(rep.gramian, flat @ flat.T, rtol=1e-10, atol=1e-12)
    assert_trees_close(rep.tasks, ref.tasks, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(rep.losses, ref.losses, rtol=0, atol=0)
    w = torch.linspace(-1.0, 2.0, len(widths), dtype=Z.dtype)
    torch.testing.assert_close(rep.combine(w), torch.tensordot(w, Z, dims=1), rtol=1e-10, atol=1e-12)
    z = loss.encode(params["shared"], b)
    theta = torch.func.vjp(lambda s: loss.encode(s, b), params["shared"])[1](rep.combine(w))[0]
    assert_trees_close(pullback(rep.combine(w)), theta, rtol=1e-10, atol=1e-12)
    assert z.shape == rep.z.shape


def test_a_non_finite_loss_gradient_names_the_task():
    params, loss, batch = _problem()
    batch["y"][0, 1, 0] = float("inf")
    step = fmtl.make_step(loss, fmtl.balancers.get("mgda"), fmtl.optim.sgd(1.0), rep_grad=True)
    with pytest.raises(FloatingPointError, match="t1"):
        step(params, step.init(params), batch)


def test_bad_linear_heads_are_refused():
    params, loss, batch = _problem()
    with pytest.raises(ValueError, match="LinearHeads take z itself"):
        fmtl.make_step(loss._replace(task_axis=True), fmtl.balancers.get("mgda"), fmtl.optim.sgd(1.0), rep_grad=True)
    with pytest.raises(TypeError, match="LinearHeads"):
        linear_representation(fmtl.TwoStageLoss(loss.encode, lambda t, z, b: z.sum(-1)), params, batch)
    extra = params.clone()
    extra["tasks", "t0", "scale"] = torch.ones(1, dtype=torch.float64)
    with pytest.raises(ValueError, match="head 't0' holds parameters other than weight and bias"):
        linear_representation(loss, extra, batch)


def _never(*args, **kwargs):
    raise AssertionError("the factored path must not form Z or call the general representation path")

"""Representation gradients (``make_step(..., rep_grad=True)``) against a plain autograd reference."""

from __future__ import annotations

import pytest
import torch
from _toy import assert_trees_close
from tensordict import TensorDict

import fmtl
from fmtl import strategy as auto
from fmtl.balancers.mgda import mgda_weights
from fmtl.params import flat_dict
from fmtl.representation import _task_axis_gradients, check_support, representation_gradients

THETA_SHAPED = {"dbmtl", "moco", "metabalance"}
GRAMIAN = ("mgda", "pcgrad", "cagrad", "upgrad", "imtl_g", "aligned_mtl", "nash_mtl", "gradvac", "gradnorm", "imtl")


def _problem(num_tasks: int = 3, dtype=torch.float64, seed: int = 0, batch: int = 8, task_axis: bool = False,
             uniform: bool = False):
    """Encoder Linear-Tanh-Linear, linear heads, losses of different kinds and scales, as a TwoStageLoss.

    ``task_axis``: the heads take one copy of z per task (``linear_heads(..., task_axis=True)``);
    ``uniform``: every head has width 2.
    """
    torch.manual_seed(seed)
    encoder = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 5)).to(dtype)
    heads = {f"t{t}": torch.nn.Linear(5, 2 if uniform else 1 + t % 2).to(dtype) for t in range(num_tasks)}
    params, _ = fmtl.functionalize(encoder, heads)

    def encode(shared: TensorDict, b: TensorDict) -> torch.Tensor:
        return torch.func.functional_call(encoder, flat_dict(shared), (b["x"],))

    def head_losses(tasks: TensorDict, z: torch.Tensor, b: TensorDict) -> torch.Tensor:
        out = fmtl.heads.linear_heads(tasks, torch.tanh(z), task_axis=task_axis and z.dim() == 3)
        losses = []
        for t, k in enumerate(out):
            err = out[k] - b["y"][:, t, : out[k].shape[-1]] * 10.0**t
            losses.append(err.pow(2).mean() if t % 2 == 0 else err.abs().mean() + 0.1 * err.pow(4).mean())
        return torch.stack(losses)

    gen = torch.Generator().manual_seed(seed + 1)
    b = TensorDict({"x": torch.randn(batch, 4, generator=gen, dtype=dtype),
                    "y": torch.randn(batch, num_tasks, 2, generator=gen, dtype=dtype)}, [batch])  # fmt: skip
    return params, fmtl.TwoStageLoss(encode, head_losses, task_axis), b


#: the heads of _problem: concatenated, per task (widths 1 and 2), per task (width 2 each)
HEADS = [{}, {"task_axis": True}, {"task_axis": True, "uniform": True}]


def _reference(loss: fmtl.TwoStageLoss, balancer: fmtl.Balancer, params: TensorDict, batch: TensorDict):
    """One forward, T ``autograd.grad`` calls w.r.t. z and ψ_t, the balancer on them, z.backward(g̃_z)."""
    leaves = params.apply(lambda v: v.detach().clone().requires_grad_())
    shared = list(leaves["shared"].values(True, True))
    z = loss.encode(leaves["shared"], batch)
    z_leaf = z.detach().requires_grad_()
    # task-axis heads get the copies (what rep_grad feeds them): ∇z sums the copies' gradients
    z_in = fmtl.representation.per_task(z_leaf, len(leaves["tasks"].keys())) if loss.task_axis else z_leaf
    losses = loss.heads(leaves["tasks"], z_in, batch)
    names = list(leaves["tasks"].keys())
    rows, heads = [], {}
    for t, n in enumerate(names):
        head = list(leaves["tasks", n].values(True, True))
        g = torch.autograd.grad(losses[t], [z_leaf, *head], retain_graph=True)
        rows.append(g[0])
        heads[n] = TensorDict(dict(zip(leaves["tasks", n].keys(True, True), g[1:], strict=True)), [])
    rows = TensorDict({"z": torch.stack(rows)}, [len(names)])
    grads = fmtl.TaskGradients(losses.detach(), rows, TensorDict(heads, []))
    z_params = TensorDict({"shared": {"z": z.detach()}, "tasks": params["tasks"]}, [])
    out, _, info = balancer.update(grads, balancer.init(params, len(names)), z_params)
    theta = torch.autograd.grad(z, shared, grad_outputs=out["shared", "z"])
    keys = list(leaves["shared"].keys(True, True))
    return TensorDict({"shared": dict(zip(keys, theta, strict=True)), "tasks": out["tasks"]}, []), info, grads


def _update(step: fmtl.Step, params: TensorDict, batch: TensorDict):
    """The gradient the step applied (SGD, lr = 1: new = params − g) and its info."""
    new, _, info = step(params, step.init(params), batch)
    return params.apply(lambda p, q: p - q, new), info


def _supported() -> list[str]:
    params, _, _ = _problem()
    out = []
    for name in fmtl.balancers.names():
        b = fmtl.balancers.get(name)
        if b.loss_weights is None:
            try:
                check_support(b, params, 3)
            except ValueError:
                continue
            out.append(name)
    return out


def test_the_supported_methods_are_derived_from_their_state():
    supported = set(_supported())
    gradient = {n for n in fmtl.balancers.names() if fmtl.balancers.get(n).loss_weights is None}
    assert THETA_SHAPED <= gradient - supported
    assert supported >= {*GRAMIAN, "graddrop"}


@pytest.mark.parametrize("heads", HEADS, ids=["concatenated", "task_axis", "task_axis_width2"])
@pytest.mark.parametrize("name", _supported())
def test_rep_grad_step_matches_the_autograd_reference(name, heads):
    params, loss, batch = _problem(**heads)
    balancer = fmtl.balancers.get(name)
    step = fmtl.make_step(loss, balancer, fmtl.optim.sgd(1.0), rep_grad=True)
    g, info = _update(step, params, batch)
    expected, ref_info, ref_grads = _reference(loss, balancer, params, batch)
    assert_trees_close(g, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(info["weights"], ref_info["weights"], rtol=1e-9, atol=1e-12)
    # the step reports the norms of ∇z ℓ_t
    torch.testing.assert_close(info["grad_norms"], fmtl.tree.row_norms(ref_grads.shared))


@pytest.mark.parametrize("name", ["mgda", "pcgrad", "cagrad", "upgrad", "imtl_g", "aligned_mtl"])
def test_a_gramian_method_backpropagates_the_weighted_losses_once(name):
    """For a weighting, ∇θ = ∇θ Σ_t w_t ℓ_t with w = info["weights"] (one backward of the weighted sum)."""
    params, loss, batch = _problem()
    step = fmtl.make_step(loss, fmtl.balancers.get(name), fmtl.optim.sgd(1.0), rep_grad=True)
    g, info = _update(step, params, batch)
    w = info["weights"].detach()
    expected = torch.func.grad(lambda p: (w * loss(p, batch)).sum())(params)
    assert_trees_close(g["shared"], expected["shared"], rtol=1e-9, atol=1e-12)


def test_mgda_ub_takes_the_min_norm_point_of_the_representation_gramian():
    params, loss, batch = _problem()
    step = fmtl.make_step(loss, fmtl.balancers.get("mgda"), fmtl.optim.sgd(1.0), rep_grad=True)
    _, info = _update(step, params, batch)
    _, _, ref_grads = _reference(loss, fmtl.balancers.get("ew"), params, batch)
    Z = ref_grads.shared["z"].reshape(3, -1)  # batch × features, flattened: MGDA-UB's inner product
    G = Z @ Z.T
    w = info["weights"]
    torch.testing.assert_close(w, mgda_weights(G, ref_grads.losses), rtol=1e-9, atol=1e-12)
    # optimality on the simplex: (G w)_t ≥ wᵀ G w, with equality where w_t > 0 (to the solver's
    # accuracy, ~1e-5 relative here)
    Gw, q = G @ w, w @ G @ w
    assert torch.all(Gw >= q * (1 - 1e-6))
    assert torch.allclose(Gw[w > 1e-2], q.expand(int((w > 1e-2).sum())), rtol=1e-4)
    assert torch.isclose(w.sum(), torch.tensor(1.0, dtype=w.dtype)) and torch.all(w >= 0)


@pytest.mark.parametrize("strategy", ["jacrev", "vmap_grad", "loop", "auto"])
def test_every_strategy_gives_the_same_rep_grad_step(strategy):
    auto.clear()
    params, loss, batch = _problem()
    b = fmtl.balancers.get("upgrad")
    ref, _ = _update(fmtl.make_step(loss, b, fmtl.optim.sgd(1.0), rep_grad=True, strategy="jacrev"), params, batch)
    got, _ = _update(fmtl.make_step(loss, b, fmtl.optim.sgd(1.0), rep_grad=True, strategy=strategy), params, batch)
    assert_trees_close(got, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("task_axis", [False, True])
def test_compiled_rep_grad_step_matches_eager(task_axis):
    params, loss, batch = _problem(dtype=torch.float32, task_axis=task_axis, uniform=task_axis)
    step = fmtl.make_step(loss, fmtl.balancers.get("pcgrad"), fmtl.optim.adam(1e-2), rep_grad=True)
    state = step.init(params)
    eager = step(params, state, batch)
    compiled = torch.compile(lambda p, s, b: step(p, s, b), fullgraph=True)(params, state, batch)
    assert_trees_close(compiled[0], eager[0], rtol=1e-5, atol=1e-6)
    assert bool(compiled[2]["ok"])


@pytest.mark.parametrize("uniform", [False, True])
def test_task_axis_heads_give_the_same_step_as_concatenated_heads(uniform):
    """The same losses written both ways: the one-backward Z (eager and under torch.func) is the T-backward Z."""
    params, plain, batch = _problem(uniform=uniform)
    _, per_task, _ = _problem(task_axis=True, uniform=uniform)
    torch.testing.assert_close(per_task(params, batch), plain(params, batch), rtol=1e-14, atol=0)
    b = fmtl.balancers.get("upgrad")
    ref, _ = _update(fmtl.make_step(plain, b, fmtl.optim.sgd(1.0), rep_grad=True), params, batch)
    got, _ = _update(fmtl.make_step(per_task, b, fmtl.optim.sgd(1.0), rep_grad=True), params, batch)
    assert_trees_close(got, ref, rtol=1e-10, atol=1e-12)
    eager, _, _ = representation_gradients(per_task, params, batch)
    func = _task_axis_gradients(per_task, TensorDict({"shared": {"z": plain.encode(params["shared"], batch)},
                                                      "tasks": params["tasks"]}, []), batch)
    assert_trees_close(func.shared, eager.shared, rtol=1e-12, atol=1e-14)
    assert_trees_close(func.tasks, eager.tasks, rtol=1e-12, atol=1e-14)


def test_task_axis_heads_refuse_a_strategy():
    _, loss, _ = _problem(task_axis=True)
    with pytest.raises(ValueError, match="task-axis heads .* strategy='loop'"):
        fmtl.make_step(loss, fmtl.balancers.get("mgda"), fmtl.optim.sgd(1.0), rep_grad=True, strategy="loop")
    with pytest.raises(ValueError, match="task-axis heads .* chunk_size"):
        fmtl.make_step(loss, fmtl.balancers.get("mgda"), fmtl.optim.sgd(1.0), rep_grad=True, chunk_size=2)
    fmtl.make_step(loss, fmtl.balancers.get("mgda"), fmtl.optim.sgd(1.0), strategy="loop")  # θ-gradients: fine


def test_a_representation_given_as_a_tensordict():
    params, loss, batch = _problem()

    def encode(shared, b):
        z = loss.encode(shared, b)
        return TensorDict({"left": z[:, :2], "right": z[:, 2:]}, [z.shape[0]])

    def heads(tasks, z, b):
        return loss.heads(tasks, torch.cat([z["left"], z["right"]], -1), b)

    two = fmtl.TwoStageLoss(encode, heads)
    b = fmtl.balancers.get("mgda")
    got, _ = _update(fmtl.make_step(two, b, fmtl.optim.sgd(1.0), rep_grad=True), params, batch)
    ref, _ = _update(fmtl.make_step(loss, b, fmtl.optim.sgd(1.0), rep_grad=True), params, batch)
    assert_trees_close(got, ref, rtol=1e-10, atol=1e-12)


def test_loss_balancers_are_unchanged_by_rep_grad():
    params, loss, batch = _problem()
    plain, _ = _update(fmtl.make_step(loss, fmtl.balancers.get("uw"), fmtl.optim.sgd(1.0)), params, batch)
    rep, _ = _update(fmtl.make_step(loss, fmtl.balancers.get("uw"), fmtl.optim.sgd(1.0), rep_grad=True), params, batch)
    assert_trees_close(rep, plain, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(THETA_SHAPED))
def test_methods_with_theta_shaped_state_are_refused_at_init(name):
    params, loss, _ = _problem()
    step = fmtl.make_step(loss, fmtl.balancers.get(name), fmtl.optim.sgd(1.0), rep_grad=True)
    with pytest.raises(ValueError, match="DB-MTL does not run on representation" if name == "dbmtl" else "shaped like"):
        step.init(params)


def test_bad_rep_grad_setups_are_refused():
    params, loss, _ = _problem()
    with pytest.raises(TypeError, match="TwoStageLoss"):
        fmtl.make_step(lambda p, b: loss(p, b), fmtl.balancers.get("mgda"), fmtl.optim.sgd(1.0), rep_grad=True)
    with pytest.raises(ValueError, match="reduce"):
        fmtl.make_step(loss, fmtl.balancers.get("mgda"), fmtl.optim.sgd(1.0), rep_grad=True, reduce=lambda g: g)


def test_auto_keys_two_stage_losses_by_what_they_hold():
    params, loss, batch = _problem()
    other = fmtl.TwoStageLoss(lambda s, b: loss.encode(s, b), loss.heads)
    same = fmtl.TwoStageLoss(loss.encode, loss.heads)
    assert auto.cache_key(loss, params, batch) == auto.cache_key(same, params, batch)
    assert auto.cache_key(loss, params, batch) != auto.cache_key(other, params, batch)


def test_an_encoder_without_parameters_gives_the_heads_their_gradients():
    """θ empty (z a function of the batch alone): the eager path and the torch.func path agree."""
    p = TensorDict({"shared": {}, "tasks": {"a": {"v": torch.tensor(3.0)}, "b": {"v": torch.tensor(5.0)}}}, [])
    loss = fmtl.TwoStageLoss(lambda s, b: 2.0 * b,
                             lambda t, z, b: torch.stack([(t["a", "v"] * z).sum(), (t["b", "v"] * z).square().sum()]))
    b = fmtl.balancers.get("mgda")
    eager, _ = _update(fmtl.make_step(loss, b, fmtl.optim.sgd(1.0), rep_grad=True), p, torch.ones(3))
    func, _ = _update(fmtl.make_step(loss, b, fmtl.optim.sgd(1.0), rep_grad=True, strategy="jacrev"), p, torch.ones(3))
    assert_trees_close(eager, func, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(eager["tasks", "a", "v"], torch.tensor(6.0))  # ∇v Σ_b v z_b = Σ_b z_b, ψ unweighted

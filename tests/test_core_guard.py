"""The step's non-finite guard, one poisoned entry at a time, on a model with many leaves.

A single NaN or ±inf is planted at every leaf position the guard must see — each task's loss,
every leaf of every row of the shared Jacobian J, every leaf of every head gradient ∇ψ_t ℓ_t
and every leaf of the final update — on a model with several shared tensors of different shapes
and several heads of several leaves each. Eagerly the step raises ``FloatingPointError`` naming
the task (or the parameter, for the update); compiled, it returns ``ok=False`` with params and
state bitwise unchanged. The poison is planted by the ``reduce`` hook (where a cross-process
mean would bring another rank's NaN) and by a wrapped optimizer; its position lives in tensors
that the test rewrites in place, so the compiled step is compiled once for all positions.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import pytest
import torch
from tensordict import TensorDict
from torch.utils import _pytree as pytree

import fmtl

TASKS = ("depth", "seg", "normal")


class Poison(NamedTuple):
    """Masks of the entries to poison (all False: a clean step) and the value planted."""

    losses: torch.Tensor
    shared: TensorDict
    tasks: TensorDict
    update: TensorDict
    value: torch.Tensor

    def clear(self) -> None:
        for m in pytree.tree_leaves((self.losses, self.shared, self.tasks, self.update)):
            m.zero_()

    def plant(self, where: str, key: tuple, row: int | None, value: float) -> None:
        self.clear()
        self.value.fill_(value)
        mask = self.losses if where == "losses" else getattr(self, where)[key]
        (mask[row] if row is not None else mask).view(-1)[-1] = True


def _model(dtype=torch.float64):
    """θ: 4 leaves of 4 shapes; ψ_t: 4 leaves per task. Each task's loss is a squared error."""
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 5), torch.nn.Tanh())
    heads = {t: torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1)) for t in TASKS}
    params, apply = fmtl.functionalize(encoder.to(dtype), {t: h.to(dtype) for t, h in heads.items()})
    gen = torch.Generator().manual_seed(1)
    batch = TensorDict({"x": torch.randn(8, 4, generator=gen, dtype=dtype),
                        "y": torch.rand(8, len(TASKS), generator=gen, dtype=dtype) + 1}, [8])  # fmt: skip

    def loss_fn(p, b):
        out = apply(p, b["x"])
        return torch.stack([(out[t].squeeze(-1) - b["y"][:, i]).pow(2).mean() for i, t in enumerate(out)])

    return params, loss_fn, batch


def _poisoned_step(balancer, loss_fn, params):
    """A step whose losses, gradients and update get ``poison.value`` where its masks are set."""
    T = len(TASKS)
    poison = Poison(
        torch.zeros(T, dtype=torch.bool),
        params["shared"].apply(lambda v: torch.zeros((T, *v.shape), dtype=torch.bool), batch_size=[T]),
        params["tasks"].apply(lambda v: torch.zeros(v.shape, dtype=torch.bool)),
        params.apply(lambda v: torch.zeros(v.shape, dtype=torch.bool)),
        torch.zeros((), dtype=next(iter(params.values(True, True))).dtype),
    )

    def spoil(td: TensorDict, masks: TensorDict) -> TensorDict:
        return td.apply(lambda v, m: torch.where(m, poison.value, v), masks)

    def reduce(x):
        if isinstance(x, fmtl.TaskGradients):  # gradient balancers: the raw task gradients
            return fmtl.TaskGradients(torch.where(poison.losses, poison.value, x.losses),
                                      spoil(x.shared, poison.shared), spoil(x.tasks, poison.tasks))  # fmt: skip
        if isinstance(x, torch.Tensor):  # loss balancers: the losses, then Jᵀw
            return torch.where(poison.losses, poison.value, x)
        return x

    adam = fmtl.optim.adam(1e-2)

    def update(grads, state, p):
        updates, state = adam.update(grads, state, p)
        return spoil(updates, poison.update), state

    optimizer = fmtl.optim.Optimizer(adam.init, update)
    return fmtl.make_step(loss_fn, balancer, optimizer, reduce=reduce, strategy="jacrev"), poison


def _positions(params) -> list[tuple[str, tuple, int | None, str]]:
    """(where, leaf key, task row, the name the error must give) for every leaf position."""
    out = [("losses", (), t, name) for t, name in enumerate(TASKS)]
    for key in params["shared"].keys(True, True):
        out += [("shared", key, t, name) for t, name in enumerate(TASKS)]
    out += [("tasks", key, None, key[0]) for key in params["tasks"].keys(True, True)]
    out += [("update", key, None, ".".join(key)) for key in params.keys(True, True)]
    return out


PARAMS, LOSS_FN, BATCH = _model()
POSITIONS = _positions(PARAMS)


def test_the_model_has_many_leaves_of_many_shapes():
    shapes = {tuple(v.shape) for v in PARAMS["shared"].values(True, True)}
    assert len(shapes) == 4 and all(len(list(PARAMS["tasks", t].keys(True, True))) == 4 for t in TASKS)
    assert len(POSITIONS) == 3 + 4 * 3 + 4 * 3 + 16


def _leaves(tree) -> list[torch.Tensor]:
    return pytree.tree_leaves(tree)


def _bitwise_equal(a, b) -> bool:
    la, lb = _leaves(a), _leaves(b)
    return len(la) == len(lb) and all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(la, lb, strict=True))


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("method,value", [("dbmtl", NAN), ("dbmtl", INF), ("dbmtl", -INF), ("mgda", NAN),
                                          ("graddrop", INF), ("ew", -INF)])  # fmt: skip
def test_eager_step_names_every_poisoned_position(method, value):
    balancer = fmtl.balancers.get(method)
    step, poison = _poisoned_step(balancer, LOSS_FN, PARAMS)
    state = step.init(PARAMS)
    params0, state0 = PARAMS.clone(), pytree.tree_map(torch.clone, state)
    poison.clear()
    _, _, info = step(PARAMS, state, BATCH)  # the clean step is fine
    assert bool(info["ok"])
    loss_only = balancer.loss_weights is not None
    for where, key, row, name in POSITIONS:
        if loss_only and where in ("shared", "tasks"):
            continue  # a loss balancer computes no task gradients: its Jᵀw is the update's business
        poison.plant(where, key, row, value)
        with pytest.raises(FloatingPointError) as err:
            step(PARAMS, state, BATCH)
        named = f"'{name}'" if where != "update" else name
        assert named in str(err.value) and "left unchanged" in str(err.value), (where, key, row, str(err.value))
        assert _bitwise_equal(PARAMS, params0) and _bitwise_equal(state, state0), (where, key, row)


@pytest.mark.parametrize(
    "method",
    [pytest.param(m, marks=pytest.mark.skipif(m != "dbmtl" and not os.environ.get("FMTL_SLOW"), reason="FMTL_SLOW=1"))
     for m in ("dbmtl", "ew")],  # fmt: skip
)
def test_compiled_step_refuses_every_poisoned_position_and_changes_nothing(method):
    params = PARAMS.apply(lambda v: v.to(torch.float32))
    balancer = fmtl.balancers.get(method)
    step, poison = _poisoned_step(balancer, LOSS_FN, params)
    batch = BATCH.apply(lambda v: v.to(torch.float32))
    compiled = torch.compile(step, fullgraph=True)
    poison.clear()
    params, state, info = compiled(params, step.init(params), batch)  # one clean step: a non-trivial state
    assert bool(info["ok"])
    loss_only = balancer.loss_weights is not None
    torch._dynamo.config.error_on_recompile = True
    try:
        for i, (where, key, row, _) in enumerate(POSITIONS):
            if loss_only and where in ("shared", "tasks"):
                continue
            poison.plant(where, key, row, (float("nan"), float("inf"), -float("inf"))[i % 3])
            new_params, new_state, info = compiled(params, state, batch)
            assert not bool(info["ok"]), (where, key, row)
            assert _bitwise_equal(new_params, params) and _bitwise_equal(new_state, state), (where, key, row)
        for t in range(len(TASKS)):  # a negative loss has no log: DB-MTL's update is refused too
            poison.plant("losses", (), t, -0.5)
            new_params, new_state, info = compiled(params, state, batch)
            assert not bool(info["ok"]) and _bitwise_equal(new_params, params) and _bitwise_equal(new_state, state)
    finally:
        torch._dynamo.config.error_on_recompile = False


def _log_variants() -> list[tuple[str, dict]]:
    out = [("dbmtl", {}), ("dbmtl", {"normalize": False})]
    for name in fmtl.balancers.names():
        try:
            fmtl.balancers.get(name, log_transform=True)
        except ValueError:  # no log_transform hyperparameter
            continue
        if name == "aligned_mtl":  # eigh of a NaN Gramian raises instead of returning NaN
            out.append(pytest.param(name, {"log_transform": True}, marks=pytest.mark.xfail(
                raises=torch.linalg.LinAlgError, strict=True, reason="aligned_mtl: eigh raises on NaN")))  # fmt: skip
        elif name != "dbmtl":
            out.append((name, {"log_transform": True}))
    return out


@pytest.mark.parametrize("name,opts", _log_variants(), ids=lambda x: x if isinstance(x, str) else "")
def test_negative_loss_under_a_log_transform_poisons_the_update_where_it_cannot_raise(name, opts, monkeypatch):
    """Eagerly a negative loss under log(ℓ + ε) raises; compiled (simulated here by
    ``is_compiling``, for every method at once) the update turns non-finite, so the guard refuses it."""
    from _balancer_samplers import params_for, task_gradients

    balancer = fmtl.balancers.get(name, **opts)
    params, grads = params_for(3), task_gradients(3, 3, seed=0)
    grads = grads._replace(losses=grads.losses * torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="task 't1' has loss -"):
        balancer.update(grads, balancer.init(params, 3), params)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    out, _, _ = balancer.update(grads, balancer.init(params, 3), params)
    assert not all(torch.isfinite(v).all() for v in out.values(True, True))
    if balancer.loss_weights is not None:
        w, _, _ = balancer.loss_weights(grads.losses, balancer.init(params, 3), params)
        assert not torch.isfinite(w).all()


def test_gls_names_the_task_whose_loss_is_zero():
    params, loss_fn, batch = _model()
    step = fmtl.make_step(lambda p, b: loss_fn(p, b) * torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64),
                          fmtl.balancers.get("gls"), fmtl.optim.adam(1e-2))  # fmt: skip
    with pytest.raises(ValueError, match="^GLS .*needs positive losses; task 'seg' has loss 0$"):
        step(params, step.init(params), batch)
    balancer = fmtl.balancers.get("gls")
    grads = fmtl.TaskGradients(torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64),
                               params["shared"].apply(lambda v: torch.ones(3, *v.shape, dtype=v.dtype), batch_size=[3]),
                               params["tasks"].apply(torch.ones_like))  # fmt: skip
    with pytest.raises(ValueError, match="task 'seg' has loss 0"):
        balancer.update(grads, balancer.init(params, 3), params)

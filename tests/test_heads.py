"""linear_heads and functionalize's joint heads: the same outputs and task gradients as head by head."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tensordict import TensorDict
from torch import nn

import fmtl
from fmtl.heads import linear_heads


def _one_by_one(heads: TensorDict, z: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: nn.functional.linear(z, heads[k, "weight"], heads[k].get("bias", None)) for k in heads.keys()}


def _random_heads(widths: list[int], bias: str, dim: int, g: torch.Generator) -> TensorDict:
    """Heads of the given widths on ``dim`` features; biases on all, none or every other head."""
    heads = {}
    for i, o in enumerate(widths):
        h = {"weight": torch.randn(o, dim, generator=g, dtype=torch.float64)}
        if bias == "all" or (bias == "mixed" and i % 2 == 0):
            h["bias"] = torch.randn(o, generator=g, dtype=torch.float64)
        heads[f"t{i}"] = h
    return TensorDict(heads, [])


@settings(max_examples=25, deadline=None)
@given(
    widths=st.lists(st.integers(1, 4), min_size=1, max_size=6),
    bias=st.sampled_from(["all", "none", "mixed"]),
    lead=st.sampled_from([(5,), (2, 3)]),
)
def test_linear_heads_equal_heads_applied_one_by_one(widths, bias, lead):
    g = torch.Generator().manual_seed(len(widths))
    heads = _random_heads(widths, bias, 7, g)
    z = torch.randn(*lead, 7, generator=g, dtype=torch.float64)
    got, want = linear_heads(heads, z), _one_by_one(heads, z)
    assert list(got) == list(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-12, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    widths=st.lists(st.integers(1, 3), min_size=1, max_size=5),
    uniform=st.booleans(),
    bias=st.sampled_from(["all", "none", "mixed"]),
    lead=st.sampled_from([(5,), (2, 3)]),
)
def test_task_axis_heads_read_their_own_copy_of_z(widths, uniform, bias, lead):
    """task_axis: y_t = z[t] W_tᵀ + b_t, and the gradient w.r.t. the copies of z is, copy by copy,
    ∇z of that task's output alone."""
    widths = [widths[0]] * len(widths) if uniform else widths
    g = torch.Generator().manual_seed(sum(widths))
    heads = _random_heads(widths, bias, 4, g)
    z = torch.randn(len(widths), *lead, 4, generator=g, dtype=torch.float64, requires_grad=True)
    got = linear_heads(heads, z, task_axis=True)
    one = {k: _one_by_one(heads, z[t])[k] for t, k in enumerate(heads.keys())}
    assert list(got) == list(one)
    for k in one:
        torch.testing.assert_close(got[k], one[k], rtol=1e-12, atol=1e-12)
    cot = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in got.items()}
    (dz,) = torch.autograd.grad(sum((got[k] * cot[k]).sum() for k in got), z)
    for t, k in enumerate(got):
        (want,) = torch.autograd.grad((one[k] * cot[k]).sum(), z)
        torch.testing.assert_close(dz[t], want[t], rtol=1e-12, atol=1e-12)


def test_task_axis_heads_need_one_copy_per_task():
    heads = TensorDict({"a": {"weight": torch.ones(1, 3)}, "b": {"weight": torch.ones(1, 3)}}, [])
    with pytest.raises(ValueError, match="needs a leading axis of 2 tasks"):
        linear_heads(heads, torch.ones(5, 3), task_axis=True)


def test_a_head_of_the_wrong_input_size_is_named():
    heads = TensorDict({"a": {"weight": torch.ones(1, 3)}, "b": {"weight": torch.ones(2, 4)}}, [])
    with pytest.raises(ValueError, match="head 'b': weight of shape \\(2, 4\\) does not take features of size 3"):
        linear_heads(heads, torch.ones(5, 3))


def test_linear_heads_follow_the_given_task_order():
    heads = TensorDict({"a": {"weight": torch.ones(1, 2)}, "b": {"weight": 2 * torch.ones(2, 2)}}, [])
    out = linear_heads(heads, torch.ones(1, 2), ["b", "a"])
    assert list(out) == ["b", "a"] and out["b"].shape == (1, 2) and out["a"].item() == 2.0


class _Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 2)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return 3.0 * self.lin(z)


@pytest.mark.parametrize("strategy", ["jacrev", "vmap_grad", "loop"])
def test_functionalize_joint_heads_have_the_loop_task_gradients(strategy):
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
    heads = {"a": nn.Linear(6, 1), "b": nn.Linear(6, 3, bias=False), "c": _Scaled(), "d": nn.Linear(6, 2)}
    heads = {k: h.double() for k, h in heads.items()}
    params, apply = fmtl.functionalize(encoder.double(), heads)
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, dtype=torch.float64)

    def loss_fn(p, batch):
        out = apply(p, batch[0])
        return torch.stack([(o.sum(-1) - batch[1]).pow(2).mean() for o in out.values()])

    out = apply(params, x)
    assert list(out) == ["a", "b", "c", "d"]
    with torch.no_grad():
        z = encoder(x)
        for k, h in heads.items():  # the modules themselves are the reference
            torch.testing.assert_close(out[k], h(z), rtol=1e-12, atol=1e-12)
    got = fmtl.task_gradients(loss_fn, params, (x, y), strategy=strategy)
    for t in range(4):  # reference: one autograd.grad per task
        leaves = params.apply(lambda v: v.detach().requires_grad_())
        loss = loss_fn(leaves, (x, y))[t]
        keys = list(leaves.keys(True, True))
        grads = torch.autograd.grad(loss, [leaves[k] for k in keys], allow_unused=True)
        for k, g in zip(keys, grads, strict=True):
            g = torch.zeros_like(leaves[k]) if g is None else g
            mine = got.shared[k[1:]][t] if k[0] == "shared" else got.tasks[k[1:]]
            if k[0] == "tasks" and k[1] != list(heads)[t]:
                continue  # ψ_s of another task: its gradient belongs to task s
            torch.testing.assert_close(mine, g, rtol=1e-10, atol=1e-12)

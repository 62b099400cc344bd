"""A tiny hard-parameter-sharing regression problem shared by the core tests."""

from __future__ import annotations

import torch
from tensordict import TensorDict

import fmtl


def toy_problem(num_tasks: int = 3, width: int = 6, batch: int = 8, dtype=torch.float64, seed: int = 0):
    """(params, loss_fn, batch, modules): encoder Linear-Tanh-Linear, one Linear head per task.

    Task t's loss is a mean squared error with target scale 10^t, so tasks differ in loss scale.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    encoder = torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.Tanh(), torch.nn.Linear(width, width))
    heads = {f"task{t}": torch.nn.Linear(width, 1) for t in range(num_tasks)}
    encoder, heads = encoder.to(dtype), {k: h.to(dtype) for k, h in heads.items()}
    params, apply = fmtl.functionalize(encoder, heads)
    scales = torch.tensor([10.0**t for t in range(num_tasks)], dtype=dtype)

    def loss_fn(p: TensorDict, b: TensorDict) -> torch.Tensor:
        out = apply(p, b["x"])
        return torch.stack([(out[k].squeeze(-1) - b["y"][:, i]).pow(2).mean() for i, k in enumerate(out)])

    x = torch.randn(batch, 4, generator=gen, dtype=dtype)
    y = torch.randn(batch, num_tasks, generator=gen, dtype=dtype) * scales
    return params, loss_fn, TensorDict({"x": x, "y": y}, [batch]), (encoder, heads)


def flat_shared(td: TensorDict) -> torch.Tensor:
    """Row-stacked [T, P] matrix of a [T]-stacked TensorDict (test helper; copies)."""
    return torch.cat([v.reshape(v.shape[0], -1) for v in td.values(True, True)], 1)


def assert_trees_close(a: TensorDict, b: TensorDict, **tol) -> None:
    assert set(a.keys(True, True)) == set(b.keys(True, True))
    for k in a.keys(True, True):
        torch.testing.assert_close(a[k], b[k], **tol)

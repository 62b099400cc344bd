"""mlp_hps applies heads of one width as one stacked matmul: same outputs as head-by-head."""

import pytest
import torch

from fmtl.models import mlp_hps


@pytest.mark.parametrize("tasks", [{"a": 2, "b": 2, "c": 2}, {"a": 1, "b": 3}])
def test_heads_equal_one_linear_per_task(tasks):
    m = mlp_hps(5, hidden=(7,), tasks=tasks, seed=1, dtype=torch.float64)
    x = torch.randn(4, 5, dtype=torch.float64)
    z = torch.relu(torch.nn.functional.linear(x, m.params["shared", "layers", "0", "weight"],
                                              m.params["shared", "layers", "0", "bias"]))
    out = m.apply(m.params, x)
    assert list(out) == list(tasks)
    for t in tasks:
        expected = torch.nn.functional.linear(z, m.params["tasks", t, "weight"], m.params["tasks", t, "bias"])
        torch.testing.assert_close(out[t], expected, rtol=1e-12, atol=1e-12)

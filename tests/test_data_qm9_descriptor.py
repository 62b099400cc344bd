"""The QM9 descriptor's input scalings: fitted on statistics rows only, bounded where they promise."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fmtl.data.qm9_descriptor import SCALINGS, check_scaling, fit_scaling


def _table(seed: int, rows: int, cols: int, outlier: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g, dtype=torch.float64).float()
    x[0, 0] = outlier  # one sparse, heavy-tailed column, as the F–F radial bins of QM9
    x[1:, 0] = 0.0
    return x


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**16), st.integers(3, 40), st.integers(1, 6), st.floats(1.0, 1e4),
       st.floats(0.5, 20.0))  # fmt: skip
def test_clip_bounds_and_keeps_values_inside(seed, rows, cols, outlier, clip) -> None:
    x = _table(seed, rows, cols, outlier)
    plain, clipped = fit_scaling(x)(x), fit_scaling(x, clip=clip)(x)
    c = torch.tensor(clip, dtype=torch.float32)  # the float32 table is clamped at clip in float32
    assert bool((clipped.abs() <= c).all())
    inside = plain.abs() <= c
    assert torch.equal(clipped[inside], plain[inside])
    assert torch.equal(clipped[~inside], plain[~inside].sign() * c)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**16), st.integers(3, 40), st.integers(1, 6), st.floats(1.0, 1e6))
def test_asinh_is_monotone_and_compresses_tails(seed, rows, cols, outlier) -> None:
    x = _table(seed, rows, cols, outlier)
    z, a = fit_scaling(x)(x), fit_scaling(x, "asinh")(x)
    torch.testing.assert_close(a, torch.asinh(z))
    assert bool((a.abs() <= z.abs() + 1e-6).all())  # |asinh z| ≤ |z|
    order = z[:, 0].argsort(stable=True)
    assert bool((a[order, 0].diff() >= 0).all())  # same order within a column


def test_statistics_come_from_the_fitting_rows_only() -> None:
    stats = torch.tensor([[0.0, 5.0], [2.0, 5.0]])
    s = fit_scaling(stats)
    assert s.mean.tolist() == [1.0, 5.0] and s.std[1] == 1.0  # a constant column gets σ = 1
    other = torch.tensor([[100.0, 5.0]])
    assert s(other)[0, 0] == pytest.approx((100.0 - 1.0) / 2**0.5)
    assert s(other).dtype == torch.float32


@pytest.mark.parametrize("kind, clip, what", [("robust", None, "scaling"), ("standard", 0.0, "clip"),
                                              ("standard", float("inf"), "clip"), ("asinh", True, "clip"),
                                              ("standard", "5", "clip")])  # fmt: skip
def test_bad_scaling_is_named(kind, clip, what) -> None:
    with pytest.raises(ValueError, match=what):
        check_scaling(kind, clip)
    with pytest.raises(ValueError, match=what):
        fit_scaling(torch.zeros(2, 2), kind, clip)


def test_every_offered_scaling_is_valid() -> None:
    for kind in SCALINGS:
        check_scaling(kind, None)
        check_scaling(kind, 3)

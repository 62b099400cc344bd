"""Hypothesis strategies for MTL balancers: task Jacobians, losses, whole test cases, toy problems.

Each strategy draws only the *arguments* of the deterministic builders in
:mod:`fmtl.testing` (task count, rank, conditioning, norm spread, structure, seed), so hypothesis
shrinks a failure toward few tasks, low rank, plain structure and seed 0, and the counterexample
it reports rebuilds exactly. Needs ``hypothesis`` (``pip install "fmtl[testing]"``).

Example:
    >>> from hypothesis import given, settings
    >>> from fmtl.testing import flatten
    >>> @settings(max_examples=5, derandomize=True)
    ... @given(jacobians(num_tasks=3, ranks="full"))
    ... def test_full_rank(J):
    ...     assert torch.linalg.matrix_rank(flatten(J)) == 3
    >>> test_full_rank()
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

try:
    from hypothesis import strategies as st
except ImportError as error:  # hypothesis is a test dependency, not a core one
    raise ImportError(
        "fmtl.testing.strategies needs hypothesis; install it with pip install 'fmtl[testing]' "
        "(or pip install hypothesis)"
    ) from error

from ._cases import SHAPES, STRUCTURES, case, jacobian, losses, toy_problem

__all__ = ["specs", "cases", "jacobians", "loss_vectors", "problems"]

IntSpec = int | tuple[int, int] | st.SearchStrategy


def _integers(value: IntSpec) -> st.SearchStrategy:
    if isinstance(value, st.SearchStrategy):
        return value
    if isinstance(value, int):
        return st.just(value)
    low, high = value
    return st.integers(low, high)


def _choice(values: Sequence[Any] | st.SearchStrategy) -> st.SearchStrategy:
    return values if isinstance(values, st.SearchStrategy) else st.sampled_from(list(values))


@st.composite
def specs(
    draw,
    num_tasks: IntSpec = (1, 5),
    steps: int = 2,
    ranks: str = "any",
    conditions: Sequence[float] = (1.0, 1e2, 1e4),
    norm_spreads: Sequence[float] = (1.0, 1e3, 1e6),
    structures: Sequence[str] = STRUCTURES,
    loss_spreads: Sequence[float] = (10.0, 1e4),
    dtypes: Sequence[torch.dtype] = (torch.float64,),
    shapes: Mapping[str, Any] = SHAPES,
) -> dict[str, Any]:
    """The keyword arguments of :func:`fmtl.testing.case` (``ranks``: ``"any"`` in [0, T] or ``"full"``).

    The first entry of each list is what hypothesis shrinks toward.
    """
    T = draw(_integers(num_tasks))
    structure = draw(_choice(structures)) if ranks != "full" else "generic"
    if structure in ("opposite", "parallel"):
        rank = 1
    else:  # shrinks to full rank
        rank = T if ranks == "full" else draw(st.integers(0, T).map(lambda r: T - r))
    spec = dict(
        num_tasks=T, steps=steps, rank=rank, condition=draw(_choice(conditions)),
        norm_spread=draw(_choice(norm_spreads)), structure=structure, loss_spread=draw(_choice(loss_spreads)),
        seed=draw(st.integers(0, 2**16)), dtype=draw(_choice(dtypes)),
    )  # fmt: skip
    if shapes is not SHAPES:
        spec["shapes"] = shapes
    return spec


def cases(**kwargs: Any) -> st.SearchStrategy:
    """:class:`fmtl.testing.Case` instances (params and ``steps`` steps of task gradients); see :func:`specs`."""
    return specs(**kwargs).map(lambda spec: case(**spec))


def jacobians(**kwargs: Any) -> st.SearchStrategy:
    """[T]-stacked multi-leaf TensorDicts (θ shaped like ``shapes``); see :func:`specs`."""

    def build(spec: dict[str, Any]):
        return jacobian(spec["num_tasks"], spec["rank"], spec["condition"], spec["norm_spread"], spec["structure"],
                        spec["seed"], spec.get("shapes", SHAPES), spec["dtype"])  # fmt: skip

    return specs(**kwargs).map(build)


def loss_vectors(
    num_tasks: IntSpec = (1, 5), spreads: Sequence[float] = (10.0, 1e4), dtype: torch.dtype = torch.float64
) -> st.SearchStrategy:
    """Positive loss vectors of T entries, log-uniform over a range of width ``spread``."""
    return st.tuples(_integers(num_tasks), _choice(spreads), st.integers(0, 2**16)).map(
        lambda t: losses(t[0], t[1], t[2], dtype)
    )


def problems(num_tasks: IntSpec = (2, 4), dtype: torch.dtype = torch.float64) -> st.SearchStrategy:
    """Toy MTL problems ``(params, loss_fn, batch)`` (:func:`fmtl.testing.toy_problem`)."""
    return st.tuples(_integers(num_tasks), st.integers(0, 2**16)).map(lambda t: toy_problem(t[0], t[1], dtype))

"""Row-wise linear algebra on a task-stacked TensorDict (leading axis = task axis).

A TensorDict ``J`` with ``batch_size=[T]`` is the Jacobian of the T task losses with respect
to the shared parameters θ, stored one leaf at a time. These functions treat it as the
T×P matrix it stands for without concatenating the leaves: each reduces leaf by leaf and
sums, so no [T, P] copy is ever made.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict

__all__ = ["leaves", "leaves_at", "with_leaves", "row_sq_norms", "row_norms", "gramian", "combine", "scale_rows",
           "rows_dot"]


def leaves(td: TensorDict) -> list[torch.Tensor]:
    """The leaves of ``td`` in a fixed order.

    Example:
        >>> leaves(TensorDict({"a": torch.zeros(2), "b": {"c": torch.ones(1)}}, []))
        [tensor([0., 0.]), tensor([1.])]
    """
    return list(td.values(include_nested=True, leaves_only=True))


def leaves_at(td: TensorDict, keys: list) -> list[torch.Tensor]:
    """The leaves of ``td`` at ``keys`` (e.g. ``list(params.keys(True, True))``), in that order.

    Two trees with the same keys may list them in different orders; multi-tensor kernels pair
    leaves by position, so they take every tree's leaves in one tree's key order.

    Example:
        >>> a = TensorDict({"x": torch.zeros(1), "y": torch.ones(1)}, [])
        >>> b = TensorDict({"y": torch.full((1,), 2.0), "x": torch.full((1,), 3.0)}, [])
        >>> leaves_at(b, list(a.keys(True, True)))
        [tensor([3.]), tensor([2.])]
    """
    return [td.get(k) for k in keys]


def with_leaves(like: TensorDict, values: list[torch.Tensor]) -> TensorDict:
    """A TensorDict shaped like ``like`` holding ``values`` in its key order (:func:`leaves`; compiles).

    The inverse of :func:`leaves`: multi-tensor kernels (``torch._foreach_*``) work on the leaf
    lists, and this puts their outputs back into the tree.

    Example:
        >>> td = TensorDict({"a": torch.zeros(2), "b": {"c": torch.ones(1)}}, [])
        >>> with_leaves(td, [torch.tensor([1.0, 2.0]), torch.tensor([3.0])])["b", "c"]
        tensor([3.])
    """
    it = iter(values)
    return like.apply(lambda _: next(it))


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def row_sq_norms(J: TensorDict) -> torch.Tensor:
    """Squared ℓ2 norm of each row over all leaves together: ``‖J_t‖²``, ``Tensor[T]``.

    Example:
        >>> J = TensorDict({"a": torch.tensor([[3.0], [0.0]]), "b": torch.tensor([[4.0], [1.0]])}, [2])
        >>> row_sq_norms(J)
        tensor([25.,  1.])
    """
    # vector_norm reduces each row in one pass; pow(2).sum(1) would allocate a [T, P] temporary.
    return sum(torch.linalg.vector_norm(_rows(v), dim=1).square() for v in leaves(J))


def row_norms(J: TensorDict) -> torch.Tensor:
    """ℓ2 norm of each row over all leaves together: ``‖J_t‖₂``, ``Tensor[T]``.

    Example:
        >>> row_norms(TensorDict({"a": torch.tensor([[3.0, 4.0]])}, [1]))
        tensor([5.])
    """
    return row_sq_norms(J).sqrt()


def gramian(J: TensorDict) -> torch.Tensor:
    """The T×T Gramian ``G = J Jᵀ`` (``G[s, t] = ⟨∇θ ℓ_s, ∇θ ℓ_t⟩``).

    Example:
        >>> gramian(TensorDict({"a": torch.tensor([[1.0, 0.0], [1.0, 1.0]])}, [2]))
        tensor([[1., 1.],
                [1., 2.]])
    """
    return sum(_rows(v) @ _rows(v).T for v in leaves(J))


def rows_dot(J: TensorDict, v: TensorDict) -> torch.Tensor:
    """``J v``: the inner product of each row with a parameter-shaped ``v``, ``Tensor[T]``.

    Example:
        >>> J = TensorDict({"a": torch.eye(2)}, [2])
        >>> rows_dot(J, TensorDict({"a": torch.tensor([2.0, 3.0])}, []))
        tensor([2., 3.])
    """
    return sum(_rows(a) @ b.reshape(-1) for a, b in zip(leaves(J), leaves(v), strict=True))


def combine(weights: torch.Tensor, J: TensorDict) -> TensorDict:
    """``Jᵀ w = Σ_t w_t J_t``: one parameter-shaped TensorDict (``batch_size=[]``).

    Uses ``tensordot`` per leaf (``td * w`` with ``w`` of shape [T] does not compile).

    Example:
        >>> J = TensorDict({"a": torch.tensor([[1.0, 2.0], [3.0, 4.0]])}, [2])
        >>> combine(torch.tensor([1.0, 10.0]), J)["a"]
        tensor([31., 42.])
    """
    w = weights.to(next(iter(leaves(J))).dtype) if leaves(J) else weights
    return J.apply(lambda v: torch.tensordot(w, v, dims=1), batch_size=[])


def scale_rows(weights: torch.Tensor, J: TensorDict) -> TensorDict:
    """``diag(w) J``: row t multiplied by ``w_t`` (``batch_size`` kept).

    Example:
        >>> scale_rows(torch.tensor([2.0, 0.0]), TensorDict({"a": torch.ones(2, 2)}, [2]))["a"]
        tensor([[2., 2.],
                [0., 0.]])
    """
    return J.apply(lambda v: v * weights.to(v.dtype).reshape((-1,) + (1,) * (v.dim() - 1)))

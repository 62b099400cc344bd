"""Representation gradients of linear heads, factored: the Gramian of Z without forming Z.

For heads declared linear (:class:`fmtl.heads.LinearHeads`: y_t = z W_tᵀ + b_t, then ℓ_t(y_t)),
the representation gradient of task t at sample n is a product of two small factors:

.. math::
    Z_t[n] = \\nabla_{z_n} \\ell_t = A_t[n]\\, W_t,\\qquad
    A_t = \\partial \\ell_t / \\partial y_t \\in \\mathbb{R}^{N \\times O_t}

(N: the samples, every leading axis of z flattened; O_t: head t's width; W_t ∈ R^{O_t × D}).
Everything a Gramian method and the rest of the step need follows from A = [A_1 | … | A_T]
and W = [W_1; …; W_T] without the T·N·D numbers of Z:

.. math::
    G_{st} = \\langle Z_s, Z_t \\rangle = \\sum_{i \\in s,\\, j \\in t} (A^\\top A)_{ij} (W W^\\top)_{ij},\\qquad
    \\textstyle\\sum_t w_t Z_t = A\\, \\mathrm{diag}(\\bar w)\\, W,\\qquad
    \\nabla_{W_t} \\ell_t = A_t^\\top z,\\quad \\nabla_{b_t} \\ell_t = \\mathbf{1}^\\top A_t

(w̄: w_t repeated O_t times). The Gramian costs N·(ΣO_t)² + D·(ΣO_t)² multiply-adds instead of
T²·N·D (at T = 40 scalar heads, N = 128, D = 512: 1.1·10⁶ instead of 1.05·10⁸, half an EW step's
multiply-adds), the combination and the heads' gradients N·ΣO_t·D each, what one head backward
costs. The balancer gets G through :attr:`fmtl.Balancer.from_gramian`.

The maths is :mod:`fmtl.representation`'s (the weights from G_z = Z Zᵀ over z's batch × features:
MGDA-UB and its substitutes for the other Gramian methods); only the rounding differs (G is summed
in another order). ``info["grad_norms"]`` is ‖Z_t‖ = √G_tt.

``make_step(loss, balancer, ..., rep_grad=True)`` takes this path when ``loss.heads`` is a
:class:`~fmtl.heads.LinearHeads`, the balancer is a Gramian method (``from_gramian`` set) and the
strategy is ``"auto"`` without ``chunk_size`` or ``max_memory``; otherwise (GradDrop reads Z
itself; an explicit strategy asks for Z's computation) the general path forms Z. Eagerly the
encoder's graph and A come from plain autograd, compiled or inside a transform from
``torch.func.vjp`` and ``torch.func.grad``; the same numbers either way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from tensordict import TensorDict
from torch.func import grad, vjp

from .heads import LinearHeads, linear_heads
from .jacobian import _in_transform
from .params import task_names
from .representation import TwoStageLoss, encoder_graph
from .task_gradients import check_losses

__all__ = ["LinearRepresentation", "linear_representation"]


class LinearRepresentation(NamedTuple):
    """The factors of the representation gradients of linear heads, and what they give.

    Attributes:
        losses: ℓ, ``Tensor[T]``.
        gramian: G_z = Z Zᵀ, ``Tensor[T, T]``.
        tasks: ∇ψ_t ℓ_t, shaped like ``params["tasks"]``.
        z: the representation (detached), ``[..., D]``.
        cotangents: A = [∂ℓ_1/∂y_1 | … | ∂ℓ_T/∂y_T], ``[N, ΣO_t]``.
        weight: W = [W_1; …; W_T], ``[ΣO_t, D]``.
        columns: the task of each column of A, ``int64[ΣO_t]``.
    """

    losses: torch.Tensor
    gramian: torch.Tensor
    tasks: TensorDict
    z: torch.Tensor
    cotangents: torch.Tensor
    weight: torch.Tensor
    columns: torch.Tensor

    def combine(self, w: torch.Tensor) -> torch.Tensor:
        """Σ_t w_t Z_t, shaped like z: ``(A diag(w̄)) W``."""
        w = w.to(self.cotangents.dtype)[self.columns]
        return ((self.cotangents * w) @ self.weight).reshape(self.z.shape)

    def rows(self) -> torch.Tensor:
        """Z itself, ``[T, *z.shape]`` (formed only where a caller must look at its entries)."""
        eye = torch.eye(int(self.losses.shape[0]), dtype=self.cotangents.dtype, device=self.cotangents.device)
        return torch.stack([self.combine(e) for e in eye])


def linear_representation(
    loss: TwoStageLoss, params: TensorDict, batch: Any
) -> tuple[LinearRepresentation, Callable[[torch.Tensor], TensorDict]]:
    """The factored representation gradients of ``loss`` (heads :class:`~fmtl.heads.LinearHeads`) and the pullback.

    Returns ``(rep, pullback)``; ``pullback(g_z)`` is ∇θ ⟨g_z, z⟩, a TensorDict shaped like
    ``params["shared"]``, so θ's gradient for weights w is ``pullback(rep.combine(w))``.

    Example:
        >>> import torch, fmtl
        >>> p = TensorDict({"shared": {"w": torch.tensor([[1.0, 0.0], [0.0, 2.0]])},
        ...                 "tasks": {"a": {"weight": torch.tensor([[1.0, 1.0]])},
        ...                           "b": {"weight": torch.tensor([[1.0, 0.0]])}}}, [])
        >>> heads = fmtl.heads.LinearHeads(lambda out, x: torch.stack([out[k].pow(2).sum() / 2 for k in out]))
        >>> loss = fmtl.TwoStageLoss(lambda s, x: x @ s["w"], heads)
        >>> rep, pullback = linear_representation(loss, p, torch.tensor([[1.0, 1.0]]))
        >>> rep.losses  # z = (1, 2): y_a = 3, y_b = 1, ℓ_t = y_t² / 2
        tensor([4.5000, 0.5000])
        >>> rep.gramian  # Z_a = A_a W_a = 3·(1, 1), Z_b = 1·(1, 0)
        tensor([[18.,  3.],
                [ 3.,  1.]])
        >>> pullback(rep.combine(torch.tensor([1.0, 0.0])))["w"]  # xᵀ Z_a
        tensor([[3., 3.],
                [3., 3.]])
    """
    if not isinstance(loss.heads, LinearHeads):
        raise TypeError(f"linear_representation needs heads = fmtl.heads.LinearHeads(criterion); got {loss.heads!r}")
    names = task_names(params)
    tasks = params["tasks"]
    if _in_transform():
        z, vjp_fn = vjp(lambda shared: loss.encode(shared, batch), params["shared"])

        def pullback(g_z: torch.Tensor) -> TensorDict:
            return vjp_fn(g_z)[0]
    else:
        z, pullback = encoder_graph(loss.encode, params["shared"], batch)
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"LinearHeads take one representation tensor z; encode returned {type(z).__name__}")
    z = z.detach()
    outputs = linear_heads(tasks, z, names)
    losses, cotangents = _output_cotangents(loss.heads.criterion, outputs, batch, names)
    widths = [y.shape[-1] for y in outputs.values()]
    A = torch.cat([a.reshape(-1, o) for a, o in zip(cotangents, widths, strict=True)], dim=1)
    W = torch.cat([tasks[n, "weight"] for n in names])
    columns = torch.repeat_interleave(torch.arange(len(names), device=A.device),
                                      torch.tensor(widths, device=A.device))  # fmt: skip
    M = (A.T @ A) * (W @ W.T)  # ⟨A_i W_i, A_j W_j⟩ per pair of output columns
    if len(widths) == A.shape[1]:  # scalar heads: one column per task
        G = M
    else:
        S = torch.eye(len(names), dtype=M.dtype, device=M.device)[:, columns]  # [T, ΣO_t]: task of each column
        G = S @ M @ S.T
    rep = LinearRepresentation(losses, G, _head_gradients(tasks, names, A, z, widths), z, A, W, columns)
    return rep, pullback


def _output_cotangents(
    criterion: Callable, outputs: dict[str, torch.Tensor], batch: Any, names: list[str]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """ℓ = criterion(y) and A_t = ∂ℓ_t/∂y_t: one backward of Σ_t ℓ_t (ℓ_t reads y_t alone)."""
    if _in_transform():
        def summed(ys: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            losses = criterion(ys, batch)
            return losses.sum(), losses

        cotangents, losses = grad(summed, has_aux=True)(outputs)
        check_losses(losses, names)
        return losses, [cotangents[n] for n in names]
    leaves = {n: y.detach().requires_grad_() for n, y in outputs.items()}
    with torch.enable_grad():
        losses = criterion(leaves, batch)
        check_losses(losses, names)
        found = torch.autograd.grad(losses.sum(), list(leaves.values()), allow_unused=True)
    cotangents = [torch.zeros_like(y) if a is None else a for a, y in zip(found, leaves.values(), strict=True)]
    return losses.detach(), cotangents


def _head_gradients(tasks: TensorDict, names: list[str], A: torch.Tensor, z: torch.Tensor,
                    widths: list[int]) -> TensorDict:  # fmt: skip
    """∇W_t ℓ_t = A_tᵀ z and ∇b_t ℓ_t = 1ᵀA_t, all heads in one product, in ``tasks``' structure."""
    weights = (A.T @ z.reshape(-1, z.shape[-1])).split(widths)
    biases = A.sum(0).split(widths)
    out = {}
    for n, gw, gb in zip(names, weights, biases, strict=True):
        extra = set(tasks[n].keys()) - {"weight", "bias"}
        if extra:
            raise ValueError(f"LinearHeads: head {n!r} holds parameters other than weight and bias: {sorted(extra)}")
        out[n] = {k: gw if k == "weight" else gb for k in tasks[n].keys()}
    return TensorDict(out, [])

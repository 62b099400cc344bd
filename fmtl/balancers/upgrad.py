"""UPGrad: the mean of each task gradient projected onto the dual cone of all task gradients."""

from __future__ import annotations

import torch

from ..base import Balancer, EmptyState
from ._gradient import gramian_balancer
from ._qp import eager_inference
from ._solvers import project_dual_cone

__all__ = ["upgrad", "upgrad_weights", "upgrad_gramian", "upgrad_projections"]


def upgrad_gramian(G: torch.Tensor, norm_eps: float, reg_eps: float) -> torch.Tensor:
    """TorchJD's normalized, regularized Gramian: Ĝ = G / tr(G) + reg_eps·I (Ĝ = reg_eps·I if tr(G) < norm_eps).

    Example:
        >>> upgrad_gramian(torch.tensor([[3.0, 0.0], [0.0, 1.0]]), 1e-4, 0.0)
        tensor([[0.7500, 0.0000],
                [0.0000, 0.2500]])
    """
    trace = torch.diagonal(G).sum()
    Gn = G * torch.where(trace < norm_eps, 0.0, trace.clamp_min(norm_eps).reciprocal())
    Gn.diagonal().add_(reg_eps)
    return Gn


def upgrad_projections(G: torch.Tensor, U: torch.Tensor, norm_eps: float, reg_eps: float) -> torch.Tensor:
    """Row i: ``argmin_{v ≥ u_i} vᵀ Ĝ v`` for Ĝ = :func:`upgrad_gramian` and U ≥ 0 (UPGrad's and DualProj's).

    Eagerly Ĝ is never formed: its minimizers are those of tr(G)·Ĝ = G + reg_eps·tr(G)·I, a
    ridge the solver folds into its equilibration (fewer ops, the same answer to round-off),
    and for tr(G) < norm_eps, Ĝ = reg_eps·I gives v = u. Under compile, Ĝ itself (no
    data-dependent branch).

    Example:
        >>> upgrad_projections(torch.tensor([[1.0, -1.0], [-1.0, 2.0]]), torch.eye(2), 1e-4, 0.0)
        tensor([[1.0000, 0.5000],
                [1.0000, 1.0000]])
    """
    if torch.compiler.is_compiling():
        return project_dual_cone.__wrapped__(upgrad_gramian(G, norm_eps, reg_eps), U)
    trace = float(torch.trace(G))
    if trace < norm_eps:
        return U
    return project_dual_cone.__wrapped__(G, U, reg_eps * trace)


@eager_inference
def upgrad_weights(G: torch.Tensor, norm_eps: float = 1e-4, reg_eps: float = 1e-4) -> torch.Tensor:
    """UPGrad's weights from the Gramian only: w = Σ_i v_i, v_i = argmin_{v ≥ e_i/T} vᵀ Ĝ v.

    Ĝ = :func:`upgrad_gramian` (TorchJD's and LibMTL's regularization). The projections are
    exact (:func:`upgrad_projections`, :func:`fmtl.balancers._solvers.project_dual_cone`) even for ``reg_eps=0`` with a
    singular Ĝ: duplicate rows, a zero row, or a Gramian below ``norm_eps`` (then Ĝ = 0 and every
    v_i = e_i/T: the mean).

    Example:
        >>> upgrad_weights(torch.eye(2), reg_eps=0.0)  # no conflict: the mean
        tensor([0.5000, 0.5000])
    """
    T = G.shape[0]
    U = torch.eye(T, dtype=G.dtype, device=G.device) / T
    return upgrad_projections(G, U, norm_eps, reg_eps).sum(0)


def upgrad(norm_eps: float = 1e-4, reg_eps: float = 1e-4, log_transform: bool = False, eps: float = 1e-8) -> Balancer:
    """UPGrad (Quinton & Rey, 2024, TorchJD): average of the projections π_J(g_i / T).

    .. math::
        \\tilde g_\\theta = \\frac1T \\sum_i \\pi_J(g_i),\\qquad
        \\pi_J(J^\\top u) = J^\\top v,\\ v = \\arg\\min_{v \\ge u} v^\\top G v

    The projected gradient is non-conflicting: ⟨g_t, g̃⟩ ≥ 0 for every t. The T box-constrained
    quadratic programs are solved exactly in torch, all at once (TorchJD and LibMTL call
    quadprog once per task; ``benchmarks/solvers.py`` compares the two). ``norm_eps`` and
    ``reg_eps`` are TorchJD's (:func:`upgrad_gramian`); ``reg_eps=0`` is allowed. Only θ is
    touched, as in LibMTL; ψ_t gets ∇ψ_t ℓ_t.

    Example:
        >>> import torch, fmtl
        >>> from tensordict import TensorDict
        >>> b = fmtl.balancers.get("upgrad", reg_eps=0.0)
        >>> p = TensorDict({"shared": {"w": torch.zeros(2)}, "tasks": {"a": {}, "b": {}}}, [])
        >>> J = TensorDict({"w": torch.tensor([[1.0, 0.0], [-1.0, 1.0]])}, [2])
        >>> g, _, info = b.update(fmtl.TaskGradients(torch.ones(2), J, p["tasks"]), b.init(p, 2), p)
        >>> g["shared", "w"]  # ½(½, ½) + ½(0, 1): no conflict with either task
        tensor([0.2500, 0.7500])
    """

    def weighting(G: torch.Tensor, losses: torch.Tensor, state: EmptyState):
        return upgrad_weights(G, norm_eps, reg_eps), None, state, {}

    return gramian_balancer(weighting, log_transform=log_transform, eps=eps)

"""TrimmedMean: the coordinate-wise mean of the task gradients without the extreme values."""

from __future__ import annotations

import torch
from tensordict import TensorDict

from ..base import Balancer, EmptyState, TaskGradients
from ..tree import leaves
from ._gradient import finish, prepare

__all__ = ["trimmed_mean"]


def trimmed_mean(trim_number: int = 1, log_transform: bool = False, eps: float = 1e-8) -> Balancer:
    """TrimmedMean (Yin et al., ICML 2018, "Byzantine-Robust Distributed Learning"), needs J.

    For each shared coordinate p, the T values g_{t,p} are sorted and the k = ``trim_number``
    largest and k smallest dropped:

    .. math::
        \\tilde g_{\\theta, p} = \\frac{1}{T - 2k} \\sum_{i = k + 1}^{T - k} g_{(i), p}

    the mean of the rest (TorchJD's ``TrimmedMean``; a mean, not a sum like EW). Needs
    T ≥ 2k + 1 (``ValueError`` otherwise). ``info["weights"]`` is each task's average weight
    over the coordinates (1/(T − 2k) where kept). Only θ is touched; ψ_t gets ∇ψ_t ℓ_t.

    Example:
        >>> import torch, fmtl
        >>> from tensordict import TensorDict
        >>> b = fmtl.balancers.get("trimmed_mean")
        >>> p = TensorDict({"shared": {"w": torch.zeros(2)}, "tasks": {"a": {}, "b": {}, "c": {}}}, [])
        >>> J = TensorDict({"w": torch.tensor([[1.0, 9.0], [2.0, 0.0], [100.0, 1.0]])}, [3])
        >>> g, _, info = b.update(fmtl.TaskGradients(torch.ones(3), J, p["tasks"]), b.init(p, 3), p)
        >>> g["shared", "w"], info["weights"]  # the median of three, per coordinate
        (tensor([2., 1.]), tensor([0.0000, 0.5000, 0.5000]))
    """
    if trim_number < 0:
        raise ValueError(f"trim_number must be non-negative; got {trim_number}")

    def init(params: TensorDict, num_tasks: int) -> EmptyState:
        if num_tasks < 2 * trim_number + 1:
            raise ValueError(f"trimmed_mean with trim_number={trim_number} needs at least {2 * trim_number + 1} "
                             f"tasks; got {num_tasks}")  # fmt: skip
        return EmptyState()

    def update(grads: TaskGradients, state: EmptyState, params: TensorDict):
        grads = prepare(grads, params, log_transform, eps)
        T = grads.losses.shape[0]
        kept = T - 2 * trim_number
        counts = []

        def trim(g: torch.Tensor) -> torch.Tensor:
            flat = g.reshape(T, -1)
            values, order = torch.sort(flat, dim=0)
            inside = torch.zeros_like(flat).scatter_(0, order[trim_number : T - trim_number], 1.0)
            counts.append(inside.sum(1))
            return values[trim_number : T - trim_number].mean(0).reshape(g.shape[1:])

        shared = grads.shared.apply(trim, batch_size=[])
        size = sum(v[0].numel() for v in leaves(grads.shared))
        w = sum(counts) / (max(size, 1) * kept) if counts else torch.full_like(grads.losses, 1.0 / kept)
        return finish(shared, None, grads.tasks), state, {"weights": w.to(grads.losses.dtype)}

    return Balancer(init, update)

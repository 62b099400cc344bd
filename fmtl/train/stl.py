"""Single-task learning (STL) as one vectorized ensemble: T models trained in one pass.

The STL baseline of Δp (Eq. 3–4) is T independent models, model t trained on task t alone.
Instead of T runs, the T copies of the parameters are stacked along a leading *member* axis
(member t = (θ^{(t)}, ψ^{(t)})) and the model is ``vmap``-ed over it:

.. math::
    L_{m,t} = \\ell_t\\big(θ^{(m)}, ψ^{(m)}_t\\big), \\qquad
    \\ell^{STL} = \\big(L_{t,t}\\big)_{t=1}^T

Member t's loss is its own task's loss (the diagonal), and members share no parameters, so
the gradient of Σ_t L_{t,t} restricted to member t is exactly ∇ℓ_t of a single-task model.
The ensemble is an ordinary fmtl model — ``params["shared"]["members"]`` holds the stack
(``batch_size=[T]``) and ``params["tasks"][t]`` holds only an empty placeholder (TensorDict
arithmetic drops empty sub-trees) — so ``make_step`` with equal
weighting (one backward of Σ_t ℓ_t) trains all T models at once, with the same checkpoints,
progress and logs as any MTL run. Element-wise optimizers (SGD, Adam) then act on each member
exactly as they would on a separate model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDict
from torch.func import vmap

from ..task_gradients import LossFn

__all__ = ["ensemble", "member", "stack"]


def stack(params: TensorDict, copies: int) -> TensorDict:
    """``copies`` identical copies of ``params`` stacked on a new leading axis (``batch_size=[T]``).

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> stack(TensorDict({"w": torch.ones(3)}, []), 2)["w"].shape
        torch.Size([2, 3])
    """
    return params.apply(lambda x: x.expand(copies, *x.shape).clone(), batch_size=[copies])


def member(params: TensorDict, t: int) -> TensorDict:
    """The parameters of member t (an ordinary multi-task parameter tree) of an ensemble.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> e = TensorDict({"shared": {"members": stack(TensorDict({"w": torch.ones(2)}, []), 3)},
        ...                 "tasks": {}}, [])
        >>> member(e, 1)["w"]
        tensor([1., 1.])
    """
    return params["shared", "members"][t]


def ensemble(
    params: TensorDict,
    apply: Callable[..., dict[str, torch.Tensor]],
    loss_fn: LossFn,
    tasks: tuple[str, ...],
    input_key: str | None = "x",
) -> tuple[TensorDict, LossFn, Callable[[TensorDict, TensorDict], dict[str, torch.Tensor]]]:
    """The STL ensemble of a multi-task model: stacked params, its loss and its predictions.

    Every member starts from the same initial parameters (the MTL model's), so member t is the
    single-task model a separate run with the same seed would train.

    Args:
        params: the multi-task model's parameters (``"shared"``, ``"tasks"``).
        apply: the model's pure ``apply(params, x) -> {task: prediction}``.
        loss_fn: the model's ``loss_fn(params, batch) -> Tensor[T]``.
        tasks: task order (member t is trained on ``tasks[t]``).
        input_key: batch key of the model input (``None``: the whole batch).

    Returns:
        ``(ens_params, ens_loss_fn, ens_predict)``: ``ens_loss_fn(p, batch)[t]`` is member t's
        loss on task t; ``ens_predict(p, batch)[task_t]`` is member t's prediction.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from fmtl.models import mlp_hps
        >>> from fmtl.losses import make_loss_fn, mse
        >>> m = mlp_hps(3, hidden=(4,), tasks={"a": 1, "b": 1}, seed=0)
        >>> p, loss, predict = ensemble(m.params, m.apply, make_loss_fn(m.apply, {"a": mse, "b": mse}), ("a", "b"))
        >>> batch = TensorDict({"x": torch.randn(5, 3), "y": torch.randn(5, 2)}, [5])
        >>> loss(p, batch).shape, predict(p, batch)["b"].shape
        (torch.Size([2]), torch.Size([5, 1]))
    """
    T = len(tasks)
    like = next(iter(params.values(True, True)))
    ens = TensorDict(
        {"shared": TensorDict({"members": stack(params, T)}, []),
         "tasks": TensorDict({t: TensorDict({"none": like.new_zeros(0)}, []) for t in tasks}, [])},
        [],
    )  # fmt: skip

    def ens_loss(p: TensorDict, batch: TensorDict) -> torch.Tensor:
        all_losses = vmap(loss_fn, in_dims=(0, None))(p["shared", "members"], batch)  # [member, task]
        return torch.diagonal(all_losses)

    def ens_predict(p: TensorDict, batch: TensorDict) -> dict[str, torch.Tensor]:
        x = batch if input_key is None else batch[input_key]
        out = vmap(lambda q: apply(q, x), in_dims=0)(p["shared", "members"])
        return {t: out[t][i] for i, t in enumerate(tasks)}

    return ens, ens_loss, ens_predict

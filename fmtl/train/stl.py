"""Single-task learning (STL) as one vectorized ensemble: T models trained in one pass.

The STL baseline of Δp (Eq. 3–4) is T independent models, model t trained on task t alone.
Instead of T runs, the T copies of the parameters are stacked along a leading *member* axis
(member t = (θ^{(t)}, ψ^{(t)})) and the model is ``vmap``-ed over it:

.. math::
    L_{m,t} = \\ell_t\\big(θ^{(m)}, ψ^{(m)}_t\\big), \\qquad
    \\ell^{STL} = \\big(L_{t,t}\\big)_{t=1}^T

Member t's loss is its own task's loss (the diagonal), and members share no parameters, so
the gradient of Σ_t L_{t,t} restricted to member t is exactly ∇ℓ_t of a single-task model.
The ensemble is an ordinary fmtl problem (:func:`ensemble`) — ``params["shared"]["members"]``
holds the stack (``batch_size=[T]``) and ``params["tasks"][t]`` holds only an empty placeholder
(TensorDict arithmetic drops empty sub-trees) — so ``make_step`` with equal
weighting (one backward of Σ_t ℓ_t) trains all T models at once, with the same checkpoints,
progress and logs as any MTL run. Element-wise optimizers (SGD, Adam) then act on each member
exactly as they would on a separate model.
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDict
from torch.func import vmap

from .problem import Problem

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


def ensemble(problem: Problem) -> Problem:
    """The STL ensemble of a multi-task problem: one problem whose T members are single-task models.

    Every member starts from the same initial parameters (the MTL model's), so member t is the
    single-task model a separate run with the same seed would train. Dropout draws its own masks
    for each member (``vmap(randomness="different")``), as T separate runs would; BatchNorm
    members keep their own running statistics (``buffers`` stacked like the parameters), updated
    member after member (a deviation from one joint forward: with dropout, the statistics pass of
    the ensemble draws fresh masks instead of replaying the gradient pass's).

    Returns:
        A :class:`fmtl.train.Problem` with the stacked parameters: ``loss_fn(p, batch)[t]`` is
        member t's loss on task t; ``predict(p, buffers, batch)[task_t]`` is member t's prediction.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from fmtl.models import mlp_hps
        >>> from fmtl.losses import mse
        >>> m = mlp_hps(3, hidden=(4,), tasks={"a": 1, "b": 1}, seed=0)
        >>> rows = lambda n: TensorDict({"x": torch.randn(n, 3), "y": torch.randn(n, 2)}, [n])
        >>> mtl = Problem.from_model(m, {"train": rows(8), "val": rows(4), "test": rows(4)}, {"a": mse, "b": mse},
        ...                          {"a": "mse", "b": "mse"}, name="toy")
        >>> stl = ensemble(mtl)
        >>> batch = rows(5)
        >>> stl.loss_fn(stl.params, batch).shape, stl.predict(stl.params, None, batch)["b"].shape
        (torch.Size([2]), torch.Size([5, 1]))
    """
    tasks, params, loss_fn = problem.tasks, problem.params, problem.loss_fn
    T = len(tasks)
    like = next(iter(params.values(True, True)))
    ens = TensorDict(
        {"shared": TensorDict({"members": stack(params, T)}, []),
         "tasks": TensorDict({t: TensorDict({"none": like.new_zeros(0)}, []) for t in tasks}, [])},
        [],
    )  # fmt: skip
    buffers = stack(problem.buffers, T) if problem.buffers is not None else None

    def ens_loss(p: TensorDict, batch: TensorDict) -> torch.Tensor:
        all_losses = vmap(loss_fn, in_dims=(0, None), randomness="different")(p["shared", "members"], batch)
        return torch.diagonal(all_losses)  # [member, task] -> member t's loss on task t

    def ens_predict(p: TensorDict, b: Any, batch: TensorDict) -> dict[str, torch.Tensor]:
        members = p["shared", "members"]
        out = vmap(lambda q, qb: problem.predict(q, qb, batch), in_dims=(0, 0 if b is not None else None))(members, b)
        return {t: out[t][i] for i, t in enumerate(tasks)}

    update = None
    if problem.update_buffers is not None:

        def update(p: TensorDict, b: TensorDict, batch: TensorDict) -> TensorDict:
            # Member by member, not vmapped: nn.BatchNorm(momentum=None) reads its step count with
            # .item(), which vmap cannot batch. No gradients here, so the T forwards are cheap.
            members = p["shared", "members"]
            new = [problem.update_buffers(members[m], b[m], batch) for m in range(T)]
            return new[0].apply(lambda *xs: torch.stack(xs), *new[1:], batch_size=[T])

    return problem._replace(name=f"{problem.name}-stl", params=ens, loss_fn=ens_loss, predict=ens_predict,
                            buffers=buffers, update_buffers=update)  # fmt: skip

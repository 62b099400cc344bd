"""Per-task losses (pure, scalar) and :func:`make_loss_fn`, which stacks them into ℓ ∈ R^T.

Every loss is ``loss(pred, target, **hyperparameters) -> Tensor[]``; masks are computed
arithmetically (no boolean indexing), so each loss works under ``torch.func`` transforms and
``torch.compile(fullgraph=True)``. The masked losses follow LibMTL's NYUv2 definitions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from tensordict import TensorDict

__all__ = [
    "cross_entropy",
    "l1",
    "depth_l1",
    "normal_cosine",
    "mse",
    "mae",
    "make_loss_fn",
    "make_multi_input_loss_fn",
    "target",
    "Where",
]

Tensor = torch.Tensor
Loss = Callable[[Tensor, Tensor], Tensor]
#: Where a task's target lives in a batch: a column of ``batch["y"]`` (``int``) or a key (``str``, or a
#: tuple for a nested key such as ``("y", "depth")``).
Where = int | str | tuple[str, ...]


def target(batch: TensorDict, where: Where) -> Tensor:
    """Task t's target in ``batch``: column ``where`` of ``batch["y"]`` kept as ``[B, 1]``, or ``batch[where]``.

    Example:
        >>> import torch
        >>> b = TensorDict({"y": torch.arange(6.0).view(3, 2), "seg": torch.zeros(3, 4)}, [3])
        >>> target(b, 1).tolist(), target(b, "seg").shape
        ([[1.0], [3.0], [5.0]], torch.Size([3, 4]))
    """
    if isinstance(where, int):
        y = batch["y"]
        return y.reshape(-1, 1) if y.dim() == 1 and where == 0 else y[:, where : where + 1]
    return batch[where]


def cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = -1) -> Tensor:
    """Mean cross-entropy over the non-ignored targets (classification or segmentation).

    .. math::
        ℓ = −\\frac{1}{|V|} \\sum_{i ∈ V} \\log \\mathrm{softmax}(z_i)_{y_i},
        \\qquad V = \\{i : y_i ≠ \\text{ignore\\_index}\\}

    Args:
        logits: [B, C] or [B, C, H, W].
        target: long [B] or [B, H, W]; ``ignore_index`` (LibMTL NYUv2: -1; Cityscapes
            style: 255) marks pixels without a label.

    Example:
        >>> import torch
        >>> z = torch.zeros(2, 3)
        >>> cross_entropy(z, torch.tensor([0, -1]))  # log 3
        tensor(1.0986)
    """
    logp = F.log_softmax(logits, dim=1)
    valid = target != ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target))
    nll = -logp.gather(1, safe.unsqueeze(1)).squeeze(1)
    w = valid.to(logp.dtype)
    return (nll * w).sum() / w.sum().clamp_min(1.0)


def l1(pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error, ℓ = mean |ŷ − y|.

    Example:
        >>> import torch
        >>> l1(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]))
        tensor(1.5000)
    """
    return (pred - target).abs().mean()


mae = l1  #: QM9's L1 / MAE loss (same maths as :func:`l1`).


def mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error, ℓ = mean (ŷ − y)² (the QM9 training loss of Section 4.2).

    Example:
        >>> import torch
        >>> mse(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0]))
        tensor(5.)
    """
    return (pred - target).square().mean()


def depth_l1(pred: Tensor, target: Tensor) -> Tensor:
    """L1 depth loss over valid pixels (LibMTL: a pixel is invalid where Σ_c depth = 0).

    .. math::
        ℓ = \\frac{\\sum_i m_i |\\hat d_i − d_i|}{\\sum_i m_i}, \\qquad m_i = [d_i ≠ 0]

    Args:
        pred, target: [B, 1, H, W].

    Example:
        >>> import torch
        >>> d = torch.tensor([[[[0.0, 2.0]]]])
        >>> depth_l1(torch.ones(1, 1, 1, 2), d)  # only the second pixel counts
        tensor(1.)
    """
    m = (target.sum(dim=1, keepdim=True) != 0).to(pred.dtype)
    return ((pred - target).abs() * m).sum() / m.sum().clamp_min(1.0)


def normal_cosine(pred: Tensor, target: Tensor) -> Tensor:
    """Cosine surface-normal loss 1 − cos over valid pixels (LibMTL: invalid where Σ_c n = 0).

    .. math::
        ℓ = 1 − \\frac{\\sum_i m_i\\, \\hat n_i^⊤ n_i / \\|\\hat n_i\\|}{\\sum_i m_i},
        \\qquad m_i = [\\textstyle\\sum_c n_{i,c} ≠ 0]

    The target normals n_i are unit vectors (as in the datasets); ``pred`` is normalized here.

    Args:
        pred, target: [B, 3, H, W].

    Example:
        >>> import torch
        >>> n = torch.zeros(1, 3, 1, 2); n[0, 2] = 1.0  # both pixels point along z
        >>> normal_cosine(n.clone(), n)
        tensor(0.)
    """
    p = pred / pred.norm(dim=1, keepdim=True).clamp_min(1e-12)
    m = (target.sum(dim=1, keepdim=True) != 0).to(pred.dtype)
    return 1.0 - ((p * target).sum(dim=1, keepdim=True) * m).sum() / m.sum().clamp_min(1.0)


def make_loss_fn(
    apply: Callable[..., dict[str, Tensor]],
    losses: Mapping[str, Loss],
    *,
    targets: Mapping[str, Where] | None = None,
    input_key: str | None = "x",
    key: str | None = None,
) -> Callable[[TensorDict, TensorDict], Tensor]:
    """Builds the engine's ``loss_fn(params, batch) -> Tensor[T]`` from a model's ``apply``.

    .. math:: ℓ(θ, ψ; B) = \\big(ℓ_t(\\hat y_t(θ, ψ_t; x_B), y_{B,t})\\big)_{t=1}^T

    Args:
        apply: a model's pure ``apply(params, x) -> {task: prediction}``.
        losses: ``{task: loss(pred, target)}`` in task order (must match ``params["tasks"]``).
        targets: where task t's target lives (:func:`target`): a key of the batch (``str`` or a
            nested-key tuple) or a column of ``batch["y"]`` (``int``; the column is kept as [B, 1]
            to match a width-1 head). Default: the task's position in ``losses`` as a column of
            ``batch["y"]``.
        input_key: batch key of the model input; ``None`` passes the whole batch (graph
            models such as :func:`fmtl.models.qm9_gnn`).
        key: batch key of the per-sample dropout seeds (int64 [B]) passed as
            ``apply(..., key=batch[key])`` when the batch has it (:mod:`fmtl.models._core`);
            ``None``: never.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from fmtl.models import mlp_hps
        >>> m = mlp_hps(3, hidden=(4,), tasks={"a": 1, "b": 1}, seed=0)
        >>> loss_fn = make_loss_fn(m.apply, {"a": mse, "b": l1})
        >>> batch = TensorDict({"x": torch.randn(8, 3), "y": torch.randn(8, 2)}, [8])
        >>> loss_fn(m.params, batch).shape
        torch.Size([2])
    """
    names = list(losses)
    where: dict[str, Where] = {t: i for i, t in enumerate(names)}
    where.update(dict(targets or {}))
    fns = [losses[t] for t in names]

    def loss_fn(params: TensorDict, batch: TensorDict) -> Tensor:
        x = batch if input_key is None else batch[input_key]
        seeds = batch.get(key, None) if key is not None else None
        out = apply(params, x) if seeds is None else apply(params, x, key=seeds)
        ls = []
        for t, fn in zip(names, fns, strict=True):
            ls.append(fn(out[t], target(batch, where[t])))
        return torch.stack(ls)

    return loss_fn


def make_multi_input_loss_fn(
    apply: Callable[..., dict[str, Tensor]],
    losses: Mapping[str, Loss],
    *,
    input_key: str = "x",
    target_key: str = "y",
    key: str | None = None,
) -> Callable[[TensorDict, TensorDict], Tensor]:
    """``loss_fn(params, batch) -> Tensor[T]`` of a multi-input problem: task t sees only ``batch[t]``.

    Multi-input MTL (LibMTL's ``multi_input``; Office-31/Office-Home, paper §4.3): every task
    has its own inputs and batch B_t, and

    .. math:: ℓ_t(θ, ψ_t; B_t) = ℓ_t\big(\\hat y_t(θ, ψ_t; x_{B_t}), y_{B_t}\big), \\qquad
              ℓ = (ℓ_1, …, ℓ_T)

    ``batch`` is a TensorDict of per-task sub-batches ``{t: {input_key, target_key, …}}``
    (sizes may differ: give the outer TensorDict ``batch_size=[]``). The model runs once per
    task on that task's inputs and only head t's output is used, so BatchNorm normalizes with
    each task's own batch statistics (as LibMTL's per-task forwards) and ∂ℓ_s/∂ψ_t = 0 for
    s ≠ t. The engine treats ``batch`` as opaque: every balancer and task-gradient strategy
    applies unchanged. Running statistics: :func:`fmtl.models.update_buffers_per_task` (once
    per task's sub-batch, as LibMTL's BatchNorm updates them T times per step).

    Args:
        apply: the model's pure ``apply(params, x) -> {task: prediction}``.
        losses: ``{task: loss(pred, target)}`` in task order.
        input_key, target_key: keys inside each task's sub-batch.
        key: key of each sub-batch's per-sample dropout seeds (``None``: no dropout).

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from fmtl.models import mlp_hps
        >>> m = mlp_hps(3, hidden=(4,), tasks={"a": 2, "b": 2}, seed=0)
        >>> loss_fn = make_multi_input_loss_fn(m.apply, {"a": cross_entropy, "b": cross_entropy})
        >>> batch = TensorDict({"a": {"x": torch.randn(5, 3), "y": torch.randint(0, 2, (5,))},
        ...                     "b": {"x": torch.randn(2, 3), "y": torch.randint(0, 2, (2,))}}, [])
        >>> loss_fn(m.params, batch).shape
        torch.Size([2])
    """
    names = list(losses)
    fns = [losses[t] for t in names]

    def loss_fn(params: TensorDict, batch: TensorDict) -> Tensor:
        missing = [t for t in names if t not in batch.keys()]
        if missing:
            raise KeyError(f"multi-input batch lacks the sub-batches of tasks {missing}; it has {list(batch.keys())}")
        ls = []
        for t, fn in zip(names, fns, strict=True):
            sub = batch[t]
            seeds = sub.get(key, None) if key is not None else None
            x = sub[input_key]
            out = apply(params, x) if seeds is None else apply(params, x, key=seeds)
            ls.append(fn(out[t], sub[target_key]))
        return torch.stack(ls)

    return loss_fn

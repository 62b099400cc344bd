"""Evaluation metrics as streaming accumulators, and the paper's Δp (Eq. 3–4).

Each metric is a triple of pure functions, optax-style: ``*_init(...) -> state`` (a
NamedTuple of sums), ``*_update(state, pred, target) -> state`` and
``*_compute(state) -> value(s)``. Because the state holds sums (of errors, of counts, a
confusion matrix), an epoch's metric is exactly the dataset metric, whatever the batching.
Definitions follow LibMTL (``LibMTL/metrics.py`` and its NYUv2 example); percentages
(mIoU, pixel accuracy, within-t°, accuracy) are reported in %, as in the paper's tables.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import torch

__all__ = [
    "SegState", "seg_init", "seg_update", "seg_compute",
    "DepthState", "depth_init", "depth_update", "depth_compute",
    "NormalState", "normal_init", "normal_update", "normal_compute",
    "MAEState", "mae_init", "mae_update", "mae_compute", "mae",
    "AccuracyState", "accuracy_init", "accuracy_update", "accuracy_compute",
    "delta_p", "delta_p_tasks",
]  # fmt: skip

Tensor = torch.Tensor


# ---------------------------------------------------------------------------- segmentation


class SegState(NamedTuple):
    """Confusion matrix ``conf[c_true, c_pred]`` (int64 [C, C]) of the non-ignored pixels."""

    conf: Tensor


def seg_init(num_classes: int) -> SegState:
    """Empty confusion matrix for ``num_classes`` classes.

    Example:
        >>> seg_init(2).conf
        tensor([[0, 0],
                [0, 0]])
    """
    return SegState(torch.zeros(num_classes, num_classes, dtype=torch.long))


def seg_update(state: SegState, logits: Tensor, target: Tensor) -> SegState:
    """Adds a batch to the confusion matrix (pixels with target ∉ [0, C) are ignored).

    .. math:: \\mathrm{conf}_{ab} \\mathrel{+}= |\\{i : y_i = a,\\ \\arg\\max_c z_{i,c} = b\\}|

    Args:
        logits: [B, C, H, W] (or [B, C]); target: long [B, H, W] (or [B]).

    Example:
        >>> import torch
        >>> z = torch.tensor([[[[5.0, 0.0, 0.0]], [[0.0, 5.0, 5.0]]]])  # [1, 2, 1, 3]
        >>> seg_update(seg_init(2), z, torch.tensor([[[0, 1, -1]]])).conf
        tensor([[1, 0],
                [0, 1]])
    """
    c = state.conf.shape[0]
    pred = logits.argmax(dim=1).reshape(-1).to(torch.long)
    y = target.reshape(-1).to(torch.long)
    valid = (y >= 0) & (y < c)
    idx = torch.where(valid, y * c + pred, torch.full_like(y, c * c))
    counts = torch.bincount(idx, minlength=c * c + 1)[: c * c]
    return SegState(state.conf + counts.view(c, c).to(state.conf.device))


def seg_compute(state: SegState) -> tuple[float, float]:
    """(mIoU %, pixel accuracy %) from the confusion matrix (LibMTL ``SegMetric``).

    .. math::
        \\mathrm{IoU}_c = \\frac{h_{cc}}{\\sum_b h_{cb} + \\sum_a h_{ac} − h_{cc}}, \\quad
        \\mathrm{mIoU} = \\mathrm{mean}_c\\, \\mathrm{IoU}_c, \\quad
        \\mathrm{PAcc} = \\frac{\\sum_c h_{cc}}{\\sum_{ab} h_{ab}}

    Classes that appear neither in the targets nor in the predictions (0/0) are left out
    of the mean (LibMTL would return NaN).

    Example:
        >>> import torch
        >>> seg_compute(SegState(torch.tensor([[3, 1], [0, 4]])))
        (77.5, 87.5)
    """
    h = state.conf.to(torch.float64)
    tp = h.diagonal()
    iou = tp / (h.sum(0) + h.sum(1) - tp)
    return 100.0 * iou.nanmean().item(), 100.0 * (tp.sum() / h.sum()).item()


# ---------------------------------------------------------------------------- depth


class DepthState(NamedTuple):
    """Sums over valid pixels: Σ|d̂ − d|, Σ|d̂ − d|/d and the number of valid pixels."""

    abs_err: Tensor
    rel_err: Tensor
    count: Tensor


def depth_init() -> DepthState:
    """Zero sums (float64).

    Example:
        >>> depth_init().count
        tensor(0., dtype=torch.float64)
    """
    z = torch.zeros((), dtype=torch.float64)
    return DepthState(z, z.clone(), z.clone())


def depth_update(state: DepthState, pred: Tensor, target: Tensor) -> DepthState:
    """Adds a batch's absolute / relative depth errors over valid pixels (Σ_c d ≠ 0).

    Example:
        >>> import torch
        >>> s = depth_update(depth_init(), torch.full((1, 1, 1, 2), 3.0),
        ...                  torch.tensor([[[[0.0, 2.0]]]]))
        >>> depth_compute(s)
        (1.0, 0.5)
    """
    m = (target.sum(dim=1, keepdim=True) != 0).to(torch.float64)
    err = (pred.to(torch.float64) - target.to(torch.float64)).abs() * m
    safe = torch.where(m > 0, target.to(torch.float64), torch.ones_like(err))
    return DepthState(state.abs_err + err.sum(), state.rel_err + (err / safe).sum(), state.count + m.sum())


def depth_compute(state: DepthState) -> tuple[float, float]:
    """(AErr, RErr): mean absolute and mean relative error over all valid pixels.

    .. math::
        \\mathrm{AErr} = \\frac{1}{|V|}\\sum_{i∈V} |\\hat d_i − d_i|, \\quad
        \\mathrm{RErr} = \\frac{1}{|V|}\\sum_{i∈V} \\frac{|\\hat d_i − d_i|}{d_i}

    (LibMTL weights its per-batch means by the number of valid pixels: the same value.)

    Example:
        >>> import torch
        >>> depth_compute(DepthState(torch.tensor(2.0), torch.tensor(1.0), torch.tensor(4.0)))
        (0.5, 0.25)
    """
    n = state.count.clamp_min(1)
    return (state.abs_err / n).item(), (state.rel_err / n).item()


# ---------------------------------------------------------------------------- normals

_THRESHOLDS = (11.25, 22.5, 30.0)


class NormalState(NamedTuple):
    """Angle sums and counts over valid pixels, plus what the median needs.

    ``angles`` is the concatenation of every valid pixel's angle (exact median; memory grows
    with the dataset) when built with ``normal_init()``; with ``normal_init(bins=k)`` it is
    an empty tensor and ``hist`` holds a k-bin histogram over [0°, 180°] instead (constant
    memory; the median is interpolated within one bin, error ≤ 180°/k).
    """

    sum_angle: Tensor
    count: Tensor
    within: Tensor
    angles: Tensor
    hist: Tensor


def normal_init(bins: int | None = None) -> NormalState:
    """Empty accumulator: exact median (``bins=None``) or a ``bins``-bin histogram.

    Example:
        >>> normal_init(bins=1800).hist.shape
        torch.Size([1800])
    """
    z = torch.zeros((), dtype=torch.float64)
    return NormalState(
        z,
        z.clone(),
        torch.zeros(len(_THRESHOLDS), dtype=torch.float64),
        torch.zeros(0, dtype=torch.float64),
        torch.zeros(bins or 0, dtype=torch.float64),
    )


def normal_update(state: NormalState, pred: Tensor, target: Tensor) -> NormalState:
    """Adds a batch's angular errors (degrees) over valid pixels (Σ_c n ≠ 0).

    .. math:: α_i = \\frac{180}{π} \\arccos\\big(\\mathrm{clip}(\\hat n_i^⊤ n_i / \\|\\hat n_i\\|,
              −1, 1)\\big)

    Args:
        pred, target: [B, 3, H, W]; ``pred`` is normalized here, ``target`` is unit.

    Example:
        >>> import torch
        >>> n = torch.zeros(1, 3, 1, 2); n[0, 2] = 1.0
        >>> p = n.clone(); p[0, :, 0, 1] = torch.tensor([1.0, 0.0, 1.0])  # 45° off
        >>> [round(v, 6) for v in normal_compute(normal_update(normal_init(), p, n))]
        [22.5, 22.5, 50.0, 50.0, 50.0]
    """
    p = pred.to(torch.float64)
    p = p / p.norm(dim=1, keepdim=True).clamp_min(1e-12)
    t = target.to(torch.float64)
    cos = (p * t).sum(dim=1).clamp(-1.0, 1.0).reshape(-1)
    valid = (t.sum(dim=1) != 0).reshape(-1)
    ang = torch.rad2deg(torch.acos(cos))
    w = valid.to(torch.float64)
    within = torch.stack([((ang < th).to(torch.float64) * w).sum() for th in _THRESHOLDS])
    if state.hist.numel() == 0:
        angles = torch.cat([state.angles, ang[valid].cpu()])
        hist = state.hist
    else:
        k = state.hist.numel()
        b = (ang / 180.0 * k).floor().clamp(0, k - 1).to(torch.long)
        hist = state.hist + torch.zeros(k, dtype=torch.float64, device=b.device).index_add(0, b, w).to(
            state.hist.device
        )
        angles = state.angles
    return NormalState(
        state.sum_angle + (ang * w).sum().cpu(),
        state.count + w.sum().cpu(),
        state.within + within.cpu(),
        angles,
        hist,
    )


def normal_compute(state: NormalState) -> tuple[float, float, float, float, float]:
    """(mean°, median°, % < 11.25°, % < 22.5°, % < 30°) over all valid pixels (LibMTL).

    The median is ``numpy.median``'s (mean of the two middle angles for an even count) when
    angles are kept, else interpolated in the histogram.

    Example:
        >>> import torch
        >>> s = NormalState(torch.tensor(6.0), torch.tensor(3.0), torch.tensor([3.0, 3, 3]),
        ...                 torch.tensor([1.0, 2.0, 3.0]), torch.zeros(0))
        >>> normal_compute(s)
        (2.0, 2.0, 100.0, 100.0, 100.0)
    """
    n = state.count.clamp_min(1)
    mean = (state.sum_angle / n).item()
    if state.hist.numel() == 0:
        a = state.angles.sort().values
        m = a.numel()
        median = float("nan") if m == 0 else ((a[(m - 1) // 2] + a[m // 2]) / 2).item()
    else:
        k = state.hist.numel()
        cdf = state.hist.cumsum(0)
        half = cdf[-1] / 2
        i = int(torch.searchsorted(cdf, half).item())
        before = cdf[i - 1].item() if i > 0 else 0.0
        frac = (half.item() - before) / max(state.hist[i].item(), 1e-300)
        median = (i + frac) * 180.0 / k
    pct = (100.0 * state.within / n).tolist()
    return mean, median, pct[0], pct[1], pct[2]


# ---------------------------------------------------------------------------- regression / classification


class MAEState(NamedTuple):
    """Per-column Σ|ŷ − y| (float64 [T]) and the number of rows."""

    abs_err: Tensor
    count: Tensor


def mae_init(num_tasks: int = 1) -> MAEState:
    """Zero sums for ``num_tasks`` columns.

    Example:
        >>> mae_init(3).abs_err
        tensor([0., 0., 0.], dtype=torch.float64)
    """
    return MAEState(torch.zeros(num_tasks, dtype=torch.float64), torch.zeros((), dtype=torch.float64))


def mae_update(state: MAEState, pred: Tensor, target: Tensor, scale: Tensor | None = None) -> MAEState:
    """Adds a batch [B, T] (or [B]); ``scale`` [T] multiplies errors (undo target normalization).

    .. math:: S_t \\mathrel{+}= \\sum_b s_t |\\hat y_{b,t} − y_{b,t}|

    Example:
        >>> import torch
        >>> s = mae_update(mae_init(2), torch.zeros(2, 2), torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        >>> mae_compute(s)
        [2.0, 3.0]
    """
    err = (pred.to(torch.float64) - target.to(torch.float64)).abs().reshape(target.shape[0], -1)
    if scale is not None:
        err = err * scale.to(err)
    return MAEState(state.abs_err + err.sum(0).cpu(), state.count + target.shape[0])


def mae_compute(state: MAEState) -> list[float]:
    """Per-column mean absolute error, MAE_t = S_t / N.

    Example:
        >>> import torch
        >>> mae_compute(MAEState(torch.tensor([2.0, 4.0]), torch.tensor(2.0)))
        [1.0, 2.0]
    """
    return (state.abs_err / state.count.clamp_min(1)).tolist()


def mae(pred: Tensor, target: Tensor, scale: Tensor | None = None) -> Tensor:
    """Per-column MAE of one batch [B, T] as a float64 tensor [T] (the streaming metric in one call).

    .. math:: \\mathrm{MAE}_t = \\frac{1}{B}\\sum_b s_t |\\hat y_{b,t} − y_{b,t}|

    Example:
        >>> import torch
        >>> mae(torch.zeros(2, 2), torch.tensor([[1.0, 2.0], [3.0, 4.0]]), scale=torch.tensor([1.0, 10.0]))
        tensor([ 2., 30.], dtype=torch.float64)
    """
    cols = target.reshape(target.shape[0], -1).shape[1]
    s = mae_update(mae_init(cols), pred, target, scale)
    return s.abs_err / s.count.clamp_min(1)


class AccuracyState(NamedTuple):
    """Number of correct predictions and of (non-ignored) examples."""

    correct: Tensor
    count: Tensor


def accuracy_init() -> AccuracyState:
    """Zero counts.

    Example:
        >>> accuracy_init().correct
        tensor(0)
    """
    return AccuracyState(torch.zeros((), dtype=torch.long), torch.zeros((), dtype=torch.long))


def accuracy_update(state: AccuracyState, logits: Tensor, target: Tensor, ignore_index: int = -1) -> AccuracyState:
    """Adds a batch of class logits [B, C] and labels [B].

    Example:
        >>> import torch
        >>> s = accuracy_update(accuracy_init(), torch.eye(3), torch.tensor([0, 2, 2]))
        >>> accuracy_compute(s)
        66.66666666666667
    """
    valid = target != ignore_index
    ok = (logits.argmax(dim=1) == target) & valid
    return AccuracyState(state.correct + ok.sum().cpu(), state.count + valid.sum().cpu())


def accuracy_compute(state: AccuracyState) -> float:
    """Accuracy in %, 100 · correct / count.

    Example:
        >>> import torch
        >>> accuracy_compute(AccuracyState(torch.tensor(3), torch.tensor(4)))
        75.0
    """
    return 100.0 * state.correct.item() / max(state.count.item(), 1)


# ---------------------------------------------------------------------------- Δp


def _as_nested(d: Mapping) -> dict[str, dict[str, float]]:
    return {t: (dict(v) if isinstance(v, Mapping) else {"": v}) for t, v in d.items()}


def delta_p_tasks(
    metrics: Mapping[str, Mapping[str, float] | float],
    stl: Mapping[str, Mapping[str, float] | float],
    higher_is_better: Mapping[str, Mapping[str, bool] | bool],
) -> dict[str, float]:
    """Per-task relative improvement over STL in %, Δp_t of Eq. (4).

    .. math::
        Δ_{p,t} = 100\\% × \\frac{1}{N_t} \\sum_{i=1}^{N_t} (−1)^{s_{t,i}}
                  \\frac{M_{t,i} − M^{STL}_{t,i}}{M^{STL}_{t,i}}

    with s_{t,i} = 0 if higher is better for metric i of task t, 1 otherwise.

    Args:
        metrics: ``{task: {metric: value}}`` of the method (or ``{task: value}`` for one
            metric per task); only the metrics listed here are used.
        stl: the same layout for the single-task baseline.
        higher_is_better: ``{task: {metric: bool}}`` or ``{task: bool}`` for all of a
            task's metrics.

    Example:
        >>> delta_p_tasks({"seg": {"miou": 55.0}, "depth": {"aerr": 0.75}},
        ...               {"seg": {"miou": 50.0}, "depth": {"aerr": 1.0}},
        ...               {"seg": True, "depth": False})
        {'seg': 10.0, 'depth': 25.0}
    """
    m, s = _as_nested(metrics), _as_nested(stl)
    out = {}
    for t, mt in m.items():
        hib = higher_is_better[t]
        terms = []
        for k, v in mt.items():
            up = hib[k] if isinstance(hib, Mapping) else hib
            base = s[t][k]
            terms.append((1.0 if up else -1.0) * (v - base) / base)
        out[t] = 100.0 * math.fsum(terms) / len(terms)
    return out


def delta_p(
    metrics: Mapping[str, Mapping[str, float] | float],
    stl: Mapping[str, Mapping[str, float] | float],
    higher_is_better: Mapping[str, Mapping[str, bool] | bool],
) -> float:
    """Average relative improvement over STL in %, Δp of Eq. (3): mean over tasks of Δp_t.

    .. math:: Δ_p = \\frac{1}{T} \\sum_{t=1}^T Δ_{p,t}

    Each task counts once however many metrics it has (:func:`delta_p_tasks`).

    Example:
        >>> delta_p({"a": {"acc": 90.0, "f1": 80.0}, "b": 2.0},
        ...         {"a": {"acc": 100.0, "f1": 80.0}, "b": 1.0},
        ...         {"a": True, "b": False})  # a: (-10 + 0) / 2 = -5; b: -100
        -52.5
    """
    per_task = delta_p_tasks(metrics, stl, higher_is_better)
    return math.fsum(per_task.values()) / len(per_task)

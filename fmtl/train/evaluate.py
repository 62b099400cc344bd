"""How tasks are scored: a streaming :class:`Metric` per task, and :func:`evaluate` over a whole split.

A metric is the triple of pure functions of :mod:`fmtl.metrics` (``init() -> state``,
``update(state, pred, target) -> state``, ``compute(state) -> values``) plus what Δp (Eq. 3–4)
needs to read it: the names of its values (the first is the main one), whether higher is better
for each (the sign s_{t,i}), and the unit. Because the states hold sums, a split's metric is
exact whatever the batch size.

Every regression task also gets a *normalized error*, its error divided by the spread of its
targets in the split (MAE / std(y_t), MSE / var(y_t)), so tasks of different units can be
averaged when no single-task baseline is available for Δp (:mod:`fmtl.train.selection`).

Built-ins: :func:`regression` (``"mae"`` — in the paper's units through ``scale``, e.g. meV for
QM9's energies — and ``"mse"``), :func:`accuracy`; :func:`metric` looks them up by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from tensordict import TensorDict

from .. import metrics as M
from ..losses import Where, target

__all__ = ["Metric", "RegressionState", "regression", "accuracy", "metric", "evaluate", "evaluate_epoch",
           "Evaluation"]  # fmt: skip

Evaluation = dict  # {"metrics": {task: {metric: value}}, "normalized": {task: value or None}}


class Metric(NamedTuple):
    """One task's streaming metric and how Δp reads it.

    Attributes:
        names: the names of the values ``compute`` returns, the main one first (e.g. ``("mae",)``).
        higher_is_better: one direction per value (the paper's s_{t,i}: 0 when higher is better).
        init: ``init() -> state``.
        update: ``update(state, pred, target) -> state`` (``pred``: the head's output for a batch).
        compute: ``compute(state) -> tuple of floats``, one per name.
        normalized: ``normalized(state) -> float``, a unit-free error (lower is better) used to
            select epochs without an STL reference; ``None`` when the metric has none.
        unit: the unit the values are reported in (``""`` when unitless).
    """

    names: tuple[str, ...]
    higher_is_better: tuple[bool, ...]
    init: Callable[[], Any]
    update: Callable[[Any, torch.Tensor, torch.Tensor], Any]
    compute: Callable[[Any], tuple[float, ...]]
    normalized: Callable[[Any], float] | None = None
    unit: str = ""


class RegressionState(NamedTuple):
    """Σ|e| and the count (:class:`fmtl.metrics.MAEState`), Σe², Σy and Σy² (float64) of one task."""

    mae: M.MAEState
    sq_err: torch.Tensor
    y_sum: torch.Tensor
    y_sq: torch.Tensor


def regression(names: Sequence[str] = ("mae",), scale: float = 1.0, unit: str = "") -> Metric:
    """MAE and/or MSE of one regression task; the MAE is multiplied by ``scale`` when reported.

    .. math::
        \\mathrm{MAE}_t = \\frac{s_t}{N}\\sum_i |\\hat y_{i,t} - y_{i,t}|,\\qquad
        \\mathrm{MSE}_t = \\frac{1}{N}\\sum_i (\\hat y_{i,t} - y_{i,t})^2

    with s_t = ``scale`` (e.g. the target's standard deviation times 1000 to report a model
    trained on standardized targets in meV). The normalized error is MAE / std(y) (unscaled) when
    the main metric is the MAE, MSE / var(y) otherwise.

    Example:
        >>> import torch
        >>> m = regression(("mae", "mse"), scale=10.0)
        >>> s = m.update(m.init(), torch.tensor([[1.0], [1.0]]), torch.tensor([[0.0], [2.0]]))
        >>> m.compute(s), m.normalized(s)
        ((10.0, 1.0), 1.0)
    """
    names = tuple(names)
    bad = [n for n in names if n not in ("mae", "mse")]
    if not names or bad:
        raise ValueError(f"regression metrics are 'mae' and 'mse'; got {list(names)}")
    zero = torch.zeros((), dtype=torch.float64)

    def init() -> RegressionState:
        return RegressionState(M.mae_init(1), zero.clone(), zero.clone(), zero.clone())

    def update(state: RegressionState, pred: torch.Tensor, y: torch.Tensor) -> RegressionState:
        pred, y = pred.reshape(y.shape[0], -1), y.reshape(y.shape[0], -1)
        err = pred.double() - y.double()
        yd = y.double()
        return RegressionState(M.mae_update(state.mae, pred, y), state.sq_err + err.square().sum().cpu(),
                               state.y_sum + yd.sum().cpu(), state.y_sq + yd.square().sum().cpu())  # fmt: skip

    def _stats(state: RegressionState) -> tuple[float, float, float]:
        n = max(float(state.mae.count), 1.0)
        mae = M.mae_compute(state.mae)[0]
        var = max(float(state.y_sq) / n - (float(state.y_sum) / n) ** 2, 1e-12)
        return mae, float(state.sq_err) / n, var

    def compute(state: RegressionState) -> tuple[float, ...]:
        mae, mse, _ = _stats(state)
        return tuple(mae * scale if n == "mae" else mse for n in names)

    def normalized(state: RegressionState) -> float:
        mae, mse, var = _stats(state)
        return mae / math.sqrt(var) if names[0] == "mae" else mse / var

    return Metric(names, (False,) * len(names), init, update, compute, normalized, unit)


def accuracy(ignore_index: int = -1) -> Metric:
    """Classification accuracy in % from logits [B, C] and labels [B] (:func:`fmtl.metrics.accuracy_update`).

    Example:
        >>> import torch
        >>> m = accuracy()
        >>> m.compute(m.update(m.init(), torch.eye(3), torch.tensor([0, 2, 2])))
        (66.66666666666667,)
    """

    def update(state: M.AccuracyState, logits: torch.Tensor, y: torch.Tensor) -> M.AccuracyState:
        return M.accuracy_update(state, logits, y.reshape(-1), ignore_index)

    return Metric(("accuracy",), (True,), M.accuracy_init, update, lambda s: (M.accuracy_compute(s),), None, "%")


_BY_NAME: dict[str, Callable[[], Metric]] = {
    "mae": lambda: regression(("mae",)),
    "mse": lambda: regression(("mse",)),
    "accuracy": accuracy,
}


def metric(spec: str | Metric) -> Metric:
    """A :class:`Metric` from its name (``"mae"``, ``"mse"``, ``"accuracy"``) or the metric itself.

    Example:
        >>> metric("mse").names, metric("accuracy").higher_is_better
        (('mse',), (True,))
        >>> metric("iou")
        Traceback (most recent call last):
        ...
        ValueError: unknown metric 'iou'; valid: accuracy, mae, mse (or pass a fmtl.train.Metric)
    """
    if isinstance(spec, Metric):
        return spec
    if spec not in _BY_NAME:
        raise ValueError(f"unknown metric {spec!r}; valid: {', '.join(sorted(_BY_NAME))} (or pass a fmtl.train.Metric)")
    return _BY_NAME[spec]()


def evaluate(
    predict: Callable[[TensorDict], Mapping[str, torch.Tensor]],
    ds: Any,
    metrics: Mapping[str, Metric],
    targets: Mapping[str, Where],
    batch_size: int,
    device: torch.device | str | None = None,
) -> Evaluation:
    """Every task's metrics of ``predict`` over every row of ``ds``, in order (no gradients).

    Args:
        predict: ``predict(batch) -> {task: prediction}`` (evaluation mode).
        ds: a dataset: ``len(ds)`` and ``ds[index_tensor] -> batch``.
        metrics: ``{task: Metric}`` in task order.
        targets: where each task's target lives in a batch (:func:`fmtl.losses.target`).
        batch_size: rows per forward pass.
        device: where the batches go before ``predict`` (default: where they are).

    Returns:
        ``{"metrics": {task: {metric: value}}, "normalized": {task: normalized error or None}}``.

    Example:
        >>> import torch
        >>> from fmtl.data import load
        >>> ds = load("synthetic", "val", n_eval=10, num_tasks=2, dim=3, scales=[1.0, 1.0])
        >>> out = evaluate(lambda b: {"t0": b["y"][:, :1], "t1": b["y"][:, 1:] + 1}, ds,
        ...                {"t0": regression(("mse",)), "t1": regression(("mse",))}, {"t0": 0, "t1": 1}, 4)
        >>> {t: round(m["mse"], 4) for t, m in out["metrics"].items()}
        {'t0': 0.0, 't1': 1.0}
    """
    if batch_size < 1:
        raise ValueError(f"the evaluation batch size must be >= 1; got {batch_size}")
    states = {t: m.init() for t, m in metrics.items()}
    with torch.no_grad():
        for start in range(0, len(ds), batch_size):
            batch = ds[torch.arange(start, min(start + batch_size, len(ds)))]
            if device is not None:
                batch = batch.to(device)
            out = predict(batch)
            for t, m in metrics.items():
                states[t] = m.update(states[t], out[t], target(batch, targets[t]))
    values = {t: dict(zip(m.names, m.compute(states[t]), strict=True)) for t, m in metrics.items()}
    normalized = {t: m.normalized(states[t]) if m.normalized is not None else None for t, m in metrics.items()}
    return {"metrics": values, "normalized": normalized}


def evaluate_epoch(
    problem: Any,
    params: TensorDict,
    buffers: Any,
    *,
    batch_size: int,
    device: torch.device | str | None = None,
    reference: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One epoch's record: validation and test metrics of ``problem`` at ``params``, and Δp against ``reference``.

    Args:
        problem: a :class:`fmtl.train.Problem` (its ``predict`` in evaluation mode, splits, metrics).
        params, buffers: the parameters and running statistics (``None`` without BatchNorm).
        batch_size, device: as for :func:`evaluate`.
        reference: STL's ``{"val", "test"}`` metrics (adds ``val_delta_p`` and ``test_delta_p``).
    """
    hib = {t: dict(zip(m.names, m.higher_is_better, strict=True)) for t, m in problem.metrics.items()}

    def predict(batch: Any) -> Mapping[str, torch.Tensor]:
        return problem.predict(params, buffers, batch)

    rec: dict[str, Any] = {split: evaluate(predict, problem.splits[split], problem.metrics, problem.targets,
                                           batch_size, device) for split in ("val", "test")}  # fmt: skip
    if reference is not None:
        rec["val_delta_p"] = M.delta_p(rec["val"]["metrics"], reference["val"], hib)
        rec["test_delta_p"] = M.delta_p(rec["test"]["metrics"], reference["test"], hib)
    return rec

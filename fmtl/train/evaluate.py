"""Per-task metrics of a model over one whole split (streamed in batches, accumulated in float64).

Regression tasks read their target from column t of ``batch["y"]``; the metrics are the
dataset's own (``ds.task_info[t].metrics``): ``"mae"`` (in the paper's units when the dataset
has ``mae_scale``, e.g. meV for QM9's energies) and ``"mse"``. Every task also gets a
*normalized error*, its error divided by the spread of its targets in the split
(MAE / std(y_t), MSE / var(y_t)), so tasks of different units can be averaged when no
single-task baseline is available for Δp.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDict

__all__ = ["Evaluation", "evaluate", "SUPPORTED_METRICS"]

SUPPORTED_METRICS = ("mae", "mse")
Evaluation = dict  # {"metrics": {task: {metric: value}}, "normalized": {task: value}}


def evaluate(
    predict: Callable[[TensorDict], dict[str, torch.Tensor]],
    ds,
    tasks: tuple[str, ...],
    batch_size: int,
) -> Evaluation:
    """Metrics of ``predict`` over every row of ``ds``, in order.

    .. math::
        \\mathrm{MAE}_t = \\frac{s_t}{N}\\sum_i |\\hat y_{i,t} - y_{i,t}|,\\qquad
        \\mathrm{MSE}_t = \\frac{1}{N}\\sum_i (\\hat y_{i,t} - y_{i,t})^2

    with s_t = ``ds.mae_scale[t]`` (1 when absent).

    Args:
        predict: ``predict(batch) -> {task: Tensor[B, 1]}`` (no gradients needed).
        ds: a dataset whose batches hold ``y`` [B, T].
        tasks: task order (column t of ``y`` is task ``tasks[t]``).
        batch_size: rows per forward pass.

    Returns:
        ``{"metrics": {task: {metric: value}}, "normalized": {task: error / spread}}``.

    Example:
        >>> import torch
        >>> from fmtl.data import load
        >>> ds = load("synthetic", "val", n_eval=10, num_tasks=2, dim=3, scales=[1.0, 1.0])
        >>> out = evaluate(lambda b: {"t0": b["y"][:, :1], "t1": b["y"][:, 1:] + 1}, ds, ds.tasks, 4)
        >>> {t: round(m["mse"], 4) for t, m in out["metrics"].items()}
        {'t0': 0.0, 't1': 1.0}
    """
    for t in tasks:
        bad = [m for m in ds.task_info[t].metrics if m not in SUPPORTED_METRICS]
        if bad:
            raise NotImplementedError(f"task {t!r}: metric(s) {bad} are not supported yet ({SUPPORTED_METRICS})")
    T = len(tasks)
    abs_err, sq_err = torch.zeros(T, dtype=torch.float64), torch.zeros(T, dtype=torch.float64)
    y_sum, y_sq = torch.zeros(T, dtype=torch.float64), torch.zeros(T, dtype=torch.float64)
    n = 0
    with torch.no_grad():
        for start in range(0, len(ds), batch_size):
            batch = ds[torch.arange(start, min(start + batch_size, len(ds)))]
            out = predict(batch)
            pred = torch.cat([out[t].reshape(-1, 1) for t in tasks], 1).double()
            y = batch["y"].double()
            err = pred - y
            abs_err += err.abs().sum(0)
            sq_err += err.square().sum(0)
            y_sum += y.sum(0)
            y_sq += y.square().sum(0)
            n += y.shape[0]
    n = max(n, 1)
    mae, mse = abs_err / n, sq_err / n
    var = (y_sq / n - (y_sum / n).square()).clamp_min(1e-12)
    scale = getattr(ds, "mae_scale", None)
    mae_report = mae * (scale.double() if scale is not None else 1.0)
    values = {"mae": mae_report, "mse": mse}
    metrics, normalized = {}, {}
    for i, t in enumerate(tasks):
        names = ds.task_info[t].metrics
        metrics[t] = {m: float(values[m][i]) for m in names}
        normalized[t] = float(mae[i] / var[i].sqrt()) if names[0] == "mae" else float(mse[i] / var[i])
    return {"metrics": metrics, "normalized": normalized}

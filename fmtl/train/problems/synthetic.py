"""The ``synthetic`` benchmark: regression tasks with controllable imbalance, seconds per run.

:func:`fmtl.data.load` ``("synthetic")`` (loss-scale and gradient-magnitude imbalance between
tasks), an HPS MLP (:func:`fmtl.models.mlp_hps`, one linear head per task), MSE losses, scored by
the test MSE. Used by the tests and for smoke checks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from tensordict import TensorDict

from ...heads import LinearHeads
from ...losses import make_loss_fn, mse
from ...representation import TwoStageLoss
from ..evaluate import regression
from ..problem import SPLITS, Problem

__all__ = ["build", "mlp_problem", "load_splits", "options", "two_stage"]


def load_splits(name: str, data: Mapping[str, Any]) -> dict:
    """The train, val and test splits of ``fmtl.data.load(name, split, **data)``."""
    from ... import data as fdata

    return {s: fdata.load(name, s, **data) for s in SPLITS}


def mlp_problem(name: str, cfg: Mapping[str, Any], splits: dict, in_dim: int) -> Problem:
    """An HPS MLP (hidden sizes ``cfg["model"]["hidden"]``) with MSE losses on ``fmtl.data`` splits.

    Each task is scored by its dataset metrics (``TaskInfo.metrics``: MAE in the dataset's units
    through ``ds.mae_scale`` when it has one, and/or MSE).
    """
    from ...models import mlp_hps

    train = splits["train"]
    tasks = tuple(train.tasks)
    model = mlp_hps(in_dim, hidden=tuple(cfg["model"]["hidden"]), tasks=dict.fromkeys(tasks, 1), seed=cfg["seed"])
    scale = getattr(train, "mae_scale", None)
    metrics = {t: regression(train.task_info[t].metrics, float(scale[i]) if scale is not None else 1.0,
                             train.task_info[t].unit) for i, t in enumerate(tasks)}  # fmt: skip
    problem = Problem.from_model(model, splits, {t: mse for t in tasks}, metrics, name=name, input_key="x")
    return problem._replace(loss_fn=two_stage(tasks, problem.targets))


def two_stage(tasks: Sequence[str], targets: Mapping[str, Any]) -> TwoStageLoss:
    """The MLP's MSE losses as encoder and heads (:class:`fmtl.TwoStageLoss`), for ``--rep-grad``.

    ``encode`` is :func:`fmtl.models.mlp_encode` on ``batch["x"]``, ``heads`` the linear heads and
    the per-task MSE: the same ℓ as the model's ``apply`` and :func:`fmtl.losses.make_loss_fn`. The heads
    are declared linear (:class:`fmtl.heads.LinearHeads`), so with ``--rep-grad`` a Gramian method
    never forms ∇z ℓ_t (:mod:`fmtl.linear_representation`).

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from fmtl.models import mlp_hps
        >>> m = mlp_hps(3, hidden=(4,), tasks={"a": 1, "b": 1}, seed=0)
        >>> batch = TensorDict({"x": torch.randn(6, 3), "y": torch.randn(6, 2)}, [6])
        >>> two_stage(("a", "b"), {"a": 0, "b": 1})(m.params, batch).shape
        torch.Size([2])
    """
    from ...models import mlp_encode

    # linear heads (fmtl.heads.LinearHeads): one product over z, as in the model's apply; with
    # --rep-grad a Gramian method takes the Gramian of ∇z ℓ_t from the heads' factors
    criterion = make_loss_fn(lambda outputs, _: outputs, dict.fromkeys(tasks, mse), targets=targets, input_key=None)

    def encode(shared: TensorDict, batch: Any) -> torch.Tensor:
        return mlp_encode(shared, batch["x"])

    return TwoStageLoss(encode, LinearHeads(criterion))


def build(cfg: Mapping[str, Any]) -> Problem:
    """The synthetic problem of a resolved configuration.

    Example:
        >>> p = build({"data": {"n": 16, "n_eval": 4, "num_tasks": 2, "dim": 3}, "model": {"hidden": [4]}, "seed": 0})
        >>> p.tasks, p.metrics["t0"].names
        (('t0', 't1'), ('mse',))
    """
    splits = load_splits("synthetic", cfg["data"])
    return mlp_problem("synthetic", cfg, splits, int(splits["train"][[0]]["x"].shape[-1]))


def options(data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The ``--data`` options (:func:`fmtl.data.load_synthetic`'s) and ``--model`` options, with their types."""
    from ..validate import FiniteFloat, NonNegative, NonNegativeFloat, Positive, PositiveFloat

    data_opts = {"num_tasks": Positive, "dim": Positive, "n": Positive, "n_eval": Positive, "rank": Positive,
                 "conflict": FiniteFloat, "noise": NonNegativeFloat, "scales": list[PositiveFloat] | None,
                 "seed": NonNegative}  # fmt: skip
    return {"data": data_opts, "model": {"hidden": list[Positive]}}


def _register() -> None:
    from . import register

    register("synthetic", build, options=options,
             settings={"epochs": 5, "batch_size": 64, "lr": 1e-3, "eval_batch_size": 1024, "log_every": 1},
             data={"num_tasks": 4, "dim": 32, "n": 2048, "n_eval": 512}, model={"hidden": [64, 64]},
             threads=1)  # fmt: skip


_register()

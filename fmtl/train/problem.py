"""A multi-task problem: datasets, a model, per-task losses and metrics — what :func:`fmtl.train.fit` trains.

A :class:`Problem` is plain data and pure functions:

* ``splits`` — ``{"train", "val", "test"}`` tables, ``len(ds)`` and ``ds[index_tensor] -> batch``
  (``fmtl.data`` datasets, or any ``torch.utils.data`` dataset through :class:`fmtl.train.rows.Rows`);
* ``params`` — the initial θ (``params["shared"]``) and ψ_t (``params["tasks"][t]``), in task order;
* ``loss_fn(params, batch) -> Tensor[T]`` — the training forward (dropout on, BatchNorm on batch
  statistics), one mean loss per task;
* ``predict(params, buffers, batch) -> {task: prediction}`` — the evaluation forward (no dropout,
  BatchNorm on the running statistics ``buffers``);
* ``metrics`` — ``{task: fmtl.train.Metric}``: how each task is scored and in which direction Δp
  (Eq. 3–4) reads it; ``targets`` — where each task's target lives in a batch;
* ``buffers`` / ``update_buffers(params, buffers, batch) -> buffers`` — the running statistics of a
  model with BatchNorm (``None`` otherwise), updated once per step outside the gradient pass.

Build one from a user's ``nn.Module`` encoder, heads and ``torch.utils.data`` datasets with
:meth:`Problem.from_modules`, or from a :class:`fmtl.models.Model` with :meth:`Problem.from_model`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from tensordict import TensorDict

from ..losses import Loss, Where, make_loss_fn
from ..params import functionalize
from ..step import BufferUpdate
from ..task_gradients import LossFn
from .evaluate import Metric, metric
from .rows import rows

__all__ = ["Problem", "SPLITS"]

SPLITS = ("train", "val", "test")
Predict = Callable[[TensorDict, Any, Any], Mapping[str, torch.Tensor]]


def _input(input_key: str | None) -> Callable[[Any], Any]:
    return (lambda batch: batch) if input_key is None else (lambda batch: batch[input_key])


class Problem(NamedTuple):
    """Everything :func:`fmtl.train.fit` needs about one multi-task problem (see the module docstring).

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> data = lambda n: TensorDataset(torch.randn(n, 4), torch.randn(n, 2))
        >>> p = Problem.from_modules(torch.nn.Linear(4, 8), {"a": torch.nn.Linear(8, 1), "b": torch.nn.Linear(8, 1)},
        ...                          train=data(32), val=data(8), test=data(8),
        ...                          losses={"a": torch.nn.functional.mse_loss, "b": torch.nn.functional.l1_loss},
        ...                          metrics={"a": "mse", "b": "mae"}, name="toy")
        >>> p.tasks, p.loss_fn(p.params, p.splits["train"][torch.arange(4)]).shape
        (('a', 'b'), torch.Size([2]))
    """

    name: str
    splits: Mapping[str, Any]
    params: TensorDict
    loss_fn: LossFn
    predict: Predict
    metrics: Mapping[str, Metric]
    targets: Mapping[str, Where]
    buffers: Any = None
    update_buffers: BufferUpdate | None = None

    @property
    def tasks(self) -> tuple[str, ...]:
        """Task names in the order of the loss vector ℓ ∈ R^T (the order of ``params["tasks"]``)."""
        return tuple(self.metrics)

    def check(self) -> Problem:
        """Raises ``ValueError`` naming what is inconsistent; returns the problem itself.

        Example:
            >>> Problem("x", {}, TensorDict({"shared": {}, "tasks": {}}, []), None, None, {}, {}).check()
            Traceback (most recent call last):
            ...
            ValueError: problem 'x': splits must be train, val, test; got []
        """
        if sorted(self.splits) != sorted(SPLITS):
            raise ValueError(f"problem {self.name!r}: splits must be {', '.join(SPLITS)}; got {sorted(self.splits)}")
        heads = list(self.params["tasks"].keys()) if "tasks" in self.params.keys() else []
        if list(self.metrics) != heads:
            raise ValueError(f"problem {self.name!r}: metrics are for tasks {list(self.metrics)} but the model's "
                             f"heads are {heads} (the same names, in the same order)")  # fmt: skip
        missing = [t for t in self.metrics if t not in self.targets]
        if missing:
            raise ValueError(f"problem {self.name!r}: no target for tasks {missing}")
        if (self.buffers is None) != (self.update_buffers is None):
            raise ValueError(f"problem {self.name!r}: buffers and update_buffers go together")
        for s in SPLITS:
            if len(self.splits[s]) == 0:
                raise ValueError(f"problem {self.name!r}: the {s} split is empty")
        return self

    @classmethod
    def from_model(
        cls,
        model: Any,
        splits: Mapping[str, Any],
        losses: Mapping[str, Loss],
        metrics: Mapping[str, str | Metric],
        *,
        name: str,
        targets: Mapping[str, Where] | None = None,
        input_key: str | None = "x",
    ) -> Problem:
        """A problem from a model with ``params``, ``apply(params, x, buffers=None, train=True)`` and ``buffers``.

        ``model`` is a :class:`fmtl.models.Model` (BatchNorm statistics through its ``stats`` and
        :func:`fmtl.models.update_buffers`) or what :func:`fmtl.functionalize` returns (through
        its ``update``).

        Args:
            model: the multi-task model; its heads are the tasks, in order.
            splits: ``{"train", "val", "test"}`` datasets (``torch.utils.data`` ones are adapted).
            losses: ``{task: loss(pred, target) -> scalar}``, means over the batch.
            metrics: ``{task: metric name or fmtl.train.Metric}`` (:func:`fmtl.train.evaluate.metric`).
            name: the problem's name (run directories are named after it).
            targets: where each task's target lives (default: column t of ``batch["y"]``).
            input_key: the batch key of the model input (``None``: the whole batch).

        Example:
            >>> import torch
            >>> from fmtl.data import load
            >>> from fmtl.models import resnet
            >>> m = resnet({"a": 1, "b": 1}, layers=(1,), widths=(4,), stem="cifar", seed=0)
            >>> x = lambda n: TensorDict({"x": torch.randn(n, 3, 8, 8), "y": torch.randn(n, 2)}, [n])
            >>> p = Problem.from_model(m, {"train": x(8), "val": x(4), "test": x(4)},
            ...                        {"a": torch.nn.functional.mse_loss, "b": torch.nn.functional.mse_loss},
            ...                        {"a": "mse", "b": "mse"}, name="tiny")
            >>> new = p.update_buffers(p.params, p.buffers, p.splits["train"][torch.arange(8)])
            >>> sorted(p.predict(p.params, new, p.splits["val"][torch.arange(2)]))
            ['a', 'b']
        """
        tasks = list(model.params["tasks"].keys())
        targets = dict(targets) if targets is not None else {t: i for i, t in enumerate(tasks)}
        if list(losses) != tasks:
            raise ValueError(f"problem {name!r}: losses are for tasks {list(losses)}, the model's heads are {tasks}")
        loss_fn = make_loss_fn(model.apply, {t: losses[t] for t in tasks}, targets=targets, input_key=input_key)
        x = _input(input_key)

        def predict(params: TensorDict, buffers: Any, batch: Any) -> Mapping[str, torch.Tensor]:
            return model.apply(params, x(batch), buffers=buffers, train=False)

        update = None
        if getattr(model, "update", None) is not None:

            def update(params: TensorDict, buffers: Any, batch: Any) -> Any:
                return model.update(params, buffers, x(batch))

        elif getattr(model, "stats", None) is not None and model.buffers is not None:
            from ..models import update_buffers

            def update(params: TensorDict, buffers: Any, batch: Any) -> Any:
                return update_buffers(model, params, buffers, x(batch))

        buffers = model.buffers if update is not None else None
        return cls(name, {s: rows(ds) for s, ds in splits.items()}, model.params, loss_fn, predict,
                   {t: metric(metrics[t]) for t in tasks}, targets, buffers, update).check()  # fmt: skip

    @classmethod
    def from_modules(
        cls,
        encoder: torch.nn.Module,
        heads: Mapping[str, torch.nn.Module],
        *,
        train: Any,
        val: Any,
        test: Any,
        losses: Mapping[str, Loss],
        metrics: Mapping[str, str | Metric],
        name: str = "custom",
        targets: Mapping[str, Where] | None = None,
    ) -> Problem:
        """A problem from a user's ``nn.Module`` encoder, one head per task and three datasets.

        The modules go through :func:`fmtl.functionalize` (BatchNorm and dropout included: batch
        statistics in the training forward, running statistics updated once per step and used
        for evaluation). A dataset sample is an ``(x, y)`` pair or a dict; the model's input is
        ``x``; by default task t's target is ``y[t]`` when ``y`` is a dict of per-task targets,
        else column t of ``y``.

        Args:
            encoder: the shared encoder θ.
            heads: ``{task: head ψ_t}``; the task order is the dict's order.
            train, val, test: the splits (``torch.utils.data`` map-style datasets or ``fmtl.data`` ones).
            losses: ``{task: loss(pred, target)}``, e.g. ``torch.nn.functional.cross_entropy``.
            metrics: ``{task: "mae" | "mse" | "accuracy" | fmtl.train.Metric}``.
            name: the problem's name.
            targets: where each task's target lives, overriding the default.
        """
        splits = {"train": rows(train), "val": rows(val), "test": rows(test)}
        tasks = list(heads)
        if targets is None:
            first = splits["train"][torch.arange(1)]
            keyed = "y" in first.keys() and isinstance(first["y"], TensorDict)
            missing = [t for t in tasks if keyed and t not in first["y"].keys()]
            if missing:
                raise ValueError(f"problem {name!r}: the samples' targets y have keys {list(first['y'].keys())}, "
                                 f"no target for tasks {missing}")  # fmt: skip
            targets = {t: ("y", t) if keyed else i for i, t in enumerate(tasks)}
        return cls.from_model(functionalize(encoder, heads), splits, losses, metrics, name=name, targets=targets)

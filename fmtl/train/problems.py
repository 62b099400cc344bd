"""Benchmarks: a dataset, a model, the per-task losses and how the tasks are scored.

A benchmark resolves a run configuration (filling in its defaults: epochs, batch size,
learning rate, dataset and model options) and builds a :class:`Problem`:

* ``synthetic`` — :func:`fmtl.data.load` ``("synthetic")``, an HPS MLP, MSE losses, scored by
  test MSE; seconds per run (tests, smoke checks).
* ``qm9`` — the 11 QM9 targets of the paper's Table 3 (Section 4.2): MSE on standardised
  targets for training, per-task MAE in the paper's units for scoring, the Nash-MTL split
  (110,831 / 10,000 / 10,000). The default model is an HPS MLP (169 → 256 → 256, ReLU, one
  linear head per task) on the fixed-size molecular descriptor of ``fmtl.data``, trained for
  10 epochs with batch 256 and Adam (lr 10⁻³): sized so that the default run (STL ensemble, then
  one MTL method) fits in about 10 minutes on 2 CPU cores including data preparation. The
  paper's model is the message-passing GNN (``--data representation=graph``, e.g. with
  ``--model hidden=64``): far better MAEs, but hours per epoch on a CPU. Absolute MAEs of the
  default are therefore well above Table 3's; Δp compares methods on equal terms.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from ..losses import make_loss_fn, mse
from ..task_gradients import LossFn

__all__ = ["Problem", "names", "resolve", "build", "default_threads"]


class Problem(NamedTuple):
    """Everything the training loop needs about one benchmark.

    Attributes:
        name: the benchmark's name.
        tasks: task names, in the order of the loss vector ℓ ∈ R^T.
        task_info: ``{task: fmtl.data.TaskInfo}`` (metric names, directions s_{t,i}, units).
        splits: ``{"train", "val", "test"}`` datasets.
        model: a :class:`fmtl.models.Model` (params θ, ψ_t and the pure ``apply``).
        loss_fn: ``loss_fn(params, batch) -> Tensor[T]``, means over the batch.
        input_key: batch key of the model input, ``None`` for graph batches.
    """

    name: str
    tasks: tuple[str, ...]
    task_info: dict
    splits: dict
    model: Any
    loss_fn: LossFn
    input_key: str | None


class _Spec(NamedTuple):
    settings: dict[str, Any]
    data: dict[str, Any]
    model: Callable[[Mapping[str, Any]], dict[str, Any]]  # model defaults, given the data options
    build: Callable[[Mapping[str, Any]], Problem]


def _load_splits(name: str, data: Mapping[str, Any]) -> dict:
    from .. import data as fdata

    return {s: fdata.load(name, s, **data) for s in ("train", "val", "test")}


def _mlp_problem(name: str, cfg: Mapping[str, Any], splits: dict, in_dim: int) -> Problem:
    from ..models import mlp_hps

    train = splits["train"]
    tasks = tuple(train.tasks)
    model = mlp_hps(in_dim, hidden=tuple(cfg["model"]["hidden"]), tasks=dict.fromkeys(tasks, 1), seed=cfg["seed"])
    loss_fn = make_loss_fn(model.apply, {t: mse for t in tasks})
    return Problem(name, tasks, dict(train.task_info), splits, model, loss_fn, "x")


def _synthetic(cfg: Mapping[str, Any]) -> Problem:
    splits = _load_splits("synthetic", cfg["data"])
    return _mlp_problem("synthetic", cfg, splits, int(splits["train"][[0]]["x"].shape[-1]))


def _qm9(cfg: Mapping[str, Any]) -> Problem:
    data = dict(cfg["data"])
    splits = _load_splits("qm9", data)
    train = splits["train"]
    if data.get("representation", "graph") == "descriptor":
        return _mlp_problem("qm9", cfg, splits, train.num_features)
    from ..models import qm9_gnn

    model = qm9_gnn(train.num_node_features, train.num_edge_features, tasks=train.tasks, seed=cfg["seed"],
                    **cfg["model"])  # fmt: skip
    loss_fn = make_loss_fn(model.apply, {t: mse for t in train.tasks}, input_key=None)
    return Problem("qm9", tuple(train.tasks), dict(train.task_info), splits, model, loss_fn, None)


_SPECS: dict[str, _Spec] = {
    "synthetic": _Spec(
        {"epochs": 5, "batch_size": 64, "lr": 1e-3, "eval_batch_size": 1024, "log_every": 1},
        {"num_tasks": 4, "dim": 32, "n": 2048, "n_eval": 512},
        lambda data: {"hidden": [64, 64]},
        _synthetic,
    ),
    "qm9": _Spec(
        {"epochs": 10, "batch_size": 256, "lr": 1e-3, "eval_batch_size": 4096, "log_every": 10},
        {"representation": "descriptor"},
        lambda data: {"hidden": [256, 256]} if data.get("representation") == "descriptor" else {"hidden": 64},
        _qm9,
    ),
}


def names() -> list[str]:
    """The benchmark names ``fmtl train --benchmark`` accepts.

    Example:
        >>> names()
        ['qm9', 'synthetic']
    """
    return sorted(_SPECS)


def _spec(name: str) -> _Spec:
    if name not in _SPECS:
        raise ValueError(f"unknown benchmark {name!r}; valid: {', '.join(names())}")
    return _SPECS[name]


def resolve(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Fills the benchmark's defaults into every unset setting (``None``) and table entry.

    Example:
        >>> from fmtl.train.config import DEFAULTS
        >>> r = resolve({**DEFAULTS, "benchmark": "synthetic", "data": {"n": 64}})
        >>> r["epochs"], r["data"]["n"], r["model"]["hidden"]
        (5, 64, [64, 64])
    """
    spec = _spec(cfg["benchmark"])
    out = dict(cfg)
    for k, v in spec.settings.items():
        if out.get(k) is None:
            out[k] = v
    out["data"] = {**spec.data, **(cfg.get("data") or {})}
    out["model"] = {**spec.model(out["data"]), **(cfg.get("model") or {})}
    out["opts"] = dict(cfg.get("opts") or {})
    return out


def build(cfg: Mapping[str, Any]) -> Problem:
    """Loads the datasets and builds the model and losses of a resolved configuration.

    Example:
        >>> from fmtl.train.config import DEFAULTS
        >>> p = build(resolve({**DEFAULTS, "benchmark": "synthetic", "data": {"n": 32, "n_eval": 8}}))
        >>> p.tasks, len(p.splits["val"])
        (('t0', 't1', 't2', 't3'), 8)
    """
    return _spec(cfg["benchmark"]).build(cfg)



def default_threads(cfg: Mapping[str, Any]) -> int | None:
    """CPU threads a run uses unless ``--threads`` says otherwise: 1 for the MLP models, else torch's default.

    The MLPs' matrix products are small (batch × a few hundred units), so intra-op threads cost
    more in synchronization than they save; measured on 2 cores, two threads were slower than
    one, and several times slower when other processes compete for the cores.

    Example:
        >>> default_threads({"benchmark": "qm9", "data": {"representation": "descriptor"}})
        1
        >>> default_threads({"benchmark": "qm9", "data": {"representation": "graph"}}) is None
        True
    """
    if cfg["benchmark"] == "qm9" and cfg["data"].get("representation", "graph") != "descriptor":
        return None
    return 1

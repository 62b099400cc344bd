"""The ``qm9`` benchmark: the 11 QM9 targets of the paper's Table 3 (Section 4.2).

MSE on standardised targets for training, per-task MAE in the paper's units for scoring, the
Nash-MTL split (110,831 / 10,000 / 10,000). The default model is an HPS MLP (169 → 256 → 256,
ReLU, one linear head per task) on the fixed-size molecular descriptor of ``fmtl.data``, trained
for 10 epochs with batch 256 and Adam (lr 10⁻³): sized so that the default run (STL ensemble,
then one MTL method) fits in about 10 minutes on 2 CPU cores including data preparation. The
paper's model is the message-passing GNN (``--data representation=graph``, e.g. with
``--model hidden=64``): far better MAEs, but hours per epoch on a CPU. Absolute MAEs of the
default are therefore well above Table 3's; Δp compares methods on equal terms.

DB-MTL runs here with this benchmark's β (:data:`DBMTL_DEFAULTS`, chosen by the paper's β grid
on validation), not LibMTL's β = 0.9; the resolved ``config.toml`` of a run shows it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...losses import mse
from ..evaluate import regression
from ..problem import Problem
from .synthetic import load_splits, mlp_problem

__all__ = ["build", "threads", "model_defaults", "options", "DBMTL_DEFAULTS", "PAPER_SETUP"]

#: DB-MTL's β on this benchmark: β_k = 0.5/√k, the point of the paper's grid (Section 4.1: 0.1, 0.5,
#: 0.9, 0.1/√k, 0.5/√k, 0.9/√k) with the best mean validation Δp on the default job (3 seeds:
#: +5.3 ± 0.5 %, test +5.1 ± 0.2 %; LibMTL's constant 0.9: −122.4 ± 7.2 %, test −122.7 ± 7.7 %;
#: ``benchmarks/paper/qm9.md``). ``fmtl.balancers.dbmtl()`` keeps LibMTL's β = 0.9, σ = 0; on this
#: benchmark ``--opt beta=0.9 --opt beta_sigma=0`` gives it back.
DBMTL_DEFAULTS: dict[str, float] = {"beta": 0.5, "beta_sigma": 0.5}

#: The paper's QM9 setup (Section 4.2, after Nash-MTL), ``fmtl train --setup paper``: the
#: message-passing GNN (width 64) on the molecular graphs, batch size 128, 300 epochs, Adam
#: (lr 10⁻³), ReduceLROnPlateau on validation Δp (Nash-MTL's factor 0.7 and patience 5:
#: :data:`fmtl.train.controls.PLATEAU_DEFAULTS`). The loss (MSE on standardised targets), the split
#: and the scoring are the benchmark's own. Hours per epoch on a CPU: a GPU job
#: (``benchmarks/paper/qm9_gnn.sh``); ``--epochs``/``--data subset=N`` make a CPU smoke run of it.
PAPER_SETUP: dict[str, Any] = {"data": {"representation": "graph"}, "model": {"hidden": 64}, "batch_size": 128,
                               "epochs": 300, "optimizer": "adam", "lr": 1e-3, "scheduler": "plateau",
                               "eval_batch_size": 128}  # fmt: skip


def build(cfg: Mapping[str, Any]) -> Problem:
    """The QM9 problem of a resolved configuration (descriptor MLP, or the GNN for ``representation="graph"``)."""
    data = dict(cfg["data"])
    splits = load_splits("qm9", data)
    train = splits["train"]
    if data.get("representation", "graph") == "descriptor":
        return mlp_problem("qm9", cfg, splits, train.num_features)
    from ...models import qm9_gnn

    model = qm9_gnn(train.num_node_features, train.num_edge_features, tasks=train.tasks, seed=cfg["seed"],
                    **cfg["model"])  # fmt: skip
    metrics = {t: regression(train.task_info[t].metrics, float(train.mae_scale[i]), train.task_info[t].unit)
               for i, t in enumerate(train.tasks)}  # fmt: skip
    return Problem.from_model(model, splits, {t: mse for t in train.tasks}, metrics, name="qm9", input_key=None)


def threads(cfg: Mapping[str, Any]) -> int | None:
    """1 for the descriptor MLP, torch's default for the GNN.

    The MLPs' matrix products are small (batch × a few hundred units), so intra-op threads cost
    more in synchronization than they save; measured on 2 cores, two threads were slower than
    one, and several times slower when other processes compete for the cores.

    Example:
        >>> threads({"data": {"representation": "descriptor"}}), threads({"data": {"representation": "graph"}})
        (1, None)
    """
    return 1 if cfg["data"].get("representation", "graph") == "descriptor" else None


def model_defaults(data: Mapping[str, Any]) -> dict[str, Any]:
    """The MLP's hidden sizes for the descriptor, the GNN's width for graphs.

    Example:
        >>> model_defaults({"representation": "graph"})
        {'hidden': 64}
    """
    return {"hidden": [256, 256]} if data.get("representation") == "descriptor" else {"hidden": 64}


def options(data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The ``--data`` options (:func:`fmtl.data.load_qm9`'s) and the ``--model`` options of the MLP or the GNN.

    Example:
        >>> sorted(options({"representation": "graph"})["model"])
        ['edge_hidden', 'hidden', 'set2set_steps', 'steps']
    """
    from typing import Literal

    from ..validate import NonNegative, Positive, PositiveFloat

    data_opts = {"representation": Literal["graph", "descriptor"], "subset": Positive | None,
                 "source": Literal["qm9pack", "xyz", "pyg"], "edges": Literal["complete", "cutoff", "bonds"],
                 "cutoff": PositiveFloat, "rbf": NonNegative, "cache": bool, "cache_dir": str | None,
                 "root": str | None}  # fmt: skip
    # tasks: a subset of the 11 targets (the loader's; issue 15's correlated-energy experiment).
    data_opts["tasks"] = list[str] | None
    if data.get("representation", "graph") == "descriptor":
        # The descriptor's input scaling (train statistics): standardized, or asinh of it, and
        # optionally clipped to ±clip σ; the graph's node features are not scaled this way.
        data_opts |= {"scaling": Literal["standard", "asinh"], "clip": PositiveFloat | None}
        return {"data": data_opts, "model": {"hidden": list[Positive]}}
    gnn = {"hidden": Positive, "steps": Positive, "set2set_steps": Positive, "edge_hidden": Positive}
    return {"data": data_opts, "model": gnn}


def _register() -> None:
    from . import register

    register("qm9", build, options=options,
             settings={"epochs": 10, "batch_size": 256, "lr": 1e-3, "eval_batch_size": 4096, "log_every": 10},
             data={"representation": "descriptor"},
             model=model_defaults,
             threads=threads,
             opts={"dbmtl": DBMTL_DEFAULTS},
             setups={"paper": PAPER_SETUP})  # fmt: skip


_register()

"""The ``fmtl`` command line: ``fmtl train``, ``fmtl compare``, ``fmtl tune``, ``fmtl evaluate`` and ``fmtl list``.

Example (the README's first command; trains the STL baseline first, then DB-MTL, and prints
the per-task test MAE table with Δp)::

    fmtl train --benchmark qm9 --method dbmtl
    fmtl train --problem my_problem.py:make --method dbmtl --device cuda   # your own problem
    fmtl tune --benchmark qm9 --grid-preset paper-beta --seeds 3           # β chosen on validation
    fmtl compare --benchmark qm9 --preset table5 --config runs/tune-qm9-dbmtl/selected.toml --seeds 3

Settings come from, in increasing priority: the benchmark's defaults, ``--config FILE.toml``,
then the command-line flags (method hyperparameters with ``--opt key=value``, dataset options
with ``--data key=value``, model options with ``--model key=value``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..amp import DTYPES
from ..optim import names as optim_names
from . import validate
from .config import DEFAULTS, default_text, for_method, load_toml, merge, parse_pairs
from .fit import SCHEDULERS

__all__ = ["main", "build_parser", "config_from_args"]

EXIT_USAGE, EXIT_DIVERGED, EXIT_CHECKPOINT = 2, 3, 4


def _d(key: str) -> str:
    return f"({default_text(key)})"


def _training_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--config", metavar="FILE", help="TOML file with settings (flags override it)")
    g.add_argument("--setup", metavar="NAME", help="a named setup of the benchmark under --config and the flags, "
                   "e.g. qm9's paper: the paper's GNN, batch 128, 300 epochs, plateau schedule (see `fmtl list`; "
                   "default: none, the benchmark's defaults)")
    g.add_argument("--benchmark", help="a registered problem: qm9, synthetic, nyuv2, cityscapes, office31, "
                   f"officehome, multimnist (see `fmtl list`) {_d('benchmark')}")
    g.add_argument("--problem", metavar="FILE.py:NAME",
                   help="your own problem: NAME is a function in FILE.py returning a fmtl.train.Problem "
                        "(called with the --data/--model options as keyword arguments)")
    g.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    g.add_argument("--epochs", type=int, help=_d("epochs"))
    g.add_argument("--batch-size", type=int, help=_d("batch_size"))
    g.add_argument("--lr", type=float, help=f"learning rate {_d('lr')}")
    g.add_argument("--optimizer", choices=tuple(optim_names()), help=_d("optimizer"))
    g.add_argument("--weight-decay", type=float, help=_d("weight_decay"))
    g.add_argument("--scheduler", choices=SCHEDULERS,
                   help="learning-rate schedule over the run; plateau: ReduceLROnPlateau on validation Δp, "
                        f"once per epoch {_d('scheduler')}")
    g.add_argument("--schedule", action="append", default=[], metavar="KEY=VALUE",
                   help="scheduler option, e.g. every=100 (updates) or every_epochs=100, gamma=0.5 (step), "
                        "warmup_steps=50 (warmup), final=1e-5 (cosine), factor=0.5 patience=3 (plateau) "
                        "(repeatable; default: the benchmark's for its scheduler, `fmtl list`, else "
                        "fmtl.schedules.options, fmtl.train.controls.PLATEAU_DEFAULTS)")
    g.add_argument("--clip-norm", type=float, metavar="C",
                   help=f"clip the balanced gradient to global L2 norm C before the optimizer {_d('clip_norm')}")
    g.add_argument("--patience", type=int, metavar="N",
                   help=f"stop after N epochs without a better validation score {_d('patience')}")
    g.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="method hyperparameter, e.g. beta=0.9 beta_sigma=0.5 alpha=max, or METHOD.key=value for "
                        "one method (repeatable; defaults: `fmtl list`)")
    g.add_argument("--data", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset option, e.g. subset=2000 or representation=graph (repeatable; default: the "
                        "benchmark's, see `fmtl list`)")
    g.add_argument("--model", action="append", default=[], metavar="KEY=VALUE",
                   help="model option, e.g. hidden=[256,256] (repeatable; default: the benchmark's)")
    g.add_argument("--arch", help="MTL architecture (same as --model arch=NAME): hps (default); mtan and "
                   "cross_stitch on nyuv2 and cityscapes")
    g.add_argument("--amp", choices=tuple(DTYPES),
                   help=f"autocast the forward and losses to bfloat16 or float16 on the run's device {_d('amp')}")
    g.add_argument("--accumulate", type=int, metavar="K",
                   help=f"accumulate per-task gradients over K micro-batches before the balancer {_d('accumulate')}")
    g.add_argument("--compile", action="store_true", default=None,
                   help=f"torch.compile(fullgraph=True) the step {_d('compile')}")
    g.add_argument("--strategy", choices=("auto", "jacrev", "vmap_grad", "loop"),
                   help=f"task-gradient strategy {_d('strategy')}")
    g.add_argument("--rep-grad", action="store_true", default=None,
                   help=f"representation gradients (MGDA-UB) for Gramian methods {_d('rep_grad')}")
    g.add_argument("--chunk-size", type=int, help=f"vmap chunk size of the task-gradient pass {_d('chunk_size')}")
    g.add_argument("--eval-batch-size", type=int, help=_d("eval_batch_size"))
    g.add_argument("--log-every", type=int, metavar="N",
                   help=f"write a metrics.jsonl step record every N steps {_d('log_every')}")
    g.add_argument("--checkpoint-every", type=int, metavar="N",
                   help="also checkpoint every N steps inside an epoch (default: 0, once per epoch)")
    g.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for torch (default: 1 for the MLP models, torch's choice for the GNN; "
                        "resume with the same N for bitwise-equal results)")
    g.add_argument("--overwrite", action="store_true", help="replace a different run in the output directory")
    g.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch lines")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fmtl`` command."""
    p = validate.Parser(prog="fmtl", description="Functional multi-task learning: train and compare "
                                "MTL methods (DB-MTL and baselines) against single-task learning.")  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train one method (Δp against STL, which is trained first if needed)")
    t.add_argument("--method", help=f"a balancer name or 'stl' (see `fmtl list`) {_d('method')}")
    t.add_argument("--seed", type=int, help=_d("seed"))
    t.add_argument("--out", metavar="DIR", help="output directory (default runs/<benchmark>-<method>-seed<S>)")
    t.add_argument("--stl", metavar="DIR", help="finished STL run to measure Δp against, or 'none' (default: the "
                   "STL run of the same settings next to --out, trained first if needed)")
    t.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    t.add_argument("--tensorboard", action="store_true",
                   help='also write TensorBoard events of every metrics.jsonl record and the hyperparameters '
                        '(pip install "fmtl[tb]")')
    _training_flags(t)
    c = sub.add_parser("compare", help="several methods x seeds, one paper-style table")
    c.add_argument("--methods", help="comma-separated method names, e.g. ew,dbmtl,mgda")
    c.add_argument("--preset", metavar="NAME", help="the rows of a paper experiment instead of --methods: table5, "
                   "fig1, fig5, fig6 (also writes NAME.md/.csv/.png in the paper's form)")  # fmt: skip
    c.add_argument("--variant", action="append", default=[], metavar="LABEL=METHOD:key=value,...",
                   help="an extra row: METHOD with its own hyperparameters, e.g. dbmtl-b05=dbmtl:beta=0.5 "
                        "(repeatable)")
    c.add_argument("--seeds", type=int, default=1, help="number of seeds (0..N-1) (default: 1)")
    c.add_argument("--out", metavar="DIR", help="output directory (default runs/compare-<benchmark>, "
                   "runs/<preset>-<benchmark> with --preset)")  # fmt: skip
    _training_flags(c)
    u = sub.add_parser("tune", help="a hyperparameter grid x seeds, selected on validation Δp (the paper's protocol)")
    u.add_argument("--method", help="the method tuned (default: the grid preset's, else dbmtl)")
    u.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="values of one hyperparameter (repeatable; the grid is their cartesian product)")
    u.add_argument("--grid-preset", metavar="NAME", help="a named grid: paper-beta (β ∈ {0.1, 0.5, 0.9} x "
                   "beta_sigma ∈ {0, 0.5}, Section 4.1)")  # fmt: skip
    u.add_argument("--seeds", type=int, default=1, help="number of seeds per grid point (0..N-1)")
    u.add_argument("--out", metavar="DIR", help="output directory (default runs/tune-<benchmark>-<method>)")
    _training_flags(u)
    e = sub.add_parser("evaluate", help="test metrics and Δp of a run's best (selected) or last checkpoint")
    e.add_argument("run", metavar="RUN", help="a run directory")
    e.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="best.pt (the epoch selected on validation) or checkpoint.pt (default: best)")
    e.add_argument("--device", help="cpu, cuda or cuda:N (default: cpu)")
    e.add_argument("--json", action="store_true", help="print the result as strict JSON instead of a table")
    sub.add_parser("list", help="list benchmarks (with their defaults) and methods (kind, hyperparameters)")
    return p


def _flag_layer(args: argparse.Namespace) -> dict[str, Any]:
    layer: dict[str, Any] = {k: getattr(args, k, None) for k in DEFAULTS if k not in ("benchmark", "method")}
    layer["benchmark"] = args.benchmark
    if args.problem is not None:
        from .problems import file_spec, is_file

        spec = file_spec(args.problem) if is_file(args.problem) or args.problem.endswith(".py") else args.problem
        if args.benchmark is not None and args.benchmark != spec:
            raise ValueError(f"--benchmark {args.benchmark} and --problem {args.problem} name different problems")
        layer["benchmark"] = spec
    layer["method"] = getattr(args, "method", None)
    layer["opts"] = parse_pairs(args.opt, "--opt")
    layer["schedule"] = parse_pairs(args.schedule, "--schedule")
    layer["data"] = parse_pairs(args.data, "--data")
    layer["model"] = parse_pairs(args.model, "--model")
    if args.arch is not None:
        layer["model"]["arch"] = args.arch
    return layer


def config_from_args(args: argparse.Namespace, method: str | None = None) -> dict[str, Any]:
    """Defaults ← ``--config`` file ← flags (``method``, when given, over both), resolved with the benchmark's defaults.

    Example:
        >>> a = build_parser().parse_args(["train", "--benchmark", "synthetic", "--opt", "beta=0.5"])
        >>> cfg = config_from_args(a)
        >>> cfg["method"], cfg["opts"], cfg["epochs"]
        ('dbmtl', {'beta': 0.5}, 5)
    """
    from .fit import configure

    flags = _flag_layer(args)
    if method is not None:
        flags["method"] = method
    return configure(None, merge(DEFAULTS, _base_layer(args, flags.get("benchmark"))), flags)


def _base_layer(args: argparse.Namespace, benchmark: str | None) -> dict[str, Any]:
    """The ``--setup`` layer (of ``benchmark``, else the file's, else the default one) under the ``--config`` file.

    Example:
        >>> a = build_parser().parse_args(["train", "--setup", "paper", "--epochs", "2"])
        >>> layer = _base_layer(a, None)
        >>> layer["epochs"], config_from_args(a)["epochs"], config_from_args(a)["batch_size"]
        (300, 2, 128)
    """
    file_layer = load_toml(args.config) if args.config else {}
    if not getattr(args, "setup", None):
        return file_layer
    from .problems import setup

    bench = benchmark or file_layer.get("benchmark") or DEFAULTS["benchmark"]
    return merge(setup(bench, args.setup), file_layer)


def _print_run(results: dict[str, Any], out: Path, reused: bool) -> None:
    from .report import run_table
    from .selection import stl_reference

    stl = None
    if results.get("stl_dir"):
        stl_path = Path(results["stl_dir"]) / "results.json"
        if stl_path.is_file():
            stl = stl_reference(json.loads(stl_path.read_text()))["test"]
    from .finish import CRITERIA_TEXT

    sel = results["selected"]
    how = CRITERIA_TEXT[sel["criterion"]]
    epoch = f"epoch {sel['epoch'] + 1}" if "epoch" in sel else "per-task epochs"
    head = f"{results['benchmark']} · {results['method']} · seed {results['seed']} · test metrics at {epoch}"
    print(f"\n{head} (selected on {how})" + (" [reused finished run]" if reused else ""))
    print(run_table(results, stl))
    if results.get("note"):
        print(f"note: {results['note']}")
    if results.get("delta_p") is not None:
        print(f"Δp = {results['delta_p']:+.2f}% against STL in {results['stl_dir']}")
    print(f"wall time {results['wall_time_s']:.0f} s (training + evaluation) · outputs in {out}")


def _set_threads(args: argparse.Namespace, cfg: dict[str, Any]) -> None:
    import torch

    from .problems import default_threads

    n = args.threads if args.threads else default_threads(cfg)
    if n:
        torch.set_num_threads(n)


def _train(args: argparse.Namespace) -> int:
    from .device import resolve
    from .fit import check, fit, resumed
    from .runs import default_out, read_config

    start = time.perf_counter()
    validate.command(args)
    device = resolve(args.device)
    if args.resume:
        out = Path(args.resume)
        saved = read_config(out)
        cfg = resumed(saved, _base_layer(args, saved["benchmark"]), _flag_layer(args), out)
    else:
        cfg = for_method(config_from_args(args))  # a shared file's [opts.METHOD] tables (as fmtl tune writes)
        out = Path(args.out) if args.out else default_out(cfg)
        validate.out_dir(out)
    check(cfg)
    _set_threads(args, cfg)
    results = fit(None, out, config=cfg, resume=bool(args.resume), overwrite=args.overwrite and not args.resume,
                  stl=args.stl, quiet=args.quiet, tensorboard=args.tensorboard, device=device)  # fmt: skip
    reused = results.pop("reused", False)
    if results.get("selected"):
        _print_run(results, out, reused)
        print(f"total elapsed {time.perf_counter() - start:.0f} s (data preparation, STL baseline if trained, "
              "this run)")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from . import presets
    from .compare import compare, expand_rows, parse_variant
    from .device import resolve
    from .fit import check
    from .problems import label

    validate.command(args)
    # The base of every row, resolved as the STL reference's: each row sets its method, and its
    # benchmark's defaults for that method (fit fills them per run) must not reach the other rows.
    cfg = config_from_args(args, method="stl")
    device = resolve(args.device)
    methods = [m.strip() for m in (args.methods or "").split(",") if m.strip()]
    if args.preset and methods:
        raise ValueError(f"--preset {args.preset} fixes the rows of the table; drop --methods")
    if args.preset and args.variant:
        raise ValueError(f"--preset {args.preset} fixes the rows of the table; drop --variant")
    if not methods and not args.preset and not args.variant:
        raise ValueError("--methods needs at least one method name (or give --preset NAME)")
    variants = presets.variants(args.preset) if args.preset else []
    check({**cfg, "method": "stl", "opts": {}})
    variants = [*variants, *(parse_variant(v) for v in args.variant)]
    for row in expand_rows([m for m in methods if m != "stl"], variants, cfg["opts"]).values():
        check({**cfg, "method": row.method, "opts": row.opts})
    if args.seeds < 1:
        raise ValueError("--seeds must be >= 1")
    _set_threads(args, cfg)
    out = Path(args.out or f"runs/{args.preset or 'compare'}-{label(cfg['benchmark'])}")
    kw = {"overwrite": args.overwrite, "quiet": args.quiet, "device": device}
    if args.preset:
        res = presets.run_preset(cfg, args.preset, args.seeds, out, **kw)
    else:
        res = compare(cfg, methods, args.seeds, out, variants=variants, **kw)
    print(res["markdown"])
    if args.preset:
        print(f"\n{res['paper']}")
    print("written: " + ", ".join(str(p) for p in res["paths"]))
    return 0


def _tune(args: argparse.Namespace) -> int:
    from .tune import command

    return command(args, config_from_args(args), _set_threads)


def _list() -> int:
    from .catalog import listing

    print(listing())
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate_run import evaluate_run
    from .records import to_json
    from .report import run_table

    res = evaluate_run(args.run, args.checkpoint, device=args.device)
    if args.json:
        print(to_json(res, indent=1))
        return 0
    stl = None
    if res["stl_dir"]:
        from .runs import read_results
        from .selection import stl_reference

        stl = stl_reference(read_results(res["stl_dir"]))["test"]
    print(f"{res['benchmark']} · {res['method']} · seed {res['seed']} · {res['checkpoint']} (epoch {res['epoch'] + 1})")
    print(run_table(res, stl))
    if res["delta_p"] is not None:
        print(f"Δp = {res['delta_p']:+.2f}% (validation Δp {res['val_delta_p']:+.2f}%) against STL in {res['stl_dir']}")
    else:
        print("no finished STL reference: Δp is not available")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fmtl`` command; returns the exit status.

    Example:
        >>> main(["train", "--method", "nope", "--benchmark", "synthetic"])
        2
    """
    import torch

    from ..allocator import tune
    from .checkpoint import CheckpointError
    from .loop import TrainingDiverged
    from .runs import RunDirError

    args = build_parser().parse_args(argv)
    tune()  # keep large freed blocks (vectorized backwards page-fault otherwise; FMTL_DEFAULT_MALLOC=1 opts out)
    threads = torch.get_num_threads()
    try:
        if args.command == "list":
            return _list()
        return {"train": _train, "compare": _compare, "tune": _tune, "evaluate": _evaluate}[args.command](args)
    except TrainingDiverged as e:
        print(f"fmtl: error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except CheckpointError as e:
        print(f"fmtl: error: {e}", file=sys.stderr)
        return EXIT_CHECKPOINT
    except (RunDirError, ValueError, ModuleNotFoundError, OSError, NotImplementedError) as e:
        print(f"fmtl: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fmtl: interrupted; the last checkpoint is intact (continue with --resume DIR)", file=sys.stderr)
        return 130
    finally:
        torch.set_num_threads(threads)  # main() may run in-process (tests, notebooks)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

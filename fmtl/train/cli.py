"""The ``fmtl`` command line: ``fmtl train``, ``fmtl compare`` and ``fmtl list``.

Example (the README's first command; trains the STL baseline first, then DB-MTL, and prints
the per-task test MAE table with Δp)::

    fmtl train --benchmark qm9 --method dbmtl
    fmtl train --problem my_problem.py:make --method dbmtl --device cuda   # your own problem

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
from .config import DEFAULTS, load_toml, merge, parse_pairs

__all__ = ["main", "build_parser", "config_from_args"]

EXIT_USAGE, EXIT_DIVERGED, EXIT_CHECKPOINT = 2, 3, 4


def _training_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--config", metavar="FILE", help="TOML file with settings (flags override it)")
    g.add_argument("--benchmark", help="a registered problem: qm9 (default), synthetic (see `fmtl list`)")
    g.add_argument("--problem", metavar="FILE.py:NAME",
                   help="your own problem: NAME is a function in FILE.py returning a fmtl.train.Problem "
                        "(called with the --data/--model options as keyword arguments)")
    g.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--optimizer", choices=tuple(optim_names()))
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="method hyperparameter, e.g. beta=0.9 beta_sigma=0.5 alpha=max (repeatable)")
    g.add_argument("--data", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset option, e.g. subset=2000 or representation=graph (repeatable)")
    g.add_argument("--model", action="append", default=[], metavar="KEY=VALUE",
                   help="model option, e.g. hidden=[256,256] (repeatable)")
    g.add_argument("--amp", choices=tuple(DTYPES),
                   help="autocast the forward and losses to bfloat16 or float16 on the run's device")
    g.add_argument("--accumulate", type=int, metavar="K",
                   help="accumulate per-task gradients over K micro-batches before the balancer")
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile(fullgraph=True) the step")
    g.add_argument("--strategy", choices=("auto", "jacrev", "vmap_grad", "loop"), help="task-gradient strategy")
    g.add_argument("--chunk-size", type=int, help="vmap chunk size of the task-gradient pass")
    g.add_argument("--eval-batch-size", type=int)
    g.add_argument("--log-every", type=int, metavar="N", help="write a metrics.jsonl step record every N steps")
    g.add_argument("--checkpoint-every", type=int, metavar="N",
                   help="also checkpoint every N steps inside an epoch (default: once per epoch)")
    g.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for torch (default: 1 for the MLP models, torch's choice for the GNN; "
                        "resume with the same N for bitwise-equal results)")
    g.add_argument("--overwrite", action="store_true", help="replace a different run in the output directory")
    g.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch lines")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fmtl`` command."""
    p = argparse.ArgumentParser(prog="fmtl", description="Functional multi-task learning: train and compare "
                                "MTL methods (DB-MTL and baselines) against single-task learning.")  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train one method (Δp against STL, which is trained first if needed)")
    t.add_argument("--method", help="a balancer name or 'stl' (default dbmtl; see `fmtl list`)")
    t.add_argument("--seed", type=int)
    t.add_argument("--out", metavar="DIR", help="output directory (default runs/<benchmark>-<method>-seed<S>)")
    t.add_argument("--stl", metavar="DIR", help="finished STL run to measure Δp against, or 'none'")
    t.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    t.add_argument("--tensorboard", action="store_true", help="also write TensorBoard events (needs tensorboard)")
    _training_flags(t)
    c = sub.add_parser("compare", help="several methods x seeds, one paper-style table")
    c.add_argument("--methods", required=True, help="comma-separated method names, e.g. ew,dbmtl,mgda")
    c.add_argument("--seeds", type=int, default=1, help="number of seeds (0..N-1)")
    c.add_argument("--out", metavar="DIR", help="output directory (default runs/compare-<benchmark>)")
    _training_flags(c)
    sub.add_parser("list", help="list benchmarks and methods")
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
    layer["data"] = parse_pairs(args.data, "--data")
    layer["model"] = parse_pairs(args.model, "--model")
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

    file_layer = load_toml(args.config) if args.config else {}
    flags = _flag_layer(args)
    if method is not None:
        flags["method"] = method
    return configure(None, merge(DEFAULTS, file_layer), flags)


def _valid_methods() -> list[str]:
    from .. import balancers

    return sorted(balancers.names()) + ["stl"]


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
    from .fit import check, fit
    from .runs import default_out, read_config

    start = time.perf_counter()
    device = resolve(args.device)
    if args.resume:
        out = Path(args.resume)
        cfg = read_config(out)
        if args.epochs is not None:
            cfg["epochs"] = args.epochs
    else:
        cfg = config_from_args(args)
        out = Path(args.out) if args.out else default_out(cfg)
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
    from .compare import compare, split_opts
    from .device import resolve
    from .fit import check
    from .problems import label

    # The base of every row, resolved as the STL reference's: each row sets its method, and its
    # benchmark's defaults for that method (fit fills them per run) must not reach the other rows.
    cfg = config_from_args(args, method="stl")
    device = resolve(args.device)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise ValueError("--methods needs at least one method name")
    check({**cfg, "method": "stl", "opts": {}})
    for m, opts in split_opts(cfg["opts"], [m for m in methods if m != "stl"]).items():
        check({**cfg, "method": m, "opts": opts})
    if args.seeds < 1:
        raise ValueError("--seeds must be >= 1")
    _set_threads(args, cfg)
    out = Path(args.out or f"runs/compare-{label(cfg['benchmark'])}")
    res = compare(cfg, methods, args.seeds, out, overwrite=args.overwrite, quiet=args.quiet, device=device)
    print(res["markdown"])
    print("written: " + ", ".join(str(p) for p in res["paths"]))
    return 0


def _list() -> int:
    from .problems import names

    print("benchmarks: " + ", ".join(names()) + "  (or --problem FILE.py:NAME)")
    print("methods:    " + ", ".join(_valid_methods()))
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
        return _train(args) if args.command == "train" else _compare(args)
    except TrainingDiverged as e:
        print(f"fmtl: error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except CheckpointError as e:
        print(f"fmtl: error: {e}", file=sys.stderr)
        return EXIT_CHECKPOINT
    except (RunDirError, ValueError, ModuleNotFoundError, FileNotFoundError, NotImplementedError) as e:
        print(f"fmtl: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fmtl: interrupted; the last checkpoint is intact (continue with --resume DIR)", file=sys.stderr)
        return 130
    finally:
        torch.set_num_threads(threads)  # main() may run in-process (tests, notebooks)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Benchmark: the T task gradients per strategy × model × T, eager and compiled, time and peak memory.

Every strategy is first checked equal to the loop baseline (one forward, T ``autograd.grad``).
``ratio_vs_loop`` divides by the faster loop baseline: on the model itself or, where it has one,
on its form with heads applied one by one (a loop pays T² for heads applied as one product).

``--max-memory loop`` adds the bounded-memory rows: ``auto, max_memory=loop`` is
``task_gradients(max_memory=M)`` with M the measured peak of the loop baseline (the plan it picks,
a strategy and a chunk, is recorded), so its peak must come out at or under the loop's.

    python benchmarks/task_gradients.py                    # default table (a few minutes)
    python benchmarks/task_gradients.py --quick            # smoke run (seconds)
    python benchmarks/task_gradients.py --models cnn --tasks 11 --chunks 1,2,4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

import fmtl  # noqa: E402
from fmtl import strategy as auto  # noqa: E402

STRATEGIES = ("jacrev", "vmap_grad", "loop")
# the larger models stop at T=11 (QM9 has 11 targets; their T=40 runs would take minutes each)
MAX_T = {"resnet": 11, "qm9_gnn": 11}


def run_one(model: str, T: int, args) -> list[dict]:
    problem = common.build(model, T, args.device)
    leaves = common._leaves_requiring_grad(problem.params)
    losses, J, _ = common.loop_task_gradients(problem, leaves)
    params, batch, loss_fn = problem.params, problem.batch, problem.loss_fn

    def tg(strategy: str, chunk: int | None = None):
        return lambda: fmtl.task_gradients(loss_fn, params, batch, strategy=strategy, chunk_size=chunk)

    fns = {"loop baseline": lambda: common.loop_task_gradients(problem, leaves)}
    if model in common.PER_HEAD_NAME:  # the loop is faster with heads one by one: it counts too
        per_head = common.build(common.PER_HEAD_NAME[model], T, args.device)
        per_head_leaves = common._leaves_requiring_grad(per_head.params)
        fns["loop baseline, heads one by one"] = lambda: common.loop_task_gradients(per_head, per_head_leaves)
    for s in args.strategies:
        fns[s] = tg(s)
    for s in args.chunk_strategies:
        for c in args.chunks:
            if c < T:
                fns[f"{s} chunk={c}"] = tg(s, c)
    chosen = auto.choose_strategy(loss_fn, params, batch) if args.auto else None
    if args.auto:
        fns["auto"] = tg("auto")
    plan = None
    if args.max_memory == "loop":
        budget = int(common.peak_mib(fns["loop baseline"], args.device) * 2**20)
        plan = auto.choose(loss_fn, params, batch, max_memory=budget)
        fns["auto, max_memory=loop"] = lambda: fmtl.task_gradients(loss_fn, params, batch, max_memory=budget)
    for name, f in fns.items():
        if not name.startswith("loop baseline"):
            common.assert_same_gradients(f(), losses, J)
    compiled, mismatches = {}, []
    if T in args.compile_tasks:
        for s in args.compiled:
            f = torch.compile(lambda p, b, s=s: fmtl.task_gradients(loss_fn, p, b, strategy=s), fullgraph=True)
            try:
                common.assert_same_gradients(f(params, batch), losses, J)
            except AssertionError as e:  # recorded, not timed: a wrong result has no speed
                mismatches.append({"model": model, "T": T, "variant": f"{s} compiled", "error": str(e)})
                print(model, T, s, "compiled: MISMATCH", e, flush=True)
                continue
            compiled[f"{s} compiled"] = lambda f=f: f(params, batch)
    times = common.timings({**fns, **compiled}, rounds=args.rounds, warmup=args.warmup, clock=args.clock,
                           sync=common.sync_for(args.device))  # fmt: skip
    rows = list(mismatches)
    loop_ms = min(times["loop baseline"].ms, times.get("loop baseline, heads one by one", times["loop baseline"]).ms)
    load = common.loadavg()
    for name, t in times.items():
        f = {**fns, **compiled}[name]
        picked = chosen if name == "auto" else (list(plan) if name == "auto, max_memory=loop" else None)
        rows.append({
            "model": model, "T": T, "variant": name, "ms": t.ms, "spread": t.spread,
            "ratio_vs_loop": round(t.ms / loop_ms, 3),
            "peak_mib": round(common.peak_mib(f, args.device), 2) if args.memory or name.startswith("auto,") else None,
            "auto_chose": picked, "loadavg": load,
        })  # fmt: skip
        print(f"{model:8s} T={T:3d} {name:24s} {t.ms:9.2f} ms  x{rows[-1]['ratio_vs_loop']:.2f}  spread {t.spread}  "
              f"peak {rows[-1]['peak_mib']} MiB" + (f"  (→ {picked})" if picked else ""), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mlp,cnn,resnet,qm9_gnn")
    p.add_argument("--tasks", default="2,3,11,40")
    p.add_argument("--compiled", default="jacrev", help="strategies to also run under torch.compile")
    p.add_argument("--compile-tasks", default="11,40")
    p.add_argument("--chunks", default="", help="extra eager rows: --chunk-strategies with these chunk sizes")
    p.add_argument("--chunk-strategies", default="jacrev", help="the strategies of the --chunks rows")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help="eager strategies to time")
    p.add_argument("--no-auto", dest="auto", action="store_false")
    p.add_argument("--uncapped", action="store_true", help="run the GNN and ResNet at T > 11 too")
    p.add_argument("--max-memory", choices=("", "loop"), default="", help="loop: add the max_memory=loop-peak row")
    common.add_run_args(p)
    args = p.parse_args(argv)
    common.setup(args)
    if args.quick:
        args.compiled = ""
    args.compiled = [s for s in args.compiled.split(",") if s]
    args.strategies = [s for s in args.strategies.split(",") if s]
    args.compile_tasks = [int(t) for t in args.compile_tasks.split(",") if t]
    args.chunks = [int(c) for c in args.chunks.split(",") if c]
    args.chunk_strategies = [s for s in args.chunk_strategies.split(",") if s]
    results = {"machine": common.machine(args.device), "rows": []}
    name = Path(__file__).stem + ("" if args.malloc == "default" else "_malloc_tuned")
    for model in args.models.split(","):
        for T in (int(t) for t in args.tasks.split(",")):
            if args.uncapped or T <= MAX_T.get(model, T):
                results["rows"] += run_one(model, T, args)
                common.save(results, name, args.out)  # after every problem: a late failure loses nothing
    print("wrote", common.save(results, name, args.out))


if __name__ == "__main__":
    main()

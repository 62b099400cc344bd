"""Benchmark: the whole DB-MTL step vs its own task gradients, the loop baselines and the EW floor.

Rows per model and T (eager, then compiled with ``torch.compile(fullgraph=True)``):
``loop step`` (lean loop baseline, same maths; ``vs_loop_step`` divides by the faster of it and,
where the model has one, its loop on heads applied one by one), ``libmtl step`` (LibMTL-faithful), ``dbmtl step``
(fmtl; ``+cosines``: with ``diagnostics=True``, against ``loop step +cosines``), ``task_gradients``
(the bare call inside it), ``ew step`` (one backward: the floor of any step), ``uw step`` (a
loss-only balancer), the FLOP floor ``1 forward + T backwards``, and the ``[T, P] update floor``
(the least memory traffic of DB-MTL's update: one fused EMA pass, the norms, the combination).

    python benchmarks/step.py              # default table (a few minutes)
    python benchmarks/step.py --quick      # smoke run (seconds)
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


def _update_floor(ema, J):
    new = ema.apply(lambda e, g: torch.lerp(e, g, 0.1), J)
    norms = fmtl.tree.row_norms(new)
    return fmtl.tree.combine(norms, new)


def run_one(model: str, T: int, args) -> list[dict]:
    problem = common.MODELS[model](T)
    params, batch, loss_fn = problem.params, problem.batch, problem.loss_fn
    steps = {
        "dbmtl step": fmtl.make_step(loss_fn, fmtl.balancers.get("dbmtl"), fmtl.optim.adam(1e-3)),
        "dbmtl step +cosines": fmtl.make_step(loss_fn, fmtl.balancers.get("dbmtl"), fmtl.optim.adam(1e-3),
                                              diagnostics=True),
        "ew step": fmtl.make_step(loss_fn, fmtl.balancers.get("ew"), fmtl.optim.adam(1e-3)),
    }
    if "uw" in fmtl.balancers.names():
        steps["uw step"] = fmtl.make_step(loss_fn, fmtl.balancers.get("uw"), fmtl.optim.adam(1e-3))
    states = {k: s.init(params) for k, s in steps.items()}
    chosen = auto.choose_strategy(loss_fn, params, batch)
    # the loop step and fmtl's balancer agree on the first aggregated gradient (same maths)
    loop = common.LoopDBMTL(problem)
    loop()
    dbmtl = fmtl.balancers.get("dbmtl")
    g, _, _ = dbmtl.update(fmtl.task_gradients(loss_fn, params, batch), dbmtl.init(params, T), params)
    ours = torch.cat([v.reshape(-1) for v in g["shared"].values(True, True)])
    theirs = torch.cat([v.grad.reshape(-1) for v in loop.shared])
    assert torch.linalg.vector_norm(ours - theirs) <= 1e-3 * torch.linalg.vector_norm(theirs), "loop step differs"
    J = fmtl.task_gradients(loss_fn, params, batch).shared
    ema = J.apply(torch.randn_like)
    fns = {
        "loop step": loop,
        "loop step +cosines": common.LoopDBMTL(problem, diagnostics=True),
        # a loop pays T² for heads applied as one product (each ℓ_t's backward crosses all heads):
        # where the model has a head-by-head form, the loop also runs on it and the faster counts
        **({"loop step, heads one by one": common.LoopDBMTL(common.PER_HEAD[model](T))}
           if model in common.PER_HEAD else {}),  # fmt: skip
        "libmtl step": common.LibMTLDBMTL(problem),
        **{k: (lambda k=k: steps[k](params, states[k], batch)) for k in steps},
        "task_gradients": lambda: fmtl.task_gradients(loss_fn, params, batch),
        "forward": lambda: loss_fn(params, batch),
        "forward+backward": lambda: torch.func.grad(lambda p: loss_fn(p, batch).sum())(params),
        # DB-MTL's least memory traffic over [T, P]: the EMA as one fused pass (read ĝ and g,
        # write ĝ), one pass for the norms, one for Σ_t w_t ĝ_t
        "[T, P] update floor": lambda: _update_floor(ema, J),
    }
    if args.compile and model in args.compile_models:
        for k in ("dbmtl step", "ew step"):
            f = torch.compile(lambda p, s, b, k=k: steps[k](p, s, b), fullgraph=True)
            f(params, states[k], batch)
            fns[f"{k} compiled"] = lambda f=f, k=k: f(params, states[k], batch)
        tg = torch.compile(lambda p, b: fmtl.task_gradients(loss_fn, p, b), fullgraph=True)
        tg(params, batch)
        fns["task_gradients compiled"] = lambda: tg(params, batch)
    times = common.bench(fns, rounds=args.rounds, warmup=args.warmup)
    loop_ms = min(times["loop step"], times.get("loop step, heads one by one", float("inf")))
    floor = times["forward"] + T * (times["forward+backward"] - times["forward"])
    rows = []
    for name, ms in times.items():
        suffix = " compiled" if name.endswith(" compiled") else ""
        row = {"model": model, "T": T, "variant": name, "ms": round(ms, 3), "auto_chose": chosen,
               "vs_loop_step": round(ms / loop_ms, 3),
               "vs_libmtl_step": round(ms / times["libmtl step"], 3),
               "vs_flop_floor": round(ms / floor, 3)}  # fmt: skip
        if name.startswith("dbmtl step") or name == "[T, P] update floor":
            row["vs_own_task_gradients"] = round(ms / times["task_gradients" + suffix], 3)
        if name.startswith("uw step"):
            row["vs_ew_step"] = round(ms / times["ew step" + suffix], 3)
        if args.memory and not suffix and name not in ("forward", "forward+backward", "[T, P] update floor"):
            row["peak_mib"] = round(common.peak_mib(fns[name]), 2)
        rows.append(row)
        extra = {k: v for k, v in row.items() if k.startswith("vs_") or k == "peak_mib"}
        print(f"{model:8s} T={T:3d} {name:24s} {ms:9.2f} ms  {extra}", flush=True)
    rows.append({"model": model, "T": T, "variant": "flop floor (1 fwd + T bwd)", "ms": round(floor, 3)})
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mlp,mlp_per_head,cnn,qm9_gnn")
    p.add_argument("--tasks", default="11,40", help="task counts (T=40 only for mlp)")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--compile-models", default="mlp,qm9_gnn", help="models that also get compiled rows")
    common.add_run_args(p)
    args = p.parse_args(argv)
    common.setup(args)
    if args.quick:
        args.compile = False
    results = {"machine": common.machine(), "rows": []}
    name = Path(__file__).stem + ("" if args.malloc == "default" else "_malloc_tuned")
    for model in args.models.split(","):
        for T in (int(t) for t in args.tasks.split(",")):
            if T > 11 and model not in ("mlp", "mlp_per_head", "tiny"):
                continue
            results["rows"] += run_one(model, T, args)
    print("wrote", common.save(results, name, args.out))


if __name__ == "__main__":
    main()

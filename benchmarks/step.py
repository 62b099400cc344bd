"""Benchmark: whole MTL steps vs their own task gradients, the loop baselines and the EW floor.

Rows per model and T (eager, then compiled with ``torch.compile(fullgraph=True)``):
``loop step`` (lean loop baseline, same maths; ``vs_loop_step`` divides by the faster of it and,
where the model has one, its loop on heads applied one by one), ``libmtl step`` (LibMTL-faithful),
``dbmtl step`` (fmtl, Adam; ``+cosines``: with ``diagnostics=True``, against ``loop step +cosines``),
``dbmtl step, sgd`` (the update and SGD only: the step ÷ its own ``task_gradients`` is the cost of
DB-MTL's update), ``task_gradients`` (the bare call inside it), ``ew step`` (one backward: the floor
of any step), ``uw step`` (a loss-only balancer), the FLOP floor ``1 forward + T backwards``, and
the ``[T, P] update floor`` (the least memory traffic of DB-MTL's update: one fused EMA pass, the
norms, the combination).

Representation gradients (models with a two-stage form: ``mlp``, ``qm9_mlp``, ``tiny``): for
``--rep-methods`` (default PCGrad, MGDA, CAGrad, UPGrad), ``<m> step, rep_grad`` (SGD) ÷ the EW
step (SGD), next to ``<m> step`` with parameter gradients and ``<m> weighting`` (the method's
T×T solve on the representation Gramian alone, which no choice of gradients avoids), and
``<m> step, rep_grad, task axis``: the same losses with task-axis heads
(``fmtl.TwoStageLoss(..., task_axis=True)``), Z from one backward of Σ_t ℓ_t, and
``<m> step, rep_grad, linear heads``: the heads declared linear (``fmtl.heads.LinearHeads``), the
Gramian of Z from the heads' factors and Z never formed (``fmtl.linear_representation``).

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
from fmtl.representation import representation_gradients  # noqa: E402

REP_METHODS = "pcgrad,mgda,cagrad,upgrad"


def _update_floor(ema, J):
    new = ema.apply(lambda e, g: torch.lerp(e, g, 0.1), J)
    norms = fmtl.tree.row_norms(new)
    return fmtl.tree.combine(norms, new)


def _check_loop_step(problem: common.Problem, loop: common.LoopDBMTL) -> None:
    """The loop step and fmtl's balancer agree on the first aggregated gradient (same maths)."""
    params, batch, T = problem.params, problem.batch, problem.num_tasks
    loop()
    dbmtl = fmtl.balancers.get("dbmtl")
    g, _, _ = dbmtl.update(fmtl.task_gradients(problem.loss_fn, params, batch), dbmtl.init(params, T), params)
    ours = torch.cat([v.reshape(-1) for v in g["shared"].values(True, True)])
    theirs = torch.cat([v.grad.reshape(-1) for v in loop.shared])
    assert torch.linalg.vector_norm(ours - theirs) <= 1e-3 * torch.linalg.vector_norm(theirs), "loop step differs"


def _rep_steps(problem: common.Problem, methods: list[str]) -> tuple[dict, dict]:
    """Rep-grad steps and their parameter-gradient counterparts (SGD), and the bare weightings."""
    params, two = problem.params, problem.two_stage
    grads, z_params, _ = representation_gradients(two, params, problem.batch)
    steps, weightings = {}, {}
    for m in methods:
        b = fmtl.balancers.get(m)
        for rep in (True, False):
            name = f"{m} step" + (", rep_grad" if rep else "")
            steps[name] = fmtl.make_step(two, b, fmtl.optim.sgd(1e-3), rep_grad=rep)
        if problem.two_stage_axis is not None:  # Z in one backward of Σ_t ℓ_t (fmtl.heads, task_axis)
            steps[f"{m} step, rep_grad, task axis"] = fmtl.make_step(problem.two_stage_axis, b, fmtl.optim.sgd(1e-3),
                                                                     rep_grad=True)  # fmt: skip
        if problem.two_stage_linear is not None and b.from_gramian is not None:  # G_z from the heads' factors
            linear = problem.two_stage_linear
            steps[f"{m} step, rep_grad, linear heads"] = fmtl.make_step(linear, b, fmtl.optim.sgd(1e-3), rep_grad=True)
        state = b.init(z_params, problem.num_tasks)
        # the balancer on the representation gradients alone (its Gramian and its T×T solve)
        weightings[f"{m} weighting"] = lambda b=b, state=state: b.update(grads, state, z_params)
    return steps, weightings


def _ratio(ms: float, base: float | None) -> float | None:
    return round(ms / base, 3) if base else None


def run_one(model: str, T: int, args) -> list[dict]:
    problem = common.build(model, T, args.device)
    params, batch, loss_fn = problem.params, problem.batch, problem.loss_fn
    adam, sgd = fmtl.optim.adam(1e-3), fmtl.optim.sgd(1e-3)
    steps = {
        "dbmtl step": fmtl.make_step(loss_fn, fmtl.balancers.get("dbmtl"), adam),
        "dbmtl step +cosines": fmtl.make_step(loss_fn, fmtl.balancers.get("dbmtl"), adam, diagnostics=True),
        "dbmtl step, sgd": fmtl.make_step(loss_fn, fmtl.balancers.get("dbmtl"), sgd),
        "ew step": fmtl.make_step(loss_fn, fmtl.balancers.get("ew"), adam),
        "ew step, sgd": fmtl.make_step(loss_fn, fmtl.balancers.get("ew"), sgd),
        "uw step": fmtl.make_step(loss_fn, fmtl.balancers.get("uw"), adam),
    }
    weightings = {}
    if problem.two_stage is not None and args.rep_methods:
        rep_steps, weightings = _rep_steps(problem, args.rep_methods)
        steps.update(rep_steps)
    states = {k: s.init(params) for k, s in steps.items()}
    chosen = auto.choose_strategy(loss_fn, params, batch)
    loop = common.LoopDBMTL(problem)
    _check_loop_step(problem, loop)
    J = fmtl.task_gradients(loss_fn, params, batch).shared
    ema = J.apply(torch.randn_like)
    fns = {
        "loop step": loop,
        "loop step +cosines": common.LoopDBMTL(problem, diagnostics=True),
        # a loop pays T² for heads applied as one product (each ℓ_t's backward crosses all heads):
        # where the model has a head-by-head form, the loop also runs on it and the faster counts
        **({"loop step, heads one by one": common.LoopDBMTL(common.build(common.PER_HEAD_NAME[model], T, args.device))}
           if model in common.PER_HEAD_NAME else {}),  # fmt: skip
        "libmtl step": common.LibMTLDBMTL(problem),
        **{k: (lambda k=k: steps[k](params, states[k], batch)) for k in steps},
        "task_gradients": lambda: fmtl.task_gradients(loss_fn, params, batch),
        "forward": lambda: loss_fn(params, batch),
        "forward+backward": lambda: torch.func.grad(lambda p: loss_fn(p, batch).sum())(params),
        # DB-MTL's least memory traffic over [T, P]: the EMA as one fused pass (read ĝ and g,
        # write ĝ), one pass for the norms, one for Σ_t w_t ĝ_t
        "[T, P] update floor": lambda: _update_floor(ema, J),
    }
    fns.update(weightings)
    if args.only:  # the rows asked for, and the EW step every ratio divides by
        fns = {k: f for k, f in fns.items() if k == "ew step, sgd" or any(k.startswith(o) for o in args.only)}
    if args.compile and model in args.compile_models:
        for k in [k for k in args.compile_steps if k in steps and (not args.only or k in fns)]:
            f = torch.compile(lambda p, s, b, k=k: steps[k](p, s, b), fullgraph=True)
            f(params, states[k], batch)
            fns[f"{k} compiled"] = lambda f=f, k=k: f(params, states[k], batch)
        tg = torch.compile(lambda p, b: fmtl.task_gradients(loss_fn, p, b), fullgraph=True)
        tg(params, batch)
        fns["task_gradients compiled"] = lambda: tg(params, batch)
    times = common.timings(fns, rounds=args.rounds, warmup=args.warmup, clock=args.clock,
                           sync=common.sync_for(args.device))  # fmt: skip
    loops = [times[k].ms for k in ("loop step", "loop step, heads one by one") if k in times]
    loop_ms = min(loops) if loops else None
    floor = (times["forward"].ms + T * (times["forward+backward"].ms - times["forward"].ms)
             if "forward" in times and "forward+backward" in times else None)  # fmt: skip
    load = common.loadavg()
    rows = []
    for name, t in times.items():
        suffix = " compiled" if name.endswith(" compiled") else ""
        row = {"model": model, "T": T, "variant": name, "ms": t.ms, "spread": t.spread, "auto_chose": chosen,
               "vs_loop_step": _ratio(t.ms, loop_ms),
               "vs_libmtl_step": _ratio(t.ms, times["libmtl step"].ms if "libmtl step" in times else None),
               "vs_flop_floor": _ratio(t.ms, floor), "loadavg": load}  # fmt: skip
        if (name.startswith("dbmtl step") or name == "[T, P] update floor") and "task_gradients" + suffix in times:
            row["vs_own_task_gradients"] = round(t.ms / times["task_gradients" + suffix].ms, 3)
        if name.startswith("uw step"):
            row["vs_ew_step"] = round(t.ms / times["ew step" + suffix].ms, 3)
        if " step" in name and name.split(" step")[0] in args.rep_methods:
            ew = times.get("ew step, sgd" + suffix)  # the EW step it is compared with, compiled alike
            row["vs_ew_step"] = round(t.ms / ew.ms, 3) if ew else None
        if args.memory and not suffix and name not in ("forward", "forward+backward", "[T, P] update floor"):
            row["peak_mib"] = round(common.peak_mib(fns[name], args.device), 2)
        rows.append(row)
        extra = {k: v for k, v in row.items() if k.startswith("vs_") or k in ("peak_mib", "spread")}
        print(f"{model:8s} T={T:3d} {name:28s} {t.ms:9.2f} ms  {extra}", flush=True)
    if floor is not None:
        rows.append({"model": model, "T": T, "variant": "flop floor (1 fwd + T bwd)", "ms": round(floor, 3)})
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mlp,cnn,qm9_gnn")
    p.add_argument("--tasks", default="11,40", help="task counts (T > 11 only for the MLPs)")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--compile-models", default="mlp,qm9_gnn", help="models that also get compiled rows")
    p.add_argument("--compile-steps", default="dbmtl step,dbmtl step|sgd,ew step,ew step|sgd",
                   help="the steps compiled (comma-separated; '|' stands for ', ': pcgrad step|rep_grad)")
    p.add_argument("--rep-methods", default=REP_METHODS, help="methods with rep_grad rows ('' for none)")
    p.add_argument("--only", default="", help="time only the rows whose names start with one of these "
                   "(comma-separated; '|' stands for ', '), plus 'ew step, sgd'")
    common.add_run_args(p)
    args = p.parse_args(argv)
    common.setup(args)
    if args.quick:
        args.compile = False
    args.rep_methods = [m for m in args.rep_methods.split(",") if m]
    args.compile_models = args.compile_models.split(",")
    args.compile_steps = [k.replace("|", ", ") for k in args.compile_steps.split(",") if k]
    args.only = [k.replace("|", ", ") for k in args.only.split(",") if k]
    results = {"machine": common.machine(args.device), "rows": []}
    name = Path(__file__).stem + ("" if args.malloc == "default" else "_malloc_tuned")
    for model in args.models.split(","):
        for T in (int(t) for t in args.tasks.split(",")):
            if T > 11 and model not in common.MANY_TASKS:
                continue
            results["rows"] += run_one(model, T, args)
            common.save(results, name, args.out)  # after every problem: a late failure loses nothing
    print("wrote", common.save(results, name, args.out))


if __name__ == "__main__":
    main()

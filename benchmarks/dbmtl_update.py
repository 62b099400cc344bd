"""Benchmark: where a DB-MTL step's time goes beyond its task gradients, and the EMA inside the GEMM.

Part 1 (``parts``): one eager DB-MTL step (SGD, a fixed strategy) taken apart in the order the
step runs it, each piece timed in place for the same inputs: the state check, the task
gradients, ‖J_t‖ (``info["grad_norms"]`` and the guard), the finiteness guard, the balancer's
update (and inside it: the heads' log transform, the EMA on scaled rows, the norms, the
combination), the optimizer, ``params + updates`` and the final finiteness check; then the
whole step, so the pieces can be checked to add up.

Part 2 (``gemm``): the issue's idea of writing the EMA from the weight-gradient GEMM itself, on
the MLP's three linear layers: the per-task weight gradients δ_tᵀh as one batched product
followed by the EMA (``addcmul``), against ``baddbmm`` writing β·u + δᵀh in one call (a uniform
β), against one ``addmm(beta=carry_t, out=…)`` per task (the per-row carry of the scaled state),
and the products alone.

    python benchmarks/dbmtl_update.py --threads 1 --clock cpu --malloc tuned [--tasks 11]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

import fmtl  # noqa: E402
from fmtl import step as fmtl_step  # noqa: E402
from fmtl.balancers._common import log_scale, scale_heads  # noqa: E402
from fmtl.balancers.dbmtl import alpha_scale, ema_carry, ema_rows, ema_sq_norms  # noqa: E402
from fmtl.params import task_names  # noqa: E402
from fmtl.tree import combine, leaves_at, row_norms, with_leaves  # noqa: E402


def parts(problem: common.Problem, rounds: int, clock) -> dict[str, float]:
    params, batch, loss_fn = problem.params, problem.batch, problem.loss_fn
    db, opt = fmtl.balancers.get("dbmtl"), fmtl.optim.sgd(1e-3)
    step = fmtl.make_step(loss_fn, db, opt, strategy="jacrev")
    state = step.init(params)
    state = step(params, state, batch)[1]  # a non-zero EMA
    layouts: dict = {}
    acc: dict[str, list[float]] = {}

    def tick(name: str, t0: float) -> float:
        t1 = clock()
        acc.setdefault(name, []).append(t1 - t0)
        return t1

    for _ in range(rounds):
        t = clock()
        fmtl_step._check_state(params, state, step.init, layouts)
        t = tick("state check", t)
        g = fmtl.task_gradients(loss_fn, params, batch, strategy="jacrev")
        t = tick("task_gradients", t)
        norms = row_norms(g.shared)
        t = tick("‖J_t‖ (grad_norms, guard)", t)
        bool(torch.isfinite(g.losses).all() & torch.isfinite(norms).all() & fmtl_step._probably_finite(g.tasks))
        t = tick("finiteness guard", t)
        b = state.balancer
        count = b.count + 1
        scale_heads(log_scale(g.losses, params, 1e-8), g.tasks, task_names(params))
        t = tick("update: heads' log transform", t)
        carry, scale = ema_carry(b.scale, g.losses, count, 0.9, 0.0, 1e-8)
        rows = b.rows.apply(lambda u, j, c=carry: ema_rows(u, j, c), g.shared)
        t = tick("update: EMA (one addcmul pass)", t)
        ema_norms = ema_sq_norms(rows, scale).sqrt()
        t = tick("update: ‖ĝ_t‖", t)
        combine(alpha_scale("max", ema_norms) / (ema_norms + 1e-8) * scale, rows)
        t = tick("update: Σ_t w_t ĝ_t", t)
        update, _, _ = db.update(g, b, params)
        t = tick("balancer update (whole)", t)
        u, _ = opt.update(update, state.optimizer, params)
        t = tick("optimizer (SGD)", t)
        keys = list(params.keys(True, True))
        with_leaves(params, torch._foreach_add(leaves_at(params, keys), leaves_at(u, keys)))
        t = tick("params + updates", t)
        bool(torch.isfinite(g.losses).all() & fmtl_step._probably_finite(u))
        t = tick("final finiteness check", t)
        step(params, state, batch)
        t = tick("whole step", t)
    return {k: round(1e3 * statistics.median(v[2:]), 3) for k, v in acc.items()}


def gemm(T: int, rounds: int, clock_name: str) -> dict[str, float]:
    B, shapes = 128, [(512, 64), (512, 512), (512, 512)]
    g = torch.Generator().manual_seed(0)
    d = [torch.randn(T, B, o, generator=g) for o, _ in shapes]  # per-task cotangents at each layer's output
    h = [torch.randn(B, i, generator=g) for _, i in shapes]  # the layer inputs, shared by the tasks
    u = [torch.randn(T, o, i, generator=g) for o, i in shapes]
    carry = torch.rand(T, generator=g)
    cs = carry.tolist()

    def separate():
        return [torch.addcmul(torch.matmul(dd.transpose(1, 2), hh), uu, carry[:, None, None])
                for dd, hh, uu in zip(d, h, u, strict=True)]  # fmt: skip

    def baddbmm():
        return [torch.baddbmm(uu, dd.transpose(1, 2), hh.expand(T, *hh.shape), beta=0.9)
                for dd, hh, uu in zip(d, h, u, strict=True)]  # fmt: skip

    def addmm_rows():
        out = []
        for dd, hh, uu in zip(d, h, u, strict=True):
            o = torch.empty_like(uu)
            for t in range(T):
                torch.addmm(uu[t], dd[t].T, hh, beta=cs[t], out=o[t])
            out.append(o)
        return out

    def products():
        return [torch.matmul(dd.transpose(1, 2), hh) for dd, hh in zip(d, h, strict=True)]

    fns = {"products, then the EMA (addcmul)": separate, "baddbmm: EMA in the GEMM (uniform β)": baddbmm,
           "addmm per task: EMA in the GEMM (per-row carry)": addmm_rows, "products alone": products}  # fmt: skip
    return {k: t.ms for k, t in common.timings(fns, rounds=rounds, warmup=2, clock=clock_name).items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="11")
    p.add_argument("--model", default="mlp")
    common.add_run_args(p)
    args = p.parse_args(argv)
    args.models = args.model
    common.setup(args)
    clock = common.CLOCKS[args.clock]
    results = {"machine": common.machine(args.device), "rows": []}
    for T in (int(t) for t in args.tasks.split(",")):
        problem = common.build(args.model, T, args.device)
        for part, times in (("parts", parts(problem, max(args.rounds, 5), clock)),
                            ("gemm", gemm(T, args.rounds, args.clock))):  # fmt: skip
            for name, ms in times.items():
                results["rows"].append({"model": args.model, "T": T, "part": part, "variant": name, "ms": ms,
                                        "loadavg": common.loadavg()})  # fmt: skip
                print(f"{args.model} T={T:3d} {part:5s} {name:48s} {ms:9.3f} ms", flush=True)
    print("wrote", common.save(results, "dbmtl_update", args.out))


if __name__ == "__main__":
    main()

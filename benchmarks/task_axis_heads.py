"""Task-axis heads (issue 17): four ways to apply T linear heads to per-task copies of z, and the
representation gradients Z through concatenated vs task-axis heads (``benchmarks/RESULTS.md`` §10.9).

Part 1, forward + backward of T scalar heads on ``z.expand(T, B, D)`` (a random cotangent, the
gradients w.r.t. the copies and every W_t): ``F.linear`` head by head (what
``fmtl.heads.linear_heads(..., task_axis=True)`` does), one ``bmm`` over the task axis, an
``einsum``, and a broadcast multiply-and-sum. Part 2, on the benchmark MLP
(``common.build("mlp", T)``): ``representation_gradients`` (Z and every ∇ψ_t ℓ_t) with the heads
concatenated (T backwards) and as task-axis heads (one backward), checked equal first.

    python benchmarks/task_axis_heads.py [--tasks 40] [--threads 1] [--rounds 15] [--clock cpu]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from common import build, machine, save, timings

from fmtl.representation import representation_gradients


def heads_table(T: int, B: int, D: int, args) -> dict:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(B, D, generator=g)
    cot = torch.randn(T, B, 1, generator=g)
    weights = [torch.randn(1, D, generator=g).requires_grad_() for _ in range(T)]

    def run(kind: str):
        def f():
            copies = z.expand(T, B, D).requires_grad_()
            if kind == "F.linear head by head":
                y = torch.stack([F.linear(c, w) for c, w in zip(copies.unbind(0), weights, strict=True)])
            elif kind == "bmm":
                y = torch.bmm(copies, torch.stack(weights).transpose(1, 2))
            elif kind == "einsum":
                y = torch.einsum("tbd,tod->tbo", copies, torch.stack(weights))
            else:
                y = (copies * torch.stack(weights)).sum(-1, keepdim=True)
            return torch.autograd.grad(y, [copies, *weights], cot)

        return f

    kinds = ["F.linear head by head", "bmm", "einsum", "multiply and sum"]
    ref = run(kinds[0])()
    for k in kinds[1:]:
        for a, b in zip(run(k)(), ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    t = timings({k: run(k) for k in kinds}, rounds=args.rounds, warmup=2, clock=args.clock)
    return {k: {"ms": t[k].ms, "spread": t[k].spread} for k in kinds}


def representation_table(T: int, args) -> dict:
    problem = build("mlp", T, torch.device("cpu"))
    p, b = problem.params, problem.batch
    concat, _, _ = representation_gradients(problem.two_stage, p, b)
    axis, _, _ = representation_gradients(problem.two_stage_axis, p, b)
    torch.testing.assert_close(axis.shared["z"], concat.shared["z"], rtol=1e-5, atol=1e-6)
    fns = {"concatenated heads (T backwards)": lambda: representation_gradients(problem.two_stage, p, b),
           "task-axis heads (one backward)": lambda: representation_gradients(problem.two_stage_axis, p, b)}
    t = timings(fns, rounds=args.rounds, warmup=2, clock=args.clock)
    return {k: {"ms": t[k].ms, "spread": t[k].spread} for k in fns}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--clock", choices=("wall", "cpu"), default="cpu")
    p.add_argument("--out", default=None, help="the JSON path (default results/task_axis_heads.json)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    env = machine()
    heads = heads_table(args.tasks, 128, 512, args)
    rep = representation_table(args.tasks, args)
    for name, table in (("heads on z.expand(T, 128, 512), fwd + bwd", heads), ("representation_gradients, MLP", rep)):
        print(f"T = {args.tasks}: {name}")
        for k, v in table.items():
            print(f"  {k:36s} {v['ms']:8.2f} ms")
    path = save({"env": env, "T": args.tasks, "heads": heads, "representation_gradients": rep}, "task_axis_heads",
                Path(args.out) if args.out else None)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

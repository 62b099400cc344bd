"""Benchmark: fmtl's pure optimizer updates on torch's kernels vs written out, and torch.optim's step.

``fmtl.optim`` must stay pure (``update(grads, state, params) -> (updates, state)``, inputs never
written), so torch's in-place optimizer kernels can only run on copies. Candidates per update on
the parameter trees of two MLPs with 11 linear heads (the QM9 default 169→256→256, 0.11 M
parameters; the step benchmark's 64→512→512→512, 0.56 M), float32:

Adam —
* ``written out`` — one lambda per leaf (``TensorDict.apply``): fmtl's Adam before this change,
  and still its compiled path (``fmtl.optim._adam_written_out``);
* ``foreach`` — torch's multi-tensor Adam arithmetic (``torch._foreach_lerp`` / ``_foreach_addcmul_``
  …) on fresh outputs: pure;
* ``fused kernel on copies`` — ``fmtl.optim.adam`` now: ``torch.optim.adam.adam(fused=True)`` on
  zeros (which come back as the update) and copies of the moments and step counts;
* ``torch.optim.Adam (in place)`` — the impure floor, for reference.

SGD (momentum 0.9) — ``written out`` (lambdas, before), ``foreach`` (``fmtl.optim.sgd`` now),
``torch.optim.SGD (in place)``.

Compiled (``torch.compile(fullgraph=True)``, inductor): ``written out`` vs ``foreach`` (the fused
kernel does not trace: torch marks it ``compiler.disable``). And, for scale, a whole eager DB-MTL
step of the 0.56 M model (T=11, batch 128) with each eager Adam. Every candidate's output is
checked equal to ``written out`` first (float64, 1e-12). Timing: interleaved rounds after warm-up;
median and minimum (the machine is shared: the minimum is the less disturbed estimate).

    python benchmarks/optim.py [--threads 1] [--rounds 31] [--malloc tuned|default] [--no-compile]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tensordict import TensorDict
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

import fmtl  # noqa: E402
from fmtl.optim import AdamState, Optimizer, SGDState, _adam_written_out  # noqa: E402
from fmtl.tree import leaves, with_leaves  # noqa: E402

LR, B1, B2, EPS, MOMENTUM = 1e-3, 0.9, 0.999, 1e-8, 0.9


def params_of(widths: tuple[int, ...], tasks: int, dtype=torch.float32) -> TensorDict:
    torch.manual_seed(0)
    layers = [m for a, b in zip(widths, widths[1:], strict=False) for m in (nn.Linear(a, b), nn.ReLU())]
    p, _ = fmtl.functionalize(nn.Sequential(*layers), {f"t{t}": nn.Linear(widths[-1], 1) for t in range(tasks)})
    return p.apply(lambda x: x.to(dtype))


def adam_written_out(grads, state, params):
    count = state.count + 1
    upd, mu, nu = _adam_written_out(grads, state, params, LR, count.to(torch.float64), B1, B2, EPS, 0.0, False)
    return upd, AdamState(count, mu, nu)


def adam_foreach(grads, state, params):
    count = state.count + 1
    g = leaves(grads)
    m = torch._foreach_lerp(leaves(state.mu), g, 1 - B1)
    v = torch._foreach_mul(leaves(state.nu), B2)
    torch._foreach_addcmul_(v, g, g, value=1 - B2)
    k = count.to(torch.float64)
    denom = torch._foreach_sqrt(v)
    torch._foreach_div_(denom, (1 - B2**k).sqrt().to(g[0].dtype))
    torch._foreach_add_(denom, EPS)
    u = torch._foreach_div(m, denom)
    torch._foreach_mul_(u, (-LR / (1 - B1**k)).to(g[0].dtype))
    return with_leaves(grads, u), AdamState(count, with_leaves(state.mu, m), with_leaves(state.nu, v))


def sgd_written_out(grads, state, params):
    buf = state.momentum.apply(lambda b, g: b * MOMENTUM + g, grads)
    return buf.apply(lambda s: s * -LR), SGDState(state.count + 1, buf)


def check_equal(ref, got, what: str) -> None:
    for a, b in zip(leaves(ref), leaves(got), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=f"{what} differs from the written-out update")


def rows_of(res, group: str, model: str, numel: int, mode: str, base: str) -> list[dict]:
    return [{"group": group, "params": model, "numel": numel, "mode": mode, "candidate": k, "median_ms": med,
             "min_ms": mn, "median_vs_" + base.replace(" ", "_"): med / res[base][0],
             "min_vs_" + base.replace(" ", "_"): mn / res[base][1]} for k, (med, mn) in res.items()]  # fmt: skip


def measure(model: str, widths: tuple[int, ...], adam: Optimizer, sgd: Optimizer, args) -> list[dict]:
    """Equality checks, then the eager (and compiled) timings of every candidate on one parameter tree."""
    rows: list[dict] = []
    p64 = params_of(widths, 11, torch.float64)
    g64 = p64.apply(torch.randn_like)
    a64 = AdamState(torch.tensor(4), p64.apply(torch.randn_like), p64.apply(torch.rand_like))
    ref = adam_written_out(g64, a64, p64)
    check_equal(ref[0], adam_foreach(g64, a64, p64)[0], "foreach Adam")
    check_equal(ref[0], adam.update(g64, a64, p64)[0], "fused Adam")
    s64 = SGDState(torch.tensor(4), p64.apply(torch.randn_like))
    check_equal(sgd_written_out(g64, s64, p64)[0], sgd.update(g64, s64, p64)[0], "foreach SGD")

    params = params_of(widths, 11)
    numel = sum(x.numel() for x in leaves(params))
    grads = params.apply(torch.randn_like)
    astate, sstate = adam.init(params), sgd.init(params)
    tensors = [x.clone() for x in leaves(params)]
    for t, g in zip(tensors, leaves(grads), strict=True):
        t.grad = g.clone()
    tadam, tsgd = torch.optim.Adam(tensors, lr=LR), torch.optim.SGD(tensors, lr=LR, momentum=MOMENTUM)
    res = common.bench_stats({"written out": lambda: adam_written_out(grads, astate, params),
                 "foreach": lambda: adam_foreach(grads, astate, params),
                 "fused kernel on copies": lambda: adam.update(grads, astate, params),
                 "torch.optim.Adam (in place)": tadam.step}, args.rounds, args.warmup)  # fmt: skip
    rows += rows_of(res, "adam", model, numel, "eager", "written out")
    res = common.bench_stats({"written out": lambda: sgd_written_out(grads, sstate, params),
                 "foreach": lambda: sgd.update(grads, sstate, params),
                 "torch.optim.SGD (in place)": tsgd.step}, args.rounds, args.warmup)  # fmt: skip
    rows += rows_of(res, "sgd momentum", model, numel, "eager", "written out")
    if not args.no_compile:
        comp = {k: torch.compile(f, fullgraph=True) for k, f in
                (("written out", adam_written_out), ("foreach", adam_foreach))}  # fmt: skip
        res = common.bench_stats({k: (lambda f=f: f(grads, astate, params)) for k, f in comp.items()}, args.rounds,
                    args.warmup)  # fmt: skip
        rows += rows_of(res, "adam", model, numel, "compiled", "written out")
        comp = {k: torch.compile(f, fullgraph=True) for k, f in
                (("written out", sgd_written_out), ("foreach", sgd.update))}  # fmt: skip
        res = common.bench_stats({k: (lambda f=f: f(grads, sstate, params)) for k, f in comp.items()}, args.rounds,
                    args.warmup)  # fmt: skip
        rows += rows_of(res, "sgd momentum", model, numel, "compiled", "written out")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    common.add_run_args(p)
    p.add_argument("--no-compile", action="store_true")
    p.set_defaults(rounds=31, warmup=3, threads=1, malloc="tuned")
    args = p.parse_args()
    common.setup(args)
    rows: list[dict] = []
    adam, sgd = fmtl.optim.adam(LR), fmtl.optim.sgd(LR, momentum=MOMENTUM)
    for model, widths in (("qm9 mlp 169-256-256 + 11 heads", (169, 256, 256)),
                          ("step mlp 64-512-512-512 + 11 heads", (64, 512, 512, 512))):  # fmt: skip
        rows += measure(model, widths, adam, sgd, args)

    # a whole eager DB-MTL step, for scale
    problem = common.mlp(11)
    numel = sum(x.numel() for x in leaves(problem.params))
    written = Optimizer(adam.init, adam_written_out)
    steps = {"written out": fmtl.make_step(problem.loss_fn, fmtl.balancers.dbmtl(), written),
             "fused kernel on copies": fmtl.make_step(problem.loss_fn, fmtl.balancers.dbmtl(), adam)}  # fmt: skip
    states = {k: s.init(problem.params) for k, s in steps.items()}
    res = common.bench_stats({k: (lambda k=k: steps[k](problem.params, states[k], problem.batch)) for k in steps},
                max(7, args.rounds // 3), args.warmup)  # fmt: skip
    rows += rows_of(res, "dbmtl step with adam", "step mlp 64-512-512-512 + 11 heads, batch 128", numel, "eager",
                    "written out")  # fmt: skip
    for r in rows:
        ratio = [v for k, v in r.items() if k.startswith("median_vs")][0]
        mratio = [v for k, v in r.items() if k.startswith("min_vs")][0]
        print(f"{r['group']:20s} {r['params'][:34]:34s} {r['mode']:8s} {r['candidate']:28s} "
              f"median {r['median_ms']:8.3f} ms ({ratio:.2f}x)  min {r['min_ms']:8.3f} ms ({mratio:.2f}x)")
    path = common.save({"machine": common.machine(), "rows": rows}, "optim", args.out)
    print(f"written {path}")


if __name__ == "__main__":
    main()

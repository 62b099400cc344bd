"""Joint vs stacked vs head-by-head linear heads on the QM9 default model: DB-MTL steps per strategy.

``fmtl.models.mlp_hps`` (like ``fmtl.functionalize`` and the zoo) applies its linear heads as one
product over their concatenated weights (``fmtl.heads.linear_heads``: ``joint``). This measures
that against the earlier form (an einsum over weights stacked to [T, O, D]: ``stacked``) and
against applying the T heads one by one (``head_by_head``), on the shape of the default
``fmtl train --benchmark qm9`` model (169 → 256 → 256, T heads of width 1, batch 256), with the
gradients of all three checked equal first.

    python benchmarks/heads.py [--threads 1] [--rounds 7] [--tasks 11] [--malloc tuned]
"""

from __future__ import annotations

import argparse

import torch
from common import bench, machine, save
from tensordict import TensorDict

import fmtl
import fmtl.allocator
from fmtl.models import mlp_hps
from fmtl.models._core import linear


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--tasks", type=int, default=11)
    p.add_argument("--malloc", choices=("default", "tuned"), default="default")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.malloc == "tuned":
        fmtl.allocator.tune()
    names = [f"t{i}" for i in range(args.tasks)]
    model = mlp_hps(169, (256, 256), dict.fromkeys(names, 1), seed=0)

    def head_by_head(params: TensorDict, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = x
        for i in range(2):
            z = torch.relu(linear(params["shared", "layers", str(i)], z))
        return {t: linear(params["tasks", t], z) for t in names}

    def stacked(params: TensorDict, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = x
        for i in range(2):
            z = torch.relu(linear(params["shared", "layers", str(i)], z))
        weight = torch.stack([params["tasks", t, "weight"] for t in names])  # [T, O, D]
        bias = torch.stack([params["tasks", t, "bias"] for t in names])  # [T, O]
        out = torch.einsum("bd,tod->tbo", z, weight) + bias[:, None, :]
        return {t: out[i] for i, t in enumerate(names)}

    def regression(apply):
        def loss_fn(params, batch):
            out = apply(params, batch["x"])
            return torch.stack([(out[t][:, 0] - batch["y"][:, i]).pow(2).mean() for i, t in enumerate(names)])

        return loss_fn

    gen = torch.Generator().manual_seed(0)
    batch = TensorDict({"x": torch.randn(256, 169, generator=gen), "y": torch.randn(256, len(names), generator=gen)},
                       [256])  # fmt: skip
    a = fmtl.task_gradients(regression(model.apply), model.params, batch, strategy="loop")
    for other in (head_by_head, stacked):
        b = fmtl.task_gradients(regression(other), model.params, batch, strategy="loop")
        for k in a.shared.keys(True, True):
            torch.testing.assert_close(a.shared[k], b.shared[k], rtol=1e-5, atol=1e-7)

    fns = {}
    for label, apply in (("joint", model.apply), ("stacked", stacked), ("head_by_head", head_by_head)):
        for strategy in ("jacrev", "vmap_grad", "loop"):
            step = fmtl.make_step(regression(apply), fmtl.balancers.dbmtl(), fmtl.optim.adam(1e-3), strategy=strategy)
            state = step.init(model.params)
            fns[f"{label} {strategy}"] = lambda step=step, state=state: step(model.params, state, batch)
    times = bench(fns, rounds=args.rounds)
    results = {"machine": machine(), "model": "mlp_hps 169-256-256, T heads of width 1, batch 256",
               "tasks": len(names), "median_ms": times}  # fmt: skip
    path = save(results, "heads" if len(names) == 11 else f"heads_T{len(names)}", None)
    for k, v in results["median_ms"].items():
        print(f"{k:24s} {v:8.1f} ms")
    print("wrote", path)


if __name__ == "__main__":
    main()

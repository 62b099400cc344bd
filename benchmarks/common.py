"""Shared pieces of the benchmarks: the models, the loop baselines, timing and peak memory.

Timing: every candidate runs ``warmup`` times, then ``rounds`` interleaved rounds (A B C A B C …)
so that load on the machine hits all candidates alike; the median of each is reported.
Peak memory: the profiler's allocator trace (``total_allocated`` of every allocation event),
minus what was allocated before the call.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tensordict import TensorDict
from torch import nn

import fmtl
from fmtl.tree import gramian

HERE = Path(__file__).resolve().parent


@dataclass
class Problem:
    """A benchmark problem: parameters, per-task losses as a list, one batch."""

    name: str
    params: TensorDict
    task_losses: Callable[[TensorDict, object], list[torch.Tensor]]
    batch: object
    num_tasks: int

    def loss_fn(self, p: TensorDict, b) -> torch.Tensor:
        return torch.stack(self.task_losses(p, b))


def _regression(apply, num_tasks: int) -> Callable:
    def task_losses(p: TensorDict, b) -> list[torch.Tensor]:
        out = apply(p, b["x"] if isinstance(b, TensorDict) and "x" in b.keys() else b)
        y = b["y"]
        return [(o.squeeze(-1) - y[:, t]).pow(2).mean() for t, o in enumerate(out.values())]

    return task_losses


def mlp(num_tasks: int, batch: int = 128) -> Problem:
    """MLP encoder 64→512→512→512 (ReLU), T linear heads 512→1, MSE losses (via functionalize,
    which applies the heads as one product)."""
    torch.manual_seed(0)
    encoder = nn.Sequential(
        nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU()
    )
    heads = {f"t{t}": nn.Linear(512, 1) for t in range(num_tasks)}
    params, apply = fmtl.functionalize(encoder, heads)
    b = TensorDict({"x": torch.randn(batch, 64), "y": torch.randn(batch, num_tasks)}, [batch])
    return Problem("mlp", params, _regression(apply, num_tasks), b, num_tasks)


def mlp_per_head(num_tasks: int, batch: int = 128) -> Problem:
    """The same MLP and parameters with its T heads applied one by one (fmtl before
    ``fmtl.heads.linear_heads``): under ``vmap`` each head's backward carries all T cotangents."""
    base = mlp(num_tasks, batch)
    torch.manual_seed(0)
    encoder = nn.Sequential(
        nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU()
    )
    names = list(base.params["tasks"].keys())

    def task_losses(p: TensorDict, b: TensorDict) -> list[torch.Tensor]:
        z = torch.func.functional_call(encoder, fmtl.params.flat_dict(p["shared"]), (b["x"],))
        out = [nn.functional.linear(z, p["tasks", n, "weight"], p["tasks", n, "bias"]) for n in names]
        return [(o.squeeze(-1) - b["y"][:, t]).pow(2).mean() for t, o in enumerate(out)]

    return Problem("mlp_per_head", base.params, task_losses, base.batch, num_tasks)


def cnn(num_tasks: int, batch: int = 64) -> Problem:
    """4-layer CNN on 3×32×32 (32-64-128-128 channels, strides 1-2-2-2, global pooling), T linear heads."""
    torch.manual_seed(0)
    encoder = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(128, 128, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )  # fmt: skip
    heads = {f"t{t}": nn.Linear(128, 1) for t in range(num_tasks)}
    params, apply = fmtl.functionalize(encoder, heads)
    b = TensorDict({"x": torch.randn(batch, 3, 32, 32), "y": torch.randn(batch, num_tasks)}, [batch])
    return Problem("cnn", params, _regression(apply, num_tasks), b, num_tasks)


def resnet(num_tasks: int, batch: int = 64) -> Problem:
    """The zoo's HPS ResNet (CIFAR stem, one BasicBlock per stage, widths 16-32-64-128) on 3×32×32."""
    from fmtl.models import resnet as zoo_resnet

    m = zoo_resnet({f"t{t}": 1 for t in range(num_tasks)}, layers=(1, 1, 1, 1), widths=(16, 32, 64, 128),
                   stem="cifar", seed=0)
    torch.manual_seed(0)
    b = TensorDict({"x": torch.randn(batch, 3, 32, 32), "y": torch.randn(batch, num_tasks)}, [batch])
    return Problem("resnet", m.params, _regression(m.apply, num_tasks), b, num_tasks)


def qm9_gnn(num_tasks: int, graphs: int = 16, atoms: int = 18) -> Problem:
    """The zoo's QM9 MPNN (hidden 64) on a synthetic batch of complete graphs shaped like QM9's."""
    from fmtl.models import QM9_TASKS
    from fmtl.models import qm9_gnn as zoo_qm9

    names = [QM9_TASKS[t] if t < len(QM9_TASKS) else f"extra{t}" for t in range(num_tasks)]
    m = zoo_qm9(11, 5, hidden=64, tasks=names, seed=0)
    g = torch.Generator().manual_seed(0)
    n = graphs * atoms
    local = torch.arange(atoms)
    src, dst = torch.meshgrid(local, local, indexing="ij")
    keep = src != dst
    offsets = (torch.arange(graphs) * atoms)[:, None]
    edge_index = torch.stack([(src[keep][None] + offsets).reshape(-1), (dst[keep][None] + offsets).reshape(-1)])
    b = TensorDict({
        "node_attr": torch.randn(n, 11, generator=g), "edge_attr": torch.randn(edge_index.shape[1], 5, generator=g),
        "edge_index": edge_index, "graph": torch.arange(graphs).repeat_interleave(atoms),
        "num_atoms": torch.full((graphs,), atoms), "y": torch.randn(graphs, num_tasks, generator=g),
    }, [])  # fmt: skip

    def task_losses(p: TensorDict, batch: TensorDict) -> list[torch.Tensor]:
        out = m.apply(p, batch)
        return [(o.squeeze(-1) - batch["y"][:, t]).pow(2).mean() for t, o in enumerate(out.values())]

    return Problem("qm9_gnn", m.params, task_losses, b, num_tasks)


def tiny(num_tasks: int) -> Problem:
    """A tiny MLP for smoke runs."""
    torch.manual_seed(0)
    params, apply = fmtl.functionalize(nn.Sequential(nn.Linear(4, 8), nn.Tanh()),
                                       {f"t{t}": nn.Linear(8, 1) for t in range(num_tasks)})
    b = TensorDict({"x": torch.randn(16, 4), "y": torch.randn(16, num_tasks)}, [16])
    return Problem("tiny", params, _regression(apply, num_tasks), b, num_tasks)


# Models whose heads fmtl applies as one product, and the same model with heads one by one.
PER_HEAD: dict[str, Callable[[int], Problem]] = {"mlp": mlp_per_head}

MODELS: dict[str, Callable[[int], Problem]] = {
    "mlp": mlp, "mlp_per_head": mlp_per_head, "cnn": cnn, "resnet": resnet, "qm9_gnn": qm9_gnn, "tiny": tiny,
}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The loop baselines: one forward, T ``autograd.grad`` calls, one ``torch.cat`` flatten per task.


def _leaves_requiring_grad(params: TensorDict) -> TensorDict:
    return params.apply(lambda v: v.detach().clone().requires_grad_())


def loop_task_gradients(problem: Problem, leaves: TensorDict):
    """``(losses [T], J [T, P], head grads per task)`` with a Python loop of ``autograd.grad``."""
    shared = list(leaves["shared"].values(True, True))
    heads = [list(leaves["tasks", n].values(True, True)) for n in leaves["tasks"].keys()]
    losses = problem.task_losses(leaves, problem.batch)
    rows, head_grads = [], []
    T = len(losses)
    for t in range(T):
        g = torch.autograd.grad(losses[t], shared + heads[t], retain_graph=t < T - 1)
        rows.append(torch.cat([x.reshape(-1) for x in g[: len(shared)]]))
        head_grads.append(g[len(shared) :])
    return torch.stack([x.detach() for x in losses]), torch.stack(rows), head_grads


class LoopDBMTL:
    """The lean loop baseline of a DB-MTL step with Adam (same maths as fmtl's step).

    One forward, T ``autograd.grad`` calls, one flatten per task, then the log transform, EMA,
    norms, α, aggregation and the step's gradient norms as tensor ops on [T, P] (and the cosines
    with ``diagnostics=True``), then ``torch.optim.Adam(foreach=True)``.
    """

    def __init__(self, problem: Problem, beta: float = 0.9, eps: float = 1e-8, lr: float = 1e-3,
                 diagnostics: bool = False):  # fmt: skip
        self.problem, self.beta, self.eps, self.diagnostics = problem, beta, eps, diagnostics
        self.leaves = _leaves_requiring_grad(problem.params)
        self.shared = list(self.leaves["shared"].values(True, True))
        self.heads = [list(self.leaves["tasks", n].values(True, True)) for n in self.leaves["tasks"].keys()]
        P = sum(v.numel() for v in self.shared)
        self.ema = torch.zeros(problem.num_tasks, P)
        self.opt = torch.optim.Adam(list(self.leaves.values(True, True)), lr=lr, foreach=True)

    def __call__(self):
        losses, J, head_grads = loop_task_gradients(self.problem, self.leaves)
        scale = 1.0 / (losses + self.eps)
        self.ema = torch.lerp(self.ema, J * scale[:, None], 1 - self.beta)
        norms = torch.linalg.vector_norm(self.ema, dim=1)
        w = norms.max() / (norms + self.eps)
        g = w @ self.ema
        if self.diagnostics:
            G = gramian(TensorDict({"J": J}, [J.shape[0]]))
            d = G.diagonal().sqrt()
            cosine = G / (d[:, None] * d[None, :])
        else:
            d, cosine = torch.linalg.vector_norm(J, dim=1), None
        offset = 0
        for v in self.shared:
            v.grad = g[offset : offset + v.numel()].view_as(v)
            offset += v.numel()
        for t, (hs, gs) in enumerate(zip(self.heads, head_grads, strict=True)):
            for v, gv in zip(hs, gs, strict=True):
                v.grad = gv * scale[t]
        self.opt.step()
        return losses, d, cosine


class LibMTLDBMTL:
    """A LibMTL-faithful DB-MTL step: ``backward`` per task into ``.grad``, grads copied parameter
    by parameter into a [T, P] buffer, the EMA, α and a Python ``sum`` over tasks, the result written
    back parameter by parameter, then ``torch.optim.Adam`` (its default implementation)."""

    def __init__(self, problem: Problem, beta: float = 0.9, eps: float = 1e-8, lr: float = 1e-3):
        self.problem, self.beta, self.eps = problem, beta, eps
        self.leaves = _leaves_requiring_grad(problem.params)
        self.shared = list(self.leaves["shared"].values(True, True))
        self.all = list(self.leaves.values(True, True))
        self.sizes = [v.numel() for v in self.shared]
        self.grad_dim = sum(self.sizes)
        self.buffer = torch.zeros(problem.num_tasks, self.grad_dim)
        self.step = 0
        self.opt = torch.optim.Adam(self.all, lr=lr)

    def _grad2vec(self) -> torch.Tensor:
        grad = torch.zeros(self.grad_dim)
        count = 0
        for v in self.shared:
            if v.grad is not None:
                beg = sum(self.sizes[:count])
                grad[beg : beg + self.sizes[count]] = v.grad.data.view(-1)
            count += 1
        return grad

    def _reset_grad(self, new: torch.Tensor) -> None:
        count = 0
        for v in self.shared:
            beg = sum(self.sizes[:count])
            v.grad = new[beg : beg + self.sizes[count]].contiguous().view(v.data.size()).data.clone()
            count += 1

    def __call__(self):
        self.opt.zero_grad(set_to_none=False)
        losses = torch.stack(self.problem.task_losses(self.leaves, self.problem.batch))
        log_losses = torch.log(losses + self.eps)
        T = self.problem.num_tasks
        grads = torch.zeros(T, self.grad_dim)
        for t in range(T):
            log_losses[t].backward(retain_graph=t < T - 1)
            grads[t] = self._grad2vec()
            for v in self.shared:
                v.grad.zero_()
        self.step += 1
        self.buffer = grads + self.beta * (self.buffer - grads)
        u = self.buffer.norm(dim=-1)
        alpha = u.max() / (u + self.eps)
        new = sum(alpha[t] * self.buffer[t] for t in range(T))
        self._reset_grad(new)
        self.opt.step()
        return losses.detach()


# ---------------------------------------------------------------------------------------------
# Timing and memory.


def bench(fns: dict[str, Callable[[], object]], rounds: int = 7, warmup: int = 2) -> dict[str, float]:
    """Median milliseconds per call of each function, measured in interleaved rounds after warm-up."""
    return {k: med for k, (med, _) in bench_stats(fns, rounds, warmup).items()}


def bench_stats(fns: dict[str, Callable[[], object]], rounds: int = 7, warmup: int = 2) -> dict[str, tuple]:
    """(median, minimum) milliseconds per call of each function, interleaved rounds after warm-up."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            start = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - start)
    return {k: (1e3 * statistics.median(v), 1e3 * min(v)) for k, v in times.items()}


def _walk(nodes):
    for n in nodes:
        yield n
        yield from _walk(n.children)


def peak_mib(fn: Callable[[], object]) -> float:
    """Peak CPU memory (MiB) allocated by torch during one call, above what was live before it."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    allocs = [n for n in _walk(prof.profiler.kineto_results.experimental_event_tree())
              if n.tag == _EventType.Allocation]  # fmt: skip
    if not allocs:
        return 0.0
    allocs.sort(key=lambda n: n.start_time_ns)
    base = allocs[0].extra_fields.total_allocated - allocs[0].extra_fields.alloc_size
    return (max(n.extra_fields.total_allocated for n in allocs) - base) / 2**20


def assert_same_gradients(g: fmtl.TaskGradients, losses: torch.Tensor, J: torch.Tensor, rtol: float = 1e-3) -> None:
    """Checks a strategy against the loop (``J`` is the loop's flat [T, P]).

    Relative to each row's norm: float32 reductions run in another order under ``vmap`` and
    ``torch.compile`` (BatchNorm statistics, convolution weight gradients), so entries near zero
    differ by more than any elementwise tolerance while the rows agree to ~1e-6.
    """
    flat = torch.cat([v.reshape(v.shape[0], -1) for v in g.shared.values(True, True)], 1)
    torch.testing.assert_close(g.losses, losses, rtol=rtol, atol=1e-6)
    err = torch.linalg.vector_norm(flat - J, dim=1) / torch.linalg.vector_norm(J, dim=1).clamp_min(1e-30)
    if not bool((err < rtol).all()):
        raise AssertionError(f"task gradients differ from the loop's: relative row errors {err.tolist()}")


def add_run_args(p) -> None:
    """Options every benchmark takes: rounds, memory, quick, output, threads, the malloc tuning."""
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-memory", dest="memory", action="store_false")
    p.add_argument("--quick", action="store_true", help="tiny model, T=2, one round, no compile")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--malloc", choices=("default", "tuned"), default="default",
                   help="tuned: fmtl.allocator.tune() (glibc mmap off, no trimming) before running")


def setup(args) -> None:
    """Applies the run options (call before building any model)."""
    if args.quick:
        args.models, args.tasks, args.rounds, args.warmup = "tiny", "2", 1, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.malloc == "tuned":
        from fmtl import allocator

        if not allocator.tune():
            print("warning: malloc tuning unavailable here", file=sys.stderr)


def machine() -> dict:
    """Where and how a benchmark ran."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "torch": torch.__version__, "python": platform.python_version(), "cpu": cpu,
        "cores": os.cpu_count(), "threads": torch.get_num_threads(), "loadavg_at_start": load,
        "device": "cpu (no GPU available)",
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "malloc_tuned": __import__("fmtl.allocator").allocator.is_tuned(),
    }  # fmt: skip


def save(results: dict, name: str, out: Path | None) -> Path:
    """Writes the results to ``benchmarks/results/<name>.json`` (or ``out``)."""
    path = out or HERE / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str))
    return path

"""Shared pieces of the benchmarks: the models, the loop baselines, timing and peak memory.

Timing: every candidate runs ``warmup`` times, then ``rounds`` interleaved rounds (A B C A B C …)
so that load on the machine hits all candidates alike; the median of each is reported.
Peak memory: :func:`fmtl.memory.peak_bytes` (the profiler's allocator trace on the CPU, the
allocator's peak counter on CUDA), minus what was allocated before the call.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from tensordict import TensorDict
from torch import nn

import fmtl
import fmtl.memory
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
    two_stage: fmtl.TwoStageLoss | None = None  # the same losses as encoder + heads (rep_grad)
    two_stage_axis: fmtl.TwoStageLoss | None = None  # the same again with task-axis heads (one backward for Z)
    two_stage_linear: fmtl.TwoStageLoss | None = None  # the same with heads declared linear (G_z factored)

    def loss_fn(self, p: TensorDict, b) -> torch.Tensor:
        return torch.stack(self.task_losses(p, b))

    def to(self, device: torch.device) -> Problem:
        """The problem with its parameters and batch on ``device`` (the losses are pure functions)."""
        return Problem(self.name, self.params.to(device), self.task_losses, self.batch.to(device), self.num_tasks,
                       self.two_stage, self.two_stage_axis, self.two_stage_linear)  # fmt: skip


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
    return Problem("mlp", params, _regression(apply, num_tasks), b, num_tasks, *_two_stages(encoder))


def _two_stages(encoder: nn.Module) -> tuple[fmtl.TwoStageLoss, fmtl.TwoStageLoss, fmtl.TwoStageLoss]:
    """The regression losses as ``encode`` (the encoder) and ``heads`` (linear heads, MSE): the heads
    concatenated over one z, the same heads on one copy of z per task (``task_axis``), and the same
    heads declared linear (``fmtl.heads.LinearHeads``: the Gramian of Z from the heads' factors)."""

    def encode(shared: TensorDict, b: TensorDict) -> torch.Tensor:
        return torch.func.functional_call(encoder, fmtl.params.flat_dict(shared), (b["x"],))

    def criterion(out: dict[str, torch.Tensor], b: TensorDict) -> torch.Tensor:
        return torch.stack([(o.squeeze(-1) - b["y"][:, t]).pow(2).mean() for t, o in enumerate(out.values())])

    def losses(task_axis: bool) -> Callable:
        def heads(tasks: TensorDict, z: torch.Tensor, b: TensorDict) -> torch.Tensor:
            return criterion(fmtl.heads.linear_heads(tasks, z, task_axis=task_axis and z.dim() == 3), b)

        return heads

    return (fmtl.TwoStageLoss(encode, losses(False)), fmtl.TwoStageLoss(encode, losses(True), True),
            fmtl.TwoStageLoss(encode, fmtl.heads.LinearHeads(criterion)))  # fmt: skip


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


def qm9_gnn(num_tasks: int, graphs: int = 16, atoms: int = 18, hidden: int = 64, name: str = "qm9_gnn") -> Problem:
    """The zoo's QM9 MPNN (hidden 64) on a synthetic batch of complete graphs shaped like QM9's."""
    from fmtl.models import QM9_TASKS
    from fmtl.models import qm9_gnn as zoo_qm9

    names = [QM9_TASKS[t] if t < len(QM9_TASKS) else f"extra{t}" for t in range(num_tasks)]
    m = zoo_qm9(11, 5, hidden=hidden, tasks=names, seed=0)
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

    return Problem(name, m.params, task_losses, b, num_tasks)


def qm9_mlp(num_tasks: int, batch: int = 256) -> Problem:
    """The default ``fmtl train --benchmark qm9`` model's shape: 169 → 256 → 256 (ReLU), T heads, batch 256."""
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(169, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU())
    params, apply = fmtl.functionalize(encoder, {f"t{t}": nn.Linear(256, 1) for t in range(num_tasks)})
    b = TensorDict({"x": torch.randn(batch, 169), "y": torch.randn(batch, num_tasks)}, [batch])
    return Problem("qm9_mlp", params, _regression(apply, num_tasks), b, num_tasks, *_two_stages(encoder))


def tiny(num_tasks: int) -> Problem:
    """A tiny MLP for smoke runs."""
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
    params, apply = fmtl.functionalize(encoder, {f"t{t}": nn.Linear(8, 1) for t in range(num_tasks)})
    b = TensorDict({"x": torch.randn(16, 4), "y": torch.randn(16, num_tasks)}, [16])
    return Problem("tiny", params, _regression(apply, num_tasks), b, num_tasks, *_two_stages(encoder))


def tiny_cnn(num_tasks: int) -> Problem:
    """A tiny CNN for smoke runs (the CNN rows at dry-run sizes)."""
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    params, apply = fmtl.functionalize(encoder, {f"t{t}": nn.Linear(4, 1) for t in range(num_tasks)})
    b = TensorDict({"x": torch.randn(8, 3, 8, 8), "y": torch.randn(8, num_tasks)}, [8])
    return Problem("tiny_cnn", params, _regression(apply, num_tasks), b, num_tasks)


def tiny_gnn(num_tasks: int) -> Problem:
    """The QM9 MPNN at dry-run sizes (hidden 8, 2 graphs of 4 atoms)."""
    return qm9_gnn(num_tasks, graphs=2, atoms=4, hidden=8, name="tiny_gnn")


# Models whose heads fmtl applies as one product, and the same model with heads one by one.
PER_HEAD_NAME: dict[str, str] = {"mlp": "mlp_per_head"}
# Models run at T > 11 (the others stop at QM9's 11 tasks: their T = 40 runs take minutes each).
MANY_TASKS = ("mlp", "mlp_per_head", "qm9_mlp", "tiny", "tiny_cnn", "tiny_gnn")

MODELS: dict[str, Callable[[int], Problem]] = {
    "mlp": mlp, "mlp_per_head": mlp_per_head, "cnn": cnn, "resnet": resnet, "qm9_gnn": qm9_gnn, "qm9_mlp": qm9_mlp,
    "tiny": tiny, "tiny_cnn": tiny_cnn, "tiny_gnn": tiny_gnn,
}  # fmt: skip


def build(model: str, num_tasks: int, device: torch.device | str = "cpu") -> Problem:
    """``MODELS[model](num_tasks)`` on ``device``."""
    return MODELS[model](num_tasks).to(torch.device(device))


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
        self.ema = torch.zeros(problem.num_tasks, P, device=self.shared[0].device)
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
    back parameter by parameter, then ``torch.optim.Adam`` (its default implementation). As in LibMTL's
    ``_grad2vec``, each task's flat gradient is first built on the CPU (``torch.zeros(grad_dim)``) and
    then copied into the device's [T, P] buffer: on a GPU that is two transfers per task."""

    def __init__(self, problem: Problem, beta: float = 0.9, eps: float = 1e-8, lr: float = 1e-3):
        self.problem, self.beta, self.eps = problem, beta, eps
        self.leaves = _leaves_requiring_grad(problem.params)
        self.shared = list(self.leaves["shared"].values(True, True))
        self.all = list(self.leaves.values(True, True))
        self.sizes = [v.numel() for v in self.shared]
        self.grad_dim = sum(self.sizes)
        self.device = self.shared[0].device
        self.buffer = torch.zeros(problem.num_tasks, self.grad_dim, device=self.device)
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
        grads = torch.zeros(T, self.grad_dim, device=self.device)
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


class Timing(NamedTuple):
    """Median milliseconds per call, the spread of the rounds (interquartile range ÷ median), the fastest round."""

    ms: float
    spread: float
    minimum: float


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def timings(fns: dict[str, Callable[[], object]], rounds: int = 7, warmup: int = 2, clock: str = "wall",
            sync: Callable[[], None] | None = None) -> dict[str, Timing]:  # fmt: skip
    """Per function: median ms per call and spread, measured in interleaved rounds after warm-up.

    ``clock="cpu"`` reads the calling thread's CPU time (``time.thread_time``) instead of the wall
    clock: on a shared machine time spent descheduled does not count (memory-bandwidth contention
    still does). Meaningful with one torch thread only. ``sync`` (e.g. ``torch.cuda.synchronize``)
    runs before each reading.
    """
    now, sync = CLOCKS[clock], sync or (lambda: None)
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            sync()
            start = now()
            f()
            sync()
            times[k].append(now() - start)
    out = {}
    for k, v in times.items():
        med = statistics.median(v)
        q = statistics.quantiles(v, n=4) if len(v) > 1 else [med, med, med]
        spread = round((q[2] - q[0]) / med, 3) if med > 0 else 0.0
        out[k] = Timing(round(1e3 * med, 3), spread, round(1e3 * min(v), 3))
    return out


def bench(fns: dict[str, Callable[[], object]], rounds: int = 7, warmup: int = 2, clock: str = "wall",
          sync: Callable[[], None] | None = None) -> dict[str, float]:  # fmt: skip
    """Median milliseconds per call of each function (:func:`timings` without the spread)."""
    return {k: t.ms for k, t in timings(fns, rounds, warmup, clock, sync).items()}


def bench_stats(fns: dict[str, Callable[[], object]], rounds: int = 7, warmup: int = 2) -> dict[str, tuple]:
    """(median, minimum) milliseconds per call of each function (:func:`timings`, wall clock)."""
    return {k: (t.ms, t.minimum) for k, t in timings(fns, rounds, warmup).items()}


def peak_mib(fn: Callable[[], object], device: str = "cpu") -> float:
    """Peak memory (MiB) allocated by torch during one call, above what was live before it."""
    return fmtl.memory.peak_bytes(fn, device) / 2**20


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
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (cuda when available)")
    p.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                   help="cpu: the thread's CPU time (a shared machine's descheduled time does not count; 1 thread)")


def setup(args) -> None:
    """Applies the run options (call before building any model); ``args.device`` becomes a torch.device."""
    if args.quick:
        args.models, args.tasks, args.rounds, args.warmup = "tiny", "2", 1, 1
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.device = torch.device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
    if args.clock == "cpu" and (args.device.type != "cpu" or (args.threads or torch.get_num_threads()) != 1):
        raise SystemExit("--clock cpu measures one CPU thread: use it with --device cpu --threads 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.malloc == "tuned":
        from fmtl import allocator

        if not allocator.tune():
            print("warning: malloc tuning unavailable here", file=sys.stderr)


def loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages now (a shared machine's load is part of every table)."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def sync_for(device: torch.device) -> Callable[[], None] | None:
    """What to call before reading a clock on ``device`` (CUDA runs asynchronously)."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None


def machine(device: torch.device | None = None) -> dict:
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
        "device": (torch.cuda.get_device_name(device) + f" ({device})" if device is not None and device.type == "cuda"
                   else "cpu" + ("" if torch.cuda.is_available() else " (no GPU available)")),
        "cuda": torch.version.cuda, "uptime": _uptime(),
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "malloc_tuned": __import__("fmtl.allocator").allocator.is_tuned(),
    }  # fmt: skip


def _uptime() -> str | None:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def save(results: dict, name: str, out: Path | None) -> Path:
    """Writes the results to ``benchmarks/results/<name>.json`` (or ``out``)."""
    path = out or HERE / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str))
    return path

"""The exact Gramian solvers (MGDA, UPGrad, DualProj, CAGrad) against TorchJD's, side by side.

For each T, ``--instances`` random Gramians G = J Jᵀ (J a [T, 2T] Gaussian matrix, float64) are
solved by fmtl and, where TorchJD is installed, by TorchJD (UPGrad and DualProj: quadprog through
qpsolvers; MGDA: its Frank–Wolfe iterations). Every call is timed in interleaved rounds (A B A B …)
after warm-up; the median and the minimum over rounds are reported (on a loaded machine the
minimum is the cost of the call itself, the median includes the time other processes took), with
the ratios fmtl ÷ TorchJD (below 1: fmtl is faster), each answer's KKT residual
(``fmtl.balancers._solvers.kkt_*``: relative violation of the optimality conditions) and the
largest difference between the two answers' weights.

    python benchmarks/solvers.py --threads 1 --tasks 12,32,64 --rounds 20
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench, machine, save  # noqa: E402

from fmtl.balancers import _solvers  # noqa: E402
from fmtl.balancers.dualproj import dualproj_weights  # noqa: E402
from fmtl.balancers.mgda import mgda_weights  # noqa: E402
from fmtl.balancers.upgrad import upgrad_gramian, upgrad_weights  # noqa: E402

try:
    import torchjd
    from torchjd.aggregation import DualProjWeighting, MGDAWeighting, UPGradWeighting
except ImportError:  # the benchmark still times fmtl alone
    torchjd = None


def _problems(T: int, instances: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(T)
    out = []
    for _ in range(instances):
        J = torch.randn(T, 2 * T, generator=g, dtype=torch.float64)
        out.append(J @ J.T)
    return out


def _kkt(method: str, G: torch.Tensor, w: torch.Tensor) -> float:
    T = G.shape[0]
    if method == "mgda":
        return _solvers.kkt_min_norm(G, w)
    if method == "cagrad":
        return _solvers.kkt_cagrad(G, 0.5, w)
    Gn = upgrad_gramian(G, 1e-4, 1e-4)
    U = torch.eye(T, dtype=G.dtype) / T if method == "upgrad" else torch.full((1, T), 1.0 / T, dtype=G.dtype)
    V = _solvers.project_dual_cone(Gn, U)  # the per-row projections behind w
    return _solvers.kkt_dual_cone(Gn, U, V)


def _ours(method: str):
    return {
        "upgrad": lambda G: upgrad_weights(G),
        "dualproj": lambda G: dualproj_weights(G),
        "mgda": lambda G: mgda_weights(G, torch.ones(G.shape[0], dtype=G.dtype)),
        "cagrad": lambda G: _solvers.cagrad_dual(G, 0.5),
    }[method]


def _theirs(method: str):
    if torchjd is None or method == "cagrad":  # TorchJD's CAGrad needs cvxpy
        return None
    return {"upgrad": UPGradWeighting(), "dualproj": DualProjWeighting(), "mgda": MGDAWeighting()}[method]


def _times(fns: dict, rounds: int) -> dict[str, list[float]]:
    """Milliseconds of every call, in interleaved rounds after warm-up (one-round ``bench`` calls)."""
    bench(fns, rounds=1, warmup=3)
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, ms in bench(fns, rounds=1, warmup=0).items():
            out[k].append(ms)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tasks", default="12,32,64")
    p.add_argument("--methods", default="upgrad,dualproj,mgda,cagrad")
    p.add_argument("--instances", type=int, default=3)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    version = importlib.metadata.version("torchjd") if torchjd is not None else None  # (no __version__)
    results = {"machine": machine(), "torchjd": version, "rows": []}
    for T in [int(t) for t in args.tasks.split(",")]:
        for method in args.methods.split(","):
            ours, theirs = _ours(method), _theirs(method)
            times: dict[str, list[float]] = {"fmtl": [], "torchjd": []}
            kkt = {"fmtl": 0.0, "torchjd": 0.0}
            diff = 0.0
            for G in _problems(T, args.instances):
                fns = {"fmtl": functools.partial(ours, G)}
                if theirs is not None:
                    fns["torchjd"] = functools.partial(theirs, G)
                for k, ms in _times(fns, args.rounds).items():
                    times[k] += ms
                w = ours(G)
                kkt["fmtl"] = max(kkt["fmtl"], _kkt(method, G, w))
                if theirs is not None:
                    v = theirs(G)
                    diff = max(diff, float((w - v).abs().max()))
                    if method == "mgda":  # the others' answers are scored through fmtl's projections
                        kkt["torchjd"] = max(kkt["torchjd"], _kkt(method, G, v))
            row = {"T": T, "method": method, "fmtl_ms": statistics.median(times["fmtl"]),
                   "fmtl_min_ms": min(times["fmtl"]), "kkt_fmtl": kkt["fmtl"]}  # fmt: skip
            if times["torchjd"]:
                row.update(torchjd_ms=statistics.median(times["torchjd"]), torchjd_min_ms=min(times["torchjd"]),
                           max_weight_diff=diff)  # fmt: skip
                row["ratio"] = row["fmtl_ms"] / row["torchjd_ms"]
                row["ratio_min"] = row["fmtl_min_ms"] / row["torchjd_min_ms"]
                if method == "mgda":
                    row["kkt_torchjd"] = kkt["torchjd"]
            results["rows"].append(row)
            print(row, flush=True)
    print(save(results, "solvers", args.out))


if __name__ == "__main__":
    main()

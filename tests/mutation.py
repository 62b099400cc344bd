"""Mutation testing of the engine core: plant one realistic bug at a time, see a test fail.

Run before a release (not part of pytest or ``.ci/run``; about 15–30 min on 2 CPU cores)::

    python tests/mutation.py                 # every mutant
    python tests/mutation.py --only adam_bias_correction,gramian_drops_a_leaf
    python tests/mutation.py --list          # and whether each one's snippet is still there

Each mutant is a single-line change to one file, found by a code snippet that must occur exactly
once in it; a snippet that moved or changed is reported as "not applicable" (update the mutant),
never as a crash. The tree (git's tracked and unignored files) is copied once to a temporary
directory, ``fmtl`` is imported from that copy (``PYTHONPATH``; ``fmtl.data`` and
``fmtl.models`` are linked in as the installed package maps them), and for each mutant the
relevant tests run there with ``-x`` under the CI hypothesis profile (derandomized, so the score
is reproducible). A mutant is *killed* when its tests fail or time out, and *survives* when they
pass: a survivor is a bug the suite cannot see. The score printed at the end is recorded in the
README's "Testing" section.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]


class Mutant(NamedTuple):
    """One planted bug: in ``path``, the unique ``old`` snippet becomes ``new``; ``tests`` should fail."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


DBMTL = ("tests/test_core_dbmtl.py", "tests/test_balancers_values.py")
TREE = ("tests/test_balancers_tree.py", "tests/test_core_step.py", "tests/test_balancers_values.py",
        "tests/test_balancers.py")  # fastest first
SOLVERS = ("tests/test_balancers_values.py", "tests/test_balancers.py")
STEP = ("tests/test_core_step.py", "tests/test_core_guard.py")
STRATEGIES = ("tests/test_strategies.py", "tests/test_core_step.py")
CHECKPOINT = ("tests/test_checkpoint.py", "-k", "not sigkill")  # the SIGKILL test alone takes a minute

MUTANTS: list[Mutant] = [
    # DB-MTL (Algorithm 1)
    Mutant("dbmtl_alpha_min", "fmtl/balancers/dbmtl.py",
           '{"max": torch.amax, "min": torch.amin', '{"max": torch.amin, "min": torch.amin', DBMTL),
    Mutant("dbmtl_ema_rates_swapped", "fmtl/balancers/dbmtl.py",
           "out = torch.mul(ema, beta_k.to(ema.dtype))", "out = torch.mul(ema, (1 - beta_k).to(ema.dtype))", DBMTL),
    Mutant("dbmtl_log_scale_inverted", "fmtl/balancers/dbmtl.py",
           "scale = log_scale(grads.losses, None, eps)", "scale = grads.losses + eps", DBMTL),
    Mutant("dbmtl_norm_eps_large", "fmtl/balancers/dbmtl.py",
           "weights = _scale(alpha, norms) / (norms + eps)", "weights = _scale(alpha, norms) / (norms + 1e-2)", DBMTL),
    Mutant("dbmtl_beta_k_grows", "fmtl/balancers/dbmtl.py",
           "beta_k = beta / count.to(dtype) ** beta_sigma", "beta_k = beta * count.to(dtype) ** beta_sigma", DBMTL),
    Mutant("dbmtl_heads_not_log_scaled", "fmtl/balancers/dbmtl.py",
           "tasks = scale_heads(log_scale(grads.losses, params, eps), tasks, task_names(params))",
           "tasks = tasks", DBMTL),
    # the tree: row norms, Gramian and Jᵀw leaf by leaf
    Mutant("row_norms_not_squared", "fmtl/tree.py",
           "torch.linalg.vector_norm(_rows(v), dim=1).square() for v in leaves(J)",
           "torch.linalg.vector_norm(_rows(v), dim=1) for v in leaves(J)", TREE),
    Mutant("gramian_drops_a_leaf", "fmtl/tree.py",
           "return sum(_rows(v) @ _rows(v).T for v in leaves(J))",
           "return sum(_rows(v) @ _rows(v).T for v in leaves(J)[:-1])", TREE),
    Mutant("gramian_only_diagonal", "fmtl/tree.py",
           "return sum(_rows(v) @ _rows(v).T for v in leaves(J))",
           "return sum(torch.diag((_rows(v) * _rows(v)).sum(1)) for v in leaves(J))", TREE),
    Mutant("combine_weights_reversed", "fmtl/tree.py",
           "torch.tensordot(w, v, dims=1)", "torch.tensordot(w.flip(0), v, dims=1)", TREE),
    # the task gradients: the loop strategy's task order and heads
    Mutant("loop_task_order", "fmtl/task_gradients.py",
           "g = torch.autograd.grad(roots[t], inputs,", "g = torch.autograd.grad(roots[T - 1 - t], inputs,",
           STRATEGIES),
    Mutant("loop_first_head_for_all", "fmtl/task_gradients.py",
           'head = leaves["tasks", name]', 'head = leaves["tasks", names[0]]', STRATEGIES),
    Mutant("vjp_loop_one_cotangent", "fmtl/task_gradients.py",
           "rows = [pullback(eye[t])[0] for t in range(T)]", "rows = [pullback(eye[0])[0] for t in range(T)]",
           STRATEGIES),
    # the step: compiled select, the finiteness guard, state checks, loss balancers
    Mutant("compiled_select_keeps_new_state", "fmtl/step.py",
           "new_state = _select(ok, new_state, state)", "new_state = new_state", STEP),
    Mutant("all_finite_first_leaf", "fmtl/step.py",
           "for v in leaves(td) if v.numel()]", "for v in leaves(td)[:1] if v.numel()]", STEP),
    Mutant("probably_finite_first_leaf", "fmtl/step.py",
           "for v in leaves(td) if v.numel() > 0]", "for v in leaves(td)[:1] if v.numel() > 0]", STEP),
    Mutant("guard_ignores_heads", "fmtl/step.py",
           "heads_ok = _probably_finite(grads.tasks) if leaves(grads.tasks) else True", "heads_ok = True", STEP),
    Mutant("state_check_ignores_dtype", "fmtl/step.py",
           "[(tuple(x.shape), x.dtype, x.device) for x in", "[(tuple(x.shape),) for x in", STEP),
    Mutant("loss_balancer_ignores_weights", "fmtl/step.py",
           "(g,) = pullback(w.to(losses.dtype))", "(g,) = pullback(torch.ones_like(w).to(losses.dtype))",
           ("tests/test_core_step.py", "tests/test_balancers.py")),
    Mutant("log_scale_not_poisoned", "fmtl/balancers/_common.py",
           "return torch.where(losses < 0, torch.nan, 1.0 / (losses + eps))", "return 1.0 / (losses + eps)",
           ("tests/test_core_guard.py",)),
    # the exact solvers: MGDA's ridge and argmin, UPGrad's bound
    Mutant("solver_ridge_large", "fmtl/balancers/_solvers.py", "_RIDGE = 1e-10", "_RIDGE = 1e-2", SOLVERS),
    Mutant("solver_argmax", "fmtl/balancers/_solvers.py",
           "best = torch.argmin(objective, dim=-1, keepdim=True)",
           "best = torch.argmax(torch.nan_to_num(objective, posinf=-1.0), dim=-1, keepdim=True)", SOLVERS),
    Mutant("upgrad_bound_relaxed", "fmtl/balancers/_solvers.py",
           "feasible = (v >= u[:, None, :] - _FEASIBLE", "feasible = (v >= 0 * u[:, None, :] - _FEASIBLE", SOLVERS),
    # the optimizers
    Mutant("adam_bias_correction", "fmtl/optim.py", "step_size = rate / (1 - b1**k)", "step_size = rate / (1 - b2**k)",
           ("tests/test_core_optim.py",)),
    Mutant("adam_weight_decay_sign", "fmtl/optim.py",
           "g + p.to(g.dtype) * weight_decay, params)", "g - p.to(g.dtype) * weight_decay, params)",
           ("tests/test_core_optim.py",)),
    Mutant("adamw_decay_without_lr", "fmtl/optim.py",
           "u - p * (rate * weight_decay)", "u - p * weight_decay", ("tests/test_core_optim.py",)),
    Mutant("adam_half_precision_moments", "fmtl/optim.py",
           "return torch.promote_types(dtype, torch.float32) if dtype.is_floating_point else dtype",
           "return dtype", ("tests/test_core_optim.py",)),
    # metrics
    Mutant("delta_p_sign", "fmtl/metrics.py",
           "terms.append((1.0 if up else -1.0) * (v - base) / base)",
           "terms.append((-1.0 if up else 1.0) * (v - base) / base)", ("tests/test_metrics.py",)),
    Mutant("mae_signed_error", "fmtl/metrics.py",
           "err = (pred.to(torch.float64) - target.to(torch.float64)).abs().reshape(target.shape[0], -1)",
           "err = (pred.to(torch.float64) - target.to(torch.float64)).reshape(target.shape[0], -1)",
           ("tests/test_metrics.py",)),
    # distributed: the all-reduce mean
    Mutant("all_reduce_sum_not_mean", "fmtl/distributed.py", "flat.div_(size)", "flat.div_(1)",
           ("tests/test_distributed.py",)),
    # integrity: the content checksum of cache files
    Mutant("checksum_first_element_only", "fmtl/checksum.py",
           "h.update(t.reshape(-1).view(torch.uint8).numpy())",
           "h.update(t.reshape(-1)[:1].view(torch.uint8).numpy())", ("tests/test_data_cache.py",)),
    Mutant("cache_checksum_not_verified", "data/cache.py",
           "if not torch.equal(_digest(data), stored):", "if False:", ("tests/test_data_cache.py",)),
    # checkpoints: every bad file a CheckpointError, checksum verified, fields validated
    Mutant("checkpoint_checksum_not_verified", "fmtl/train/checkpoint.py",
           'if payload["checksum"] != actual:', "if False:", CHECKPOINT),
    Mutant("checkpoint_catches_few_errors", "fmtl/train/checkpoint.py",
           "except Exception as e:  # noqa: BLE001 - the unpickler raises",
           "except (RuntimeError, EOFError, OSError, ValueError) as e:  # noqa: BLE001 - the unpickler raises",
           CHECKPOINT),
    Mutant("checkpoint_negative_counts", "fmtl/train/checkpoint.py",
           "return type(v) is int and v >= 0", "return type(v) is int", CHECKPOINT),
    Mutant("checkpoint_rng_unchecked", "fmtl/train/checkpoint.py",
           "torch.Generator().set_state(v)", "pass", CHECKPOINT),
    Mutant("checkpoint_version_message", "fmtl/train/checkpoint.py",
           'f"{path} has checkpoint version {version!r};', 'f"{path} has checkpoint version {version};', CHECKPOINT),
    Mutant("stale_temps_kept", "fmtl/train/runs.py",
           "remove_stale_temps(out)  # left by a killed run", "pass  # left by a killed run", CHECKPOINT),
]  # fmt: skip


def _tree_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    return [line for line in out.splitlines() if line and (ROOT / line).is_file()]


def copy_tree(dst: Path) -> None:
    """The working tree's files under ``dst``, laid out as the installed package (fmtl.data, fmtl.models)."""
    for rel in _tree_files():
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    for sub in ("data", "models"):
        link = dst / "fmtl" / sub
        if not link.exists():
            link.symlink_to(dst / sub, target_is_directory=True)


def _env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), "CI": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def check_imports(tree: Path) -> None:
    code = "import fmtl, fmtl.data, fmtl.models; print(fmtl.__file__, fmtl.data.__file__, fmtl.models.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, env=_env(tree), capture_output=True, text=True)
    files = out.stdout.split()
    if out.returncode or len(files) != 3 or not all(Path(f).resolve().is_relative_to(tree.resolve()) for f in files):
        sys.exit(f"mutation: fmtl is not imported from the copy {tree}: {out.stdout} {out.stderr}")


def run_tests(tree: Path, tests: tuple[str, ...], timeout: float) -> tuple[str, str]:
    """('passed' | 'failed' | 'timeout', the first failing test or the tail of the output)."""
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *tests]
    try:
        out = subprocess.run(cmd, cwd=tree, env=_env(tree), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", f"no result in {timeout:.0f} s"
    if out.returncode == 0:
        return "passed", ""
    lines = (out.stdout + out.stderr).splitlines()
    failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    return "failed", (failed[0] if failed else " | ".join(lines[-3:]))[:160]


def apply(tree: Path, m: Mutant) -> str | None:
    """Plants ``m`` in the copy; returns the original text, or None if the snippet is not there once."""
    path = tree / m.path
    if not path.is_file():
        return None
    text = path.read_text()
    if text.count(m.old) != 1:
        return None
    path.write_text(text.replace(m.old, m.new))
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated mutant names")
    parser.add_argument("--list", action="store_true", help="list the mutants (and whether each applies) and exit")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per mutant's tests")
    parser.add_argument("--no-baseline", action="store_true", help="skip running the unmutated tests first")
    args = parser.parse_args(argv)
    if args.list:
        for m in MUTANTS:
            path = ROOT / m.path
            found = path.is_file() and path.read_text().count(m.old) == 1
            print(f"{m.name:32s} {m.path:30s} {'' if found else 'not applicable'}")
        return 0
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only.split(",")]
    unknown = set(filter(None, args.only.split(","))) - {m.name for m in MUTANTS}
    if unknown:
        sys.exit(f"mutation: unknown mutants {sorted(unknown)}; see --list")
    with tempfile.TemporaryDirectory(prefix="fmtl-mutation-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        check_imports(tree)
        if not args.no_baseline:
            tests = tuple(sorted({t for m in chosen for t in m.tests if t.endswith(".py")}))  # a superset
            status, detail = run_tests(tree, tests, args.timeout * 2)
            if status != "passed":
                sys.exit(f"mutation: the unmutated tests do not pass ({detail}); fix them first")
        killed, survived, skipped = [], [], []
        for m in chosen:
            original = apply(tree, m)
            if original is None:
                skipped.append(m.name)
                print(f"{m.name:32s} mutant not applicable (its snippet is not in {m.path} exactly once)", flush=True)
                continue
            start = time.monotonic()
            try:
                status, detail = run_tests(tree, m.tests, args.timeout)
            finally:
                (tree / m.path).write_text(original)
            took = time.monotonic() - start
            (survived if status == "passed" else killed).append(m.name)
            verdict = "SURVIVED" if status == "passed" else f"killed ({status}: {detail})"
            print(f"{m.name:32s} {took:6.1f}s  {verdict}", flush=True)
    total = len(killed) + len(survived)
    print(f"\nmutation score: {len(killed)}/{total} killed; survivors: {survived or 'none'}"
          + (f"; not applicable: {skipped}" if skipped else ""))  # fmt: skip
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())

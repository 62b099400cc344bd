"""Data-parallel steps on 2 gloo processes over loopback equal one process on the whole batch.

Each multi-process test spawns its ranks with ``multiprocessing`` (spawn), rendezvous over
127.0.0.1 on a free port, and is bounded by ``JOB_TIMEOUT_S``: a rank still alive then is
killed and the test fails instead of hanging.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import time
import traceback
from pathlib import Path

import pytest
import torch
from _toy import assert_trees_close, flat_shared, toy_problem
from tensordict import TensorDict

import fmtl
from fmtl import distributed
from fmtl.distributed import _bucketed

WORLD = 2
JOB_TIMEOUT_S = 120
STEPS = 3
HANG_TIMEOUT_S = 3.0  # the process-group timeout in the stuck-rank test
HANG_S = 60.0  # longer than rank 0 may take; the test kills it
SHARD = 4  # rows per rank per step; global batch = WORLD * SHARD
METHODS = ("dbmtl", "pcgrad", "ew")


# ---------------------------------------------------------------- spawning machinery


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, scenario, out: str, timeout: float) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    try:
        ctx = distributed.setup(backend="gloo", timeout=timeout)
        assert (ctx.rank, ctx.world_size, ctx.backend) == (rank, world, "gloo")
        result = scenario(rank, world)
        torch.save(result, Path(out) / f"{rank}.pt")
        distributed.shutdown()
    except BaseException:
        (Path(out) / f"{rank}.err").write_text(traceback.format_exc())
        raise


def _launch(
    scenario, tmp_path: Path, *, timeout: float = 60.0, wait_for: tuple[int, ...] = tuple(range(WORLD))
) -> tuple[list[int | None], list, list[str]]:
    """Runs ``scenario(rank, world)`` on WORLD spawned ranks; returns (exit codes, results, errors).

    Waits (at most JOB_TIMEOUT_S) for the ranks in ``wait_for``, then kills any rank still alive.
    """
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [
        ctx.Process(target=_entry, args=(r, WORLD, port, scenario, str(tmp_path), timeout), daemon=True)
        for r in range(WORLD)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + JOB_TIMEOUT_S
    for r in wait_for:
        procs[r].join(max(0.0, deadline - time.monotonic()))
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5)
    results = [torch.load(tmp_path / f"{r}.pt", weights_only=True) if (tmp_path / f"{r}.pt").exists() else None
               for r in range(WORLD)]
    errors = [(tmp_path / f"{r}.err").read_text() if (tmp_path / f"{r}.err").exists() else "" for r in range(WORLD)]
    return codes, results, errors


# ---------------------------------------------------------------- the runs being compared


def _available(name: str) -> bool:
    return name in fmtl.balancers.names()


def _run(name, rank: int = 0, world: int = 1, reduce=None) -> tuple[TensorDict, fmtl.StepState]:
    """STEPS steps of balancer ``name`` (or a Balancer) on consecutive global batches; this rank sees its shard."""
    params, loss_fn, data, _ = toy_problem(num_tasks=3, batch=STEPS * WORLD * SHARD, seed=0)
    balancer = fmtl.balancers.get(name) if isinstance(name, str) else name
    step = fmtl.make_step(loss_fn, balancer, fmtl.optim.adam(1e-2), reduce=reduce)
    state = step.init(params)
    torch.manual_seed(1234)  # stochastic methods (PCGrad's order) draw the same numbers on every rank
    for k in range(STEPS):
        batch = data[k * WORLD * SHARD : (k + 1) * WORLD * SHARD]
        params, state, _ = step(params, state, batch[rank * SHARD : (rank + 1) * SHARD] if world > 1 else batch)
    return params, state


def _counting_allreduce():
    """Wraps ``dist.all_reduce`` to count its calls (the hook must bucket all leaves into one)."""
    calls = []
    original = torch.distributed.all_reduce

    def counted(tensor, *args, **kwargs):
        calls.append(tensor.numel())
        return original(tensor, *args, **kwargs)

    torch.distributed.all_reduce = counted
    return calls


def _equality_scenario(rank: int, world: int) -> dict:
    calls = _counting_allreduce()
    out = {}
    for name in METHODS:
        if not _available(name):
            continue
        calls.clear()
        params, state = _run(name, rank, world, reduce=distributed.allreduce(debug=True))
        out[name] = (params.to_dict(), list(calls))
        distributed.check_replicated(params, enabled=True, what="params")
        distributed.check_replicated(state, enabled=True, what="state")
    params, state = _run(distributed.sharded_dbmtl(), rank, world)
    distributed.check_replicated(params, enabled=True, what="params")
    out["sharded"] = (params.to_dict(), state.balancer.ema)
    # a single ulp of difference on one rank must be caught, by name, on every rank
    tampered = params.clone()
    if rank == 1:
        w = tampered["tasks", "task2", "bias"]
        w.copy_(torch.nextafter(w, w + 1))
    try:
        distributed.check_replicated(tampered, enabled=True, what="params")
        out["tamper"] = ""
    except RuntimeError as err:
        out["tamper"] = str(err)
    # broadcast makes rank 0's copy everyone's
    synced = distributed.broadcast(tampered)
    distributed.check_replicated(synced, enabled=True, what="params")
    out["synced"] = synced.to_dict()
    return out


def _train_until_error(rank: int, world: int) -> dict:
    """Rank 0 trains; returns the error it stopped with and how long it took to get it."""
    start = time.monotonic()
    try:
        _run("dbmtl", rank, world, reduce=distributed.allreduce())
        return {"error": "", "seconds": time.monotonic() - start}
    except RuntimeError as err:
        return {"error": str(err), "seconds": time.monotonic() - start}


def _crash_scenario(rank: int, world: int) -> dict:
    if rank == 1:
        os._exit(3)  # dies without a word, as an OOM-killed rank would
    return _train_until_error(rank, world)


def _hang_scenario(rank: int, world: int) -> dict:
    if rank == 1:
        time.sleep(HANG_S)  # a stuck rank: alive, but joins no collective until rank 0 gave up
    return _train_until_error(rank, world)


# ---------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def equality_run(tmp_path_factory):
    codes, results, errors = _launch(_equality_scenario, tmp_path_factory.mktemp("equality"))
    assert codes == [0] * WORLD, f"ranks exited with {codes}:\n" + "\n".join(errors)
    return results


@pytest.mark.parametrize("name", METHODS)
def test_two_ranks_equal_one_process(equality_run, name):
    """3 steps on a batch split across 2 ranks = 3 steps of one process on the whole batch (float64)."""
    if not _available(name):
        pytest.skip(f"balancer {name!r} is not registered yet (fmtl.balancers.names() = {fmtl.balancers.names()})")
    reference, _ = _run(name)
    for rank, result in enumerate(equality_run):
        got = TensorDict(result[name][0], [])
        assert_trees_close(got, reference, rtol=1e-10, atol=1e-10)
        if rank:
            assert_trees_close(got, TensorDict(equality_run[0][name][0], []), rtol=0, atol=0)


@pytest.mark.parametrize("name", METHODS)
def test_one_bucketed_allreduce_per_reduction(equality_run, name):
    """A gradient method reduces (ℓ, J, ∇ψ) in ONE call of T + T·P + Σ|ψ_t| numbers; a loss method
    makes one call for ℓ (T numbers) and one for the weighted gradient (P + Σ|ψ_t| numbers)."""
    if not _available(name):
        pytest.skip(f"balancer {name!r} is not registered yet")
    params, _, _, _ = toy_problem(num_tasks=3, batch=1, seed=0)
    T = 3
    P = sum(v.numel() for v in params["shared"].values(True, True))
    H = sum(v.numel() for v in params["tasks"].values(True, True))
    calls = equality_run[0][name][1]
    if fmtl.balancers.get(name).loss_weights is None:
        assert calls == [T + T * P + H] * STEPS
    else:
        assert calls == [T, P + H] * STEPS


def test_sharded_dbmtl_on_two_ranks_equals_dbmtl_on_one_process(equality_run):
    """ZeRO-style DB-MTL (EMA sharded by columns, reduce-scatter, all-reduced norms) = plain DB-MTL."""
    reference, state = _run("dbmtl")
    for result in equality_run:
        assert_trees_close(TensorDict(result["sharded"][0], []), reference, rtol=1e-10, atol=1e-10)
    ema = torch.cat([result["sharded"][1] for result in equality_run], 1)
    full = flat_shared(state.balancer.ema)
    assert ema.shape == (3, WORLD * -(-full.shape[1] // WORLD))  # each rank holds T·⌈P/W⌉
    torch.testing.assert_close(ema[:, : full.shape[1]], full, rtol=1e-10, atol=1e-10)
    assert not ema[:, full.shape[1] :].any()


def test_sharded_dbmtl_in_one_process_is_dbmtl():
    a, sa = _run("dbmtl")
    b, sb = _run(distributed.sharded_dbmtl())
    assert_trees_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sb.balancer.ema, flat_shared(sa.balancer.ema), rtol=1e-12, atol=1e-12)


def test_check_replicated_names_the_diverged_leaf_on_every_rank(equality_run):
    for result in equality_run:
        print(result["tamper"])
        assert "not replicated" in result["tamper"] and "task2" in result["tamper"] and "[1]" in result["tamper"]
    assert_trees_close(TensorDict(equality_run[0]["synced"], []), TensorDict(equality_run[1]["synced"], []),
                       rtol=0, atol=0)


def test_crashed_rank_makes_the_other_fail_with_a_clear_error(tmp_path):
    codes, results, errors = _launch(_crash_scenario, tmp_path, timeout=20.0)
    assert codes[1] == 3
    print(results[0]["error"])
    assert codes[0] == 0, errors[0]
    assert "another rank probably exited or is stuck" in results[0]["error"]
    assert results[0]["seconds"] < 20.0 + 10.0


def test_stuck_rank_makes_the_other_fail_after_the_timeout(tmp_path):
    codes, results, errors = _launch(_hang_scenario, tmp_path, timeout=HANG_TIMEOUT_S, wait_for=(0,))
    assert codes[0] == 0, errors[0]
    assert "another rank probably exited or is stuck" in results[0]["error"]
    print(results[0]["error"])
    assert HANG_TIMEOUT_S <= results[0]["seconds"] < HANG_S


# ---------------------------------------------------------------- single-process behaviour


def test_without_a_process_group_everything_is_the_identity():
    assert not torch.distributed.is_initialized()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    x = fmtl.TaskGradients(torch.ones(2), TensorDict({"w": torch.ones(2, 3)}, [2]), TensorDict())
    assert distributed.allreduce()(x) is x
    assert distributed.broadcast(x) is x
    distributed.check_replicated(x, enabled=True)


def test_setup_is_a_noop_for_one_process(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    ctx = distributed.setup()
    assert ctx.world_size == 1 and ctx.backend is None and not torch.distributed.is_initialized()


def test_setup_names_missing_torchrun_variables(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(RuntimeError, match="MASTER_ADDR"):
        distributed.setup()


def test_bucketing_keeps_structure_and_makes_one_buffer_per_dtype():
    grads = fmtl.TaskGradients(
        torch.arange(2.0, dtype=torch.float64),
        TensorDict({"a": torch.randn(2, 3, 4), "b": {"c": torch.randn(2, 5)}}, [2]),
        TensorDict({"t0": {"w": torch.randn(3, dtype=torch.float64)}, "t1": {"w": torch.randn(1)}}, []),
    )
    buffers = []

    def double(flat):
        buffers.append((flat.dtype, flat.numel()))
        flat.mul_(2)

    out = _bucketed(grads, double, "test", None)
    assert sorted(buffers, key=str) == sorted([(torch.float32, 24 + 10 + 1), (torch.float64, 2 + 3)], key=str)
    assert isinstance(out, fmtl.TaskGradients) and out.shared.batch_size == torch.Size([2])
    for a, b in zip(torch.utils._pytree.tree_leaves(out), torch.utils._pytree.tree_leaves(grads), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, 2 * b, rtol=0, atol=0)
    assert torch.equal(grads.losses, torch.arange(2.0, dtype=torch.float64))  # input untouched


# ---------------------------------------------------------------- torchrun end to end


def _train_cli_missing() -> str:
    """Why the ``fmtl train`` end-to-end test cannot run yet ("" when it can)."""
    import importlib.util

    if importlib.util.find_spec("fmtl.train.cli") is None or importlib.util.find_spec("fmtl.__main__") is None:
        return "fmtl train does not exist yet (no fmtl/train/cli.py or fmtl/__main__.py)"
    import subprocess
    import sys

    probe = subprocess.run([sys.executable, "-m", "fmtl", "train", "--help"], capture_output=True, timeout=120)
    return "" if probe.returncode == 0 else f"`fmtl train --help` fails: {probe.stderr.decode()[-300:]}"


def _numbers(tree, prefix: str = "") -> dict[str, float]:
    """The numeric leaves of results.json, without wall-clock ones and the world size (they differ)."""
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_numbers(v, f"{prefix}.{k}"))
        return out
    if isinstance(tree, list):
        out = {}
        for i, v in enumerate(tree):
            out.update(_numbers(v, f"{prefix}[{i}]"))
        return out
    timing = any(w in prefix.lower() for w in ("time", "wall", "second", "per_s", "world_size"))
    return {prefix: float(tree)} if isinstance(tree, int | float) and not isinstance(tree, bool) and not timing else {}


def test_torchrun_train_equals_one_process(tmp_path):
    """``torchrun --nproc_per_node=2 -m fmtl train`` (1 epoch, synthetic) writes the results.json of one process."""
    import json
    import subprocess
    import sys

    reason = _train_cli_missing()
    if reason:
        pytest.skip(reason)
    # global batch 16 divides the 256 training rows, so each rank's shard of every batch has 8 rows
    args = ["train", "--benchmark", "synthetic", "--method", "dbmtl", "--epochs", "1", "--batch-size", "16",
            "--seed", "0", "--data", "n=256", "--data", "n_eval=64", "--stl", "none", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", distributed.DEBUG_ENV: "1"}
    one = subprocess.run([sys.executable, "-m", "fmtl", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
         "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "fmtl", *args,
         "--out", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a = _numbers(json.loads((tmp_path / "one" / "results.json").read_text()))
    b = _numbers(json.loads((tmp_path / "two" / "results.json").read_text()))
    assert a and a.keys() == b.keys()
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key

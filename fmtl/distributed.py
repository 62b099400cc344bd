"""Data-parallel fmtl on ``torch.distributed``: the ``reduce`` hook, process-group setup, checks.

Each of W ranks holds the same parameters (θ, ψ_t) and balancer state and reads its own shard
B_r of every global batch B. Because ``loss_fn`` is a mean over the batch, the mean over ranks
of the per-rank losses and task gradients equals the full-batch quantities when the shards
have equal sizes:

.. math::
    \\ell_t(B) = \\frac{1}{W}\\sum_r \\ell_t(B_r), \\qquad
    J(B) = \\frac{1}{W}\\sum_r J(B_r) \\qquad (|B_r| = |B|/W)

:func:`allreduce` returns the hook that ``fmtl.make_step(..., reduce=...)`` applies to
``(ℓ, J, ∇ψ_t ℓ_t)`` *before* the balancer, so the log transform, the EMA ĝ_t, the norms
‖ĝ_t‖ and α_k of DB-MTL (Algorithm 1) see exactly the global-batch values and every rank
applies the same update: one process and W processes give the same parameters.

Environment variables: ``FMTL_DISTRIBUTED_TIMEOUT`` (seconds, default 600) bounds every
collective, so a rank that fails or hangs makes the others raise instead of waiting forever;
``FMTL_DISTRIBUTED_DEBUG=1`` turns on :func:`check_replicated` and the shape agreement check
of the hook.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tensordict import TensorDict
from torch.utils import _pytree as pytree

from .balancers._common import assemble
from .balancers._common import log_transform as _log_transform
from .balancers.dbmtl import ALPHAS, alpha_scale, ema_carry, ema_rows, ema_sq_norms
from .base import Balancer, TaskGradients
from .tree import leaves

__all__ = [
    "DEBUG_ENV",
    "TIMEOUT_ENV",
    "DistContext",
    "ShardedDBMTLState",
    "allreduce",
    "broadcast",
    "check_replicated",
    "debug_enabled",
    "is_main",
    "rank",
    "setup",
    "sharded_dbmtl",
    "shutdown",
    "world_size",
]

DEBUG_ENV = "FMTL_DISTRIBUTED_DEBUG"
TIMEOUT_ENV = "FMTL_DISTRIBUTED_TIMEOUT"
_DEFAULT_TIMEOUT_S = 600.0
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

Group = Any  # a torch.distributed ProcessGroup, or None for the default group


class DistContext(NamedTuple):
    """Where this process stands: its rank, the world size, its local rank, device and backend.

    ``backend`` is ``None`` for a single process (no process group was created).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None


def _active(group: Group = None) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def rank(group: Group = None) -> int:
    """This process's rank in ``group`` (0 without a process group).

    Example:
        >>> rank()
        0
    """
    return dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0


def world_size(group: Group = None) -> int:
    """The number of processes in ``group`` (1 without a process group).

    Example:
        >>> world_size()
        1
    """
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """True on global rank 0, the only rank that writes logs, plots and checkpoints.

    Example:
        >>> is_main()
        True
    """
    return rank() == 0


def debug_enabled() -> bool:
    """True when ``FMTL_DISTRIBUTED_DEBUG`` is set to a true value (1, true, yes, on).

    Example:
        >>> import os
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {DEBUG_ENV: "1"}):
        ...     debug_enabled()
        True
    """
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def setup(backend: str | None = None, timeout: float | None = None) -> DistContext:
    """Initializes the default process group from torchrun's environment variables.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; picks
    ``nccl`` (and the GPU ``LOCAL_RANK``) when CUDA is available, ``gloo`` on CPU otherwise.
    Without ``WORLD_SIZE`` or with ``WORLD_SIZE=1`` it creates nothing (a single process), and
    when a group already exists it only reports it, so calling it twice is harmless.

    Args:
        backend: override the automatic choice (``"gloo"`` or ``"nccl"``).
        timeout: seconds any collective may wait for the other ranks before raising (default
            ``$FMTL_DISTRIBUTED_TIMEOUT`` or 600): a rank that died or hangs makes the others
            fail with an error instead of blocking forever.

    Returns:
        The :class:`DistContext` of this process.

    Example:
        >>> import os
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"WORLD_SIZE": "1"}):
        ...     setup()
        DistContext(rank=0, world_size=1, local_rank=0, device=device(type='cpu'), backend=None)
    """
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if dist.is_available() and dist.is_initialized():
        return DistContext(rank(), world_size(), local_rank, device, dist.get_backend())
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return DistContext(0, 1, 0, torch.device("cuda", 0) if cuda else torch.device("cpu"), None)
    missing = [v for v in _TORCHRUN_VARS if v not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={size} but {missing} are not set; launch with torchrun")
    backend = backend or ("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(device)
    seconds = float(os.environ.get(TIMEOUT_ENV, _DEFAULT_TIMEOUT_S)) if timeout is None else float(timeout)
    dist.init_process_group(
        backend,
        rank=int(os.environ["RANK"]),
        world_size=size,
        timeout=timedelta(seconds=seconds),
        device_id=device if backend == "nccl" else None,
    )
    return DistContext(rank(), size, local_rank, device, backend)


def shutdown() -> None:
    """Destroys the default process group if there is one (call once at the end of training).

    Example:
        >>> shutdown()
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _run(collective: Callable[[], Any], what: str, group: Group) -> None:
    # A dead or stuck peer surfaces as an opaque backend error (or a timeout); say what it means.
    try:
        collective()
    except RuntimeError as err:
        raise RuntimeError(
            f"fmtl.distributed: {what} failed on rank {rank(group)} of {world_size(group)}; another rank "
            f"probably exited or is stuck (collectives wait at most the timeout of setup(), ${TIMEOUT_ENV}): {err}"
        ) from err


def _comm_device(group: Group, fallback: torch.device) -> torch.device:
    if dist.is_initialized() and dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return fallback


def _buckets(leaves: Sequence[torch.Tensor]) -> dict[tuple[torch.dtype, torch.device], list[int]]:
    groups: dict[tuple[torch.dtype, torch.device], list[int]] = {}
    for i, v in enumerate(leaves):
        groups.setdefault((v.dtype, v.device), []).append(i)
    return groups


def _bucketed(tree: Any, collective: Callable[[torch.Tensor], None], what: str, group: Group) -> Any:
    """Applies an in-place ``collective`` to one flat buffer per dtype holding all leaves of ``tree``."""
    leaves, spec = pytree.tree_flatten(tree)
    out: list[torch.Tensor | None] = [None] * len(leaves)
    for (_, device), idx in _buckets(leaves).items():
        flat = torch.cat([leaves[i].detach().reshape(-1) for i in idx])
        comm = _comm_device(group, device)
        flat = flat.to(comm)
        _run(lambda flat=flat: collective(flat), what, group)
        flat = flat.to(device)
        for i, chunk in zip(idx, flat.split([leaves[i].numel() for i in idx]), strict=True):
            out[i] = chunk.view(leaves[i].shape)
    return pytree.tree_unflatten(out, spec)


def _signature(leaves: Sequence[torch.Tensor]) -> list[int]:
    sig = [len(leaves)]
    for v in leaves:
        sig += [zlib.crc32(str(v.dtype).encode()), v.dim(), *v.shape]
    return sig


def _gather_rows(row: torch.Tensor, what: str, group: Group) -> torch.Tensor:
    """``[W, n]``: every rank's copy of the int64 vector ``row`` (same length on all ranks)."""
    row = row.to(_comm_device(group, torch.device("cpu")))
    rows = [torch.empty_like(row) for _ in range(world_size(group))]
    _run(lambda: dist.all_gather(rows, row, group=group), what, group)
    return torch.stack(rows).cpu()


def _check_agree(tree: Any, what: str, group: Group) -> None:
    sig = torch.tensor(_signature(pytree.tree_leaves(tree)), dtype=torch.int64)
    length = _gather_rows(torch.tensor([sig.numel()]), what, group)
    if bool((length == length[0]).all()):
        sigs = _gather_rows(sig, what, group)
        if bool((sigs == sigs[0]).all()):
            return
    raise RuntimeError(
        f"fmtl.distributed: {what}: ranks hold differently shaped trees (leaf count, sizes or dtypes "
        "differ); every rank must run the same model, tasks and dtype"
    )


def allreduce(group: Group = None, *, debug: bool | None = None) -> Callable[[Any], Any]:
    """The ``reduce`` hook of ``fmtl.make_step``: the mean over ranks of a Tensor, TensorDict or TaskGradients.

    .. math::
        x \\mapsto \\frac{1}{W} \\sum_{r=0}^{W-1} x^{(r)}

    applied leaf-wise to the losses ℓ, the Jacobian rows ∇θ ℓ_t and the head gradients
    ∇ψ_t ℓ_t. All leaves of one dtype travel in ONE flattened buffer and one
    ``all_reduce(SUM)`` per call (not one call per tensor): T·P + T + Σ_t |ψ_t| numbers for
    a gradient balancer's TaskGradients; for a loss balancer T numbers (ℓ) then P + Σ_t |ψ_t|
    (the weighted gradient). The result is
    detached (it carries no autograd history) and never aliases the input.

    Without a process group, or with one process, the hook returns its input unchanged, so a
    script can always pass ``reduce=fmtl.distributed.allreduce()``.

    Args:
        group: the data-parallel process group (default: the whole world).
        debug: before each reduction, check that every rank holds a tree of the same shapes
            and dtypes (an extra tiny all-gather; default ``$FMTL_DISTRIBUTED_DEBUG``).

    Returns:
        ``reduce(x) -> x̄`` with the structure of ``x``.

    Example:
        >>> import torch, fmtl
        >>> reduce = allreduce()  # no process group here: the identity
        >>> reduce(torch.tensor([1.0, 2.0]))
        tensor([1., 2.])
        >>> step = fmtl.make_step(lambda p, b: p["shared", "w"].pow(2).sum(0), fmtl.balancers.dbmtl(),
        ...                       fmtl.optim.sgd(0.1), reduce=reduce)
    """

    def reduce(x: Any) -> Any:
        if not _active(group):
            return x
        if (debug_enabled() if debug is None else debug):
            _check_agree(x, "allreduce", group)
        for leaf in pytree.tree_leaves(x):
            if not leaf.is_floating_point():
                raise TypeError(f"allreduce averages floating-point tensors; got a {leaf.dtype} leaf")
        size = world_size(group)

        def mean(flat: torch.Tensor) -> None:
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
            flat.div_(size)

        return _bucketed(x, mean, "allreduce", group)

    return reduce


def broadcast(tree: Any, src: int = 0, group: Group = None) -> Any:
    """Rank ``src``'s copy of ``tree`` (params, state) on every rank, in one bucketed broadcast per dtype.

    Use it once after initialization so every rank starts from identical θ, ψ_t and state
    regardless of how each rank seeded its RNG. Without a process group it returns ``tree``.

    Example:
        >>> import torch
        >>> broadcast({"w": torch.ones(2)})
        {'w': tensor([1., 1.])}
    """
    if not _active(group):
        return tree
    return _bucketed(tree, lambda flat: dist.broadcast(flat, src=src, group=group), "broadcast", group)


def _checksums(v: torch.Tensor) -> torch.Tensor:
    """Two exact, order-independent int64 checksums of ``v``'s bits: Σ bits and Σ (i mod 251 + 1)·bits."""
    x = v.detach().contiguous().reshape(-1)
    if x.dtype == torch.bool:
        x = x.to(torch.uint8)
    size = x.element_size()
    word = torch.int32 if size % 4 == 0 else torch.int16 if size == 2 else torch.uint8
    bits = x.view(word).to(torch.int64)
    position = torch.arange(bits.numel(), device=bits.device) % 251 + 1
    # int64 overflow wraps (arithmetic mod 2^64), which keeps the sums exact and order-free
    return torch.stack([bits.sum(), (bits * position).sum()]).cpu()


def check_replicated(tree: Any, *, group: Group = None, enabled: bool | None = None, what: str = "state") -> None:
    """Raises on every rank if ``tree`` (params, balancer or optimizer state) differs across ranks.

    Compares exact bitwise checksums of every leaf with one small all-gather (2 int64 per
    leaf), so it costs a pass over the tree and no transfer of the tree itself. A no-op unless
    ``enabled`` (default ``$FMTL_DISTRIBUTED_DEBUG``) and a process group of 2+ ranks exists.

    Args:
        tree: any pytree of tensors (TensorDict, StepState, ...).
        group: the process group (default: the whole world).
        enabled: force the check on or off.
        what: the name used in the error message.

    Example:
        >>> import torch
        >>> check_replicated({"w": torch.ones(2)}, enabled=True)  # one process: trivially replicated
    """
    if not (debug_enabled() if enabled is None else enabled) or not _active(group):
        return
    _check_agree(tree, f"check_replicated({what})", group)
    paths, _ = pytree.tree_flatten_with_path(tree)
    if not paths:
        return
    local = torch.cat([_checksums(v) for _, v in paths])
    sums = _gather_rows(local, f"check_replicated({what})", group).view(world_size(group), len(paths), 2)
    differs = (sums != sums[0]).any(-1)  # [W, L]
    if bool(differs.any()):
        bad = differs.any(0).nonzero().flatten().tolist()
        ranks = differs.any(1).nonzero().flatten().tolist()
        names = [pytree.keystr(paths[i][0]) for i in bad]
        raise RuntimeError(
            f"fmtl.distributed: {what} is not replicated: ranks {ranks} differ from rank 0 in "
            f"{len(bad)} leaves, e.g. {names[:5]}"
        )


class ShardedDBMTLState(NamedTuple):
    """:func:`sharded_dbmtl`'s state: the step count k (0-d int64) and this rank's columns of ĝ.

    As :class:`fmtl.balancers.DBMTLState`, ĝ is stored as scaled rows, ĝ_t = s_t u_t: ``rows``
    holds u ([T, ⌈P/W⌉], this rank's columns), ``scale`` holds s ([T], the same on every rank);
    ``ema`` gives ĝ.

    Example:
        >>> ShardedDBMTLState(torch.tensor(1), torch.ones(2, 3), torch.tensor([2.0, 1.0])).ema[:, 0]
        tensor([2., 1.])
    """

    count: torch.Tensor
    rows: torch.Tensor
    scale: torch.Tensor

    @property
    def ema(self) -> torch.Tensor:
        """This rank's columns of ĝ_t = s_t u_t ([T, ⌈P/W⌉])."""
        return self.rows * self.scale[:, None]


def _flat_rows(J: TensorDict, keys: list) -> torch.Tensor:
    return torch.cat([J[k].reshape(J.batch_size[0], -1) for k in keys], 1)


def _unflatten(flat: torch.Tensor, like: TensorDict, keys: list) -> TensorDict:
    out = TensorDict({}, [], device=like.device)
    for k, chunk in zip(keys, flat.split([like[k].numel() for k in keys]), strict=True):
        out[k] = chunk.view(like[k].shape)
    return out


def sharded_dbmtl(
    group: Group = None, beta: float = 0.9, beta_sigma: float = 0.0, eps: float = 1e-8, alpha: str | float = "max"
) -> Balancer:
    """DB-MTL (Algorithm 1) with the T×P EMA ĝ sharded over the W ranks of ``group`` (ZeRO-style).

    Use it *without* a ``reduce`` hook: ``make_step(loss_fn, sharded_dbmtl(), opt)``. Each rank
    owns the columns ``[r·S, (r+1)·S)`` of the flattened θ (S = ⌈P/W⌉, zero-padded) and:

    .. math::
        J^{(r)} &= \\tfrac1W \\textstyle\\sum_q J_{q}[:, \\text{cols}_r]
            \\quad \\text{(reduce-scatter: T·P numbers sent, not 2·T·P)} \\\\
        \\hat g_{t}^{(r)} &\\leftarrow \\beta_k \\hat g_{t}^{(r)} + (1-\\beta_k)\\,
            J^{(r)}_t / (\\ell_t + \\epsilon) \\\\
        \\|\\hat g_t\\|^2 &= \\textstyle\\sum_r \\|\\hat g_t^{(r)}\\|^2
            \\quad \\text{(all-reduce of T partial squared norms)} \\\\
        \\tilde g &= \\text{all-gather}_r\\big(\\textstyle\\sum_t
            \\alpha_k \\hat g_t^{(r)} / (\\|\\hat g_t\\| + \\epsilon)\\big)

    The losses ℓ and head gradients ∇ψ_t ℓ_t are averaged with one bucketed all-reduce. The
    result equals :func:`fmtl.balancers.dbmtl` on the global batch (with ``log_transform`` and
    ``normalize`` on); the state per rank is T·⌈P/W⌉ numbers instead of T·P. The local task
    gradients J_q are still computed whole (T·P transiently); ``info`` diagnostics of
    ``make_step`` (losses, norms, cosines) are those of the local shard of the batch.

    Args:
        group: the data-parallel process group (default: the whole world; one process works too).
        beta, beta_sigma, eps, alpha: as in :func:`fmtl.balancers.dbmtl`.

    Example:
        >>> import torch, fmtl
        >>> from tensordict import TensorDict
        >>> params = TensorDict({"shared": {"w": torch.zeros(2)},
        ...                      "tasks": {"a": {"b": torch.zeros(1)}, "b": {"b": torch.zeros(1)}}}, [])
        >>> g = fmtl.TaskGradients(torch.ones(2), TensorDict({"w": torch.tensor([[3.0, 0.0], [0.0, 0.1]])}, [2]),
        ...                        params["tasks"].apply(torch.ones_like))
        >>> one, sharded = fmtl.balancers.dbmtl(beta=0.0, eps=0.0), sharded_dbmtl(beta=0.0, eps=0.0)
        >>> a, _, _ = one.update(g, one.init(params, 2), params)
        >>> b, _, _ = sharded.update(g, sharded.init(params, 2), params)  # one process: one shard
        >>> torch.equal(a["shared", "w"], b["shared", "w"])
        True
    """
    if isinstance(alpha, str) and alpha not in ALPHAS:
        raise ValueError(f"alpha must be one of {ALPHAS} or a number; got {alpha!r}")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must lie in [0, 1); got {beta}")
    mean = allreduce(group)

    def init(params: TensorDict, num_tasks: int) -> ShardedDBMTLState:
        shared = leaves(params["shared"])
        dtypes = {v.dtype for v in shared}
        if len(dtypes) != 1:
            raise TypeError(f"sharded_dbmtl needs one dtype for all shared parameters; got {sorted(map(str, dtypes))}")
        size = -(-sum(v.numel() for v in shared) // world_size(group))
        return ShardedDBMTLState(
            torch.zeros((), dtype=torch.int64, device=shared[0].device),
            torch.zeros(num_tasks, size, dtype=shared[0].dtype, device=shared[0].device),
            torch.zeros(num_tasks, dtype=shared[0].dtype, device=shared[0].device),
        )

    def update(
        grads: TaskGradients, state: ShardedDBMTLState, params: TensorDict
    ) -> tuple[TensorDict, ShardedDBMTLState, dict]:
        W, (T, S) = world_size(group), state.rows.shape
        keys = list(params["shared"].keys(True, True))
        losses, tasks = mean((grads.losses, grads.tasks))
        J = _flat_rows(grads.shared, keys).detach()
        P = J.shape[1]
        J = F.pad(J, (0, W * S - P))
        if _active(group):
            # rank-major [W·T, S]: block q (rows q·T..) goes to rank q
            blocks = J.reshape(T, W, S).transpose(0, 1).reshape(W * T, S)
            rows = torch.empty(T, S, dtype=J.dtype, device=J.device)
            _run(lambda: dist.reduce_scatter_single(rows, blocks, group=group), "sharded_dbmtl reduce-scatter", group)
            rows.div_(W)
        else:
            rows = J
        # the heads (and the domain check) go through the log transform; θ's 1/(ℓ_t+ε) lives in
        # the rows' scale (fmtl.balancers.dbmtl.ema_carry), as in plain DB-MTL
        heads = _log_transform(TaskGradients(losses, TensorDict({}, [T]), tasks), params, eps).tasks
        count = state.count + 1
        carry, scale = ema_carry(state.scale, losses, count, beta, beta_sigma, eps)
        u = ema_rows(state.rows, rows, carry)
        sq_norms = ema_sq_norms(TensorDict({"u": u}, [T]), scale)
        if _active(group):
            _run(lambda: dist.all_reduce(sq_norms, group=group), "sharded_dbmtl norms", group)
        norms = sq_norms.sqrt()
        weights = alpha_scale(alpha, norms) / (norms + eps)
        shard = (weights * scale).to(u.dtype) @ u
        if _active(group):
            full = torch.empty(W * S, dtype=shard.dtype, device=shard.device)
            _run(lambda: dist.all_gather_single(full, shard, group=group), "sharded_dbmtl all-gather", group)
        else:
            full = shard
        shared = _unflatten(full[:P], params["shared"], keys)
        return assemble(shared, heads), ShardedDBMTLState(count, u, scale.to(state.scale.dtype)), {"weights": weights}

    return Balancer(init, update)

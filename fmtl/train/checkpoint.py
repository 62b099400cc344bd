"""Training checkpoints: atomic writes, ``weights_only`` reads, and strict structure checks.

A checkpoint is a plain dict of tensors and Python primitives (so ``torch.load(...,
weights_only=True)`` can read it and no code is ever unpickled):

* ``params`` — the parameters θ, ψ_t as a flat ``{"shared.layers.0.weight": tensor}`` dict;
* ``state`` — the leaves of the step state (step count, balancer state such as DB-MTL's EMA
  ĝ_t, optimizer moments), rebuilt on load against the structure ``step.init(params)`` has;
* ``position`` — where the data order stands: ``epoch``, ``batch`` (next global batch of that
  epoch), ``step`` (optimizer steps done);
* ``rng`` — the global torch RNG state; ``config`` (the resolved run configuration),
  ``history`` (per-epoch evaluations) and ``extra`` (bookkeeping such as the size of
  ``metrics.jsonl`` at save time).

Writes are atomic (:func:`fmtl.atomic.write`: temporary file, fsync, ``os.replace``): a process
killed at any moment leaves either the old or the new file.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict
from torch.utils import _pytree as pytree

from .. import atomic, rng

__all__ = ["FORMAT", "VERSION", "CheckpointError", "save", "load", "restore"]

FORMAT = "fmtl-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, corrupt, foreign, or for another model."""


def _host(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to("cpu", copy=True)  # a checkpoint holds CPU tensors: it loads on any device


def _flat(params: TensorDict) -> dict[str, torch.Tensor]:
    return {k: _host(v) for k, v in params.flatten_keys(".").items()}


def save(
    path: str | os.PathLike[str],
    *,
    params: TensorDict,
    state: Any,
    position: Mapping[str, int],
    config: Mapping[str, Any],
    history: list,
    extra: Mapping[str, Any] | None = None,
    rng_state: rng.RNGState | None = None,
) -> None:
    """Writes a checkpoint atomically (temp file in the same directory, fsync, ``os.replace``).

    Tensors are stored on the CPU; ``rng_state`` (default: the CPU generator's) is the random state
    to resume from — ``rng`` holds the CPU generator's, ``rng_device`` an accelerator's.

    Example:
        >>> import tempfile, torch
        >>> from tensordict import TensorDict
        >>> p = TensorDict({"shared": {"w": torch.ones(2)}, "tasks": {"a": {"b": torch.zeros(1)}}}, [])
        >>> path = Path(tempfile.mkdtemp()) / "checkpoint.pt"
        >>> save(path, params=p, state=(torch.tensor(3),), position={"epoch": 1, "batch": 0, "step": 3},
        ...      config={"method": "ew"}, history=[])
        >>> load(path)["position"]
        {'epoch': 1, 'batch': 0, 'step': 3}
    """
    path = Path(path)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "params": _flat(params),
        "state": [_host(x) if isinstance(x, torch.Tensor) else x for x in pytree.tree_leaves(state)],
        "position": {k: int(v) for k, v in position.items()},
        "rng": (rng_state or rng.get()).cpu,
        "config": dict(config),
        "history": list(history),
        "extra": dict(extra or {}),
    }
    if rng_state is not None and rng_state.device is not None:
        payload["rng_device"] = rng_state.device
    atomic.write(path, lambda f: torch.save(payload, f))


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads a checkpoint with ``weights_only=True``; raises :class:`CheckpointError` if unusable.

    Example:
        >>> import tempfile
        >>> bad = Path(tempfile.mkdtemp()) / "x.pt"
        >>> _ = bad.write_bytes(b"not a checkpoint")
        >>> load(bad)
        Traceback (most recent call last):
        ...
        fmtl.train.checkpoint.CheckpointError: .../x.pt is not a readable checkpoint (corrupt or truncated ...
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise CheckpointError(
            f"{path} is not a readable checkpoint (corrupt or truncated file, or not written by fmtl): "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an fmtl checkpoint (no {FORMAT!r} marker): a foreign file")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {payload.get('version')}; this fmtl reads {VERSION}")
    missing = {"params", "state", "position", "rng", "config", "history"} - set(payload)
    if missing:
        raise CheckpointError(f"{path} is incomplete: missing {sorted(missing)}")
    return payload


def restore(payload: Mapping[str, Any], params: TensorDict, state: Any) -> tuple[TensorDict, Any]:
    """Parameters and step state from a checkpoint, shaped like the given templates.

    ``params`` and ``state`` are what the run would start from (the model's initial params and
    ``step.init(params)``); every key, shape and dtype must match or :class:`CheckpointError`
    says what differs. The saved tensors are moved to the templates' devices.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> p = TensorDict({"shared": {"w": torch.zeros(2)}, "tasks": {"a": {"b": torch.zeros(1)}}}, [])
        >>> ck = {"params": {"shared.w": torch.ones(2), "tasks.a.b": torch.ones(1)}, "state": [torch.tensor(4)]}
        >>> p2, s2 = restore(ck, p, (torch.tensor(0),))
        >>> p2["shared", "w"], s2
        (tensor([1., 1.]), (tensor(4),))
    """
    want = dict(params.flatten_keys(".").items())
    got = payload["params"]
    if set(got) != set(want):
        extra, missing = sorted(set(got) - set(want))[:5], sorted(set(want) - set(got))[:5]
        raise CheckpointError(
            f"checkpoint parameters do not match this model (unexpected {extra}, missing {missing}): "
            "it belongs to a different benchmark, model or method"
        )
    for k, v in want.items():
        if got[k].shape != v.shape or got[k].dtype != v.dtype:
            raise CheckpointError(
                f"checkpoint parameter {k!r} is {tuple(got[k].shape)} {got[k].dtype}, the model's is "
                f"{tuple(v.shape)} {v.dtype}"
            )
    new_params = params.clone()
    for k, v in got.items():
        new_params[tuple(k.split("."))] = v.to(want[k].device)
    leaves, spec = pytree.tree_flatten(state)
    saved = payload["state"]
    shapes_ok = len(saved) == len(leaves) and all(
        isinstance(a, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype
        for a, b in zip(saved, leaves, strict=True)
    )
    if not shapes_ok:
        raise CheckpointError("checkpoint step state does not match this method/optimizer (different state layout)")
    return new_params, pytree.tree_unflatten([a.to(b.device) for a, b in zip(saved, leaves, strict=True)], spec)

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

Integrity: ``checksum`` holds the SHA-256 of everything else (:func:`fmtl.checksum.checksum`:
tensors by their bytes, the rest by value), because ``torch.load`` does not check its records'
CRC. :func:`load` turns every way a file can be unusable into a :class:`CheckpointError` with a
one-line message — unreadable bytes of any kind, a foreign file, another version (version 1 had
no checksum), a checksum mismatch, or any field of the wrong type or range (validated before
the caller changes anything) — so a run refuses it (exit 4) with every file left as it was.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict
from torch.utils import _pytree as pytree

from .. import atomic, rng
from ..checksum import checksum

__all__ = ["FORMAT", "VERSION", "CheckpointError", "save", "load", "restore"]

FORMAT = "fmtl-checkpoint"
VERSION = 2
_FIELDS = ("params", "state", "position", "rng", "config", "history", "extra")
_POSITION = ("epoch", "batch", "step")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, corrupt, foreign, or for another model."""


def _host(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to("cpu", copy=True)  # a checkpoint holds CPU tensors: it loads on any device


def _flat(params: TensorDict) -> dict[str, torch.Tensor]:
    return {k: _host(v) for k, v in params.flatten_keys(".").items()}


def _count(v: Any) -> bool:
    return type(v) is int and v >= 0


def _number(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def _rng_ok(v: Any) -> bool:
    if not (isinstance(v, torch.Tensor) and v.dtype == torch.uint8 and v.dim() == 1):
        return False
    try:  # a fresh generator: the global RNG is not touched
        torch.Generator().set_state(v)
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


def _str_keys(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) for k in v)


# The bookkeeping the training loop keeps in ``extra``: each known entry's check and its rule.
_EXTRA = {
    "wall_s": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "epoch_steps": (_count, "an int >= 0"),
    "metrics_bytes": (_count, "an int >= 0"),
    "epoch_loss_sum": (lambda v: isinstance(v, list) and all(type(x) in (int, float) for x in v), "a list of numbers"),
    "strategy": (lambda v: isinstance(v, str), "a str"),
}


def _problems(payload: Mapping[str, Any]) -> str | None:
    """The first field of a checkpoint payload that is malformed, in words (None: all are fine)."""
    params, state, position = payload["params"], payload["state"], payload["position"]
    if not _str_keys(params) or not params or not all(isinstance(v, torch.Tensor) for v in params.values()):
        return "'params' must be a non-empty dict of named tensors"
    if not isinstance(state, list) or not all(isinstance(v, torch.Tensor) for v in state):
        return "'state' must be a list of tensors"
    if not _str_keys(position) or sorted(position) != sorted(_POSITION):
        got = sorted(position) if _str_keys(position) else type(position).__name__
        return f"'position' must have exactly the keys {list(_POSITION)}; it has {got}"
    for k in _POSITION:
        if not _count(position[k]):
            return f"position[{k!r}] is {position[k]!r}; it must be an int >= 0"
    if not _rng_ok(payload["rng"]):
        return "'rng' is not a state of torch's CPU generator"
    device_rng = payload.get("rng_device")
    if device_rng is not None and not (isinstance(device_rng, torch.Tensor) and device_rng.dtype == torch.uint8):
        return "'rng_device' is not a generator state (a uint8 tensor)"
    for name in ("config", "extra"):
        if not _str_keys(payload[name]):
            return f"{name!r} must be a dict with str keys; it is a {type(payload[name]).__name__}"
    if not isinstance(payload["history"], list) or not all(_str_keys(h) for h in payload["history"]):
        return "'history' must be a list of dicts"
    for k, (ok, rule) in _EXTRA.items():
        if k in payload["extra"] and not ok(payload["extra"][k]):
            return f"extra[{k!r}] is {payload['extra'][k]!r}; it must be {rule}"
    return None


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
    problem = _problems(payload)
    if problem is not None:  # never write what load would refuse
        raise ValueError(f"refusing to write checkpoint {path}: {problem}")
    payload["checksum"] = checksum(payload)
    atomic.write(path, lambda f: torch.save(payload, f))


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads and verifies a checkpoint (``weights_only=True``); raises :class:`CheckpointError` if unusable.

    Every failure is a :class:`CheckpointError` with a one-line message: a missing or
    unreadable file (whatever ``torch.load`` raises on arbitrary bytes), a foreign file,
    another version, a checksum mismatch (a changed byte anywhere, tensor data included), or a
    malformed field. The returned dict is the payload without its checksum.

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
    except Exception as e:  # noqa: BLE001 - the unpickler raises anything (IndexError, KeyError, ...) on bad bytes
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointError(
            f"{path} is not a readable checkpoint (corrupt or truncated file, or not written by fmtl): {detail}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an fmtl checkpoint (no {FORMAT!r} marker): a foreign file")
    version = payload.get("version")
    if type(version) is not int or version != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {version!r}; this fmtl reads version {VERSION} only (start over "
            "with --overwrite)"
        )
    missing = [k for k in (*_FIELDS, "checksum") if k not in payload]
    if missing:
        raise CheckpointError(f"{path} is incomplete: missing {missing}")
    body = {k: v for k, v in payload.items() if k != "checksum"}
    try:
        actual = checksum(body)
    except Exception as e:  # noqa: BLE001 - values fmtl never writes (bytes, sets, sparse tensors, ...)
        raise CheckpointError(f"{path} holds data an fmtl checkpoint never has ({type(e).__name__})") from None
    if payload["checksum"] != actual:
        raise CheckpointError(f"{path} is corrupt: its content does not match its checksum (a changed byte)")
    problem = _problems(body)
    if problem is not None:
        raise CheckpointError(f"{path} is malformed: {problem}")
    return body


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
    sums, T = payload.get("extra", {}).get("epoch_loss_sum"), len(params["tasks"].keys())
    if sums is not None and len(sums) != T:
        raise CheckpointError(f"checkpoint extra['epoch_loss_sum'] has {len(sums)} entries; this model has {T} tasks")
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

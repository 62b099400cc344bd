"""``fmtl list``: the benchmarks (defaults, setups), the methods (kind, hyperparameters), the presets and grids.

A method's *kind* is read from the balancer it builds: ``loss`` methods set ``loss_weights`` (one
backward pass of Σ_t w_t ℓ_t per step), ``gradient`` methods take the T task gradients; ``stl`` is
the single-task baseline (one vectorized ensemble). Its hyperparameters are the factory's keyword
arguments with their defaults (:func:`fmtl.balancers.defaults`), what ``--opt key=value`` sets.
"""

from __future__ import annotations

from typing import Any

from .. import balancers
from .problems import names as benchmark_names
from .problems import resolve

__all__ = ["kind", "methods", "benchmarks", "listing"]


def kind(method: str) -> str:
    """What a method's weights come from: ``"loss"``, ``"gramian"``, ``"jacobian"`` or ``"stl"``.

    The balancers' kinds are :func:`fmtl.balancers.kind`'s.

    Example:
        >>> kind("ew"), kind("mgda"), kind("dbmtl"), kind("stl")
        ('loss', 'gramian', 'jacobian', 'stl')
    """
    return "stl" if method == "stl" else balancers.kind(method)


def methods() -> dict[str, dict[str, Any]]:
    """``{method: {"kind": ..., "hyperparameters": {name: default}}}`` for every registered method and ``stl``.

    Example:
        >>> methods()["dbmtl"]["hyperparameters"]["beta"], methods()["stl"]
        (0.9, {'kind': 'stl', 'hyperparameters': {}})
    """
    out = {m: {"kind": kind(m), "hyperparameters": balancers.defaults(m)} for m in balancers.names()}
    return {**out, "stl": {"kind": "stl", "hyperparameters": {}}}


def benchmarks() -> dict[str, dict[str, Any]]:
    """``{benchmark: its resolved default settings}`` (epochs, batch size, lr, data and model options …).

    Example:
        >>> benchmarks()["synthetic"]["epochs"]
        5
    """
    from .config import DEFAULTS

    keys = ("epochs", "batch_size", "lr", "weight_decay", "scheduler", "schedule", "eval_batch_size", "log_every",
            "data", "model")  # fmt: skip
    shown = {b: resolve({**DEFAULTS, "benchmark": b}) for b in benchmark_names()}
    return {b: {k: v for k, v in cfg.items() if k in keys and (v != {} or k != "schedule")} for b, cfg in shown.items()}


def _value(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else repr(v) if isinstance(v, str) else str(v)


def listing() -> str:
    """The text ``fmtl list`` prints.

    Example:
        >>> text = listing()
        >>> "dbmtl (jacobian): beta=0.9" in text and "mgda (gramian)" in text and "ew (loss)" in text
        True
        >>> "dbmtl here: beta=0.5, beta_sigma=0.5" in text and "--setup paper:" in text and "table5:" in text
        True
    """
    from .presets import PRESETS
    from .problems import _REGISTRY
    from .tune import GRIDS

    def pairs(d: dict[str, Any]) -> str:
        return ", ".join(f"{k}={_value(v)}" for k, v in d.items())

    lines = ["benchmarks (default settings; --problem FILE.py:NAME for your own):"]
    for b, s in benchmarks().items():
        lines.append(f"  {b}: {pairs(s)}")
        spec = _REGISTRY[b]
        for m, o in spec.opts.items():
            lines.append(f"    {m} here: {pairs(o)} (the benchmark's, under --opt)")
        for name, layer in sorted(spec.setups.items()):
            lines.append(f"    --setup {name}: {pairs(layer)}")
    lines.append("methods (kind: hyperparameters with defaults, set with --opt key=value):")
    for m, d in methods().items():
        lines.append(f"  {m} ({d['kind']}): {pairs(d['hyperparameters']) or 'no hyperparameters'}")
    lines.append("fmtl compare --preset NAME (the paper's tables and figures):")
    lines += [f"  {n}: {p.title} ({len(p.rows)} rows)" for n, p in PRESETS.items()]
    lines.append("fmtl tune --grid-preset NAME (named grids; or --grid key=v1,v2,…):")
    lines += [f"  {n}: {m} over {pairs(g)}" for n, (m, g) in GRIDS.items()]
    return "\n".join(lines)

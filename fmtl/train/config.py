"""Run configuration: TOML files (read with ``tomllib``), ``key=value`` overrides, and a TOML writer.

A run is described by one flat dict of settings (:data:`DEFAULTS`) plus three tables:
``opts`` (the method's hyperparameters, e.g. DB-MTL's β), ``data`` (dataset options, e.g.
``subset``) and ``model`` (model sizes). The dict written to ``config.toml`` is the *resolved*
configuration (benchmark defaults filled in), so two runs are the same run exactly when their
resolved configurations are equal.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["DEFAULTS", "TABLES", "RESUMABLE", "parse_value", "parse_pairs", "load_toml", "dumps", "merge",
           "differences"]  # fmt: skip

#: Every top-level setting and its default; ``None`` means "the benchmark's default".
DEFAULTS: dict[str, Any] = {
    "benchmark": "qm9",
    "method": "dbmtl",
    "epochs": None,
    "batch_size": None,
    "lr": None,
    "optimizer": "adam",
    "weight_decay": 0.0,
    "seed": 0,
    "amp": "none",
    "accumulate": 1,
    "compile": False,
    "strategy": "auto",
    "chunk_size": None,
    "eval_batch_size": None,
    "log_every": None,
    "checkpoint_every": 0,
}
#: The sub-tables: method hyperparameters, dataset options, model options.
TABLES = ("opts", "data", "model")
#: Settings a run may change and still be the same run (``--resume DIR --epochs N`` trains longer).
RESUMABLE = ("epochs",)


def parse_value(text: str) -> Any:
    """Infers the type of a command-line value: TOML syntax if it parses, else a plain string.

    Example:
        >>> [parse_value(v) for v in ("0.9", "3", "true", "max", "[64, 64]", '"1"')]
        [0.9, 3, True, 'max', [64, 64], '1']
    """
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_pairs(pairs: Iterable[str], what: str = "--opt") -> dict[str, Any]:
    """Parses ``["key=value", ...]`` into a dict with :func:`parse_value`.

    Example:
        >>> parse_pairs(["beta=0.9", "alpha=max"])
        {'beta': 0.9, 'alpha': 'max'}
        >>> parse_pairs(["beta"])
        Traceback (most recent call last):
        ...
        ValueError: --opt expects key=value, got 'beta'
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{what} expects key=value, got {pair!r}")
        out[key.strip()] = parse_value(value.strip())
    return out


def load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads a config file; unknown top-level keys are an error that lists the valid ones.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.toml"
        >>> _ = p.write_text('method = "ew"\\n[opts]\\nlog_transform = true\\n')
        >>> load_toml(p)
        {'method': 'ew', 'opts': {'log_transform': True}}
    """
    with open(path, "rb") as f:
        try:
            cfg = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML ({e})") from None
    unknown = sorted(set(cfg) - set(DEFAULTS) - set(TABLES) - {"fmtl_version"})
    if unknown:
        raise ValueError(f"{path}: unknown setting(s) {unknown}; valid: {sorted(DEFAULTS) + list(TABLES)}")
    for t in TABLES:
        if t in cfg and not isinstance(cfg[t], dict):
            raise ValueError(f"{path}: {t!r} must be a table ([{t}])")
    return cfg


def merge(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Later layers override earlier ones; the tables merge key by key; ``None`` means unset.

    Example:
        >>> merge({"lr": 0.1, "opts": {"beta": 0.9}}, {"lr": None, "opts": {"alpha": "max"}})
        {'lr': 0.1, 'opts': {'beta': 0.9, 'alpha': 'max'}}
    """
    out: dict[str, Any] = {}
    for layer in layers:
        for k, v in layer.items():
            if k in TABLES:
                out[k] = {**out.get(k, {}), **(v or {})}
            elif v is not None or k not in out:
                out[k] = v
    return out


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dumps(cfg: Mapping[str, Any]) -> str:
    """Writes a flat dict plus one level of tables as TOML (``None`` values are left out).

    Example:
        >>> print(dumps({"method": "dbmtl", "lr": 0.001, "epochs": None, "opts": {"beta": 0.9}}))
        method = "dbmtl"
        lr = 0.001
        <BLANKLINE>
        [opts]
        beta = 0.9
        <BLANKLINE>
    """
    lines = [f"{k} = {_scalar(v)}" for k, v in cfg.items() if not isinstance(v, Mapping) and v is not None]
    for k, v in cfg.items():
        if isinstance(v, Mapping):
            lines += ["", f"[{k}]"] + [f"{kk} = {_scalar(vv)}" for kk, vv in v.items() if vv is not None]
    return "\n".join(lines) + "\n"


def differences(saved: Mapping[str, Any], new: Mapping[str, Any], ignore: Iterable[str] = RESUMABLE) -> list[str]:
    """The settings in which two resolved configurations differ, except ``ignore``: ``[]`` for the same run.

    The one "same run" test of fmtl: an output directory (:mod:`fmtl.train.runs`) and a
    checkpoint (:mod:`fmtl.train.restore`) belong to a run exactly when this is empty.

    Example:
        >>> differences({"method": "ew", "epochs": 2, "lr": 0.1}, {"method": "ew", "epochs": 5, "lr": 0.2})
        ['lr']
    """
    skip = set(ignore)
    return sorted(k for k in set(saved) | set(new) if k not in skip and saved.get(k) != new.get(k))

"""Run configuration: TOML files (read with ``tomllib``, written with ``tomli-w``) and ``key=value`` overrides.

A run is described by one flat dict of settings (:data:`DEFAULTS`) plus four tables:
``opts`` (the method's hyperparameters, e.g. DB-MTL's β), ``data`` (dataset options, e.g.
``subset``), ``model`` (model sizes) and ``schedule`` (the options of ``scheduler``, e.g. the
plateau's ``factor``). The dict written to ``config.toml`` is the *resolved*
configuration (benchmark defaults filled in), so two runs are the same run exactly when their
resolved configurations are equal.

``opts`` may also hold per-method tables, for ``fmtl compare``: ``--opt dbmtl.beta=0.5`` (or
``[opts.dbmtl]`` / ``dbmtl.beta = 0.5`` in a TOML file) sets β for DB-MTL only, ``--opt eps=1e-6``
for every method. :func:`merge` stores the dotted form as the nested table ``{"dbmtl": {"beta":
0.5}}``, which survives the round trip through ``config.toml``, and
:func:`fmtl.train.compare.split_opts` splits it back per method. Record-only tables
(:data:`RECORDS`: the environment a run ran in) may sit in ``config.toml`` but are not settings:
:func:`load_toml` leaves them out, so they never make two runs differ.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import tomli_w

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["DEFAULTS", "TABLES", "RECORDS", "RESUMABLE", "UNSET_TEXT", "default_text", "parse_value", "parse_pairs",
           "load_toml", "dumps", "merge", "nest_opts", "method_opts", "for_method", "differences"]  # fmt: skip

#: Every top-level setting and its default; ``None`` means "the benchmark's default".
DEFAULTS: dict[str, Any] = {
    "benchmark": "qm9",
    "method": "dbmtl",
    "epochs": None,
    "batch_size": None,
    "lr": None,
    "optimizer": "adam",
    "weight_decay": None,
    "seed": 0,
    "amp": "none",
    "accumulate": 1,
    "compile": False,
    "strategy": "auto",
    "rep_grad": False,
    "chunk_size": None,
    "eval_batch_size": None,
    "log_every": None,
    "checkpoint_every": 0,
    "scheduler": None,
    "clip_norm": None,
    "patience": None,
}
#: The sub-tables: method hyperparameters, dataset options, model options, scheduler options.
TABLES = ("opts", "data", "model", "schedule")
#: Top-level keys a ``config.toml`` may hold for the record only (not settings; not compared): the
#: environment a run ran in, the resolved hyperparameters of its method, optimizer and scheduler, and
#: the STL reference it was started with (``--stl``, kept for resume).
RECORDS = ("fmtl_version", "environment", "resolved", "reference")
#: What ``fmtl train --help`` says of a setting whose default is ``None`` (not the benchmark's).
UNSET_TEXT = {"clip_norm": "no clipping", "patience": "no early stopping", "chunk_size": "no chunking"}
#: Settings a run may change and still be the same run (``--resume DIR --epochs N`` trains longer).
RESUMABLE = ("epochs",)


def default_text(key: str) -> str:
    """How ``--help`` states the default of setting ``key``: its value, what ``None`` means, or the benchmark's.

    Example:
        >>> default_text("optimizer"), default_text("lr"), default_text("clip_norm")
        ('default: adam', "default: the benchmark's, see `fmtl list`", 'default: none, no clipping')
    """
    v = DEFAULTS[key]
    if v is None:
        return f"default: none, {UNSET_TEXT[key]}" if key in UNSET_TEXT else \
            "default: the benchmark's, see `fmtl list`"  # fmt: skip
    return f"default: {str(v).lower() if isinstance(v, bool) else v}"


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

    The record-only tables (:data:`RECORDS`) are accepted and left out of the result.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.toml"
        >>> _ = p.write_text('method = "ew"\\n[opts]\\nlog_transform = true\\n[environment]\\ntorch = "2.13"\\n')
        >>> load_toml(p)
        {'method': 'ew', 'opts': {'log_transform': True}}
    """
    with open(path, "rb") as f:
        try:
            cfg = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML ({e})") from None
    unknown = sorted(set(cfg) - set(DEFAULTS) - set(TABLES) - set(RECORDS))
    if unknown:
        raise ValueError(f"{path}: unknown setting(s) {unknown}; valid: {sorted(DEFAULTS) + list(TABLES)}")
    for t in TABLES:
        if t in cfg and not isinstance(cfg[t], dict):
            raise ValueError(f"{path}: {t!r} must be a table ([{t}])")
    return {k: v for k, v in cfg.items() if k not in RECORDS}


def nest_opts(opts: Mapping[str, Any]) -> dict[str, Any]:
    """``{"dbmtl.beta": 0.5}`` → ``{"dbmtl": {"beta": 0.5}}``: per-method keys as nested tables.

    Example:
        >>> nest_opts({"eps": 1e-6, "dbmtl.beta": 0.5, "dbmtl": {"alpha": "max"}})
        {'eps': 1e-06, 'dbmtl': {'beta': 0.5, 'alpha': 'max'}}
        >>> nest_opts({"dbmtl": 1, "dbmtl.beta": 0.5})
        Traceback (most recent call last):
        ...
        ValueError: --opt dbmtl.beta: 'dbmtl' is also set as a value (1); a method's options need ...
    """
    out: dict[str, Any] = {}
    for key, v in opts.items():
        method, dot, name = key.partition(".")
        if not dot and not isinstance(v, Mapping):
            out[key] = v
            continue
        table, items = (method, {name: v}) if dot else (key, dict(v))
        if table in out and not isinstance(out[table], dict):
            raise ValueError(f"--opt {key}: {table!r} is also set as a value ({out[table]!r}); a method's "
                             "options need the form METHOD.key=value")  # fmt: skip
        out[table] = {**out.get(table, {}), **items}
    return out


def method_opts(opts: Mapping[str, Any], method: str) -> dict[str, Any]:
    """The hyperparameters of one method: the shared keys, then its own ``METHOD.key`` table (which wins).

    The tables of other methods are left out, so one TOML file with ``[opts.dbmtl]`` and
    ``[opts.pcgrad]`` tables (``fmtl compare``'s form, and what ``fmtl tune`` writes) also serves
    ``fmtl train --method dbmtl``.

    Example:
        >>> method_opts({"eps": 1e-6, "dbmtl": {"beta": 0.5}, "pcgrad": {"seed": 1}}, "dbmtl")
        {'eps': 1e-06, 'beta': 0.5}
        >>> method_opts({"dbmtl.beta": 0.5}, "ew")
        {}
    """
    nested = nest_opts(opts)
    own = nested.get(method, {})
    return {**{k: v for k, v in nested.items() if not isinstance(v, dict)}, **(own if isinstance(own, dict) else {})}


def for_method(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """One run's configuration from a shared one: ``opts`` reduced to its method's (:func:`method_opts`).

    A per-method table that names no registered method (a typo such as ``[opts.dbmlt]``) is an
    error rather than silently left out.

    Example:
        >>> for_method({"method": "dbmtl", "opts": {"dbmtl": {"beta": 0.5}, "pcgrad": {"seed": 1}}})["opts"]
        {'beta': 0.5}
        >>> for_method({"method": "dbmtl", "opts": {"dbmlt.beta": 0.5}})
        Traceback (most recent call last):
        ...
        ValueError: --opt dbmlt.*: 'dbmlt' is not a method; valid methods: ...
    """
    from .. import balancers

    valid = [*balancers.names(), "stl"]
    for table, v in nest_opts(cfg["opts"]).items():
        if isinstance(v, dict) and table not in valid:
            raise ValueError(f"--opt {table}.*: {table!r} is not a method; valid methods: {', '.join(sorted(valid))}")
    return {**cfg, "opts": method_opts(cfg["opts"], cfg["method"])}


def merge(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Later layers override earlier ones; the tables merge key by key; ``None`` means unset.

    ``opts`` goes through :func:`nest_opts`, and per-method tables merge key by key too.

    Example:
        >>> merge({"lr": 0.1, "opts": {"beta": 0.9}}, {"lr": None, "opts": {"alpha": "max"}})
        {'lr': 0.1, 'opts': {'beta': 0.9, 'alpha': 'max'}}
        >>> merge({"opts": {"dbmtl": {"beta": 0.9}}}, {"opts": {"dbmtl.alpha": "max"}})["opts"]
        {'dbmtl': {'beta': 0.9, 'alpha': 'max'}}
    """
    out: dict[str, Any] = {}
    for layer in layers:
        for k, v in layer.items():
            if k == "opts":
                old, new = out.get(k, {}), nest_opts(v or {})
                out[k] = {**old, **{m: {**old[m], **x} if isinstance(x, dict) and isinstance(old.get(m), dict) else x
                                    for m, x in new.items()}}  # fmt: skip
            elif k in TABLES:
                out[k] = {**out.get(k, {}), **(v or {})}
            elif v is not None or k not in out:
                out[k] = v
    return out


def _without_none(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {k: _without_none(x) for k, x in v.items() if x is not None}
    if isinstance(v, list | tuple):
        return [_without_none(x) for x in v]
    return v


def dumps(cfg: Mapping[str, Any]) -> str:
    """TOML text of a configuration (``tomli-w``; ``None`` values, which TOML cannot hold, are left out).

    Example:
        >>> print(dumps({"method": "dbmtl", "lr": 0.001, "epochs": None, "opts": {"beta": 0.9,
        ...                                                                     "pcgrad": {"seed": 1}}}))
        method = "dbmtl"
        lr = 0.001
        <BLANKLINE>
        [opts]
        beta = 0.9
        <BLANKLINE>
        [opts.pcgrad]
        seed = 1
        <BLANKLINE>
    """
    try:
        return tomli_w.dumps(_without_none(cfg))
    except TypeError as e:
        raise TypeError(f"cannot write the configuration to TOML: {e}") from None


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

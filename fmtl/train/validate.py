"""Every setting of a run checked before anything is written: type, range, known keys, output paths.

A resolved configuration (:func:`fmtl.train.fit.configure`) is checked in three parts, each
failure a ``ValueError`` of one line naming the setting (``fmtl train`` exits 2 on it):

* the top-level settings (:data:`SETTINGS`: an annotated type per key, e.g. ``epochs`` a
  positive ``int``, ``lr`` a finite positive ``float``), checked with ``pydantic`` in strict mode
  (an ``int`` is accepted where a ``float`` is meant, nothing else is converted);
* the method's hyperparameters (``opts``): the balancer factory's own type hints;
* the ``data`` and ``model`` tables: the types a benchmark declares with
  ``register(..., options=...)``; a benchmark that declares none accepts the keys of its
  defaults with the defaults' types; a problem file, its function's parameters and hints.

Unknown keys are named with the valid ones. :func:`out_dir` checks an output directory before
it is created (not a file, writable, names the file system can hold).
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import sys
import typing
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import ConfigDict, Field, TypeAdapter

__all__ = ["Parser", "SETTINGS", "Positive", "NonNegative", "PositiveFloat", "NonNegativeFloat", "FiniteFloat",
           "check_value", "layer", "settings", "opts", "tables", "rep_grad", "OWN_CHECKS", "out_dir",
           "command"]  # fmt: skip

#: An integer >= 1 (sizes, counts), an integer >= 0, a finite float > 0, >= 0, any finite float.
Positive = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]

#: The type of each top-level setting that has a rule (settings without one are not checked here;
#: ``benchmark``, ``method``, ``optimizer`` and ``amp`` are checked against their registries).
SETTINGS: dict[str, Any] = {
    "benchmark": str,
    "method": str,
    "epochs": Positive,
    "batch_size": Positive,
    "lr": PositiveFloat,
    "optimizer": str,
    "weight_decay": NonNegativeFloat,
    "seed": Annotated[int, Field(ge=0, lt=2**63)],
    "amp": str,
    "accumulate": Positive,
    "compile": bool,
    "rep_grad": bool,
    "strategy": Literal["auto", "jacrev", "vmap_grad", "loop"],
    "chunk_size": Positive | None,
    "eval_batch_size": Positive,
    "log_every": Positive,
    "checkpoint_every": NonNegative,
    "scheduler": str,
    "clip_norm": PositiveFloat | None,
    "patience": Positive | None,
}


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, ``fmtl: error: ...``, and exit 2 (no usage dump).

    Example:
        >>> p = Parser(prog="fmtl")
        >>> _ = p.add_argument("--epochs", type=int)
        >>> p.parse_args(["--epochs", "two"])
        Traceback (most recent call last):
        ...
        SystemExit: 2
    """

    def error(self, message: str) -> typing.NoReturn:
        """Prints ``fmtl: error: MESSAGE`` and exits 2."""
        print(f"fmtl: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


_STRICT = ConfigDict(strict=True, arbitrary_types_allowed=True)


@lru_cache(maxsize=512)
def _adapter(hint: Any) -> TypeAdapter | None:
    try:
        return TypeAdapter(hint, config=_STRICT)
    except (pydantic.PydanticSchemaGenerationError, pydantic.PydanticUserError, TypeError):
        return None  # a type pydantic cannot check (never given on a command line): left to the code using it


def shown(value: Any) -> str:
    """``repr(value)``, cut to 60 characters (for error messages)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_value(name: str, value: Any, hint: Any) -> None:
    """Raises ``ValueError`` naming ``name`` when ``value`` is not of the annotated type ``hint``.

    Example:
        >>> check_value("epochs", 3, Positive)
        >>> check_value("epochs", 0, Positive)
        Traceback (most recent call last):
        ...
        ValueError: epochs: input should be greater than or equal to 1 (got 0)
        >>> check_value("lr", "abc", PositiveFloat)
        Traceback (most recent call last):
        ...
        ValueError: lr: input should be a valid number (got 'abc')
    """
    try:
        adapter = _adapter(hint)
    except TypeError:  # an unhashable hint
        adapter = TypeAdapter(hint, config=_STRICT)
    if adapter is None:
        return
    try:
        adapter.validate_python(value)
    except pydantic.ValidationError as e:
        errors = e.errors(include_url=False)
        # a union reports one error per member: the member that "almost" matched is the most useful one
        err = min(errors, key=lambda x: ("type" in x["type"], -len(x["loc"])))
        msg = err["msg"][0].lower() + err["msg"][1:]
        raise ValueError(f"{name}: {msg} (got {shown(value)})") from None


def layer(values: Mapping[str, Any]) -> None:
    """Checks one layer of settings before it is merged (a config file, the flags): tables are tables, set values typed.

    ``None`` means unset (the benchmark's default fills it in later).

    Example:
        >>> layer({"epochs": None, "data": {"n": 4}})
        >>> layer({"data": 5})
        Traceback (most recent call last):
        ...
        ValueError: data: must be a table of options (got 5)
    """
    for key, value in values.items():
        if key in ("opts", "data", "model"):
            if value is not None and not isinstance(value, Mapping):
                raise ValueError(f"{key}: must be a table of options (got {shown(value)})")
        elif value is not None and key in SETTINGS:
            check_value(key, value, SETTINGS[key])


def settings(cfg: Mapping[str, Any]) -> None:
    """Checks the top-level settings of a resolved configuration against :data:`SETTINGS`.

    Example:
        >>> settings({"epochs": 2, "lr": -0.01})
        Traceback (most recent call last):
        ...
        ValueError: lr: input should be greater than 0 (got -0.01)
    """
    for key, hint in SETTINGS.items():
        if key in cfg:
            check_value(key, cfg[key], hint)


def _hints(fn: Callable) -> dict[str, Any]:
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # noqa: BLE001  (unresolvable annotations: the parameters' names still count)
        hints = {}
    return {name: hints.get(name, Any) for name, p in inspect.signature(fn).parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}  # fmt: skip


def _check_table(what: str, values: Mapping[str, Any], schema: Mapping[str, Any], owner: str) -> None:
    unknown = sorted(set(values) - set(schema))
    if unknown:
        raise ValueError(f"{what}: {owner} has no option(s) {unknown}; valid: {sorted(schema)}")
    for key, value in values.items():
        check_value(f"{what} {key}", value, schema[key])
        if isinstance(value, float) and not math.isfinite(value) and schema[key] is Any:
            raise ValueError(f"{what} {key}: must be finite (got {value})")


def opts(method: str, values: Mapping[str, Any], factory: Callable) -> None:
    """Checks a method's hyperparameters against its factory's parameters and type hints.

    Example:
        >>> from fmtl.balancers.dbmtl import dbmtl
        >>> opts("dbmtl", {"beta": 0.5, "alpha": "max"}, dbmtl)
        >>> opts("dbmtl", {"beta": "abc"}, dbmtl)
        Traceback (most recent call last):
        ...
        ValueError: --opt beta: input should be a valid number (got 'abc')
        >>> opts("dbmtl", {"gamma": 1}, dbmtl)
        Traceback (most recent call last):
        ...
        ValueError: --opt: method 'dbmtl' has no option(s) ['gamma']; valid: ['alpha', 'beta', ...]
    """
    _check_table("--opt", values, _hints(factory), f"method {method!r}")


def _declared(options: Any, data: Mapping[str, Any]) -> Mapping[str, Mapping[str, Any]] | None:
    return options(data) if callable(options) else options


def _from_defaults(defaults: Mapping[str, Any]) -> dict[str, Any]:
    return {k: Any if v is None else (float if type(v) is float else type(v)) for k, v in defaults.items()}


def rep_grad(cfg: Mapping[str, Any]) -> None:
    """Checks that ``rep_grad = true`` goes with a method and settings that run on representation gradients.

    The method must compute task gradients and keep no state shaped like θ
    (:func:`fmtl.representation.check_support`: DB-MTL, MoCo and MetaBalance do); gradient
    accumulation (a reduce hook the step does not support with representation gradients) and
    ``amp`` (its autocast wrapper hides the loss's two stages) are refused. Whether the
    benchmark's loss has two stages is known once it is built (:func:`fmtl.train.assemble.assemble`).

    Example:
        >>> rep_grad({"rep_grad": True, "method": "mgda", "opts": {}, "accumulate": 1, "amp": "none"})
        >>> rep_grad({"rep_grad": True, "method": "dbmtl", "opts": {}, "accumulate": 1, "amp": "none"})
        Traceback (most recent call last):
        ...
        ValueError: --rep-grad: DB-MTL does not run on representation gradients: ...
    """
    if not cfg.get("rep_grad"):
        return
    import torch
    from tensordict import TensorDict

    from .. import balancers
    from ..representation import check_support

    method = cfg["method"]
    balancer = None if method == "stl" else balancers.get(method, **cfg["opts"])
    if balancer is None or balancer.loss_weights is not None:
        raise ValueError(f"--rep-grad: method {method!r} computes no task gradients (it weighs the losses), so "
                         "representation gradients change nothing; use a gradient method (mgda, pcgrad, …)")
    probe = TensorDict({"shared": {"w": torch.zeros(3)}, "tasks": {"a": {}, "b": {}}}, [])
    try:
        check_support(balancer, probe, 2)
    except ValueError as e:
        raise ValueError(f"--rep-grad: {str(e).removeprefix('rep_grad: ')}") from None
    if int(cfg["accumulate"]) > 1:
        raise ValueError("--rep-grad does not combine with --accumulate K > 1 (the accumulated task gradients "
                         "are θ's; representation gradients have no accumulator)")  # fmt: skip
    if cfg["amp"] != "none":
        raise ValueError("--rep-grad does not combine with --amp (autocast hides the loss's encoder and heads)")


#: A problem's ``options`` table given as this is not checked here: its builder checks it (one-line errors).
OWN_CHECKS = "checked by the problem's builder"


def tables(cfg: Mapping[str, Any]) -> None:
    """Checks the ``data`` and ``model`` tables of a resolved configuration against its problem's options.

    Example:
        >>> from fmtl.train.fit import configure
        >>> tables(configure(None, None, {"benchmark": "synthetic", "data": {"n": 64}}))
        >>> tables(configure(None, None, {"benchmark": "synthetic", "model": {"nope": 1}}))
        Traceback (most recent call last):
        ...
        ValueError: --model: benchmark 'synthetic' has no option(s) ['nope']; valid: ['hidden']
        >>> tables(configure(None, None, {"benchmark": "synthetic", "data": {"n": 0}}))
        Traceback (most recent call last):
        ...
        ValueError: --data n: input should be greater than or equal to 1 (got 0)
    """
    from . import problems

    name = cfg["benchmark"]
    data, model = dict(cfg.get("data") or {}), dict(cfg.get("model") or {})
    if problems.is_file(name):
        path, _, fn = name.rpartition(":")
        factory = getattr(problems.load_module(name), fn, None)
        if not callable(factory):
            raise ValueError(f"{path} has no function {fn!r} (--problem FILE.py:NAME names a function "
                             "returning a Problem)")  # fmt: skip
        schema = _hints(factory)
        schema.pop("seed", None)  # given by fmtl (the run's seed), not an option
        takes_any = any(p.kind == p.VAR_KEYWORD for p in inspect.signature(factory).parameters.values())
        for what, values in (("--data", data), ("--model", model)):
            table = {**dict.fromkeys(values, Any), **schema} if takes_any else schema
            _check_table(what, values, table, f"{Path(path).name}:{fn}")
        return
    spec = problems._REGISTRY.get(name)
    if spec is None:  # a Problem object given to fit(): its options are its own business
        return
    declared = _declared(spec.options, data) or {}
    owner = f"benchmark {name!r}"
    for what, values, key, defaults in (("--data", data, "data", spec.data), ("--model", model, "model", None)):
        schema = declared.get(key)
        if schema is OWN_CHECKS:  # the problem's builder checks these (e.g. options passed on to a model zoo)
            continue
        if key == "model" and not schema:
            defaults = spec.model(data)
        _check_table(what, values, schema or _from_defaults(defaults), owner)


def out_dir(path: str | os.PathLike[str], flag: str = "--out") -> None:
    """Checks that a run directory can be created and written: not a file, writable, a name the file system holds.

    Example:
        >>> import tempfile
        >>> f = Path(tempfile.mkdtemp()) / "f"
        >>> _ = f.write_text("x")
        >>> out_dir(f / "run")
        Traceback (most recent call last):
        ...
        ValueError: --out .../f/run: .../f is a file, not a directory
        >>> out_dir(f)
        Traceback (most recent call last):
        ...
        ValueError: --out .../f: it is a file, not a directory
    """
    p = Path(path)
    if str(path) == "" or "\0" in str(path):
        raise ValueError(f"{flag} {path!r}: not a usable path")
    ancestor = p.absolute()
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent  # lexists: never "file name too long", unlike Path.exists
    name_max = os.pathconf(ancestor if ancestor.is_dir() else ancestor.parent, "PC_NAME_MAX")
    path_max = os.pathconf(ancestor if ancestor.is_dir() else ancestor.parent, "PC_PATH_MAX")
    long = [part for part in p.absolute().parts if len(os.fsencode(part)) > name_max]
    if long:
        raise ValueError(f"{flag} {p}: the name {shown(long[0])} is longer than the file system's "
                         f"{name_max} bytes")  # fmt: skip
    # the longest file a run writes inside it (the checkpoint's temporary file)
    if len(os.fsencode(str(p.absolute()))) + 40 > path_max:
        raise ValueError(f"{flag} {p}: the path is longer than the file system's {path_max} bytes")
    if not ancestor.is_dir():
        what = "it" if ancestor == p.absolute() else str(ancestor)
        raise ValueError(f"{flag} {p}: {what} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {p}: {ancestor} is not writable")


def command(args: Any) -> None:
    """Checks the flags of ``fmtl train``/``fmtl compare`` that are not run settings (threads, seeds, paths).

    Example:
        >>> from types import SimpleNamespace
        >>> command(SimpleNamespace(threads=0))
        Traceback (most recent call last):
        ...
        ValueError: --threads: input should be greater than or equal to 1 (got 0)
    """
    if getattr(args, "threads", None) is not None:
        check_value("--threads", args.threads, Positive)
    if getattr(args, "seeds", None) is not None:
        check_value("--seeds", args.seeds, Positive)
    if getattr(args, "out", None) is not None:
        out_dir(args.out)
    if getattr(args, "resume", None) is not None:
        if not Path(args.resume).is_dir():
            raise ValueError(f"--resume {args.resume}: no such directory")
        out_dir(args.resume, "--resume")
    stl = getattr(args, "stl", None)
    if stl is not None and stl.lower() != "none" and not Path(stl).is_dir():
        raise ValueError(f"--stl {stl}: no such directory (give a finished STL run's directory, or 'none')")

"""The problems ``fmtl train`` can train: a registry of named benchmarks, and users' problem files.

A run names its problem in the ``benchmark`` setting:

* a registered name (``fmtl train --benchmark qm9``): the built-ins are modules of this package
  (:mod:`~fmtl.train.problems.qm9`, :mod:`~fmtl.train.problems.synthetic`), each calling
  :func:`register` once; a new benchmark is one more module and one import line below;
* ``FILE.py:NAME`` (``fmtl train --problem my_problem.py:make``): ``NAME`` is a function in that
  file returning a :class:`fmtl.train.Problem`. It is called with the ``--data`` and ``--model``
  options as keyword arguments (and ``seed=`` when it takes a ``seed`` parameter), after
  ``torch.manual_seed(seed)``, so modules built inside it are initialized from the run's seed.

:func:`resolve` fills a problem's defaults into a run configuration (epochs, batch size, learning
rate, dataset and model options); problem files (and unregistered ``Problem`` objects given to
:func:`fmtl.train.fit`) get :data:`GENERIC_SETTINGS`. :func:`build`
loads the datasets and builds the model.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import re
import sys
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import torch

from ..problem import Problem

__all__ = ["Benchmark", "GENERIC_SETTINGS", "register", "names", "is_file", "file_spec", "label", "resolve",
           "method_defaults", "setup", "setup_names", "load_module", "build", "default_threads"]  # fmt: skip

#: Run-setting defaults of a problem that does not set its own (problem files).
GENERIC_SETTINGS: dict[str, Any] = {"epochs": 10, "batch_size": 64, "lr": 1e-3, "eval_batch_size": 256,
                                    "log_every": 10, "weight_decay": 0.0, "scheduler": "constant"}  # fmt: skip


class Benchmark(NamedTuple):
    """A registered problem: how to build it from a resolved configuration, and its defaults.

    Attributes:
        build: ``build(cfg) -> Problem`` (``cfg`` resolved: ``cfg["data"]``, ``cfg["model"]``, ``cfg["seed"]`` …).
        settings: run-setting defaults (``epochs``, ``batch_size``, ``lr``, ``eval_batch_size``,
            ``log_every``, ``weight_decay``, ``scheduler``); :data:`GENERIC_SETTINGS` fill in the ones
            ``register`` was not given.
        schedule: default options of the benchmark's own ``scheduler`` (the ``--schedule`` table, e.g.
            ``{"every_epochs": 100, "gamma": 0.5}``), used when a run's scheduler is that one; ``--schedule``
            overrides them key by key.
        data: default dataset options (the ``--data`` table).
        model: ``model(data) -> default model options`` (the ``--model`` table), given the data options.
        threads: ``threads(cfg) -> CPU threads`` a run uses unless ``--threads`` says otherwise
            (``None``: torch's default).
        archs: the MTL architectures ``--arch`` (``--model arch=...``) may name, the default first.
        options: the accepted ``--data``/``--model`` options and their types,
            ``{"data": {key: type}, "model": {key: type}}`` or a function of the data options returning
            it (checked by :mod:`fmtl.train.validate`); ``None``: the keys and types of the defaults.
        opts: per-method hyperparameter defaults of this benchmark, ``{method: {key: value}}``
            (e.g. the β the paper's protocol selected for it); ``--opt`` overrides them key by key,
            and the balancer's own defaults fill the rest (:func:`method_defaults`).
        setups: named configurations of this benchmark, ``{name: layer}`` (``fmtl train --setup NAME``),
            each a configuration layer as a ``--config`` TOML file would hold (e.g. qm9's ``paper``: the
            paper's GNN, batch size, epochs and scheduler); :func:`setup` returns one.
    """

    build: Callable[[Mapping[str, Any]], Problem]
    settings: dict[str, Any]
    data: dict[str, Any]
    model: Callable[[Mapping[str, Any]], dict[str, Any]]
    threads: Callable[[Mapping[str, Any]], int | None]
    archs: tuple[str, ...] = ("hps",)
    options: Mapping[str, Mapping[str, Any]] | Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None
    opts: dict[str, dict[str, Any]] = {}
    schedule: dict[str, Any] = {}
    setups: dict[str, dict[str, Any]] = {}


_REGISTRY: dict[str, Benchmark] = {}


def register(
    name: str,
    build: Callable[[Mapping[str, Any]], Problem],
    *,
    settings: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
    model: Mapping[str, Any] | Callable[[Mapping[str, Any]], dict[str, Any]] | None = None,
    threads: int | None | Callable[[Mapping[str, Any]], int | None] = None,
    archs: tuple[str, ...] = ("hps",),
    options: Mapping[str, Mapping[str, Any]] | Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
    opts: Mapping[str, Mapping[str, Any]] | None = None,
    schedule: Mapping[str, Any] | None = None,
    setups: Mapping[str, Mapping[str, Any]] | None = None,
    replace: bool = False,
) -> None:
    """Registers a problem under ``name`` (``fmtl train --benchmark NAME``); see :class:`Benchmark`.

    Example:
        >>> from fmtl.train.problems import synthetic
        >>> register("tiny_synthetic", synthetic.build, settings={"epochs": 1}, data={"n": 32, "n_eval": 8},
        ...          model={"hidden": [8]})
        >>> "tiny_synthetic" in names(), resolve({"benchmark": "tiny_synthetic"})["model"]
        (True, {'hidden': [8]})
        >>> register("tiny_synthetic", synthetic.build)
        Traceback (most recent call last):
        ...
        ValueError: a problem named 'tiny_synthetic' is registered already (replace=True replaces it)
        >>> _ = _REGISTRY.pop("tiny_synthetic")
    """
    if not re.fullmatch(r"[A-Za-z][\w\-]*", name):
        raise ValueError(f"a problem name is letters, digits, '_' and '-', starting with a letter; got {name!r}")
    if name in _REGISTRY and not replace:
        raise ValueError(f"a problem named {name!r} is registered already (replace=True replaces it)")
    model_defaults = model if callable(model) else (lambda data, m=dict(model or {}): dict(m))
    thread_rule = threads if callable(threads) else (lambda cfg, n=threads: n)
    _REGISTRY[name] = Benchmark(build, {**GENERIC_SETTINGS, **(settings or {})}, dict(data or {}), model_defaults,
                                thread_rule, tuple(archs), options,
                                {m: dict(o) for m, o in (opts or {}).items()}, dict(schedule or {}),
                                {n: dict(layer) for n, layer in (setups or {}).items()})  # fmt: skip


def names() -> list[str]:
    """The registered problem names (what ``fmtl train --benchmark`` accepts).

    Example:
        >>> names()
        ['cityscapes', 'multimnist', 'nyuv2', 'office31', 'officehome', 'qm9', 'synthetic']
    """
    return sorted(_REGISTRY)


def is_file(benchmark: str) -> bool:
    """Whether ``benchmark`` names a problem file (``FILE.py:NAME``) rather than a registered problem.

    Example:
        >>> is_file("qm9"), is_file("my/problem.py:make")
        (False, True)
    """
    return ".py:" in str(benchmark)


def file_spec(text: str) -> str:
    """``FILE.py:NAME`` with FILE made absolute, after checking that the file exists and NAME is a name.

    Example:
        >>> file_spec("nowhere.py:make")
        Traceback (most recent call last):
        ...
        ValueError: --problem nowhere.py:make: no such file nowhere.py
    """
    path, sep, fn = str(text).rpartition(":")
    if not sep or not path.endswith(".py") or not fn.isidentifier():
        raise ValueError(f"--problem expects FILE.py:NAME (NAME a function returning a fmtl.train.Problem); "
                         f"got {text!r}")  # fmt: skip
    if not Path(path).is_file():
        raise ValueError(f"--problem {text}: no such file {path}")
    return f"{Path(path).resolve()}:{fn}"


def label(benchmark: str) -> str:
    """A short name of the problem for directory names: the registered name, or NAME of ``FILE.py:NAME``.

    Example:
        >>> label("qm9"), label("/tmp/my_problem.py:make")
        ('qm9', 'make')
    """
    return str(benchmark).rpartition(":")[2] if is_file(benchmark) else str(benchmark)


def _benchmark(name: str) -> Benchmark:
    if name not in _REGISTRY:
        raise ValueError(f"unknown benchmark {name!r}; valid: {', '.join(names())} (or --problem FILE.py:NAME)")
    return _REGISTRY[name]


def resolve(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Fills the problem's defaults into every unset setting (``None``) and table entry.

    The benchmark's ``schedule`` options join the ``schedule`` table when the run uses the
    benchmark's own scheduler (any other scheduler gets only what ``--schedule`` gives).

    Example:
        >>> from fmtl.train.config import DEFAULTS
        >>> r = resolve({**DEFAULTS, "benchmark": "synthetic", "data": {"n": 64}})
        >>> r["epochs"], r["data"]["n"], r["model"]["hidden"], r["scheduler"]
        (5, 64, [64, 64], 'constant')
        >>> r = resolve({**DEFAULTS, "benchmark": "nyuv2", "schedule": {"gamma": 0.1}})
        >>> r["weight_decay"], r["scheduler"], r["schedule"]
        (1e-05, 'step', {'every_epochs': 100, 'gamma': 0.1})
    """
    out = dict(cfg)
    schedule: Mapping[str, Any] = {}
    if cfg["benchmark"] not in _REGISTRY:  # a problem file, or a Problem object given to fmtl.train.fit
        settings, data, model = GENERIC_SETTINGS, {}, {}
    else:
        spec = _REGISTRY[cfg["benchmark"]]
        settings, data = spec.settings, spec.data
        model = spec.model({**data, **(cfg.get("data") or {})})
        if cfg.get("scheduler") in (None, settings["scheduler"]):
            schedule = spec.schedule
    for k, v in settings.items():
        if out.get(k) is None:
            out[k] = v
    if schedule:
        given = dict(cfg.get("schedule") or {})
        if "every" in given:  # the step length in updates replaces the default one in epochs
            schedule = {k: v for k, v in schedule.items() if k != "every_epochs"}
        out["schedule"] = {**schedule, **given}
    out["data"] = {**data, **(cfg.get("data") or {})}
    out["model"] = {**model, **(cfg.get("model") or {})}
    out["opts"] = dict(cfg.get("opts") or {})
    return out


def method_defaults(benchmark: str, method: str) -> dict[str, Any]:
    """The hyperparameters ``benchmark`` sets for ``method`` unless ``--opt`` does (``{}``: the balancer's own).

    :func:`fmtl.train.fit.configure` fills them into a new run's ``opts``, so they are part of the
    resolved ``config.toml``; a saved configuration is read back as it was written.

    Example:
        >>> method_defaults("qm9", "dbmtl"), method_defaults("qm9", "ew"), method_defaults("synthetic", "dbmtl")
        ({'beta': 0.5, 'beta_sigma': 0.5}, {}, {})
    """
    spec = _REGISTRY.get(benchmark)
    return dict(spec.opts.get(method, {})) if spec is not None else {}


def setup_names(benchmark: str) -> list[str]:
    """The named setups of ``benchmark`` (what ``--setup`` accepts for it; none for problem files).

    Example:
        >>> setup_names("qm9"), setup_names("synthetic")
        (['paper'], [])
    """
    spec = _REGISTRY.get(benchmark)
    return sorted(spec.setups) if spec is not None else []


def setup(benchmark: str, name: str) -> dict[str, Any]:
    """The configuration layer of ``benchmark``'s setup ``name`` (``fmtl train --setup NAME``).

    It goes between the defaults and a ``--config`` file (flags override both); the resolved
    ``config.toml`` of the run holds what it set, so a setup is a shorthand, not a setting.

    Example:
        >>> layer = setup("qm9", "paper")
        >>> layer["data"], layer["batch_size"], layer["epochs"], layer["scheduler"]
        ({'representation': 'graph'}, 128, 300, 'plateau')
        >>> setup("synthetic", "paper")
        Traceback (most recent call last):
        ...
        ValueError: --setup paper: synthetic has no setup 'paper'; it has none
    """
    names_ = setup_names(benchmark)
    if name not in names_:
        have = ", ".join(names_) if names_ else "none"
        raise ValueError(f"--setup {name}: {label(benchmark)} has no setup {name!r}; it has {have}")
    return copy.deepcopy(_REGISTRY[benchmark].setups[name])


def load_module(spec: str) -> ModuleType:
    """Imports the file of a ``FILE.py:NAME`` problem once per process (its top level runs once).

    The top level of a problem file may register what the run needs by name, e.g. its own
    balancer with ``fmtl.balancers.register(name, factory)``, so ``--method`` can name it:
    ``fmtl train`` imports the file before it checks the other settings.
    """
    path, _, _ = spec.rpartition(":")
    if not Path(path).is_file():
        raise ValueError(f"problem file {path} does not exist (any more)")
    module_name = f"fmtl_problem_{zlib.crc32(path.encode()):08x}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    loader = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(loader)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
    try:
        loader.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def _load_file(spec: str, cfg: Mapping[str, Any]) -> Problem:
    path, _, fn = spec.rpartition(":")
    factory = getattr(load_module(spec), fn, None)
    if not callable(factory):
        raise ValueError(f"{path} has no function {fn!r} (--problem FILE.py:NAME names a function returning a Problem)")
    kwargs = {**cfg["data"]}
    clash = sorted(set(kwargs) & set(cfg["model"]))
    if clash:
        raise ValueError(f"--data and --model both set {clash} for {spec}")
    kwargs.update(cfg["model"])
    params = inspect.signature(factory).parameters
    if "seed" in params:
        kwargs["seed"] = cfg["seed"]
    torch.manual_seed(int(cfg["seed"]))
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as e:
        raise ValueError(f"{spec}: cannot be called with {sorted(kwargs)} (from --data/--model): {e}") from None
    problem = factory(**kwargs)
    if not isinstance(problem, Problem):
        raise ValueError(f"{spec} returned a {type(problem).__name__}, not a fmtl.train.Problem")
    return problem.check()


def build(cfg: Mapping[str, Any]) -> Problem:
    """Loads the datasets and builds the model and losses of a resolved configuration.

    Example:
        >>> from fmtl.train.config import DEFAULTS
        >>> p = build(resolve({**DEFAULTS, "benchmark": "synthetic", "data": {"n": 32, "n_eval": 8}}))
        >>> p.tasks, len(p.splits["val"])
        (('t0', 't1', 't2', 't3'), 8)
        >>> build(resolve({**DEFAULTS, "benchmark": "synthetic", "model": {"arch": "mtan"}}))
        Traceback (most recent call last):
        ...
        ValueError: unknown architecture 'mtan' for synthetic; valid: hps
    """
    if is_file(cfg["benchmark"]):
        return _load_file(cfg["benchmark"], cfg)
    spec = _benchmark(cfg["benchmark"])
    arch = cfg["model"].get("arch", spec.archs[0])
    if arch not in spec.archs:
        raise ValueError(f"unknown architecture {arch!r} for {cfg['benchmark']}; valid: {', '.join(spec.archs)}")
    if "arch" not in spec.model(cfg["data"]):  # a builder without architectures never sees the option
        cfg = {**cfg, "model": {k: v for k, v in cfg["model"].items() if k != "arch"}}
    return spec.build(cfg).check()


def default_threads(cfg: Mapping[str, Any]) -> int | None:
    """CPU threads a run uses unless ``--threads`` says otherwise (``None``: torch's default).

    Example:
        >>> default_threads({"benchmark": "qm9", "data": {"representation": "descriptor"}})
        1
        >>> default_threads({"benchmark": "qm9", "data": {"representation": "graph"}}) is None
        True
    """
    return None if is_file(cfg["benchmark"]) else _benchmark(cfg["benchmark"]).threads(cfg)


from . import cityscapes, multimnist, nyuv2, office31, officehome, qm9, synthetic  # noqa: E402,F401,I001  (the built-ins register themselves; add new benchmarks here)

"""Run records: the TOML round trip (tomli-w), per-method ``--opt`` keys, strict JSON, the environment."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _train_helpers import TINY
from hypothesis import given, settings
from hypothesis import strategies as st

from fmtl.train.compare import split_opts
from fmtl.train.config import DEFAULTS, dumps, load_toml, merge, nest_opts, tomllib
from fmtl.train.records import environment, strict, to_json

KEYS = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=8)
SCALARS = st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False),
                    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12))  # fmt: skip
VALUES = st.one_of(SCALARS, st.lists(st.integers(-5, 5), max_size=4), st.none())


def _no_none(v):
    if isinstance(v, dict):
        return {k: _no_none(x) for k, x in v.items() if x is not None}
    return v


@settings(max_examples=80, deadline=None)
@given(top=st.dictionaries(KEYS, VALUES, max_size=5),
       opts=st.dictionaries(KEYS, st.one_of(VALUES, st.dictionaries(KEYS, SCALARS, max_size=3)), max_size=4))
def test_dumps_round_trips_through_tomllib(top, opts):
    cfg = {**top, "opts": opts}
    assert tomllib.loads(dumps(cfg)) == _no_none(cfg)


def test_non_finite_floats_and_quoted_keys_round_trip():
    cfg = {"x": math.inf, "s": 'a "quoted"\nline \\ end', "opts": {"dbmtl.beta": 0.5}}
    back = tomllib.loads(dumps(cfg))
    assert back["x"] == math.inf and back["s"] == cfg["s"] and back["opts"] == {"dbmtl.beta": 0.5}
    assert math.isnan(tomllib.loads(dumps({"v": math.nan}))["v"])


def test_dumps_names_what_toml_cannot_hold():
    with pytest.raises(TypeError, match="cannot write the configuration"):
        dumps({"x": object()})


def test_per_method_options_survive_merge_and_the_toml_round_trip():
    cfg = merge(DEFAULTS, {"opts": {"dbmtl.beta": 0.5, "eps": 1e-6}}, {"opts": {"dbmtl.alpha": "max"}})
    assert cfg["opts"] == {"dbmtl": {"beta": 0.5, "alpha": "max"}, "eps": 1e-6}
    back = merge(DEFAULTS, tomllib.loads(dumps(cfg)))
    assert back["opts"] == cfg["opts"]
    assert split_opts(back["opts"], ["ew", "dbmtl"]) == {"ew": {"eps": 1e-6},
                                                          "dbmtl": {"eps": 1e-6, "beta": 0.5, "alpha": "max"}}


def test_a_toml_file_may_write_per_method_options_either_way(tmp_path):
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text("[opts]\ndbmtl.beta = 0.5\neps = 1e-6\n")
    b.write_text("[opts]\neps = 1e-6\n[opts.dbmtl]\nbeta = 0.5\n")
    assert merge(load_toml(a)) == merge(load_toml(b)) == {"opts": {"dbmtl": {"beta": 0.5}, "eps": 1e-6}}


def test_split_opts_names_a_method_that_is_not_run():
    with pytest.raises(ValueError, match="'pcgrad' is not one of the methods being run"):
        split_opts({"pcgrad": {"seed": 1}}, ["ew"])
    with pytest.raises(ValueError, match="also set as a value"):
        nest_opts({"dbmtl": 0.5, "dbmtl.beta": 0.1})


def test_record_only_tables_are_read_but_are_not_settings(tmp_path):
    p = tmp_path / "config.toml"
    p.write_text(dumps({"method": "ew", "environment": environment(), "fmtl_version": "0.1.0"}))
    assert load_toml(p) == {"method": "ew"}


def _fmtl() -> str:
    exe = shutil.which("fmtl", path=str(Path(sys.executable).parent))
    assert exe, "the fmtl console script is not installed next to this Python"
    return exe


def test_compare_with_a_per_method_option_through_the_console_script(tmp_path):
    """The issue's case: ``--opt dbmtl.beta=0.5`` reaches DB-MTL only (it failed: "'ew' has no ... ['dbmtl']")."""
    args = [_fmtl(), "compare", *TINY, "--epochs", "1", "--methods", "ew,dbmtl", "--opt", "dbmtl.beta=0.5",
            "--out", str(tmp_path / "cmp")]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    assert load_toml(tmp_path / "cmp" / "dbmtl" / "seed0" / "config.toml")["opts"] == {"beta": 0.5}
    assert load_toml(tmp_path / "cmp" / "ew" / "seed0" / "config.toml")["opts"] == {}
    bad = subprocess.run([*args[:-2], "--opt", "pcgrad.seed=1", "--out", str(tmp_path / "bad")], capture_output=True,
                         text=True, cwd=tmp_path, timeout=600)  # fmt: skip
    assert bad.returncode == 2 and "'pcgrad' is not one of the methods being run (ew, dbmtl)" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()


def _reject_constants(name):
    raise ValueError(f"non-strict JSON constant {name}")


JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner),
                            st.dictionaries(st.text(max_size=4), inner, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None)
@given(obj=JSONISH)
def test_to_json_is_strict_and_keeps_every_finite_value(obj):
    text = to_json(obj)
    back = json.loads(text, parse_constant=_reject_constants)

    def same(a, b):
        if isinstance(a, float) and not math.isfinite(a):
            return b is None
        if isinstance(a, list | tuple):
            return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        return a == b

    assert same(obj, back)


def test_strict_converts_tensors_and_refuses_unknown_objects():
    assert strict({"cos": torch.tensor([[1.0, float("nan")]])}) == {"cos": [[1.0, None]]}
    with pytest.raises(TypeError, match="cannot write a object"):
        strict(object())


def test_environment_names_the_versions():
    import tensordict

    import fmtl

    env = environment("cpu")
    assert env["torch"] == torch.__version__ and env["fmtl"] == fmtl.__version__
    assert env["tensordict"] == tensordict.__version__ and env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert json.loads(to_json(env)) == env

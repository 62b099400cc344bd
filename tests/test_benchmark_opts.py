"""A benchmark's own defaults for a method's options (qm9: DB-MTL's β chosen by the paper's grid)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from _train_helpers import TINY

from fmtl import balancers
from fmtl.train import problems
from fmtl.train.cli import build_parser, config_from_args, main
from fmtl.train.config import load_toml
from fmtl.train.problems import synthetic
from fmtl.train.runs import read_results

OPTS = {"beta": 0.5, "beta_sigma": 0.5}


@pytest.fixture
def tiny_with_opts():
    """``synthetic`` registered again as ``synthetic_opts``, with DB-MTL defaults of its own."""
    spec = problems._REGISTRY["synthetic"]
    problems.register("synthetic_opts", synthetic.build, settings=spec.settings, data=spec.data, model=spec.model,
                      threads=1, opts={"dbmtl": OPTS})  # fmt: skip
    yield [x if x != "synthetic" else "synthetic_opts" for x in TINY]
    del problems._REGISTRY["synthetic_opts"]


def _opts(run: Path) -> dict:
    return load_toml(run / "config.toml").get("opts", {})


def test_the_defaults_fill_the_run_config_under_the_given_options(tmp_path, tiny_with_opts):
    args = ["train", *tiny_with_opts, "--stl", "none"]
    assert main([*args, "--method", "dbmtl", "--out", str(tmp_path / "d")]) == 0
    assert _opts(tmp_path / "d") == OPTS
    assert main([*args, "--method", "dbmtl", "--opt", "beta=0.9", "--out", str(tmp_path / "b")]) == 0
    assert _opts(tmp_path / "b") == {"beta": 0.9, "beta_sigma": 0.5}  # key by key
    assert main([*args, "--method", "ew", "--out", str(tmp_path / "e")]) == 0
    assert _opts(tmp_path / "e") == {}  # another method's defaults never reach EW
    assert main(["train", *TINY, "--stl", "none", "--method", "dbmtl", "--out", str(tmp_path / "s")]) == 0
    assert _opts(tmp_path / "s") == {}  # a benchmark without defaults: the balancer's own


def test_a_run_saved_before_the_defaults_is_not_taken_for_one_with_them(tmp_path, tiny_with_opts, capsys):
    out = tmp_path / "run"
    args = ["train", *tiny_with_opts, "--stl", "none", "--method", "dbmtl", "--out", str(out)]
    spec = problems._REGISTRY["synthetic_opts"]
    problems._REGISTRY["synthetic_opts"] = spec._replace(opts={})  # the benchmark as it was
    assert main(args) == 0
    before = (out / "results.json").read_text()
    problems._REGISTRY["synthetic_opts"] = spec
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "different run" in err and "opts" in err
    assert (out / "results.json").read_text() == before


def test_compare_gives_each_row_its_own_methods_defaults(tmp_path, tiny_with_opts):
    out = tmp_path / "cmp"
    assert main(["compare", *tiny_with_opts, "--methods", "ew,dbmtl", "--seeds", "1", "--out", str(out),
                 "--epochs", "1"]) == 0  # fmt: skip
    assert _opts(out / "dbmtl" / "seed0") == OPTS and _opts(out / "ew" / "seed0") == {}
    stl = read_results(out / "dbmtl" / "seed0")["stl_dir"]  # compare's STL run, shared with train
    assert _opts(Path(stl)) == {}


def test_qm9_resolves_dbmtl_to_the_selected_beta_and_the_balancer_keeps_libmtls():
    # The configuration `fmtl train --benchmark qm9 --method dbmtl` writes to config.toml (training
    # QM9 itself is minutes; the tests above write config.toml through the CLI on a tiny benchmark).
    args = build_parser().parse_args(["train", "--benchmark", "qm9", "--method", "dbmtl"])
    assert config_from_args(args)["opts"] == {"beta": 0.5, "beta_sigma": 0.5}
    args = build_parser().parse_args(["train", "--benchmark", "qm9", "--method", "dbmtl", "--opt", "beta_sigma=0"])
    assert config_from_args(args)["opts"] == {"beta": 0.5, "beta_sigma": 0}
    sig = inspect.signature(balancers.dbmtl)
    assert sig.parameters["beta"].default == 0.9 and sig.parameters["beta_sigma"].default == 0.0

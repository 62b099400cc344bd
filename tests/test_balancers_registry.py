"""The registry (issue 11 item 2): callables, exported factories, kinds, hyperparameters, users' methods."""

from __future__ import annotations

import inspect
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _train_helpers import TINY, results

import fmtl
from fmtl.balancers import _registry

NEW = ["stch", "excess_mtl", "fairgrad", "modo", "sdmgrad", "dualproj", "config", "constant", "krum", "trimmed_mean"]


@pytest.fixture
def scratch_registry():
    """Registrations made by a test are undone afterwards."""
    saved = dict(_registry._FACTORIES)
    yield
    _registry._FACTORIES.clear()
    _registry._FACTORIES.update(saved)


def _halves(scale: float = 0.5) -> fmtl.Balancer:
    return fmtl.balancers.loss_balancer(lambda params, T: fmtl.EmptyState(),
                                        lambda losses, state: (torch.full_like(losses, scale), state, {}))  # fmt: skip


def test_the_new_methods_are_registered():
    assert set(NEW) <= set(fmtl.balancers.names())


def test_every_factory_is_exported_and_is_the_function_not_its_module():
    for name in fmtl.balancers.names():
        assert name in fmtl.balancers.__all__, name
        factory = getattr(fmtl.balancers, name)
        assert inspect.isfunction(factory), (name, factory)
        assert isinstance(factory(), fmtl.Balancer), name
    assert fmtl.balancers.pcgrad is _registry._FACTORIES["pcgrad"]


def test_get_is_unchanged_unknown_names_and_hyperparameters_are_clear_errors():
    assert fmtl.balancers.get("cagrad", c=0.1).kind == "gramian"
    with pytest.raises(ValueError, match="unknown balancer 'nope'.*mgda"):
        fmtl.balancers.get("nope")
    with pytest.raises(ValueError, match="'mgda' has no hyperparameter.*'lr'"):
        fmtl.balancers.get("mgda", lr=1.0)
    with pytest.raises(ValueError, match="'gls' has no hyperparameter.*'log_transform'.*takes \\[\\]"):
        fmtl.balancers.get("gls", log_transform=True)  # a factory without hyperparameters too


def test_kinds_come_from_the_balancers_themselves():
    kinds = {name: fmtl.balancers.kind(name) for name in fmtl.balancers.names()}
    assert {k for k, v in kinds.items() if v == "loss"} == {"ew", "gls", "rlw", "uw", "dwa", "imtl_l", "famo",
                                                             "stch", "constant"}  # fmt: skip
    assert {k for k, v in kinds.items() if v == "jacobian"} == {"graddrop", "metabalance", "moco", "dbmtl",
                                                                 "excess_mtl", "trimmed_mean"}  # fmt: skip
    assert all(v == "gramian" for k, v in kinds.items() if k not in {"ew", "gls", "rlw", "uw", "dwa", "imtl_l",
               "famo", "stch", "constant", "graddrop", "metabalance", "moco", "dbmtl", "excess_mtl", "trimmed_mean"})
    # loss balancers are exactly those with loss_weights
    for name, kind in kinds.items():
        assert (fmtl.balancers.get(name).loss_weights is not None) == (kind == "loss"), name


def test_hyperparameters_are_the_factory_defaults():
    assert fmtl.balancers.hyperparameters("upgrad") == {"norm_eps": 1e-4, "reg_eps": 1e-4, "log_transform": False,
                                                         "eps": 1e-8}  # fmt: skip
    assert fmtl.balancers.hyperparameters("aligned_mtl")["scale_mode"] == "min"
    for name in fmtl.balancers.names():
        assert fmtl.balancers.get(name, **fmtl.balancers.hyperparameters(name)) is not None


def test_balancer_stays_constructible_positionally():
    b = fmtl.Balancer(lambda p, T: None, lambda g, s, p: (g, s, {}))
    assert b.loss_weights is None and b.kind == "jacobian"
    assert fmtl.Balancer(b.init, b.update, None).kind == "jacobian"


def test_register_takes_any_callable(scratch_registry):
    fmtl.balancers.register("halves", _halves)
    assert "halves" in fmtl.balancers.names()
    b = fmtl.balancers.get("halves", scale=0.25)
    w, _, _ = b.loss_weights(torch.ones(2), b.init(None, 2), None)
    torch.testing.assert_close(w, torch.full((2,), 0.25))
    assert fmtl.balancers.kind("halves") == "loss"
    assert fmtl.balancers.hyperparameters("halves") == {"scale": 0.5}
    fmtl.balancers.register("halves", lambda: fmtl.balancers.ew(), overwrite=True)
    assert fmtl.balancers.hyperparameters("halves") == {}


def test_register_rejects_bad_input(scratch_registry):
    with pytest.raises(TypeError, match="'broken' must be a callable returning a Balancer; got str"):
        fmtl.balancers.register("broken", "pcgrad")
    with pytest.raises(ValueError, match="'pcgrad' is already registered; pass overwrite=True"):
        fmtl.balancers.register("pcgrad", _halves)
    with pytest.raises(ValueError, match="non-empty string"):
        fmtl.balancers.register("", _halves)
    assert fmtl.balancers.pcgrad is _registry._FACTORIES["pcgrad"]  # nothing was replaced
    fmtl.balancers.register("not_a_balancer", lambda: 42)
    with pytest.raises(TypeError, match="'not_a_balancer' returned int, not a fmtl.Balancer"):
        fmtl.balancers.get("not_a_balancer")


def test_fmtl_list_shows_every_method_through_the_console_script(tmp_path):
    fmtl_bin = Path(sys.executable).parent / "fmtl"
    if not fmtl_bin.exists():
        pytest.skip("no fmtl console script next to this interpreter")
    out = subprocess.run([str(fmtl_bin), "list"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for name in NEW:
        assert name in out.stdout, name


def test_the_new_methods_train_through_the_console_script(tmp_path):
    fmtl_bin = Path(sys.executable).parent / "fmtl"
    if not fmtl_bin.exists():
        pytest.skip("no fmtl console script next to this interpreter")
    out = tmp_path / "cmp"
    args = [str(fmtl_bin), "compare", *TINY, "--epochs", "1", "--methods", ",".join(NEW), "--seeds", "1",
            "--out", str(out)]  # fmt: skip
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr
    for name in NEW:
        res = results(out / name / "seed0")
        assert res["method"] == name and math.isfinite(res["delta_p"]), name
    rows = [line.split("|")[1].strip() for line in (out / "table.md").read_text().splitlines() if line.startswith("| ")]
    assert set(NEW) <= set(rows)

"""Every setting is checked before anything is written: one-line errors, exit 2, nothing created (fuzzed too)."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w
from _train_helpers import TINY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmtl.train import validate
from fmtl.train.cli import build_parser, config_from_args
from fmtl.train.config import DEFAULTS, TABLES, load_toml
from fmtl.train.fit import check, configure

FMTL = shutil.which("fmtl", path=str(Path(sys.executable).parent))


def _console(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FMTL, *args], capture_output=True, text=True, timeout=300, cwd=tmp_path)


def _one_line_error(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("fmtl: error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr
    for w in words:
        assert w in done.stderr, done.stderr


@pytest.mark.parametrize(("flags", "words"), [
    (["--opt", "beta=abc"], ["--opt beta", "valid number", "'abc'"]),
    (["--threads", "-1"], ["--threads", "greater than or equal to 1"]),
    (["--data", "nope=1"], ["--data", "'nope'", "valid:", "num_tasks"]),
    (["--model", "hidden=abc"], ["--model hidden", "list"]),
    (["--model", "nope=1"], ["--model", "'nope'", "valid: ['hidden']"]),
    (["--lr", "-0.01"], ["lr", "greater than 0"]),
    (["--weight-decay", "-1"], ["weight_decay", "greater than or equal to 0"]),
    (["--eval-batch-size", "0"], ["eval_batch_size"]),
    (["--epochs", "0"], ["epochs"]),
    (["--out", "afile"], ["--out afile", "is a file"]),
    (["--out", "afile/run"], ["afile is a file"]),
    (["--out", "x" * 300], ["longer than the file system's"]),
])  # fmt: skip
def test_bad_settings_through_the_console_script_exit_2_and_write_nothing(tmp_path, flags, words):
    (tmp_path / "afile").write_text("not a directory")
    extra = [] if "--out" in flags else ["--out", "run"]
    done = _console(tmp_path, "train", *TINY, "--stl", "none", *extra, *flags)
    _one_line_error(done, *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # no run directory, no STL directory


def test_a_config_file_value_of_the_wrong_type_is_named(tmp_path):
    (tmp_path / "c.toml").write_text('batch_size = "16"\n')
    _one_line_error(_console(tmp_path, "train", *TINY, "--config", "c.toml", "--out", "run"), "batch_size",
                    "valid integer")  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_corrected_rerun_after_a_refused_one_is_accepted(tmp_path):
    # `--epochs 0` used to write config.toml and then fail, so the corrected command was "a different run"
    _one_line_error(_console(tmp_path, "train", *TINY, "--stl", "none", "--out", "run", "--epochs", "0"))
    done = _console(tmp_path, "train", *TINY, "--stl", "none", "--out", "run", "--epochs", "1")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "results.json").is_file()


def test_problem_file_options_are_its_functions_parameters(tmp_path):
    f = tmp_path / "p.py"
    f.write_text("def make(width: int = 4, seed=0):\n    raise AssertionError('never built')\n")
    cfg = configure(None, None, {"benchmark": f"{f}:make", "model": {"width": "wide"}})
    with pytest.raises(ValueError, match="--model width: input should be a valid integer"):
        validate.tables(cfg)
    with pytest.raises(ValueError, match=r"p.py:make has no option\(s\) \['depth'\]; valid: \['width'\]"):
        validate.tables(configure(None, None, {"benchmark": f"{f}:make", "data": {"depth": 2}}))


def test_qm9_model_options_follow_the_representation():
    validate.tables(configure(None, None, {"benchmark": "qm9", "data": {"representation": "graph"},
                                           "model": {"hidden": 32, "steps": 2}}))  # fmt: skip
    with pytest.raises(ValueError, match="--model hidden: input should be a valid list"):
        validate.tables(configure(None, None, {"benchmark": "qm9", "model": {"hidden": 32}}))
    with pytest.raises(ValueError, match="--data representation"):
        validate.tables(configure(None, None, {"benchmark": "qm9", "data": {"representation": "grpah"}}))


# ------------------------------------------------------------------------------------------ fuzzing

_FLAGS = ["--epochs", "--batch-size", "--lr", "--weight-decay", "--seed", "--accumulate", "--chunk-size",
          "--eval-batch-size", "--log-every", "--checkpoint-every", "--threads", "--optimizer", "--amp",
          "--strategy", "--method", "--opt", "--data", "--model", "--benchmark", "--out"]  # fmt: skip
_KEYS = ["beta", "alpha", "eps", "n", "n_eval", "dim", "num_tasks", "hidden", "scales", "nope", "", "=", "a.b"]
_TEXT = st.one_of(
    st.integers(-10**20, 10**20).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["abc", "true", "[1, 2]", "[]", "{a = 1}", '"x"', "nan", "-inf", "0", "-1", "1e400", "max",
                     "ew", "dbmtl", "synthetic", "qm9", "cuda", "[[1]]", "1.5", ""]),
    st.text(max_size=8),
)  # fmt: skip
_PAIR = st.tuples(st.sampled_from(_KEYS), _TEXT).map(lambda kv: f"{kv[0]}={kv[1]}")


def _accepts_or_refuses(run) -> None:
    """``run()`` either passes or raises ``ValueError``/argparse's exit 2: nothing else escapes."""
    try:
        run()
    except SystemExit as e:  # argparse: "invalid int value" and the like, one line, exit 2
        assert e.code == 2
    except ValueError:
        pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flags=st.lists(st.tuples(st.sampled_from(_FLAGS), st.one_of(_TEXT, _PAIR)), max_size=5))
def test_fuzzed_flags_are_accepted_or_refused_with_a_value_error(tmp_path, capsys, flags):
    argv = ["train", "--benchmark", "synthetic", "--stl", "none", "--out", str(tmp_path / "run")]
    for flag, value in flags:
        argv += [flag, value]

    def run() -> None:
        args = build_parser().parse_args(argv)
        validate.command(args)
        check(config_from_args(args))

    _accepts_or_refuses(run)
    capsys.readouterr()
    assert not (tmp_path / "run").exists()


_TOML_VALUE = st.recursive(
    st.one_of(st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(), st.text(max_size=6),
              st.sampled_from(["ew", "dbmtl", "synthetic", "adam", "auto", "none", "bfloat16"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(_KEYS[:-3]), inner,
                                                                           max_size=3)),
    max_leaves=6,
)  # fmt: skip
_TOML_DOC = st.dictionaries(st.sampled_from([*DEFAULTS, *TABLES, "environment", "bogus"]), _TOML_VALUE, max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=_TOML_DOC)
def test_fuzzed_config_files_are_accepted_or_refused_with_a_value_error(tmp_path, doc):
    path = tmp_path / "c.toml"
    path.write_text(tomli_w.dumps(doc))
    args = argparse.Namespace(**{**vars(build_parser().parse_args(["train", "--stl", "none"])), "config": str(path)})
    _accepts_or_refuses(lambda: check(config_from_args(args)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]


def test_fuzzed_config_files_through_the_console_script(tmp_path):
    # (settings the TINY flags do not override)
    docs = ['eval_batch_size = "two"\n', "weight_decay = -1\n", "[data]\nrank = 0\n", "model = 3\n", "opts = [1]\n",
            "seed = 1.5\n", "[data]\nscales = [1, -1, 2]\n", 'method = ["ew"]\n', "log_every = 0\n",
            "compile = 1\n"]  # fmt: skip
    for i, doc in enumerate(docs):
        (tmp_path / f"c{i}.toml").write_text(doc)
        done = _console(tmp_path, "train", *TINY, "--config", f"c{i}.toml", "--out", f"run{i}", "--stl", "none")
        _one_line_error(done)
        assert not (tmp_path / f"run{i}").exists()
    assert load_toml(tmp_path / "c0.toml")  # the file itself is valid TOML: the type is what is refused

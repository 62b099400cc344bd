"""Every docstring example in the package and every Python block of the README runs."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import fmtl

ROOT = Path(__file__).resolve().parents[1]
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _modules() -> list[str]:
    names = []
    for package in ("fmtl", "fmtl.models", "fmtl.data"):
        try:
            pkg = importlib.import_module(package)
        except ImportError:
            continue
        names.append(package)
        names += [m.name for m in pkgutil.walk_packages(pkg.__path__, package + ".")
                  if not m.name.endswith("__main__")]
    return sorted(set(names))


@pytest.mark.parametrize("module", _modules())
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=FLAGS, verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {module}"


def test_every_public_function_has_an_example():
    """Each public function of the core has a runnable example in its docstring or the README."""
    readme = (ROOT / "README.md").read_text()
    missing = []
    for name in fmtl.__all__:
        obj = getattr(fmtl, name)
        if callable(obj) and not isinstance(obj, type) and ">>>" not in (obj.__doc__ or "") and name not in readme:
            missing.append(name)
    assert not missing, f"public functions without an example: {missing}"


def _readme_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert _readme_blocks(), "README.md has no ```python example"


@pytest.mark.parametrize("index", range(len(_readme_blocks())))
def test_readme_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(_readme_blocks()[index], f"README.md block {index}", "exec"), {"__name__": "__readme__"})

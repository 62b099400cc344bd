"""models/ and data/ install as fmtl.models and fmtl.data, never as bare top-level packages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = (
    "import importlib.util, fmtl, fmtl.models, fmtl.data; "
    "print(importlib.util.find_spec('models') is None, importlib.util.find_spec('data') is None, "
    "fmtl.models.__name__, fmtl.data.__name__)"
)


def test_installed_environment_imports_the_mapped_packages(tmp_path):
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "fmtl.models", "fmtl.data"]


@pytest.mark.skipif(os.environ.get("FMTL_SKIP_INSTALL_TEST") == "1", reason="FMTL_SKIP_INSTALL_TEST=1")
def test_regular_install_imports_the_mapped_packages(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(ROOT)],
        check=True, capture_output=True, text=True,
    )
    installed = sorted(p.name for p in target.iterdir() if not p.name.endswith((".dist-info", ".egg-info")))
    assert "models" not in installed and "data" not in installed, installed
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", PROBE + "; print(fmtl.__file__)"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.split()[:4] == ["True", "True", "fmtl.models", "fmtl.data"]
    assert out.stdout.split()[4].startswith(str(target))

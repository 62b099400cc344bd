"""The engine (``fmtl`` minus ``fmtl.train``) never imports the application package ``fmtl.train``."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import fmtl
import fmtl.data
import fmtl.models

#: Every engine module: the fmtl package and the installed fmtl.models / fmtl.data, minus the application.
ENGINE = sorted(
    {"fmtl", "fmtl.models", "fmtl.data"}
    | {m.name for pkg in (fmtl, fmtl.models, fmtl.data) for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")
       if not m.name.startswith("fmtl.train") and not m.name.endswith("__main__")}
)  # fmt: skip

PROBE = """
import importlib, json, sys
for name in {names!r}:
    importlib.import_module(name)
print(json.dumps(sorted(m for m in sys.modules if m == "fmtl.train" or m.startswith("fmtl.train."))))
"""


def test_the_engine_list_covers_the_engine():
    assert {"fmtl.step", "fmtl.task_gradients", "fmtl.balancers.dbmtl", "fmtl.models", "fmtl.data"} <= set(ENGINE)


def test_importing_every_engine_module_loads_no_application_module(tmp_path):
    # A fresh interpreter: this test process has imported fmtl.train already.
    out = subprocess.run([sys.executable, "-c", PROBE.format(names=ENGINE)], cwd=tmp_path, capture_output=True,
                         text=True, check=True)  # fmt: skip
    assert json.loads(out.stdout.splitlines()[-1]) == []


def test_the_application_is_a_package():
    import fmtl.train

    assert Path(fmtl.train.__file__).name == "__init__.py"

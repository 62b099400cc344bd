"""Smoke test: both benchmark scripts run end to end (``--quick``) and write their results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("script", ["task_gradients", "step"])
def test_benchmark_quick_run_writes_results(script, tmp_path):
    out = tmp_path / f"{script}.json"
    env = {**os.environ, "KINETO_LOG_LEVEL": "5"}
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), "--quick", "--out", str(out)],
                   check=True, capture_output=True, timeout=120, env=env)  # fmt: skip
    results = json.loads(out.read_text())
    assert results["machine"]["torch"]
    variants = {r["variant"] for r in results["rows"]}
    assert ("loop baseline" if script == "task_gradients" else "loop step") in variants
    assert all(r["ms"] > 0 for r in results["rows"])

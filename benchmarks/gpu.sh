#!/usr/bin/env bash
# The GPU run in one command: the step and task-gradient tables and the QM9 main job's throughput,
# within FMTL_GPU_BUDGET seconds (default 570), as JSON and markdown in FMTL_GPU_OUT
# (default benchmarks/results/gpu). FMTL_GPU_DRYRUN=1 runs the whole pipeline on the CPU at tiny
# sizes (about a minute). The interpreter: $PYTHON, else this checkout's .venv, else python3.
# On a machine without tensordict, carry its wheels in .whl/ (benchmarks/RESULTS.md, "The GPU run").
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then py="$repo/.venv/bin/python"; else py="$(command -v python3)"; fi
fi
if [[ "${FMTL_GPU_DRYRUN:-0}" != "1" ]] && ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu.sh: no nvidia-smi here; set FMTL_GPU_DRYRUN=1 for the CPU dry run" >&2
fi
# the whole run is bounded even if a part ignores its own limit
budget="${FMTL_GPU_BUDGET:-570}"
exec timeout --kill-after=20 "$(( ${budget%.*} + 30 ))" "$py" "$here/gpu.py" "$@"

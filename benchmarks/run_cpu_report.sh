#!/usr/bin/env bash
# One-command CPU report (benchmarks/cpu_report.py): run from the repository root.
#   benchmarks/run_cpu_report.sh [--quick] [--parts ratios,loader,predict] [--predict-options] [--out-dir DIR]
# Writes benchmarks/results/cpu_report_<cpu-slug>.json and .md. OMP_NUM_THREADS defaults to 2.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" benchmarks/cpu_report.py "$@"

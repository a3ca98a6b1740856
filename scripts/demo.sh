#!/usr/bin/env bash
# The README's main command: synthetic data, shards, 2-process CPU training of a reduced-width
# VSS-Net, test table, overlays, MLflow store, and the first- and last-frame input ablation. Args go to
# `python -m dias_dist.demo` (e.g. --skip-first-frame, or config overrides like train.epochs=4).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
cd "$root"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$root/.venv/bin/python" -m dias_dist.demo "$@"

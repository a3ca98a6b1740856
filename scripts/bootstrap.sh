#!/usr/bin/env bash
# Create .venv in the repository root and install the pinned dependencies, once.
# A second run only checks a stamp (the sha256 of the requirement files) and returns at once.
# GPU machines (nvidia-smi present) get the CUDA build of torch 2.13.0 from PyPI; CPU machines get
# the CPU build (pip finds it through PIP_FIND_LINKS here; elsewhere set
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu to avoid the CUDA wheels).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$root/.venv"
stamp="$venv/.dias-stamp"
want="$(cat requirements/torch.txt requirements/base.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
echo "[bootstrap] creating/updating $venv (first run takes a few minutes)" >&2
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# torch is pinned in the same command (-c) so that no dependency can pull a different (CUDA) torch.
"$venv/bin/python" -m pip install -q -c requirements/torch.txt -r requirements/torch.txt -r requirements/base.txt 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
"$venv/bin/python" -m pip install -q -c requirements/torch.txt --no-deps -e . 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
"$venv/bin/python" -c "import torch, webdataset, mlflow, skimage, ray, deepspeed, triton, dias_dist" \
  || { echo "[bootstrap] install incomplete: see the pip output above" >&2; exit 1; }
echo "$want" > "$stamp"
echo "[bootstrap] ready: $venv" >&2

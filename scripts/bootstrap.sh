#!/usr/bin/env bash
# Create .venv in the repository root and install the pinned dependencies, once: the runtime set
# (requirements/torch.txt, requirements/base.txt, as in the Docker image) and the test tools (requirements/test.txt).
# A second run only checks a stamp (the sha256 of the requirement files) and returns at once.
# GPU machines (nvidia-smi present) get the CUDA build of torch 2.13.0 from PyPI. Machines without
# nvidia-smi get the CPU build: pip also searches https://download.pytorch.org/whl/cpu, whose
# 2.13.0+cpu satisfies torch==2.13.0 and ranks above PyPI's 2.13.0, unless PIP_EXTRA_INDEX_URL,
# PIP_INDEX_URL or PIP_FIND_LINKS is set (then those say where wheels come from, as on the
# development VM, where PIP_FIND_LINKS holds the CPU wheel).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$root/.venv"
stamp="$venv/.dias-stamp"
want="$(cat requirements/torch.txt requirements/base.txt requirements/test.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
echo "[bootstrap] creating/updating $venv (first run takes a few minutes)" >&2
command -v python3 >/dev/null || { echo "[bootstrap] python3 (>= 3.10) is not installed" >&2; exit 1; }
python3 -m venv "$venv" || {
  echo "[bootstrap] 'python3 -m venv' failed (usually: no ensurepip). On Debian/Ubuntu install the venv" \
       "module, e.g. 'sudo apt-get install python3-venv' (or python3.X-venv for your Python), then re-run." >&2
  exit 1
}
# An --extra-index-url on the command line adds to the indexes of pip.conf; an exported
# PIP_EXTRA_INDEX_URL would replace them.
cpu_index=()
if ! command -v nvidia-smi >/dev/null 2>&1 && [[ -z "${PIP_EXTRA_INDEX_URL:-}${PIP_INDEX_URL:-}${PIP_FIND_LINKS:-}" ]]; then
  cpu_index=(--extra-index-url https://download.pytorch.org/whl/cpu)
fi
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# torch is pinned in the same command (-c) so that no dependency can pull a different (CUDA) torch.
"$venv/bin/python" -m pip install -q ${cpu_index[@]+"${cpu_index[@]}"} \
  -c requirements/torch.txt -r requirements/torch.txt -r requirements/base.txt -r requirements/test.txt 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
"$venv/bin/python" -m pip install -q -c requirements/torch.txt --no-deps -e . 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
"$venv/bin/python" -c "import torch, webdataset, mlflow, skimage, ray, deepspeed, triton, dias_dist" \
  || { echo "[bootstrap] install incomplete: see the pip output above" >&2; exit 1; }
echo "$want" > "$stamp"
echo "[bootstrap] ready: $venv" >&2

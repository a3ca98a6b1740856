#!/usr/bin/env bash
# The checks only a GPU can give, for a machine with one (e.g. the device tool's H100/H200):
#   bash scripts/gpu_checks.sh [tests|convgru|train_step|models|all] ...   (default: all)
# Uses ${PYTHON:-python3}; needs torch with CUDA, triton, numpy, scikit-image, pyyaml, tqdm and pytest
# (none of webdataset, mlflow, deepspeed or ray). Results go to ${OUT:-benchmarks/results/gpu}/,
# each JSON names the GPU; commit the ones worth keeping under benchmarks/results/.
# Each part stays under 10 minutes on an H100, so a part fits one device call.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-benchmarks/results/gpu}
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(all)
[ "${parts[0]}" = all ] && parts=(tests convgru train_step models)
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'scripts/gpu_checks.sh: no CUDA GPU visible to torch')"
mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia_smi.txt" 2>&1 || true
for part in "${parts[@]}"; do
  echo "== $part" >&2
  case "$part" in
    tests)  # compiled Triton kernels against PyTorch (fwd, bwd, whole VSS-Net) and a bf16 training step
      TRITON_INTERPRET=0 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels.py tests/test_trainer.py \
        2>&1 | tee "$OUT/gpu_tests.txt" ;;
    convgru)  # eager vs torch.compile vs fused Triton, ConvGRU layer and VSS-Net step
      "$PY" benchmarks/convgru.py --out "$OUT/convgru_cuda.json" ;;
    train_step)  # batched vs per-timestep ConvGRU inside VSS-Net, at the paper's batch and at 4
      "$PY" benchmarks/train_step.py --batch 64 --device cuda --out "$OUT/train_step_cuda_b64.json"
      "$PY" benchmarks/train_step.py --batch 4 --device cuda --out "$OUT/train_step_cuda_b4.json" ;;
    models)  # every registered model at the paper's batch 64
      "$PY" benchmarks/models.py --batch 64 --out "$OUT/models_cuda.json" ;;
    *) echo "scripts/gpu_checks.sh: unknown part '$part' (tests|convgru|train_step|models|all)" >&2; exit 2 ;;
  esac
done

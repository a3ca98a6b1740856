#!/usr/bin/env bash
# Every committed number of the inference-roofline section of benchmarks/README.md, in one command
# (about 10 minutes on the 2-core development VM; run it when the machine is otherwise idle):
#   bash benchmarks/run_roofline.sh
# writes benchmarks/results/{roofline,bf16_inference,cpu_trials}_cpu.json and roofline_cpu.md.
# OMP_NUM_THREADS (default 2) sets the threads, SUFFIX (default "cpu") names the result files, and
# ROOFLINE_ARGS / BF16_ARGS / TRIALS_ARGS are appended to the scripts' arguments (later ones win).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
py="${PYTHON:-$root/.venv/bin/python}"
out="$root/benchmarks/results"
suffix="${SUFFIX:-cpu}"
echo "start $(date -u +%T), load $(cat /proc/loadavg 2>/dev/null || echo n/a)"
# 1. roofline of every path (VSS-Net arrangements vs the reference cell, FR-UNet; fp32 and bf16): ~5.5 min
"$py" benchmarks/roofline.py --warmup 1 --repeats 5 --out "$out/roofline_$suffix.json" ${ROOFLINE_ARGS:-} | tail -c 300
echo
# 2. eval.cpu_bf16: DSC change on the phantom test split (briefly trained VSS-Net) and speed-up: ~1 min
"$py" benchmarks/bf16_inference.py --repeats 3 --out "$out/bf16_inference_$suffix.json" ${BF16_ARGS:-} | tail -c 300
echo
# 3. torch.compile / channels-last / oneDNN fusion: at most 3 min. The JSON is rewritten after each
#    variant, so the time limit keeps what was measured (variants not reached are "pending").
timeout 180 "$py" benchmarks/cpu_trials.py --eval-batch 8 --train-batch 2 --repeats 3 --budget-s 120 \
    --out "$out/cpu_trials_$suffix.json" ${TRIALS_ARGS:-} | tail -c 300 || echo "cpu_trials: time limit reached"
echo
# 4. the Markdown tables benchmarks/README.md quotes
"$py" benchmarks/roofline_report.py "$out/roofline_$suffix.json" "$out/bf16_inference_$suffix.json" \
    "$out/cpu_trials_$suffix.json" > "$out/roofline_$suffix.md"
echo "end $(date -u +%T), load $(cat /proc/loadavg 2>/dev/null || echo n/a); tables: $out/roofline_$suffix.md"

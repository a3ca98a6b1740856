#!/usr/bin/env bash
# Every committed number of the inference-roofline section of benchmarks/README.md, in one command
# (about 10 minutes on the 2-core development VM; run it when the machine is otherwise idle):
#   bash benchmarks/run_roofline.sh            # writes benchmarks/results/{roofline,bf16_inference,cpu_trials}_cpu.json and roofline_cpu.md
# OMP_NUM_THREADS (default 2) sets the threads; SUFFIX (default "cpu") names the result files.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
py="${PYTHON:-$root/.venv/bin/python}"
out="$root/benchmarks/results"
suffix="${SUFFIX:-cpu}"
echo "load before: $(cat /proc/loadavg 2>/dev/null || echo n/a)"
# 1. roofline of every path (VSS-Net arrangements vs the reference cell, FR-UNet, fp32 and bf16)
"$py" benchmarks/roofline.py --warmup 1 --repeats 5 --out "$out/roofline_$suffix.json" | tail -c 400
# 2. bf16 inference: DSC change on the phantom test split (a briefly trained VSS-Net) and speed-up
"$py" benchmarks/bf16_inference.py --repeats 3 --out "$out/bf16_inference_$suffix.json" | tail -c 400
# 3. torch.compile / channels-last / oneDNN fusion trials (variants past the budget are recorded as skipped)
"$py" benchmarks/cpu_trials.py --eval-batch 8 --train-batch 2 --repeats 3 --budget-s 150 \
    --out "$out/cpu_trials_$suffix.json" | tail -c 400
# 4. the Markdown tables benchmarks/README.md quotes
"$py" benchmarks/roofline_report.py "$out/roofline_$suffix.json" "$out/bf16_inference_$suffix.json" \
    "$out/cpu_trials_$suffix.json" > "$out/roofline_$suffix.md"
echo "load after: $(cat /proc/loadavg 2>/dev/null || echo n/a)"

"""Markdown tables of the roofline results (the figures benchmarks/README.md quotes).

    python benchmarks/roofline_report.py benchmarks/results/roofline_cpu.json \
        [benchmarks/results/bf16_inference_cpu.json] [benchmarks/results/cpu_trials_cpu.json] > roofline_cpu.md

Each JSON is recognised by its ``benchmark`` field; missing files are skipped with a note.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _load(text: str) -> str:
    return "n/a" if not text else " / ".join(f"{v:.1f}" for v in text)


def roofline_md(r: dict) -> str:
    peaks = r["matmul_peak_gflop_per_s"]
    lines = [f"### Roofline ({r['device']}, torch {r['torch']}, load {_load(r['load_average_1_5_15_before'])} "
             f"before, {_load(r['load_average_1_5_15_after'])} after; git {r['git_sha']})", "",
             f"Dense matmul peak: fp32 {peaks['fp32']:.0f} GFLOP/s"
             + (f", bf16 {peaks['bf16']:.0f} GFLOP/s" if peaks.get("bf16") else "") + ". Settings: "
             + ", ".join(f"{k} {v}" for k, v in r["settings"].items()) + ".", "",
             "| model | path | variant | precision | batch | GFLOP | s (min) | GFLOP/s | of fp32 peak | of own peak |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['model']} | {row['path']} | {row['variant']} | {row['precision']} | {row['batch']} | "
                     f"{row['gflop']:.1f} | {row['seconds_min']:.3f} | {row['gflop_per_s']:.0f} | "
                     f"{row['fraction_of_fp32_peak']:.2f} | {row['fraction_of_peak']:.2f} |")
    lines += ["", "| VSS-Net path | chosen arrangement | s | other arrangement | s | vs reference cell |",
              "|---|---|---|---|---|---|"]
    for path, a in r["arrangement"].items():
        lines.append(f"| {path} | {a['chosen']} | {a['chosen_s']:.3f} | {a['other']} | {a['other_s']:.3f} | "
                     f"{r['vss_net_speedup_vs_reference_gru'][path]:.3f}× |")
    if r.get("profile"):
        lines += ["", "| fp32 path (default variant) | conv s | other s | conv GFLOP/s | bound (of fp32 peak) |",
                  "|---|---|---|---|---|"]
        for key, p in r["profile"].items():
            conv_rate = f"{p['conv_gflop_per_s']:.0f}" if p.get("conv_gflop_per_s") else "n/a"
            lines.append(f"| {key} | {p['conv_s']:.3f} | {p['other_s']:.3f} | {conv_rate} | "
                         f"{p['bound_fraction_of_peak']:.2f} |")
    if r.get("bf16_speedup"):
        lines += ["", "bf16 speed-up over fp32: " + ", ".join(f"{k} {v:.2f}×" for k, v in r["bf16_speedup"].items())]
    return "\n".join(lines) + "\n"


def bf16_md(r: dict) -> str:
    return (f"### bf16 inference on the phantom test split (load {_load(r['load_average_1_5_15_before'])} before)\n\n"
            f"VSS-Net width {r['settings']['width']}, {r['settings']['steps']} fp32 training steps, "
            f"{r['test_images']} test images of {r['settings']['size']} px: DSC fp32 {r['dsc_fp32']:.4f}, "
            f"bf16 {r['dsc_bf16']:.4f} (change {r['dsc_change']:+.4f}, largest per image "
            f"{r['dsc_change_max_abs_per_image']:.4f}); largest probability difference "
            f"{r['probability_max_abs_diff']:.4f}, {100 * r['pixels_flipped_fraction']:.3f} % of pixels flip; "
            f"evaluation {r['seconds_min']['fp32']:.2f} s fp32 vs {r['seconds_min']['bf16']:.2f} s bf16 "
            f"({r['bf16_speedup']:.2f}×).\n")


def trials_md(r: dict) -> str:
    lines = [f"### torch.compile / channels-last / oneDNN fusion (load {_load(r['load_average_1_5_15_before'])} "
             f"before; settings " + ", ".join(f"{k} {v}" for k, v in r["settings"].items()) + ")", "",
             "| workload | variant | status | s (min) | speed-up | max rel. diff | warm-up s |", "|---|---|---|---|---|---|---|"]
    for workload, variants in r["workloads"].items():
        for name, v in variants.items():
            if v["status"] == "ok":
                lines.append(f"| {workload} | {name} | ok | {v['seconds_min']:.3f} | {v['speedup_vs_eager']:.2f}× | "
                             f"{v['max_rel_diff_vs_eager']:.1e} | {v['warmup_s_incl_compile']:.0f} |")
            else:
                lines.append(f"| {workload} | {name} | {v['status'][:120]} | | | | |")
    lines += ["", f"Adoptable (≥ {r['settings']['adopt']:.2f}× at rel. diff ≤ {r['settings']['tolerance']:g}): "
              + (", ".join(r["adoptable"]) or "none")]
    return "\n".join(lines) + "\n"


RENDER = {"roofline": roofline_md, "bf16_inference": bf16_md, "cpu_trials": trials_md}


def main(paths: list[str]) -> None:
    for path in paths:
        if not Path(path).is_file():
            print(f"({path}: not found)\n")
            continue
        result = json.loads(Path(path).read_text().splitlines()[-1])
        kind = result.get("benchmark")
        if kind not in RENDER:
            raise SystemExit(f"{path}: unknown benchmark {kind!r}; expected one of {', '.join(RENDER)}")
        print(RENDER[kind](result))


if __name__ == "__main__":
    main(sys.argv[1:])

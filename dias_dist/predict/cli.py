"""``dias predict MODEL INPUT... --out DIR``: vessel masks for a user's own DSA series.

MODEL: a checkpoint written by training (``best.pt``, ``final.pt``; DDP or DeepSpeed) or an MLflow
model URI (``runs:/<run_id>/model``, ``models:/<name>/<version>``; store: ``--tracking-uri``, else
``$MLFLOW_TRACKING_URI``, else ``runs/mlflow.db``); with ``--ensemble MODEL2`` (repeatable) the vessel
probabilities of all the models are averaged (``dias_dist.predict.ensemble``). INPUT: frame folders, DICOM files or folders,
``.npy`` arrays, or folders of those (batch; globs too), see ``dias_dist.predict.readers``.
Each series gets ``DIR/<name>/`` (see ``dias_dist.predict.writers``). A series that fails leaves
no folder and is listed at the end; the others complete and the exit status is 1. An input that
yields no series (an empty folder, a folder of only ``.txt`` files or broken links) is such a
failure, with its reason; a FIFO or other non-regular file is refused, never waited on.

Refused before the model is loaded or anything is written (one line, exit status 2): a ``--out``
that is, contains or lies inside an input (real paths: symbolic links resolved), and an existing
``DIR/<name>`` that is not a folder written by predict (it carries the marker ``.dias-predict``)
unless ``--overwrite`` is given. Series names are made one safe path component
(``writers.safe_name``: an input ``..npy`` gives ``_``, never ``DIR`` itself).

A series straight from the angiography system (README, "Predicting a series from the angiography system"): a native run is subtracted
(``--subtract``, ``--native``; ``dias_dist.predict.subtract``) or refused when no mask is named, the
frames are chosen (``--frames``; ``dias_dist.predict.frames``), areas and lengths are in mm at the
isocentre (``dias_dist.predict.calibration``), tiles are blended with Gaussian weights (``--blend``;
``dias evaluate`` keeps the paper's uniform average), optional flip TTA (``--tta``) and clean-up
(``--min-size``), ``--anonymize`` keeps patient identifiers out of the outputs.

Field of view (``--fov``, ``dias_dist.predict.fov``): one mask file for every series, or a folder of
masks named like the series; the probability (and so the mask) is 0 outside, and ``summary.json``
records the mask (``"fov"``; ``null`` without one). A missing, colour, non-binary or empty mask is
refused before the model loads; a mask of another size fails its series.

Budget: a frame over ``--max-pixels`` pixels (default 2048x2048) or a series over ``--max-frames``
frames (default 64) is refused from its header, before any pixel is decoded (a failed series).
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch

from dias_dist.models import cpu_tuning
from dias_dist.predict.ensemble import add_argument as add_ensemble_argument
from dias_dist.predict.ensemble import load_ensemble
from dias_dist.predict.readers import DEFAULT_MAX_FRAMES, DEFAULT_MAX_PIXELS

# The documented fast setting (benchmarks/README.md, results/predict_cpu.json): the paper's 64-px tiles
# at stride 48 (2.2x fewer tiles than stride 32 on 800x800), the sparsest measured tiling whose DSC change
# stayed within 0.005 on both the 800x800 phantom series and the demo's test split; plus bf16 autocast
# where the CPU multiplies bf16 natively (DSC change within 0.001, about 2x faster).
FAST_TILE, FAST_STRIDE = 64, 48
FRAME_PART = re.compile(r"^\s*(\d*:\d*|\d+)\s*$")  # one part of --frames: a:b or an index


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX-BF16, from /proc/cpuinfo): where
    it does not, bf16 autocast is emulated and slower than fp32."""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return False
    return bool(set(flags.split()) & {"avx512_bf16", "amx_bf16"})


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 natively: a CUDA GPU that supports it (Ampere or later), or a
    CPU with AVX512-BF16 or AMX-BF16. ``--fast`` turns bf16 on only there."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="best.pt / final.pt, or runs:/<id>/model, models:/<name>/<v>")
    parser.add_argument("inputs", metavar="INPUT", nargs="+",
                        help="frame folder, DICOM file or folder, .npy (T, H, W), or a folder of those; globs")
    parser.add_argument("--out", required=True, help="output folder (one sub-folder per series)")
    add_ensemble_argument(parser, "MODEL")
    parser.add_argument("--threshold", type=float, default=None, help="mask threshold (default: the model's)")
    parser.add_argument("--tile", type=int, default=None,
                        help="sliding-window tile side in px (default: the model's, the paper's 64; 0 = whole image)")
    parser.add_argument("--stride", type=int, default=None, help="tile stride in px (default: the model's, 32)")
    parser.add_argument("--fast", action="store_true",
                        help=f"--tile {FAST_TILE} --stride {FAST_STRIDE}, plus --bf16 on a GPU or a CPU with "
                             "AVX512-BF16/AMX: 2.2x fewer tiles than the paper's 64/32 on 800x800 series at a DSC "
                             "change within 0.005 (benchmarks/README.md)")
    parser.add_argument("--bf16", action="store_true",
                        help="bf16 autocast (default: as the model was trained, train.amp on a GPU, train.cpu_bf16 "
                             "on a CPU). On CPUs with AVX512-BF16/AMX about 2x faster at a DSC change within 0.001 "
                             "(benchmarks/README.md); slower on CPUs without them")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the network (1.13x on a 2-core Xeon after about 15 s of compiling: "
                             "worth it from the second 800x800 series on; benchmarks/README.md)")
    parser.add_argument("--batch-size", type=int, default=None, help="tiles per forward (default: the model's)")
    parser.add_argument("--device", default="auto", help="auto (GPU when there is one) | cpu | cuda | cuda:N")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store of a runs:/ or models:/ MODEL")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing OUT/<name> that predict did not write (default: refused; a "
                             "result of an earlier dias predict, marked by its .dias-predict file, is replaced)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help=f"largest frame in pixels, width x height (default {DEFAULT_MAX_PIXELS} = 2048x2048, "
                             "the largest DSA detectors); checked from the file header before decoding")
    parser.add_argument("--subtract", default="auto",
                        help="auto (default: subtract a native run with the mask its DICOM header names: "
                             "MaskSubtractionSequence) | never (frames taken as they are) | mask=N, mask=A:B, "
                             "mask=N,M (0-based frames averaged into the mask, for any run); log-domain subtraction")
    parser.add_argument("--native", action="store_true",
                        help="frame folders and .npy: the frames are a native (unsubtracted) run; needs "
                             "--subtract mask=N")
    parser.add_argument("--frames", default="all",
                        help="frames to use (0-based): all (default) | auto (arterial phase from the series' own "
                             "contrast-time curve) | a:b (a..b-1) | 0,2,3 | mixed 0:3,5")
    parser.add_argument("--blend", choices=("gaussian", "uniform"), default="gaussian",
                        help="tile overlap: gaussian (default: no seams in the maps) | uniform (the paper's "
                             "average, what dias evaluate uses)")
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: mean over the frames as given and flipped (3 flips; 4x slower)")
    parser.add_argument("--min-size", default=None,
                        help="remove mask components smaller than this: 20px or 1.5mm2 (mm2 needs a pixel spacing)")
    parser.add_argument("--anonymize", "--no-patient-ids", dest="anonymize", action="store_true",
                        help="leave patient identifiers out of the outputs (SEG patient/study attributes empty, "
                             "summary.json and the marker record the series name, not the input path)")
    parser.add_argument("--fov", default=None, metavar="PATH",
                        help="field-of-view mask: one binary mask file (0 outside, 255 inside) for every series, or "
                             "a folder of masks named like the series (<name>.png for scan.dcm, scan.npy or the "
                             "frame folder scan/); probability and mask are 0 outside, summary.json records it")
    parser.add_argument("--max-frames", type=int, default=DEFAULT_MAX_FRAMES,
                        help=f"most frames per series (default {DEFAULT_MAX_FRAMES}); checked from the headers "
                             "before decoding")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"--device {name!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device available")
    return device


def main(args: argparse.Namespace) -> int:
    from dias_dist.predict.fov import apply_fov, check_size, fov_files, fov_record, read_fov
    from dias_dist.predict.frames import parse_indices
    from dias_dist.predict.model import series_probability
    from dias_dist.predict.postprocess import parse_min_size
    from dias_dist.predict.prepare import prepare
    from dias_dist.predict.subtract import parse_subtract
    from dias_dist.predict.readers import Budget, expand_inputs, input_matches, read_series
    from dias_dist.predict.writers import check_output_location, check_replaceable, unique_names, write_series_outputs
    from dias_dist.progress import bar

    tile, stride = (FAST_TILE, FAST_STRIDE) if args.fast else (args.tile, args.stride)
    if args.fast and (args.tile is not None or args.stride is not None):
        raise ValueError("--fast sets --tile and --stride; give either --fast or --tile/--stride")
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        raise ValueError(f"--threshold must be in (0, 1), got {args.threshold}")
    budget = Budget(args.max_pixels, args.max_frames)
    min_size = parse_min_size(args.min_size)
    mode, _ = parse_subtract(args.subtract)
    if args.native and mode == "never":
        raise ValueError("--native with --subtract never: a native run must be subtracted; give --subtract mask=N")
    if args.frames not in ("all", "auto"):  # the form now (its error names the part at fault); ranges per series
        for part in args.frames.split(","):
            if not FRAME_PART.match(part):
                parse_indices(part, 1)
    device = _device(args.device)
    # everything about the inputs and --out is checked before the model loads and anything is written
    paths = expand_inputs(args.inputs)
    out_root = Path(args.out)
    check_output_location(out_root, list(dict.fromkeys([*input_matches(args.inputs), *paths])))
    names = unique_names(paths)
    refused = []
    for name in names:
        try:
            check_replaceable(out_root / name, overwrite=args.overwrite)
        except ValueError as err:
            refused.append(str(err))
    if refused:
        more = f" (and {len(refused) - 1} more: {', '.join(m.split(': ')[0] for m in refused[1:4])}" \
               f"{' ...' if len(refused) > 4 else ''})" if len(refused) > 1 else ""
        raise ValueError(refused[0] + more)
    fov_paths = [None] * len(paths) if args.fov is None else fov_files(args.fov, paths)
    # every mask is checked now; one file for all series stays in memory, a folder's masks are read again per series
    single = {}
    for fov_path in dict.fromkeys(p for p in fov_paths if p is not None):
        mask = read_fov(fov_path)
        single = {fov_path: mask} if len(set(fov_paths)) == 1 else {}
    model = load_ensemble([args.model, *args.ensemble], tracking_uri=args.tracking_uri)
    cfg = model.cfg
    tile = cfg.eval.patch_size_px if tile is None else tile
    stride = (tile if tile == 0 else cfg.eval.stride_px) if stride is None else stride
    if tile < 0 or (tile > 0 and not 0 < stride <= tile):
        raise ValueError(f"--tile {tile} --stride {stride}: need 0 < stride <= tile (or tile 0: whole image)")
    threshold = cfg.eval.threshold if args.threshold is None else args.threshold
    arrangement = cpu_tuning.tune_for_inference(model.network, device, frames=model.num_frames,
                                                batch=args.batch_size or cfg.eval.batch_size, tile=tile)
    fast_bf16 = args.fast and native_bf16(device)
    amp = cfg.train.bf16_autocast(device) or args.bf16 or fast_bf16
    failures, written = [], []
    for path, name, fov_path in bar(list(zip(paths, names, fov_paths)), desc="predict", unit="series", enabled=None):
        tic = time.perf_counter()
        try:
            series = read_series(path, budget)
            prepared = prepare(series, subtract=args.subtract, native=args.native, frames=args.frames)
            fov = None if fov_path is None else single.get(fov_path)
            fov = read_fov(fov_path) if fov_path is not None and fov is None else fov
            if fov is not None:  # before the model runs: a mask of another size fails the series at no cost
                check_size(fov, prepared.frames.shape[1:], fov_path)
            prob = series_probability(model, prepared.frames, device=device, tile=tile, stride=stride,
                                      batch_size=args.batch_size, amp=amp, compile=args.compile or None,
                                      blend=args.blend, tta=args.tta)
            if fov is not None:
                prob = apply_fov(prob, fov, fov_path)
            summary = {"input": str(path), "kind": series.kind, "num_files": len(series.files),
                       "num_frames": int(prepared.frames.shape[0]), **prepared.record, "height": int(prob.shape[0]),
                       "width": int(prob.shape[1]), "model": model.source, "model_name": cfg.model.name,
                       "method": cfg.method.name, "model_step": model.step, "model_num_frames": model.num_frames,
                       "tile": tile, "stride": stride, "blend": args.blend, "tta": args.tta,
                       "device": str(device), "bf16_autocast": amp,
                       "convgru_arrangement": arrangement.get("convgru_eval"),
                       "compiled": bool(args.compile or cfg.eval.compile),
                       "fov": None if fov is None else fov_record(fov_path, fov, anonymize=args.anonymize),
                       "seconds": round(time.perf_counter() - tic, 3)}
            if series.frame_order is not None:
                summary["frame_order"] = series.frame_order
            written.append(write_series_outputs(out_root / name, series, prob, threshold=threshold,
                                                dti=cfg.eval.dti, summary=summary, overwrite=args.overwrite,
                                                frames=prepared.frames, min_size=min_size,
                                                anonymize=args.anonymize))
        except Exception as err:  # noqa: BLE001 — one bad series must not stop the batch
            message = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
            failures.append((path, message))
            print(f"dias predict: {path}: failed: {message}", file=sys.stderr)
    for folder in written:
        print(f"{folder}: mask.png, overlay.png, prob.npy, summary.json")
    print(f"{len(written)} of {len(paths)} series predicted into {out_root}")
    if failures:
        print(f"dias predict: {len(failures)} series failed:", file=sys.stderr)
        for path, message in failures:
            print(f"  {path}: {message}", file=sys.stderr)
        return 1
    return 0

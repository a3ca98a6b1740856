"""``dias export MODEL --out FILE.pt2``: the trained network as a ``torch.export`` program (no dias_dist needed
to run it).

MODEL: a checkpoint or an MLflow model URI (as ``dias predict``; ``--ensemble`` adds members, exported as one
``MeanProbability`` network). The program takes one batch of tiles, the network's input layout with the
batch dimension dynamic: ``(B, T, P, P)`` for a frames model, ``(B, 1, T, P, P)`` for a sequence model, float32
z-scored frames (the training preprocessing), P = ``--tile`` (default the model's ``eval.patch_size_px``, the
paper's 64) and T = the model's frame count; it returns logits ``(B, C, P, P)`` (vessel probability:
softmax over channels 0..1, channel 1). Load it with ``torch.export.load(FILE).module()``.

After exporting, the program's output is compared with the network's on ``--check-batch`` random tiles
(another batch size than the example's); a difference above 1e-4 in the vessel probability is an error.
TorchScript is not offered: ``torch.jit.trace`` of the ConvGRU models fails its own graph check (the
recurrence's Python control flow), and ONNX export needs packages (``onnx``, ``onnxscript``) the project
does not depend on.
"""
from __future__ import annotations

import argparse
from pathlib import Path

TOLERANCE = 1e-4  # largest accepted |exported - network| vessel probability


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dias_dist.predict.ensemble import add_argument as add_ensemble_argument

    parser.add_argument("model", metavar="MODEL", help="best.pt / final.pt, or runs:/<id>/model, models:/<name>/<v>")
    parser.add_argument("--out", required=True, help="the exported program (.pt2)")
    add_ensemble_argument(parser, "MODEL")
    parser.add_argument("--tile", type=int, default=None, help="tile side P in px (default: the model's eval patch)")
    parser.add_argument("--check-batch", type=int, default=3, help="tiles of the output comparison (default 3)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store of a runs:/ or models:/ MODEL")


def export_network(network, example):
    """``torch.export`` program of ``network`` (eval mode) with a dynamic batch dimension of ``example``."""
    import torch

    batch = torch.export.Dim("batch", min=1, max=65536)
    with torch.no_grad():
        return torch.export.export(network, (example,), dynamic_shapes=({0: batch},))


def max_difference(program_module, network, x) -> float:
    """Largest |vessel probability| difference of the two on input ``x``."""
    import torch

    from dias_dist.models import vessel_probability

    with torch.no_grad():
        return float((vessel_probability(program_module(x)) - vessel_probability(network(x))).abs().max())


def main(args: argparse.Namespace) -> int:
    import torch

    from dias_dist.run.atomic import atomic_write
    from dias_dist.models import input_layout, to_layout
    from dias_dist.predict.ensemble import load_ensemble

    out = Path(args.out)
    if out.suffix != ".pt2":
        raise ValueError(f"--out {out}: name the program FILE.pt2 (torch.export's format)")
    if out.exists() and not out.is_file():
        raise ValueError(f"--out {out} exists and is not a file")
    if args.check_batch < 1:
        raise ValueError(f"--check-batch must be >= 1, got {args.check_batch}")
    model = load_ensemble([args.model, *args.ensemble], tracking_uri=args.tracking_uri)
    tile = model.cfg.eval.patch_size_px if args.tile is None else args.tile
    if not 1 <= tile <= 16384:
        raise ValueError(f"--tile must be in 1..16384, got {tile}")
    network = model.network.eval()
    layout = input_layout(network)
    generator = torch.Generator().manual_seed(0)
    example = to_layout(torch.randn(2, model.num_frames, tile, tile, generator=generator), layout)
    program = export_network(network, example)
    check = to_layout(torch.randn(args.check_batch, model.num_frames, tile, tile, generator=generator), layout)
    difference = max_difference(program.module(), network, check)
    if not difference <= TOLERANCE:
        raise ValueError(f"exported {model.source}: its vessel probability differs from the network's by "
                         f"{difference:.2e} (> {TOLERANCE:g}); not written")
    with atomic_write(out, "wb") as handle:
        torch.export.save(program, handle)
    shape = tuple(example.shape[1:])
    print(f"{out}: torch.export program of {model.source}; input (B, {', '.join(map(str, shape))}) float32, "
          f"logits (B, C, {tile}, {tile}); max |probability - network's| {difference:.1e} on {args.check_batch} tiles")
    return 0

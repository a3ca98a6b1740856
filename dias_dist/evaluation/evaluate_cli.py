"""``dias evaluate CHECKPOINT [--split test] [--out DIR] [key=value ...]``.

Rebuilds the model from the config stored in the checkpoint (overrides apply on top, e.g.
``data.shards=shards/other`` or ``eval.batch_size=256``), evaluates the split with the paper's
protocol (runs under torchrun too: images are spread over ranks, each evaluated once) and prints
the mean ± std table. Outputs (per-image CSV, summary CSV/Markdown, overlays, probability maps)
go to ``--out`` (default: ``<run folder>/eval/<split>``; for an MLflow model URI
``<train.run_dir>/eval-mlflow/<uri>/<split>``).

The stored config runs no command: a ``pipe:`` ``data.shards`` in it is refused unless
``data.shards=...`` is given here (``dias_dist.stored_config``).

``--ensemble CKPT2`` (repeatable): the vessel probabilities of CHECKPOINT and each CKPT2 are averaged and
evaluated as one model (``dias_dist.predict.ensemble``); CHECKPOINT's config sets the data and the protocol.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from dias_dist import dist
from dias_dist.data import timeouts
from dias_dist.data.preprocess import NUM_FRAMES
from dias_dist.evaluation.evaluate import evaluate_split, print_summary
from dias_dist.methods import build_network
from dias_dist.models import cpu_tuning
from dias_dist.predict.ensemble import add_argument as add_ensemble_argument
from dias_dist.predict.ensemble import ensemble_of
from dias_dist.predict.model import TrainedModel, load_trained_model
from dias_dist.run import checkpoint
from dias_dist.run.artifacts import is_mlflow_uri, load_payload
from dias_dist.stored_config import from_stored


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a .pt file written by the trainer (best.pt, final.pt, last.pt), or an "
                                           "MLflow model URI (runs:/<id>/model, models:/<name>/<version>)")
    add_ensemble_argument(parser, "CHECKPOINT")
    parser.add_argument("--split", default="test", help="training | validation | test (default: test)")
    parser.add_argument("--out", default="", help="output folder (default: <run folder>/eval/<split>)")
    parser.add_argument("--no-images", action="store_true", help="skip overlays and probability maps")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store of a runs:/ or models:/ URI "
                                                            "(default: $MLFLOW_TRACKING_URI, else runs/mlflow.db)")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides such as data.shards=...")


def share_inference_choice(model, device, *, batch: int, tile: int) -> dict[str, str]:
    """Rank 0 chooses (measures, or reads from its cache) the no-grad ConvGRU arrangement for this
    evaluation's tiles (batch, NUM_FRAMES, tile, tile) and every rank applies rank 0's choice, as
    training does; the arrangements compute alike, so this is about every rank running the fast one.
    Returns ``cpu_tuning.tune_network``'s tags ({} on a GPU or with nothing measured)."""
    mine = cpu_tuning.tune_for_inference(model, device, frames=NUM_FRAMES, batch=batch, tile=tile) \
        if dist.is_main() else None
    tags = dist.broadcast_object(mine) or {}
    for value in tags.values():
        cpu_tuning.apply(value.split()[0], grad=False)
    return tags


def main(args: argparse.Namespace) -> int:
    payload, _ = load_payload(args.checkpoint, args.tracking_uri)
    if "config" not in payload or "model" not in payload:
        raise ValueError(f"checkpoint {args.checkpoint} lacks 'config' or 'model'; was it written by the trainer?")
    cfg = from_stored(payload["config"], args.checkpoint, args.overrides, reads_data=True)
    timeouts.set_limits(cfg.data.read_timeout_s, cfg.data.download_budget_s)
    device = dist.init(cfg.dist, cfg.train.device)
    try:
        _, model = build_network(cfg.model, cfg.method)
        checkpoint.load_weights(model, payload["model"], args.checkpoint)
        title = f"{cfg.model.name} ({cfg.method.name}), step {payload.get('step', '?')}"
        if args.ensemble:  # the probabilities of all the models averaged (CHECKPOINT's config evaluates them)
            members = [TrainedModel(model, cfg, args.checkpoint)] + [
                load_trained_model(spec, tracking_uri=args.tracking_uri) for spec in args.ensemble]
            model = ensemble_of(members).network
            title = f"ensemble of {len(members)} models ({cfg.model.name}, {cfg.method.name} first)"
        model.to(device).eval()
        tags = share_inference_choice(model, device, batch=cfg.eval.batch_size, tile=cfg.eval.patch_size_px)
        if tags and dist.is_main():
            print(f"[dias] ConvGRU arrangement on this CPU: {tags['convgru_eval']}", flush=True)
        if args.out:
            out_dir = Path(args.out)
        elif is_mlflow_uri(args.checkpoint):
            out_dir = Path(cfg.train.run_dir) / "eval-mlflow" / re.sub(r"[^\w.-]+", "_", args.checkpoint) / args.split
        else:
            out_dir = Path(args.checkpoint).resolve().parent.parent / "eval" / args.split
        rows = evaluate_split(model, cfg.data.shards, args.split, cfg.eval, device=device, out_dir=out_dir,
                              write_images=not args.no_images, amp=cfg.train.bf16_autocast(device),
                              progress=None if dist.is_main() else False, cache_dir=cfg.data.cache_dir,
                              verify=cfg.data.verify)
        print_summary(rows, f"{title}, {args.split} split of {cfg.data.shards}"
                            + (", inside each image's field of view" if any(r.get("fov") for r in rows) else ""))
        if dist.is_main():
            print(f"tables, overlays and probability maps: {out_dir}")
    finally:
        dist.teardown()
    return 0

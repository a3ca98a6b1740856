"""Helpers of the training loop that are not the loop: run folder, resume, seeding, data stream,
evaluation hooks, run tags and curve plots. Rank-0-only side effects are marked as such.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import torch

from dias_dist import checkpoint, dist
from dias_dist.config import Config, derive, save_config


def derived_seed(seed: int, *parts: int) -> int:
    """Deterministic 63-bit seed from ``seed`` and integer parts (rank, step...)."""
    digest = hashlib.sha256(json.dumps([int(seed), *map(int, parts)]).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def resolve_run(cfg: Config) -> tuple[Config, Path, Path | None]:
    """Return (cfg with train.run_name filled, run folder, checkpoint to resume from or None).

    run_name "" -> ``<model>-<method>-<yymmdd_HHMMSS>`` chosen on rank 0 and broadcast.
    resume: "never" | "auto" (``<run>/checkpoints/last.pt`` of ``train.run_name``, or of the newest
    ``<model>-<method>-*`` run when no name is given; a fresh run when none exists) | a path.
    """
    t = cfg.train
    root = Path(t.run_dir)
    name, resume_from = t.run_name, None
    if t.resume not in ("never", "auto"):
        resume_from = Path(t.resume)
        if not resume_from.is_file():
            raise ValueError(f"train.resume = {t.resume!r}: no such checkpoint file (or use never | auto)")
        name = name or resume_from.parent.parent.name
    elif t.resume == "auto":
        if not name:
            prefix = f"{cfg.model.name}-{cfg.method.name}-"
            candidates = sorted(p for p in root.glob(prefix + "*") if (p / "checkpoints" / "last.pt").is_file())
            name = candidates[-1].name if candidates else ""
        if name and (root / name / "checkpoints" / "last.pt").is_file():
            resume_from = root / name / "checkpoints" / "last.pt"
    if not name:
        name = dist.broadcast_object(f"{cfg.model.name}-{cfg.method.name}-{time.strftime('%y%m%d_%H%M%S')}")
    return derive(cfg, {"train.run_name": name}, "resolved config"), root / name, resume_from


def prepare_run_folder(cfg: Config, run_dir: Path) -> None:
    """Rank 0: create ``run_dir/checkpoints`` and write the resolved ``config.yaml``."""
    if dist.is_main():
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    dist.barrier()


def default_sources(cfg: Config) -> list:
    """The training source described by ``cfg.data`` (labelled training split)."""
    from dias_dist.data.loader import TrainSource

    return [TrainSource(cfg.data.shards, split="training", augment=cfg.data.augment,
                        target=cfg.data.target, num_sequences=cfg.data.num_labeled)]


TARGET_KINDS = {"label": "dense", "pseudo": "dense", "scribble_rdfa": "scribble", "scribble_sale": "scribble"}


def check_targets(method, sources: list) -> None:
    """ValueError when a source's target map does not suit the method (a scribble method trained on
    dense labels would silently become supervised; a dense method would see 255s)."""
    for source in sources:
        kind = TARGET_KINDS.get(source.target)
        if kind is None:
            raise ValueError(f"data.target={source.target!r} is not a target map; valid: {', '.join(TARGET_KINDS)}")
        if kind != method.target_kind:
            valid = [t for t, k in TARGET_KINDS.items() if k == method.target_kind]
            raise ValueError(f"method {type(method).__name__} learns from {method.target_kind} targets but "
                             f"data.target={source.target!r} is {kind}; use one of {', '.join(valid)}")


def train_stream(cfg: Config, sources: list, *, micro_batch: int, step: int):
    """Infinite iterator of micro-batches for this rank, re-seeded from (train.seed, step).

    The loader mixes rank and worker into the seed itself, so (seed, rank, step) fixes every
    patch from here on: a run resumed at ``step`` sees exactly what the uninterrupted run saw.
    """
    from dias_dist.data.loader import train_batches

    d = cfg.data
    return iter(train_batches(sources, batch_size=micro_batch, patch_size=d.patch_size_px,
                              patches_per_sequence=d.patches_per_sequence, shuffle_buffer=d.shuffle_buffer,
                              num_workers=d.num_workers, seed=derived_seed(cfg.train.seed, step) % (2**31),
                              on_corrupt=d.on_corrupt, verify=d.verify))


def evaluate_summary(model: torch.nn.Module, cfg: Config, split: str, *, device: torch.device,
                     out_dir: Path | None, write_images: bool) -> tuple[list, dict]:
    """Evaluate ``split`` with the paper's protocol on every rank; return (rows, {metric: (mean, std)})."""
    from dias_dist.evaluation.evaluate import evaluate_split
    from dias_dist.evaluation.tables import summarize

    rows = evaluate_split(model, cfg.data.shards, split, cfg.eval, device=device, out_dir=out_dir,
                          write_images=write_images, amp=cfg.train.bf16_autocast(device),
                          progress=cfg.train.progress and dist.is_main())  # switches eval mode itself
    return rows, summarize(rows)


def broadcast_model_state(path: Path) -> dict:
    """Rank 0 reads the model weights of checkpoint ``path``; every rank gets them (no shared FS needed)."""
    return dist.broadcast_object(checkpoint.model_state(path) if dist.is_main() else None)


def run_tags(cfg: Config, *, device: torch.device, num_params: int) -> dict:
    """git SHA, shard manifest hash, world size, device and parameter count (rank 0 logs them)."""
    manifest = Path(cfg.data.shards) / "manifest.json"
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return {
        "git_sha": sha or "unknown",
        "shard_manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else "missing",
        "world_size": dist.world_size(),
        "device": str(device) if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})",
        "num_params": num_params,
    }


def plot_curves(records: list[dict], out_dir: Path) -> list[Path]:
    """Rank 0: loss/lr curves and validation metric curves from metrics.jsonl records, as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, title, file_name in (("train", "training loss", "loss_curve.png"), ("val", "validation", "val_curve.png")):
        records_of_kind = [r for r in records if r["kind"] == kind]
        keys = sorted({k for r in records_of_kind for k in r if k.startswith(("loss", "val_"))})
        if not keys:
            continue
        # Unbounded quantities (VC, a ratio of component counts) get their own panel so that the
        # [0, 1] metrics stay readable.
        unbounded = [k for k in keys if k.endswith("_vc")]
        panels = [[k for k in keys if k not in unbounded]] + ([unbounded] if unbounded else [])
        fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
        for ax, panel in zip(axes[0], panels):
            for key in panel:
                points = [(r["step"], r[key]) for r in records_of_kind if key in r]
                ax.plot([p[0] for p in points], [p[1] for p in points], label=key,
                        marker="." if kind == "val" else None)
            ax.set_xlabel("step")
            ax.set_title(title + (" (VC: closer to 1 is better)" if panel is not panels[0] else ""))
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / file_name, dpi=100)
        plt.close(fig)
        written.append(out_dir / file_name)
    return written

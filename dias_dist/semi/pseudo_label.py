"""RPST pseudo-labelling: the teacher's hard labels on the unlabelled split, written as a new shard set.

Every rank labels its own disjoint share of the sequences (``dias_dist.data.loader.eval_sequences``)
with the paper's evaluation protocol (``dias_dist.evaluation.tiling``: 64/32 tiles, zero padding,
overlap-averaged softmax vessel probability) and a hard threshold (``eval.threshold``, 0.5: no
confidence filtering, no test-time augmentation, as the reference). Only the labels travel between
ranks (as PNG bytes); rank 0 copies each sequence's ``frames.npy`` and ``meta.json`` byte for byte
from the source shard, adds ``pseudo.png`` (0/255) and writes the new set::

    OUT/manifest.json            splits.<split>.provenance = teacher run id, checkpoint, round, ...
    OUT/<split>/<split>-000000.tar

so that ``TrainSource(OUT, split, target="pseudo", is_pseudo=True)`` trains on it.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dias_dist import dist
from dias_dist.config import EvalConfig
from dias_dist.data.loader import eval_sequences
from dias_dist.data import location
from dias_dist.data.shards import open_shard, png_bytes, read_manifest, split_entry, write_samples
from dias_dist.evaluation.evaluate import model_probability_fn
from dias_dist.progress import bar

PSEUDO_MAP = "pseudo"


def selected_keys(shard_dir: str | Path, split: str, num_sequences: int) -> list[str]:
    """Sorted sample keys of ``split``; the first ``num_sequences`` of them when > 0 (reference ``NUM_UNLABEL``)."""
    keys = sorted(k for shard in split_entry(shard_dir, split)["shards"] for k in shard["keys"])
    if num_sequences < 0 or num_sequences > len(keys):
        raise ValueError(f"rpst.num_unlabeled={num_sequences}: split {split!r} of {shard_dir} has {len(keys)} "
                         f"sequences (use 0 for all)")
    return keys[:num_sequences] if num_sequences else keys


def label_local_sequences(model: nn.Module, shard_dir: str | Path, split: str, eval_cfg: EvalConfig, *,
                          device: torch.device, keys: list[str], amp: bool = False,
                          progress: bool | None = False) -> dict[str, bytes]:
    """Hard pseudo labels of this rank's share of ``keys``: {key: PNG bytes of uint8 (H, W) in {0, 255}}.

    The vessel probability float32 (H, W) comes from ``evaluation.evaluate.model_probability_fn``
    (the evaluation protocol) on the z-scored frames float32 (T, H, W); label = probability >=
    ``eval_cfg.threshold``.
    """
    labels: dict[str, bytes] = {}
    with model_probability_fn(model, eval_cfg, device, amp) as probability:
        for sample in bar(eval_sequences(shard_dir, split, num_workers=0, keys=set(keys)),
                          desc=f"pseudo-label {split}", unit="img", enabled=progress, leave=False):
            hard_HW = (probability(sample["image"]) >= eval_cfg.threshold).astype(np.uint8)
            labels[sample["key"]] = png_bytes(hard_HW * 255)
    return labels


def _pseudo_samples(source_dir: str, split: str, labels: dict[str, bytes], provenance: dict):
    """Samples of the new set: source frames.npy and meta.json (plus the provenance) + pseudo.png.
    ``source_dir`` is a folder or a URL: each source shard is opened once by ``open_shard``."""
    for shard in split_entry(source_dir, split)["shards"]:
        reader = None
        for key in shard["keys"]:
            if key not in labels:
                continue
            if reader is None:
                reader = open_shard(location.join(source_dir, shard["name"]), shard,
                                    keys=[k for k in shard["keys"] if k in labels])
            members = reader.members(key)
            meta = reader.meta(key)
            meta["pseudo_label"] = provenance
            yield {"__key__": key, "frames.npy": bytes(members["frames.npy"]), f"{PSEUDO_MAP}.png": labels[key],
                   "meta.json": json.dumps(meta, sort_keys=True).encode()}


def write_pseudo_shards(source_dir: str | Path, split: str, labels: dict[str, bytes], out_dir: str | Path,
                        provenance: dict) -> dict:
    """Rank 0: write the pseudo-labelled shard set of ``split`` to ``out_dir``; returns its manifest.

    provenance (recorded in the manifest's split entry and in every sample's meta.json) should name
    the teacher's MLflow run id, its checkpoint and the RPST round.
    """
    source_dir, out_dir = _recorded(source_dir), Path(out_dir)
    if location.is_local(source_dir) and out_dir.resolve() == Path(source_dir).resolve():
        raise ValueError(f"pseudo labels must go to a new shard set, not into the source {source_dir}")
    source_manifest = read_manifest(source_dir)
    return write_samples(_pseudo_samples(source_dir, split, labels, provenance), out_dir, split,
                         num_samples=len(labels), provenance=provenance,
                         manifest_fields={"preprocessing": source_manifest.get("preprocessing", {}),
                                          "source": source_dir})


def pseudo_label_split(model: nn.Module, shard_dir: str | Path, split: str, out_dir: str | Path, eval_cfg: EvalConfig,
                       *, device: torch.device, provenance: dict, num_sequences: int = 0, amp: bool = False,
                       progress: bool | None = False) -> dict:
    """The whole stage on every rank: label the shares, gather the PNGs, rank 0 writes ``out_dir``.

    Returns (on every rank) {"out_dir", "num_sequences", "vessel_fraction", "seconds"}; vessel_fraction
    is the share of pixels labelled vessel over all pseudo labels.
    """
    start = time.perf_counter()
    keys = selected_keys(shard_dir, split, num_sequences)
    local = label_local_sequences(model, shard_dir, split, eval_cfg, device=device, keys=keys, amp=amp,
                                  progress=progress)
    parts = dist.gather_object(local, dst=0)  # the PNGs go to rank 0 only, the one writer
    stats = None
    if dist.is_main():
        try:
            labels = _merge_labels(parts, keys, f"{shard_dir}/{split}")
            provenance = {**provenance, "source_shards": _recorded(shard_dir), "source_split": split,
                          "threshold": eval_cfg.threshold, "patch_size_px": eval_cfg.patch_size_px,
                          "stride_px": eval_cfg.stride_px, "num_sequences": len(keys),
                          "world_size": dist.world_size(), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
            write_pseudo_shards(shard_dir, split, labels, out_dir, provenance)
            vessel_fraction = float(np.mean([_vessel_fraction(png) for png in labels.values()]))
            stats = {"out_dir": str(out_dir), "num_sequences": len(keys), "vessel_fraction": vessel_fraction}
        except Exception as error:  # every rank raises, none waits in a collective for rank 0
            stats = {"error": f"{type(error).__name__}: {error}"}
            dist.broadcast_object(stats)
            raise
    stats = dist.broadcast_object(stats)
    if "error" in stats:
        raise RuntimeError(f"pseudo-labelling failed on rank 0: {stats['error']}")
    dist.barrier()
    stats["seconds"] = time.perf_counter() - start
    return stats


def _recorded(shard_dir: str | Path) -> str:
    """How a source set is recorded: an absolute path for a folder, a URL as it is."""
    return str(Path(shard_dir).resolve()) if location.is_local(shard_dir) else str(shard_dir)


def _merge_labels(parts: list[dict[str, bytes]], keys: list[str], where: str) -> dict[str, bytes]:
    """One {key: PNG} from the ranks' parts; RuntimeError for a key labelled twice or not at all."""
    labels: dict[str, bytes] = {}
    for part in parts:
        duplicated = set(part) & set(labels)
        if duplicated:  # the loader must give each sequence to exactly one rank
            raise RuntimeError(f"pseudo-labelled on more than one rank: {sorted(duplicated)[:5]}")
        labels.update(part)
    missing = sorted(set(keys) - set(labels))
    if missing:
        raise RuntimeError(f"no rank pseudo-labelled {missing[:5]} of {where}")
    return labels


def _vessel_fraction(png: bytes) -> float:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        return float((np.asarray(image) >= 128).mean())

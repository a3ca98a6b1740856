"""A trained model for prediction: the network rebuilt from the config that travels with its
weights, from a checkpoint file or an MLflow model URI, and the probability map of one series.

``series_probability`` is the whole prediction path: the frames go through the training
preprocessing (``preprocess_scaled``: resample to the model's T, z-score, float16 as in the
shards) and the evaluation's sliding window (``model_probability_fn``, the function
``dias evaluate`` uses), so a series predicted here gets the map ``dias evaluate`` computes for it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dias_dist.config import Config
from dias_dist.data.preprocess import NUM_FRAMES, preprocess_scaled
from dias_dist.evaluation.evaluate import model_probability_fn
from dias_dist.methods import build_network
from dias_dist.run import checkpoint
from dias_dist.run.artifacts import load_payload
from dias_dist.stored_config import from_stored


@dataclass
class TrainedModel:
    """network: eval mode, on CPU until moved; cfg: the resolved training config."""

    network: nn.Module
    cfg: Config
    source: str
    step: int | None = None

    @property
    def num_frames(self) -> int:
        """The T the network was trained on (frames are resampled to it)."""
        return int(self.cfg.model.params.get("num_frames", NUM_FRAMES))


def from_payload(payload: dict, source: str, overrides: list[str] | tuple = ()) -> TrainedModel:
    """Rebuild the network of a checkpoint payload (``model`` weights + ``config``). Prediction reads
    no shards: a stored ``data.shards`` / ``data.cache_dir`` that ``stored_config`` refuses (a
    ``pipe:`` command) is replaced by the default in ``cfg``, never run."""
    if "config" not in payload or "model" not in payload:
        raise ValueError(f"{source} lacks 'config' or 'model'; was it written by dias_dist training?")
    cfg = from_stored(payload["config"], source, overrides, reads_data=False)
    _, network = build_network(cfg.model, cfg.method)
    checkpoint.load_weights(network, payload["model"], source)
    step = payload.get("step")
    return TrainedModel(network.eval(), cfg, source, None if step is None else int(step))


def load_trained_model(spec: str, *, tracking_uri: str | None = None, overrides=()) -> TrainedModel:
    """A checkpoint file (``best.pt``, ``final.pt``, DDP or DeepSpeed) or an MLflow model URI."""
    payload, source = load_payload(spec, tracking_uri)
    return from_payload(payload, source, overrides)


def series_probability(model: TrainedModel, frames_thw: np.ndarray, *, device: torch.device | str = "cpu",
                       tile: int | None = None, stride: int | None = None, batch_size: int | None = None,
                       amp: bool = False, compile: bool | None = None, blend: str | None = None,
                       tta: bool = False) -> np.ndarray:
    """Vessel probability float32 (H, W) of one series.

    frames_thw: float (T, H, W), any T >= 1, any H, W; 8-bit frames / 255 as the readers give them
    (the z-score makes any positive linear scale give the same map). tile / stride / batch_size:
    sliding-window tiles (default: the model's ``eval`` settings, i.e. the paper's 64 / 32; tile 0
    = the whole image at once). amp: bf16 autocast on ``device``. compile: ``torch.compile`` the
    forward (default: the model's ``eval.compile``). blend: tile overlap, "uniform" | "gaussian"
    (default: the model's ``eval.blend``, uniform). tta: the mean of the maps of the frames as given,
    flipped left-right, flipped up-down and both (each flipped back; 4x the time).
    """
    frames = np.asarray(frames_thw, dtype=np.float64)
    if frames.ndim != 3 or 0 in frames.shape:
        raise ValueError(f"a series must be a (T, H, W) array, got shape {frames.shape}")
    if not np.all(np.isfinite(frames)):
        raise ValueError(f"series holds {int(np.count_nonzero(~np.isfinite(frames)))} NaN or infinite values")
    image, _ = preprocess_scaled(frames, model.num_frames)  # float16, as the shards store it
    eval_cfg = model.cfg.eval
    updates = {k: v for k, v in (("patch_size_px", tile), ("stride_px", stride), ("batch_size", batch_size),
                                 ("compile", compile), ("blend", blend)) if v is not None}
    if tile == 0 and stride is None:
        updates["stride_px"] = 1  # ignored by the whole-image tile
    eval_cfg = dataclasses.replace(eval_cfg, **updates)
    model.network.to(device)
    image = image.astype(np.float32)
    with model_probability_fn(model.network, eval_cfg, device, amp) as probability:
        if not tta:
            return probability(image)
        total = np.zeros(image.shape[1:], np.float64)
        for axes in ((), (2,), (1,), (1, 2)):
            flipped = np.ascontiguousarray(np.flip(image, axes)) if axes else image
            prob = probability(flipped)
            total += np.flip(prob, tuple(a - 1 for a in axes)) if axes else prob
        return (total / 4).astype(np.float32)

"""Ensembles: several trained models whose vessel probabilities are averaged (``dias predict MODEL
--ensemble MODEL2 ...``, ``dias evaluate CKPT --ensemble CKPT2 ...``, the folds of ``tune.py folds``).

``MeanProbability`` is one ``nn.Module`` made of the members, so everything that runs a network (the
paper's sliding window, ``dias evaluate``, ``series_probability``, the trainer's evaluation) runs an
ensemble unchanged: for a tile x (N, T, P, P) it returns the 2-channel "logits"
``[log(1 - p), log(p)]`` of p = the mean over members of each member's vessel probability
(``models.vessel_probability``, the limited softmax); the limited softmax of those is p again. Because
the sliding window averages overlapping tiles linearly, the ensemble's map is the mean of the members'
maps (up to float rounding, ~1e-7).

Members must take the same number of frames (``model.params.num_frames``); their input layouts may
differ (each gets its own). The ensemble's config (tiling, threshold, preprocessing) is the first member's.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from dias_dist.models import input_layout, to_layout, vessel_probability
from dias_dist.predict.model import load_trained_model

EPS = 1e-12  # log(0) guard: p in [EPS, 1 - EPS] changes a probability by at most 1e-12


class MeanProbability(nn.Module):
    """``forward(x (N, T, P, P)) -> (N, 2, P, P)`` log-probabilities [background, vessel] of the members'
    mean vessel probability. ``input_layout = "frames"``; each member gets ``to_layout`` of its own."""

    input_layout = "frames"

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one model")
        self.members = nn.ModuleList(members)
        self.layouts = [input_layout(m) for m in members]

    def forward(self, x_NTPP: torch.Tensor) -> torch.Tensor:
        prob = torch.stack([vessel_probability(member(to_layout(x_NTPP, layout)))
                            for member, layout in zip(self.members, self.layouts)]).mean(0)
        prob = prob.clamp(EPS, 1.0 - EPS)
        return torch.stack([torch.log1p(-prob), torch.log(prob)], dim=1)


def ensemble_of(models: list, sources: list[str] | None = None):
    """One ``TrainedModel`` whose network is ``MeanProbability`` of ``models`` (``TrainedModel``\\ s);
    a single model is returned as it is. Raises ValueError naming the models when their frame counts differ."""
    if len(models) == 1:
        return models[0]
    frames = {m.source: m.num_frames for m in models}
    if len(set(frames.values())) > 1:
        raise ValueError("ensemble members take different numbers of frames ("
                         + ", ".join(f"{s}: T={t}" for s, t in frames.items()) + "); average models of one T")
    first = models[0]
    network = MeanProbability([m.network for m in models]).eval()
    source = "ensemble(" + ", ".join(m.source for m in models) + ")"
    return dataclasses.replace(first, network=network, source=source, step=None)


def load_ensemble(specs: list[str], *, tracking_uri: str | None = None, overrides=()):
    """``load_trained_model`` of each checkpoint / MLflow URI in ``specs``, averaged (``ensemble_of``)."""
    return ensemble_of([load_trained_model(s, tracking_uri=tracking_uri, overrides=overrides) for s in specs])


def add_argument(parser, what: str) -> None:
    """``--ensemble MODEL`` (repeatable) on a CLI whose main model is ``what``."""
    parser.add_argument("--ensemble", action="append", default=[], metavar="MODEL",
                        help=f"another model (checkpoint or MLflow URI; repeatable) averaged with {what}: "
                             "the vessel probabilities of all of them are averaged (an ensemble, e.g. the "
                             "best.pt of each fold of `tune.py folds`)")

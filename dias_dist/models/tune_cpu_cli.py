"""``dias tune-cpu CONFIG [key=value ...]``: measure, once per machine, which ConvGRU arrangement runs
the config's network fastest at its training and evaluation shapes (``dias_dist.models.cpu_tuning``),
and cache the choice where training, evaluation and prediction find it."""
from __future__ import annotations

import argparse

import torch

from dias_dist.config import load_config
from dias_dist.data.preprocess import NUM_FRAMES
from dias_dist.engine import micro_batch_size
from dias_dist.methods import build_network
from dias_dist.models import input_layout, to_layout
from dias_dist.models.cpu_tuning import cache_file, has_convgru, machine_key, tune_network


def examples_for(cfg, model) -> dict[bool, torch.Tensor]:
    """{True: a training micro-batch, False: an evaluation batch of tiles} in the model's input layout."""
    micro = micro_batch_size(cfg.train.batch_size, cfg.train.grad_accum)
    side, tile = cfg.data.patch_size_px, cfg.eval.patch_size_px
    layout = input_layout(model)
    return {True: to_layout(torch.randn(micro, NUM_FRAMES, side, side), layout),
            False: to_layout(torch.randn(cfg.eval.batch_size, NUM_FRAMES, tile, tile), layout)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="training config whose network and shapes are measured")
    parser.add_argument("overrides", nargs="*", default=[], help="dotted overrides such as train.batch_size=8")


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    _, model = build_network(cfg.model, cfg.method)
    if not has_convgru(model):
        print(f"{cfg.model.name} has no ConvGRU: nothing to choose")
        return 0
    tags = tune_network(model, examples_for(cfg, model))
    print(f"{machine_key()}\n" + "\n".join(f"  {key}: {value}" for key, value in tags.items())
          + f"\ncached in {cache_file()}")
    return 0

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
from dias_dist.models.cpu_tuning import cache_file, examples_for, has_convgru, machine_key, tune_network


def examples_for_config(cfg, model) -> dict[bool, torch.Tensor]:
    """The training micro-batch and the evaluation batch of tiles the config gives ``model``."""
    return examples_for(model, frames=NUM_FRAMES, train_batch=micro_batch_size(cfg.train.batch_size, cfg.train.grad_accum),
                        patch=cfg.data.patch_size_px, eval_batch=cfg.eval.batch_size, tile=cfg.eval.patch_size_px)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="training config whose network and shapes are measured")
    parser.add_argument("overrides", nargs="*", default=[], help="dotted overrides such as train.batch_size=8")


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    _, model = build_network(cfg.model, cfg.method)
    if not has_convgru(model):
        print(f"{cfg.model.name} has no ConvGRU: nothing to choose")
        return 0
    tags = tune_network(model, examples_for_config(cfg, model))
    print(f"{machine_key()}\n" + "\n".join(f"  {key}: {value}" for key, value in tags.items())
          + f"\ncached in {cache_file()}")
    return 0

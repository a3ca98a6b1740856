"""``dias models``: every registered model with its input layout and full-size parameter count.

A header, then one model a line: ``name  layout  parameters``. The full-size (default) configuration of each model is
built on the ``meta`` device, so counting even the 100 M-parameter models allocates no memory.
"""
from __future__ import annotations

import argparse

import torch

from . import MODELS, count_parameters


def model_table() -> list[tuple[str, str, int]]:
    """(name, input layout, parameter count of the default config) for every registered model, by name."""
    rows = []
    for name in sorted(MODELS):
        with torch.device("meta"):
            model = MODELS[name]()
        rows.append((name, MODELS[name].input_layout, count_parameters(model)))
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options: the listing always shows every registered model."""


def main(args: argparse.Namespace) -> int:
    rows = model_table()
    name_width = max(len(name) for name, _, _ in rows + [("model", "", 0)])
    print(f"{'model':<{name_width}}  {'layout':<8}  {'parameters':>10}")
    for name, layout, count in rows:
        print(f"{name:<{name_width}}  {layout:<8}  {count:>10}")
    return 0

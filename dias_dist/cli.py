"""The ``dias`` command line: one subcommand per capability, each living next to the code it drives.

Every subcommand module exposes ``add_arguments(parser)`` and ``main(args) -> int``; the table
below is the registry (imports are lazy so that ``dias --help`` stays fast).
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module, one-line help)
    "phantom": ("dias_dist.data.phantom_cli", "generate a synthetic DSA data set in the DIAS release layout"),
    "shard": ("dias_dist.data.shard_cli", "pack a DIAS-layout folder into WebDataset shards"),
    "scribbles": ("dias_dist.data.scribbles_cli", "generate RDFA scribbles for a fully annotated data set"),
    "baseline": ("dias_dist.evaluation.baseline", "evaluate the MinIP-threshold baseline on a split of a shard set"),
    "score": ("dias_dist.evaluation.score", "score a folder of probability maps against label PNGs"),
    "models": ("dias_dist.models.listing", "list registered models with input layout and parameter count"),
    "train": ("dias_dist.train_cli", "train in this process (use torchrun launch/train.py for several)"),
    "evaluate": ("dias_dist.evaluation.evaluate_cli", "evaluate a checkpoint on a split"),
    "predict": ("dias_dist.predict.cli", "vessel masks for your own series (frames, DICOM, .npy)"),
    "report": ("dias_dist.report", "Table II/III-style comparison of finished MLflow runs"),
    "rpst": ("dias_dist.semi.rpst_cli", "semi-supervised random-patch self-training (teacher + rounds)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dias", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser = build_parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_usage(sys.stderr)
            print(f"dias: unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    sub = argparse.ArgumentParser(prog=f"dias {name}", description=help_text)
    module.add_arguments(sub)
    args = sub.parse_intermixed_args(rest)  # options may follow key=value overrides
    try:
        return int(module.main(args) or 0)
    except ValueError as err:  # user errors: one clear line, no traceback
        print(f"dias {name}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

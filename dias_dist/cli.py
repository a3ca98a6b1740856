"""The ``dias`` command line: one argparse subcommand per capability, each living next to the code it drives.

Every command module exposes ``add_arguments(parser)`` and ``main(args) -> int``; ``COMMANDS`` below
names them and gives each a one-line help and one example. A command's module (and with it torch,
MLflow, ...) is imported only when that command runs or its help is asked for, so ``dias --version``
and ``dias --help`` answer at once (``tests/test_cli_speed.py``).
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from types import ModuleType

from dias_dist import __version__
from dias_dist.run.folder import describe_os_error  # standard library only: dias --version stays fast

COMMANDS: dict[str, tuple[str, str, str]] = {
    # name: (module, one-line help, one example)
    "phantom": ("dias_dist.data.phantom_cli", "generate a synthetic DSA data set in the DIAS release layout",
                "dias phantom data/phantom --size 256 --train 8 --val 2 --test 4"),
    "import": ("dias_dist.data.import_cli", "a 2D vessel data set (images, masks, field of view) into the release layout",
               "dias import data/DRIVE data/drive --masks vessel_masks --fov fov_masks --val 2"),
    "shard": ("dias_dist.data.shard_cli", "pack a DIAS-layout folder into WebDataset shards",
              "dias shard data/phantom shards/demo"),
    "scribbles": ("dias_dist.data.scribbles_cli", "generate RDFA scribbles for a fully annotated data set",
                  "dias scribbles data/phantom --split training"),
    "baseline": ("dias_dist.evaluation.baseline", "evaluate the MinIP-threshold baseline on a split of a shard set",
                 "dias baseline shards/demo --split test --out runs/baseline"),
    "score": ("dias_dist.evaluation.score", "score a folder of probability maps against label PNGs",
              "dias score predictions/ data/phantom/test/labels"),
    "tune-cpu": ("dias_dist.models.tune_cpu_cli", "measure which ConvGRU arrangement is fastest on this CPU (cached)",
                 "dias tune-cpu configs/full/vss_net.yaml train.device=cpu"),
    "models": ("dias_dist.models.listing", "list registered models with input layout and parameter count", "dias models"),
    "train": ("dias_dist.train_cli", "train in this process (several processes: torchrun -m dias_dist.train)",
              "dias train configs/debug.yaml train.max_steps=2"),
    "evaluate": ("dias_dist.evaluation.evaluate_cli", "evaluate a checkpoint on a split",
                 "dias evaluate runs/debug/NAME/checkpoints/best.pt --split test"),
    "predict": ("dias_dist.predict.cli", "vessel masks for your own series (frames, DICOM, .npy)",
                "dias predict runs:/RUN_ID/model my_series.dcm --out pred/"),
    "export": ("dias_dist.predict.export_cli", "the trained network as a torch.export program (.pt2)",
               "dias export runs/debug/NAME/checkpoints/best.pt --out vss_net.pt2"),
    "report": ("dias_dist.report", "Table II/III-style comparison of finished MLflow runs",
               "dias report dias-supervised --metric dsc"),
    "rpst": ("dias_dist.semi.rpst_cli", "semi-supervised random-patch self-training (teacher + rounds)",
             "dias rpst configs/semi/rpst_cpu.yaml data.num_labeled=3"),
}


def command_module(name: str) -> ModuleType:
    """The module behind command ``name`` (imported now)."""
    return importlib.import_module(COMMANDS[name][0])


def build_parser(only: str | None = None) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``dias`` parser and its subcommand parsers by name. Every subcommand parser gets its
    arguments (its module is imported) unless ``only`` names one command: then only that one does."""
    parser = argparse.ArgumentParser(prog="dias", description="DSA artery segmentation: data, training, evaluation.",
                                     epilog="example: dias train configs/debug.yaml  (dias COMMAND -h for one command)")
    parser.add_argument("--version", action="version", version=f"dias {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = {}
    for name, (module, help_text, example) in COMMANDS.items():
        commands[name] = sub.add_parser(name, help=help_text, description=help_text, epilog=f"example: {example}")
        if only is None or name == only:
            command_module(name).add_arguments(commands[name])
    return parser, commands


# OSErrors that are about the machine, not the code, even when they name no file (a write to a full disk)
_MACHINE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)


def os_error_line(err: OSError, args: argparse.Namespace) -> str | None:
    """One line naming the path and the cause of ``err``, or None when it is no file system fault
    (no file named and not a full disk / permission error: it stays a traceback, it may be a bug).
    A fault that names no file names the command's output folder (``out`` / ``out_dir``)."""
    if err.filename is None and err.errno not in _MACHINE_ERRNOS:
        return None
    output = getattr(args, "out", None) or getattr(args, "out_dir", None)
    line = describe_os_error(err, f"{output} (writing into it)" if output else "", run_dir=False)
    return line + (f" (and {err.filename2})" if err.filename2 else "")


def run_command(module: ModuleType, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    """Parse ``argv`` with ``parser`` (options may follow key=value overrides) and run ``module.main``;
    a ``ValueError`` (a user error) becomes one clear line and exit status 2, an ``OSError`` of the
    file system (a path under a file, a read-only folder, a full disk: ``os_error_line``) one line
    naming the path and exit status 1."""
    args = parser.parse_intermixed_args(argv)
    try:
        return int(module.main(args) or 0)
    except ValueError as err:
        if not (getattr(err, "same_on_every_rank", False) and os.environ.get("LOCAL_RANK", "0") != "0"):
            print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        line = os_error_line(err, args)
        if line is None:
            raise
        print(f"{parser.prog}: error: {line}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    parser, commands = build_parser(only=chosen or "")
    if chosen:
        return run_command(command_module(chosen), commands[chosen], argv[1:])
    if argv and not argv[0].startswith("-"):
        parser.print_usage(sys.stderr)
        print(f"dias: unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    parser.parse_args(argv)  # -h / --version exit here; a bad option is an argparse error (exit 2)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())

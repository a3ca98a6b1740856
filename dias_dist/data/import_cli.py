"""``dias import SRC OUT``: a 2D vessel data set (images, masks, field-of-view masks) into the DIAS
release layout as single-frame sequences (``dias_dist.data.import_2d``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .import_2d import CHANNELS, SPLIT_RULES, import_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="source folder (with --split folders: holding the train and test folders)")
    parser.add_argument("out", help="output folder in the DIAS release layout (must not exist or be empty)")
    parser.add_argument("--images", default="images", help="sub-folder of the images (default: images)")
    parser.add_argument("--masks", default="masks", help="sub-folder of the vessel masks, matched by file stem")
    parser.add_argument("--fov", default=None, help="sub-folder of the field-of-view masks (metrics are then "
                                                    "computed inside them); default: none")
    parser.add_argument("--split", choices=SPLIT_RULES, default="folders",
                        help="folders: the data set's own train/test folders; random: --fractions of the cases; "
                             "lists: --lists files naming the stems of each split")
    parser.add_argument("--train-dir", default="training", help="with --split folders: the training folder")
    parser.add_argument("--test-dir", default="test", help="with --split folders: the test folder")
    parser.add_argument("--val", type=int, default=0,
                        help="with --split folders: this many training cases (drawn with --seed) become validation")
    parser.add_argument("--fractions", default="0.7,0.1,0.2", help="with --split random: train,val,test fractions")
    parser.add_argument("--lists", default=None,
                        help="with --split lists: TRAIN.txt,VAL.txt,TEST.txt, one stem per line (VAL may be empty)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random choices (default 0)")
    parser.add_argument("--channel", choices=CHANNELS, default="grey",
                        help="grey: luminance (FR-UNet's DRIVE preprocessing, the default); green: the green "
                             "channel of colour images, where fundus vessels contrast most")


def _lists(text: str | None) -> dict[str, list[str]] | None:
    if text is None:
        return None
    names = text.split(",")
    if len(names) not in (2, 3):
        raise ValueError(f"--lists {text!r}: give TRAIN.txt,VAL.txt,TEST.txt (or TRAIN.txt,TEST.txt)")
    files = dict(zip(("training", "validation", "test") if len(names) == 3 else ("training", "test"), names))
    out = {}
    for split, name in files.items():
        if not name:
            continue
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"--lists: {path}: no such file")
        out[split] = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return out


def main(args: argparse.Namespace) -> int:
    try:
        fractions = tuple(float(x) for x in args.fractions.split(","))
    except ValueError:
        raise ValueError(f"--fractions {args.fractions!r}: three numbers such as 0.7,0.1,0.2") from None
    record = import_dataset(args.src, args.out, images=args.images, masks=args.masks, fov=args.fov,
                            split=args.split, train_dir=args.train_dir, test_dir=args.test_dir, val=args.val,
                            seed=args.seed, fractions=fractions, lists=_lists(args.lists), channel=args.channel)
    counts = record["counts"]
    print(f"{args.out}: training {counts['training']}, validation {counts['validation']}, test {counts['test']} "
          f"single-frame sequences ({args.channel}{', with field of view' if args.fov else ''}); "
          f"next: dias shard {args.out} shards/NAME")
    return 0

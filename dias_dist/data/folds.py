"""K-fold cross-validation over the training sequences (``data.num_folds`` = K >= 2, ``data.fold`` = f).

Fold f trains on the training split's sequences outside fold f and validates on fold f (the trainer's
``validation`` becomes these held-out training sequences, ``loader.fold_eval_split``); the test split is untouched.

Grouping: sequences of one group always share a fold, so that no patient is in both the training and the
held-out part. The DIAS release layout (``data/dias.py``) holds no patient ID, only sequence IDs, so by
default every sequence is its own group; ``data.fold_groups`` names a JSON file ``{"<sequence id or key>":
"<patient>", ...}`` for data whose patients are known (sequences it does not name stay groups of their own).

Assignment (``assign_folds``): deterministic and independent of ``train.seed`` (repeats over seeds see the
same folds): groups are ordered by a hash of their name (not by ID, which may follow acquisition order),
then each goes, largest first, to the fold holding the fewest sequences so far (ties: the lower fold).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

SALT = "dias-folds-v1"  # changing it changes every fold assignment


def _order(group: str) -> str:
    return hashlib.sha256(f"{SALT}:{group}".encode()).hexdigest()


def assign_folds(keys: list[str], num_folds: int, groups: dict[str, str] | None = None) -> dict[str, int]:
    """{key: fold in 0..num_folds-1}; ``groups``: {key: group} (missing keys: a group of their own).

    A partition: every key exactly one fold; groups never split; fold sizes as even as the groups allow.
    ValueError when ``num_folds`` < 2 or exceeds the number of groups."""
    groups = groups or {}
    members: dict[str, list[str]] = {}
    for key in sorted(set(keys)):
        members.setdefault(str(groups.get(key, f"sequence:{key}")), []).append(key)
    if num_folds < 2:
        raise ValueError(f"data.num_folds={num_folds}: cross-validation needs at least 2 folds")
    if num_folds > len(members):
        raise ValueError(f"data.num_folds={num_folds} but the training split has only {len(members)} "
                         f"group(s) of sequences ({len(set(keys))} sequences): every fold needs one")
    sizes = [0] * num_folds
    fold_of = {}
    for group in sorted(members, key=lambda g: (-len(members[g]), _order(g))):
        fold = min(range(num_folds), key=lambda f: (sizes[f], f))
        sizes[fold] += len(members[group])
        for key in members[group]:
            fold_of[key] = fold
    return fold_of


def read_groups(path: str) -> dict[str, str]:
    """``data.fold_groups``: {sequence key ``s00012``: group}; the file may name sequences by ID (``12``) or key."""
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"data.fold_groups={path}: cannot be read as JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"data.fold_groups={path}: must be a JSON object {{sequence id: patient}}")
    out = {}
    for name, group in data.items():
        text = str(name)
        key = f"s{int(text):05d}" if text.isdigit() else text
        out[key] = str(group)
    return out


def check(num_folds: int, fold: int) -> None:
    """ValueError naming the keys when ``data.fold`` / ``data.num_folds`` do not make a fold."""
    if num_folds == 1:
        raise ValueError("data.num_folds=1: use 0 (no folds) or K >= 2")
    if num_folds and not 0 <= fold < num_folds:
        raise ValueError(f"data.fold={fold} must be in 0..{num_folds - 1} (data.num_folds={num_folds})")
    if not num_folds and fold:
        raise ValueError(f"data.fold={fold} but data.num_folds=0: set data.num_folds=K to train fold {fold} of K")


def split_keys(keys: list[str], num_folds: int, fold: int, groups_file: str = "") -> tuple[list[str], list[str]]:
    """(training keys, held-out keys) of fold ``fold`` of ``num_folds`` over ``keys`` (sorted)."""
    check(num_folds, fold)
    fold_of = assign_folds(keys, num_folds, read_groups(groups_file))
    train = sorted(k for k, f in fold_of.items() if f != fold)
    held_out = sorted(k for k, f in fold_of.items() if f == fold)
    return train, held_out

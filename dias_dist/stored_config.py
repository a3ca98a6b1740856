"""The config that travels with a checkpoint or an MLflow model, as a command uses it.

A stored config is data that may come from someone else (a downloaded checkpoint, a registered
model), so nothing in it may run a program: a ``data.shards`` location that is a command
(``pipe:``, ``location.RUNS_COMMAND``) is taken only from the command line or a config file the
user passes. ``data.shards`` and ``data.cache_dir`` of a stored config are used only when the
user's overrides do not set them, and only after this check:

- ``data.shards``: a location that runs a command is refused (``reads_data``: the command would
  read data, ``dias evaluate``) with one line saying which key to give, or dropped for the
  default (the command reads no data, ``dias predict``, the pyfunc model);
- ``data.cache_dir``: must be a local folder (no URL, no ``pipe:``), refused or dropped the same way.

Remote reads (``http(s)://``, ``s3://``, ``gs://``, ``file://``) stay usable from a stored config:
a fixed reader opens them and the manifest's sha256 checks what they return (``data/location.py``).
"""
from __future__ import annotations

import copy
from pathlib import Path

from dias_dist.config import Config, apply_overrides, from_dict, parse_override
from dias_dist.data import location

CHECKED = ("shards", "cache_dir")  # data keys a stored config may not use to run a program


def _fault(key: str, value) -> str | None:
    """Why the stored ``data.<key> = value`` may not be used, or None."""
    if not isinstance(value, str):
        return None  # a wrong type is from_dict's error
    if key == "shards" and location.runs_command(value):
        return (f"a {location.scheme(value)}: location, i.e. a command, and commands are never run from a "
                f"checkpoint's or MLflow model's config")
    if key == "cache_dir" and value and not location.is_local(value):
        return "not a local folder"
    return None


def user_keys(overrides) -> set[str]:
    """Dotted keys set by ``overrides`` (``data.shards=...`` -> ``data.shards``; ``data={...}`` -> ``data``)."""
    return {".".join(parse_override(text)[0]) for text in overrides}


def from_stored(stored: dict, source: str, overrides=(), *, reads_data: bool) -> Config:
    """The Config of a checkpoint payload's ``config`` dict with the user's ``overrides`` applied.

    stored: the payload's ``config`` (not modified); source: the checkpoint or model URI (named in
    errors); reads_data: this command opens ``data.shards`` (a refused stored value is then a
    ValueError naming the key to give, else it is replaced by the default). Raises ValueError."""
    if not isinstance(stored, dict):
        raise ValueError(f"{source}: its stored config is not a mapping of sections")
    data = copy.deepcopy(stored)
    given = user_keys(overrides)
    section = data.get("data")
    if isinstance(section, dict) and "data" not in given:
        for key in CHECKED:
            if key not in section or f"data.{key}" in given:
                continue
            fault = _fault(key, section[key])
            if fault is None:
                continue
            if reads_data:
                raise ValueError(f"{source}: its stored config has data.{key}={section[key]!r}, {fault}; "
                                 f"give your own: data.{key}=...")
            del section[key]  # this command reads no data: the default stands in
    if reads_data and isinstance(section, dict) and not given & {"data", "data.shards"}:
        moved = _moved(section.get("shards"))
        if moved:
            raise ValueError(f"{source}: the shard set its config records, {moved}, is not there any more "
                             f"(moved or deleted?); give its new place: data.shards=NEW_PLACE")
    apply_overrides(data, list(overrides))
    return from_dict(Config, data, f"{source} config" + (" + overrides" if overrides else ""))


def _moved(shards) -> str | None:
    """``shards`` when it is a local folder that does not exist (from here: a relative path recorded by an
    older version is resolved against the current directory), else None."""
    if not isinstance(shards, str) or not shards or not location.is_local(shards):
        return None
    return None if Path(shards).exists() else shards

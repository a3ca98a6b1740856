"""Where a shard set lives (``data.shards``) and how its files are opened.

A location is a local folder or a URL of the folder holding the ``manifest.json`` and tars that
``dias shard`` wrote (the same relative names under it)::

    shards/dsa  /data/shards/dsa        local folder: memory-mapped reader (dias_dist.data.shards.ShardReader)
    file:///data/shards/dsa             the same files, streamed through WebDataset (as a remote set)
    http://host/dsa  https://host/dsa   WebDataset's gopen (curl)
    s3://bucket/prefix/dsa              boto3 (credentials and AWS_ENDPOINT_URL as every AWS tool reads them)
    gs://bucket/prefix/dsa              WebDataset's gopen (gsutil cat)
    pipe:COMMAND                        a shell command writing one file to stdout; ``{}`` in it is
                                        replaced by the file's path inside the set, e.g.
                                        ``pipe:aws s3 cp s3://bucket/dsa/{} -``

Every URL is opened by ``webdataset.gopen.gopen``; ``s3://`` is added to its scheme table (by
``open_url``, the first time a URL is opened) because WebDataset itself has no s3 handler, and the
read handlers of ``http(s)://``, ``gs://`` and ``pipe:`` are replaced by the same programs under a
read timeout and a download budget (``timeouts.py``: ``data.read_timeout_s``, ``data.download_budget_s``). Only file names that ``dias shard`` writes are joined onto a location (``join`` refuses
anything else), so a crafted manifest cannot inject a shell command into a ``pipe:`` location.

Which locations run a program of the location's choosing (``RUNS_COMMAND``): ``pipe:`` only, its
text is a shell command. The other schemes are reads of a URL by a fixed reader: ``http(s)://``
runs ``curl`` and ``gs://`` runs ``gsutil cat`` with the URL as their one argument (no shell, no
option can be smuggled in: the argument starts with the scheme), ``s3://`` is boto3 in this
process, ``file://`` a local read; whatever they read is checked against the manifest's byte
counts and sha256. A ``pipe:`` location is therefore accepted from the command line or a config
file the user passes, never from a config stored in a checkpoint or MLflow model
(``dias_dist.stored_config``).
"""
from __future__ import annotations

import math
import os
import re
import time
from contextlib import closing
from pathlib import Path

from dias_dist.data import timeouts

SCHEMES = ("file", "http", "https", "s3", "gs", "pipe")
RUNS_COMMAND = ("pipe",)  # schemes whose location is a command line (see the module docstring)
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)")
# relative names inside a shard set: split folders, tars, manifest.json (what `dias shard` writes)
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*")
HOW = ("a folder, file:///abs/folder, http(s)://host/folder, s3://bucket/folder, gs://bucket/folder or "
       "'pipe:COMMAND' with {} where the file's path inside the set goes")


def scheme(location: str | os.PathLike) -> str:
    """``""`` for a local path, else the URL scheme in lower case (``pipe`` for ``pipe:...``)."""
    text = str(location)
    if text.startswith("pipe:"):
        return "pipe"
    match = _URL.match(text)
    return match.group(1).lower() if match else ""


def is_local(location: str | os.PathLike) -> bool:
    """True for a local path (read through the memory map), False for any URL (streamed)."""
    return scheme(location) == ""


def problem(location: str) -> str | None:
    """What is wrong with ``location`` as a ``data.shards`` value, or None when it can be used."""
    kind = scheme(location)
    if not str(location).strip():
        return f"is empty; use {HOW}"
    if kind and kind not in SCHEMES:
        return f"has the scheme {kind}://, which is not supported; use {HOW}"
    if kind == "pipe":
        if "{}" not in location:
            return ("is a pipe: command without {} (where the path of each file inside the shard set goes), "
                    "e.g. 'pipe:aws s3 cp s3://bucket/dsa/{} -'")
        return None
    if kind and kind != "file" and not _URL.match(location).group(2).split("/")[0]:
        return f"names no {'bucket' if kind in ('s3', 'gs') else 'host'} after {kind}://"
    return None


def runs_command(location: str | os.PathLike) -> bool:
    """True when opening files at ``location`` runs a command taken from its text (``pipe:``)."""
    return scheme(location) in RUNS_COMMAND


def join(location: str | os.PathLike, name: str) -> str:
    """The location of the file ``name`` (a path inside the set, e.g. ``training/training-000000.tar``)."""
    if not isinstance(name, str) or NAME.fullmatch(name) is None or ".." in name.split("/"):
        raise ValueError(f"{location}: {name!r} is not a file name `dias shard` writes (letters, digits, '_', "
                         f"'-', '.' and '/' between folders)")
    kind = scheme(location)
    if kind == "":
        return str(Path(location) / name)
    if kind == "pipe":
        return str(location).replace("{}", name)
    return str(location).rstrip("/") + "/" + name


def open_url(url: str):
    """A binary stream of ``url`` through ``webdataset.gopen.gopen`` (``s3://`` through boto3), under
    this process's read timeout and download budget (``timeouts.py``)."""
    register_s3()
    return _gopen_module().gopen(url, "rb")


def _gopen_module():
    """The module ``webdataset.gopen`` (the package attribute of that name is the function)."""
    import importlib

    return importlib.import_module("webdataset.gopen")


def register_s3() -> None:
    """Add ``gopen_s3`` to WebDataset's gopen scheme table (an s3 handler already there wins), and
    the read handlers of ``timeouts.py`` (curl, gsutil, pipe: under the read timeout and budget)."""
    timeouts.register()
    _gopen_module().gopen_schemes.setdefault("s3", gopen_s3)


def read_bytes(url: str) -> bytes:
    """All bytes of ``url``; OSError naming it when it cannot be read (missing, refused, command failed)."""
    try:
        with closing(open_url(url)) as stream:
            return stream.read()
    except (OSError, ValueError) as err:  # ValueError: gopen's own refusals (WDS_SECURE, no handler)
        raise OSError(reason(err)) from None


def reason(err: Exception) -> str:
    """``err`` as the one clause an error message about a location quotes."""
    text = str(err)
    if "unsafe_gopen is False" in text:
        return f"{text}; WDS_SECURE=1 is set, which forbids file:// and pipe: locations"
    match = re.search(r"exit (\d+)", text)
    if match and text.startswith("(("):  # webdataset's Pipe: "((['curl', ...],), {...}): exit 22 (read) {}"
        return f"the command reading it exited with status {match.group(1)}" + (
            " (curl: HTTP error, e.g. 404)" if match.group(1) == "22" else "")
    return text


_S3_CLIENTS: dict[tuple, object] = {}


def _s3_client():
    """One boto3 S3 client per process and limits (clients must not cross a fork into DataLoader
    workers): connect and read timeouts from ``data.read_timeout_s``, 4 attempts (standard retries)."""
    limit = timeouts.limits()
    slot = (os.getpid(), limit)
    if slot not in _S3_CLIENTS:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise ValueError("s3:// shard locations need boto3 (pip install boto3; its pin is in "
                             "requirements/base.txt), or use data.shards='pipe:aws s3 cp s3://BUCKET/FOLDER/{} -'"
                             ) from None
        config = Config(connect_timeout=min(30.0, limit.read_timeout_s), read_timeout=limit.read_timeout_s,
                        retries={"total_max_attempts": timeouts.CURL_RETRIES + 1, "mode": "standard"})
        _S3_CLIENTS[slot] = boto3.session.Session().client("s3", config=config)
    return _S3_CLIENTS[slot]


def gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **kw):
    """WebDataset gopen handler for ``s3://bucket/key``: the streaming body of a GetObject.

    Credentials, region and endpoint come from where every AWS SDK looks (``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY``, ``~/.aws``, an instance role; ``AWS_ENDPOINT_URL`` for S3-compatible
    stores such as MinIO)."""
    if mode[0] != "r":
        raise ValueError(f"{url}: s3:// is read-only here; upload shard sets with `aws s3 cp --recursive`")
    bucket, _, key = url[len("s3://"):].partition("/")
    client = _s3_client()
    deadline = time.monotonic() + timeouts.limits().budget_s
    try:
        return _S3Body(client.get_object(Bucket=bucket, Key=key)["Body"], deadline)
    except Exception as err:  # noqa: BLE001 - botocore's errors (NoSuchKey, credentials, endpoint) -> one OSError
        raise OSError(f"{type(err).__name__}: {err}") from None


class _S3Body:
    """A GetObject body whose read errors (botocore's IncompleteReadError, urllib3's connection
    errors: not OSErrors) are OSErrors, as the other gopen streams' are; a read after ``deadline``
    (``time.monotonic``, the download budget) fails."""

    def __init__(self, body, deadline: float = math.inf):
        self.body, self.deadline = body, deadline

    def read(self, size: int = -1) -> bytes:
        if time.monotonic() > self.deadline:
            raise OSError(f"no complete answer within data.download_budget_s={timeouts.limits().budget_s:g} s")
        try:
            return self.body.read() if size is None or size < 0 else self.body.read(size)
        except Exception as err:  # noqa: BLE001
            raise OSError(f"{type(err).__name__}: {err}") from None

    def close(self) -> None:
        self.body.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

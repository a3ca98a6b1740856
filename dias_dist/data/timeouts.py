"""Read timeout and download budget of remote shard files (``data.read_timeout_s``, ``data.download_budget_s``).

A shard set at a URL is read through WebDataset's gopen (``location.open_url``), which runs a program
per file: ``curl`` for ``http(s)://``, ``gsutil cat`` for ``gs://``, the shell for ``pipe:``. WebDataset's
own curl has a connect timeout and 30 retries but no read or total timeout, so a server that accepts
and never answers hangs the reader forever. ``register()`` replaces those read handlers in gopen's
scheme table by the same programs under these limits:

- ``read_timeout_s`` (default 60): ``http(s)://``: curl gives up an attempt when fewer than 1 byte
  arrived in that many seconds (``--speed-limit 1 --speed-time``, also the connect timeout up to
  30 s); it retries ``CURL_RETRIES`` times (transient errors only). ``s3://``: boto3's
  ``connect_timeout`` / ``read_timeout`` (``location.gopen_s3``).
- ``download_budget_s`` (default 3600): the most one file may take, retries included, for every
  scheme: curl's ``--max-time`` / ``--retry-max-time``, and a timer that kills the reading program's
  whole process group (a ``pipe:`` shell and what it started) when the budget is spent; for
  ``s3://`` a read after the budget fails.

When a limit expires the read raises an ``OSError`` whose text names the limit and its setting; the
callers (``shards.read_manifest``, ``shards.StreamedShard``, ``shards.cached_copy``) put the URL in
front of it, so the user reads one line naming the URL and the key to change.

The limits are this process's (``set_limits``; ``trainer.run``, ``dias evaluate`` and RPST's
pseudo-labelling set them from ``cfg.data``; DataLoader workers inherit them by fork), defaults elsewhere.
"""
from __future__ import annotations

import math
import os
import signal
import threading
from dataclasses import dataclass

CURL_RETRIES = 3  # retries of a transient curl failure (a timeout, HTTP 408/429/5xx), within the budget
CURL_EXIT_TIMEOUT = 28  # curl's "operation timed out"


@dataclass(frozen=True)
class Limits:
    """read_timeout_s: seconds without a byte before an attempt fails; budget_s: seconds one file may take."""

    read_timeout_s: float = 60.0
    budget_s: float = 3600.0


DEFAULT = Limits()
_current = DEFAULT


def problem(seconds) -> str | None:
    """What is wrong with ``seconds`` as a limit (a config value), or None."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
        return "is not a finite number of seconds > 0"
    return None


def check(read_timeout_s: float, budget_s: float) -> Limits:
    """``Limits`` of two settings; ValueError naming the key when one is not a finite number > 0."""
    for key, value in (("data.read_timeout_s", read_timeout_s), ("data.download_budget_s", budget_s)):
        if problem(value):
            raise ValueError(f"{key}={value!r} {problem(value)}")
    return Limits(float(read_timeout_s), float(budget_s))


def set_limits(read_timeout_s: float, budget_s: float) -> Limits:
    """Make these the limits of every remote read of this process; returns the previous ones."""
    global _current
    previous, _current = _current, check(read_timeout_s, budget_s)
    return previous


def limits() -> Limits:
    return _current


class LimitedStream:
    """A gopen stream of a program (WebDataset's ``Pipe``) held to a download budget, with the
    program's timeouts turned into a clear ``OSError``. read / close as the stream's."""

    def __init__(self, pipe, program: str, limit: Limits):
        self.pipe, self.program, self.limit = pipe, program, limit
        self.expired = threading.Event()
        self._timer = threading.Timer(limit.budget_s, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        self.expired.set()
        try:
            os.killpg(self.pipe.proc.pid, signal.SIGKILL)  # its own session: the program and its children
        except OSError:
            pass

    def fault(self, err: Exception | None) -> Exception:
        """The error to raise for ``err`` (None: the budget ran out)."""
        if self.expired.is_set():
            return OSError(f"no complete answer within data.download_budget_s={self.limit.budget_s:g} s "
                           f"({self.program} was stopped)")
        if self.program == "curl" and getattr(self.pipe, "status", None) == CURL_EXIT_TIMEOUT:
            return OSError(f"timed out: no byte for data.read_timeout_s={self.limit.read_timeout_s:g} s in each of "
                           f"{CURL_RETRIES + 1} tries, or past data.download_budget_s={self.limit.budget_s:g} s "
                           f"(curl exit {CURL_EXIT_TIMEOUT})")
        return err

    def read(self, *args) -> bytes:
        try:
            data = self.pipe.read(*args)
        except OSError as err:
            raise self.fault(err) from None
        if self.expired.is_set():
            raise self.fault(None)
        return data

    def close(self) -> None:
        self._timer.cancel()
        try:
            self.pipe.close()
        except OSError as err:
            raise self.fault(err) from None
        if self.expired.is_set():
            raise self.fault(None)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _pipe(args, program: str, bufsize: int, ignore_status: list[int], shell: bool = False) -> LimitedStream:
    from webdataset.gopen import Pipe

    return LimitedStream(Pipe(args, mode="rb", bufsize=bufsize, ignore_status=ignore_status, shell=shell,
                              start_new_session=True), program, _current)


def curl_args(url: str, limit: Limits) -> list[str]:
    """WebDataset's curl command line (``-f -s -L``, retry delay 2 s) under ``limit``."""
    return ["curl", "--connect-timeout", f"{min(30.0, limit.read_timeout_s):g}",
            "--speed-limit", "1", "--speed-time", str(max(1, math.ceil(limit.read_timeout_s))),
            "--max-time", f"{limit.budget_s:g}", "--retry", str(CURL_RETRIES), "--retry-delay", "2",
            "--retry-max-time", f"{limit.budget_s:g}", "-f", "-s", "-L", url]


def _handlers() -> dict:
    """gopen read handlers by scheme; writes go to WebDataset's own handler."""
    import webdataset.utils
    from importlib import import_module

    gopen = import_module("webdataset.gopen")
    original = {name: gopen.gopen_schemes.get(name) for name in ("http", "https", "gs", "pipe")}
    original = {name: getattr(handler, "original", handler) for name, handler in original.items()}

    def http(url, mode="rb", bufsize=8192, **kw):
        if mode[0] != "r":
            return original["http"](url, mode, bufsize, **kw)
        return _pipe(curl_args(url, _current), "curl", bufsize, [141, 23])

    def gs(url, mode="rb", bufsize=8192, **kw):
        if mode[0] != "r":
            return original["gs"](url, mode, bufsize, **kw)
        return _pipe(["gsutil", "cat", url], "gsutil", bufsize, [141, 23])

    def pipe(url, mode="rb", bufsize=8192, **kw):
        if mode[0] != "r" or webdataset.utils.enforce_security:  # WDS_SECURE: WebDataset's refusal
            return original["pipe"](url, mode, bufsize, **kw)
        return _pipe(url[len("pipe:"):], "the pipe: command", bufsize, [141], shell=True)

    for name, handler in (("http", http), ("gs", gs), ("pipe", pipe)):
        handler.original = original[name]
    return {"http": http, "https": http, "gs": gs, "pipe": pipe}


def register() -> None:
    """Put the limited read handlers into WebDataset's gopen scheme table (once)."""
    from importlib import import_module

    schemes = import_module("webdataset.gopen").gopen_schemes
    if getattr(schemes.get("http"), "original", None) is None:
        schemes.update(_handlers())

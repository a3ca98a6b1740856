"""Ownership of a run folder: one run at a time, and never over another run's files by accident.

``claim(run_dir, ...)`` is called by the training loop before it writes anything:

- The folder is locked by the run that owns it: a POSIX record lock (``fcntl.lockf``) on
  ``<run>/.lock``, held by rank 0 for the run's life. The kernel drops it when the holder exits in
  any way (SIGKILL and power loss included), so a crashed run never leaves a stale lock; the lock
  is per process, so DataLoader workers forked by the holder do not keep it alive after the holder
  died. The file holds the holder's host, pid, start time and command, which a second run that
  finds the folder locked prints in its error.
- Only a run folder is ever emptied: a folder holding anything a run does not write (``foreign_files``)
  is refused with its name before anything is touched, whatever ``resume`` and ``overwrite`` say.
- Overwrite policy: a folder that holds files of an earlier run (finished or crashed) is
  continued only with ``train.resume=auto`` (or a checkpoint path inside it) and replaced only
  with ``train.overwrite=true``, which removes every file of the old run (``best.pt`` included).
  ``resume=auto`` with nothing to resume from (the old run died before its first checkpoint)
  starts afresh and removes the old files too, with a warning.
- Temporary files of an interrupted atomic write (``.<name>.tmp<pid>``) are removed, as the lock
  guarantees that no other process is writing them.
- ``release(status)``: unlock; a run that failed before writing any checkpoint or metric in a
  folder it created removes that folder (a failed start leaves nothing behind), unless torchrun
  will restart it and the folder already holds the job's ``start.json`` (``keep_on_failure``, set once by
  ``lifecycle.Run.close``): the restart continues that folder and its MLflow run.

Folder faults (``run_dir`` is a file, not writable, disk full) become ``RunFolderError``, a
``ValueError`` whose one line names the path and the cause (``describe_os_error``).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import socket
import sys
import time
import warnings
from pathlib import Path

LOCK_NAME = ".lock"
# What a run writes in its folder (trainer, checkpoint.prepare_run_folder, elastic.START_RECORD, `dias evaluate`'s
# default eval/, the demo's predict/): only a folder holding nothing else is ever emptied (``foreign_files``).
RUN_ENTRIES = frozenset({"config.yaml", "metrics.jsonl", "start.json", "checkpoints", "eval", "plots", "predict"})
_TMP_NAME = re.compile(r"\.tmp[0-9]*$")  # checkpoint.save: .<name>.tmp<pid>; config / manifest: <name>.tmp
_HELD: set[str] = set()  # folders locked by this process (POSIX locks do not conflict within a process)


class RunFolderError(ValueError):
    """A run folder that cannot be used: busy, not writable, a file, or the disk is full."""


def describe_os_error(err: OSError, what: str = "", *, run_dir: bool = True) -> str:
    """One line naming the path and the cause of an ``OSError`` (ENOSPC, EACCES, ENOTDIR ...).

    what: the path to name when the error carries none (a write to a full disk); run_dir: the hints
    speak of ``train.run_dir`` and resuming (training), else of the path only (the other commands)."""
    path = err.filename or what or "?"
    cause = err.strerror or type(err).__name__
    if not run_dir:
        hint = {errno.ENOSPC: "; the disk is full", errno.EDQUOT: "; the disk quota is used up",
                errno.EACCES: "; not writable by this user, choose another output folder",
                errno.EROFS: "; choose another output folder",
                errno.ENOTDIR: "; a file is in the way (a part of the path is a file, not a folder)",
                errno.EEXIST: "; a file is in the way (a folder must go there)"}.get(err.errno, "")
        return f"{path}: {cause}{hint}"
    hint = {errno.ENOSPC: "; the last complete checkpoint and metrics.jsonl are kept, free space and resume "
                          "with train.resume=auto",
            errno.EDQUOT: "; free space and resume with train.resume=auto",
            errno.EACCES: "; choose a writable train.run_dir",
            errno.EROFS: "; choose a writable train.run_dir",
            errno.ENOTDIR: "; a file is in the way of train.run_dir",
            errno.EEXIST: "; a file is in the way of train.run_dir"}.get(err.errno, "")
    return f"{path}: {cause}{hint}"


class RunFolder:
    """The claim of one run folder (see the module docstring). ``release`` is idempotent."""

    def __init__(self, path: Path | None, fd: int | None = None, created: bool = False,
                 keep_on_failure: bool = False):
        self.path, self._fd, self.created, self.keep_on_failure = path, fd, created, keep_on_failure

    def release(self, status: str = "FAILED") -> None:
        """Unlock; after a failure, remove the folder when this run created it and wrote nothing
        that matters in it (no checkpoint, no metric)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        _HELD.discard(str(self.path))
        try:
            if status != "FINISHED" and self.created and not self.keep_on_failure and _nothing_written(self.path):
                shutil.rmtree(self.path, ignore_errors=True)
        finally:
            os.close(fd)  # closing drops the POSIX lock

    def __del__(self):  # a run that raised before its ``finally`` still lets go of the folder
        try:
            self.release("FAILED")
        except Exception:  # noqa: BLE001 - never raise from a finaliser
            pass


def _nothing_written(path: Path) -> bool:
    checkpoints = path / "checkpoints"
    if checkpoints.is_dir() and any(p.name.endswith(".pt") and not p.name.startswith(".")
                                    for p in checkpoints.iterdir()):
        return False
    metrics = path / "metrics.jsonl"
    return not (metrics.is_file() and metrics.stat().st_size > 0)


def _holder(path: Path) -> str:
    try:
        info = json.loads((path / LOCK_NAME).read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process (no holder recorded yet)"
    return (f"host {info.get('host', '?')} pid {info.get('pid', '?')} (since {info.get('since', '?')}: "
            f"{info.get('command', '?')})")


def _old_run_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.name != LOCK_NAME)


def _written_by_a_run(name: str) -> bool:
    """Whether a run folder entry called ``name`` is one a run writes (or a temporary file of one)."""
    base = _TMP_NAME.sub("", name)
    return name == LOCK_NAME or base in RUN_ENTRIES or (base.startswith(".") and base[1:] in RUN_ENTRIES)


def foreign_files(path: Path) -> list[str]:
    """Names in folder ``path`` that show it is not a run folder, so it must never be emptied; [] for a run folder.

    The rule: a folder is a run folder when every entry in it is one a run writes (``RUN_ENTRIES``, their
    interrupted temporary files, the lock) AND it holds at least one run record (config.yaml, start.json,
    a non-empty metrics.jsonl, or a ``.pt`` file in checkpoints/). An empty folder (or one holding only the
    lock) holds nothing to lose and counts as one too. Anything else is someone's data."""
    entries = sorted(p.name for p in path.iterdir())
    if all(name == LOCK_NAME for name in entries):
        return []
    strangers = [name for name in entries if not _written_by_a_run(name)]
    if strangers:
        return strangers
    checkpoints = path / "checkpoints"
    has_record = (any((path / name).is_file() for name in ("config.yaml", "start.json"))
                  or ((path / "metrics.jsonl").is_file() and (path / "metrics.jsonl").stat().st_size > 0)
                  or (checkpoints.is_dir() and not checkpoints.is_symlink()
                      and any(p.suffix == ".pt" for p in checkpoints.iterdir())))
    return [] if has_record else entries


def _refuse_foreign(path: Path) -> None:
    """RunFolderError naming ``path`` and its first foreign entries when it is not a run folder (nothing touched)."""
    strangers = [name for name in foreign_files(path) if name != LOCK_NAME]
    if strangers:
        shown = ", ".join(strangers[:5]) + (f" and {len(strangers) - 5} more" if len(strangers) > 5 else "")
        raise RunFolderError(f"{path} is not a run folder (it holds {shown}, which no run wrote) and is never "
                             f"emptied, whatever train.resume and train.overwrite say; choose another "
                             f"train.run_name or train.run_dir")


def _sweep_tmp(path: Path) -> None:
    """Remove temporary files of atomic writes interrupted by a crash (only this run writes here now)."""
    for folder in (path, path / "checkpoints"):
        if folder.is_dir():
            for tmp in folder.iterdir():
                if tmp.is_file() and _TMP_NAME.search(tmp.name):
                    tmp.unlink(missing_ok=True)


def _lock(path: Path, wait_s: float) -> int:
    """Open and lock ``path/.lock``; RunFolderError naming the holder when it stays locked ``wait_s``."""
    if str(path) in _HELD:
        raise RunFolderError(f"{path} is already in use by this process (host {socket.gethostname()} "
                             f"pid {os.getpid()}); choose another train.run_name")
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        locked = _lock_within(fd, wait_s)
    except OSError:
        os.close(fd)
        raise
    if not locked:
        holder = _holder(path)
        os.close(fd)
        raise RunFolderError(f"{path} is in use by a running training: {holder}; wait for it, stop it, "
                             f"or choose another train.run_name")
    record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                         "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:300]})
    os.ftruncate(fd, 0)
    os.pwrite(fd, record.encode(), 0)
    _HELD.add(str(path))
    return fd


def _lock_within(fd: int, wait_s: float) -> bool:
    """Lock ``fd`` exclusively, polling until ``wait_s`` has passed; False when another process still holds it
    then. Errors other than contention (no lock support, ...) are raised."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)


def wait_free(path: str | Path, wait_s: float) -> bool:
    """Wait up to ``wait_s`` until no process holds the lock of the run folder ``path`` (a holder that is
    still exiting); True when it is free or has no lock file. Takes nothing: the lock is released at once.

    False when it is still held at the end, and at once when this process holds it (``claim``: a POSIX
    lock never conflicts within its process, and closing any descriptor of the file would drop it). An
    error other than contention also returns True: the ``claim`` that follows reports it with the path."""
    path = Path(path)
    if str(path) in _HELD:
        return False
    try:
        fd = os.open(path / LOCK_NAME, os.O_RDWR)
    except OSError:
        return True  # no lock file: nobody ever held the folder (other faults: see above)
    try:
        if not _lock_within(fd, wait_s):
            return False
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return True
    except OSError:
        return True
    finally:
        os.close(fd)


def claim(run_dir: str | Path, *, continuing: bool, auto: bool, overwrite: bool, wait_s: float = 0.0) -> RunFolder:
    """Lock ``run_dir`` for this run and apply the overwrite policy; returns the claim.

    continuing: this run resumes from a checkpoint inside ``run_dir``; auto: ``train.resume=auto``;
    overwrite: ``train.overwrite``; wait_s: how long to wait for a holder that is still exiting
    (an elastic restart replaces workers that may not have finished dying).
    Raises RunFolderError (a ValueError) with one line naming the path and the cause.
    """
    path = Path(run_dir)
    if overwrite and continuing:
        raise RunFolderError(f"{path}: train.overwrite=true would delete the checkpoint this run resumes from; "
                             f"use train.resume=never with train.overwrite=true, or drop train.overwrite")
    try:
        if path.parent.exists() and not path.parent.is_dir():
            raise RunFolderError(f"train.run_dir={str(path.parent)!r} is a file, not a folder")
        if path.exists() and not path.is_dir():
            raise RunFolderError(f"{path}: is a file, not a run folder; remove it or choose another train.run_name")
        created = not path.exists()
        if not created:
            _refuse_foreign(path)  # before the lock file: a refused folder is left exactly as it was
        path.mkdir(parents=True, exist_ok=True)
        fd = _lock(path, wait_s)
    except OSError as err:
        raise RunFolderError(describe_os_error(err, str(path))) from None
    folder = RunFolder(path, fd, created)
    try:
        old = _old_run_files(path)
        if old and not continuing:
            _refuse_foreign(path)  # again under the lock
            if not (overwrite or auto):
                raise RunFolderError(
                    f"{path} holds an earlier run ({', '.join(p.name for p in old[:5])}); continue it with "
                    f"train.resume=auto, replace it with train.overwrite=true, or choose another train.run_name")
            if auto and not overwrite:
                warnings.warn(f"{path}: train.resume=auto found no checkpoint to resume from; the earlier run's "
                              f"files are removed and training starts at step 0", RuntimeWarning, stacklevel=2)
            for item in old:
                if item.is_dir() and not item.is_symlink():
                    shutil.rmtree(item)
                else:
                    item.unlink()
        _sweep_tmp(path)
    except OSError as err:
        folder.release("FAILED")
        raise RunFolderError(describe_os_error(err, str(path))) from None
    except BaseException:
        folder.release("FAILED")
        raise
    return folder


def claim_on_main(run_dir: Path, train_cfg, resume_from: Path | None, *, enabled: bool = True,
                  wait_s: float = 0.0, restarted_job: bool = False) -> RunFolder:
    """``claim`` on rank 0 (the rank that writes the run folder); every rank raises its error.

    train_cfg: the ``train`` config section (``resume``, ``overwrite``); resume_from: the checkpoint
    the run resumes from, if any. ``enabled=False`` (dry runs) claims nothing. restarted_job: rank 0 is a
    torchrun restart of the job that started this folder and wrote no checkpoint yet (``elastic.unfinished_start``):
    the folder is continued as it is, and counts as created by this run (the job created it)."""
    from dias_dist import dist

    folder, error = RunFolder(None), None
    if enabled and dist.is_main():
        continuing = restarted_job or (resume_from is not None
                                       and Path(run_dir).resolve() in Path(resume_from).resolve().parents)
        try:
            folder = claim(run_dir, continuing=continuing, auto=train_cfg.resume == "auto",
                           overwrite=train_cfg.overwrite, wait_s=wait_s)
            folder.created = folder.created or restarted_job
        except ValueError as err:
            error = err
    message = dist.broadcast_object(None if error is None else str(error)) if enabled else None
    if error is not None:
        raise error
    if message is not None:
        raise RunFolderError(message)
    return folder

"""One way to write a file so that a reader (or a crash) never sees it half-written."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", *, fsync: bool = False, **open_kwargs) -> Iterator[IO]:
    """Write through a temporary file next to ``path`` that replaces ``path`` when the block ends.

    The parent folder is created. If the block raises, ``path`` keeps its previous content and the
    temporary file is removed. ``fsync=True`` flushes the bytes to disk before the rename (files a
    restart depends on, such as checkpoints). ``mode`` is ``"w"`` or ``"wb"``; ``open_kwargs`` go to ``open``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, mode, **open_kwargs) as handle:
            yield handle
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

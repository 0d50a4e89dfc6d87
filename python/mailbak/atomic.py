"""Replacing a small file atomically: the manifest (``manifest.py``) and the metrics file
(``monitor.py``) are each read by others while mailbak may be killed at any moment, so a reader
must see the old file or the new one, never a part.
"""

from __future__ import annotations

import os
from pathlib import Path


def replace_file(path: Path, data: bytes, *, mode: int, tmp_name: str | None = None) -> None:
    """Replaces ``path`` with ``data``: a temporary file in the same directory, written and
    fsynced, renamed over ``path``, then the directory fsynced.

    With ``tmp_name`` the temporary file has that name and is created with ``mode`` (less the
    umask); a failed write leaves it, and the next write truncates it. Without, it gets a fresh
    hidden name (``.NAME.*.tmp``: a textfile collector, which reads only ``*.prom``, ignores it),
    exactly ``mode``, and is removed when the write fails."""
    parent = path.parent
    if tmp_name is not None:
        tmp = str(parent / tmp_name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    else:
        import tempfile  # only the metrics file needs it; a run without one never loads it

        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if tmp_name is None:
                os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        if tmp_name is None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise
    dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)

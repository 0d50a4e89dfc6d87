"""Replacing a small file atomically: the manifest (``manifest.py``), the repository marker
(``repository.py``) and the metrics file (``monitor.py``) are each read by others while mailbak
may be killed at any moment, so a reader must see the old file or the new one, never a part.

The temporary file is created ``O_CREAT|O_EXCL|O_NOFOLLOW`` relative to a descriptor of the
directory, opened once: whatever sits at its name (a symlink planted by someone who could write
there, a FIFO, a hardlink to another file) is never opened, and the rename and the fsync act on
that same directory.
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path

#: Flags of the temporary file: a new file, never anything already at its name.
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def replace_file(path: Path, data: bytes, *, mode: int, tmp_name: str | None = None) -> None:
    """Replaces ``path`` with ``data``: a temporary file in the same directory, written and
    fsynced, renamed over ``path``, then the directory fsynced. ``path``'s directory is opened
    once, as named (a caller that holds it passes its ``/proc/self/fd/N`` path).

    With ``tmp_name`` the temporary file has that name and is created with ``mode`` (less the
    umask); a failed write leaves it, and the next write removes whatever is at that name (the
    name only, never what a symlink there points to) and creates it anew. Without, it gets a
    fresh hidden name (``.NAME.*.tmp``: a textfile collector, which reads only ``*.prom``,
    ignores it), exactly ``mode``, and is removed when the write fails."""
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        tmp, fd = _create_tmp(dfd, path.name, mode, tmp_name)
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
            os.rename(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            if tmp_name is None:
                try:
                    os.unlink(tmp, dir_fd=dfd)
                except OSError:
                    pass
            raise
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _create_tmp(dfd: int, name: str, mode: int, tmp_name: str | None) -> tuple[str, int]:
    """The temporary file's name in ``dfd`` and its descriptor, created new."""
    if tmp_name is None:
        for _ in range(100):
            tmp = f".{name}.{secrets.token_hex(6)}.tmp"
            try:
                return tmp, os.open(tmp, _TMP_FLAGS, 0o600, dir_fd=dfd)
            except FileExistsError:
                continue
        raise FileExistsError(errno.EEXIST, "no free temporary name", name)
    try:
        return tmp_name, os.open(tmp_name, _TMP_FLAGS, mode, dir_fd=dfd)
    except FileExistsError:
        # Left by a run that was killed mid-write, or planted: unlinkat removes the name itself
        # (a symlink is not followed), and the one retry creates a new file or fails.
        os.unlink(tmp_name, dir_fd=dfd)
        return tmp_name, os.open(tmp_name, _TMP_FLAGS, mode, dir_fd=dfd)

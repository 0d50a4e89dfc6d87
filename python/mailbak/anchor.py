"""Where a run's reads inside a store start, and which directory is which.

Two guards against a store whose owner is hostile (docs/RELIABILITY.md, "Paths"):

1. ``DataRoot``: the store's ``data/`` opened once per run. Every area root (an account
   directory, the queue) and every database below it is then opened relative to that
   descriptor, one component at a time, never following a symlink (``O_NOFOLLOW`` at every step,
   ``O_DIRECTORY`` for directories). Checking ``data/accounts/alice`` by path and opening it by
   path later leaves a window in which the store's owner can replace it with a symlink to any
   directory root may read; opening it relative to ``data/`` without following closes it.
2. ``identity`` and ``inside``: whether one directory lies inside another, decided by
   ``(st_dev, st_ino)`` of the directory and its ancestors, not by comparing path strings. A bind
   mount (``mount --bind s/data view``) gives a directory a second path that no string
   comparison relates to the first, but it keeps its device and inode numbers.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from mailbak.fsio import descend, open_dir, open_entry


def identity(st: os.stat_result) -> tuple[int, int]:
    """A file's identity: ``(st_dev, st_ino)``."""
    return (st.st_dev, st.st_ino)


def ancestors(path: Path) -> list[tuple[int, int]]:
    """Identities of ``path`` (or, when it does not exist yet, of its nearest existing
    ancestor) and of every directory above it, up to ``/``. Symlinks on the way are resolved
    first (``..`` after a symlink means the parent of its target)."""
    out = []
    for p in (path.resolve(), *path.resolve().parents):
        try:
            out.append(identity(os.stat(p)))
        except FileNotFoundError:
            continue
    return out


def inside(path: Path, dirs: list[Path]) -> bool:
    """Whether ``path`` is one of ``dirs`` or lies below one of them, through whatever path
    (bind mounts included) it was reached."""
    wanted = set()
    for d in dirs:
        try:
            wanted.add(identity(os.stat(d)))
        except OSError:
            continue
    return any(i in wanted for i in ancestors(path))


def open_store_dir(path: Path) -> int:
    """A descriptor of a store's ``config/`` or ``data/`` itself, never of what a symlink there
    names: the store's owner can replace either with a symlink to any directory root may read,
    which root would then copy into a backup (or read as the store). The directories above are
    the operator's path and are followed. Raises OSError (ELOOP for a symlink, see
    ``open_problem``)."""
    return open_dir(path)


def open_problem(path: Path, e: OSError) -> str:
    """Why ``open_store_dir(path)`` failed, in words. A symlink makes that open fail with ELOOP,
    or ENOTDIR (``O_DIRECTORY`` is checked first); the entry is looked at again to say which."""
    if e.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(path):
        return "a symlink (never followed; name the directory it points to itself)"
    return str(e.strerror)


class DataRoot:
    """The store's ``data/`` opened once; see the module doc."""

    def __init__(self, path: Path):
        self.path = path
        # data/ itself is never a symlink either (open_store_dir); nor is anything below it.
        self.fd: int | None = open_store_dir(path)

    def __enter__(self) -> DataRoot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the descriptor of ``data/``; harmless when called again."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def open_dir(self, rel: str) -> int:
        """A descriptor of directory ``rel`` below ``data/`` (the caller closes it). Raises
        OSError: ELOOP or ENOTDIR when a component is a symlink or not a directory."""
        assert self.fd is not None, "DataRoot used after close"
        return descend(self.fd, _parts(rel), lambda parent, part: open_dir(part, dir_fd=parent))

    def open_entry(self, rel: str) -> tuple[int, os.stat_result]:
        """An ``O_PATH`` descriptor of the entry ``rel`` below ``data/`` itself (a symlink is
        opened as the link, never followed; nothing is read and no device is opened) and its
        stat. Raises OSError."""
        parent, _, name = rel.rpartition("/")
        dfd = self.open_dir(parent)
        try:
            fd = open_entry(name, dir_fd=dfd)
        finally:
            os.close(dfd)
        try:
            return fd, os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise

    def listdir(self, rel: str) -> list[bytes]:
        """Names in directory ``rel`` below ``data/``, read through its descriptor."""
        fd = self.open_dir(rel)
        try:
            return [os.fsencode(n) for n in os.listdir(fd)]
        finally:
            os.close(fd)

    def is_dir(self, rel: str) -> bool:
        """Whether ``rel`` is a directory reached without a symlink."""
        try:
            os.close(self.open_dir(rel))
            return True
        except OSError:
            return False


def _parts(rel: str) -> list[str]:
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise OSError(22, "'..' in a path below data/", rel)
    return parts

"""Acting inside a store as the store's owner, never as root.

Everything in a store belongs to the mail server's user, who can put a symlink (or a FIFO, or a
hardlink) at any name in it: at the lock file LMDB opens with ``O_CREAT``, at the lease file, at
the directories ``verify --fix`` creates. A check of a path before opening it can always lose a
race. So, run as root, mailbak opens and creates files in a store only with the file-system
identity of the owner of ``data/`` (fsuid, fsgid and that user's groups, in the calling thread
only: ``_engine.set_fs_identity``). The kernel then refuses whatever that user could not do
(root's file-system capabilities are dropped for the thread meanwhile), and whatever is created
belongs to them. Root's identity comes back before anything is written to a destination.

Files are reached through a descriptor of their directory (``/proc/self/fd/N/NAME``), opened as
root, so the owner's identity needs no search permission on the directories above the store
(a store below a root-only directory stays readable); the last step is still checked as the owner.

Not guaranteed: run as another user, mailbak can only act as itself (no switch is made).
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mailbak import _engine
from mailbak.fsio import open_dir

#: Where a directory descriptor can be named as a path (Linux's procfs).
PROC_FD = Path("/proc/self/fd")


@dataclass(frozen=True)
class StoreOwner:
    """The identity to act as inside one store."""

    uid: int
    gid: int
    groups: tuple[int, ...]

    @classmethod
    def of(cls, data_dir: Path) -> StoreOwner | None:
        """The owner of ``data_dir``, or None when no switch is needed or possible: this process
        is not root (it can only act as itself), or ``data/`` belongs to root."""
        if os.geteuid() != 0:
            return None
        try:
            st = os.lstat(data_dir)
        except OSError:
            return None  # the caller reports a missing data/ itself
        if st.st_uid == 0:
            return None
        return cls(st.st_uid, st.st_gid, tuple(user_groups(st.st_uid, st.st_gid)))

    def engine_arg(self) -> tuple[int, int, list[int]]:
        """The identity as the engine takes it (``fix_owner``)."""
        return (self.uid, self.gid, list(self.groups))

    @contextmanager
    def acting(self) -> Iterator[None]:
        """The body runs, in this thread, with this identity; root's comes back afterwards,
        whatever happens (an exception, an interrupt)."""
        try:
            old = _engine.set_fs_identity(self.uid, self.gid, list(self.groups))
        except OSError as e:
            # For example root without CAP_SETUID in a container: nothing is opened as root instead.
            raise OSError(e.errno, f"cannot act as the store's owner ({self}): {e.strerror}") from e
        try:
            yield
        finally:
            _engine.set_fs_identity(*old)

    def __str__(self) -> str:
        return f"uid {self.uid}"


def user_groups(uid: int, gid: int) -> list[int]:
    """The groups of user ``uid`` (its passwd entry's, plus ``gid``); just ``gid`` for a uid
    without an entry (for example a container's user)."""
    try:
        name = pwd.getpwuid(uid).pw_name
        return sorted(set(os.getgrouplist(name, gid)) | {gid})
    except (KeyError, OSError):
        return [gid]


@contextmanager
def acting_as(owner: StoreOwner | None) -> Iterator[None]:
    """``owner.acting()``, or nothing when there is no owner to act as."""
    if owner is None:
        yield
    else:
        with owner.acting():
            yield


@contextmanager
def in_directory(path: Path) -> Iterator[tuple[int, str]]:
    """A descriptor of ``path``'s directory (opened now, as the caller is) and a path naming
    ``path`` through it, for libraries that take only paths (LMDB)."""
    fd = open_dir(path.parent, follow=True)
    try:
        via = f"{PROC_FD}/{fd}/{path.name}" if PROC_FD.is_dir() else str(path)
        yield fd, via
    finally:
        os.close(fd)

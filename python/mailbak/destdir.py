"""Destinations, and what makes a directory a backup.

- :func:`check_destination`: a destination (DEST of a backup, STORE of a restore) must not exist
  (its parent must) or be an empty directory, and is never reached through a symlink.
- The one directory mode and ownership policy: a directory mailbak creates is made
  :data:`PRIVATE_DIR_MODE` (nobody else can enter while it is filled), then gets its source's
  mode capped at :data:`DIR_MODE_CAP` (nothing for others: a backup holds secrets) and, as root,
  its source's owner and group (:func:`make_dir`); without a source, :data:`DEFAULT_DIR_MODE`.
- The one answer to "is this directory a backup?": it holds ``mailbak.json``, whatever else it
  holds (:func:`is_backup`; docs/FORMAT.md section 8). A store is a directory with
  ``config/mailstore.toml`` and ``data/`` and no manifest (:func:`is_store`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mailbak.errors import UsageError
from mailbak.layout import CONFIG_FILE
from mailbak.manifest import MANIFEST

#: Mode of a directory while mailbak creates and fills it, and of a target restore holds.
PRIVATE_DIR_MODE = 0o700
#: Mode of a directory that has no source to take its mode from.
DEFAULT_DIR_MODE = 0o750
#: The bits a directory mailbak creates may keep of its source's: nothing for others.
DIR_MODE_CAP = 0o770

#: The entries at the top of a backup.
BACKUP_ENTRIES = ("config", "data", MANIFEST)


def is_backup(path: Path) -> bool:
    """A directory holding ``mailbak.json`` is a backup, whatever else it holds (lock files, a
    ``data/tmp/``): ``mailbak backup`` writes the manifest before anything else."""
    return os.path.lexists(path / MANIFEST)


def is_store(path: Path) -> bool:
    """A store is a directory with ``config/mailstore.toml`` and ``data/`` and no manifest.
    The entries are looked at without following symlinks: a store whose ``config/`` or
    ``data/`` its owner made a symlink is still a store, which ``StorePaths.problem`` then
    refuses, and never mistaken for a backup."""
    if is_backup(path):
        return False
    return os.path.lexists(path / "config" / CONFIG_FILE) and os.path.lexists(path / "data")


def check_destination(dest: Path, action: str = "back up", hint: str = "") -> None:
    """DEST must not exist (its parent must) or be an empty directory; ``action`` names what
    the user does with it in the hint ("back up", "restore"), ``hint`` is added to the message
    for a directory that is not empty. Raises UsageError."""
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        if not dest.parent.is_dir():
            raise UsageError(f"{dest}: its parent directory does not exist") from None
        return
    if stat.S_ISLNK(st.st_mode):
        raise UsageError(f"{dest}: is a symlink (a symlink is never followed); give the directory it points to itself")
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{dest}: exists and is not a directory")
    try:
        if any(os.scandir(dest)):
            raise UsageError(f"{dest}: destination is not empty ({action} into a new or empty directory){hint}")
    except PermissionError as e:
        raise UsageError(f"{dest}: cannot read the destination: {e.strerror}") from e


def make_dir(path: Path, like: Path | None) -> None:
    """Creates a destination directory with its source's mode, capped at DIR_MODE_CAP, and, as
    root, its source's owner and group (a restored store must stay the server's). Mode and owner
    are set through a descriptor of the directory created, never by a path that could have
    become a symlink meanwhile."""
    mode, owner = DEFAULT_DIR_MODE, None
    if like is not None:
        try:
            st = os.stat(like)
            mode, owner = stat.S_IMODE(st.st_mode) & DIR_MODE_CAP, (st.st_uid, st.st_gid)
        except OSError:
            pass
    os.mkdir(path, PRIVATE_DIR_MODE)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        # The owner always keeps full access: mailbak must be able to fill what it made.
        os.fchmod(fd, mode | PRIVATE_DIR_MODE)
        if owner is not None and os.geteuid() == 0:
            os.fchown(fd, *owner)
    finally:
        os.close(fd)


def close_to_others(path: Path) -> None:
    """Takes every bit outside DIR_MODE_CAP from an existing directory (a DEST given empty):
    a backup holds secrets (auth.db, receivedid.key). Raises OSError."""
    os.chmod(path, stat.S_IMODE(os.stat(path).st_mode) & DIR_MODE_CAP)

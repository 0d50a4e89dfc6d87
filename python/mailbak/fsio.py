"""mailbak's own small files and directories: the one module that opens, reads, replaces and
syncs them, so that the rules for doing so are written once (restic's ``internal/fs`` is the
model: the phases never call the OS directly for these).

The rules:

- A directory is opened without following a symlink (``O_NOFOLLOW``): where a store's owner or
  another user could swap one in, root must not be led into a directory of its choosing
  (:func:`open_dir`). Only a directory the caller names as given (the operator's path, a
  ``/proc/self/fd/N`` path naming a held directory, which is itself a link) is followed
  (``follow=True``). Directories only passed through are opened ``O_PATH``
  (:func:`open_dir_search`): search permission is enough, nothing is read through them.
- A small file someone else may have placed is opened without following a symlink and without
  waiting (``O_NONBLOCK``: a FIFO would hang the run), read only when ``fstat`` says it is a
  regular file, and never past its bound (:func:`read_small`, :func:`read_bounded`,
  :func:`read_json`).
- A file others read while mailbak may be killed is replaced atomically: temporary file created
  new (``O_CREAT|O_EXCL|O_NOFOLLOW``, never whatever sits at its name), written, fsynced,
  renamed, then the directory fsynced (:func:`replace_file`).
- Every descriptor is close-on-exec: restic and other children never inherit one.

Every function raises OSError as ``os.open`` does (with the errno of the call that failed);
callers turn it into their own messages. Not covered here: the message tree and databases of a
store (the Rust engine, ``anchor.py``, ``lmdbcopy.py``) and the writer library ``store.py``.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Flags of a directory opened to read it, lock it or write into it: never a symlink.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Flags of a directory as the caller named it: a symlink at its last component is followed.
_NAMED_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
#: Flags of a directory only passed through on the way to another: search permission is enough.
_SEARCH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Flags of an entry looked at, never read or followed (no device is opened either).
_ENTRY_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
#: Flags of every small file read: a symlink is never followed and a FIFO never waited for.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: Flags of a file created new, never anything already at its name (less the access mode).
_CREATE_FLAGS = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


# Directories ----------------------------------------------------------------------------------


def open_dir(path: os.PathLike | str, *, dir_fd: int | None = None, follow: bool = False) -> int:
    """A descriptor (read-only, close-on-exec) of directory ``path``, never of what a symlink
    there names; with ``dir_fd``, ``path`` is relative to that directory (``"."``: a new open
    file description of it, as a ``flock`` needs). ``follow=True`` follows a symlink at the last
    component: for a directory as the caller named it (the operator's path, or a
    ``/proc/self/fd/N`` path). Raises OSError: ELOOP for a symlink, ENOTDIR for anything else
    that is not a directory."""
    return os.open(path, _NAMED_DIR_FLAGS if follow else _DIR_FLAGS, dir_fd=dir_fd)


def descend(dir_fd: int, parts: list[str], step: Callable[[int, str], int]) -> int:
    """A new descriptor of the directory ``parts`` below ``dir_fd``, reached one component at
    a time: ``step(parent_fd, name)`` opens (or creates) each, never following a symlink; every
    descriptor on the way is closed, also when a step fails. Raises what ``step`` raises."""
    fd = os.dup(dir_fd)
    try:
        for part in parts:
            new = step(fd, part)
            os.close(fd)
            fd = new
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_dir_search(path: os.PathLike | str, *, dir_fd: int | None = None) -> int:
    """An ``O_PATH`` descriptor of directory ``path`` (relative to ``dir_fd`` when given), never
    through a symlink: for a directory passed through on the way to another, which needs only
    search permission; ``fstat`` works on it, reading does not. Raises OSError."""
    return os.open(path, _SEARCH_FLAGS, dir_fd=dir_fd)


def open_entry(name: os.PathLike | str, *, dir_fd: int | None = None) -> int:
    """An ``O_PATH`` descriptor of the entry ``name`` itself, whatever it is (a symlink is
    opened as the link, never followed; nothing is read and no device is opened), to ``fstat``
    it or hand it on. Raises OSError."""
    return os.open(name, _ENTRY_FLAGS, dir_fd=dir_fd)


def fsync_dir(path: os.PathLike | str) -> None:
    """Makes the entries of directory ``path`` (as named, followed) durable: opened, fsynced,
    closed. A file system that cannot sync a directory (EINVAL, EROFS) is left as it is."""
    fd = open_dir(path, follow=True)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EROFS):
            raise
    finally:
        os.close(fd)


# Files ----------------------------------------------------------------------------------------


def open_file(path: os.PathLike | str, *, dir_fd: int | None = None, follow: bool = False) -> int:
    """A read-only descriptor of the file ``path`` (relative to ``dir_fd`` when given), opened
    without following a symlink (ELOOP) and without waiting (``O_NONBLOCK``: a FIFO would
    otherwise block the open forever). ``follow=True`` follows a symlink at the last component:
    only for a file the operator names (a setting), never for one in a store. The caller checks
    with ``fstat`` that it is a regular file, as :func:`read_small` does. Raises OSError."""
    return os.open(path, _FILE_FLAGS & ~os.O_NOFOLLOW if follow else _FILE_FLAGS, dir_fd=dir_fd)


def create_new(name: os.PathLike | str, mode: int, *, dir_fd: int | None = None, access: int = os.O_WRONLY) -> int:
    """A descriptor of the file ``name`` created new with ``mode`` (less the umask), ``access``
    being ``os.O_WRONLY`` or ``os.O_RDWR``: whatever sits at that name already (a symlink, a
    FIFO, a hardlink to another file) is never opened. Raises OSError: FileExistsError when the
    name is taken."""
    return os.open(name, access | _CREATE_FLAGS, mode, dir_fd=dir_fd)


class Refused(OSError):
    """A small file ``read_small`` will not read; ``strerror`` says why (a symlink, not a
    regular file, larger than its bound)."""


def read_small(path: os.PathLike | str, limit: int, *, dir_fd: int | None = None, follow: bool = False) -> bytes:
    """The one way mailbak reads a small file a hostile user may have placed (a store's config,
    its ``mailstore-version``, a manifest): opened without following a symlink and without
    waiting (``O_NOFOLLOW|O_NONBLOCK``: a FIFO would otherwise hang the run), refused unless
    ``fstat`` says it is a regular file, never read past ``limit`` bytes. With ``dir_fd``, ``path``
    is a name in that directory; ``follow``: as for :func:`open_file`. Raises OSError:
    FileNotFoundError when missing, ``Refused`` for what is never read."""
    try:
        fd = open_file(path, dir_fd=dir_fd, follow=follow)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise Refused(e.errno, "a symlink (never followed)") from e
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused(errno.EINVAL, "not a regular file (a FIFO, socket or device is never read)")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise Refused(errno.EFBIG, f"larger than {limit} bytes")
    return b"".join(chunks)


def read_bounded(path: Path, limit: int, missing: Exception, error: Callable[[str], Exception], *, dir_fd: int | None = None) -> bytes:
    """``read_small`` with one message per failure: a missing file raises ``missing``; every
    other failure is ``error`` with a message naming ``path``. With ``dir_fd``, the last
    component of ``path`` is read in that directory (``path`` names it in messages)."""
    try:
        return read_small(path.name if dir_fd is not None else path, limit, dir_fd=dir_fd)
    except FileNotFoundError as e:
        raise missing from e
    except Refused as e:
        raise error(f"{path}: {e.strerror}") from e
    except OSError as e:
        raise error(f"{path}: cannot read: {e.strerror}") from e


def read_json(path: Path, limit: int, missing: Exception, error: Callable[[str], Exception]) -> Any:
    """A small JSON document read with ``read_bounded`` and decoded; one that is not UTF-8 JSON
    is ``error`` with a message naming ``path``. What the document must hold is the caller's
    to check."""
    raw = read_bounded(path, limit, missing, error)
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: malformed JSON: {e}") from e
    except RecursionError as e:
        # Arrays or objects nested deeper than the parser recurses: a few kilobytes of brackets
        # must be one damaged file, never a traceback (mailbak itself writes a few levels).
        raise error(f"{path}: malformed JSON: nested too deeply") from e


def replace_file(path: Path, data: bytes, *, mode: int, tmp_name: str | None = None) -> None:
    """Replaces ``path`` with ``data`` so that a reader (of the manifest, the repository marker,
    the metrics file) sees the old file or the new one, never a part, whenever mailbak is
    killed: a temporary file in the same directory, written and fsynced, renamed over ``path``,
    then the directory fsynced. ``path``'s directory is opened once, as named (a caller that
    holds it passes its ``/proc/self/fd/N`` path), and the temporary file is created in it with
    :func:`create_new`, so the rename and the fsync act on that same directory.

    With ``tmp_name`` the temporary file has that name and is created with ``mode`` (less the
    umask); a failed write leaves it, and the next write removes whatever is at that name (the
    name only, never what a symlink there points to) and creates it anew. Without, it gets a
    fresh hidden name (``.NAME.*.tmp``: a textfile collector, which reads only ``*.prom``,
    ignores it), exactly ``mode``, and is removed when the write fails."""
    dfd = open_dir(path.parent, follow=True)
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
                return tmp, create_new(tmp, 0o600, dir_fd=dfd)
            except FileExistsError:
                continue
        raise FileExistsError(errno.EEXIST, "no free temporary name", name)
    try:
        return tmp_name, create_new(tmp_name, mode, dir_fd=dfd)
    except FileExistsError:
        # Left by a run that was killed mid-write, or planted: unlinkat removes the name itself
        # (a symlink is not followed), and the one retry creates a new file or fails.
        os.unlink(tmp_name, dir_fd=dfd)
        return tmp_name, create_new(tmp_name, mode, dir_fd=dfd)

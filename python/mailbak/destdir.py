"""Destinations, and what makes a directory a backup.

- :func:`check_destination`: a destination (DEST of a backup, STORE of a restore) must not exist
  (its parent must) or be an empty directory, and is never reached through a symlink.
- The one directory mode and ownership policy: a directory mailbak creates is made
  :data:`PRIVATE_DIR_MODE` (nobody else can enter while it is filled), then gets its source's
  mode capped at :data:`DIR_MODE_CAP` (nothing for others: a backup holds secrets) and, as root,
  its source's owner and group (:func:`make_dir`); without a source, :data:`DEFAULT_DIR_MODE`.
- Where root writes, for a whole run (:class:`HeldDir`, :func:`hold_parent`, :func:`hold_new`,
  :func:`hold_existing`): DEST, the snapshot directory, REPO are reached from ``/`` one
  component at a time without following a symlink, refused when a directory on the way could be
  changed by another user (:func:`unsafe_reason`), and from then on written through their
  descriptor (``/proc/self/fd/N``), so that a rename or a symlink swapped in later changes
  nothing. A directory mailbak takes (an empty DEST, a directory ``init`` makes a repository)
  becomes the running user's, mode :data:`PRIVATE_DIR_MODE`.
- The one answer to "is this directory a backup?": it holds ``mailbak.json``, whatever else it
  holds (:func:`is_backup`; docs/FORMAT.md section 8). A store is a directory with
  ``config/mailstore.toml`` and ``data/`` and no manifest (:func:`is_store`).
- A destination that vanishes: a systemd service's private /tmp (:func:`private_tmp_warning`).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from mailbak import digests
from mailbak.errors import UsageError
from mailbak.fsio import open_dir, open_dir_search
from mailbak.identity import PROC_FD
from mailbak.layout import CONFIG_FILE
from mailbak.manifest import MANIFEST

#: Mode of a directory while mailbak creates and fills it, and of a target restore holds.
PRIVATE_DIR_MODE = 0o700
#: Mode of a directory that has no source to take its mode from.
DEFAULT_DIR_MODE = 0o750
#: The bits a directory mailbak creates may keep of its source's: nothing for others.
DIR_MODE_CAP = 0o770

#: The entries at the top of a backup.
BACKUP_ENTRIES = ("config", "data", MANIFEST, digests.DIR)


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


def make_dir(path: Path, like: Path | None, *, exist_ok: bool = False) -> None:
    """Creates a destination directory with its source's mode, capped at DIR_MODE_CAP, and, as
    root, its source's owner and group (a restored store must stay the server's). Mode and owner
    are set through a descriptor of the directory created, never by a path that could have
    become a symlink meanwhile. ``exist_ok``: a directory already there (a backup brought up to
    date in place: docs/REPOSITORY.md, "Repositories on btrfs") gets the same mode and owner;
    a symlink there is never followed (the open refuses it)."""
    mode, owner = DEFAULT_DIR_MODE, None
    if like is not None:
        try:
            st = os.stat(like)
            mode, owner = stat.S_IMODE(st.st_mode) & DIR_MODE_CAP, (st.st_uid, st.st_gid)
        except OSError:
            pass
    try:
        os.mkdir(path, PRIVATE_DIR_MODE)
    except FileExistsError:
        if not exist_ok:
            raise
    fd = open_dir(path)
    try:
        # The owner always keeps full access: mailbak must be able to fill what it made.
        os.fchmod(fd, mode | PRIVATE_DIR_MODE)
        if owner is not None and os.geteuid() == 0:
            os.fchown(fd, *owner)
    finally:
        os.close(fd)


class HeldDir:
    """A directory held by descriptor: ``path`` names it to the user (reports, the manifest),
    ``via`` names it to everything that writes into it. ``via`` is ``/proc/self/fd/N``, which
    the kernel resolves to the held directory itself, whatever has become of ``path`` since it
    was opened (renamed, replaced by a symlink); the Rust engine and LMDB take it as any path."""

    def __init__(self, path: Path, fd: int, name: str):
        self.path = path
        self.fd: int | None = fd
        #: Its name in its parent directory (``path`` may end in ``.``, say).
        self.name = name
        #: Held by :func:`hold_parent`: the name in it of the path it was held for.
        self.entry = ""

    @property
    def via(self) -> Path:
        """The path that reaches the held directory itself (``/proc/self/fd/N``), or ``path`` on a
        system without ``/proc/self/fd``."""
        assert self.fd is not None, "HeldDir used after close"
        return PROC_FD / str(self.fd) if PROC_FD.is_dir() else self.path

    def child(self, name: str, path: Path | None = None) -> HeldDir:
        """Directory ``name`` in this one (``path`` to the user, by default this one's path and
        the name), opened relative to it without following a symlink. Raises OSError."""
        assert self.fd is not None, "HeldDir used after close"
        return HeldDir(path or self.path / name, open_dir(name, dir_fd=self.fd), name)

    def shown(self, text: str) -> str:
        """``text`` (an error message) with ``via`` named as the user named the directory."""
        if self.fd is None:
            return text
        via = str(self.via)
        return str(self.path) if text == via else text.replace(via + "/", f"{self.path}/")

    def close(self) -> None:
        """Closes the held descriptor; harmless when called again."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def unsafe_reason(st: os.stat_result) -> str | None:
    """Why another user than root and the running user could create, rename or remove entries
    in the directory of ``st`` (None: nobody can): its owner, or its write bits for group or
    others without the sticky bit. A sticky directory writable by others (``/tmp``) is safe to
    pass through: there only the owner of an entry can rename it, and the entry below it on
    the way is checked in turn (it must be root's), or created or taken by mailbak."""
    if st.st_uid not in (0, os.geteuid()):
        return f"it belongs to uid {st.st_uid}"
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        return f"others can write to it (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _refuse(path: Path, where: str, why: str, what: str) -> UsageError:
    return UsageError(f"{path}: refusing to write there: {where} can be changed by another user ({why}), who could make root write elsewhere; give {what} below directories that only root can change")


#: Symlinks followed on the way to a destination before giving up (the kernel's own bound).
MAX_SYMLINKS = 40


def hold_parent(path: Path, what: str = "a destination") -> HeldDir:
    """The parent directory of ``path``, reached from ``/`` one component at a time, never
    following a symlink, each directory on the way checked with :func:`unsafe_reason`. A
    symlink the operator put in the path is resolved here, not by the kernel: it is read
    (``readlinkat``) in a directory already checked, and its target walked the same way, so
    that nobody else can retarget a link on the way (or one a link leads through) between a
    check and its use. The held parent's ``entry`` is the name ``path`` has in it (for
    :func:`hold_new`, :func:`hold_existing`). Raises UsageError (another user could change a
    directory on the way; one is missing)."""
    given = path if path.is_absolute() else Path.cwd() / path
    todo = list(given.parts[1:])
    stack = [open_dir_search("/")]  # the directories walked into, "/" first
    names: list[str] = []
    links = 0

    def fail(text: str) -> UsageError:
        for fd in stack:
            os.close(fd)
        return UsageError(text)

    def here() -> str:
        return "/" + "/".join(names)

    why = unsafe_reason(os.fstat(stack[0]))
    if why is not None:
        raise fail(str(_refuse(path, "/", why, what)))
    while todo:
        part = todo.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if len(stack) > 1:
                os.close(stack.pop())
                names.pop()
            continue
        if not todo:
            names.append(part)  # the last component is ``path`` itself: not entered here
            break
        try:
            new = open_dir_search(part, dir_fd=stack[-1])
        except OSError as e:
            try:
                target = os.readlink(part, dir_fd=stack[-1])
            except OSError:
                raise fail(f"{path}: cannot reach its parent directory through {here()}/{part}: {e.strerror}") from e
            links += 1
            if links > MAX_SYMLINKS:
                raise fail(f"{path}: more than {MAX_SYMLINKS} symlinks on the way") from e
            if target.startswith("/"):
                while len(stack) > 1:
                    os.close(stack.pop())
                names.clear()
            todo = list(Path(target).parts[1:] if target.startswith("/") else Path(target).parts) + todo
            continue
        stack.append(new)
        names.append(part)
        why = unsafe_reason(os.fstat(new))
        if why is not None:
            raise fail(str(_refuse(path, here(), why, what)))
    if not names or names[-1] in (".", ".."):
        raise fail(f"{path}: names no directory entry to write")
    entry = names.pop()
    if len(stack) > len(names) + 1:  # the last component ended a "..": its directory was entered
        os.close(stack.pop())
    for fd in stack[:-1]:
        os.close(fd)
    held = HeldDir(path.parent, stack[-1], names[-1] if names else "/")
    held.entry = entry
    return held


def hold_existing(parent: HeldDir, path: Path, what: str = "a repository") -> HeldDir:
    """Directory ``path`` (an existing repository), opened in ``parent`` without following a
    symlink and held; refused like its ancestors when another user could change it. Raises
    UsageError."""
    try:
        held = parent.child(parent.entry, path)
    except OSError as e:
        raise UsageError(f"{path}: cannot open it without following a symlink: {e.strerror}") from e
    assert held.fd is not None
    why = unsafe_reason(os.fstat(held.fd))
    if why is not None:
        held.close()
        raise _refuse(path, "the directory itself", why, what)
    return held


def hold_new(parent: HeldDir, path: Path) -> tuple[HeldDir, bool]:
    """Directory ``path`` created in ``parent`` (mode 0700), or, when it exists (an empty
    directory, checked by :func:`check_destination`), taken: made the running user's, mode
    0700, through its descriptor (run as another user than root: made 0700 when it is theirs,
    else left as it is). Whoever owned it (or a directory mailbak is about to create
    in it) could otherwise plant a symlink at a name root writes, such as the manifest's
    temporary file. Returns the held directory and whether it existed. Raises OSError, and
    UsageError when it was written into meanwhile."""
    assert parent.fd is not None, "HeldDir used after close"
    existed, name = True, parent.entry
    try:
        os.mkdir(name, PRIVATE_DIR_MODE, dir_fd=parent.fd)
        existed = False
    except FileExistsError:
        pass
    held = parent.child(name, path)
    try:
        assert held.fd is not None
        st = os.fstat(held.fd)
        me = (os.geteuid(), os.getegid())
        if me[0] == 0 and (st.st_uid, st.st_gid) != me:
            os.fchown(held.fd, *me)
        # Run as another user than root, only what is theirs is made private; writing into a
        # directory of someone else's then fails (or succeeds) as that user's rights say.
        if me[0] == 0 or st.st_uid == me[0]:
            os.fchmod(held.fd, PRIVATE_DIR_MODE)
        # Only now can nobody else add entries: what came in before the check above is refused.
        if existed and os.listdir(held.fd):
            raise UsageError(f"{path}: something was created in the destination while mailbak was starting; give another new or empty directory")
    except BaseException:
        held.close()
        raise
    return held, existed


# systemd's private /tmp ----------------------------------------------------------------------


def mount_of(path: str, mountinfo: str = "/proc/self/mountinfo") -> tuple[str, str] | None:
    """(mount point, root within its file system) of the mount holding ``path`` (absolute,
    resolved), or None when mountinfo is unreadable."""
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            rows = [line.split() for line in f]
    except OSError:
        return None

    def unescape(s: str) -> str:  # mountinfo writes space, tab, newline, backslash as \ooo
        return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)

    best = None
    for row in rows:
        if len(row) < 5:
            continue
        root, point = unescape(row[3]), unescape(row[4])
        if path == point or path.startswith(point.rstrip("/") + "/"):
            if best is None or len(point) >= len(best[0]):  # later rows stack over earlier ones
                best = (point, root)
    return best


def private_tmp_warning(dest: str | os.PathLike[str]) -> str | None:
    """A warning when DEST lies in a systemd service's private /tmp or /var/tmp (PrivateTmp=):
    whatever is written there vanishes when the service stops. Detected from the service's
    environment (INVOCATION_ID) and the mount: systemd bind-mounts a ``systemd-private-*``
    directory over /tmp and /var/tmp."""
    if not os.environ.get("INVOCATION_ID"):
        return None
    path = os.path.realpath(dest)
    if not any(path == t or path.startswith(t + "/") for t in ("/tmp", "/var/tmp")):
        return None
    mount = mount_of(path)
    if mount is None or mount[0] not in ("/tmp", "/var/tmp") or "systemd-private-" not in mount[1]:
        return None
    return f"{mount[0]} is private to this systemd service (PrivateTmp=): the backup vanishes when the service stops; back up to a directory named in ReadWritePaths="

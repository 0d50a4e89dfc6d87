"""Snapshot repositories (docs/REPOSITORY.md): a directory of snapshots, each an ordinary complete
backup named by its UTC start time, made by ``mailbak backup STORE REPO`` against the newest
complete one and thinned by ``mailbak prune``.

What a repository is, on disk:

- ``REPO/mailbak-repo.json``, the marker (:data:`MARKER`): kind, format version, creation time
  and the method (:class:`Method`: ``subvolume`` when ``init`` found REPO on btrfs, else
  ``hardlink``; a marker without it is ``hardlink``). ``mailbak init`` writes it into an absent
  or empty directory; nothing else makes a directory a repository.
- ``REPO/YYYY-MM-DDTHHMMSSZ`` (a suffix ``-1``, ``-2`` on collision): one snapshot each. Any other
  entry is not a snapshot, never listed, never touched.
- ``REPO/.trash/``: snapshots prune has decided to remove and not yet finished deleting.
- ``REPO/.seals/NAME`` (subvolume method only): the seal of snapshot NAME's read-only subvolume
  (its UUID and the transaction of its last change), noted when its backup made it read-only.
  The next backup keeps the files its clone of NAME proves unlooked at only while NAME's seal is
  still that one (nothing in NAME changed since); prune removes it with the snapshot.
- ``REPO/.new-NAME-PID`` (subvolume method only): a snapshot's subvolume while its backup sets
  it up (:meth:`Repository.create_subvolume_snapshot`), renamed to its name once its manifest
  says ``running`` and its lock is held; one left by a killed run goes to the trash at the
  next prune.

The status of a snapshot (:func:`status_of`) comes from its manifest and from a lock: the backup
writing it holds an exclusive ``flock`` on the snapshot directory for its whole run, so a
manifest that still says ``running`` means ``running`` while that lock is held and ``incomplete``
(interrupted, killed) once it is not. The repository itself is locked the same way: a backup
holds a shared ``flock`` on the repository directory, prune an exclusive one (:class:`RepoLock`),
so prune never removes the reference of a snapshot being written; verify and restore of a
snapshot hold it shared too (:func:`reader_lock`), so prune never removes what they read.

Every entry is looked at with ``lstat``: a symlink in REPO is never a snapshot, never followed.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from mailbak import _engine, manifest
from mailbak.destdir import PRIVATE_DIR_MODE, check_destination, hold_new, hold_parent
from mailbak.errors import ManifestError, RepositoryBusy, UsageError
from mailbak.fsio import fsync_dir, open_dir, read_small, replace_file
from mailbak.job import Metrics, Stage
from mailbak.layout import read_tagged_json
from mailbak.report import rfc3339
from mailbak.status import Status

#: The marker file that makes a directory a repository.
MARKER = "mailbak-repo.json"
#: Identifies the marker as ours.
KIND = "mailbak-repository"
#: Version of the repository layout.
REPO_FORMAT = 1
#: Where prune moves snapshots before deleting them.
TRASH = ".trash"
#: Where the seals of the subvolume method's read-only snapshots are noted, one file per snapshot
#: (:meth:`Repository.record_seal`).
SEALS = ".seals"
#: Largest seal file read.
MAX_SEAL_BYTES = 256
#: Largest marker accepted.
MAX_MARKER_BYTES = 64 * 1024
#: Mode of the marker file.
MARKER_MODE = 0o640

#: strftime format of a snapshot's name: its start time in UTC, to the second.
NAME_FORMAT = "%Y-%m-%dT%H%M%SZ"
#: A snapshot's directory name: the start time, then an optional collision suffix.
NAME_RE = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{6}Z)(?:-([1-9]\d{0,5}))?$")

#: The start and finish times a manifest may hold (UTC, the latest excluded): no backup started
#: before the Unix epoch, a snapshot's name has a four-digit year, and prune must be able to
#: show every such time on the local clock of any time zone (``astimezone`` overflows at the
#: ends of Python's calendar). A manifest with a time outside makes its snapshot incomplete.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)

#: What a snapshot's subvolume is called while its backup sets it up (subvolume method): never a
#: snapshot's name, so never listed or taken as a reference.
CREATING_PREFIX = ".new-"


class Method(StrEnum):
    """How a repository's snapshots share what did not change (the marker's ``method``)."""

    #: Each snapshot a directory; unchanged files hardlinked from the reference.
    HARDLINK = "hardlink"
    #: Each snapshot a btrfs subvolume, begun as a snapshot of the reference's and brought up to
    #: date in place (docs/REPOSITORY.md, "Repositories on btrfs").
    SUBVOLUME = "subvolume"


#: Failed or incomplete snapshots newer than the newest complete one at which a backup into the
#: repository warns: prune keeps them (they may hold the latest mail), so a store that keeps
#: failing would otherwise fill the disk unnoticed; a week of nightly failures.
FAILED_PILE_WARN = 7


def is_repository(path: Path) -> bool:
    """Whether ``path`` is a directory holding the repository marker (neither of them a symlink)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode) and stat.S_ISREG(os.lstat(path / MARKER).st_mode)
    except OSError:
        return False


def snapshot_name(started: float) -> str:
    """The directory name of a snapshot started at ``started`` (without collision suffix)."""
    return time.strftime(NAME_FORMAT, time.gmtime(started))


def name_time(name: str) -> datetime | None:
    """The start time a snapshot's name says (UTC), or None for a name that is not one."""
    m = NAME_RE.match(name)
    if not m:
        return None
    try:
        return datetime.strptime(m.group(1), NAME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def parse_time(text: Any) -> datetime | None:
    """An RFC 3339 UTC time as the manifest writes it (``2026-11-26T02:00:00Z``), or None."""
    if not isinstance(text, str):
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else None


def in_time_range(t: datetime) -> bool:
    """Whether ``t`` (aware) lies between EARLIEST and LATEST."""
    return EARLIEST <= t < LATEST


def is_locked(path: Path) -> bool:
    """Whether a backup is writing the snapshot at ``path`` (it holds the directory's lock)."""
    try:
        fd = open_dir(path)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


@dataclass(frozen=True)
class SnapshotInfo:
    """One snapshot of a repository, as ``mailbak snapshots`` shows it."""

    name: str
    path: Path
    #: ok, failed, incomplete or running.
    status: str
    #: Start time: the manifest's; for a snapshot without a readable manifest, its name's.
    start: datetime
    #: Finish time from the manifest (complete and failed snapshots).
    finished: datetime | None
    #: The manifest (None when missing or unreadable).
    manifest: dict[str, Any] | None
    #: Why the status is incomplete, when it is (no manifest, malformed manifest, ...).
    detail: str | None = None

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish; None for a snapshot without a finish time."""
        return (self.finished - self.start).total_seconds() if self.finished else None

    @property
    def transfer(self) -> dict[str, Any]:
        """The manifest's transfer counts (messages, linked, reused, copied, bytes_copied) and
        reference; empty for a snapshot whose manifest has none."""
        t = (self.manifest or {}).get("transfer")
        return t if isinstance(t, dict) else {}

    def as_json(self) -> dict[str, Any]:
        """The snapshot as ``mailbak snapshots --json`` prints it: status, times, the manifest's
        transfer counts, errors and warnings."""
        t = self.transfer
        return {
            "name": self.name,
            "path": str(self.path),
            "status": self.status,
            "started": rfc3339(self.start.timestamp()),
            "finished": rfc3339(self.finished.timestamp()) if self.finished else None,
            "duration_seconds": round(self.duration, 3) if self.duration is not None else None,
            "reference": (self.manifest or {}).get("reference"),
            **{k: t.get(k) for k in ("messages", "linked", "reused", "copied", "bytes_copied")},
            "errors": (self.manifest or {}).get("errors"),
            "warnings": (self.manifest or {}).get("warnings"),
            **({"detail": self.detail} if self.detail else {}),
        }


def status_of(path: Path, name: str) -> SnapshotInfo:
    """Reads one snapshot's manifest and lock (see the module doc)."""
    fallback = name_time(name)
    if fallback is None or not in_time_range(fallback):
        fallback = EARLIEST
    doc: dict[str, Any] | None = None
    detail = None
    try:
        doc = manifest.read(path)
    except ManifestError as e:
        detail = "no manifest" if e.kind == ManifestError.MISSING else str(e)
    status = doc.get("status") if doc else None
    start = parse_time(doc.get("started")) if doc else None
    finished = parse_time(doc.get("finished")) if doc and status in (Status.OK, Status.FAILED) else None
    if status in (Status.OK, Status.FAILED) and start is None:
        status, detail = Status.INCOMPLETE, "manifest has no start time"
    bad_times = [f"{key} time {doc[key]!r}" for key, t in (("started", start), ("finished", finished)) if doc and t is not None and not in_time_range(t)]
    if bad_times:
        # A start in 9999 would be every later backup's reference, and prune, which shows times
        # on the local clock, would stop; the snapshot is shown at its name's time instead.
        detail = f"manifest's {' and '.join(bad_times)} out of range ({EARLIEST.year} to {LATEST.year - 1})"
        status = Status.INCOMPLETE if status in (Status.OK, Status.FAILED) else status
        start = start if start is not None and in_time_range(start) else None
        finished = None
    if status not in (Status.OK, Status.FAILED):
        if is_locked(path):
            status = Status.RUNNING
        else:
            detail = detail or "its manifest still says running: interrupted or killed"
            status = Status.INCOMPLETE
    return SnapshotInfo(name, path, status, start or fallback, finished, doc, detail if status == Status.INCOMPLETE else None)


class RepoLock:
    """The repository's ``flock``: shared for a backup (several may write snapshots at once) and
    for a verify or restore of a snapshot, exclusive for prune. ``wait`` False raises
    RepositoryBusy instead of waiting; ``on_wait`` is told once, before waiting. Released by
    ``release()`` or when the process ends. With ``dir_fd`` (a descriptor of REPO the caller
    holds) the lock is taken on that directory, and ``repo`` only names it in messages."""

    def __init__(self, repo: Path, *, exclusive: bool, wait: bool = True, on_wait: Callable[[str], None] | None = None, dir_fd: int | None = None):
        self.fd: int | None = _open_lockable(repo, dir_fd)
        how = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            try:
                fcntl.flock(self.fd, how | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            held = "a backup, an offsite push, a verify or restore of a snapshot, or another prune" if exclusive else "a prune"
            if not wait:
                raise RepositoryBusy(f"{repo}: the repository is locked by another mailbak ({held}); not waiting (--no-wait)")
            if on_wait is not None:
                on_wait(f"{repo}: waiting for the repository lock, held by another mailbak ({held})")
            fcntl.flock(self.fd, how)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Releases the lock (closes its descriptor); harmless when called again."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def reader_lock(path: Path, *, on_wait: Callable[[str], None] | None = None) -> RepoLock | None:
    """For a command that reads ``path`` (verify, restore): when ``path`` is a snapshot of a
    repository, that repository's shared lock, so that no prune removes the snapshot while it
    is read (a prune holding it makes the reader wait, saying so to ``on_wait``); None for any
    other path. Raises UsageError when the repository cannot be opened to lock it."""
    # The directory prune would remove, whatever path names it.
    real = Path(os.path.realpath(path))
    if not NAME_RE.match(real.name) or not is_repository(real.parent):
        return None
    try:
        return RepoLock(real.parent, exclusive=False, on_wait=on_wait)
    except OSError as e:
        raise UsageError(f"{real.parent}: cannot lock the repository of the snapshot {real.name}: {e.strerror}") from e


def _open_lockable(path: Path, dir_fd: int | None) -> int:
    """A new open file description of the directory (a ``flock`` belongs to one): ``path``
    opened without following a symlink, or, given the descriptor of a held directory, ``.``
    relative to it (whatever has become of its path)."""
    return open_dir(".", dir_fd=dir_fd) if dir_fd is not None else open_dir(path)


class SnapshotLock:
    """The exclusive ``flock`` a backup holds on the snapshot directory it writes (see
    :func:`is_locked`). ``dir_fd``: as for :class:`RepoLock`."""

    def __init__(self, path: Path, *, dir_fd: int | None = None):
        self.fd: int | None = _open_lockable(path, dir_fd)
        # Blocking: the directory is new, but a listing (``is_locked``) may hold it shared for
        # an instant; a non-blocking request would then fail the backup.
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        """Releases the lock (closes its descriptor); harmless when called again."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Repository:
    """An existing repository (:meth:`open`) or a new one (:func:`init`)."""

    def __init__(self, path: Path, marker: dict[str, Any]):
        self.path = path
        self.marker = marker

    @classmethod
    def open(cls, path: Path) -> Repository:
        """Opens the repository at ``path``; raises UsageError when it is none."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise UsageError(f"{path}: no such repository (create one with `mailbak init {path}`)") from None
        except OSError as e:
            raise UsageError(f"{path}: cannot access the repository: {e.strerror}") from e
        if stat.S_ISLNK(st.st_mode):
            raise UsageError(f"{path}: is a symlink (a symlink is never followed); give the directory it points to itself")
        if not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{path}: not a directory, so not a repository")
        marker_path = path / MARKER
        # The reader refuses a symlink or anything but a regular file at the marker itself, with
        # no window between a check and the open.
        missing = UsageError(f"{path}: not a mailbak repository (no {MARKER}); create one with `mailbak init DIR` in a new or empty directory")
        doc = read_tagged_json(marker_path, MAX_MARKER_BYTES, missing, UsageError, KIND, "a mailbak repository marker")
        if doc.get("format_version") != REPO_FORMAT:
            raise UsageError(f"{marker_path}: repository format {doc.get('format_version')!r} is not supported (this mailbak reads {REPO_FORMAT})")
        if doc.get("method", Method.HARDLINK) not in tuple(Method):
            raise UsageError(f"{marker_path}: method {doc.get('method')!r} is none of {', '.join(Method)}")
        return cls(path, doc)

    @property
    def method(self) -> Method:
        """How the snapshots share what did not change: the marker's ``method`` (a marker made
        before there was a choice has none: hardlink)."""
        return Method(self.marker.get("method", Method.HARDLINK))

    # Snapshots ---------------------------------------------------------------------------------

    def snapshot_names(self) -> list[str]:
        """Names of the snapshot directories (real directories with a snapshot's name)."""
        names = []
        with os.scandir(self.path) as it:
            for e in it:
                if NAME_RE.match(e.name) and e.is_dir(follow_symlinks=False):
                    names.append(e.name)
        return names

    def snapshots(self) -> list[SnapshotInfo]:
        """Every snapshot, newest first (by start time, then name)."""
        infos = [status_of(self.path / n, n) for n in self.snapshot_names()]
        infos.sort(key=lambda s: (s.start, s.name), reverse=True)
        return infos

    def down_to_complete(self) -> list[SnapshotInfo]:
        """The snapshots newest first down to the newest complete one, that one included (every
        snapshot when none is complete): a backup's reference and the failed or incomplete
        snapshots newer than it (``failed_pile_warning``), without reading an older manifest, so
        that picking the reference costs the same with 200 snapshots as with two. Names are the
        start times (``create_snapshot``), so the snapshots are read in name order, newest first;
        ``snapshots`` orders by the manifests' start, which is the same order."""
        names = sorted(self.snapshot_names(), key=lambda n: (name_time(n) or EARLIEST, n), reverse=True)
        infos = []
        for n in names:
            infos.append(status_of(self.path / n, n))
            if infos[-1].status == Status.OK:
                break
        return infos

    def newest_complete(self, infos: list[SnapshotInfo] | None = None) -> SnapshotInfo | None:
        """The reference of the next backup: the newest snapshot whose manifest says ok (of
        ``infos``, newest first, when the caller has listed them already; else no manifest
        older than it is read: ``down_to_complete``)."""
        return next((s for s in (self.down_to_complete() if infos is None else infos) if s.status == Status.OK), None)

    def failed_pile_warning(self, infos: list[SnapshotInfo]) -> str | None:
        """What a backup says when FAILED_PILE_WARN or more failed or incomplete snapshots are
        newer than the newest complete one of ``infos`` (newest first), else None. Prune keeps
        those until a complete snapshot is newer (they may hold the latest mail), so while a
        store keeps failing they pile up, each as large as what changed since the reference."""
        piled = []
        for s in infos:
            if s.status == Status.OK:
                break
            if s.status in (Status.FAILED, Status.INCOMPLETE):
                piled.append(s)
        if len(piled) < FAILED_PILE_WARN:
            return None
        newest = self.newest_complete(infos)
        since = f"newer than the newest complete one ({newest.name})" if newest is not None else "and no complete one"
        return (
            f"{len(piled)} failed or incomplete snapshots {since}: the backups keep failing, and prune keeps such "
            f"snapshots until a newer one completes, so they fill the disk; see why with `mailbak snapshots {self.path}` "
            f"and `mailbak verify {piled[0].path}` and fix the cause (the first prune after a complete backup removes them)"
        )

    def create_snapshot(self, started: float, dir_fd: int | None = None) -> Path:
        """Creates the directory of a new snapshot started at ``started`` (private, 0700) and
        returns its path; a name already taken gets a suffix ``-1``, ``-2``, ... With ``dir_fd``
        (a descriptor of REPO the caller holds) it is created in that directory, whatever has
        become of REPO's path."""
        base = snapshot_name(started)
        for n in range(0, 1000):
            name = base if n == 0 else f"{base}-{n}"
            try:
                os.mkdir(name if dir_fd is not None else self.path / name, PRIVATE_DIR_MODE, dir_fd=dir_fd)
                return self.path / name
            except FileExistsError:
                continue
        raise UsageError(f"{self.path}: a thousand snapshots named {base}*: refusing to make another")

    def create_subvolume_snapshot(self, started: float, dir_fd: int, *, source: Path | None, prepare: Callable[[Path], None]) -> tuple[Path, SnapshotLock]:
        """The subvolume method's :meth:`create_snapshot`: a btrfs snapshot of the subvolume
        ``source`` (the reference), or a new empty subvolume, made under a name no listing
        takes for a snapshot (``CREATING_PREFIX``), given mode 0700, prepared by ``prepare``
        (which writes its ``running`` manifest: the clone came with the reference's, which says
        ok), locked, and only then renamed to its name (a suffix ``-1``, ``-2`` when taken,
        never replacing anything). So no other backup can take the clone for a complete
        snapshot. Returns the path and the held lock; raises OSError."""
        base = snapshot_name(started)
        tmp = f"{CREATING_PREFIX}{base}-{os.getpid()}"
        if source is not None:
            _engine.btrfs_snapshot(source, dir_fd, os.fsencode(tmp))
        else:
            _engine.btrfs_create_subvolume(dir_fd, os.fsencode(tmp))
        lock = None
        try:
            fd = open_dir(tmp, dir_fd=dir_fd)
            try:
                os.fchmod(fd, PRIVATE_DIR_MODE)
                prepare(Path(f"/proc/self/fd/{fd}"))
                lock = SnapshotLock(self.path / tmp, dir_fd=fd)
            finally:
                os.close(fd)
            for n in range(0, 1000):
                name = base if n == 0 else f"{base}-{n}"
                try:
                    _engine.rename_noreplace(dir_fd, os.fsencode(tmp), os.fsencode(name))
                except FileExistsError:
                    continue
                os.fsync(dir_fd)
                return self.path / name, lock
            raise UsageError(f"{self.path}: a thousand snapshots named {base}*: refusing to make another")
        except BaseException:
            if lock is not None:
                lock.release()
            try:
                _engine.btrfs_destroy(dir_fd, os.fsencode(tmp))
            except OSError:
                pass  # a leftover creation: the next prune moves it to the trash
            raise

    def record_seal(self, dir_fd: int, name: str, seal: str) -> None:
        """Notes ``seal`` (``_engine.btrfs_seal``) of snapshot ``name``, just made read-only, in
        ``.seals/NAME`` (``dir_fd``: the repository, held), replacing any earlier note of that
        name. Raises OSError."""
        try:
            os.mkdir(SEALS, PRIVATE_DIR_MODE, dir_fd=dir_fd)
        except FileExistsError:
            pass
        replace_file(Path(f"/proc/self/fd/{dir_fd}") / SEALS / name, f"{seal}\n".encode(), mode=0o600)

    def sealed_unchanged(self, name: str, path: Path) -> bool:
        """Whether snapshot ``name`` (its subvolume at ``path``) is read-only and unchanged since
        its backup sealed it: its seal now is the one noted then. False when no seal was noted
        (a backup killed between the two, or made by an older mailbak) or either cannot be read."""
        try:
            noted = read_small(self.path / SEALS / name, MAX_SEAL_BYTES).decode("ascii").strip()
            now = _engine.btrfs_seal(path)
        except (OSError, UnicodeDecodeError):
            return False
        return now is not None and now == noted

    def drop_seal(self, name: str) -> None:
        """Removes the note of snapshot ``name``'s seal, if any (the snapshot is gone to the
        trash); failing that only leaves a note no subvolume matches (another UUID)."""
        try:
            os.unlink(self.path / SEALS / name)
        except OSError:
            pass

    def leftover_creations(self) -> list[str]:
        """Subvolumes of snapshots whose backup was killed while setting them up (subvolume
        method; their lock no longer held), for prune to remove."""
        out = []
        with os.scandir(self.path) as it:
            for e in it:
                if e.name.startswith(CREATING_PREFIX) and e.is_dir(follow_symlinks=False) and not is_locked(self.path / e.name):
                    out.append(e.name)
        return sorted(out)

    # Trash -------------------------------------------------------------------------------------

    @property
    def trash(self) -> Path:
        """The repository's ``.trash`` directory: snapshots prune has removed, waiting to be
        deleted."""
        return self.path / TRASH

    def trash_entries(self) -> list[str]:
        """Names in ``.trash`` (pending deletions), sorted; none when there is no trash."""
        try:
            st = os.lstat(self.trash)
        except FileNotFoundError:
            return []
        if not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{self.trash}: not a directory (a symlink is never followed); move it away")
        return sorted(os.listdir(self.trash))

    def move_to_trash(self, name: str) -> Path:
        """Renames snapshot ``name`` into the trash (atomic: from here on the decision stands,
        a crash only leaves trash) and makes the rename durable."""
        try:
            os.mkdir(self.trash, PRIVATE_DIR_MODE)
        except FileExistsError:
            pass
        target = self.trash / name
        if os.path.lexists(target):
            # A snapshot of the same name whose deletion is pending: keep both.
            for n in range(1, 1000):
                target = self.trash / f"{name}.{n}"
                if not os.path.lexists(target):
                    break
        if self.method is Method.SUBVOLUME and _engine.btrfs_is_subvolume(self.path / name):
            # A read-only subvolume cannot move to another directory (its ``..`` would change):
            # made writable first. Killed in between, it stays a complete snapshot, writable.
            _engine.btrfs_set_readonly(self.path / name, False)
        os.rename(self.path / name, target)
        for d in (self.trash, self.path):
            fsync_dir(d)
        self.drop_seal(name)
        return target


def init(path: Path) -> Repository:
    """Makes ``path`` (absent, its parent existing, or an empty directory) a repository. Its
    parent directories must be ones only root can change, and an existing directory becomes
    the running user's, mode 0700 (``destdir.hold_new``): whoever else owned it could list and
    swap every later snapshot."""
    check_destination(path, action="make a repository")
    parent = hold_parent(path, "a repository")
    held, existed = None, True
    made: list[str] = []
    try:
        held, existed = hold_new(parent, path)
        assert held.fd is not None
        # Decided once, by the file system REPO is on; never changed, since hardlinks between
        # subvolumes fail and subvolumes cannot be deleted as directories.
        method = Method.SUBVOLUME if _engine.btrfs_is_btrfs(held.via) else Method.HARDLINK
        doc = {"kind": KIND, "format_version": REPO_FORMAT, "created": rfc3339(), "method": str(method)}
        # Made now, not by the first prune: a prune must work when the disk is full (no inode
        # left for a new directory), which is when it is needed most.
        os.mkdir(TRASH, PRIVATE_DIR_MODE, dir_fd=held.fd)
        made.append(TRASH)
        replace_file(held.via / MARKER, (json.dumps(doc, indent=2) + "\n").encode(), mode=MARKER_MODE, tmp_name=MARKER + ".tmp")
    except OSError as e:
        # Leave the directory as it was (absent or empty, though now root's), so that init can
        # simply be run again.
        if held is not None and held.fd is not None:
            for name, is_dir in [(MARKER + ".tmp", False), *((m, True) for m in made)]:
                try:
                    os.rmdir(name, dir_fd=held.fd) if is_dir else os.unlink(name, dir_fd=held.fd)
                except OSError:
                    pass
            if not existed:
                try:
                    os.rmdir(held.name, dir_fd=parent.fd)
                except OSError:
                    pass
        raise UsageError(f"{path}: cannot make a repository there: {e.strerror}") from e
    finally:
        if held is not None:
            held.close()
        parent.close()
    return Repository(path, doc)


def snapshots_table(infos: list[SnapshotInfo]) -> list[tuple[str, ...]]:
    """The table of ``mailbak snapshots``: a header and one row per snapshot, as given."""
    rows: list[tuple[str, ...]] = [("snapshot", "status", "started", "duration", "messages", "reused", "copied", "bytes copied")]
    for s in infos:
        t = s.transfer
        cells = [t.get(k) for k in ("messages", "reused", "copied", "bytes_copied")]
        rows.append(
            (
                s.name,
                s.status,
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.start.timestamp())),
                f"{s.duration:.0f}s" if s.duration is not None else "-",
                *("-" if c is None else str(c) for c in cells),
            )
        )
    return rows


def trash_line(repo: Repository, names: list[str]) -> str:
    """What ``mailbak snapshots`` says of pending deletions."""
    return f"trash pending: {len(names)} snapshot(s) in {repo.trash} not yet deleted (the next `mailbak prune` finishes them)"


# The jobs of `mailbak init` and `mailbak snapshots` (job.py) --------------------------------


class Init:
    """One run of ``mailbak init`` (a job: job.py): makes ``path`` a repository (:func:`init`);
    ``repository`` once run. It prints nothing: the command line shows the result."""

    command: ClassVar[str] = "init"
    file_kinds: ClassVar[tuple[str, ...]] = ()
    counts_bytes: ClassVar[bool] = False
    reports_failure: ClassVar[bool] = False

    def __init__(self, path: Path):
        self.path = path
        self.repository: Repository | None = None

    def check(self) -> None:
        """Nothing before run(): :func:`init` checks and makes in one step."""

    def run(self) -> Status:
        """Makes the repository; raises UsageError (nothing made)."""
        self.repository = init(self.path)
        return Status.OK

    def facts(self, status: str) -> dict[str, Any]:
        """The repository and its marker."""
        return {"status": status, "repository": str(self.path), **(self.repository.marker if self.repository is not None else {})}

    def headline(self, status: Status) -> str:
        """The summary's title."""
        return f"repository created: {self.path}"

    def table(self) -> list[tuple[str, ...]] | None:
        """None."""
        return None

    def close(self) -> None:
        """Nothing is held."""

    def left_behind(self, stage: Stage | None) -> str:
        """init leaves the directory as it was (:func:`init`)."""
        return f"{self.path} is as it was"

    def metrics(self, facts: dict[str, Any] | None) -> Metrics:
        """None (not monitored)."""
        return Metrics.none(type(self))


class Snapshots:
    """One run of ``mailbak snapshots`` (a job: job.py): the repository's snapshots, newest
    first, and (``with_trash``) its pending trash entries; ``infos`` and ``trash`` once run."""

    command: ClassVar[str] = "snapshots"
    file_kinds: ClassVar[tuple[str, ...]] = ()
    counts_bytes: ClassVar[bool] = False
    reports_failure: ClassVar[bool] = False

    def __init__(self, path: Path, *, with_trash: bool = True):
        self.path = path
        self.with_trash = with_trash
        self.infos: list[SnapshotInfo] = []
        self.trash: list[str] = []

    def check(self) -> None:
        """Opens the repository; raises UsageError when ``path`` is not one."""
        self.repository = Repository.open(self.path)

    def run(self) -> Status:
        """Reads every snapshot's manifest (and the trash)."""
        self.infos = self.repository.snapshots()
        if self.with_trash:
            self.trash = self.repository.trash_entries()
        return Status.OK

    def facts(self, status: str) -> dict[str, Any]:
        """Only the status: the snapshots are the result."""
        return {"status": status}

    def headline(self, status: Status) -> str:
        """The summary's title."""
        return f"snapshots of {self.path}"

    def table(self) -> list[tuple[str, ...]] | None:
        """The table of ``mailbak snapshots``."""
        return snapshots_table(self.infos)

    def close(self) -> None:
        """Nothing is held."""

    def left_behind(self, stage: Stage | None) -> str:
        """Listing changes nothing."""
        return "nothing was changed"

    def metrics(self, facts: dict[str, Any] | None) -> Metrics:
        """None (not monitored)."""
        return Metrics.none(type(self))

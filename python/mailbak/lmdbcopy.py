"""Consistent copies of live LMDB databases, and the IDs each copy holds.

(LMDB calls what one read transaction sees a snapshot; mailbak keeps that word for a
repository's snapshots, so here it is the transaction's view.)

For one database file:
1. Open the environment read-only and begin a read transaction. That registers a reader in the
   lock file, which keeps every page of this transaction's view from being reused by writers until the
   transaction ends; writers in other processes are never blocked.
2. Have the engine check the view's B-trees structurally (bounds, page types, order, counts)
   by reading the file directly. A damaged file is reported and never handed to LMDB, whose C
   code trusts page contents and could crash the whole process on a bad pointer.
3. ``Environment.copy(dst, compact=True, txn=txn)``: LMDB writes exactly that view to
   ``dst``, compacted, without a lock file.
4. For an index (queue or account), the engine reads the live IDs, sizes, erase set, highest
   ID and next-ID counter *from the copy*. The copy is the backup, so the IDs cannot disagree with it (docs/BACKUP.md
   explains why this beat reading them in Python inside the transaction). :func:`engine_area`
   hands those IDs, with the area's layout, to the engine's ``backup_areas`` and ``check_areas``.

Not guaranteed: different database files are copied at different moments (LMDB has no transaction
spanning environments). That is harmless here: each area's message files are decided by its own
index alone.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lmdb

from mailbak import _engine
from mailbak.anchor import DataRoot, identity
from mailbak.errors import DestinationFull, is_destination_full
from mailbak.fsio import create_new, open_file
from mailbak.identity import StoreOwner, acting_as, in_directory
from mailbak.layout import LEASE_FILE, AreaKind, lock_file
from mailbak.report import Reporter
from mailbak.testpause import pause

#: Attempts at step 2 before a database is called damaged. A writer can overwrite the meta page
#: of our read transaction after two further commits (Stale), and a page being rewritten can be read torn;
#: both clear on a fresh transaction, real damage does not.
CHECK_ATTEMPTS = 8


class DatabaseError(Exception):
    """A database could not be copied, or its copy could not be read; the message says why."""


@dataclass
class DbCopy:
    """One database copied from one read transaction."""

    #: Transaction ID of the read transaction in the source.
    txnid: int
    #: Transaction ID the copy itself holds (a compacting copy starts over at 1).
    copy_txnid: int
    #: Size of the copy in bytes.
    size: int
    #: Inode number of the source database file: an index restored from a backup is another
    #: file (the next backup then does not trust its reference's copy to prove messages).
    source_inode: int


@dataclass
class Index:
    """What the copy of an area's index says about the area."""

    live: bytes
    sizes: bytes
    #: Live IDs whose record has no readable size (their entry in ``sizes`` means nothing).
    unknown_sizes: bytes
    erasing: bytes
    highest: int
    records: int
    expunged: int
    mailboxes: int
    next_id: int | None
    problems: list[tuple[str, int, str]]
    problem_count: int
    #: The number of live messages: ``len(live) // 8``, kept when the buffers are let go
    #: (:meth:`without_ids`).
    live_count: int = -1

    def __post_init__(self) -> None:
        if self.live_count < 0:
            self.live_count = len(self.live) // 8

    @classmethod
    def read(cls, path: Path, kind: AreaKind) -> Index:
        """Reads the index of an area of ``kind`` from its copy; raises
        DatabaseError when damaged."""
        try:
            d = _engine.read_index(path, kind.value)
        except _engine.LmdbError as e:
            raise DatabaseError(describe(e)) from e
        except OSError as e:
            raise DatabaseError(f"cannot read: {e.strerror}") from e
        d.pop("txnid")
        return cls(**d)

    @property
    def new_from(self) -> int:
        """The first ID not allocated when the index was copied: the ``meta`` counter, or one above the
        highest record for stores without one (never below that, whatever the counter says)."""
        return max(self.next_id or 0, self.highest + 1)

    def without_ids(self) -> Index:
        """This index with its live IDs and sizes let go, its counts kept: what a backup keeps
        of an area once the engine holds its own copy (``_engine.BackupArea``)."""
        return replace(self, live=b"", sizes=b"", unknown_sizes=b"", live_count=self.live_count)

    def summary(self) -> dict[str, Any]:
        """The index's counts as a backup's manifest records them for each area
        (``manifest.AREA_FACTS``), for verify to compare."""
        return {"records": self.records, "live": self.live_count, "expunged": self.expunged, "erasing": len(self.erasing) // 8, "highest_id": self.highest}


def engine_area(kind: AreaKind, rel: str, index: Index) -> dict[str, Any]:
    """The area ``data/rel`` of this kind as the engine takes it (``_engine.Area``), with the
    IDs of ``index``; backup adds ``dst``, verify ``fix_rel``. One builder for both, so that
    they never disagree on what an area holds."""
    lay = kind.layout
    assert lay.tree is not None, "an area with messages"
    return {
        "src": rel,
        "tree": lay.tree.encode(),
        "known": [k.encode() for k in lay.known],
        "copy": [f.encode() for f in lay.files],
        "live": index.live,
        "sizes": index.sizes,
        "unknown_sizes": index.unknown_sizes,
        "erasing": index.erasing,
        "next_id": index.new_from,
        "prefix": f"data/{rel}".encode(),
    }


def describe(e: BaseException) -> str:
    """Text for an engine LmdbError (kind, page, message) or anything else."""
    if isinstance(e, _engine.LmdbError) and len(e.args) == 3:
        kind, page, message = e.args
        where = f" (page {page})" if page is not None else ""
        return f"{kind}{where}: {message}"
    return str(e)


def open_readonly(path: Path, owner: StoreOwner | None = None) -> lmdb.Environment:
    """Opens a live database for reading, as one more LMDB reader (see the module doc).

    LMDB opens (or creates) ``NAME-lock`` itself, following symlinks: everything here runs as
    the store's ``owner`` (identity.py), so the kernel refuses what that user could not do. On
    top of that, a lock path that is not a regular file is refused by name, and a missing lock
    file is created here, by that identity, with the database's owner and group and a mode that
    lets both read and write it (LMDB would create it with its own mode, minus the umask).
    Raises DatabaseError."""
    try:
        db = os.lstat(path)
        with in_directory(path) as (dir_fd, via):
            lock_fd = None
            try:
                with acting_as(owner):
                    lock_fd = _prepare_lock_file(dir_fd, lock_file(path.name), db)
                    pause("lock_file_checked")  # tests swap the lock file here: the identity must hold
                    try:
                        return lmdb.open(via, subdir=False, readonly=True, lock=True, create=False, max_dbs=0, readahead=False)
                    except lmdb.Error as e:
                        as_whom = f" (opened as the store's owner, {owner})" if owner else ""
                        raise DatabaseError(f"LMDB cannot open it{as_whom}: {str(e).replace(via, path.name)}") from e
            finally:
                if lock_fd is not None:
                    _give_lock_file(lock_fd, db)  # with root's identity again: it may chown
    except OSError as e:
        raise DatabaseError(f"cannot open: {e.strerror}") from e


def _prepare_lock_file(dir_fd: int, name: str, db: os.stat_result) -> int | None:
    """Creates the lock file ``name`` when missing (its descriptor is returned, to be finished by
    ``_give_lock_file``); refuses one that is not a regular file."""
    try:
        fd = create_new(name, 0o600, dir_fd=dir_fd, access=os.O_RDWR)
    except FileExistsError:
        try:
            st = os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            return None  # removed meanwhile: LMDB creates it, with the same identity
        if not stat.S_ISREG(st.st_mode):
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "a special file"
            raise DatabaseError(f"its lock file {name} is {kind}, not a regular file; never opened, so the database is not read") from None
        return None
    except OSError:
        # Left to LMDB, with the same identity: on a read-only file system it reads without a
        # lock file; anything else it reports.
        return None
    try:
        os.fchmod(fd, lock_file_mode(db.st_mode))
    except OSError:
        os.close(fd)
        raise
    return fd


def _give_lock_file(fd: int, db: os.stat_result) -> None:
    """Gives a lock file mailbak created the database file's owner and group (as root; anyone
    else keeps it), then closes it."""
    try:
        st = os.fstat(fd)
        if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (db.st_uid, db.st_gid):
            os.fchown(fd, db.st_uid, db.st_gid)
    finally:
        os.close(fd)


def lock_file_mode(db_mode: int) -> int:
    """The mode of a lock file mailbak creates: read and write for the database's owner, and
    for its group when the group may read the database (every LMDB reader writes its slot into
    the lock file); nothing for others."""
    return 0o600 | (0o060 if db_mode & 0o040 else 0)


def copy_database(src: Path, dst: Path, owner: StoreOwner | None = None, root: DataRoot | None = None) -> DbCopy:
    """Steps 1 to 3 of the module doc, opening ``src`` as the store's ``owner``
    (``open_readonly``); raises DatabaseError with the cause. ``src`` lies below ``root`` (the
    run's descriptor of ``data/``), or is reached relative to its own directory."""
    own_root = root is None
    if root is None:
        root = DataRoot(src.parent)
    try:
        fd, st = _open_database_file(root, src.relative_to(root.path).as_posix())
    finally:
        if own_root:
            root.close()
    try:
        if st.st_size == 0:
            # LMDB would say "Bad file descriptor" (it refuses to create in read-only mode).
            raise DatabaseError("empty file, not an LMDB database")
        return _copy_checked(src, dst, fd, st, owner)
    finally:
        os.close(fd)


def _open_database_file(root: DataRoot, rel: str) -> tuple[int, os.stat_result]:
    """An O_PATH descriptor of the database file, reached from ``root`` without following a
    symlink at any step, and its stat; raises DatabaseError."""
    try:
        fd, st = root.open_entry(rel)
    except FileNotFoundError as e:
        raise DatabaseError("missing") from e
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise DatabaseError("a directory on its path is a symlink or not a directory (never followed)") from e
        raise DatabaseError(f"cannot stat: {e.strerror}") from e
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise DatabaseError("not a regular file (a symlink or special file is never opened)")
    return fd, st


def maps_file(st: os.stat_result) -> bool:
    """Whether this process has the file of ``st`` memory-mapped.

    LMDB maps its data file when the environment opens, and reads every page (the copy
    included) through that map. py-lmdb opens by path and gives no descriptor, so this is how
    we learn which file LMDB really opened: the path may have been replaced (by a symlink to a
    file root may read) after we checked it. Sound because nothing else in this process maps a
    store's database file while copy_database runs (the engine reads files with pread, and
    each environment is closed before the next one opens). The kernel's ``map_files`` link is
    stat'ed rather than trusting the device field of ``maps``, which differs from ``st_dev`` on
    btrfs subvolumes."""
    want = identity(st)
    ino = b" %d " % st.st_ino
    with open("/proc/self/maps", "rb") as f:
        for line in f:
            if ino not in line:
                continue
            fields = line.split(maxsplit=5)
            if len(fields) < 6 or not fields[4].isdigit() or int(fields[4]) != st.st_ino:
                continue
            try:
                got = identity(os.stat(b"/proc/self/map_files/" + fields[0]))
            except OSError:
                major, _, minor = fields[3].partition(b":")
                got = (os.makedev(int(major, 16), int(minor, 16)), int(fields[4]))
            if got == want:
                return True
    return False


def _copy_checked(src: Path, dst: Path, fd: int, st: os.stat_result, owner: StoreOwner | None) -> DbCopy:
    """Steps 1 to 3 for the file held by ``fd`` (stat ``st``), which LMDB opens by ``src``."""
    pause("snapshot.open")
    try:
        env = open_readonly(src, owner)
    except lmdb.Error as e:
        raise DatabaseError(f"LMDB cannot open it: {e}") from e
    try:
        if not maps_file(st):
            raise DatabaseError("replaced while it was being opened (its path now leads to another file, through a symlink?); not read")
        # The engine reads the very file we hold (the /proc link reopens our descriptor's file,
        # whatever its path now leads to), which is the one LMDB maps.
        held = f"/proc/self/fd/{fd}"
        last: BaseException | None = None
        for _ in range(CHECK_ATTEMPTS):
            with env.begin() as txn:
                txnid = txn.id()
                pause("snapshot")
                try:
                    summary = _engine.lmdb_check(held, txnid)
                except _engine.LmdbError as e:
                    last = e
                    continue
                except OSError as e:
                    raise DatabaseError(f"cannot read: {e.strerror}") from e
                try:
                    if summary["compact_copy_safe"]:
                        env.copy(str(dst), compact=True, txn=txn)
                        copy_txnid = _file_txnid(dst)
                    else:
                        txnid = copy_txnid = _plain_copy(env, dst)
                except lmdb.Error as e:
                    if is_destination_full(str(e)):
                        raise DestinationFull(f"{dst}: {e}") from e
                    raise DatabaseError(f"LMDB copy failed: {e}") from e
                os.chmod(dst, stat.S_IMODE(st.st_mode) & 0o777)
                if os.geteuid() == 0:
                    os.chown(dst, st.st_uid, st.st_gid)
                return DbCopy(txnid, copy_txnid, os.stat(dst).st_size, st.st_ino)
        assert last is not None
        raise DatabaseError(f"damaged: {describe(last).replace(held, str(src))}")
    finally:
        env.close()


def _file_txnid(path: Path) -> int:
    """The ID of the newest transaction in a copy we just wrote (recorded in the
    manifest, so that verify can tell the backup's file is still that copy)."""
    env = lmdb.open(str(path), subdir=False, readonly=True, lock=False, create=False, max_dbs=0)
    try:
        with env.begin() as txn:
            return txn.id()
    finally:
        env.close()


def _plain_copy(env: lmdb.Environment, dst: Path) -> int:
    """A page-for-page copy (LMDB takes its own read transaction and copies pages without walking
    the trees), for databases whose compacting copy LMDB can crash on (DUPSORT with DUPFIXED
    duplicates). The copy is of a read transaction too, possibly a later one than the checked one,
    so it is checked itself before anyone reads it; returns its transaction ID."""
    env.copy(str(dst))
    try:
        return _engine.lmdb_check(dst)["txnid"]
    except _engine.LmdbError as e:
        raise DatabaseError(f"damaged: {describe(e)}") from e
    except OSError as e:
        raise DatabaseError(f"cannot read the copy: {e.strerror}") from e


class ReaderLease:
    """The reading side of the lease protocol (docs/FORMAT.md section 6): a shared flock on
    ``data/backup.lease``, held from before the first database is copied until the last message file is
    linked (backup) or checked (verify of a live store), so that writers defer removing files."""

    #: Seconds to wait while a writer's sweep holds the lease exclusively (it holds it only while
    #: unlinking files, normally milliseconds).
    WAIT_SECONDS = 60.0

    def __init__(self, data_dir: Path, reporter: Reporter):
        self.path = data_dir / LEASE_FILE
        self.reporter = reporter
        self.fd: int | None = None

    def __enter__(self) -> ReaderLease:
        fd = self._open()
        if fd is None:
            return self
        deadline = time.monotonic() + self.WAIT_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                self.fd = fd
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    self.reporter.warn("no_lease", f"data/{LEASE_FILE}", f"a writer held the lease for over {self.WAIT_SECONDS:.0f}s; going on without it, so an erase meanwhile can show up as a missing file")
                    return self
                time.sleep(0.05)

    def _open(self) -> int | None:
        """The lease file, opened as the store's owner (identity.py), never following a symlink
        and never waiting (O_NONBLOCK: a FIFO put in its place would block an open forever);
        anything but a regular file is treated as missing. None after a warning."""
        lost = "writers cannot defer erasures, so an erase meanwhile can show up as a missing file"
        try:
            with in_directory(self.path) as (dir_fd, _), acting_as(StoreOwner.of(self.path.parent)):
                fd = open_file(self.path.name, dir_fd=dir_fd)
        except OSError as e:
            self.reporter.warn("no_lease", f"data/{LEASE_FILE}", f"cannot open the lease file ({e.strerror}); {lost}")
            return None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            self.reporter.warn("no_lease", f"data/{LEASE_FILE}", f"the lease file is not a regular file (a FIFO, socket or device); treated as missing: {lost}")
            return None
        return fd

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Closes the lease file, which releases the shared flock; harmless when called again."""
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None

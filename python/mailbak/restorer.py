"""mailbak restore: brings a backup back as a new store, then verifies it.

Step by step:
1. Check: BACKUP has an ``ok`` manifest (a missing, ``running`` or ``failed`` one is refused
   unless ``--force``); STORE does not exist or is empty. Problems here are bad input: exit 2,
   nothing written.
2. ``config/`` is copied (modes kept, symlinks recreated as they are, never followed).
3. ``data/``: in the queue and each account directory, files at a message path are hardlinked
   (copied across file systems, or always with ``--copy``); everything else, databases included,
   is copied, because the server modifies those in place. The backup's databases are compact
   LMDB snapshots without lock files, so their copies are fresh LMDB files.
4. ``data/tmp/`` is created (it is never backed up; writers need it).
5. The restored store is verified as ``mailbak verify`` would, and against the backup's
   manifest (every database, area and known file it names, with sizes and counts), and the
   result shown.

Every write goes through directory descriptors and single names read from the backup's
directories, so no name in a backup (``..``, absolute symlink targets) can lead a write outside
STORE; symlinks are recreated as links, never followed.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, ClassVar

from mailbak import _engine, manifest
from mailbak.anchor import identity, inside
from mailbak.destdir import BACKUP_ENTRIES, DEFAULT_DIR_MODE, PRIVATE_DIR_MODE, check_destination, make_dir
from mailbak.errors import ManifestError, UsageError
from mailbak.fsio import open_dir
from mailbak.identity import PROC_FD
from mailbak.job import Metrics, Stage, interrupted_hint, run_within
from mailbak.layout import ACCOUNTS_DIR, QUEUE_DIR, TMP_DIR, AreaKind, area_rel, is_real_dir
from mailbak.report import Reporter
from mailbak.repository import RepoLock, reader_lock
from mailbak.runner import Runner, link_hint
from mailbak.status import Status
from mailbak.testpause import pause
from mailbak.verifier import Verify


def _entries(path: Path) -> list[Path]:
    try:
        return [path / n for n in os.listdir(path)]
    except OSError:
        return []


def hold_dir(path: Path) -> tuple[int, tuple[int, int, int]]:
    """A descriptor of the directory ``path`` (never through a symlink), made root's alone
    (owner root, mode 0700) while root writes into it, and its former (uid, gid, mode) for
    :func:`give_back`. Whoever owned an existing empty target (or can rename it in its parent)
    could otherwise plant a symlink in it, or swap it for one, between its check and its use,
    and have root write elsewhere; writes go through :func:`held_path` from now on. Run as
    another user, only the descriptor is taken. Raises OSError, or UsageError when something was
    created in it meanwhile."""
    fd = open_dir(path)
    try:
        st = os.fstat(fd)
        was = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
        if os.geteuid() == 0:
            os.fchown(fd, 0, 0)
            os.fchmod(fd, PRIVATE_DIR_MODE)
            if os.listdir(fd):
                raise UsageError(f"{path}: something was created in the target while restore was starting; restore elsewhere")
    except BaseException:
        os.close(fd)
        raise
    return fd, was


def held_path(fd: int, path: Path) -> Path:
    """The path that names the directory of descriptor ``fd`` itself (``/proc/self/fd/N``);
    ``path`` without procfs."""
    return PROC_FD / str(fd) if PROC_FD.is_dir() else path


def give_back(fd: int, uid: int, gid: int, mode: int) -> None:
    """Gives a directory held by :func:`hold_dir` its owner (as root) and mode."""
    if os.geteuid() == 0:
        os.fchown(fd, uid, gid)
    os.fchmod(fd, mode)


class Restore:
    """One run of ``mailbak restore`` (a job: job.py)."""

    command: ClassVar[str] = "restore"
    file_kinds: ClassVar[tuple[str, ...]] = ()
    counts_bytes: ClassVar[bool] = False
    reports_failure: ClassVar[bool] = False

    def __init__(self, backup: Path, store: Path, *, force_copy: bool, force: bool, jobs: int, reporter: Reporter, verbose: bool = False):
        self.backup = backup
        self.store = store
        self.force_copy = force_copy
        self.force = force
        self.jobs = jobs
        self.reporter = reporter
        self.verbose = verbose
        self.runner = Runner(reporter, verbose=verbose)
        #: The hint of the link-fallback warning (set by run()).
        self.exdev_hint = ""
        self.counts = {"linked": 0, "copied": 0, "symlinks": 0}
        self.verify: Verify | None = None
        #: Whether this run created STORE (then it gets the backup's owner at the end).
        self.created_root = False
        #: STORE as restore writes into it: through a descriptor once taken (hold_target).
        self.target = store
        self.store_fd: int | None = None
        self.store_was = (0, 0, DEFAULT_DIR_MODE)
        #: The backup's manifest when it names what the backup holds (ok or failed).
        self.expect: dict[str, Any] | None = None
        # (st_dev, st_ino) of the target: no walk ever enters it (set by check()).
        self.skip: list[tuple[int, int]] = []
        #: The repository's shared lock while BACKUP, a snapshot of it, is read.
        self.lock: RepoLock | None = None

    def check(self) -> None:
        """Step 1; raises UsageError."""
        pause("restore.check")
        # First: a prune must not remove the snapshot while it is restored (it waits, or with
        # --no-wait refuses); a prune running now makes this wait, saying so.
        self.lock = reader_lock(self.backup, on_wait=self.reporter.message)
        if not self.backup.is_dir():
            raise UsageError(f"{self.backup}: not a directory")
        try:
            doc = manifest.read(self.backup)
        except ManifestError as e:
            if not self.force:
                raise UsageError(f"{e}; refusing to restore it (use --force to restore what is there)") from e
            self.reporter.warn("manifest", manifest.MANIFEST, f"{e}; restoring anyway (--force)")
        else:
            if doc["status"] == Status.RUNNING and not self.force:
                raise UsageError(f'{self.backup}: the backup is incomplete (its manifest still says "running": killed, interrupted or stopped by a full disk); refusing to restore it (use --force to restore what is there)')
            if doc["status"] == Status.FAILED and not self.force:
                raise UsageError(f"{self.backup}: the backup is marked failed ({doc['errors']} errors when it was made); refusing to restore it (use --force)")
            if doc["status"] != Status.RUNNING:
                self.expect = doc
        for part in ("config", "data"):
            if not is_real_dir(self.backup / part):
                raise UsageError(f"{self.backup}: no {part}/ directory; not a mailbak backup")
        check_destination(self.store, "restore")
        # By identity, not by path: a bind mount or a symlink gives a directory a second path.
        if inside(self.store, [self.backup, self.backup / "config", self.backup / "data"]) or (os.path.lexists(self.store) and inside(self.backup, [self.store])):
            raise UsageError(f"{self.store}: the target is inside the backup (or holds it); restore elsewhere")
        self.warn_owners()
        try:
            if not self.store.exists():
                os.mkdir(self.store, PRIVATE_DIR_MODE)
                self.created_root = True
            self.hold_target()
            make_dir(self.target / "config", self.backup / "config")
            make_dir(self.target / "data", self.backup / "data")
            pause("restore_target_held")  # tests attack STORE here
        except OSError as e:
            raise UsageError(f"{self.store}: cannot write: {e.strerror}") from e
        self.skip = [identity(os.fstat(self.store_fd) if self.store_fd is not None else os.stat(self.store))]

    def close(self) -> None:
        """Releases the repository's lock (BACKUP a snapshot of a repository) once the run is
        over (the final verify still reads the backup's data/), and STORE's descriptor if the
        run stopped before giving STORE back: STORE then stays root's, mode 0700, as
        docs/VERIFY.md says of a restore stopped early, but a process calling the API again
        and again keeps no descriptor of it."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if self.store_fd is not None:
            os.close(self.store_fd)
            self.store_fd = None

    def run(self) -> Status:
        """Steps 2 to 5; returns the verification's outcome (clean or problems)."""
        # Asked once per run, not once per copied area (two stats each).
        self.exdev_hint = link_hint(self.backup / "data", self.store / "data", "the backup is on another file system")
        for name in sorted(set(os.listdir(self.backup)) - set(BACKUP_ENTRIES)):
            self.reporter.warn("unrecognized", name, "not part of a mailbak backup; not restored")
        self.runner.new_phase("config")
        self.copy(self.backup / "config", self.target / "config", b"config")
        self.runner.new_phase("data")
        data_src, data_dst = self.backup / "data", self.target / "data"
        top = [n for n in os.listdir(os.fsencode(data_src)) if n not in (QUEUE_DIR.encode(), ACCOUNTS_DIR.encode())]
        if top:
            self.copy(data_src, data_dst, b"data", only=top)
        if is_real_dir(data_src / QUEUE_DIR):
            self.copy_area(AreaKind.QUEUE, os.fsencode(QUEUE_DIR))
        accounts = data_src / ACCOUNTS_DIR
        if is_real_dir(accounts):
            make_dir(data_dst / ACCOUNTS_DIR, accounts)
            for name in sorted(os.listdir(os.fsencode(accounts))):
                if is_real_dir(accounts / os.fsdecode(name)):
                    self.copy_area(AreaKind.ACCOUNT, name)
                else:
                    self.copy(accounts, data_dst / ACCOUNTS_DIR, f"data/{ACCOUNTS_DIR}".encode(), only=[name])
        if not (data_dst / TMP_DIR).exists():
            make_dir(data_dst / TMP_DIR, data_src)  # data/'s owner, group and mode
        self.runner.finish()
        _engine.syncfs(self.target)
        self.give_store_root()
        self.reporter.message(f"restored into {self.store}; verifying it")
        # Checked against the backup's manifest as well: what was deleted from the backup is
        # missing from the restored store, however consistent the rest looks without it.
        self.verify = Verify(self.store, fix=False, jobs=self.jobs, reporter=self.reporter, verbose=self.verbose, expect=self.expect)
        return run_within(self.verify)

    def warn_owners(self) -> None:
        """Run as another user than root, restore writes everything as that user: one warning
        when the backup's files belong to someone else (their owners cannot be kept)."""
        if os.geteuid() == 0:
            return
        others = set()
        for part in ("config", "data"):
            for p in [self.backup / part, *_entries(self.backup / part)]:
                try:
                    uid = os.lstat(p).st_uid
                except OSError:
                    continue
                if uid != os.geteuid():
                    others.add(uid)
        if others:
            who = ", ".join(f"uid {u}" for u in sorted(others))
            self.reporter.warn("owners", str(self.backup), f"the backup's files belong to {who}; restored as uid {os.geteuid()}, since only root can keep their owners")

    def hold_target(self) -> None:
        """Makes STORE root's alone while restore writes into it (:func:`hold_dir`), and names it
        through a descriptor from now on (``self.target``)."""
        self.store_fd, self.store_was = hold_dir(self.store)
        self.target = held_path(self.store_fd, self.store)

    def give_store_root(self) -> None:
        """Once nothing more is written into STORE as root: a STORE this run created gets the
        owner and group of the backup's ``data/`` and mode 0750; an existing one gets its owner
        and mode back."""
        fd = self.store_fd
        if fd is None:
            return
        try:
            if self.created_root:
                st = os.stat(self.backup / "data")
                uid, gid, mode = st.st_uid, st.st_gid, DEFAULT_DIR_MODE
            else:
                uid, gid, mode = self.store_was
            give_back(fd, uid, gid, mode)
        finally:
            os.close(fd)
            self.store_fd = None
            self.target = self.store

    def copy_area(self, kind: AreaKind, name: bytes) -> None:
        """An area directory of the backup: its message files linked (layout.py names its
        message tree), everything else copied."""
        rel = area_rel(kind, os.fsdecode(name))
        src, dst = self.backup / "data" / rel, self.target / "data" / rel
        make_dir(dst, src)
        lay = kind.layout
        assert lay.tree is not None, "an area with messages"
        self.copy(src, dst, b"data/" + os.fsencode(rel), message_tree=lay.tree.encode())

    def copy(self, src: Path, dst: Path, prefix: bytes, *, only: list[bytes] | None = None, message_tree: bytes | None = None) -> None:
        """Copies the tree ``src`` to ``dst`` in the engine (only the entries ``only`` when given;
        files in ``message_tree`` hardlinked unless --copy), adding its counts to the run's."""
        result = self.runner.call(_engine.copy_tree, src, dst, jobs=self.jobs, prefix=prefix, only=only, message_tree=message_tree, force_copy=self.force_copy, skip=self.skip)
        for k in self.counts:
            self.counts[k] += result[k]
        self.runner.note_link_fallback(result, self.exdev_hint)

    def facts(self, result: str) -> dict[str, Any]:
        """The summary's facts: files linked and copied, symlinks, and the final verification's
        facts under ``verify``."""
        facts: dict[str, Any] = {"status": result, "store": str(self.store), **self.counts}
        if self.verify is not None:
            facts["verify"] = self.verify.facts(result)
        facts["warnings"] = self.reporter.counts.warnings
        facts["errors"] = self.reporter.counts.errors
        return facts

    def headline(self, status: Status) -> str:
        """The summary's title."""
        return f"restore {status}: {self.store}"

    def left_behind(self, stage: Stage | None) -> str:
        """A restore stopped early leaves an incomplete STORE."""
        return interrupted_hint(stage, self.store, "restore") or f"{self.store} is incomplete; delete it and restore again"

    def metrics(self, facts: dict[str, Any] | None) -> Metrics:
        """None of its own (restore takes no --metrics-file)."""
        return Metrics.none(type(self))

    def table(self) -> list[tuple[str, ...]]:
        """The counts, then the verification's."""
        rows = [("", "count"), *((k, str(v)) for k, v in self.counts.items())]
        if self.verify is not None:
            rows += [(f"verify {k}", str(v)) for k, v in self.verify.facts("").items() if isinstance(v, int)]
        return rows

"""mailbak backup: one consistent backup of a live mail store.

The phases, in order:
1. **Check.** STORE must look like a store, its config must parse, DEST must be absent or an
   empty directory. Any problem here is bad input: exit 2, nothing written. Then, first of
   all, ``DEST/mailbak.json`` is written with ``"status": "running"`` (``manifest.py``).
2. **Config.** ``config/`` is copied from a descriptor of it (a symlink there is refused):
   directories and files with their permission bits, symlinks recreated (never followed),
   special files skipped with a warning.
3. **Lease.** A shared ``flock`` on ``data/backup.lease``: writers following the protocol of
   docs/FORMAT.md defer removing message files until the backup releases it after phase 5.
4. **Databases.** Every known database is copied from one LMDB read transaction
   (``lmdbcopy.py``); for the queue and each account the IDs come from that copy.
5. **Messages.** Per area, the engine hardlinks (or copies) the message files of the index's
   copy, skips files added after the copy or being erased, copies the area's plain files (an account's
   junk filter), and reports and copies anything else; all areas in one engine call, each
   described by ``lmdbcopy.engine_area``. With a reference, a message its own copy of the
   area's index proves (live there too, same recorded size) is linked from it without a look
   at the store's file, unless the store's index may have gone back in time since
   (``Backup.proof``; docs/REPOSITORY.md, "What is reused").
6. **Other files.** The rest of ``data/``: plain files copied, ``tmp/`` and ``ctl`` skipped,
   anything unknown reported and copied as plain files.
7. **Manifest.** The destination is flushed (syncfs), then ``mailbak.json`` is replaced
   atomically with ``ok`` or ``failed`` and the facts. It was first written in phase 1, with
   ``running``, before anything else in DEST: a destination whose manifest still says so is an
   incomplete backup.

Not guaranteed: databases are separate snapshots taken one after the other (LMDB has no
transaction across files); each area's files agree with its own index, which is what matters.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from mailbak import __version__, _engine, digests, manifest, repository, testclock, testpause
from mailbak.anchor import DataRoot, identity, inside, open_problem, open_store_dir
from mailbak.destdir import DEFAULT_DIR_MODE, HeldDir, check_destination, hold_existing, hold_new, hold_parent, is_backup, make_dir, private_tmp_warning
from mailbak.errors import DestinationFull, ManifestError, UsageError
from mailbak.fsio import Refused, read_small
from mailbak.identity import StoreOwner, acting_as
from mailbak.job import Metrics, Stage, interrupted_hint
from mailbak.layout import (
    ACCOUNTS_DIR,
    LEASE_FILE,
    MAX_VERSION_BYTES,
    QUEUE_DIR,
    VERSION_FILE,
    AreaKind,
    FormatError,
    StorePaths,
    area_label,
    area_rel,
    is_real_dir,
    lock_file,
    lock_files,
    pack_ids,
    read_config,
)
from mailbak.lmdbcopy import DatabaseError, Index, ReaderLease, copy_database, engine_area
from mailbak.report import Reporter, rfc3339
from mailbak.runner import Runner, link_hint
from mailbak.status import Status
from mailbak.testpause import pause

#: What data/ itself holds (layout.py).
DATA = AreaKind.DATA.layout

#: Per-area counts recorded in the manifest.
AREA_COUNTS = ("linked", "reused", "copied", "skipped_new", "skipped_erasing", "orphans", "unrecognized", "missing", "damaged", "errors", "warnings")

#: The columns of the summary table, a subset of AREA_COUNTS, with their headings.
TABLE_COLUMNS = (("linked", "linked"), ("reused", "reused"), ("copied", "copied"), ("skipped_new", "new"), ("skipped_erasing", "erasing"), ("orphans", "orphans"), ("unrecognized", "unrecognized"), ("missing", "missing"))

#: Added to the refusal of a DEST that is neither empty nor a repository.
INIT_HINT = "; to keep a history of snapshots, make a new or empty directory a repository with `mailbak init DIR` and back up into that"

#: In place, where the clone's copy of the reference's ``digests/`` is set aside while the areas
#: link their unchanged shards from it; removed before the manifest.
DIGESTS_REFERENCE = ".digests-reference"

#: The most racy files (copied within the run's racily-clean window) an area's index entry in
#: the manifest lists; beyond it the entry says null. A nightly has a handful (what the server
#: delivered in the seconds before the run); only a store's owner rewriting files has more.
RACY_LIMIT = 10_000

#: The hint of the one link-fallback warning, when the cause is another file system.
EXDEV_HINT = "DEST on the same file system as the store makes backups nearly free (hardlinks instead of copies)"


@dataclass
class Area:
    """A message area to back up: the queue or one account."""

    kind: AreaKind
    #: Name in reports: "queue" or the account name.
    name: str
    #: Path relative to the data directory, e.g. ``accounts/alice``.
    rel: str
    #: Destination directory.
    dst: Path
    #: The copy of the area's index.
    index: Index
    #: Counts for the manifest.
    counts: dict[str, int] = field(default_factory=dict)


class Backup:
    """One run of ``mailbak backup`` (a job: job.py)."""

    command: ClassVar[str] = "backup"
    #: Message files (queue and accounts) by how they got into the backup.
    file_kinds: ClassVar[tuple[str, ...]] = ("linked", "reused", "copied", "skipped", "unrecognized")
    counts_bytes: ClassVar[bool] = True
    reports_failure: ClassVar[bool] = False

    def __init__(self, paths: StorePaths, dest: Path, *, jobs: int, reporter: Reporter, verbose: bool = False, link_dest: Path | None = None, record_digests: bool = True):
        self.paths = paths
        #: What the run records for ``digests/`` (digests.py), set up in phase 2; None when
        #: digests are off (``--no-digests``) or their directory could not be made.
        self.recording: digests.Recording | None = None
        self.record_digests = record_digests
        #: DEST as given: the directory to back up into, or a repository.
        self.dest = dest
        #: The new snapshot's directory when DEST is a repository (set in phase 1, by
        #: ``open_snapshot``); None otherwise.
        self.snapshot_path: Path | None = None
        #: The reference backup asked for with --link-dest (checked in phase 1).
        self.link_dest = link_dest
        #: The reference the engine reuses unchanged files from: --link-dest, or the newest
        #: complete snapshot of the repository DEST (set in phase 1); None: no reference.
        self.reference: Path | None = None
        #: The repository DEST is, if it is one; the run then writes a new snapshot in it.
        self.repository: repository.Repository | None = None
        self.locks: list[repository.RepoLock | repository.SnapshotLock] = []
        #: The directories written into, held by descriptor from phase 1 to the end: DEST's
        #: parent, then DEST, or REPO and the new snapshot (``self.out`` is the last).
        self.held: list[HeldDir] = []
        self.jobs = jobs
        self.reporter = reporter
        self.runner = Runner(reporter, verbose=verbose)
        #: The run's wall clock (real, unless a test set one: ``testclock``).
        self.clock = testclock.RunClock()
        self.started = self.clock.start
        #: When the run finished (set once, just before the final manifest): the manifest and
        #: the summary show the same time.
        self.finished: float | None = None
        #: The store as the manifest names it, resolved once.
        self.store_path = str(paths.data_dir.parent.resolve())
        #: The store's data/mailstore-version, read once (phase 2).
        self.format_version: str | None = None
        self.databases: dict[str, dict[str, Any]] = {}
        #: Known plain files in the backup (rel -> {"bytes": n}), for the manifest.
        self.files: dict[str, dict[str, int]] = {}
        self.areas: list[Area] = []
        self.plain_accounts: list[str] = []
        # Configured account names whose entry is not a directory (a symlink, a file): copied as
        # the entry it is in phase 6.
        self.odd_accounts: list[bytes] = []
        self.config = None
        #: Whom to act as inside the store (identity.py): its lock files are opened as them.
        self.owner = StoreOwner.of(paths.data_dir)
        self.exdev_hint = EXDEV_HINT
        # (st_dev, st_ino) of DEST: no walk ever enters it (set by run()).
        self.skip: list[tuple[int, int]] = []
        # Whether the warning that the reference's indexes prove nothing (made by an older
        # mailbak) was given: once per run, not once per area.
        self.old_reference_warned = False
        #: The snapshot is a btrfs clone of the reference, brought to the store's state in place
        #: (set in phase 1; docs/REPOSITORY.md, "Repositories on btrfs"): it is its own
        #: reference, what the store lacks is removed from it first, and every database and
        #: changed file is replaced.
        self.in_place = False
        #: In place: the reference's seal still holds (read-only, unchanged since its backup
        #: noted it: ``Repository.sealed_unchanged``), so the clone's files are the ones the
        #: reference placed (set in phase 1 with ``in_place``; see ``proof``).
        self.reference_sealed = False

    # Phase 1 ---------------------------------------------------------------------------------

    def check(self) -> None:
        """Phase 1; raises UsageError."""
        pause("backup.check")
        problem = self.paths.problem()
        if problem:
            raise UsageError(problem)
        if is_backup(self.paths.data_dir.parent):
            # Read as a store, it would get lock files and a lease: never write into a backup.
            raise UsageError(f"{self.paths.data_dir.parent}: a backup (it holds {manifest.MANIFEST}), not a store; restore it to get a store")
        try:
            self.config = read_config(self.paths.config_dir)
        except FormatError as e:
            raise UsageError(str(e)) from e
        is_repo = repository.is_repository(self.dest)
        if not is_repo:
            check_destination(self.dest, hint=INIT_HINT)
        # By identity, not by path: a bind mount or a symlink gives a directory a second path.
        if inside(self.dest, [self.paths.data_dir, self.paths.config_dir]):
            raise UsageError(f"{self.dest}: the destination is inside the store (reached through this path or another one, such as a bind mount)")
        if os.path.lexists(self.dest) and (inside(self.paths.data_dir, [self.dest]) or inside(self.paths.config_dir, [self.dest])):
            raise UsageError(f"{self.dest}: the store is inside the destination")
        # Every directory above DEST (REPO) must be one only root can change: one the store's
        # owner can write (the store's own directory, say) lets them rename DEST and put a
        # symlink in its place.
        try:
            self.held.append(hold_parent(self.dest, "a repository" if is_repo else "the destination"))
            if is_repo:
                self.held.append(hold_existing(self.held[-1], self.dest))
        except BaseException:
            self.close()
            raise
        if self.link_dest is not None:
            self.reference = check_reference(self.link_dest)
            if repository.is_repository(self.link_dest.parent):
                # A snapshot of a repository: a prune of it must not remove the reference
                # while this backup links from it.
                self.locks.append(repository.RepoLock(self.link_dest.parent, exclusive=False, on_wait=self.reporter.message))
        if is_repo:
            self.open_snapshot()
        try:
            if not is_repo:
                # Created, or taken (root's, 0700) if it exists: from here on only root can add
                # an entry to it, and every write goes through its descriptor.
                held, _existed = hold_new(self.held[-1], self.dest)
                self.held.append(held)
            # Before anything else: from here on DEST says it is a backup (an incomplete one
            # until the manifest is replaced at the end), never a store to be written to.
            manifest.write(self.out, self.running_facts())
            testpause.pause("backup.started")
            self.make_dir(self.out / "config", self.paths.config_dir)
            self.make_dir(self.data_dst, self.paths.data_dir)
        except OSError as e:
            self.close()
            raise UsageError(f"{self.target}: cannot write to the destination: {e.strerror}") from e
        except BaseException:
            self.close()
            raise
        self.exdev_hint = link_hint(self.paths.data_dir, self.data_dst, EXDEV_HINT)
        if self.repository is not None or self.link_dest is not None:
            # Another disk is the point of a repository or a reference: copies across file
            # systems are expected there, and unchanged files are reused, not copied.
            self.runner.expect_exdev = True

    def open_snapshot(self) -> None:
        """Phase 1 for a repository DEST (held, ``self.held[-1]``): waits for its shared lock
        (a prune holds it exclusively), warns when failed snapshots pile up, takes the newest
        complete snapshot as the reference (unless --link-dest named one) and creates the new
        snapshot's directory in the held REPO, held and locked while it is written
        (``self.snapshot_path``)."""
        repo_dir = self.held[-1]
        repo = repository.Repository.open(self.dest)
        try:
            self.locks.append(repository.RepoLock(repo.path, exclusive=False, on_wait=self.reporter.message, dir_fd=repo_dir.fd))
            # Down to the newest complete snapshot only: older manifests are never read.
            infos = repo.down_to_complete()
            if (piled := repo.failed_pile_warning(infos)) is not None:
                self.reporter.warn("failed_snapshots", str(repo.path), piled)
            if self.reference is None:
                newest = repo.newest_complete(infos)
                self.reference = newest.path if newest is not None else None
            if repo.method is repository.Method.SUBVOLUME:
                path = self.create_subvolume(repo, repo_dir)
            else:
                path = repo.create_snapshot(self.started, dir_fd=repo_dir.fd)
                self.held.append(repo_dir.child(path.name, path))
                self.locks.append(repository.SnapshotLock(path, dir_fd=self.held[-1].fd))
        except OSError as e:
            self.close()
            raise UsageError(f"{self.dest}: cannot write a snapshot into the repository: {e.strerror}") from e
        except BaseException:
            self.close()
            raise
        self.repository = repo
        self.snapshot_path = path

    def create_subvolume(self, repo: repository.Repository, repo_dir: HeldDir) -> Path:
        """Phase 1 in a repository of the subvolume method: the new snapshot's subvolume, a
        btrfs snapshot of the reference's (then brought up to date in place: ``in_place``) or,
        without a reference, a new empty one; held and locked. Raises OSError (UsageError when
        the reference's subvolume cannot be snapshotted)."""
        source = self.reference
        if source is not None and not _engine.btrfs_is_subvolume(source):
            # A --link-dest outside the repository, or a snapshot made some other way: a clone
            # is impossible, and a hardlink from it across subvolumes too.
            raise UsageError(f"{source}: not a btrfs subvolume, so no reference for a snapshot of the repository {repo.path} (method subvolume); give a snapshot of that repository, or none")
        try:
            path, lock = repo.create_subvolume_snapshot(self.started, repo_dir.fd, source=source, prepare=lambda p: manifest.write(p, self.running_facts()))
        except OSError as e:
            what = f"a btrfs snapshot of {source}" if source is not None else "a btrfs subvolume"
            raise UsageError(f"{repo.path}: cannot make {what} for the new snapshot: {e.strerror}") from e
        self.locks.append(lock)
        self.held.append(repo_dir.child(path.name, path))
        self.in_place = source is not None
        if source is not None:
            # Asked after the clone was made: any change of the reference before the clone
            # would have raised its seal's transaction, so an unchanged seal now means the clone
            # holds what the reference's backup placed and checked.
            self.reference_sealed = repo.sealed_unchanged(source.name, source)
        return path

    def close(self) -> None:
        """Releases the repository's and the snapshot's locks (a backup into a repository) and
        the descriptors of the directories written into."""
        while self.locks:
            self.locks.pop().release()
        while self.held:
            self.held.pop().close()

    def make_dir(self, path: Path, like: Path) -> None:
        """``destdir.make_dir``; in place, the clone's directory is taken as it is."""
        make_dir(path, like, exist_ok=self.in_place)

    @property
    def out(self) -> Path:
        """Where the backup is written: DEST (the new snapshot, for a repository DEST) through
        its held descriptor; ``self.target`` names it to the user."""
        return self.held[-1].via

    @property
    def data_dst(self) -> Path:
        """The backup's data directory (in the new snapshot, for a repository DEST)."""
        return self.out / "data"

    @property
    def target(self) -> Path:
        """The backup's directory as the user knows it: DEST, or the new snapshot once one is
        made in the repository DEST."""
        return self.snapshot_path or self.dest

    def headline(self, status: Status) -> str:
        """The summary's title: it names the snapshot made in a repository, not the repository."""
        return f"backup {status}: {self.target}"

    def left_behind(self, stage: Stage | None) -> str:
        """What a run stopped early leaves: a DEST whose manifest says running."""
        hint = interrupted_hint(stage, self.dest, "backup")
        if hint is not None:
            return hint
        if self.repository is None and repository.is_repository(self.dest):
            return "no snapshot was begun"  # stopped while waiting for the repository
        return f"{self.target} is an incomplete backup (its manifest says running)"

    def metrics(self, facts: dict[str, Any] | None) -> Metrics:
        """Message files by kind, over the queue and every account; every byte written by
        copying (the databases included)."""
        files = dict.fromkeys(self.file_kinds, 0)
        areas = [a for a in [(facts or {}).get("queue"), *((facts or {}).get("accounts") or {}).values()] if a]
        for a in areas:
            for k in ("linked", "reused", "copied", "unrecognized"):
                files[k] += a.get(k, 0)
            files["skipped"] += a.get("skipped_new", 0) + a.get("skipped_erasing", 0)
        n = self.runner.bytes_copied
        for db in ((facts or {}).get("databases") or {}).values():
            n += db.get("bytes", 0) if isinstance(db, dict) else 0
        return Metrics(files, n)

    # Phases 2 to 7 ---------------------------------------------------------------------------

    def run(self) -> Status:
        """Phases 2 to 7 (after check()); returns the status written to the manifest."""
        # config/ is copied from a descriptor of the directory itself: a symlink put in its
        # place since phase 1 is refused, never followed (root would copy what it names).
        try:
            self.config_fd = open_store_dir(self.paths.config_dir)
        except OSError as e:
            raise UsageError(f"{self.paths.config_dir}: cannot open the config directory: {open_problem(self.paths.config_dir, e)}") from e
        try:
            # Every read below data/ starts from this one descriptor (see anchor.py); the engine
            # never enters the destination, whatever path leads to it.
            try:
                self.root = DataRoot(self.paths.data_dir)
            except OSError as e:
                raise UsageError(f"{self.paths.data_dir}: cannot open the data directory: {open_problem(self.paths.data_dir, e)}") from e
            try:
                self.skip = [identity(os.stat(self.out))]
                return self._run()
            finally:
                self.root.close()
        except DestinationFull as e:
            # Named as the user named DEST, not by the descriptor path written through.
            raise DestinationFull(self.held[-1].shown(str(e)), e.what) from e
        except OSError as e:
            if isinstance(e.filename, str):
                e.filename = self.held[-1].shown(e.filename)
            raise
        finally:
            os.close(self.config_fd)

    def _run(self) -> Status:
        self.format_version = self.store_format_version()
        if self.in_place and os.path.lexists(self.out / digests.DIR):
            # The clone's digests are the reference's: set aside (the areas link their unchanged
            # shards from there, within this subvolume) and deleted after the areas, never kept
            # as they are (with --no-digests too).
            os.rename(self.out / digests.DIR, self.out / DIGESTS_REFERENCE)
        if self.record_digests:
            self.start_digests()
        self.runner.new_phase("config")
        if self.in_place:
            self.drop_stale(".", self.out / "config", b"config", root=self.config_fd)
        self.copy_tree(".", self.out / "config", b"config", root=self.config_fd)
        with ReaderLease(self.paths.data_dir, self.reporter) as lease:
            self.runner.new_phase("databases", len(DATA.databases) + 1 + len(self.config.accounts))
            self.snapshot_databases()
            pause("backup.messages")
            if self.in_place:
                # Everything of data/ but the areas (their messages are the engine's, below) and
                # the databases just copied.
                leave = [os.fsencode(r) for r in (*(a.rel for a in self.areas), *self.databases)]
                self.drop_stale(".", self.data_dst, b"data", root=self.root.fd, leave=leave)
            total = sum(a.index.live_count for a in self.areas)
            self.runner.new_phase("messages", total)
            self.backup_areas()
            lease.release()
        if self.in_place:
            self.drop_reference_digests()
        self.runner.new_phase("other files")
        self.copy_other_files()
        self.record_known_files()
        self.runner.finish()
        # The engine's own tallies as well as the events received: a lost event must never turn
        # a failed backup into an ok one.
        self.finish_digests()
        status = Status.FAILED if self.error_count() else Status.OK
        testpause.pause("backup.before_manifest")
        _engine.syncfs(self.out)
        self.finished = self.clock.now()
        manifest.write(self.out, self.facts(status))
        testpause.pause("backup.manifest_written")
        if self.repository is not None and self.repository.method is repository.Method.SUBVOLUME:
            self.freeze()
        return status

    def freeze(self) -> None:
        """The last step in a repository of the subvolume method: the snapshot's subvolume is
        made read-only (a prune deletes it all the same), and its seal noted in the repository
        (``Repository.record_seal``: the next snapshot trusts its clone's proven files only while
        the seal holds). Failing either is a warning: the snapshot is complete, only not
        protected against writes by root, or its files are checked one by one by the next."""
        try:
            _engine.btrfs_set_readonly(self.out, True)
        except OSError as e:
            self.reporter.warn("read_only", str(self.target), f"cannot make the snapshot's subvolume read-only ({e.strerror}); it is complete, but stays writable")
            return
        try:
            # Committed first, so that any later change of the snapshot is a later transaction.
            _engine.syncfs(self.out)
            seal = _engine.btrfs_seal(self.out)
            if seal is not None:
                self.repository.record_seal(self.held[-2].fd, self.snapshot_path.name, seal)
        except OSError as e:
            self.reporter.warn("seal", str(self.target), f"cannot note the read-only snapshot's seal ({e.strerror}); the next snapshot checks each of its files as without one")

    def drop_stale(self, src: str, dst: Path, prefix: bytes, *, root: int, leave: list[bytes] | None = None) -> None:
        """In place: removes from the clone's tree ``dst`` what the store's ``src`` (below
        ``root``) no longer has, except the paths ``leave`` (``inplace.rs``)."""
        self.runner.call(_engine.drop_stale, src, dst, jobs=self.jobs, prefix=prefix, root=root, leave=leave or [])

    def drop_reference_digests(self) -> None:
        """In place, after the areas: removes the clone's copy of the reference's ``digests/``,
        which the areas' unchanged shards were linked from (``start_digests``)."""
        where = self.out / DIGESTS_REFERENCE
        if os.path.lexists(where):
            self.runner.call(_engine.delete_tree, where, jobs=self.jobs, prefix=DIGESTS_REFERENCE.encode(), low_priority=False)

    def start_digests(self) -> None:
        """Phase 2: makes ``digests/`` in the backup and reads the reference's ``digests/files``
        (what reused files inherit). A directory that cannot be made is an error of the run (its
        digests would be incomplete), and the run goes on without them."""
        ref_fd = None
        try:
            os.mkdir(self.out / digests.DIR, digests.DIR_MODE)
            if self.reference is not None and self.reference_cutoff is not None:
                try:
                    ref_fd = os.open(self.reference, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
                except OSError:
                    ref_fd = None
            self.recording = digests.Recording.against(ref_fd)
        except OSError as e:
            self.reporter.error("digests", digests.DIR, f"cannot make the digests directory ({e.strerror}); no digests recorded")
        finally:
            if ref_fd is not None:
                os.close(ref_fd)

    def digest_args(self) -> dict[str, Any]:
        """The engine's ``digests`` argument of a plain copy."""
        return {"digests": True} if self.recording is not None else {}

    def note_files(self, result: dict[str, Any]) -> None:
        """Records the plain files an engine call placed."""
        if self.recording is not None:
            self.recording.add_engine_files(result.get("files", ()))

    def copy_tree(self, src: str, dst: Path, prefix: bytes, root: int) -> dict[str, int]:
        """Copies ``src`` below the directory descriptor ``root`` (never through a symlink)."""
        result = self.runner.call(_engine.copy_tree, src, dst, jobs=self.jobs, prefix=prefix, root=root, skip=self.skip, in_place=self.in_place, **self.reference_arg(), **self.digest_args())
        self.runner.note_link_fallback(result, self.exdev_hint)
        self.note_files(result)
        return result

    def copy_data(self, rel: str, dst: Path, only: list[bytes] | None = None) -> dict[str, int]:
        """Copies ``data/rel`` (opened from the data descriptor, never through a symlink), lock
        files left out."""
        prefix = f"data/{rel}".rstrip("/").encode()
        try:
            result = self.runner.call(_engine.copy_tree, rel or ".", dst, jobs=self.jobs, prefix=prefix, only=only, root=self.root.fd, skip=self.skip, skip_locks=True, in_place=self.in_place, **self.reference_arg(), **self.digest_args())
        except OSError as e:
            # data/rel was replaced (by a symlink, say) after it was checked: reported, never followed.
            self.reporter.error("area_missing", prefix, f"cannot open the directory without following a symlink ({e.strerror}); not backed up")
            return {}
        self.runner.note_link_fallback(result, self.exdev_hint)
        self.note_files(result)
        return result

    def reference_arg(self) -> dict[str, Any]:
        """The engine's ``reference`` argument: unchanged files are linked from it (the path of
        each tree in it is the call's prefix, which names the same path in this backup), with
        its ``reference_cutoff``: files written from shortly before it started on are copied."""
        cutoff = self.reference_cutoff
        if self.reference is None or cutoff is None:
            return {}
        # In place the snapshot is a clone of the reference: its own reference (kept, not linked).
        return {"reference": self.out if self.in_place else self.reference, "reference_cutoff": cutoff}

    @functools.cached_property
    def reference_cutoff(self) -> int | None:
        """The reference's ``manifest.reuse_cutoff``, read once; None (and a warning: nothing
        is reused) when its manifest no longer tells its start."""
        doc = self.reference_manifest
        if doc is None:
            return None
        cutoff = manifest.reuse_cutoff(doc)
        if cutoff is None:
            self.reporter.warn("reference", str(self.reference), "its manifest no longer tells when it started; nothing is reused from it")
        return cutoff

    @functools.cached_property
    def reference_manifest(self) -> dict[str, Any] | None:
        """The reference's manifest, read once; None without a reference or when it can no
        longer be read (then nothing is reused: ``reference_cutoff`` says so)."""
        if self.reference is None:
            return None
        try:
            return manifest.read(self.reference)
        except ManifestError:
            return {}

    def proof(self, area: Area) -> dict[str, Any]:
        """The engine's ``reference_*`` arguments for ``area``: the reference's own copy of the
        area's index, when it may prove messages (docs/REPOSITORY.md, "What is reused"): a
        message live in both indexes with the same recorded size is then linked from the
        reference without a look at the store's file. Nothing (and a warning naming the area)
        when the store's index may have gone back in time since the reference (a restore from
        an older backup hands IDs out again) or the reference's copy cannot be read; nothing,
        silently, without a reference or when the reference did not back up this area."""
        doc = self.reference_manifest
        db_rel = f"{area.rel}/{area.kind.layout.index}"
        then = (doc or {}).get("databases", {}).get(db_rel)
        if not self.reference_arg() or not isinstance(then, dict):
            return {}
        where = f"data/{db_rel}"
        what = area_label(area.kind, area.name)
        fallback = "; every message of it is compared with the store's file, as without a proof"
        if "source_inode" not in then:
            if not self.old_reference_warned:
                self.old_reference_warned = True
                self.reporter.warn("reference_index", str(self.reference), "made by a mailbak that did not record its indexes' files, so its indexes prove nothing" + fallback.replace(" of it", ""))
            return {}
        why = rewound(then, self.databases.get(db_rel, {}))
        if why is None:
            try:
                ref_index = read_reference_index(self.reference, db_rel, area.kind)
            except (OSError, DatabaseError) as e:
                why = f"the reference's copy of the index cannot be read ({e.strerror if isinstance(e, OSError) else e})"
            else:
                if ref_index.new_from > area.index.new_from:
                    why = f"the store's next ID ({area.index.new_from}) is below the reference's ({ref_index.new_from}): the store went back in time (restored from an older backup?) and hands IDs out again"
        if why is not None:
            self.reporter.warn("reference_index", where, f"{what}: {why}" + fallback)
            return {}
        proof: dict[str, Any] = {"reference_live": ref_index.live, "reference_sizes": ref_index.sizes, "reference_unknown_sizes": ref_index.unknown_sizes}
        racy = then.get("racy")
        if isinstance(racy, list) and all(type(i) is int and i >= 0 for i in racy):
            proof["reference_racy"] = pack_ids(racy)
            # A read-only reference that named its racy files: its clone's proven files are
            # kept without a stat.
            proof["reference_sealed"] = self.in_place and self.reference_sealed
        return proof

    def clear(self, dst: Path) -> None:
        """In place: removes the clone's copy of a database (the reference's), which is copied
        anew or, gone from the store, must go too."""
        if self.in_place:
            try:
                os.unlink(dst)
            except FileNotFoundError:
                pass

    def snapshot(self, rel: str, src: Path, dst: Path) -> bool:
        """Copies one database; reports and returns False on failure."""
        self.clear(dst)
        try:
            copy = copy_database(src, dst, self.owner, self.root)
        except DatabaseError as e:
            self.reporter.error("database", f"data/{rel}", f"database not backed up: {e}")
            return False
        self.databases[rel] = {"txnid": copy.txnid, "copy_txnid": copy.copy_txnid, "bytes": copy.size, "source_inode": copy.source_inode}
        if self.recording is not None:
            # Hashed as written (the copy is still in the page cache): what verify --read-data
            # and check compare it with later. The copy is in the backup, root's own directory.
            try:
                digest, size = digests.hash_at(self.held[-1].fd, f"data/{rel}")
            except OSError as e:
                self.reporter.error("digests", f"data/{rel}", f"cannot hash the database as written ({e.strerror}); it has no digest")
            else:
                self.recording.add_written(f"data/{rel}".encode(), digest, size)
        return True

    def snapshot_databases(self) -> None:
        """Phase 4."""
        data = self.paths.data_dir
        # Progress counts one unit per top-level database and per area (its index and junk
        # filter), whether copied or not, so that it ends exactly at the phase's total.
        for name in DATA.databases:
            self.clear(self.data_dst / name)
            if not os.path.lexists(data / name):
                self.reporter.warn("missing_database", f"data/{name}", "known database missing from the store; not in the backup")
            else:
                self.snapshot(name, data / name, self.data_dst / name)
            self.runner.step()
        self.add_area(AreaKind.QUEUE, QUEUE_DIR)
        self.runner.step()
        for name, why in self.config.invalid:
            self.reporter.error("invalid_account", "config/mailstore.toml", f"account {name!r}: {why}; nothing read or written for it")
        if not self.config.accounts:
            return
        if not is_real_dir(data / ACCOUNTS_DIR):
            # A symlinked accounts directory would lead every read outside the store.
            self.reporter.error("area_missing", "data/accounts", "not a directory (a symlink is never followed); no account backed up")
            self.runner.step(len(self.config.accounts))
            return
        self.make_dir(self.data_dst / ACCOUNTS_DIR, data / ACCOUNTS_DIR)
        for name in self.config.accounts:
            self.add_area(AreaKind.ACCOUNT, name)
            self.runner.step()

    def add_area(self, kind: AreaKind, name: str) -> None:
        """Snapshots the databases of one area and notes it for phase 5 (or, when its index
        cannot be read, for a plain copy in phase 6)."""
        lay = kind.layout
        rel = area_rel(kind, name)
        src = self.paths.data_dir / rel
        dst = self.data_dst / rel
        what = QUEUE_DIR if kind is AreaKind.QUEUE else f"account {name!r}"
        try:
            st = os.lstat(src)
        except OSError as e:
            self.reporter.error("area_missing", f"data/{rel}", f"{what}: directory missing ({e.strerror}); not backed up")
            return
        if not stat.S_ISDIR(st.st_mode):
            self.reporter.error("area_missing", f"data/{rel}", f"{what}: not a directory (a symlink is never followed, only recreated); not backed up")
            if kind is AreaKind.ACCOUNT:
                self.odd_accounts.append(os.fsencode(name))
            return
        self.make_dir(dst, src)
        for db in lay.databases:
            self.clear(dst / db)
        if not self.snapshot(f"{rel}/{lay.index}", src / lay.index, dst / lay.index):
            self.reporter.error("area_unreadable", f"data/{rel}", f"{what} cannot be opened; its directory is copied as plain files")
            self.plain_accounts.append(rel)
            return
        try:
            index = Index.read(dst / lay.index, kind)
        except DatabaseError as e:
            self.reporter.error("area_unreadable", f"data/{rel}/{lay.index}", f"{what}: the snapshot cannot be read ({e}); its directory is copied as plain files")
            self.plain_accounts.append(rel)
            return
        self.report_index_problems(rel, index)
        for db in lay.databases:
            if os.path.lexists(src / db):
                self.snapshot(f"{rel}/{db}", src / db, dst / db)
        self.areas.append(Area(kind, name, rel, dst, index))

    def report_index_problems(self, rel: str, index: Index) -> None:
        """Every problem verify of the backup will report about this index is an error of the
        backup too, so that a backup called ok always verifies clean; the snapshot is still
        backed up as it is (it is the best copy there is)."""
        where = f"data/{rel}/index.db"
        for code, _id, detail in index.problems:
            if code.startswith(("bad_", "missing_")):
                self.reporter.error(code, where, f"{detail} (files of such records are kept if present)")
            else:
                self.reporter.error(code, where, f"{detail}; backed up as it is")
        if index.problem_count > len(index.problems):
            self.reporter.error("more_problems", where, f"{index.problem_count - len(index.problems)} more record problems not listed")

    def backup_areas(self) -> None:
        """Phase 5: every area in one engine call, so workers spread over all of them; an area's
        plain files (an account's junk filter) travel with its messages."""
        # The engine's copy of each area is made area by area, and the index's buffers (and the
        # reference's, read by proof) let go at once: held for every area until the call
        # returned, they were a third of the nightly's peak memory at 5,000,000 messages.
        planned = []
        for a in self.areas:
            planned.append(_engine.BackupArea({**engine_area(a.kind, a.rel, a.index), "dst": a.dst, **self.shard_arg(a), **self.proof(a)}))
            a.index = a.index.without_ids()
        extra = self.reference_arg()
        if extra and self.recording is not None:
            # In place, the reference's shards as the clone holds them: a link from the
            # reference's own subvolume would fail (EXDEV).
            extra["reference_digests"] = self.out / DIGESTS_REFERENCE if self.in_place else self.reference / digests.DIR
        racy_from = manifest.own_cutoff(self.started)
        results = self.runner.call(_engine.backup_areas, planned, jobs=self.jobs, root=self.root.fd, skip=self.skip, in_place=self.in_place, racy_from=racy_from, **extra)
        for area, result in zip(self.areas, results, strict=True):
            self.runner.note_link_fallback(result, self.exdev_hint)
            # The files this run copied within its own racily-clean window: a later snapshot
            # never takes them as proven (docs/REPOSITORY.md, "What is reused"); too many to
            # list (a store's owner touching every file) is null, and then nothing of the area
            # is kept unlooked at.
            racy = result["racy"]
            self.databases[f"{area.rel}/{area.kind.layout.index}"]["racy"] = racy if len(racy) <= RACY_LIMIT else None
            area.counts = {k: result[k] for k in AREA_COUNTS}
            self.note_files(result)
            if self.recording is not None:
                self.recording.add_shards(result["digests"])

    def finish_digests(self) -> None:
        """Phase 7, before the manifest: ``digests/files``. Written last, so that a run stopped
        earlier leaves no ``files`` at all (and no manifest saying ok: its digests are never
        trusted)."""
        if self.recording is None:
            return
        try:
            self.recording.write_files(self.held[-1].fd)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise DestinationFull(f"{self.target}: no space left writing the digests ({e.strerror})") from e
            self.reporter.error("digests", f"{digests.DIR}/{digests.FILES}", f"cannot write it ({e.strerror}); the backup's digests are incomplete")

    def shard_arg(self, area: Area) -> dict[str, Any]:
        """The engine's ``digests`` item of an area: the directory its shard files go into (made
        here) and its place below the reference's ``digests/``; empty when not recording."""
        if self.recording is None:
            return {}
        where = self.out / digests.area_dir(area.rel)
        try:
            where.parent.mkdir(mode=digests.DIR_MODE, exist_ok=True)
            where.mkdir(mode=digests.DIR_MODE)
        except OSError as e:
            self.reporter.error("digests", digests.area_dir(area.rel), f"cannot make the area's digests directory ({e.strerror}); its messages have no digests")
            return {}
        return {"digests": (where, area.rel.encode())}

    def copy_other_files(self) -> None:
        """Phase 6: the rest of data/ (the areas' own plain files went with their messages)."""
        data = self.paths.data_dir
        never = {os.fsencode(n) for n in DATA.never}
        handled = never | {os.fsencode(n) for n in (QUEUE_DIR, ACCOUNTS_DIR, *DATA.databases)}
        handled |= {os.fsencode(lock_file(n)) for n in DATA.databases}
        expected = {os.fsencode(n) for n in (*DATA.files, LEASE_FILE, *DATA.dirs)}
        to_copy: list[bytes] = []
        names = sorted(self.root.listdir(""))
        locks = _lock_files_at(self.root, "", names)
        for name in names:
            if name in locks:
                continue  # never backed up (docs/BACKUP.md); the engine would leave it out too
            if name in handled and (name in never or not os.path.islink(data / os.fsdecode(name))):
                continue
            if name in handled:
                # A symlink where a database or area belongs was reported (and never followed)
                # when it was met; keep the link itself.
                to_copy.append(name)
                continue
            if name not in expected and not _is_special(data / os.fsdecode(name)):
                self.reporter.warn("unrecognized", b"data/" + name, "not part of the mail store format; copied")
            to_copy.append(name)
        for name in (os.fsencode(n) for n in DATA.files):
            if name not in to_copy:
                self.reporter.warn("missing_file", b"data/" + name, "known file missing from the store")
        if to_copy:
            self.copy_data("", self.data_dst, only=to_copy)
        if self.root.is_dir(ACCOUNTS_DIR):
            configured = {os.fsencode(n) for n in self.config.accounts}
            extra = [n for n in sorted(self.root.listdir(ACCOUNTS_DIR)) if n not in configured]
            for name in extra:
                self.reporter.warn("unrecognized", b"data/accounts/" + name, "directory of an account not in the config; copied as plain files")
            if extra or self.odd_accounts:
                (self.data_dst / ACCOUNTS_DIR).mkdir(mode=DEFAULT_DIR_MODE, exist_ok=True)
                self.copy_data(ACCOUNTS_DIR, self.data_dst / ACCOUNTS_DIR, only=extra + self.odd_accounts)
        for rel in self.plain_accounts:
            # Lock files are left out by the engine (a NAME-lock beside a NAME).
            self.copy_data(rel, self.data_dst / rel)

    def record_known_files(self) -> None:
        """Names, for the manifest, the known plain files the backup holds (docs/FORMAT.md
        section 1), with their sizes as copied: verify then finds one deleted or altered."""
        rels = [*DATA.files, LEASE_FILE, *(f"{a.rel}/{f}" for a in self.areas for f in a.kind.layout.files)]
        for rel in rels:
            try:
                st = os.lstat(self.data_dst / rel)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                self.files[rel] = {"bytes": st.st_size}

    # Phase 7 ---------------------------------------------------------------------------------

    def store_format_version(self) -> str | None:
        """``data/mailstore-version`` for the manifest, or None. Read below the data/ descriptor
        as the store's owner (identity.py), with ``read_small``: a FIFO there never blocks the
        run, and a symlink or a hardlink to a file only root may read never puts its head into
        the manifest. A missing file is reported in phase 6; any other refusal here."""
        try:
            with acting_as(self.owner):
                raw = read_small(VERSION_FILE, MAX_VERSION_BYTES, dir_fd=self.root.fd)
        except FileNotFoundError:
            return None
        except Refused as e:
            self.reporter.warn("format_version", f"data/{VERSION_FILE}", f"{e.strerror}; not read, the format version is not recorded")
            return None
        except OSError as e:
            self.reporter.warn("format_version", f"data/{VERSION_FILE}", f"cannot read it as the store's owner ({e.strerror}); the format version is not recorded")
            return None
        return raw.decode("utf-8", "replace").strip()

    def running_facts(self) -> dict[str, Any]:
        """The first manifest: the backup has started and is not finished (docs/FORMAT.md)."""
        return {"status": Status.RUNNING, "mailbak_version": __version__, "store": self.store_path, "started": rfc3339(self.started)}

    def error_count(self) -> int:
        """Errors of the run: the events received, or the engine's own tallies when larger."""
        return max(self.reporter.counts.errors, sum(a.counts.get("errors", 0) for a in self.areas))

    def facts(self, status: str) -> dict[str, Any]:
        """The manifest's content (also the JSON summary)."""
        counts = self.reporter.counts
        return {
            "status": status,
            "mailbak_version": __version__,
            "store_format_version": self.format_version,
            "store": self.store_path,
            "started": rfc3339(self.started),
            # A run stopped early (the monitor's facts) has no finish yet: now.
            "finished": rfc3339(self.finished),
            "databases": self.databases,
            "files": self.files,
            "queue": next(({**a.counts, **a.index.summary()} for a in self.areas if a.kind is AreaKind.QUEUE), None),
            "accounts": {a.name: {**a.counts, **a.index.summary()} for a in self.areas if a.kind is AreaKind.ACCOUNT},
            "plain_copied_accounts": [r.split("/", 1)[1] for r in self.plain_accounts if r.startswith("accounts/")],
            "repository": str(self.repository.path) if self.repository is not None else None,
            "snapshot": self.snapshot_path.name if self.snapshot_path is not None else None,
            "reference": str(self.reference) if self.reference is not None else None,
            "transfer": self.transfer(),
            **({"digests": self.recording.facts()} if self.recording is not None else {}),
            "warnings": counts.warnings,
            "errors": self.error_count(),
        }

    def transfer(self) -> dict[str, int]:
        """How the backup's files got there, over every phase: message files ``linked`` from the
        store, files ``reused`` from the reference, files ``copied``, and ``bytes_copied`` (the
        databases included); ``messages`` is the snapshot's live message count."""
        t = self.runner.totals
        return {
            "messages": sum(a.index.live_count for a in self.areas),
            "linked": t.get("linked", 0),
            "reused": t.get("reused", 0),
            "copied": t.get("copied", 0),
            "bytes_copied": self.runner.bytes_copied + sum(db["bytes"] for db in self.databases.values()),
            # In place (a btrfs clone of the reference): entries removed because the store no
            # longer has them; the rest of the clone is what ``reused`` counts.
            **({"removed": t.get("dropped", 0)} if self.in_place else {}),
        }

    def table(self) -> list[tuple[str, ...]]:
        """The summary table: one row per area and a total."""
        rows: list[tuple[str, ...]] = [("area", *(heading for _, heading in TABLE_COLUMNS))]
        total = dict.fromkeys((k for k, _ in TABLE_COLUMNS), 0)
        for a in self.areas:
            rows.append((area_label(a.kind, a.name), *(str(a.counts.get(k, 0)) for k, _ in TABLE_COLUMNS)))
            for k in total:
                total[k] += a.counts.get(k, 0)
        rows.append(("total", *(str(v) for v in total.values())))
        return rows


PathArg = str | os.PathLike[str]


def backup_job(store: PathArg, dest: PathArg, *, config: PathArg | None, data: PathArg | None, jobs: int, reporter: Reporter, verbose: bool, link_dest: PathArg | None = None, record_digests: bool = True) -> Backup:
    """The job of a backup, as the command line and the API make it: STORE/config and
    STORE/data unless given; first a warning when DEST would vanish with its service's
    private /tmp."""
    warning = private_tmp_warning(dest)
    if warning:
        reporter.warn("private_tmp", os.fspath(dest), warning)
    return Backup(StorePaths.of(store, config, data), Path(dest), jobs=jobs, reporter=reporter, verbose=verbose, link_dest=Path(link_dest) if link_dest is not None else None, record_digests=record_digests)


def check_reference(path: Path) -> Path:
    """--link-dest PREV: a directory (not a symlink) holding a complete backup; raises UsageError."""
    if not is_real_dir(path):
        raise UsageError(f"{path}: --link-dest must name a backup directory (a symlink is never followed)")
    try:
        doc = manifest.read(path)
    except ManifestError as e:
        raise UsageError(f"--link-dest {path}: not a complete backup: {e}") from e
    if doc["status"] != Status.OK:
        raise UsageError(f"--link-dest {path}: not a complete backup (its manifest says {doc['status']})")
    return path


def rewound(then: dict[str, Any], now: dict[str, Any]) -> str | None:
    """Why the store's index, copied now (``now``: this run's ``databases`` entry), may not be
    the one the reference copied (``then``: its manifest's entry) grown since, or None. A
    restore from an older backup writes another file (another inode), or one at an older
    transaction (a copy written over the old file keeps its inode, and a compacted one starts
    over near 1); LMDB's transaction IDs only grow in one file."""
    if now.get("source_inode") != then.get("source_inode"):
        return "the store's index is another file than the one the reference copied (restored from a backup, or rebuilt?), so IDs may have been handed out again"
    if not isinstance(then.get("txnid"), int) or now.get("txnid", -1) < then["txnid"]:
        return f"the store's index is at an older transaction ({now.get('txnid')}) than the reference copied ({then.get('txnid')}): restored from an older backup? IDs may have been handed out again"
    return None


def read_reference_index(reference: Path, db_rel: str, kind: AreaKind) -> Index:
    """The reference's copy of the index ``data/db_rel``, reached below the reference without
    following a symlink at any step (a backup may hold symlinks recreated from a store) and
    read only when it is a regular file. Raises OSError or DatabaseError."""
    with DataRoot(reference / "data") as root:
        fd, st = root.open_entry(db_rel)
        try:
            if not stat.S_ISREG(st.st_mode):
                raise DatabaseError("not a regular file")
            # The engine reads the very file held (the /proc link reopens it).
            return Index.read(Path(f"/proc/self/fd/{fd}"), kind)
        finally:
            os.close(fd)


def _lock_files_at(root: DataRoot, rel: str, names: list[bytes]) -> set[bytes]:
    """The LMDB lock files among ``names``, the entries of ``data/rel`` (``layout.lock_files``:
    the rule), their types read below ``root``."""

    def regular(wanted: set[bytes]) -> set[bytes]:
        fd = root.open_dir(rel)
        try:
            return {n for n in wanted if _is_regular_at(fd, n)}
        finally:
            os.close(fd)

    return lock_files(names, regular)


def _is_regular_at(dir_fd: int, name: bytes) -> bool:
    try:
        return stat.S_ISREG(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _is_special(path: Path) -> bool:
    try:
        m = os.lstat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(m) or stat.S_ISDIR(m) or stat.S_ISLNK(m))

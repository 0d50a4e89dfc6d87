"""mailbak verify: proves a backup (or a live store) complete and consistent.

The checks, in order, each reported with its path:
1. Manifest (backups): present and ``ok``. Missing or ``running`` means incomplete; ``failed``
   means failed. Any directory holding ``mailbak.json`` is a backup (``destdir.is_backup``), and
   nothing is ever written into a backup (except by ``--fix``).
2. Databases: every LMDB file passes the engine's structural check (it reads the file itself,
   so a damaged file never reaches LMDB's C code), and only then is opened read-only, without a
   lock file in a backup. Index records must decode (engine: ``read_index``).
3. Files (engine: ``check_areas``, stat only, in parallel): every live message and queued
   message has a regular file of the recorded size.
4. Account rules: uid below the mailbox's uidnext, no live message in an expunged mailbox,
   erase entries name expunged messages, IDs below the ``next_id`` counter.
5. Unknown files in message directories: in a backup, one at the path of an ID at or above the
   next-ID counter is an error (the first message to get that ID would collide with it);
   orphans (allocated IDs no record claims) and other unknown files are warnings. ``--fix``
   moves them to ``data/moved/`` keeping their relative path, never deleting, never
   overwriting, and in a live store only files unchanged for 15 minutes (a delivery in progress
   looks like an orphan until its record is committed).
6. Accounts in the config without a directory (error), directories not in the config (warning).
7. Backups with a finished manifest: every database, area and known file it names is there,
   with the recorded size, transaction ID and record counts (``check_against_manifest``).
8. With ``--read-data`` (a backup or snapshot; :class:`ContentCheck`): check 3 goes through the
   engine's content check instead (``_engine.RepoCheck``), which also reads every message file
   and every file ``digests/files`` lists, and compares its SHA-256 with the digest the backup
   recorded (docs/FORMAT.md, "Digests"). ``mailbak check`` runs the same per-backup checks over
   every snapshot of a repository with one ContentCheck, so that an inode shared by many
   snapshots is stat'ed and read once.

A live store is verified from a copy of each index, made to a temporary directory outside
the store (``lmdbcopy.py``), holding the backup lease so that writers defer removals, and files
added meanwhile are skipped.
Nothing is written anywhere in PATH except by ``--fix``.
"""

from __future__ import annotations

import os
import stat
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import lmdb

from mailbak import _engine, manifest
from mailbak.anchor import DataRoot, open_problem
from mailbak.destdir import BACKUP_ENTRIES, is_store
from mailbak.errors import DestinationFull, ManifestError, UsageError
from mailbak.identity import StoreOwner
from mailbak.job import Metrics, Stage, files_from, interrupted_hint
from mailbak.layout import ACCOUNTS_DIR, QUEUE_DIR, AreaKind, FormatError, StorePaths, area_label, area_rel, is_real_dir, read_config, unpack_ids
from mailbak.lmdbcopy import DatabaseError, Index, ReaderLease, copy_database, describe, engine_area
from mailbak.report import Reporter
from mailbak.repository import RepoLock, reader_lock
from mailbak.runner import Runner
from mailbak.sourcecheck import Area as SourceArea
from mailbak.sourcecheck import SourceCheck
from mailbak.status import Status
from mailbak.testpause import pause

#: What data/ itself holds (layout.py).
DATA = AreaKind.DATA.layout

#: Counts shown per area (each area also keeps its "errors").
AREA_COUNTS = ("checked", "missing", "damaged", "orphans", "unrecognized", "moved")


class ReadIndex(NamedTuple):
    """An area whose index was read (checks 2 and 4), for checks 3, 5 and 7."""

    kind: AreaKind
    name: str
    rel: str
    index: Index


@dataclass
class AreaResult:
    """One verified area."""

    name: str
    counts: dict[str, int] = field(default_factory=dict)


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


#: What a content check counts, as the summary names it (``_engine.RepoCheck.counts``).
CONTENT_COUNTS = ("inodes_checked", "inodes_read", "bytes_read", "damaged", "unrecorded", "unverified", "sizes_only")


@dataclass(frozen=True)
class Subset:
    """Which inodes ``--read-data`` reads (restic's ``--read-data-subset``): all, part ``n`` of
    ``m`` (stable over runs), a ``fraction`` at random, or a byte ``budget`` at random."""

    part: tuple[int, int] | None = None
    fraction: float | None = None
    budget: int | None = None

    def engine_args(self) -> dict[str, Any]:
        """The subset as ``_engine.RepoCheck`` takes it."""
        return {"part": self.part, "fraction": self.fraction, "budget": self.budget}


class ContentCheck:
    """The content check of one run (check 8): the engine's inode map, shared by every backup
    the run verifies, so that each distinct inode is stat'ed (and, with ``read_data``, read)
    once; the damage found, reported once per inode with every snapshot holding it."""

    def __init__(self, *, read_data: bool, subset: Subset | None = None, seed: int = 0):
        self.read_data = read_data
        self.subset = subset or Subset()
        self.engine = _engine.RepoCheck(read_data=read_data, seed=seed, **self.subset.engine_args())
        #: Finished backups whose manifest records no digests: checked by size only.
        self.sizes_only: list[str] = []

    @staticmethod
    def trusted(doc: dict[str, Any] | None, status: str | None) -> bool:
        """Whether a backup's digest files are proof: its manifest is ``ok`` and names digests
        (a failed or killed run's never are)."""
        return doc is not None and status == Status.OK and isinstance(doc.get("digests"), dict)

    def check_backup(self, v: Verify, name: str, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Check 3 (and 8) of the backup ``v`` verifies, named ``name`` in damage reports; one
        tally per area of ``specs``."""
        assert v.root is not None
        trusted = self.trusted(v.manifest_doc, v.manifest_status)
        if self.read_data and v.manifest_doc is not None and v.manifest_status == Status.OK and not trusted:
            self.sizes_only.append(name)
        results = v.runner.call(self.engine.check_snapshot, name, v.path, trusted, specs, jobs=v.jobs, root=v.root.fd)
        if self.read_data and trusted:
            v.runner.call(self.engine.check_files, name, v.path, trusted, jobs=v.jobs)
        return results

    def counts(self) -> dict[str, int]:
        """The run's counts (:data:`CONTENT_COUNTS`)."""
        c = self.engine.counts()
        return {k: c[k] for k in CONTENT_COUNTS}

    def damages(self) -> list[dict[str, Any]]:
        """The damaged inodes: the engine's records, their snapshots newest first."""
        out = self.engine.damages()
        for d in out:
            d["snapshots"] = sorted(d["snapshots"], reverse=True)
        return out

    def report(self, reporter: Reporter, *, in_repository: bool) -> None:
        """One error per damaged inode, naming the message and every snapshot holding it
        (``in_repository``: the path starts with the newest of them); one warning for the
        backups checked by size only."""
        for d in self.damages():
            area = d["area"].decode("utf-8", "surrogateescape")
            what = f"message {d['id']} of " if d["id"] is not None else "file of "
            what += "the queue" if area == QUEUE_DIR else f"account {area.removeprefix(ACCOUNTS_DIR + '/')!r}" if area else "the backup"
            path = d["rel"] if not in_repository else d["snapshots"][0].encode() + b"/" + d["rel"]
            held = f"; held by {len(d['snapshots'])} snapshot(s): {', '.join(d['snapshots'])}" if in_repository else ""
            reporter.error(d["cause"], path, f"{what}: {d['detail']}{held}")
        if self.sizes_only:
            n = len(self.sizes_only)
            reporter.warn("no_digests", None, f"{n} backup(s) made before digests were recorded ({', '.join(self.sizes_only)}): their files are checked by size only")


def source_area(r: ReadIndex) -> SourceArea:
    """An area as the source check takes it: its live IDs with their recorded sizes."""
    return SourceArea(r.rel, r.kind.layout.tree or "", unpack_ids(r.index.live), unpack_ids(r.index.sizes), frozenset(unpack_ids(r.index.unknown_sizes)))


class Verify:
    """One run of ``mailbak verify`` (a job: job.py)."""

    command: ClassVar[str] = "verify"
    #: Message files by what the verification found of them.
    file_kinds: ClassVar[tuple[str, ...]] = AREA_COUNTS
    counts_bytes: ClassVar[bool] = False
    reports_failure: ClassVar[bool] = False

    def __init__(
        self,
        path: Path,
        *,
        fix: bool,
        jobs: int,
        reporter: Reporter,
        verbose: bool = False,
        expect: dict[str, Any] | None = None,
        content: ContentCheck | None = None,
        name: str | None = None,
        in_check: bool = False,
        against: Path | None = None,
    ):
        self.path = path
        #: ``--against``: with --read-data of a live store, the backup or repository whose
        #: digests the store's message files are compared with (sourcecheck.py).
        self.against = against
        self.source: SourceCheck | None = None
        #: With --read-data (or as a step of ``check``): the content check (check 8).
        self.content = content
        #: The backup's name in damage reports.
        self.name = name or path.name
        #: A step of ``mailbak check``: the caller holds the repository's lock and reports the
        #: content check's findings once for all snapshots.
        self.in_check = in_check
        self.fix = fix
        self.jobs = jobs
        self.reporter = reporter
        self.runner = Runner(reporter, verbose=verbose)
        self.paths = StorePaths.of(path)
        self.live = False
        self.areas: list[AreaResult] = []
        self.manifest_status: str | None = None
        #: The manifest of a finished (ok or failed) backup: what PATH must hold. For a backup it
        #: is read from PATH; restore passes the backup's to check the store it restored.
        self.manifest_doc: dict[str, Any] | None = expect
        #: Transaction ID of each database file of a backup, as the structural check read it.
        self.db_txnids: dict[str, int] = {}
        self.databases = 0
        self.owner: StoreOwner | None = None
        #: The repository's shared lock while PATH, a snapshot of it, is verified.
        self.lock: RepoLock | None = None
        self.root: DataRoot | None = None

    def check(self) -> None:
        """Takes the repository's shared lock when PATH is a snapshot of one, then raises UsageError
        for a PATH that is not a directory, a store with a problem, or neither a store nor a
        backup."""
        pause("verify.check")
        # First: a prune must not remove the snapshot while it is read (it waits, or with
        # --no-wait refuses); a prune running now makes this wait, saying so.
        if not self.in_check:
            self.lock = reader_lock(self.path, on_wait=self.reporter.message)
        if not self.path.is_dir():
            raise UsageError(f"{self.path}: not a directory")
        # Inside check every path is a snapshot: one that lost its manifest still has config/ and
        # data/ and must be reported incomplete, never taken for a live store.
        self.live = not self.in_check and is_store(self.path)
        # A live store is opened (lock files) and fixed (data/moved/) as its owner; a backup is
        # mailbak's own and never opened with a lock file.
        self.owner = StoreOwner.of(self.paths.data_dir) if self.live else None
        problem = self.paths.problem() if self.live else None
        if problem:
            raise UsageError(problem)
        if self.against is not None and not (self.live and self.content is not None):
            raise UsageError(f"--against {self.against}: compares a live store's files with a backup (with --read-data); {self.path} is not a live store")
        if self.live and self.content is not None:
            # Source bit rot: the store's files against a backup's digests (sourcecheck.py).
            if self.against is None:
                raise UsageError(f"{self.path}: a live store has no digests of its own; --read-data of a store needs --against REPO|BACKUP (the backup whose digests its files are compared with)")
            self.source = SourceCheck.open(self.against, self.reporter)
            self.content = None
        # Anything that is not a store is taken for a backup, so that what a killed backup left
        # (an empty DEST, one with only config/, or only the temporary file of its first
        # manifest, killed while that was fsynced) is reported incomplete. A directory holding
        # none of a backup's parts is neither.
        if not self.live and os.listdir(self.path) and not any(os.path.lexists(self.path / n) for n in (*BACKUP_ENTRIES, manifest.MANIFEST_TMP)):
            raise UsageError(f"{self.path}: neither a store nor a backup (no config/, data/ or {manifest.MANIFEST})")

    def close(self) -> None:
        """Releases the repository's lock (a snapshot of a repository, or --against's)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if self.source is not None:
            self.source.close()

    def run(self) -> Status:
        """All checks; returns clean or problems. The repository's lock ends with them, also
        for a caller that never calls close()."""
        try:
            return self._run()
        finally:
            self.close()

    def _run(self) -> Status:
        with tempfile.TemporaryDirectory(prefix="mailbak-verify-") as tmp:
            self.tmp = Path(tmp)
            if not self.live:
                self.check_manifest()
            problem = self.paths.problem()
            if problem:
                self.reporter.error("not_a_store", str(self.path), f"{problem}; nothing more to check")
                return Status.PROBLEMS
            try:
                config = read_config(self.paths.config_dir)
            except FormatError as e:
                self.reporter.error("config", "config/mailstore.toml", str(e))
                return Status.PROBLEMS
            # Every area and database below data/ is opened from this one descriptor, never
            # through a symlink (anchor.py).
            try:
                self.root = DataRoot(self.paths.data_dir)
            except OSError as e:
                self.reporter.error("not_a_store", str(self.paths.data_dir), f"cannot open the data directory: {open_problem(self.paths.data_dir, e)}")
                return Status.PROBLEMS
            # In a live store, hold the lease like a backup: writers then defer removing the files
            # of the snapshots until they are checked, instead of making them look missing.
            with self.root, ReaderLease(self.paths.data_dir, self.reporter) if self.live else nullcontext():
                self.runner.new_phase("databases", len(DATA.databases) + 1 + len(config.accounts))
                self.check_top_databases()
                indexes = self.read_indexes(config)
                total = sum(r.index.live_count for r in indexes)
                self.runner.new_phase("files", total)
                pause("verify.files")
                self.check_files(indexes)
                if self.source is not None:
                    # Still under the lease: no writer removes a file while it is read.
                    self.source.run(self.root, self.owner, [source_area(r) for r in indexes], jobs=self.jobs, reporter=self.reporter)
            self.check_account_dirs(config)
            if self.manifest_doc is not None:
                self.check_against_manifest(self.manifest_doc, config, indexes)
            if self.content is not None and not self.in_check:
                self.content.report(self.reporter, in_repository=False)
            self.runner.finish()
        engine_errors = sum(a.counts.get("errors", 0) for a in self.areas)
        return Status.PROBLEMS if self.reporter.counts.errors or engine_errors else Status.CLEAN

    # 1 ---------------------------------------------------------------------------------------

    def check_manifest(self) -> None:
        """Check 1: a missing, malformed or ``running`` manifest is an error, and so is a ``failed``
        one; a finished one (ok or failed) is kept for check 7."""
        try:
            doc = manifest.read(self.path)
        except ManifestError as e:
            code = "incomplete" if e.kind == ManifestError.MISSING else "manifest"
            self.reporter.error(code, manifest.MANIFEST, str(e))
            self.manifest_status = code
            return
        self.manifest_status = doc["status"]
        if doc["status"] == Status.RUNNING:
            self.manifest_status = Status.INCOMPLETE
            why = "it was killed, interrupted or stopped by a full disk, or it is still running"
            self.reporter.error("incomplete", manifest.MANIFEST, f'incomplete backup: it started at {doc["started"]} and never finished (its manifest still says "running"): {why}')
        else:
            self.manifest_doc = doc
            if doc["status"] != Status.OK:
                self.reporter.error("backup_failed", manifest.MANIFEST, f"the backup run reported {doc['errors']} error(s); it lacks what they name")

    # 2 ---------------------------------------------------------------------------------------

    def database(self, rel: str) -> Path | None:
        """A structurally checked file to read ``data/rel`` from (the file itself in a backup, a
        snapshot copy for a live store), or None after reporting why not."""
        src = self.paths.data_dir / rel
        self.databases += 1
        if self.live:
            dst = self.tmp / rel.replace("/", "%")
            try:
                self.db_txnids[rel] = copy_database(src, dst, self.owner, self.root).txnid
            except DatabaseError as e:
                self.reporter.error("database", f"data/{rel}", str(e))
                return None
            except DestinationFull as e:
                # The snapshots go to a temporary directory, not into PATH: name it.
                raise DestinationFull(str(e), f"the temporary directory {self.tmp} is full (verify of a live store copies each database there; set TMPDIR to a directory with room for the largest databases)") from e
            return dst
        try:
            st = os.lstat(src)
            if not stat.S_ISREG(st.st_mode):
                self.reporter.error("database", f"data/{rel}", "not a regular file")
                return None
            if st.st_size == 0:
                self.reporter.error("database", f"data/{rel}", "empty file, not an LMDB database")
                return None
            self.db_txnids[rel] = _engine.lmdb_check(src)["txnid"]
        except FileNotFoundError:
            self.reporter.error("database", f"data/{rel}", "missing")
            return None
        except _engine.LmdbError as e:
            self.reporter.error("database", f"data/{rel}", f"damaged: {describe(e)}")
            return None
        except OSError as e:
            self.reporter.error("database", f"data/{rel}", f"cannot read: {e.strerror}")
            return None
        # Only now may LMDB itself open it; read-only and without a lock file in a backup.
        try:
            env = lmdb.open(str(src), subdir=False, readonly=True, lock=False, create=False, max_dbs=0)
            env.stat()
            env.close()
        except lmdb.Error as e:
            self.reporter.error("database", f"data/{rel}", f"LMDB refuses it: {e}")
            return None
        return src

    def check_top_databases(self) -> None:
        """Check 2 for the databases at the top of ``data/``; a missing one is only a warning."""
        for name in DATA.databases:
            if os.path.lexists(self.paths.data_dir / name):
                self.database(name)
            else:
                self.reporter.warn("missing_database", f"data/{name}", "known database missing")
            self.runner.step()

    def read_indexes(self, config) -> list[ReadIndex]:
        """Checks and reads the queue's and each account's index (check 2 and 4)."""
        out = []
        for name, why in config.invalid:
            self.reporter.error("invalid_account", "config/mailstore.toml", f"account {name!r}: {why}")
        for kind, name in [(AreaKind.QUEUE, QUEUE_DIR)] + [(AreaKind.ACCOUNT, n) for n in config.accounts]:
            lay, rel = kind.layout, area_rel(kind, name)
            # One unit of progress per area (its index and junk filter), however it ends.
            self.runner.step()
            if not is_real_dir(self.paths.data_dir / rel) or (kind is AreaKind.ACCOUNT and not is_real_dir(self.paths.data_dir / ACCOUNTS_DIR)):
                continue  # reported by check 6 (accounts) or below (queue); symlinks are never followed
            for extra in lay.databases:
                if os.path.lexists(self.paths.data_dir / rel / extra):
                    self.database(f"{rel}/{extra}")
            path = self.database(f"{rel}/{lay.index}")
            if path is None:
                continue
            try:
                index = Index.read(path, kind)
            except DatabaseError as e:
                self.reporter.error("database", f"data/{rel}/index.db", str(e))
                continue
            for code, _id, detail in index.problems:
                self.reporter.error(code, f"data/{rel}/index.db", detail)
            if index.problem_count > len(index.problems):
                self.reporter.error("more_problems", f"data/{rel}/index.db", f"{index.problem_count - len(index.problems)} more record problems not listed")
            out.append(ReadIndex(kind, name, rel, index))
        if not is_real_dir(self.paths.data_dir / QUEUE_DIR):
            self.reporter.error("area_missing", "data/queue", "queue directory missing (or a symlink, never followed)")
        return out

    # 3 and 5 ---------------------------------------------------------------------------------

    def check_files(self, indexes: list[ReadIndex]) -> None:
        """Checks 3 and 5 (and 8) for every area, in one engine call."""
        specs = [{**engine_area(r.kind, r.rel, r.index), "fix_rel": f"moved/{r.rel}".encode()} for r in indexes]
        if self.content is not None:
            results = self.content.check_backup(self, self.name, specs)
        else:
            results = self.runner.call(
                _engine.check_areas, specs, live=self.live, jobs=self.jobs, fix_root=self.paths.data_dir if self.fix else None, fix_owner=self.owner.engine_arg() if self.fix and self.owner else None, root=self.root.fd
            )
        for r, result in zip(indexes, results, strict=True):
            self.areas.append(AreaResult(area_label(r.kind, r.name), {k: result[k] for k in (*AREA_COUNTS, "errors")}))

    # 6 ---------------------------------------------------------------------------------------

    def check_account_dirs(self, config) -> None:
        """Check 6: a configured account without a directory is an error, a directory of an account
        not in the config a warning."""
        accounts_dir = self.paths.data_dir / ACCOUNTS_DIR
        present = set(_listdir(accounts_dir)) if is_real_dir(accounts_dir) else set()
        for name in config.accounts:
            if name not in present or not is_real_dir(accounts_dir / name):
                self.reporter.error("account_missing", f"data/accounts/{name}", "configured account has no directory (a symlink is never followed)")
        for name in sorted(present - set(config.accounts)):
            self.reporter.warn("unconfigured_account", f"data/accounts/{name}", "directory of an account not in the config")

    # 7 ---------------------------------------------------------------------------------------

    def check_against_manifest(self, doc: dict[str, Any], config, indexes: list[ReadIndex]) -> None:
        """Check 7: the backup holds what its manifest says the run wrote (docs/VERIFY.md):
        every database with its size and transaction ID, every area with its record counts,
        every known plain file with its size. Whatever was deleted or replaced since is an
        error, even where the rest of the backup looks consistent without it."""
        data = self.paths.data_dir

        def missing(rel: str, what: str) -> None:
            self.reporter.error("not_in_backup", f"data/{rel}", f"{what} named in the manifest is not in the backup")

        def mismatch(rel: str, what: str, have: object, want: object) -> None:
            self.reporter.error("manifest_mismatch", f"data/{rel}", f"{what} is {have}, the manifest says {want}")

        for rel, want in doc["databases"].items():
            st = _lstat(data / rel)
            if st is None or not stat.S_ISREG(st.st_mode):
                missing(rel, "database")
                continue
            if st.st_size != want["bytes"]:
                mismatch(rel, "size", st.st_size, want["bytes"])
            have_txnid = self.db_txnids.get(rel)
            if "copy_txnid" in want and have_txnid is not None and have_txnid != want["copy_txnid"]:
                mismatch(rel, "transaction ID", have_txnid, want["copy_txnid"])
        for rel, want in doc["files"].items():
            st = _lstat(data / rel)
            if st is None or not stat.S_ISREG(st.st_mode):
                missing(rel, "file")
            elif st.st_size != want["bytes"]:
                mismatch(rel, "size", st.st_size, want["bytes"])
        read = {r.rel: r.index for r in indexes}
        areas = [(AreaKind.QUEUE, QUEUE_DIR, doc["queue"])] if doc.get("queue") is not None else []
        areas += [(AreaKind.ACCOUNT, name, facts) for name, facts in doc["accounts"].items()]
        for kind, name, want in areas:
            rel = area_rel(kind, name)
            if kind is AreaKind.ACCOUNT and name not in config.accounts:
                self.reporter.error("not_in_backup", "config/mailstore.toml", f"account {name!r} named in the manifest is not in the backup's config")
            if not is_real_dir(data / rel):
                missing(rel, "directory")
                continue
            index = read.get(rel)
            if index is None:
                continue  # its index was reported unreadable (or it left the config) above
            have = index.summary()
            for key in manifest.AREA_FACTS:
                if have[key] != want[key]:
                    mismatch(f"{rel}/{kind.layout.index}", f"{key.replace('_', ' ')} of the index", have[key], want[key])
        for name in doc["plain_copied_accounts"]:
            rel = area_rel(AreaKind.ACCOUNT, name)
            if not os.path.lexists(data / rel):
                missing(rel, "directory")

    # Results ---------------------------------------------------------------------------------

    def facts(self, result: str) -> dict[str, Any]:
        """The summary's facts: what was verified, the manifest's status, the numbers of databases,
        areas and files by outcome, warnings and errors."""
        c = self.reporter.counts
        totals = {k: sum(a.counts.get(k, 0) for a in self.areas) for k in AREA_COUNTS}
        return {
            "status": result,
            "kind": "store" if self.live else "backup",
            "manifest": self.manifest_status,
            "databases": self.databases,
            "areas": len(self.areas),
            **totals,
            **(self.content.counts() if self.content is not None and not self.in_check else {}),
            **({"against": self.source.name, **self.source.counts} if self.source is not None else {}),
            "warnings": c.warnings,
            "errors": c.errors,
        }

    def headline(self, status: Status) -> str:
        """The summary's title."""
        return f"verify {status}: {self.path}"

    def left_behind(self, stage: Stage | None) -> str:
        """A verification writes nothing (but with --fix, moves): stopped, it is only incomplete."""
        return interrupted_hint(stage, self.path, "verify") or "verification incomplete"

    def metrics(self, facts: dict[str, Any] | None) -> Metrics:
        """Message files by what was found of them; with --read-data, bytes read and inodes."""
        if self.content is None:
            return Metrics(files_from(self.file_kinds, facts))
        return Metrics(files_from(self.file_kinds, facts), bytes_read=(facts or {}).get("bytes_read", 0), inodes_checked=(facts or {}).get("inodes_checked", 0))

    def table(self) -> list[tuple[str, ...]]:
        """One row per area and a total."""
        rows: list[tuple[str, ...]] = [("area", *AREA_COUNTS)]
        for a in self.areas:
            rows.append((a.name, *(str(a.counts.get(k, 0)) for k in AREA_COUNTS)))
        f = self.facts("")
        rows.append(("total", *(str(f[k]) for k in AREA_COUNTS)))
        return rows

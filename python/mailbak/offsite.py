"""Off-site copies of a repository's snapshots through restic (docs/OFFSITE.md).

mailbak builds no protocol of its own: restic stores, encrypts and deduplicates; this module
drives it so that every push stays incremental and proves that what comes back is a good backup.

- **Configuration** is restic's own, read and passed to restic by the restic client
  (``restic.py``: :class:`~mailbak.restic.ResticConfig`); a secret is never on a command line
  nor in mailbak's output. mailbak stores nothing of it. This module holds the four verbs
  (push, list, restore, prune) and their results.
- **Incremental, whatever the snapshot's name**: restic runs from inside the snapshot directory
  and backs up ``.``, so every pushed snapshot has the same tree; ``--parent`` names the restic
  snapshot of the previous push of the same repository, found through restic's own tags (restic
  is the only record of what is off-site); ``--ignore-ctime`` because linking a file changes its
  ctime, and restic would otherwise read every message file again.
- **Tags** of a pushed snapshot: ``mailbak``, ``mailbak-repo=<id>`` (:func:`repo_tag`: the
  repository marker's creation time, which a copied or moved repository keeps),
  ``mailbak-snapshot=<name>`` and ``mailbak-pushed=<time>``. Its restic time is the local
  snapshot's start time, so ``restic forget --keep-daily`` keeps what ``mailbak prune`` would.
- A push holds the repository's lock shared (as a backup does) so that prune cannot remove the
  snapshot while restic reads it.

restic 0.14 (Debian 12) is the oldest restic this module is written for: it uses only flags
that version has.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from mailbak import digests, manifest
from mailbak.errors import Interrupted, ManifestError, ResticError, UsageError
from mailbak.fsio import descend, open_dir
from mailbak.job import Metrics, Stage, files_from, run_within
from mailbak.layout import QUEUE_DIR, AreaKind, area_rel, message_rel
from mailbak.pushed import PUSHED_TAG, SNAPSHOT_TAG, TAG, OffsiteSnapshot, pushed_snapshots, repo_tag
from mailbak.repairer import SINGLE_BLOB_LIMIT
from mailbak.report import Reporter, rfc3339
from mailbak.repository import NAME_RE, RepoLock, Repository, SnapshotInfo
from mailbak.restic import RESTIC_INCOMPLETE, Restic, ResticConfig, cause, error_line, redact
from mailbak.retention import COUNTED_RULES, UNLIMITED, Policy
from mailbak.status import Status
from mailbak.testpause import pause

if TYPE_CHECKING:
    from mailbak.verifier import Verify

#: restic 0.14 has no "unlimited" count (0.15 took -1); this many is as good.
RESTIC_UNLIMITED = 2_147_483_647


# Push ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushResult:
    """The outcome of a push: restic's summary of the backup (all zero when nothing was pushed)."""

    #: ok or failed (restic could not read some files; the restic snapshot was removed).
    status: Status
    #: False when the snapshot was already off-site (nothing done).
    pushed: bool
    #: The local repository and snapshot.
    repository: Path
    snapshot: str
    #: The restic snapshot holding it (after a push, restic 0.14 reports its short ID), and the
    #: one it was made against (full ID; None: the first push).
    restic_snapshot: str | None
    parent: str | None
    files_new: int = 0
    files_changed: int = 0
    files_unmodified: int = 0
    dirs_new: int = 0
    dirs_changed: int = 0
    dirs_unmodified: int = 0
    #: Bytes restic added to its repository (after deduplication and compression).
    bytes_added: int = 0
    files_processed: int = 0
    bytes_processed: int = 0
    duration_seconds: float = 0.0
    warnings: int = 0
    errors: int = 0
    summary: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        """Whether restic read every file (status ok)."""
        return self.status == Status.OK

    @property
    def unmodified_share(self) -> float:
        """Files restic found unmodified, as a share of the files it processed."""
        n = self.files_new + self.files_changed + self.files_unmodified
        return self.files_unmodified / n if n else 1.0

    def facts(self) -> dict[str, Any]:
        """The summary's facts: the snapshots involved and restic's counts."""
        return {
            "status": self.status,
            "pushed": self.pushed,
            "repository": str(self.repository),
            "snapshot": self.snapshot,
            "restic_snapshot": self.restic_snapshot,
            "parent": self.parent,
            "files_new": self.files_new,
            "files_changed": self.files_changed,
            "files_unmodified": self.files_unmodified,
            "dirs_new": self.dirs_new,
            "dirs_changed": self.dirs_changed,
            "dirs_unmodified": self.dirs_unmodified,
            "bytes_added": self.bytes_added,
            "files_processed": self.files_processed,
            "bytes_processed": self.bytes_processed,
            "duration_seconds": round(self.duration_seconds, 3),
            "warnings": self.warnings,
            "errors": self.errors,
        }

    def table(self) -> list[tuple[str, ...]]:
        """The summary's table for people: files and directories new, changed and unmodified, and
        the bytes added."""
        return [
            ("", "new", "changed", "unmodified"),
            ("files", str(self.files_new), str(self.files_changed), str(self.files_unmodified)),
            ("dirs", str(self.dirs_new), str(self.dirs_changed), str(self.dirs_unmodified)),
            ("bytes added", str(self.bytes_added), "", ""),
        ]


def pick_snapshot(repo: Repository, name: str | None) -> SnapshotInfo:
    """The snapshot to push: ``name``, or the newest complete one. Only a complete snapshot
    (manifest ok) is pushed: anything else raises UsageError naming why."""
    if name is None:
        snap = repo.newest_complete()
        if snap is None:
            raise UsageError(f"{repo.path}: no complete snapshot to push (mailbak snapshots {repo.path} lists them)")
        return snap
    if not NAME_RE.match(name):
        raise UsageError(f"{name!r}: not a snapshot name (they look like 2026-11-25T020000Z; mailbak snapshots {repo.path} lists them)")
    snap = next((s for s in repo.snapshots() if s.name == name), None)
    if snap is None:
        raise UsageError(f"{repo.path}: no snapshot {name}")
    if snap.status != Status.OK:
        why = f": {snap.detail}" if snap.detail else ""
        raise UsageError(f"{snap.path}: snapshot is {snap.status}{why}; only complete snapshots are pushed off-site")
    return snap


def _restic_time(t: datetime) -> str:
    """A time as restic's ``--time`` takes it: local wall clock, to the second."""
    return t.astimezone().strftime("%Y-%m-%d %H:%M:%S")


class Push:
    """One run of ``mailbak offsite push`` (a job: job.py): pushes ``snapshot`` of the repository
    at ``repo_path`` (default: the newest complete) to the restic repository of ``config`` (see
    the module doc); ``result`` once run. Raises UsageError (nothing done), ResticError (restic
    failed: nothing local changed) or Interrupted."""

    command: ClassVar[str] = "offsite-push"
    #: Files as restic counts them.
    file_kinds: ClassVar[tuple[str, ...]] = ("new", "changed", "unmodified")
    counts_bytes: ClassVar[bool] = True
    reports_failure: ClassVar[bool] = True

    def __init__(self, repo_path: Path, snapshot: str | None, config: ResticConfig, reporter: Reporter):
        self.repo_path = repo_path
        self.snapshot = snapshot
        self.config = config
        self.reporter = reporter
        self.lock: RepoLock | None = None
        self.result: PushResult | None = None
        #: The summary's title and table (set by run()).
        self.title = ""
        self.rows: list[tuple[str, ...]] | None = None
        #: (snapshot, restic snapshot ID) of a push whose restic finished before a stop reached
        #: it: what an interrupted run then says it left behind.
        self.stored: tuple[str, str] | None = None

    def check(self) -> None:
        """Finds restic and the repository."""
        self.restic = Restic(self.config)
        self.repo = Repository.open(self.repo_path)
        self.rtag = repo_tag(self.repo)

    def run(self) -> Status:
        """Picks the snapshot under the repository's lock (shared) and pushes it unless it is
        off-site already."""
        restic, repo, reporter = self.restic, self.repo, self.reporter
        self.lock = RepoLock(repo.path, exclusive=False, wait=True, on_wait=reporter.message)
        # Chosen under the lock: a prune that ran before cannot have removed it since.
        snap = pick_snapshot(repo, self.snapshot)
        offsite = pushed_snapshots(restic, self.rtag)
        there = [s for s in offsite if s.snapshot == snap.name]
        if there:
            s = there[-1]
            when = f", pushed {rfc3339(s.pushed.timestamp())}" if s.pushed else ""
            reporter.message(f"{snap.name}: already off-site as restic snapshot {s.short_id}{when}; nothing to do")
            self.result = _with_summary(PushResult(Status.OK, False, repo.path, snap.name, s.id, None))
            self.title = f"offsite push: {snap.name} already off-site ({s.short_id}), nothing pushed"
            return self.result.status
        parent = max(offsite, key=lambda s: (s.pushed or s.time, s.time)) if offsite else None
        reporter.message(f"pushing {snap.name}" + (f" against restic snapshot {parent.short_id} ({parent.snapshot})" if parent else " (first push: everything is read)"))
        tags = [TAG, self.rtag, SNAPSHOT_TAG + snap.name, PUSHED_TAG + rfc3339()]
        args = ["backup", "--ignore-ctime", "--time", _restic_time(snap.start), *[a for t in tags for a in ("--tag", t)]]
        if parent is not None:
            args += ["--parent", parent.id]

        def stored(restic_id: str) -> None:
            self.stored = (snap.name, restic_id)

        self.result = _run_backup(restic, args + ["."], repo, snap, parent, reporter, on_stopped_after=stored)
        self.title = f"offsite push {self.result.status}: {snap.name} as restic snapshot {self.result.restic_snapshot}"
        self.rows = self.result.table()
        return self.result.status

    def facts(self, status: str) -> dict[str, Any]:
        """The push's facts (none before restic finished)."""
        return self.result.summary if self.result is not None else {}

    def headline(self, status: Status) -> str:
        """The summary's title (set by run())."""
        return self.title

    def table(self) -> list[tuple[str, ...]] | None:
        """restic's counts; none when the snapshot was off-site already."""
        return self.rows

    def close(self) -> None:
        """Releases the repository's lock."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def left_behind(self, stage: Stage | None) -> str:
        """restic commits a snapshot last and then reports it: a push stopped before that report
        stored nothing. One that had reported it (restic done before the stop reached it) did."""
        if self.stored is not None:
            name, restic_id = self.stored
            return f"restic had finished before it was stopped: {name} is off-site as restic snapshot {restic_id[:8]}; nothing local changed"
        return "restic was stopped; nothing was stored off-site, nothing local changed"

    def metrics(self, facts: dict[str, Any] | None) -> Metrics:
        """Files as restic counted them; bytes restic added to its repository."""
        return Metrics(files_from(self.file_kinds, facts, key=lambda k: f"files_{k}"), (facts or {}).get("bytes_added", 0))


def _run_backup(restic: Restic, args: list[str], repo: Repository, snap: SnapshotInfo, parent: OffsiteSnapshot | None, reporter: Reporter, on_stopped_after: Callable[[str], None]) -> PushResult:
    """Runs ``restic backup`` inside the snapshot, relaying its JSON stream to ``reporter``.
    Interrupted after restic reported its snapshot: ``on_stopped_after(restic ID)``, then the
    interruption goes on."""
    reporter.phase("push")
    summary: dict[str, Any] | None = None
    paused = False
    abs_snap = os.path.abspath(snap.path)
    run = restic.start(*args, cwd=snap.path)
    try:
        with run:
            for doc in run.messages():
                kind = doc.get("message_type")
                if kind == "status":
                    if not paused:
                        # Test-only: restic has started reading the snapshot.
                        paused = True
                        pause("offsite_mid_push")
                    reporter.advance(int(doc.get("files_done") or 0), int(doc.get("total_files") or 0) or None)
                elif kind == "error":
                    run.errors.append(doc)
                elif kind == "summary":
                    summary = doc
            status = run.wait()
    except Interrupted:
        # restic may have committed and reported its snapshot before the stop reached it (read
        # already, or left in the pipe while this process was not reading).
        done = next((d for d in reversed(run.unread) if d.get("message_type") == "summary"), summary)
        if done and done.get("snapshot_id"):
            on_stopped_after(str(done["snapshot_id"]))
        raise
    for doc in run.errors:
        item = doc.get("item") or None
        if isinstance(item, str) and item.startswith(f"{abs_snap}/"):
            item = item[len(abs_snap) + 1 :]  # the snapshot's own paths, as verify names them
        reporter.error("restic", item, redact(f"{doc.get('during', 'backup')}: {cause(doc.get('error'))}", restic.repos))
    if status != 0 and not (status == RESTIC_INCOMPLETE and summary):
        raise ResticError(f"restic backup of {snap.path} failed: {error_line(''.join(run.stderr), status, restic.repos)}; nothing was stored off-site, nothing local changed")
    assert summary is not None
    restic_id = summary.get("snapshot_id")
    state = Status.OK
    if status == RESTIC_INCOMPLETE:
        # A snapshot missing files must not count as off-site: the next push would skip it.
        state = Status.FAILED
        reporter.error("restic_incomplete", str(snap.path), "restic could not read some files; its snapshot is removed, push again once they are readable")
        p = restic.run(restic.command("forget", str(restic_id)))
        if p.returncode != 0:
            reporter.error("restic", None, f"restic forget of the incomplete snapshot {restic_id} failed: {error_line(p.stderr, p.returncode, restic.repos)}")
        restic_id = None
    count = {k: int(summary.get(k) or 0) for k in ("files_new", "files_changed", "files_unmodified", "dirs_new", "dirs_changed", "dirs_unmodified")}
    result = PushResult(
        state,
        state == Status.OK,
        repo.path,
        snap.name,
        restic_id,
        parent.id if parent else None,
        files_new=count["files_new"],
        files_changed=count["files_changed"],
        files_unmodified=count["files_unmodified"],
        dirs_new=count["dirs_new"],
        dirs_changed=count["dirs_changed"],
        dirs_unmodified=count["dirs_unmodified"],
        bytes_added=int(summary.get("data_added") or 0),
        files_processed=int(summary.get("total_files_processed") or 0),
        bytes_processed=int(summary.get("total_bytes_processed") or 0),
        duration_seconds=float(summary.get("total_duration") or 0.0),
        warnings=reporter.counts.warnings,
        errors=reporter.counts.errors,
    )
    return _with_summary(result)


def _with_summary(result: PushResult) -> PushResult:
    from dataclasses import replace

    return replace(result, summary=result.facts())


# List ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListEntry:
    """A local snapshot and its off-site copies, or an off-site copy whose local snapshot is
    gone (``status`` None)."""

    name: str
    status: str | None
    offsite: tuple[OffsiteSnapshot, ...]

    def as_json(self) -> dict[str, Any]:
        """The entry as ``mailbak offsite list --json`` prints it, its off-site copies included."""
        return {"name": self.name, "status": self.status, "offsite": [s.as_json() for s in self.offsite]}


class Listing:
    """One run of ``mailbak offsite list`` (a job: job.py): every local snapshot of the
    repository and every off-site copy of one, newest first (``entries``, once run). It
    changes nothing and says nothing: the command line prints the entries."""

    command: ClassVar[str] = "offsite-list"
    file_kinds: ClassVar[tuple[str, ...]] = ()
    counts_bytes: ClassVar[bool] = False
    reports_failure: ClassVar[bool] = True

    def __init__(self, repo_path: Path, config: ResticConfig):
        self.repo_path = repo_path
        self.config = config
        self.entries: list[ListEntry] = []

    def check(self) -> None:
        """Finds restic and the repository."""
        self.restic = Restic(self.config)
        self.repo = Repository.open(self.repo_path)

    def run(self) -> Status:
        """Lists the off-site copies and matches them to the local snapshots."""
        offsite = pushed_snapshots(self.restic, repo_tag(self.repo))
        by_name: dict[str, list[OffsiteSnapshot]] = {}
        for s in offsite:
            by_name.setdefault(s.snapshot or "?", []).append(s)
        entries = [ListEntry(s.name, s.status, tuple(by_name.pop(s.name, ()))) for s in self.repo.snapshots()]
        entries += [ListEntry(name, None, tuple(snaps)) for name, snaps in by_name.items()]
        entries.sort(key=lambda e: e.name, reverse=True)
        self.entries = entries
        return Status.OK

    def facts(self, status: str) -> dict[str, Any]:
        """Only the status: the entries are the result."""
        return {"status": status}

    def headline(self, status: Status) -> str:
        """The summary's title."""
        return f"offsite list {status}: {self.repo_path}"

    def table(self) -> list[tuple[str, ...]] | None:
        """None: the command line prints the entries."""
        return None

    def close(self) -> None:
        """Nothing is held."""

    def left_behind(self, stage: Stage | None) -> str:
        """A listing changes nothing."""
        return "nothing was changed"

    def metrics(self, facts: dict[str, Any] | None) -> Metrics:
        """None (not monitored)."""
        return Metrics.none(type(self))


# Restore ---------------------------------------------------------------------------------------


def resolve(restic: Restic, ref: str) -> OffsiteSnapshot:
    """The off-site snapshot ``ref`` names: a restic snapshot ID (or its prefix), ``latest``
    (the newest mailbak pushed), or a local snapshot's name (its pushed copy)."""
    snaps = pushed_snapshots(restic)
    if ref == "latest":
        found = snaps[-1:] if snaps else []
    elif NAME_RE.match(ref):
        found = [s for s in snaps if s.snapshot == ref]
    else:
        found = [s for s in snaps if s.id.startswith(ref.lower())] if re.fullmatch(r"[0-9a-fA-F]{4,64}", ref) else []
    if not found:
        raise UsageError(f"{ref}: no such snapshot pushed by mailbak in the restic repository (mailbak offsite list REPO shows them)")
    if len({s.id for s in found}) > 1 and ref != "latest":
        ids = ", ".join(s.short_id for s in found)
        raise UsageError(f"{ref}: names several restic snapshots ({ids}); give one of their IDs")
    return found[-1]


@dataclass(frozen=True)
class OffsiteRestoreResult:
    """The outcome of an off-site restore: the verification of what came back."""

    #: clean or problems (the verification's).
    status: Status
    target: Path
    restic_snapshot: str
    snapshot: str | None
    #: The verification's facts (as ``mailbak verify --json`` prints them).
    verify: dict[str, Any]
    summary: dict[str, Any] = field(repr=False)

    @property
    def ok(self) -> bool:
        """Whether the verification of what came back found it clean."""
        return self.status == Status.CLEAN


class OffsiteRestore:
    """One run of ``mailbak offsite restore`` (a job: job.py): restores the off-site snapshot
    ``ref`` (see :func:`resolve`) into ``target`` (absent or empty) with restic, then verifies
    it as ``mailbak verify`` does (a Verify job run within this one); ``result`` once run.
    Raises UsageError (nothing written), ResticError (restic failed; TARGET is incomplete) or
    Interrupted.

    As ``mailbak restore`` does, TARGET is created or taken as root's alone (mode 0700) through a
    descriptor, and restic and the verification reach it through that descriptor, never by its
    name: whoever owns an empty TARGET, or the directory it is in, cannot plant a symlink that
    has root's restic write (and the verification read) elsewhere. TARGET gets its owner and
    mode back at the end (a TARGET created here stays root's, mode 0700, as restic makes it)."""

    command: ClassVar[str] = "offsite-restore"
    file_kinds: ClassVar[tuple[str, ...]] = ()
    counts_bytes: ClassVar[bool] = False
    reports_failure: ClassVar[bool] = True

    def __init__(self, ref: str, target: Path, config: ResticConfig, reporter: Reporter, *, jobs: int, verbose: bool = False):
        self.ref = ref
        self.target = target
        self.config = config
        self.reporter = reporter
        self.jobs = jobs
        self.verbose = verbose
        #: TARGET held, and its owner, group and mode to give back (set by check()).
        self.fd: int | None = None
        self.was = (0, 0, 0)
        self.verify: Verify | None = None
        self.result: OffsiteRestoreResult | None = None

    def check(self) -> None:
        """Refuses a TARGET that is not new or empty, finds the off-site snapshot, then takes
        TARGET (created if absent)."""
        from mailbak.destdir import PRIVATE_DIR_MODE, check_destination
        from mailbak.restorer import hold_dir

        check_destination(self.target, action="restore")
        self.restic = Restic(self.config)
        self.snap = resolve(self.restic, self.ref)
        try:
            if not os.path.lexists(self.target):
                os.mkdir(self.target, PRIVATE_DIR_MODE)
            self.fd, self.was = hold_dir(self.target)
        except OSError as e:
            raise UsageError(f"{self.target}: cannot write: {e.strerror}") from e

    def run(self) -> Status:
        """restic restores through TARGET's descriptor; then the verification; TARGET's owner
        and mode are given back in any case."""
        from mailbak.restorer import held_path
        from mailbak.verifier import Verify

        assert self.fd is not None, "check() first"
        restic, snap, target, reporter = self.restic, self.snap, self.target, self.reporter
        try:
            where = held_path(self.fd, target)
            reporter.phase("restore")
            reporter.message(f"restoring restic snapshot {snap.short_id} ({snap.snapshot}) into {target}")
            pause("offsite_restore_target_held")  # tests attack TARGET here
            p = restic.run(restic.command("restore", snap.id, "--target", str(where)), pass_fds=(self.fd,))
            if p.returncode != 0:
                raise ResticError(f"restic restore into {target} failed: {error_line(p.stderr, p.returncode, restic.repos)}; {target} is incomplete: delete it and restore again")
            self.verify = Verify(where, fix=False, jobs=self.jobs, reporter=reporter, verbose=self.verbose)
            status = run_within(self.verify)
        finally:
            self.close()
        facts = self.facts(status)
        self.result = OffsiteRestoreResult(status, target, snap.id, snap.snapshot, facts["verify"], facts)
        return status

    def facts(self, status: str) -> dict[str, Any]:
        """The target, the off-site snapshot and the verification's facts."""
        verified = self.verify.facts(status) if self.verify is not None else {}
        return {"status": status, "target": str(self.target), "restic_snapshot": self.snap.id, "snapshot": self.snap.snapshot, "verify": verified}

    def headline(self, status: Status) -> str:
        """The summary's title."""
        return f"offsite restore {status}: {self.target}"

    def table(self) -> list[tuple[str, ...]] | None:
        """The verification's table."""
        return self.verify.table() if self.verify is not None else None

    def close(self) -> None:
        """Gives TARGET its owner and mode back, once."""
        from mailbak.restorer import give_back

        fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            give_back(fd, *self.was)
        finally:
            os.close(fd)

    def left_behind(self, stage: Stage | None) -> str:
        """A stopped restore leaves TARGET incomplete."""
        return f"{self.target} is incomplete; delete it and restore again"

    def metrics(self, facts: dict[str, Any] | None) -> Metrics:
        """None (not monitored)."""
        return Metrics.none(type(self))


def _unlock(restic: Restic) -> None:
    p = restic.run(restic.command("unlock"))
    if p.returncode != 0:
        raise ResticError(f"restic unlock failed: {error_line(p.stderr, p.returncode, restic.repos)}")


# Prune -----------------------------------------------------------------------------------------


def forget_args(policy: Policy) -> list[str]:
    """``restic forget`` options for ``policy``: the same keep rules as ``mailbak prune``.
    restic has no unit ``w`` (weeks become days) and, before 0.15, no unlimited count."""
    args: list[str] = []
    for rule in COUNTED_RULES:
        n = getattr(policy, rule.field)
        if n:
            args += [rule.option, str(RESTIC_UNLIMITED if n == UNLIMITED else n)]
    d = policy.within()
    if d is not None:
        parts = [(d.years, "y"), (d.months, "m"), (d.days + 7 * d.weeks, "d"), (d.hours, "h")]
        args += ["--keep-within", "".join(f"{n}{u}" for n, u in parts if n)]
    return args


@dataclass(frozen=True)
class PruneResult:
    """What ``restic forget`` kept and removed of the repository's off-site copies."""

    status: Status
    dry_run: bool
    kept: tuple[OffsiteSnapshot, ...]
    removed: tuple[OffsiteSnapshot, ...]
    #: restic's reasons per kept snapshot ID ("daily snapshot", ...).
    reasons: dict[str, tuple[str, ...]]
    summary: dict[str, Any] = field(repr=False)


class OffsitePrune:
    """One run of ``mailbak offsite prune`` (a job: job.py): forgets the off-site copies of the
    repository that ``policy`` does not keep and prunes their data (``restic forget
    --prune``), all copies of the repository in one group; ``result`` once run."""

    command: ClassVar[str] = "offsite-prune"
    file_kinds: ClassVar[tuple[str, ...]] = ()
    counts_bytes: ClassVar[bool] = False
    reports_failure: ClassVar[bool] = True

    def __init__(self, repo_path: Path, policy: Policy, config: ResticConfig, reporter: Reporter, *, dry_run: bool = False):
        self.repo_path = repo_path
        self.policy = policy
        self.config = config
        self.reporter = reporter
        self.dry_run = dry_run
        self.result: PruneResult | None = None
        self.rows: list[tuple[str, ...]] | None = None

    def check(self) -> None:
        """Finds restic and the repository."""
        self.restic = Restic(self.config)
        self.repo = Repository.open(self.repo_path)

    def run(self) -> Status:
        """restic unlock (stale locks only), then restic forget."""
        self.result, self.rows = _forget(self.restic, self.repo, self.policy, self.reporter, self.dry_run)
        return self.result.status

    def facts(self, status: str) -> dict[str, Any]:
        """What was kept (and why) and removed (none before restic finished)."""
        return self.result.summary if self.result is not None else {}

    def headline(self, status: Status) -> str:
        """The summary's title: the counts."""
        r = self.result
        assert r is not None, "run() first"
        return f"offsite prune{' (dry run)' if r.dry_run else ''}: {len(r.kept)} kept, {len(r.removed)} {'to remove' if r.dry_run else 'removed'}"

    def table(self) -> list[tuple[str, ...]] | None:
        """One row per off-site copy: kept (why) or removed."""
        return self.rows

    def close(self) -> None:
        """Nothing is held (restic holds its own lock)."""

    def left_behind(self, stage: Stage | None) -> str:
        """restic's forget and prune can be run again."""
        return "restic was stopped; run the prune again"

    def metrics(self, facts: dict[str, Any] | None) -> Metrics:
        """None (not monitored)."""
        return Metrics.none(type(self))


def _forget(restic: Restic, repo: Repository, policy: Policy, reporter: Reporter, dry_run: bool) -> tuple[PruneResult, list[tuple[str, ...]]]:
    """Runs ``restic forget`` over the off-site copies of ``repo``: the result and its table."""
    rtag = repo_tag(repo)
    args = ["forget", "--tag", f"{TAG},{rtag}", "--group-by", "", *forget_args(policy)]
    args += ["--dry-run"] if dry_run else ["--prune"]
    reporter.phase("prune")
    # A push that was killed or lost its server leaves restic's lock behind, which would stop
    # the exclusive lock prune needs; unlock removes only stale locks (their process is gone).
    _unlock(restic)
    groups = restic.run_json(*args, what="forget") or []
    kept: list[OffsiteSnapshot] = []
    removed: list[OffsiteSnapshot] = []
    reasons: dict[str, tuple[str, ...]] = {}
    for g in groups:
        kept += [OffsiteSnapshot.of(d) for d in g.get("keep") or ()]
        removed += [OffsiteSnapshot.of(d) for d in g.get("remove") or ()]
        by_tree = {(d.get("time"), d.get("tree")): d.get("id") for d in g.get("keep") or ()}
        for r in g.get("reasons") or ():
            s = r.get("snapshot") or {}
            sid = by_tree.get((s.get("time"), s.get("tree")))
            if sid:
                reasons[sid] = tuple(r.get("matches") or ())
    facts = {
        "status": Status.OK,
        "dry_run": dry_run,
        "policy": str(policy),
        "kept": [{**s.as_json(), "reasons": list(reasons.get(s.id, ()))} for s in kept],
        "removed": [s.as_json() for s in removed],
    }
    table: list[tuple[str, ...]] = [("action", "snapshot", "restic", "why")]
    table += [("keep", s.snapshot or "?", s.short_id, ", ".join(reasons.get(s.id, ()))) for s in sorted(kept, key=lambda s: s.time, reverse=True)]
    table += [("would remove" if dry_run else "removed", s.snapshot or "?", s.short_id, "") for s in sorted(removed, key=lambda s: s.time, reverse=True)]
    return PruneResult(Status.OK, dry_run, tuple(kept), tuple(removed), reasons, facts), table


# Check -----------------------------------------------------------------------------------------

#: Blob IDs one ``restic find --blob`` is given: 10,000 IDs are 650 kB of arguments, far below
#: the kernel's limit (a quarter of the stack limit, 2 MiB by default).
FIND_BATCH = 10_000


class OffsiteProblem(StrEnum):
    """What is wrong with a file's off-site copy."""

    MISSING = "missing"
    DIFFERS = "differs"


@dataclass(frozen=True)
class OffsiteFile:
    """A file of the snapshot whose off-site copy is missing or differs."""

    #: "queue" or the account name; None for a file that is not a message (a database, config).
    area: str | None
    #: The message ID; None for a file that is not a message.
    id: int | None
    #: Its path below the snapshot root.
    path: str
    problem: OffsiteProblem
    detail: str

    def as_json(self) -> dict[str, Any]:
        """The file as the JSON summary lists it."""
        return {"area": self.area, "id": self.id, "path": self.path, "problem": self.problem, "detail": self.detail}


@dataclass
class _Local:
    """A file of the local snapshot: where it is, and its recorded digest entry (None: none
    recorded, or its digest file could not be trusted)."""

    area: str | None
    id: int | None
    path: str
    entry: digests.Entry | None


class OffsiteCheck:
    """One run of ``mailbak offsite check`` (a job: job.py): compares the digests a snapshot of
    the repository recorded with the blob IDs of its off-site copy, downloading no file content.

    Steps:

    1. The snapshot (``snapshot``, default the newest one of the repository that is off-site) is
       chosen under the repository's lock (shared, as a push holds it, so that prune cannot
       remove it meanwhile); it must be complete, pushed, and have recorded digests.
    2. Its message files are listed (the files present in its message directories, never
       followed through a symlink), and their entries read from its digest shards (the superset
       rule: a shard may list more); its other files from ``digests/files``.
    3. ``restic ls --json`` of its restic snapshot gives every file off-site with its size (one
       call); ``restic find --blob`` gives the paths at which each recorded digest is a content
       blob (in batches of FIND_BATCH IDs, one call each). Both read only restic's index and
       tree blobs. (Walking the trees with ``restic cat blob`` would need one restic call, with
       its key derivation, per directory: about 0.8 s each here.)
    4. Per file: absent off-site: **missing**; its digest is the blob ID at its path: a
       match; under 512 KiB (one blob, whose ID is its SHA-256: repairer.SINGLE_BLOB_LIMIT)
       and not: **differs**; 512 KiB or more (several blobs, none of them the file's digest):
       compared by size only, counted as such, and **differs** when the sizes differ. A file
       without a recorded digest (hardlinked from the store, or its digest file damaged) is
       checked for presence only and counted as unverified.

    Exit status: 0 every file matches (clean), 1 a file missing or different off-site
    (problems), 2 bad input. Not guaranteed: that restic can still read the blobs (``restic
    check --read-data`` proves that); a file compared by size only may differ in content."""

    command: ClassVar[str] = "offsite-check"
    file_kinds: ClassVar[tuple[str, ...]] = ("matched", "size_only", "unverified", "missing", "differs")
    counts_bytes: ClassVar[bool] = False
    reports_failure: ClassVar[bool] = True

    def __init__(self, repo_path: Path, snapshot: str | None, config: ResticConfig, reporter: Reporter):
        self.repo_path = repo_path
        self.snapshot = snapshot
        self.config = config
        self.reporter = reporter
        self.lock: RepoLock | None = None
        self.chosen: OffsiteSnapshot | None = None
        self.counts = dict.fromkeys(self.file_kinds, 0)
        self.problems: list[OffsiteFile] = []

    def check(self) -> None:
        """Finds restic and the repository; refuses a SNAPSHOT that is not a snapshot's name."""
        if self.snapshot is not None and not NAME_RE.match(self.snapshot):
            raise UsageError(f"{self.snapshot!r}: not a snapshot name (they look like 2026-11-25T020000Z; mailbak offsite list {self.repo_path} lists them)")
        self.restic = Restic(self.config)
        self.repo = Repository.open(self.repo_path)
        self.rtag = repo_tag(self.repo)

    def run(self) -> Status:
        """Chooses the snapshot under the lock, then compares (see the class doc)."""
        reporter = self.reporter
        self.lock = RepoLock(self.repo.path, exclusive=False, wait=True, on_wait=reporter.message)
        snap, off = self._choose()
        reporter.phase("list")
        reporter.message(f"checking {snap.name} against restic snapshot {off.short_id}")
        local = self._local(snap)
        remote = self._remote(off)
        found = self._find(off, [f.entry.digest for f in local if f.entry is not None and f.entry.digest is not None])
        reporter.phase("compare")
        for f in local:
            self._compare(f, remote, found)
        return Status.PROBLEMS if self.counts["missing"] or self.counts["differs"] else Status.CLEAN

    def _choose(self) -> tuple[SnapshotInfo, OffsiteSnapshot]:
        """The local snapshot to check and its newest off-site copy; raises UsageError."""
        local = {s.name: s for s in self.repo.snapshots()}
        offsite = pushed_snapshots(self.restic, self.rtag)
        if self.snapshot is None:
            there = [s for s in offsite if s.snapshot in local]
            if not there:
                raise UsageError(f"{self.repo.path}: no snapshot of it is off-site (mailbak offsite push {self.repo.path} pushes the newest)")
            off = max(there, key=lambda s: (s.snapshot or "", s.time))
        else:
            if self.snapshot not in local:
                raise UsageError(f"{self.repo.path}: no snapshot {self.snapshot}")
            there = [s for s in offsite if s.snapshot == self.snapshot]
            if not there:
                raise UsageError(f"{self.snapshot}: not pushed off-site (mailbak offsite push {self.repo.path} {self.snapshot} pushes it)")
            off = there[-1]
        assert off.snapshot is not None
        snap = local[off.snapshot]
        if snap.status != Status.OK:
            raise UsageError(f"{snap.path}: snapshot is {snap.status}; only a complete snapshot's digests are compared")
        self.chosen = off
        self.snap = snap
        return snap, off

    def _local(self, snap: SnapshotInfo) -> list[_Local]:
        """The snapshot's files and their recorded digests (step 2)."""
        try:
            doc = manifest.read(snap.path)
        except ManifestError as e:
            raise UsageError(str(e)) from e
        if not isinstance(doc.get("digests"), dict):
            raise UsageError(f"{snap.path}: made before digests were recorded (sizes only): nothing to compare off-site; a snapshot made by this mailbak can be checked")
        out: list[_Local] = []
        root = open_dir(snap.path, follow=True)
        try:
            areas = ([(QUEUE_DIR, QUEUE_DIR)] if doc.get("queue") is not None else []) + [(name, area_rel(AreaKind.ACCOUNT, name)) for name in sorted(doc["accounts"])]
            for area, rel in areas:
                tree = f"data/{rel}" if rel == QUEUE_DIR else f"data/{rel}/msg"
                out += self._area(root, area, rel, tree)
            try:
                entries = digests.read(root, f"{digests.DIR}/{digests.FILES}", shard=False)
            except FileNotFoundError:
                self.reporter.warn("digest_missing", f"{digests.DIR}/{digests.FILES}", "no digest file of the snapshot's other files: they are not compared")
                entries = []
            except digests.DigestError as e:
                self.reporter.warn("digest_damaged", f"{digests.DIR}/{digests.FILES}", f"{e}; the snapshot's other files are not compared")
                entries = []
            out += [_Local(None, None, os.fsdecode(e.key) if isinstance(e.key, bytes) else str(e.key), e if e.digest is not None else None) for e in entries]
        finally:
            os.close(root)
        return out

    def _area(self, root: int, area: str, area_rel_: str, tree: str) -> list[_Local]:
        """The message files of one area and their digest entries."""
        ids = _message_ids(root, tree)
        by_shard: dict[int, list[int]] = {}
        for i in ids:
            by_shard.setdefault(digests.shard_of(i), []).append(i)
        out = []
        for shard, members in sorted(by_shard.items()):
            rel = digests.shard_rel(area_rel_, shard)
            why = ""
            try:
                entries = {e.key: e for e in digests.read(root, rel, shard=True)}
            except FileNotFoundError:
                entries, why = {}, f"no digest file {rel}"
            except digests.DigestError as e:
                entries, why = {}, f"digest file damaged: {e}"
            if why:
                self.reporter.warn("digest_damaged" if "damaged" in why else "digest_missing", rel, f"{why}; its {len(members)} message file(s) are checked for presence only")
            for i in members:
                e = entries.get(i)
                out.append(_Local(area, i, f"{tree}/{message_rel(i)}", e if e is not None and e.digest is not None else None))
        return out

    def _remote(self, off: OffsiteSnapshot) -> dict[str, int]:
        """Every file of the restic snapshot and its size, by its path below the snapshot root
        (``restic ls --json``: one call, tree blobs only)."""
        files: dict[str, int] = {}
        with self.restic.start("ls", off.id, cwd=self.repo.path) as run:
            for doc in run.messages():
                if doc.get("struct_type") == "node" and doc.get("type") == "file" and isinstance(doc.get("path"), str):
                    files[doc["path"].lstrip("/")] = int(doc.get("size") or 0)
            status = run.wait()
        if status != 0:
            raise ResticError(f"restic ls {off.short_id} failed: {error_line(''.join(run.stderr), status, self.restic.repos)}")
        return files

    def _find(self, off: OffsiteSnapshot, wanted: list[bytes]) -> set[tuple[str, str]]:
        """(path, blob ID) of every file of the restic snapshot that has one of ``wanted`` as a
        content blob (``restic find --blob``, FIND_BATCH IDs a call)."""
        ids = sorted({d.hex() for d in wanted})
        found: set[tuple[str, str]] = set()
        for start in range(0, len(ids), FIND_BATCH):
            self.reporter.advance(start, len(ids))
            docs = self.restic.run_json("find", "--blob", "--snapshot", off.id, *ids[start : start + FIND_BATCH], what="find") or []
            found |= {(d["path"].lstrip("/"), d["id"]) for d in docs if isinstance(d, dict) and isinstance(d.get("path"), str) and isinstance(d.get("id"), str)}
        return found

    def _compare(self, f: _Local, remote: dict[str, int], found: set[tuple[str, str]]) -> None:
        """Classifies one file (step 4) and reports a problem."""
        size = remote.get(f.path)
        if size is None:
            self._problem(f, OffsiteProblem.MISSING, "no off-site copy in the restic snapshot")
            return
        if f.entry is None or f.entry.digest is None:
            self.counts["unverified"] += 1
            return
        if (f.path, f.entry.digest.hex()) in found:
            self.counts["matched"] += 1
        elif 0 < f.entry.size < SINGLE_BLOB_LIMIT:
            self._problem(f, OffsiteProblem.DIFFERS, "the off-site copy's blob is not the recorded digest")
        elif size != f.entry.size:
            self._problem(f, OffsiteProblem.DIFFERS, f"the off-site copy has {size} bytes, recorded {f.entry.size}")
        else:
            self.counts["size_only"] += 1

    def _problem(self, f: _Local, problem: OffsiteProblem, detail: str) -> None:
        self.counts[str(problem)] += 1
        what = f"message {f.id} of {'the queue' if f.area == QUEUE_DIR else f'account {f.area}'}: " if f.id is not None else ""
        self.reporter.error(f"offsite_{problem}", f.path, what + detail)
        self.problems.append(OffsiteFile(f.area, f.id, f.path, problem, detail))

    def facts(self, status: str) -> dict[str, Any]:
        """The snapshots compared, the counts, and the files missing or different (the first
        MAX_LISTED; every one is an error event)."""
        off = self.chosen
        return {
            "status": status,
            "repository": str(self.repo_path),
            "snapshot": off.snapshot if off else None,
            "restic_snapshot": off.id if off else None,
            "files": sum(self.counts.values()),
            **self.counts,
            "problems": [p.as_json() for p in self.problems[:MAX_LISTED]],
        }

    def headline(self, status: Status) -> str:
        """The summary's title."""
        off = self.chosen
        against = f"{off.snapshot} against restic snapshot {off.short_id}" if off else str(self.repo_path)
        return f"offsite check {status}: {against}"

    def table(self) -> list[tuple[str, ...]] | None:
        """The counts, one row each."""
        c = self.counts
        return [
            ("files", "count"),
            ("match (digest is the off-site blob ID)", str(c["matched"])),
            ("compared by size only (512 KiB or more: several blobs)", str(c["size_only"])),
            ("present, no digest recorded (not compared)", str(c["unverified"])),
            ("missing off-site", str(c["missing"])),
            ("different off-site", str(c["differs"])),
        ]

    def close(self) -> None:
        """Releases the repository's lock."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def left_behind(self, stage: Stage | None) -> str:
        """A check changes nothing."""
        return "nothing was changed"

    def metrics(self, facts: dict[str, Any] | None) -> Metrics:
        """Files by outcome."""
        return Metrics(files_from(self.file_kinds, facts))


#: Files missing or different listed in the JSON summary (every one is an error event too).
MAX_LISTED = 1000


def _message_ids(root: int, tree: str) -> list[int]:
    """The IDs of the message files present below ``tree`` (relative to the snapshot root
    ``root``): files named by their ID in the directory :func:`~mailbak.layout.message_rel`
    puts them in, reached without following a symlink. Anything else there is not a message."""
    try:
        tfd = descend(root, tree.split("/"), lambda parent, part: open_dir(part, dir_fd=parent))
    except FileNotFoundError:
        return []
    ids = []
    try:
        for d in os.scandir(tfd):
            if not d.is_dir(follow_symlinks=False):
                continue
            dfd = open_dir(d.name, dir_fd=tfd)
            try:
                for f in os.scandir(dfd):
                    if f.name.isdigit() and f.is_file(follow_symlinks=False) and message_rel(int(f.name)) == f"{d.name}/{f.name}":
                        ids.append(int(f.name))
            finally:
                os.close(dfd)
    finally:
        os.close(tfd)
    return sorted(ids)

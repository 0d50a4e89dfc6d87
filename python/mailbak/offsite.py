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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mailbak.errors import UsageError
from mailbak.report import Reporter, rfc3339
from mailbak.repository import NAME_RE, OK, RepoLock, Repository, SnapshotInfo
from mailbak.restic import RESTIC_INCOMPLETE, Restic, ResticConfig, ResticError, cause, error_line, parse_time, redact
from mailbak.retention import COUNTED_RULES, UNLIMITED, Policy
from mailbak.testpause import pause

#: The tag every snapshot mailbak pushes carries.
TAG = "mailbak"
#: Prefixes of the tags naming the repository, the local snapshot and the push time.
REPO_TAG, SNAPSHOT_TAG, PUSHED_TAG = "mailbak-repo=", "mailbak-snapshot=", "mailbak-pushed="

#: restic 0.14 has no "unlimited" count (0.15 took -1); this many is as good.
RESTIC_UNLIMITED = 2_147_483_647


@dataclass(frozen=True)
class OffsiteSnapshot:
    """One restic snapshot mailbak pushed."""

    #: restic's snapshot ID and its short form.
    id: str
    short_id: str
    #: restic's time of the snapshot: the local snapshot's start time.
    time: datetime
    #: The local snapshot's name (tag mailbak-snapshot=), the repository tag, the push time.
    snapshot: str | None
    repo: str | None
    pushed: datetime | None
    hostname: str
    tags: tuple[str, ...]

    @classmethod
    def of(cls, doc: dict[str, Any]) -> OffsiteSnapshot:
        tags = tuple(doc.get("tags") or ())

        def tag(prefix: str) -> str | None:
            return next((t[len(prefix) :] for t in tags if t.startswith(prefix)), None)

        pushed = tag(PUSHED_TAG)
        return cls(
            id=doc["id"],
            short_id=doc.get("short_id") or doc["id"][:8],
            time=parse_time(doc.get("time", "")) or datetime.fromtimestamp(0, UTC),
            snapshot=tag(SNAPSHOT_TAG),
            repo=tag(REPO_TAG),
            pushed=parse_time(pushed) if pushed else None,
            hostname=doc.get("hostname", ""),
            tags=tags,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "restic_snapshot": self.id,
            "short_id": self.short_id,
            "time": rfc3339(self.time.timestamp()),
            "snapshot": self.snapshot,
            "pushed": rfc3339(self.pushed.timestamp()) if self.pushed else None,
            "hostname": self.hostname,
        }


def repo_tag(repo: Repository) -> str:
    """The tag naming a mailbak repository in restic: its marker's ``id`` when it has one,
    else its creation time (which a copy or a move keeps), in tag-safe characters."""
    ident = repo.marker.get("id") or repo.marker.get("created")
    if not isinstance(ident, str) or not ident:
        raise UsageError(f"{repo.path}: the repository marker has no creation time to name it off-site")
    return REPO_TAG + re.sub(r"[^A-Za-z0-9._:+-]", "_", ident)


def pushed_snapshots(restic: Restic, *tags: str) -> list[OffsiteSnapshot]:
    """mailbak's snapshots in the restic repository carrying all ``tags`` (and ``mailbak``),
    oldest first."""
    docs = restic.run_json("snapshots", "--tag", ",".join((TAG, *tags)), what="snapshots") or []
    snaps = [OffsiteSnapshot.of(d) for d in docs]
    snaps.sort(key=lambda s: (s.time, s.pushed or s.time, s.id))
    return snaps


# Push ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushResult:
    """The outcome of a push: restic's summary of the backup (all zero when nothing was pushed)."""

    #: "ok" or "failed" (restic could not read some files; the restic snapshot was removed).
    status: str
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
        return self.status == "ok"

    @property
    def unmodified_share(self) -> float:
        """Files restic found unmodified, as a share of the files it processed."""
        n = self.files_new + self.files_changed + self.files_unmodified
        return self.files_unmodified / n if n else 1.0

    def facts(self) -> dict[str, Any]:
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
    if snap.status != OK:
        why = f": {snap.detail}" if snap.detail else ""
        raise UsageError(f"{snap.path}: snapshot is {snap.status}{why}; only complete snapshots are pushed off-site")
    return snap


def _restic_time(t: datetime) -> str:
    """A time as restic's ``--time`` takes it: local wall clock, to the second."""
    return t.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def push(repo_path: Path, snapshot: str | None, config: ResticConfig, reporter: Reporter) -> PushResult:
    """Pushes ``snapshot`` of the repository at ``repo_path`` (default: the newest complete)
    to the restic repository of ``config`` (see the module doc). Raises UsageError (nothing
    done), ResticError (restic failed: nothing local changed) or Interrupted."""
    restic = Restic(config)
    repo = Repository.open(repo_path)
    rtag = repo_tag(repo)
    lock = RepoLock(repo.path, exclusive=False, wait=True, on_wait=reporter.message)
    try:
        # Chosen under the lock: a prune that ran before cannot have removed it since.
        snap = pick_snapshot(repo, snapshot)
        offsite = pushed_snapshots(restic, rtag)
        there = [s for s in offsite if s.snapshot == snap.name]
        if there:
            s = there[-1]
            when = f", pushed {rfc3339(s.pushed.timestamp())}" if s.pushed else ""
            reporter.message(f"{snap.name}: already off-site as restic snapshot {s.short_id}{when}; nothing to do")
            result = _with_summary(PushResult("ok", False, repo.path, snap.name, s.id, None))
            reporter.summary(f"offsite push: {snap.name} already off-site ({s.short_id}), nothing pushed", result.summary)
            return result
        parent = max(offsite, key=lambda s: (s.pushed or s.time, s.time)) if offsite else None
        reporter.message(f"pushing {snap.name}" + (f" against restic snapshot {parent.short_id} ({parent.snapshot})" if parent else " (first push: everything is read)"))
        tags = [TAG, rtag, SNAPSHOT_TAG + snap.name, PUSHED_TAG + rfc3339()]
        args = ["backup", "--ignore-ctime", "--time", _restic_time(snap.start), *[a for t in tags for a in ("--tag", t)]]
        if parent is not None:
            args += ["--parent", parent.id]
        return _run_backup(restic, args + ["."], repo, snap, parent, reporter)
    finally:
        lock.release()


def _run_backup(restic: Restic, args: list[str], repo: Repository, snap: SnapshotInfo, parent: OffsiteSnapshot | None, reporter: Reporter) -> PushResult:
    """Runs ``restic backup`` inside the snapshot, relaying its JSON stream to ``reporter``."""
    reporter.phase("push")
    summary: dict[str, Any] | None = None
    paused = False
    abs_snap = os.path.abspath(snap.path)
    with restic.start(*args, cwd=snap.path) as run:
        for doc in run.messages():
            kind = doc.get("message_type")
            if kind == "status":
                if not paused:
                    # Test-only: restic has started reading the snapshot and has committed nothing.
                    paused = True
                    pause("offsite_mid_push")
                reporter.advance(int(doc.get("files_done") or 0), int(doc.get("total_files") or 0) or None)
            elif kind == "error":
                run.errors.append(doc)
            elif kind == "summary":
                summary = doc
        status = run.wait()
    for doc in run.errors:
        item = doc.get("item") or None
        if isinstance(item, str) and item.startswith(f"{abs_snap}/"):
            item = item[len(abs_snap) + 1 :]  # the snapshot's own paths, as verify names them
        reporter.error("restic", item, redact(f"{doc.get('during', 'backup')}: {cause(doc.get('error'))}", restic.repos))
    if status != 0 and not (status == RESTIC_INCOMPLETE and summary):
        raise ResticError(f"restic backup of {snap.path} failed: {error_line(''.join(run.stderr), status, restic.repos)}; nothing was stored off-site, nothing local changed")
    assert summary is not None
    restic_id = summary.get("snapshot_id")
    state = "ok"
    if status == RESTIC_INCOMPLETE:
        # A snapshot missing files must not count as off-site: the next push would skip it.
        state = "failed"
        reporter.error("restic_incomplete", str(snap.path), "restic could not read some files; its snapshot is removed, push again once they are readable")
        p = restic.run(restic.command("forget", str(restic_id)))
        if p.returncode != 0:
            reporter.error("restic", None, f"restic forget of the incomplete snapshot {restic_id} failed: {error_line(p.stderr, p.returncode, restic.repos)}")
        restic_id = None
    count = {k: int(summary.get(k) or 0) for k in ("files_new", "files_changed", "files_unmodified", "dirs_new", "dirs_changed", "dirs_unmodified")}
    result = PushResult(
        state,
        state == "ok",
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
    result = _with_summary(result)
    reporter.summary(f"offsite push {state}: {snap.name} as restic snapshot {restic_id}", result.summary, result.table())
    return result


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
        return {"name": self.name, "status": self.status, "offsite": [s.as_json() for s in self.offsite]}


def listing(repo_path: Path, config: ResticConfig) -> list[ListEntry]:
    """Every local snapshot of the repository and every off-site copy of one, newest first."""
    restic = Restic(config)
    repo = Repository.open(repo_path)
    offsite = pushed_snapshots(restic, repo_tag(repo))
    by_name: dict[str, list[OffsiteSnapshot]] = {}
    for s in offsite:
        by_name.setdefault(s.snapshot or "?", []).append(s)
    entries = [ListEntry(s.name, s.status, tuple(by_name.pop(s.name, ()))) for s in repo.snapshots()]
    entries += [ListEntry(name, None, tuple(snaps)) for name, snaps in by_name.items()]
    entries.sort(key=lambda e: e.name, reverse=True)
    return entries


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

    #: "clean" or "problems" (the verification's).
    status: str
    target: Path
    restic_snapshot: str
    snapshot: str | None
    #: The verification's facts (as ``mailbak verify --json`` prints them).
    verify: dict[str, Any]
    summary: dict[str, Any] = field(repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "clean"


def restore(ref: str, target: Path, config: ResticConfig, reporter: Reporter, *, jobs: int, verbose: bool = False) -> OffsiteRestoreResult:
    """Restores the off-site snapshot ``ref`` (see :func:`resolve`) into ``target`` (absent or
    empty) with restic, then verifies it as ``mailbak verify`` does. Raises UsageError (nothing
    written), ResticError (restic failed; TARGET is incomplete) or Interrupted.

    As ``mailbak restore`` does, TARGET is created or taken as root's alone (mode 0700) through a
    descriptor, and restic and the verification reach it through that descriptor, never by its
    name: whoever owns an empty TARGET, or the directory it is in, cannot plant a symlink that
    has root's restic write (and the verification read) elsewhere. TARGET gets its owner and
    mode back at the end (a TARGET created here stays root's, mode 0700, as restic makes it)."""
    from mailbak.destdir import PRIVATE_DIR_MODE, check_destination
    from mailbak.restorer import give_back, held_path, hold_dir
    from mailbak.verifier import Verify

    check_destination(target, action="restore")
    restic = Restic(config)
    snap = resolve(restic, ref)
    try:
        if not os.path.lexists(target):
            os.mkdir(target, PRIVATE_DIR_MODE)
        fd, was = hold_dir(target)
    except OSError as e:
        raise UsageError(f"{target}: cannot write: {e.strerror}") from e
    try:
        where = held_path(fd, target)
        reporter.phase("restore")
        reporter.message(f"restoring restic snapshot {snap.short_id} ({snap.snapshot}) into {target}")
        pause("offsite_restore_target_held")  # tests attack TARGET here
        p = restic.run(restic.command("restore", snap.id, "--target", str(where)), pass_fds=(fd,))
        if p.returncode != 0:
            raise ResticError(f"restic restore into {target} failed: {error_line(p.stderr, p.returncode, restic.repos)}; {target} is incomplete: delete it and restore again")
        job = Verify(where, fix=False, jobs=jobs, reporter=reporter, verbose=verbose)
        job.check()
        status = job.run()
    finally:
        try:
            give_back(fd, *was)
        finally:
            os.close(fd)
    facts = job.facts(status)
    summary = {"status": status, "target": str(target), "restic_snapshot": snap.id, "snapshot": snap.snapshot, "verify": facts}
    reporter.summary(f"offsite restore {status}: {target}", summary, job.table())
    return OffsiteRestoreResult(status, target, snap.id, snap.snapshot, facts, summary)


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

    status: str
    dry_run: bool
    kept: tuple[OffsiteSnapshot, ...]
    removed: tuple[OffsiteSnapshot, ...]
    #: restic's reasons per kept snapshot ID ("daily snapshot", ...).
    reasons: dict[str, tuple[str, ...]]
    summary: dict[str, Any] = field(repr=False)


def prune(repo_path: Path, policy: Policy, config: ResticConfig, reporter: Reporter, *, dry_run: bool = False) -> PruneResult:
    """Forgets the off-site copies of the repository that ``policy`` does not keep and prunes
    their data (``restic forget --prune``), all copies of the repository in one group."""
    restic = Restic(config)
    repo = Repository.open(repo_path)
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
        "status": "ok",
        "dry_run": dry_run,
        "policy": str(policy),
        "kept": [{**s.as_json(), "reasons": list(reasons.get(s.id, ()))} for s in kept],
        "removed": [s.as_json() for s in removed],
    }
    table: list[tuple[str, ...]] = [("action", "snapshot", "restic", "why")]
    table += [("keep", s.snapshot or "?", s.short_id, ", ".join(reasons.get(s.id, ()))) for s in sorted(kept, key=lambda s: s.time, reverse=True)]
    table += [("would remove" if dry_run else "removed", s.snapshot or "?", s.short_id, "") for s in sorted(removed, key=lambda s: s.time, reverse=True)]
    reporter.summary(f"offsite prune{' (dry run)' if dry_run else ''}: {len(kept)} kept, {len(removed)} {'to remove' if dry_run else 'removed'}", facts, table)
    return PruneResult("ok", dry_run, tuple(kept), tuple(removed), reasons, facts)

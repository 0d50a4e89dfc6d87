"""The Python API: ``mailbak.backup``, ``mailbak.verify``, ``mailbak.restore``, the repository
functions and the recovery verbs ``ls``, ``find``, ``export``, ``restore_account`` (docs/API.md).

Each function runs the command the CLI runs, in the calling thread (the engine works in a
worker thread meanwhile), and returns a typed result with the facts of the JSON summary. Bad
usage or input raises :class:`UsageError` before anything is written; a destination that cannot
take more data raises :class:`DestinationFull`; other file-system failures that stop a run raise
``OSError``. Errors on single files are never exceptions: they are counted in the result (and
passed to ``on_event``), and the result's status says failed or problems.

Like the CLI (``mailbak.cli``), this module is a thin layer over the jobs (job.py): arguments
become a job, the one runner runs it (``job.run_api``), its facts become a typed result.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mailbak.errors import DestinationFull, RepositoryBusy, UsageError
from mailbak.job import default_jobs, run_api
from mailbak.report import JsonReporter, Reporter
from mailbak.repository import SnapshotInfo
from mailbak.retention import KeepCount
from mailbak.status import Status

if TYPE_CHECKING:
    from mailbak.catalog import DateArg
    from mailbak.finder import Match
    from mailbak.lister import AccountEntry, MailboxEntry, MessageEntry

__all__ = [
    "AccountRestoreResult",
    "BackupResult",
    "DestinationFull",
    "ExportResult",
    "FindResult",
    "LsResult",
    "PruneResult",
    "RepositoryBusy",
    "RestoreResult",
    "SnapshotInfo",
    "UsageError",
    "VerifyResult",
    "backup",
    "export",
    "find",
    "init",
    "ls",
    "prune",
    "offsite_list",
    "offsite_prune",
    "offsite_push",
    "offsite_restore",
    "restore",
    "restore_account",
    "snapshots",
    "verify",
]

#: ``on_event`` receives each event as the dict the JSON Lines output prints.
EventCallback = Callable[[dict[str, Any]], None]

PathArg = str | os.PathLike[str]


@dataclass(frozen=True)
class BackupResult:
    """The outcome of :func:`backup`: the facts of its JSON summary (and of DEST/mailbak.json)."""

    #: ok (warnings allowed) or failed (errors; the backup is kept and marked failed).
    status: Status
    #: The backup directory (for a repository DEST, the new snapshot in it).
    dest: Path
    #: The store, resolved.
    store: str
    #: RFC 3339 UTC times.
    started: str
    finished: str
    #: Per database path (relative to data/): {"txnid": ..., "bytes": ...}.
    databases: dict[str, dict[str, int]]
    #: The queue's counts (linked, copied, skipped_new, ..., records, ...), None without a queue.
    queue: dict[str, int] | None
    #: Per account name, the same counts.
    accounts: dict[str, dict[str, int]]
    #: Accounts whose index could not be read, copied as plain files.
    plain_copied_accounts: list[str]
    #: The repository the backup is a snapshot of, and the snapshot's name (None otherwise).
    repository: str | None
    snapshot: str | None
    #: The backup unchanged files were reused from (None: none).
    reference: str | None
    #: messages, linked (from the store), reused (from the reference), copied, bytes_copied;
    #: removed (a snapshot brought up to date in place on btrfs: docs/REPOSITORY.md).
    transfer: dict[str, int]
    warnings: int
    errors: int
    #: The whole JSON summary, as ``--json`` prints it.
    summary: dict[str, Any] = field(repr=False)

    @property
    def ok(self) -> bool:
        """Whether the backup is ok."""
        return self.status == Status.OK


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of :func:`verify`: the facts of its JSON summary."""

    #: clean or problems.
    status: Status
    path: Path
    #: "store" or "backup".
    kind: str
    #: A backup's manifest status ("ok", "failed"), None for a store or without a manifest.
    manifest: str | None
    databases: int
    areas: int
    checked: int
    missing: int
    damaged: int
    orphans: int
    unrecognized: int
    moved: int
    warnings: int
    errors: int
    summary: dict[str, Any] = field(repr=False)

    @property
    def ok(self) -> bool:
        """Whether the verification found nothing wrong."""
        return self.status == Status.CLEAN


@dataclass(frozen=True)
class RestoreResult:
    """The outcome of :func:`restore`: the facts of its JSON summary."""

    #: The verification of the restored store: clean or problems.
    status: Status
    store: Path
    linked: int
    copied: int
    symlinks: int
    #: The verification of the restored store (None if it never ran).
    verify: VerifyResult | None
    warnings: int
    errors: int
    summary: dict[str, Any] = field(repr=False)

    @property
    def ok(self) -> bool:
        """Whether the restored store verified clean."""
        return self.status == Status.CLEAN


@dataclass(frozen=True)
class CheckResult:
    """The outcome of :func:`check`: the facts of its JSON summary."""

    #: clean or problems.
    status: Status
    repository: str
    read_data: bool
    #: The subset read ("3/30", "5%", "524288000 bytes"), None for all.
    subset: str | None
    #: Snapshots checked; names of those skipped (being written) and of those with problems.
    snapshots: int
    snapshots_skipped: list[str]
    snapshots_with_problems: list[str]
    #: Distinct inodes met, read, and bytes read (each inode once, however many snapshots).
    inodes_checked: int
    inodes_read: int
    bytes_read: int
    #: Inodes whose bytes differ from their digest, hashed without a recorded digest, and
    #: whose digest file could not be trusted.
    damaged: int
    unrecorded: int
    unverified: int
    repaired: int
    #: Each damaged inode: area, id, path, cause, snapshots (newest first).
    damage: list[dict[str, Any]]
    warnings: int
    errors: int
    summary: dict[str, Any] = field(repr=False)

    @property
    def ok(self) -> bool:
        """Whether the check found nothing wrong."""
        return self.status == Status.CLEAN


@dataclass(frozen=True)
class PruneResult:
    """The outcome of :func:`prune`: the facts of its JSON summary."""

    #: ok, or failed when something could not be deleted (it stays in REPO/.trash).
    status: Status
    repository: str
    #: The policy, in words.
    policy: str
    dry_run: bool
    #: Per snapshot, newest first: name, status, started, action ("keep"/"remove"), reasons.
    snapshots: list[dict[str, Any]]
    kept: int
    #: Snapshots removed (0 in a dry run) and, in a dry run, those that would be.
    removed: int
    would_remove: int
    #: Trash entries deleted (leftovers of an earlier prune included), and what is left.
    deleted: list[str]
    trash_left: list[str]
    files_deleted: int
    #: Snapshots deleted as btrfs subvolumes (a repository of the subvolume method).
    subvolumes_deleted: int
    warnings: int
    errors: int
    summary: dict[str, Any] = field(repr=False)

    @property
    def ok(self) -> bool:
        """Whether everything the policy removes was deleted."""
        return self.status == Status.OK


@dataclass(frozen=True)
class LsResult:
    """The outcome of :func:`ls`: the listing of the level asked for (the other two are None)
    and the facts of its JSON summary."""

    #: ok, or failed when a message file or record could not be read (each an error event; the
    #: rest is listed).
    status: Status
    path: Path
    account: str | None
    mailbox: str | None
    #: ``ls(path)``: every account (lister.AccountEntry: name, messages, bytes, mailboxes).
    accounts: list[AccountEntry] | None
    #: ``ls(path, account)``: the mailbox tree, parents first (lister.MailboxEntry).
    mailboxes: list[MailboxEntry] | None
    #: ``ls(path, account, mailbox)``: its messages by UID (lister.MessageEntry).
    messages: list[MessageEntry] | None
    #: Entries listed.
    listed: int
    errors: int
    summary: dict[str, Any] = field(repr=False)

    @property
    def ok(self) -> bool:
        """Whether everything could be read."""
        return self.status == Status.OK


@dataclass(frozen=True)
class FindResult:
    """The outcome of :func:`find`: the matches and the facts of its JSON summary."""

    #: ok, or failed when a message file or a snapshot could not be read (the rest is searched).
    status: Status
    path: Path
    #: Each matching message once (finder.Match), by account and ID.
    matches: list[Match]
    #: The labels of the sources searched (a repository's snapshot names), newest first.
    searched: list[str]
    #: Heads parsed: each distinct message once, however many snapshots hold it.
    heads_read: int
    errors: int
    summary: dict[str, Any] = field(repr=False)

    @property
    def ok(self) -> bool:
        """Whether everything could be searched."""
        return self.status == Status.OK


@dataclass(frozen=True)
class ExportResult:
    """The outcome of :func:`export`: the facts of its JSON summary."""

    #: ok, or failed when a message or mailbox could not be exported (the rest is).
    status: Status
    path: Path
    account: str
    #: "maildir" or "mbox".
    format: str
    out: Path
    #: Messages and bytes written, mailboxes (folders) made.
    messages: int
    bytes: int
    mailboxes: int
    warnings: int
    errors: int
    summary: dict[str, Any] = field(repr=False)

    @property
    def ok(self) -> bool:
        """Whether every selected message was exported."""
        return self.status == Status.OK


@dataclass(frozen=True)
class AccountRestoreResult:
    """The outcome of :func:`restore_account`: the facts of its JSON summary."""

    #: ok, or failed when some messages were not restored (each an error event).
    status: Status
    #: PATH, the backup (snapshot, store) restored from.
    source: Path
    store: Path
    account: str
    to_account: str
    #: The prefix the mailboxes went under ("" for the original names).
    prefix: str
    dry_run: bool
    #: Messages delivered (in a dry run: that would be), already there from an earlier
    #: restore (skipped), not restored (errors); bytes delivered (would be).
    restored: int
    already_there: int
    not_restored: int
    bytes: int
    #: Mailboxes created in the target account (would be, in a dry run), ancestors included.
    mailboxes_created: list[str]
    #: Whether the account was created (``create_account``; would be, in a dry run).
    account_created: bool
    warnings: int
    errors: int
    summary: dict[str, Any] = field(repr=False)

    @property
    def ok(self) -> bool:
        """Whether every selected message is in the target (restored or already there)."""
        return self.status == Status.OK


R = TypeVar("R")


def _result(cls: type[R], facts: dict[str, Any], **given: Any) -> R:
    """A result from summary facts: each field from ``given`` or from the fact of its name."""
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in given:
            values[f.name] = given[f.name]
        elif f.name == "summary":
            values[f.name] = facts
        else:
            values[f.name] = facts.get(f.name)
    return cls(**values)


# Reporting to the caller ---------------------------------------------------------------------


def event_reporter(on_event: EventCallback | None, verbose: bool = False) -> Reporter:
    """A reporter that hands every JSON Lines object to ``on_event`` (or only counts)."""
    if on_event is None:
        return Reporter()

    class CallbackReporter(JsonReporter):
        def _emit(self, obj: dict[str, Any]) -> None:
            on_event(obj)

    return CallbackReporter(verbose=verbose, out=io.StringIO())


def check_jobs(jobs: int | None) -> int:
    """``jobs`` as given, checked (1 to 256), or the default; raises UsageError."""
    if jobs is None:
        return default_jobs()
    if isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= 256:
        raise UsageError(f"jobs must be an integer from 1 to 256, not {jobs!r}")
    return jobs


# The public functions ------------------------------------------------------------------------


def backup(
    store: PathArg,
    dest: PathArg,
    *,
    jobs: int | None = None,
    config: PathArg | None = None,
    data: PathArg | None = None,
    link_dest: PathArg | None = None,
    digests: bool = True,
    verbose: bool = False,
    on_event: EventCallback | None = None,
) -> BackupResult:
    """Backs up ``store`` into ``dest``, as ``mailbak backup`` does: ``dest`` new or empty, or a
    repository (``init``), in which the backup is a new snapshot.

    ``config``/``data`` override STORE/config and STORE/data; ``link_dest`` names a complete
    backup to reuse unchanged files from (``--link-dest``; default for a repository: its newest
    complete snapshot); ``digests=False`` records no digests (``--no-digests``); ``jobs`` is
    the number of worker threads (default: one per core, at least 2); ``on_event`` receives each
    JSON Lines object (status, warning, error, summary; per-file "info" lines too with
    ``verbose``)."""
    from mailbak.archiver import backup_job

    reporter = event_reporter(on_event, verbose)
    job, facts = run_api(lambda: backup_job(store, dest, config=config, data=data, jobs=check_jobs(jobs), reporter=reporter, verbose=verbose, link_dest=link_dest, record_digests=digests), reporter)
    return _result(BackupResult, facts, dest=job.target)


def verify(
    path: PathArg,
    *,
    fix: bool = False,
    read_data: bool = False,
    jobs: int | None = None,
    verbose: bool = False,
    on_event: EventCallback | None = None,
) -> VerifyResult:
    """Verifies a backup or a store, as ``mailbak verify`` does (``fix`` as ``--fix``,
    ``read_data`` as ``--read-data``: the summary then also counts bytes read and damage)."""
    from mailbak.verifier import ContentCheck, Verify

    reporter = event_reporter(on_event, verbose)
    _, facts = run_api(lambda: Verify(Path(path), fix=fix, jobs=check_jobs(jobs), reporter=reporter, verbose=verbose, content=ContentCheck(read_data=True) if read_data else None), reporter)
    return _result(VerifyResult, facts, path=Path(path))


def check(
    repo: PathArg,
    *,
    read_data: bool = False,
    subset: str | None = None,
    repair: bool = False,
    jobs: int | None = None,
    verbose: bool = False,
    on_event: EventCallback | None = None,
) -> CheckResult:
    """Checks every snapshot of a repository, as ``mailbak check`` does (``read_data`` as
    ``--read-data``, ``subset`` as ``--read-data-subset`` ("3/30", "5%", "500M"), ``repair``
    as ``--repair`` from the store the newest snapshot names)."""
    from mailbak.checker import Check, parse_subset

    reporter = event_reporter(on_event, verbose)
    _, facts = run_api(lambda: Check(Path(repo), read_data=read_data, subset=parse_subset(subset) if subset is not None else None, repair=repair, jobs=check_jobs(jobs), reporter=reporter, verbose=verbose), reporter)
    return _result(CheckResult, facts)


def restore(
    backup: PathArg,
    store: PathArg,
    *,
    copy: bool = False,
    force: bool = False,
    jobs: int | None = None,
    verbose: bool = False,
    on_event: EventCallback | None = None,
) -> RestoreResult:
    """Restores ``backup`` into ``store`` (new or empty) and verifies it, as ``mailbak restore``
    does (``copy`` as ``--copy``, ``force`` as ``--force``). Part of one account into a live
    store: :func:`restore_account`."""
    from mailbak.restorer import Restore

    reporter = event_reporter(on_event, verbose)
    _, facts = run_api(lambda: Restore(Path(backup), Path(store), force_copy=copy, force=force, jobs=check_jobs(jobs), reporter=reporter, verbose=verbose), reporter)
    v = facts.get("verify")
    checked = _result(VerifyResult, v, path=Path(store)) if isinstance(v, dict) else None
    return _result(RestoreResult, facts, store=Path(store), verify=checked)


def _policy(**rules: KeepCount | None):
    """A retention policy from keyword rules as the API takes them (a count, -1 or "unlimited";
    a duration text for ``keep_within``), parsed like the command line's; raises UsageError."""
    from mailbak.pruner import policy_from_options
    from mailbak.retention import KEEP_FIELDS, UNLIMITED

    # prune and offsite_prune spell their keep_* keywords out (docs/API.md shows them): they
    # must be retention's rules, all of them.
    assert tuple(rules) == KEEP_FIELDS, f"the keep_* keywords differ from retention.KEEP_FIELDS: {tuple(rules)}"

    def text(v: int | str | None) -> str | None:
        return None if v is None else "unlimited" if v == UNLIMITED else str(v)

    return policy_from_options(**{k: text(v) for k, v in rules.items()})


def init(repo: PathArg) -> Path:
    """Makes ``repo`` (absent, or an empty directory) a repository, as ``mailbak init`` does;
    returns its path. Raises UsageError when it exists and is not empty, or lies below a
    directory another user can change."""
    from mailbak.repository import Init

    job, _ = run_api(lambda: Init(Path(repo)), Reporter())
    assert job.repository is not None
    return job.repository.path


def snapshots(repo: PathArg) -> list[SnapshotInfo]:
    """The snapshots of a repository, newest first, as ``mailbak snapshots`` lists them.
    Raises UsageError when ``repo`` is not a repository."""
    from mailbak.repository import Snapshots

    job, _ = run_api(lambda: Snapshots(Path(repo), with_trash=False), Reporter())
    return job.infos


def prune(
    repo: PathArg,
    *,
    keep_last: KeepCount | None = None,
    keep_hourly: KeepCount | None = None,
    keep_daily: KeepCount | None = None,
    keep_weekly: KeepCount | None = None,
    keep_monthly: KeepCount | None = None,
    keep_yearly: KeepCount | None = None,
    keep_within: str | None = None,
    dry_run: bool = False,
    wait: bool = True,
    nice: bool = True,
    jobs: int | None = None,
    verbose: bool = False,
    on_event: EventCallback | None = None,
) -> PruneResult:
    """Prunes a repository, as ``mailbak prune`` does: ``keep_*`` are the ``--keep-*`` rules
    (a count, "unlimited", or for ``keep_within`` a duration such as "30d"); ``wait=False`` is
    ``--no-wait`` (raises RepositoryBusy when a backup holds the repository), ``nice=False``
    ``--no-nice``. Raises UsageError for an empty or bad policy or a non-repository."""
    from mailbak.pruner import Prune

    reporter = event_reporter(on_event, verbose)

    def job() -> Prune:
        # Made inside the runner: a bad policy or job count reaches on_event, as every usage error does.
        policy = _policy(keep_last=keep_last, keep_hourly=keep_hourly, keep_daily=keep_daily, keep_weekly=keep_weekly, keep_monthly=keep_monthly, keep_yearly=keep_yearly, keep_within=keep_within)
        return Prune(Path(repo), policy, dry_run=dry_run, wait=wait, nice=nice, jobs=None if jobs is None else check_jobs(jobs), reporter=reporter, verbose=verbose)

    _, facts = run_api(job, reporter)
    return _result(PruneResult, facts)


# Off-site copies through restic (docs/OFFSITE.md) ---------------------------------------------
#
# The restic repository comes from restic's environment variables or from ``restic_repo`` and
# ``password_file`` (passed to restic through its environment); ``restic_options`` are restic's
# ``-o key=value``. Besides UsageError (restic missing included: nothing done), these raise
# ``mailbak.restic.ResticError`` when restic fails (its message is the one line the CLI prints).


def _restic_config(restic_repo: str | None, password_file: PathArg | None, restic_options: tuple[str, ...] | list[str]):
    from mailbak.restic import ResticConfig

    return ResticConfig(restic_repo, Path(password_file) if password_file is not None else None, tuple(restic_options))


def offsite_push(
    repo: PathArg,
    snapshot: str | None = None,
    *,
    restic_repo: str | None = None,
    password_file: PathArg | None = None,
    restic_options: tuple[str, ...] | list[str] = (),
    verbose: bool = False,
    on_event: EventCallback | None = None,
):
    """Pushes ``snapshot`` of the repository ``repo`` (default: the newest complete one)
    off-site, as ``mailbak offsite push`` does; returns a :class:`mailbak.offsite.PushResult`
    (``pushed`` False when it was already off-site)."""
    from mailbak import offsite

    reporter = event_reporter(on_event, verbose)
    job, _ = run_api(lambda: offsite.Push(Path(repo), snapshot, _restic_config(restic_repo, password_file, restic_options), reporter), reporter)
    return job.result


def offsite_list(repo: PathArg, *, restic_repo: str | None = None, password_file: PathArg | None = None, restic_options: tuple[str, ...] | list[str] = ()):
    """Every local snapshot of ``repo`` and every off-site copy of one, newest first, as
    ``mailbak offsite list`` shows them (a list of :class:`mailbak.offsite.ListEntry`)."""
    from mailbak import offsite

    job, _ = run_api(lambda: offsite.Listing(Path(repo), _restic_config(restic_repo, password_file, restic_options)), Reporter())
    return job.entries


def offsite_restore(
    restic_snapshot: str,
    target: PathArg,
    *,
    restic_repo: str | None = None,
    password_file: PathArg | None = None,
    restic_options: tuple[str, ...] | list[str] = (),
    jobs: int | None = None,
    verbose: bool = False,
    on_event: EventCallback | None = None,
):
    """Restores an off-site snapshot (a restic ID or prefix, a local snapshot's name, or
    ``latest``) into ``target`` (new or empty) and verifies it, as ``mailbak offsite restore``
    does; returns a :class:`mailbak.offsite.OffsiteRestoreResult` (``ok`` when clean)."""
    from mailbak import offsite

    reporter = event_reporter(on_event, verbose)
    job, _ = run_api(lambda: offsite.OffsiteRestore(restic_snapshot, Path(target), _restic_config(restic_repo, password_file, restic_options), reporter, jobs=check_jobs(jobs), verbose=verbose), reporter)
    return job.result


def offsite_prune(
    repo: PathArg,
    *,
    keep_last: KeepCount | None = None,
    keep_hourly: KeepCount | None = None,
    keep_daily: KeepCount | None = None,
    keep_weekly: KeepCount | None = None,
    keep_monthly: KeepCount | None = None,
    keep_yearly: KeepCount | None = None,
    keep_within: str | None = None,
    dry_run: bool = False,
    restic_repo: str | None = None,
    password_file: PathArg | None = None,
    restic_options: tuple[str, ...] | list[str] = (),
    on_event: EventCallback | None = None,
):
    """Thins out the off-site copies of ``repo`` with ``mailbak prune``'s keep rules (counts:
    a number, -1 or "unlimited"; ``keep_within`` a duration such as ``"30d"``), as ``mailbak
    offsite prune`` does; returns a :class:`mailbak.offsite.PruneResult`."""
    from mailbak import offsite

    reporter = event_reporter(on_event)

    def job() -> offsite.OffsitePrune:
        policy = _policy(keep_last=keep_last, keep_hourly=keep_hourly, keep_daily=keep_daily, keep_weekly=keep_weekly, keep_monthly=keep_monthly, keep_yearly=keep_yearly, keep_within=keep_within)
        return offsite.OffsitePrune(Path(repo), policy, _restic_config(restic_repo, password_file, restic_options), reporter, dry_run=dry_run)

    job_, _ = run_api(job, reporter)
    return job_.result


# Recovery: listing, searching, exporting, restoring one account (docs/RECOVERY.md) -----------
#
# Their PATH is a backup, a repository's snapshot or a live store (find: also a repository,
# all its snapshots); dates (``since``, ``before``) are texts as the commands take them
# ("2026-11-24", ISO 8601; local time unless a zone is given), datetimes (naive: local time),
# dates (local midnight) or unix seconds.


def ls(path: PathArg, account: str | None = None, mailbox: str | None = None, *, jobs: int | None = None, on_event: EventCallback | None = None) -> LsResult:
    """Lists what ``path`` holds, as ``mailbak ls`` does: its accounts; with ``account``, its
    mailbox tree; with ``mailbox`` too, that mailbox's messages with their heads. Raises
    UsageError for a ``path`` that is none of the three, an unknown account or mailbox (the
    message lists those there are), a mailbox without an account."""
    from mailbak.lister import Ls

    reporter = event_reporter(on_event)

    def job() -> Ls:
        if mailbox is not None and account is None:
            raise UsageError("a mailbox is listed within an account: give the account too")
        return Ls(Path(path), account, mailbox, jobs=check_jobs(jobs), reporter=reporter)

    job_, facts = run_api(job, reporter)
    return _result(LsResult, facts, path=Path(path), account=account, mailbox=mailbox, accounts=job_.accounts, mailboxes=job_.mailboxes, messages=job_.messages)


def find(
    path: PathArg,
    *,
    account: str | None = None,
    mailbox: str | None = None,
    from_: str | None = None,
    to: str | None = None,
    subject: str | None = None,
    message_id: str | None = None,
    since: DateArg | None = None,
    before: DateArg | None = None,
    jobs: int | None = None,
    on_event: EventCallback | None = None,
) -> FindResult:
    """Finds the messages matching every criterion given in a repository's snapshots (or in
    one backup, snapshot or store), as ``mailbak find`` does: ``from_``, ``to``, ``subject``
    case-insensitive substrings of the decoded header, ``message_id`` exact (angle brackets
    optional), ``since``/``before`` on the received time. Raises UsageError for a ``path``
    that is none, a bad date, an account or mailbox no snapshot has (listing those there are)."""
    from mailbak.finder import Criteria, Find

    reporter = event_reporter(on_event)

    def job() -> Find:
        criteria = Criteria.parse(account=account, mailbox=mailbox, from_=from_, to=to, subject=subject, message_id=message_id, since=since, before=before)
        return Find(Path(path), criteria, jobs=check_jobs(jobs), reporter=reporter)

    job_, facts = run_api(job, reporter)
    return _result(FindResult, facts, path=Path(path), matches=job_.matches, searched=job_.labels)


def export(
    path: PathArg,
    out: PathArg,
    *,
    account: str,
    mailboxes: str | tuple[str, ...] | list[str] = (),
    recursive: bool = False,
    since: DateArg | None = None,
    before: DateArg | None = None,
    format: str = "maildir",
    owner: str | int | None = None,
    verbose: bool = False,
    on_event: EventCallback | None = None,
) -> ExportResult:
    """Exports ``account`` of ``path`` into ``out`` (new or empty) as ``mailbak export`` does:
    ``format`` "maildir" or "mbox"; ``mailboxes`` (a name or names; default all),
    ``recursive`` (also the mailboxes below each), ``since``, ``before`` select the messages;
    ``owner`` (a user name or uid) gets every file (root only; default: the calling user).
    Raises UsageError (nothing written) for an unknown account or mailbox, a bad date or
    format, ``out`` not empty; DestinationFull when ``out`` cannot take more data."""
    from mailbak.catalog import Selection
    from mailbak.exporter import Export
    from mailbak.mailformat import MailFormat

    reporter = event_reporter(on_event, verbose)

    def job() -> Export:
        if format not in tuple(MailFormat):
            raise UsageError(f"format {format!r}: not one of {', '.join(map(repr, MailFormat))}")
        selection = Selection.of(mailboxes, recursive, since, before)
        return Export(Path(path), Path(out), account=account, selection=selection, fmt=MailFormat(format), owner=None if owner is None else str(owner), reporter=reporter, verbose=verbose)

    _, facts = run_api(job, reporter)
    return _result(ExportResult, facts, path=Path(path), out=Path(out))


def restore_account(
    backup: PathArg,
    store: PathArg,
    *,
    account: str,
    mailboxes: str | tuple[str, ...] | list[str] = (),
    recursive: bool = False,
    since: DateArg | None = None,
    before: DateArg | None = None,
    to_account: str | None = None,
    into: str | None = None,
    create_account: bool = False,
    dry_run: bool = False,
    verbose: bool = False,
    on_event: EventCallback | None = None,
) -> AccountRestoreResult:
    """Restores (part of) ``account`` of ``backup`` (a backup, a snapshot or another store)
    into the live ``store``, adding to what is there, as ``mailbak restore --account`` does:
    each selected message (``mailboxes``, ``recursive``, ``since``, ``before`` as for
    :func:`export`) is delivered anew into ``into``/<its mailbox> (default
    ``Restored/<time of the backup>``; "" for the original names) of ``to_account`` (default
    ``account``; ``create_account`` adds it when missing). Idempotent: a message an earlier
    restore delivered is skipped. ``dry_run`` writes nothing and counts what would be done.
    Raises UsageError (nothing written) for an unknown account or mailbox, a bad date, a
    ``store`` that is no live store, a missing target account without ``create_account``."""
    from mailbak.catalog import Selection
    from mailbak.redeliver import Redeliver

    reporter = event_reporter(on_event, verbose)

    def job() -> Redeliver:
        selection = Selection.of(mailboxes, recursive, since, before)
        return Redeliver(Path(backup), Path(store), account=account, selection=selection, to_account=to_account, into=into, create_account=create_account, dry_run=dry_run, reporter=reporter, verbose=verbose)

    _, facts = run_api(job, reporter)
    return _result(AccountRestoreResult, facts, source=Path(backup), store=Path(store))

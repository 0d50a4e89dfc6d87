"""The Python API: ``mailbak.backup``, ``mailbak.verify`` and ``mailbak.restore`` (docs/API.md).

Each function runs the command the CLI runs, in the calling thread (the engine works in a
worker thread meanwhile), and returns a typed result with the facts of the JSON summary. Bad
usage or input raises :class:`UsageError` before anything is written; a destination that cannot
take more data raises :class:`DestinationFull`; other file-system failures that stop a run raise
``OSError``. Errors on single files are never exceptions: they are counted in the result (and
passed to ``on_event``), and the result's status says failed or problems.

The CLI (``mailbak.cli``) is a thin layer over this module: it builds the same phase objects
with the ``*_job`` functions and runs them with :func:`run_job`.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mailbak.errors import DestinationFull, UsageError
from mailbak.report import JsonReporter, Reporter
from mailbak.repository import RepositoryBusy, SnapshotInfo
from mailbak.retention import KeepCount

__all__ = [
    "BackupResult",
    "DestinationFull",
    "PruneResult",
    "RepositoryBusy",
    "RestoreResult",
    "SnapshotInfo",
    "UsageError",
    "VerifyResult",
    "backup",
    "init",
    "prune",
    "offsite_list",
    "offsite_prune",
    "offsite_push",
    "offsite_restore",
    "restore",
    "snapshots",
    "verify",
]

#: ``on_event`` receives each event as the dict the JSON Lines output prints.
EventCallback = Callable[[dict[str, Any]], None]

PathArg = str | os.PathLike[str]


@dataclass(frozen=True)
class BackupResult:
    """The outcome of :func:`backup`: the facts of its JSON summary (and of DEST/mailbak.json)."""

    #: "ok" (warnings allowed) or "failed" (errors; the backup is kept and marked failed).
    status: str
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
    #: messages, linked (from the store), reused (from the reference), copied, bytes_copied.
    transfer: dict[str, int]
    warnings: int
    errors: int
    #: The whole JSON summary, as ``--json`` prints it.
    summary: dict[str, Any] = field(repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of :func:`verify`: the facts of its JSON summary."""

    #: "clean" or "problems".
    status: str
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
        return self.status == "clean"


@dataclass(frozen=True)
class RestoreResult:
    """The outcome of :func:`restore`: the facts of its JSON summary."""

    #: The verification of the restored store: "clean" or "problems".
    status: str
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
        return self.status == "clean"


@dataclass(frozen=True)
class PruneResult:
    """The outcome of :func:`prune`: the facts of its JSON summary."""

    #: "ok", or "failed" when something could not be deleted (it stays in REPO/.trash).
    status: str
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
    warnings: int
    errors: int
    summary: dict[str, Any] = field(repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


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


# Building and running phase objects (shared with the CLI) -------------------------------------


def event_reporter(on_event: EventCallback | None, verbose: bool = False) -> Reporter:
    """A reporter that hands every JSON Lines object to ``on_event`` (or only counts)."""
    if on_event is None:
        return Reporter()

    class CallbackReporter(JsonReporter):
        def _emit(self, obj: dict[str, Any]) -> None:
            on_event(obj)

    return CallbackReporter(verbose=verbose, out=io.StringIO())


def check_jobs(jobs: int | None) -> int:
    from mailbak.cli import default_jobs

    if jobs is None:
        return default_jobs()
    if isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= 256:
        raise UsageError(f"jobs must be an integer from 1 to 256, not {jobs!r}")
    return jobs


def backup_job(store: PathArg, dest: PathArg, *, config: PathArg | None, data: PathArg | None, jobs: int, reporter: Reporter, verbose: bool, link_dest: PathArg | None = None):
    """The phase object of a backup (mailbak.archiver.Backup)."""
    from mailbak.archiver import Backup
    from mailbak.layout import StorePaths
    from mailbak.monitor import private_tmp_warning

    warning = private_tmp_warning(dest)
    if warning:
        reporter.warn("private_tmp", os.fspath(dest), warning)
    return Backup(StorePaths.of(store, config, data), Path(dest), jobs=jobs, reporter=reporter, verbose=verbose, link_dest=Path(link_dest) if link_dest is not None else None)


def verify_job(path: PathArg, *, fix: bool, jobs: int, reporter: Reporter, verbose: bool):
    """The phase object of a verification (mailbak.verifier.Verify)."""
    from mailbak.verifier import Verify

    return Verify(Path(path), fix=fix, jobs=jobs, reporter=reporter, verbose=verbose)


def restore_job(backup: PathArg, store: PathArg, *, force_copy: bool, force: bool, jobs: int, reporter: Reporter, verbose: bool):
    """The phase object of a restore (mailbak.restorer.Restore)."""
    from mailbak.restorer import Restore

    return Restore(Path(backup), Path(store), force_copy=force_copy, force=force, jobs=jobs, reporter=reporter, verbose=verbose)


@dataclass
class JobStage:
    """How far ``run_job`` got: "check", "run" or "summary", and the run's status once known.
    The CLI names in its one interrupt line what an interrupted job leaves behind."""

    stage: str = "check"
    status: str | None = None


def run_job(job: Any, reporter: Reporter, *, title: str, target: PathArg, stage: JobStage | None = None) -> dict[str, Any]:
    """Runs a phase object: ``check()`` (raises UsageError, nothing written), ``run()``, then
    the summary; returns the summary facts. Raises UsageError, DestinationFull, OSError, and
    whatever stops the run (KeyboardInterrupt, the CLI's Interrupted, an ``on_event`` error);
    ``stage``, when given, tells how far it got."""
    stage = stage or JobStage()
    try:
        job.check()
        stage.stage = "run"
        stage.status = job.run()
        facts = job.facts(stage.status)
        stage.stage = "summary"
        # A backup into a repository names the snapshot it made, not the repository.
        shown = getattr(job, "summary_target", target)
        reporter.summary(f"{title} {stage.status}: {shown}", facts, job.table())
        return facts
    finally:
        # Locks a job holds (a backup's on its repository) end with it, also in a long-lived
        # process calling the API.
        close = getattr(job, "close", None)
        if close is not None:
            close()


def _run(job: Any, reporter: Reporter, *, title: str, target: PathArg) -> dict[str, Any]:
    try:
        return run_job(job, reporter, title=title, target=target)
    except UsageError as e:
        reporter.usage_error(str(e))
        raise
    finally:
        reporter.close()


# The public functions ------------------------------------------------------------------------


def backup(
    store: PathArg,
    dest: PathArg,
    *,
    jobs: int | None = None,
    config: PathArg | None = None,
    data: PathArg | None = None,
    link_dest: PathArg | None = None,
    verbose: bool = False,
    on_event: EventCallback | None = None,
) -> BackupResult:
    """Backs up ``store`` into ``dest``, as ``mailbak backup`` does: ``dest`` new or empty, or a
    repository (``init``), in which the backup is a new snapshot.

    ``config``/``data`` override STORE/config and STORE/data; ``link_dest`` names a complete
    backup to reuse unchanged files from (``--link-dest``; default for a repository: its newest
    complete snapshot); ``jobs`` is the number of worker threads (default: one per core, at
    least 2); ``on_event`` receives each JSON Lines object (status, warning, error, summary;
    per-file "info" lines too with ``verbose``)."""
    reporter = event_reporter(on_event, verbose)
    job = backup_job(store, dest, config=config, data=data, jobs=check_jobs(jobs), reporter=reporter, verbose=verbose, link_dest=link_dest)
    facts = _run(job, reporter, title="backup", target=dest)
    return _result(BackupResult, facts, dest=job.target)


def verify(
    path: PathArg,
    *,
    fix: bool = False,
    jobs: int | None = None,
    verbose: bool = False,
    on_event: EventCallback | None = None,
) -> VerifyResult:
    """Verifies a backup or a store, as ``mailbak verify`` does (``fix`` as ``--fix``)."""
    reporter = event_reporter(on_event, verbose)
    job = verify_job(path, fix=fix, jobs=check_jobs(jobs), reporter=reporter, verbose=verbose)
    facts = _run(job, reporter, title="verify", target=path)
    return _result(VerifyResult, facts, path=Path(path))


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
    does (``copy`` as ``--copy``, ``force`` as ``--force``)."""
    reporter = event_reporter(on_event, verbose)
    job = restore_job(backup, store, force_copy=copy, force=force, jobs=check_jobs(jobs), reporter=reporter, verbose=verbose)
    facts = _run(job, reporter, title="restore", target=store)
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
    from mailbak import repository

    return repository.init(Path(repo)).path


def snapshots(repo: PathArg) -> list[SnapshotInfo]:
    """The snapshots of a repository, newest first, as ``mailbak snapshots`` lists them.
    Raises UsageError when ``repo`` is not a repository."""
    from mailbak.repository import Repository

    return Repository.open(Path(repo)).snapshots()


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
    try:
        policy = _policy(keep_last=keep_last, keep_hourly=keep_hourly, keep_daily=keep_daily, keep_weekly=keep_weekly, keep_monthly=keep_monthly, keep_yearly=keep_yearly, keep_within=keep_within)
    except UsageError as e:
        reporter.usage_error(str(e))
        reporter.close()
        raise
    job = Prune(Path(repo), policy, dry_run=dry_run, wait=wait, nice=nice, jobs=check_jobs(jobs), reporter=reporter, verbose=verbose)
    facts = _run(job, reporter, title="prune", target=repo)
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
    try:
        return offsite.push(Path(repo), snapshot, _restic_config(restic_repo, password_file, restic_options), reporter)
    except UsageError as e:
        reporter.usage_error(str(e))
        raise
    finally:
        reporter.close()


def offsite_list(repo: PathArg, *, restic_repo: str | None = None, password_file: PathArg | None = None, restic_options: tuple[str, ...] | list[str] = ()):
    """Every local snapshot of ``repo`` and every off-site copy of one, newest first, as
    ``mailbak offsite list`` shows them (a list of :class:`mailbak.offsite.ListEntry`)."""
    from mailbak import offsite

    return offsite.listing(Path(repo), _restic_config(restic_repo, password_file, restic_options))


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
    try:
        return offsite.restore(restic_snapshot, Path(target), _restic_config(restic_repo, password_file, restic_options), reporter, jobs=check_jobs(jobs), verbose=verbose)
    except UsageError as e:
        reporter.usage_error(str(e))
        raise
    finally:
        reporter.close()


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
    try:
        policy = _policy(keep_last=keep_last, keep_hourly=keep_hourly, keep_daily=keep_daily, keep_weekly=keep_weekly, keep_monthly=keep_monthly, keep_yearly=keep_yearly, keep_within=keep_within)
        return offsite.prune(Path(repo), policy, _restic_config(restic_repo, password_file, restic_options), reporter, dry_run=dry_run)
    except UsageError as e:
        reporter.usage_error(str(e))
        raise
    finally:
        reporter.close()

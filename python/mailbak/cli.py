"""The ``mailbak`` command line: one click command per verb, each a thin shell that turns its
options into a job (job.py) and hands it to the one runner (:func:`run_command`, which exits
with the runner's status). Exit statuses (docs/BACKUP.md, docs/VERIFY.md): 0 ok, 1 failed or problems found, 2 bad
usage or input, 130 interrupted. Scripts must treat any other status as failure.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from mailbak import __version__
from mailbak.job import default_jobs
from mailbak.status import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    from mailbak.job import Job
    from mailbak.report import Reporter


def jobs_option(f=None, *, default: str = "one per core, at least 2"):
    """--jobs/-j: worker threads (default: job.default_jobs(); ``default`` says what a command
    that has its own default uses)."""
    if f is None:
        return lambda g: jobs_option(g, default=default)
    return click.option("--jobs", "-j", type=click.IntRange(1, 256), default=None, help=f"Worker threads for file work (default: {default}).")(f)


def output_options(f):
    """--json, --quiet, --verbose: which reporter (report.make_reporter)."""
    f = click.option("--json", "json_output", is_flag=True, help="JSON Lines on stdout (status, warning, error, summary); nothing else on stdout.")(f)
    f = click.option("--quiet", "-q", is_flag=True, help="Print only errors (and the summary when something failed).")(f)
    f = click.option("--verbose", "-v", is_flag=True, help="Also print a line per file.")(f)
    return f


def restic_options(f):
    """Where the restic repository is: restic's own environment, or these options (passed to
    restic through its environment, never on its command line)."""
    f = click.option("--restic-option", "-o", "restic_opts", multiple=True, metavar="KEY=VALUE", help="An extended option for restic (restic -o), e.g. sftp.command=... or s3.storage-class=...; repeatable.")(f)
    f = click.option("--password-file", type=click.Path(path_type=Path, dir_okay=False), help="File holding the restic repository's password (default: RESTIC_PASSWORD_FILE or RESTIC_PASSWORD_COMMAND).")(f)
    f = click.option("--restic-repo", metavar="REPOSITORY", help="The restic repository (default: RESTIC_REPOSITORY), e.g. s3:https://host/bucket/mail, sftp:backup@host:/srv/restic/mail, /mnt/usb/restic.")(f)
    return f


def run_command(
    kind: type[Job],
    target: Path,
    reporter: Reporter,
    make_job: Callable[[Reporter], Job],
    *,
    metrics_file: Path | None = None,
    ping_url: str | None = None,
    signals: bool = True,
    show: Callable[[Any], None] | None = None,
    show_failed: bool = False,
) -> NoReturn:
    """Runs the job ``make_job`` makes (given the reporter to use) through the one runner
    (``job.execute``), inside a monitor (metrics file and pings, when asked for), and exits
    with its status. With ``signals``, SIGTERM and SIGINT stop the run as Interrupted (exit
    130); ``show`` prints the result of a job that succeeded (a listing), with
    ``show_failed`` also of one that failed (exit 1: a listing whose errors name what it could
    not read; ``show`` then prints nothing for a job whose run did not finish)."""
    from mailbak.errors import Interrupted
    from mailbak.job import execute, stop_before_start
    from mailbak.monitor import Monitor
    from mailbak.runner import install_signal_handlers

    if signals:
        install_signal_handlers()
    with Monitor(kind, target, metrics_file=metrics_file, ping_url=ping_url) as monitor:
        try:
            # The start ping: SIGINT or SIGTERM during it stops the run before it began.
            shown = monitor.start(reporter)
        except Interrupted as e:
            sys.exit(stop_before_start(reporter, e))

        def made(job: Job) -> None:
            monitor.job = job

        status = execute(lambda: make_job(shown), shown, on_job=made)
        if show is not None and (status == EXIT_OK or (show_failed and status == EXIT_FAILED)):
            show(monitor.job)
        # Exit inside the monitor: it reads the status from SystemExit.
        sys.exit(status)
    raise AssertionError("unreachable: the monitor never swallows SystemExit")


def selection_options(scope: str):
    """--mailbox/-m, --recursive/-r, --since, --before: which messages of the account export
    and restore --account take (``catalog.Selection.of``); ``scope`` opens each help text ("With
    --account: " for restore, whose other form takes everything)."""

    def scoped(text: str) -> str:
        return scope + text if scope else text[0].upper() + text[1:]

    def add(f):
        f = click.option("--before", metavar="DATE", help=scoped("only messages received before DATE."))(f)
        f = click.option("--since", metavar="DATE", help=scoped("only messages received at or after DATE (YYYY-MM-DD or ISO 8601; local time unless a zone is given)."))(f)
        f = click.option("--recursive", "-r", is_flag=True, help="With --mailbox: also every mailbox below each one named (NAME/...).")(f)
        return click.option("--mailbox", "-m", "mailboxes", metavar="NAME", multiple=True, help=scoped("only mailbox NAME (repeatable; default: every mailbox of the account)."))(f)

    return add


def check_metrics_file(ctx, param, value: Path | None) -> Path | None:
    """Click callback of --metrics-file: refuses, as bad usage before the run, a file in a directory
    that does not exist (it would only fail once the run is over)."""
    if value is not None and not value.parent.is_dir():
        raise click.BadParameter(f"{value.parent}: no such directory", ctx=ctx, param=param)
    return value


def check_ping_url(ctx, param, value: str | None) -> str | None:
    """Click callback of --ping-url: refuses, as bad usage before the run, a URL that
    ``monitor.check_ping_url`` finds unusable."""
    from mailbak.monitor import check_ping_url as problem

    why = problem(value) if value is not None else None
    if why:
        raise click.BadParameter(why, ctx=ctx, param=param)
    return value


def monitor_options(f):
    """--metrics-file and --ping-url (docs/OPERATIONS.md), for any command run by a scheduler."""
    f = click.option("--ping-url", metavar="URL", callback=check_ping_url, help="Ping URL/start, then URL on success or URL/<exit status> on failure with the log's last 100 kB (healthchecks.io). A failed ping (or over 10 s) warns.")(f)
    f = click.option("--metrics-file", type=click.Path(path_type=Path, dir_okay=False), callback=check_metrics_file, help="Write Prometheus metrics of this run to this file (atomically), for node_exporter's textfile collector.")(f)
    return f


def print_version(ctx, param, value: bool) -> None:
    """--version: mailbak's version and the engine build it runs (a debug build is slow)."""
    if not value or ctx.resilient_parsing:
        return
    from mailbak import _engine

    b = _engine.build_info()
    click.echo(f"mailbak, version {__version__} (engine {b['version']}, {b['profile']} build, {b['arch']}-{b['os']})")
    ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=print_version, help="Show the version of mailbak and of its engine build, and exit.")
def main() -> None:
    """Consistent online backups of LMDB mail stores.

    A store is a directory with config/ and data/ (docs/FORMAT.md). Backups are taken while the
    mail server keeps running; message files are hardlinked, so a backup on the same file system
    costs almost no space or time.

    Shell completion (bash): eval "$(_MAILBAK_COMPLETE=bash_source mailbak)"
    """


@main.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--config", "config_dir", type=click.Path(path_type=Path), help="Config directory (default: STORE/config).")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), help="Data directory (default: STORE/data).")
@click.option("--link-dest", type=click.Path(path_type=Path), metavar="PREV", help="Reuse (hardlink) unchanged files from PREV, a complete backup (default for a repository DEST: its newest complete snapshot).")
@click.option("--no-digests", is_flag=True, help="Record no SHA-256 digests of the files (BACKUP/digests/): `check --read-data` and `verify --read-data` then prove sizes only.")
@jobs_option
@output_options
@monitor_options
def backup(store: Path, dest: Path, config_dir, data_dir, link_dest, no_digests, jobs, json_output, quiet, verbose, metrics_file, ping_url) -> None:
    """Back up STORE into DEST while the server runs.

    \b
    DEST is a new or empty directory, or a repository (mailbak init): then
    the backup is a new snapshot REPO/<UTC start time>, and every file that
    is unchanged since the newest complete snapshot is hardlinked from it
    (reused) instead of copied; in a repository on btrfs the snapshot is a
    btrfs snapshot of it in which unchanged files are kept and the rest
    replaced. Backups and prunes of one repository never
    overlap: a backup waits for a running prune. DEST (REPO) must not lie
    below a directory another user can change, such as the store's own
    directory; run as root, an existing empty DEST becomes root's, mode 0700.

    \b
    Phases: write DEST/mailbak.json saying "running"; copy config/; take the
    backup lease; copy every LMDB database from one read transaction each;
    hardlink (or copy) the message files those snapshots name, skipping files
    added later or being erased; copy all other files of data/ (unknown ones
    with a warning); flush DEST; replace DEST/mailbak.json with ok or failed.

    \b
    Safety: nothing in STORE is modified (LMDB registers the backup as a reader
    in the lock files, as it does any reader). Writers are never blocked.
    Ctrl-C or SIGTERM stops workers and leaves DEST with its "running"
    manifest, which `mailbak verify` reports as an incomplete backup; delete it
    and run again.

    \b
    Exit status: 0 ok (warnings allowed; the backup verifies clean), 1 failed
    (errors, backup kept and marked failed, or stopped by a full destination
    and left "running"), 2 bad usage or input (nothing written), 130
    interrupted (left "running").
    """
    from mailbak.archiver import Backup, backup_job
    from mailbak.report import make_reporter

    def job(reporter: Reporter) -> Job:
        return backup_job(store, dest, config=config_dir, data=data_dir, jobs=jobs or default_jobs(), reporter=reporter, verbose=verbose, link_dest=link_dest, record_digests=not no_digests)

    run_command(Backup, store, make_reporter(json_output=json_output, quiet=quiet, verbose=verbose), job, metrics_file=metrics_file, ping_url=ping_url)


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--fix", is_flag=True, help="Move unrecognized files out of message directories to data/moved/ (never deletes).")
@click.option("--read-data", is_flag=True, help="Also read every file of the backup or snapshot and compare its SHA-256 with the digest the backup recorded.")
@click.option("--against", type=click.Path(path_type=Path), metavar="REPO|BACKUP", help="With --read-data of a live store: compare its message files with the digests of BACKUP, or of REPO's newest complete snapshot (source bit rot).")
@jobs_option
@output_options
@monitor_options
def verify(path: Path, fix: bool, read_data: bool, against: Path | None, jobs, json_output, quiet, verbose, metrics_file, ping_url) -> None:
    """Prove a backup (or a store) complete and consistent.

    \b
    PATH is a backup if it holds mailbak.json (whatever else it holds), else a
    store if it has config/mailstore.toml and data/.

    \b
    Checks: the manifest says ok (backups; "running" means incomplete); every
    LMDB file passes a structural check before LMDB opens it, and every record
    decodes; every live message and queued message has its file with the
    recorded size; account rules (uid below uidnext, no live message in an
    expunged mailbox, erase entries name expunged messages); no unrecognized
    files in message directories; accounts and directories agree with the
    config; the backup holds every database, account and known file its
    manifest names, with the recorded sizes, transaction IDs and counts.

    \b
    With --read-data (a backup or snapshot): every message file and every
    file its digests/files lists is read and its SHA-256 compared with the
    digest the backup recorded (a backup made before digests existed is
    checked by size only; docs/VERIFY.md). Counts: inodes_read, bytes_read,
    damaged, unrecorded (no digest recorded), unverified (digest file damaged).
    With --read-data STORE --against REPO|BACKUP: every message file of the
    live store whose size and modification time are those of its copy in the
    backup (REPO's newest complete snapshot) is read, and one whose bytes no
    longer have the digest recorded there is an error, source_damaged (bit
    rot in the store).

    \b
    Writes nothing (nothing at all in a backup) unless --fix, which moves
    unrecognized files to data/moved/ keeping their path. Exit status: 0 clean,
    1 problems found (incomplete, failed, damaged, or not what its manifest
    says), 2 bad usage or input, 130 interrupted.
    """
    from mailbak.report import make_reporter
    from mailbak.verifier import ContentCheck, Verify

    def job(reporter: Reporter) -> Job:
        if read_data and fix:
            from mailbak.errors import UsageError

            raise UsageError("--read-data and --fix: run them one at a time (--read-data reads a backup, --fix changes a store)")
        content = ContentCheck(read_data=True) if read_data else None
        return Verify(path, fix=fix, jobs=jobs or default_jobs(), reporter=reporter, verbose=verbose, content=content, against=against)

    run_command(Verify, path, make_reporter(json_output=json_output, quiet=quiet, verbose=verbose), job, metrics_file=metrics_file, ping_url=ping_url)


@main.command()
@click.argument("repo", type=click.Path(path_type=Path))
@click.option("--json", "json_output", is_flag=True, help="Print the result as one JSON object on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing on success.")
def init(repo: Path, json_output: bool, quiet: bool) -> None:
    """Make REPO (new or empty) a repository of snapshots.

    \b
    A repository holds one snapshot per `mailbak backup STORE REPO`, each a
    complete backup named by its UTC start time, in which every file that is
    unchanged since the previous snapshot is a hardlink to it: keep REPO on
    another disk than the store, and thin it with `mailbak prune`
    (docs/REPOSITORY.md). On btrfs each snapshot is a subvolume instead (a
    btrfs snapshot of the previous one, brought up to date in place, then
    read-only): decided now, recorded in the marker as its method. REPO
    becomes root's, mode 0700. Exit status: 0
    made, 2 bad usage (REPO exists and is not an empty directory, or lies below
    a directory another user can change; nothing written).
    """
    import json

    from mailbak.report import Reporter
    from mailbak.repository import Init
    from mailbak.status import Status

    def show(job: Init) -> None:
        if json_output:
            click.echo(json.dumps({"message_type": "summary", **job.facts(Status.OK)}))
        elif not quiet:
            click.echo(f"{job.headline(Status.OK)}\nback up into it with: mailbak backup STORE {repo}")

    run_command(Init, repo, Reporter(), lambda _: Init(repo), signals=False, show=show)


@main.command()
@click.argument("repo", type=click.Path(path_type=Path))
@click.option("--json", "json_output", is_flag=True, help="One JSON object per snapshot per line on stdout, newest first.")
def snapshots(repo: Path, json_output: bool) -> None:
    """List the snapshots of repository REPO, newest first.

    \b
    Status: ok (complete), failed (complete as far as it goes; see its
    errors), incomplete (interrupted or killed: no finished manifest; or a
    manifest that cannot be read or holds an impossible time: see --json's
    "detail"), running (a backup is writing it now). Times are local; "reused" counts files
    hardlinked from the previous snapshot, "copied" files written anew.
    Exit status: 0, or 2 when REPO is not a repository.
    """
    import json

    from mailbak import repository
    from mailbak.report import Reporter

    def show(job: repository.Snapshots) -> None:
        if json_output:
            for info in job.infos:
                click.echo(json.dumps({"message_type": "snapshot", **info.as_json()}, ensure_ascii=False))
            if job.trash:
                click.echo(json.dumps({"message_type": "trash", "pending": job.trash}, ensure_ascii=False))
            return
        from mailbak.report import format_table

        click.echo(format_table(job.table()), nl=False)
        if job.trash:
            click.echo(repository.trash_line(job.repository, job.trash))

    run_command(repository.Snapshots, repo, Reporter(), lambda _: repository.Snapshots(repo), signals=False, show=show)


# The recovery verbs' listings: ls and find (issue 20) ------------------------------------------


def no_collector() -> None:
    """Turns Python's cycle collector off for the rest of a listing command (``ls``, ``find``):
    they make hundreds of thousands of small objects that hold no cycles (records, heads, rows),
    and then exit; collecting them as they were made was 7 % of ``ls`` of 100,000 messages."""
    import gc

    gc.disable()


def print_listing(job: Any, json_output: bool) -> None:
    """Prints a listing job's result (``ls``, ``find``) on stdout: one JSON object per line,
    or its table (cells escaped); nothing for a run that did not finish."""
    import json

    if not job.done:
        return
    # In pieces: the whole text of 100,000 messages at once would double the memory ls needs.
    if json_output:
        from itertools import islice

        objects = job.objects()
        while chunk := "".join(json.dumps(obj, ensure_ascii=False) + "\n" for obj in islice(objects, 10_000)):
            click.echo(chunk, nl=False)
        return
    from mailbak.report import table_chunks

    for chunk in table_chunks(job.listing()):
        click.echo(chunk, nl=False)


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.argument("account", required=False)
@click.argument("mailbox", required=False)
@jobs_option
@click.option("--json", "json_output", is_flag=True, help='One JSON object per line on stdout ("message_type": account, mailbox or message); nothing else on stdout.')
@click.option("--quiet", "-q", is_flag=True, help="Print no warnings on stderr (errors still).")
def ls(path: Path, account: str | None, mailbox: str | None, jobs, json_output: bool, quiet: bool) -> None:
    """List what PATH (a backup, a repository's snapshot, or a live store) holds.

    \b
    ls PATH                   accounts: messages, bytes, mailboxes
    ls PATH ACCOUNT           its mailboxes as a tree: messages, unseen, bytes
    ls PATH ACCOUNT MAILBOX   its messages in UID order: ID, UID, received
                              (local time), size, flags (system flags without
                              their backslash: Seen, ...) and keywords, and the
                              From, Subject, Date and Message-ID of each file's
                              head (only the head is read)

    \b
    A snapshot is read under its repository's shared lock (a prune waits), a
    live store in one read transaction per account, as its owner when run as
    root; nothing is changed. Names are escaped in the table. Exit status: 0;
    1 when a message file or record could not be read (each an error line on
    stderr naming the account, the ID and the path; the rest is listed); 2 bad
    usage or input (PATH no backup, snapshot or store; an unknown account or
    mailbox: the message lists those there are).
    """
    from mailbak.lister import Ls
    from mailbak.report import ListingReporter

    no_collector()

    reporter = ListingReporter(quiet=quiet)
    run_command(Ls, path, reporter, lambda r: Ls(path, account, mailbox, jobs=jobs or default_jobs(), reporter=r), show=lambda job: print_listing(job, json_output), show_failed=True)


@main.command()
@click.argument("path", metavar="REPO|PATH", type=click.Path(path_type=Path))
@click.option("--account", help="Search this account only.")
@click.option("--mailbox", help="Only messages in this mailbox (in at least one snapshot); costs more: records are read.")
@click.option("--from", "from_", metavar="TEXT", help="From contains TEXT (case-insensitive, decoded).")
@click.option("--to", metavar="TEXT", help="To contains TEXT (case-insensitive, decoded).")
@click.option("--subject", metavar="TEXT", help="Subject contains TEXT (case-insensitive, decoded).")
@click.option("--message-id", metavar="ID", help="Message-ID is ID (exact; angle brackets optional).")
@click.option("--since", metavar="DATE", help="Received at or after DATE (YYYY-MM-DD or ISO 8601, local time); costs more.")
@click.option("--before", metavar="DATE", help="Received before DATE; costs more.")
@jobs_option
@click.option("--json", "json_output", is_flag=True, help='One JSON object per match per line on stdout ("message_type": "match", with its "snapshots"); nothing else on stdout.')
@click.option("--quiet", "-q", is_flag=True, help="Print no warnings on stderr (errors still).")
def find(path: Path, account, mailbox, from_, to, subject, message_id, since, before, jobs, json_output: bool, quiet: bool) -> None:
    """Find messages in every snapshot of repository REPO, or in PATH (a backup, a
    snapshot or a live store).

    \b
    Each matching message is shown once, with the snapshots holding it: the
    first and last, how many, and the mailboxes it was in, oldest first
    ("Inbox (A..B), Archive (C..)": from snapshot A to B, then from C on to
    the newest). All criteria must hold; with none, every message matches. A
    message file shared by snapshots is parsed once, from the newest snapshot
    holding it; only file heads are read. --mailbox, --since and --before read
    every snapshot's records too, which costs several times more.

    \b
    REPO is read under its shared lock (a prune waits); snapshots that are
    incomplete or running are skipped with a warning. Exit status: 0; 1 when
    a message file or a snapshot could not be read (each an error on stderr,
    the rest is searched); 2 bad usage or input (no such account or mailbox
    anywhere: the message lists those there are).
    """
    from mailbak.finder import Criteria, Find
    from mailbak.report import ListingReporter

    no_collector()

    reporter = ListingReporter(quiet=quiet)

    def make(r: Reporter) -> Find:
        criteria = Criteria.parse(account=account, mailbox=mailbox, from_=from_, to=to, subject=subject, message_id=message_id, since=since, before=before)
        return Find(path, criteria, jobs=jobs or default_jobs(), reporter=r)

    run_command(Find, path, reporter, make, show=lambda job: print_listing(job, json_output), show_failed=True)


@main.command()
@click.argument("repo", type=click.Path(path_type=Path))
@click.option("--read-data", is_flag=True, help="Read every distinct file (inode) once and compare its SHA-256 with the digest its snapshot recorded.")
@click.option("--read-data-subset", "subset", metavar="N/M|P%|SIZE", help="Read only a subset (implies --read-data): part N of M (stable: M runs with N=1..M read everything once), P percent at random, or SIZE bytes (500M, 2G) at random.")
@click.option(
    "--repair",
    is_flag=True,
    help=(
        "Heal each damaged file from a good copy (the live store, then the off-site restic repository when one is configured) and re-point every snapshot holding it "
        "(implies --read-data of the whole history unless a subset is given; takes the repository's lock exclusively)."
    ),
)
@click.option("--store", "store", type=click.Path(path_type=Path, file_okay=False), help="With --repair: the live store to take good copies from (default: the one the newest snapshot's manifest names).")
@restic_options
@jobs_option
@output_options
@monitor_options
def check(repo: Path, read_data: bool, subset: str | None, repair: bool, store: Path | None, restic_repo, password_file, restic_opts, jobs, json_output, quiet, verbose, metrics_file, ping_url) -> None:
    """Verify every snapshot of repository REPO, each shared file once.

    \b
    Each snapshot is verified as `mailbak verify` verifies it (manifest,
    databases, records, account rules, sizes, unknown files, the manifest's
    facts), but a file (inode) that many snapshots share is stat'ed, and
    with --read-data read, only once. --read-data compares each file's
    SHA-256 with the digest a finished backup recorded; a mismatch names the
    message and every snapshot holding it. Snapshots whose backup failed or
    was killed are reported and never trusted for digests; one being written
    is skipped.

    \b
    REPO is read under its shared lock (a prune waits); --repair takes it
    exclusively. Writes nothing unless --repair. Exit status: 0 clean, 1
    damage or other problems found, 2 bad usage or input (not a repository,
    a bad subset), 130 interrupted.
    """
    import os

    from mailbak.checker import Check, parse_subset
    from mailbak.errors import UsageError
    from mailbak.report import make_reporter
    from mailbak.restic import ResticConfig, configured_repos

    def job(reporter: Reporter) -> Job:
        if not repair and (store is not None or restic_repo or password_file or restic_opts):
            raise UsageError("--store and the restic options are where --repair takes good copies from: give them with --repair")
        # Off-site copies are tried only where a restic repository is configured.
        offsite = ResticConfig(restic_repo, password_file, tuple(restic_opts)) if repair and (restic_repo or configured_repos(dict(os.environ))) else None
        return Check(repo, read_data=read_data, subset=parse_subset(subset) if subset is not None else None, repair=repair, jobs=jobs or default_jobs(), reporter=reporter, verbose=verbose, store=store, offsite=offsite)

    run_command(Check, repo, make_reporter(json_output=json_output, quiet=quiet, verbose=verbose), job, metrics_file=metrics_file, ping_url=ping_url)


def keep_options(f):
    """The --keep-* options of prune and offsite prune (restic's forget rules, listed in
    retention.py), as text: pruner.policy_from_options parses them, so that both commands read
    them alike."""
    from mailbak.retention import COUNTED_RULES, KEEP_WITHIN, KEEP_WITHIN_KEEPS

    for rule in reversed(COUNTED_RULES):
        f = click.option(rule.option, rule.field, metavar="N", help=f"Keep {rule.keeps} (N or 'unlimited').")(f)
    f = click.option("--" + KEEP_WITHIN.replace("_", "-"), KEEP_WITHIN, metavar="DURATION", help=f"Keep {KEEP_WITHIN_KEEPS}.")(f)
    return f


@main.command()
@click.argument("repo", type=click.Path(path_type=Path))
@keep_options
@click.option("--dry-run", "-n", is_flag=True, help="Show what would be kept and removed; change nothing.")
@click.option("--no-wait", is_flag=True, help="Fail (exit 1) instead of waiting when a backup, or a verify or restore of a snapshot, holds the repository.")
@click.option("--no-nice", is_flag=True, help="Delete at normal CPU and I/O priority (default: lowest CPU, idle I/O).")
@jobs_option(default="2, measured fastest for a cold prune whatever the cores")
@output_options
@monitor_options
def prune(repo: Path, dry_run: bool, no_wait: bool, no_nice: bool, jobs, json_output, quiet, verbose, metrics_file, ping_url, **keep) -> None:
    """Remove the snapshots of REPO that no --keep-* rule keeps.

    \b
    The rules are restic's forget rules (docs/REPOSITORY.md): each --keep-X N
    keeps the newest snapshot in each of the last N periods that hold one;
    rules are ORed; times are the manifests' start times in the local time
    zone (TZ honoured). Only complete snapshots count. The newest complete
    snapshot is always kept; failed and incomplete ones are removed once a
    newer complete one exists; one being written is never touched.

    \b
    Removed snapshots are first renamed into REPO/.trash (so the decision
    survives a crash), then deleted in parallel at low priority (a btrfs
    subvolume in one call; the kernel frees its space in the background). A prune that
    was stopped leaves only trash, which the next prune deletes first.
    Exit status: 0 ok, 1 something could not be deleted (it stays in the
    trash) or the repository is busy with --no-wait, 2 bad usage (no rule,
    bad value, not a repository), 130 interrupted.
    """
    from mailbak.pruner import Prune, policy_from_options
    from mailbak.report import make_reporter

    def job(reporter: Reporter) -> Job:
        policy = policy_from_options(**keep)  # raises UsageError: exit status 2
        return Prune(repo, policy, dry_run=dry_run, wait=not no_wait, nice=not no_nice, jobs=jobs, reporter=reporter, verbose=verbose)

    run_command(Prune, repo, make_reporter(json_output=json_output, quiet=quiet, verbose=verbose), job, metrics_file=metrics_file, ping_url=ping_url)


@main.command()
@click.argument("backup_dir", metavar="PATH", type=click.Path(path_type=Path))
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--copy", "force_copy", is_flag=True, help="Whole-store restore: copy message files instead of hardlinking them, so the restored store shares no inode with the backup.")
@click.option("--force", is_flag=True, help="Whole-store restore: restore even if the backup's manifest is missing or says failed.")
@click.option("--account", "-a", metavar="A", help="Restore (part of) account A of PATH into the live STORE, adding to what is there.")
@selection_options("With --account: ")
@click.option("--to-account", metavar="B", help="With --account: restore into account B of STORE (default: A).")
@click.option("--into", metavar="PREFIX", help="With --account: put mailbox M at PREFIX/M (default: 'Restored/<time of the snapshot>'; '' for the original names).")
@click.option("--create-account", is_flag=True, help="With --account: add the target account to STORE when it is missing (says what it added to the config).")
@click.option("--dry-run", "-n", is_flag=True, help="With --account: show what would be restored; write nothing.")
@jobs_option
@output_options
def restore(backup_dir: Path, store: Path, force_copy: bool, force: bool, account, mailboxes, recursive, since, before, to_account, into, create_account, dry_run, jobs, json_output, quiet, verbose) -> None:
    """Restore PATH into STORE: a whole backup into a new store, or (with
    --account) mailboxes of one account into a live store.

    \b
    Whole store (no --account): PATH is a backup or snapshot, STORE new or
    empty; the result is verified. Databases are written as fresh LMDB files
    (no lock files) and all other files are copied; message files are
    hardlinked when PATH and STORE share a file system. Use --copy when the
    server might modify message files in place: with hardlinks that would
    change the backup too. Permission bits and symlinks are kept; nothing
    outside STORE is ever written. Refuses a backup without an "ok" manifest
    unless --force. Exit status: 0 restored and verified clean, 1 restored
    with problems, 2 bad usage or input (nothing written), 130 interrupted
    (STORE is then incomplete).

    \b
    One account (--account A): PATH is a backup, a snapshot or another store;
    STORE is the live store, written while the server runs, through the
    writer library (new IDs and UIDs, each file before its record), as the
    store's owner when run as root. Each selected message is delivered with
    its flags, keywords and received time into PREFIX/<its mailbox> of
    account B (--to-account, default A); mailboxes are created as needed;
    nothing in STORE is modified or deleted. The default PREFIX is
    'Restored/<start of the backup>' (local time, as `mailbak snapshots`
    shows it; for a live PATH, the time of the run); --into '' restores into
    the original names, adding to mailboxes that exist. Each restored message
    remembers where it came from (backup, account, ID): a message already in
    account B from an earlier restore is skipped, whatever its mailbox, so
    running the same restore again adds nothing, and a restore stopped
    midway finishes when run again, without duplicates (a kill can leave one
    orphan file, which verify warns of). A source message
    that cannot be read, or a mailbox name the store refuses, is an error:
    the rest goes on. Exit status: 0 ok, 1 some messages not restored (each
    named), 2 bad usage or input (unknown account or mailbox, bad date,
    STORE not a store; nothing written), 130 interrupted (what was restored
    stays; run again to finish).
    """
    from mailbak.errors import UsageError
    from mailbak.report import make_reporter

    reporter = make_reporter(json_output=json_output, quiet=quiet, verbose=verbose)
    if account is None:
        from mailbak.restorer import Restore

        def job(reporter: Reporter) -> Job:
            only = {"--mailbox": mailboxes, "--recursive": recursive, "--since": since, "--before": before, "--to-account": to_account, "--into": into is not None, "--create-account": create_account, "--dry-run": dry_run}
            given = [o for o, v in only.items() if v]
            if given:
                raise UsageError(f"{', '.join(given)}: only with --account (a whole-store restore takes everything, into a new store)")
            return Restore(backup_dir, store, force_copy=force_copy, force=force, jobs=jobs or default_jobs(), reporter=reporter, verbose=verbose)

        run_command(Restore, store, reporter, job)

    from mailbak.catalog import Selection
    from mailbak.redeliver import Redeliver

    def redeliver(reporter: Reporter) -> Job:
        if force_copy or force:
            raise UsageError("--copy and --force are for a whole-store restore, not with --account")
        selection = Selection.of(mailboxes, recursive, since, before)
        return Redeliver(backup_dir, store, account=account, selection=selection, to_account=to_account, into=into, create_account=create_account, dry_run=dry_run, reporter=reporter, verbose=verbose)

    run_command(Redeliver, store, reporter, redeliver)


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--account", "-a", metavar="A", required=True, help="The account to export.")
@selection_options("")
@click.option("--format", "fmt", type=click.Choice(["maildir", "mbox"]), default="maildir", show_default=True, help="Maildir (a tree Dovecot's LAYOUT=fs and mox import read) or mbox (one mboxrd file per mailbox).")
@click.option("--owner", metavar="USER", help="Give every exported file to USER (root only; default: the user running mailbak).")
@output_options
def export(path: Path, out: Path, account: str, mailboxes: tuple[str, ...], recursive: bool, since: str | None, before: str | None, fmt: str, owner: str | None, json_output, quiet, verbose) -> None:
    """Export an ACCOUNT's mail from PATH into OUT (new or empty) as Maildir or mbox.

    \b
    PATH is a backup, a snapshot of a repository, or a live store (read in one
    read transaction while the server runs). Maildir: OUT/Archive/2024/cur/...,
    one maildir per mailbox mirroring the hierarchy, flags in the ":2," suffix,
    keywords in each maildir's dovecot-keywords, file names starting with the
    received time, message bytes unchanged; Dovecot reads it with
    "mail_location = maildir:OUT:LAYOUT=fs:UTF-8:INBOX=OUT/Inbox", mox with
    "mox import maildir". mbox: OUT/Archive/2024.mbox, mboxrd quoting, flags as
    Status/X-Status/X-Keywords headers. Mailbox names that are not safe as file
    names (".", "..", leading ".", control characters, "%") are written
    percent-escaped (docs/RECOVERY.md); nothing is ever written outside OUT.

    \b
    Files are the running user's (or USER's, with --owner) and private (0600,
    directories 0700). Exit status: 0 exported, 1 some message could not be
    read (each named; the rest is exported), 2 bad usage or input (unknown
    account or mailbox, OUT not empty: nothing written), 130 interrupted (OUT
    is then incomplete).
    """
    from mailbak.catalog import Selection
    from mailbak.exporter import Export
    from mailbak.mailformat import MailFormat
    from mailbak.report import make_reporter

    def job(reporter: Reporter) -> Job:
        selection = Selection.of(mailboxes, recursive, since, before)
        return Export(path, out, account=account, selection=selection, fmt=MailFormat(fmt), owner=owner, reporter=reporter, verbose=verbose)

    run_command(Export, out, make_reporter(json_output=json_output, quiet=quiet, verbose=verbose), job)


@main.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--messages", "-n", type=click.IntRange(0), required=True, help="Messages over all accounts.")
@click.option("--accounts", "-a", type=click.IntRange(1), required=True, help="Accounts (sizes vary like real users').")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same store.")
@click.option("--median-size", type=click.IntRange(256, 1 << 20), default=4096, show_default=True, help="Median message size in bytes (lognormal, capped at 1 MiB).")
@jobs_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
def gen(store: Path, messages: int, accounts: int, seed: int, median_size: int, jobs, quiet: bool) -> None:
    """Generate a realistic store for tests, demos and benchmarks.

    Deterministic for a seed. Refuses a STORE that exists and is not empty (exit 2).
    """
    from mailbak.demo import generate_with_report
    from mailbak.errors import Interrupted
    from mailbak.runner import install_signal_handlers

    if store.exists() and (not store.is_dir() or any(store.iterdir())):
        click.echo(f"mailbak: error: {store}: exists and is not an empty directory", err=True)
        sys.exit(EXIT_USAGE)
    install_signal_handlers()
    try:
        generate_with_report(store, messages=messages, accounts=accounts, seed=seed, median_size=median_size, jobs=jobs or default_jobs(), quiet=quiet)
    except Interrupted as e:
        click.echo(f"mailbak: interrupted ({e}); {store} is incomplete", err=True)
        sys.exit(EXIT_INTERRUPTED)


@main.command()
@click.argument("directory", required=False, type=click.Path(path_type=Path))
@click.option("--messages", "-n", type=click.IntRange(0), default=20_000, show_default=True, help="Messages in the sample store.")
@click.option("--accounts", "-a", type=click.IntRange(1), default=12, show_default=True, help="Accounts in the sample store.")
@jobs_option
def demo(directory: Path | None, messages: int, accounts: int, jobs) -> None:
    """Generate a sample store, then back it up, verify and restore it.

    Works in DIRECTORY (new or empty) or in a temporary directory that is removed afterwards.
    """
    from mailbak.demo import run_demo

    if directory is not None and directory.exists() and any(directory.iterdir()):
        click.echo(f"mailbak: error: {directory}: not empty", err=True)
        sys.exit(EXIT_USAGE)
    if directory is None:
        with tempfile.TemporaryDirectory(prefix="mailbak-demo-") as tmp:
            status = run_demo(Path(tmp), messages=messages, accounts=accounts, jobs=jobs or default_jobs(), keep=False)
        sys.exit(status)
    directory.mkdir(parents=True, exist_ok=True)
    sys.exit(run_demo(directory, messages=messages, accounts=accounts, jobs=jobs or default_jobs(), keep=True))


@main.command()
@click.option("--print", "print_unit", metavar="FILE", help="Print one shipped file (e.g. mailbak-backup@.service), ready to copy to /etc/systemd/system/.")
@click.option("--dir", "show_dir", is_flag=True, help="Print the directory the files are installed in.")
def systemd(print_unit: str | None, show_dir: bool) -> None:
    """Show the systemd units shipped with mailbak (docs/OPERATIONS.md).

    \b
    mailbak-backup@.service  one backup; settings in /etc/mailbak/INSTANCE.env
    mailbak-backup@.timer    its daily schedule
    example.env              an example settings file

    Without options, lists the files and where they are installed. --print
    writes the absolute path of this mailbak into the unit, so that systemd
    finds it in a virtualenv too.
    """
    from mailbak import systemd_units

    if show_dir:
        click.echo(systemd_units.UNIT_DIR)
        return
    if print_unit is None:
        for name in systemd_units.names():
            click.echo(name)
        click.echo(f"(installed in {systemd_units.UNIT_DIR}; print one with: mailbak systemd --print NAME)")
        return
    try:
        text = systemd_units.render(print_unit)
    except KeyError:
        click.echo(f"mailbak: error: no shipped file {print_unit!r} (one of: {', '.join(systemd_units.names())})", err=True)
        sys.exit(EXIT_USAGE)
    click.echo(text, nl=False)


# Off-site copies through restic (docs/OFFSITE.md) ----------------------------------------------


@main.group()
def offsite() -> None:
    """Off-site copies of a repository's snapshots, made by restic.

    \b
    The restic repository is configured as restic users do it: RESTIC_REPOSITORY,
    RESTIC_PASSWORD_FILE or RESTIC_PASSWORD_COMMAND, AWS_* for S3 (or
    --restic-repo and --password-file). mailbak stores no secret and never puts
    one on a command line or in its output. Create the restic repository once
    with `restic init`. docs/OFFSITE.md shows the routine.

    \b
    Exit status: 0 ok, 1 failed (restic failed, the restored backup does not
    verify clean, or check found a file missing or different off-site), 2 bad
    usage or input (restic missing included), 130 interrupted.
    """


@offsite.command("push")
@click.argument("repo", type=click.Path(path_type=Path))
@click.argument("snapshot", required=False)
@restic_options
@output_options
@monitor_options
def offsite_push(repo: Path, snapshot: str | None, restic_repo, password_file, restic_opts, json_output, quiet, verbose, metrics_file, ping_url) -> None:
    """Push SNAPSHOT of REPO (default: the newest complete one) off-site.

    \b
    Runs `restic backup` from inside the snapshot directory, against the
    restic snapshot of the previous push (--parent, found by restic's tags
    mailbak, mailbak-repo=..., mailbak-snapshot=NAME), with --ignore-ctime:
    only what changed is read and sent. A snapshot already off-site is not
    pushed again; only complete snapshots are pushed. Holds REPO's lock
    shared, so that prune cannot remove the snapshot meanwhile.
    """
    from mailbak import offsite as off
    from mailbak.report import make_reporter
    from mailbak.restic import ResticConfig

    config = ResticConfig(restic_repo, password_file, tuple(restic_opts))
    run_command(off.Push, repo, make_reporter(json_output=json_output, quiet=quiet, verbose=verbose), lambda reporter: off.Push(repo, snapshot, config, reporter), metrics_file=metrics_file, ping_url=ping_url)


@offsite.command("list")
@click.argument("repo", type=click.Path(path_type=Path))
@restic_options
@click.option("--json", "json_output", is_flag=True, help="One JSON object per snapshot on stdout.")
def offsite_list(repo: Path, restic_repo, password_file, restic_opts, json_output) -> None:
    """Show, per snapshot of REPO, whether and when it is off-site.

    Off-site copies whose local snapshot is gone (pruned) are listed too, with
    status "-" (they can still be restored with `mailbak offsite restore`).
    """
    import json as json_mod

    from mailbak import offsite as off
    from mailbak.report import Reporter, rfc3339
    from mailbak.restic import ResticConfig

    config = ResticConfig(restic_repo, password_file, tuple(restic_opts))

    def show(job: off.Listing) -> None:
        for e in job.entries:
            if json_output:
                click.echo(json_mod.dumps({"message_type": "snapshot", **e.as_json()}))
                continue
            where = ", ".join(f"{s.short_id} (pushed {rfc3339(s.pushed.timestamp()) if s.pushed else '?'})" for s in e.offsite) or "not off-site"
            click.echo(f"{e.name}  {e.status or '-':<10}  {where}")

    run_command(off.Listing, repo, Reporter(), lambda _: off.Listing(repo, config), show=show)


@offsite.command("check")
@click.argument("repo", type=click.Path(path_type=Path))
@click.argument("snapshot", required=False)
@restic_options
@output_options
def offsite_check(repo: Path, snapshot: str | None, restic_repo, password_file, restic_opts, json_output, quiet, verbose) -> None:
    """Compare SNAPSHOT of REPO (default: the newest one off-site) with its off-site copy.

    \b
    Every file's recorded SHA-256 is compared with the content blob ID of the
    same path in the restic snapshot (restic's trees and index only: no file
    content is downloaded). A file under 512 KiB is one restic blob whose ID
    is its SHA-256; a larger one (several blobs) is compared by size only,
    and counted as such. Every file missing or different off-site is named.
    Exit status: 0 all match, 1 a file missing or different off-site, 2 bad
    input (a snapshot not pushed, or made before digests were recorded).
    """
    from mailbak import offsite as off
    from mailbak.report import make_reporter
    from mailbak.restic import ResticConfig

    config = ResticConfig(restic_repo, password_file, tuple(restic_opts))
    run_command(off.OffsiteCheck, repo, make_reporter(json_output=json_output, quiet=quiet, verbose=verbose), lambda reporter: off.OffsiteCheck(repo, snapshot, config, reporter))


@offsite.command("restore")
@click.argument("restic_snapshot")
@click.argument("target", type=click.Path(path_type=Path))
@restic_options
@jobs_option
@output_options
def offsite_restore(restic_snapshot: str, target: Path, restic_repo, password_file, restic_opts, jobs, json_output, quiet, verbose) -> None:
    """Restore an off-site snapshot into TARGET (new or empty) and verify it.

    \b
    RESTIC_SNAPSHOT is a restic snapshot ID (or a prefix), a local snapshot's
    name (its pushed copy), or "latest" (the newest mailbak pushed). What comes
    back is a mailbak backup: `mailbak restore TARGET STORE` puts it back in
    service. Exit status 1 when restic fails (TARGET is then incomplete) or
    when the restored backup does not verify clean.
    """
    from mailbak import offsite as off
    from mailbak.report import make_reporter
    from mailbak.restic import ResticConfig

    config = ResticConfig(restic_repo, password_file, tuple(restic_opts))

    def job(reporter: Reporter) -> Job:
        return off.OffsiteRestore(restic_snapshot, target, config, reporter, jobs=jobs or default_jobs(), verbose=verbose)

    run_command(off.OffsiteRestore, target, make_reporter(json_output=json_output, quiet=quiet, verbose=verbose), job)


@offsite.command("prune")
@click.argument("repo", type=click.Path(path_type=Path))
@keep_options
@click.option("--dry-run", "-n", is_flag=True, help="Say what would be removed; remove nothing.")
@restic_options
@output_options
def offsite_prune(repo: Path, dry_run, restic_repo, password_file, restic_opts, json_output, quiet, verbose, **keep) -> None:
    """Thin out REPO's off-site copies with the keep rules of `mailbak prune`.

    \b
    Runs `restic forget --tag mailbak,mailbak-repo=... --group-by '' --keep-...
    --prune`: the same rules as `mailbak prune` (restic's semantics; weeks in
    --keep-within are passed as days, "unlimited" as a very large count), over
    the off-site copies of REPO only, then removes their unused data.
    """
    from mailbak import offsite as off
    from mailbak.pruner import policy_from_options
    from mailbak.report import make_reporter
    from mailbak.restic import ResticConfig

    def job(reporter: Reporter) -> Job:
        policy = policy_from_options(**keep)  # raises UsageError: exit status 2
        return off.OffsitePrune(repo, policy, ResticConfig(restic_repo, password_file, tuple(restic_opts)), reporter, dry_run=dry_run)

    run_command(off.OffsitePrune, repo, make_reporter(json_output=json_output, quiet=quiet, verbose=verbose), job)

"""The ``mailbak`` command line: one click command per verb, each a thin shell around its phase
module. Exit statuses (docs/BACKUP.md, docs/VERIFY.md): 0 ok, 1 failed or problems found, 2 bad
usage or input, 130 interrupted. Scripts must treat any other status as failure.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import click

from mailbak import __version__

#: Exit statuses.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def default_jobs() -> int:
    """Worker threads for file work: one per core, at least two. Measured on 2 cores at 300k
    messages (BENCHMARKS.md, jobs sweep): 2 threads are 1.8x faster than 1, warm or cold page
    cache, and 3 to 8 threads are no faster than 2 (workers already sit in different
    directories, so there is no lock wait for more threads to hide)."""
    return max(2, os.cpu_count() or 1)


def jobs_option(f):
    return click.option("--jobs", "-j", type=click.IntRange(1, 256), default=None, help="Worker threads for file work (default: one per core, at least 2).")(f)


def output_options(f):
    f = click.option("--json", "json_output", is_flag=True, help="JSON Lines on stdout (status, warning, error, summary); nothing else on stdout.")(f)
    f = click.option("--quiet", "-q", is_flag=True, help="Print only errors (and the summary when something failed).")(f)
    f = click.option("--verbose", "-v", is_flag=True, help="Also print a line per file.")(f)
    return f


def fail_usage(reporter, text: str) -> NoReturn:
    """Bad usage or input: one clear message, exit status 2."""
    reporter.usage_error(text)
    reporter.close()
    click.echo(f"mailbak: error: {text}", err=True)
    sys.exit(EXIT_USAGE)


def stop_interrupted(reporter, e: BaseException, what: str) -> NoReturn:
    """Ctrl-C or SIGTERM: one line, exit status 130, whatever the command was doing."""
    import signal

    # A second signal while stopping must not turn this into a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    reporter.close()
    click.echo(f"mailbak: interrupted ({e}); {what}", err=True)
    sys.exit(EXIT_INTERRUPTED)


def execute(job, reporter, *, title: str, target: Path, left_behind: str | Callable[[], str]) -> NoReturn:
    """Runs a phase object (Backup, Verify, Restore) through the API (``mailbak.api.run_job``:
    ``check()``, ``run()``, the summary) and maps every outcome to its exit status.
    ``left_behind`` tells the user what an aborted run leaves (a function when that is only
    known once the job has started: a backup into a repository names its new snapshot)."""
    from mailbak.api import JobStage, run_job
    from mailbak.errors import DestinationFull, Interrupted, UsageError

    stage = JobStage()
    from mailbak.repository import RepositoryBusy

    try:
        facts = run_job(job, reporter, title=title, target=target, stage=stage)
    except UsageError as e:
        fail_usage(reporter, str(e))
    except RepositoryBusy as e:
        reporter.close()
        click.echo(f"mailbak: error: {e}", err=True)
        sys.exit(EXIT_FAILED)
    except Interrupted as e:
        if callable(left_behind):
            left_behind = left_behind()
        if stage.stage == "check" and not os.path.lexists(target):
            # check() creates the target last; before that, there is nothing to clean up.
            left_behind = "nothing was written"
        elif stage.stage == "summary":
            left_behind = f"the {title} itself finished ({stage.status}); only its summary was cut short"
        stop_interrupted(reporter, e, left_behind)
    except DestinationFull as e:
        if callable(left_behind):
            left_behind = left_behind()
        reporter.close()
        click.echo(f"mailbak: error: {e.what}: {e}; {left_behind}", err=True)
        sys.exit(EXIT_FAILED)
    except OSError as e:
        if callable(left_behind):
            left_behind = left_behind()
        reporter.close()
        where = f" {e.filename}:" if e.filename else ""
        click.echo(f"mailbak: error:{where} {e.strerror or e}; {left_behind}", err=True)
        sys.exit(EXIT_FAILED)
    sys.exit(EXIT_OK if facts["status"] in ("ok", "clean") else EXIT_FAILED)


def check_metrics_file(ctx, param, value: Path | None) -> Path | None:
    if value is not None and not value.parent.is_dir():
        raise click.BadParameter(f"{value.parent}: no such directory", ctx=ctx, param=param)
    return value


def check_ping_url(ctx, param, value: str | None) -> str | None:
    from mailbak.monitor import check_ping_url as problem

    why = problem(value) if value is not None else None
    if why:
        raise click.BadParameter(why, ctx=ctx, param=param)
    return value


def start_monitor(monitor, reporter):
    """``monitor.start(reporter)``: the start ping. SIGINT or SIGTERM during it stops the run
    before it began, as any interrupt does (one line, exit status 130)."""
    from mailbak.errors import Interrupted

    try:
        return monitor.start(reporter)
    except Interrupted as e:
        stop_interrupted(reporter, e, "the run had not begun: nothing was written")


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
@jobs_option
@output_options
@monitor_options
def backup(store: Path, dest: Path, config_dir, data_dir, link_dest, jobs, json_output, quiet, verbose, metrics_file, ping_url) -> None:
    """Back up STORE into DEST while the server runs.

    \b
    DEST is a new or empty directory, or a repository (mailbak init): then
    the backup is a new snapshot REPO/<UTC start time>, and every file that
    is unchanged since the newest complete snapshot is hardlinked from it
    (reused) instead of copied. Backups and prunes of one repository never
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
    from mailbak.api import backup_job
    from mailbak.monitor import Monitor
    from mailbak.report import make_reporter
    from mailbak.repository import is_repository
    from mailbak.runner import install_signal_handlers

    install_signal_handlers()
    with Monitor("backup", store, metrics_file=metrics_file, ping_url=ping_url) as monitor:
        reporter = start_monitor(monitor, make_reporter(json_output=json_output, quiet=quiet, verbose=verbose))
        b = monitor.job = backup_job(store, dest, config=config_dir, data=data_dir, jobs=jobs or default_jobs(), reporter=reporter, verbose=verbose, link_dest=link_dest)

        def left_behind() -> str:
            if b.repository is None and is_repository(dest):
                return "no snapshot was begun"  # stopped while waiting for the repository
            return f"{b.target} is an incomplete backup (its manifest says running)"

        execute(b, reporter, title="backup", target=dest, left_behind=left_behind)


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--fix", is_flag=True, help="Move unrecognized files out of message directories to data/moved/ (never deletes).")
@jobs_option
@output_options
@monitor_options
def verify(path: Path, fix: bool, jobs, json_output, quiet, verbose, metrics_file, ping_url) -> None:
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
    Writes nothing (nothing at all in a backup) unless --fix, which moves
    unrecognized files to data/moved/ keeping their path. Exit status: 0 clean,
    1 problems found (incomplete, failed, damaged, or not what its manifest
    says), 2 bad usage or input, 130 interrupted.
    """
    from mailbak.api import verify_job
    from mailbak.monitor import Monitor
    from mailbak.report import make_reporter
    from mailbak.runner import install_signal_handlers

    install_signal_handlers()
    with Monitor("verify", path, metrics_file=metrics_file, ping_url=ping_url) as monitor:
        reporter = start_monitor(monitor, make_reporter(json_output=json_output, quiet=quiet, verbose=verbose))
        v = monitor.job = verify_job(path, fix=fix, jobs=jobs or default_jobs(), reporter=reporter, verbose=verbose)
        execute(v, reporter, title="verify", target=path, left_behind="verification incomplete")


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
    (docs/REPOSITORY.md). REPO becomes root's, mode 0700. Exit status: 0
    made, 2 bad usage (REPO exists and is not an empty directory, or lies below
    a directory another user can change; nothing written).
    """
    import json

    from mailbak import repository
    from mailbak.errors import UsageError

    try:
        r = repository.init(repo)
    except UsageError as e:
        click.echo(f"mailbak: error: {e}", err=True)
        sys.exit(EXIT_USAGE)
    if json_output:
        click.echo(json.dumps({"message_type": "summary", "status": "ok", "repository": str(repo), **r.marker}))
    elif not quiet:
        click.echo(f"repository created: {repo}\nback up into it with: mailbak backup STORE {repo}")


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
    from mailbak.errors import UsageError

    try:
        r = repository.Repository.open(repo)
        infos = r.snapshots()
        trash = r.trash_entries()
    except UsageError as e:
        click.echo(f"mailbak: error: {e}", err=True)
        sys.exit(EXIT_USAGE)
    if json_output:
        for info in infos:
            click.echo(json.dumps({"message_type": "snapshot", **info.as_json()}, ensure_ascii=False))
        if trash:
            click.echo(json.dumps({"message_type": "trash", "pending": trash}, ensure_ascii=False))
        return
    from mailbak.report import format_table

    click.echo(format_table(repository.snapshots_table(infos)), nl=False)
    if trash:
        click.echo(repository.trash_line(r, trash))


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
@jobs_option
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
    survives a crash), then deleted in parallel at low priority. A prune that
    was stopped leaves only trash, which the next prune deletes first.
    Exit status: 0 ok, 1 something could not be deleted (it stays in the
    trash) or the repository is busy with --no-wait, 2 bad usage (no rule,
    bad value, not a repository), 130 interrupted.
    """
    from mailbak.monitor import Monitor
    from mailbak.pruner import Prune, policy_from_options
    from mailbak.report import make_reporter
    from mailbak.runner import install_signal_handlers

    install_signal_handlers()
    with Monitor("prune", repo, metrics_file=metrics_file, ping_url=ping_url) as monitor:
        reporter = start_monitor(monitor, make_reporter(json_output=json_output, quiet=quiet, verbose=verbose))
        from mailbak.errors import UsageError

        try:
            policy = policy_from_options(**keep)
        except UsageError as e:
            fail_usage(reporter, str(e))
        p = monitor.job = Prune(repo, policy, dry_run=dry_run, wait=not no_wait, nice=not no_nice, jobs=jobs or default_jobs(), reporter=reporter, verbose=verbose)
        execute(p, reporter, title="prune (dry run)" if dry_run else "prune", target=repo, left_behind=lambda: f"snapshots moved to {repo}/.trash are deleted by the next prune" if p.moved else "no snapshot was removed")


@main.command()
@click.argument("backup_dir", metavar="BACKUP", type=click.Path(path_type=Path))
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--copy", "force_copy", is_flag=True, help="Copy message files instead of hardlinking them, so the restored store shares no inode with the backup.")
@click.option("--force", is_flag=True, help="Restore even if the backup's manifest is missing or says failed.")
@jobs_option
@output_options
def restore(backup_dir: Path, store: Path, force_copy: bool, force: bool, jobs, json_output, quiet, verbose) -> None:
    """Restore BACKUP into STORE (new or empty), then verify the result.

    \b
    Databases are written as fresh LMDB files (no lock files) and all other
    files are copied; message files are hardlinked when BACKUP and STORE share
    a file system. Use --copy when the server might modify message files in
    place: with hardlinks that would change the backup too. Permission bits and
    symlinks are kept; nothing outside STORE is ever written.

    \b
    Refuses a backup without an "ok" manifest unless --force. Exit status: 0
    restored and verified clean, 1 restored with problems, 2 bad usage or input
    (nothing written), 130 interrupted (STORE is then incomplete).
    """
    from mailbak.api import restore_job
    from mailbak.report import make_reporter
    from mailbak.runner import install_signal_handlers

    install_signal_handlers()
    reporter = make_reporter(json_output=json_output, quiet=quiet, verbose=verbose)
    r = restore_job(backup_dir, store, force_copy=force_copy, force=force, jobs=jobs or default_jobs(), reporter=reporter, verbose=verbose)
    execute(r, reporter, title="restore", target=store, left_behind=f"{store} is incomplete; delete it and restore again")


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


def restic_options(f):
    """Where the restic repository is: restic's own environment, or these options (passed to
    restic through its environment, never on its command line)."""
    f = click.option("--restic-option", "-o", "restic_opts", multiple=True, metavar="KEY=VALUE", help="An extended option for restic (restic -o), e.g. sftp.command=... or s3.storage-class=...; repeatable.")(f)
    f = click.option("--password-file", type=click.Path(path_type=Path, dir_okay=False), help="File holding the restic repository's password (default: RESTIC_PASSWORD_FILE or RESTIC_PASSWORD_COMMAND).")(f)
    f = click.option("--restic-repo", metavar="REPOSITORY", help="The restic repository (default: RESTIC_REPOSITORY), e.g. s3:https://host/bucket/mail, sftp:backup@host:/srv/restic/mail, /mnt/usb/restic.")(f)
    return f


def fail_run(reporter, code: str, text: str) -> NoReturn:
    """A failed run: one error line, exit status 1. The error also goes through the reporter,
    so that it is counted and reaches --json output and a monitor (the ping's body, the metrics
    file's error count); a display for people does not repeat it."""
    reporter.error(code, None, text, final=True)
    reporter.close()
    click.echo(f"mailbak: error: {text}", err=True)
    sys.exit(EXIT_FAILED)


def offsite_run(reporter, fn, *, left_behind: str) -> NoReturn:
    """Runs an offsite command's function and maps its outcome to the exit status: 0 ok or
    clean, 1 failed (restic failed, problems found), 2 bad usage (restic missing included),
    130 interrupted."""
    from mailbak.errors import DestinationFull, Interrupted, UsageError
    from mailbak.restic import ResticError

    try:
        status = fn()
    except UsageError as e:
        fail_usage(reporter, str(e))
    except Interrupted as e:
        stop_interrupted(reporter, e, left_behind)
    except ResticError as e:
        fail_run(reporter, "restic", str(e))
    except DestinationFull as e:
        fail_run(reporter, "no_space", f"{e.what}: {e}; {left_behind}")
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        fail_run(reporter, "os_error", f"{where}{e.strerror or e}; {left_behind}")
    reporter.close()
    sys.exit(EXIT_OK if status in ("ok", "clean") else EXIT_FAILED)


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
    Exit status: 0 ok, 1 failed (restic failed, or the restored backup does not
    verify clean), 2 bad usage or input (restic missing included), 130
    interrupted.
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
    from mailbak.monitor import Monitor
    from mailbak.report import make_reporter
    from mailbak.restic import ResticConfig
    from mailbak.runner import install_signal_handlers

    install_signal_handlers()
    config = ResticConfig(restic_repo, password_file, tuple(restic_opts))
    with Monitor("offsite-push", repo, metrics_file=metrics_file, ping_url=ping_url) as monitor:
        reporter = start_monitor(monitor, make_reporter(json_output=json_output, quiet=quiet, verbose=verbose))
        from mailbak.monitor import Outcome

        def push() -> str:
            result = off.push(repo, snapshot, config, reporter)
            monitor.job = Outcome(result.facts())  # for --metrics-file
            return result.status

        offsite_run(reporter, push, left_behind="restic was stopped; nothing was stored off-site, nothing local changed")


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
    from mailbak.runner import install_signal_handlers

    install_signal_handlers()
    config = ResticConfig(restic_repo, password_file, tuple(restic_opts))
    reporter = Reporter()

    def show() -> str:
        entries = off.listing(repo, config)
        for e in entries:
            if json_output:
                click.echo(json_mod.dumps({"message_type": "snapshot", **e.as_json()}))
                continue
            where = ", ".join(f"{s.short_id} (pushed {rfc3339(s.pushed.timestamp()) if s.pushed else '?'})" for s in e.offsite) or "not off-site"
            click.echo(f"{e.name}  {e.status or '-':<10}  {where}")
        return "ok"

    offsite_run(reporter, show, left_behind="nothing was changed")


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
    from mailbak.runner import install_signal_handlers

    install_signal_handlers()
    config = ResticConfig(restic_repo, password_file, tuple(restic_opts))
    reporter = make_reporter(json_output=json_output, quiet=quiet, verbose=verbose)
    offsite_run(reporter, lambda: off.restore(restic_snapshot, target, config, reporter, jobs=jobs or default_jobs(), verbose=verbose).status, left_behind=f"{target} is incomplete; delete it and restore again")


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
    from mailbak.errors import UsageError
    from mailbak.pruner import policy_from_options
    from mailbak.report import make_reporter
    from mailbak.restic import ResticConfig
    from mailbak.runner import install_signal_handlers

    install_signal_handlers()
    reporter = make_reporter(json_output=json_output, quiet=quiet, verbose=verbose)
    try:
        policy = policy_from_options(**keep)
    except UsageError as e:
        fail_usage(reporter, str(e))
    config = ResticConfig(restic_repo, password_file, tuple(restic_opts))
    offsite_run(reporter, lambda: off.prune(repo, policy, config, reporter, dry_run=dry_run).status, left_behind="restic was stopped; run the prune again")

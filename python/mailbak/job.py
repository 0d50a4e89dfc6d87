"""Jobs and the one runner: every command (backup, verify, restore, prune, init, snapshots, the
off-site verbs) is a :class:`Job`, and :func:`run` is the only code that drives one.

A job's phases, in the order the runner calls them:

1. ``check()``: reads and refuses; raises UsageError (exit status 2) before anything is written.
2. ``run()``: the work; returns the run's :class:`Status`.
3. ``facts(status)``: the summary's facts (the JSON summary, a backup's manifest, the API's
   result); ``headline(status)`` and ``table()`` are its title and table for people.
4. ``close()``: always, whatever happened: locks and descriptors the job holds end with it,
   also in a long-lived process calling the API.

Around them: :func:`run` (exceptions go to the caller), :func:`run_api` (the Python API's:
bad usage also reaches ``on_event``), :func:`execute` (the command line's: every exception
becomes its one ``mailbak: error:`` line and its exit status, the same for every command),
:func:`run_within` (a job as a step of another: a restore's final verify). The monitor
(monitor.py) asks the job for its metrics (:meth:`Job.metrics`). Outcomes and exit statuses
are named in status.py.

Not here: signal handling (runner.py installs it; Ctrl-C arrives as Interrupted) and the
reporters (report.py).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

from mailbak.errors import DestinationFull, Interrupted, RepositoryBusy, ResticError, UsageError
from mailbak.report import Reporter
from mailbak.status import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, Status


def default_jobs() -> int:
    """Worker threads for file work: one per core, at least two. Measured on 2 cores at 300k
    messages (BENCHMARKS.md, jobs sweep): 2 threads are 1.8x faster than 1, warm or cold page
    cache, and 3 to 8 threads are no faster than 2 (workers already sit in different
    directories, so there is no lock wait for more threads to hide)."""
    return max(2, os.cpu_count() or 1)


@dataclass
class Metrics:
    """What a run shows in the metrics file besides its status, time and counts of warnings
    and errors (monitor.py renders it)."""

    #: ``mailbak_files`` by kind: always every kind the job declares (0 when none).
    files: dict[str, int] = field(default_factory=dict)
    #: ``mailbak_bytes_copied``; None: the command does not report it.
    bytes_copied: int | None = None
    #: ``mailbak_snapshots`` by state (prune: kept, removed).
    snapshots: dict[str, int] = field(default_factory=dict)
    #: ``mailbak_bytes_read`` and ``mailbak_inodes_checked`` (check); None: not reported.
    bytes_read: int | None = None
    inodes_checked: int | None = None

    @classmethod
    def none(cls, kind: type[Job]) -> Metrics:
        """A run of ``kind`` that has no job or no facts (bad usage, stopped before it began)."""
        return cls(dict.fromkeys(kind.file_kinds, 0), 0 if kind.counts_bytes else None)


def files_from(kinds: tuple[str, ...], facts: dict[str, Any] | None, key: Callable[[str], str] = str) -> dict[str, int]:
    """``mailbak_files``: each kind's integer fact (named ``key(kind)``), 0 when absent."""
    files = dict.fromkeys(kinds, 0)
    for k in kinds:
        v = (facts or {}).get(key(k), 0)
        files[k] = v if isinstance(v, int) else 0
    return files


@dataclass
class Stage:
    """How far the runner got: "check", "run" or "summary", and the run's status once known
    (what an interrupted job leaves behind depends on it)."""

    stage: str = "check"
    status: Status | None = None


class Job(Protocol):
    """One command's run (see the module doc for the order of the phases)."""

    #: The command's name, as the metrics file labels it ("backup", "offsite-push").
    command: ClassVar[str]
    #: The kinds of ``mailbak_files`` the command reports (monitor.py: all of them, 0 when none).
    file_kinds: ClassVar[tuple[str, ...]]
    #: Whether the command reports ``mailbak_bytes_copied``.
    counts_bytes: ClassVar[bool]
    #: Whether the error that stops a run is also an error event (counted, in --json output):
    #: the off-site verbs' failures (restic's) are in no other event.
    reports_failure: ClassVar[bool]

    def check(self) -> None:
        """Reads and refuses: raises UsageError before anything is written."""
        ...

    def run(self) -> Status:
        """The work; the run's outcome."""
        ...

    def facts(self, status: str) -> dict[str, Any]:
        """The summary's facts (also of a run stopped early: the counts so far)."""
        ...

    def headline(self, status: Status) -> str:
        """The summary's title line."""
        ...

    def table(self) -> list[tuple[str, ...]] | None:
        """The summary's table for people (None: none)."""
        ...

    def close(self) -> None:
        """Releases what the job holds (locks, descriptors); called once the run is over,
        whatever happened, and harmless when called again."""
        ...

    def left_behind(self, stage: Stage | None) -> str:
        """What a run stopped early leaves, for the command's one error line; ``stage`` tells
        how far an interrupted run got (None: stopped by an error)."""
        ...

    def metrics(self, facts: dict[str, Any] | None) -> Metrics:
        """The run's metrics from its facts (None when there are none)."""
        ...


def interrupted_hint(stage: Stage | None, target: str | os.PathLike[str], title: str) -> str | None:
    """What an interrupt leaves when the runner's stage alone tells it: nothing, when it came
    during ``check()`` before the target existed (check() creates it last), and only a missing
    summary when it came during the summary. None otherwise (the job knows)."""
    if stage is None:
        return None
    if stage.stage == "check" and not os.path.lexists(target):
        return "nothing was written"
    if stage.stage == "summary":
        return f"the {title} itself finished ({stage.status}); only its summary was cut short"
    return None


# Running jobs ---------------------------------------------------------------------------------


def run(job: Job, reporter: Reporter, stage: Stage | None = None) -> dict[str, Any]:
    """Runs ``job``: ``check()``, ``run()``, the summary; ``close()`` in any case. Returns the
    summary facts. Raises whatever stops the run (UsageError, DestinationFull, OSError,
    Interrupted, an ``on_event`` error); ``stage``, when given, tells how far it got."""
    stage = stage or Stage()
    try:
        job.check()
        stage.stage = "run"
        stage.status = job.run()
        facts = job.facts(stage.status)
        stage.stage = "summary"
        reporter.summary(job.headline(stage.status), facts, job.table())
        return facts
    finally:
        job.close()


def run_within(job: Job) -> Status:
    """Runs ``job`` as a step of another job (restore's final verify): its ``check()`` and
    ``run()``, then ``close()``; the caller reports its facts and table in its own summary."""
    try:
        job.check()
        return job.run()
    finally:
        job.close()


J = TypeVar("J", bound=Job)


def run_api(make_job: Callable[[], J], reporter: Reporter) -> tuple[J, dict[str, Any]]:
    """Makes and runs a job for the Python API: bad usage (in making the job too) reaches the
    reporter (``on_event``) and is raised; the reporter is closed in any case."""
    try:
        job = make_job()
        return job, run(job, reporter)
    except UsageError as e:
        reporter.usage_error(str(e))
        raise
    finally:
        reporter.close()


def _say(text: str) -> None:
    """The command's one line on stderr (click's echo, as every other line of the CLI)."""
    import click

    click.echo(text, err=True)


def execute(make_job: Callable[[], Job], reporter: Reporter, *, on_job: Callable[[Job], None] | None = None) -> int:
    """Makes and runs a job for the command line; returns its exit status, after the one
    ``mailbak: error:`` (or ``interrupted``) line when it did not finish: 0 ok or clean, 1
    failed, problems found, a busy repository, a full destination, restic failing or any
    other OSError, 2 bad usage or input (restic missing included), 130 interrupted.
    ``on_job`` receives the job once made (the monitor's, for the metrics file)."""
    stage = Stage()
    job: Job | None = None

    def fail(code: str, text: str) -> int:
        if job is not None and job.reports_failure:
            reporter.error(code, None, text, final=True)
        reporter.close()
        _say(f"mailbak: error: {text}")
        return EXIT_FAILED

    def left(st: Stage | None) -> str:
        # Stopped while the job was being made: it had not begun.
        return job.left_behind(st) if job is not None else "nothing was written"

    try:
        job = make_job()
        if on_job is not None:
            on_job(job)
        facts = run(job, reporter, stage)
    except UsageError as e:
        reporter.usage_error(str(e))
        reporter.close()
        _say(f"mailbak: error: {e}")
        return EXIT_USAGE
    except Interrupted as e:
        # A second signal while stopping must not turn this into a traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        reporter.close()
        _say(f"mailbak: interrupted ({e}); {left(stage)}")
        return EXIT_INTERRUPTED
    except RepositoryBusy as e:
        return fail("busy", str(e))
    except ResticError as e:
        return fail("restic", str(e))
    except DestinationFull as e:
        return fail("no_space", f"{e.what}: {e}; {left(None)}")
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        return fail("os_error", f"{where}{e.strerror or e}; {left(None)}")
    reporter.close()
    return Status(facts["status"]).exit_status


def stop_before_start(reporter: Reporter, e: BaseException) -> int:
    """An interrupt before the run began (during the monitor's start ping)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    reporter.close()
    _say(f"mailbak: interrupted ({e}); the run had not begun: nothing was written")
    return EXIT_INTERRUPTED

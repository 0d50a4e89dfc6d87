"""Reporting: one stream of events and progress, rendered for a terminal, as plain lines, or as
JSON Lines. The phases (backup, verify, restore, gen) report through :class:`Reporter` only and
never import rich; this module is the only one that writes to the terminal.

Vocabulary (as mox's backup uses it): a *warning* leaves the result good; an *error* marks it
failed and the work goes on; *info* lines are per-file detail shown with ``--verbose``.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import repeat
from typing import IO, Any

from mailbak.status import Status
from mailbak.testpause import pause
from mailbak.text import escape_all, escape_path

#: Lines shown per event code on a terminal before further ones are only counted; every event
#: still goes to --json output and into the counts.
HUMAN_LINES_PER_CODE = 1000


def rfc3339(ts: float | None = None) -> str:
    """A UTC timestamp in RFC 3339 form, to the second."""
    dt = datetime.fromtimestamp(time.time() if ts is None else ts, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Event:
    """One located event."""

    severity: str  # "info", "warning" or "error"
    code: str
    path: bytes | None
    detail: str
    errno: int = 0
    #: The error that ends the run, which the command prints itself as its one ``mailbak:
    #: error:`` line: counted, in --json output and in the monitor's log like every error, but
    #: not repeated on a display for people.
    final: bool = False

    def line(self) -> str:
        """The event as one line for people: severity, escaped path, detail."""
        where = f"{escape_path(self.path)}: " if self.path is not None else ""
        return f"{self.severity}: {where}{self.detail}"

    def as_json(self) -> dict[str, Any]:
        """The event as a JSON Lines object (``message_type`` is its severity; ``path`` and
        ``errno`` only when set)."""
        d: dict[str, Any] = {"message_type": self.severity, "code": self.code, "cause": self.detail}
        if self.path is not None:
            d["path"] = escape_path(self.path)
        if self.errno:
            d["errno"] = self.errno
        return d


@dataclass
class Counts:
    """Warnings and errors seen so far."""

    warnings: int = 0
    errors: int = 0


class Reporter:
    """Receives everything a command has to say. This base class only counts."""

    def __init__(self) -> None:
        self.counts = Counts()
        self.started = time.monotonic()
        self.phase_name = ""
        self.phase_started = self.started

    def phase(self, name: str, total: int | None = None) -> None:
        """A new phase begins; ``total`` units of work are expected when known."""
        self.phase_name = name
        self.phase_started = time.monotonic()

    def advance(self, done: int, total: int | None) -> None:
        """Progress within the phase (called a few times a second)."""

    def event(self, ev: Event) -> None:
        """A warning, error or per-file line."""
        if ev.severity == "warning":
            self.counts.warnings += 1
        elif ev.severity == "error":
            self.counts.errors += 1

    def warn(self, code: str, path: bytes | str | None, detail: str) -> None:
        """Reports a warning (the result stays good)."""
        self.event(Event("warning", code, _b(path), detail))

    def error(self, code: str, path: bytes | str | None, detail: str, *, final: bool = False) -> None:
        """Reports an error (the result is failed, the work goes on); ``final`` marks the one that
        ends the run, which the command prints itself."""
        self.event(Event("error", code, _b(path), detail, final=final))

    def message(self, text: str) -> None:
        """A line of human prose (nothing in JSON mode)."""

    def usage_error(self, text: str) -> None:
        """Bad usage or input; the command prints it on stderr and exits 2."""

    def summary(self, title: str, facts: dict[str, Any], table: list[tuple[str, ...]] | None = None) -> None:
        """The end of the run: facts for JSON, a table for people."""

    def close(self) -> None:
        """Stops any live display."""

    def eta(self, done: int, total: int | None) -> tuple[float, float | None, float]:
        """(elapsed seconds in phase, seconds remaining or None, rate per second)."""
        elapsed = max(time.monotonic() - self.phase_started, 1e-9)
        rate = done / elapsed
        remaining = (total - done) / rate if total and rate > 0 and done <= total else None
        return elapsed, remaining, rate


def _escaped(table: list[tuple[str, ...]] | None) -> list[tuple[str, ...]] | None:
    """A summary table with every cell escaped like a path: cells hold account names, which
    must not forge lines or move the cursor on a terminal."""
    return None if table is None else [tuple(escape_path(str(c)) for c in row) for row in table]


def format_table(table: list[tuple[str, ...]] | None) -> str:
    """A table as plain text, columns aligned, each line indented by two spaces; cells escaped."""
    return "".join(table_chunks(table))


def table_chunks(table: list[tuple[str, ...]] | None, rows: int = 10_000) -> Iterator[str]:
    """:func:`format_table`'s text in pieces of ``rows`` lines, for a listing printed as it is
    formatted (ls of 100,000 messages: the whole text and its padded cells at once were 90 MB).
    Built column by column with C-level maps: such a listing takes 0.3 s, not 1."""
    if not table:
        return
    columns = [escape_all(list(map(str, col))) for col in zip(*table, strict=True)]
    widths = [max(map(len, col)) for col in columns]
    for at in range(0, len(table), rows):
        padded = [map(str.ljust, col[at : at + rows], repeat(w)) for col, w in zip(columns, widths, strict=True)]
        # "  ".join of ("", cells...) is the line with its two-space indent.
        yield "\n".join(map(str.rstrip, map("  ".join, zip(repeat(""), *padded)))) + "\n"


#: Columns of summary tables shown left-aligned (names and words; numbers are right-aligned).
LEFT_COLUMNS = frozenset({"", "area", "check", "snapshot", "status", "started", "action", "reasons"})


def _b(path: bytes | str | None) -> bytes | None:
    if path is None or isinstance(path, bytes):
        return path
    return path.encode("utf-8", "surrogateescape")


class PlainReporter(Reporter):
    """Plain lines on stderr (no terminal), a text summary on stdout."""

    def __init__(self, *, quiet: bool = False, verbose: bool = False, err: IO[str] | None = None, out: IO[str] | None = None):
        super().__init__()
        self.quiet, self.verbose = quiet, verbose
        self.err = err or sys.stderr
        self.out = out or sys.stdout
        self._shown: Counter = Counter()
        self._last_status = 0.0

    def _wants(self, ev: Event) -> bool:
        if ev.final:
            return False  # the command prints it as its last line
        if ev.severity == "error":
            return True
        if self.quiet:
            return False
        return ev.severity == "warning" or self.verbose

    def event(self, ev: Event) -> None:
        """Counts the event and prints it: errors always, warnings unless --quiet, info lines only
        with --verbose, the final error never. Past HUMAN_LINES_PER_CODE warnings or errors of one
        code, the rest are only counted."""
        super().event(ev)
        if not self._wants(ev):
            return
        self._shown[ev.code] += 1
        if ev.severity != "info" and self._shown[ev.code] == HUMAN_LINES_PER_CODE + 1:
            self._print(f"note: further '{ev.code}' {ev.severity}s are counted but not shown (use --json for all)")
        if ev.severity == "info" or self._shown[ev.code] <= HUMAN_LINES_PER_CODE:
            self._print(ev.line())

    def _print(self, text: str) -> None:
        print(text, file=self.err, flush=True)

    def phase(self, name: str, total: int | None = None) -> None:
        """Prints the phase as a ``== name`` line (nothing with --quiet)."""
        super().phase(name, total)
        self._last_status = time.monotonic()
        if not self.quiet:
            self._print(f"== {name}" + (f" ({total} files)" if total else ""))

    def advance(self, done: int, total: int | None) -> None:
        """Prints a status line (files done, rate, time left) at most every 10 s (nothing with
        --quiet)."""
        # One status line every 10 s keeps logs of long cron runs readable.
        now = time.monotonic()
        if self.quiet or not self.phase_name or now - self._last_status < 10:
            return
        self._last_status = now
        elapsed, remaining, rate = self.eta(done, total)
        of = f"/{total}" if total else ""
        left = f", about {remaining:.0f}s left" if remaining is not None else ""
        self._print(f"   {self.phase_name}: {done}{of} files, {rate:.0f}/s{left}")

    def message(self, text: str) -> None:
        """Prints the line (nothing with --quiet)."""
        if not self.quiet:
            self._print(text)

    def summary(self, title: str, facts: dict[str, Any], table: list[tuple[str, ...]] | None = None) -> None:
        """Prints the title, the table and how many lines of each code were not shown on stdout;
        with --quiet, only for a run that did not end ok or clean."""
        if self.quiet and facts.get("status") in (Status.OK, Status.CLEAN):
            return
        hidden = {c: n - HUMAN_LINES_PER_CODE for c, n in self._shown.items() if n > HUMAN_LINES_PER_CODE}
        print(escape_path(title), file=self.out)
        pause("summary")
        print(format_table(table), end="", file=self.out)
        for code, n in sorted(hidden.items()):
            print(f"  ({n} more '{code}' lines not shown)", file=self.out)
        self.out.flush()


class ListingReporter(PlainReporter):
    """For a listing command (ls, find): warnings and errors as plain lines on stderr, and no
    summary, since the command prints the listing itself and nothing else on stdout."""

    def __init__(self, *, quiet: bool = False):
        super().__init__(quiet=quiet)

    def summary(self, title: str, facts: dict[str, Any], table: list[tuple[str, ...]] | None = None) -> None:
        """Nothing: the listing is the result."""


class RichReporter(PlainReporter):
    """A live progress bar per phase on a terminal (stderr), events above it, a table at the end."""

    def __init__(self, *, quiet: bool = False, verbose: bool = False):
        super().__init__(quiet=quiet, verbose=verbose)
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.console = Console(stderr=True)
        self.out_console = Console()
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
            disable=quiet,
        )
        self.task = None
        self.progress.start()

    def _print(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def phase(self, name: str, total: int | None = None) -> None:
        """Starts a progress bar for the phase, leaving the previous one where it stood (no
        ``== name`` line: the bar names the phase)."""
        Reporter.phase(self, name, total)
        if self.task is not None:
            self.progress.update(self.task, completed=self.progress.tasks[self.task].completed)
            self.progress.stop_task(self.task)
        self.task = self.progress.add_task(name, total=total or None, rate="")

    def advance(self, done: int, total: int | None) -> None:
        """Moves the phase's progress bar on and shows the rate."""
        if self.task is None:
            return
        _, _, rate = self.eta(done, total)
        self.progress.update(self.task, completed=done, total=total or None, rate=f"{rate:,.0f} files/s")

    def summary(self, title: str, facts: dict[str, Any], table: list[tuple[str, ...]] | None = None) -> None:
        """Stops the progress display, then shows the title and table as a rich table on stdout, and
        how many lines of each code were not shown; with --quiet, only for a run that did not end ok
        or clean."""
        self.close()
        if self.quiet and facts.get("status") in (Status.OK, Status.CLEAN):
            return
        from rich.table import Table
        from rich.text import Text

        # Text, not str: rich would read brackets in a name as markup.
        t = Table(title=Text(escape_path(title)), show_header=bool(table), title_justify="left")
        table = _escaped(table)
        if table:
            for h in table[0]:
                t.add_column(Text(h), justify="left" if h in LEFT_COLUMNS else "right")
            for row in table[1:]:
                t.add_row(*(Text(c) for c in row))
        pause("summary")
        self.out_console.print(t)
        for code, n in sorted(self._shown.items()):
            if n > HUMAN_LINES_PER_CODE:
                self.out_console.print(f"({n - HUMAN_LINES_PER_CODE} more '{code}' lines not shown; use --json for all)")

    def close(self) -> None:
        """Stops the progress display."""
        self.progress.stop()


class JsonReporter(Reporter):
    """JSON Lines on stdout, one object per line with a ``message_type`` (as restic does)."""

    #: Seconds between ``status`` lines.
    STATUS_EVERY = 1.0

    def __init__(self, *, verbose: bool = False, out: IO[str] | None = None):
        super().__init__()
        self.verbose = verbose
        self.out = out or sys.stdout
        self._last = 0.0

    def _emit(self, obj: dict[str, Any]) -> None:
        self.out.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self.out.flush()

    def event(self, ev: Event) -> None:
        """Counts the event and writes it as a JSON line (the final error too); info lines only with
        --verbose."""
        super().event(ev)
        if ev.severity != "info" or self.verbose:
            self._emit(ev.as_json())

    def phase(self, name: str, total: int | None = None) -> None:
        """Starts the phase with a ``status`` line at zero files done."""
        super().phase(name, total)
        self._last = 0.0
        self.advance(0, total)

    def advance(self, done: int, total: int | None) -> None:
        """Writes a ``status`` line at most every STATUS_EVERY seconds, and always when the phase's
        work is all done."""
        now = time.monotonic()
        if now - self._last < self.STATUS_EVERY and done != total:
            return
        self._last = now
        elapsed, remaining, _ = self.eta(done, total)
        obj: dict[str, Any] = {"message_type": "status", "phase": self.phase_name, "files_done": done, "seconds_elapsed": round(elapsed, 3)}
        if total:
            obj["files_total"] = total
        if remaining is not None:
            obj["seconds_remaining"] = round(remaining, 3)
        self._emit(obj)

    def summary(self, title: str, facts: dict[str, Any], table: list[tuple[str, ...]] | None = None) -> None:
        """Writes the facts as one ``summary`` line; the title and table are for people only."""
        self._emit({"message_type": "summary", **facts})

    def usage_error(self, text: str) -> None:
        """Writes the usage error as an ``error`` line with code ``usage``."""
        self._emit({"message_type": "error", "code": "usage", "cause": text})


def make_reporter(*, json_output: bool, quiet: bool, verbose: bool) -> Reporter:
    """The reporter a command line asks for: JSON, rich on a terminal, or plain lines."""
    if json_output:
        return JsonReporter(verbose=verbose)
    if sys.stderr.isatty() and not quiet:
        return RichReporter(quiet=quiet, verbose=verbose)
    return PlainReporter(quiet=quiet, verbose=verbose)


# Reporters that feed others: the run's log for a monitor's ping, and a tee -------------------------------------------------------------------------------


class LogTail(Reporter):
    """The run's log as plain lines (phases, warnings, errors, the summary), keeping the last
    ``limit`` bytes: the body of the final ping."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit
        self.lines: deque[bytes] = deque()
        self.size = 0

    def add(self, text: str) -> None:
        """Appends a line (its last ``limit`` bytes at most), dropping the oldest lines beyond
        ``limit`` bytes in all."""
        line = (text + "\n").encode("utf-8", "backslashreplace")[-self.limit :]
        self.lines.append(line)
        self.size += len(line)
        while self.size > self.limit:
            self.size -= len(self.lines.popleft())

    def text(self) -> bytes:
        """The lines kept, oldest first: the body of the final ping."""
        return b"".join(self.lines)

    def phase(self, name: str, total: int | None = None) -> None:
        """Logs the phase as a ``== name`` line."""
        super().phase(name, total)
        self.add(f"== {name}" + (f" ({total} files)" if total else ""))

    def event(self, ev: Event) -> None:
        """Counts the event and logs warnings and errors, the final error included; info lines
        never."""
        super().event(ev)
        if ev.severity != "info":
            self.add(ev.line())

    def message(self, text: str) -> None:
        """Logs the line."""
        self.add(text)

    def usage_error(self, text: str) -> None:
        """Logs the usage error as the command's ``mailbak: error:`` line."""
        self.add(f"mailbak: error: {text}")

    def summary(self, title: str, facts: dict[str, Any], table: list[tuple[str, ...]] | None = None) -> None:
        """Logs the title, the table's rows and the numbers of warnings and errors, escaped as
        every reporter escapes them: the log is the ping's body, and an account name must not
        forge a line there."""
        self.add(escape_path(title))
        for row in _escaped(table) or []:
            self.add("  " + "  ".join(row))
        self.add(f"warnings: {facts.get('warnings', 0)}, errors: {facts.get('errors', 0)}")


class Tee(Reporter):
    """Hands everything to several reporters; the counts the phases read are its own."""

    def __init__(self, *reporters: Reporter):
        super().__init__()
        self.reporters = reporters

    def phase(self, name: str, total: int | None = None) -> None:
        """Starts the phase here and in every reporter."""
        super().phase(name, total)
        for r in self.reporters:
            r.phase(name, total)

    def advance(self, done: int, total: int | None) -> None:
        """Passes the progress on to every reporter."""
        for r in self.reporters:
            r.advance(done, total)

    def event(self, ev: Event) -> None:
        """Counts the event here, where the phases read the counts, and passes it on to every
        reporter."""
        super().event(ev)
        for r in self.reporters:
            r.event(ev)

    def message(self, text: str) -> None:
        """Passes the line on to every reporter."""
        for r in self.reporters:
            r.message(text)

    def usage_error(self, text: str) -> None:
        """Passes the usage error on to every reporter."""
        for r in self.reporters:
            r.usage_error(text)

    def summary(self, title: str, facts: dict[str, Any], table: list[tuple[str, ...]] | None = None) -> None:
        """Passes the summary on to every reporter."""
        for r in self.reporters:
            r.summary(title, facts, table)

    def close(self) -> None:
        """Closes every reporter."""
        for r in self.reporters:
            r.close()

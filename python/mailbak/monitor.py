"""Unattended runs: Prometheus metrics for node_exporter's textfile collector and
healthchecks.io style pings (docs/OPERATIONS.md).

Any command can be monitored: it opens a :class:`Monitor` around its run, passes its reporter
through :meth:`Monitor.start` and names the job (job.py) in :attr:`Monitor.job`; the monitor
sees the exit status (the ``SystemExit`` the command ends with), writes the metrics file with
what the job declares (:meth:`mailbak.job.Job.metrics`) and sends the final ping. Monitoring
never changes a run's outcome: a ping or metrics file that cannot be delivered is a warning on
stderr, and the exit status stays the run's own.

Modules only some runs need (urllib, traceback) are imported where used: a run
without monitoring loads nothing more, and tests that drop privileges after importing what a
run needs keep working.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailbak.errors import Interrupted
from mailbak.fsio import Refused, read_small, replace_file
from mailbak.job import Metrics
from mailbak.report import LogTail, Reporter, Tee
from mailbak.status import EXIT_INTERRUPTED, EXIT_USAGE, Status

if TYPE_CHECKING:
    from collections.abc import Callable

    from mailbak.job import Job

# Metrics -------------------------------------------------------------------------------------

#: Every metric: name -> HELP text. All are gauges (each file describes one run, so nothing
#: only ever grows). Fixed texts: a dashboard or alert can rely on them.
METRICS = {
    "mailbak_success": "1 if the last run succeeded (backup ok, verify clean), else 0.",
    "mailbak_exit_status": "Exit status of the last run (0 ok, 1 failed, 2 bad usage or input, 130 interrupted).",
    "mailbak_last_run_timestamp_seconds": "When the last run finished, in seconds since the Unix epoch.",
    "mailbak_last_success_timestamp_seconds": "When the last successful run finished, in seconds since the Unix epoch (0: none recorded).",
    "mailbak_duration_seconds": "Wall-clock duration of the last run in seconds.",
    "mailbak_files": (
        "Files of the last run by kind (backup: message files linked, reused, copied, skipped, unrecognized; "
        "verify: checked, missing, damaged, orphans, unrecognized, moved; check: read, damaged, unrecorded, unverified, repaired; prune: deleted; offsite push: new, changed, unmodified as restic counts them)."
    ),
    "mailbak_snapshots": "Snapshots of the repository by what the last prune did with them: kept, removed.",
    "mailbak_bytes_copied": "Bytes the last run wrote: a backup by copying (databases and every file not hardlinked), an offsite push into the restic repository (after deduplication).",
    "mailbak_bytes_read": "Bytes the last check (or verify --read-data) read to compare them with their recorded digests.",
    "mailbak_inodes_checked": "Distinct files (inodes) the last check met: each once, however many snapshots hold it.",
    "mailbak_warnings": "Warnings of the last run.",
    "mailbak_errors": "Errors of the last run.",
}


@dataclass
class RunRecord:
    """The facts of one finished run that the metrics file shows."""

    command: str
    target: str
    started: float
    finished: float
    exit_status: int
    files: dict[str, int] = field(default_factory=dict)
    bytes_copied: int | None = None
    #: prune: snapshots kept and removed.
    snapshots: dict[str, int] = field(default_factory=dict)
    #: check: bytes read and distinct inodes met (None: the command does not report them).
    bytes_read: int | None = None
    inodes_checked: int | None = None
    warnings: int = 0
    errors: int = 0

    @property
    def success(self) -> bool:
        """Whether the run ended with exit status 0."""
        return self.exit_status == 0


def label_value(text: str) -> str:
    """A label value escaped as the exposition format wants: backslash, double quote, newline."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def path_label(path: str | os.PathLike[str]) -> str:
    """A path as label text: absolute; bytes that are not UTF-8 written ``\\xNN``."""
    return os.fsencode(os.path.abspath(path)).decode("utf-8", "backslashreplace")


def _number(v: float | int) -> str:
    return repr(float(v)) if isinstance(v, float) else str(v)


def render_metrics(rec: RunRecord, last_success: float | None) -> str:
    """The metrics file's text for a run; ``last_success`` is the previous file's value, used
    when this run failed."""
    labels = f'command="{label_value(rec.command)}",target="{label_value(rec.target)}"'
    success_at = rec.finished if rec.success else (last_success or 0)
    samples: dict[str, list[tuple[str, float | int]]] = {
        "mailbak_success": [("", int(rec.success))],
        "mailbak_exit_status": [("", rec.exit_status)],
        "mailbak_last_run_timestamp_seconds": [("", round(rec.finished, 3))],
        "mailbak_last_success_timestamp_seconds": [("", round(success_at, 3) if isinstance(success_at, float) else success_at)],
        "mailbak_duration_seconds": [("", round(rec.finished - rec.started, 3))],
        "mailbak_files": [(f',kind="{label_value(k)}"', n) for k, n in rec.files.items()],
        "mailbak_snapshots": [(f',state="{label_value(k)}"', n) for k, n in rec.snapshots.items()],
        "mailbak_bytes_copied": [("", rec.bytes_copied)] if rec.bytes_copied is not None else [],
        "mailbak_bytes_read": [("", rec.bytes_read)] if rec.bytes_read is not None else [],
        "mailbak_inodes_checked": [("", rec.inodes_checked)] if rec.inodes_checked is not None else [],
        "mailbak_warnings": [("", rec.warnings)],
        "mailbak_errors": [("", rec.errors)],
    }
    lines = []
    for name, help_text in METRICS.items():
        if not samples[name]:
            continue
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} gauge")
        lines.extend(f"{name}{{{labels}{extra}}} {_number(v)}" for extra, v in samples[name])
    return "\n".join(lines) + "\n"


_LAST_SUCCESS = re.compile(r"^mailbak_last_success_timestamp_seconds(\{.*\})?\s+(\S+)\s*$")

#: The most of an earlier metrics file read for its last-success time. mailbak writes about
#: 2 kB; a larger file is not one of its own.
PREVIOUS_METRICS_BYTES = 64 * 1024


def read_previous(path: Path) -> tuple[str | None, str | None]:
    """(text, problem) of the metrics file ``path`` is about to replace. The directory may be
    writable by others (node_exporter's, say) and mailbak runs as root, so the file is never
    followed (a symlink to a root-only file, or to /dev/zero, which never ends), never waited
    for (a FIFO would hang the run at its end) and read only up to PREVIOUS_METRICS_BYTES.
    No text and a problem (why it is not used) when the file is anything but a small regular
    file; neither for a missing file."""
    try:
        raw = read_small(path, PREVIOUS_METRICS_BYTES)
    except FileNotFoundError:
        return None, None
    except Refused as e:
        return None, f"it is {e.strerror}"
    except OSError as e:
        return None, f"cannot read it: {e.strerror or e}"
    return raw.decode("utf-8", errors="replace"), None


def previous_success(text: str | None) -> float | None:
    """The last-success time recorded in an earlier metrics file's text, if any (the latest one
    if it holds several)."""
    best = None
    for line in (text or "").splitlines():
        m = _LAST_SUCCESS.match(line)
        if not m:
            continue
        try:
            v = float(m.group(2))
        except ValueError:
            continue
        if v > 0 and v == v and (best is None or v > best):
            best = v
    return best


def write_metrics(path: Path, rec: RunRecord) -> str | None:
    """Writes the run's metrics file, keeping the last-success time of the file it replaces.
    Returns why that file's time could not be kept (it is replaced all the same), or None."""
    text, problem = read_previous(path)
    # Readable by all (0644): the textfile collector usually runs as its own user.
    replace_file(path, render_metrics(rec, previous_success(text)).encode("utf-8"), mode=0o644)
    return problem


# Pings ---------------------------------------------------------------------------------------

#: Seconds a whole ping may take, from the name lookup to the last byte of the answer read.
#: MAILBAK_PING_TIMEOUT overrides it (for tests of stalled and slow servers).
PING_TIMEOUT = 10.0

#: Seconds the final ping may take after SIGINT or SIGTERM (never more than PING_TIMEOUT):
#: whoever stops a run wants it to end now, and systemd kills a service slow to stop.
PING_TIMEOUT_INTERRUPTED = 2.0

#: The most of the run's log sent with the final ping (healthchecks.io keeps 100 kB).
PING_BODY_BYTES = 100_000

#: The most of a ping's answer read (healthchecks.io answers "OK").
PING_ANSWER_BYTES = 1024

#: What no URL may hold as it is: http.client refuses a space and control characters in a
#: request, and urlsplit silently drops tabs and newlines.
_URL_FORBIDDEN = re.compile(r"[\x00-\x20\x7f]")


def ping_timeout() -> float:
    """Seconds a ping may take: MAILBAK_PING_TIMEOUT when it is a positive finite number, else
    PING_TIMEOUT."""
    try:
        seconds = float(os.environ.get("MAILBAK_PING_TIMEOUT", PING_TIMEOUT))
    except ValueError:
        return PING_TIMEOUT
    return seconds if 0 < seconds < float("inf") else PING_TIMEOUT  # a deadline must end: no nan, no inf


def public_url(url: str) -> str:
    """A ping URL with its secret parts left out: healthchecks.io URLs carry the check's UUID
    (or a ping key and slug) in the path, and any URL may carry credentials or a query."""
    import urllib.parse

    try:
        p = urllib.parse.urlsplit(url)
        port = p.port
    except ValueError:  # not a URL check_ping_url accepts
        return "the ping URL"
    host = p.hostname or "?"
    if port:
        host = f"{host}:{port}"
    return f"{p.scheme}://{host}/…"


def check_ping_url(url: str) -> str | None:
    """Why ``url`` cannot be a ping URL, or None. Refuses, before the run, everything urllib
    would fail on at every ping or raise about (a port out of range once ended the run with a
    traceback and no backup)."""
    import urllib.parse

    if _URL_FORBIDDEN.search(url):
        return "a space or control character in the URL (percent-encode it)"
    try:
        p = urllib.parse.urlsplit(url)
        port = p.port  # raises for a port that is not a number from 0 to 65535
    except ValueError as e:
        return f"not a valid URL ({e})"
    if p.scheme not in ("http", "https") or not p.hostname:
        return "not an http:// or https:// URL"
    if port == 0:
        return "port 0: a port is a number from 1 to 65535"
    if "@" in p.netloc:
        return "user:password@ in the URL is not supported (urllib would take it for part of the host name)"
    if not (p.path + p.query).isascii():
        return "a non-ASCII character in the URL's path or query (percent-encode it)"
    if ":" not in p.hostname:  # not an IPv6 address: a name the resolver gets IDNA-encoded
        try:
            p.hostname.encode("idna")
        except UnicodeError:
            return f"not a valid host name: {p.hostname}"
    return None


@functools.cache
def _tracking_handlers() -> tuple[type, type]:
    """urllib's HTTP and HTTPS handlers, telling their instance's ``track`` of every socket
    they connect (PingRequest needs it to cut a request off)."""
    import urllib.request

    class Tracking(urllib.request.AbstractHTTPHandler):
        track: Callable[[socket.socket], socket.socket]

        def do_open(self, http_class: Any, req: Any, **kw: Any) -> Any:
            track = self.track

            def connection(host: str, **args: Any) -> Any:
                conn = http_class(host, **args)
                # http.client's hook for making the TCP connection, before any TLS.
                create = conn._create_connection
                conn._create_connection = lambda *a, **k: track(create(*a, **k))
                return conn

            return super().do_open(connection, req, **kw)

    class HTTP(Tracking, urllib.request.HTTPHandler):
        pass

    class HTTPS(Tracking, urllib.request.HTTPSHandler):
        pass

    return HTTP, HTTPS


class PingRequest:
    """One ping (POST with ``body``, else GET) to ``url`` + ``/suffix``, made on a thread of its
    own so that whoever waits for it waits at most a deadline for the whole request, whatever
    the server does: urllib's timeout holds for each socket operation, so a server that sends
    one byte a second would hold it for ever. The thread starts with SIGINT and SIGTERM
    blocked, so they reach the main thread and end its wait at once. ``close`` cuts off a
    request still running (its socket is shut down, so the thread ends too).

    ``timeout`` is urllib's own per-operation timeout: a request given up while it resolves a
    name, before it has a socket to shut down, still ends by itself."""

    def __init__(self, url: str, suffix: str = "", body: bytes | None = None, *, timeout: float = PING_TIMEOUT):
        self.url = url
        self.suffix = suffix
        self.body = body
        self.timeout = timeout
        #: Why the ping failed (None: it went through); set by the thread before ``done``.
        self.problem: str | None = None
        self.done = threading.Event()
        self._lock = threading.Lock()
        #: Duplicates of the request's sockets, for close(); None once closed.
        self._sockets: list[socket.socket] | None = []

    def start(self) -> None:
        """Starts the request on a daemon thread of its own, with SIGINT and SIGTERM blocked there
        so that they reach the main thread."""
        thread = threading.Thread(target=self._run, name="mailbak-ping", daemon=True)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            thread.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def wait(self, seconds: float, *, on_interrupt: float | None = None) -> str | None:
        """Why the ping failed, or None, at most ``seconds`` from now. SIGINT or SIGTERM
        meanwhile raises as usual; with ``on_interrupt``, it leaves the ping at most that many
        seconds more instead, and a second one ends the wait."""
        began = time.monotonic()
        end = began + seconds
        signalled = ""
        while True:
            try:
                if self.done.wait(max(0.0, end - time.monotonic())):
                    return self.problem
                if time.monotonic() >= end:
                    return f"timed out after {time.monotonic() - began:.1f} s{signalled}"
            except (Interrupted, KeyboardInterrupt) as e:
                if on_interrupt is None:
                    raise
                if signalled:
                    return f"given up at a second signal ({e or 'an interrupt'})"
                signalled = f", cut short by {e or 'an interrupt'}"
                end = min(end, time.monotonic() + on_interrupt)

    def close(self) -> None:
        """Cuts the request off if it is still running."""
        with self._lock:
            sockets, self._sockets = self._sockets or [], None
        for s in sockets:
            if not self.done.is_set():
                try:
                    s.shutdown(socket.SHUT_RDWR)  # the thread's blocked read returns at once
                except OSError:
                    pass
            s.close()

    def _track(self, sock: socket.socket) -> socket.socket:
        """Keeps a duplicate of a new connection's socket: once TLS wraps the socket, the
        object urllib made is detached, and the duplicate is the way to its connection."""
        with self._lock:
            if self._sockets is None:  # given up while connecting
                sock.close()
                raise OSError(errno.ECANCELED, "given up")
            self._sockets.append(sock.dup())
        return sock

    def _run(self) -> None:
        try:
            self.problem = self._send()
        except BaseException as e:  # whatever happens, the waiter learns of it
            self.problem = f"{type(e).__name__}: {e}"
        finally:
            self.done.set()

    def _send(self) -> str | None:
        import urllib.error
        import urllib.parse
        import urllib.request

        p = urllib.parse.urlsplit(self.url)
        path = p.path.rstrip("/") + (f"/{self.suffix}" if self.suffix else "")
        target = urllib.parse.urlunsplit((p.scheme, p.netloc, path or "/", p.query, ""))
        req = urllib.request.Request(target, data=self.body, method="POST" if self.body is not None else "GET")
        req.add_header("User-Agent", "mailbak")
        if self.body is not None:
            req.add_header("Content-Type", "text/plain; charset=utf-8")
        handlers = [cls() for cls in _tracking_handlers()]
        for h in handlers:
            h.track = self._track
        try:
            with urllib.request.build_opener(*handlers).open(req, timeout=self.timeout) as resp:
                resp.read(PING_ANSWER_BYTES)
            return None
        except urllib.error.HTTPError as e:
            return f"HTTP {e.code}"
        except urllib.error.URLError as e:
            return str(getattr(e.reason, "strerror", None) or e.reason)
        except (OSError, ValueError) as e:  # timeouts (socket.timeout is an OSError), bad responses
            return str(e) or type(e).__name__


def ping(url: str, suffix: str = "", body: bytes | None = None, timeout: float | None = None, *, on_interrupt: float | None = None) -> str | None:
    """Sends one ping (a PingRequest) and waits for it at most ``timeout`` seconds (default:
    ping_timeout()); returns why it failed, or None. The URL's secret path never appears in
    the text. SIGINT or SIGTERM meanwhile: as PingRequest.wait says."""
    seconds = ping_timeout() if timeout is None else timeout
    request = PingRequest(url, suffix, body, timeout=seconds)
    try:
        request.start()
        return request.wait(seconds, on_interrupt=on_interrupt)
    finally:
        request.close()


# The monitor ---------------------------------------------------------------------------------


class Monitor:
    """Metrics file and pings for one command run; a context manager around the run.

    ``with Monitor(Backup, target, metrics_file=..., ping_url=...) as mon:`` then
    ``reporter = mon.start(reporter)`` (the start ping; the returned reporter also feeds the
    log), ``mon.job = job``, and the command's ``sys.exit``. On the way out the monitor writes
    the metrics and sends the final ping with the exit status. ``kind`` is the job's class: it
    names the command and its metrics also when the run stopped before its job was made."""

    def __init__(self, kind: type[Job], target: str | os.PathLike[str], *, metrics_file: Path | None = None, ping_url: str | None = None):
        self.kind = kind
        self.command = kind.command
        self.target = path_label(target)
        self.metrics_file = metrics_file
        self.ping_url = ping_url
        self.log = LogTail(PING_BODY_BYTES)
        self.reporter: Reporter | None = None
        self.job: Job | None = None
        self.started = time.time()

    @property
    def active(self) -> bool:
        """Whether there is anything to do: a metrics file to write or a URL to ping."""
        return self.metrics_file is not None or self.ping_url is not None

    def __enter__(self) -> Monitor:
        self.started = time.time()
        return self

    def start(self, reporter: Reporter) -> Reporter:
        """Sends the start ping; returns the reporter the run must use."""
        if not self.active:
            return reporter
        self.reporter = Tee(reporter, self.log)
        if self.ping_url:
            # SIGINT or SIGTERM during the start ping raises: the run stops before it began.
            problem = ping(self.ping_url, "start")
            if problem:
                self.reporter.warn("ping_failed", None, self._ping_warning("start", problem))
        return self.reporter

    def _ping_warning(self, which: str, problem: str) -> str:
        return f"{which} ping to {public_url(self.ping_url or '')} failed ({problem}); the run is not affected"

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        if not self.active:
            return False
        if exc_type is None:
            status = 0
        elif isinstance(exc, SystemExit):
            status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        elif isinstance(exc, KeyboardInterrupt | Interrupted):
            status = EXIT_INTERRUPTED  # a signal the runner did not turn into its exit (a crash path)
        else:  # a crash: Python prints the traceback and exits 1
            import traceback

            status = 1
            self.log.add("".join(traceback.format_exception(exc_type, exc, tb)).rstrip())
        self.finish(status)
        return False

    def facts(self, status: int) -> dict[str, Any] | None:
        """The job's summary facts, also after a stop (the counts so far); none when
        the run never started (bad usage or input)."""
        if self.job is None or status == EXIT_USAGE:
            return None
        try:
            return self.job.facts(Status.OK if status == 0 else Status.FAILED)
        except Exception:
            return None

    def metrics(self, facts: dict[str, Any] | None) -> Metrics:
        """What the job declares for the metrics file (zeros without a job)."""
        return self.job.metrics(facts) if self.job is not None else Metrics.none(self.kind)

    def finish(self, status: int) -> None:
        """Writes the metrics file and sends the final ping; problems are warnings on stderr."""
        facts = self.facts(status)
        counts = self.reporter.counts if self.reporter is not None else None
        metrics = self.metrics(facts)
        rec = RunRecord(
            command=self.command,
            target=self.target,
            started=self.started,
            finished=time.time(),
            exit_status=status,
            files=metrics.files,
            bytes_copied=metrics.bytes_copied,
            snapshots=metrics.snapshots,
            bytes_read=metrics.bytes_read,
            inodes_checked=metrics.inodes_checked,
            warnings=counts.warnings if counts else 0,
            errors=max(counts.errors if counts else 0, (facts or {}).get("errors", 0) or 0),
        )
        if self.metrics_file is not None:
            try:
                problem = write_metrics(self.metrics_file, rec)
            except OSError as e:
                _warn(f"cannot write the metrics file {self.metrics_file}: {e.strerror or e}")
            else:
                if problem:
                    _warn(f"{self.metrics_file}: the previous metrics file was not read ({problem}); replaced without its last-success time")
        if self.ping_url:
            self.log.add(f"mailbak {self.command}: exit status {status}")
            # The run's result is decided: a signal now only shortens the ping, and after one
            # (exit status 130) the ping is short from the start.
            short = min(ping_timeout(), PING_TIMEOUT_INTERRUPTED)
            problem = ping(self.ping_url, "" if status == 0 else str(status), body=self.log.text(), timeout=short if status == EXIT_INTERRUPTED else None, on_interrupt=short)
            if problem:
                _warn(self._ping_warning("final", problem))


def _warn(text: str) -> None:
    print(f"mailbak: warning: {text}", file=sys.stderr, flush=True)

"""Running engine calls: in a worker thread, with progress and events relayed to a Reporter,
and Ctrl-C / SIGTERM turned into a prompt, clean stop.

The Rust engine releases the GIL while it works, so the main thread stays free to draw the
progress bar and to receive signals (Python runs signal handlers only in the main thread). On an
interrupt the main thread sets the engine's cancel flag, waits for the workers to finish their
current file and return, then re-raises: no worker outlives the command.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import threading
from typing import Any, Callable

from mailbak import _engine
from mailbak.report import Event, Reporter

#: Seconds between progress polls: frequent enough for a smooth bar and a quick cancel, rare
#: enough to cost nothing.
POLL_SECONDS = 0.1

#: Errors on the destination after which nothing more can be written: the run stops.
FATAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class UsageError(Exception):
    """Bad usage or input, found before anything was written (exit status 2)."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; the command stops and exits 130."""


class DestinationFull(Exception):
    """The destination cannot take more data (ENOSPC, EDQUOT, EROFS); the run stops."""


def is_destination_full(text: str) -> bool:
    """Whether an error message (from LMDB, say, which gives no errno) means DestinationFull."""
    return any(os.strerror(e) in text for e in FATAL_ERRNOS)


class Runner:
    """Relays one command's engine calls to its reporter."""

    def __init__(self, reporter: Reporter, *, verbose: bool = False):
        self.reporter = reporter
        self.verbose = verbose
        self.progress = _engine.Progress(verbose=verbose)
        self.fatal: Event | None = None
        # Per-file lines (--verbose only) the engine could not queue, over all phases.
        self.dropped = 0
        self.link_warning_given = False
        # Bytes the engine wrote by copying, over all calls (for --metrics-file).
        self.bytes_copied = 0

    def relay(self) -> None:
        """Moves queued events and the current position to the reporter."""
        for severity, code, path, err, detail in self.progress.drain():
            ev = Event(severity, code, path, detail, err)
            self.reporter.event(ev)
            if severity == "error" and err in FATAL_ERRNOS and self.fatal is None:
                self.fatal = ev
                self.progress.cancel()
        done, total = self.progress.position()
        self.reporter.advance(done, total or None)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Runs ``fn(*args, progress=..., **kwargs)`` in a worker thread until it returns."""
        box: dict[str, Any] = {}
        # The worker writes one byte when it is done; the main thread waits for it with select,
        # so it wakes the moment the call returns (a fixed sleep cost 0.1 s per call: 5 s for a
        # 50-account store) and a signal handler's exception can interrupt the wait safely.
        wake_r, wake_w = os.pipe()

        def work() -> None:
            try:
                box["value"] = fn(*args, progress=self.progress, **kwargs)
            except BaseException as e:  # re-raised in the caller's thread
                box["error"] = e
            finally:
                os.write(wake_w, b"x")

        def wait(timeout: float) -> bool:
            return bool(select.select([wake_r], [], [], timeout)[0])

        # The interpreter must never exit while the worker is inside the engine: a thread that
        # comes back from Rust to a finalizing interpreter is killed by pthread_exit, whose forced
        # unwind through PyO3's panic guard aborts the process. So signals are blocked while the
        # worker starts (an exception inside Thread.start would skip the wait below; the worker
        # inherits the mask, so signals always reach the main thread), and the wait is on the
        # pipe, not Thread.join (on CPython 3.11 an interrupted join can mark a running thread as
        # stopped, and the next join returns at once).
        worker = threading.Thread(target=work, name="mailbak-engine", daemon=True)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            try:
                worker.start()
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                while not wait(POLL_SECONDS):
                    self.relay()
            except BaseException:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                self.progress.cancel()
                while worker.ident is not None:
                    try:
                        if wait(POLL_SECONDS):
                            break
                    except Interrupted:
                        pass  # already stopping; a second signal must not abandon the workers
                self.relay()
                raise
        finally:
            os.close(wake_r)
            os.close(wake_w)
        self.relay()
        if self.fatal is not None:
            raise DestinationFull(self.fatal.line())
        if "error" in box:
            raise box["error"]
        value = box.get("value")
        for tally in value if isinstance(value, list) else [value]:
            if isinstance(tally, dict):
                self.bytes_copied += tally.get("bytes_copied") or 0
        return value

    def note_link_fallback(self, result: dict[str, Any], exdev_hint: str, *, between: tuple[os.PathLike[str], os.PathLike[str]] | None = None) -> None:
        """One warning per run when an engine call had to copy instead of hardlinking.
        ``between`` names the source and destination: on one file system (same st_dev), EXDEV
        means two mounts of it, and the hint says so instead of ``exdev_hint``."""
        err = result.get("link_fallback_errno")
        if not err or self.link_warning_given:
            return
        self.link_warning_given = True
        if err == errno.EXDEV and between is not None and same_device(*between):
            exdev_hint = BIND_MOUNT_HINT
        hint = f"; {exdev_hint}" if err == errno.EXDEV else ""
        self.reporter.warn("link_fallback", None, f"hardlinks are not possible ({os.strerror(err)}); message files are copied instead{hint}")

    def finish(self) -> None:
        """Relays what is left and says so if per-file lines were lost (counts stay exact)."""
        self.relay()
        self.dropped += self.progress.dropped
        if self.dropped:
            self.reporter.warn("lines_dropped", None, f"{self.dropped} per-file lines were not shown: they came faster than they could be printed (all counts are exact)")
            self.dropped = 0

    def new_phase(self, name: str, total: int | None = None) -> None:
        """Starts a phase with fresh counters for the progress bar."""
        self.relay()
        self.dropped += self.progress.dropped
        self.progress = _engine.Progress(verbose=self.verbose)
        if total:
            self.progress.add_total(total)
        self.reporter.phase(name, total)


#: The hint when hardlinks fail with EXDEV on one file system.
BIND_MOUNT_HINT = (
    "the source and DEST are on the same file system but reached through different mounts (a bind mount, "
    "or systemd's ReadWritePaths= naming each of them): use one mount for both, e.g. ReadWritePaths= naming "
    "one common parent (docs/OPERATIONS.md)"
)


def same_device(a: os.PathLike[str], b: os.PathLike[str]) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False


def install_signal_handlers() -> None:
    """Makes SIGTERM behave like Ctrl-C: raise Interrupted in the main thread."""

    def handler(signum: int, frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)

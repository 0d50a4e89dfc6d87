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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mailbak import _engine, testpause
from mailbak.errors import FATAL_ERRNOS, DestinationFull, Interrupted
from mailbak.report import Event, Reporter

#: Seconds between progress polls: frequent enough for a smooth bar and a quick cancel, rare
#: enough to cost nothing.
POLL_SECONDS = 0.1


def link_hint(src: Path, dst: Path, other_fs: str) -> str:
    """The hint for hardlinks from ``src`` to ``dst`` failing with EXDEV: ``other_fs`` when
    they are on different file systems; when both have the same ``st_dev``, they are one file
    system reached through different mounts (a bind mount), which links cannot cross either."""
    try:
        same = os.stat(src).st_dev == os.stat(dst).st_dev
    except OSError:
        return other_fs
    if not same:
        return other_fs
    return (
        f"{src} and {dst} are on the same file system but reached through different mounts (a bind mount, or systemd's "
        "ReadWritePaths= naming each of them); hardlinks cannot cross mounts: use one mount for both, e.g. ReadWritePaths= "
        "naming one common parent (docs/OPERATIONS.md)"
    )


class Runner:
    """Relays one command's engine calls to its reporter."""

    def __init__(self, reporter: Reporter, *, verbose: bool = False):
        self.reporter = reporter
        self.verbose = verbose
        self.progress = _engine.Progress(verbose=verbose)
        self.fatal: Event | None = None
        # Per-file lines (--verbose only) the engine could not queue, over all phases.
        self.dropped = 0
        # Bytes the engine wrote by copying, over all calls (for --metrics-file).
        self.bytes_copied = 0
        # (errno, hint) of the first link that became a copy, and how many files did, over all
        # calls: the one warning, given by finish(), says how many.
        self.link_fallback: tuple[int, str] | None = None
        self.link_fallbacks = 0
        # Whether copies across file systems are what the run is for (a repository or a
        # reference on another disk): then EXDEV is no reason to warn.
        self.expect_exdev = False
        # Files placed over all calls, by how: linked (from the source), reused (from a
        # reference), copied, reflinked (copies that share the source's blocks).
        self.totals: dict[str, int] = {}
        self.last_step_relay = 0.0

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
                testpause.mark("runner.cancelled")
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
                for key in ("linked", "reused", "copied", "reflinked", "dropped"):
                    self.totals[key] = self.totals.get(key, 0) + (tally.get(key) or 0)
        return value

    def note_link_fallback(self, result: dict[str, Any], exdev_hint: str) -> None:
        """Notes files an engine call copied because hardlinking them was impossible; finish()
        gives one warning per run with their number."""
        err = result.get("link_fallback_errno")
        if err and self.link_fallback is None:
            self.link_fallback = (err, exdev_hint)
        self.link_fallbacks += result.get("link_fallbacks", 0)

    def step(self, n: int = 1) -> None:
        """Counts ``n`` units of the phase's work done in Python (databases, for one), and shows
        them at most every POLL_SECONDS (a store with 100k accounts steps 100k times)."""
        self.progress.add_done(n)
        now = time.monotonic()
        if now - self.last_step_relay >= POLL_SECONDS:
            self.last_step_relay = now
            self.relay()

    def finish(self) -> None:
        """Relays what is left, gives the link-fallback warning, and says so if per-file lines
        were lost (counts stay exact)."""
        if self.link_fallback is not None and self.link_fallbacks and not (self.expect_exdev and self.link_fallback[0] == errno.EXDEV):
            err, exdev_hint = self.link_fallback
            hint = f"; {exdev_hint}" if err == errno.EXDEV else ""
            n = self.link_fallbacks
            files = "file was" if n == 1 else "files were"
            self.reporter.warn("link_fallback", None, f"hardlinks are not possible ({os.strerror(err)}): {n} {files} copied instead of hardlinked{hint}")
            self.link_fallback, self.link_fallbacks = None, 0
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


def install_signal_handlers() -> None:
    """Makes SIGTERM behave like Ctrl-C: raise Interrupted in the main thread."""

    def handler(signum: int, frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)

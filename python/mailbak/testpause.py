"""Test-only pause points: deterministic interleavings for tests, inert otherwise.

A test that must act at an exact moment of a run (replace a directory between a check and its
use, send a signal while files are being linked) sets ``MAILBAK_TEST_PAUSE`` to the name of a
point and ``MAILBAK_TEST_PAUSE_DIR`` to a directory it owns. When the run reaches that point it
creates ``DIR/NAME.reached`` and waits until the test creates ``DIR/NAME.go`` (at most
``WAIT_SECONDS``, then it goes on, so a broken test cannot hang a run forever). The test asserts
that ``NAME.reached`` appeared, so it cannot pass without the interleaving it is about.

The engine (Rust, ``rust/testpause.rs``) implements the same protocol for points inside its
calls, which count files: ``engine_mid_link`` (a backup's link/copy worker, after a snapshot
message file is placed), ``engine_mid_check`` (verify's file check) and ``engine_mid_delete``
(``delete_tree``'s workers, after a file is removed; once per call). An engine point pauses
once per area, at the ``MAILBAK_TEST_PAUSE_AFTER``-th file (default 1); other workers go on
meanwhile, so tests that need the whole call to stand still run with ``--jobs 1``. It reads the
variables once per area, never per file. Without both variables set, a Python pause point costs
one dictionary lookup.

A run pauses at one point only; a test that must know when something happened while that point
holds the run (the main thread set the cancel flag while a paused worker waits) asks for a
*mark*: ``mark(name)`` creates ``DIR/NAME.reached`` whenever ``MAILBAK_TEST_PAUSE_DIR`` is set,
and never waits. Marks: ``runner.cancelled`` (an interrupt set the engine's cancel flag).

A Python point passed once per unit of work (``redeliver.delivered``, after each message a
restore delivers) pauses, as the engine's do, only at the ``MAILBAK_TEST_PAUSE_AFTER``-th unit
(:func:`pause_at`, given the caller's count).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

#: Environment variable naming the one point to pause at.
ENV_POINT = "MAILBAK_TEST_PAUSE"
#: Environment variable naming the directory of the handshake files.
ENV_DIR = "MAILBAK_TEST_PAUSE_DIR"
#: Environment variable naming which pass of a counted point pauses (default 1).
ENV_AFTER = "MAILBAK_TEST_PAUSE_AFTER"
#: Longest wait for the test's go-ahead.
WAIT_SECONDS = 60.0


def pause(point: str) -> None:
    """Pauses at ``point`` when a test asked for it (see the module doc)."""
    if os.environ.get(ENV_POINT) != point:
        return
    folder = os.environ.get(ENV_DIR)
    if not folder:
        return
    base = Path(folder)
    (base / f"{point}.reached").touch()
    deadline = time.monotonic() + WAIT_SECONDS
    while not (base / f"{point}.go").exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def pause_at(point: str, count: int) -> None:
    """Pauses at ``point`` when a test asked for it and ``count`` (the caller's count of passes,
    from 1) is ``MAILBAK_TEST_PAUSE_AFTER`` (default 1)."""
    if os.environ.get(ENV_POINT) != point:
        return
    if count != int(os.environ.get(ENV_AFTER) or 1):
        return
    pause(point)


def mark(point: str) -> None:
    """Tells a test that the run passed ``point``, without waiting (see the module doc)."""
    folder = os.environ.get(ENV_DIR)
    if folder:
        (Path(folder) / f"{point}.reached").touch()

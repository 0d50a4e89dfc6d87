"""On a terminal, the commands draw rich progress bars and summary tables (on a pseudo-terminal
here, as a user would see them), and Ctrl-C still exits 130."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import CLI_ENV
from pausing import PausePoint


def run_on_tty(*args: str, interrupt_at: PausePoint | None = None, timeout: float = 120) -> tuple[int, str]:
    """Runs `mailbak ARGS` with stdin/stdout/stderr on a pseudo-terminal; returns (status, output).
    With ``interrupt_at``, sends SIGINT when the run stands at that pause point, then lets it go."""
    master, slave = pty.openpty()
    env = {**(interrupt_at.env if interrupt_at else CLI_ENV), "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    p = subprocess.Popen([sys.executable, "-m", "mailbak", *args], stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
    os.close(slave)
    out = bytearray()
    start = time.monotonic()
    sent = released = False
    while True:
        if interrupt_at is not None and not sent and interrupt_at.reached_file.exists():
            p.send_signal(signal.SIGINT)
            sent = True
        # The handler sets the cancel flag before the worker resumes (the terminal is read
        # meanwhile, so that output never blocks the run).
        if sent and not released and interrupt_at.mark_file("runner.cancelled").exists():
            interrupt_at.go()
            released = True
        r, _, _ = select.select([master], [], [], 0.05)
        if r:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                chunk = b""
            if not chunk and p.poll() is not None:
                break
            out += chunk
        elif p.poll() is not None:
            break
        assert time.monotonic() - start < timeout
    os.close(master)
    assert interrupt_at is None or sent, f"the run ended without reaching {interrupt_at.point}"
    assert interrupt_at is None or released, "the interrupt never set the cancel flag (mark runner.cancelled)"
    return p.wait(), out.decode("utf-8", "replace")


def test_backup_on_a_terminal_shows_progress_and_a_table(store: Path, tmp_path: Path):
    status, out = run_on_tty("backup", str(store), str(tmp_path / "b"))
    assert status == 0, out
    assert "messages" in out and "files/s" in out
    assert "backup ok" in out
    assert "┃" in out or "│" in out or "area" in out  # the summary table
    assert (tmp_path / "b" / "mailbak.json").exists()


def test_gen_on_a_terminal(tmp_path: Path):
    status, out = run_on_tty("gen", str(tmp_path / "g"), "--messages", "500", "--accounts", "2")
    assert status == 0, out
    assert "generating" in out and "generated" in out


def test_interrupt_on_a_terminal_exits_130(tmp_path: Path):
    from conftest import make_store

    # The interrupt lands at a pause point, so the store's size proves nothing: a small one.
    store = make_store(tmp_path / "store", messages=2000, accounts=4)
    at = PausePoint(tmp_path / "pause", "engine_mid_link", after=50)
    status, out = run_on_tty("backup", "--jobs", "1", str(store), str(tmp_path / "b"), interrupt_at=at)
    assert status == 130, out
    assert "interrupted" in out and "Traceback" not in out
    assert json.loads((tmp_path / "b" / "mailbak.json").read_text())["status"] == "running"

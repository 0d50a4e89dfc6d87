"""Issue 18, metrics and pings: a ping server that answers one byte at a time, signals during
pings, ping URLs urllib cannot use, and a previous metrics file that is a FIFO, a symlink or
too large. Servers are real sockets on 127.0.0.1 started by the test; runs are real CLI
processes."""

from __future__ import annotations

import itertools
import os
import resource
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest
from conftest import CLI_ENV, json_lines, manifest_of, run_cli
from pausing import PausePoint
from test_monitor import metrics_of, value

SECRET = "5f0e3a1c-9d4b-4c8e-b1a2-0123456789ab"

#: Far longer than any of these tests may take: only the deadline of a whole ping can end a
#: request to the slow server before that.
LONG_TIMEOUT = "120"


# A ping server that answers one byte at a time -----------------------------------------------


class SlowPingServer:
    """A ping server on 127.0.0.1: requests for which ``slow(path)`` holds get their answer one
    byte every ``interval`` seconds, for ever (a status line, then one header that never ends:
    each byte comes well within any per-operation timeout); the others get "200 OK" at once.
    ``requests`` holds (method, path) of each request as it arrives (its body read)."""

    def __init__(self, slow: Callable[[str], bool], interval: float = 0.2):
        self.slow = slow
        self.interval = interval
        self.requests: list[tuple[str, str]] = []
        self.trickled = 0
        self.stopped = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/ping/{SECRET}"
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.answer, args=(conn,), daemon=True).start()

    def answer(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as f:
            method, path, _ = f.readline().decode().split(" ", 2)
            length = 0
            while (line := f.readline()) not in (b"\r\n", b""):
                name, _, v = line.decode().partition(":")
                if name.strip().lower() == "content-length":
                    length = int(v)
            f.read(length)
            self.requests.append((method, path))
            if not self.slow(path):
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK")
                return
            for byte in itertools.chain(b"HTTP/1.1 200 OK\r\nX-Slow: ", itertools.repeat(ord("a"))):
                if self.stopped.wait(self.interval):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:  # the client cut the request off
                    return
                self.trickled += 1

    def wait_for(self, request: tuple[str, str], proc: subprocess.Popen, timeout: float = 120) -> None:
        """Waits until ``request`` has arrived and the server has begun answering it slowly."""
        deadline = time.monotonic() + timeout
        while request not in self.requests or self.trickled == 0:
            assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before {request} arrived: {proc.communicate()}"
            assert time.monotonic() < deadline, f"{request} did not arrive in {timeout}s: {self.requests}"
            time.sleep(0.01)

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()


@pytest.fixture
def slow_server():
    """A SlowPingServer that answers every request slowly."""
    s = SlowPingServer(lambda path: True)
    yield s
    s.close()


@pytest.fixture
def slow_final_server():
    """A SlowPingServer that answers the start ping at once, the final ping slowly."""
    s = SlowPingServer(lambda path: not path.endswith("/start"))
    yield s
    s.close()


def mailbak(*args: str | os.PathLike, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mailbak", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(proc: subprocess.Popen, timeout: float = 90) -> tuple[str, str]:
    """The run's output once it ends; a run still going after ``timeout`` is a failure."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the run was still going after {timeout}s:\n{out}\n{err}") from None


# Pings: a deadline for the whole request ------------------------------------------------------


def test_slow_ping_server_cannot_hold_the_run(store, tmp_path, slow_server):
    """Each ping has a deadline for the whole request (3 s here): a server that sends a byte
    every 0.2 s (never idle long enough for a per-operation timeout) cannot hold the run; the
    backup is taken, both pings are warnings."""
    env = {**CLI_ENV, "MAILBAK_PING_TIMEOUT": "3"}
    proc = mailbak("backup", "--json", "--ping-url", slow_server.url, store, tmp_path / "b", env=env)
    out, err = finish(proc)
    assert proc.returncode == 0, err
    assert manifest_of(tmp_path / "b")["status"] == "ok"
    events = json_lines(out)
    assert events[-1]["message_type"] == "summary" and events[-1]["status"] == "ok"
    started = [e for e in events if e.get("code") == "ping_failed"]
    assert len(started) == 1 and "timed out after 3." in started[0]["cause"], started
    assert "final ping to http://127.0.0.1:" in err and "timed out after 3." in err, err
    assert slow_server.requests == [("GET", f"/ping/{SECRET}/start"), ("POST", f"/ping/{SECRET}")]
    assert slow_server.trickled >= 10, "the server was answering, byte by byte, all along"
    assert SECRET not in out + err


def test_sigterm_during_the_start_ping_stops_at_once(store, tmp_path, slow_server):
    """SIGTERM while the start ping waits for its slow answer (the server has the request, so
    the run stands in the start ping): the run stops before it began, with one line and exit
    status 130, and the final ping (/130) gets the short deadline after an interrupt, although
    a ping may otherwise take 120 s here."""
    env = {**CLI_ENV, "MAILBAK_PING_TIMEOUT": LONG_TIMEOUT}
    proc = mailbak("backup", "--ping-url", slow_server.url, store, tmp_path / "b", env=env)
    slow_server.wait_for(("GET", f"/ping/{SECRET}/start"), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = finish(proc)
    assert proc.returncode == 130, err
    assert "mailbak: interrupted (SIGTERM); the run had not begun: nothing was written" in err
    assert "Traceback" not in err
    assert not (tmp_path / "b").exists()
    assert ("POST", f"/ping/{SECRET}/130") in slow_server.requests, "the final ping was sent"
    assert "final ping to http://127.0.0.1:" in err and "timed out after 2." in err, err


def test_sigterm_during_the_backup_keeps_the_final_ping_short(store, tmp_path, slow_final_server):
    """SIGTERM while the backup runs (held at a pause point, so the signal lands there): the
    final ping /130 to a slow server gets the short deadline, not the 120 s a ping may take."""
    pp = PausePoint(tmp_path / "pause", "backup.started")
    pp.env["MAILBAK_PING_TIMEOUT"] = LONG_TIMEOUT
    proc = pp.popen("backup", "--ping-url", slow_final_server.url, store, tmp_path / "b")
    pp.wait_reached(proc)
    proc.send_signal(signal.SIGTERM)
    pp.go()
    _, err = finish(proc)
    assert proc.returncode == 130, err
    assert "mailbak: interrupted (SIGTERM)" in err and "Traceback" not in err
    assert manifest_of(tmp_path / "b")["status"] == "running", "stopped mid-run, as the signal meant"
    assert slow_final_server.requests == [("GET", f"/ping/{SECRET}/start"), ("POST", f"/ping/{SECRET}/130")]
    assert "final ping to http://127.0.0.1:" in err and "timed out after 2." in err, err


def test_sigterm_during_the_final_ping_cuts_it_short(store, tmp_path, slow_final_server):
    """SIGTERM while the final ping of a finished backup waits for its slow answer: the ping
    gets the short deadline, the run's exit status stays its own (0), no traceback."""
    env = {**CLI_ENV, "MAILBAK_PING_TIMEOUT": LONG_TIMEOUT}
    proc = mailbak("backup", "--ping-url", slow_final_server.url, store, tmp_path / "b", env=env)
    slow_final_server.wait_for(("POST", f"/ping/{SECRET}"), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = finish(proc)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert manifest_of(tmp_path / "b")["status"] == "ok"
    assert "final ping to http://127.0.0.1:" in err and "cut short by SIGTERM" in err, err


# Ping URLs urllib cannot use ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:99999/x", "Port out of range"),
        ("http://127.0.0.1:0/x", "port 0"),
        ("http://127.0.0.1:8o/x", "Port could not be cast to integer"),
        ("http://[::1/x", "Invalid IPv6 URL"),
        ("http://127.0.0.1/a b", "a space or control character"),
        ("http://127.0.0.1/\u00e9t\u00e9", "non-ASCII character"),
        ("http://user:pw@127.0.0.1/x", "user:password@"),
        ("http://a..b/x", "not a valid host name"),
    ],
)
def test_ping_url_urllib_cannot_use_is_bad_usage(store, tmp_path, url, why):
    """Refused when the arguments are read (exit 2, one error line, nothing written), never a
    traceback after the run began nor a ping that fails every night."""
    p = run_cli("backup", "--ping-url", url, store, tmp_path / "b")
    assert p.returncode == 2, p.stderr
    assert why in p.stderr and "Invalid value for '--ping-url'" in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "b").exists()


# The previous metrics file --------------------------------------------------------------------


def test_metrics_file_a_fifo_does_not_hang_the_run(store, tmp_path):
    """A FIFO where the metrics file was (anyone who can write the collector's directory can
    make one): never opened to wait for a writer; replaced, with a warning."""
    prom = tmp_path / "b.prom"
    os.mkfifo(prom)
    p = run_cli("backup", "--metrics-file", prom, store, tmp_path / "b", timeout=90)
    assert p.returncode == 0, p.stderr
    assert "the previous metrics file was not read (it is not a regular file" in p.stderr
    assert stat.S_ISREG(prom.lstat().st_mode)
    m = metrics_of(prom)
    assert value(m, "mailbak_success") == 1


def limit_memory() -> None:
    """1 GiB of address space: a run that reads /dev/zero fails fast instead of taking the
    machine's memory."""
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def test_metrics_file_a_symlink_to_dev_zero_is_not_read(store, tmp_path):
    prom = tmp_path / "b.prom"
    prom.symlink_to("/dev/zero")
    p = subprocess.run([sys.executable, "-m", "mailbak", "backup", "--metrics-file", prom, store, tmp_path / "b"], capture_output=True, text=True, env=CLI_ENV, timeout=90, preexec_fn=limit_memory)
    assert p.returncode == 0, p.stderr
    assert "the previous metrics file was not read (it is a symlink (never followed))" in p.stderr
    assert not prom.is_symlink() and stat.S_ISREG(prom.lstat().st_mode), "replaced, not followed"
    assert value(metrics_of(prom), "mailbak_success") == 1


def test_metrics_file_a_symlink_is_not_read_through(store, tmp_path):
    """A symlink to a file only root may read: its content never reaches the new file (here a
    planted last-success time of 2100 that a failed run would have carried on)."""
    secret = tmp_path / "root-only"
    secret.write_text("mailbak_last_success_timestamp_seconds 4102444800\n")
    secret.chmod(0o600)
    prom = tmp_path / "b.prom"
    prom.symlink_to(secret)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").touch()
    p = run_cli("backup", "--metrics-file", prom, store, tmp_path / "full")
    assert p.returncode == 2, p.stderr
    assert "it is a symlink (never followed)" in p.stderr
    m = metrics_of(prom)
    assert value(m, "mailbak_last_success_timestamp_seconds") == 0
    assert secret.read_text() == "mailbak_last_success_timestamp_seconds 4102444800\n"


def test_oversized_metrics_file_is_replaced_unread(store, tmp_path):
    """A metrics file far larger than mailbak writes is not its own: only a bounded head is
    read, and its last-success time (here at its end) is not carried on."""
    prom = tmp_path / "b.prom"
    # The line first: a reader that kept a bounded head of the file would find it there.
    prom.write_text("mailbak_last_success_timestamp_seconds 1700000000\n" + "# padding\n" * 200_000)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").touch()
    p = run_cli("backup", "--metrics-file", prom, store, tmp_path / "full")
    assert p.returncode == 2, p.stderr
    assert "the previous metrics file was not read (it is larger than 65536 bytes" in p.stderr
    assert value(metrics_of(prom), "mailbak_last_success_timestamp_seconds") == 0

"""Unattended runs: --metrics-file (checked with the official Prometheus client's parser),
--ping-url against HTTP servers this test starts on 127.0.0.1, and the private-/tmp warning."""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import CLI_ENV, backup_ok, free_port, json_lines, make_store, manifest_of, remove_a_message_file, run_cli, start_times
from mailbak.monitor import METRICS, PING_BODY_BYTES
from prometheus_client.parser import text_string_to_metric_families

SECRET = "5f0e3a1c-9d4b-4c8e-b1a2-0123456789ab"


def metrics_of(path: Path) -> dict[str, list]:
    """name -> samples, parsed by prometheus_client; also checks HELP and TYPE of each family."""
    families = {f.name: f for f in text_string_to_metric_families(path.read_text())}
    for name, f in families.items():
        assert f.type == "gauge", name
        assert f.documentation == METRICS[name], name
    return {name: f.samples for name, f in families.items()}


def value(metrics: dict, name: str, **labels) -> float:
    found = [s.value for s in metrics[name] if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, metrics[name])
    return found[0]


# Metrics -------------------------------------------------------------------------------------


def test_prune_metrics_parse_and_match_the_summary(store, shm_dir):
    repo = shm_dir / "repo"
    assert run_cli("init", repo).returncode == 0
    for start in start_times(2):  # a snapshot name each, no sleep past a second boundary
        backup_ok(store, repo, clock=start)
    prom = shm_dir / "prune.prom"
    p = run_cli("prune", "--json", "--keep-last", "1", "--metrics-file", prom, repo)
    assert p.returncode == 0, p.stderr
    summary = json_lines(p.stdout)[-1]
    m = metrics_of(prom)
    assert set(m) == set(METRICS) - {"mailbak_bytes_copied", "mailbak_bytes_read", "mailbak_inodes_checked"}
    assert value(m, "mailbak_success", command="prune", target=str(repo)) == 1
    assert value(m, "mailbak_snapshots", state="kept") == summary["kept"] == 1
    assert value(m, "mailbak_snapshots", state="removed") == summary["removed"] == 1
    assert value(m, "mailbak_files", kind="deleted") == summary["files_deleted"] > 10


def test_backup_metrics_parse_and_match_the_manifest(store, tmp_path):
    prom = tmp_path / "mailbak-backup.prom"
    t0 = time.time()
    backup_ok(store, tmp_path / "b", "--metrics-file", prom)
    m = metrics_of(prom)
    assert set(m) == set(METRICS) - {"mailbak_snapshots", "mailbak_bytes_read", "mailbak_inodes_checked"}, "mailbak_snapshots is prune's, bytes read and inodes check's"
    labels = {"command": "backup", "target": str(store)}
    for samples in m.values():
        for s in samples:
            assert {k: v for k, v in s.labels.items() if k != "kind"} == labels
    man = manifest_of(tmp_path / "b")
    areas = [man["queue"], *man["accounts"].values()]
    assert value(m, "mailbak_success") == 1
    assert value(m, "mailbak_exit_status") == 0
    assert t0 <= value(m, "mailbak_last_run_timestamp_seconds") <= time.time()
    assert value(m, "mailbak_last_success_timestamp_seconds") == value(m, "mailbak_last_run_timestamp_seconds")
    assert 0 < value(m, "mailbak_duration_seconds") < 300
    assert value(m, "mailbak_files", kind="linked") == sum(a["linked"] for a in areas) > 0
    assert value(m, "mailbak_files", kind="skipped") == sum(a["skipped_new"] + a["skipped_erasing"] for a in areas)
    assert {s.labels["kind"] for s in m["mailbak_files"]} == {"linked", "reused", "copied", "skipped", "unrecognized"}
    # Hardlinked messages cost nothing; the databases are copies.
    assert value(m, "mailbak_bytes_copied") >= sum(d["bytes"] for d in man["databases"].values()) > 0
    assert value(m, "mailbak_warnings") == man["warnings"]
    assert value(m, "mailbak_errors") == man["errors"] == 0
    assert prom.stat().st_mode & 0o777 == 0o644, "node_exporter runs as its own user"
    assert os.listdir(tmp_path / "b") and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_failed_runs_keep_the_last_success_time(store, tmp_path):
    prom = tmp_path / "verify.prom"
    backup_ok(store, tmp_path / "b")
    assert run_cli("verify", "--metrics-file", prom, tmp_path / "b").returncode == 0
    first = metrics_of(prom)
    success_at = value(first, "mailbak_last_success_timestamp_seconds")
    assert value(first, "mailbak_files", kind="checked") > 0

    remove_a_message_file(tmp_path / "b")
    p = run_cli("verify", "--metrics-file", prom, tmp_path / "b")
    assert p.returncode == 1
    m = metrics_of(prom)
    assert value(m, "mailbak_success") == 0
    assert value(m, "mailbak_exit_status") == 1
    assert value(m, "mailbak_files", kind="missing") == 1
    assert value(m, "mailbak_errors") >= 1
    assert value(m, "mailbak_last_run_timestamp_seconds") > success_at
    assert value(m, "mailbak_last_success_timestamp_seconds") == success_at
    assert "mailbak_bytes_copied" not in m  # a verify copies nothing

    # A run that never starts (bad input, exit 2) is a failure too, and keeps it as well.
    assert run_cli("verify", "--metrics-file", prom, tmp_path / "nonexistent").returncode == 2
    m = metrics_of(prom)
    assert value(m, "mailbak_exit_status") == 2 and value(m, "mailbak_success") == 0
    assert value(m, "mailbak_last_success_timestamp_seconds") == success_at


def test_first_run_failing_records_no_success(store, tmp_path):
    prom = tmp_path / "b.prom"
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").touch()
    assert run_cli("backup", "--metrics-file", prom, store, tmp_path / "full").returncode == 2
    m = metrics_of(prom)
    assert value(m, "mailbak_last_success_timestamp_seconds") == 0  # "no success in 26 hours" fires


def test_metrics_file_is_replaced_by_rename(store, tmp_path):
    """A reader holding the old file keeps reading a whole old file: the new one is written
    beside it and renamed over it, never rewritten in place."""
    prom = tmp_path / "b.prom"
    backup_ok(store, tmp_path / "b1", "--metrics-file", prom)
    with open(prom) as old:
        before = old.read()
        old_inode = os.fstat(old.fileno()).st_ino
        backup_ok(store, tmp_path / "b2", "--metrics-file", prom)
        old.seek(0)
        assert old.read() == before
    assert prom.stat().st_ino != old_inode
    assert prom.read_text() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.prom", "b1", "b2", "store"], "no temporary file left"


def test_label_values_are_escaped(tmp_path):
    odd = tmp_path / 'a "quoted" back\\slash\nnewline store'
    make_store(odd, messages=20, accounts=1)
    prom = tmp_path / "b.prom"
    backup_ok(odd, tmp_path / "b", "--metrics-file", prom)
    m = metrics_of(prom)
    assert value(m, "mailbak_success", target=str(odd)) == 1
    assert '\\"quoted\\" back\\\\slash\\nnewline' in prom.read_text()


def test_metrics_file_in_a_missing_directory_is_bad_usage(store, tmp_path):
    p = run_cli("backup", "--metrics-file", tmp_path / "nope" / "b.prom", store, tmp_path / "b")
    assert p.returncode == 2
    assert "no such directory" in p.stderr
    assert not (tmp_path / "b").exists()


# Pings ---------------------------------------------------------------------------------------


class PingServer:
    """A healthchecks.io stand-in on 127.0.0.1: records (method, path, body) of each request."""

    def __init__(self):
        self.requests: list[tuple[str, str, bytes]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.answer(b"")

            def do_POST(self):
                self.answer(self.rfile.read(int(self.headers.get("Content-Length", 0))))

            def answer(self, body):
                server.requests.append((self.command, self.path, body))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/ping/{SECRET}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def pings():
    s = PingServer()
    yield s
    s.close()


def test_successful_backup_pings_start_then_success_with_its_log(store, tmp_path, pings):
    p = backup_ok(store, tmp_path / "b", "--ping-url", pings.url)
    assert [(m, path) for m, path, _ in pings.requests] == [("GET", f"/ping/{SECRET}/start"), ("POST", f"/ping/{SECRET}")]
    body = pings.requests[1][2].decode()
    assert "== messages" in body and "backup ok" in body and body.endswith("mailbak backup: exit status 0\n")
    assert p.stderr.count("warning") == 0


def test_failed_runs_ping_their_exit_status(store, tmp_path, pings):
    backup_ok(store, tmp_path / "b")
    remove_a_message_file(tmp_path / "b")
    assert run_cli("verify", "--ping-url", pings.url, tmp_path / "b").returncode == 1
    assert run_cli("backup", "--ping-url", pings.url, store, tmp_path / "b").returncode == 2
    assert [(m, path) for m, path, _ in pings.requests] == [
        ("GET", f"/ping/{SECRET}/start"),
        ("POST", f"/ping/{SECRET}/1"),
        ("GET", f"/ping/{SECRET}/start"),
        ("POST", f"/ping/{SECRET}/2"),
    ]
    assert b"has no file" in pings.requests[1][2]
    assert b"destination is not empty" in pings.requests[3][2]


def test_ping_body_is_the_last_100_kB_of_the_log(store, tmp_path, pings):
    for i in range(1500):  # one ~90-byte "unrecognized" warning each: well over 100 kB
        (store / "data" / f"stray-file-{i:05d}-{'x' * 40}").touch()
    backup_ok(store, tmp_path / "b", "--quiet", "--ping-url", pings.url)
    body = pings.requests[-1][2]
    assert PING_BODY_BYTES - 200 < len(body) <= PING_BODY_BYTES
    assert b"== config" not in body, "the start of the log is cut off"
    assert b"stray-file-01499" in body and body.endswith(b"exit status 0\n")


def test_unreachable_ping_is_a_warning_and_keeps_the_secret(store, tmp_path):
    port = free_port()  # nothing listens there now
    url = f"http://127.0.0.1:{port}/{SECRET}"
    p = run_cli("backup", "--json", "--ping-url", url, store, tmp_path / "b")
    assert p.returncode == 0, p.stderr
    events = json_lines(p.stdout)
    warned = [e for e in events if e.get("code") == "ping_failed"]
    assert len(warned) == 1 and f"http://127.0.0.1:{port}/…" in warned[0]["cause"]
    assert events[-1]["message_type"] == "summary" and events[-1]["status"] == "ok"
    assert "final ping to" in p.stderr and "the run is not affected" in p.stderr
    assert SECRET not in p.stdout + p.stderr
    assert manifest_of(tmp_path / "b")["status"] == "ok"


def test_stalled_ping_server_times_out_as_a_warning(store, tmp_path):
    """A server that accepts and never answers: each ping gives up after the timeout (0.5 s
    here instead of 10 s) and the backup succeeds."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted = []
    threading.Thread(target=lambda: [accepted.append(listener.accept()) for _ in range(2)], daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/{SECRET}"
    try:
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-m", "mailbak", "backup", "--ping-url", url, store, tmp_path / "b"], capture_output=True, text=True, timeout=120, env={**CLI_ENV, "MAILBAK_PING_TIMEOUT": "0.5"})
        took = time.monotonic() - t0
    finally:
        listener.close()
    assert p.returncode == 0, p.stderr
    assert len(accepted) == 2, "both pings reached the server"
    assert p.stderr.count("timed out") == 2, p.stderr
    assert took < 60
    assert SECRET not in p.stderr


def test_bad_ping_url_is_bad_usage(store, tmp_path):
    p = run_cli("backup", "--ping-url", "ftp://example.org/x", store, tmp_path / "b")
    assert p.returncode == 2 and "not an http:// or https:// URL" in p.stderr
    assert not (tmp_path / "b").exists()


# systemd's private /tmp ----------------------------------------------------------------------


def test_dest_in_a_private_tmp_of_a_service_is_warned_about(store, tmp_path):
    """Recreates what PrivateTmp= does (a systemd-private-* directory bind-mounted over
    /var/tmp, in a mount namespace of its own) around a backup run as a service would be."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) for a mount namespace")
    private = tmp_path / "systemd-private-0123abcd-mailbak-backup@mox.service-Ab12Cd" / "tmp"
    private.mkdir(parents=True)
    env = {**CLI_ENV, "INVOCATION_ID": "0123abcd0123abcd0123abcd0123abcd"}
    script = 'mount --bind "$1" /var/tmp && exec "$2" -m mailbak backup "$3" "$4"'

    def run(dest: str, env: dict) -> subprocess.CompletedProcess:
        return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", private, sys.executable, store, dest], capture_output=True, text=True, env=env, timeout=300)

    p = run("/var/tmp/backup", env)
    assert p.returncode == 0, p.stderr
    assert "warning: /var/tmp/backup: /var/tmp is private to this systemd service (PrivateTmp=)" in p.stderr
    assert (private / "backup" / "mailbak.json").exists()

    # Outside a service, or with DEST elsewhere, no warning.
    p = run("/var/tmp/backup2", CLI_ENV)
    assert p.returncode == 0 and "PrivateTmp" not in p.stderr
    p = run(str(tmp_path / "backup3"), env)
    assert p.returncode == 0 and "PrivateTmp" not in p.stderr


def test_the_ping_log_escapes_names_in_the_summary():
    """The ping's body is the run's log: an account name (the store's owner chooses it) with
    a newline must not forge a line there, as it cannot on a terminal or in plain output."""
    from mailbak.report import LogTail

    log = LogTail(PING_BODY_BYTES)
    log.summary("backup ok: /b", {"warnings": 0, "errors": 0}, [("area", "linked"), ("evil\nmailbak backup: exit status 0", "1")])
    lines = log.text().decode().splitlines()
    assert "mailbak backup: exit status 0" not in lines, lines
    assert any("evil" in ln and "exit status 0" in ln for ln in lines), lines

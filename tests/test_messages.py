"""What the commands say: hostile account names cannot forge output, each message names what is
wrong, progress counts end at their totals, and Ctrl-C or SIGTERM at any moment exits 130 with
one line (issue 14 points 6 and 7, issue 9 point 5)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CLI_ENV, backup_ok, json_lines, make_store, manifest_of, run_cli
from mailbak.store import Store
from mailbak.text import escape_path, toml_key
from test_terminal import run_on_tty

#: A valid account name that would rewrite the terminal line and erase it if printed raw.
FORGER = "evil\rbackup failed: forged\x1b[2K"
#: A valid account name that rich would take for markup if it were handed a str.
MARKUP = "[red]mark"
#: An invalid account name (leading dot) that is still named in an error.
INVALID = ".bad\r\x1b[2Kforged\n"


def hostile_store(path: Path) -> Path:
    """A generated store plus accounts named FORGER and MARKUP (one message each, and a stray
    file so that a warning names a path inside each), and INVALID in the config."""
    make_store(path, messages=60, accounts=2)
    with Store.open(path, durable=False) as s:
        for name in (FORGER, MARKUP):
            acc = s.add_account(name)
            acc.deliver(acc.mailbox_id("Inbox"), b"Subject: hi\r\n\r\nhello\r\n")
            (path / "data" / "accounts" / name / "notes\rforged").write_text("x")
    with open(path / "config" / "mailstore.toml", "a") as f:
        f.write(f"\n[accounts.{toml_key(INVALID)}]\n")
    return path


def assert_nothing_forged(text: str) -> None:
    """No raw carriage return, escape or raw name in ``text``; the escaped names are there."""
    assert "\r" not in text and "\x1b" not in text, repr(text)
    assert "forged\n" not in text


def test_names_are_escaped_in_plain_output(tmp_path: Path):
    store = hostile_store(tmp_path / "store")
    dest, target = tmp_path / "b", tmp_path / "r"
    outputs = []
    p = run_cli("backup", store, dest)
    assert p.returncode == 1, p.stdout + p.stderr  # the invalid account is an error
    outputs.append(p)
    assert f"account {escape_path(FORGER)}" in p.stdout  # the table row
    assert f"account {MARKUP}" in p.stdout
    assert escape_path(f"data/accounts/{FORGER}/notes\rforged") in p.stderr  # a warning's path
    assert "'.bad\\r\\x1b[2Kforged\\n'" in p.stderr  # the error naming INVALID
    for args in (("verify", store), ("verify", dest), ("restore", "--force", dest, target)):
        q = run_cli(*args)
        assert q.returncode == 1, q.stdout + q.stderr
        outputs.append(q)
    assert f"account {escape_path(FORGER)}" in outputs[1].stdout  # verify's table
    assert f"account {escape_path(FORGER)}" in outputs[2].stdout
    for q in outputs:
        assert_nothing_forged(q.stdout + q.stderr)
    # JSON was already safe: the names come back intact.
    j = run_cli("verify", "--json", dest)
    assert any(e.get("path", "").startswith(escape_path(f"data/accounts/{FORGER}")) for e in json_lines(j.stdout))
    assert FORGER in manifest_of(dest)["accounts"]


def test_names_are_escaped_on_a_terminal(tmp_path: Path):
    store = hostile_store(tmp_path / "store")
    for args in (("backup", str(store), str(tmp_path / "b")), ("verify", str(store))):
        status, out = run_on_tty(*args)
        assert status == 1, out
        assert "forged\x1b[2K" not in out and "\rbackup failed" not in out, repr(out)
        assert "forged\\x1b[2K" in out  # the table row, escaped
        assert MARKUP in out, "brackets in a name are text, not rich markup"
        assert "Traceback" not in out


# Messages that say what is wrong --------------------------------------------------------------


def first_dir(store: Path, account: str = "user0000") -> Path:
    return sorted((store / "data" / "accounts" / account / "msg").iterdir())[0]


def test_a_directory_at_a_message_path_is_not_a_regular_file(tmp_path: Path):
    store = make_store(tmp_path / "store", messages=60, accounts=2)
    victim = sorted(first_dir(store).iterdir(), key=lambda p: int(p.name))[0]
    victim.unlink()
    victim.mkdir()
    p = run_cli("backup", store, tmp_path / "b")
    assert p.returncode == 1, p.stderr
    assert "File exists" not in p.stderr
    rel = victim.relative_to(store)
    assert f"error: {rel}: message {victim.name}: not a regular file" in p.stderr
    assert manifest_of(tmp_path / "b")["accounts"]["user0000"]["missing"] == 1


def test_a_symlinked_message_directory_is_one_error_and_its_messages_are_missing(tmp_path: Path):
    store = make_store(tmp_path / "store", messages=60, accounts=2)
    d = first_dir(store)
    count = len(list(d.iterdir()))
    assert count > 1
    elsewhere = tmp_path / "elsewhere"
    d.rename(elsewhere)
    d.symlink_to(elsewhere)
    rel = d.relative_to(store)
    p = run_cli("backup", store, tmp_path / "b")
    assert p.returncode == 1, p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {rel}: message directory: not a directory (a symlink is never followed); its {count} message(s) of the snapshot are not backed up"]
    assert manifest_of(tmp_path / "b")["accounts"]["user0000"]["missing"] == count
    row = next(line for line in p.stdout.splitlines() if "account user0000" in line)
    assert row.split()[-1] == str(count), p.stdout  # the table's missing column
    v = run_cli("verify", store)
    assert v.returncode == 1
    errors = [line for line in v.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {rel}: message directory: not a directory (a symlink is never followed); its {count} message(s) count as missing"]


def test_dest_a_symlink_says_so(tmp_path: Path, store: Path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    p = run_cli("backup", store, tmp_path / "link")
    assert p.returncode == 2
    assert p.stderr.strip() == f"mailbak: error: {tmp_path / 'link'}: is a symlink (a symlink is never followed); give the directory it points to itself"
    assert not list((tmp_path / "empty").iterdir())


def test_restore_into_a_non_empty_target_says_restore(tmp_path: Path, store: Path):
    backup_ok(store, tmp_path / "b")
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "x").write_text("x")
    p = run_cli("restore", tmp_path / "b", tmp_path / "t")
    assert p.returncode == 2
    assert "(restore into a new or empty directory)" in p.stderr and "back up" not in p.stderr


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 64 KiB tmpfs: too small for a snapshot of a store's databases."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=1777", "tmpfs", str(mnt)], capture_output=True, text=True)
    assert r.returncode == 0, f"cannot mount a tmpfs ({r.stderr.strip()}); tests run as root"
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


def test_verify_with_a_full_tmpdir_names_the_temporary_directory(tmp_path: Path, tiny_tmpfs: Path):
    store = make_store(tmp_path / "store", messages=3000, accounts=2)
    assert max(p.stat().st_size for p in (store / "data").rglob("index.db")) > 64 * 1024
    p = subprocess.run([sys.executable, "-m", "mailbak", "verify", str(store)], capture_output=True, text=True, env={**CLI_ENV, "TMPDIR": str(tiny_tmpfs)})
    assert p.returncode == 1, p.stdout + p.stderr
    assert "the destination" not in p.stderr
    assert f"mailbak: error: the temporary directory {tiny_tmpfs}/mailbak-verify-" in p.stderr
    assert "is full" in p.stderr and "TMPDIR" in p.stderr and "Traceback" not in p.stderr


def test_an_empty_index_is_not_an_lmdb_database(tmp_path: Path, store: Path):
    backup_ok(store, tmp_path / "good")
    for root in (store, tmp_path / "good"):
        (root / "data" / "accounts" / "user0000" / "index.db").write_bytes(b"")
    b = run_cli("backup", store, tmp_path / "b")
    v = run_cli("verify", store)
    vb = run_cli("verify", tmp_path / "good")
    for p in (b, v, vb):
        assert p.returncode == 1, p.stderr
        assert "data/accounts/user0000/index.db: " in p.stderr and "empty file, not an LMDB database" in p.stderr, p.stderr
        assert "Bad file descriptor" not in p.stderr and "too short" not in p.stderr


@pytest.fixture
def bind_view(tmp_path):
    """(store, view): a store and a bind mount of its directory, on one file system."""
    store = make_store(tmp_path / "store", messages=60, accounts=2)
    view = tmp_path / "view"
    view.mkdir()
    r = subprocess.run(["mount", "--bind", str(store), str(view)], capture_output=True, text=True)
    assert r.returncode == 0, f"cannot bind-mount ({r.stderr.strip()}); tests run as root"
    yield store, view
    subprocess.run(["umount", "-l", str(view)])


def test_exdev_through_a_bind_mount_says_bind_mount(tmp_path: Path, bind_view):
    store, view = bind_view
    dest = tmp_path / "b"
    assert os.stat(view).st_dev == os.stat(tmp_path).st_dev
    p = backup_ok(view, dest)
    warnings = [line for line in p.stderr.splitlines() if "hardlinks are not possible" in line]
    assert len(warnings) == 1, p.stderr
    assert "Invalid cross-device link" in warnings[0]
    assert "same file system but reached through different mounts (a bind mount" in warnings[0]
    assert "DEST on the same file system as the store" not in warnings[0]


def test_an_invalid_account_is_named_once(tmp_path: Path, store: Path):
    with open(store / "config" / "mailstore.toml", "a") as f:
        f.write("\n[accounts]\nalice = 1\n")
    p = run_cli("backup", store, tmp_path / "b")
    assert p.returncode == 1
    line = next(line for line in p.stderr.splitlines() if "alice" in line)
    assert line.count("alice") == 1, line
    assert "account 'alice': its entry must be a table" in line
    v = run_cli("verify", tmp_path / "b")
    line = next(line for line in v.stderr.splitlines() if "invalid" in line or "alice" in line)
    assert line.count("alice") == 1, line


def last_status(lines: list[dict], phase: str) -> dict:
    return [o for o in lines if o["message_type"] == "status" and o["phase"] == phase][-1]


def test_progress_counts_databases_and_ends_at_its_totals(tmp_path: Path, store: Path):
    blooms = list((store / "data" / "accounts").glob("*/junkfilter.bloom"))
    assert blooms, "the generated store has junk filters, which once counted as messages"
    p = run_cli("backup", "--json", store, tmp_path / "b")
    assert p.returncode == 0, p.stderr
    lines = json_lines(p.stdout)
    accounts = len(manifest_of(tmp_path / "b")["accounts"])
    dbs = last_status(lines, "databases")
    assert dbs["files_done"] == dbs["files_total"] == 6 + 1 + accounts
    msgs = last_status(lines, "messages")
    assert msgs["files_done"] == msgs["files_total"] > 0
    assert all(o["files_done"] <= o["files_total"] for o in lines if o["message_type"] == "status" and "files_total" in o)
    # JSON status lines are rate-limited; the terminal's bars show the final positions.
    status, out = run_on_tty("backup", str(store), str(tmp_path / "b2"))
    assert status == 0, out
    clean = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    for phase, total in (("databases", 6 + 1 + accounts), ("messages", msgs["files_total"])):
        positions = re.findall(phase + r"[^\n\r/]*?(\d+)/(\d+|\?)", clean)
        assert positions and positions[-1] == (str(total), str(total)), (phase, positions[-3:])
    v = json_lines(run_cli("verify", "--json", store).stdout)
    dbs = last_status(v, "databases")
    assert dbs["files_done"] == dbs["files_total"] == 6 + 1 + accounts
    files = last_status(v, "files")
    assert files["files_done"] == files["files_total"] > 0


# The link-fallback warning counts the files ------------------------------------------------


def copied_messages(m: dict) -> int:
    return m["queue"]["copied"] + sum(a["copied"] for a in m["accounts"].values())


def test_link_fallback_across_file_systems_counts_the_copies(shm_dir: Path, tmp_path: Path):
    store = make_store(shm_dir / "store", messages=200, accounts=3)
    p = backup_ok(store, tmp_path / "b")
    n = copied_messages(manifest_of(tmp_path / "b"))
    assert n > 100
    warnings = [line for line in p.stderr.splitlines() if "link_fallback" in line or "hardlinks are not possible" in line]
    assert warnings == [f"warning: hardlinks are not possible (Invalid cross-device link): {n} files were copied instead of hardlinked; DEST on the same file system as the store makes backups nearly free (hardlinks instead of copies)"]


def test_link_fallback_for_one_immutable_file_says_one_file(tmp_path: Path, store: Path):
    victim = sorted(first_dir(store).iterdir())[0]
    r = subprocess.run(["chattr", "+i", str(victim)], capture_output=True, text=True)
    assert r.returncode == 0, f"chattr +i failed ({r.stderr.strip()}); tests run as root on a file system with attributes"
    try:
        p = backup_ok(store, tmp_path / "b")
    finally:
        subprocess.run(["chattr", "-i", str(victim)])
    m = manifest_of(tmp_path / "b")
    assert copied_messages(m) == 1 and m["accounts"]["user0000"]["linked"] > 0
    warnings = [line for line in p.stderr.splitlines() if "hardlinks are not possible" in line]
    assert warnings == ["warning: hardlinks are not possible (Operation not permitted): 1 file was copied instead of hardlinked"]
    assert (tmp_path / "b" / victim.relative_to(store)).read_bytes() == victim.read_bytes()


# Ctrl-C and SIGTERM at every moment ----------------------------------------------------------


def run_paused(args: list[str], point: str, sig: int, pause_dir: Path) -> subprocess.CompletedProcess:
    """Runs `mailbak ARGS` until it reaches pause point ``point``, sends ``sig``, and returns the
    finished process; fails unless the point was reached."""
    pause_dir.mkdir()
    env = {**CLI_ENV, "MAILBAK_TEST_PAUSE": point, "MAILBAK_TEST_PAUSE_DIR": str(pause_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "mailbak", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while not (pause_dir / f"{point}.reached").exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"finished without reaching {point}: {proc.returncode}\n{out}\n{err}")
        assert time.monotonic() < deadline, f"{point} not reached"
        time.sleep(0.01)
    proc.send_signal(sig)
    (pause_dir / f"{point}.go").touch()
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize(
    "command, point, sig",
    [
        ("backup", "backup.check", signal.SIGINT),
        ("backup", "read_config", signal.SIGTERM),
        ("backup", "snapshot", signal.SIGINT),
        ("backup", "summary", signal.SIGTERM),
        ("verify-store", "verify.check", signal.SIGTERM),
        ("verify-store", "snapshot", signal.SIGINT),
        ("verify-backup", "read_config", signal.SIGINT),
        ("verify-backup", "summary", signal.SIGINT),
        ("restore", "restore.check", signal.SIGINT),
        ("restore", "summary", signal.SIGTERM),
    ],
)
def test_interrupt_at_every_moment_exits_130_with_one_line(tmp_path: Path, store: Path, command: str, point: str, sig: int):
    backup_ok(store, tmp_path / "good")
    args = {
        "backup": ["backup", str(store), str(tmp_path / "b")],
        "verify-store": ["verify", str(store)],
        "verify-backup": ["verify", str(tmp_path / "good")],
        "restore": ["restore", str(tmp_path / "good"), str(tmp_path / "r")],
    }[command]
    p = run_paused(args, point, sig, tmp_path / "pause")
    assert p.returncode == 130, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    # Phase headings ("== config") and restore's "restored into" are progress; besides them,
    # exactly one line.
    lines = [line for line in p.stderr.splitlines() if not line.startswith(("== ", "restored into "))]
    assert len(lines) == 1 and lines[0].startswith(f"mailbak: interrupted ({signal.Signals(sig).name})"), p.stderr
    if command == "backup" and point != "summary":
        # Never a final manifest: none at all before DEST exists, else one that still says running.
        m = tmp_path / "b" / "mailbak.json"
        assert not m.exists() or json.loads(m.read_text())["status"] == "running"
    if point in ("backup.check", "restore.check"):
        assert lines[0].endswith("; nothing was written") and not (tmp_path / args[-1]).exists(), lines


def test_interrupt_while_the_summary_is_drawn_on_a_terminal(tmp_path: Path, store: Path):
    import pty
    import select

    pause_dir = tmp_path / "pause"
    pause_dir.mkdir()
    env = {**CLI_ENV, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40", "MAILBAK_TEST_PAUSE": "summary", "MAILBAK_TEST_PAUSE_DIR": str(pause_dir)}
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "mailbak", "backup", str(store), str(tmp_path / "b")], stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
    os.close(slave)
    out = bytearray()
    sent = False
    deadline = time.monotonic() + 120
    while True:
        if not sent and (pause_dir / "summary.reached").exists():
            proc.send_signal(signal.SIGINT)
            (pause_dir / "summary.go").touch()
            sent = True
        r, _, _ = select.select([master], [], [], 0.05)
        chunk = b""
        if r:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                pass
            out += chunk
        if not chunk and proc.poll() is not None:
            break
        assert time.monotonic() < deadline
    os.close(master)
    text = out.decode("utf-8", "replace")
    assert sent, "the summary pause point was never reached: " + text
    assert proc.wait() == 130, text
    assert "interrupted (SIGINT)" in text and "Traceback" not in text
    assert json.loads((tmp_path / "b" / "mailbak.json").read_text())["status"] == "ok"

"""Faults during a backup (docs/RELIABILITY.md): each has a documented outcome, a clear message,
the right exit status, an untouched source, and an incomplete backup that verify calls
incomplete."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import lmdb
import pytest

from conftest import CLI_ENV, backup_ok, inode_listing, make_store, manifest_of, run_cli
from mailbak.layout import message_rel
from mailbak.store import Store


def popen_backup(store: Path, dest: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mailbak", "backup", *args, str(store), str(dest)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CLI_ENV)


def assert_incomplete(dest: Path) -> None:
    assert manifest_of(dest)["status"] == "running"  # written first, never replaced
    v = run_cli("verify", dest)
    assert v.returncode == 1, v.stdout + v.stderr
    assert "incomplete" in v.stderr


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 3 MiB tmpfs, to fill up."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0755", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); the full-destination test needs one")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


def test_destination_fills_up(tmp_path, small_tmpfs):
    store = make_store(tmp_path / "store", messages=2000, accounts=3)
    before = inode_listing(store)
    dest = small_tmpfs / "b"
    p = run_cli("backup", store, dest)
    assert p.returncode == 1, p.stderr
    assert "the destination cannot take more data" in p.stderr
    assert "No space left on device" in p.stderr
    assert "incomplete backup (its manifest says running)" in p.stderr
    assert "Traceback" not in p.stderr
    assert_incomplete(dest)
    assert inode_listing(store) == before


def test_message_file_removed_between_snapshot_and_link(tmp_path):
    """Many accounts make the database phase long enough to remove a file of the first account
    after its snapshot is copied and before the linking phase starts."""
    store = make_store(tmp_path / "store", messages=4000, accounts=150, seed=2)
    with Store.open(store, durable=False) as s:
        first = s.account_names()[0]
        victim = sorted(s.account(first).messages())[0]
    victim_path = store / "data" / "accounts" / first / "msg" / message_rel(victim)
    dest = tmp_path / "b"
    p = popen_backup(store, dest, "--jobs", "1")
    marker = dest / "data" / "accounts" / first / "index.db"
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.001)
    victim_path.unlink()  # what a writer ignoring the lease would do
    out, err = p.communicate(timeout=120)
    if (dest / "data" / "accounts" / first / "msg" / message_rel(victim)).exists():
        pytest.skip("the backup linked the file before it could be removed (machine too fast for this staging)")
    assert p.returncode == 1, err
    assert f"data/accounts/{first}/msg/{message_rel(victim)}" in err
    assert f"message {victim}" in err
    m = manifest_of(dest)
    assert m["status"] == "failed" and m["accounts"][first]["missing"] == 1


def test_corrupt_top_level_database(store, tmp_path):
    db = store / "data" / "dmarceval.db"
    raw = bytearray(db.read_bytes())
    for off in range(2 * 4096, len(raw), 4096):
        raw[off : off + 16] = b"\xee" * 16  # every page header after the metas
    db.write_bytes(bytes(raw))
    before = inode_listing(store)
    p = run_cli("backup", store, tmp_path / "b")
    assert p.returncode == 1
    assert "data/dmarceval.db: database not backed up: damaged: corrupt" in p.stderr
    m = manifest_of(tmp_path / "b")
    assert m["status"] == "failed" and "dmarceval.db" not in m["databases"] and "auth.db" in m["databases"]
    assert m["accounts"]["user0000"]["linked"] > 0
    assert inode_listing(store) == before


def readers(path: Path) -> str:
    env = lmdb.open(str(path), subdir=False, readonly=True, lock=True, max_dbs=0)
    try:
        return env.readers()
    finally:
        env.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_mid_run(tmp_path, sig):
    store = make_store(tmp_path / "store", messages=30000, accounts=6, seed=3)
    dest = tmp_path / "b"
    p = subprocess.Popen([sys.executable, "-m", "mailbak", "backup", "--json", "--jobs", "1", str(store), str(dest)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CLI_ENV)
    for line in p.stdout:
        if json.loads(line).get("phase") == "messages":
            break
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "interrupted" in err and "its manifest says running" in err
    assert_incomplete(dest)
    # No thread or process of the backup outlives it, and it left no LMDB reader slot behind.
    assert not Path(f"/proc/{p.pid}").exists()
    for db in [store / "data" / "queue" / "index.db", *sorted((store / "data" / "accounts").glob("*/index.db"))]:
        assert f" {p.pid} " not in readers(db), db
    # A fresh backup into a new DEST works.
    backup_ok(store, tmp_path / "again")


def test_sigkill_at_random_points(tmp_path):
    store = make_store(tmp_path / "store", messages=8000, accounts=5, seed=4)
    start = time.monotonic()
    backup_ok(store, tmp_path / "timing")
    duration = time.monotonic() - start
    rng = random.Random(7)
    for i in range(10):
        dest = tmp_path / f"k{i}"
        p = popen_backup(store, dest)
        time.sleep(rng.uniform(0.0, duration))
        p.kill()
        p.communicate(timeout=60)
        v = run_cli("verify", dest) if dest.exists() else None
        if (dest / "mailbak.json").exists() and manifest_of(dest)["status"] != "running":
            # Killed after it finished: the final manifest is only written once everything is
            # durable.
            assert v.returncode == 0, v.stdout + v.stderr
        elif dest.exists():
            assert v.returncode == 1 and "incomplete" in v.stderr, v.stdout + v.stderr
    backup_ok(store, tmp_path / "after")
    assert run_cli("verify", tmp_path / "after").returncode == 0


def test_destination_not_writable(store, public_dir):
    import pwd

    from test_backup import run_as

    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user")
    nobody = pwd.getpwnam("nobody")
    os.rename(store, public_dir / "store")
    store = public_dir / "store"
    for dirpath, dirnames, filenames in os.walk(store):
        for n in dirnames + filenames + ["."]:
            os.lchown(Path(dirpath) / n, nobody.pw_uid, nobody.pw_gid)
    dest = public_dir / "dest"
    dest.mkdir(mode=0o755)  # root's: nobody cannot write into it
    p = run_as(nobody, "backup", store, dest)
    assert p.returncode == 2, p.stderr
    assert "cannot write to the destination" in p.stderr and "Permission denied" in p.stderr
    assert os.listdir(dest) == []
    p = run_as(nobody, "backup", store, public_dir / "nested" / "dest")
    assert p.returncode == 2 and "parent directory does not exist" in p.stderr

"""Faults during a backup (docs/RELIABILITY.md): each has a documented outcome, a clear message,
the right exit status, an untouched source, and an incomplete backup that verify calls
incomplete."""

from __future__ import annotations

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
from pausing import PausePoint


def popen_backup(store: Path, dest: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mailbak", "backup", *args, str(store), str(dest)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CLI_ENV)


def assert_incomplete(dest: Path) -> None:
    assert manifest_of(dest)["status"] == "running"  # written first, never replaced
    v = run_cli("verify", dest)
    assert v.returncode == 1, v.stdout + v.stderr
    assert "incomplete" in v.stderr


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


def placed_messages(dest: Path) -> list[Path]:
    """Message files (all-digit names) placed in DEST's queue and accounts so far."""
    return sorted(p for area in ("queue", "accounts") for p in (dest / "data" / area).rglob("*") if p.name.isdigit() and p.is_file())


def test_message_file_removed_between_snapshot_and_link(tmp_path):
    """The backup stands still after placing its first message file (pause point
    engine_mid_link, one worker); the test removes another file of the same directory, one the
    snapshot claims and the walk has listed: it must be reported missing, by path and ID."""
    store = make_store(tmp_path / "store", messages=4000, accounts=3, seed=2)
    dest = tmp_path / "b"
    pp = PausePoint(tmp_path / "pause", "engine_mid_link")
    p = pp.popen("backup", "--jobs", "1", store, dest)
    try:
        pp.wait_reached(p)
        placed = placed_messages(dest)
        assert len(placed) == 1, placed  # one worker, paused after its first file
        rel_dir = placed[0].parent.relative_to(dest)
        siblings = sorted((store / rel_dir).iterdir(), key=lambda f: int(f.name))
        victim = next(f for f in reversed(siblings) if f.name != placed[0].name)
        victim.unlink()  # what a writer ignoring the lease would do
    finally:
        pp.go()
    out, err = p.communicate(timeout=120)
    rel = str(victim.relative_to(store))
    assert not (dest / rel).exists()
    assert p.returncode == 1, err
    assert f"{rel}: message {int(victim.name)}: its file disappeared while the backup ran" in err, err
    m = manifest_of(dest)
    area = m["queue"] if rel.startswith("data/queue/") else m["accounts"][rel.split("/")[2]]
    assert m["status"] == "failed" and area["missing"] == 1


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


def reader_pids(env: lmdb.Environment) -> set[int]:
    """PIDs in the reader table of an environment (one line per slot in use)."""
    return {int(line.split()[0]) for line in env.readers().splitlines()[1:] if line.split() and line.split()[0].isdigit()}


def leak_a_reader_slot(path: Path) -> int:
    """Starts a process that begins a read transaction on ``path`` and SIGKILLs it: it never
    releases its slot. Returns its PID."""
    code = f"import lmdb, time\ne = lmdb.open({str(path)!r}, subdir=False, readonly=True, lock=True, max_dbs=0)\nt = e.begin()\nprint('ready', flush=True)\ntime.sleep(120)\n"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    child.kill()
    child.wait()
    return child.pid


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_mid_run(tmp_path, sig):
    """The signal lands while files are being linked (pause point engine_mid_link). The test
    process holds every database open for the whole run, so LMDB never resets a reader table
    and a slot the backup leaked would still show; a SIGKILLed reader proves the check sees one."""
    # The signal lands at a pause point and the cancel flag is set before the worker resumes
    # (mark runner.cancelled): a store of a few thousand messages shows that the workers stop
    # at their next file as well as a larger one would.
    messages = 3000
    store = make_store(tmp_path / "store", messages=messages, accounts=6, seed=3)
    dbs = [store / "data" / "queue" / "index.db", *sorted((store / "data" / "accounts").glob("*/index.db")), *sorted((store / "data").glob("*.db"))]
    held = {db: lmdb.open(str(db), subdir=False, readonly=True, lock=True, max_dbs=0) for db in dbs}
    try:
        # The control: a reader that dies holding a transaction stays visible to this check.
        dead = leak_a_reader_slot(dbs[0])
        assert dead in reader_pids(held[dbs[0]])
        assert held[dbs[0]].reader_check() == 1 and reader_pids(held[dbs[0]]) == set()
        dest = tmp_path / "b"
        pp = PausePoint(tmp_path / "pause", "engine_mid_link", after=100)
        p = pp.popen("backup", "--jobs", "1", store, dest)
        try:
            pp.wait_reached(p)
            assert 100 <= len(placed_messages(dest)) < messages
            p.send_signal(sig)
            # The main thread's handler sets the cancel flag before the worker resumes.
            pp.wait_reached(p, mark="runner.cancelled")
        finally:
            pp.go()
        out, err = p.communicate(timeout=60)
        assert p.returncode == 130, err
        assert "interrupted" in err and "its manifest says running" in err and "Traceback" not in err
        assert_incomplete(dest)
        # Workers stopped at their next file: most files were never linked.
        assert len(placed_messages(dest)) < messages // 2
        # No thread or process of the backup outlives it, and it left no LMDB reader slot behind.
        assert not Path(f"/proc/{p.pid}").exists()
        for db, env in held.items():
            assert p.pid not in reader_pids(env), db
    finally:
        for env in held.values():
            env.close()
    # A fresh backup into a new DEST works.
    backup_ok(store, tmp_path / "again")


def test_sigkill_at_random_points(tmp_path):
    """SIGKILLs at three known points (pause points), one per outcome, then 10 at random times.

    - Mid-link (``engine_mid_link``, one worker, after 10 files): some message files placed, the
      manifest still "running": verify says incomplete.
    - Everything placed, the final manifest not yet written (``backup.before_manifest``): still
      incomplete, however little was left.
    - Just after the final manifest (``backup.manifest_written``): complete, and verify is clean.

    The random kills may land anywhere in the part of the run that writes DEST; whichever of the
    two outcomes each gives, the manifest and verify must agree on it."""
    store = make_store(tmp_path / "store", messages=8000, accounts=5, seed=4)

    def kill_at(point: str, dest: Path, *args: str, after: int = 1) -> None:
        pp = PausePoint(tmp_path / f"pause-{dest.name}", point, after=after)
        p = pp.popen("backup", *args, store, dest)
        pp.wait_reached(p)
        p.kill()
        p.communicate(timeout=60)
        assert p.returncode == -signal.SIGKILL

    dest = tmp_path / "mid"
    kill_at("engine_mid_link", dest, "--jobs", "1", after=10)
    assert placed_messages(dest)
    assert_incomplete(dest)

    complete = tmp_path / "manifest-written"
    kill_at("backup.manifest_written", complete)
    assert manifest_of(complete)["status"] == "ok"
    v = run_cli("verify", complete)
    assert v.returncode == 0, v.stdout + v.stderr

    dest = tmp_path / "before-manifest"
    kill_at("backup.before_manifest", dest)
    assert len(placed_messages(dest)) == len(placed_messages(complete)), "every message file was placed"
    assert_incomplete(dest)

    # Random points of the part of the run that writes DEST (before it, a kill proves nothing).
    def start_and_wait_for_dest(dest: Path) -> tuple[subprocess.Popen, float]:
        p = popen_backup(store, dest)
        while not dest.exists() and p.poll() is None:
            time.sleep(0.001)
        return p, time.monotonic()

    p, t0 = start_and_wait_for_dest(tmp_path / "timing")
    p.communicate(timeout=120)
    assert p.returncode == 0
    duration = time.monotonic() - t0
    rng = random.Random(7)
    outcomes = {"incomplete": 0, "complete": 0}
    for i in range(10):
        dest = tmp_path / f"k{i}"
        p, _ = start_and_wait_for_dest(dest)
        time.sleep(rng.uniform(0.0, duration))
        p.kill()
        p.communicate(timeout=60)
        v = run_cli("verify", dest) if dest.exists() else None
        if (dest / "mailbak.json").exists() and manifest_of(dest)["status"] != "running":
            # Killed after it finished: the final manifest is only written once everything is
            # durable.
            assert v.returncode == 0, v.stdout + v.stderr
            outcomes["complete"] += 1
        else:
            assert v.returncode == 1 and "incomplete" in v.stderr, v.stdout + v.stderr
            outcomes["incomplete"] += 1
    print("random SIGKILLs:", outcomes)
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

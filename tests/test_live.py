"""Backups of a store while a writer process delivers, expunges, erases, enqueues and dequeues
as fast as it can (tests/live_writer.py). bench/soak.py runs the same check 20 times longer."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import inode_listing, make_store, run_cli
from live_writer import read_log
from mailbak.layout import message_rel
from mailbak.store import Store

WRITER = Path(__file__).with_name("live_writer.py")


def start_writer(store: Path, log: Path, *extra: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, str(WRITER), str(store), str(log), *extra])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if log.exists() and log.read_text().count("\n") >= 20:
            return p
        time.sleep(0.02)
    p.kill()
    raise AssertionError("writer did not start")


def stop_writer(p: subprocess.Popen) -> None:
    p.terminate()
    assert p.wait(timeout=30) == 0


def untouched(store: Path) -> dict:
    """Inode facts of the store's files, minus the message files whose removal is pending (any
    writer's sweep may remove those)."""
    facts = inode_listing(store)
    with Store.open(store, durable=False) as s:
        for n in s.account_names():
            for i in s.account(n).erasing():
                facts.pop(f"data/accounts/{n}/msg/{message_rel(i)}", None)
    return facts


def live_sets(root: Path) -> dict[str, set[int]]:
    with Store.open(root, durable=False) as s:
        return {n: set(s.account(n).messages()) for n in s.account_names()}


def check_live_run(store: Path, dest: Path, log: Path, started: float, result: subprocess.CompletedProcess, initial: dict[str, set[int]], untouched_before: dict) -> None:
    """The promises of a backup taken under a live writer (docs/RELIABILITY.md)."""
    ops, stats = read_log(log)
    assert stats, "the writer stopped cleanly and wrote its stats"
    if result.returncode == 0:
        v = run_cli("verify", dest)
        assert v.returncode == 0, "exit 0 must mean a backup that verifies:\n" + v.stdout + v.stderr
    else:
        assert result.returncode == 1, result.stderr
        assert "disappeared while the backup ran" in result.stderr or "has no file" in result.stderr, result.stderr
        return
    # Each account's backup is exactly the writer's state after some prefix of its committed
    # operations, and that prefix holds at least every operation finished before the backup began.
    backed = live_sets(dest)
    for account, start_state in initial.items():
        state = set(start_state)
        mine = [op for op in ops if op.get("account") == account and op["op"] in ("deliver", "expunge")]
        done_before = sum(1 for op in mine if op["end"] < started)
        matches = []
        for k in range(len(mine) + 1):
            if k:
                op = mine[k - 1]
                if op["op"] == "deliver":
                    state.add(op["id"])
                else:
                    state -= set(op["ids"])
            if state == backed[account]:
                matches.append(k)
        assert matches, f"{account}: the backup is no committed state of the writer"
        assert max(matches) >= done_before, f"{account}: operations committed before the backup began are missing"
        for i in backed[account]:
            assert (dest / "data" / "accounts" / account / "msg" / message_rel(i)).is_file()
    # The backup changed nothing in the store: every file the writer did not touch is as it was.
    removed = {f"data/accounts/{op['account']}/msg/{message_rel(i)}" for op in ops if op["op"] == "expunge" for i in op["ids"]}
    removed |= {f"data/queue/{message_rel(op['id'])}" for op in ops if op["op"] == "dequeue"}
    after = inode_listing(store)
    for rel, facts in untouched_before.items():
        if rel in removed or rel.endswith(".db"):
            continue
        assert after.get(rel) == facts, rel


@pytest.mark.parametrize("run", range(3))
def test_backup_under_a_live_writer(tmp_path, run):
    store = make_store(tmp_path / "store", messages=3000, accounts=4, seed=run)
    initial = live_sets(store)
    before = untouched(store)
    log = tmp_path / "writer.log"
    w = start_writer(store, log, "--seed", str(run))
    try:
        started = time.time()
        result = run_cli("backup", store, tmp_path / "b")
    finally:
        stop_writer(w)
    assert result.returncode == 0, "a writer following the lease protocol never fails a backup:\n" + result.stderr
    check_live_run(store, tmp_path / "b", log, started, result, initial, before)
    ops, _ = read_log(log)
    assert any(op["op"] == "expunge" for op in ops) and any(op["op"] == "dequeue" for op in ops)


def test_writer_ignoring_the_lease_only_ever_fails_loudly(tmp_path):
    """Without the protocol, files vanish under the backup; every run must still be either
    exit 0 and verify clean, or exit 1 naming the vanished file."""
    store = make_store(tmp_path / "store", messages=3000, accounts=2, seed=11)
    initial = live_sets(store)
    before = untouched(store)
    log = tmp_path / "writer.log"
    outcomes = []
    for i in range(3):
        w = start_writer(store, log, "--ignore-lease", "--seed", str(i))
        try:
            started = time.time()
            result = run_cli("backup", "--jobs", "1", store, tmp_path / f"b{i}")
        finally:
            stop_writer(w)
        check_live_run(store, tmp_path / f"b{i}", log, started, result, initial, before)
        outcomes.append(result.returncode)
        print("ignore-lease run", i, "exit", result.returncode)
        initial = live_sets(store)
        before = untouched(store)
    assert set(outcomes) <= {0, 1}


def test_writer_ignoring_the_lease_fails_the_backup_loudly_and_changes_nothing_else(tmp_path, monkeypatch):
    """Deterministic: the backup stands still after linking its first message file (pause point
    engine_mid_link, one worker). A writer expunges another message of that directory; its sweep
    follows the protocol and is deferred (the backup holds the lease), then sweeps again ignoring
    the lease and removes the file. docs/RELIABILITY.md: exit 1, manifest failed, the vanished
    file named, the rest of the backup intact, and the store changed only by the writer."""
    from contextlib import contextmanager

    from conftest import manifest_of
    from mailbak.store import Lease
    from pausing import PausePoint

    store = make_store(tmp_path / "store", messages=3000, accounts=2, seed=11)
    with Store.open(store, durable=False) as s:
        for q in s.queue.ids():
            s.queue.dequeue(q)  # an empty queue: the first file linked is an account's
        assert not s.queue.ids()
        for n in s.account_names():
            s.account(n).sweep()  # no erasure pending but the writer's
            assert not s.account(n).erasing()
    initial = live_sets(store)
    before = inode_listing(store)
    dest = tmp_path / "b"
    pp = PausePoint(tmp_path / "pause", "engine_mid_link")
    p = pp.popen("backup", "--jobs", "1", store, dest)
    try:
        pp.wait_reached(p)
        placed = [f for f in (dest / "data" / "accounts").rglob("*") if f.name.isdigit() and f.is_file()]
        assert len(placed) == 1, placed
        account = placed[0].relative_to(dest / "data" / "accounts").parts[0]
        linked = int(placed[0].name)
        victim = max(i for i in initial[account] if i != linked and (store / "data" / "accounts" / account / "msg" / message_rel(i)).parent.name == placed[0].parent.name)
        victim_file = store / "data" / "accounts" / account / "msg" / message_rel(victim)
        with Store.open(store, durable=False) as s:
            assert s.account(account).expunge([victim]) == 0, "the backup holds the lease: the sweep is deferred"
            assert victim_file.exists()

            @contextmanager
            def ignore_lease(self):
                yield True

            monkeypatch.setattr(Lease, "exclusive_nowait", ignore_lease)
            assert s.account(account).sweep() == 1
        assert not victim_file.exists()
    finally:
        pp.go()
    out, err = p.communicate(timeout=120)
    rel = f"data/accounts/{account}/msg/{message_rel(victim)}"
    assert p.returncode == 1, err
    assert f"{rel}: message {victim}: its file disappeared while the backup ran" in err, err
    m = manifest_of(dest)
    assert m["status"] == "failed"
    assert {n: a["missing"] for n, a in m["accounts"].items()} == {n: int(n == account) for n in initial}
    # The backup holds the snapshot taken before the expunge, every other file of it included.
    assert live_sets(dest) == initial
    for n, ids in initial.items():
        for i in ids:
            assert (dest / "data" / "accounts" / n / "msg" / message_rel(i)).is_file() == (i != victim or n != account)
    # The store: only the writer's changes (the removed file, the account's index).
    after = inode_listing(store)
    changed = {rel, f"data/accounts/{account}/index.db"}
    assert {k: v for k, v in after.items() if k not in changed} == {k: v for k, v in before.items() if k not in changed}
    assert rel not in after and f"data/accounts/{account}/index.db" in after


def test_verify_of_a_live_store_holds_the_lease(tmp_path):
    """docs/RELIABILITY.md: verify of a live store holds the lease while it checks files. Paused
    mid-check (pause point engine_mid_check), an exclusive non-blocking flock on the lease fails
    and a protocol-following sweep is deferred; after verify exits, both succeed."""
    import fcntl
    import os

    from pausing import PausePoint

    store = make_store(tmp_path / "store", messages=600, accounts=2, seed=5)
    lease = store / "data" / "backup.lease"
    assert lease.exists()

    def exclusive_lock_free() -> bool:
        fd = os.open(lease, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)

    assert exclusive_lock_free()
    pp = PausePoint(tmp_path / "pause", "engine_mid_check")
    p = pp.popen("verify", "--jobs", "1", store)
    try:
        pp.wait_reached(p)
        assert not exclusive_lock_free(), "verify must hold the lease while it checks files"
        with Store.open(store, durable=False) as s:
            name = s.account_names()[0]
            acc = s.account(name)
            victim = max(acc.messages())
            assert acc.expunge([victim]) == 0, "a sweep during verify is deferred"
        assert (store / "data" / "accounts" / name / "msg" / message_rel(victim)).exists()
    finally:
        pp.go()
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, out + err
    assert exclusive_lock_free()
    with Store.open(store, durable=False) as s:
        assert s.account(name).sweep() >= 1
    assert not (store / "data" / "accounts" / name / "msg" / message_rel(victim)).exists()

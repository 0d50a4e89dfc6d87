"""Backups that tell the truth (issue 9 point 3, issue 14 points 3 to 5).

- A backup says it is a backup from its first byte (a ``running`` manifest), and verify treats
  any directory with ``mailbak.json`` as a backup, writing nothing into it.
- verify checks a backup against its manifest (databases, accounts, known files).
- backup ok implies verify of that backup clean, over a corpus of damaged stores.
- Hostile values: the key ff..ff and the size 2^64-1, written as real LMDB records.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import lmdb
import pytest

from conftest import CLI_ENV, json_lines, make_store, manifest_of, run_cli
from mailbak.layout import id_key, message_rel
from mailbak.store import pack, unpack

ACC = "user0000"


# Helpers -------------------------------------------------------------------------------------


def index_path(root: Path, account: str | None = ACC) -> Path:
    return root / "data" / ("queue" if account is None else f"accounts/{account}") / "index.db"


def edit(path: Path, fn: Callable[[lmdb.Environment, lmdb.Transaction], None]) -> None:
    """Runs ``fn(env, txn)`` in one write transaction of the LMDB file at ``path``."""
    env = lmdb.open(str(path), subdir=False, max_dbs=8)
    try:
        with env.begin(write=True) as txn:
            fn(env, txn)
    finally:
        env.close()


def table(env: lmdb.Environment, txn: lmdb.Transaction, name: str):
    return env.open_db(name.encode(), txn=txn, create=False)


def records(root: Path, account: str | None = ACC, name: str = "message") -> dict[int, dict]:
    env = lmdb.open(str(index_path(root, account)), subdir=False, readonly=True, lock=False, max_dbs=8)
    try:
        with env.begin() as txn:
            return {int.from_bytes(k, "big"): unpack(v) for k, v in txn.cursor(table(env, txn, name))}
    finally:
        env.close()


def live_ids(root: Path, account: str | None = ACC) -> list[int]:
    if account is None:
        return sorted(records(root, None, "msg"))
    return sorted(i for i, r in records(root, account).items() if not r["expunged"])


def msg_file(root: Path, id_: int, account: str | None = ACC) -> Path:
    base = root / "data" / ("queue" if account is None else f"accounts/{account}/msg")
    return base / message_rel(id_)


def codes(p: subprocess.CompletedProcess, severity: str = "error") -> set[str]:
    return {l["code"] for l in json_lines(p.stdout) if l["message_type"] == severity}


def listing_with_mtimes(root: Path) -> dict[str, tuple]:
    """Every path below root (lock files included) with its kind, size, mode and mtime."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino)
    st = root.lstat()
    out["."] = (st.st_mode, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """One small generated store; each test works on its own copy."""
    return make_store(tmp_path_factory.mktemp("template") / "store", messages=80, accounts=2, seed=3)


@pytest.fixture
def store(template, tmp_path) -> Path:
    dst = tmp_path / "store"
    shutil.copytree(template, dst, symlinks=True)
    return dst


@pytest.fixture
def backup(store, tmp_path) -> Path:
    dest = tmp_path / "backup"
    p = run_cli("backup", "--json", store, dest)
    assert p.returncode == 0, p.stdout + p.stderr
    return dest


# 14.5: hostile values ------------------------------------------------------------------------


def add_key_ffff(root: Path) -> None:
    first = live_ids(root)[0]

    def fn(env, txn):
        rec = unpack(txn.get(id_key(first), db=table(env, txn, "message")))
        txn.put(b"\xff" * 8, pack(rec), db=table(env, txn, "message"))

    edit(index_path(root), fn)


def set_size_max(root: Path) -> int:
    first = live_ids(root)[0]

    def fn(env, txn):
        db = table(env, txn, "message")
        rec = unpack(txn.get(id_key(first), db=db))
        rec["size"] = 2**64 - 1
        txn.put(id_key(first), pack(rec), db=db)

    edit(index_path(root), fn)
    return first


def test_key_ffff_is_a_bad_key_not_a_traceback(store, tmp_path):
    add_key_ffff(store)
    v = run_cli("verify", "--json", store)
    assert v.returncode == 1 and "Traceback" not in v.stderr, v.stdout + v.stderr
    assert "bad_key" in codes(v)
    b = run_cli("backup", "--json", store, tmp_path / "b")
    assert b.returncode == 1 and "Traceback" not in b.stderr, b.stdout + b.stderr
    assert "bad_key" in codes(b)
    assert manifest_of(tmp_path / "b")["status"] == "failed"
    vb = run_cli("verify", "--json", tmp_path / "b")
    assert vb.returncode == 1 and "Traceback" not in vb.stderr
    assert "bad_key" in codes(vb)


def test_size_2_64_minus_1_is_checked_like_any_size(store, tmp_path):
    id_ = set_size_max(store)
    rel = f"data/accounts/{ACC}/msg/{message_rel(id_)}"
    v = run_cli("verify", "--json", store)
    assert v.returncode == 1, v.stdout + v.stderr
    assert any(l.get("code") == "size_mismatch" and l["path"] == rel for l in json_lines(v.stdout))
    b = run_cli("backup", "--json", store, tmp_path / "b")
    assert b.returncode == 1, b.stdout + b.stderr
    assert any(l.get("code") == "size_mismatch" and l["path"] == rel for l in json_lines(b.stdout))


# 14.4: backup ok implies verify of that backup clean, over a corpus of damaged stores ---------


def put_record(root: Path, id_: int, change: Callable[[dict], None], account: str | None = ACC, name: str = "message") -> None:
    def fn(env, txn):
        db = table(env, txn, name)
        rec = unpack(txn.get(id_key(id_), db=db))
        change(rec)
        txn.put(id_key(id_), pack(rec), db=db)

    edit(index_path(root, account), fn)


def put_raw(root: Path, name: str, key: bytes, value: bytes, account: str | None = ACC) -> None:
    edit(index_path(root, account), lambda env, txn: txn.put(key, value, db=table(env, txn, name)))


def next_id(root: Path, account: str | None = ACC) -> int:
    env = lmdb.open(str(index_path(root, account)), subdir=False, readonly=True, lock=False, max_dbs=8)
    try:
        with env.begin() as txn:
            return int.from_bytes(txn.get(b"next_id", db=table(env, txn, "meta")), "big")
    finally:
        env.close()


def set_next_id(root: Path, value: int, account: str | None = ACC) -> None:
    put_raw(root, "meta", b"next_id", value.to_bytes(8, "big"), account)


def write_at(root: Path, id_: int, data: bytes = b"x" * 10) -> None:
    p = msg_file(root, id_)
    p.parent.mkdir(exist_ok=True)
    p.write_bytes(data)


def truncate(root: Path) -> None:
    p = msg_file(root, live_ids(root)[1])
    p.write_bytes(p.read_bytes()[:-3])


def grow(root: Path) -> None:
    with open(msg_file(root, live_ids(root)[1]), "ab") as f:
        f.write(b"more")


def corrupt_index(root: Path) -> None:
    p = index_path(root)
    size = p.stat().st_size
    with open(p, "r+b") as f:
        f.seek(2 * 4096)  # past both meta pages: every tree page
        f.write(b"\x5a" * (size - 2 * 4096))


def symlinked_message(root: Path) -> None:
    p = msg_file(root, live_ids(root)[1])
    p.unlink()
    p.symlink_to("/etc/hostname")


def erase_still_queued(root: Path) -> None:
    queued = live_ids(root, None)
    assert queued, "the generated store has a queue"
    put_raw(root, "msg_erase", id_key(queued[0]), b"", None)


def expunge_inbox(root: Path) -> None:
    mb = records(root)[live_ids(root)[0]]["mailbox_id"]
    put_record(root, mb, lambda r: r.update(expunged=True), name="mailbox")


def orphan(root: Path) -> None:
    highest = max(records(root))
    set_next_id(root, max(next_id(root), highest + 10))
    write_at(root, highest + 1)


def file_above_next_id(root: Path) -> None:
    write_at(root, next_id(root) + 3)


def erasing_with_file(root: Path) -> None:
    expunged = sorted(i for i, r in records(root).items() if r["expunged"])
    assert expunged, "the generated store has expunged messages"
    put_raw(root, "message_erase", id_key(expunged[0]), b"")
    write_at(root, expunged[0])


#: Damages that verify of the backup would call an error, each with the code backup must name.
DAMAGING: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated_message": (truncate, "size_mismatch"),
    "grown_message": (grow, "size_mismatch"),
    "size_2_64_minus_1": (set_size_max, "size_mismatch"),
    "missing_message_file": (lambda r: msg_file(r, live_ids(r)[2]).unlink(), "missing"),
    "symlink_at_message_path": (symlinked_message, "not_regular"),
    "live_record_in_message_erase": (lambda r: put_raw(r, "message_erase", id_key(live_ids(r)[0]), b""), "erase_not_expunged"),
    "id_at_or_above_next_id": (lambda r: set_next_id(r, live_ids(r)[-1]), "id_above_next"),
    "key_ff_ff": (add_key_ffff, "bad_key"),
    "record_not_msgpack": (lambda r: put_raw(r, "message", id_key(live_ids(r)[0]), b"\xc1 not msgpack"), "bad_record"),
    "uid_not_below_uidnext": (lambda r: put_record(r, live_ids(r)[0], lambda m: m.update(uid=10**9)), "uid_not_below_uidnext"),
    "unknown_mailbox": (lambda r: put_record(r, live_ids(r)[0], lambda m: m.update(mailbox_id=999_999)), "unknown_mailbox"),
    "live_in_expunged_mailbox": (expunge_inbox, "live_in_expunged_mailbox"),
    "erase_entry_without_record": (lambda r: put_raw(r, "message_erase", id_key(max(records(r)) + 1), b""), "erase_unknown"),
    "erase_entry_with_value": (lambda r: put_raw(r, "message_erase", id_key(sorted(i for i, m in records(r).items() if m["expunged"])[0]), b"x"), "erase_value"),
    "queued_message_being_erased": (erase_still_queued, "erase_still_queued"),
    "corrupt_index": (corrupt_index, "database"),
    "account_directory_missing": (lambda r: shutil.rmtree(r / "data" / "accounts" / "user0001"), "area_missing"),
}

def stray_in_message_dir(root: Path) -> None:
    (msg_file(root, live_ids(root)[0]).parent / "notes.txt").write_text("x")


def unconfigured_account_dir(root: Path) -> None:
    (root / "data" / "accounts" / "stranger").mkdir()
    (root / "data" / "accounts" / "stranger" / "f").write_text("x")


#: Oddities that are warnings at most (backup ok, and then verify of the backup must be clean),
#: each with its evidence in the backup's output: a warning code, or a count of the account.
BENIGN: dict[str, tuple[Callable[[Path], None], str]] = {
    "orphan_below_next_id": (orphan, "orphan_message"),
    "file_above_next_id": (file_above_next_id, "count:skipped_new"),
    "erasing_message_with_file": (erasing_with_file, "count:skipped_erasing"),
    "stray_in_message_dir": (stray_in_message_dir, "unrecognized"),
    "unconfigured_account_dir": (unconfigured_account_dir, "unrecognized"),
    "missing_top_database": (lambda r: (r / "data" / "mtasts.db").unlink(), "missing_database"),
    "lock_file_of_an_unknown_database": (lambda r: (r / "data" / "extra.db-lock").write_bytes(b"\0" * 64), "unrecognized"),
}


def backup_then_verify(store: Path, dest: Path) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    b = run_cli("backup", "--json", store, dest)
    assert "Traceback" not in b.stderr, b.stderr
    v = run_cli("verify", "--json", dest)
    assert "Traceback" not in v.stderr, v.stderr
    # The rule, for every store whatever its damage.
    if b.returncode == 0:
        assert v.returncode == 0, f"backup ok but verify of it found: {codes(v)}\n{v.stdout}"
    return b, v


@pytest.mark.parametrize("case", sorted(DAMAGING))
def test_backup_names_what_verify_of_the_backup_would_call_an_error(store, tmp_path, case):
    damage, code = DAMAGING[case]
    damage(store)
    b, v = backup_then_verify(store, tmp_path / "b")
    assert b.returncode == 1, b.stdout + b.stderr
    assert code in codes(b), codes(b)
    assert manifest_of(tmp_path / "b")["status"] == "failed"
    assert v.returncode == 1


@pytest.mark.parametrize("case", sorted(BENIGN))
def test_backup_ok_of_an_odd_store_verifies_clean(store, tmp_path, case):
    damage, evidence = BENIGN[case]
    damage(store)
    b, v = backup_then_verify(store, tmp_path / "b")
    assert b.returncode == 0, b.stdout + b.stderr
    if evidence.startswith("count:"):
        assert manifest_of(tmp_path / "b")["accounts"][ACC][evidence[6:]] > 0
    else:
        assert evidence in codes(b, "warning"), codes(b, "warning")
    assert v.returncode == 0

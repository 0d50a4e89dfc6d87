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
    return {ln["code"] for ln in json_lines(p.stdout) if ln["message_type"] == severity}


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


# 9.3: a backup says it is a backup, from its first byte --------------------------------------


def add_store_lookalikes(backup: Path) -> None:
    """What once made verify take a backup for a live store: lock files and a data/tmp/."""
    (backup / "data" / "auth.db-lock").write_bytes(b"\0" * 8192)
    (backup / "data" / "accounts" / ACC / "index.db-lock").write_bytes(b"\0" * 8192)
    (backup / "data" / "tmp").mkdir()


def test_backup_holding_lock_files_is_still_a_backup_and_verify_writes_nothing(backup):
    add_store_lookalikes(backup)
    before = listing_with_mtimes(backup)
    v = run_cli("verify", "--json", backup)
    assert v.returncode == 0, v.stdout + v.stderr
    assert json_lines(v.stdout)[-1]["kind"] == "backup"
    # A failed backup fails verify, lock files or not: its manifest is checked.
    m = manifest_of(backup)
    m["status"], m["errors"] = "failed", 2
    (backup / "mailbak.json").write_text(json.dumps(m))
    before = listing_with_mtimes(backup)
    time.sleep(0.01)  # so that a write would show in an mtime
    v = run_cli("verify", "--json", backup)
    assert v.returncode == 1, v.stdout + v.stderr
    assert "backup_failed" in codes(v)
    assert listing_with_mtimes(backup) == before, "verify wrote into a backup"


def test_backup_holding_lock_files_still_reports_files_above_next_id(backup):
    """Taken for a live store, such a file was once skipped as a new delivery; in a backup it is
    a collision waiting for the first message to get its ID after a restore."""
    add_store_lookalikes(backup)
    stray = next_id(backup) + 3
    write_at(backup, stray)
    rc, errors = verify_codes(backup)
    assert rc == 1
    assert has(errors, "unrecognized_message", f"data/accounts/{ACC}/msg/{message_rel(stray)}")


def test_running_manifest_with_lock_files_is_incomplete(backup):
    add_store_lookalikes(backup)
    m = manifest_of(backup)
    (backup / "mailbak.json").write_text(json.dumps({"kind": m["kind"], "manifest_version": 1, "status": "running", "started": m["started"]}))
    before = listing_with_mtimes(backup)
    v = run_cli("verify", "--json", backup)
    assert v.returncode == 1 and "incomplete" in codes(v), v.stdout + v.stderr
    assert listing_with_mtimes(backup) == before


def test_a_backup_is_not_a_store_to_back_up(backup, tmp_path):
    before = listing_with_mtimes(backup)
    p = run_cli("backup", backup, tmp_path / "again")
    assert p.returncode == 2 and "a backup (it holds mailbak.json), not a store" in p.stderr, p.stderr
    assert not (tmp_path / "again").exists()
    assert listing_with_mtimes(backup) == before


def start_paused_backup(store: Path, dest: Path, point: str, pause_dir: Path) -> subprocess.Popen:
    env = {**CLI_ENV, "MAILBAK_TEST_PAUSE": point, "MAILBAK_TEST_PAUSE_DIR": str(pause_dir)}
    p = subprocess.Popen([sys.executable, "-m", "mailbak", "backup", "--json", str(store), str(dest)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    while not (pause_dir / f"{point}.reached").exists():
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, f"the backup never reached {point}"
        time.sleep(0.01)
    return p


@pytest.mark.parametrize("point", ["backup.started", "backup.before_manifest"])
def test_killed_backup_leaves_a_running_manifest_that_verify_calls_incomplete(store, tmp_path, point):
    dest, pause_dir = tmp_path / "b", tmp_path / "pause"
    pause_dir.mkdir()
    p = start_paused_backup(store, dest, point, pause_dir)
    m = manifest_of(dest)
    assert m["status"] == "running" and m["kind"] == "mailbak-backup" and m["started"]
    if point == "backup.started":
        # The manifest is the first thing in DEST.
        assert os.listdir(dest) == ["mailbak.json"]
    else:
        # Everything is there but the final manifest: still incomplete.
        assert (dest / "data" / "accounts" / ACC / "index.db").exists()
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    before = listing_with_mtimes(dest)
    v = run_cli("verify", "--json", dest)
    assert v.returncode == 1, v.stdout + v.stderr
    assert "incomplete" in codes(v)
    assert json_lines(v.stdout)[-1]["manifest"] == "incomplete"
    assert listing_with_mtimes(dest) == before
    r = run_cli("restore", dest, tmp_path / "restored")
    assert r.returncode == 2 and "incomplete" in r.stderr, r.stderr
    assert not (tmp_path / "restored").exists()


# 14.3: verify checks a backup against its manifest ------------------------------------------


def verify_codes(backup: Path) -> tuple[int, list[dict]]:
    v = run_cli("verify", "--json", backup)
    assert "Traceback" not in v.stderr, v.stderr
    return v.returncode, [ln for ln in json_lines(v.stdout) if ln["message_type"] == "error"]


def has(errors: list[dict], code: str, path: str, text: str = "") -> bool:
    return any(e["code"] == code and e["path"] == path and text in e["cause"] for e in errors)


def test_deleted_databases_files_and_accounts_are_errors(backup):
    m = manifest_of(backup)
    assert "auth.db" in m["databases"] and "receivedid.key" in m["files"] and "user0001" in m["accounts"]
    (backup / "data" / "auth.db").unlink()
    (backup / "data" / "receivedid.key").unlink()
    shutil.rmtree(backup / "data" / "accounts" / "user0001")
    cfg = backup / "config" / "mailstore.toml"
    text = cfg.read_text()
    assert '[accounts."user0001"]' in text
    cfg.write_text(text.replace('[accounts."user0001"]', "[unrelated]"))
    rc, errors = verify_codes(backup)
    assert rc == 1
    assert has(errors, "not_in_backup", "data/auth.db", "database")
    assert has(errors, "not_in_backup", "data/receivedid.key", "file")
    assert has(errors, "not_in_backup", "data/accounts/user0001", "directory")
    assert has(errors, "not_in_backup", "config/mailstore.toml", "'user0001'")
    r = run_cli("restore", backup, backup.parent / "restored")
    assert r.returncode == 1, r.stdout + r.stderr


def test_replaced_database_of_another_size_is_an_error(backup, tmp_path):
    other = tmp_path / "other.db"
    env = lmdb.open(str(other), subdir=False)
    with env.begin(write=True) as txn:
        for i in range(200):
            txn.put(b"k%d" % i, b"v" * 100)
    env.close()
    want = manifest_of(backup)["databases"]["mtasts.db"]["bytes"]
    assert other.stat().st_size != want
    os.replace(other, backup / "data" / "mtasts.db")
    rc, errors = verify_codes(backup)
    assert rc == 1 and has(errors, "manifest_mismatch", "data/mtasts.db", f"size is {(backup / 'data' / 'mtasts.db').stat().st_size}, the manifest says {want}")


#: Offset of the transaction ID in LMDB's second meta page (4 KiB pages, 64-bit): page header
#: (16) + magic, version, address, mapsize (24) + two MDB_db (96) + last_pg (8).
META1_TXNID = 4096 + 144


def test_database_of_another_transaction_is_an_error(backup):
    db = backup / "data" / "auth.db"
    want = manifest_of(backup)["databases"]["auth.db"]["copy_txnid"]
    with open(db, "r+b") as f:
        f.seek(META1_TXNID)
        assert int.from_bytes(f.read(8), "little") == want, "the offset finds the copy's txnid"
        f.seek(META1_TXNID)
        f.write((want + 42).to_bytes(8, "little"))
    size = db.stat().st_size
    rc, errors = verify_codes(backup)
    assert rc == 1 and has(errors, "manifest_mismatch", "data/auth.db", f"transaction ID is {want + 42}, the manifest says {want}")
    assert db.stat().st_size == manifest_of(backup)["databases"]["auth.db"]["bytes"] == size


def test_index_with_a_record_less_is_an_error(backup):
    """Deleting a live record leaves a consistent index and an orphan file (a warning): only
    the manifest can tell that a message is gone."""
    victim = live_ids(backup)[0]
    env = lmdb.open(str(index_path(backup)), subdir=False, lock=False, max_dbs=8)
    with env.begin(write=True) as txn:
        assert txn.delete(id_key(victim), db=table(env, txn, "message"))
    env.close()
    want = manifest_of(backup)["accounts"][ACC]["live"]
    rc, errors = verify_codes(backup)
    assert rc == 1
    assert has(errors, "manifest_mismatch", f"data/accounts/{ACC}/index.db", f"live of the index is {want - 1}, the manifest says {want}")
    assert has(errors, "manifest_mismatch", f"data/accounts/{ACC}/index.db", "records of the index is")


def test_altered_known_file_is_an_error(backup):
    with open(backup / "data" / "receivedid.key", "ab") as f:
        f.write(b"x")
    rc, errors = verify_codes(backup)
    assert rc == 1 and has(errors, "manifest_mismatch", "data/receivedid.key", "size is")


@pytest.mark.parametrize("field", ["databases", "files"])
def test_manifest_naming_paths_outside_the_backup_is_malformed(backup, field):
    m = manifest_of(backup)
    m[field]["../../etc/passwd"] = {"txnid": 1, "copy_txnid": 1, "bytes": 1}
    (backup / "mailbak.json").write_text(json.dumps(m))
    rc, errors = verify_codes(backup)
    assert rc == 1 and any(e["code"] == "manifest" and "malformed" in e["cause"] for e in errors)


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
    assert any(ln.get("code") == "size_mismatch" and ln["path"] == rel for ln in json_lines(v.stdout))
    b = run_cli("backup", "--json", store, tmp_path / "b")
    assert b.returncode == 1, b.stdout + b.stderr
    assert any(ln.get("code") == "size_mismatch" and ln["path"] == rel for ln in json_lines(b.stdout))


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


def corrupt_top_database(root: Path) -> None:
    db = root / "data" / "auth.db"
    raw = bytearray(db.read_bytes())
    for off in range(2 * 4096, len(raw), 4096):
        raw[off : off + 16] = b"\xee" * 16  # every page header after the metas
    db.write_bytes(bytes(raw))


def truncate_queued(root: Path) -> None:
    p = msg_file(root, live_ids(root, None)[0], None)
    p.write_bytes(p.read_bytes()[:1])


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
    "index_missing": (lambda r: index_path(r).unlink(), "database"),
    "corrupt_top_database": (corrupt_top_database, "database"),
    "truncated_queued_message": (truncate_queued, "size_mismatch"),
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


def test_summary_and_manifest_say_the_same_finish_time(store, tmp_path):
    """The finish time is computed once: the JSON summary and the manifest agree even when a
    second boundary falls between writing the manifest and printing the summary."""
    dest, pause_dir = tmp_path / "b", tmp_path / "pause"
    pause_dir.mkdir()
    p = start_paused_backup(store, dest, "backup.manifest_written", pause_dir)
    written = manifest_of(dest)
    assert written["status"] == "ok"
    # Across a second boundary, always (the real clock: the finish time is what is compared).
    time.sleep(1.05 - time.time() % 1)
    (pause_dir / "backup.manifest_written.go").touch()
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    summary = next(o for o in json_lines(out.decode()) if o["message_type"] == "summary")
    assert summary["finished"] == written["finished"] == manifest_of(dest)["finished"]
    assert summary["started"] == written["started"]
    assert all(summary[k] == written[k] for k in ("store", "store_format_version", "errors", "warnings"))

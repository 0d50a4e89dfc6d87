"""mailbak verify (the corruption matrix, on real backups) and mailbak restore."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import backup_ok, dump_env, json_lines, manifest_of, run_cli, tree_listing
from mailbak.layout import id_key, message_rel
from mailbak.store import Store, pack, unpack

ACC = "user0000"


@pytest.fixture
def backup(store, tmp_path) -> Path:
    dest = tmp_path / "backup"
    backup_ok(store, dest)
    return dest


def live(root: Path, account: str = ACC) -> list[int]:
    import lmdb

    env = lmdb.open(str(root / "data" / "accounts" / account / "index.db"), subdir=False, readonly=True, lock=False, max_dbs=8)
    with env.begin() as txn:
        db = env.open_db(b"message", txn=txn, create=False)
        ids = [int.from_bytes(k, "big") for k, v in txn.cursor(db) if not unpack(v)["expunged"]]
    env.close()
    return ids


def verify(path: Path, *args: str):
    return run_cli("verify", *args, path)


def test_clean_backup_verifies_and_verify_writes_nothing(backup):
    before = tree_listing(backup, skip_locks=False)
    p = verify(backup)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "verify clean" in p.stdout
    assert tree_listing(backup, skip_locks=False) == before, "no lock files, no writes"


def test_live_store_verifies_without_writing_to_it(store):
    before = tree_listing(store)
    p = verify(store)
    assert p.returncode == 0, p.stdout + p.stderr
    assert tree_listing(store) == before


def test_missing_message_file(backup):
    id_ = live(backup)[3]
    (backup / "data" / "accounts" / ACC / "msg" / message_rel(id_)).unlink()
    p = verify(backup)
    assert p.returncode == 1
    assert f"error: data/accounts/{ACC}/msg/{message_rel(id_)}: message {id_} has no file" in p.stderr


def test_truncated_message_file(backup):
    id_ = live(backup)[0]
    path = backup / "data" / "accounts" / ACC / "msg" / message_rel(id_)
    data = path.read_bytes()
    path.unlink()  # a hardlink: replace it instead of truncating the store's file
    path.write_bytes(data[:-10])
    p = verify(backup, "--json")
    assert p.returncode == 1
    errs = [ln for ln in json_lines(p.stdout) if ln["message_type"] == "error"]
    assert [(e["code"], e["path"]) for e in errs] == [("size_mismatch", f"data/accounts/{ACC}/msg/{message_rel(id_)}")]
    assert f"{len(data) - 10} bytes, its record says {len(data)}" in errs[0]["cause"]


def next_id(root: Path, account: str = ACC) -> int:
    import lmdb

    env = lmdb.open(str(root / "data" / "accounts" / account / "index.db"), subdir=False, readonly=True, lock=False, max_dbs=8)
    with env.begin() as txn:
        raw = txn.get(b"next_id", db=env.open_db(b"meta", txn=txn, create=False))
    env.close()
    return int.from_bytes(raw, "big")


def test_extra_decimal_file_is_reported_and_fix_moves_it(backup):
    ids = live(backup)
    msg = backup / "data" / "accounts" / ACC / "msg"
    # At the path of an ID no message has taken yet: the first one to get it after a restore
    # would collide, so this is an error.
    future = next_id(backup) + 3
    collides = msg / message_rel(future)
    collides.parent.mkdir(exist_ok=True)
    collides.write_text("collides")
    # At the path of an allocated ID (1 is a mailbox): an orphan, a warning.
    orphan = msg / "a" / "1"
    orphan.write_text("orphan")
    p = verify(backup)
    assert p.returncode == 1
    assert f"error: data/accounts/{ACC}/msg/{message_rel(future)}: no record claims this message file and its ID is not allocated yet" in p.stderr
    assert f"warning: data/accounts/{ACC}/msg/a/1: no record claims this message file" in p.stderr
    assert collides.exists() and orphan.exists(), "verify without --fix writes nothing"
    p = verify(backup, "--fix")
    assert p.returncode == 0, p.stderr
    assert f"moved to moved/accounts/{ACC}/msg/{message_rel(future)}" in p.stderr
    assert not collides.exists() and not orphan.exists()
    assert (backup / "data" / "moved" / "accounts" / ACC / "msg" / "a" / "1").read_text() == "orphan"
    assert live(backup) == ids
    p = verify(backup)
    assert p.returncode == 0 and "warning" not in p.stderr, p.stderr


def test_fix_in_a_live_store_leaves_a_delivery_in_progress_alone(store):
    """A second writer's delivery in flight (ID allocated, file placed, record not yet committed)
    looks like an orphan; verify --fix on a live store must not move it."""
    with Store.open(store, durable=False) as s:
        acc = s.account(ACC)
        inflight = acc._alloc_ids()
        acc._place(inflight, b"Subject: in flight\r\n\r\n")
        later = acc.deliver(acc.mailbox_id("Inbox"), b"Subject: later\r\n\r\n")
        assert later > inflight
        p = verify(store, "--fix")
        assert p.returncode == 0, p.stderr
        assert f"data/accounts/{ACC}/msg/{message_rel(inflight)}: unrecognized file changed in the last 15 minutes" in p.stderr
        assert acc.message_path(inflight).exists()
        # The writer commits its record as it would have; nothing was lost.
        with acc.env.begin(write=True) as txn:
            rec = {"mailbox_id": acc.mailbox_id("Inbox"), "uid": 10**6, "size": acc.message_path(inflight).stat().st_size, "expunged": False, "received": 1}
            txn.put(id_key(inflight), pack(rec), db=acc.db["message"])
    p = verify(store, "--json")
    assert not [ln for ln in json_lines(p.stdout) if ln["message_type"] == "error" and ln.get("code") in ("missing", "orphan_message")]


def test_backup_of_a_store_with_a_delivery_in_flight_verifies(store, tmp_path):
    with Store.open(store, durable=False) as s:
        acc = s.account(ACC)
        inflight = acc._alloc_ids()
        acc._place(inflight, b"Subject: in flight\r\n\r\n")
        acc.deliver(acc.mailbox_id("Inbox"), b"Subject: later\r\n\r\n")
    backup_ok(store, tmp_path / "b")
    v = verify(tmp_path / "b")
    assert v.returncode == 0, v.stderr
    assert "orphan" in v.stderr or "no record claims" in v.stderr


def test_flipped_byte_in_an_lmdb_page_is_reported_without_a_crash(backup):
    db = backup / "data" / "accounts" / ACC / "index.db"
    raw = bytearray(db.read_bytes())
    raw[2 * 4096 + 10] ^= 0x05  # flags of page 2: a compacted copy uses every page
    db.write_bytes(bytes(raw))
    p = verify(backup)
    assert p.returncode == 1, p.stderr
    assert f"data/accounts/{ACC}/index.db: damaged: corrupt (page 2)" in p.stderr
    assert "Traceback" not in p.stderr
    assert "account user0001" in p.stdout, "the other accounts are still verified"


def test_garbage_lmdb_file_is_reported(backup):
    (backup / "data" / "dmarcrpt.db").write_bytes(os.urandom(20000))
    p = verify(backup)
    assert p.returncode == 1
    assert "data/dmarcrpt.db: damaged: corrupt" in p.stderr


def test_running_or_missing_manifest_is_incomplete(backup):
    m = manifest_of(backup)
    (backup / "mailbak.json").write_text(json.dumps({"kind": m["kind"], "manifest_version": 1, "status": "running", "started": m["started"]}))
    p = verify(backup)
    assert p.returncode == 1
    assert "incomplete backup: it started at" in p.stderr and 'its manifest still says "running"' in p.stderr
    # Without config/mailstore.toml it is no store: what is left of a backup without a manifest.
    (backup / "mailbak.json").unlink()
    (backup / "config" / "mailstore.toml").unlink()
    p = verify(backup)
    assert p.returncode == 1
    assert "no manifest: the backup is incomplete" in p.stderr


def test_failed_manifest(backup):
    m = manifest_of(backup)
    m["status"], m["errors"] = "failed", 3
    (backup / "mailbak.json").write_text(json.dumps(m))
    p = verify(backup)
    assert p.returncode == 1
    assert "the backup run reported 3 error(s)" in p.stderr


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"kind": "mailbak-backup", "manifest_version": 99}', b"\xff" * 10])
def test_malformed_manifest_is_a_clear_error(backup, content):
    (backup / "mailbak.json").write_bytes(content)
    p = verify(backup)
    assert p.returncode == 1
    assert "mailbak.json:" in p.stderr and "Traceback" not in p.stderr


def test_message_in_an_expunged_mailbox(store, tmp_path):
    with Store.open(store, durable=False) as s:
        acc = s.account(ACC)
        mb_id = next(i for i, m in acc.mailboxes().items() if i != acc.mailbox_id("Inbox"))
        with acc.env.begin(write=True, db=acc.db["mailbox"]) as txn:
            rec = unpack(txn.get(id_key(mb_id)))
            rec["expunged"] = True
            txn.put(id_key(mb_id), pack(rec))
    dest = tmp_path / "b"
    b = run_cli("backup", store, dest)  # copies what is there, and says it is wrong
    assert b.returncode == 1 and f"is not expunged but its mailbox {mb_id} is" in b.stderr, b.stderr
    p = verify(dest)
    assert p.returncode == 1
    assert "live_in_expunged_mailbox" not in p.stderr  # codes go to JSON; people read sentences
    assert f"is not expunged but its mailbox {mb_id} is" in p.stderr
    lines = json_lines(verify(dest, "--json").stdout)
    assert any(ln.get("code") == "live_in_expunged_mailbox" for ln in lines)


def test_uid_and_erase_rules(store, tmp_path):
    with Store.open(store, durable=False) as s:
        acc = s.account(ACC)
        first = sorted(acc.messages())[0]
        with acc.env.begin(write=True) as txn:
            rec = unpack(txn.get(id_key(first), db=acc.db["message"]))
            rec["uid"] = 10**9
            txn.put(id_key(first), pack(rec), db=acc.db["message"])
            txn.put(id_key(sorted(acc.messages())[1]), b"", db=acc.db["message_erase"])
    p = verify(store, "--json")
    codes = {ln.get("code") for ln in json_lines(p.stdout)}
    assert p.returncode == 1
    assert {"uid_not_below_uidnext", "erase_not_expunged"} <= codes


def test_config_and_directories_disagree(backup):
    cfg = backup / "config" / "mailstore.toml"
    cfg.write_text(cfg.read_text() + "\n[accounts.nodir]\n")
    (backup / "data" / "accounts" / "stranger").mkdir()
    p = verify(backup)
    assert p.returncode == 1
    assert "data/accounts/nodir: configured account has no directory" in p.stderr
    assert "warning: data/accounts/stranger: directory of an account not in the config" in p.stderr


def test_verify_bad_usage(tmp_path):
    assert verify(tmp_path / "nope").returncode == 2
    (tmp_path / "f").write_text("x")
    assert verify(tmp_path / "f").returncode == 2
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_text("x")
    p = verify(tmp_path / "photos")
    assert p.returncode == 2 and "neither a store nor a backup" in p.stderr


def test_killed_backup_leftovers_are_incomplete(tmp_path):
    (tmp_path / "empty").mkdir()
    p = verify(tmp_path / "empty")
    assert p.returncode == 1 and "incomplete" in p.stderr
    # Killed while its first manifest was being written (fsync of the temporary file, before
    # the rename): only mailbak.json.tmp is there. The random-SIGKILL test once landed there
    # and got "neither a store nor a backup" (exit 2).
    (tmp_path / "tmp-only").mkdir()
    (tmp_path / "tmp-only" / "mailbak.json.tmp").write_text('{"kind": "mailbak-backup", "manifest_version": 1, "status": "running", "started": "2026-11-26T03:00:00Z"}\n')
    p = verify(tmp_path / "tmp-only")
    assert p.returncode == 1 and "incomplete" in p.stderr, p.stderr


# restore -------------------------------------------------------------------------------------


def test_restore_round_trip(store, backup, tmp_path):
    target = tmp_path / "restored"
    p = run_cli("restore", backup, target)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "restore clean" in p.stdout
    for rel in ("queue/index.db", f"accounts/{ACC}/index.db", "auth.db", "tlsrpt.db"):
        assert dump_env(target / "data" / rel) == dump_env(backup / "data" / rel) == dump_env(store / "data" / rel)

    def listing(root):
        # Backups cap directory modes at 0770 (never readable by others); files keep theirs.
        out = {}
        for k, v in tree_listing(root).items():
            if k.endswith(".db") or k.startswith("tmp"):
                continue
            out[k] = ("dir", v[1] & 0o770) if v[0] == "dir" else v
        return out

    assert listing(target / "config") == listing(store / "config")
    assert listing(target / "data") == listing(backup / "data")
    # Every file of the backup is the store's file, except those the snapshot said were being
    # erased, which a backup leaves out by design.
    store_data, target_data = listing(store / "data"), listing(target / "data")
    with Store.open(store, durable=False) as s:
        erasing = {f"accounts/{n}/msg/{message_rel(i)}" for n in s.account_names() for i in s.account(n).erasing()}
    assert erasing, "the generated store has pending erasures"
    assert {k: v for k, v in store_data.items() if k not in erasing} == target_data
    id_ = live(target)[0]
    rel = f"data/accounts/{ACC}/msg/{message_rel(id_)}"
    assert (target / rel).stat().st_ino == (backup / rel).stat().st_ino
    assert (target / "data" / "tmp").is_dir()


def test_restore_copy_shares_no_inode(backup, tmp_path):
    target = tmp_path / "restored"
    p = run_cli("restore", "--copy", backup, target)
    assert p.returncode == 0, p.stderr
    backup_inodes = {p.stat().st_ino for p in backup.rglob("*") if p.is_file() and not p.is_symlink()}
    target_inodes = {p.stat().st_ino for p in target.rglob("*") if p.is_file() and not p.is_symlink()}
    assert not backup_inodes & target_inodes
    assert "hardlinks are not possible" not in p.stderr


def test_restore_refuses_non_empty_target(backup, tmp_path):
    target = tmp_path / "t"
    target.mkdir()
    (target / "x").write_text("mine")
    p = run_cli("restore", backup, target)
    assert p.returncode == 2 and "not empty" in p.stderr
    assert os.listdir(target) == ["x"]


def test_restore_refuses_a_target_inside_the_backup(backup):
    before = tree_listing(backup)
    p = run_cli("restore", backup, backup / "data" / "accounts" / "zz")
    assert p.returncode == 2 and "inside the backup" in p.stderr
    assert tree_listing(backup) == before


def test_restore_refuses_incomplete_or_failed_backup_unless_forced(backup, tmp_path):
    m = manifest_of(backup)
    m["status"] = "failed"
    (backup / "mailbak.json").write_text(json.dumps(m))
    p = run_cli("restore", backup, tmp_path / "t")
    assert p.returncode == 2 and "--force" in p.stderr
    assert not (tmp_path / "t").exists()
    (backup / "mailbak.json").unlink()
    p = run_cli("restore", backup, tmp_path / "t")
    assert p.returncode == 2 and "incomplete" in p.stderr
    p = run_cli("restore", "--force", backup, tmp_path / "t")
    assert p.returncode == 0, p.stderr


def test_restored_store_accepts_new_deliveries_without_id_collisions(backup, tmp_path):
    target = tmp_path / "restored"
    assert run_cli("restore", backup, target).returncode == 0
    before = set(live(target))
    with Store.open(target, durable=False) as s:
        acc = s.account(ACC)
        new = [acc.deliver(acc.mailbox_id("Inbox"), b"Subject: after restore\r\n\r\n") for _ in range(3)]
        all_ids = set(acc.messages(expunged=True)) | set(acc.mailboxes())
        q = s.queue.enqueue(b"q", sender="a@b", recipient="c@d")
    assert not set(new) & before
    assert min(new) > max(all_ids - set(new))
    assert q > 0 and verify(target).returncode == 0


def test_restore_never_writes_outside_the_target(backup, tmp_path):
    (backup / "data" / "evil").symlink_to("/tmp")
    (backup / "config" / "abs").symlink_to(str(tmp_path / "outside"))
    weird = backup / "data" / "accounts" / ACC / "..."
    weird.write_text("three dots")
    target = tmp_path / "t"
    p = run_cli("restore", "--force", backup, target)
    assert p.returncode in (0, 1), p.stderr
    assert os.readlink(target / "data" / "evil") == "/tmp"
    assert not (tmp_path / "outside").exists()
    assert (target / "data" / "accounts" / ACC / "...").read_text() == "three dots"


def test_files_moved_by_fix_are_backed_up_without_a_warning(store, tmp_path):
    """verify --fix moves a stray of the message tree to data/moved/ (in a backup: in a live store
    only files unchanged for 15 minutes move, and a test cannot age a ctime); the store restored
    from that backup is backed up with data/moved/ as plain files, without a warning."""
    stray = store / "data" / "accounts" / ACC / "msg" / "a" / "notes.txt"
    stray.write_text("stray")
    (store / "data" / "moved" / "accounts" / ACC).mkdir(parents=True)
    (store / "data" / "moved" / "accounts" / ACC / "77").write_text("moved earlier")
    first = tmp_path / "first"
    p = backup_ok(store, first)
    assert f"data/accounts/{ACC}/msg/a/notes.txt: unrecognized file in a message directory; copied" in p.stderr
    p = verify(first, "--fix")
    assert p.returncode == 0, p.stderr
    assert f"moved to moved/accounts/{ACC}/msg/a/notes.txt" in p.stderr, p.stderr
    assert not (first / "data" / "accounts" / ACC / "msg" / "a" / "notes.txt").exists()
    restored = tmp_path / "restored"
    assert run_cli("restore", first, restored).returncode == 0
    p = backup_ok(restored, tmp_path / "b")
    assert "data/moved" not in p.stderr and "notes.txt" not in p.stderr, p.stderr
    assert (tmp_path / "b" / "data" / "moved" / "accounts" / ACC / "77").read_text() == "moved earlier"
    assert (tmp_path / "b" / "data" / "moved" / "accounts" / ACC / "msg" / "a" / "notes.txt").read_text() == "stray"
    assert not (tmp_path / "b" / "data" / "accounts" / ACC / "msg" / "a" / "notes.txt").exists()

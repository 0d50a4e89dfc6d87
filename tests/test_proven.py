"""What the reference's own index proves (issue 22.1; docs/REPOSITORY.md, "What is reused").

A message whose ID is live both in the reference snapshot's copy of its area's index and in
today's, with the same recorded size, is the reference's file: the backup links it from the
reference without looking at the store's file. These tests hold the three sides of that rule:
- the normal case: such messages are counted as reused, and the store's file is not even
  stat'ed (observable because a store file replaced by one of another size is not seen: that
  is exactly the trust the format gives, message files being immutable);
- a damaged reference: a reference file removed or truncated is copied from the store;
- ID reuse: a store restored from an older backup hands IDs out again; the backup notices
  (another index file, an older transaction, a lower next ID), warns naming the area and
  compares every message with the store's file as before, so the snapshot holds the new bytes.
The repository is on /dev/shm, another file system than the store (where messages are reused
rather than linked from the store).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import backup_into, json_lines, make_store, manifest_of, run_cli, start_times
from mailbak.archiver import rewound
from mailbak.gen import age_tree
from mailbak.layout import NEXT_ID_KEY
from mailbak.store import Store

ACC = "user0000"


def snapshots(repo: Path) -> list[Path]:
    """The repository's snapshots, oldest first."""
    return sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))


def live_files(store: Path, account: str = ACC) -> dict[int, Path]:
    """The live messages of ``account`` by ID, with their files' paths."""
    with Store.open(store, durable=False) as s:
        acc = s.account(account)
        return {i: acc.message_path(i) for i in acc.messages()}


def warnings(events: list[dict], code: str) -> list[dict]:
    """The warnings of ``code`` among a run's JSON events."""
    return [e for e in events if e["message_type"] == "warning" and e["code"] == code]


def same_tree(store: Path, snap: Path, account: str = ACC) -> None:
    """Every live message of ``account`` in ``snap`` holds the store's bytes."""
    for path in live_files(store, account).values():
        rel = path.relative_to(store)
        assert (snap / rel).read_bytes() == path.read_bytes(), rel


@pytest.fixture
def aged(tmp_path: Path) -> Path:
    """A small generated store whose files are older than any backup's start (else nothing would
    be reused by the rule for files other than messages)."""
    s = make_store(tmp_path / "store")
    age_tree(s)
    return s


def test_proven_messages_are_linked_from_the_reference_without_a_look_at_the_store(aged, repo):
    t = start_times(2)
    backup_into(aged, repo, clock=t[0])
    [ref] = snapshots(repo)
    files = live_files(aged)
    live = manifest_of(ref)["transfer"]["messages"]
    # Replaced in the store by a file of another size with the same ID: today's comparison
    # (size, mtime, mode, owner) would copy it and call the backup failed (its size is not the
    # record's). Unlooked-at, the reference's file is linked: the proof is the index, and a
    # message file never changes (docs/FORMAT.md), so this is the trust the format gives.
    victim = files[min(files)]
    old = victim.read_bytes()
    victim.write_bytes(b"not the message the record describes\n")
    events: list[dict] = []
    summary = backup_into(aged, repo, events=events, clock=t[1])
    new = snapshots(repo)[-1]
    rel = victim.relative_to(aged)
    assert (new / rel).read_bytes() == old
    assert (new / rel).stat().st_ino == (ref / rel).stat().st_ino
    assert summary["status"] == "ok"
    assert summary["transfer"]["copied"] == 0
    # Every message reused (plain files are reused by today's rule and counted too).
    assert summary["transfer"]["reused"] >= live
    assert sum(a["reused"] for a in [summary["queue"], *summary["accounts"].values()]) >= live
    assert not warnings(events, "reference_index")
    assert run_cli("verify", new).returncode == 0


@pytest.mark.parametrize("damage", ["removed", "truncated"])
def test_a_damaged_reference_file_is_copied_from_the_store(aged, repo, damage):
    t = start_times(2)
    backup_into(aged, repo, clock=t[0])
    [ref] = snapshots(repo)
    files = live_files(aged)
    victim = files[max(files)]
    rel = victim.relative_to(aged)
    if damage == "removed":
        (ref / rel).unlink()
    else:
        os.truncate(ref / rel, (ref / rel).stat().st_size // 2)
    summary = backup_into(aged, repo, clock=t[1])
    new = snapshots(repo)[-1]
    assert (new / rel).read_bytes() == victim.read_bytes()
    assert (new / rel).stat().st_ino != victim.stat().st_ino, "a copy, not a link to the store"
    assert summary["accounts"][ACC]["copied"] == 1
    assert summary["transfer"]["copied"] == 1
    assert summary["status"] == "ok"
    assert run_cli("verify", new).returncode == 0


def test_ids_handed_out_again_after_a_restore_into_a_new_store_are_not_proof(aged, repo, tmp_path):
    t = start_times(3)
    backup_into(aged, repo, clock=t[0])
    [older] = snapshots(repo)
    # Messages after the older snapshot, each at an ID the restored store will hand out again.
    with Store.open(aged, durable=False) as s:
        acc = s.account(ACC)
        inbox = acc.mailbox_id("Inbox")
        later = {acc.deliver(inbox, b"Subject: later %d\r\n\r\n" % i + b"y" * (100 + 37 * i)): None for i in range(6)}
    backup_into(aged, repo, clock=t[1])
    reference = snapshots(repo)[-1]
    ref_files = {i: p.read_bytes() for i, p in live_files(aged).items() if i in later}

    restored = tmp_path / "restored"
    p = run_cli("restore", older, restored)
    assert p.returncode == 0, p.stdout + p.stderr
    age_tree(restored)  # its unchanged files are as old as a real store's
    delivered = same_size_and_other_size(restored, ref_files)
    assert any(len(b) == len(ref_files[i]) for i, b in delivered.items()), "an ID reused with the same size"
    assert any(len(b) != len(ref_files[i]) for i, b in delivered.items()), "an ID reused with another size"

    events: list[dict] = []
    summary = backup_into(restored, repo, events=events, clock=t[2])
    new = snapshots(repo)[-1]
    assert manifest_of(new)["reference"] == str(reference)
    same_tree(restored, new)
    for i, body in delivered.items():
        assert (new / live_files(restored)[i].relative_to(restored)).read_bytes() == body
    assert summary["status"] == "ok"
    [w] = [w for w in warnings(events, "reference_index") if ACC in w["path"]]
    assert "another file" in w["cause"]
    assert run_cli("verify", new).returncode == 0


def same_size_and_other_size(store: Path, ref_files: dict[int, bytes]) -> dict[int, bytes]:
    """Delivers into ``store``'s account one message per ID of ``ref_files`` (which the store
    hands out again, in order), alternately of the same size as the reference's message of that
    ID and of another; returns the bodies by ID."""
    delivered: dict[int, bytes] = {}
    with Store.open(store, durable=False) as s:
        acc = s.account(ACC)
        inbox = acc.mailbox_id("Inbox")
        for k, (want_id, old) in enumerate(sorted(ref_files.items())):
            size = len(old) if k % 2 == 0 else len(old) + 5
            body = (b"Subject: handed out again %d\r\n\r\n" % k).ljust(size, b"z")
            id_ = acc.deliver(inbox, body)
            assert id_ == want_id, "the restored store hands the reference's IDs out again"
            delivered[id_] = body
    return delivered


@pytest.mark.parametrize("sign", ["transaction", "next_id"])
def test_ids_handed_out_again_after_an_index_restored_in_place_are_not_proof(aged, repo, sign):
    # The older index written back over the store's own file keeps its inode: its older
    # transaction gives the restore away, or, when the store has since committed more
    # transactions than the reference's (new mailboxes, say), its lower next ID.
    t = start_times(3)
    backup_into(aged, repo, clock=t[0])
    [older] = snapshots(repo)
    with Store.open(aged, durable=False) as s:
        acc = s.account(ACC)
        inbox = acc.mailbox_id("Inbox")
        later = [acc.deliver(inbox, b"Subject: later %d\r\n\r\n" % i + b"y" * (100 + 37 * i)) for i in range(4)]
    backup_into(aged, repo, clock=t[1])
    files = live_files(aged)
    ref_files = {i: files[i].read_bytes() for i in later}
    index = aged / "data" / "accounts" / ACC / "index.db"
    inode = index.stat().st_ino
    for i in later:
        files[i].unlink()
    index.with_name("index.db-lock").unlink()
    with open(index, "r+b") as f:
        f.truncate(0)
        f.write((older / "data" / "accounts" / ACC / "index.db").read_bytes())
    assert index.stat().st_ino == inode
    age_tree(aged)
    if sign == "next_id":
        # Write transactions that take no ID (as flag changes are), past the reference's count;
        # then two IDs handed out again, one of each size.
        with Store.open(aged, durable=False) as s:
            acc = s.account(ACC)
            for _ in range(20):
                with acc.env.begin(write=True, db=acc.db["meta"]) as txn:
                    txn.put(NEXT_ID_KEY, txn.get(NEXT_ID_KEY))
        ref_files = dict(sorted(ref_files.items())[:2])
    delivered = same_size_and_other_size(aged, ref_files)

    events: list[dict] = []
    summary = backup_into(aged, repo, events=events, clock=t[2])
    new = snapshots(repo)[-1]
    same_tree(aged, new)
    for i, body in (delivered or {}).items():
        assert (new / files[i].relative_to(aged)).read_bytes() == body
    assert summary["status"] == "ok"
    [w] = [w for w in warnings(events, "reference_index") if ACC in w["path"]]
    assert ("older transaction" if sign == "transaction" else "next ID") in w["cause"], w
    assert run_cli("verify", new).returncode == 0


def test_a_reference_without_source_inodes_proves_nothing_and_says_so_once(aged, repo):
    # A reference written by a mailbak before this rule: every message compared as before.
    t = start_times(2)
    backup_into(aged, repo, clock=t[0])
    [ref] = snapshots(repo)
    doc = manifest_of(ref)
    for db in doc["databases"].values():
        del db["source_inode"]
    (ref / "mailbak.json").write_text(json.dumps(doc))
    files = live_files(aged)
    victim = files[min(files)]
    victim.write_bytes(b"another size\n")
    p = run_cli("backup", "--json", aged, repo, clock=t[1])
    events = json_lines(p.stdout)
    assert len(warnings(events, "reference_index")) == 1
    # Compared with the store's file: the replaced file is copied, and it contradicts its record.
    new = snapshots(repo)[-1]
    rel = victim.relative_to(aged)
    assert (new / rel).read_bytes() == b"another size\n"
    assert p.returncode == 1
    assert any(e.get("code") == "size_mismatch" for e in events)


def test_rewound_names_each_sign_of_a_store_gone_back_in_time():
    then = {"txnid": 50, "source_inode": 7}
    assert rewound(then, {"txnid": 50, "source_inode": 7}) is None
    assert rewound(then, {"txnid": 90, "source_inode": 7}) is None
    assert "another file" in rewound(then, {"txnid": 90, "source_inode": 8})
    assert "older transaction" in rewound(then, {"txnid": 49, "source_inode": 7})
    # This run could not copy the index: nothing to compare, nothing proven.
    assert rewound(then, {}) is not None

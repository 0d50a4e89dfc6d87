"""docs/FORMAT.md is a contract: a store written with only py-lmdb and msgpack, following the
document and nothing else, is read back by the library and accepted by backup and verify."""

from __future__ import annotations

import os
from pathlib import Path

import lmdb
import msgpack
import pytest
from conftest import run_cli
from mailbak import _engine
from mailbak.store import Store
from reference import dir_name

# --- path(id), written again from the document's prose, independently of mailbak ------------


def doc_path(id_: int) -> str:
    return f"{dir_name(id_)}/{id_}"


@pytest.mark.parametrize(
    "id_, path",
    [(5, "a/5"), (8192, "b/8192"), (516096, "_/516096"), (524288, "ab/524288"), (1000000, "Wb/1000000"), (1, "a/1"), (8191, "a/8191"), (2**33, "aaae/8589934592")],
)
def test_path_worked_examples(id_, path):
    assert doc_path(id_) == path
    assert _engine.message_path(id_) == path


def test_path_matches_document_across_directory_boundaries():
    for id_ in list(range(1, 70000, 997)) + [2**19 - 1, 2**19, 2**25, 2**31 + 7, 2**63]:
        assert _engine.message_path(id_) == doc_path(id_)


def test_parse_message_name_rejects_non_canonical():
    assert _engine.parse_message_name(b"42") == 42
    for bad in (b"042", b"0", b"+4", b"4a", b"", b"99999999999999999999999"):
        assert _engine.parse_message_name(bad) is None


# --- a store written from the document alone ------------------------------------------------


def key(i: int) -> bytes:
    return i.to_bytes(8, "big")


def write_doc_store(root: Path) -> dict:
    """Follows docs/FORMAT.md literally; returns what it wrote."""
    config, data = root / "config", root / "data"
    for d in (config, data / "tmp", data / "queue", data / "accounts" / "bob" / "msg"):
        d.mkdir(parents=True)
    (config / "mailstore.toml").write_text("[accounts.bob]\n")
    (data / "mailstore-version").write_text("1\n")
    (data / "receivedid.key").write_bytes(os.urandom(16))
    (data / "backup.lease").touch()

    def env(path):
        return lmdb.open(str(path), subdir=False, map_size=1 << 30, max_dbs=8)

    for name in ("auth.db", "dmarcrpt.db", "dmarceval.db", "mtasts.db", "tlsrpt.db", "tlsrptresult.db"):
        env(data / name).close()
    acc = data / "accounts" / "bob"
    e = env(acc / "index.db")
    message, mailbox, erase, meta = (e.open_db(n) for n in (b"message", b"mailbox", b"message_erase", b"meta"))
    bodies = {}
    with e.begin(write=True) as txn:
        txn.put(key(1), msgpack.packb({"name": "Inbox", "uidvalidity": 1, "uidnext": 4, "expunged": False}), db=mailbox)
        for uid, id_ in enumerate((2, 3, 9000), start=1):
            body = f"Subject: {id_}\r\n\r\nhello {id_}\r\n".encode()
            p = acc / "msg" / doc_path(id_)
            p.parent.mkdir(exist_ok=True)
            p.write_bytes(body)
            bodies[id_] = body
            txn.put(key(id_), msgpack.packb({"mailbox_id": 1, "uid": uid, "size": len(body), "expunged": False, "received": 1700000000, "x-unknown": [1, 2]}), db=message)
        # An expunged message whose file is being removed, file still present.
        p = acc / "msg" / doc_path(4)
        p.write_bytes(b"gone soon")
        txn.put(key(4), msgpack.packb({"mailbox_id": 1, "uid": 9, "size": 9, "expunged": True, "received": 1}), db=message)
        txn.put(key(4), b"", db=erase)
        txn.put(b"next_id", key(9001), db=meta)
    e.close()
    q = env(data / "queue" / "index.db")
    msg = q.open_db(b"msg")
    with q.begin(write=True) as txn:
        body = b"queued"
        (data / "queue" / "a").mkdir()
        (data / "queue" / doc_path(1)).write_bytes(body)
        txn.put(key(1), msgpack.packb({"size": len(body), "sender": "bob@example.org", "recipient": "x@example.net", "queued": 1}), db=msg)
    q.close()
    return bodies


def test_document_store_reads_back_through_the_library(tmp_path):
    bodies = write_doc_store(tmp_path / "s")
    with Store.open(tmp_path / "s", durable=False) as s:
        assert s.account_names() == ("bob",)
        acc = s.account("bob")
        msgs = acc.messages()
        assert sorted(msgs) == [2, 3, 9000]
        for id_, body in bodies.items():
            assert msgs[id_]["size"] == len(body)
            assert acc.message_path(id_).read_bytes() == body
        assert acc.erasing() == [4]
        assert s.queue.ids() == [1]
        # The library can keep writing it: IDs continue after next_id.
        new = acc.deliver(1, b"Subject: new\r\n\r\n")
        assert new == 9001


def test_document_store_is_accepted_by_backup_and_verify(tmp_path):
    write_doc_store(tmp_path / "s")
    v = run_cli("verify", tmp_path / "s")
    assert v.returncode == 0, v.stdout + v.stderr
    b = run_cli("backup", tmp_path / "s", tmp_path / "b")
    assert b.returncode == 0, b.stdout + b.stderr
    assert "warning" not in b.stderr, b.stderr
    assert (tmp_path / "b" / "data" / "accounts" / "bob" / "msg" / "b" / "9000").read_bytes().startswith(b"Subject: 9000")
    assert not (tmp_path / "b" / "data" / "accounts" / "bob" / "msg" / "a" / "4").exists()
    v = run_cli("verify", tmp_path / "b")
    assert v.returncode == 0, v.stdout + v.stderr

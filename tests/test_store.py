"""The writer library: round trips, the deliver crash order, erasure, account names."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from mailbak.layout import FormatError, check_account_name, read_config
from mailbak.store import Store


def test_create_layout(tmp_path):
    s = Store.create(tmp_path / "st", durable=False)
    s.close()
    data = tmp_path / "st" / "data"
    for name in ("mailstore-version", "receivedid.key", "backup.lease", "auth.db", "tlsrptresult.db", "queue/index.db"):
        assert (data / name).is_file(), name
    assert (data / "tmp").is_dir()
    assert (data / "receivedid.key").stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        Store.create(tmp_path / "st")


def test_deliver_expunge_round_trip(writer_store):
    acc = writer_store.add_account("alice", mailboxes=("Inbox", "Sent"))
    inbox = acc.mailbox_id("Inbox")
    ids = [acc.deliver(inbox, f"Subject: {i}\r\n\r\nbody {i}".encode()) for i in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5
    msgs = acc.messages()
    assert [msgs[i]["uid"] for i in ids] == [1, 2, 3, 4, 5]
    assert acc.mailboxes()[inbox]["uidnext"] == 6
    for i in ids:
        assert acc.message_path(i).read_bytes() == f"Subject: {ids.index(i)}\r\n\r\nbody {ids.index(i)}".encode()
        assert msgs[i]["size"] == acc.message_path(i).stat().st_size
    removed = acc.expunge(ids[:2])
    assert removed == 2
    assert not acc.message_path(ids[0]).exists()
    assert acc.erasing() == []
    assert acc.message(ids[0])["expunged"] is True
    assert sorted(acc.messages()) == ids[2:]


def test_ids_never_reused_and_shared_by_mailboxes(writer_store):
    acc = writer_store.add_account("bob")
    a = acc.deliver(acc.mailbox_id("Inbox"), b"x")
    acc.expunge([a])
    mb = acc.create_mailbox("Later")
    b = acc.deliver(mb, b"y")
    assert a < mb < b


def test_deliver_to_expunged_mailbox_leaves_no_file(writer_store):
    acc = writer_store.add_account("carol", mailboxes=("Inbox", "Old"))
    old = acc.mailbox_id("Old")
    acc.expunge_mailbox(old)
    with pytest.raises(KeyError):
        acc.deliver(old, b"lost")
    files = [p for p in (acc.msg_dir).rglob("*") if p.is_file()]
    assert files == []


def test_queue_enqueue_dequeue(writer_store):
    q = writer_store.queue
    a = q.enqueue(b"one", sender="a@x", recipient="b@y")
    b = q.enqueue(b"two", sender="a@x", recipient="c@y")
    assert q.ids() == [a, b]
    assert q.dequeue(a) == 1
    assert q.ids() == [b]
    assert not q.message_path(a).exists() and q.message_path(b).read_bytes() == b"two"
    with pytest.raises(KeyError):
        q.dequeue(a)


def test_sweep_defers_while_a_backup_holds_the_lease(writer_store):
    import fcntl

    acc = writer_store.add_account("dave")
    ids = [acc.deliver(acc.mailbox_id("Inbox"), b"m%d" % i) for i in range(3)]
    fd = os.open(writer_store.lease.path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)  # what a running backup holds
    try:
        assert acc.expunge(ids[:2]) == 0  # returns at once, removes nothing
        assert acc.message_path(ids[0]).exists()
        assert acc.erasing() == ids[:2]
        assert writer_store.queue.dequeue(writer_store.queue.enqueue(b"q", sender="s", recipient="r")) == 0
    finally:
        os.close(fd)
    assert acc.sweep() == 2
    assert not acc.message_path(ids[0]).exists()
    assert acc.erasing() == []
    assert writer_store.queue.sweep() == 1


CRASH_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from mailbak.store import Account, Store
    point = sys.argv[2]
    real_place, real_alloc = Account._place, Account._alloc_ids

    def place(self, id_, data):
        if point == "before_place":
            os.kill(os.getpid(), signal.SIGKILL)
        real_place(self, id_, data)
        if point == "after_place":
            os.kill(os.getpid(), signal.SIGKILL)

    Account._place = place
    s = Store.open(sys.argv[1])
    acc = s.account("erin")
    acc.deliver(acc.mailbox_id("Inbox"), b"Subject: crash\\r\\n\\r\\nbody")
    """
)


@pytest.mark.parametrize("point", ["before_place", "after_place"])
def test_deliver_crash_never_leaves_a_record_without_its_file(tmp_path, point):
    """A real process is killed between the steps of deliver; afterwards no committed record
    lacks its file, the ID is never handed out again, and an orphan file is what verify sees."""
    root = tmp_path / "st"
    with Store.create(root) as s:
        acc = s.add_account("erin")
        first = acc.deliver(acc.mailbox_id("Inbox"), b"before")
    p = subprocess.run([sys.executable, "-c", CRASH_CHILD, str(root), point], capture_output=True)
    assert p.returncode == -signal.SIGKILL, p.stderr
    with Store.open(root) as s:
        acc = s.account("erin")
        msgs = acc.messages()
        assert list(msgs) == [first]
        for id_ in msgs:
            assert acc.message_path(id_).exists()
        crashed_id = first + 1
        orphan = acc.message_path(crashed_id)
        assert orphan.exists() == (point == "after_place")
        nxt = acc.deliver(acc.mailbox_id("Inbox"), b"after")
        assert nxt == crashed_id + 1, "the crashed delivery's ID is never reused"


def test_account_names_are_validated(writer_store):
    for bad in ("", "../x", "a/b", ".hidden", "nul\0name"):
        with pytest.raises(FormatError):
            check_account_name(bad)
        with pytest.raises(FormatError):
            writer_store.add_account(bad)
    writer_store.add_account("renée ünïcode")
    assert "renée ünïcode" in writer_store.account_names()
    assert not any(p.name.startswith(".") for p in (writer_store.data_dir / "accounts").iterdir())


def test_config_lists_invalid_names_apart(tmp_path):
    (tmp_path / "mailstore.toml").write_text('[accounts.good]\n[accounts."../evil"]\n[accounts.".dot"]\n[accounts.""]\n[accounts."a/b"]\n[accounts."nul\\u0000x"]\n')
    cfg = read_config(tmp_path)
    assert cfg.accounts == ("good",)
    assert sorted(n for n, _ in cfg.invalid) == ["", "../evil", ".dot", "a/b", "nul\0x"]


@pytest.mark.parametrize("text", ["[accounts\n", "accounts = 5\n", "\xff\xfe"])
def test_malformed_config_is_a_format_error(tmp_path, text):
    (tmp_path / "mailstore.toml").write_bytes(text.encode("latin-1"))
    with pytest.raises(FormatError):
        read_config(tmp_path)

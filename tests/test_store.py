"""The writer library: round trips, the deliver crash order, erasure, account names."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import msgpack
import pytest
from mailbak.layout import SYSTEM_FLAGS, Flag, FormatError, check_account_name, id_key, mailbox_ancestors, mailbox_name_problem, read_config
from mailbak.store import Store, message_record


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


def test_mailbox_name_rules():
    for bad, why in (
        ("", "empty"),
        ("/Inbox", "empty component"),
        ("Inbox/", "empty component"),
        ("a//b", "empty component"),
        ("..", "'..'"),
        ("Archive/../../etc", "'..'"),
        ("a/./b", "'.'"),
        ("tab\there", "control"),
        ("nl\nhere", "control"),
        ("nul\0", "control"),
        ("csi\x9b", "control"),
        ("del\x7f", "control"),
        ("\udcff", "UTF-8"),
    ):
        problem = mailbox_name_problem(bad)
        assert problem is not None and why in problem, (bad, problem)
    for good in ("Inbox", "Archive/2024", "Projekte/Übersicht", "Reçus", ".hidden", "a b", "日本語/メール"):
        assert mailbox_name_problem(good) is None, good
    assert mailbox_ancestors("a/b/c") == ["a", "a/b"]
    assert mailbox_ancestors("Inbox") == []


def test_flags_are_the_imap_system_flags_and_well_known_keywords():
    assert [str(f) for f in SYSTEM_FLAGS] == ["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"]
    assert {str(f) for f in Flag} - set(SYSTEM_FLAGS) == {"$Forwarded", "$Junk", "$NotJunk", "$Phishing", "$MDNSent"}
    assert all(f.startswith("\\") for f in SYSTEM_FLAGS)


def test_create_mailbox_makes_missing_ancestors_once(writer_store):
    acc = writer_store.add_account("frank", mailboxes=("Inbox", "Archive"))
    archive = acc.mailbox_id("Archive")
    y2024 = acc.create_mailbox("Archive/2024")
    deep = acc.create_mailbox("Projekte/Übersicht/2025")
    names = {rec["name"]: id_ for id_, rec in acc.mailboxes().items()}
    assert set(names) == {"Inbox", "Archive", "Archive/2024", "Projekte", "Projekte/Übersicht", "Projekte/Übersicht/2025"}
    assert names["Archive"] == archive, "an existing ancestor is not made again"
    assert names["Archive/2024"] == y2024 and names["Projekte/Übersicht/2025"] == deep
    # Ancestors get IDs below their child's, from the one counter: none reused, none above next_id.
    assert names["Projekte"] < names["Projekte/Übersicht"] < deep
    for rec in acc.mailboxes().values():
        assert rec["uidnext"] == 1 and rec["expunged"] is False and rec["uidvalidity"] > 0
    with pytest.raises(FormatError, match="exists"):
        acc.create_mailbox("Archive/2024")
    assert acc.ensure_mailbox("Archive/2024") == y2024
    assert acc.ensure_mailbox("Projekte") == names["Projekte"]
    fresh = acc.ensure_mailbox("Reçus")
    assert acc.mailbox_id("Reçus") == fresh
    assert len(acc.mailboxes()) == 7
    # A mailbox delivered to after its ancestors were made takes messages like any other.
    m = acc.deliver(y2024, b"Subject: old\r\n\r\nx")
    assert acc.message(m)["mailbox_id"] == y2024 and acc.message(m)["uid"] == 1


def test_expunged_ancestor_is_made_anew(writer_store):
    acc = writer_store.add_account("gina", mailboxes=("Old",))
    old = acc.mailbox_id("Old")
    acc.expunge_mailbox(old)
    child = acc.create_mailbox("Old/2020")
    live = {rec["name"]: i for i, rec in acc.mailboxes().items() if not rec["expunged"]}
    assert set(live) == {"Old", "Old/2020"} and live["Old"] not in (old, child)


def test_bad_mailbox_names_are_refused_and_nothing_written(writer_store):
    acc = writer_store.add_account("hank", mailboxes=())
    for bad in ("", "..", "../x", "a/../b", "/abs", "trail/", "x\ny"):
        with pytest.raises(FormatError, match="mailbox name"):
            acc.create_mailbox(bad)
        with pytest.raises(FormatError, match="mailbox name"):
            acc.ensure_mailbox(bad)
    assert acc.mailboxes() == {}
    with pytest.raises(FormatError):
        writer_store.add_account("ivan", mailboxes=("Inbox", "a//b"))


def test_add_account_with_nested_mailboxes(writer_store):
    acc = writer_store.add_account("jane", mailboxes=("Inbox", "Archive/2023", "Archive", "Archive/2024"))
    names = sorted(rec["name"] for rec in acc.mailboxes().values())
    assert names == ["Archive", "Archive/2023", "Archive/2024", "Inbox"]


def test_a_mailbox_made_meanwhile_is_not_made_twice(tmp_path):
    """A writer that allocated IDs for ``Archive/2024`` and its ancestor stands still (pause
    point) while another process makes both; when it goes on it finds them and writes nothing,
    leaving one live mailbox per name, and both writers agree on the ID."""
    from pausing import PausePoint

    root = tmp_path / "st"
    with Store.create(root, durable=False) as s:
        s.add_account("kim", mailboxes=("Inbox",))
    child = textwrap.dedent(
        """
        import sys
        from mailbak.store import Store
        with Store.open(sys.argv[1], durable=False) as s:
            print(s.account("kim").ensure_mailbox("Archive/2024"))
        """
    )
    pp = PausePoint(tmp_path / "pause", "store.make_mailbox")
    proc = subprocess.Popen([sys.executable, "-c", child, str(root)], env=pp.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pp.wait_reached(proc)
        with Store.open(root, durable=False) as s:
            mine = s.account("kim").create_mailbox("Archive/2024")
    finally:
        pp.go()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert int(out) == mine
    with Store.open(root, durable=False) as s:
        acc = s.account("kim")
        names = sorted(rec["name"] for rec in acc.mailboxes().values())
        assert names == ["Archive", "Archive/2024", "Inbox"]
        # Inbox is 1; the paused writer took 2 and 3, which stay unused; this one 4 and 5.
        assert sorted(acc.mailboxes()) == [1, 4, 5] and mine == 5


def test_deliver_records_flags_keywords_and_origin(writer_store):
    acc = writer_store.add_account("lena")
    inbox = acc.mailbox_id("Inbox")
    a = acc.deliver(inbox, b"Subject: a\r\n\r\n", received=1_600_000_000, flags=(Flag.SEEN, Flag.FORWARDED), keywords=("$label1", "work"), origin="snap-1/lena/42")
    b = acc.deliver(inbox, b"Subject: b\r\n\r\n", received=0)
    ra, rb = acc.message(a), acc.message(b)
    assert ra["flags"] == ["\\Seen", "$Forwarded"] and ra["keywords"] == ["$label1", "work"]
    assert ra["origin"] == "snap-1/lena/42" and ra["received"] == 1_600_000_000
    assert rb["flags"] == [] and "keywords" not in rb and "origin" not in rb
    assert rb["received"] == 0, "an explicit received time is kept, even 0"
    # The raw record is a msgpack map with plain strings, as FORMAT.md says.
    with acc.env.begin(db=acc.db["message"]) as txn:
        raw = msgpack.unpackb(txn.get(id_key(a)), raw=False)
    assert raw["flags"] == ["\\Seen", "$Forwarded"] and type(raw["flags"][0]) is str
    assert message_record(mailbox_id=1, uid=1, size=1, received=1).keys() == {"mailbox_id", "uid", "size", "expunged", "received", "flags"}

"""mailbak ls and mailbak find (issue 20): real stores written with the writer library, real
backups and repository snapshots made by the CLI, the CLI in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import NOBODY, backup_into, backup_ok, init_ok, json_lines, nobodys_store, run_cli, start_times, tree_listing
from mailbak.finder import Criteria, Find
from mailbak.layout import id_key, message_rel
from mailbak.repository import name_time, snapshot_name
from mailbak.store import Account, Store, mailbox_record, pack, unpack

#: A subject as a mail client sends non-ASCII text (RFC 2047), and what ls must show.
ENCODED_SUBJECT = "=?utf-8?q?Caf=C3=A9_au_lait?="
DECODED_SUBJECT = "Café au lait"

#: A mailbox name the writer refuses, as a hostile owner writes it into the index directly:
#: a terminal escape, a newline that would forge a line, and a `..` component.
HOSTILE = "evil/../\x1b[31mred\nforged"


def mail(n: int, subject: str = "", *, sender: str = "Alice <alice@example.org>", to: str = "bob@example.org", pad: int = 0) -> bytes:
    """A small message numbered ``n``."""
    subject = subject or f"message {n}"
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: Mon, 02 Nov 2026 10:00:{n % 60:02d} +0000\r\nMessage-ID: <m{n}@example.org>\r\n\r\nbody {n}\r\n" + "x" * pad).encode()


def plant_mailbox(acc: Account, name: str) -> int:
    """A live mailbox record named ``name``, written into the index as a hostile owner would
    (the writer refuses such names)."""
    id_ = acc._alloc_ids()
    with acc.env.begin(write=True, db=acc.db["mailbox"]) as txn:
        txn.put(id_key(id_), pack(mailbox_record(name=name, uidvalidity=7)))
    return id_


def move(acc: Account, id_: int, mailbox: str) -> None:
    """Moves message ``id_`` to ``mailbox`` as a server does (mox): same message and file, the
    record's mailbox changed and a new UID from the target's uidnext."""
    target = acc.ensure_mailbox(mailbox)
    with acc.env.begin(write=True) as txn:
        mb = unpack(txn.get(id_key(target), db=acc.db["mailbox"]))
        rec = unpack(txn.get(id_key(id_), db=acc.db["message"]))
        rec["mailbox_id"], rec["uid"] = target, mb["uidnext"]
        mb["uidnext"] += 1
        txn.put(id_key(target), pack(mb), db=acc.db["mailbox"])
        txn.put(id_key(id_), pack(rec), db=acc.db["message"])


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    """A store of two accounts: alice (a mailbox hierarchy, flags, an encoded subject, a bare
    level, a non-ASCII and a hostile mailbox name) and bob (two messages)."""
    root = tmp_path / "store"
    with Store.create(root, durable=False) as s:
        alice = s.add_account("alice", mailboxes=("Inbox", "Archive/2024", "Entwürfe", "Lists/rust/announce"))
        inbox = alice.mailbox_id("Inbox")
        alice.deliver(inbox, mail(1), received=1_790_000_000, flags=("\\Seen",))
        alice.deliver(inbox, mail(2, ENCODED_SUBJECT), received=1_790_000_100, flags=("\\Flagged",), keywords=("project-x",))
        alice.deliver(inbox, mail(3), received=1_790_000_200, flags=("\\Seen", "\\Answered"))
        alice.deliver(alice.mailbox_id("Archive/2024"), mail(4, pad=100), received=1_700_000_000)
        alice.deliver(alice.mailbox_id("Entwürfe"), mail(5), received=1_790_000_300, flags=("\\Draft", "\\Seen"))
        # "Lists" and "Lists/rust" are gone, "Lists/rust/announce" stays: bare levels.
        alice.expunge_mailbox(alice.mailbox_id("Lists"))
        alice.expunge_mailbox(alice.mailbox_id("Lists/rust"))
        alice.deliver(alice.mailbox_id("Lists/rust/announce"), mail(6), received=1_790_000_400)
        plant_mailbox(alice, HOSTILE)
        bob = s.add_account("bob")
        bob.deliver(bob.mailbox_id("Inbox"), mail(7), received=1_790_000_500)
        bob.deliver(bob.mailbox_id("Inbox"), mail(8), received=1_790_000_600)
    return root


def ls_json(*args: str | os.PathLike, code: int = 0) -> list[dict]:
    """`mailbak ls --json ARGS`, which must exit ``code``, as its JSON objects."""
    p = run_cli("ls", "--json", *args)
    assert p.returncode == code, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    return json_lines(p.stdout)


def sizes_of(root: Path, account: str) -> dict[int, int]:
    """Message ID -> size of an account's live messages, from the writer library."""
    with Store.open(root, durable=False) as s:
        return {i: r["size"] for i, r in s.account(account).messages().items()}


# ls -------------------------------------------------------------------------------------------


def test_ls_accounts_counts_messages_bytes_and_mailboxes_of_store_and_backup(shop: Path, tmp_path: Path):
    backup = tmp_path / "backup"
    backup_ok(shop, backup)
    for path in (shop, backup):
        got = ls_json(path)
        assert [o["message_type"] for o in got] == ["account", "account"]
        by = {o["account"]: o for o in got}
        assert by["alice"]["messages"] == 6 and by["alice"]["bytes"] == sum(sizes_of(shop, "alice").values())
        # Inbox, Archive, Archive/2024, Entwürfe, Lists/rust/announce and the hostile one.
        assert by["alice"]["mailboxes"] == 6
        assert (by["bob"]["messages"], by["bob"]["mailboxes"]) == (2, 1)
    p = run_cli("ls", backup)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["account", "messages", "bytes", "mailboxes"]
    assert lines[1].split()[:2] == ["alice", "6"] and lines[2].split()[:2] == ["bob", "2"]


def test_ls_account_shows_the_mailbox_tree_with_counts_unseen_bytes_and_escaped_names(shop: Path):
    sizes = sizes_of(shop, "alice")
    got = ls_json(shop, "alice")
    assert all(o["message_type"] == "mailbox" and o["account"] == "alice" for o in got)
    by = {o["name"]: o for o in got}
    inbox = by["Inbox"]
    assert (inbox["messages"], inbox["unseen"]) == (3, 1)
    assert sorted(sizes.values()) == sorted([len(mail(1)), len(mail(2, ENCODED_SUBJECT)), len(mail(3)), len(mail(4, pad=100)), len(mail(5)), len(mail(6))])
    assert inbox["bytes"] == sum(len(mail(n)) for n in (1, 3)) + len(mail(2, ENCODED_SUBJECT))
    assert (by["Archive/2024"]["messages"], by["Archive/2024"]["unseen"], by["Archive/2024"]["bytes"]) == (1, 1, len(mail(4, pad=100)))
    assert (by["Archive"]["exists"], by["Archive"]["messages"]) == (True, 0)
    assert (by["Entwürfe"]["messages"], by["Entwürfe"]["unseen"]) == (1, 0)
    # Bare levels: shown, not mailboxes.
    assert by["Lists"] == {"message_type": "mailbox", "account": "alice", "name": "Lists", "level": 0, "exists": False}
    assert by["Lists/rust"]["exists"] is False and by["Lists/rust/announce"]["level"] == 2
    assert by[HOSTILE]["exists"] is True
    # Parents before children, in hierarchy order.
    names = [o["name"] for o in got]
    assert names.index("Archive") < names.index("Archive/2024") and names.index("Lists") < names.index("Lists/rust") < names.index("Lists/rust/announce")

    p = run_cli("ls", shop, "alice")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "\x1b" not in out and "\\x1b[31mred\\nforged" in out
    lines = out.splitlines()
    assert lines[0].split() == ["mailbox", "messages", "unseen", "bytes"]
    assert len(lines) == 1 + len(got)  # the hostile newline forged no line
    assert any(line.startswith("  Lists/") for line in lines)
    assert any(line.startswith("      announce ") for line in lines)
    assert any(line.startswith("  Entwürfe ") for line in lines)
    assert any(line.startswith("    2024 ") for line in lines)


def test_ls_mailbox_lists_messages_in_uid_order_with_their_heads(shop: Path, tmp_path: Path):
    backup = tmp_path / "backup"
    backup_ok(shop, backup)
    got = ls_json(backup, "alice", "Inbox")
    assert got == ls_json(shop, "alice", "Inbox")
    assert [o["uid"] for o in got] == [1, 2, 3]
    second = got[1]
    assert second["subject"] == DECODED_SUBJECT
    assert (second["flags"], second["keywords"], second["received"]) == (["\\Flagged"], ["project-x"], 1_790_000_100)
    assert (second["from"], second["to"], second["message_id"]) == ("Alice <alice@example.org>", "bob@example.org", "<m2@example.org>")
    assert second["date"] == "Mon, 02 Nov 2026 10:00:02 +0000" and second["size"] == len(mail(2, ENCODED_SUBJECT))

    p = run_cli("ls", backup, "alice", "Inbox")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["id", "uid", "received", "size", "flags", "from", "subject", "date", "message-id"]
    assert len(lines) == 4 and DECODED_SUBJECT in lines[2] and "Flagged project-x" in lines[2] and "Seen Answered" in lines[3]
    assert "<m3@example.org>" in lines[3]
    # The hostile mailbox, named as it is, lists (nothing) and its name is escaped in errors.
    assert ls_json(shop, "alice", HOSTILE) == []


def test_ls_of_a_live_store_of_nobody_as_root_reads_and_changes_nothing(tmp_path: Path):
    store = nobodys_store(tmp_path / "store", messages=200, accounts=2)
    before = tree_listing(store)
    accounts = ls_json(store)
    assert sum(a["messages"] for a in accounts) > 0
    account = accounts[0]["account"]
    mailboxes = [o for o in ls_json(store, account) if o["exists"] and o["messages"]]
    messages = ls_json(store, account, mailboxes[0]["name"])
    assert len(messages) == mailboxes[0]["messages"] and all(m["message_id"] for m in messages)
    assert tree_listing(store) == before
    for dirpath, dirnames, filenames in os.walk(store):
        for n in [".", *dirnames, *filenames]:
            assert os.lstat(os.path.join(dirpath, n)).st_uid == NOBODY.pw_uid, os.path.join(dirpath, n)


def test_ls_names_each_message_file_it_cannot_read_and_lists_the_rest(shop: Path, tmp_path: Path):
    backup = tmp_path / "backup"
    backup_ok(shop, backup)
    listed = ls_json(backup, "alice", "Inbox")
    paths = {o["id"]: backup / "data" / "accounts" / "alice" / "msg" / message_rel(o["id"]) for o in listed}
    (tmp_path / "secret").write_text("From: secret@example.org\n\n")
    ids = [o["id"] for o in listed]
    paths[ids[0]].unlink()
    paths[ids[0]].symlink_to(tmp_path / "secret")
    paths[ids[1]].unlink()
    os.mkfifo(paths[ids[1]])
    paths[ids[2]].unlink()

    p = run_cli("ls", backup, "alice", "Inbox", timeout=60)
    assert p.returncode == 1, p.stdout + p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 3, p.stderr
    for id_, why in zip(ids, ("symlink", "not a regular file", "No such file"), strict=True):
        line = next(e for e in errors if f"message {id_}:" in e)
        assert "account 'alice'" in line and f"data/accounts/alice/msg/{message_rel(id_)}" in line and why in line
    assert len(p.stdout.splitlines()) == 4 and "secret@example.org" not in p.stdout
    got = ls_json(backup, "alice", "Inbox", code=1)
    assert [o["id"] for o in got] == ids and all("error" in o and "subject" not in o for o in got)
    # The other mailboxes are whole.
    assert ls_json(backup, "alice", "Entwürfe")[0]["message_id"] == "<m5@example.org>"


def test_ls_refuses_unknown_names_and_a_repository_listing_what_there_is(shop: Path, tmp_path: Path):
    p = run_cli("ls", shop, "carol")
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.startswith("mailbak: error: no account 'carol'") and "'alice', 'bob'" in p.stderr
    p = run_cli("ls", shop, "bob", "Archive")
    assert p.returncode == 2 and "no mailbox 'Archive' in account 'bob' (mailboxes: 'Inbox')" in p.stderr
    repo = tmp_path / "repo"
    init_ok(repo)
    p = run_cli("ls", repo)
    assert p.returncode == 2 and "is a repository" in p.stderr and "mailbak snapshots" in p.stderr
    p = run_cli("ls", tmp_path / "nothing")
    assert p.returncode == 2 and p.stderr.count("\n") == 1


# find -----------------------------------------------------------------------------------------


@pytest.fixture
def history(shm_dir: Path, tmp_path: Path) -> tuple[Path, list[str], dict[str, int]]:
    """A repository of three snapshots of a store whose messages change between them:
    ``moved`` goes from Inbox to Archive/2024 after the first, ``brief`` arrives after the first
    and is expunged after the second, ``flagged`` gets \\Seen after the first. Returns the
    repository, the snapshot names oldest first, and the IDs."""
    root = tmp_path / "store"
    repo = shm_dir / "repo"
    init_ok(repo)
    clocks = start_times(3)
    with Store.create(root, durable=False) as s:
        a = s.add_account("alice", mailboxes=("Inbox",))
        inbox = a.mailbox_id("Inbox")
        ids = {
            "moved": a.deliver(inbox, mail(1, "Quarterly report", sender="Carol <carol@example.com>")),
            "flagged": a.deliver(inbox, mail(2, ENCODED_SUBJECT)),
            "stays": a.deliver(inbox, mail(3, "quarterly numbers", to="dave@example.net")),
        }
        b = s.add_account("bob")
        ids["bob"] = b.deliver(b.mailbox_id("Inbox"), mail(1, "Quarterly report", sender="Carol <carol@example.com>"))
    for step, clock in enumerate(clocks):
        with Store.open(root, durable=False) as s:
            a = s.account("alice")
            if step == 1:
                move(a, ids["moved"], "Archive/2024")
                ids["brief"] = a.deliver(a.mailbox_id("Inbox"), mail(4, "brief visit"))
                with a.env.begin(write=True) as txn:
                    rec = unpack(txn.get(id_key(ids["flagged"]), db=a.db["message"]))
                    rec["flags"] = ["\\Seen"]
                    txn.put(id_key(ids["flagged"]), pack(rec), db=a.db["message"])
            if step == 2:
                a.expunge([ids["brief"]])
        backup_into(root, repo, clock=clock)
    names = sorted(n for n in os.listdir(repo) if n[0].isdigit())
    assert len(names) == 3
    return repo, names, ids


def clocks_of(name: str) -> float:
    """The start time a snapshot's name says."""
    t = name_time(name)
    assert t is not None
    return t.timestamp()


def find_json(*args: str | os.PathLike, code: int = 0) -> list[dict]:
    """`mailbak find --json ARGS`, which must exit ``code``, as its JSON objects."""
    p = run_cli("find", "--json", *args)
    assert p.returncode == code, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    return json_lines(p.stdout)


def test_find_shows_each_message_once_with_where_it_moved(history):
    repo, names, ids = history
    got = find_json(repo, "--message-id", "<m1@example.org>")
    assert [(o["account"], o["id"]) for o in got] == [("alice", ids["moved"]), ("bob", ids["bob"])]
    moved = got[0]
    assert (moved["first_seen"], moved["last_seen"], moved["count"]) == (names[0], names[2], 3)
    assert moved["mailboxes"] == [{"mailbox": "Inbox", "first": names[0], "last": names[0]}, {"mailbox": "Archive/2024", "first": names[1], "last": names[2]}]
    assert [s["snapshot"] for s in moved["snapshots"]] == names[::-1]
    assert [s["mailbox"] for s in moved["snapshots"]] == ["Archive/2024", "Archive/2024", "Inbox"]
    assert [s["uid"] for s in moved["snapshots"]] == [1, 1, 1] and all(s["id"] == ids["moved"] for s in moved["snapshots"])
    assert (moved["subject"], moved["from"]) == ("Quarterly report", "Carol <carol@example.com>")
    # Without angle brackets: the same.
    assert find_json(repo, "--message-id", "m1@example.org") == got

    p = run_cli("find", repo, "--account", "alice", "--message-id", "m1@example.org")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 2 and lines[0].split()[:2] == ["account", "message-id"]
    assert f"Inbox ({names[0]}..{names[0]}), Archive/2024 ({names[1]}..)" in lines[1]


def test_find_first_and_last_seen_of_a_message_some_snapshots_hold_and_its_flags(history):
    repo, names, ids = history
    (brief,) = find_json(repo, "--subject", "BRIEF")
    assert (brief["id"], brief["first_seen"], brief["last_seen"], brief["count"]) == (ids["brief"], names[1], names[1], 1)
    p = run_cli("find", repo, "--subject", "brief")
    assert f"Inbox ({names[1]}..{names[1]})" in p.stdout
    (flagged,) = find_json(repo, "--subject", "café")
    assert flagged["subject"] == DECODED_SUBJECT
    assert [s["flags"] for s in flagged["snapshots"]] == [["\\Seen"], ["\\Seen"], []]
    assert flagged["mailboxes"] == [{"mailbox": "Inbox", "first": names[0], "last": names[2]}]


def test_find_criteria_are_anded(history):
    repo, names, ids = history
    quarterly = find_json(repo, "--subject", "quarterly")
    assert sorted((o["account"], o["id"]) for o in quarterly) == sorted([("alice", ids["moved"]), ("alice", ids["stays"]), ("bob", ids["bob"])])
    assert [o["id"] for o in find_json(repo, "--subject", "quarterly", "--from", "CAROL", "--account", "alice")] == [ids["moved"]]
    assert [o["id"] for o in find_json(repo, "--subject", "quarterly", "--to", "dave@")] == [ids["stays"]]
    assert find_json(repo, "--subject", "quarterly", "--to", "dave@", "--from", "carol") == []
    # --mailbox: in it in at least one snapshot; the history still shows every snapshot.
    (archived,) = find_json(repo, "--mailbox", "Archive/2024")
    assert archived["id"] == ids["moved"] and archived["count"] == 3
    assert [o["id"] for o in find_json(repo, "--mailbox", "Inbox", "--subject", "report")] == [ids["moved"], ids["bob"]]
    # --since / --before on the received time (every message was received now).
    assert len(find_json(repo, "--since", "2000-01-01", "--subject", "quarterly")) == 3
    assert find_json(repo, "--before", "2000-01-01") == []


def test_find_refuses_unknown_names_listing_what_there_is(history):
    repo, names, ids = history
    p = run_cli("find", repo, "--account", "carol")
    assert p.returncode == 2 and "no account 'carol'" in p.stderr and "'alice', 'bob'" in p.stderr and p.stdout == ""
    p = run_cli("find", repo, "--account", "bob", "--mailbox", "Archive/2024")
    assert p.returncode == 2 and "no mailbox 'Archive/2024'" in p.stderr and "(mailboxes: 'Inbox')" in p.stderr
    p = run_cli("find", repo, "--since", "yesterday")
    assert p.returncode == 2 and "not a date" in p.stderr


def test_find_parses_each_head_once_from_the_newest_snapshot_holding_it(history):
    """The newest snapshot's copy of a message is replaced by another file of the same size
    (another inode: a hostile or damaged snapshot): find shows the newest head, and never
    parses the older copies, which the other snapshots share by hardlink."""
    repo, names, ids = history
    newest = repo / names[2] / "data" / "accounts" / "alice" / "msg" / message_rel(ids["stays"])
    old = newest.read_bytes()
    new = old.replace(b"quarterly numbers", b"QUARTERLY ZAHLEN!")
    assert len(new) == len(old) and new != old
    newest.unlink()
    newest.write_bytes(new)
    assert os.stat(repo / names[0] / "data" / "accounts" / "alice" / "msg" / message_rel(ids["stays"])).st_ino != newest.stat().st_ino

    (got,) = find_json(repo, "--to", "dave@")
    assert (got["subject"], got["count"]) == ("QUARTERLY ZAHLEN!", 3)
    assert find_json(repo, "--subject", "quarterly numbers") == []

    job = Find(repo, Criteria())
    job.check()
    try:
        assert job.run().value == "ok"
    finally:
        job.close()
    # alice: moved, flagged, stays, brief; bob: one. Five heads for 13 copies in 3 snapshots.
    assert job.heads_read == 5 and len(job.matches) == 5
    assert sum(len(m.seen) for m in job.matches) == 3 + 3 + 3 + 1 + 3


def test_find_skips_an_incomplete_snapshot_and_names_an_unreadable_file(history, tmp_path: Path):
    repo, names, ids = history
    partial = repo / snapshot_name(clocks_of(names[2]) + 3600)  # the newest snapshot
    shutil.copytree(repo / names[2], partial, symlinks=True)
    doc = json.loads((partial / "mailbak.json").read_text())
    doc["status"] = "running"
    (partial / "mailbak.json").write_text(json.dumps(doc))
    p = run_cli("find", repo, "--message-id", "m3@example.org")
    assert p.returncode == 0, p.stderr
    assert "warning:" in p.stderr and partial.name in p.stderr and "not searched" in p.stderr
    assert partial.name not in p.stdout
    shutil.rmtree(partial)

    # One snapshot alone, a message file missing in it: named, the rest searched.
    single = repo / names[0]
    (single / "data" / "accounts" / "alice" / "msg" / message_rel(ids["stays"])).unlink()
    p = run_cli("find", single, "--subject", "quarterly")
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"account 'alice', message {ids['stays']}" in p.stderr and message_rel(ids["stays"]) in p.stderr
    assert len(p.stdout.splitlines()) == 3  # header, alice's report, bob's
    # In the repository, the newer snapshots hold the file: read from the newest, found.
    assert [o["id"] for o in find_json(repo, "--to", "dave@")] == [ids["stays"]]


def naive_distinct(sources: list[list[tuple[int, int]]]) -> tuple[dict[int, int], dict[int, int], dict[tuple[int, int], int]]:
    """What finder.Distinct must compute, the slow obvious way."""
    size: dict[int, int] = {}
    where: dict[int, int] = {}
    apart: dict[tuple[int, int], int] = {}
    for k, pairs in enumerate(sources):
        for i, s in pairs:
            if i not in size:
                size[i], where[i] = s, k
            elif size[i] != s:
                apart.setdefault((i, s), k)
    return size, where, apart


def test_distinct_messages_across_sources_fast_path_and_fallback_agree_with_the_obvious_way():
    from array import array

    from mailbak.finder import Distinct

    sources = [
        [(1, 10), (2, 20), (3, 30), (5, 50)],
        [(1, 10), (2, 20), (3, 30), (5, 50)],  # unchanged: skipped
        [(1, 10), (2, 20), (4, 40), (5, 50)],  # 3 gone (expunged later), 4 appears: fast path
        [(1, 10), (2, 25), (4, 40), (6, 60)],  # 2 with another size: another message (fallback)
        [(6, 60), (1, 10), (7, 70)],  # unsorted: fallback
        [(1, 11), (2, 20), (8, 80)],  # 1 with another size next to an added ID
    ]
    d = Distinct()
    for k, pairs in enumerate(sources):
        d.add(k, array("Q", [i for i, _ in pairs]), array("Q", [s for _, s in pairs]))
    size, where, apart = naive_distinct(sources)
    assert (d.size, d.where, d.apart) == (size, where, apart)
    assert apart == {(2, 25): 3, (1, 11): 5}


def test_find_takes_a_same_id_with_another_size_in_an_older_snapshot_as_another_message(history):
    """A hostile store's record may give an ID another size in an older snapshot: that is
    another message (another file), listed apart with the snapshots holding it."""
    import lmdb

    repo, names, ids = history
    index = repo / names[0] / "data" / "accounts" / "bob" / "index.db"
    env = lmdb.open(str(index), subdir=False, lock=False, max_dbs=16)
    with env.begin(write=True) as txn:
        db = env.open_db(b"message", txn=txn)
        rec = unpack(txn.get(id_key(ids["bob"]), db=db))
        rec["size"] += 1
        txn.put(id_key(ids["bob"]), pack(rec), db=db)
    env.close()
    got = find_json(repo, "--account", "bob")
    assert [(o["id"], o["count"], o["first_seen"], o["last_seen"]) for o in got] == [(ids["bob"], 2, names[1], names[2]), (ids["bob"], 1, names[0], names[0])]
    assert got[1]["size"] == got[0]["size"] + 1


def test_find_in_a_live_store(shop: Path):
    (got,) = find_json(shop, "--subject", "café", "--account", "alice")
    assert (got["subject"], got["first_seen"], got["last_seen"], got["count"]) == (DECODED_SUBJECT, "live", "live", 1)
    assert got["snapshots"] == [{"snapshot": "live", "mailbox": "Inbox", "id": got["id"], "uid": 2, "flags": ["\\Flagged", "project-x"]}]


def test_table_escaping_fast_path_is_the_same_as_cell_by_cell():
    from mailbak.report import format_table
    from mailbak.text import escape_all, escape_path

    cells = ["plain", "é ü 会议", "back\\slash", "new\nline", "\x1b[31m", "\x9b", "ok/..", ""]
    assert escape_all(cells) == [escape_path(c) for c in cells]
    assert escape_all(["a", "b"]) == ["a", "b"]
    assert format_table([("h", "x"), ("a\nb", ""), ("", "")]) == "  h     x\n  a\\nb\n\n"

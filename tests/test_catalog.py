"""The catalog (what a backup, a snapshot or a live store holds): records, selections, heads,
and what a hostile store's owner can put in the way."""

from __future__ import annotations

import email.errors
import email.header
import errno
import os
import stat
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import lmdb
import pytest
from conftest import NOBODY, backup_into, backup_ok, chown_tree
from mailbak.catalog import Selection, Source, SourceKind, parse_date
from mailbak.errors import RepositoryBusy, UsageError
from mailbak.headers import decode_words
from mailbak.layout import id_key
from mailbak.repository import RepoLock
from mailbak.store import Store, pack
from mailbak.testpause import ENV_DIR, ENV_POINT

#: A head with a folded, RFC 2047 encoded subject and a repeated From (the first counts).
ENCODED = (
    b"From: Ren\xc3\xa9e <r@example.org>\r\nFrom: second@example.org\r\n"
    b"Subject: =?UTF-8?B?w5xiZXJzaWNodA==?=\r\n =?UTF-8?Q?_f=C3=BCr_2024?=\r\n"
    b"Date: Tue, 24 Nov 2026 10:00:00 +0100\r\nMessage-ID: <m1@example.org>\r\n\r\nTo: not a header\r\n"
)


def make(root: Path) -> dict[str, int]:
    """A store with one account: Inbox, Archive/2024 (and its parent), and messages with flags,
    keywords and times; returns their IDs by name."""
    ids = {}
    with Store.create(root, durable=False) as s:
        acc = s.add_account("alice", mailboxes=("Inbox", "Archive/2024"))
        inbox, arch = acc.mailbox_id("Inbox"), acc.mailbox_id("Archive/2024")
        ids["encoded"] = acc.deliver(inbox, ENCODED, received=1_700_000_000, flags=("\\Seen", "$Forwarded"), keywords=("work",))
        ids["lf"] = acc.deliver(inbox, b"Subject: plain\nTo: bob@example.org\n\nbody\n", received=1_700_000_100)
        ids["archived"] = acc.deliver(arch, b"Subject: old\r\n\r\n", received=1_600_000_000, flags=("\\Answered",))
        ids["gone"] = acc.deliver(inbox, b"Subject: gone\r\n\r\n", received=1_700_000_200)
        acc.expunge([ids["gone"]])
        s.add_account("bob")
    return ids


@pytest.fixture
def sources(tmp_path):
    """The store and a backup of it: every test runs against both."""
    store = tmp_path / "store"
    ids = make(store)
    backup_ok(store, tmp_path / "backup")
    return store, tmp_path / "backup", ids


@pytest.mark.parametrize("which", ["store", "backup"])
def test_records_mailboxes_and_selections(sources, which):
    store, backup, ids = sources
    path = store if which == "store" else backup
    with Source.open(path) as src:
        assert src.kind is (SourceKind.STORE if which == "store" else SourceKind.BACKUP)
        assert (src.status, src.label) == ("live", "live") if which == "store" else (src.status == "ok" and src.started is not None)
        assert src.accounts() == ("alice", "bob")
        with src.account("alice") as acc:
            assert sorted(mb.name for mb in acc.mailboxes.values()) == ["Archive", "Archive/2024", "Inbox"]
            by_id = {m.id: m for m in acc.messages}
            assert sorted(by_id) == sorted([ids["encoded"], ids["lf"], ids["archived"]]), "the expunged message is left out"
            m = by_id[ids["encoded"]]
            assert (m.flags, m.keywords, m.received, m.size, m.uid) == (("\\Seen", "$Forwarded"), ("work",), 1_700_000_000, len(ENCODED), 1)
            assert acc.problems == []
            sel = lambda **kw: sorted(m.id for m in acc.select(Selection(**kw)))  # noqa: E731
            assert sel(mailboxes=("Inbox",)) == sorted([ids["encoded"], ids["lf"]])
            assert sel(mailboxes=("Archive",)) == [], "Archive itself holds nothing"
            assert sel(mailboxes=("Archive",), recursive=True) == [ids["archived"]]
            assert sel(since=1_700_000_000) == sorted([ids["encoded"], ids["lf"]])
            assert sel(before=1_700_000_000) == [ids["archived"]]
            with pytest.raises(UsageError, match=r"no mailbox 'Nope' in account 'alice' \(mailboxes: 'Archive', 'Archive/2024', 'Inbox'\)"):
                acc.select(Selection(mailboxes=("Nope",)))
            assert acc.read_message(ids["encoded"]) == ENCODED
        with pytest.raises(UsageError, match=r"no account 'carol' .*\(accounts: 'alice', 'bob'\)"):
            src.account("carol")


@pytest.mark.parametrize("which", ["store", "backup"])
def test_heads_are_decoded_from_the_head_only(sources, which):
    store, backup, ids = sources
    with Source.open(store if which == "store" else backup) as src, src.account("alice") as acc:
        enc, lf, missing = acc.heads([ids["encoded"], ids["lf"], ids["gone"]])
        assert enc.from_ == "Renée <r@example.org>", "raw UTF-8, and the first From counts"
        assert enc.subject == "Übersicht für 2024", "encoded words across a folded line"
        assert (enc.date, enc.message_id, enc.to) == ("Tue, 24 Nov 2026 10:00:00 +0100", "<m1@example.org>", ""), "a To after the blank line is body"
        assert (lf.subject, lf.to) == ("plain", "bob@example.org"), "bare LF line ends"
        assert isinstance(missing, OSError) and missing.errno == errno.ENOENT
        assert missing.filename == f"accounts/alice/msg/{acc.message_rel(ids['gone']).split('/msg/')[1]}"


def test_a_malformed_encoded_word_is_shown_as_written(tmp_path):
    with Store.create(tmp_path / "s", durable=False) as s:
        acc = s.add_account("a")
        i = acc.deliver(acc.mailbox_id("Inbox"), b"Subject: =?UTF-8?B?not base64!?=\r\n\r\n")
    with Source.open(tmp_path / "s") as src, src.account("a") as acc:
        assert acc.head(i).subject == "=?UTF-8?B?not base64!?="


def test_what_the_owner_plants_is_never_followed_nor_waited_for(tmp_path):
    store = tmp_path / "store"
    ids = make(store)
    with Source.open(store) as src, src.account("alice") as acc:
        sym, fifo = acc.message_rel(ids["encoded"]), acc.message_rel(ids["lf"])
    data = store / "data"
    secret = tmp_path / "secret"
    secret.write_bytes(b"Subject: root's secret\r\n\r\n")
    os.unlink(data / sym)
    os.symlink(secret, data / sym)
    os.unlink(data / fifo)
    os.mkfifo(data / fifo)
    with Source.open(store) as src, src.account("alice") as acc:
        a, b, ok = acc.heads([ids["encoded"], ids["lf"], ids["archived"]])
        assert isinstance(a, OSError) and a.errno == errno.ELOOP and "symlink" in a.strerror
        assert isinstance(b, OSError) and "not a regular file" in b.strerror
        assert ok.subject == "old"
        for i in (ids["encoded"], ids["lf"]):
            with pytest.raises(OSError) as e:
                acc.read_message(i)
            assert e.value.filename == acc.message_rel(i)


def test_a_symlinked_message_directory_or_index_is_refused(tmp_path):
    store = tmp_path / "store"
    ids = make(store)
    acc_dir = store / "data" / "accounts" / "alice"
    elsewhere = tmp_path / "elsewhere"
    os.rename(acc_dir / "msg", elsewhere)
    os.symlink(elsewhere, acc_dir / "msg")
    with Source.open(store) as src, src.account("alice") as acc:
        (h,) = acc.heads([ids["encoded"]])
        assert isinstance(h, OSError), "the messages below a symlinked msg/ are never read"
        assert src.reporter.counts.errors == 1
    os.rename(acc_dir / "index.db", tmp_path / "index.db")
    os.symlink(tmp_path / "index.db", acc_dir / "index.db")
    with Source.open(store) as src, pytest.raises(UsageError, match="not a regular file"):
        src.account("alice")


def test_damaged_records_are_named_and_a_damaged_index_refused(tmp_path):
    store = tmp_path / "store"
    ids = make(store)
    env = lmdb.open(str(store / "data/accounts/alice/index.db"), subdir=False, max_dbs=8)
    with env.begin(write=True) as txn:
        msg = env.open_db(b"message", txn=txn)
        txn.put(id_key(900), b"\xc1 not msgpack", db=msg)
        txn.put(id_key(901), pack({"mailbox_id": 777, "uid": 1, "size": 1, "expunged": False, "received": 0}), db=msg)
        txn.put(id_key(902), pack({"mailbox_id": 1, "uid": 1, "size": -5, "expunged": False, "received": 0}), db=msg)
    env.close()
    with Source.open(store) as src, src.account("alice") as acc:
        assert len(acc.messages) == 3
        codes = sorted(code for code, _ in acc.problems)
        assert codes == ["bad_record", "bad_record", "unknown_mailbox"], acc.problems
    # Garbage over a page: the engine refuses the file before LMDB would map it.
    idx = store / "data/accounts/alice/index.db"
    with open(idx, "r+b") as f:
        f.seek(4096 * 2)
        f.write(os.urandom(4096))
    with Source.open(store) as src, pytest.raises(UsageError, match=r"index\.db: damaged"):
        src.account("alice")
    assert ids["encoded"] not in (900, 901, 902)


def test_what_is_not_a_source(tmp_path, repo):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="neither a backup"):
        Source.open(tmp_path / "empty")
    with pytest.raises(UsageError, match="is a repository; name one of its snapshots"):
        Source.open(repo)
    os.symlink(tmp_path / "empty", tmp_path / "link")
    with pytest.raises(UsageError, match="symlink"):
        Source.open(tmp_path / "link")
    with pytest.raises(UsageError, match="No such file"):
        Source.open(tmp_path / "nothing")


def test_a_snapshot_is_read_under_the_repositorys_shared_lock(tmp_path, repo):
    store = tmp_path / "store"
    make(store)
    name = backup_into(store, repo)["snapshot"]
    with Source.open(repo / name) as src:
        assert (src.kind, src.label) == (SourceKind.SNAPSHOT, name)
        with pytest.raises(RepositoryBusy):
            RepoLock(repo, exclusive=True, wait=False)  # a prune waits meanwhile
    RepoLock(repo, exclusive=True, wait=False).release()
    with Source.open(repo / name, lock=False):
        RepoLock(repo, exclusive=True, wait=False).release()


def test_a_live_store_of_another_user_is_read_as_that_user_and_left_unchanged(tmp_path):
    store = tmp_path / "store"
    ids = make(store)
    lock = store / "data/accounts/alice/index.db-lock"
    os.unlink(lock)
    chown_tree(store)
    with Source.open(store) as src, src.account("alice") as acc:
        assert acc.head(ids["encoded"]).message_id == "<m1@example.org>"
        assert src.owner is not None and src.owner.uid == NOBODY.pw_uid
    st = os.stat(lock)
    assert (st.st_uid, stat.S_ISREG(st.st_mode)) == (NOBODY.pw_uid, True), "LMDB's lock file is the owner's"


def test_parse_date():
    assert parse_date("2026-11-24") == int(datetime(2026, 11, 24).timestamp())
    assert parse_date("2026-11-24T13:05:00+01:00") == int(datetime.fromisoformat("2026-11-24T12:05:00+00:00").timestamp())
    with pytest.raises(ValueError, match="not a date"):
        parse_date("last tuesday")


def test_a_live_view_overtaken_by_writers_is_read_again(tmp_path, monkeypatch):
    """Two commits while the catalog holds its read transaction overwrite the meta page of its
    view before the engine reads it: the engine says stale, and a fresh transaction is read
    (it sees the messages delivered meanwhile, which the first view could not)."""
    store = tmp_path / "store"
    make(store)
    folder = tmp_path / "pause"
    folder.mkdir()
    monkeypatch.setenv(ENV_POINT, "catalog.live_view")
    monkeypatch.setenv(ENV_DIR, str(folder))
    result: dict = {}

    def read() -> None:
        with Source.open(store) as src, src.account("alice") as acc:
            result["count"] = len(acc.messages)

    t = threading.Thread(target=read)
    t.start()
    deadline = time.monotonic() + 60
    while not (folder / "catalog.live_view.reached").exists():
        assert time.monotonic() < deadline and t.is_alive(), "the read never reached its view"
        time.sleep(0.01)
    # Another process (LMDB: one environment per process) delivers twice: two commits of the
    # message table (and two of meta, for the IDs).
    code = f"""
from mailbak.store import Store
s = Store.open({str(store)!r}, durable=False)
a = s.account("alice")
for _ in range(2):
    a.deliver(a.mailbox_id("Inbox"), b"Subject: new\\r\\n\\r\\n")
s.close()
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    (folder / "catalog.live_view.go").touch()
    t.join(60)
    assert result["count"] == 3 + 2


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("=?UTF-8?B?w5xiZXJzaWNodA==?= =?UTF-8?Q?_f=C3=BCr_2024?=", "Übersicht für 2024"),  # the space between words goes
        ("plain =?iso-8859-1?q?caf=E9?= end", "plain café end"),
        ("=?UTF-8?B?w5w?= =?UTF-8?B?YmVy?=", "Über"),  # a character split across two words
        ("=?utf-8*en?q?hi_there?=", "hi there"),  # RFC 2231 language
        ("=?x-unknown?Q?abc?= =?UTF-8?B?w4Q=?=", "=?x-unknown?Q?abc?= Ä"),  # an unknown charset stays as written
        ("no words =? here ?=", "no words =? here ?="),
    ],
)
def test_encoded_words_decode_as_the_standard_library_would(raw, text):
    assert decode_words(raw) == text
    try:
        standard = str(email.header.make_header(email.header.decode_header(raw)))
    except (email.errors.HeaderParseError, LookupError):
        return  # the standard library gives up on it (an unknown charset, a language)
    assert standard == text, "where the standard library decodes it, it agrees"


def test_heads_read_a_batch_ahead_are_the_heads_read_at_once(tmp_path):
    """iter_heads reads batch k+1 on another thread while k is decoded: the same heads, in the
    same order, errors in place (a listing of fewer than 10,000 messages never takes that path,
    so it is forced here with batches of two)."""
    store = tmp_path / "store"
    ids = make(store)
    with Source.open(store) as src, src.account("alice") as acc:
        wanted = [ids["lf"], ids["gone"], ids["encoded"], ids["archived"], ids["lf"]]
        ahead = list(acc.iter_heads(wanted, jobs=2, batch=2))
        at_once = acc.heads(wanted)
    assert [type(h) for h in ahead] == [type(h) for h in at_once]
    assert [h for h in ahead if not isinstance(h, OSError)] == [h for h in at_once if not isinstance(h, OSError)]
    assert isinstance(ahead[1], OSError) and ahead[1].filename == at_once[1].filename
    assert ahead[2].subject == "Übersicht für 2024" and ahead[4].subject == "plain"


def test_a_live_index_swapped_while_lmdb_opens_it_is_not_read(tmp_path, monkeypatch):
    """The owner replaces alice's index.db (by rename) after the catalog held the file and before
    LMDB opens it by path: LMDB would map the other file, and a transaction on it pins nothing
    of the file held. The catalog refuses to read rather than read a file no reader protects."""
    store = tmp_path / "store"
    make(store)
    folder = tmp_path / "pause"
    folder.mkdir()
    monkeypatch.setenv(ENV_POINT, "lock_file_checked")
    monkeypatch.setenv(ENV_DIR, str(folder))
    result: dict = {}

    def read() -> None:
        try:
            with Source.open(store) as src, src.account("alice"):
                result["read"] = True
        except UsageError as e:
            result["error"] = str(e)

    t = threading.Thread(target=read)
    t.start()
    deadline = time.monotonic() + 60
    while not (folder / "lock_file_checked.reached").exists():
        assert time.monotonic() < deadline and t.is_alive(), "the read never reached LMDB's open"
        time.sleep(0.01)
    accounts = store / "data/accounts"
    os.rename(accounts / "alice/index.db", tmp_path / "alice-index.db")
    os.link(accounts / "bob/index.db", accounts / "alice/index.db")
    (folder / "lock_file_checked.go").touch()
    t.join(60)
    assert "read" not in result
    assert "replaced while it was being opened" in result["error"]

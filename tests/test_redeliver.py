"""mailbak restore PATH STORE --account A: part of an account delivered anew into a live store,
additive only, idempotent, as the store's owner (python/mailbak/redeliver.py).

The source stores are made by the writer library (flags, keywords, nested and non-ASCII mailbox
names), backed up by `mailbak backup`; the target is a live store, usually the source itself
after a mailbox was deleted (the everyday case)."""

from __future__ import annotations

import calendar
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lmdb
import msgpack
import pytest
from conftest import NOBODY, backup_into, backup_ok, chown_tree, dump_env, inode_listing, json_lines, make_store, manifest_of, run_cli
from live_writer import read_log
from mailbak.layout import NEXT_ID_KEY, id_key, message_rel
from mailbak.redeliver import PREFIX_TIME_FORMAT
from mailbak.store import Account, Store, mailbox_record, pack
from pausing import PausePoint

#: alice's mailboxes in the source, with how many messages each holds.
ALICE = {"Inbox": 6, "Projects": 5, "Projects/2024": 4, "Émigré ☃": 3, "Sent": 2, "Empty": 0}
FLAGS = [(), ("\\Seen",), ("\\Seen", "\\Flagged"), ("\\Answered", "$Forwarded"), ("\\Draft",), ("$Junk",)]
KEYWORDS = [(), ("project-x",), ("Later", "todo")]
WRITER = Path(__file__).with_name("live_writer.py")


def body(account: str, mailbox: str, i: int) -> bytes:
    return f"From: someone@example.org\r\nTo: {account}@example.org\r\nSubject: {mailbox} #{i}\r\nMessage-ID: <{account}.{i}.{len(mailbox)}@x>\r\n\r\n{'line of text ' * (i * 7 + 3)}\r\n".encode()


def build_source(root: Path) -> Path:
    """alice (the mailboxes of ALICE, flags, keywords, received times) and bob (Inbox, Archive)."""
    with Store.create(root, durable=False) as s:
        a = s.add_account("alice", mailboxes=())
        n = 0
        for name, count in ALICE.items():
            mid = a.ensure_mailbox(name)
            for i in range(count):
                a.deliver(mid, body("alice", name, i), received=1_700_000_000 + n * 3600, flags=FLAGS[n % len(FLAGS)], keywords=KEYWORDS[n % len(KEYWORDS)])
                n += 1
        b = s.add_account("bob", mailboxes=("Inbox", "Archive"))
        for i in range(4):
            b.deliver(b.mailbox_id("Inbox"), body("bob", "Inbox", i), received=1_700_100_000 + i, flags=("\\Seen",))
    return root


def state(store: Path) -> dict[str, tuple[dict, dict]]:
    """Every account's mailbox and message records (expunged ones included), read without
    writing anything (no lock file): the store may be nobody's."""
    out = {}
    for acc_dir in sorted((store / "data" / "accounts").iterdir()):
        tables = dump_env(acc_dir / "index.db")
        mailboxes = {int.from_bytes(k, "big"): msgpack.unpackb(v) for k, v in tables.get(b"mailbox", [])}
        messages = {int.from_bytes(k, "big"): msgpack.unpackb(v) for k, v in tables.get(b"message", [])}
        out[acc_dir.name] = (mailboxes, messages)
    return out


def source_messages(store: Path, account: str) -> dict[int, tuple[str, dict, bytes]]:
    """Live messages of a store's account: ID -> (mailbox name, record, file bytes)."""
    mailboxes, messages = state(store)[account]
    msg_dir = store / "data" / "accounts" / account / "msg"
    return {i: (mailboxes[r["mailbox_id"]]["name"], r, (msg_dir / message_rel(i)).read_bytes()) for i, r in messages.items() if not r["expunged"]}


def restore(*args: str | os.PathLike, **kw) -> subprocess.CompletedProcess:
    return run_cli("restore", *args, **kw)


def summary_of(p: subprocess.CompletedProcess) -> dict:
    lines = json_lines(p.stdout)
    assert lines and lines[-1]["message_type"] == "summary", p.stdout + p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    return lines[-1]


def snapshot_prefix(backup: Path) -> str:
    """The default prefix for a backup: its start in local time."""
    started = calendar.timegm(time.strptime(manifest_of(backup)["started"], "%Y-%m-%dT%H:%M:%SZ"))
    return "Restored/" + time.strftime(PREFIX_TIME_FORMAT, time.localtime(started))


def unchanged_except(before: dict, after: dict, account: str) -> None:
    """Every file of ``before`` is still there, the same inode, size and mtime, except the
    target account's index (its records are compared by unchanged_records)."""
    index = f"data/accounts/{account}/index.db"
    for rel, facts in before.items():
        if rel != index:
            assert after.get(rel) == facts, rel


def unchanged_records(before: dict, after: dict, *, into_existing: bool = False) -> tuple[dict, dict]:
    """Every record of ``before`` is unchanged in ``after`` (``into_existing``: but the next UID
    of mailboxes restored into, which only grows); returns each account's new mailboxes and
    messages."""
    new = {}
    for acc, (mbs, msgs) in before.items():
        mbs2, msgs2 = after[acc]
        for i, r in mbs.items():
            if into_existing:
                assert mbs2[i]["uidnext"] >= r["uidnext"]
                assert {**mbs2[i], "uidnext": 0} == {**r, "uidnext": 0}, (acc, i)
            else:
                assert mbs2[i] == r, (acc, i)
        for i, r in msgs.items():
            assert msgs2[i] == r, (acc, i)
        new[acc] = ({i: r for i, r in mbs2.items() if i not in mbs}, {i: r for i, r in msgs2.items() if i not in msgs})
    return new


@pytest.fixture
def live(tmp_path: Path) -> tuple[Path, Path, dict]:
    """(live store, its backup, alice's messages at backup time); then alice deleted Projects
    and Projects/2024 in the live store."""
    s = build_source(tmp_path / "store")
    b = tmp_path / "backup"
    backup_ok(s, b)
    src = source_messages(s, "alice")
    with Store.open(s, durable=False) as st:
        a = st.account("alice")
        a.expunge_mailbox(a.mailbox_id("Projects/2024"))
        a.expunge_mailbox(a.mailbox_id("Projects"))
    return s, b, src


def check_restored(new_msgs: dict, new_mbs: dict, old: dict, src: dict, prefix: str, names: set[str], store: Path, account: str) -> None:
    """The new messages are exactly the source's messages of ``names``, each once, byte-equal,
    with their flags, keywords and received times, in PREFIX/<name>, with new IDs and UIDs."""
    mbs = {**old, **new_mbs}
    want = {i: v for i, v in src.items() if v[0] in names}
    by_origin = {}
    for i, r in new_msgs.items():
        key = json.loads(r["origin"])
        assert key[1] == "alice"
        assert key[2] not in by_origin, "delivered twice"
        by_origin[key[2]] = (i, r)
    assert sorted(by_origin) == sorted(want)
    for src_id, (name, srec, data) in want.items():
        i, r = by_origin[src_id]
        assert mbs[r["mailbox_id"]]["name"] == (f"{prefix}/{name}" if prefix else name)
        assert (store / "data" / "accounts" / account / "msg" / message_rel(i)).read_bytes() == data
        assert (r["size"], r["received"], r["flags"], r.get("keywords", [])) == (len(data), srec["received"], srec["flags"], srec.get("keywords", []))
    for mid in {r["mailbox_id"] for r in new_msgs.values()}:
        uids = sorted(r["uid"] for r in new_msgs.values() if r["mailbox_id"] == mid)
        if mid in new_mbs:
            assert uids == list(range(1, len(uids) + 1))
        else:
            assert min(uids) >= old[mid]["uidnext"]


# One folder, twice, killed midway -------------------------------------------------------------


def test_one_folder_into_the_live_store(live):
    store, backup, src = live
    before, files = state(store), inode_listing(store)
    p = restore("--json", backup, store, "--account", "alice", "--mailbox", "Projects")
    assert p.returncode == 0, p.stdout + p.stderr
    facts = summary_of(p)
    prefix = snapshot_prefix(backup)
    assert (facts["restored"], facts["already_there"], facts["not_restored"]) == (5, 0, 0)
    assert facts["prefix"] == prefix and facts["to_account"] == "alice"
    assert facts["mailboxes_created"] == ["Restored", prefix, f"{prefix}/Projects"]
    assert facts["bytes"] == sum(len(d) for n, _, d in src.values() if n == "Projects")
    after = state(store)
    new = unchanged_records(before, after)
    assert new["bob"] == ({}, {})
    new_mbs, new_msgs = new["alice"]
    assert sorted(r["name"] for r in new_mbs.values()) == ["Restored", prefix, f"{prefix}/Projects"]
    check_restored(new_msgs, new_mbs, before["alice"][0], src, prefix, {"Projects"}, store, "alice")
    assert max(new_msgs) > max(before["alice"][1]), "new IDs"
    unchanged_except(files, inode_listing(store), "alice")
    v = run_cli("verify", store)
    assert v.returncode == 0, v.stdout + v.stderr


def test_recursive_into_the_original_names_and_twice_adds_nothing(live):
    store, backup, src = live
    before = state(store)
    args = ("--json", backup, store, "--account", "alice", "--mailbox", "Projects", "--recursive", "--into", "")
    first = summary_of(restore(*args))
    assert (first["status"], first["restored"], first["prefix"]) == ("ok", 9, "")
    assert sorted(first["mailboxes_created"]) == ["Projects", "Projects/2024"]
    middle = state(store)
    new_mbs, new_msgs = unchanged_records(before, middle)["alice"]
    check_restored(new_msgs, new_mbs, before["alice"][0], src, "", {"Projects", "Projects/2024"}, store, "alice")
    files = inode_listing(store)
    p = restore(*args)
    assert p.returncode == 0, p.stderr
    second = summary_of(p)
    assert (second["restored"], second["already_there"], second["mailboxes_created"], second["bytes"]) == (0, 9, [], 0)
    assert state(store) == middle
    unchanged_except(files, inode_listing(store), "alice")


def test_killed_midway_then_run_again(live, tmp_path):
    """kill -9 after the 4th of 9 messages: 4 are there; the same restore again delivers the
    other 5 and nothing twice; verify stays clean."""
    store, backup, src = live
    before = state(store)
    point = PausePoint(tmp_path / "pause", "redeliver.delivered", after=4)
    proc = point.popen("restore", backup, store, "--account", "alice", "--mailbox", "Projects", "-r")
    try:
        point.wait_reached(proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    _, killed = unchanged_records(before, state(store))["alice"]
    assert len(killed) == 4
    p = restore("--json", backup, store, "--account", "alice", "--mailbox", "Projects", "-r")
    assert p.returncode == 0, p.stderr
    facts = summary_of(p)
    assert (facts["restored"], facts["already_there"]) == (5, 4)
    new_mbs, new_msgs = unchanged_records(before, state(store))["alice"]
    check_restored(new_msgs, new_mbs, before["alice"][0], src, snapshot_prefix(backup), {"Projects", "Projects/2024"}, store, "alice")
    v = run_cli("verify", store)
    assert v.returncode == 0, v.stdout + v.stderr


# Target accounts ------------------------------------------------------------------------------


def test_into_another_account(live):
    store, backup, src = live
    before, files = state(store), inode_listing(store)
    p = restore("--json", backup, store, "--account", "alice", "--to-account", "bob", "--into", "From alice")
    assert p.returncode == 0, p.stderr
    facts = summary_of(p)
    assert (facts["restored"], facts["to_account"]) == (sum(ALICE.values()), "bob")
    new = unchanged_records(before, state(store))
    assert new["alice"] == ({}, {})
    new_mbs, new_msgs = new["bob"]
    check_restored(new_msgs, new_mbs, before["bob"][0], src, "From alice", set(ALICE), store, "bob")
    # The empty mailbox comes back as an empty mailbox.
    assert "From alice/Empty" in {r["name"] for r in new_mbs.values()}
    unchanged_except(files, inode_listing(store), "bob")


def test_missing_account_is_bad_usage_and_writes_nothing(live):
    store, backup, _ = live
    files = inode_listing(store)
    p = restore(backup, store, "--account", "alice", "--to-account", "carol")
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [f"mailbak: error: account carol is not in {store} (accounts: alice, bob); add it to the server first, or pass --create-account"]
    assert inode_listing(store) == files


def test_create_account(live):
    store, backup, src = live
    p = restore(backup, store, "--account", "alice", "--to-account", "carol", "--create-account", "--mailbox", "Inbox")
    assert p.returncode == 0, p.stderr
    assert f'added [accounts."carol"] to {store}/config/mailstore.toml' in p.stderr
    with Store.open(store, durable=False) as s:
        assert "carol" in s.account_names()
    new_mbs, new_msgs = state(store)["carol"]
    check_restored(new_msgs, new_mbs, {}, src, snapshot_prefix(backup), {"Inbox"}, store, "carol")
    v = run_cli("verify", store)
    assert v.returncode == 0, v.stdout + v.stderr


def test_unknown_mailbox_lists_what_exists(live):
    store, backup, _ = live
    files = inode_listing(store)
    p = restore(backup, store, "--account", "alice", "--mailbox", "Nope")
    assert p.returncode == 2
    (line,) = p.stderr.strip().splitlines()
    assert line.startswith("mailbak: error:") and "Nope" in line and "Projects/2024" in line and "Inbox" in line
    assert inode_listing(store) == files


@pytest.mark.parametrize(
    "args, says",
    [
        (("--since", "yesterday-ish"), "--since"),
        (("--mailbox", "Inbox", "--copy"), "--copy"),
        (("--recursive",), "--recursive needs --mailbox"),
        (("--into", "a//b"), "--into"),
        (("--to-account", ".hidden"), "account name"),
    ],
)
def test_bad_options_are_exit_2(live, args, says):
    store, backup, _ = live
    files = inode_listing(store)
    p = restore(backup, store, "--account", "alice", *args)
    assert p.returncode == 2, p.stderr
    (line,) = p.stderr.strip().splitlines()
    assert line.startswith("mailbak: error:") and says in line
    assert inode_listing(store) == files


def test_options_of_account_restore_need_account(live, tmp_path):
    _, backup, _ = live
    p = restore(backup, tmp_path / "new", "--dry-run")
    assert p.returncode == 2
    assert "--dry-run: only with --account" in p.stderr
    assert not (tmp_path / "new").exists()


def test_store_must_be_a_live_store_and_not_path(live, tmp_path):
    store, backup, _ = live
    same = restore(store, store, "--account", "alice")
    assert same.returncode == 2 and "are the same store" in same.stderr
    backup2 = tmp_path / "b2"
    backup_ok(store, backup2)
    into_backup = restore(backup, backup2, "--account", "alice")
    assert into_backup.returncode == 2 and "a backup, not a live store" in into_backup.stderr


def test_from_a_live_store_into_another(live, tmp_path):
    store, _, _ = live
    other = build_source(tmp_path / "other")
    src = source_messages(store, "alice")
    before = state(other)
    p = restore("--json", store, other, "--account", "alice", "--mailbox", "Inbox", "--into", "Copied")
    assert p.returncode == 0, p.stderr
    new_mbs, new_msgs = unchanged_records(before, state(other))["alice"]
    check_restored(new_msgs, new_mbs, before["alice"][0], src, "Copied", {"Inbox"}, other, "alice")
    again = summary_of(restore("--json", store, other, "--account", "alice", "--mailbox", "Inbox", "--into", "Copied"))
    assert (again["restored"], again["already_there"]) == (0, 6)


# Bad sources ----------------------------------------------------------------------------------


def add_raw_mailbox(acc: Account, name: str) -> int:
    """A mailbox record the writer would refuse (a hostile owner writes the index directly)."""
    with acc.env.begin(write=True) as txn:
        first = int.from_bytes(txn.get(NEXT_ID_KEY, db=acc.db["meta"]), "big")
        txn.put(NEXT_ID_KEY, (first + 1).to_bytes(8, "big"), db=acc.db["meta"])
        txn.put(id_key(first), pack(mailbox_record(name=name, uidvalidity=1)), db=acc.db["mailbox"])
    return first


def test_hostile_source_mailbox_names(tmp_path):
    src_store = build_source(tmp_path / "src")
    hostile = ["..", "../../etc", "x\nmailbak: forged", "/abs"]
    with Store.open(src_store, durable=False) as s:
        a = s.account("alice")
        ids = {}
        for name in hostile:
            mid = add_raw_mailbox(a, name)
            ids[name] = a.deliver(mid, body("alice", "hostile", len(ids)))
    backup = tmp_path / "b"
    backup_ok(src_store, backup)
    target = build_source(tmp_path / "target")
    before, files = state(target), inode_listing(target)
    p = restore(backup, target, "--account", "alice", "--into", "")
    assert p.returncode == 1, p.stdout + p.stderr
    assert not any(line.startswith("mailbak: forged") for line in p.stderr.splitlines() + p.stdout.splitlines())
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == len(hostile), p.stderr
    assert any("'x\\nmailbak: forged'" in e for e in errors) and any("'../../etc'" in e for e in errors)
    new_mbs, new_msgs = unchanged_records(before, state(target), into_existing=True)["alice"]
    # Everything else came back (in the original names, which the target has: added to them).
    assert len(new_msgs) == sum(ALICE.values())
    assert all(r["name"] not in hostile for r in new_mbs.values())
    unchanged_except(files, inode_listing(target), "alice")
    assert sorted(os.listdir(tmp_path)) == ["b", "src", "target"]


def test_missing_source_file_is_an_error_naming_it(live):
    store, backup, src = live
    victim = min(i for i, v in src.items() if v[0] == "Projects")
    path = backup / "data" / "accounts" / "alice" / "msg" / message_rel(victim)
    path.unlink()
    p = restore("--json", backup, store, "--account", "alice", "--mailbox", "Projects")
    assert p.returncode == 1
    errors = [e for e in json_lines(p.stdout) if e["message_type"] == "error"]
    assert len(errors) == 1
    assert f"message {victim}" in errors[0]["cause"] and "'Projects'" in errors[0]["cause"] and "alice" in errors[0]["cause"]
    assert errors[0]["path"].endswith(f"alice/msg/{message_rel(victim)}")
    facts = summary_of(p)
    assert (facts["status"], facts["restored"], facts["not_restored"]) == ("failed", 4, 1)


def test_dry_run_writes_nothing(live):
    store, backup, src = live
    files, records = inode_listing(store), state(store)
    p = restore("--json", "--verbose", backup, store, "--account", "alice", "--to-account", "dora", "--create-account", "--dry-run")
    assert p.returncode == 0, p.stderr
    facts = summary_of(p)
    assert (facts["dry_run"], facts["restored"], facts["account_created"]) == (True, sum(ALICE.values()), True)
    assert facts["bytes"] == sum(len(d) for _, _, d in src.values())
    assert len([e for e in json_lines(p.stdout) if e.get("code") == "would_restore"]) == sum(ALICE.values())
    plain = restore(backup, store, "--account", "alice", "--mailbox", "Projects", "--dry-run")
    assert plain.returncode == 0 and "Projects" in plain.stdout and "dry run" in plain.stdout
    assert inode_listing(store) == files and state(store) == records


# As root, against a store owned by nobody -----------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_as_root_everything_new_is_the_owners(live):
    store, backup, _ = live
    chown_tree(store)
    before = inode_listing(store)
    p = restore(backup, store, "--account", "alice", "--mailbox", "Projects", "-r", "--to-account", "carol", "--create-account")
    assert p.returncode == 0, p.stderr
    for dirpath, dirnames, filenames in os.walk(store):
        for n in dirnames + filenames:
            st = os.lstat(Path(dirpath) / n)
            assert (st.st_uid, st.st_gid) == (NOBODY.pw_uid, NOBODY.pw_gid), Path(dirpath) / n
    assert len(inode_listing(store)) > len(before)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
@pytest.mark.parametrize("where", ["tmp", "msg"])
def test_as_root_a_planted_symlink_leads_nowhere(live, tmp_path, where):
    """The owner replaces data/tmp, or the directory the next message goes into, with a symlink
    to a directory of root's: acting as the owner, the restore cannot write there."""
    store, backup, _ = live
    chown_tree(store)
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o755)
    if where == "tmp":
        link = store / "data" / "tmp"
    else:
        next_id = int.from_bytes(dict(dump_env(store / "data" / "accounts" / "alice" / "index.db")[b"meta"])[NEXT_ID_KEY], "big")
        # The mailboxes come first (three IDs), then the first message.
        link = store / "data" / "accounts" / "alice" / "msg" / message_rel(next_id + 3).split("/")[0]
        assert link.is_dir()
    link.rename(link.with_name(link.name + ".moved"))
    link.symlink_to(outside)
    os.lchown(link, NOBODY.pw_uid, NOBODY.pw_gid)
    p = restore(backup, store, "--account", "alice", "--mailbox", "Projects")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "Permission denied" in p.stderr.splitlines()[-1]
    assert os.listdir(outside) == []
    for dirpath, dirnames, filenames in os.walk(store):
        for n in dirnames + filenames:
            assert os.lstat(Path(dirpath) / n).st_uid == NOBODY.pw_uid, Path(dirpath) / n


# Under a live writer --------------------------------------------------------------------------


def test_restore_while_a_writer_delivers_and_expunges(tmp_path):
    src_store = build_source(tmp_path / "src")
    backup = tmp_path / "b"
    backup_ok(src_store, backup)
    src = source_messages(src_store, "alice")
    target = make_store(tmp_path / "target", messages=600, accounts=2, seed=3)
    with Store.open(target, durable=False) as s:
        account = s.account_names()[0]
    before = state(target)
    log = tmp_path / "writer.log"
    w = subprocess.Popen([sys.executable, str(WRITER), str(target), str(log), "--seed", "5"])
    try:
        deadline = time.monotonic() + 30
        while not (log.exists() and log.read_text().count("\n") >= 20):
            assert time.monotonic() < deadline and w.poll() is None, "writer did not start"
            time.sleep(0.02)
        t0 = time.time()
        p = restore("--json", backup, target, "--account", "alice", "--to-account", account)
        t1 = time.time()
        assert p.returncode == 0, p.stdout + p.stderr
    finally:
        w.terminate()
        assert w.wait(timeout=30) == 0
    ops, _ = read_log(log)
    during = [op for op in ops if t0 < op["start"] and op["end"] < t1 and op.get("account") == account]
    assert {"deliver", "expunge"} <= {op["op"] for op in during}, "the writer worked in the account while the restore ran"
    expunged = {i for op in ops if op["op"] == "expunge" for i in op["ids"]}
    delivered = {op["id"] for op in ops if op["op"] == "deliver" and op["account"] == account}
    after = state(target)
    mbs, msgs = before[account]
    mbs2, msgs2 = after[account]
    # Nothing else changed: what the writer did not expunge is as it was (its Inbox's uidnext moved).
    for i, r in msgs.items():
        if not (i in expunged and msgs2[i]["expunged"]):
            assert msgs2[i] == r, i
    for i, r in mbs.items():
        assert {**mbs2[i], "uidnext": 0} == {**r, "uidnext": 0}
    restored = {i: r for i, r in msgs2.items() if "origin" in r}
    assert not set(restored) & (set(msgs) | delivered)
    new_mbs = {i: r for i, r in mbs2.items() if i not in mbs}
    check_restored(restored, new_mbs, mbs, src, summary_of(p)["prefix"], set(ALICE), target, account)
    v = run_cli("verify", target)
    assert v.returncode == 0, v.stdout + v.stderr


def test_since_and_before_select_by_received_time(live):
    store, backup, src = live
    since, before_ = 1_700_000_000 + 3 * 3600, 1_700_000_000 + 11 * 3600
    iso = lambda t: time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(t))  # noqa: E731
    records = state(store)
    p = restore("--json", backup, store, "--account", "alice", "--since", iso(since), "--before", iso(before_), "--into", "Dated")
    assert p.returncode == 0, p.stderr
    new_mbs, new_msgs = unchanged_records(records, state(store))["alice"]
    want = {i for i, (_, r, _) in src.items() if since <= r["received"] < before_}
    assert sorted(json.loads(r["origin"])[2] for r in new_msgs.values()) == sorted(want) and len(want) == 8
    # With dates, a mailbox without messages in them is not created (nor the empty one).
    assert "Dated/Empty" not in {r["name"] for r in new_mbs.values()}


def test_from_a_snapshot_of_a_repository(live, repo):
    store, _, src = live
    # The snapshot is of the store after Projects was deleted: Inbox is restored from it.
    summary = backup_into(store, repo)
    snapshot = repo / summary["snapshot"]
    assert snapshot.is_dir()
    p = restore("--json", snapshot, store, "--account", "alice", "--mailbox", "Inbox")
    assert p.returncode == 0, p.stderr
    facts = summary_of(p)
    started = calendar.timegm(time.strptime(manifest_of(snapshot)["started"], "%Y-%m-%dT%H:%M:%SZ"))
    assert facts["prefix"] == "Restored/" + time.strftime(PREFIX_TIME_FORMAT, time.localtime(started))
    assert facts["restored"] == ALICE["Inbox"]


def test_undecodable_source_records(live):
    """A record the catalog cannot decode: an error when the whole account is restored (its
    message is lost to the restore), a warning when only named mailboxes are."""
    store, backup, _ = live
    env = lmdb.open(str(backup / "data" / "accounts" / "alice" / "index.db"), subdir=False, lock=False, max_dbs=16)
    with env.begin(write=True) as txn:
        txn.put(id_key(99_999), b"\xc1 not msgpack", db=env.open_db(b"message", txn=txn))
    env.close()
    named = restore("--json", backup, store, "--account", "alice", "--mailbox", "Sent", "--into", "A")
    assert named.returncode == 0, named.stdout + named.stderr
    assert [e["code"] for e in json_lines(named.stdout) if e["message_type"] == "warning"] == ["bad_record"]
    whole = restore("--json", backup, store, "--account", "alice", "--into", "B")
    assert whole.returncode == 1
    (err,) = [e for e in json_lines(whole.stdout) if e["message_type"] == "error"]
    assert err["code"] == "bad_record" and "not restored" in err["cause"] and err["path"].endswith("alice/index.db")
    facts = summary_of(whole)
    # Sent came back in the first run (into A): already there, whatever the prefix.
    assert (facts["restored"], facts["already_there"]) == (sum(ALICE.values()) - ALICE["Sent"], ALICE["Sent"])


def test_interrupted_midway_says_what_stays(live, tmp_path):
    store, backup, _ = live
    before = state(store)
    point = PausePoint(tmp_path / "pause", "redeliver.delivered", after=2)
    proc = point.popen("restore", backup, store, "--account", "alice", "--mailbox", "Projects")
    point.wait_reached(proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert err.strip().splitlines()[-1].endswith("2 messages were restored so far; run the same restore again to finish it (it skips them)")
    assert len(unchanged_records(before, state(store))["alice"][1]) == 2


def test_target_mailbox_removed_during_the_run(live, tmp_path):
    """A user deletes the restore's mailbox while it runs: each message still to go is an error
    naming it, and the mailbox is not made again behind the user's back."""
    store, backup, _ = live
    point = PausePoint(tmp_path / "pause", "redeliver.delivered", after=2)
    proc = point.popen("restore", "--json", backup, store, "--account", "alice", "--mailbox", "Projects", "--into", "Back")
    point.wait_reached(proc)
    with Store.open(store, durable=False) as s:
        a = s.account("alice")
        a.expunge_mailbox(a.mailbox_id("Back/Projects"))
    point.go()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err
    lines = json_lines(out)
    assert [e["code"] for e in lines if e["message_type"] == "error"] == ["mailbox_gone"] * 3
    assert (lines[-1]["restored"], lines[-1]["not_restored"]) == (2, 3)
    assert "Back/Projects" not in {r["name"] for r in state(store)["alice"][0].values() if not r["expunged"]}

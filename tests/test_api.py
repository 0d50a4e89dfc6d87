"""The Python API (docs/API.md), called in-process on real stores."""

from __future__ import annotations

import dataclasses
import json
import os
import time

import mailbak
import pytest
from conftest import json_lines, manifest_of, remove_a_message_file, run_cli
from mailbak.archiver import INIT_HINT


def test_backup_returns_the_summary_facts_and_events(store, tmp_path):
    events: list[dict] = []
    r = mailbak.backup(store, tmp_path / "b", jobs=2, on_event=events.append)
    assert isinstance(r, mailbak.BackupResult) and dataclasses.is_dataclass(r)
    assert r.ok and r.status == "ok" and r.errors == 0
    assert r.dest == tmp_path / "b"
    man = manifest_of(tmp_path / "b")
    # The manifest adds its own kind and version; "finished" is computed again for the summary.
    same = lambda d: {k: v for k, v in d.items() if k not in ("finished", "kind", "manifest_version")}  # noqa: E731
    assert same(r.summary) == same(man)
    assert r.accounts == man["accounts"] and r.queue == man["queue"] and r.databases == man["databases"]
    assert r.store == man["store"] and r.warnings == man["warnings"]
    # The same kinds of objects, in the same shape, as --json prints.
    assert events[-1] == {"message_type": "summary", **r.summary}
    types = {e["message_type"] for e in events}
    assert types == {"status", "summary"}
    cli = json_lines(run_cli("backup", "--json", store, tmp_path / "b2").stdout)
    assert {e["message_type"] for e in cli} == types
    assert {e["phase"] for e in events if e["message_type"] == "status"} == {e["phase"] for e in cli if e["message_type"] == "status"}
    assert set(cli[-1]) == set(events[-1])


def test_verify_and_restore_results(store, tmp_path):
    mailbak.backup(store, tmp_path / "b")
    v = mailbak.verify(tmp_path / "b")
    assert isinstance(v, mailbak.VerifyResult)
    assert v.ok and v.status == "clean" and v.kind == "backup" and v.manifest == "ok" and v.checked > 0
    r = mailbak.restore(tmp_path / "b", tmp_path / "restored", copy=True)
    assert isinstance(r, mailbak.RestoreResult) and r.ok
    assert r.copied > 0 and r.linked == 0
    assert isinstance(r.verify, mailbak.VerifyResult) and r.verify.kind == "store" and r.verify.checked == v.checked

    gone = remove_a_message_file(tmp_path / "b")
    events: list[dict] = []
    v = mailbak.verify(tmp_path / "b", on_event=events.append)
    assert not v.ok and v.status == "problems" and v.missing == 1 and v.errors >= 1
    errors = [e for e in events if e["message_type"] == "error"]
    assert errors and errors[0]["path"] in gone and "has no file" in errors[0]["cause"]


def test_bad_input_raises_usage_error_before_writing(store, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").touch()
    events: list[dict] = []
    with pytest.raises(mailbak.UsageError, match="destination is not empty"):
        mailbak.backup(store, tmp_path / "full", on_event=events.append)
    assert events == [{"message_type": "error", "code": "usage", "cause": f"{tmp_path / 'full'}: destination is not empty (back up into a new or empty directory){INIT_HINT}"}]
    assert os.listdir(tmp_path / "full") == ["x"]
    with pytest.raises(mailbak.UsageError):
        mailbak.backup(tmp_path / "no-store", tmp_path / "b")
    with pytest.raises(mailbak.UsageError, match="jobs"):
        mailbak.backup(store, tmp_path / "b", jobs=0)
    with pytest.raises(mailbak.UsageError, match="not a directory"):
        mailbak.verify(tmp_path / "nothing")
    with pytest.raises(mailbak.UsageError):
        mailbak.restore(tmp_path / "nothing", tmp_path / "r")
    assert not (tmp_path / "b").exists() and not (tmp_path / "r").exists()


def test_an_exception_in_on_event_stops_the_run(store, tmp_path):
    class Stop(Exception):
        pass

    def on_event(e):
        if e["message_type"] == "status" and e["phase"] == "messages":
            raise Stop

    with pytest.raises(Stop):
        mailbak.backup(store, tmp_path / "b", on_event=on_event)
    assert json.loads((tmp_path / "b" / "mailbak.json").read_text())["status"] == "running", "an interrupted backup stays marked running"
    assert run_cli("verify", tmp_path / "b").returncode == 1


def test_api_names_survive_importing_the_phase_modules():
    import mailbak.archiver  # noqa: F401
    import mailbak.restorer  # noqa: F401
    import mailbak.verifier  # noqa: F401
    from mailbak.archiver import Backup

    assert callable(mailbak.backup) and mailbak.backup.__module__ == "mailbak.api"
    assert mailbak.verify.__module__ == "mailbak.api" and mailbak.restore.__module__ == "mailbak.api"
    assert Backup.__module__ == "mailbak.archiver"
    assert set(mailbak.__all__) >= {"backup", "verify", "restore", "BackupResult", "VerifyResult", "RestoreResult", "UsageError", "DestinationFull"}


def test_repository_functions(store, shm_dir):
    repo = shm_dir / "repo"
    assert mailbak.init(repo) == repo
    with pytest.raises(mailbak.UsageError):
        mailbak.init(repo)
    events: list[dict] = []
    first = mailbak.backup(store, repo, on_event=events.append)
    assert first.ok and first.snapshot and first.dest == repo / first.snapshot and first.reference is None
    assert first.repository == str(repo) and first.transfer["messages"] > 0
    assert events[-1]["message_type"] == "summary" and events[-1]["snapshot"] == first.snapshot
    (snap,) = mailbak.snapshots(repo)
    assert snap.name == first.snapshot and snap.status == "ok" and snap.transfer == first.transfer
    again = mailbak.backup(store, shm_dir / "plain", link_dest=first.dest)
    assert again.ok and again.reference == str(first.dest) and again.snapshot is None
    with pytest.raises(mailbak.UsageError, match="empty policy"):
        mailbak.prune(repo)
    dry = mailbak.prune(repo, keep_last=1, dry_run=True)
    assert dry.ok and dry.kept == 1 and dry.removed == 0 and dry.snapshots[0]["reasons"] == ["newest complete", "last 1"]
    with pytest.raises(mailbak.UsageError):
        mailbak.snapshots(shm_dir / "plain")
    from mailbak.repository import RepoLock

    held = RepoLock(repo, exclusive=False)
    try:
        with pytest.raises(mailbak.RepositoryBusy):
            mailbak.prune(repo, keep_last=1, wait=False)
    finally:
        held.release()


def test_a_restore_stopped_mid_run_keeps_no_descriptor_of_its_target(store, tmp_path):
    """A restore stopped by its caller after it took STORE (an exception from ``on_event``)
    leaves STORE root's (docs/VERIFY.md) but no descriptor of it: a long-lived process calling
    the API would otherwise keep one per stopped restore."""
    mailbak.backup(store, tmp_path / "b")

    class Stop(Exception):
        pass

    seen = []

    def on_event(e):
        if e["message_type"] == "status" and e["phase"] == "config":  # run(): STORE is held
            seen.append(e)
            raise Stop

    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(Stop):
        mailbak.restore(tmp_path / "b", tmp_path / "restored", on_event=on_event)
    assert seen, "the restore was stopped mid-run, after it took STORE"
    leaked = [os.readlink(f"/proc/self/fd/{n}") for n in set(os.listdir("/proc/self/fd")) - before if os.path.exists(f"/proc/self/fd/{n}")]
    assert not [p for p in leaked if "restored" in p], leaked


def test_a_bad_job_count_reaches_on_event_like_every_usage_error(store, tmp_path):
    """docs/API.md: every usage error is also an ``on_event`` line (code ``usage``); a bad
    ``jobs`` once raised before the runner that sends it."""
    for call in (lambda ev: mailbak.verify(store, jobs=0, on_event=ev), lambda ev: mailbak.backup(store, tmp_path / "b", jobs=0, on_event=ev)):
        events: list[dict] = []
        with pytest.raises(mailbak.UsageError, match="jobs"):
            call(events.append)
        assert [e["code"] for e in events] == ["usage"], events
    assert not (tmp_path / "b").exists()


# Recovery: ls, find, export, restore_account (docs/API.md, "Recovery") ------------------------

T0 = 1_700_000_000
#: alice's messages: (mailbox, subject, received, flags); bob has one.
ALICE = [
    ("Inbox", "hello", T0, ("\\Seen",)),
    ("Inbox", "unread", T0 + 3600, ()),
    ("Projects", "plan", T0 + 86400, ("\\Seen", "\\Flagged")),
    ("Projects/2024", "old plan", T0 - 86400 * 30, ()),
]


def mail(account: str, subject: str, i: int) -> bytes:
    return f"From: Ann <ann@example.org>\r\nTo: {account}@example.org\r\nSubject: {subject}\r\nMessage-ID: <{account}.{i}@example.org>\r\n\r\nbody {i}\r\n".encode()


@pytest.fixture
def recovery(tmp_path):
    """(live store, its backup, alice's messages by ID: (mailbox, subject, received, flags, bytes)),
    the store written by the writer library, the backup by mailbak.backup."""
    from mailbak.store import Store

    src = {}
    with Store.create(tmp_path / "store", durable=False) as s:
        a = s.add_account("alice", mailboxes=("Inbox", "Sent"))
        for i, (mb, subject, received, flags) in enumerate(ALICE):
            data = mail("alice", subject, i)
            src[a.deliver(a.ensure_mailbox(mb), data, received=received, flags=flags, keywords=("work",) if i == 2 else ())] = (mb, subject, received, flags, data)
        b = s.add_account("bob", mailboxes=("Inbox",))
        b.deliver(b.mailbox_id("Inbox"), mail("bob", "hello", 0), received=T0)
    assert mailbak.backup(tmp_path / "store", tmp_path / "backup").ok
    return tmp_path / "store", tmp_path / "backup", src


def test_ls_lists_each_level_with_its_entries(recovery):
    store, backup, src = recovery
    events: list[dict] = []
    top = mailbak.ls(backup, on_event=events.append)
    assert isinstance(top, mailbak.LsResult) and top.ok and top.mailboxes is None and top.messages is None
    assert [(e.name, e.messages, e.mailboxes) for e in top.accounts] == [("alice", 4, 4), ("bob", 1, 1)]
    assert top.accounts[0].bytes == sum(len(v[4]) for v in src.values())
    assert top.listed == 2 and events[-1] == {"message_type": "summary", **top.summary}

    tree = mailbak.ls(backup, "alice")
    assert [(e.name, e.messages, e.unseen) for e in tree.mailboxes] == [("Inbox", 2, 1), ("Projects", 1, 0), ("Projects/2024", 1, 1), ("Sent", 0, 0)]
    assert tree.accounts is None and tree.mailboxes[2].parts == ("Projects", "2024")

    inbox = mailbak.ls(store, "alice", "Inbox")  # a live store reads the same
    assert [(e.message.uid, e.head.subject, e.message.flags) for e in inbox.messages] == [(1, "hello", ("\\Seen",)), (2, "unread", ())]
    assert [src[e.message.id][4] for e in inbox.messages] == [mail("alice", "hello", 0), mail("alice", "unread", 1)]
    assert inbox.messages[0].head.message_id == "<alice.0@example.org>" and inbox.messages[0].error is None


def test_ls_and_find_refuse_what_is_not_there(recovery):
    _, backup, _ = recovery
    events: list[dict] = []
    with pytest.raises(mailbak.UsageError, match="'alice', 'bob'") as e:
        mailbak.ls(backup, "carol", on_event=events.append)
    assert events == [{"message_type": "error", "code": "usage", "cause": str(e.value)}]
    with pytest.raises(mailbak.UsageError, match="Projects/2024") as e:
        mailbak.ls(backup, "alice", "Nope")
    assert "Inbox" in str(e.value)
    with pytest.raises(mailbak.UsageError, match="give the account too"):
        mailbak.ls(backup, mailbox="Inbox")
    with pytest.raises(mailbak.UsageError, match="accounts: 'alice', 'bob'"):
        mailbak.find(backup, account="carol")
    with pytest.raises(mailbak.UsageError, match="mailboxes: 'Inbox', 'Projects'"):
        mailbak.find(backup, account="alice", mailbox="Nope")
    with pytest.raises(mailbak.UsageError, match="--since 'yesterday'"):
        mailbak.find(backup, since="yesterday")
    with pytest.raises(mailbak.UsageError, match="--before: a date"):
        mailbak.find(backup, before=1.5)
    with pytest.raises(mailbak.UsageError, match="jobs"):
        mailbak.ls(backup, jobs=0)


def test_find_across_snapshots_and_dates_in_every_form(recovery, shm_dir):
    store, backup, src = recovery
    repo = shm_dir / "repo"
    mailbak.init(repo)
    first = mailbak.backup(store, repo).snapshot
    from mailbak.store import Store

    with Store.open(store, durable=False) as s:  # the plan moves to the archive
        a = s.account("alice")
        plan = next(i for i, v in src.items() if v[1] == "plan")
        a.expunge_mailbox(a.mailbox_id("Projects"))
    second = mailbak.backup(store, repo).snapshot
    events: list[dict] = []
    r = mailbak.find(repo, subject="PLAN", on_event=events.append)
    assert isinstance(r, mailbak.FindResult) and r.ok and r.searched == [second, first]
    assert sorted((m.account, m.head.subject) for m in r.matches) == [("alice", "old plan"), ("alice", "plan")]
    gone = next(m for m in r.matches if m.id == plan)
    assert [(s.source, s.mailbox) for s in gone.seen] == [(first, "Projects")] and gone.received == T0 + 86400
    assert gone.seen[0].flags == ("\\Seen", "\\Flagged", "work")
    assert r.heads_read == 5 and events[-1] == {"message_type": "summary", **r.summary} and r.summary["matches"] == 2

    (m,) = mailbak.find(backup, message_id="alice.1@example.org").matches
    assert m.head.subject == "unread"
    from datetime import date, datetime

    day = T0 + 86400
    forms = [time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(day)), datetime.fromtimestamp(day), day]
    for since in forms:
        assert [m.head.subject for m in mailbak.find(backup, since=since).matches] == ["plan"], since
    assert len(mailbak.find(backup, account="alice", before=date.fromtimestamp(T0 - 86400)).matches) == 1


def test_export_maildir_and_mbox(recovery, tmp_path):
    import mailbox

    _, backup, src = recovery
    events: list[dict] = []
    r = mailbak.export(backup, tmp_path / "out", account="alice", mailboxes="Projects", recursive=True, on_event=events.append)
    assert isinstance(r, mailbak.ExportResult) and r.ok and r.format == "maildir" and r.out == tmp_path / "out"
    assert (r.messages, r.mailboxes, r.errors) == (2, 2, 0) and r.bytes == sum(len(v[4]) for v in src.values() if v[0].startswith("Projects"))
    assert events[-1] == {"message_type": "summary", **r.summary}
    old = mailbox.Maildir(tmp_path / "out" / "Projects" / "2024", factory=None)
    assert [old.get_file(k).read() for k in old.keys()] == [v[4] for v in src.values() if v[0] == "Projects/2024"], "the bytes unchanged"
    (plan,) = mailbox.Maildir(tmp_path / "out" / "Projects", factory=None)
    assert plan.get_flags() == "FSa" and (tmp_path / "out" / "Projects" / "dovecot-keywords").read_text() == "0 work\n"

    r = mailbak.export(backup, tmp_path / "mbox", account="alice", mailboxes=["Inbox"], since="2023-01-01", format="mbox")
    assert r.ok and r.messages == 2 and r.format == "mbox"
    assert [m["Subject"] for m in mailbox.mbox(tmp_path / "mbox" / "Inbox.mbox")] == ["hello", "unread"]

    for bad, match in (({"format": "eml"}, "format 'eml'"), ({"recursive": True}, "--recursive needs --mailbox"), ({"mailboxes": "Nope"}, "Nope"), ({"since": "soon"}, "--since 'soon'")):
        with pytest.raises(mailbak.UsageError, match=match):
            mailbak.export(backup, tmp_path / "bad", account="alice", **bad)
        assert not (tmp_path / "bad").exists()
    with pytest.raises(mailbak.UsageError, match="no account 'carol' .*accounts: 'alice', 'bob'"):
        mailbak.export(backup, tmp_path / "bad", account="carol")
    with pytest.raises(mailbak.UsageError, match="not empty"):
        mailbak.export(backup, tmp_path / "out", account="alice")


def test_restore_account_is_additive_and_idempotent(recovery):
    store, backup, src = recovery
    before = mailbak.ls(store, "alice").mailboxes
    events: list[dict] = []
    dry = mailbak.restore_account(backup, store, account="alice", mailboxes=["Projects"], recursive=True, into="Back", dry_run=True, on_event=events.append)
    assert isinstance(dry, mailbak.AccountRestoreResult) and dry.ok and dry.dry_run
    assert (dry.restored, dry.already_there, dry.mailboxes_created) == (2, 0, ["Back", "Back/Projects", "Back/Projects/2024"])
    assert [(e.name, e.messages) for e in mailbak.ls(store, "alice").mailboxes] == [(e.name, e.messages) for e in before], "a dry run writes nothing"

    r = mailbak.restore_account(backup, store, account="alice", mailboxes=["Projects"], recursive=True, into="Back", on_event=events.append)
    assert r.ok and (r.restored, r.already_there, r.not_restored) == (2, 0, 0) and r.prefix == "Back" and r.to_account == "alice"
    assert r.source == backup and r.store == store and r.bytes == dry.bytes and events[-1] == {"message_type": "summary", **r.summary}
    listed = mailbak.ls(store, "alice", "Back/Projects").messages
    assert [(e.head.subject, e.message.flags, e.message.keywords, e.message.received) for e in listed] == [("plan", ("\\Seen", "\\Flagged"), ("work",), T0 + 86400)]
    assert listed[0].message.id not in src, "delivered anew"

    again = mailbak.restore_account(backup, store, account="alice", mailboxes=["Projects"], recursive=True, into="Back")
    assert again.ok and (again.restored, again.already_there, again.mailboxes_created, again.bytes) == (0, 2, [], 0)
    assert mailbak.ls(store).accounts[0].messages == len(src) + 2
    assert mailbak.verify(store).ok

    with pytest.raises(mailbak.UsageError, match="accounts: alice, bob.*--create-account"):
        mailbak.restore_account(backup, store, account="alice", to_account="carol")
    made = mailbak.restore_account(backup, store, account="bob", to_account="carol", create_account=True, into="")
    assert made.ok and made.account_created and made.restored == 1
    with pytest.raises(mailbak.UsageError, match="no account 'carol' .*accounts: 'alice', 'bob'"):
        mailbak.restore_account(backup, store, account="carol")
    with pytest.raises(mailbak.UsageError, match="a backup, not a live store"):
        mailbak.restore_account(store, backup, account="alice")

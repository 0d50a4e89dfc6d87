"""The Python API (docs/API.md), called in-process on real stores."""

from __future__ import annotations

import dataclasses
import json
import os

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

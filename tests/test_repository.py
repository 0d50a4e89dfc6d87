"""Snapshot repositories: init, backup into a repository (reference, reuse), --link-dest,
snapshots, prune (rules, trash, locks), on real file systems: the store under the test's tmp
directory (ext4), the repository on /dev/shm (a tmpfs: "another disk") unless said otherwise."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import CLI_ENV, backup_into, init_ok, inode_listing, json_lines, manifest_of, run_cli, start_times, tree_listing, waits_for_a_held_repository
from mailbak import repository
from mailbak.gen import age_tree
from mailbak.layout import message_rel
from mailbak.repository import MARKER, RepoLock, Repository, SnapshotLock
from mailbak.store import Store
from pausing import PausePoint
from test_retention import EXPECTED_60

ACC = "user0000"


def churn(store: Path, deliveries: int = 5, expunges: int = 3) -> tuple[list[int], list[int]]:
    """Deliveries and expunges (files removed) in account ACC; returns (new IDs, expunged IDs)."""
    with Store.open(store, durable=False) as s:
        acc = s.account(ACC)
        inbox = acc.mailbox_id("Inbox")
        new = [acc.deliver(inbox, f"Subject: new {i}\r\n\r\nhello {i}\r\n".encode()) for i in range(deliveries)]
        gone = sorted(acc.messages())[:expunges]
        acc.expunge(gone)
        acc.sweep()
    return new, gone


@pytest.fixture
def store(store: Path) -> Path:
    """The generated store, written an hour ago: files written from two seconds before a
    snapshot started on are copied by the next one, never reused (docs/REPOSITORY.md)."""
    age_tree(store)
    return store


# init ----------------------------------------------------------------------------------------


def test_init_makes_a_private_repository(tmp_path):
    r = tmp_path / "repo"
    p = run_cli("init", "--json", r)
    assert p.returncode == 0, p.stderr
    doc = json.loads((r / MARKER).read_text())
    assert doc["kind"] == "mailbak-repository" and doc["format_version"] == 1 and doc["created"].endswith("Z")
    assert stat.S_IMODE(os.stat(r).st_mode) == 0o700
    assert json_lines(p.stdout)[0]["repository"] == str(r)
    # An empty directory may become one too, and is closed to others.
    e = tmp_path / "empty"
    e.mkdir(mode=0o755)
    assert run_cli("init", e).returncode == 0
    assert stat.S_IMODE(os.stat(e).st_mode) == 0o700


def test_init_refuses_non_empty_and_existing_repositories(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "f").write_text("x")
    p = run_cli("init", d)
    assert p.returncode == 2 and "not empty" in p.stderr
    assert not (d / MARKER).exists()
    r = tmp_path / "r"
    init_ok(r)
    before = (r / MARKER).read_bytes()
    assert run_cli("init", r).returncode == 2
    assert (r / MARKER).read_bytes() == before
    assert run_cli("init", tmp_path / "no" / "such").returncode == 2


def test_backup_into_a_non_empty_directory_hints_at_init(store, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "other").write_text("x")
    p = run_cli("backup", store, d)
    assert p.returncode == 2
    assert "mailbak init" in p.stderr
    assert sorted(os.listdir(d)) == ["other"]


def test_a_repository_marker_that_is_not_ours_is_refused(store, tmp_path):
    r = tmp_path / "r"
    init_ok(r)
    (r / MARKER).write_text('{"kind": "something-else"}')
    p = run_cli("snapshots", r)
    assert p.returncode == 2 and "not a mailbak repository marker" in p.stderr
    assert run_cli("backup", store, r).returncode == 2
    assert sorted(os.listdir(r)) == sorted([MARKER, ".trash"])


# backup into a repository ------------------------------------------------------------------


def test_first_and_second_snapshot_on_another_file_system(store, repo):
    assert os.stat(store).st_dev != os.stat(repo).st_dev
    events: list[dict] = []
    t1, t2 = start_times(2)  # a name each (collisions have their own test), no sleep
    first = backup_into(store, repo, events=events, clock=t1)
    assert first["status"] == "ok" and first["reference"] is None
    name1 = first["snapshot"]
    assert repository.NAME_RE.match(name1) and (repo / name1 / "mailbak.json").is_file()
    assert name1 == repository.snapshot_name(t1), "a snapshot is named by its start second"
    assert sorted(os.listdir(repo)) == sorted([MARKER, ".trash", name1]), "everything the backup writes is in its snapshot"
    assert sorted(os.listdir(repo / name1)) == ["config", "data", "digests", "mailbak.json"]
    assert first["repository"] == str(repo)
    t1 = first["transfer"]
    assert t1["reused"] == 0 and t1["linked"] == 0 and t1["copied"] >= t1["messages"] > 0
    assert t1["bytes_copied"] > 0
    # Another disk is what a repository is for: no warning that hardlinks are impossible.
    assert not [e for e in events if e.get("code") == "link_fallback"]
    new, gone = churn(store)
    second = backup_into(store, repo, clock=t2)
    name2 = second["snapshot"]
    infos = Repository.open(repo).snapshots()
    assert second["reference"] == str(infos[1].path) and infos[0].name == name2
    t2 = second["transfer"]
    # Every message file that did not change is reused; only the deliveries (and files the
    # server changes in place) are copied.
    assert t2["messages"] == t1["messages"] + len(new) - len(gone)
    assert t2["reused"] >= t2["messages"] - len(new)
    assert t2["copied"] < len(new) + 10
    p = run_cli("verify", repo / name2)
    assert p.returncode == 0, p.stdout + p.stderr
    # Unchanged files share their inode with the previous snapshot; new ones do not.
    prev, cur = inode_listing(infos[1].path), inode_listing(repo / name2)
    msg_dir = f"data/accounts/{ACC}/msg/"
    new_rels = {msg_dir + message_rel(i) for i in new}
    gone_rels = {msg_dir + message_rel(i) for i in gone}
    assert gone_rels <= set(prev) and not gone_rels & set(cur)
    assert new_rels <= set(cur)
    shared = [rel for rel in cur if rel in prev and cur[rel][0] == prev[rel][0]]
    messages = [rel for rel in cur if "/msg/" in rel or rel.startswith("data/queue/") and not rel.endswith(".db")]
    assert set(messages) - new_rels <= set(shared), "every unchanged message file is reused"
    assert not new_rels & set(shared)
    assert not any(rel.endswith(".db") for rel in shared), "databases are copied every time"
    assert "config/mailstore.toml" in shared


def test_restore_any_snapshot(store, repo, tmp_path):
    t1, t2 = start_times(2)
    backup_into(store, repo, clock=t1)
    listing1 = tree_listing(store / "data" / "accounts" / ACC / "msg")
    churn(store)
    backup_into(store, repo, clock=t2)
    infos = Repository.open(repo).snapshots()
    for i, info in enumerate(reversed(infos)):
        target = tmp_path / f"restored{i}"
        p = run_cli("restore", info.path, target)
        assert p.returncode == 0, p.stdout + p.stderr
        if i == 0:
            assert tree_listing(target / "data" / "accounts" / ACC / "msg") == listing1


def test_same_file_system_repository_links_from_the_store(store, tmp_path):
    r = tmp_path / "repo"
    init_ok(r)
    t1, t2 = start_times(2)
    backup_into(store, r, clock=t1)
    second = backup_into(store, r, clock=t2)
    t = second["transfer"]
    assert t["linked"] == t["messages"] > 0
    # Plain files (config, junk filters) are not linked from the store; unchanged, they are
    # reused from the previous snapshot.
    assert t["reused"] > 0


def test_snapshot_names_get_a_suffix_on_collision(tmp_path):
    r = repository.init(tmp_path / "r")
    started = 1_780_000_000.0
    paths = [r.create_snapshot(started) for _ in range(3)]
    base = repository.snapshot_name(started)
    assert [p.name for p in paths] == [base, f"{base}-1", f"{base}-2"]
    assert all(repository.NAME_RE.match(p.name) for p in paths)


def test_link_dest(store, shm_dir, tmp_path):
    prev = shm_dir / "prev"
    assert run_cli("backup", store, prev).returncode == 0
    churn(store)
    dest = shm_dir / "next"
    p = run_cli("backup", "--json", "--link-dest", prev, store, dest)
    assert p.returncode == 0, p.stdout + p.stderr
    summary = json_lines(p.stdout)[-1]
    assert summary["reference"] == str(prev) and summary["transfer"]["reused"] > 0
    assert run_cli("verify", dest).returncode == 0
    # The reference must be a complete backup.
    m = manifest_of(prev)
    m["status"] = "failed"
    (prev / "mailbak.json").write_text(json.dumps(m))
    p = run_cli("backup", "--link-dest", prev, store, shm_dir / "third")
    assert p.returncode == 2 and "not a complete backup" in p.stderr
    assert not (shm_dir / "third").exists()
    p = run_cli("backup", "--link-dest", tmp_path / "nothing", store, shm_dir / "fourth")
    assert p.returncode == 2 and not (shm_dir / "fourth").exists()


# snapshots -----------------------------------------------------------------------------------


def fake_snapshot(repo: Path, start: str, status: str, template: dict) -> Path:
    """A snapshot directory with a manifest of ``status`` started at ``start`` ("2026-01-03
    02:00", UTC); "incomplete" has a running manifest nobody holds; "running" the same, and the
    caller holds its lock."""
    from datetime import UTC, datetime

    t = datetime.fromisoformat(start).replace(tzinfo=UTC)
    path = repo / t.strftime(repository.NAME_FORMAT)
    path.mkdir()
    (path / "data").mkdir()
    (path / "data" / "file").write_text(start)
    iso = t.strftime("%Y-%m-%dT%H:%M:%SZ")
    if status in ("ok", "failed"):
        m = {**template, "status": status, "started": iso, "finished": iso}
    else:
        m = {"kind": "mailbak-backup", "manifest_version": 1, "status": "running", "started": iso}
    (path / "mailbak.json").write_text(json.dumps(m))
    return path


@pytest.fixture
def template(store, tmp_path) -> dict:
    """The manifest of a real, complete backup."""
    b = tmp_path / "template-backup"
    assert run_cli("backup", store, b).returncode == 0
    return manifest_of(b)


def test_snapshots_lists_statuses_newest_first(repo, template):
    fake_snapshot(repo, "2026-01-01 02:00", "ok", template)
    fake_snapshot(repo, "2026-01-02 02:00", "failed", template)
    fake_snapshot(repo, "2026-01-03 02:00", "incomplete", template)
    running = fake_snapshot(repo, "2026-01-04 02:00", "incomplete", template)
    (repo / "2026-01-05T020000Z").symlink_to(running)  # a symlink is never a snapshot
    (repo / "not-a-snapshot").mkdir()
    lock = SnapshotLock(running)
    try:
        p = run_cli("snapshots", "--json", repo)
        assert p.returncode == 0, p.stderr
        rows = json_lines(p.stdout)
        assert [(r["name"], r["status"]) for r in rows] == [
            ("2026-01-04T020000Z", "running"),
            ("2026-01-03T020000Z", "incomplete"),
            ("2026-01-02T020000Z", "failed"),
            ("2026-01-01T020000Z", "ok"),
        ]
        p = run_cli("snapshots", repo)
        assert p.returncode == 0
        lines = p.stdout.splitlines()
        assert lines[0].split()[:3] == ["snapshot", "status", "started"]
        assert lines[1].split()[:2] == ["2026-01-04T020000Z", "running"]
    finally:
        lock.release()
    rows = json_lines(run_cli("snapshots", "--json", repo).stdout)
    assert rows[0]["status"] == "incomplete", "no lock held: a running manifest is an incomplete snapshot"


def test_snapshots_of_a_non_repository_is_bad_usage(tmp_path):
    p = run_cli("snapshots", tmp_path)
    assert p.returncode == 2 and "mailbak init" in p.stderr


# prune ---------------------------------------------------------------------------------------


def prune(repo: Path, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailbak", "prune", *args, str(repo)], capture_output=True, text=True, timeout=timeout, env={**CLI_ENV, "TZ": "UTC0", **(env or {})})


POLICY_60_ARGS = ("--keep-last", "2", "--keep-hourly", "3", "--keep-daily", "7", "--keep-weekly", "4", "--keep-monthly", "6", "--keep-yearly", "3", "--keep-within", "3d12h")


def test_prune_sixty_snapshots_by_the_hand_computed_table(repo, template):
    locks = []
    for start, status, _, _ in EXPECTED_60:
        path = fake_snapshot(repo, start, "incomplete" if status == "running" else status, template)
        if status == "running":
            locks.append(SnapshotLock(path))
    try:
        before = sorted(os.listdir(repo))
        p = prune(repo, "--dry-run", "--json", *POLICY_60_ARGS)
        assert p.returncode == 0, p.stdout + p.stderr
        summary = json_lines(p.stdout)[-1]
        got = [(s["started"][:16].replace("T", " "), s["status"], s["action"], ", ".join(s["reasons"])) for s in summary["snapshots"]]
        assert got == EXPECTED_60
        assert sorted(os.listdir(repo)) == before, "a dry run changes nothing"
        p = prune(repo, "--json", *POLICY_60_ARGS)
        assert p.returncode == 0, p.stdout + p.stderr
        summary = json_lines(p.stdout)[-1]
        kept = {s["name"] for s in summary["snapshots"] if s["action"] == "keep"}
        assert len(kept) == sum(1 for row in EXPECTED_60 if row[2] == "keep")
        assert {n for n in os.listdir(repo) if repository.NAME_RE.match(n)} == kept
        assert os.listdir(repo / ".trash") == []
        assert summary["removed"] == 60 - len(kept) and summary["files_deleted"] >= 2 * summary["removed"]
    finally:
        for lock in locks:
            lock.release()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "empty policy"),
        (("--keep-daily", "0"), "empty policy"),
        (("--keep-daily", "-1"), "--keep-daily"),
        (("--keep-within", "30x"), "--keep-within"),
    ],
)
def test_prune_refuses_a_bad_policy(repo, template, args, message):
    fake_snapshot(repo, "2026-01-01 02:00", "ok", template)
    fake_snapshot(repo, "2025-01-01 02:00", "ok", template)
    p = prune(repo, *args)
    assert p.returncode == 2 and message in p.stderr
    assert len([n for n in os.listdir(repo) if repository.NAME_RE.match(n)]) == 2


def test_prune_never_follows_symlinks_out_of_the_repository(repo, template, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    old = fake_snapshot(repo, "2025-01-01 02:00", "ok", template)
    (old / "data" / "link").symlink_to(outside)
    (old / "data" / "filelink").symlink_to(outside / "precious")
    fake_snapshot(repo, "2026-01-01 02:00", "ok", template)
    (repo / "2024-01-01T020000Z").symlink_to(outside)  # named like a snapshot: never one
    p = prune(repo, "--keep-last", "1")
    assert p.returncode == 0, p.stdout + p.stderr
    assert not old.exists()
    assert (outside / "precious").read_text() == "keep me"
    assert os.path.islink(repo / "2024-01-01T020000Z")


def test_prune_with_no_wait_fails_while_a_backup_holds_the_repository(repo, template):
    fake_snapshot(repo, "2025-01-01 02:00", "ok", template)
    fake_snapshot(repo, "2026-01-01 02:00", "ok", template)
    held = RepoLock(repo, exclusive=False)
    try:
        p = prune(repo, "--keep-last", "1", "--no-wait")
        assert p.returncode == 1
        assert "locked by another mailbak" in p.stderr
        assert len([n for n in os.listdir(repo) if repository.NAME_RE.match(n)]) == 2
        # Without --no-wait it waits, says so, and goes on once the lock is free.
        proc = subprocess.Popen([sys.executable, "-m", "mailbak", "prune", "--keep-last", "1", str(repo)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CLI_ENV)
        line = proc.stderr.readline()
        assert "waiting for the repository lock" in line
        assert proc.poll() is None
        assert len([n for n in os.listdir(repo) if repository.NAME_RE.match(n)]) == 2
    finally:
        held.release()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert [n for n in os.listdir(repo) if repository.NAME_RE.match(n)] == ["2026-01-01T020000Z"]


def test_backup_waits_for_a_prune(store, repo):
    held = RepoLock(repo, exclusive=True)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "mailbak", "backup", str(store), str(repo)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CLI_ENV)
        line = proc.stderr.readline()
        assert "waiting for the repository lock" in line
        assert Repository.open(repo).snapshot_names() == [], "no snapshot begun while prune holds the repository"
    finally:
        held.release()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    assert [s.status for s in Repository.open(repo).snapshots()] == ["ok"]


def test_prune_killed_midway_leaves_trash_the_next_prune_finishes(store, repo):
    t1, t2 = start_times(2)
    backup_into(store, repo, clock=t1)
    backup_into(store, repo, clock=t2)
    old, new = sorted(Repository.open(repo).snapshot_names())
    files = sum(len(f) for _, _, f in os.walk(repo / old))
    assert files > 100
    pp = PausePoint(repo.parent / "pause", "engine_mid_delete", after=50)
    # One worker: the pause point stops the thread that reaches it, and a second worker would
    # go on deleting until only directories were left.
    proc = pp.popen("prune", "--jobs", "1", "--keep-last", "1", repo)
    pp.wait_reached(proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # The decision stands: the snapshot is in the trash, partly deleted.
    assert Repository.open(repo).snapshot_names() == [new]
    left = sum(len(f) for _, _, f in os.walk(repo / ".trash"))
    assert 0 < left < files
    p = run_cli("snapshots", repo)
    assert "trash pending: 1" in p.stdout
    p = prune(repo, "--keep-last", "5", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    summary = json_lines(p.stdout)[-1]
    assert summary["deleted"] == [old] and summary["removed"] == 0
    assert os.listdir(repo / ".trash") == []
    assert Repository.open(repo).snapshot_names() == [new]
    assert run_cli("verify", repo / new).returncode == 0


def test_prune_keeps_a_snapshot_being_written(repo, template):
    fake_snapshot(repo, "2025-01-01 02:00", "ok", template)
    writing = fake_snapshot(repo, "2025-06-01 02:00", "incomplete", template)
    fake_snapshot(repo, "2026-01-01 02:00", "ok", template)
    lock = SnapshotLock(writing)
    try:
        p = prune(repo, "--keep-last", "1", "--json")
        assert p.returncode == 0, p.stdout + p.stderr
    finally:
        lock.release()
    assert writing.exists()
    assert sorted(n for n in os.listdir(repo) if repository.NAME_RE.match(n)) == ["2025-06-01T020000Z", "2026-01-01T020000Z"]
    # Once nobody writes it, it is an incomplete snapshot superseded by a complete one.
    assert prune(repo, "--keep-last", "1").returncode == 0
    assert not writing.exists()


def test_prune_works_on_a_full_disk(template, tmp_path):
    """A repository whose file system has no inode left (tmpfs with nr_inodes): prune needs no
    new one (the trash exists from init), and frees what it removes."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,nr_inodes=200", "tmpfs", str(mnt)], check=True)
    try:
        repo = mnt / "repo"
        init_ok(repo)
        made = 0
        with pytest.raises(OSError) as full:
            for day in range(200):
                fake_snapshot(repo, (datetime(2025, 1, 1, 2, 0) + timedelta(days=day)).strftime("%Y-%m-%d %H:%M"), "ok", template)
                made += 1
        assert full.value.errno == errno.ENOSPC and made > 5
        p = prune(repo, "--keep-last", "2", "--json")
        assert p.returncode == 0, p.stdout + p.stderr
        assert json_lines(p.stdout)[-1]["removed"] >= made - 2
        assert len(Repository.open(repo).snapshot_names()) <= 3  # the last, partly made one may be kept as incomplete
        fake_snapshot(repo, "2026-06-01 02:00", "ok", template)  # room again
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_trash_entry_that_is_no_directory_is_one_error_and_the_rest_is_deleted(repo, template, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    (repo / ".trash" / "a-link").symlink_to(outside)
    gone = repo / ".trash" / "2025-01-01T020000Z"
    gone.mkdir()
    (gone / "f").write_text("x")
    fake_snapshot(repo, "2026-01-01 02:00", "ok", template)
    p = prune(repo, "--keep-last", "1", "--json")
    assert p.returncode == 1, p.stdout + p.stderr
    errors = [e for e in json_lines(p.stdout) if e["message_type"] == "error"]
    assert [(e["code"], e["path"]) for e in errors] == [("trash", ".trash/a-link")]
    assert not gone.exists() and os.path.islink(repo / ".trash" / "a-link")
    assert (outside / "precious").read_text() == "keep me"


def test_init_that_fails_leaves_nothing_behind(tmp_path):
    """A disk that fills up during init (a tmpfs with 3 inodes: its root, REPO, REPO/.trash; the
    marker gets none): exit 2, and REPO is gone, so that init can simply run again."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=3", "tmpfs", str(mnt)], check=True)
    try:
        p = run_cli("init", mnt / "repo")
        assert p.returncode == 2 and "No space left on device" in p.stderr, p.stderr
        assert os.listdir(mnt) == []
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_backup_stopped_while_waiting_for_a_prune_says_nothing_was_begun(store, repo):
    held = RepoLock(repo, exclusive=True)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "mailbak", "backup", str(store), str(repo)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CLI_ENV)
        assert "waiting for the repository lock" in proc.stderr.readline()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        held.release()
    assert proc.returncode == 130
    assert "no snapshot was begun" in err and "incomplete backup" not in err, err
    assert Repository.open(repo).snapshot_names() == []


def test_link_dest_into_a_repository_snapshot_holds_that_repository(store, repo, shm_dir):
    backup_into(store, repo)
    (snap,) = Repository.open(repo).snapshot_names()
    p = waits_for_a_held_repository(repo, "backup", "--link-dest", repo / snap, store, shm_dir / "elsewhere")
    assert p.returncode == 0, p.stdout + p.stderr
    assert manifest_of(shm_dir / "elsewhere")["reference"] == str(repo / snap)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("trash-symlink", ".trash: not a directory"),
        ("repo-symlink", "is a symlink"),
        ("repo-file", "not a directory, so not a repository"),
        ("format", "repository format 99 is not supported"),
    ],
)
def test_a_damaged_repository_is_bad_input_for_every_command(repo, template, tmp_path, damage, message):
    fake_snapshot(repo, "2025-01-01 02:00", "ok", template)
    fake_snapshot(repo, "2026-01-01 02:00", "ok", template)
    target = repo
    if damage == "trash-symlink":
        (repo / ".trash").rmdir()
        (repo / ".trash").symlink_to(tmp_path)
    elif damage == "repo-symlink":
        target = tmp_path / "link"
        target.symlink_to(repo)
    elif damage == "repo-file":
        target = tmp_path / "file"
        target.write_text("x")
    else:
        doc = json.loads((repo / MARKER).read_text())
        (repo / MARKER).write_text(json.dumps({**doc, "format_version": 99}))
    for args in (("snapshots",), ("prune", "--keep-last", "1")):
        p = run_cli(*args, target)
        assert p.returncode == 2 and message in p.stderr, (args, p.stderr)
    assert len([n for n in os.listdir(repo) if repository.NAME_RE.match(n)]) == 2, "nothing removed"


def test_prune_defaults_to_the_measured_worker_count_whatever_the_cores(repo):
    # BENCHMARKS.md "Cold caches (issue 22)": two delete workers beat 1, 4, 8 and 16 on a cold
    # cache, so without --jobs a prune uses two, not one per core; --jobs still overrides.
    from mailbak import retention
    from mailbak.pruner import PRUNE_JOBS, Prune
    from mailbak.report import make_reporter

    def jobs_of(**kw) -> int:
        return Prune(repo, retention.Policy(keep_last=1), reporter=make_reporter(json_output=True, quiet=True, verbose=False), **kw).jobs

    assert PRUNE_JOBS == 2 and jobs_of() == 2 and jobs_of(jobs=7) == 7
    done = run_cli("prune", "--help")
    assert "default: 2, measured fastest" in " ".join(done.stdout.split())

"""Repositories on btrfs (issue 22.2; docs/REPOSITORY.md, "Repositories on btrfs"), on a
loop-mounted btrfs image: ``init`` records the subvolume method; each snapshot is a subvolume,
the nightly one a btrfs snapshot of the reference brought to the store's state in place and
made read-only; it holds exactly what a plain backup of the same store state holds, with
digests that check out; a damaged reference file is copied again, never kept; prune deletes
the subvolume; and a repository whose marker names no method (made before there was a choice)
keeps hardlinking, on btrfs too.

The store is on the root file system, another file system than the image (so message files
are copied, or kept from the reference, never linked from the store)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import backup_into, init_ok, make_store, manifest_of, run_cli, start_times, tree_listing
from mailbak import _engine, digests
from mailbak.archiver import RACY_LIMIT
from mailbak.gen import age_tree
from mailbak.repository import MARKER, MAX_SEAL_BYTES, SEALS
from mailbak.store import Store

ACC = "user0000"

#: The inode number of a btrfs subvolume's root directory.
SUBVOLUME_ROOT = 256


@pytest.fixture
def aged(tmp_path: Path) -> Path:
    """A small generated store whose files are older than any backup's start (files written from
    two seconds before a reference's start on are copied, never kept)."""
    s = make_store(tmp_path / "store")
    (s / "data" / "old.txt").write_text("a stray file, gone tomorrow (churn)\n")
    age_tree(s)
    return s


def snapshots(repo: Path) -> list[Path]:
    """The repository's snapshots, oldest first."""
    return sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))


def churn(store: Path) -> tuple[list[int], list[int]]:
    """A night's changes: deliveries and expunges (files removed) in account ACC, the config
    rewritten, a stray file added to data/ and another removed; returns (new IDs, gone IDs)."""
    with Store.open(store, durable=False) as s:
        acc = s.account(ACC)
        inbox = acc.mailbox_id("Inbox")
        new = [acc.deliver(inbox, f"Subject: new {i}\r\n\r\nhello {i}\r\n".encode()) for i in range(5)]
        gone = sorted(acc.messages())[:4]
        acc.expunge(gone)
        acc.sweep()
    toml = store / "config" / "mailstore.toml"
    toml.write_text(toml.read_text() + "\n# changed\n")
    (store / "data" / "notes.txt").write_text("new stray\n")
    (store / "data" / "old.txt").unlink()
    return new, gone


def message_file(store: Path, id_: int) -> Path:
    """The path of message ``id_`` of ACC below a store or backup."""
    return store / "data" / "accounts" / ACC / "msg" / _engine.message_path(id_)


def subvolume_info(path: Path) -> dict[str, str]:
    """``btrfs subvolume show`` of ``path`` as a dict of its ``Key: value`` lines."""
    out = subprocess.run(["btrfs", "subvolume", "show", str(path)], check=True, capture_output=True, text=True).stdout
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines()[1:]) if v}


def digests_hold(snap: Path) -> int:
    """Checks every message file of ``snap`` and every file ``digests/files`` lists against the
    recorded SHA-256 (read back from disk here); returns how many were checked."""
    fd = os.open(snap, os.O_RDONLY | os.O_DIRECTORY)
    checked = 0
    try:
        for e in digests.read(fd, f"{digests.DIR}/{digests.FILES}", shard=False):
            data = (snap / os.fsdecode(e.key)).read_bytes()
            assert (len(data), hashlib.sha256(data).digest()) == (e.size, e.digest), e.key
            checked += 1
        doc = manifest_of(snap)
        for name in doc["accounts"]:
            rel = f"accounts/{name}"
            area = digests.area_dir(rel)
            entries = {}
            for shard in os.listdir(snap / area):
                entries.update({e.key: e for e in digests.read(fd, f"{area}/{shard}", shard=True)})
            for path in (snap / "data" / rel / "msg").rglob("*"):
                if path.is_file():
                    e = entries[int(path.name)]
                    data = path.read_bytes()
                    assert (len(data), hashlib.sha256(data).digest()) == (e.size, e.digest), path
                    checked += 1
    finally:
        os.close(fd)
    return checked


def test_init_decides_by_the_file_system(btrfs, tmp_path):
    init_ok(btrfs / "repo")
    assert json.loads((btrfs / "repo" / MARKER).read_text())["method"] == "subvolume"
    init_ok(tmp_path / "repo")
    assert json.loads((tmp_path / "repo" / MARKER).read_text())["method"] == "hardlink"


def test_nightly_snapshot_is_a_read_only_clone_holding_the_stores_state(aged, btrfs):
    repo = btrfs / "repo"
    init_ok(repo)
    t = start_times(2)
    first = backup_into(aged, repo, clock=t[0])
    [ref] = snapshots(repo)
    assert os.stat(ref).st_ino == SUBVOLUME_ROOT and _engine.btrfs_is_readonly(ref)
    assert first["transfer"]["copied"] >= first["transfer"]["messages"] > 0
    new, gone = churn(aged)
    second = backup_into(aged, repo, clock=t[1])
    cur = snapshots(repo)[-1]
    assert second["status"] == "ok" and second["reference"] == str(ref)
    # A subvolume, read-only, made as a btrfs snapshot of the reference's.
    assert os.stat(cur).st_ino == SUBVOLUME_ROOT and _engine.btrfs_is_readonly(cur)
    assert subvolume_info(cur)["Parent UUID"] == subvolume_info(ref)["UUID"]
    assert sorted(os.listdir(cur)) == ["config", "data", "digests", "mailbak.json"]
    # Kept from the reference: every message but the new ones; copied: the new ones and the
    # changed plain files; removed: the gone messages and the stray gone from the store.
    tr = second["transfer"]
    assert tr["messages"] == first["transfer"]["messages"] + len(new) - len(gone)
    assert tr["reused"] >= tr["messages"] - len(new)
    assert second["accounts"][ACC]["copied"] == len(new)
    assert tr["removed"] == len(gone) + 1
    for i in gone:
        assert message_file(ref, i).is_file() and not message_file(cur, i).exists()
    for i in new:
        assert message_file(cur, i).read_bytes() == message_file(aged, i).read_bytes()
    assert not (cur / "data" / "old.txt").exists() and (cur / "data" / "notes.txt").read_text() == "new stray\n"
    # Exactly what a plain backup of the same store state holds.
    plain = btrfs / "plain"
    p = run_cli("backup", aged, plain)
    assert p.returncode == 0, p.stdout + p.stderr
    for sub in ("config", "data"):
        assert tree_listing(cur / sub) == tree_listing(plain / sub), sub
    p = run_cli("verify", cur)
    assert p.returncode == 0, p.stdout + p.stderr
    assert digests_hold(cur) >= tr["messages"]
    assert not (cur / ".digests-reference").exists()
    # The reference is untouched.
    assert run_cli("verify", ref).returncode == 0
    assert digests_hold(ref) >= first["transfer"]["messages"]


def truncated_reference(store: Path, repo: Path, clock: float) -> tuple[Path, int, bytes]:
    """A first snapshot of ``store`` into the new repository ``repo``, its seal as noted
    checked, then made writable, its newest message of ACC truncated to half, and made
    read-only again (damage by root). Returns (the snapshot, the message ID, its bytes)."""
    init_ok(repo)
    backup_into(store, repo, clock=clock)
    [ref] = snapshots(repo)
    with Store.open(store, durable=False) as s:
        victim = max(s.account(ACC).messages())
    want = message_file(store, victim).read_bytes()
    assert (repo / SEALS / ref.name).read_text().strip() == _engine.btrfs_seal(ref)
    _engine.btrfs_set_readonly(ref, False)
    assert _engine.btrfs_seal(ref) is None
    os.truncate(message_file(ref, victim), len(want) // 2)
    _engine.btrfs_set_readonly(ref, True)
    return ref, victim, want


def test_a_damaged_reference_file_is_copied_again(aged, btrfs):
    repo = btrfs / "repo"
    t = start_times(2)
    ref, victim, want = truncated_reference(aged, repo, t[0])
    sealed = (repo / SEALS / ref.name).read_text().strip()
    # Changed since its backup sealed it: the seal is another, so the clone's proven files are
    # each checked (and the truncated one copied), not kept unlooked at.
    assert _engine.btrfs_seal(ref) != sealed
    summary = backup_into(aged, repo, clock=t[1])
    cur = snapshots(repo)[-1]
    assert message_file(cur, victim).read_bytes() == want
    assert summary["accounts"][ACC]["copied"] == 1 and summary["transfer"]["copied"] == 1
    assert summary["status"] == "ok"
    assert run_cli("verify", cur).returncode == 0
    assert digests_hold(cur) > 0


def test_a_sealed_references_proven_files_are_kept_unlooked_at(aged, btrfs):
    # What the seal buys, shown by defeating it: the reference is changed behind the
    # repository's back (a proven file truncated) and its noted seal rewritten to match. The
    # clone's proven files are then kept without a stat, the truncated one too; with the seal
    # left as its backup noted it, the same change is caught (the test above).
    repo = btrfs / "repo"
    t = start_times(2)
    ref, victim, want = truncated_reference(aged, repo, t[0])
    (repo / SEALS / ref.name).write_text(_engine.btrfs_seal(ref) + "\n")
    summary = backup_into(aged, repo, clock=t[1])
    cur = snapshots(repo)[-1]
    assert len(message_file(cur, victim).read_bytes()) == len(want) // 2
    assert summary["transfer"]["copied"] == 0 and summary["transfer"]["reused"] >= summary["transfer"]["messages"]
    # The seal of the new snapshot is noted in turn.
    assert (repo / SEALS / cur.name).read_text().strip() == _engine.btrfs_seal(cur)


def _note_as_symlink(note: Path, seal: str) -> None:
    # A note the repository did not write as a file: never followed, however right its content.
    held = note.with_name("elsewhere")
    held.write_text(seal + "\n")
    note.symlink_to(held.name)


@pytest.mark.parametrize(
    "broken",
    {
        # The note a backup killed between making the snapshot read-only and noting it leaves.
        "missing": lambda note, seal: None,
        # The matching seal followed by more than a note's bound: never read past it.
        "oversized": lambda note, seal: note.write_text(seal + "\n" + " " * MAX_SEAL_BYTES),
        "symlink": _note_as_symlink,
        "directory": lambda note, seal: note.mkdir(),
    }.items(),
    ids=lambda item: item[0],
)
def test_a_seal_note_that_cannot_be_read_keeps_nothing_unlooked_at(aged, btrfs, broken):
    # The forged-seal test's set-up (a truncated reference whose note would match), with the note
    # then made unreadable: the nightly checks each proven file as without a seal, and copies the
    # truncated one again.
    repo = btrfs / "repo"
    t = start_times(2)
    ref, victim, want = truncated_reference(aged, repo, t[0])
    note = repo / SEALS / ref.name
    note.unlink()
    broken[1](note, _engine.btrfs_seal(ref))
    summary = backup_into(aged, repo, clock=t[1])
    cur = snapshots(repo)[-1]
    assert message_file(cur, victim).read_bytes() == want
    assert summary["transfer"]["copied"] == 1 and summary["status"] == "ok"
    assert run_cli("verify", cur).returncode == 0


def test_a_seal_that_cannot_be_noted_is_a_warning(aged, btrfs):
    # REPO/.seals a file, not a directory: no seal can be noted. Each snapshot is still complete
    # and read-only, the run ok (exit 0) with the warning `seal`; the next checks each of its
    # reference's files; prune leaves the file alone.
    repo = btrfs / "repo"
    init_ok(repo)
    (repo / SEALS).write_text("not a directory\n")
    for night, clock in enumerate(start_times(2)):
        if night:
            churn(aged)
        events: list[dict] = []
        summary = backup_into(aged, repo, events=events, clock=clock)
        assert summary["status"] == "ok"
        [warning] = [e for e in events if e.get("code") == "seal"]
        assert "cannot note the read-only snapshot's seal" in warning["cause"], warning
        snap = snapshots(repo)[-1]
        assert _engine.btrfs_seal(snap) is not None, "the snapshot is read-only all the same"
        assert run_cli("verify", snap).returncode == 0
    assert digests_hold(snapshots(repo)[-1]) > 0
    p = run_cli("prune", "--json", repo, "--keep-last", "1", "--no-nice")
    assert p.returncode == 0, p.stdout + p.stderr
    assert len(snapshots(repo)) == 1
    assert (repo / SEALS).read_text() == "not a directory\n"


@pytest.mark.parametrize("racy", [RACY_LIMIT, RACY_LIMIT + 1])
def test_a_reference_with_too_many_racy_files_keeps_nothing_unlooked_at(tmp_path, btrfs, racy):
    # The reference's run copies ``racy`` message files written within its window (their mtime
    # later than its start: a store's owner touching files) and one older one, the victim, which
    # is then truncated in the reference and the seal forged to match (as in the forged-seal
    # test). Up to RACY_LIMIT the index entry lists the racy IDs and the victim, proven and
    # not racy, is kept unlooked at; beyond it the entry is null and every proven file is checked.
    store = make_store(tmp_path / "store", messages=RACY_LIMIT * 11 // 10, accounts=1)
    age_tree(store)
    with Store.open(store, durable=False) as s:
        ids = sorted(s.account(ACC).messages())
    assert len(ids) >= racy + 2
    later = time.time_ns() + 3600 * 1_000_000_000
    for id_ in ids[-1 - racy : -1]:
        os.utime(message_file(store, id_), ns=(later, later))
    repo = btrfs / "repo"
    t = start_times(2)
    ref, victim, want = truncated_reference(store, repo, t[0])
    assert victim == ids[-1]
    listed = manifest_of(ref)["databases"][f"accounts/{ACC}/index.db"]["racy"]
    assert listed == (ids[-1 - racy : -1] if racy <= RACY_LIMIT else None)
    (repo / SEALS / ref.name).write_text(_engine.btrfs_seal(ref) + "\n")
    summary = backup_into(store, repo, clock=t[1])
    held = message_file(snapshots(repo)[-1], victim).read_bytes()
    if racy <= RACY_LIMIT:
        assert held == want[: len(want) // 2]
        assert summary["transfer"]["copied"] == racy
    else:
        assert held == want
        assert summary["transfer"]["copied"] == racy + 1


def test_prune_deletes_the_subvolume(aged, btrfs):
    repo = btrfs / "repo"
    init_ok(repo)
    t = start_times(2)
    backup_into(aged, repo, clock=t[0])
    churn(aged)
    backup_into(aged, repo, clock=t[1])
    old, keep = snapshots(repo)
    old_id = subvolume_info(old)["Subvolume ID"]
    p = run_cli("prune", "--json", repo, "--keep-last", "1", "--no-nice")
    assert p.returncode == 0, p.stdout + p.stderr
    summary = json.loads(p.stdout.splitlines()[-1])
    assert summary["subvolumes_deleted"] == 1 and summary["deleted"] == [old.name]
    assert snapshots(repo) == [keep] and os.listdir(repo / ".trash") == []
    assert os.listdir(repo / SEALS) == [keep.name], "the seal goes with its snapshot"
    # Gone from the tree at once; the kernel's cleaner frees it in the background.
    subprocess.run(["btrfs", "subvolume", "sync", str(btrfs), old_id], check=True, capture_output=True)
    listed = subprocess.run(["btrfs", "subvolume", "list", str(btrfs)], check=True, capture_output=True, text=True).stdout
    assert f"ID {old_id} " not in listed
    assert run_cli("verify", keep).returncode == 0


def test_a_marker_without_a_method_keeps_hardlinking_on_btrfs(aged, btrfs):
    repo = btrfs / "repo"
    init_ok(repo)
    marker = json.loads((repo / MARKER).read_text())
    del marker["method"]  # as a mailbak before the choice wrote it
    (repo / MARKER).write_text(json.dumps(marker))
    t = start_times(2)
    backup_into(aged, repo, clock=t[0])
    new, _ = churn(aged)
    second = backup_into(aged, repo, clock=t[1])
    ref, cur = snapshots(repo)
    assert os.stat(cur).st_ino != SUBVOLUME_ROOT and not _engine.btrfs_is_subvolume(cur)
    assert "removed" not in second["transfer"]
    # Unchanged messages are hardlinks of the reference's files.
    with Store.open(aged, durable=False) as s:
        some = min(s.account(ACC).messages())
    assert message_file(cur, some).stat().st_ino == message_file(ref, some).stat().st_ino
    assert message_file(cur, some).stat().st_nlink == 2
    p = run_cli("prune", "--json", repo, "--keep-last", "1", "--no-nice")
    assert p.returncode == 0, p.stdout + p.stderr
    summary = json.loads(p.stdout.splitlines()[-1])
    assert summary["subvolumes_deleted"] == 0 and summary["files_deleted"] > 0
    assert snapshots(repo) == [cur]


@pytest.mark.parametrize("proof", [True, False])
def test_without_the_indexes_proof_every_message_is_compared_with_the_store(aged, btrfs, proof):
    # A message file rewritten in the store behind its index's back (same size, new bytes and
    # time): while the reference's index proves the message, the clone's file is kept unlooked-
    # at (the trust the format gives, as with hardlinks); when the proof is unavailable (here:
    # a reference that recorded no index file identity, as an older mailbak made it), the
    # message is compared with the store's file by size and time and copied again.
    repo = btrfs / "repo"
    init_ok(repo)
    t = start_times(2)
    backup_into(aged, repo, clock=t[0])
    [ref] = snapshots(repo)
    if not proof:
        doc = manifest_of(ref)
        for db in doc["databases"].values():
            del db["source_inode"]
        _engine.btrfs_set_readonly(ref, False)
        (ref / "mailbak.json").write_text(json.dumps(doc))
        _engine.btrfs_set_readonly(ref, True)
    with Store.open(aged, durable=False) as s:
        victim = min(s.account(ACC).messages())
    path = message_file(aged, victim)
    old = path.read_bytes()
    path.write_bytes(bytes(b ^ 1 for b in old))
    events: list[dict] = []
    summary = backup_into(aged, repo, events=events, clock=t[1])
    cur = snapshots(repo)[-1]
    held = message_file(cur, victim).read_bytes()
    assert held == (old if proof else path.read_bytes())
    assert summary["accounts"][ACC]["copied"] == (0 if proof else 1)
    assert bool([e for e in events if e.get("code") == "reference_index"]) is not proof
    assert run_cli("verify", cur).returncode == 0


def test_a_snapshot_killed_while_set_up_is_never_listed_and_pruned(aged, btrfs):
    # The clone of the reference still holds the reference's manifest (ok) until the backup
    # replaces it: it lives under a name no listing takes for a snapshot until then, and one a
    # killed run left is removed by the next prune.
    repo = btrfs / "repo"
    init_ok(repo)
    t = start_times(2)
    backup_into(aged, repo, clock=t[0])
    [ref] = snapshots(repo)
    fd = os.open(repo, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _engine.btrfs_snapshot(ref, fd, b".new-2026-01-01T000000Z-99999")
    finally:
        os.close(fd)
    p = run_cli("snapshots", "--json", repo)
    assert [json.loads(line)["name"] for line in p.stdout.splitlines() if '"snapshot"' in line] == [ref.name]
    second = backup_into(aged, repo, clock=t[1])
    assert second["reference"] == str(ref)
    p = run_cli("prune", "--json", repo, "--keep-last", "2", "--no-nice")
    assert p.returncode == 0, p.stdout + p.stderr
    summary = json.loads(p.stdout.splitlines()[-1])
    assert summary["subvolumes_deleted"] == 1
    assert sorted(os.listdir(repo)) == sorted([MARKER, ".trash", SEALS, ref.name, second["snapshot"]])


def test_a_clone_without_digests_keeps_none_of_the_references(aged, btrfs):
    repo = btrfs / "repo"
    init_ok(repo)
    t = start_times(2)
    backup_into(aged, repo, clock=t[0])
    churn(aged)
    summary = backup_into(aged, repo, "--no-digests", clock=t[1])
    cur = snapshots(repo)[-1]
    assert "digests" not in summary
    assert sorted(os.listdir(cur)) == ["config", "data", "mailbak.json"]
    assert run_cli("verify", cur).returncode == 0


def test_check_reads_each_snapshots_own_files(aged, btrfs):
    # A clone keeps the inode numbers of the reference's files, but each subvolume is a device
    # of its own: check (keyed by device and inode) reads every snapshot's files, none answered
    # for another's, and damage in one snapshot's file is that snapshot's alone (the clone's
    # file kept the old extents).
    repo = btrfs / "repo"
    init_ok(repo)
    t = start_times(2)
    first = backup_into(aged, repo, clock=t[0])
    backup_into(aged, repo, clock=t[1])
    ref, cur = snapshots(repo)
    p = run_cli("check", "--json", "--read-data", repo)
    assert p.returncode == 0, p.stdout + p.stderr
    s = json.loads(p.stdout.splitlines()[-1])
    assert s["status"] == "clean" and s["snapshots"] == 2 and s["damaged"] == 0
    assert s["inodes_read"] >= 2 * first["transfer"]["messages"], "no file of one snapshot stands for another's"
    with Store.open(aged, durable=False) as st:
        victim = min(st.account(ACC).messages())
    assert message_file(ref, victim).stat().st_ino == message_file(cur, victim).stat().st_ino
    _engine.btrfs_set_readonly(ref, False)
    with open(message_file(ref, victim), "r+b") as f:
        b = f.read(1)
        f.seek(0)
        f.write(bytes([b[0] ^ 0xFF]))
    _engine.btrfs_set_readonly(ref, True)
    p = run_cli("check", "--json", "--read-data", repo)
    assert p.returncode == 1, p.stdout + p.stderr
    s = json.loads(p.stdout.splitlines()[-1])
    assert s["damaged"] == 1
    [d] = s["damage"]
    assert d["snapshots"] == [ref.name] and d["id"] == victim
    # Repair writes into that one snapshot: its subvolume is made writable for the re-point and
    # read-only again, the store's good copy replaces the damaged file, and the history is clean.
    p = run_cli("check", "--json", "--repair", repo)
    assert p.returncode == 1, p.stdout + p.stderr  # damage was found (and healed)
    s = json.loads(p.stdout.splitlines()[-1])
    assert [r["source"] for r in s["repairs"]] == ["store"], s["repairs"]
    assert _engine.btrfs_is_readonly(ref) and _engine.btrfs_is_readonly(cur)
    assert message_file(ref, victim).read_bytes() == message_file(aged, victim).read_bytes()
    p = run_cli("check", "--json", "--read-data", repo)
    assert p.returncode == 0, p.stdout + p.stderr

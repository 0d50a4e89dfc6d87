"""Digests recorded by backup (docs/FORMAT.md, "Digests"): every regular file of a backup has a
SHA-256 in ``digests/``, equal to what ``hashlib`` computes from the file's bytes; unchanged
shards are hardlinks of the reference's; damage to a digest file is told from damage to a file."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
from conftest import backup_into, backup_ok, make_store, manifest_of, run_cli, start_times
from mailbak import digests
from mailbak.digests import DigestError, Entry, How
from mailbak.layout import message_rel
from mailbak.store import Store


def all_entries(backup: Path) -> tuple[dict[str, Entry], dict[tuple[str, int], Entry]]:
    """(files by path, messages by (area, ID)) of a backup's digests, every file parsed."""
    root = os.open(backup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        files = {e.key.decode("utf-8", "surrogateescape"): e for e in digests.read(root, "digests/files", shard=False)}
        messages: dict[tuple[str, int], Entry] = {}
        base = backup / "digests"
        for area_dir in [base / "queue", *sorted((base / "accounts").iterdir())]:
            if not area_dir.is_dir():
                continue
            area = area_dir.relative_to(base).as_posix()
            for shard in area_dir.iterdir():
                for e in digests.read(root, f"digests/{area}/{shard.name}", shard=True):
                    assert digests.shard_of(e.key) == int(shard.name)
                    messages[(area, e.key)] = e
        return files, messages
    finally:
        os.close(root)


def sha(path: Path) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()


def regular_files(backup: Path) -> set[str]:
    """Every regular file of a backup below config/ and data/ (its own manifest and digests aside)."""
    out = set()
    for top in ("config", "data"):
        for dirpath, _dirs, names in os.walk(backup / top):
            for n in names:
                p = Path(dirpath) / n
                if p.is_file() and not p.is_symlink():
                    out.add(p.relative_to(backup).as_posix())
    return out


def message_path(area: str, mid: int) -> str:
    """The path of message ``mid`` of ``area`` (``accounts/NAME``) below a backup's root."""
    tree = "msg/" if area.startswith("accounts/") else ""
    return f"data/{area}/{tree}{message_rel(mid)}"


def test_every_file_of_a_backup_has_its_sha256_and_the_manifest_says_so(store: Path, shm_dir: Path):
    dest = shm_dir / "b"
    backup_ok(store, dest)
    files, messages = all_entries(dest)
    # Every regular file is covered exactly once: messages by shard, the rest by path.
    covered = set(files) | {message_path(a, i) for a, i in messages}
    assert covered == regular_files(dest)
    assert not set(files) & {message_path(a, i) for a, i in messages}
    for rel, e in [*files.items(), *((message_path(a, i), e) for (a, i), e in messages.items())]:
        # Copies (another file system) are hashed from what was written.
        assert (e.how, e.digest, e.size) == (How.WRITTEN, sha(dest / rel), (dest / rel).stat().st_size), rel
    assert {"data/auth.db", "data/queue/index.db", "config/mailstore.toml"} <= set(files)
    facts = manifest_of(dest)["digests"]
    assert facts["algorithm"] == "sha256" and facts["format"] == 1
    assert (facts["files"], facts["messages"], facts["pending"]) == (len(files), len(messages), 0)
    assert facts["bytes_written"] == sum(p.stat().st_size for p in (dest / "digests").rglob("*") if p.is_file())


def test_messages_linked_from_the_store_are_recorded_without_a_digest(store: Path, tmp_path: Path):
    dest = tmp_path / "b"  # the store's file system: message files are the store's own inodes
    backup_ok(store, dest)
    _files, messages = all_entries(dest)
    assert messages and all(e.how == How.NONE and e.digest is None for e in messages.values())
    for (area, mid), e in messages.items():
        assert e.size == (dest / message_path(area, mid)).stat().st_size
    assert manifest_of(dest)["digests"]["pending"] == len(messages)


def test_a_nightly_snapshot_links_unchanged_shards_and_writes_only_what_changed(tmp_path: Path, repo: Path):
    store = make_store(tmp_path / "store", messages=600, accounts=2)
    # Files are reused only when older than the reference's start less 2 s: age the store.
    an_hour_ago = time.time() - 3600
    for p in store.rglob("*"):
        os.utime(p, (an_hour_ago, an_hour_ago), follow_symlinks=False)
    t = start_times(3)
    backup_into(store, repo, clock=t[0])
    backup_into(store, repo, clock=t[1])
    first, second = sorted(p for p in repo.iterdir() if p.name[0].isdigit())
    account = sorted((store / "data/accounts").iterdir())[0].name
    with Store.open(store) as s:
        new_id = s.account(account).deliver(s.account(account).mailbox_id("Inbox"), b"Subject: new\r\n\r\nnew mail\r\n")
    summary = backup_into(store, repo, clock=t[2])
    third = repo / summary["snapshot"]
    facts = manifest_of(third)["digests"]
    # The new message's shard is written anew; every other shard is the reference's inode.
    changed = third / "digests/accounts" / account / str(digests.shard_of(new_id))
    shard_files = [p for p in (third / "digests").rglob("*") if p.is_file() and p.name != digests.FILES]
    linked = {p for p in shard_files if p.stat().st_nlink > 1}
    assert changed.stat().st_nlink == 1 and changed not in linked
    assert facts["shards_written"] == 1 and facts["shards_linked"] == len(shard_files) - 1 == len(linked)
    for p in linked:
        assert p.stat().st_ino == (second / p.relative_to(third)).stat().st_ino
    _files, messages = all_entries(third)
    e = messages[(f"accounts/{account}", new_id)]
    assert (e.how, e.digest) == (How.WRITTEN, sha(third / message_path(f"accounts/{account}", new_id)))
    # The rewritten shard inherits the reference's entries for the messages it reused.
    _f2, ref_messages = all_entries(second)
    for key, entry in messages.items():
        if key in ref_messages:
            assert entry == ref_messages[key]
    # What this snapshot's digests add: the new shard and the list of plain files, nothing more.
    assert facts["bytes_written"] == changed.stat().st_size + (third / "digests/files").stat().st_size
    assert manifest_of(first)["digests"]["shards_linked"] == 0


def test_a_damaged_digest_file_is_damage_of_the_digest_file_never_of_a_message(store: Path, shm_dir: Path):
    dest = shm_dir / "b"
    backup_ok(store, dest)
    shard = next(p for p in (dest / "digests/accounts").rglob("*") if p.is_file())
    data = bytearray(shard.read_bytes())
    # A flipped digit inside a digest: the file's own checksum catches it.
    data[60] ^= 0x01
    shard.write_bytes(bytes(data))
    root = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(DigestError, match="checksum"):
            digests.read(root, shard.relative_to(dest).as_posix(), shard=True)
        shard.write_bytes(bytes(data[: len(data) // 2]))
        with pytest.raises(DigestError):
            digests.read(root, shard.relative_to(dest).as_posix(), shard=True)
        shard.unlink()
        shard.symlink_to(dest / "digests/files")
        with pytest.raises(DigestError):
            digests.read(root, shard.relative_to(dest).as_posix(), shard=True)
    finally:
        os.close(root)


def test_hostile_names_round_trip_through_files(tmp_path: Path, shm_dir: Path):
    store = make_store(tmp_path / "store", messages=30, accounts=1)
    odd = store / "data" / "odd name\nwith %25 and \xe9"
    odd.write_bytes(b"stray")
    dest = shm_dir / "b"
    p = run_cli("backup", store, dest)
    assert p.returncode == 0, p.stderr
    files, _ = all_entries(dest)
    e = files["data/odd name\nwith %25 and \xe9"]
    assert (e.digest, e.size) == (hashlib.sha256(b"stray").digest(), 5)


def test_no_digests_records_nothing(store: Path, shm_dir: Path):
    dest = shm_dir / "b"
    backup_ok(store, dest, "--no-digests")
    assert not (dest / "digests").exists()
    assert "digests" not in manifest_of(dest)

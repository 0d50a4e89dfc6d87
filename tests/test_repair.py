"""Healing damaged inodes of a repository (repairer.heal, the repair half of `check --repair`),
on real file systems: the store under the test's tmp directory (ext4), the repository on
/dev/shm (another disk, so message files are copied, not hardlinked from the store), three
snapshots sharing every unchanged message file; off-site healing through Debian's restic and a
local restic repository filled by `mailbak offsite push`.

The damage is made as bit rot makes it: one byte flipped in place, size and mtime as they were.
The Damage is built by hand, as check builds it (the recorded digest is the SHA-256 of the
store's good file).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import CLI_ENV, backup_into, flip_byte, make_store, start_times
from mailbak.gen import age_tree
from mailbak.layout import message_rel
from mailbak.repairer import SINGLE_BLOB_LIMIT, Damage, heal
from mailbak.report import Reporter
from mailbak.repository import Repository
from mailbak.restic import ResticConfig
from mailbak.store import Store

ACC = "user0000"
RESTIC = shutil.which("restic")


@dataclass
class History:
    store: Path
    repo: Path
    #: Snapshot names, newest first.
    names: list[str]
    #: A message of ACC over 512 KiB (several restic blobs).
    big: int
    #: The other messages of ACC.
    ids: list[int]


@pytest.fixture
def history(tmp_path, repo) -> History:
    """Three snapshots of an unchanging store: every message file is one inode in all three."""
    store = make_store(tmp_path / "store", messages=40, accounts=2)
    with Store.open(store, durable=False) as s:
        acc = s.account(ACC)
        ids = sorted(acc.messages())
        big = acc.deliver(acc.mailbox_id("Inbox"), b"Subject: big\r\n\r\n" + os.urandom(SINGLE_BLOB_LIMIT + 300_000))
    age_tree(store)
    names = [backup_into(store, repo, clock=t)["snapshot"] for t in start_times(3)]
    return History(store, repo, names[::-1], big, ids)


def rel_of(id_: int) -> str:
    return f"data/accounts/{ACC}/msg/{message_rel(id_)}"


def damage(h: History, id_: int) -> Damage:
    """Rots message ``id_`` in the repository (the one inode its three snapshots share) and
    returns the Damage check would hand over."""
    rel = rel_of(id_)
    sts = [(h.repo / n / rel).lstat() for n in h.names]
    assert len({(s.st_dev, s.st_ino) for s in sts}) == 1, "the three snapshots share the message's inode"
    good = (h.store / rel).read_bytes()
    flip_byte(h.repo / h.names[0] / rel)
    assert (h.repo / h.names[0] / rel).read_bytes() != good
    return Damage(ACC, id_, rel, len(good), hashlib.sha256(good).digest(), list(h.names), (sts[0].st_dev, sts[0].st_ino), "digest_mismatch")


def listing(root: Path) -> dict[str, tuple]:
    """rel -> (kind, inode, sha256 or link target) of everything below ``root``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", st.st_ino, os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", st.st_ino, hashlib.sha256(p.read_bytes()).hexdigest())
            else:
                out[rel] = ("dir", st.st_ino, None)
    return out


def assert_healed(h: History, d: Damage, before: dict[str, tuple], healed_names: list[str]) -> None:
    """Each of ``healed_names``' paths holds one new inode with the good bytes and the damaged
    file's mode, owner and mtime; the damaged inode is in no path of the repository; nothing
    else changed."""
    after = listing(h.repo)
    new = {after[f"{n}/{d.rel}"][1] for n in healed_names}
    assert len(new) == 1 and d.inode[1] not in new
    st = (h.repo / healed_names[0] / d.rel).lstat()
    assert hashlib.sha256((h.repo / healed_names[0] / d.rel).read_bytes()).digest() == d.digest
    assert st.st_nlink == len(healed_names), "no temporary name is left holding the new inode"
    old = before[f"{healed_names[0]}/{d.rel}"]
    assert old[1] == d.inode[1]
    changed = {rel for rel in set(before) | set(after) if before.get(rel) != after.get(rel)}
    assert changed == {f"{n}/{d.rel}" for n in healed_names}, "nothing else in the repository changed"
    assert all(v[1] != d.inode[1] for rel, v in after.items() if v[0] == "file" and rel.split("/", 1)[0] in healed_names)


def test_heal_from_the_store_repoints_every_snapshot_to_one_new_inode(history):
    h = history
    d = damage(h, h.ids[3])
    old = (h.repo / h.names[0] / d.rel).lstat()
    before = listing(h.repo)
    reporter = Reporter()
    [r] = heal(Repository.open(h.repo), [d], store=None, offsite=None, reporter=reporter)
    assert r.source == "store" and r.repointed == h.names and r.complete, r
    assert "3 snapshot path(s) re-pointed" in r.detail
    assert_healed(h, d, before, h.names)
    st = (h.repo / h.names[2] / d.rel).lstat()
    assert (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns) == (old.st_mode, old.st_uid, old.st_gid, old.st_mtime_ns)
    assert reporter.counts.errors == 0 and reporter.counts.warnings == 0
    # Healed twice: the damaged inode is in no path any more; nothing is touched.
    again = listing(h.repo)
    [r2] = heal(Repository.open(h.repo), [d], store=None, offsite=None, reporter=Reporter())
    assert r2.source is None and "no snapshot path holds the damaged file any more" in r2.detail
    assert listing(h.repo) == again


def test_heal_from_a_store_named_by_the_caller(history, tmp_path):
    h = history
    d = damage(h, h.ids[0])
    # The manifests' store is gone (moved): only the one the caller names is read.
    moved = tmp_path / "moved-store"
    h.store.rename(moved)
    before = listing(h.repo)
    [r] = heal(Repository.open(h.repo), [d], store=None, offsite=None, reporter=Reporter())
    assert r.source is None and str(h.store) in r.detail and listing(h.repo) == before
    [r] = heal(Repository.open(h.repo), [d], store=moved, offsite=None, reporter=Reporter())
    assert r.source == "store" and r.complete
    assert_healed(h, d, before, h.names)


def test_no_good_copy_anywhere_is_reported_and_nothing_is_touched(history):
    h = history
    removed = damage(h, h.ids[1])
    (h.store / removed.rel).unlink()
    rotten = damage(h, h.ids[2])
    flip_byte(h.store / rotten.rel, 0)  # the store's copy rotted too: same size, other bytes
    before = listing(h.repo)
    reporter = Reporter()
    results = heal(Repository.open(h.repo), [removed, rotten], store=None, offsite=None, reporter=reporter)
    assert [r.source for r in results] == [None, None] and not any(r.repointed for r in results)
    assert "no good copy" in results[0].detail and "no such file" in results[0].detail
    assert "do not have the recorded digest" in results[1].detail
    assert all("no off-site repository configured" in r.detail for r in results)
    assert listing(h.repo) == before, "the damaged files are left as they were, no temporary file remains"
    assert reporter.counts.errors == 2


def test_a_store_file_of_another_size_is_no_good_copy(history):
    h = history
    d = damage(h, h.ids[4])
    with open(h.store / d.rel, "ab") as f:
        f.write(b"x")
    before = listing(h.repo)
    [r] = heal(Repository.open(h.repo), [d], store=None, offsite=None, reporter=Reporter())
    assert r.source is None and f"{d.size + 1} bytes, recorded {d.size}" in r.detail
    assert listing(h.repo) == before


def test_paths_changed_since_check_are_left_and_nothing_outside_is_touched(history, tmp_path, victim):
    h = history
    d = damage(h, h.ids[5])
    newest, middle, oldest = h.names
    # The middle snapshot's path is now a symlink to a file outside the repository...
    (h.repo / middle / d.rel).unlink()
    (h.repo / middle / d.rel).symlink_to(victim)
    # ... and the oldest one's message directory a symlink to a directory outside.
    outside = tmp_path / "outside"
    shutil.copytree(h.repo / oldest / d.rel.rsplit("/", 1)[0], outside)
    msg_dir = h.repo / oldest / d.rel.rsplit("/", 1)[0]
    shutil.rmtree(msg_dir)
    msg_dir.symlink_to(outside)
    outside_before, victim_before = listing(outside), victim.read_bytes()
    before = listing(h.repo)
    reporter = Reporter()
    [r] = heal(Repository.open(h.repo), [d], store=None, offsite=None, reporter=reporter)
    assert r.source == "store" and r.repointed == [newest] and not r.complete
    assert f"{middle}: a symlink now" in r.detail and f"{oldest}: a symlink or not a directory on the way" in r.detail
    assert_healed(h, d, before, [newest])
    assert listing(outside) == outside_before and victim.read_bytes() == victim_before
    assert os.readlink(h.repo / middle / d.rel) == str(victim)
    assert reporter.counts.warnings == 1 and reporter.counts.errors == 0


def test_a_path_outside_the_snapshot_is_refused(history):
    h = history
    d = damage(h, h.ids[6])
    bad = Damage(d.area, d.id, "data/../../" + d.rel, d.size, d.digest, d.snapshots, d.inode, d.cause)
    before = listing(h.repo)
    [r] = heal(Repository.open(h.repo), [bad], store=None, offsite=None, reporter=Reporter())
    assert r.source is None and "not a path below a snapshot" in r.detail
    assert listing(h.repo) == before


def test_a_message_hardlinked_from_the_store_is_not_its_own_good_copy(tmp_path):
    """On the store's file system, the first snapshot hardlinks message files from the store:
    the store's file is then the damaged inode itself."""
    store = make_store(tmp_path / "store", messages=20, accounts=1)
    repo = tmp_path / "repo"
    p = subprocess.run([sys.executable, "-m", "mailbak", "init", str(repo)], capture_output=True, text=True, env=CLI_ENV)
    assert p.returncode == 0, p.stderr
    name = backup_into(store, repo)["snapshot"]
    with Store.open(store, durable=False) as s:
        id_ = sorted(s.account(ACC).messages())[0]
    rel = rel_of(id_)
    st = (repo / name / rel).lstat()
    assert st.st_ino == (store / rel).lstat().st_ino, "hardlinked from the store"
    good = (store / rel).read_bytes()
    flip_byte(repo / name / rel)
    d = Damage(ACC, id_, rel, len(good), hashlib.sha256(good).digest(), [name], (st.st_dev, st.st_ino), "digest_mismatch")
    [r] = heal(Repository.open(repo), [d], store=None, offsite=None, reporter=Reporter())
    assert r.source is None and "is the damaged file itself" in r.detail


# Off-site ------------------------------------------------------------------------------------


@dataclass
class Offsite:
    config: ResticConfig
    env: dict[str, str]


def restic_repo(tmp_path: Path, monkeypatch) -> Offsite:
    assert RESTIC is not None, "restic is installed by `make setup` (scripts/system-deps)"
    pw = tmp_path / "restic-password"
    pw.write_text("repair-test-password\n")
    env = {**CLI_ENV, "RESTIC_PASSWORD_FILE": str(pw), "RESTIC_REPOSITORY": str(tmp_path / "restic-repo"), "RESTIC_CACHE_DIR": str(tmp_path / "restic-cache")}
    for v in ("RESTIC_PASSWORD", "RESTIC_PASSWORD_COMMAND", "RESTIC_REPOSITORY_FILE"):
        env.pop(v, None)
    p = subprocess.run([RESTIC, "init"], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    # heal() runs restic in this process's environment: its cache too belongs to the test.
    monkeypatch.setenv("RESTIC_CACHE_DIR", env["RESTIC_CACHE_DIR"])
    return Offsite(ResticConfig(repo=env["RESTIC_REPOSITORY"], password_file=pw), env)


def offsite_push(h: History, o: Offsite, *args: str) -> None:
    p = subprocess.run([sys.executable, "-m", "mailbak", "offsite", "push", "-q", str(h.repo), *args], capture_output=True, text=True, env=o.env, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.slow
def test_heal_from_offsite_when_the_store_copy_is_gone(history, tmp_path, monkeypatch):
    h = history
    o = restic_repo(tmp_path, monkeypatch)
    offsite_push(h, o)
    small = damage(h, h.ids[7])
    (h.store / small.rel).unlink()  # the store's copy gone: restic cat blob by its digest
    big = damage(h, h.big)
    assert big.size > SINGLE_BLOB_LIMIT
    flip_byte(h.store / big.rel, 10)  # the store's copy rotted too: restic dump of the pushed snapshot
    before = listing(h.repo)
    reporter = Reporter()
    results = heal(Repository.open(h.repo), [small, big], store=None, offsite=o.config, reporter=reporter)
    assert [r.source for r in results] == ["offsite", "offsite"], results
    assert all(r.repointed == h.names and r.complete for r in results)
    after = listing(h.repo)
    for d in (small, big):
        new = {after[f"{n}/{d.rel}"][1] for n in h.names}
        assert len(new) == 1 and d.inode[1] not in new
        assert hashlib.sha256((h.repo / h.names[1] / d.rel).read_bytes()).digest() == d.digest
    changed = {rel for rel in set(before) | set(after) if before.get(rel) != after.get(rel)}
    assert changed == {f"{n}/{d.rel}" for n in h.names for d in (small, big)}
    assert reporter.counts.errors == 0
    # The store was only read.
    assert not (h.store / small.rel).exists()


@pytest.mark.slow
def test_offsite_copies_of_damaged_bytes_or_unpushed_snapshots_do_not_heal(history, tmp_path, monkeypatch):
    h = history
    o = restic_repo(tmp_path, monkeypatch)
    # Damaged before the push: off-site holds the rotten bytes, under another blob ID.
    small = damage(h, h.ids[8])
    big = damage(h, h.big)
    offsite_push(h, o, h.names[2])  # only the oldest snapshot is off-site
    for d in (small, big):
        (h.store / d.rel).unlink()
    before = listing(h.repo)
    # The big file's newest two snapshots alone: none of them was pushed.
    unpushed = Damage(big.area, big.id, big.rel, big.size, big.digest, h.names[:2], big.inode, big.cause)
    results = heal(Repository.open(h.repo), [small, big, unpushed], store=None, offsite=o.config, reporter=Reporter())
    assert [r.source for r in results] == [None, None, None]
    assert "restic cat blob" in results[0].detail
    assert "restic snapshot " in results[1].detail and "do not have the recorded digest" in results[1].detail
    assert "none of its snapshots was pushed: not healable off-site" in results[2].detail
    assert listing(h.repo) == before


# offsite check ---------------------------------------------------------------------------------


def offsite_check(h: History, o: Offsite, *args: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    p = subprocess.run([sys.executable, "-m", "mailbak", "offsite", "check", "--json", str(h.repo), *args], capture_output=True, text=True, env=o.env, timeout=300)
    assert "Traceback" not in p.stderr, p.stderr
    return p, [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_offsite_check_clean_after_a_push_then_names_a_message_damaged_before_its_push(history, tmp_path, monkeypatch):
    h = history
    o = restic_repo(tmp_path, monkeypatch)
    offsite_push(h, o, h.names[2])
    p, out = offsite_check(h, o)
    assert p.returncode == 0, p.stdout + p.stderr
    s = out[-1]
    assert s["message_type"] == "summary" and s["status"] == "clean" and s["snapshot"] == h.names[2]
    assert s["missing"] == s["differs"] == 0 and s["matched"] > 40 and s["size_only"] >= 1 and s["unverified"] == 0, s
    # Rotten before a first push (a later push against a parent would not read the file again:
    # same size, mtime and inode): off-site holds the rotten bytes, under another blob ID.
    d = damage(h, h.ids[9])
    second = tmp_path / "second"
    second.mkdir()
    o2 = restic_repo(second, monkeypatch)
    offsite_push(h, o2, h.names[0])
    p, out = offsite_check(h, o2)
    assert p.returncode == 1, p.stdout + p.stderr
    s = out[-1]
    assert s["snapshot"] == h.names[0] and s["differs"] == 1 and s["missing"] == 0
    assert s["problems"] == [{"area": ACC, "id": d.id, "path": d.rel, "problem": "differs", "detail": "the off-site copy's blob is not the recorded digest"}]
    errors = [e for e in out if e["message_type"] == "error"]
    assert [(e["code"], e["path"]) for e in errors] == [("offsite_differs", d.rel)]
    # The first restic repository's copy was pushed before the rot: it still matches.
    p, out = offsite_check(h, o)
    assert p.returncode == 0 and out[-1]["differs"] == 0


@pytest.mark.slow
def test_offsite_check_of_a_snapshot_not_pushed_says_so(history, tmp_path, monkeypatch):
    h = history
    o = restic_repo(tmp_path, monkeypatch)
    p, _ = offsite_check(h, o)
    assert p.returncode == 2 and "no snapshot of it is off-site" in p.stderr, p.stderr
    offsite_push(h, o, h.names[2])
    p, _ = offsite_check(h, o, h.names[0])
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines()[-1] == f"mailbak: error: {h.names[0]}: not pushed off-site (mailbak offsite push {h.repo} {h.names[0]} pushes it)"
    p, _ = offsite_check(h, o, "../etc")
    assert p.returncode == 2 and "not a snapshot name" in p.stderr

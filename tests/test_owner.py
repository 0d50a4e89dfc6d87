"""Root against a store whose owner is hostile (issue 14.1, 14.5) or merely not root (issue 9.1).

mailbak runs as root; everything in a store belongs to the mail server's user, who can plant
symlinks, hardlinks and FIFOs at any name in it. These tests own a store by uid 65534 (nobody),
attack from inside it, and check that root wrote nothing outside, never hung, and left every
file it created usable by that user.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CLI_ENV, NOBODY, chown_tree, make_store, manifest_of, nobodys_store, run_cli

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own a store by another user and to be attacked by it")


@pytest.fixture
def owned_store(tmp_path: Path) -> Path:
    """A store owned by nobody, below pytest's root-only tmp directory (so the owner's identity
    cannot reach it by path: mailbak must still work)."""
    return nobodys_store(tmp_path / "store", messages=60)


def run_op(op: str, store: Path, tmp_path: Path, **kw) -> subprocess.CompletedProcess:
    """`mailbak backup STORE DEST` or `mailbak verify STORE`."""
    if op == "backup":
        return run_cli("backup", store, tmp_path / "bk", **kw)
    return run_cli("verify", store, **kw)


# 14.1: lock files ------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["backup", "verify"])
def test_symlinked_lock_files_make_root_write_nothing(owned_store, victim, tmp_path, op):
    data = owned_store / "data"
    dangling = tmp_path / "created-by-root"
    for lock, target in [
        (data / "auth.db-lock", victim),
        (data / "accounts" / "user0000" / "index.db-lock", victim),
        (data / "queue" / "index.db-lock", dangling),
    ]:
        lock.unlink(missing_ok=True)
        os.symlink(target, lock)
    p = run_op(op, owned_store, tmp_path)
    assert p.returncode == 1, p.stdout + p.stderr
    assert victim.read_text() == "precious\n"
    assert not os.path.lexists(dangling)
    for rel, name in [("data/auth.db", "auth.db-lock"), ("data/accounts/user0000/index.db", "index.db-lock"), ("data/queue/index.db", "index.db-lock")]:
        assert f"{rel}: " in p.stderr and f"its lock file {name} is a symlink, not a regular file" in p.stderr, p.stderr
    if op == "backup":
        m = manifest_of(tmp_path / "bk")
        assert m["status"] == "failed"
        assert "auth.db" not in m["databases"] and "dmarcrpt.db" in m["databases"] and "accounts/user0001/index.db" in m["databases"]


@pytest.mark.parametrize("op", ["backup", "verify"])
def test_hardlinked_lock_file_is_refused_by_the_kernel(owned_store, victim, tmp_path, op):
    """A hardlink passes every check a path can get (a regular file at the lock path): only
    opening it as the store's owner keeps root from truncating what it points to."""
    lock = owned_store / "data" / "accounts" / "user0001" / "index.db-lock"
    lock.unlink(missing_ok=True)
    os.link(victim, lock)
    p = run_op(op, owned_store, tmp_path)
    assert p.returncode == 1, p.stdout + p.stderr
    assert victim.read_text() == "precious\n"
    assert "data/accounts/user0001/index.db: " in p.stderr and "as the store's owner, uid 65534" in p.stderr and "Permission denied" in p.stderr, p.stderr
    # Only that database: the others open as the owner although the store lies below a
    # directory only root may enter.
    assert "data/auth.db" not in p.stderr and "data/accounts/user0000/index.db" not in p.stderr, p.stderr
    if op == "backup":
        m = manifest_of(tmp_path / "bk")
        assert "auth.db" in m["databases"] and "accounts/user0000/index.db" in m["databases"]
        assert "accounts/user0001/index.db" not in m["databases"]


@pytest.mark.parametrize("op", ["backup", "verify"])
def test_lock_file_swapped_for_a_symlink_after_the_check(owned_store, victim, tmp_path, public_dir, op):
    """The race the lstat check cannot win: the lock file is a regular file when checked and a
    symlink to the victim when LMDB opens it (test pause point between the two)."""
    pause_dir = public_dir / "pause"
    pause_dir.mkdir()
    pause_dir.chmod(0o777)  # the pause point is reached with the owner's identity
    lock = owned_store / "data" / "auth.db-lock"  # the first database opened
    lock.unlink(missing_ok=True)
    lock.touch()
    os.lchown(lock, NOBODY.pw_uid, NOBODY.pw_gid)
    env = {**CLI_ENV, "MAILBAK_TEST_PAUSE": "lock_file_checked", "MAILBAK_TEST_PAUSE_DIR": str(pause_dir)}
    args = ["backup", owned_store, tmp_path / "bk"] if op == "backup" else ["verify", owned_store]
    proc = subprocess.Popen([sys.executable, "-m", "mailbak", *map(str, args)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (pause_dir / "lock_file_checked.reached").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the run never reached the pause point"
        time.sleep(0.01)
    lock.unlink()
    os.symlink(victim, lock)
    (pause_dir / "lock_file_checked.go").touch()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, out + err
    assert victim.read_text() == "precious\n"
    assert "data/auth.db: " in err and "Permission denied" in err, err


def test_lock_files_mailbak_creates_belong_to_the_database_owner(owned_store, tmp_path):
    data = owned_store / "data"
    (data / "auth.db").chmod(0o640)
    (data / "mtasts.db").chmod(0o600)
    locks = sorted(data.rglob("*.db-lock"))
    assert locks
    for lock in locks:
        lock.unlink()
    p = run_cli("verify", owned_store)
    assert p.returncode == 0, p.stdout + p.stderr
    created = sorted(data.rglob("*.db-lock"))
    assert created == locks
    for lock in created:
        st = lock.lstat()
        assert (st.st_uid, st.st_gid) == (NOBODY.pw_uid, NOBODY.pw_gid), lock
    assert stat.S_IMODE((data / "auth.db-lock").stat().st_mode) == 0o660
    assert stat.S_IMODE((data / "mtasts.db-lock").stat().st_mode) == 0o600


# 14.5: a FIFO as the lease file ----------------------------------------------------------------


@pytest.mark.parametrize("op", ["backup", "verify"])
def test_fifo_lease_file_does_not_hang(owned_store, tmp_path, op):
    lease = owned_store / "data" / "backup.lease"
    lease.unlink()
    os.mkfifo(lease, 0o640)
    os.lchown(lease, NOBODY.pw_uid, NOBODY.pw_gid)
    try:
        p = run_op(op, owned_store, tmp_path, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{op} hung on a FIFO lease file")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "data/backup.lease" in p.stderr and "not a regular file" in p.stderr, p.stderr
    assert stat.S_ISFIFO(lease.lstat().st_mode)


# 9.1: ownership -------------------------------------------------------------------------------


def owners_and_modes(root: Path) -> dict[str, tuple[int, int, int]]:
    """rel path -> (uid, gid, permission bits) of everything below root (symlinks themselves)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in [*dirnames, *filenames]:
            p = Path(dirpath) / n
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
    return out


WRITER = """
import os, sys
from pathlib import Path
import lmdb
from mailbak.store import Store
store, uid, gid = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
os.setgroups([])
os.setresgid(gid, gid, gid)
os.setresuid(uid, uid, uid)
for db in sorted(store.rglob("*.db")):
    env = lmdb.open(str(db), subdir=False, max_dbs=32)
    with env.begin(write=True) as txn:
        txn.put(b"mailbak-test", b"written by the server")
    env.close()
with Store.open(store, durable=False) as s:
    acc = s.account("user0000")
    print(acc.deliver(acc.mailbox_id("Inbox"), b"Subject: after restore\\r\\n\\r\\nhello\\r\\n"))
"""


def write_as_owner(store: Path) -> subprocess.CompletedProcess:
    """Opens every database read-write and delivers a message, as nobody (a child process that
    drops root's privileges before touching the store)."""
    return subprocess.run([sys.executable, "-c", WRITER, str(store), str(NOBODY.pw_uid), str(NOBODY.pw_gid)], capture_output=True, text=True, env=CLI_ENV, timeout=120)


def test_backup_verify_restore_keep_the_store_usable_by_its_owner(public_dir):
    src = make_store(public_dir / "store", messages=60, accounts=2)
    (src / "data" / "acme" / "link").symlink_to("keys")
    chown_tree(src, NOBODY.pw_uid, NOBODY.pw_gid)
    for lock in (src / "data").rglob("*.db-lock"):
        lock.unlink()  # so that mailbak creates them
    bk, restored = public_dir / "bk", public_dir / "restored"

    p = run_cli("backup", src, bk)
    assert p.returncode == 0, p.stdout + p.stderr
    # The backup keeps the store's owners (and modes, capped at 0770 for directories).
    src_owners = {k: v for k, v in owners_and_modes(src).items() if not k.endswith("-lock") and not k.startswith("data/tmp")}
    listing = owners_and_modes(bk)
    bk_owners = {k: v for k, v in listing.items() if k != "mailbak.json" and k.split("/")[0] != "digests"}
    assert set(bk_owners) == set(src_owners)
    # The digests are the backup's own: root's, for nobody else.
    digest_owners = {v for k, v in listing.items() if k.split("/")[0] == "digests"}
    assert digest_owners and {(uid, gid) for uid, gid, _ in digest_owners} == {(0, 0)}
    assert {mode & 0o077 for _, _, mode in digest_owners} == {0}
    for rel, (uid, gid, mode) in bk_owners.items():
        s_uid, s_gid, s_mode = src_owners[rel]
        assert (uid, gid) == (s_uid, s_gid), rel
        assert mode == (s_mode & 0o770 | 0o700 if stat.S_ISDIR((bk / rel).lstat().st_mode) else s_mode), rel
    assert run_cli("verify", src).returncode == 0
    assert run_cli("verify", bk).returncode == 0
    # Every lock file mailbak created in the store is the owner's.
    for lock in (src / "data").rglob("*.db-lock"):
        assert (lock.lstat().st_uid, lock.lstat().st_gid) == (NOBODY.pw_uid, NOBODY.pw_gid), lock

    p = run_cli("restore", bk, restored)
    assert p.returncode == 0, p.stdout + p.stderr
    got = owners_and_modes(restored)
    for rel, (uid, gid, mode) in got.items():
        if rel.endswith("-lock"):
            assert (uid, gid) == (NOBODY.pw_uid, NOBODY.pw_gid), rel
        elif rel == "data/tmp":
            assert (uid, gid, mode) == bk_owners["data"], rel
        else:
            assert (uid, gid, mode) == bk_owners[rel], rel
    root = restored.lstat()
    assert (root.st_uid, root.st_gid) == (NOBODY.pw_uid, NOBODY.pw_gid)
    assert (restored / "data" / "acme" / "link").is_symlink()

    w = write_as_owner(restored)
    assert w.returncode == 0, w.stderr
    assert int(w.stdout) > 0
    assert run_cli("verify", restored).returncode == 0


def test_restore_as_another_user_warns_once_about_owners(store, public_dir):
    bk = public_dir / "bk"
    assert run_cli("backup", store, bk).returncode == 0
    # The backup's files belong to nobody, but the restore runs as another user, uid 1, who may
    # read them through their group.
    chown_tree(bk, NOBODY.pw_uid, 1)
    for dirpath, dirnames, filenames in os.walk(bk):
        for n in [".", *dirnames, *filenames]:
            p = Path(dirpath) / n
            p.chmod(stat.S_IMODE(p.stat().st_mode) | (0o050 if p.is_dir() else 0o040))
    os.chown(public_dir, 1, 1)
    from types import SimpleNamespace

    from test_backup import run_as

    p = run_as(SimpleNamespace(pw_uid=1, pw_gid=1), "restore", bk, public_dir / "r")
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stderr.count("owners") == 1, p.stderr
    assert "uid 65534" in p.stderr
    assert (public_dir / "r" / "data" / "auth.db").stat().st_uid == 1


ATTACK = """
import os, sys
target, elsewhere = sys.argv[1], sys.argv[2]
os.setgroups([])
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
try:
    os.rename(os.path.join(target, "config"), os.path.join(target, "config.old"))
    os.symlink(elsewhere, os.path.join(target, "config"))
    print("swapped")
except OSError as e:
    print(type(e).__name__)
"""


def test_restore_into_a_directory_its_owner_controls(owned_store, tmp_path, public_dir):
    """STORE an existing empty directory of the server's user: while restore writes into it, that
    user must not be able to swap a directory restore created for a symlink elsewhere."""
    bk = tmp_path / "bk"
    assert run_cli("backup", owned_store, bk).returncode == 0
    target, elsewhere, pause_dir = public_dir / "target", public_dir / "elsewhere", public_dir / "pause"
    for d in (target, elsewhere, pause_dir):
        d.mkdir(mode=0o755)
        os.chown(d, NOBODY.pw_uid, NOBODY.pw_gid)
    env = {**CLI_ENV, "MAILBAK_TEST_PAUSE": "restore_target_held", "MAILBAK_TEST_PAUSE_DIR": str(pause_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "mailbak", "restore", str(bk), str(target)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (pause_dir / "restore_target_held.reached").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the run never reached the pause point"
        time.sleep(0.01)
    attack = subprocess.run([sys.executable, "-c", ATTACK, str(target), str(elsewhere)], capture_output=True, text=True, timeout=60)
    (pause_dir / "restore_target_held.go").touch()
    out, err = proc.communicate(timeout=300)
    assert attack.stdout.strip() == "PermissionError", attack.stdout + attack.stderr
    assert proc.returncode == 0, out + err
    assert os.listdir(elsewhere) == []
    assert (target / "config" / "mailstore.toml").is_file() and not (target / "config").is_symlink()
    st = target.lstat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY.pw_uid, NOBODY.pw_gid, 0o755)

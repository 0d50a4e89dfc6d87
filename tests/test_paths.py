"""Second paths into a store: bind mounts that lead the destination into the tree being copied,
areas replaced by symlinks between their check and their use, and lock files wherever they are.

Needs root (mount --bind), as the test suite runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import lmdb
import pytest
from conftest import CLI_ENV, backup_ok, manifest_of, run_cli


@contextmanager
def bind_mount(src: Path, target: Path):
    """``mount --bind src target`` for the duration of the block."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (mount --bind)")
    target.mkdir(exist_ok=True)
    subprocess.run(["mount", "--bind", str(src), str(target)], check=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


def all_files(root: Path) -> list[Path]:
    """Every regular file below root (a symlink recreated in a backup is a link, never content)."""
    return [p for d, _, files in os.walk(root) for p in (Path(d) / f for f in files) if not p.is_symlink()]


# Bind mounts: DEST reached through a second path (issue 14, point 2) ---------------------------


def test_backup_into_the_store_through_a_bind_mount_is_refused(store, tmp_path):
    before = sorted(os.listdir(store / "data"))
    with bind_mount(store / "data", tmp_path / "view") as view:
        p = run_cli("backup", store, view / "bk", timeout=60)
        assert p.returncode == 2, p.stdout + p.stderr
        assert "the destination is inside the store" in p.stderr
    with bind_mount(store / "config", tmp_path / "cview") as view:
        p = run_cli("backup", store, view / "bk", timeout=60)
        assert p.returncode == 2, p.stdout + p.stderr
    assert sorted(os.listdir(store / "data")) == before, "nothing written into the store"
    assert not (store / "config" / "bk").exists()


def test_a_destination_the_check_cannot_see_is_never_entered(store, tmp_path):
    """The check compares DEST's ancestors with config/ and data/; a bind mount of a directory
    deeper in the store (data/accounts) escapes it. The walk still never enters DEST: the run
    ends with an error instead of copying DEST into itself until the disk is full."""
    with bind_mount(store / "data" / "accounts", tmp_path / "view") as view:
        dest = view / "bk"
        p = run_cli("backup", "--json", store, dest, timeout=120)
        assert p.returncode == 1, p.stdout + p.stderr
        assert "dest_inside" in p.stdout and "data/accounts/bk" in p.stdout
        inner = store / "data" / "accounts" / "bk" / "data" / "accounts"
        assert inner.is_dir() and not (inner / "bk").exists(), "the destination was copied into itself"
        assert manifest_of(dest)["status"] == "failed"
        shutil.rmtree(dest)


def test_restore_into_the_backup_through_a_bind_mount_is_refused(store, tmp_path):
    backup = tmp_path / "b"
    backup_ok(store, backup)
    before = sorted(os.listdir(backup))
    with bind_mount(backup, tmp_path / "view") as view:
        p = run_cli("restore", backup, view / "restored", timeout=60)
        assert p.returncode == 2, p.stdout + p.stderr
        assert "inside the backup" in p.stderr
        with bind_mount(backup / "data", tmp_path / "dview") as dview:
            p = run_cli("restore", backup, dview / "restored", timeout=60)
            assert p.returncode == 2, p.stdout + p.stderr
    assert sorted(os.listdir(backup)) == before


def test_a_restore_target_the_check_cannot_see_is_never_entered(store, tmp_path):
    """A target reached through a bind mount of a directory deeper in the backup: restore's walk
    meets the target inside the backup and refuses to enter it, instead of looping."""
    backup = tmp_path / "b"
    backup_ok(store, backup)
    with bind_mount(backup / "data" / "accounts", tmp_path / "view") as view:
        target = view / "restored"
        p = run_cli("restore", "--json", backup, target, timeout=120)
        assert p.returncode == 1, p.stdout + p.stderr
        assert "dest_inside" in p.stdout
        inner = backup / "data" / "accounts" / "restored" / "data" / "accounts"
        assert inner.is_dir() and not (inner / "restored" / "data").exists(), "the target was copied into itself"
        shutil.rmtree(target)


# Symlink races at the roots (issue 9, point 4) --------------------------------------------------


class Paused:
    """A CLI run stopped at a test-only pause point (python/mailbak/testpause.py)."""

    def __init__(self, tmp_path: Path, point: str, *args: str | os.PathLike):
        self.dir = tmp_path / "pause"
        self.dir.mkdir()
        self.point = point
        env = {**CLI_ENV, "MAILBAK_TEST_PAUSE": point, "MAILBAK_TEST_PAUSE_DIR": str(self.dir)}
        self.proc = subprocess.Popen([sys.executable, "-m", "mailbak", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def wait_reached(self) -> None:
        deadline = time.monotonic() + 60
        while not (self.dir / f"{self.point}.reached").exists():
            assert self.proc.poll() is None, f"the run ended before reaching {self.point}: {self.proc.communicate()}"
            assert time.monotonic() < deadline, f"{self.point} not reached"
            time.sleep(0.01)

    def go(self) -> tuple[int, str, str]:
        (self.dir / f"{self.point}.go").touch()
        out, err = self.proc.communicate(timeout=120)
        return self.proc.returncode, out, err


def secret_twin(account: Path, secrets: Path) -> bytes:
    """A directory of secrets shaped like ``account`` (same names, so that anything following
    a symlink to it would find files to copy); returns the secret marker."""
    marker = b"SECRET-NOT-FOR-THE-BACKUP"
    shutil.copytree(account, secrets, symlinks=True)
    for f in all_files(secrets):
        if not f.is_symlink() and not f.name.endswith(".db") and not f.name.endswith("-lock"):
            f.write_bytes(marker + f.name.encode())
    return marker


def swap_for_symlink(path: Path, target: Path, aside: Path) -> None:
    os.rename(path, aside)
    path.symlink_to(target)


def test_account_replaced_by_a_symlink_before_the_message_phase(store, tmp_path):
    account = store / "data" / "accounts" / "user0001"
    secrets = tmp_path / "secrets"
    marker = secret_twin(account, secrets)
    (secrets / "msg" / "stray-secret").write_bytes(marker)
    dest = tmp_path / "b"
    run = Paused(tmp_path, "backup.messages", "backup", store, dest)
    run.wait_reached()
    swap_for_symlink(account, secrets, tmp_path / "real-account")
    code, out, err = run.go()
    assert code == 1, out + err
    assert "data/accounts/user0001" in err and "Traceback" not in err
    for f in all_files(dest):
        assert marker not in f.read_bytes(), f"{f} came from behind the symlink"
    assert manifest_of(dest)["status"] == "failed"


def test_database_replaced_by_a_symlink_while_it_is_opened(store, tmp_path):
    """LMDB opens a database by path; the file it really maps is compared with the one checked."""
    secret_db = tmp_path / "secret.db"
    env = lmdb.open(str(secret_db), subdir=False)
    with env.begin(write=True) as txn:
        txn.put(b"password", b"SECRET-NOT-FOR-THE-BACKUP")
    env.close()
    dest = tmp_path / "b"
    run = Paused(tmp_path, "snapshot.open", "backup", store, dest)
    run.wait_reached()
    # The first database snapshotted is data/auth.db.
    swap_for_symlink(store / "data" / "auth.db", secret_db, tmp_path / "real-auth.db")
    code, out, err = run.go()
    assert code == 1, out + err
    assert "data/auth.db" in err and "replaced while it was being opened" in err, err
    for f in all_files(dest):
        assert b"SECRET-NOT-FOR-THE-BACKUP" not in f.read_bytes(), f"{f} came from behind the symlink"


def test_verify_never_reads_behind_a_symlinked_account(store, tmp_path):
    """verify of a live store must not look behind an account replaced by a symlink: not stat
    its files (their names and sizes would reach the report), and with --fix never move one
    into data/moved/, which the store's owner can read."""
    assert (store / "data" / "tmp").is_dir(), "verify must take this for a live store"
    account = store / "data" / "accounts" / "user0001"
    secrets = tmp_path / "secrets"
    marker = secret_twin(account, secrets)
    stray = secrets / "msg" / "stray-secret"
    stray.write_bytes(marker)
    run = Paused(tmp_path, "verify.files", "verify", "--fix", store)
    run.wait_reached()
    swap_for_symlink(account, secrets, tmp_path / "real-account")
    code, out, err = run.go()
    assert code == 1, out + err
    assert "data/accounts/user0001" in err and "Traceback" not in err
    assert "stray-secret" not in out + err, "a file behind the symlink was looked at"
    assert "size_mismatch" not in out + err and "file has" not in err
    assert stray.read_bytes() == marker
    moved = store / "data" / "moved"
    assert not moved.exists() or all(marker not in f.read_bytes() for f in all_files(moved))


# Lock files (issue 9, point 2) ------------------------------------------------------------------


def make_lmdb_with_lock(path: Path) -> None:
    """A database and the lock file LMDB creates beside it."""
    env = lmdb.open(str(path), subdir=False)
    with env.begin(write=True) as txn:
        txn.put(b"k", b"v")
    env.close()
    assert Path(str(path) + "-lock").is_file()


def test_lock_files_are_never_backed_up(store, tmp_path):
    data = store / "data"
    unconfigured = data / "accounts" / "olduser"
    (unconfigured / "msg").mkdir(parents=True)
    make_lmdb_with_lock(unconfigured / "index.db")
    make_lmdb_with_lock(data / "extra.db")
    (data / "foo-lock").write_text("not a lock file: no foo beside it")
    (unconfigured / "notes-lock").write_text("no notes beside it either")
    dest = tmp_path / "b"
    p = backup_ok(store, dest)
    locks = [f for f in all_files(dest) if f.name.endswith("-lock")]
    assert sorted(str(f.relative_to(dest)) for f in locks) == ["data/accounts/olduser/notes-lock", "data/foo-lock"]
    assert (dest / "data" / "extra.db").is_file() and (dest / "data" / "accounts" / "olduser" / "index.db").is_file()
    assert "data/foo-lock: not part of the mail store format; copied" in p.stderr
    assert "extra.db-lock" not in p.stderr

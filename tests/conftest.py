"""Shared fixtures: real stores on real file systems, and the real CLI in a subprocess."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest
from mailbak.gen import generate
from mailbak.store import Store

#: Environment for CLI subprocesses: no terminal, so plain output.
CLI_ENV = {**os.environ, "COLUMNS": "200"}


def run_cli(*args: str | os.PathLike, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """Runs `mailbak ARGS` as a separate process and captures its output."""
    return subprocess.run([sys.executable, "-m", "mailbak", *map(str, args)], capture_output=True, text=True, timeout=timeout, env=CLI_ENV, **kw)


def json_lines(stdout: str) -> list[dict]:
    """Parses --json output; every line must be one JSON object with a message_type."""
    out = []
    for line in stdout.splitlines():
        obj = json.loads(line)
        assert "message_type" in obj, line
        out.append(obj)
    return out


def make_store(path: Path, messages: int = 300, accounts: int = 3, seed: int = 7) -> Path:
    """A generated store (the generator is deterministic, so tests can rely on its shape)."""
    generate(path, messages=messages, accounts=accounts, seed=seed, jobs=2)
    return path


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A small generated store: 3 accounts, 300 messages, queue, extras."""
    return make_store(tmp_path / "store")


def dump_env(path: Path) -> dict[bytes, list[tuple[bytes, bytes]]]:
    """Every named table of an LMDB file and its records, read without a lock file."""
    env = lmdb.open(str(path), subdir=False, readonly=True, lock=False, max_dbs=32)
    out = {}
    with env.begin() as txn:
        names = [k for k, _ in txn.cursor()]
        for name in names:
            db = env.open_db(name, txn=txn, create=False)
            out[name] = list(txn.cursor(db))
    env.close()
    return out


def tree_listing(root: Path, *, skip_locks: bool = True) -> dict[str, tuple]:
    """rel path -> (kind, size, mode, sha256 or link target), for comparing trees."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if skip_locks and rel.endswith("-lock"):
                continue
            st = p.lstat()
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode & 0o7777)
            elif p.is_file():
                out[rel] = ("file", st.st_size, st.st_mode & 0o7777, hashlib.sha256(p.read_bytes()).hexdigest())
            else:
                out[rel] = ("special",)
    return out


def inode_listing(root: Path) -> dict[str, tuple[int, int, int]]:
    """rel path -> (inode, size, mtime_ns) of every regular file, lock files excluded."""
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath) / name
            if name.endswith("-lock"):
                continue
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def writer_store(tmp_path: Path):
    """An empty store opened with the writer library (not durable: tests need no fsyncs)."""
    s = Store.create(tmp_path / "store", durable=False)
    yield s
    s.close()


@pytest.fixture
def shm_dir():
    """A scratch directory on /dev/shm (a tmpfs: another file system than tmp_path)."""
    import shutil
    import tempfile

    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm on this machine")
    d = Path(tempfile.mkdtemp(prefix="mailbak-test-", dir="/dev/shm"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def make_socket(path: Path):
    """A unix socket file at path (returns the socket; keep it open while needed)."""
    import socket

    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    return s


def backup_ok(store: Path, dest: Path, *args: str) -> subprocess.CompletedProcess:
    """Runs a backup that must succeed."""
    p = run_cli("backup", *args, store, dest)
    assert p.returncode == 0, p.stdout + p.stderr
    return p


def manifest_of(dest: Path) -> dict:
    return json.loads((dest / "mailbak.json").read_text())


@pytest.fixture
def public_dir():
    """A scratch directory that other users can reach (pytest's own tmp tree is private to root),
    for tests that drop privileges."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="mailbak-pub-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)

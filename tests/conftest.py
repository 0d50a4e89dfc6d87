"""Shared fixtures: real stores on real file systems, and the real CLI in a subprocess."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import socket
import subprocess
import sys
import time
from pathlib import Path

import lmdb
import pytest
from mailbak import gen
from mailbak.store import Store
from mailbak.testclock import ENV_CLOCK

#: Environment for CLI subprocesses: no terminal, so plain output.
CLI_ENV = {**os.environ, "COLUMNS": "200"}

#: The unprivileged user that owns the stores of tests about a hostile store owner.
NOBODY = pwd.getpwnam("nobody")


def clock_env(start: float | None, env: dict | None = None) -> dict:
    """``env`` (CLI_ENV by default) with the run's start set to ``start`` (None: the real
    clock), through the test-only seam ``MAILBAK_TEST_CLOCK`` (mailbak/testclock.py)."""
    env = CLI_ENV if env is None else env
    return env if start is None else {**env, ENV_CLOCK: repr(start)}


def start_times(count: int) -> list[int]:
    """``count`` start times one second apart, the last the current second, for a test's
    backups into one repository: each snapshot is named by its start second, so each gets a
    name of its own without sleeping past a second boundary. No start is later than the run's
    real one, so the reuse rule (files written from two seconds before a reference's start on
    are copied) is never laxer than with the real clock."""
    now = int(time.time())
    return list(range(now - count + 1, now + 1))


def run_cli(*args: str | os.PathLike, timeout: float = 300, clock: float | None = None, **kw) -> subprocess.CompletedProcess:
    """Runs `mailbak ARGS` as a separate process and captures its output; ``clock``: the
    run's start time (``clock_env``)."""
    return subprocess.run([sys.executable, "-m", "mailbak", *map(str, args)], capture_output=True, text=True, timeout=timeout, env=clock_env(clock), **kw)


def json_lines(stdout: str) -> list[dict]:
    """Parses --json output; every line must be one JSON object with a message_type."""
    out = []
    for line in stdout.splitlines():
        obj = json.loads(line)
        assert "message_type" in obj, line
        out.append(obj)
    return out


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Bit rot: one byte of ``path`` flipped in place (the middle one unless ``offset``), its
    inode, size and times as they were."""
    st = path.lstat()
    with open(path, "r+b") as f:
        at = st.st_size // 2 if offset is None else offset
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0x40]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def make_store(path: Path, messages: int = 300, accounts: int = 3, seed: int = 7) -> Path:
    """A generated store (the generator is deterministic, so tests can rely on its shape)."""
    # No test needs its store on disk, and the generator's closing sync of the whole machine was
    # most of a small store's setup time (0.2-0.5 s each, over a hundred stores).
    gen.generate(path, messages=messages, accounts=accounts, seed=seed, jobs=2, sync=False)
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


def backup_ok(store: Path, dest: Path, *args: str, clock: float | None = None) -> subprocess.CompletedProcess:
    """Runs a backup that must succeed (started at ``clock``, when given)."""
    p = run_cli("backup", *args, store, dest, clock=clock)
    assert p.returncode == 0, p.stdout + p.stderr
    return p


def manifest_of(dest: Path) -> dict:
    """The manifest of the backup at ``dest``, as JSON."""
    return json.loads((dest / "mailbak.json").read_text())


# Repositories ---------------------------------------------------------------------------------


def init_ok(repo: Path) -> None:
    """``mailbak init REPO``, which must succeed."""
    p = run_cli("init", repo)
    assert p.returncode == 0, p.stderr


def backup_into(store: Path, repo: Path, *args: str, events: list | None = None, env: dict | None = None, clock: float | None = None) -> dict:
    """A backup into a repository that must succeed, without a traceback; returns its JSON
    summary (and puts every JSON line into ``events`` when given). ``env``: extra environment
    (TZ); ``clock``: its start time (``start_times``)."""
    p = subprocess.run([sys.executable, "-m", "mailbak", "backup", "--json", *map(str, args), str(store), str(repo)], capture_output=True, text=True, timeout=300, env=clock_env(clock, {**CLI_ENV, **(env or {})}))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    lines = json_lines(p.stdout)
    if events is not None:
        events.extend(lines)
    return lines[-1]


@pytest.fixture
def repo(shm_dir: Path) -> Path:
    """An empty repository on /dev/shm (another file system than the store's)."""
    r = shm_dir / "repo"
    init_ok(r)
    return r


def waits_for_a_held_repository(repo: Path, *args: str | os.PathLike) -> subprocess.CompletedProcess:
    """Starts `mailbak ARGS` while ``repo`` is held as a prune holds it (its exclusive lock):
    the command must say it waits and still be waiting; then the lock is released and the
    command's outcome returned."""
    from mailbak.repository import RepoLock

    held = RepoLock(repo, exclusive=True)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "mailbak", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CLI_ENV)
        assert "waiting for the repository lock" in proc.stderr.readline()
        assert proc.poll() is None
    finally:
        held.release()
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def remove_a_message_file(backup: Path) -> str:
    """Removes one message file of a backup (or store); returns its path."""
    for dirpath, _, files in os.walk(backup / "data" / "accounts"):
        if "/msg/" in dirpath + "/" and files:
            os.unlink(os.path.join(dirpath, files[0]))
            return os.path.join(dirpath, files[0])
    raise AssertionError("no message file found")


# Stores owned by another user -------------------------------------------------------------------


def chown_tree(root: Path, uid: int = NOBODY.pw_uid, gid: int = NOBODY.pw_gid) -> None:
    """Gives ``root`` and everything below it (symlinks themselves) to uid:gid (nobody)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for n in [".", *dirnames, *filenames]:
            os.lchown(Path(dirpath) / n, uid, gid)


def nobodys_store(path: Path, messages: int, accounts: int = 2) -> Path:
    """A generated store at ``path``, owned by nobody, its own directory included (as a mail
    server's is)."""
    s = make_store(path, messages=messages, accounts=accounts)
    chown_tree(s)
    return s


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A root-owned file outside the store that nobody may write."""
    v = tmp_path / "victim"
    v.write_text("precious\n")
    v.chmod(0o644)
    return v


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 3 MiB tmpfs, to fill up."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0755", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); the full-destination test needs one")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


@contextlib.contextmanager
def loop_fs(tmp: Path, fstype: str, size_mb: int, *mkfs_args: str):
    """A file system of ``fstype`` on a loop-mounted image below ``tmp``; unmounted and detached
    in all cases."""
    image, mnt = tmp / f"{fstype}.img", tmp / f"{fstype}-mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(size_mb << 20)
    subprocess.run([f"mkfs.{fstype}", *mkfs_args, str(image)], check=True, capture_output=True)
    loop = subprocess.run(["losetup", "-f", "--show", str(image)], check=True, capture_output=True, text=True).stdout.strip()
    try:
        subprocess.run(["mount", loop, str(mnt)], check=True, capture_output=True)
        try:
            yield mnt
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)
        image.unlink()


def kernel_has_btrfs() -> bool:
    """Whether the running kernel can mount btrfs (built in, or its module loadable)."""
    if "btrfs" not in Path("/proc/filesystems").read_text():
        subprocess.run(["modprobe", "btrfs"], capture_output=True)
    return "btrfs" in Path("/proc/filesystems").read_text()


@pytest.fixture
def btrfs(tmp_path):
    """A loop-mounted btrfs image (512 MiB, sparse); skipped, saying so, only where the kernel
    has no btrfs."""
    if not kernel_has_btrfs():
        pytest.skip("the kernel has no btrfs (not built in, no module): the subvolume method cannot be tested here")
    with loop_fs(tmp_path, "btrfs", 512, "-q") as mnt:
        yield mnt

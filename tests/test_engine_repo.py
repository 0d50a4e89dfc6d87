"""The engine calls behind snapshot repositories (issue 11), on real files and real file systems:
reuse of unchanged files from a reference backup across file systems, the reference link that
fails (EMLINK on ext4), reflink copies on a loop-mounted btrfs image and the memo of refused copy
calls, and ``delete_tree`` (safety, mount points, worker priority at a pause point).

The "other disk" is /dev/shm (a tmpfs) or a loop-mounted image; CI runs as root."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CLI_ENV, loop_fs
from mailbak import _engine
from mailbak.layout import pack_ids
from mailbak.testpause import ENV_DIR, ENV_POINT

PREFIX = b"data/accounts/x"


def message(root: Path, id_: int, data: bytes, mtime_ns: int | None = None) -> Path:
    """Writes message file ``id_`` below area ``root`` (tree ``msg``)."""
    p = root / "msg" / _engine.message_path(id_)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    os.chmod(p, 0o640)
    if mtime_ns is not None:
        os.utime(p, ns=(mtime_ns, mtime_ns))
    return p


def area(src: Path, dst: Path, sizes: dict[int, int], unknown: tuple[int, ...] = ()) -> dict:
    """The engine's description of an area holding ``sizes`` (id -> recorded size)."""
    ids = sorted(sizes)
    return {
        "src": str(src),
        "dst": str(dst),
        "tree": b"msg",
        "known": [b"index.db"],
        "copy": [b"junkfilter.bloom"],
        "live": pack_ids(ids),
        "sizes": pack_ids(sizes[i] for i in ids),
        "unknown_sizes": pack_ids(sorted(unknown)),
        "erasing": pack_ids([]),
        "next_id": max(ids) + 1,
        "prefix": PREFIX,
    }


def test_a_backup_area_is_checked_when_built(tmp_path):
    # BackupArea converts and checks the area ahead of the call, so the caller can let go of its
    # buffers: what it refuses is refused there, with what is wrong.
    good = area(tmp_path / "src", tmp_path / "dst", {1: 10, 2: 20})
    _engine.BackupArea(good)
    with pytest.raises(ValueError, match="needs a destination"):
        _engine.BackupArea({k: v for k, v in good.items() if k != "dst"})
    with pytest.raises(ValueError, match="sizes must align"):
        _engine.BackupArea({**good, "sizes": pack_ids([10])})
    with pytest.raises(ValueError, match="go together"):
        _engine.BackupArea({**good, "reference_live": pack_ids([1])})


def backup(src: Path, snap: Path, sizes: dict[int, int], reference: Path | None = None, **kw) -> tuple[dict, list]:
    """Backs up area ``src`` into ``snap/data/accounts/x``; returns the result and the events."""
    dst = snap / PREFIX.decode()
    dst.mkdir(parents=True)
    p = _engine.Progress(verbose=True)
    [r] = _engine.backup_areas([_engine.BackupArea(area(src, dst, sizes, **kw))], jobs=2, progress=p, reference=reference)
    return r, p.drain()


def ino(p: Path) -> int:
    return os.lstat(p).st_ino


# Reuse from a reference across file systems ---------------------------------------------------


def test_second_backup_onto_another_file_system_reuses_unchanged_files(tmp_path: Path, shm_dir: Path):
    store = tmp_path / "area"
    t = 1_700_000_000_123_456_789
    sizes = {i: len(message(store, i, b"message %d" % i, t).read_bytes()) for i in range(1, 21)}
    (store / "junkfilter.bloom").write_bytes(b"bloom")
    first, _ = backup(store, shm_dir / "s1", sizes)
    assert (first["copied"], first["reused"], first["linked"]) == (20, 0, 0)
    assert first["link_fallback_errno"] == errno.EXDEV, "without a reference, copies across file systems stay fallbacks"
    # One night later: message 5 rewritten (its ID handed out again after a restore: same
    # path, other content and mtime), message 21 delivered, 20 expunged.
    message(store, 5, b"another message 5!", t + 10**9)
    sizes[5] = len(b"another message 5!")
    sizes[21] = len(message(store, 21, b"message 21", t).read_bytes())
    del sizes[20]
    (store / "msg" / _engine.message_path(20)).unlink()
    second, events = backup(store, shm_dir / "s2", sizes, reference=shm_dir / "s1")
    assert (second["reused"], second["copied"], second["linked"], second["errors"]) == (18 + 1, 2, 0, 0), events
    assert (second["link_fallbacks"], second["link_fallback_errno"]) == (0, None), "copies across file systems with a reference are no fallbacks"
    assert second["bytes_copied"] == sizes[5] + sizes[21]
    a1, a2 = shm_dir / "s1" / PREFIX.decode(), shm_dir / "s2" / PREFIX.decode()
    for i in range(1, 20):
        rel = Path("msg") / _engine.message_path(i)
        assert (ino(a2 / rel) == ino(a1 / rel)) == (i != 5), i
        assert (a2 / rel).read_bytes() == (store / rel).read_bytes()
    assert ino(a2 / "junkfilter.bloom") == ino(a1 / "junkfilter.bloom")
    assert sum(1 for e in events if e[1] == "reused") == 19
    # The copies keep the source's mtime to the nanosecond: the next night reuses them.
    assert os.stat(a2 / "msg" / _engine.message_path(21)).st_mtime_ns == t
    third, _ = backup(store, shm_dir / "s3", sizes, reference=shm_dir / "s2")
    assert (third["reused"], third["copied"]) == (21, 0)


def test_an_area_absent_from_the_reference_is_copied_without_error(tmp_path: Path, shm_dir: Path):
    store = tmp_path / "area"
    sizes = {1: len(message(store, 1, b"one").read_bytes())}
    (shm_dir / "ref").mkdir()
    r, events = backup(store, shm_dir / "s", sizes, reference=shm_dir / "ref")
    assert (r["copied"], r["reused"], r["errors"], r["warnings"]) == (1, 0, 0, 0), events


def test_a_missing_reference_root_raises(tmp_path: Path, shm_dir: Path):
    store = tmp_path / "area"
    sizes = {1: len(message(store, 1, b"one").read_bytes())}
    with pytest.raises(FileNotFoundError):
        backup(store, shm_dir / "s", sizes, reference=shm_dir / "nothing-here")


def test_reference_symlinks_are_never_followed(tmp_path: Path, shm_dir: Path):
    # The reference's tree is reached component by component without following a symlink: an
    # area directory that is a symlink to a matching tree elsewhere is no reference, and a
    # symlink at a message path in the reference is not a file to reuse.
    store = tmp_path / "area"
    sizes = {i: len(message(store, i, b"message %d" % i).read_bytes()) for i in (1, 2)}
    backup(store, shm_dir / "elsewhere", sizes)
    ref = shm_dir / "ref"
    (ref / "data" / "accounts").mkdir(parents=True)
    (ref / "data" / "accounts" / "x").symlink_to(shm_dir / "elsewhere" / PREFIX.decode())
    r, _ = backup(store, shm_dir / "s1", sizes, reference=ref)
    assert (r["reused"], r["copied"]) == (0, 2)
    # A real area directory whose message 1 is a symlink to the matching file elsewhere.
    (ref / "data" / "accounts" / "x").unlink()
    real = ref / PREFIX.decode() / "msg" / "a"
    real.mkdir(parents=True)
    target = shm_dir / "elsewhere" / PREFIX.decode() / "msg" / "a"
    (real / "1").symlink_to(target / "1")
    os.link(target / "2", real / "2")
    r, _ = backup(store, shm_dir / "s2", sizes, reference=ref)
    assert (r["reused"], r["copied"]) == (1, 1)
    placed = shm_dir / "s2" / PREFIX.decode() / "msg" / "a"
    assert not (placed / "1").is_symlink() and ino(placed / "1") != ino(target / "1")
    assert ino(placed / "2") == ino(target / "2")


def test_unknown_recorded_size_is_never_reused(tmp_path: Path, shm_dir: Path):
    store = tmp_path / "area"
    sizes = {i: len(message(store, i, b"message %d" % i).read_bytes()) for i in (1, 2)}
    backup(store, shm_dir / "s1", sizes)
    r, _ = backup(store, shm_dir / "s2", sizes, reference=shm_dir / "s1", unknown=(2,))
    assert (r["reused"], r["copied"]) == (1, 1)


def test_copy_tree_reuses_config_from_the_reference(tmp_path: Path, shm_dir: Path):
    conf = tmp_path / "config"
    (conf / "sub").mkdir(parents=True)
    (conf / "mox.conf").write_text("a = 1\n")
    (conf / "sub" / "key.pem").write_text("secret")
    (conf / "link").symlink_to("mox.conf")

    def copy(dst: Path, reference: Path | None) -> dict:
        dst.mkdir(parents=True)
        return _engine.copy_tree(conf, dst, jobs=2, progress=_engine.Progress(), prefix=b"config", reference=reference)

    copy(shm_dir / "s1" / "config", None)
    (conf / "mox.conf").write_text("a = 22\n")  # changed: other size
    r = copy(shm_dir / "s2" / "config", shm_dir / "s1")
    assert (r["reused"], r["copied"], r["symlinks"], r["errors"]) == (1, 1, 1, 0)
    assert ino(shm_dir / "s2/config/sub/key.pem") == ino(shm_dir / "s1/config/sub/key.pem")
    assert (shm_dir / "s2/config/mox.conf").read_text() == "a = 22\n"


def test_a_reference_file_at_the_link_limit_is_copied_and_counted_once(tmp_path: Path):
    # ext4 allows 65,000 links per inode: the reference's copy of message 1 is at the limit, so
    # the new snapshot cannot link it (EMLINK): it is copied, and the result counts one link
    # fallback with that errno; message 2 is reused as usual.
    store = tmp_path / "area"
    sizes = {i: len(message(store, i, b"message %d" % i).read_bytes()) for i in (1, 2)}
    with loop_fs(tmp_path, "ext4", 64, "-q", "-N", "70000") as mnt:
        backup(store, mnt / "s1", sizes)
        full = mnt / "s1" / PREFIX.decode() / "msg" / "a" / "1"
        links = mnt / "links"
        links.mkdir()
        for i in range(64_999):
            os.link(full, links / str(i))
        assert os.stat(full).st_nlink == 65_000
        r, events = backup(store, mnt / "s2", sizes, reference=mnt / "s1")
        assert (r["reused"], r["copied"], r["errors"]) == (1, 1, 0), events
        assert (r["link_fallbacks"], r["link_fallback_errno"]) == (1, errno.EMLINK)
        placed = mnt / "s2" / PREFIX.decode() / "msg" / "a" / "1"
        assert placed.read_bytes() == b"message 1" and ino(placed) != ino(full)


# Copies: reflink first, and a memo of what the kernel refused ----------------------------------


def test_copies_on_btrfs_are_reflinks_sharing_extents(tmp_path: Path):
    with loop_fs(tmp_path, "btrfs", 256, "-q") as mnt:
        src, dst = mnt / "src", mnt / "dst"
        blob = os.urandom(256 * 1024)
        for i in range(10):
            p = src / f"d{i % 3}" / f"f{i}"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(blob[i:] + blob[:i])
        dst.mkdir()
        r = _engine.copy_tree(src, dst, jobs=2, progress=_engine.Progress(), prefix=b"data", force_copy=True)
        assert (r["copied"], r["reflinked"], r["errors"]) == (10, 10, 0)
        assert r["bytes_copied"] == 10 * len(blob)
        for i in range(10):
            rel = Path(f"d{i % 3}") / f"f{i}"
            assert (dst / rel).read_bytes() == (src / rel).read_bytes()
        os.sync()
        out = subprocess.run(["filefrag", "-v", str(dst / "d0" / "f0")], check=True, capture_output=True, text=True).stdout
        assert "shared" in out, out


COPY_SCRIPT = """
import json, sys
from mailbak import _engine
r = _engine.copy_tree(sys.argv[1], sys.argv[2], jobs=2, progress=_engine.Progress(), prefix=b"data", force_copy=True)
print(json.dumps(r))
"""


def test_refused_copy_calls_are_tried_once_per_pair_of_file_systems(tmp_path: Path, shm_dir: Path):
    # ext4 (or whatever holds tmp_path) to tmpfs: FICLONE is refused (EXDEV); the memo makes
    # that one call per worker at most for 40 files, and copy_file_range (refused across file systems on current
    # kernels) at most one more. The bytes are right either way.
    src = tmp_path / "src"
    for i in range(40):
        p = src / f"d{i % 4}" / str(i)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * (1000 + i))
    dst = shm_dir / "dst"
    dst.mkdir()
    trace = tmp_path / "trace"
    subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=ioctl,copy_file_range", "-o", str(trace), sys.executable, "-c", COPY_SCRIPT, str(src), str(dst)],
        check=True,
        env=CLI_ENV,
        capture_output=True,
    )
    lines = trace.read_text().splitlines()
    # A call two workers make at once is split by strace into "<unfinished ...>" and
    # "<... ioctl resumed>" lines: count the starts, look for the refusal in either.
    clones = [line for line in lines if "FICLONE" in line]
    refused = [line for line in lines if "ioctl" in line and "EXDEV" in line]
    cfr = [line for line in lines if "copy_file_range(" in line]
    # At most one per worker (jobs=2): both may try before the first refusal is recorded.
    assert 1 <= len(clones) <= 2 and refused, lines
    assert len(cfr) <= 2 or not any("EXDEV" in line for line in cfr), cfr
    (shm_dir / "again").mkdir()
    r = _engine.copy_tree(src, shm_dir / "again", jobs=2, progress=_engine.Progress(), prefix=b"data", force_copy=True)
    assert (r["copied"], r["reflinked"], r["bytes_copied"]) == (40, 0, sum(1000 + i for i in range(40)))
    for i in range(40):
        assert (shm_dir / "again" / f"d{i % 4}" / str(i)).read_bytes() == b"x" * (1000 + i)


@pytest.mark.parametrize("umask", [0o077, 0o022, 0])
def test_copies_keep_their_mode_whatever_the_umask(tmp_path: Path, shm_dir: Path, umask: int):
    # A copy is created with its final mode only when the umask leaves that mode whole (no
    # fchmod then); otherwise the mode is set after the content. Either way the mode is exact.
    src = tmp_path / "src"
    src.mkdir()
    modes = {"a": 0o644, "b": 0o600, "c": 0o755, "d": 0o440, "e": 0o4750}
    for name, mode in modes.items():
        (src / name).write_text(name)
        os.chmod(src / name, mode)
    dst = shm_dir / "dst"
    dst.mkdir()
    old = os.umask(umask)
    try:
        r = _engine.copy_tree(src, dst, jobs=2, progress=_engine.Progress(), prefix=b"config")
    finally:
        os.umask(old)
    assert (r["copied"], r["errors"]) == (5, 0)
    got = {name: os.stat(dst / name).st_mode & 0o7777 for name in modes}
    assert got == {name: mode & 0o777 for name, mode in modes.items()}


BACKUP_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
from test_engine_repo import backup
from pathlib import Path
sizes = {int(k): v for k, v in json.loads(sys.argv[4]).items()}
r, _ = backup(Path(sys.argv[2]), Path(sys.argv[3]), sizes, reference=Path(sys.argv[5]))
print(json.dumps(r))
"""


def test_links_from_the_store_are_not_tried_across_file_systems(tmp_path: Path, shm_dir: Path):
    # The store's area and the destination are on different file systems: decided once from
    # their st_dev, so the only linkat calls are the reference's, and none fails with EXDEV.
    store = tmp_path / "area"
    sizes = {i: len(message(store, i, b"message %d" % i).read_bytes()) for i in range(1, 31)}
    backup(store, shm_dir / "s1", sizes)
    message(store, 31, b"new one")
    sizes[31] = len(b"new one")
    trace = tmp_path / "trace"
    out = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=linkat", "-o", str(trace), sys.executable, "-c", BACKUP_SCRIPT, str(Path(__file__).parent), str(store), str(shm_dir / "s2"), json.dumps(sizes), str(shm_dir / "s1")],
        check=True,
        env=CLI_ENV,
        capture_output=True,
        text=True,
    ).stdout
    r = json.loads(out)
    links = [line for line in trace.read_text().splitlines() if "linkat(" in line]
    assert (r["reused"], r["copied"]) == (30, 1)
    assert len(links) == 30 and not any("EXDEV" in line for line in links), links


# delete_tree ------------------------------------------------------------------------------------


def test_delete_tree_never_follows_symlinks_and_refuses_a_symlink_root(tmp_path: Path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "precious").write_text("keep")
    t = tmp_path / "t"
    (t / "a" / "b").mkdir(parents=True)
    (t / "a" / "b" / "f").write_text("x")
    (t / "a" / "out").symlink_to(tmp_path / "outside")
    (t / "p").symlink_to(tmp_path / "outside" / "precious")
    (tmp_path / "via").symlink_to(tmp_path / "outside")
    p = _engine.Progress()
    with pytest.raises(OSError) as e:
        _engine.delete_tree(tmp_path / "via", jobs=2, progress=p)
    assert e.value.errno in (errno.ELOOP, errno.ENOTDIR)
    r = _engine.delete_tree(t, jobs=2, progress=p, prefix=b"trash/t")
    assert r == {"files": 3, "dirs": 3, "errors": 0, "warnings": 0}
    assert p.position()[0] == 3
    assert not t.exists() and (tmp_path / "outside" / "precious").read_text() == "keep"


def test_delete_tree_never_enters_a_mount_point(tmp_path: Path):
    t = tmp_path / "t"
    mnt = t / "a" / "mnt"
    mnt.mkdir(parents=True)
    (t / "a" / "f").write_text("x")
    subprocess.run(["mount", "-t", "tmpfs", "none", str(mnt)], check=True)
    try:
        (mnt / "inside").write_text("not ours")
        with pytest.raises(OSError) as e:
            _engine.delete_tree(mnt, jobs=2, progress=_engine.Progress())
        assert e.value.errno == errno.EXDEV, "a mount point as the target is refused"
        assert (mnt / "inside").exists()
        p = _engine.Progress()
        r = _engine.delete_tree(t, jobs=2, progress=p, prefix=b"trash/t")
        events = p.drain()
        assert (mnt / "inside").read_text() == "not ours"
        assert any(e[1] == "mount_point" and e[2] == b"trash/t/a/mnt" for e in events), events
        # The file beside it is gone; its directory and the root stay (not empty): errors.
        assert r["files"] == 1 and r["errors"] == 3 and not (t / "a" / "f").exists()
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


DELETE_SCRIPT = """
import json, sys
from mailbak import _engine
r = _engine.delete_tree(sys.argv[1], jobs=2, progress=_engine.Progress(), low_priority=sys.argv[2] == "low")
print(json.dumps(r))
"""


def worker_priorities(pid: int) -> dict[int, tuple[int, str]]:
    """(nice, ionice class line) of each engine worker thread of ``pid``."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            if not (task / "comm").read_text().startswith("mailbak-"):
                continue
            stat = (task / "stat").read_text()
            nice = int(stat[stat.rindex(")") + 2 :].split()[16])  # field 19 of stat
            io = subprocess.run(["ionice", "-p", task.name], check=True, capture_output=True, text=True).stdout.strip()
            out[int(task.name)] = (nice, io)
    return out


@pytest.mark.parametrize("low", [True, False])
def test_delete_tree_workers_run_at_low_priority_unless_told(tmp_path: Path, low: bool):
    t = tmp_path / "t"
    for i in range(200):
        p = t / f"d{i % 5}" / str(i)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    pause = tmp_path / "pause"
    pause.mkdir()
    env = {**CLI_ENV, ENV_POINT: "engine_mid_delete", ENV_DIR: str(pause), "MAILBAK_TEST_PAUSE_AFTER": "10"}
    proc = subprocess.Popen([sys.executable, "-c", DELETE_SCRIPT, str(t), "low" if low else "normal"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (pause / "engine_mid_delete.reached").exists():
            assert proc.poll() is None, "the delete ended without reaching the pause point"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        workers = worker_priorities(proc.pid)
        main_nice = int(Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
    finally:
        (pause / "engine_mid_delete.go").touch()
        out, _ = proc.communicate(timeout=60)
    assert len(workers) == 2, workers
    for nice, io in workers.values():
        if low:
            assert (nice, io) == (19, "idle"), workers
        else:
            assert nice == main_nice and io != "idle", workers
    assert main_nice == os.getpriority(os.PRIO_PROCESS, 0), "the calling thread keeps its priority"
    assert json.loads(out) == {"files": 200, "dirs": 6, "errors": 0, "warnings": 0}
    assert not t.exists()


REUSE_AS_USER = """
import json, os, sys
from mailbak import _engine
# Imported as root (the checkout may be root's only), then the process becomes the user.
os.setgroups([])
os.setresgid(int(sys.argv[5]), int(sys.argv[5]), int(sys.argv[5]))
os.setresuid(int(sys.argv[4]), int(sys.argv[4]), int(sys.argv[4]))
r = _engine.copy_tree(sys.argv[1], sys.argv[2], jobs=2, progress=_engine.Progress(), prefix=b"config", reference=sys.argv[3])
print(json.dumps(r))
"""


def test_reuse_as_another_user(public_dir: Path, shm_dir: Path):
    # Reuse as another user than root: the link through the compared descriptor (AT_EMPTY_PATH)
    # needs CAP_DAC_READ_SEARCH before Linux 6.10 (then the engine links by name and checks;
    # that path has its own cargo test), and is allowed to the opener from 6.10 on.
    import pwd

    nobody = pwd.getpwnam("nobody")
    conf = public_dir / "config"
    (conf / "sub").mkdir(parents=True)
    for rel in ("a.conf", "sub/b.pem"):
        (conf / rel).write_text(rel)
    shm_dir.chmod(0o755)  # mkdtemp's 0700 would keep the user out
    out = shm_dir / "pub"
    out.mkdir()
    for d in (conf, conf / "sub", conf / "a.conf", conf / "sub" / "b.pem", out):
        os.chown(d, nobody.pw_uid, nobody.pw_gid)

    def copy(dst: Path, reference: Path) -> dict:
        argv = [sys.executable, "-c", REUSE_AS_USER, str(conf), str(dst), str(reference), str(nobody.pw_uid), str(nobody.pw_gid)]
        p = subprocess.run(argv, capture_output=True, text=True, env=CLI_ENV, timeout=60)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    for snap in ("s1", "s2"):
        (out / snap / "config").mkdir(parents=True)
    (out / "none").mkdir()
    for d in (out / "s1", out / "s1" / "config", out / "s2", out / "s2" / "config", out / "none"):
        os.chown(d, nobody.pw_uid, nobody.pw_gid)
    first = copy(out / "s1" / "config", out / "none")
    assert (first["copied"], first["reused"], first["errors"]) == (2, 0, 0)
    second = copy(out / "s2" / "config", out / "s1")
    assert (second["reused"], second["copied"], second["errors"]) == (2, 0, 0), second
    assert ino(out / "s2/config/sub/b.pem") == ino(out / "s1/config/sub/b.pem")

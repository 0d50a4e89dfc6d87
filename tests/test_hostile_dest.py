"""Issue 18.2: where root writes a backup (DEST, REPO, the new snapshot) and its temporary files.

mailbak runs as root; the store's owner (here nobody, uid 65534) may be hostile. These tests give
them what the shipped threat model gives them (an empty DEST of theirs, the store's own
directory, a directory `init` is pointed at) and check that root writes nothing through what
they plant or swap, and that what it cannot make safe is refused with exit 2.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CLI_ENV, NOBODY, make_store, manifest_of, nobodys_store, run_cli
from mailbak import manifest
from mailbak.status import Status
from pausing import PausePoint

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to be attacked by another user")


#: Runs as nobody: argv[1] is Python code using ``args`` (the rest of argv); prints what happened.
AS_NOBODY = """
import os, sys
os.setgroups([])
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
args = sys.argv[2:]
try:
    exec(sys.argv[1])
    print("done")
except OSError as e:
    print(type(e).__name__)
"""


def as_nobody(code: str, *args: str | os.PathLike) -> str:
    """Runs ``code`` as nobody; returns "done" or the name of the OSError that stopped it."""
    p = subprocess.run([sys.executable, "-c", AS_NOBODY, code, *map(str, args)], capture_output=True, text=True, timeout=60, env=CLI_ENV)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def nobodys_dir(path: Path) -> Path:
    path.mkdir(mode=0o755)
    os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    return path


@pytest.fixture
def owned_store(public_dir: Path) -> Path:
    """A store owned by nobody, its own directory included (as a mail server's is), where
    nobody can reach it."""
    return nobodys_store(public_dir / "store", messages=40)


def owner_mode(path: Path) -> tuple[int, int, int]:
    st = path.lstat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


# An empty DEST of the owner's: the manifest's temporary file ---------------------------------


def test_planted_manifest_tmp_symlink_in_an_owner_owned_dest(owned_store, public_dir, victim, tmp_path):
    """DEST an empty directory of nobody's: before the final manifest is written, nobody plants
    `mailbak.json.tmp` as a symlink to a root-owned file. DEST is now taken (root's, 0700) before
    anything is written, so the plant is refused by the kernel; the manifest's temporary file is
    created O_EXCL|O_NOFOLLOW anyway."""
    dest = nobodys_dir(public_dir / "bk")
    point = PausePoint(tmp_path / "pause", "backup.before_manifest")
    proc = point.popen("backup", owned_store, dest)
    point.wait_reached(proc)
    planted = as_nobody("os.symlink(args[0], os.path.join(args[1], 'mailbak.json.tmp'))", victim, dest)
    point.go()
    out, err = proc.communicate(timeout=300)
    assert victim.read_text() == "precious\n"
    assert planted == "PermissionError", planted
    assert proc.returncode == 0, out + err
    assert manifest_of(dest)["status"] == "ok"
    assert owner_mode(dest) == (0, 0, 0o700)


@pytest.mark.parametrize("planted", ["symlink", "hardlink", "stale file"])
def test_whatever_sits_at_the_tmp_name_is_replaced_never_written_through(tmp_path, victim, planted):
    """A temporary file left at `mailbak.json.tmp` (by a crash, or planted as a symlink or a
    hardlink to another file) neither blocks the write nor receives it: the name is removed and
    a new file created."""
    d = tmp_path / "bk"
    d.mkdir()
    tmp = d / manifest.MANIFEST_TMP
    if planted == "symlink":
        tmp.symlink_to(victim)
    elif planted == "hardlink":
        os.link(victim, tmp)
    else:
        tmp.write_text('{"kind": "mailbak-backup", "partial')
    manifest.write(d, {"status": Status.RUNNING, "started": "2026-12-06T00:00:00Z"})
    assert victim.read_text() == "precious\n"
    assert json.loads((d / manifest.MANIFEST).read_text())["status"] == Status.RUNNING
    assert (d / manifest.MANIFEST).stat().st_ino != victim.stat().st_ino
    assert not os.path.lexists(tmp)


# DEST or REPO where another user can change the path to it ----------------------------------


def test_dest_inside_the_store_directory_is_refused(owned_store, tmp_path):
    """The store's own directory is nobody's: a DEST in it could be renamed and replaced by a
    symlink at any moment of the run."""
    dest = owned_store / "backup"
    p = run_cli("backup", owned_store, dest)
    assert p.returncode == 2, p.stdout + p.stderr
    assert f"{owned_store}" in p.stderr and "can be changed by another user" in p.stderr and "uid 65534" in p.stderr, p.stderr
    assert not os.path.lexists(dest)
    assert "Traceback" not in p.stderr


def test_repo_inside_the_store_directory_is_refused(owned_store, public_dir):
    """Neither `init` there, nor a backup into a repository that was moved there."""
    p = run_cli("init", owned_store / "repo")
    assert p.returncode == 2, p.stdout + p.stderr
    assert "can be changed by another user" in p.stderr, p.stderr
    assert not os.path.lexists(owned_store / "repo")
    repo = public_dir / "repo"
    assert run_cli("init", repo).returncode == 0
    os.rename(repo, owned_store / "repo")
    p = run_cli("backup", owned_store, owned_store / "repo")
    assert p.returncode == 2, p.stdout + p.stderr
    assert "can be changed by another user" in p.stderr, p.stderr
    assert sorted(os.listdir(owned_store / "repo")) == [".trash", "mailbak-repo.json"]


def test_a_repository_another_user_owns_is_refused(owned_store, public_dir):
    repo = public_dir / "repo"
    assert run_cli("init", repo).returncode == 0
    os.chown(repo, NOBODY.pw_uid, NOBODY.pw_gid)
    p = run_cli("backup", owned_store, repo)
    assert p.returncode == 2, p.stdout + p.stderr
    assert f"{repo}: refusing to write there: the directory itself can be changed by another user (it belongs to uid 65534)" in p.stderr, p.stderr
    assert sorted(os.listdir(repo)) == [".trash", "mailbak-repo.json"]


@pytest.mark.parametrize(
    ("layout", "ok"),
    [
        ("world-writable", False),  # 0777, no sticky bit: anyone can rename DEST
        ("group-writable", False),  # 0775 of a group nobody could be in
        ("sticky, DEST new", True),  # like /tmp: only an entry's owner can rename it
        ("sticky, nobody's dir below", False),  # they can rename what is in their directory
    ],
)
def test_ancestors_others_can_write(owned_store, public_dir, layout, ok):
    top = public_dir / "top"
    top.mkdir()
    if layout == "world-writable":
        top.chmod(0o777)
        dest = top / "bk"
    elif layout == "group-writable":
        os.chown(top, 0, NOBODY.pw_gid)
        top.chmod(0o775)
        dest = top / "bk"
    else:
        top.chmod(0o1777)
        dest = top / "bk" if layout == "sticky, DEST new" else nobodys_dir(top / "theirs") / "bk"
    p = run_cli("backup", owned_store, dest)
    if ok:
        assert p.returncode == 0, p.stdout + p.stderr
        assert owner_mode(dest) == (0, 0, 0o700)
    else:
        assert p.returncode == 2, p.stdout + p.stderr
        assert "can be changed by another user" in p.stderr, p.stderr
        assert not os.path.lexists(dest)


def test_dest_through_a_symlink_another_user_can_change_is_refused(owned_store, public_dir):
    """DEST given through a symlink in nobody's directory: the directories it resolves to are
    root's, but nobody could point the symlink at any directory of root's before the run."""
    safe = public_dir / "safe"
    safe.mkdir()
    theirs = nobodys_dir(public_dir / "theirs")
    (theirs / "link").symlink_to(safe)
    os.lchown(theirs / "link", NOBODY.pw_uid, NOBODY.pw_gid)
    p = run_cli("backup", owned_store, theirs / "link" / "bk")
    assert p.returncode == 2, p.stdout + p.stderr
    assert f"{theirs} can be changed by another user (it belongs to uid 65534)" in p.stderr, p.stderr
    assert os.listdir(safe) == []


# DEST swapped mid-run ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dest", "snapshot"])
def test_dest_swapped_mid_run_the_backup_stays_in_the_directory_it_holds(owned_store, tmp_path, kind):
    """Whoever could rename DEST (or the new snapshot directory) after the check renames it and
    puts a symlink to another directory in its place: every later write (config/, data/, the
    final manifest) still goes into the directory the run holds, never through the symlink."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if kind == "dest":
        dest = tmp_path / "bk"
    else:
        dest = tmp_path / "repo"
        assert run_cli("init", dest).returncode == 0
    point = PausePoint(tmp_path / "pause", "backup.started")
    proc = point.popen("backup", owned_store, dest)
    point.wait_reached(proc)
    target = dest if kind == "dest" else next(p for p in dest.iterdir() if p.name.startswith("20"))
    moved = target.with_name(target.name + ".moved")
    os.rename(target, moved)
    os.symlink(elsewhere, target)
    point.go()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    assert os.listdir(elsewhere) == []
    assert manifest_of(moved)["status"] == "ok"
    assert (moved / "config" / "mailstore.toml").is_file() and (moved / "data" / "auth.db").is_file()
    # Reports keep naming the path the user gave.
    assert "/proc/self/fd" not in out + err


# init of a directory someone else owns -------------------------------------------------------


def test_init_takes_a_directory_owned_by_another_user(public_dir):
    repo = nobodys_dir(public_dir / "repo")
    p = run_cli("init", repo)
    assert p.returncode == 0, p.stdout + p.stderr
    assert owner_mode(repo) == (0, 0, 0o700)
    assert owner_mode(repo / "mailbak-repo.json")[0] == 0
    assert as_nobody("os.listdir(args[0])", repo) == "PermissionError"


def test_init_below_a_directory_another_user_owns_is_refused(public_dir):
    theirs = nobodys_dir(public_dir / "theirs")
    p = run_cli("init", theirs / "repo")
    assert p.returncode == 2, p.stdout + p.stderr
    assert f"{theirs / 'repo'}: refusing to write there: {theirs} can be changed by another user (it belongs to uid 65534)" in p.stderr, p.stderr
    assert os.listdir(theirs) == []


def test_a_symlink_chain_through_another_users_directory_is_refused(store, public_dir):
    """DEST reached through a chain of symlinks, one of which sits in a directory another user
    owns: they could retarget it between a check and its use and pick which directory of
    root's the backup takes. Every link is read in a directory already checked, so the one in
    their directory is refused (the chain's last hop, a root-owned directory, was accepted)."""
    mine = public_dir / "mine"
    mine.mkdir(mode=0o755)
    theirs = nobodys_dir(public_dir / "theirs")
    target = public_dir / "target"
    target.mkdir(mode=0o755)
    (theirs / "hop").symlink_to(target)
    (mine / "link").symlink_to(theirs / "hop")
    p = run_cli("backup", store, mine / "link" / "dest")
    assert p.returncode == 2, p.stdout + p.stderr
    assert f"refusing to write there: {theirs} can be changed by another user (it belongs to uid 65534)" in p.stderr, p.stderr
    assert os.listdir(target) == []


def test_errors_name_dest_as_given_not_the_descriptor(tmp_path):
    """Writes go through /proc/self/fd/N; a database copy that fills the destination is still
    reported under the path the user gave."""
    store = make_store(tmp_path / "store", messages=40, accounts=1)
    small = tmp_path / "small"
    small.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k,mode=0755", "tmpfs", str(small)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    try:
        p = run_cli("backup", store, small / "b")
    finally:
        subprocess.run(["umount", "-l", str(small)])
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"{small / 'b'}/data/" in p.stderr and "No space left on device" in p.stderr, p.stderr
    assert "/proc/self/fd" not in p.stderr, p.stderr

"""Hostile input: odd names, deep trees, huge directories, symlinks to secrets, oversized files."""

from __future__ import annotations

import os
import resource
import stat

import pytest
from conftest import backup_ok, json_lines, manifest_of, run_cli, tree_listing


def test_longest_names_and_trees_deeper_than_path_max(store, tmp_path):
    data = store / "data"
    long_name = "n" * 255
    (data / "extra").mkdir()
    (data / "extra" / long_name).write_text("long")
    # 120 levels of 60-byte names: about 7300 bytes, beyond PATH_MAX (4096), built with dir fds.
    fd = os.open(data / "extra", os.O_RDONLY | os.O_DIRECTORY)
    depth = 120
    for i in range(depth):
        name = f"{i:03d}" + "d" * 57
        os.mkdir(name, dir_fd=fd)
        new = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = new
    leaf = os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o640, dir_fd=fd)
    os.write(leaf, b"deep")
    os.close(leaf)
    os.close(fd)
    dest = tmp_path / "b"
    backup_ok(store, dest)
    assert (dest / "data" / "extra" / long_name).read_text() == "long"
    fd = os.open(dest / "data" / "extra", os.O_RDONLY | os.O_DIRECTORY)
    for i in range(depth):
        new = os.open(f"{i:03d}" + "d" * 57, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = new
    leaf = os.open("leaf", os.O_RDONLY, dir_fd=fd)
    assert os.read(leaf, 10) == b"deep"
    os.close(leaf)
    os.close(fd)


@pytest.mark.slow
def test_200k_unrecognized_files_in_one_directory(store, tmp_path):
    junk = store / "data" / "accounts" / "user0001" / "msg" / "junk"
    junk.mkdir()
    fd = os.open(junk, os.O_RDONLY | os.O_DIRECTORY)
    n = 200_000
    for i in range(n):
        os.close(os.open(f"x{i}", os.O_WRONLY | os.O_CREAT, 0o640, dir_fd=fd))
    os.close(fd)
    dest = tmp_path / "b"
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    p = run_cli("backup", store, dest, timeout=600)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert p.returncode == 0, p.stderr[-2000:]
    m = manifest_of(dest)
    assert m["accounts"]["user0001"]["unrecognized"] == n
    assert m["warnings"] >= n
    assert sum(1 for _ in (dest / "data" / "accounts" / "user0001" / "msg" / "junk").iterdir()) == n
    # A terminal report stays readable: 1000 lines per kind, then a count.
    lines = p.stderr.count("unrecognized file in a message directory")
    assert lines == 1000
    assert "further 'unrecognized' warnings are counted but not shown" in p.stderr
    assert f"({n - 1000} more 'unrecognized' lines not shown)" in p.stdout
    # Bounded memory: the whole run stays far below one path per file kept in memory.
    assert max(peak_kib, before) < 200 * 1024, f"peak RSS {peak_kib} KiB"


def test_json_lists_every_warning(store, tmp_path):
    junk = store / "data" / "accounts" / "user0001" / "msg" / "junk"
    junk.mkdir()
    for i in range(1500):
        (junk / f"x{i}").touch()
    p = run_cli("backup", "--json", store, tmp_path / "b")
    assert p.returncode == 0
    warnings = [ln for ln in json_lines(p.stdout) if ln["message_type"] == "warning"]
    assert len([w for w in warnings if w["path"].startswith("data/accounts/user0001/msg/junk/")]) == 1500


def test_symlinks_to_secrets_are_never_followed(store, tmp_path):
    (store / "config" / "shadow").symlink_to("/etc/shadow")
    (store / "data" / "passwd").symlink_to("/etc/passwd")
    (store / "data" / "accounts" / "user0000" / "msg" / "a" / "999999").symlink_to("/etc/shadow")
    (store / "data" / "accounts" / "user0000" / "evil").symlink_to("/root")
    dest = tmp_path / "b"
    p = backup_ok(store, dest)
    for rel, target in (("config/shadow", "/etc/shadow"), ("data/passwd", "/etc/passwd"), ("data/accounts/user0000/msg/a/999999", "/etc/shadow"), ("data/accounts/user0000/evil", "/root")):
        assert (dest / rel).is_symlink() and os.readlink(dest / rel) == target, rel
    assert "data/accounts/user0000/evil: unrecognized file; copied" in p.stderr
    restored = tmp_path / "r"
    r = run_cli("restore", dest, restored)
    assert r.returncode in (0, 1), r.stderr
    for rel in ("config/shadow", "data/passwd", "data/accounts/user0000/msg/a/999999"):
        assert (restored / rel).is_symlink(), rel


def test_restore_never_widens_permissions(store, tmp_path):
    (store / "config" / "private.key").write_text("k")
    (store / "config" / "private.key").chmod(0o600)
    dest = tmp_path / "b"
    backup_ok(store, dest)
    restored = tmp_path / "r"
    assert run_cli("restore", dest, restored).returncode == 0
    src = tree_listing(dest)
    for rel, facts in tree_listing(restored).items():
        if rel in src and facts[0] in ("file", "dir"):
            mode, src_mode = (facts[2], src[rel][2]) if facts[0] == "file" else (facts[1], src[rel][1])
            assert mode & ~src_mode == 0, f"{rel}: {oct(mode)} wider than {oct(src_mode)}"
    assert stat.S_IMODE((restored / "config" / "private.key").stat().st_mode) == 0o600


def test_oversized_config_is_refused(store, tmp_path):
    cfg = store / "config" / "mailstore.toml"
    with open(cfg, "a") as f:
        f.write("#" * (16 * 1024 * 1024) + "\n")
    p = run_cli("backup", store, tmp_path / "b")
    assert p.returncode == 2
    assert "larger than" in p.stderr
    assert not (tmp_path / "b").exists()


def test_oversized_manifest_is_refused(store, tmp_path):
    dest = tmp_path / "b"
    backup_ok(store, dest)
    with open(dest / "mailbak.json", "r+b") as f:
        f.truncate(65 * 1024 * 1024)
    p = run_cli("verify", dest)
    assert p.returncode == 1 and "larger than" in p.stderr


def test_non_utf8_directory_of_an_unconfigured_account(store, tmp_path):
    odd = os.fsencode(str(store / "data" / "accounts")) + b"/\xff\xfeuser"
    os.mkdir(odd)
    with open(odd + b"/note", "w") as f:
        f.write("x")
    dest = tmp_path / "b"
    p = backup_ok(store, dest)
    assert "data/accounts/\\xff\\xfeuser: directory of an account not in the config" in p.stderr
    assert os.path.exists(os.fsencode(str(dest / "data" / "accounts")) + b"/\xff\xfeuser/note")
    v = run_cli("verify", dest)
    assert v.returncode == 0 and "\\xff\\xfeuser" in v.stderr


@pytest.mark.parametrize("what", ["accounts", "queue", "account", "database"])
def test_symlinked_areas_are_never_followed(store, tmp_path, what):
    """A symlink where the store has a directory or a database must not lead any read outside
    the store: the area is not backed up (an error), and the link is kept as a link."""
    data = store / "data"
    outside = tmp_path / "outside"
    rel = {"accounts": "accounts", "queue": "queue", "account": "accounts/user0001", "database": "auth.db"}[what]
    os.rename(data / rel, outside)
    (data / rel).symlink_to(outside)
    before = tree_listing(outside, skip_locks=False)
    dest = tmp_path / "b"
    p = run_cli("backup", store, dest)
    assert p.returncode == 1, p.stderr
    assert f"data/{rel}:" in p.stderr
    assert os.readlink(dest / "data" / rel) == str(outside)
    assert tree_listing(outside, skip_locks=False) == before, "nothing read or written there (no lock file touched)"
    v = run_cli("verify", store)
    assert v.returncode == 1 and "Traceback" not in v.stderr
    assert tree_listing(outside, skip_locks=False) == before

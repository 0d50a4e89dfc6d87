"""The files mailbak reads from a store by name, against a hostile store owner (issue 18.5-18.7,
18.9): ``data/mailstore-version``, ``config/mailstore.toml`` and the ``config/`` and ``data/``
directories themselves.

Root must never block on a FIFO put there (every run is bounded by a timeout, so a hang shows as
a failure, not a hung suite), never follow a symlink there, and never read there what the
store's owner could not read. Stores are owned by nobody, as in test_owner.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import NOBODY, backup_ok, chown_tree, manifest_of, nobodys_store, run_cli
from pausing import PausePoint

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own a store by another user and to be attacked by it")

#: Every run here is bounded: a run that blocks on a FIFO fails the test with TimeoutExpired.
TIMEOUT = 60

#: What only root may read; it must never reach a backup's manifest, its output or DEST.
SECRET = "root-only-secret-7f3a"


@pytest.fixture
def owned_store(tmp_path: Path) -> Path:
    """A store owned by nobody, below pytest's root-only tmp directory."""
    return nobodys_store(tmp_path / "store", messages=30)


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file only root may read, on the store's file system."""
    f = tmp_path / "secret"
    f.write_text(f"{SECRET}\n")
    f.chmod(0o600)
    return f


def as_nobody(path: Path) -> Path:
    os.lchown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    return path


def mkfifo(path: Path) -> Path:
    path.unlink(missing_ok=True)
    os.mkfifo(path, 0o644)
    return as_nobody(path)


def secret_nowhere(p: subprocess.CompletedProcess, dest: Path) -> None:
    """The secret is in neither the output nor any file of DEST."""
    assert SECRET not in p.stdout + p.stderr
    for f in dest.rglob("*"):
        if f.is_file() and not f.is_symlink():
            assert SECRET.encode() not in f.read_bytes(), f"{f} holds what only root may read"


# 18.5: data/mailstore-version -------------------------------------------------------------------


def test_fifo_as_mailstore_version_never_blocks_a_backup(owned_store, tmp_path):
    mkfifo(owned_store / "data" / "mailstore-version")
    dest = tmp_path / "bk"
    p = run_cli("backup", owned_store, dest, timeout=TIMEOUT)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "data/mailstore-version: not a regular file" in p.stderr, p.stderr
    assert manifest_of(dest)["store_format_version"] is None


def test_symlinked_mailstore_version_puts_nothing_of_roots_into_the_manifest(owned_store, tmp_path, secret):
    version = owned_store / "data" / "mailstore-version"
    version.unlink()
    version.symlink_to(secret)
    as_nobody(version)
    dest = tmp_path / "bk"
    p = run_cli("backup", "--json", owned_store, dest, timeout=TIMEOUT)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "a symlink (never followed)" in p.stdout, p.stdout
    assert manifest_of(dest)["store_format_version"] is None
    secret_nowhere(p, dest)
    assert (dest / "data" / "mailstore-version").is_symlink()  # the link itself is kept


def test_mailstore_version_is_read_as_the_stores_owner(owned_store, tmp_path, secret):
    """A hardlink to a file only root may read (what a kernel without protected_hardlinks lets
    the owner make): read as the owner, it is refused, and its head reaches no manifest."""
    version = owned_store / "data" / "mailstore-version"
    version.unlink()
    os.link(secret, version)
    dest = tmp_path / "bk"
    p = run_cli("backup", "--json", owned_store, dest, timeout=TIMEOUT)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "cannot read it as the store's owner (Permission denied)" in p.stdout, p.stdout
    m = manifest_of(dest)
    assert m["store_format_version"] is None
    assert SECRET not in p.stdout + p.stderr + json.dumps(m)


def test_mailstore_version_still_recorded(owned_store, tmp_path):
    dest = tmp_path / "bk"
    backup_ok(owned_store, dest)
    assert manifest_of(dest)["store_format_version"] == "1"


# 18.6: config/mailstore.toml --------------------------------------------------------------------


@pytest.mark.parametrize("swap", ["fifo", "symlink to a fifo"])
def test_config_file_swapped_for_a_fifo_after_the_check_is_refused(owned_store, tmp_path, swap):
    """The store is checked (phase 1), then, before the config is read, its owner replaces
    mailstore.toml: root must refuse it at once, exit 2, never wait for a writer."""
    config = owned_store / "config" / "mailstore.toml"
    pp = PausePoint(tmp_path / "pause", "read_config")
    dest = tmp_path / "bk"
    proc = pp.popen("backup", owned_store, dest)
    try:
        pp.wait_reached(proc, timeout=TIMEOUT)
        if swap == "fifo":
            mkfifo(config)
        else:
            config.unlink()
            config.symlink_to(mkfifo(tmp_path / "fifo"))
            as_nobody(config)
        pp.go()
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 2, out + err
    why = "not a regular file" if swap == "fifo" else "a symlink (never followed)"
    assert f"{config}: {why}" in err, err
    assert "Traceback" not in err
    assert err.count("\n") == 1, err


@pytest.mark.parametrize("op", ["backup", "verify"])
def test_symlinked_config_file_is_refused(owned_store, tmp_path, op):
    """A symlink at mailstore.toml is never followed (it could name a file that blocks every
    read, such as /proc/kmsg): here one to a valid config, which must still be refused."""
    config = owned_store / "config" / "mailstore.toml"
    elsewhere = tmp_path / "elsewhere.toml"
    shutil.move(config, elsewhere)
    config.symlink_to(elsewhere)
    as_nobody(config)
    dest = tmp_path / "bk"
    p = run_cli(op, owned_store, *([dest] if op == "backup" else []), timeout=TIMEOUT)
    assert p.returncode == 2, p.stdout + p.stderr
    assert f"{config}: the mailstore.toml is a symlink (never followed)" in p.stderr, p.stderr
    assert p.stderr.count("\n") == 1, p.stderr
    assert not dest.exists()


# 18.7: STORE/config and STORE/data --------------------------------------------------------------


def swap_dir_for_symlink(store: Path, name: str, tmp_path: Path, secret: Path) -> Path:
    """STORE/NAME becomes the owner's symlink to a directory of root's holding the secret (and,
    for config/, a valid mailstore.toml, so the store still looks like one through it)."""
    target = tmp_path / f"roots-{name}"
    shutil.copytree(store / name, target, symlinks=True)
    chown_tree(target, 0, 0)
    shutil.copy(secret, target / "secret")
    os.rename(store / name, tmp_path / f"old-{name}")
    (store / name).symlink_to(target)
    as_nobody(store / name)
    return target


@pytest.mark.parametrize("name", ["config", "data"])
@pytest.mark.parametrize("op", ["backup", "verify"])
def test_symlinked_config_or_data_directory_is_refused(owned_store, tmp_path, secret, name, op):
    swap_dir_for_symlink(owned_store, name, tmp_path, secret)
    dest = tmp_path / "bk"
    p = run_cli(op, owned_store, *([dest] if op == "backup" else []), timeout=TIMEOUT)
    assert p.returncode == 2, p.stdout + p.stderr
    what = "config directory" if name == "config" else "data directory"
    assert f"{owned_store / name}: the {what} is a symlink (never followed" in p.stderr, p.stderr
    assert p.stderr.count("\n") == 1, p.stderr
    assert not dest.exists()


@pytest.mark.parametrize("name", ["config", "data"])
def test_config_or_data_swapped_for_a_symlink_after_the_check_is_refused(owned_store, tmp_path, secret, name):
    """The owner swaps the directory once phase 1 has checked it (the first manifest written):
    root opens it without following, so nothing behind the symlink is copied."""
    pp = PausePoint(tmp_path / "pause", "backup.started")
    dest = tmp_path / "bk"
    proc = pp.popen("backup", owned_store, dest)
    try:
        pp.wait_reached(proc, timeout=TIMEOUT)
        swap_dir_for_symlink(owned_store, name, tmp_path, secret)
        pp.go()
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 2, out + err
    what = "config directory" if name == "config" else "data directory"
    assert f"{owned_store / name}: cannot open the {what}: a symlink (never followed" in err, err
    assert "Traceback" not in err
    secret_nowhere(subprocess.CompletedProcess([], 2, out, err), dest)


# 18.9: a config nested too deeply ---------------------------------------------------------------


def nest_config(store: Path) -> Path:
    config = store / "config" / "mailstore.toml"
    with open(config, "a") as f:
        f.write("\n[deep]\nx = " + "[" * 50_000 + "]" * 50_000 + "\n")
    return config


def test_config_nested_too_deeply_is_bad_input_for_backup(owned_store, tmp_path):
    config = nest_config(owned_store)
    p = run_cli("backup", owned_store, tmp_path / "bk", timeout=TIMEOUT)
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stderr == f"mailbak: error: {config}: not valid TOML: arrays or tables nested too deeply\n"
    assert not (tmp_path / "bk").exists()


def test_config_nested_too_deeply_is_a_problem_for_verify(owned_store):
    config = nest_config(owned_store)
    p = run_cli("verify", owned_store, timeout=TIMEOUT)
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"{config}: not valid TOML: arrays or tables nested too deeply" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr

"""Backups that tell the truth (issue 9 point 3, issue 14 points 3 to 5).

- A backup says it is a backup from its first byte (a ``running`` manifest), and verify treats
  any directory with ``mailbak.json`` as a backup, writing nothing into it.
- verify checks a backup against its manifest (databases, accounts, known files).
- backup ok implies verify of that backup clean, over a corpus of damaged stores.
- Hostile values: the key ff..ff and the size 2^64-1, written as real LMDB records.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import lmdb
import pytest

from conftest import CLI_ENV, json_lines, make_store, manifest_of, run_cli
from mailbak.layout import id_key, message_rel
from mailbak.store import pack, unpack

ACC = "user0000"


# Helpers -------------------------------------------------------------------------------------


def index_path(root: Path, account: str | None = ACC) -> Path:
    return root / "data" / ("queue" if account is None else f"accounts/{account}") / "index.db"


def edit(path: Path, fn: Callable[[lmdb.Environment, lmdb.Transaction], None]) -> None:
    """Runs ``fn(env, txn)`` in one write transaction of the LMDB file at ``path``."""
    env = lmdb.open(str(path), subdir=False, max_dbs=8)
    try:
        with env.begin(write=True) as txn:
            fn(env, txn)
    finally:
        env.close()


def table(env: lmdb.Environment, txn: lmdb.Transaction, name: str):
    return env.open_db(name.encode(), txn=txn, create=False)


def records(root: Path, account: str | None = ACC, name: str = "message") -> dict[int, dict]:
    env = lmdb.open(str(index_path(root, account)), subdir=False, readonly=True, lock=False, max_dbs=8)
    try:
        with env.begin() as txn:
            return {int.from_bytes(k, "big"): unpack(v) for k, v in txn.cursor(table(env, txn, name))}
    finally:
        env.close()


def live_ids(root: Path, account: str | None = ACC) -> list[int]:
    if account is None:
        return sorted(records(root, None, "msg"))
    return sorted(i for i, r in records(root, account).items() if not r["expunged"])


def msg_file(root: Path, id_: int, account: str | None = ACC) -> Path:
    base = root / "data" / ("queue" if account is None else f"accounts/{account}/msg")
    return base / message_rel(id_)


def codes(p: subprocess.CompletedProcess, severity: str = "error") -> set[str]:
    return {l["code"] for l in json_lines(p.stdout) if l["message_type"] == severity}


def listing_with_mtimes(root: Path) -> dict[str, tuple]:
    """Every path below root (lock files included) with its kind, size, mode and mtime."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino)
    st = root.lstat()
    out["."] = (st.st_mode, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """One small generated store; each test works on its own copy."""
    return make_store(tmp_path_factory.mktemp("template") / "store", messages=80, accounts=2, seed=3)


@pytest.fixture
def store(template, tmp_path) -> Path:
    dst = tmp_path / "store"
    shutil.copytree(template, dst, symlinks=True)
    return dst


@pytest.fixture
def backup(store, tmp_path) -> Path:
    dest = tmp_path / "backup"
    p = run_cli("backup", "--json", store, dest)
    assert p.returncode == 0, p.stdout + p.stderr
    return dest


# 14.5: hostile values ------------------------------------------------------------------------


def add_key_ffff(root: Path) -> None:
    first = live_ids(root)[0]

    def fn(env, txn):
        rec = unpack(txn.get(id_key(first), db=table(env, txn, "message")))
        txn.put(b"\xff" * 8, pack(rec), db=table(env, txn, "message"))

    edit(index_path(root), fn)


def set_size_max(root: Path) -> int:
    first = live_ids(root)[0]

    def fn(env, txn):
        db = table(env, txn, "message")
        rec = unpack(txn.get(id_key(first), db=db))
        rec["size"] = 2**64 - 1
        txn.put(id_key(first), pack(rec), db=db)

    edit(index_path(root), fn)
    return first


def test_key_ffff_is_a_bad_key_not_a_traceback(store, tmp_path):
    add_key_ffff(store)
    v = run_cli("verify", "--json", store)
    assert v.returncode == 1 and "Traceback" not in v.stderr, v.stdout + v.stderr
    assert "bad_key" in codes(v)
    b = run_cli("backup", "--json", store, tmp_path / "b")
    assert b.returncode == 1 and "Traceback" not in b.stderr, b.stdout + b.stderr
    assert "bad_key" in codes(b)
    assert manifest_of(tmp_path / "b")["status"] == "failed"
    vb = run_cli("verify", "--json", tmp_path / "b")
    assert vb.returncode == 1 and "Traceback" not in vb.stderr
    assert "bad_key" in codes(vb)


def test_size_2_64_minus_1_is_checked_like_any_size(store, tmp_path):
    id_ = set_size_max(store)
    rel = f"data/accounts/{ACC}/msg/{message_rel(id_)}"
    v = run_cli("verify", "--json", store)
    assert v.returncode == 1, v.stdout + v.stderr
    assert any(l.get("code") == "size_mismatch" and l["path"] == rel for l in json_lines(v.stdout))
    b = run_cli("backup", "--json", store, tmp_path / "b")
    assert b.returncode == 1, b.stdout + b.stderr
    assert any(l.get("code") == "size_mismatch" and l["path"] == rel for l in json_lines(b.stdout))

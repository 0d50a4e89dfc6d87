"""naive_backup.py STORE DEST: the backup algorithm as a plain, serial Python program.

This is the benchmark's baseline: what a straightforward implementation of docs/FORMAT.md and
the phases of python/mailbak/archiver.py costs, with py-lmdb and msgpack only (mailbak.layout is
imported for names and constants, never the engine's backup code). One thread, no batching:

1. copy config/ (symlinks kept);
2. take the backup lease (shared flock on data/backup.lease);
3. copy the top-level databases, each from one read transaction (``env.copy(compact=True)``);
4. for the queue and each configured account: copy index.db from a read transaction, read the
   live and erase IDs from that same transaction (msgpack-decoding each record), then walk the
   area and hardlink (or copy) live message files, skip files being erased or newer than the
   snapshot, copy anything else;
5. release the lease; copy the other files of data/ (tmp/, ctl and lock files excepted);
6. sync, then write DEST/naive-backup.json (named so that no one mistakes it for mailbak's).

Exit status 0 when every live message file was placed, 1 otherwise.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import sys
from pathlib import Path

import lmdb
import msgpack
from mailbak.layout import (
    LEASE_FILE,
    LOCK_SUFFIX,
    AreaKind,
    message_rel,
    read_config,
)

#: What data/ itself holds.
DATA = AreaKind.DATA.layout

#: Opening a named table needs a slot per table; an index has at most four.
MAX_DBS = 8


class Copier:
    """Places files: hardlinks while the file system allows, copies after the first refusal."""

    def __init__(self) -> None:
        self.can_link = True

    def place(self, src: str, dst: str) -> None:
        if self.can_link:
            try:
                os.link(src, dst)
                return
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
                self.can_link = False  # another file system: no point asking again per file
        shutil.copy2(src, dst)


def open_env(path: Path) -> lmdb.Environment:
    return lmdb.open(str(path), subdir=False, readonly=True, lock=True, create=False, max_dbs=MAX_DBS)


def copy_database(src: Path, dst: Path) -> None:
    """A whole database from one read transaction (the top-level ones are opaque)."""
    env = open_env(src)
    with env.begin() as txn:
        env.copy(str(dst), compact=True, txn=txn)
    env.close()


def table_keys(env: lmdb.Environment, txn: lmdb.Transaction, name: bytes):
    """(id, value) of every record of a table; nothing if the table is absent."""
    try:
        db = env.open_db(name, txn=txn, create=False)
    except lmdb.NotFoundError:
        return
    for key, value in txn.cursor(db):
        yield int.from_bytes(key, "big"), value


def snapshot_index(src: Path, dst: Path, kind: str) -> tuple[set[int], set[int], int]:
    """Copies an area's index.db and returns (live IDs, erasing IDs, highest ID) of that copy's
    snapshot: the copy and the IDs come from the same read transaction."""
    records, erase = (b"message", b"message_erase") if kind == "account" else (b"msg", b"msg_erase")
    live: set[int] = set()
    erasing: set[int] = set()
    highest = 0
    env = open_env(src)
    with env.begin() as txn:
        env.copy(str(dst), compact=True, txn=txn)
        for id_, value in table_keys(env, txn, records):
            highest = max(highest, id_)
            # A queued message is live while its record exists; an account's until expunged.
            # A record that does not decode keeps its file (the conservative choice).
            try:
                expunged = kind == "account" and msgpack.unpackb(value, raw=False).get("expunged") is True
            except Exception:
                expunged = False
            if not expunged:
                live.add(id_)
        for id_, _ in table_keys(env, txn, erase):
            highest = max(highest, id_)
            erasing.add(id_)
        if kind == "account":
            for id_, _ in table_keys(env, txn, b"mailbox"):
                highest = max(highest, id_)
    env.close()
    return live, erasing, highest


def message_id(rel_dir: str, tree: str, name: str) -> int | None:
    """The ID whose path(id) is ``rel_dir/name`` inside the message tree, else None."""
    parent = rel_dir if not tree else (rel_dir[len(tree) + 1 :] if rel_dir.startswith(tree + "/") else "")
    if not parent or "/" in parent or not name.isdigit() or name[0] == "0" or not name.isascii():
        return None
    id_ = int(name)
    return id_ if id_ < 1 << 64 and message_rel(id_) == f"{parent}/{name}" else None


def backup_area(src: Path, dst: Path, kind: str, copier: Copier) -> dict[str, int]:
    """Step 4 for the queue (kind "queue") or one account."""
    layout = AreaKind(kind).layout
    tree, known = layout.tree, set(layout.known)
    os.mkdir(dst)
    live, erasing, highest = snapshot_index(src / "index.db", dst / "index.db", kind)
    counts = dict.fromkeys(("placed", "skipped_erasing", "skipped_new", "unrecognized", "missing"), 0)
    if kind == "account" and (src / "junkfilter.db").exists():
        copy_database(src / "junkfilter.db", dst / "junkfilter.db")
    if (src / "junkfilter.bloom").exists():
        shutil.copy2(src / "junkfilter.bloom", dst / "junkfilter.bloom")
    placed: set[int] = set()
    for dirpath, dirnames, filenames in os.walk(src):
        rel_dir = os.path.relpath(dirpath, src)
        rel_dir = "" if rel_dir == "." else rel_dir
        out_dir = dst / rel_dir
        out_dir.mkdir(exist_ok=True)
        # os.walk lists a symlink to a directory among dirnames and does not follow it; it is
        # copied as a symlink, like any other unrecognized entry.
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            if rel_dir == "" and name in known:
                continue  # index.db and junk filter done above; lock files never backed up
            path = os.path.join(dirpath, name)
            id_ = message_id(rel_dir, tree, name) if not os.path.islink(path) else None
            if id_ is not None and id_ in live:
                copier.place(path, str(out_dir / name))
                placed.add(id_)
            elif id_ is not None and id_ in erasing:
                counts["skipped_erasing"] += 1
            elif id_ is not None and id_ > highest:
                counts["skipped_new"] += 1
            else:
                print(f"naive_backup: unrecognized file {path}; copied", file=sys.stderr)
                shutil.copy2(path, out_dir / name, follow_symlinks=False)
                counts["unrecognized"] += 1
    counts["placed"] = len(placed)
    for id_ in live - placed:
        print(f"naive_backup: error: {src}/{tree}/{message_rel(id_)}: live message file missing", file=sys.stderr)
        counts["missing"] += 1
    return counts


def copy_other_files(data: Path, out: Path, accounts: tuple[str, ...], copier: Copier) -> None:
    """Step 5: everything in data/ the earlier steps did not handle."""
    handled = {"queue", *DATA.never, *DATA.databases}
    for name in sorted(os.listdir(data)):
        src = data / name
        if name in handled or name.endswith(LOCK_SUFFIX):
            continue
        if name == "accounts":
            # Directories of accounts not in the config: copied as plain files.
            for acc in sorted(set(os.listdir(src)) - set(accounts)):
                shutil.copytree(src / acc, out / "accounts" / acc, symlinks=True)
        elif src.is_dir() and not src.is_symlink():
            shutil.copytree(src, out / name, symlinks=True)
        else:
            shutil.copy2(src, out / name, follow_symlinks=False)


def main(store: Path, dest: Path) -> int:
    config_dir, data = store / "config", store / "data"
    accounts = read_config(config_dir).accounts
    dest.mkdir()
    shutil.copytree(config_dir, dest / "config", symlinks=True)
    out = dest / "data"
    out.mkdir()
    copier = Copier()
    areas: dict[str, dict[str, int]] = {}
    with open(data / LEASE_FILE, "rb") as lease:
        fcntl.flock(lease, fcntl.LOCK_SH)  # held until every message file is placed
        for name in DATA.databases:
            copy_database(data / name, out / name)
        areas["queue"] = backup_area(data / "queue", out / "queue", "queue", copier)
        (out / "accounts").mkdir()
        for name in accounts:
            areas[f"accounts/{name}"] = backup_area(data / "accounts" / name, out / "accounts" / name, "account", copier)
    copy_other_files(data, out, accounts, copier)
    missing = sum(c["missing"] for c in areas.values())
    os.sync()  # mailbak flushes DEST before its manifest; so does this, for a fair comparison
    manifest = dest / "naive-backup.json"
    with open(manifest.with_suffix(".tmp"), "w") as f:
        json.dump({"status": "failed" if missing else "ok", "hardlinked": copier.can_link, "areas": areas}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.rename(manifest.with_suffix(".tmp"), manifest)
    return 1 if missing else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: naive_backup.py STORE DEST")
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))

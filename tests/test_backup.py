"""mailbak backup, rule by rule (docs/BACKUP.md), on real stores and real LMDB environments."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import lmdb
import pytest
from conftest import backup_ok, dump_env, inode_listing, json_lines, make_socket, make_store, manifest_of, run_cli, tree_listing
from mailbak.layout import id_key, message_rel
from mailbak.store import Store, open_env, pack
from mailbak.text import escape_path

ACC = "user0000"


def ino(p: Path) -> int:
    return p.lstat().st_ino


def live_ids(store: Path, account: str) -> list[int]:
    with Store.open(store, durable=False) as s:
        return sorted(s.account(account).messages())


# Rule 1: destination and store ---------------------------------------------------------------


def test_non_empty_destination_is_refused_and_untouched(store, tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "precious").write_text("keep")
    p = run_cli("backup", store, dest)
    assert p.returncode == 2
    assert "not empty" in p.stderr and p.stderr.count("\n") == 1
    assert os.listdir(dest) == ["precious"]


@pytest.mark.parametrize("case", ["file", "no-parent", "not-a-store", "bad-config", "inside-store"])
def test_bad_input_exits_2_and_writes_nothing(store, tmp_path, case):
    dest = tmp_path / "dest"
    src = store
    if case == "file":
        dest.write_text("x")
    elif case == "no-parent":
        dest = tmp_path / "missing" / "dest"
    elif case == "not-a-store":
        src = tmp_path / "nothing"
        src.mkdir()
    elif case == "bad-config":
        (store / "config" / "mailstore.toml").write_text("[accounts\n")
    elif case == "inside-store":
        dest = store / "data" / "backup"
    before = tree_listing(tmp_path)
    p = run_cli("backup", src, dest)
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("mailbak: error: ")
    assert tree_listing(tmp_path) == before


def test_modes_destination_and_secrets(store, tmp_path):
    (store / "config" / "open.conf").write_text("x")
    (store / "config" / "open.conf").chmod(0o666)
    (store / "data" / "acme").chmod(0o777)
    dest = tmp_path / "b"
    backup_ok(store, dest)
    assert stat.S_IMODE(dest.stat().st_mode) & 0o007 == 0, "DEST is not world-readable"
    for dirpath, dirnames, _filenames in os.walk(dest):
        for d in dirnames:
            assert stat.S_IMODE((Path(dirpath) / d).lstat().st_mode) & ~0o770 == 0, d
    assert stat.S_IMODE((dest / "config" / "open.conf").stat().st_mode) == 0o666, "files keep their bits"
    assert stat.S_IMODE((dest / "data" / "acme").stat().st_mode) == 0o770
    assert stat.S_IMODE((dest / "data" / "receivedid.key").stat().st_mode) == 0o600
    for rel, (kind, *rest) in tree_listing(store).items():
        if kind == "file" and (dest / rel).exists():
            assert stat.S_IMODE((dest / rel).stat().st_mode) & ~rest[1] == 0, f"{rel} wider than its source"


# Rule 2: config ------------------------------------------------------------------------------


def test_config_copied_with_symlinks_and_specials_skipped(store, tmp_path):
    cfg = store / "config"
    (cfg / "sub" / "deeper").mkdir(parents=True)
    (cfg / "sub" / "deeper" / "k.pem").write_text("key")
    (cfg / "sub").chmod(0o710)
    (cfg / "shadow").symlink_to("/etc/shadow")
    os.mkfifo(cfg / "pipe")
    sock = make_socket(cfg / "sock")
    dest = tmp_path / "b"
    p = backup_ok(store, dest)
    sock.close()
    assert (dest / "config" / "sub" / "deeper" / "k.pem").read_text() == "key"
    assert stat.S_IMODE((dest / "config" / "sub").stat().st_mode) == 0o710
    assert os.readlink(dest / "config" / "shadow") == "/etc/shadow"
    assert os.readlink(dest / "config" / "current.pem") == "certs/mail.pem"
    assert not os.path.lexists(dest / "config" / "pipe") and not os.path.lexists(dest / "config" / "sock")
    assert "config/pipe: socket, FIFO or device: not backed up" in p.stderr
    assert "config/sock" in p.stderr


# Rule 3: databases ---------------------------------------------------------------------------


def test_databases_are_snapshots_without_lock_files(store, tmp_path):
    dest = tmp_path / "b"
    backup_ok(store, dest)
    m = manifest_of(dest)
    for name in ("auth.db", "dmarcrpt.db", "dmarceval.db", "mtasts.db", "tlsrpt.db", "tlsrptresult.db", "queue/index.db", f"accounts/{ACC}/index.db"):
        assert name in m["databases"], name
        assert m["databases"][name]["txnid"] > 0
        assert dump_env(store / "data" / name) == dump_env(dest / "data" / name)
    assert any(k.endswith("junkfilter.db") for k in m["databases"])
    assert not [p for p in dest.rglob("*-lock")]
    # Copies are distinct files, never links to live databases.
    assert ino(dest / "data" / "auth.db") != ino(store / "data" / "auth.db")


def test_missing_top_database_is_a_warning(store, tmp_path):
    (store / "data" / "mtasts.db").unlink()
    dest = tmp_path / "b"
    p = backup_ok(store, dest)
    assert "data/mtasts.db: known database missing" in p.stderr
    assert manifest_of(dest)["warnings"] >= 1


def test_snapshot_ids_come_from_the_copied_snapshot(store, tmp_path):
    """A message committed after the snapshot is not in the backup's index, and its file is not
    in the backup either; the backup's index and files agree (verify is clean)."""
    dest = tmp_path / "b"
    backup_ok(store, dest)
    with lmdb.open(str(dest / "data" / "accounts" / ACC / "index.db"), subdir=False, readonly=True, lock=False, max_dbs=8) as env:
        db = env.open_db(b"message", create=False)
        with env.begin(db=db) as txn:
            ids = {int.from_bytes(k, "big") for k, v in txn.cursor()}
    files = {int(p.name) for p in (dest / "data" / "accounts" / ACC / "msg").rglob("*") if p.is_file()}
    assert files <= ids
    assert run_cli("verify", dest).returncode == 0


# Rule 4: plain files -------------------------------------------------------------------------


def test_plain_files_are_copied_never_linked(store, tmp_path):
    dest = tmp_path / "b"
    backup_ok(store, dest)
    for rel in ("data/receivedid.key", "data/mailstore-version", "data/acme/keycerts/mail.example.org.pem", f"data/accounts/{ACC}/junkfilter.bloom"):
        assert (dest / rel).read_bytes() == (store / rel).read_bytes()
        assert ino(dest / rel) != ino(store / rel), rel


def test_junk_filters_travel_with_their_accounts_messages(store, tmp_path):
    """An account's plain files go in the same engine call as its messages (layout.py's
    AreaLayout.files, the area's 'copy' key), not in a call of their own per account in the
    'other files' phase: each such call started a thread, a pipe and a pool."""
    dest = tmp_path / "b"
    p = run_cli("backup", "--json", "--verbose", store, dest)
    assert p.returncode == 0, p.stderr
    lines = json_lines(p.stdout)
    phases = [(i, o["phase"]) for i, o in enumerate(lines) if o["message_type"] == "status"]
    other_files = next(i for i, phase in phases if phase == "other files")
    blooms = sorted(f"data/accounts/{d.name}/junkfilter.bloom" for d in (store / "data" / "accounts").iterdir() if (d / "junkfilter.bloom").exists())
    assert blooms
    at = {o["path"]: i for i, o in enumerate(lines) if o.get("path", "").endswith("/junkfilter.bloom")}
    assert sorted(at) == blooms, at
    for path, i in at.items():
        assert i < other_files, f"{path} copied in phase 'other files'"
        assert next(phase for j, phase in reversed(phases) if j < i) == "messages", path
        assert (dest / path).read_bytes() == (store / path).read_bytes()
        assert ino(dest / path) != ino(store / path), path
    files = manifest_of(dest)["files"]
    assert all(files[p.removeprefix("data/")]["bytes"] == (store / p).stat().st_size for p in blooms)


# Rules 5 and 6: queue and accounts -----------------------------------------------------------


def test_message_files_are_hardlinked(store, tmp_path):
    dest = tmp_path / "b"
    backup_ok(store, dest)
    ids = live_ids(store, ACC)
    for id_ in ids:
        rel = f"data/accounts/{ACC}/msg/{message_rel(id_)}"
        assert ino(dest / rel) == ino(store / rel)
    with Store.open(store, durable=False) as s:
        for id_ in s.queue.ids():
            rel = f"data/queue/{message_rel(id_)}"
            assert ino(dest / rel) == ino(store / rel)
    m = manifest_of(dest)
    assert m["accounts"][ACC]["linked"] == len(ids)
    assert m["status"] == "ok"


def test_missing_message_file_is_an_error_and_the_backup_goes_on(store, tmp_path):
    ids = live_ids(store, ACC)
    gone = ids[len(ids) // 2]
    (store / "data" / "accounts" / ACC / "msg" / message_rel(gone)).unlink()
    with Store.open(store, durable=False) as s:
        qgone = s.queue.ids()[0]
    (store / "data" / "queue" / message_rel(qgone)).unlink()
    dest = tmp_path / "b"
    p = run_cli("backup", store, dest)
    assert p.returncode == 1
    assert f"data/accounts/{ACC}/msg/{message_rel(gone)}" in p.stderr
    assert f"message {gone} of the snapshot has no file" in p.stderr
    assert f"data/queue/{message_rel(qgone)}" in p.stderr
    m = manifest_of(dest)
    assert m["status"] == "failed" and m["errors"] == 2
    assert m["accounts"][ACC]["missing"] == 1 and m["queue"]["missing"] == 1
    assert m["accounts"][ACC]["linked"] == len(ids) - 1
    assert m["accounts"]["user0001"]["missing"] == 0


def test_new_erasing_and_stray_files(store, tmp_path):
    acc_dir = store / "data" / "accounts" / ACC
    with Store.open(store, durable=False) as s:
        acc = s.account(ACC)
        # One more erasure pending, as a writer leaves it while a backup holds the lease.
        victim = sorted(acc.messages())[-1]
        with acc.env.begin(write=True) as txn:
            rec = acc.message(victim) | {"expunged": True}
            txn.put(id_key(victim), pack(rec), db=acc.db["message"])
            txn.put(id_key(victim), b"", db=acc.db["message_erase"])
        erasing = acc.erasing()
        highest = max(acc.messages(expunged=True))
    assert victim in erasing and acc.message_path(victim).exists()
    new_id = highest + 5
    (acc_dir / "msg" / message_rel(new_id)).parent.mkdir(exist_ok=True)
    (acc_dir / "msg" / message_rel(new_id)).write_text("arrived after the snapshot")
    wrong_place = acc_dir / "msg" / "b" / str(new_id + 1)  # right name, wrong directory
    wrong_place.parent.mkdir(exist_ok=True)
    wrong_place.write_text("misplaced")
    low_stray = acc_dir / "msg" / "a" / "1"  # ID 1 is a mailbox ID: no message claims it
    low_stray.write_text("stray")
    (acc_dir / "notes.txt").write_text("hand-written")
    (store / "data" / "queue" / "a" / "999999").write_text("not at its path")
    dest = tmp_path / "b"
    p = backup_ok(store, dest)
    bdir = dest / "data" / "accounts" / ACC
    assert not (bdir / "msg" / message_rel(new_id)).exists(), "new files are skipped"
    assert str(new_id) not in p.stderr, "silently"
    for id_ in erasing:
        assert not (bdir / "msg" / message_rel(id_)).exists()
    assert (bdir / "msg" / "a" / "1").read_text() == "stray"
    assert (bdir / "notes.txt").read_text() == "hand-written"
    assert (dest / "data" / "queue" / "a" / "999999").exists()
    assert ino(bdir / "notes.txt") != ino(acc_dir / "notes.txt"), "unrecognized files are copied"
    assert f"data/accounts/{ACC}/msg/a/1: no record of the snapshot claims this message file: a delivery in progress, or one a crash interrupted" in p.stderr
    assert f"data/accounts/{ACC}/msg/b/{new_id + 1}: unrecognized file in a message directory; copied" in p.stderr
    assert f"data/accounts/{ACC}/notes.txt: unrecognized file; copied" in p.stderr
    assert "data/queue/a/999999: unrecognized file in a message directory; copied" in p.stderr
    m = manifest_of(dest)["accounts"][ACC]
    assert (m["skipped_new"], m["skipped_erasing"], m["orphans"], m["unrecognized"]) == (1, len(erasing), 1, 2)
    # What the backup copied does not make it fail verification: nothing can collide with it.
    assert run_cli("verify", dest).returncode == 0


def test_account_that_cannot_be_opened_is_copied_as_plain_files(store, tmp_path):
    bad = store / "data" / "accounts" / "user0001" / "index.db"
    raw = bytearray(bad.read_bytes())
    raw[4096 * 2 :] = b"\xff" * (len(raw) - 4096 * 2)  # every page after the two metas
    bad.write_bytes(bytes(raw))
    dest = tmp_path / "b"
    p = run_cli("backup", store, dest)
    assert p.returncode == 1, p.stderr
    assert "data/accounts/user0001/index.db: database not backed up: damaged" in p.stderr
    assert "its directory is copied as plain files" in p.stderr
    src_files = {p.relative_to(store) for p in (store / "data/accounts/user0001").rglob("*") if p.is_file() and not p.name.endswith("-lock")}
    dst_files = {p.relative_to(dest) for p in (dest / "data/accounts/user0001").rglob("*") if p.is_file()}
    assert src_files == dst_files
    m = manifest_of(dest)
    assert m["status"] == "failed" and m["plain_copied_accounts"] == ["user0001"]
    assert m["accounts"][ACC]["linked"] > 0, "other accounts are backed up as usual"


class Inotify:
    """Every inotify event (open, read, write, create, delete, attribute change) on some
    directories and their entries: evidence that does not depend on atime."""

    ALL_EVENTS = 0xFFF

    def __init__(self):
        import ctypes

        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        self.names: dict[int, Path] = {}

    def watch(self, d: Path) -> None:
        wd = self.libc.inotify_add_watch(self.fd, os.fsencode(d), self.ALL_EVENTS)
        assert wd >= 0
        self.names[wd] = d

    def events(self) -> list[tuple[Path, int]]:
        import struct

        out = []
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            i = 0
            while i < len(buf):
                wd, mask, _cookie, n = struct.unpack_from("iIII", buf, i)
                name = buf[i + 16 : i + 16 + n].rstrip(b"\0")
                out.append((self.names.get(wd, Path("?")) / os.fsdecode(name), mask))
                i += 16 + n

    def close(self) -> None:
        os.close(self.fd)


def test_invalid_account_names_are_errors_and_nothing_is_touched(tmp_path):
    """Each invalid name would lead somewhere if it were joined to data/accounts/: bait sits
    there (a real LMDB index without a lock file, a message file with a marker). Nothing may
    open, read, create or change anything there (inotify), in STORE's parent, DEST's parent or
    DEST; no lock file appears; no bait byte reaches DEST."""
    store = make_store(tmp_path / "sp" / "store", messages=200, accounts=2)
    dest = tmp_path / "dp" / "dest"
    dest.parent.mkdir()
    real_index = (store / "data" / "accounts" / "user0000" / "index.db").read_bytes()
    marker = b"BAIT-a5f0c3e1"
    abs_bait = tmp_path / "absbait"
    # name -> where it leads from STORE/data/accounts/ (bait goes there) and from DEST/data/accounts/
    names = {
        "../../../bait": store.parent / "bait",
        "../../bait": store / "bait",
        "../x": store / "data" / "x",
        str(abs_bait): abs_bait,
        "a/b": store / "data" / "accounts" / "a" / "b",
        ".hidden": store / "data" / "accounts" / ".hidden",
    }
    dest_targets = [dest.parent / "bait", dest / "bait", dest / "data" / "x", dest / "data" / "accounts" / "a"]
    bait_dirs = {n: d for n, d in names.items() if n not in ("../x", "a/b")}  # data/x and accounts/a/ would be backed up as plain data
    for d in bait_dirs.values():
        (d / "msg" / "a").mkdir(parents=True)
        (d / "index.db").write_bytes(real_index)
        (d / "msg" / "a" / "1").write_bytes(marker)
    cfg = store / "config" / "mailstore.toml"
    cfg.write_text(cfg.read_text() + "".join(f"\n[accounts.{n!r}]\n".replace("'", '"') for n in names))
    before_store = inode_listing(store)
    before_sp = sorted(os.listdir(store.parent))
    watcher = Inotify()
    try:
        # Only .hidden is inside data/accounts, where the backup must list directories: its
        # contents are an unconfigured directory's (copied as plain files), so only the LMDB
        # side is watched there (no lock file). Every other bait tree must stay untouched.
        for n, d in bait_dirs.items():
            if n != ".hidden":
                for sub in (d, d / "msg", d / "msg" / "a"):
                    watcher.watch(sub)
        # The control: the watcher sees a plain read.
        (store.parent / "bait" / "msg" / "a" / "1").read_bytes()
        assert watcher.events(), "inotify must see a read"
        p = run_cli("backup", store, dest)
        seen = watcher.events()
    finally:
        watcher.close()
    assert p.returncode == 1, p.stderr
    for name in names:
        assert f"account {name!r}" in p.stderr and "nothing read or written for it" in p.stderr
    assert seen == [], f"the backup touched bait: {seen}"
    for d in bait_dirs.values():
        assert not (d / "index.db-lock").exists(), d
    assert inode_listing(store) == before_store
    assert sorted(os.listdir(store.parent)) == before_sp
    assert sorted(os.listdir(dest.parent)) == ["dest"]
    for t in dest_targets:
        assert not os.path.lexists(t), t
    for d in bait_dirs.values():
        assert not os.path.lexists(dest / "data" / "accounts" / d.name) or d.name == ".hidden"
    copied_bait = [f for f in dest.rglob("*") if f.is_file() and not f.is_symlink() and f.read_bytes() == marker]
    assert copied_bait == [dest / "data" / "accounts" / ".hidden" / "msg" / "a" / "1"], copied_bait
    m = manifest_of(dest)
    assert m["status"] == "failed" and sorted(m["accounts"]) == ["user0000", "user0001"]


# Rule 7: everything else ---------------------------------------------------------------------


def test_everything_else_in_data(store, tmp_path):
    data = store / "data"
    (data / "tmp" / "deliver.123").write_text("scratch")
    sock = make_socket(data / "ctl")
    other = make_socket(data / "other.sock")
    (data / "extra" / "nested").mkdir(parents=True)
    (data / "extra" / "nested" / "f").write_text("x")
    (data / "outside").symlink_to("/etc/shadow")
    (data / "accounts" / "ghost" / "msg" / "a").mkdir(parents=True)
    (data / "accounts" / "ghost" / "msg" / "a" / "3").write_text("orphan account")
    weird = os.fsencode(str(data)) + b"/caf\xe9\nname"
    with open(weird, "wb") as f:
        f.write(b"latin-1 and a newline")
    dest = tmp_path / "b"
    p = backup_ok(store, dest)
    sock.close()
    other.close()
    assert not (dest / "data" / "tmp").exists() and not os.path.lexists(dest / "data" / "ctl")
    assert not os.path.lexists(dest / "data" / "other.sock")
    assert "data/other.sock: socket, FIFO or device: not backed up" in p.stderr
    assert "data/ctl" not in p.stderr
    assert (dest / "data" / "extra" / "nested" / "f").read_text() == "x"
    assert "data/extra: not part of the mail store format; copied" in p.stderr
    assert os.readlink(dest / "data" / "outside") == "/etc/shadow"
    assert (dest / "data" / "accounts" / "ghost" / "msg" / "a" / "3").read_text() == "orphan account"
    assert "data/accounts/ghost: directory of an account not in the config" in p.stderr
    copied = os.fsencode(str(dest / "data")) + b"/caf\xe9\nname"
    with open(copied, "rb") as f:
        assert f.read() == b"latin-1 and a newline"
    shown = escape_path(b"data/caf\xe9\nname")
    assert shown + ": not part of the mail store format" in p.stderr
    assert "data/caf\\xe9\\nname" in p.stderr


def test_source_store_is_not_modified(store, tmp_path):
    before = inode_listing(store)
    modes = tree_listing(store)
    backup_ok(store, tmp_path / "b")
    assert inode_listing(store) == before
    assert tree_listing(store) == modes


# Rules 8 and 9: manifest and reporting -------------------------------------------------------


def test_manifest_facts(store, tmp_path):
    dest = tmp_path / "b"
    backup_ok(store, dest)
    m = manifest_of(dest)
    for key in ("mailbak_version", "store_format_version", "started", "finished", "databases", "queue", "accounts", "warnings", "errors", "status"):
        assert key in m, key
    assert m["store_format_version"] == "1"
    assert m["started"].endswith("Z") and "T" in m["started"]
    acc = m["accounts"][ACC]
    for key in ("linked", "copied", "skipped_new", "skipped_erasing", "unrecognized", "missing"):
        assert isinstance(acc[key], int)
    assert not (dest / "mailbak.json.tmp").exists()


def test_json_output(store, tmp_path):
    os.unlink(store / "data" / "accounts" / ACC / "msg" / message_rel(live_ids(store, ACC)[0]))
    p = run_cli("backup", "--json", store, tmp_path / "b")
    assert p.returncode == 1
    lines = json_lines(p.stdout)
    types = {ln["message_type"] for ln in lines}
    assert {"status", "error", "summary"} <= types
    err = next(ln for ln in lines if ln["message_type"] == "error")
    assert err["code"] == "missing" and err["path"].startswith(f"data/accounts/{ACC}/msg/") and err["cause"]
    summary = lines[-1]
    assert summary["message_type"] == "summary" and summary["status"] == "failed"
    written = manifest_of(tmp_path / "b")
    assert written.pop("kind") == "mailbak-backup" and written.pop("manifest_version") == 1
    assert summary == {"message_type": "summary", **written}
    status = next(ln for ln in lines if ln["message_type"] == "status" and ln["phase"] == "messages")
    # Status lines carry the documented fields (their values are not checked: timing is bench/'s).
    required = ("files_total", "files_done", "seconds_elapsed")
    assert all(key in status for key in required), status


def test_quiet_prints_only_errors(store, tmp_path):
    (store / "data" / "stray.txt").write_text("x")
    p = run_cli("backup", "--quiet", store, tmp_path / "b")
    assert p.returncode == 0
    assert p.stderr == "" and p.stdout == ""
    os.unlink(store / "data" / "accounts" / ACC / "msg" / message_rel(live_ids(store, ACC)[0]))
    p = run_cli("backup", "-q", store, tmp_path / "c")
    assert p.returncode == 1
    assert [ln for ln in p.stderr.splitlines() if ln.strip()] == [ln for ln in p.stderr.splitlines() if ln.startswith("error: ")]


def test_verbose_lists_each_file(store, tmp_path):
    p = run_cli("backup", "--verbose", store, tmp_path / "b")
    assert p.returncode == 0
    assert p.stderr.count("hardlinked") == sum(1 for _ in (tmp_path / "b" / "data" / "accounts").rglob("msg/*/*")) + sum(1 for _ in (tmp_path / "b" / "data" / "queue").glob("*/*"))


def test_config_and_data_overrides(store, tmp_path):
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    os.rename(store / "config", moved / "cfg")
    backup_ok(store, tmp_path / "b", "--config", str(moved / "cfg"))
    assert (tmp_path / "b" / "config" / "mailstore.toml").exists()
    assert run_cli("backup", store, tmp_path / "c").returncode == 2


# The hot path across file systems ------------------------------------------------------------


def test_cross_device_copies_and_warns_once(shm_dir, tmp_path):
    store = make_store(shm_dir / "store", messages=200, accounts=3)
    dest = tmp_path / "b"
    p = backup_ok(store, dest)
    assert p.stderr.count("hardlinks are not possible") == 1
    assert "same file system as the store makes backups nearly free" in p.stderr
    m = manifest_of(dest)
    assert sum(a["linked"] for a in m["accounts"].values()) == 0
    assert sum(a["copied"] for a in m["accounts"].values()) > 0
    ids = live_ids(store, ACC)
    rel = f"data/accounts/{ACC}/msg/{message_rel(ids[0])}"
    assert (dest / rel).read_bytes() == (store / rel).read_bytes()
    assert (dest / rel).stat().st_mtime_ns == (store / rel).stat().st_mtime_ns
    assert run_cli("verify", dest).returncode == 0


# The interpreter lives under /root, which other users cannot read: start as root, import
# everything the command needs, then drop to the unprivileged user before any work is done.
DROP_AND_RUN = """
import os, sys
import mailbak.cli, mailbak.archiver, mailbak.verifier, mailbak.restorer, mailbak.report, mailbak.runner
import mailbak.lmdbcopy, mailbak.manifest, mailbak.layout, encodings.idna, json, tempfile, lmdb, fcntl
os.setgroups([])
os.setgid(int(sys.argv[2]))
os.setuid(int(sys.argv[1]))
sys.argv = ["mailbak"] + sys.argv[3:]
mailbak.cli.main()
"""


def run_as(user, *args):
    import subprocess
    import sys

    from conftest import CLI_ENV

    return subprocess.run([sys.executable, "-c", DROP_AND_RUN, str(user.pw_uid), str(user.pw_gid), *map(str, args)], capture_output=True, text=True, env=CLI_ENV, timeout=300)


def test_unreadable_source_files_are_errors_not_crashes(store, public_dir):
    """Run as an unprivileged user where possible, since root reads everything."""
    if os.geteuid() != 0:
        pytest.skip("needs root to prepare a store owned by another user")
    import pwd

    nobody = pwd.getpwnam("nobody")
    work = public_dir
    os.rename(store, work / "store")
    store = work / "store"
    for dirpath, dirnames, filenames in os.walk(work):
        for n in dirnames + filenames:
            os.lchown(Path(dirpath) / n, nobody.pw_uid, nobody.pw_gid)
    os.chown(work, nobody.pw_uid, nobody.pw_gid)
    acc_msg = store / "data" / "accounts" / ACC / "msg"
    ids = live_ids(store, ACC)
    unreadable = acc_msg / message_rel(ids[0])
    os.chown(unreadable, 0, 0)
    unreadable.chmod(0o600)  # not nobody's, not readable: protected_hardlinks refuses the link too
    secret_dir = store / "data" / "acme" / "keycerts"
    os.chown(secret_dir, 0, 0)
    secret_dir.chmod(0o700)
    p = run_as(nobody, "backup", store, work / "b")
    assert p.returncode == 1, p.stderr
    assert f"data/accounts/{ACC}/msg/{message_rel(ids[0])}" in p.stderr
    assert "Permission denied" in p.stderr
    assert "data/acme/keycerts" in p.stderr
    m = manifest_of(work / "b")
    assert m["status"] == "failed"
    assert m["accounts"][ACC]["linked"] + m["accounts"][ACC]["copied"] == len(ids) - 1


def test_database_lmdb_cannot_compact_is_copied_page_for_page(store, tmp_path):
    """py-lmdb 3.0's compacting copy crashes on a DUPSORT+DUPFIXED database holding a duplicate
    sub-tree; such a (valid) database is copied page for page instead, and still checked."""
    import subprocess
    import sys

    env = open_env(store / "data" / "dmarcrpt.db", durable=False)
    fixed = env.open_db(b"fixed", dupsort=True, dupfixed=True)
    with env.begin(write=True, db=fixed) as txn:
        for i in range(2000):
            txn.put(b"key", i.to_bytes(8, "big"))
    env.close()
    crash = subprocess.run([sys.executable, "-c", f"import lmdb; e = lmdb.open({str(store / 'data' / 'dmarcrpt.db')!r}, subdir=False, readonly=True, max_dbs=8); e.copy({str(tmp_path / 'c.db')!r}, compact=True)"], capture_output=True)
    dest = tmp_path / "b"
    p = backup_ok(store, dest)
    assert "dmarcrpt.db" not in p.stderr
    assert dump_env(dest / "data" / "dmarcrpt.db") == dump_env(store / "data" / "dmarcrpt.db")
    assert manifest_of(dest)["databases"]["dmarcrpt.db"]["txnid"] > 0
    assert run_cli("verify", dest).returncode == 0
    # Documents why: the compacting copy itself does not survive this database.
    assert crash.returncode != 0

"""mailbak check REPO: every snapshot verified, each shared inode stat'ed and read once; damage
named with every snapshot holding it; subsets; verify --read-data of one snapshot."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from conftest import backup_into, flip_byte, json_lines, run_cli, start_times
from mailbak import digests
from mailbak.gen import age_tree
from mailbak.store import Store

ACC = "user0000"


# Digest files --------------------------------------------------------------------------------
# Backups record their digests themselves (the lead's recording); for a backup made by a build
# without it, ensure_digests writes them as docs/FORMAT.md specifies, so that these tests run
# the same either way.


def _escape(key: bytes) -> str:
    return "".join(chr(b) if 0x21 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in key)


def render(entries: list[tuple[int | bytes, int, bytes | None, str]], *, shard: bool) -> bytes:
    """A digest file (docs/FORMAT.md): header, sorted entries, trailer."""
    lines = []
    for key, size, digest, how in sorted(entries, key=lambda e: e[0] if shard else _escape(e[0])):
        k = str(key) if shard else _escape(key)
        lines.append(f"{k} {size} {digest.hex() if digest else '-'} {how}\n")
    body = ("mailbak-digests 1 sha256\n" + "".join(lines)).encode()
    return body + f"end {hashlib.sha256(body).hexdigest()}\n".encode()


def _message_area(rel: Path) -> tuple[str, int] | None:
    """(area below data/, ID) of a message file's path below the snapshot root, else None."""
    p = rel.parts
    if len(p) == 6 and p[:2] == ("data", "accounts") and p[3] == "msg" and p[5].isdigit():
        return f"accounts/{p[2]}", int(p[5])
    if len(p) == 4 and p[:2] == ("data", "queue") and p[3].isdigit():
        return "queue", int(p[3])
    return None


def ensure_digests(snap: Path) -> None:
    """Digest files and the manifest's ``digests`` for a snapshot that has none."""
    doc = json.loads((snap / "mailbak.json").read_text())
    if "digests" in doc:
        return
    shards: dict[tuple[str, int], list] = {}
    files: list = []
    for dirpath, _dirs, names in os.walk(snap):
        for n in names:
            path = Path(dirpath) / n
            rel = path.relative_to(snap)
            if rel.parts[0] in ("digests", "mailbak.json") or not path.is_file() or path.is_symlink():
                continue
            data = path.read_bytes()
            entry = (len(data), hashlib.sha256(data).digest(), "w")
            msg = _message_area(rel)
            if msg:
                shards.setdefault((msg[0], msg[1] >> 8), []).append((msg[1], *entry))
            else:
                files.append((str(rel).encode(), *entry))
    for (area, shard), entries in shards.items():
        d = snap / "digests" / area
        d.mkdir(parents=True, exist_ok=True)
        (d / str(shard)).write_bytes(render(entries, shard=True))
    (snap / "digests" / "files").write_bytes(render(files, shard=False))
    doc["digests"] = {"algorithm": "sha256", "format": 1, "files": len(files), "messages": sum(map(len, shards.values())), "pending": 0}
    (snap / "mailbak.json").write_text(json.dumps(doc))


# Fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def history(store: Path, repo: Path) -> tuple[Path, Path, list[str]]:
    """Three snapshots of the store (deliveries between them), newest first, with digests."""
    age_tree(store)
    names = []
    for i, t in enumerate(start_times(3)):
        if i:
            with Store.open(store, durable=False) as s:
                acc = s.account(ACC)
                acc.deliver(acc.mailbox_id("Inbox"), f"Subject: new {i}\r\n\r\nbody {i}\r\n".encode())
        names.append(backup_into(store, repo, clock=t)["snapshot"])
    for n in names:
        ensure_digests(repo / n)
    return store, repo, sorted(names, reverse=True)


def check(repo: Path, *args: str) -> tuple[int, dict, list[dict], str]:
    """`mailbak check --json REPO ARGS`: exit status, summary, events, stderr."""
    p = run_cli("check", "--json", *args, repo)
    assert "Traceback" not in p.stderr, p.stderr
    lines = json_lines(p.stdout)
    summary = [e for e in lines if e["message_type"] == "summary"]
    return p.returncode, summary[-1] if summary else {}, lines, p.stderr


def shared_message(repo: Path, names: list[str]) -> Path:
    """A message file of ACC that every snapshot holds as one inode (in the oldest one)."""
    oldest = repo / names[-1]
    for f in sorted((oldest / "data" / "accounts" / ACC / "msg").rglob("*"), key=lambda p: int(p.name) if p.name.isdigit() else 0):
        if not f.is_file():
            continue
        rel = f.relative_to(oldest)
        inos = {os.stat(repo / n / rel).st_ino for n in names if (repo / n / rel).exists()}
        if len(inos) == 1 and all((repo / n / rel).exists() for n in names):
            return f
    raise AssertionError("no message shared by every snapshot")


def distinct_inodes(repo: Path, names: list[str]) -> dict[tuple[int, int], int]:
    """(dev, ino) -> size of every regular file the snapshots' digests cover (all but the
    manifest and the digest files themselves)."""
    out = {}
    for n in names:
        for dirpath, _dirs, files in os.walk(repo / n):
            for f in files:
                p = Path(dirpath) / f
                rel = p.relative_to(repo / n)
                if rel.parts[0] in ("digests", "mailbak.json"):
                    continue
                st = os.lstat(p)
                if stat.S_ISREG(st.st_mode):
                    out[(st.st_dev, st.st_ino)] = st.st_size
    return out


# Tests ---------------------------------------------------------------------------------------


def test_a_clean_history_reads_each_shared_inode_once(history):
    _, repo, names = history
    code, s, _, err = check(repo, "--read-data")
    assert code == 0, err
    assert s["status"] == "clean" and s["snapshots"] == 3
    inodes = distinct_inodes(repo, names)
    assert s["inodes_read"] == s["inodes_checked"] == len(inodes)
    assert s["bytes_read"] == sum(inodes.values()), "every distinct inode read once, nothing twice"
    assert s["files_checked"] > s["inodes_read"] - 40, "messages of all three snapshots were checked"
    assert s["damaged"] == s["unverified"] == s["unrecorded"] == 0
    # Without --read-data nothing is read, and each file is still checked in every snapshot.
    code, s2, _, _ = check(repo)
    assert code == 0 and s2["bytes_read"] == 0 and s2["files_checked"] == s["files_checked"]


def test_a_flipped_byte_is_found_only_by_reading_and_names_every_snapshot(history):
    _, repo, names = history
    victim = shared_message(repo, names)
    flip_byte(victim)
    code, s, _, err = check(repo)
    assert code == 0, "sizes alone cannot see bit rot: " + err
    code, s, events, _ = check(repo, "--read-data")
    assert code == 1 and s["status"] == "problems"
    assert s["damaged"] == 1
    rel = str(victim.relative_to(repo / names[-1]))
    assert s["damage"] == [{"area": f"accounts/{ACC}", "id": int(victim.name), "path": rel, "cause": "digest_mismatch", "snapshots": names}]
    errors = [e for e in events if e["message_type"] == "error"]
    assert len(errors) == 1, errors
    assert errors[0]["path"] == f"{names[0]}/{rel}"
    assert f"message {victim.name} of account '{ACC}'" in errors[0]["cause"]
    assert all(n in errors[0]["cause"] for n in names)


def test_verify_read_data_of_one_snapshot(history):
    _, repo, names = history
    assert run_cli("verify", "--read-data", repo / names[0]).returncode == 0
    victim = shared_message(repo, names)
    flip_byte(victim)
    p = run_cli("verify", "--read-data", "--json", repo / names[1])
    assert p.returncode == 1
    lines = json_lines(p.stdout)
    errors = [e for e in lines if e["message_type"] == "error"]
    assert [e["code"] for e in errors] == ["digest_mismatch"]
    assert errors[0]["path"] == str(victim.relative_to(repo / names[-1]))
    assert lines[-1]["damaged"] == 1
    assert run_cli("verify", repo / names[1]).returncode == 0, "sizes only: clean"


def test_a_database_damaged_after_the_backup_is_named(history):
    _, repo, names = history
    db = repo / names[1] / "data" / "accounts" / ACC / "index.db"
    raw = bytearray(db.read_bytes())
    raw[2 * 4096 + 10] ^= 0x05
    db.write_bytes(bytes(raw))
    code, s, events, _ = check(repo)
    assert code == 1
    errors = [(e["code"], e["path"]) for e in events if e["message_type"] == "error"]
    assert ("database", f"{names[1]}/data/accounts/{ACC}/index.db") in errors
    assert s["snapshots_with_problems"] == [names[1]]


def test_damaged_and_missing_digest_files_leave_their_files_unverified(history):
    _, repo, names = history
    shard_dir = repo / names[0] / "digests" / "accounts" / ACC
    shards = sorted(shard_dir.iterdir())
    # Replaced, not changed in place: a shard may be a hardlink shared with other snapshots.
    damaged = shards[0]
    data = damaged.read_bytes().replace(b"\nend ", b"\nend 0")
    damaged.unlink()
    damaged.write_bytes(data)
    (repo / names[0] / "digests" / "queue").rename(repo / names[0] / "queue-digests-gone")
    code, s, events, _ = check(repo, "--read-data")
    assert code == 1
    assert s["damaged"] == 0, "a damaged digest file proves nothing: its files are unverified, not damaged"
    codes = {(e["code"], e["path"].split("/")[0]) for e in events if e["message_type"] == "error"}
    assert ("digest_damaged", names[0]) in codes and ("digest_missing", names[0]) in codes
    # Files the older snapshots hold too are verified through their records after all; only
    # the newest snapshot's own files of those two digest files stay unverified.
    older = set(distinct_inodes(repo, names[1:]))
    own = set()
    for f in (repo / names[0] / "data").rglob("*"):
        msg = _message_area(f.relative_to(repo / names[0]))
        st = os.lstat(f)
        if msg and (msg[0] == "queue" or (msg[0] == f"accounts/{ACC}" and str(msg[1] >> 8) == damaged.name)) and (st.st_dev, st.st_ino) not in older:
            own.add((st.st_dev, st.st_ino))
    assert s["unverified"] == len(own) and s["inodes_read"] == s["inodes_checked"]
    # A single snapshot has no other record: its files stay unverified.
    p = run_cli("verify", "--read-data", "--json", repo / names[0])
    summary = json_lines(p.stdout)[-1]
    assert p.returncode == 1 and summary["unverified"] > 0 and summary["damaged"] == 0


def test_subset_n_of_m_reads_every_inode_exactly_once_over_m_runs(history):
    _, repo, names = history
    everything = set(distinct_inodes(repo, names))
    runs = []
    for n in range(1, 5):
        code, s, events, err = check(repo, "--verbose", f"--read-data-subset={n}/4")
        assert code == 0, err
        read = set()
        for e in events:
            if e["message_type"] == "info" and e["code"] == "read":
                st = os.lstat(repo / e["path"])
                read.add((st.st_dev, st.st_ino))
        assert len(read) == s["inodes_read"], "each inode read once within the run"
        runs.append(read)
    assert set().union(*runs) == everything
    assert sum(map(len, runs)) == len(everything), "pairwise disjoint"
    assert all(runs), "every part reads something at this size"


def test_random_subsets_read_a_share(history):
    _, repo, names = history
    total = sum(distinct_inodes(repo, names).values())
    code, s, _, _ = check(repo, "--read-data-subset=100%")
    assert code == 0 and s["bytes_read"] == total
    budget = total // 3
    code, s, _, _ = check(repo, f"--read-data-subset={budget}")
    largest = max(distinct_inodes(repo, names).values())
    assert code == 0 and 0 < s["bytes_read"] <= budget + largest
    code, s, _, _ = check(repo, "--read-data-subset=30%")
    assert code == 0 and 0 < s["inodes_read"] < s["inodes_checked"]


@pytest.mark.parametrize("bad", ["0/3", "4/3", "3/0", "0%", "101%", "0", "x", "1/2/3", "-5M"])
def test_bad_subsets_and_non_repositories_are_bad_input(history, tmp_path, bad):
    _, repo, _ = history
    p = run_cli("check", f"--read-data-subset={bad}", repo)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1].startswith("mailbak: error: --read-data-subset"), p.stderr
    p = run_cli("check", tmp_path)
    assert p.returncode == 2 and "not a mailbak repository" in p.stderr


def test_a_killed_snapshot_is_reported_and_its_digests_never_trusted(history, store):
    _, repo, names = history
    with Store.open(store, durable=False) as s:
        acc = s.account(ACC)
        new_id = acc.deliver(acc.mailbox_id("Inbox"), b"Subject: only in the killed one\r\n\r\nx\r\n")
    killed = backup_into(store, repo)["snapshot"]
    ensure_digests(repo / killed)
    doc = json.loads((repo / killed / "mailbak.json").read_text())
    doc["status"] = "running"
    (repo / killed / "mailbak.json").write_text(json.dumps(doc))
    # Its shards say wrong digests, in well-formed files (their checksums hold): for a shared
    # message, and for the message only it holds. Trusted, either would be a digest_mismatch.
    victim = shared_message(repo, names)
    area, shared_id = _message_area(victim.relative_to(repo / names[-1]))
    for id_ in (shared_id, new_id):
        shard = repo / killed / "digests" / area / str(id_ >> 8)
        entries = [e._replace(digest=b"\0" * 32, how=digests.How.WRITTEN) if e.key == id_ else e for e in digests.parse(shard.read_bytes(), shard=True)]
        assert any(e.key == id_ for e in entries)
        shard.unlink()
        shard.write_bytes(digests.render(entries, shard=True))
    code, s, events, _ = check(repo, "--read-data")
    assert code == 1
    assert ("incomplete", f"{killed}/mailbak.json") in {(e["code"], e["path"]) for e in events if e["message_type"] == "error"}
    assert s["damaged"] == 0 and s["damage"] == []
    assert not [e for e in events if e.get("code") == "digest_mismatch"]
    ok = distinct_inodes(repo, names)
    assert s["inodes_read"] == len(ok), "the killed snapshot's own inodes are checked by size only"
    assert s["inodes_checked"] > len(ok)
    assert s["snapshots"] == 4


def test_a_snapshot_that_lost_its_manifest_is_reported_and_the_rest_still_checked(history):
    _, repo, names = history
    (repo / names[0] / "mailbak.json").unlink()  # still has config/ and data/: never a live store
    code, s, events, _ = check(repo, "--read-data")
    assert code == 1
    errors = {(e["code"], e["path"]) for e in events if e["message_type"] == "error"}
    assert ("incomplete", f"{names[0]}/mailbak.json") in errors, errors
    assert s["snapshots"] == len(names) and s["damaged"] == 0
    assert s["inodes_read"] > 0


def test_metrics_name_bytes_read_and_inodes(history, tmp_path):
    from test_monitor import metrics_of, value

    _, repo, names = history
    m = tmp_path / "check.prom"
    p = run_cli("check", "--read-data", "--quiet", "--metrics-file", m, repo)
    assert p.returncode == 0, p.stderr
    metrics = metrics_of(m)
    inodes = distinct_inodes(repo, names)
    assert value(metrics, "mailbak_bytes_read", command="check", target=str(repo)) == sum(inodes.values())
    assert value(metrics, "mailbak_inodes_checked") == len(inodes)
    assert value(metrics, "mailbak_files", kind="read") == len(inodes)
    assert value(metrics, "mailbak_files", kind="damaged") == value(metrics, "mailbak_files", kind="repaired") == 0
    assert value(metrics, "mailbak_files", kind="checked") > len(inodes) - 40
    assert value(metrics, "mailbak_success") == 1


def test_check_holds_the_repository_shared(history):
    from conftest import waits_for_a_held_repository

    _, repo, _ = history
    p = waits_for_a_held_repository(repo, "check", repo)
    assert p.returncode == 0, p.stderr


def test_repair_heals_from_the_store_and_leaves_what_has_no_good_copy(history):
    store, repo, names = history
    victim = shared_message(repo, names)
    rel = victim.relative_to(repo / names[-1])
    good = (store / rel).read_bytes()
    flip_byte(victim)
    code, s, _, err = check(repo, "--repair")
    assert code == 1, "damage was found (and healed): " + err
    assert s["damaged"] == 1 and s["repaired"] == 1
    assert [r["source"] for r in s["repairs"]] == ["store"]
    assert sorted(s["repairs"][0]["repointed"]) == sorted(names)
    inos = {os.stat(repo / n / rel).st_ino for n in names}
    assert len(inos) == 1 and (repo / names[0] / rel).read_bytes() == good, "one new inode, good bytes, every snapshot"
    code, s, _, err = check(repo, "--read-data")
    assert code == 0 and s["damaged"] == 0, err
    # No good copy anywhere: the store's file is damaged too. Reported, nothing replaced.
    before = os.stat(repo / names[0] / rel).st_ino
    flip_byte(repo / names[0] / rel)
    flip_byte(store / rel)
    code, s, events, _ = check(repo, "--repair")
    assert code == 1 and s["repaired"] == 0
    assert [r["source"] for r in s["repairs"]] == [None]
    assert "not_healed" in {e["code"] for e in events if e["message_type"] == "error"}
    assert {os.stat(repo / n / rel).st_ino for n in names} == {before}


def test_store_linked_messages_are_hashed_and_counted_unrecorded(store, tmp_path):
    """A repository on the store's file system links the store's message files: backup never
    read them, so their entries say `-`; check reads them, counts them unrecorded, and writes
    nothing."""
    age_tree(store)
    repo = tmp_path / "repo"
    assert run_cli("init", repo).returncode == 0
    name = backup_into(store, repo)["snapshot"]
    doc = json.loads((repo / name / "mailbak.json").read_text())
    assert doc["digests"]["pending"] > 0
    before = {p: p.stat().st_mtime_ns for p in (repo / name / "digests").rglob("*")}
    code, s, _, err = check(repo, "--read-data")
    assert code == 0, err
    assert s["unrecorded"] == doc["digests"]["pending"] and s["damaged"] == 0
    assert {p: p.stat().st_mtime_ns for p in (repo / name / "digests").rglob("*")} == before


def test_snapshots_without_digests_are_checked_by_size_and_said_once(store, repo):
    age_tree(store)
    t1, t2 = start_times(2)
    old = backup_into(store, repo, "--no-digests", clock=t1)["snapshot"]
    with Store.open(store, durable=False) as st:
        acc = st.account(ACC)
        acc.expunge(sorted(acc.messages())[:2])
        acc.sweep()
    new = backup_into(store, repo, clock=t2)["snapshot"]
    code, s, events, err = check(repo, "--read-data")
    assert code == 0, err
    warnings = [e for e in events if e["message_type"] == "warning"]
    assert [w["code"] for w in warnings] == ["no_digests"] and old in warnings[0]["cause"] and new not in warnings[0]["cause"]
    # The two messages expunged since are only in the old snapshot: checked by size, not read.
    assert s["sizes_only"] == s["inodes_checked"] - s["inodes_read"] == 2


def test_the_api_runs_check(history):
    import mailbak

    _, repo, names = history
    r = mailbak.check(repo, subset="1/1")
    assert isinstance(r, mailbak.CheckResult) and r.ok and r.snapshots == 3 and r.read_data
    assert r.inodes_read == r.inodes_checked == len(distinct_inodes(repo, names)) and r.damage == []
    with pytest.raises(mailbak.UsageError, match="read-data-subset"):
        mailbak.check(repo, subset="7/3")
    assert mailbak.verify(repo / names[0], read_data=True).summary["inodes_read"] > 0


def test_an_interrupted_check_exits_130_and_changed_nothing(history, tmp_path):
    import signal

    from pausing import PausePoint

    _, repo, names = history
    before = {p: p.stat().st_mtime_ns for p in repo.rglob("*")}
    point = PausePoint(tmp_path / "pause", "verify.files", after=2)  # in the second snapshot
    proc = point.popen("check", "--read-data", repo)
    point.wait_reached(proc)
    proc.send_signal(signal.SIGINT)
    point.go()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "mailbak: interrupted (SIGINT); check incomplete; nothing was changed"
    assert {p: p.stat().st_mtime_ns for p in repo.rglob("*")} == before


def test_verify_read_data_of_a_store_needs_a_backup_to_compare_with(history):
    store, repo, names = history
    p = run_cli("verify", "--read-data", store)
    assert p.returncode == 2 and "needs --against REPO|BACKUP" in p.stderr.strip().splitlines()[-1]
    p = run_cli("verify", "--read-data", "--fix", repo / names[0])
    assert p.returncode == 2 and "--read-data and --fix" in p.stderr

"""Source bit rot: `mailbak verify --read-data STORE --against REPO|BACKUP` reads the live store's
message files whose size and modification time are those of their copy in the backup, and names
every one whose bytes no longer have the digest the backup recorded (sourcecheck.py)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import backup_ok, flip_byte, init_ok, json_lines, make_store, run_cli, tree_listing


def summary(p) -> dict:
    return json_lines(p.stdout)[-1]


def message_files(store: Path) -> list[Path]:
    return sorted(p for p in (store / "data/accounts").rglob("*") if p.is_file() and "msg" in p.parts)


def live_messages(repo: Path) -> int:
    """Live messages (queue and accounts) of the repository's snapshot: what is compared."""
    snap = next(p for p in repo.iterdir() if p.name[0].isdigit())
    doc = json.loads((snap / "mailbak.json").read_text())
    return sum(a["live"] for a in [doc["queue"], *doc["accounts"].values()] if a)


def setup(tmp_path: Path, shm: Path) -> tuple[Path, Path]:
    store = make_store(tmp_path / "store", messages=200, accounts=2)
    repo = shm / "repo"
    init_ok(repo)
    backup_ok(store, repo)
    return store, repo


def test_a_flipped_byte_in_the_store_is_named_and_nothing_is_written(tmp_path: Path, shm_dir: Path):
    store, repo = setup(tmp_path, shm_dir)
    files = message_files(store)
    clean = run_cli("verify", "--json", "--read-data", store, "--against", repo)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    s = summary(clean)
    assert (s["source_compared"], s["source_damaged"]) == (live_messages(repo), 0)
    assert s["source_bytes_read"] > 0

    snap = next(p for p in repo.iterdir() if p.name[0].isdigit())
    victim = next(f for f in files[len(files) // 2 :] if (snap / f.relative_to(store)).exists())  # a live message
    flip_byte(victim)
    before = tree_listing(store)
    p = run_cli("verify", "--json", "--read-data", store, "--against", repo)
    assert p.returncode == 1, p.stdout + p.stderr
    errors = [e for e in json_lines(p.stdout) if e.get("message_type") == "error"]
    rel = victim.relative_to(store).as_posix()
    assert [(e["code"], e["path"]) for e in errors] == [("source_damaged", rel)]
    assert "bit rot" in errors[0]["cause"]
    assert summary(p)["source_damaged"] == 1
    assert tree_listing(store) == before


def test_against_a_backup_directory_too(tmp_path: Path, shm_dir: Path):
    store = make_store(tmp_path / "store", messages=60, accounts=1)
    backup = shm_dir / "b"
    backup_ok(store, backup)
    flip_byte(message_files(store)[0])
    p = run_cli("verify", "--json", "--read-data", store, "--against", backup)
    assert p.returncode == 1 and summary(p)["source_damaged"] == 1, p.stdout + p.stderr


def test_a_file_rewritten_with_a_new_mtime_is_a_warning_not_read(tmp_path: Path, shm_dir: Path):
    store, repo = setup(tmp_path, shm_dir)
    f = message_files(store)[0]
    data = bytearray(f.read_bytes())
    data[0] ^= 0x01
    f.write_bytes(bytes(data))  # a new modification time: rewritten in place, not rot
    p = run_cli("verify", "--json", "--read-data", store, "--against", repo)
    assert p.returncode == 0, p.stdout + p.stderr
    warnings = [e for e in json_lines(p.stdout) if e.get("message_type") == "warning"]
    assert [e["code"] for e in warnings] == ["source_changed"]
    s = summary(p)
    assert (s["source_changed"], s["source_damaged"], s["source_compared"]) == (1, 0, live_messages(repo) - 1)


def test_a_symlink_in_place_of_a_message_is_never_followed(tmp_path: Path, shm_dir: Path):
    store, repo = setup(tmp_path, shm_dir)
    secret = tmp_path / "secret"
    f = message_files(store)[0]
    secret.write_bytes(f.read_bytes())  # same bytes: following the link would call it good
    f.unlink()
    f.symlink_to(secret)
    p = run_cli("verify", "--json", "--read-data", store, "--against", repo)
    assert p.returncode == 1  # verify's own check: a symlink where a message file belongs
    s = summary(p)
    assert s["source_not_compared"] == 1 and s["source_compared"] == live_messages(repo) - 1


def test_bad_uses_exit_2_with_one_line(tmp_path: Path, shm_dir: Path):
    store, repo = setup(tmp_path, shm_dir)
    snap = next(p for p in repo.iterdir() if p.name[0].isdigit())
    empty = shm_dir / "empty"
    init_ok(empty)
    nodigests = shm_dir / "nd"
    backup_ok(store, nodigests, "--no-digests")
    cases = [
        (["verify", "--read-data", store], "needs --against"),
        (["verify", "--against", repo, store], "not a live store"),
        (["verify", "--read-data", "--against", repo, snap], "not a live store"),
        (["verify", "--read-data", store, "--against", empty], "no complete snapshot"),
        (["verify", "--read-data", store, "--against", nodigests], "records no digests"),
        (["verify", "--read-data", store, "--against", tmp_path / "absent"], "not a complete backup"),
    ]
    for args, why in cases:
        p = run_cli(*args)
        assert p.returncode == 2, (args, p.stdout, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mailbak: error:") and why in lines[0], (args, p.stderr)
    # A failed reference is refused too.
    doc = json.loads((snap / "mailbak.json").read_text())
    doc["status"] = "failed"
    (snap / "mailbak.json").write_text(json.dumps(doc))
    p = run_cli("verify", "--read-data", store, "--against", snap)
    assert p.returncode == 2 and "says failed" in p.stderr


def test_a_symlinked_directory_in_the_reference_is_never_followed(tmp_path: Path, shm_dir: Path):
    store, repo = setup(tmp_path, shm_dir)
    snap = next(p for p in repo.iterdir() if p.name[0].isdigit())
    account = sorted((snap / "data/accounts").iterdir())[0]
    real = account / "msg" / "a.real"
    (account / "msg" / "a").rename(real)
    (account / "msg" / "a").symlink_to(real)
    in_dir = sorted(p for p in real.iterdir())
    flip_byte(store / "data/accounts" / account.name / "msg/a" / in_dir[0].name)
    p = run_cli("verify", "--json", "--read-data", store, "--against", repo)
    s = summary(p)
    # Nothing behind the link is looked at: the directory's messages are not compared (one
    # warning), so the rotted one is not found through it.
    assert s["source_damaged"] == 0 and s["source_not_compared"] >= 1, p.stdout
    warnings = [e for e in json_lines(p.stdout) if e.get("code") == "source_not_compared"]
    assert [w["path"] for w in warnings] == [f"data/accounts/{account.name}/msg/a"]


def test_a_damaged_digest_file_of_the_reference_is_a_warning_and_its_messages_not_compared(tmp_path: Path, shm_dir: Path):
    store, repo = setup(tmp_path, shm_dir)
    snap = next(p for p in repo.iterdir() if p.name[0].isdigit())
    shard = next(p for p in sorted((snap / "digests/accounts").rglob("*")) if p.is_file())
    listed = len(shard.read_text().splitlines()) - 2  # header and trailer aside
    flip_byte(shard, 40)
    p = run_cli("verify", "--json", "--read-data", store, "--against", repo)
    assert p.returncode == 0, p.stdout + p.stderr
    warnings = [e for e in json_lines(p.stdout) if e.get("code") == "digests"]
    assert [w["path"] for w in warnings] == [f"{snap.name}/{shard.relative_to(snap).as_posix()}"]
    assert summary(p)["source_compared"] == live_messages(repo) - listed

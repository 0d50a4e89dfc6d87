"""Issue 18, the repository slice: what a reader, a damaged manifest or a forged time does to a
repository's history (findings 8, 10 and 11, and the pile of failed snapshots)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CLI_ENV, backup_into, json_lines, manifest_of, run_cli, start_times, waits_for_a_held_repository
from mailbak import repository
from mailbak.repository import FAILED_PILE_WARN, MARKER
from pausing import PausePoint

#: A manifest nested deeper than any JSON parser's recursion allows.
DEEP = 100_000


def cli(*args: str | os.PathLike, env: dict | None = None) -> subprocess.CompletedProcess:
    """`mailbak ARGS` with extra environment (TZ); never a traceback, whatever the status."""
    p = subprocess.run([sys.executable, "-m", "mailbak", *map(str, args)], capture_output=True, text=True, timeout=300, env={**CLI_ENV, **(env or {})})
    assert "Traceback" not in p.stderr + p.stdout, p.stderr
    return p


def names(repo: Path) -> list[str]:
    return sorted(n for n in os.listdir(repo) if repository.NAME_RE.match(n))


def forged_snapshot(repo: Path, name: str, manifest_text: str) -> Path:
    """A snapshot directory holding ``manifest_text`` as its manifest and a data/ directory."""
    path = repo / name
    path.mkdir(mode=0o700)
    (path / "data").mkdir()
    (path / "mailbak.json").write_text(manifest_text)
    return path


# 8: prune and a reader of a snapshot -------------------------------------------------------------


@pytest.mark.parametrize(("point", "command"), [("verify.files", "verify"), ("restore_target_held", "restore")])
def test_prune_waits_or_refuses_while_a_snapshot_is_verified_or_restored(store, repo, tmp_path, point, command):
    """A verify or restore of a snapshot holds the repository's shared lock from its start to
    its end: prune --no-wait refuses while it reads, a plain prune waits, and the reader ends
    clean with its source intact."""
    t1, t2 = start_times(2)  # a name each, no sleep past a second boundary
    backup_into(store, repo, clock=t1)
    backup_into(store, repo, clock=t2)
    old, new = names(repo)
    pp = PausePoint(tmp_path / "pause", point)
    args = [command, repo / old] + ([tmp_path / "restored"] if command == "restore" else [])
    reader = pp.popen(*args)
    waiting = None
    try:
        pp.wait_reached(reader)
        p = cli("prune", "--keep-last", "1", "--no-wait", repo)
        assert p.returncode == 1, p.stdout + p.stderr
        assert "locked by another mailbak" in p.stderr
        assert names(repo) == [old, new], "the snapshot being read is intact"
        waiting = subprocess.Popen([sys.executable, "-m", "mailbak", "prune", "--keep-last", "1", str(repo)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CLI_ENV)
        assert "waiting for the repository lock" in waiting.stderr.readline()
        assert waiting.poll() is None
        assert names(repo) == [old, new]
    finally:
        pp.go()
    out, err = reader.communicate(timeout=300)
    assert reader.returncode == 0, out + err
    assert waiting is not None
    out, err = waiting.communicate(timeout=300)
    assert waiting.returncode == 0, out + err
    assert names(repo) == [new], "once the reader is done, prune goes on"


def test_a_verify_started_during_a_prune_waits_for_it(store, repo):
    backup_into(store, repo)
    (snap,) = names(repo)
    p = waits_for_a_held_repository(repo, "verify", repo / snap)
    assert p.returncode == 0, p.stdout + p.stderr


# 10: a manifest nested too deep --------------------------------------------------------------------


def test_a_manifest_nested_too_deep_makes_one_snapshot_incomplete(store, repo):
    # The damaged snapshot is newer than the good one, so that taking the good one as the
    # next reference shows the damaged one was passed over, not merely older.
    t0, t1, t2 = start_times(3)
    good = str(repo / backup_into(store, repo, clock=t0)["snapshot"])
    deep = forged_snapshot(repo, repository.snapshot_name(t1), '{"kind": "mailbak-backup", "x": ' + "[" * DEEP + "]" * DEEP + "}")
    p = cli("snapshots", "--json", repo)
    assert p.returncode == 0, p.stderr
    rows = {r["name"]: r for r in json_lines(p.stdout)}
    assert rows[deep.name]["status"] == "incomplete"
    assert "nested too deeply" in rows[deep.name]["detail"]
    assert rows[Path(good).name]["status"] == "ok"
    p = cli("snapshots", repo)
    assert p.returncode == 0 and "incomplete" in p.stdout
    p = cli("prune", "--keep-last", "1", "--dry-run", repo)
    assert p.returncode == 0, p.stderr
    p = cli("verify", deep)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "nested too deeply" in p.stdout + p.stderr
    # The next backup takes the good snapshot as its reference, and a prune then removes the
    # damaged one as superseded.
    summary = backup_into(store, repo, clock=t2)
    assert summary["reference"] == good
    p = cli("prune", "--keep-last", "1", "--json", repo)
    assert p.returncode == 0, p.stderr
    assert not deep.exists()


def test_a_repository_marker_nested_too_deep_is_bad_input(repo):
    # Within the marker's size bound (64 KiB), far deeper than the parser recurses.
    depth = 30_000
    (repo / MARKER).write_text('{"kind": "mailbak-repository", "x": ' + "[" * depth + "]" * depth + "}")
    for args in (("snapshots",), ("prune", "--keep-last", "1")):
        p = cli(*args, repo)
        assert p.returncode == 2, (args, p.stderr)
        assert "nested too deeply" in p.stderr


# 11: start times out of range ----------------------------------------------------------------------


@pytest.mark.parametrize("tz", ["Asia/Tokyo", "Pacific/Kiritimati"])
def test_start_times_out_of_range_make_a_snapshot_incomplete(store, repo, tz):
    env = {"TZ": tz}
    good = str(repo / backup_into(store, repo, env=env)["snapshot"])
    template = manifest_of(Path(good))
    forged = {
        "2026-06-01T020000Z": ("9999-12-31T23:59:59Z", "9999-12-31T23:59:59Z"),
        "2026-06-02T020000Z": ("0001-01-01T00:00:00+14:00", "0001-01-01T00:00:00+14:00"),
        "2026-06-03T020000Z": ("2026-06-03T02:00:00Z", "9999-12-31T23:59:59-14:00"),
    }
    for name, (started, finished) in forged.items():
        forged_snapshot(repo, name, json.dumps({**template, "started": started, "finished": finished}))
    # prune died here with OverflowError east of UTC.
    p = cli("prune", "--keep-daily", "3", "--dry-run", "--json", repo, env=env)
    assert p.returncode == 0, p.stderr
    p = cli("snapshots", "--json", repo, env=env)
    assert p.returncode == 0, p.stderr
    rows = {r["name"]: r for r in json_lines(p.stdout)}
    for name in forged:
        assert rows[name]["status"] == "incomplete", rows[name]
        assert "out of range" in rows[name]["detail"]
        # Shown at the time its name says.
        assert rows[name]["started"] == repository.name_time(name).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert rows[Path(good).name]["status"] == "ok"
    assert cli("snapshots", repo, env=env).returncode == 0
    # No forged time is every backup's reference.
    summary = backup_into(store, repo, env=env)
    assert summary["reference"] == good
    p = cli("prune", "--keep-daily", "3", repo, env=env)
    assert p.returncode == 0, p.stderr
    assert names(repo) == sorted([Path(good).name, summary["snapshot"]])


# Design note: failed snapshots that pile up --------------------------------------------------------


def test_a_backup_warns_when_failed_snapshots_pile_up(store, repo):
    """Failed snapshots are kept until a complete one is newer (they may hold the latest mail),
    so a store that keeps failing fills the repository: at FAILED_PILE_WARN of them newer than
    the newest complete snapshot, every backup warns, saying how many and what to do."""
    good = str(repo / backup_into(store, repo)["snapshot"])
    failed = {**manifest_of(Path(good)), "status": "failed", "errors": 3}

    def fail_night(day: int) -> None:
        # Dated in 2099: newer than any complete snapshot this test makes.
        t = f"2099-01-{day:02d}T02:"
        forged_snapshot(repo, f"2099-01-{day:02d}T020000Z", json.dumps({**failed, "started": t + "00:00Z", "finished": t + "10:00Z"}))

    for day in range(1, FAILED_PILE_WARN):
        fail_night(day)
    summary = backup_into(store, repo)
    assert summary["warnings"] == 0, "one short of the cap: no warning"
    fail_night(FAILED_PILE_WARN)
    p = run_cli("backup", "--json", store, repo)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = json_lines(p.stdout)
    warnings = [x for x in lines if x["message_type"] == "warning" and x["code"] == "failed_snapshots"]
    assert len(warnings) == 1, lines
    assert f"{FAILED_PILE_WARN} failed or incomplete snapshots" in warnings[0]["cause"]
    assert "mailbak snapshots" in warnings[0]["cause"]
    assert lines[-1]["warnings"] == 1


@pytest.mark.parametrize("plant", ["symlink", "fifo"])
def test_a_repository_marker_that_is_no_regular_file_is_bad_input(repo, tmp_path, plant):
    """A marker swapped for a symlink (to a marker elsewhere) or a FIFO is refused by the one
    bounded reader, never followed nor waited for: exit 2 with one line."""
    marker = repo / MARKER
    if plant == "symlink":
        elsewhere = tmp_path / "elsewhere.json"
        elsewhere.write_bytes(marker.read_bytes())
        marker.unlink()
        marker.symlink_to(elsewhere)
    else:
        marker.unlink()
        os.mkfifo(marker)
    p = cli("snapshots", repo)
    assert p.returncode == 2, p.stderr
    why = "a symlink (never followed)" if plant == "symlink" else "not a regular file"
    assert f"{marker}: {why}" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and p.stderr.count("\n") == 1, p.stderr

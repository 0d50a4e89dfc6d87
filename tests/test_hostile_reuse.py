"""Reuse from a reference snapshot must never keep a stale copy (issue 18.16).

Reuse trusts size and mtime. A file rewritten in the clock tick the reference copied it in keeps
both ("racily clean", as git calls it), so every later snapshot would link the reference's stale
copy. A reference file whose mtime is not older than the reference's start less a margin is
therefore copied from the store, never reused. These tests make the race deterministic: the
reference run stands still at its start (a pause point) while the file is written, and the
rewrite afterwards puts the very same mtime back.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import json_lines, manifest_of, run_cli
from mailbak.gen import age_tree
from mailbak.manifest import REUSE_MARGIN_NS, own_cutoff, reuse_cutoff
from mailbak.report import rfc3339
from mailbak.repository import parse_time
from pausing import PausePoint

ACC = "user0000"


def snapshots(repo: Path) -> list[Path]:
    return sorted(p for p in repo.iterdir() if not p.name.startswith((".", "mailbak-repo")))


def message_file(store: Path) -> Path:
    return min(p for p in (store / "data" / "accounts" / ACC / "msg").rglob("*") if p.is_file())


@pytest.mark.parametrize(
    "kind",
    [
        # A plain file (copied from the store every time unless reused), the repository on the
        # store's file system.
        "plain",
        # A message file, the repository on another file system (messages are reused there).
        "message",
        # The same in a repository on btrfs, where the nightly snapshot is a clone of the
        # reference that keeps what the reference's index proves unlooked at while the
        # reference is sealed: the file is named racy by the reference's run, so it is not proven.
        "message-btrfs",
    ],
)
def test_file_rewritten_in_the_tick_it_was_copied_is_not_reused(store, tmp_path, shm_dir, kind, request):
    age_tree(store)
    path = store / "data" / "accounts" / ACC / "junkfilter.bloom" if kind == "plain" else message_file(store)
    unchanged = store / "config" / "mailstore.toml"
    size = path.stat().st_size
    repo = {"plain": tmp_path, "message": shm_dir}.get(kind) or request.getfixturevalue("btrfs")
    repo = repo / "repo"
    assert run_cli("init", repo).returncode == 0

    # The reference run stands at its start; the store's file is written now (its mtime is
    # within the reference's run) and copied by that run.
    point = PausePoint(tmp_path / "pause", "backup.started")
    proc = point.popen("backup", "--json", store, repo)
    point.wait_reached(proc)
    path.write_bytes(b"A" * size)
    point.go()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    [ref] = snapshots(repo)
    rel = path.relative_to(store)
    assert (ref / rel).read_bytes() == b"A" * size
    mtime = path.stat().st_mtime_ns
    started = manifest_of(ref)["started"]
    assert mtime >= reuse_cutoff({"started": started}), "the file was written within the reference's window"
    if kind != "plain":
        # The reference's run names the file it copied within its own window.
        assert manifest_of(ref)["databases"][f"accounts/{ACC}/index.db"]["racy"] == [int(path.name)]

    # Rewritten in the same tick: same size, same mtime, other bytes.
    path.write_bytes(b"B" * size)
    os.utime(path, ns=(mtime, mtime))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == ((ref / rel).stat().st_size, (ref / rel).stat().st_mtime_ns)

    # The reference ran on the real clock: the race is between its real start and the real
    # mtime of the write. The new snapshot's start only names it (the reuse rule reads the
    # reference's start), so it starts a second after the reference instead of sleeping.
    p = run_cli("backup", "--json", store, repo, clock=parse_time(started).timestamp() + 1)
    assert p.returncode == 0, p.stdout + p.stderr
    transfer = json_lines(p.stdout)[-1]["transfer"]
    new = snapshots(repo)[-1]
    assert (new / rel).read_bytes() == b"B" * size, "the stale copy of the reference was reused"
    assert (new / rel).stat().st_ino != (ref / rel).stat().st_ino
    # Files older than the window are still reused: the rule costs nothing else.
    assert (new / unchanged.relative_to(store)).stat().st_ino == (ref / unchanged.relative_to(store)).stat().st_ino
    assert transfer["reused"] > 0
    assert run_cli("verify", new).returncode == 0


def test_cutoff_is_the_reference_start_less_the_margin():
    # The manifest's start is rounded down to the second; the margin covers 2-second timestamps.
    assert REUSE_MARGIN_NS == 2_000_000_000
    assert reuse_cutoff({"started": "2026-11-26T02:00:00Z"}) == 1_795_658_400 * 1_000_000_000 - REUSE_MARGIN_NS
    assert reuse_cutoff({"started": "yesterday"}) is None
    assert reuse_cutoff({}) is None
    # What a run names racy by is what the next run will read back from its manifest.
    for started in (1_795_658_400.0, 1_795_658_400.999, 1_795_658_401.5):
        assert own_cutoff(started) == reuse_cutoff({"started": rfc3339(started)})

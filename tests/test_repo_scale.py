"""A repository of hundreds of snapshots (issue 22.4): a backup picks its reference by reading
manifests newest first and stops at the newest complete one, so no older manifest is read;
listings and prune read each manifest once.

Whether a manifest was read is observed through its access time: the file systems here are
mounted ``relatime``, which updates the access time of a file read while its access time is
older than its modification time. Each test first shows that a listing does update it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from conftest import backup_into, json_lines, make_store, run_cli, start_times
from mailbak.gen import age_tree
from mailbak.manifest import MANIFEST
from mailbak.repository import snapshot_name

DAY_NS = 86_400 * 10**9


def snapshots(repo: Path) -> list[Path]:
    """The repository's snapshots, oldest first."""
    return sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))


def never_read(path: Path) -> int:
    """Sets the access time of ``path`` a day before its modification time, so that the next
    read of it updates it (``relatime``); returns that access time."""
    st = path.stat()
    os.utime(path, ns=(st.st_mtime_ns - DAY_NS, st.st_mtime_ns))
    return path.stat().st_atime_ns


def clone_snapshots(repo: Path, n: int) -> list[Path]:
    """``n`` older snapshots made of the repository's one snapshot cheaply: hardlinked copies
    of its tree, each with its own manifest (named and started a day apart, before it)."""
    [src] = snapshots(repo)
    doc = json.loads((src / MANIFEST).read_text())
    first = time.time() - (n + 1) * 86_400
    made = []
    for i in range(n):
        t = first + i * 86_400
        dst = repo / snapshot_name(t)
        shutil.copytree(src, dst, copy_function=os.link)
        (dst / MANIFEST).unlink()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
        (dst / MANIFEST).write_text(json.dumps({**doc, "started": stamp, "finished": stamp, "snapshot": dst.name}))
        made.append(dst)
    return made


def test_a_backup_never_opens_a_manifest_older_than_its_reference(tmp_path, repo):
    store = make_store(tmp_path / "store", messages=30, accounts=1)
    age_tree(store)
    t = start_times(3)
    backup_into(store, repo, clock=t[0])
    backup_into(store, repo, clock=t[1])
    older, newest = snapshots(repo)
    # The older snapshot's manifest is unreadable: a listing reports it as incomplete.
    bad = older / MANIFEST
    bad.write_text("{ not a manifest")
    before = never_read(bad)

    events: list[dict] = []
    summary = backup_into(store, repo, events=events, clock=t[2])
    assert summary["reference"] == str(newest)
    assert bad.stat().st_atime_ns == before, "the older manifest was opened"
    assert not [e for e in events if older.name in json.dumps(e)], "the older snapshot was reported"

    # The observable works: the listing reads every manifest, this one included, and says so.
    p = run_cli("snapshots", "--json", repo)
    assert p.returncode == 0, p.stderr
    [entry] = [e for e in json_lines(p.stdout) if e.get("name") == older.name]
    assert entry["status"] == "incomplete"
    assert bad.stat().st_atime_ns != before


def test_two_hundred_snapshots_list_prune_and_pick_the_reference(tmp_path, repo):
    store = make_store(tmp_path / "store", messages=30, accounts=2)
    age_tree(store)
    backup_into(store, repo)
    clones = clone_snapshots(repo, 199)
    newest = snapshots(repo)[-1]
    atimes = {c: never_read(c / MANIFEST) for c in clones}

    summary = backup_into(store, repo)
    assert summary["reference"] == str(newest)
    assert [c.name for c, a in atimes.items() if (c / MANIFEST).stat().st_atime_ns != a] == [], "older manifests were read"

    p = run_cli("snapshots", "--json", repo)
    assert p.returncode == 0, p.stderr
    listed = [e for e in json_lines(p.stdout) if e["message_type"] == "snapshot"]
    assert len(listed) == 201
    assert [e["name"] for e in listed] == sorted((e["name"] for e in listed), reverse=True)
    assert {e["status"] for e in listed} == {"ok"}

    p = run_cli("prune", "--json", "--dry-run", "--keep-last", "5", repo)
    assert p.returncode == 0, p.stderr
    decided = json_lines(p.stdout)[-1]["snapshots"]
    assert [s["action"] for s in decided].count("remove") == 196

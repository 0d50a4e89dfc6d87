"""The benchmark harness runs end to end: `bench/run.py --smoke` generates a small store in
temporary directories, runs every group's contenders once, and prints each group's table.
Nothing about timing is asserted: this only keeps the harness from rotting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

#: Each runs the benchmark harness end to end on a small store.
pytestmark = pytest.mark.slow

RUN = Path(__file__).resolve().parent.parent / "bench" / "run.py"


def test_bench_smoke(tmp_path):
    # --baseline with this very interpreter: the option's contenders run, and the raw result
    # (which records every setting, paths included) is written.
    raw = tmp_path / "raw.json"
    argv = [sys.executable, str(RUN), "--smoke", "--baseline", sys.executable, "--json", str(raw)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-4000:]
    assert json.loads(raw.read_text())["settings"]["baseline"] == sys.executable
    assert "| `mailbak backup (baseline)` |" in done.stdout and "| `mailbak verify (baseline)` |" in done.stdout
    for group in ("same-fs", "cross-device", "verify"):
        heading = next((line for line in done.stdout.splitlines() if line.startswith(f"### {group}:")), None)
        assert heading is not None, f"no table for {group}:\n{done.stdout}"
    # Every contender row has the full set of cells (the header has 7 columns).
    rows = [line for line in done.stdout.splitlines() if line.startswith("| `")]
    assert rows and all(line.count("|") == 8 for line in rows), done.stdout


REPO_BENCH = RUN.parent / "repo.py"


def test_bench_repo_smoke(tmp_path):
    # bench/repo.py --smoke: every step that this build's engine supports runs once (the rest
    # are reported as not measured), the report has its tables, and the raw result all timings.
    raw = tmp_path / "raw.json"
    argv = [sys.executable, str(REPO_BENCH), "--smoke", "--json", str(raw)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(raw.read_text())
    (size,) = report["sizes"]
    (round_,) = size["rounds"]
    expected = {"first", "cp", "cpal", "rsync", "same_fs", "rm"}
    if report["engine"]["reuse"]:
        expected.add("second")
        if report["engine"]["delete_tree"]:
            expected.add("prune")
    assert set(round_["samples"]) == expected
    assert all(s["seconds"] > 0 and s["rss_kib"] > 0 for s in round_["samples"].values())
    churn = round_["churn"]
    assert churn["delivered"] == churn["expunged"] == round(churn["live_before"] * 0.005)
    # rsync --link-dest linked every file but the new ones and the databases.
    assert round_["rsync"]["linked"] >= round_["rsync"]["regular_files"] - churn["delivered"] - 60
    if "second" in expected:
        assert round_["second_transfer"]["reused"] > 0 and round_["space_delta_bytes"] > 0
    assert "Cached store unchanged after every round" in done.stdout
    assert "### Targets, 3,000 messages" in done.stdout and "rsync  version" in done.stdout


def test_bench_repo_work_store_never_writes_into_the_cache(tmp_path):
    # The work store shares the cache's message files only: churning it (deliveries, expunges,
    # sweeps) leaves the cache's fingerprint as it was. The control (cp -al alone, LMDB files
    # shared) changes it, so the fingerprint does catch a write through a shared inode.
    sys.path.insert(0, str(RUN.parent))
    try:
        import repo as bench_repo
    finally:
        sys.path.pop(0)
    cache = tmp_path / "cache"
    subprocess.run([sys.executable, "-m", "mailbak", "gen", str(cache), "--messages", "400", "--accounts", "3", "--seed", "1", "--quiet"], check=True)
    before = bench_repo.fingerprint(cache)
    work = tmp_path / "work"
    assert bench_repo.make_work_store(cache, work) > 0
    done = bench_repo.churn(work, seed=7)
    assert done["delivered"] > 0 and done["expunged"] > 0
    assert bench_repo.fingerprint_diff(before, bench_repo.fingerprint(cache)) == []
    # The same churn on a plain cp -al copy writes into the cache's databases.
    shared = tmp_path / "shared"
    subprocess.run(["cp", "-al", str(cache), str(shared)], check=True)
    bench_repo.churn(shared, seed=7)
    diffs = bench_repo.fingerprint_diff(before, bench_repo.fingerprint(cache))
    assert any("index.db" in d for d in diffs), diffs


RECOVERY_BENCH = RUN.parent / "recovery.py"


def test_bench_recovery_smoke(tmp_path):
    # bench/recovery.py --smoke: all four groups (export, find, ls, restore) run once on small
    # stores and a three-snapshot repository, each run checked by the harness to have done its
    # work (files counted, the Message-ID in find's output, the restored files there), and the
    # targets table and the raw result hold every ratio.
    raw = tmp_path / "raw.json"
    argv = [sys.executable, str(RECOVERY_BENCH), "--smoke", "--json", str(raw)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(raw.read_text())
    assert set(report["groups"]) == {"export", "find", "ls", "restore"}
    for group in report["groups"].values():
        assert all(len(r["seconds"]) == 1 and r["seconds"][0] > 0 and r["rss_kib"][0] > 0 for r in group["results"])
    assert set(report["targets"]) >= {"export_maildir_vs_cp", "export_mbox_vs_cp", "find_repo_vs_snapshot", "ls_seconds", "ls_rss_bytes", "ls_vs_head", "restore_vs_writer"}
    find = report["groups"]["find"]["facts"]
    assert len(find["repo_facts"]["snapshots"]) == 3 and find["message_id"].startswith("<")
    assert "### Targets" in done.stdout and "dentry_hash_entries" in done.stdout


COLD_BENCH = RUN.parent / "cold.py"


def test_bench_cold_smoke(tmp_path):
    # bench/cold.py --smoke: every step of a cold round and the prune worker sweep (--jobs 1
    # and 2, and rm -rf) run once; the raw result records the conditions (caches dropped, the
    # repository on a loop-mounted image) or, where the machine cannot (no root, no loop
    # device, a read-only /proc/sys), says why in the report; the image is gone afterwards.
    raw = tmp_path / "raw.json"
    argv = [sys.executable, str(COLD_BENCH), "--smoke", "--json", str(raw)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(raw.read_text())
    # The dentry hash size is recorded whenever the boot log (or this boot's memo) still has it;
    # a kernel ring buffer that dropped its first lines leaves None, which the report shows.
    assert report["mode"] == "cold" and "dentry_hash_entries" in report["machine"]
    (size,) = report["sizes"]
    (round_,) = size["rounds"]
    assert set(round_["samples"]) == {"first", "second", "rsync", "cpal", "prune", "rm"}
    assert set(round_["sweep"]) == {"prune_jobs_1", "prune_jobs_2", "rm"}
    samples = [*round_["samples"].values(), *round_["sweep"].values()]
    assert all(s["seconds"] > 0 and s["rss_kib"] > 0 for s in samples)
    # The second snapshot reused the first's files; rsync linked all but the churned ones.
    churn = round_["churn"]
    assert round_["second_transfer"]["reused"] > 0 and round_["second_transfer"]["copied"] >= churn["delivered"]
    assert round_["rsync"]["linked"] >= round_["rsync"]["regular_files"] - churn["delivered"] - 60
    assert set(size["targets"]) == {"second_vs_rsync", "second_vs_cp_al", "prune_vs_rm"}
    assert size["sweep"]["best_jobs"] in (1, 2)
    cond = report["conditions"]
    if cond["loop_image"]:
        image = round_["image"]
        assert image["inodes"] >= 2 * image["store_entries"] and image["device"].startswith("/dev/loop")
        # Unmounted and detached: no loop device still backs the image file.
        assert image["image"] not in subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
        assert "ext4 on a loop-mounted sparse image" in done.stdout
    else:
        assert cond["loop_note"] and cond["loop_note"] in done.stdout
    if cond["caches_dropped"]:
        assert "dropped before every timed run" in done.stdout
    else:
        assert cond["caches_note"] and "not dropped" in done.stdout
    assert "### Prune workers, 3,000 messages" in done.stdout and "| `rm -rf` |" in done.stdout


def test_bench_cold_scale_smoke(tmp_path):
    # bench/cold.py --scale --smoke: backup, nightly, verify and prune of a store generated with
    # gen --median-size 1024 run once, each with its µs/message and the peak RSS check; beside
    # verify and prune their peers (find, rm -rf); the balloon's free page reporting recorded.
    raw = tmp_path / "raw.json"
    argv = [sys.executable, str(COLD_BENCH), "--scale", "--smoke", "--json", str(raw)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(raw.read_text())
    assert report["mode"] == "scale"
    (size,) = report["sizes"]
    assert size["store_facts"]["median_size"] == 1024
    (round_,) = size["rounds"]
    assert set(round_["samples"]) == {"backup", "nightly", "verify", "find", "prune", "rm"}
    assert all(x["seconds"] > 0 and x["user_s"] + x["sys_s"] > 0 for x in round_["samples"].values())
    assert "balloon_free_page_reporting" in report["machine"]
    assert round_["second_transfer"]["reused"] > 0
    assert report["scale"]["peak_rss"]["pass"] is True
    assert "## Scale: µs per message" in done.stdout


INTEGRITY_BENCH = RUN.parent / "integrity.py"


def test_bench_integrity_smoke(tmp_path):
    # bench/integrity.py --smoke: both groups run on a small store. Digests: cp -a and the first
    # snapshot with and without digests once, the nightly with and without twice each (A B B A),
    # each checked by the harness against its manifest (digests recorded or not, the nightly
    # reusing from the first snapshot). Check: the cached three-snapshot repository and its
    # restic twin (one restic snapshot per snapshot) are built, and the peers (and check, when
    # this build has it) run and are checked clean.
    raw = tmp_path / "raw.json"
    argv = [sys.executable, str(INTEGRITY_BENCH), "--smoke", "--json", str(raw)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(raw.read_text())
    (round_,) = report["groups"]["digests"]["rounds"]
    assert {step: len(xs) for step, xs in round_["samples"].items()} == {"cp": 1, "first_nodig": 1, "first": 1, "nightly": 2, "nightly_nodig": 2}
    assert all(x["seconds"] > 0 and x["rss_kib"] > 0 for xs in round_["samples"].values() for x in xs)
    # A nightly's digests are a fraction of the first snapshot's: unchanged shards are linked.
    first, nightly = round_["first_digests"], round_["nightly_digests"][0]
    assert nightly["shards_linked"] > 0 and 0 < nightly["bytes_written"] < first["bytes_written"]
    check = report["groups"]["check"]
    assert len(check["history_facts"]["snapshots"]) == 3 and check["history_facts"]["restic"]["snapshots"] == 3
    assert check["page_cache"]["warm"] is True
    names = [r["name"] for r in check["results"]]
    assert any(n.startswith("sha256sum") for n in names) and any(n.startswith("restic check") for n in names)
    assert ("check_untimed" in check) == any(n.startswith("mailbak check") for n in names)
    assert all(len(r["seconds"]) == 1 and r["seconds"][0] > 0 for r in check["results"])
    assert {"first_vs_cp", "nightly_vs_nodig", "nightly_digest_bytes", "check_vs_sha256sum", "check_vs_restic", "check_rss_bytes"} <= set(report["targets"])
    assert "### Targets, 2,000 messages" in done.stdout and "dentry_hash_entries" in done.stdout and "restic 0." in done.stdout

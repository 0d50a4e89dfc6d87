"""Cold caches (issue 22, part 3) and scale (part 4): the nightly snapshot and prune with the
page cache dropped before every timed run, the repository on a loop-mounted ext4 image.

    .venv/bin/python bench/cold.py --messages N[,N...] [--rounds R] [--prune-jobs 1,2,4,8,16]
        [--accounts K] [--seed S] [--json FILE] [--smoke]
    .venv/bin/python bench/cold.py --scale --messages 1000000,5000000 [--median-size 1024]
        [--rounds R] [--warm] [--json FILE]

Cold mode (BENCHMARKS.md, "Cold caches (issue 22)", has the why). Per size and round:
1. W: bench/repo.py's work store on the store's file system (ext4 on /): ``cp -al`` of the
   cached store with every non-message file a real copy; the cache is fingerprinted before the
   first round and after every round (a change aborts).
2. REPO on another file system on disk: a sparse image file beside the cache, ``mkfs.ext4`` with
   ``-N`` inodes for twice the store's files and directories (and its inode tables and journal
   written at mkfs: no lazy initialisation writes during a timed run), ``mount -o loop``.
   Unmounted and removed at the end of the round, whatever happened.
3. Before EVERY timed run: ``sync; echo 3 > /proc/sys/vm/drop_caches``. Each timed command
   starts with nothing cached: not the store's or the repository's metadata, not the file
   data, not the interpreter's own files (a night's first run pays those too).
4. Timed: the first snapshot ``mailbak backup W REPO``. Then bench/repo.py's churn (0.5 %
   delivered, 0.5 % expunged and swept). Then, in an order rotated from round to round, the
   second snapshot ``mailbak backup W REPO``, ``rsync -a --stats --link-dest=PREV/data W/data/
   NEW/`` into the image, and ``cp -al PREV/data`` within the image (its copy removed at once,
   untimed); PREV is the first snapshot.
5. Timed, alternating which goes first: ``mailbak prune REPO --keep-last 1 --no-nice`` (removes
   the first snapshot) and ``rm -rf NEW`` (the rsync tree: the same shape, files hardlinked to
   the same inodes).
6. The prune worker sweep (--prune-jobs): for each N (order rotated per round), the second
   snapshot is copied with ``cp -al`` into ``REPO/.trash`` (untimed: what a killed prune leaves)
   and ``mailbak prune REPO --keep-last 1 --no-nice --jobs N`` is timed deleting it (the only
   snapshot is kept: the run deletes the trash and nothing else); beside it ``rm -rf`` of
   another ``cp -al`` of the same snapshot.

Scale mode (--scale): per size, a store made with ``gen --median-size`` (1024 by default, so
that 5,000,000 messages fit the disk), W and the image as above, and timed, each after dropping
the caches (--warm: never dropped): the first snapshot (backup), churn, the second snapshot
(nightly), ``mailbak verify`` of the second snapshot, beside it a cold ``find -printf '%s'`` of
the same snapshot (the peer of verify's walk: a lookup and a stat per file), the prune of the
first, and beside it ``rm -rf`` of a ``cp -al`` of the second (the peer of prune's walk: an
unlink per file). Reported: µs per message per step and size, whether it is flat (largest size
÷ smallest ≤ 1.25), how the peers grew in the same run (what the kernel and the disk charge
per file at each size, which mailbak cannot go below), and the peak RSS (≤ 300 MB).

Without root, a loop device or a writable /proc/sys/vm/drop_caches, --smoke says so in its
header and runs on a plain directory, with warm caches; a real run refuses.
Markdown tables go to stdout, progress to stderr; --json FILE also keeps every raw timing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from repo import (  # noqa: E402  (bench/ is not a package: imported by path)
    DELIVER_FRACTION,
    EXPUNGE_FRACTION,
    TARGET_FLAT,
    TARGET_PROOF,
    fingerprint,
    fingerprint_diff,
    make_work_store,
    new_snapshot,
    rsync_stats,
    run_churn,
    sample_json,
    snapshot_dirs,
)
from run import (  # noqa: E402
    HarnessError,
    Places,
    Sample,
    code_changed,
    ensure_rsync,
    ensure_store,
    free_bytes,
    log,
    machine_info,
    machine_markdown,
    mailbak_cli,
    markdown_table,
    probe_mailbak,
    remove_tree,
    rss_cell,
    rss_floor_kib,
    run_harness,
    run_once,
    sizes_and_counts,
)

#: The issue's targets (part 3 at 1M; the harness prints the verdict at every size).
TARGET_RSYNC = 0.2  # second snapshot / rsync --link-dest
TARGET_PRUNE = 0.5  # prune / rm -rf
#: Part 4: peak RSS of every mailbak step.
TARGET_SCALE_RSS_BYTES = 300_000_000

#: Prune worker counts swept by default.
PRUNE_JOBS = (1, 2, 4, 8, 16)
#: Gen's median message size for --scale (the issue's: a 5M store must fit the disk).
SCALE_MEDIAN_SIZE = 1024

#: The image: inodes per file or directory of the store (first snapshot, second snapshot's
#: new files, the rsync tree's, the sweep's directories), and bytes beyond two copies.
INODES_PER_ENTRY = 2
INODE_SLACK = 65_536
IMAGE_SLACK_BYTES = 1 << 30
INODE_SIZE = 256

COLD_STEPS = (
    ("first", "first snapshot `mailbak backup W REPO`"),
    ("second", "second snapshot `mailbak backup W REPO`"),
    ("rsync", "`rsync -a --link-dest=PREV/data W/data/ NEW/`"),
    ("cpal", "`cp -al PREV/data` within the image"),
    ("prune", "`mailbak prune REPO --keep-last 1 --no-nice`"),
    ("rm", "`rm -rf NEW` (the rsync tree)"),
)
SCALE_STEPS = (
    ("backup", "backup (first snapshot) `mailbak backup W REPO`"),
    ("nightly", "nightly (second snapshot) `mailbak backup W REPO`"),
    ("verify", "`mailbak verify REPO/SECOND`"),
    ("prune", "`mailbak prune REPO --keep-last 1 --no-nice`"),
)
#: Scale mode's peers, each timed beside the mailbak step that walks the file system the same way.
SCALE_PEERS = (
    ("find", "peer of verify: `find REPO/SECOND -printf '%s\\n'`"),
    ("rm", "peer of prune: `rm -rf` of a `cp -al` of REPO/SECOND"),
)
SCALE_PAIRS = (("verify", "find"), ("prune", "rm"))


# Conditions: dropped caches, the image -------------------------------------------------------


DROP_CACHES = Path("/proc/sys/vm/drop_caches")


@dataclass
class Conditions:
    """What the run could set up: whether caches are dropped, whether REPO is on an image. In a
    real run both are required; --smoke records why not and goes on."""

    #: Drop caches before each timed run (False: --warm, or not possible in a smoke run).
    drop: bool
    #: Why the caches are not dropped (None when they are).
    drop_note: str | None
    #: Whether the repository goes on a loop-mounted image.
    loop: bool
    loop_note: str | None
    #: The image's loop device does direct I/O (--loop-direct-io).
    direct_io: bool = False

    def settle(self) -> None:
        """Before a timed run: everything dirty written back, then (cold) every clean page,
        dentry and inode dropped."""
        os.sync()
        if self.drop:
            DROP_CACHES.write_text("3\n")

    def as_json(self) -> dict:
        return {"caches_dropped": self.drop, "caches_note": self.drop_note, "loop_image": self.loop, "loop_note": self.loop_note, "loop_direct_io": self.direct_io}


def probe_conditions(scratch: Path, *, smoke: bool, warm: bool) -> Conditions:
    """Tries dropping caches and mounting a tiny image; raises HarnessError in a real run when
    either fails, notes why in a smoke run."""
    drop_note = "--warm" if warm else None
    if not warm:
        try:
            os.sync()
            DROP_CACHES.write_text("3\n")
        except OSError as e:
            drop_note = f"cannot write {DROP_CACHES} ({e.strerror}): caches NOT dropped"
    loop_note = None
    try:
        with loop_image(scratch / "probe.img", scratch / "probe-mnt", size=64 << 20, inodes=1024):
            pass
    except HarnessError as e:
        loop_note = f"no loop-mounted image ({e}): REPO is a plain directory on the store's file system"
    if not smoke and (loop_note or (drop_note and not warm)):
        raise HarnessError("; ".join(n for n in (drop_note, loop_note) if n) + " (run as root on a machine with loop devices, or --smoke)")
    for note in (drop_note, loop_note):
        if note and note != "--warm":
            log(f"bench: note: {note}")
    return Conditions(drop=drop_note is None, drop_note=drop_note, loop=loop_note is None, loop_note=loop_note)


def run_checked(argv: list[str], what: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise HarnessError(f"{what}: {' '.join(argv)} exited with status {done.returncode}: {(done.stderr or done.stdout).strip()[-500:]}")
    return done.stdout


@contextlib.contextmanager
def loop_image(image: Path, mountpoint: Path, *, size: int, inodes: int, direct_io: bool = False) -> Iterator[dict]:
    """An ext4 file system in a sparse file ``image``, mounted at ``mountpoint``; unmounted and
    both removed on exit, whatever happened. Yields its facts (size, inodes, loop device).
    ``direct_io``: the loop device reads and writes the image with direct I/O (``losetup
    --direct-io=on``: no second copy in the page cache of /, requests queued to the disk as
    they come), instead of ``mount -o loop``'s buffered I/O."""
    if os.geteuid() != 0:
        raise HarnessError("mounting needs root")
    mountpoint.mkdir(parents=True, exist_ok=True)
    image.unlink(missing_ok=True)
    with open(image, "wb") as f:
        f.truncate(size)
    mounted = False
    attached = None
    try:
        # Inode tables and journal written now: ext4lazyinit would otherwise write them in the
        # background during the timed runs. No reserved blocks: nothing here is root's reserve.
        run_checked(["mkfs.ext4", "-q", "-F", "-N", str(inodes), "-m", "0", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(image)], "mkfs.ext4")
        if direct_io:
            attached = run_checked(["losetup", "--direct-io=on", "-f", "--show", str(image)], "losetup --direct-io=on").strip()
            run_checked(["mount", attached, str(mountpoint)], "mount")
        else:
            run_checked(["mount", "-o", "loop", str(image), str(mountpoint)], "mount -o loop")
        mounted = True
        dev = run_checked(["findmnt", "-no", "SOURCE", str(mountpoint)], "findmnt").strip()
        dio = subprocess.run(["losetup", "-nO", "DIO", dev], capture_output=True, text=True).stdout.strip()
        yield {
            "image": str(image),
            "size_bytes": size,
            "inodes": inodes,
            "device": dev,
            "loop_direct_io": dio or None,
            "mkfs": f"mkfs.ext4 -N {inodes} -m 0 -E lazy_itable_init=0,lazy_journal_init=0",
            "mount": f"losetup --direct-io=on; mount {attached}" if direct_io else "mount -o loop",
        }
    finally:
        if mounted:
            os.sync()
            for attempt in range(10):
                if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode == 0:
                    break
                time.sleep(0.5 * (attempt + 1))
            else:
                log(f"bench: warning: cannot unmount {mountpoint}; {image} is left: umount it and remove it by hand")
                return
        if attached:
            subprocess.run(["losetup", "-d", attached], capture_output=True)
        image.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            mountpoint.rmdir()


@contextlib.contextmanager
def repo_place(work_dir: Path, cond: Conditions, store: Path, facts: dict) -> Iterator[tuple[Path, dict]]:
    """Where the round's repository file system is: a fresh image sized for ``store``, or (smoke
    without loop devices) a plain directory. Yields (mount point, facts)."""
    entries = len(run_checked(["find", str(store), "-printf", "x"], "count the store's entries"))
    inodes = INODES_PER_ENTRY * entries + INODE_SLACK
    size = 2 * facts["disk_bytes"] + inodes * INODE_SIZE + IMAGE_SLACK_BYTES
    size = -(-size // (1 << 20)) << 20
    mnt = work_dir / "mnt"
    if not cond.loop:
        mnt.mkdir(parents=True)
        yield mnt, {"plain_directory": str(mnt), "why": cond.loop_note}
        return
    # Sparse: it takes what is written, about one copy of the store, and the inode tables.
    need = facts["disk_bytes"] + inodes * INODE_SIZE + (256 << 20)
    if free_bytes(work_dir) < need:
        raise HarnessError(f"{work_dir}: {free_bytes(work_dir) / 1e9:.1f} GB free; the image needs about {need / 1e9:.1f} GB")
    with loop_image(work_dir / "repo.img", mnt, size=size, inodes=inodes, direct_io=cond.direct_io) as image:
        image["store_entries"] = entries
        yield mnt, image


# Timed steps ---------------------------------------------------------------------------------


def timed(cond: Conditions, name: str, argv: list[str], log_path: Path, label: str, *, discard_stdout: bool = False) -> Sample:
    """Runs one step after settling (and, cold, dropping the caches)."""
    cond.settle()
    try:
        sample = run_once(argv, discard_stdout=discard_stdout, log_path=log_path)
    except HarnessError as e:
        raise HarnessError(f"{label} {name}: {e}") from None
    log(f"  {label} {name}: {sample.seconds:.3f} s (CPU user {sample.user_s:.2f} s, system {sample.sys_s:.2f} s), {sample.rss_kib / 1024:.0f} MiB")
    return sample


def rotated(items: list, k: int) -> list:
    k %= len(items)
    return items[k:] + items[:k]


def only_snapshot(repo: Path, name: str, label: str, what: str) -> None:
    """After a prune: ``name`` is the one snapshot left and the trash is empty."""
    left = snapshot_dirs(repo)
    trash = repo / ".trash"
    if left != [name] or (trash.exists() and any(trash.iterdir())):
        raise HarnessError(f"{label} {what} left snapshots {left} and trash {sorted(os.listdir(trash)) if trash.exists() else []}")


def fresh_work_dir(places: Places) -> Path:
    """The round's directory beside the cache, emptied of what an aborted run left (an image
    still mounted is unmounted first: rm must not descend into it)."""
    work_dir = places.near / "cold-round"
    if (work_dir / "mnt").is_mount():
        run_checked(["umount", str(work_dir / "mnt")], "unmount a left-over image")
    remove_tree(work_dir)
    work_dir.mkdir(parents=True)
    return work_dir


def cold_round(n: int, round_no: int, cache_store: Path, facts: dict, places: Places, cond: Conditions, prune_jobs: list[int], log_path: Path, seed: int) -> dict:
    """One round of the cold mode (steps 1 to 6 of the module doc)."""
    label = f"[{n:,} round {round_no}]"
    work_dir = fresh_work_dir(places)
    work = work_dir / "store"
    out: dict = {"round": round_no, "samples": {}, "sweep": {}}
    s = out["samples"]
    log(f"  {label} making W: cp -al of the cache, real copies of every non-message file")
    t0 = time.perf_counter()
    out["work_store_copied_files"] = make_work_store(cache_store, work)
    out["work_store_seconds"] = round(time.perf_counter() - t0, 2)
    with repo_place(work_dir, cond, work, facts) as (mnt, image):
        out["image"] = image
        repo, rsync_new, cpal, rm_tree = mnt / "repo", mnt / "rsync-new", mnt / "cpal", mnt / "rm-tree"
        run_once(mailbak_cli("init", "--quiet", str(repo)), discard_stdout=False, log_path=log_path)
        s["first"] = timed(cond, "first snapshot", mailbak_cli("backup", str(work), str(repo)), log_path, label)
        first = new_snapshot(repo, [])
        prev = repo / first["snapshot"]
        out["churn"] = run_churn(work, seed * 1000 + round_no, os.statvfs(mnt).f_frsize, log_path)
        log(f"  {label} churn: {out['churn']['delivered']:,} delivered, {out['churn']['expunged']:,} expunged")

        def second() -> None:
            s["second"] = timed(cond, "second snapshot", mailbak_cli("backup", str(work), str(repo)), log_path, label)
            snap = new_snapshot(repo, [first["snapshot"]])
            out["second_snapshot"] = snap["snapshot"]
            out["second_transfer"] = snap.get("transfer")
            if not (snap.get("transfer") or {}).get("reused"):
                log(f"  {label} warning: the second snapshot reused nothing")

        def rsync() -> None:
            argv = ["rsync", "-a", "--stats", f"--link-dest={prev / 'data'}", f"{work / 'data'}/", f"{rsync_new}/"]
            s["rsync"] = timed(cond, "rsync --link-dest", argv, log_path, label)
            out["rsync"] = rsync_stats(log_path)
            if out["rsync"]["linked"] < 0.95 * out["rsync"]["regular_files"]:
                log(f"  {label} warning: rsync linked only {out['rsync']['linked']:,} of {out['rsync']['regular_files']:,} files")

        def cp_al() -> None:
            s["cpal"] = timed(cond, "cp -al", ["cp", "-al", str(prev / "data"), str(cpal)], log_path, label)
            remove_tree(cpal)

        order = rotated([second, rsync, cp_al], round_no - 1)
        out["order"] = [f.__name__ for f in order]
        for step in order:
            step()
        second_name = out["second_snapshot"]

        def prune() -> None:
            s["prune"] = timed(cond, "prune", mailbak_cli("prune", str(repo), "--keep-last", "1", "--no-nice"), log_path, label)
            only_snapshot(repo, second_name, label, "prune")

        def rm() -> None:
            s["rm"] = timed(cond, "rm -rf", ["rm", "-rf", "--", str(rsync_new)], log_path, label)

        for step in (prune, rm) if round_no % 2 else (rm, prune):
            step()

        # 6. The worker sweep: the same tree (a cp -al of the kept snapshot) deleted by prune
        # with N workers, and by rm -rf.
        for jobs in rotated([*prune_jobs, 0], round_no - 1) if prune_jobs else []:
            if jobs == 0:
                run_checked(["cp", "-al", str(repo / second_name), str(rm_tree)], "cp -al for rm -rf")
                out["sweep"]["rm"] = sample_json(timed(cond, "sweep rm -rf", ["rm", "-rf", "--", str(rm_tree)], log_path, label))
                continue
            (repo / ".trash").mkdir(exist_ok=True)
            run_checked(["cp", "-al", str(repo / second_name), str(repo / ".trash" / "sweep")], "cp -al into the trash")
            argv = mailbak_cli("prune", str(repo), "--keep-last", "1", "--no-nice", "--jobs", str(jobs))
            out["sweep"][f"prune_jobs_{jobs}"] = sample_json(timed(cond, f"sweep prune --jobs {jobs}", argv, log_path, label))
            only_snapshot(repo, second_name, label, f"prune --jobs {jobs}")
    remove_tree(work_dir)
    out["samples"] = {k: sample_json(v) for k, v in s.items()}
    return out


def scale_round(n: int, round_no: int, cache_store: Path, facts: dict, places: Places, cond: Conditions, log_path: Path, seed: int) -> dict:
    """One round of --scale: backup, churn, nightly, verify, prune; each timed step settled
    (and, unless --warm, after dropping the caches)."""
    label = f"[scale {n:,} round {round_no}]"
    work_dir = fresh_work_dir(places)
    work = work_dir / "store"
    out: dict = {"round": round_no, "samples": {}}
    s = out["samples"]
    log(f"  {label} making W")
    t0 = time.perf_counter()
    out["work_store_copied_files"] = make_work_store(cache_store, work)
    out["work_store_seconds"] = round(time.perf_counter() - t0, 2)
    with repo_place(work_dir, cond, work, facts) as (mnt, image):
        out["image"] = image
        repo = mnt / "repo"
        run_once(mailbak_cli("init", "--quiet", str(repo)), discard_stdout=False, log_path=log_path)
        s["backup"] = timed(cond, "backup", mailbak_cli("backup", str(work), str(repo)), log_path, label)
        first = new_snapshot(repo, [])
        out["repo_used_bytes_after_backup"] = used(mnt)
        out["churn"] = run_churn(work, seed * 1000 + round_no, os.statvfs(mnt).f_frsize, log_path)
        s["nightly"] = timed(cond, "nightly", mailbak_cli("backup", str(work), str(repo)), log_path, label)
        second = new_snapshot(repo, [first["snapshot"]])
        out["second_transfer"] = second.get("transfer")
        kept = repo / second["snapshot"]
        s["verify"] = timed(cond, "verify", mailbak_cli("verify", str(kept)), log_path, label)
        s["find"] = timed(cond, "find", ["find", str(kept), "-printf", "%s\n"], log_path, label, discard_stdout=True)
        s["prune"] = timed(cond, "prune", mailbak_cli("prune", str(repo), "--keep-last", "1", "--no-nice"), log_path, label)
        only_snapshot(repo, second["snapshot"], label, "prune")
        rm_tree = mnt / "rm-tree"
        run_checked(["cp", "-al", str(kept), str(rm_tree)], "cp -al for rm -rf")
        s["rm"] = timed(cond, "rm -rf", ["rm", "-rf", "--", str(rm_tree)], log_path, label)
        out["repo_used_bytes_end"] = used(mnt)
    out["work_store_bytes"] = du_bytes(work)
    remove_tree(work_dir)
    out["samples"] = {k: sample_json(v) for k, v in s.items()}
    return out


def used(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def du_bytes(path: Path) -> int:
    return int(run_checked(["du", "-s", "-B1", str(path)], "du").split()[0])


# Reporting -----------------------------------------------------------------------------------


def med(rounds: list[dict], step: str) -> float | None:
    xs = [r["samples"][step]["seconds"] for r in rounds if step in r["samples"]]
    return statistics.median(xs) if xs else None


def steps_table(rounds: list[dict], steps: tuple, n: int, floor_kib: int) -> str:
    rows = []
    for step, title in steps:
        xs = [r["samples"][step] for r in rounds if step in r["samples"]]
        if not xs:
            rows.append([title, "not measured", "", "", "", "", ""])
            continue
        t = [x["seconds"] for x in xs]
        peak = max(x["rss_kib"] for x in xs)
        # CPU: user is the command's own work, system the kernel's for it (results made before
        # they were recorded have neither).
        cpu = f"{statistics.median(x['user_s'] for x in xs):.2f} / {statistics.median(x['sys_s'] for x in xs):.2f}" if all("user_s" in x for x in xs) else "—"
        rows.append([title, f"{statistics.median(t):.3f}", f"{min(t):.3f}", f"{max(t):.3f}", cpu, rss_cell(peak, floor_kib), f"{statistics.median(t) / n * 1e6:.2f}"])
    return markdown_table(["step", "median s", "min s", "max s", "CPU user / system s", "peak RSS MiB", "µs/message"], rows)


def verdict(value: float | None, target: float) -> str:
    if value is None:
        return "not measured"
    return "pass" if value <= target else "FAIL"


def cold_targets(rounds: list[dict], *, warm: bool) -> tuple[list[list[str]], dict]:
    """Part 3's targets are for cold caches; part 1's (against ``cp -al``) for warm ones."""
    rows, data = [], {}
    for key, a, b, target, what in (
        ("second_vs_rsync", "second", "rsync", None if warm else TARGET_RSYNC, "second snapshot ÷ `rsync --link-dest`"),
        ("second_vs_cp_al", "second", "cpal", TARGET_PROOF if warm else None, "second snapshot ÷ `cp -al` of the reference's data/"),
        ("prune_vs_rm", "prune", "rm", None if warm else TARGET_PRUNE, "prune of one snapshot ÷ `rm -rf` of the same shape"),
    ):
        ma, mb = med(rounds, a), med(rounds, b)
        value = ma / mb if ma is not None and mb else None
        cell = f"{ma:.3f} s / {mb:.3f} s = **{value:.2f}**" if value is not None else "not measured"
        rows.append([what, cell, f"≤ {target} (at 1M)" if target else "—", verdict(value, target) if target else ""])
        data[key] = {"value": value, "target": target, "pass": None if target is None else value is not None and value <= target}
    return rows, data


def sweep_table(rounds: list[dict], prune_jobs: list[int]) -> tuple[str, dict]:
    """Median of each prune --jobs N and of rm -rf over the rounds, with ratios."""
    rm = [r["sweep"]["rm"]["seconds"] for r in rounds if "rm" in r["sweep"]]
    rm_med = statistics.median(rm) if rm else None
    rows, data = [], {"rm_seconds": rm_med, "prune": {}}
    meds = {}
    for jobs in prune_jobs:
        xs = [r["sweep"][f"prune_jobs_{jobs}"]["seconds"] for r in rounds if f"prune_jobs_{jobs}" in r["sweep"]]
        meds[jobs] = statistics.median(xs)
        data["prune"][str(jobs)] = {"median": meds[jobs], "seconds": xs}
    best = min(meds, key=meds.get) if meds else None
    for jobs in prune_jobs:
        m = meds[jobs]
        rows.append([f"`mailbak prune --jobs {jobs}`{' (best)' if jobs == best else ''}", f"{m:.3f}", f"{m / meds[prune_jobs[0]]:.2f}", f"{m / rm_med:.2f}" if rm_med else "—"])
    if rm_med:
        rows.append(["`rm -rf`", f"{rm_med:.3f}", f"{rm_med / meds[prune_jobs[0]]:.2f}", "1.00"])
    data["best_jobs"] = best
    return markdown_table(["deleting a cp -al of the kept snapshot", "median s", f"× --jobs {prune_jobs[0]}", "× `rm -rf`"], rows), data


def facts_lines(rounds: list[dict]) -> str:
    lines = []
    for r in rounds:
        c = r["churn"]
        parts = [f"round {r['round']}: churn {c['delivered']:,} delivered and {c['expunged']:,} expunged of {c['live_before']:,}"]
        if "order" in r:
            parts.append(f"order {', '.join(r['order'])}")
        if "rsync" in r:
            parts.append(f"rsync linked {r['rsync']['linked']:,} of {r['rsync']['regular_files']:,} files")
        t = r.get("second_transfer") or {}
        parts.append(f"second snapshot reused {t.get('reused', 0):,}, copied {t.get('copied', 0):,}")
        img = r.get("image", {})
        if "inodes" in img:
            parts.append(f"image {img['size_bytes'] / 1e9:.1f} GB sparse, {img['inodes']:,} inodes, {img['device']} (direct I/O {img.get('loop_direct_io')})")
        lines.append("- " + "; ".join(parts))
    return "\n".join(lines)


def scaling(sizes: list[int], per_size: dict[int, list[dict]], floor_kib: int) -> tuple[str, list[list[str]], dict]:
    """µs per message per step and size; the checks: each mailbak step's growth from the
    smallest size to the largest (the target), each peer's, and each step's growth divided by
    its peer's (what is mailbak's own); the peak RSS of the mailbak steps."""
    rows, checks, data = [], [], {}
    growth: dict[str, float] = {}
    for step, title in (*SCALE_STEPS, *SCALE_PEERS):
        meds = [med(per_size[n], step) for n in sizes]
        rows.append([title, *(f"{m / n * 1e6:.2f}" if m is not None else "—" for m, n in zip(meds, sizes, strict=True))])
        if len(sizes) > 1 and meds[0] and meds[-1]:
            growth[step] = value = (meds[-1] / sizes[-1]) / (meds[0] / sizes[0])
            is_peer = step in dict(SCALE_PEERS)
            target = None if is_peer else TARGET_FLAT
            checks.append([f"{title}: µs/message at {sizes[-1]:,} ÷ at {sizes[0]:,}", f"**{value:.2f}**", "— (peer)" if is_peer else f"≤ {TARGET_FLAT}", "" if is_peer else verdict(value, TARGET_FLAT)])
            data[step] = {"value": value, "target": target, "pass": None if is_peer else value <= TARGET_FLAT}
    for step, peer in SCALE_PAIRS:
        if step in growth and peer in growth:
            value = growth[step] / growth[peer]
            checks.append([f"{step}'s growth ÷ {peer}'s (mailbak's own)", f"{value:.2f}", "—", ""])
            data[f"{step}_vs_{peer}"] = {"value": value}
    mine = dict(SCALE_STEPS)
    peak = max(r["samples"][k]["rss_kib"] for rs in per_size.values() for r in rs for k in r["samples"] if k in mine) * 1024
    checks.append(["peak RSS of every step, every size", f"**{peak / 1e6:.0f} MB**", f"≤ {TARGET_SCALE_RSS_BYTES / 1e6:.0f} MB", verdict(peak, TARGET_SCALE_RSS_BYTES)])
    data["peak_rss"] = {"bytes": peak, "target": TARGET_SCALE_RSS_BYTES, "pass": peak <= TARGET_SCALE_RSS_BYTES}
    return markdown_table(["step", *(f"{n:,}" for n in sizes)], rows), checks, data


# Main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/cold.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", help="messages per store, a comma list")
    p.add_argument("--accounts", type=int, help="accounts per store (default 50; 4 with --smoke)")
    p.add_argument("--seed", type=int, default=1, help="generator seed, also seeds the churn (default 1)")
    p.add_argument("--rounds", type=int, help="rounds per size (default 3, --scale 1; 1 with --smoke)")
    p.add_argument("--prune-jobs", default=None, help=f"prune worker counts to sweep, a comma list (default {','.join(map(str, PRUNE_JOBS))}; 1,2 with --smoke; 'none' to skip)")
    p.add_argument("--scale", action="store_true", help="issue 22 part 4: backup, nightly, verify and prune per message, per size")
    p.add_argument("--median-size", type=int, default=SCALE_MEDIAN_SIZE, help=f"--scale: gen's --median-size (default {SCALE_MEDIAN_SIZE})")
    p.add_argument("--loop-direct-io", action="store_true", help="attach the image with losetup --direct-io=on (default: mount -o loop, buffered)")
    p.add_argument("--warm", action="store_true", help="never drop the caches (for comparison; the cold mode's point is dropping them)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write machine info and every raw timing here")
    p.add_argument("--smoke", action="store_true", help="3,000 messages, one round, temporary directories; without root or loop devices, warm and on a plain directory")
    args = p.parse_args(argv)
    scale_rounds = args.scale and args.rounds is None and not args.smoke
    sizes_and_counts(p, args, "rounds")
    if scale_rounds:
        args.rounds = 1
    text = args.prune_jobs or ("1,2" if args.smoke else ",".join(map(str, PRUNE_JOBS)))
    try:
        args.prune_jobs = [] if text == "none" else [int(x) for x in text.split(",")]
    except ValueError:
        p.error(f"--prune-jobs: not a comma list of integers: {text!r}")
    if any(not 1 <= j <= 256 for j in args.prune_jobs):
        p.error("--prune-jobs: each from 1 to 256")
    return args


def run(args: argparse.Namespace, roots: dict[str, Path]) -> None:
    places = Places.of(roots, "disk")
    places.create()
    if not args.scale:
        why = ensure_rsync()
        if why:
            raise HarnessError(why)
    mailbak = probe_mailbak()
    cond = probe_conditions(places.near, smoke=args.smoke, warm=args.warm)
    cond.direct_io = args.loop_direct_io and cond.loop
    info = machine_info(places, [sys.executable, *sys.argv], mailbak)
    info.pop("fs_cross_device_dest", None)  # no tmpfs here: REPO is the image
    info["fs_repository"] = f"ext4 on a loop-mounted sparse image under {places.near} ({'direct I/O' if cond.direct_io else 'buffered loop I/O'})" if cond.loop else cond.loop_note
    info["caches"] = "dropped before every timed run (sync; echo 3 > /proc/sys/vm/drop_caches)" if cond.drop else f"not dropped: {cond.drop_note}"
    info["io_scheduler"] = io_scheduler(places.near)
    info["churn"] = f"{DELIVER_FRACTION:.1%} of the messages delivered and {EXPUNGE_FRACTION:.1%} expunged"
    if info["engine_warning"]:
        log(f"bench: warning: {info['engine_warning']}")
    log_path = places.near / "last-command-cold.log"
    mode = "scale" if args.scale else "cold caches"
    print(f"## mailbak benchmark: {mode}\n\n{machine_markdown(info)}\n", flush=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report: dict = {"mode": "scale" if args.scale else "cold", "machine": info, "settings": settings, "conditions": cond.as_json(), "sizes": []}
    per_size: dict[int, list[dict]] = {}
    floor = rss_floor_kib()
    for n in args.sizes:
        cache_store, facts = ensure_store(places.cache, n, args.accounts, args.seed, args.median_size if args.scale else None)
        log(f"bench: [{n:,}] fingerprinting the cached store {cache_store}")
        before = fingerprint(cache_store)
        rounds = []
        for round_no in range(1, args.rounds + 1):
            if args.scale:
                rounds.append(scale_round(n, round_no, cache_store, facts, places, cond, log_path, args.seed))
            else:
                rounds.append(cold_round(n, round_no, cache_store, facts, places, cond, args.prune_jobs, log_path, args.seed))
            diffs = fingerprint_diff(before, fingerprint(cache_store))
            if diffs:
                raise HarnessError(f"the cached store {cache_store} changed during round {round_no}:\n" + "\n".join(diffs[:20]))
        per_size[n] = rounds
        floor = rss_floor_kib()
        entry: dict = {"messages": n, "store": str(cache_store), "store_facts": facts, "rss_floor_kib": floor, "rounds": rounds}
        print(f"## {n:,} messages, {args.accounts} accounts (seed {args.seed})\n")
        print(f"Store: {facts['disk_bytes'] / 1e9:.2f} GB on disk. {args.rounds} round(s). Cached store unchanged after every round.\n")
        print(f"{steps_table(rounds, (*SCALE_STEPS, *SCALE_PEERS) if args.scale else COLD_STEPS, n, floor)}\n\n{facts_lines(rounds)}\n")
        if not args.scale:
            rows, entry["targets"] = cold_targets(rounds, warm=not cond.drop)
            print(f"### Ratios, {n:,} messages\n\n{markdown_table(['ratio', 'measured (medians)', 'target', ''], rows)}\n")
            if args.prune_jobs:
                table, entry["sweep"] = sweep_table(rounds, args.prune_jobs)
                print(f"### Prune workers, {n:,} messages (caches dropped before each)\n\n{table}\n", flush=True)
        report["sizes"].append(entry)
        if args.json:
            args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.scale:
        table, checks, report["scale"] = scaling(args.sizes, per_size, floor)
        print(f"## Scale: µs per message (median)\n\n{table}\n\n{markdown_table(['check', 'measured', 'target', ''], checks)}\n", flush=True)
    note = code_changed(mailbak, info)
    if note:
        report["warning"] = note
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    log_path.unlink(missing_ok=True)


def io_scheduler(path: Path) -> str | None:
    """The I/O scheduler of the disk under ``path`` (parallel deletion's queue depth meets it)."""
    try:
        dev = os.stat(path).st_dev
        sysfs = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
        queue = sysfs / "queue" if (sysfs / "queue").exists() else sysfs.resolve().parent / "queue"
        return f"{(queue / 'scheduler').read_text().strip()}, nr_requests {(queue / 'nr_requests').read_text().strip()}"
    except OSError:
        return None


def main(argv: list[str]) -> int:
    return run_harness(run, parse_args(argv), "mailbak-bench-cold-smoke-")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

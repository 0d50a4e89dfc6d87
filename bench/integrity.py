"""Benchmark of content integrity (issue 21, "Speed"): what digests cost, and what proving a whole
history byte for byte costs, each side by side with its peer in one run, reported as ratios.

    .venv/bin/python bench/integrity.py --messages N [--snapshots S] [--rounds R] [--accounts K]
        [--seed S] [--only digests,check] [--json FILE] [--smoke]

1. ``digests``: what recording digests costs. The store is on / (ext4), the repository on
   /dev/shm (tmpfs: another file system, so the first snapshot copies every file and hashes it
   from the bytes it writes). Per round (R rounds):

   - a work store W on the store's file system (bench/repo.py's make_work_store: ``cp -al`` of
     the cached store, every non-message file a real copy), its files read once (warm cache);
   - timed, each with only itself on /dev/shm, the order of the first two alternating from round
     to round: ``cp -a W/data`` (removed at once), the first snapshot ``mailbak backup
     --no-digests W REPO-N`` (REPO-N fresh from ``mailbak init``, removed at once), the first
     snapshot ``mailbak backup W REPO`` (digests, the default; kept as the reference);
   - churn: bench/repo.py's (0.5 % of the messages delivered, 0.5 % expunged and swept);
   - the nightly snapshot, with and without digests, twice each, in the order A B B A (B A A B
     in even rounds): ``mailbak backup W REPO`` or ``mailbak backup --no-digests W REPO``, each
     against the same reference (the first snapshot) and the same store state, because the
     snapshot it made is deleted (``rm -rf``, synced) before the next one. The manifest of each
     nightly with digests gives the bytes its digests add (``digests.bytes_written``: digest
     files written anew; unchanged shard files are hardlinks of the reference's).

   Targets: first snapshot with digests at most 0.5 x ``cp -a``; nightly with digests at most
   1.1 x without.

2. ``check``: proving a history. A repository of S snapshots (default 30) of the N-message store,
   1 % churn between snapshots (bench/repo.py's), is built once and cached under bench/.cache
   (name: parameters and the digest of the code that built it). It is on disk (ext4): /dev/shm
   (RAM) cannot hold 30 snapshots of the 1,000,000-message store beside everything else. The
   store it is made from is a real copy of the cached store on /dev/shm (``cp -a``), so that
   every snapshot copies or reuses (another file system) and records a digest of every file, as
   a repository on a backup disk does. Beside it, cached too, a local restic repository holding
   the same history: ``mailbak offsite push REPO SNAPSHOT`` of each snapshot, oldest first (one
   restic snapshot each, each against the previous as its parent). Then, after one untimed
   ``mailbak check --read-data --json REPO`` (its summary is recorded: what it read) and a read
   of every file of both repositories (warm page cache, when it fits in the memory available;
   the report says whether it did), contenders alternating, one warm-up round then R timed:

   - ``mailbak check --read-data REPO``;
   - ``find SNAP -type f -print0 | xargs -0 -P 2 -n 2000 sha256sum > /dev/null``, SNAP the newest
     snapshot (the regular files of ONE snapshot, two processes);
   - ``restic check --read-data`` of the restic repository.

   Targets: check at most 1.3 x the sha256sum of one snapshot, at most 0.5 x restic's check,
   peak RSS at most 200 MB.

Measuring is bench/run.py's (imported): wall time around the subprocess, peak RSS from os.wait4
(the harness's own peak is the floor, see run.rss_floor_kib), file systems synced before each
run, page caches never dropped; every run must exit 0 and is checked to have done its work. The
cached store is fingerprinted (bench/repo.py) before and after each use. The report starts with
the machine (cores, memory, load at start and end, kernel, dentry hash entries, file systems),
the commit, a digest of the code run, and the versions of cp, sha256sum and restic. Markdown to
stdout, progress to stderr; --json FILE also keeps every raw timing and fact.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from repo import (  # noqa: E402  (bench/ is not a package: imported by path)
    check_room,
    fingerprint,
    fingerprint_diff,
    make_work_store,
    mem_available,
    run_churn,
    shell_quote,
    snapshot_dirs,
    timed,
    warm_page_cache,
)
from run import (  # noqa: E402
    Contender,
    Group,
    HarnessError,
    Places,
    Sample,
    code_changed,
    ensure_store,
    first_line,
    fs_type,
    group_table,
    log,
    machine_info,
    machine_markdown,
    mailbak_cli,
    markdown_table,
    probe_mailbak,
    remove_tree,
    rss_cell,
    rss_floor_kib,
    run_group,
    run_harness,
    run_once,
    settle,
)

GROUPS = ("digests", "check")

#: The issue's targets.
TARGET_FIRST_VS_CP = 0.5  # first snapshot with digests / cp -a, onto another file system
TARGET_NIGHTLY = 1.1  # nightly snapshot at 1 % churn with digests / without
TARGET_CHECK_VS_SHA = 1.3  # check --read-data of the history / sha256sum of one snapshot (2 processes)
TARGET_CHECK_VS_RESTIC = 0.5  # check --read-data / restic check --read-data of the same history
TARGET_CHECK_RSS_BYTES = 200_000_000

#: Snapshots of the check group's repository.
DEFAULT_SNAPSHOTS = 30

#: --smoke: seconds, but every step (several shards per account, three snapshots, pushes).
SMOKE_MESSAGES, SMOKE_ACCOUNTS, SMOKE_SNAPSHOTS = 2000, 3, 3

#: The sha256sum peer: processes, and files per sha256sum process.
SHA_PROCESSES, SHA_BATCH = 2, 2000

#: The facts of check's summary the report shows (the raw result keeps all of them).
SUMMARY_KEYS = ("status", "snapshots", "files_checked", "inodes_checked", "inodes_read", "bytes_read", "damaged", "unrecorded", "unverified", "sizes_only")

#: Room to spare in RAM when deciding whether both repositories fit the page cache.
CACHE_MARGIN = 2 << 30

#: The digest steps (timed) in report order.
DIGEST_STEPS = (
    ("cp", "`cp -a W/data` to /dev/shm"),
    ("first_nodig", "first snapshot `mailbak backup --no-digests W REPO-N`"),
    ("first", "first snapshot `mailbak backup W REPO` (digests)"),
    ("nightly", "nightly snapshot after 1 % churn, digests"),
    ("nightly_nodig", "nightly snapshot after 1 % churn, `--no-digests`"),
)


def du_bytes(*paths: Path) -> int:
    """Bytes ``paths`` take together (du counts each inode once)."""
    done = subprocess.run(["du", "-s", "-c", "-B1", *map(str, paths)], capture_output=True, text=True, check=True)
    return int(done.stdout.splitlines()[-1].split()[0])


def read_all(*paths: Path) -> None:
    """Reads every regular file below ``paths`` once (the page cache warmed, untimed)."""
    quoted = " ".join(shell_quote(p) for p in paths)
    subprocess.run(f"find {quoted} -type f -print0 | xargs -0 -r cat > /dev/null", shell=True, check=True)


def manifest_of(snapshot: Path) -> dict:
    facts = json.loads((snapshot / "mailbak.json").read_text())
    if facts.get("status") != "ok":
        raise HarnessError(f"{snapshot}: manifest status {facts.get('status')!r}")
    return facts


def only_new_snapshot(repo: Path, before: list[str]) -> Path:
    new = [n for n in snapshot_dirs(repo) if n not in before]
    if len(new) != 1:
        raise HarnessError(f"{repo}: expected one new snapshot, found {new}")
    return repo / new[0]


def digest_facts(manifest: dict, want: bool, what: str) -> dict | None:
    """The manifest's ``digests`` (when the run recorded them, as ``want`` says it must)."""
    got = manifest.get("digests")
    if want and not got:
        raise HarnessError(f"{what}: the manifest has no digests")
    if not want and got:
        raise HarnessError(f"{what}: --no-digests, but the manifest has digests {got}")
    return got


# 1. What digests cost ----------------------------------------------------------------------


def digests_round(n: int, round_no: int, cache_store: Path, store_bytes: int, places: Places, log_path: Path, seed: int) -> dict:
    label = f"[digests {n:,} round {round_no}]"
    parent, far = places.near / "integrity-round", places.far / "integrity-round"
    for p in (parent, far):
        remove_tree(p)  # left over from an aborted run
        p.mkdir(parents=True)
    work, repo, repo_n, cp_dest = parent / "store", far / "repo", far / "repo-n", far / "cp"
    out: dict = {"round": round_no, "samples": {k: [] for k, _ in DIGEST_STEPS}, "nightly_digests": [], "nightly_transfer": []}
    s = out["samples"]

    def keep(step: str, sample: Sample) -> None:
        s[step].append({"seconds": sample.seconds, "rss_kib": sample.rss_kib})

    try:
        log(f"  {label} making W: cp -al of the cache, real copies of every non-message file")
        make_work_store(cache_store, work)
        warm_page_cache(work)

        def cp() -> None:
            check_room(far, store_bytes, "a copy of the store")
            keep("cp", timed("cp -a", ["cp", "-a", str(work / "data"), str(cp_dest)], log_path, label))
            remove_tree(cp_dest)

        def first_nodig() -> None:
            check_room(far, store_bytes, "a first snapshot")
            run_once(mailbak_cli("init", "--quiet", str(repo_n)), discard_stdout=False, log_path=log_path)
            keep("first_nodig", timed("first snapshot --no-digests", mailbak_cli("backup", "--no-digests", str(work), str(repo_n)), log_path, label))
            digest_facts(manifest_of(only_new_snapshot(repo_n, [])), False, f"{label} first --no-digests")
            remove_tree(repo_n)

        for step in (cp, first_nodig) if round_no % 2 else (first_nodig, cp):
            step()
        check_room(far, store_bytes, "the first snapshot")
        run_once(mailbak_cli("init", "--quiet", str(repo)), discard_stdout=False, log_path=log_path)
        keep("first", timed("first snapshot", mailbak_cli("backup", str(work), str(repo)), log_path, label))
        first = only_new_snapshot(repo, [])
        out["first_digests"] = digest_facts(manifest_of(first), True, f"{label} first snapshot")
        out["first_transfer"] = manifest_of(first).get("transfer")

        out["churn"] = run_churn(work, seed * 1000 + round_no, os.statvfs(far).f_frsize, log_path)
        log(f"  {label} churn: {out['churn']['delivered']:,} delivered, {out['churn']['expunged']:,} expunged")

        def nightly(digests: bool) -> None:
            flags = [] if digests else ["--no-digests"]
            step = "nightly" if digests else "nightly_nodig"
            keep(step, timed(f"nightly{'' if digests else ' --no-digests'}", mailbak_cli("backup", *flags, str(work), str(repo)), log_path, label))
            snap = only_new_snapshot(repo, [first.name])
            manifest = manifest_of(snap)
            got = digest_facts(manifest, digests, f"{label} {step}")
            if not manifest.get("transfer", {}).get("reused"):
                raise HarnessError(f"{label} {step}: reused nothing from {first.name}")
            if digests:
                out["nightly_digests"].append(got)
                out["nightly_transfer"].append(manifest.get("transfer"))
            remove_tree(snap)  # the next nightly has the same reference and store state
            settle()

        order = (True, False, False, True) if round_no % 2 else (False, True, True, False)
        for digests in order:
            nightly(digests)
    finally:
        remove_tree(far)  # tmpfs is RAM: never left behind
    remove_tree(parent)  # kept for inspection only after a failure
    return out


def digests_group(places: Places, n: int, accounts: int, seed: int, rounds: int, log_path: Path) -> dict:
    cache_store, facts = ensure_store(places.cache, n, accounts, seed)
    if os.stat(places.near).st_dev == os.stat(places.far).st_dev:
        raise HarnessError(f"{places.near} and {places.far} are on one file system: the repository must be on another")
    log(f"bench: [digests {n:,}] fingerprinting the cached store {cache_store}")
    before = fingerprint(cache_store)
    out = []
    for round_no in range(1, rounds + 1):
        out.append(digests_round(n, round_no, cache_store, facts["disk_bytes"], places, log_path, seed))
        diffs = fingerprint_diff(before, fingerprint(cache_store))
        if diffs:
            raise HarnessError(f"the cached store {cache_store} changed during round {round_no}:\n" + "\n".join(diffs[:20]))
    return {"store": str(cache_store), "store_facts": facts, "rounds": out}


def step_seconds(rounds: list[dict], step: str) -> list[float]:
    return [x["seconds"] for r in rounds for x in r["samples"][step]]


def paired_ratios(rounds: list[dict]) -> dict[str, list[float]]:
    """Per round, the ratios of runs made next to each other (same W, same minute): first
    snapshot ÷ ``cp -a`` and ÷ ``--no-digests``, and the round's nightlies with digests ÷ without
    (A B B A: the sums of two runs each). Drift of a busy machine moves medians taken over
    rounds more than these."""
    out: dict[str, list[float]] = {"first_vs_cp": [], "first_vs_nodig": [], "nightly_vs_nodig": []}
    for r in rounds:
        t = {step: [x["seconds"] for x in xs] for step, xs in r["samples"].items()}
        out["first_vs_cp"].append(t["first"][0] / t["cp"][0])
        out["first_vs_nodig"].append(t["first"][0] / t["first_nodig"][0])
        out["nightly_vs_nodig"].append(sum(t["nightly"]) / sum(t["nightly_nodig"]))
    return out


def digests_table(rounds: list[dict], n: int, floor_kib: int) -> str:
    rows = []
    for step, title in DIGEST_STEPS:
        xs = [x for r in rounds for x in r["samples"][step]]
        t = [x["seconds"] for x in xs]
        peak = max(x["rss_kib"] for x in xs)
        med = statistics.median(t)
        rows.append([title, str(len(t)), f"{med:.3f}", f"{min(t):.3f}", f"{max(t):.3f}", rss_cell(peak, floor_kib), f"{med / n * 1e6:.2f}"])
    return markdown_table(["step", "runs", "median s", "min s", "max s", "peak RSS MiB", "µs/message"], rows)


def digests_facts_lines(rounds: list[dict]) -> str:
    lines = []
    for r in rounds:
        c, f = r["churn"], r["first_digests"]
        nd = r["nightly_digests"][0]
        t = r["nightly_transfer"][0]
        lines.append(
            f"- round {r['round']}: first snapshot's digests {f['bytes_written']:,} B ({f['messages']:,} messages, {f['files']:,} other files, {f['shards_written']:,} shard files); "
            f"churn {c['delivered']:,} delivered and {c['expunged']:,} expunged of {c['live_before']:,}; "
            f"nightly: reused {t.get('reused', 0):,}, copied {t.get('copied', 0):,}; its digests {nd['bytes_written']:,} B "
            f"({nd['shards_written']:,} shard files written, {nd['shards_linked']:,} linked from the reference; {nd['messages']:,} messages with a digest, {nd['pending']:,} pending)"
        )
    return "\n".join(lines)


# 2. Checking a history ---------------------------------------------------------------------


@dataclass(frozen=True)
class History:
    """The check group's cached repository and its restic twin."""

    entry: Path

    @property
    def repo(self) -> Path:
        return self.entry / "repo"

    @property
    def restic(self) -> Path:
        return self.entry / "restic"

    @property
    def password(self) -> Path:
        return self.entry / "restic-password"

    def restic_argv(self, *args: str) -> list[str]:
        return ["restic", "-r", str(self.restic), "--password-file", str(self.password), *args]


def ensure_history(places: Places, cache_store: Path, store_bytes: int, n: int, accounts: int, seed: int, snapshots: int, code: str, log_path: Path) -> tuple[History, dict]:
    """The repository of ``snapshots`` snapshots (module doc), built once per parameters and
    code, cached with a marker written after success; then its restic twin, likewise."""
    h = History(places.cache / f"integrity-{n}m-{accounts}a-seed{seed}-{snapshots}s-code{code}")
    marker, restic_marker = h.entry / "repo.json", h.entry / "restic.json"
    if marker.exists():
        facts = json.loads(marker.read_text())
    else:
        if h.entry.exists():
            log(f"bench: {h.entry} has no completion marker (interrupted build?); rebuilding")
            remove_tree(h.entry)
        h.entry.mkdir(parents=True)
        facts = build_history(h, places, cache_store, store_bytes, seed, snapshots, log_path)
        marker.write_text(json.dumps(facts) + "\n")
    if not restic_marker.exists():
        remove_tree(h.restic)
        restic_marker.write_text(json.dumps(push_history(h, facts["snapshots"], log_path)) + "\n")
    facts["restic"] = json.loads(restic_marker.read_text())
    return h, facts


def build_history(h: History, places: Places, cache_store: Path, store_bytes: int, seed: int, snapshots: int, log_path: Path) -> dict:
    """W: a real copy of the cached store on /dev/shm; then ``snapshots`` times: churn (not
    before the first), ``mailbak backup W REPO``; W removed after."""
    work = places.far / "integrity-build-store"
    remove_tree(work)
    check_room(places.far, store_bytes, "a copy of the store")
    log(f"bench: building a repository of {snapshots} snapshots in {h.repo} (cached), its store a copy on {places.far}")
    t0 = time.perf_counter()
    try:
        subprocess.run(["cp", "-a", str(cache_store), str(work)], check=True)
        run_once(mailbak_cli("init", "--quiet", str(h.repo)), discard_stdout=False, log_path=log_path)
        per: list[dict] = []
        churned = {"delivered": 0, "expunged": 0, "delivered_bytes": 0}
        for i in range(1, snapshots + 1):
            if i > 1:
                c = run_churn(work, seed * 1000 + 500 + i, 4096, log_path)
                for k in churned:
                    churned[k] += c[k]
            before = snapshot_dirs(h.repo)
            sample = run_once(mailbak_cli("backup", "--quiet", str(work), str(h.repo)), discard_stdout=False, log_path=log_path)
            snap = only_new_snapshot(h.repo, before)
            d = digest_facts(manifest_of(snap), True, f"snapshot {snap.name}")
            per.append({"name": snap.name, "seconds": round(sample.seconds, 3), "digests": d})
            log(f"  snapshot {i}/{snapshots}: {sample.seconds:.1f} s, digests {d['bytes_written']:,} B ({time.perf_counter() - t0:.0f} s)")
    finally:
        remove_tree(work)
    names = snapshot_dirs(h.repo)
    if names != [p["name"] for p in per]:
        raise HarnessError(f"{h.repo}: snapshots {names}, expected {[p['name'] for p in per]}")
    return {"store": str(cache_store), "snapshots": names, "per_snapshot": per, "churn_total": churned, "build_seconds": round(time.perf_counter() - t0, 1), "disk_bytes": du_bytes(h.repo)}


def push_history(h: History, snapshots: list[str], log_path: Path) -> dict:
    """Every snapshot pushed with ``mailbak offsite push``, oldest first, into a new local
    restic repository (its cache beside it, removed after)."""
    h.password.write_text("integrity-bench\n")
    cache = h.entry / "restic-cache"
    env = {**os.environ, "RESTIC_CACHE_DIR": str(cache)}
    subprocess.run(h.restic_argv("init"), check=True, capture_output=True, env=env)
    log(f"bench: pushing {len(snapshots)} snapshots into {h.restic} (cached)")
    t0 = time.perf_counter()
    for i, name in enumerate(snapshots, 1):
        argv = mailbak_cli("offsite", "push", "--quiet", "--restic-repo", str(h.restic), "--password-file", str(h.password), str(h.repo), name)
        done = subprocess.run(argv, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise HarnessError(f"{shlex.join(argv)} exited with status {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}")
        log(f"  push {i}/{len(snapshots)} ({time.perf_counter() - t0:.0f} s)")
    remove_tree(cache)
    listed = json.loads(subprocess.run(h.restic_argv("snapshots", "--json", "--no-cache"), check=True, capture_output=True, text=True).stdout)
    if len(listed) != len(snapshots):
        raise HarnessError(f"{h.restic}: {len(listed)} restic snapshots, expected {len(snapshots)}")
    return {"snapshots": len(listed), "push_seconds": round(time.perf_counter() - t0, 1), "disk_bytes": du_bytes(h.restic)}


def check_summary(h: History, log_path: Path) -> dict:
    """One untimed ``mailbak check --read-data --json REPO``: clean, and its summary (what it
    read) recorded."""
    argv = mailbak_cli("check", "--read-data", "--json", str(h.repo))
    sample = run_once(argv, discard_stdout=False, log_path=log_path)
    events = [json.loads(line) for line in log_path.read_text(errors="replace").splitlines() if line.startswith("{")]
    problems = [e for e in events if e.get("message_type") in ("error", "warning")]
    if problems:
        raise HarnessError(f"{shlex.join(argv)} reported: {problems[:5]}")
    summary = next((e for e in reversed(events) if e.get("message_type") == "summary"), None)
    if summary is None:
        raise HarnessError(f"{shlex.join(argv)}: no summary in its output")
    return {"seconds": round(sample.seconds, 3), "rss_kib": sample.rss_kib, "summary": summary}


def check_group(places: Places, n: int, accounts: int, seed: int, snapshots: int, repeat: int, code: str, have_check: bool, log_path: Path) -> dict:
    cache_store, store_facts = ensure_store(places.cache, n, accounts, seed)
    before = fingerprint(cache_store)
    h, facts = ensure_history(places, cache_store, store_facts["disk_bytes"], n, accounts, seed, snapshots, code, log_path)
    diffs = fingerprint_diff(before, fingerprint(cache_store))
    if diffs:
        raise HarnessError(f"the cached store {cache_store} changed while the repository was built:\n" + "\n".join(diffs[:20]))
    newest = h.repo / facts["snapshots"][-1]
    out: dict = {"store": str(cache_store), "store_facts": store_facts, "history": str(h.entry), "history_facts": facts}
    out["newest_snapshot"] = {"name": newest.name, "files": int(subprocess.run(["find", str(newest), "-type", "f", "-printf", "x"], capture_output=True, check=True).stdout.count(b"x")), "bytes": du_bytes(newest)}
    if have_check:
        out["check_untimed"] = check_summary(h, log_path)
    # Warm page cache when both repositories fit in the memory available, with room to spare.
    need, avail = facts["disk_bytes"] + facts["restic"]["disk_bytes"], mem_available()
    out["page_cache"] = {"need_bytes": need, "available_bytes": avail}
    if avail is None or need + CACHE_MARGIN <= avail:
        read_all(h.repo, h.restic)
        out["page_cache"]["warm"] = True
    else:
        out["page_cache"]["warm"] = False
        log(f"bench: note: the repositories take {need / 1e9:.1f} GB, {avail / 1e9:.1f} GB of memory available: not warmed, every contender reads partly from disk")

    def check_output(contender: Contender, path: Path) -> None:
        if contender.name.startswith("restic"):
            text = path.read_text(errors="replace")
            if "no errors were found" not in text:
                raise HarnessError(f"{contender.name}: no 'no errors were found' in its output:\n{text[-2000:]}")

    sha = f"find {shell_quote(newest)} -type f -print0 | xargs -0 -P {SHA_PROCESSES} -n {SHA_BATCH} sha256sum > /dev/null"
    contenders = []
    if have_check:
        contenders.append(Contender(f"mailbak check --read-data REPO ({snapshots} snapshots)", lambda s, t: mailbak_cli("check", "--read-data", str(h.repo))))
    contenders += [
        Contender(f"sha256sum of the newest snapshot ({SHA_PROCESSES} processes)", lambda s, t: ["sh", "-c", sha]),
        Contender(f"restic check --read-data ({snapshots} snapshots)", lambda s, t: h.restic_argv("check", "--read-data")),
    ]
    group = Group("check", f"prove a history of {snapshots} snapshots", contenders, h.repo, makes_target=False, reference=contenders[0].name, check=check_output)
    results = run_group(group, cache_store, repeat, f"[check {n:,}]", log_path)
    out["group"], out["results"] = group, results
    return out


# Reporting ---------------------------------------------------------------------------------


def verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else "pass" if ok else "FAIL"


def targets(dig: dict | None, chk: dict | None) -> tuple[list[list[str]], dict]:
    rows, data = [], {}

    def ratio(key: str, a: float | None, b: float, target: float | None, what: str) -> None:
        bound = f"≤ {target}" if target is not None else "(none)"
        if a is None:
            rows.append([what, "not measured (no `mailbak check` in this build)", bound, "not measured"])
            data[key] = {"value": None, "target": target, "pass": None}
            return
        value = a / b
        ok = None if target is None else value <= target
        rows.append([what, f"{a:.3f} s / {b:.3f} s = **{value:.2f}**", bound, "—" if ok is None else verdict(ok)])
        data[key] = {"value": value, "seconds": [a, b], "target": target, "pass": ok}

    if dig:
        r = dig["rounds"]
        med = {step: statistics.median(step_seconds(r, step)) for step, _ in DIGEST_STEPS}
        paired = paired_ratios(r)
        for key, a, b, target, what in (
            ("first_vs_cp", "first", "cp", TARGET_FIRST_VS_CP, "first snapshot with digests ÷ `cp -a` (onto /dev/shm)"),
            ("first_vs_nodig", "first", "first_nodig", None, "first snapshot with digests ÷ with `--no-digests`"),
            ("nightly_vs_nodig", "nightly", "nightly_nodig", TARGET_NIGHTLY, "nightly snapshot at 1 % churn, with digests ÷ without"),
        ):
            ratio(key, med[a], med[b], target, what)
            data[key]["paired"] = paired[key]
            rows.append(["… the same per round, runs next to each other", ", ".join(f"{v:.2f}" for v in paired[key]) + f" (median **{statistics.median(paired[key]):.2f}**)", "", ""])
        added = [d["bytes_written"] for rr in r for d in rr["nightly_digests"]]
        msgs = dig["store_facts"]["messages"]
        rows.append(["bytes a nightly snapshot's digests add (manifest `digests.bytes_written`), median", f"**{round(statistics.median(added)):,} B** ({statistics.median(added) / msgs:.2f} B per message of the store)", "(state it)", "—"])
        data["nightly_digest_bytes"] = {"values": added, "median": statistics.median(added)}
    if chk:
        res = {x.name: x for x in chk["results"]}
        names = [c.name for c in chk["group"].contenders]
        check = res[names[0]].median if names[0].startswith("mailbak check") else None
        sha = next(r for n, r in res.items() if n.startswith("sha256sum")).median
        restic = next(r for n, r in res.items() if n.startswith("restic")).median
        ratio("check_vs_sha256sum", check, sha, TARGET_CHECK_VS_SHA, "`check --read-data` of the history ÷ `sha256sum` of one snapshot (2 processes)")
        ratio("check_vs_restic", check, restic, TARGET_CHECK_VS_RESTIC, "`check --read-data` ÷ `restic check --read-data` of the same history")
        if check is not None:
            rss = max(s.rss_kib for s in res[names[0]].samples) * 1024
            rows.append(["peak RSS of `check --read-data`", f"**{rss / 1e6:.0f} MB**", f"≤ {TARGET_CHECK_RSS_BYTES / 1e6:.0f} MB", verdict(rss <= TARGET_CHECK_RSS_BYTES)])
            data["check_rss_bytes"] = {"value": rss, "target": TARGET_CHECK_RSS_BYTES, "pass": rss <= TARGET_CHECK_RSS_BYTES}
        else:
            rows.append(["peak RSS of `check --read-data`", "not measured", f"≤ {TARGET_CHECK_RSS_BYTES / 1e6:.0f} MB", "not measured"])
            data["check_rss_bytes"] = {"value": None, "target": TARGET_CHECK_RSS_BYTES, "pass": None}
    return rows, data


def history_lines(chk: dict) -> str:
    f = chk["history_facts"]
    per = f["per_snapshot"]
    nightly = [p["digests"]["bytes_written"] for p in per[1:]]
    c = f["churn_total"]
    lines = [
        f"- repository: {len(f['snapshots'])} snapshots, {f['disk_bytes'] / 1e9:.2f} GB on disk ({fs_type(Path(chk['history']))}), built in {f['build_seconds']} s",
        f"- churn between snapshots, in all: {c['delivered']:,} delivered, {c['expunged']:,} expunged",
        f"- digests the snapshots added: first {per[0]['digests']['bytes_written']:,} B; nightlies median {round(statistics.median(nightly)) if nightly else 0:,} B (min {min(nightly, default=0):,}, max {max(nightly, default=0):,})",
        f"- restic repository: {f['restic']['snapshots']} snapshots, {f['restic']['disk_bytes'] / 1e9:.2f} GB, pushed in {f['restic']['push_seconds']} s",
        f"- newest snapshot {chk['newest_snapshot']['name']}: {chk['newest_snapshot']['files']:,} regular files, {chk['newest_snapshot']['bytes'] / 1e9:.2f} GB",
    ]
    pc = chk["page_cache"]
    warm = "warm (every file of both repositories read once, untimed)" if pc["warm"] else "NOT warmed: they do not fit in the memory available, so every contender reads partly from disk"
    avail = f"{pc['available_bytes'] / 1e9:.1f} GB" if pc["available_bytes"] is not None else "unknown"
    lines.append(f"- page cache: {warm}; both repositories {pc['need_bytes'] / 1e9:.2f} GB, memory available {avail}")
    if "check_untimed" in chk:
        u = chk["check_untimed"]
        facts = {k: u["summary"][k] for k in SUMMARY_KEYS if k in u["summary"]}
        lines.append(f"- untimed `mailbak check --read-data --json` (first read, before the warm-up): {u['seconds']:.3f} s, {u['rss_kib'] / 1024:.0f} MiB; summary: `{json.dumps(facts)}`")
    return "\n".join(lines)


# Main --------------------------------------------------------------------------------------


def probe_commands() -> dict[str, bool]:
    """Whether this build has ``backup --no-digests`` and ``check --read-data`` (asked of a
    child, as probe_mailbak does)."""
    out = {}
    for key, argv, needle in (("no_digests", ["backup", "--help"], "--no-digests"), ("check", ["check", "--help"], "--read-data")):
        done = subprocess.run(mailbak_cli(*argv), capture_output=True, text=True, stdin=subprocess.DEVNULL)
        out[key] = done.returncode == 0 and needle in done.stdout
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/integrity.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, help="messages of the store (required, unless --smoke)")
    p.add_argument("--accounts", type=int, help="accounts per store (default 50; 3 with --smoke)")
    p.add_argument("--snapshots", type=int, help=f"snapshots of the check group's repository (default {DEFAULT_SNAPSHOTS}; {SMOKE_SNAPSHOTS} with --smoke)")
    p.add_argument("--seed", type=int, default=1, help="generator seed, also seeds the churn (default 1)")
    p.add_argument("--rounds", type=int, help="digests: rounds; check: timed rounds after a warm-up round (default 3; 1 with --smoke)")
    p.add_argument("--only", help=f"a comma list of groups to run, of {', '.join(GROUPS)} (default: all)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write machine info and every raw timing here")
    p.add_argument("--smoke", action="store_true", help=f"{SMOKE_MESSAGES} messages, {SMOKE_SNAPSHOTS} snapshots, one round, in temporary directories: checks that everything runs")
    args = p.parse_args(argv)
    if args.smoke:
        if args.messages:
            p.error("--smoke chooses its own size; drop --messages")
        args.messages, args.accounts = SMOKE_MESSAGES, args.accounts or SMOKE_ACCOUNTS
        args.snapshots, args.rounds = args.snapshots or SMOKE_SNAPSHOTS, args.rounds or 1
    elif not args.messages:
        p.error("--messages is required (or --smoke)")
    args.accounts = args.accounts or 50
    args.snapshots = args.snapshots or DEFAULT_SNAPSHOTS
    args.rounds = args.rounds or 3
    if min(args.messages, args.accounts, args.snapshots, args.rounds) < 1:
        p.error("--messages, --accounts, --snapshots and --rounds must be at least 1")
    args.groups = GROUPS if not args.only else tuple(g.strip() for g in args.only.split(","))
    unknown = [g for g in args.groups if g not in GROUPS]
    if unknown:
        p.error(f"--only: unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    return args


def run(args: argparse.Namespace, roots: dict[str, Path]) -> None:
    places = Places.of(roots, "disk")
    places.create()
    if not shutil.which("restic") and "check" in args.groups:
        raise HarnessError("restic is not installed (scripts/system-deps installs it)")
    mailbak = probe_mailbak()
    have = probe_commands()
    if not have["no_digests"]:
        raise HarnessError("this build's `mailbak backup` has no --no-digests: it records no digests (issue 21)")
    if not have["check"] and "check" in args.groups:
        log("bench: note: this build has no `mailbak check --read-data`: the check group runs its peers only")
    info = machine_info(places, [sys.executable, *sys.argv], mailbak)
    del info["rsync"]
    if info["dentry_hash_entries"] is None:
        info["dentry_hash_entries"] = "unknown (no longer in the kernel's boot log, and not remembered for this boot)"
    info["fs_cross_device_dest"] += " (digests group: the repository)"
    info["sha256sum"] = first_line(["sha256sum", "--version"])
    info["restic"] = first_line(["restic", "version"]) if shutil.which("restic") else None
    info["mailbak_check"] = "yes" if have["check"] else "no (check not measured)"
    if info["engine_warning"]:
        log(f"bench: warning: {info['engine_warning']}")
    log_path = places.near / "last-command.log"
    n = args.messages
    print(f"## mailbak integrity benchmark (issue 21)\n\n{machine_markdown(info)}\n", flush=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report: dict = {"machine": info, "settings": settings, "messages": n, "groups": {}}
    dig = chk = None

    def save() -> None:
        if args.json:
            # Written after every group, so that a long run aborted later keeps what it measured.
            args.json.write_text(json.dumps(report, indent=1) + "\n")

    if "digests" in args.groups:
        dig = digests_group(places, n, args.accounts, args.seed, args.rounds, log_path)
        floor = rss_floor_kib()
        report["groups"]["digests"] = {**dig, "rss_floor_kib": floor}
        print(f"### digests: what recording them costs, {n:,} messages, {args.accounts} accounts (store on {fs_type(places.cache)}, snapshots on {fs_type(places.far)})\n")
        print(f"{args.rounds} round(s); per round one run of each first-snapshot step and two of each nightly (A B B A). Peak RSS ≤{floor / 1024:.0f} marks the harness's floor.\n")
        print(f"{digests_table(dig['rounds'], n, floor)}\n\n{digests_facts_lines(dig['rounds'])}\n", flush=True)
        save()
    if "check" in args.groups:
        chk = check_group(places, n, args.accounts, args.seed, args.snapshots, args.rounds, info["mailbak_source_digest"], have["check"], log_path)
        floor = rss_floor_kib()
        report["groups"]["check"] = {k: v for k, v in chk.items() if k not in ("group", "results")} | {"rss_floor_kib": floor, "results": [r.to_json() for r in chk["results"]]}
        print(f"### check: {chk['group'].title} of {n:,} messages, {args.accounts} accounts (1 % churn between snapshots)\n")
        print(f"The repository is on disk: /dev/shm (RAM) cannot hold 30 snapshots of a 1,000,000-message store beside everything else. One warm-up round, then {args.rounds} timed, contenders alternating.\n")
        print(f"{history_lines(chk)}\n\n{group_table(chk['group'], chk['results'], n, floor)}\n", flush=True)
        save()
    rows, data = targets(dig, chk)
    report["targets"] = data
    info["load_average_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"Load average at the end: {info['load_average_at_end']}.\n")
    print(f"### Targets, {n:,} messages\n\n{markdown_table(['measure', 'measured (medians)', 'target', ''], rows)}\n", flush=True)
    note = code_changed(mailbak, info)
    if note:
        report["warning"] = note
    save()
    log_path.unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    return run_harness(run, parse_args(argv), "mailbak-bench-integrity-smoke-")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

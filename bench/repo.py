"""Benchmark of snapshot repositories (issue 11): nightly snapshots onto another file system.

    .venv/bin/python bench/repo.py --messages N[,N...] [--rounds R] [--accounts K] [--seed S]
        [--json FILE] [--smoke]

Method (BENCHMARKS.md, section "Repositories", has the why). Per size and round:
1. A work store W on the store's file system (bench/.cache/work/): ``cp -al`` of the cached
   store, then every file that is not a message file (LMDB files and their locks, junk filters,
   config, keys) replaced by a real copy, so that the writer never writes into the cache through
   a shared inode. The cache's files are fingerprinted (size, mtime_ns, sha256; directories'
   mtime_ns; message-file count) before the first round and after every round: a change aborts.
2. REPO on /dev/shm (tmpfs: another file system than the store on /), ``mailbak init``. The page
   cache is warmed (every file of W read once, untimed), then timed: ``cp -a W/data`` onto
   /dev/shm (removed at once), then the first snapshot ``mailbak backup W REPO``. Both run with
   the same free memory: at most one copy of the store is on /dev/shm at any time.
3. Churn, in a child process with the writer library (``Store.open(W, durable=False)``): 0.5 %
   of the messages delivered (new files, each the size of a random existing message of the
   account, into its mailbox) and 0.5 % expunged and swept, spread over the accounts in
   proportion to their size: 1 % of the messages churned, the count unchanged.
4. Timed, one after the other: the second snapshot ``mailbak backup W REPO`` (with the used
   bytes of /dev/shm from statvfs before and after), ``rsync -a --stats --link-dest=PREV/data
   W/data/ NEW/`` onto /dev/shm with PREV the first snapshot, and ``mailbak backup W W-parent/b``
   on the store's own file system. Before them, ``cp -al PREV/data`` within /dev/shm (the
   hardlink method's floor, issue 22 part 1; removed at once, untimed).
5. Timed: ``mailbak prune REPO --keep-last 1 --no-nice`` (removes the first snapshot) and
   ``rm -rf NEW`` (the rsync tree: the same files, hardlinked to the same inodes), alternating
   which goes first from round to round.

Wall time, peak RSS (os.wait4) and the rest of the measuring are bench/run.py's, imported from
it. Steps that need the engine of issue 11 (reuse from a reference: ``copy_tree(reference=)``;
prune's ``delete_tree``) are probed in a child before the run; without them they are reported
as not measured, and the run goes on with the rest.

Markdown tables go to stdout, progress to stderr; --json FILE also keeps every raw timing.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (  # noqa: E402  (bench/ is not a package: run.py is imported by path)
    SMOKE_MESSAGES,
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
    settle,
    sizes_and_counts,
)

#: Churn: this fraction of the messages is delivered, and as many expunged (1 % churned).
DELIVER_FRACTION = EXPUNGE_FRACTION = 0.005

#: The issue's targets.
TARGET_FIRST = 0.35  # first snapshot / cp -a
TARGET_RSYNC = 0.2  # second snapshot / rsync --link-dest
TARGET_SAME_FS = 1.2  # second snapshot / same-fs mailbak backup
TARGET_SPACE = 1.05  # statvfs delta / (churned message bytes + database bytes)
TARGET_PRUNE = 0.5  # prune / rm -rf
#: Issue 22 part 1: the second snapshot against a bare ``cp -al`` of the reference's data/.
TARGET_PROOF = 0.45
TARGET_RSS_BYTES = 150_000_000
#: "Flat" time per message: the largest size's µs/message at most this times the smallest's.
TARGET_FLAT = 1.25

#: Headroom on /dev/shm and in RAM beyond one copy of the store.
SPACE_MARGIN = 256 << 20

#: The mailbak steps (timed subprocesses) and the others, in report order.
STEPS = (
    ("first", "first snapshot `mailbak backup W REPO`"),
    ("cp", "`cp -a W/data` to /dev/shm"),
    ("second", "second snapshot `mailbak backup W REPO`"),
    ("rsync", "`rsync -a --link-dest=PREV/data W/data/ NEW/`"),
    ("cpal", "`cp -al PREV/data` within /dev/shm"),
    ("same_fs", "same-fs `mailbak backup W W-parent/b`"),
    ("prune", "`mailbak prune REPO --keep-last 1 --no-nice`"),
    ("rm", "`rm -rf NEW` (the rsync tree)"),
)
MAILBAK_STEPS = ("first", "second", "same_fs", "prune")


# The work store ----------------------------------------------------------------------------


def is_message_tree(rel_dir: str) -> bool:
    """Whether a directory (relative to the store) holds message files and their directories
    only: ``data/accounts/A/msg`` and below, ``data/queue/X`` and below."""
    parts = rel_dir.split("/")
    return (len(parts) >= 4 and parts[:2] == ["data", "accounts"] and parts[3] == "msg") or (len(parts) >= 3 and parts[:2] == ["data", "queue"])


def other_files(store: Path):
    """Every regular file of ``store`` outside its message trees (relative paths), and every
    directory (relative paths, the message trees' included), walking without following links."""
    files, dirs = [], []
    for top, _dirs, filenames in os.walk(store):
        rel_top = os.path.relpath(top, store)
        rel_top = "" if rel_top == "." else rel_top
        dirs.append(rel_top)
        if is_message_tree(rel_top):
            continue
        for name in filenames:
            rel = f"{rel_top}/{name}" if rel_top else name
            if os.path.isfile(store / rel) and not os.path.islink(store / rel):
                files.append(rel)
    return files, dirs


def count_data_files(store: Path) -> int:
    """Files under a store's data/ (find, so that the harness's own memory stays small)."""
    out = subprocess.run(["find", str(store / "data"), "-type", "f", "-printf", "x"], capture_output=True, check=True).stdout
    return len(out)


def fingerprint(store: Path) -> dict:
    """What must not change in the cached store: each non-message file's size, mtime_ns and
    sha256 (LMDB lock files excepted: any reader of the cache, another benchmark say, writes its
    reader slot there), each directory's mtime_ns, and the number of files under data/."""
    files, dirs = other_files(store)
    out: dict = {"files": {}, "dirs": {}, "data_files": count_data_files(store)}
    for rel in files:
        if rel.endswith("-lock"):
            continue
        st = os.stat(store / rel)
        with open(store / rel, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        out["files"][rel] = [st.st_size, st.st_mtime_ns, digest]
    for rel in dirs:
        out["dirs"][rel] = os.stat(store / rel).st_mtime_ns
    return out


def fingerprint_diff(before: dict, after: dict) -> list[str]:
    diffs = [f"{rel}: {before['files'].get(rel)} -> {after['files'].get(rel)}" for rel in sorted(before["files"].keys() | after["files"].keys()) if before["files"].get(rel) != after["files"].get(rel)]
    diffs += [f"directory {rel or '.'}: mtime_ns {before['dirs'].get(rel)} -> {after['dirs'].get(rel)}" for rel in sorted(before["dirs"].keys() | after["dirs"].keys()) if before["dirs"].get(rel) != after["dirs"].get(rel)]
    if before["data_files"] != after["data_files"]:
        diffs.append(f"files under data/: {before['data_files']} -> {after['data_files']}")
    return diffs


def make_work_store(cache_store: Path, work: Path) -> int:
    """W: hardlinks of the cache's message files, real copies of everything else (same mode and
    mtime). Returns the number of files copied; checks that none of them shares an inode."""
    subprocess.run(["cp", "-al", str(cache_store), str(work)], check=True)
    files, _ = other_files(work)
    for rel in files:
        dst = work / rel
        tmp = dst.with_name(dst.name + ".bench-copy")
        shutil.copy2(dst, tmp)  # follows the shared inode's content, writes a new one
        os.replace(tmp, dst)
    shared = [rel for rel in files if os.stat(work / rel).st_nlink != 1]
    if shared:
        raise HarnessError(f"{work}: files still sharing an inode with the cache: {shared[:5]}")
    return len(files)


def warm_page_cache(work: Path) -> None:
    """Reads every file of W's data once, so that neither timed copy pays for cold reads."""
    subprocess.run(f"find {shell_quote(work / 'data')} -type f -print0 | xargs -0 -r cat > /dev/null", shell=True, check=True)


def shell_quote(path: Path) -> str:
    return shlex.quote(str(path))


def db_bytes(store: Path) -> int:
    """Bytes of the LMDB files (``*.db``) of a store: what every snapshot copies anew."""
    files, _ = other_files(store)
    return sum(os.stat(store / rel).st_size for rel in files if rel.endswith(".db"))


# Churn (a child process: the writer's memory must not raise the harness's RSS floor) ---------


def apportion(total: int, weights: list[int]) -> list[int]:
    """``total`` split over ``weights`` in proportion, summing exactly (largest remainder)."""
    whole = sum(weights)
    if whole == 0:
        return [0] * len(weights)
    exact = [total * w / whole for w in weights]
    out = [int(x) for x in exact]
    for i in sorted(range(len(weights)), key=lambda i: exact[i] - out[i], reverse=True)[: total - sum(out)]:
        out[i] += 1
    return out


def churn(work: Path, seed: int, block: int = 4096) -> dict:
    """Delivers and expunges (DELIVER_FRACTION, EXPUNGE_FRACTION of all live messages) with the
    writer library; returns exactly what it did (with the delivered bytes also rounded up to
    ``block``, the allocation unit of the repository's file system, for information)."""
    from mailbak.store import Store

    rng = random.Random(seed)
    with Store.open(work, durable=False) as store:
        names = list(store.account_names())
        live = []
        for name in names:
            live.append(len(store.account(name).messages()))
            store.close_account(name)
        total = sum(live)
        to_deliver = apportion(max(1, round(total * DELIVER_FRACTION)), live)
        to_expunge = apportion(max(1, round(total * EXPUNGE_FRACTION)), live)
        delivered = delivered_bytes = delivered_blocks = expunged = expunged_bytes = 0
        t0 = time.perf_counter()
        for name, n_new, n_gone in zip(names, to_deliver, to_expunge, strict=True):
            acc = store.account(name)
            records = acc.messages()
            ids = sorted(records)
            for _ in range(n_new):
                model = records[rng.choice(ids)]
                data = make_message(rng, name, model["size"])
                acc.deliver(model["mailbox_id"], data)
                delivered += 1
                delivered_bytes += len(data)
                delivered_blocks += -(-len(data) // block) * block
            gone = rng.sample(ids, min(n_gone, len(ids)))
            acc.expunge(gone)
            if acc.erasing():
                raise RuntimeError(f"account {name}: the sweep left files (a backup holding the lease?)")
            expunged += len(gone)
            expunged_bytes += sum(records[i]["size"] for i in gone)
            store.close_account(name)
    return {
        "live_before": total,
        "delivered": delivered,
        "delivered_bytes": delivered_bytes,
        "delivered_bytes_in_blocks": delivered_blocks,
        "block": block,
        "expunged": expunged,
        "expunged_bytes": expunged_bytes,
        "accounts": len(names),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def make_message(rng: random.Random, account: str, size: int) -> bytes:
    head = f"From: bench <bench@example.org>\r\nTo: {account}@example.org\r\nSubject: churn {rng.getrandbits(32):08x}\r\n\r\n".encode()
    body_len = max(0, size - len(head))
    body = base64.b64encode(rng.randbytes(body_len * 3 // 4 + 3))[:body_len]
    return head + body


def run_churn(work: Path, seed: int, block: int, log_path: Path) -> dict:
    argv = [sys.executable, str(Path(__file__).resolve()), "--churn-child", str(work), "--seed", str(seed), "--churn-block", str(block)]
    done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        log_path.write_text(done.stdout + done.stderr)
        raise HarnessError(f"churn of {work} failed (status {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


# Probes and checks -------------------------------------------------------------------------


def probe_engine() -> dict:
    """Which of issue 11's engine calls this build has, asked of a child (see probe_mailbak)."""
    code = "import json; from mailbak import _engine; sig = getattr(_engine.copy_tree, '__text_signature__', '') or ''; print(json.dumps({'reuse': 'reference' in sig, 'delete_tree': hasattr(_engine, 'delete_tree')}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        raise HarnessError(f"cannot probe mailbak._engine: {done.stderr.strip()}")
    return json.loads(done.stdout)


def used_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_room(path: Path, need: int, what: str) -> None:
    """Refuses when ``path`` (tmpfs: RAM) cannot take ``need`` bytes more, with room to spare."""
    free = free_bytes(path)
    avail = mem_available()
    if free < need + SPACE_MARGIN:
        raise HarnessError(f"{path}: {free / 1e9:.1f} GB free, {what} needs {need / 1e9:.1f} GB and {SPACE_MARGIN >> 20} MiB to spare; free /dev/shm or run a smaller size")
    if avail is not None and avail < need + SPACE_MARGIN:
        raise HarnessError(f"{avail / 1e9:.1f} GB of RAM available, {what} on tmpfs needs {need / 1e9:.1f} GB and {SPACE_MARGIN >> 20} MiB to spare")


def new_snapshot(repo: Path, before: list[str]) -> dict:
    """The manifest of the one snapshot that appeared in ``repo`` (the backup's JSON summary
    holds the same facts; reading the manifest keeps the timed command as a user runs it)."""
    new = [name for name in snapshot_dirs(repo) if name not in before]
    if len(new) != 1:
        raise HarnessError(f"{repo}: expected one new snapshot, found {new}")
    facts = json.loads((repo / new[0] / "mailbak.json").read_text())
    if facts.get("status") != "ok":
        raise HarnessError(f"{repo / new[0]}: manifest status {facts.get('status')!r}")
    return {**facts, "snapshot": new[0]}


def rsync_stats(log_path: Path) -> dict:
    """Regular files and files transferred from ``rsync --stats``: the rest were linked."""
    text = log_path.read_text(errors="replace")
    reg = re.search(r"Number of files: [\d,]+ \(reg: ([\d,]+)", text)
    sent = re.search(r"Number of regular files transferred: ([\d,]+)", text)
    if not reg or not sent:
        raise HarnessError(f"no --stats in rsync's output:\n{text[-2000:]}")
    files, transferred = (int(m.group(1).replace(",", "")) for m in (reg, sent))
    return {"regular_files": files, "transferred": transferred, "linked": files - transferred}


def du_beyond(first: Path, second: Path) -> int:
    """Bytes ``second`` takes beyond ``first`` (du counts each inode once, at its first path): a
    cross-check of the statvfs delta, which sees every writer of the file system."""
    done = subprocess.run(["du", "-s", "-B1", str(first), str(second)], capture_output=True, text=True, check=True)
    return int(done.stdout.splitlines()[1].split()[0])


def disturbed_space(delta: int, du: int) -> bool:
    """Whether the statvfs delta is not the snapshot's alone: it differs from du by more than
    10 % and 1 MiB (du and statvfs count the same pages on tmpfs, directories aside)."""
    return abs(delta - du) > 0.1 * du + (1 << 20)


def snapshot_dirs(repo: Path) -> list[str]:
    return sorted(p.name for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))


# One round ---------------------------------------------------------------------------------


def timed(name: str, argv: list[str], log_path: Path, label: str) -> Sample:
    settle()
    try:
        sample = run_once(argv, discard_stdout=False, log_path=log_path)
    except HarnessError as e:
        raise HarnessError(f"{label} {name}: {e}") from None
    log(f"  {label} {name}: {sample.seconds:.3f} s, {sample.rss_kib / 1024:.0f} MiB")
    return sample


def sample_json(s: Sample) -> dict:
    return {"seconds": s.seconds, "rss_kib": s.rss_kib, "user_s": round(s.user_s, 3), "sys_s": round(s.sys_s, 3)}


def run_round(n: int, round_no: int, cache_store: Path, facts: dict, places: Places, caps: dict, log_path: Path, seed: int) -> dict:
    label = f"[{n:,} round {round_no}]"
    parent = places.near / "repo-round"  # W-parent, on the store's file system
    far = places.far / "repo-round"  # on /dev/shm
    for p in (parent, far):
        remove_tree(p)  # left over from an aborted run
    parent.mkdir(parents=True)
    far.mkdir(parents=True)
    work, same_fs_dest = parent / "store", parent / "b"
    repo, cp_dest, rsync_new, cpal = far / "repo", far / "cp", far / "rsync-new", far / "cp-al"
    out: dict = {"round": round_no, "samples": {}}
    s = out["samples"]
    try:
        log(f"  {label} making W: cp -al of the cache, real copies of every non-message file")
        t0 = time.perf_counter()
        out["work_store_copied_files"] = make_work_store(cache_store, work)
        out["work_store_seconds"] = round(time.perf_counter() - t0, 2)
        warm_page_cache(work)
        run_once(mailbak_cli("init", "--quiet", str(repo)), discard_stdout=False, log_path=log_path)

        # 2. First snapshot against cp -a, each with only itself on /dev/shm.
        check_room(far, facts["disk_bytes"], "a copy of the store")
        s["cp"] = timed("cp -a", ["cp", "-a", str(work / "data"), str(cp_dest)], log_path, label)
        remove_tree(cp_dest)
        check_room(far, facts["disk_bytes"], "the first snapshot")
        s["first"] = timed("first snapshot", mailbak_cli("backup", str(work), str(repo)), log_path, label)
        first = new_snapshot(repo, [])
        out["first_transfer"] = first.get("transfer")
        prev = repo / first["snapshot"]

        # 3. Churn.
        out["churn"] = run_churn(work, seed * 1000 + round_no, os.statvfs(far).f_frsize, log_path)
        log(f"  {label} churn: {out['churn']['delivered']:,} delivered ({out['churn']['delivered_bytes']:,} bytes), {out['churn']['expunged']:,} expunged")
        out["db_bytes"] = db_bytes(work)

        # 4. cp -al of the reference's data/ (the floor of the hardlink method: one link per file,
        # nothing compared), removed at once: tmpfs charges an inode per link, and /dev/shm's
        # default allows about 3 per message of a 1M store, used up by the first and second
        # snapshots and the rsync tree. Then the second snapshot, rsync --link-dest, same-fs backup.
        s["cpal"] = timed("cp -al", ["cp", "-al", str(prev / "data"), str(cpal)], log_path, label)
        remove_tree(cpal)
        if caps["reuse"]:
            before = used_bytes(far)
            s["second"] = timed("second snapshot", mailbak_cli("backup", str(work), str(repo)), log_path, label)
            out["space_delta_bytes"] = used_bytes(far) - before
            second = new_snapshot(repo, [first["snapshot"]])
            out["space_du_bytes"] = du_beyond(prev, repo / second["snapshot"])
            if disturbed_space(out["space_delta_bytes"], out["space_du_bytes"]):
                log(f"  {label} warning: statvfs delta {out['space_delta_bytes']:,} B, du {out['space_du_bytes']:,} B: something else wrote to {far}?")
            out["second_transfer"] = second.get("transfer")
            out["second_reference"] = second.get("reference")
            out["second_db_bytes_written"] = sum(d.get("bytes", 0) for d in second.get("databases", {}).values())
            if not second.get("transfer", {}).get("reused"):
                log(f"  {label} warning: the second snapshot reused nothing")
        s["rsync"] = timed("rsync --link-dest", ["rsync", "-a", "--stats", f"--link-dest={prev / 'data'}", f"{work / 'data'}/", f"{rsync_new}/"], log_path, label)
        out["rsync"] = rsync_stats(log_path)
        if out["rsync"]["linked"] < 0.95 * out["rsync"]["regular_files"]:
            log(f"  {label} warning: rsync linked only {out['rsync']['linked']:,} of {out['rsync']['regular_files']:,} files")
        s["same_fs"] = timed("same-fs backup", mailbak_cli("backup", str(work), str(same_fs_dest)), log_path, label)
        remove_tree(same_fs_dest)

        # 5. Prune against rm -rf, alternating which goes first.
        def prune() -> None:
            names = snapshot_dirs(repo)
            s["prune"] = timed("prune", mailbak_cli("prune", str(repo), "--keep-last", "1", "--no-nice"), log_path, label)
            left = snapshot_dirs(repo)
            if left != names[1:] or (repo / ".trash").exists() and any((repo / ".trash").iterdir()):
                raise HarnessError(f"{label} prune left {left} (and trash?) of {names}")

        def rm() -> None:
            s["rm"] = timed("rm -rf", ["rm", "-rf", "--", str(rsync_new)], log_path, label)

        can_prune = caps["reuse"] and caps["delete_tree"]
        for step in (prune, rm) if round_no % 2 else (rm, prune):
            if step is rm or can_prune:
                step()
    finally:
        remove_tree(far)  # tmpfs is RAM: never left behind
    remove_tree(parent)  # kept for inspection only after a failure
    out["samples"] = {k: sample_json(v) for k, v in s.items()}
    return out


# Reporting ---------------------------------------------------------------------------------


def med(rounds: list[dict], step: str, key: str = "seconds") -> float | None:
    xs = [r["samples"][step][key] for r in rounds if step in r["samples"]]
    return statistics.median(xs) if xs else None


def steps_table(rounds: list[dict], n: int, floor_kib: int) -> str:
    rows = []
    for step, title in STEPS:
        xs = [r["samples"][step] for r in rounds if step in r["samples"]]
        if not xs:
            rows.append([title, "not measured", "", "", "", ""])
            continue
        t = [x["seconds"] for x in xs]
        peak = max(x["rss_kib"] for x in xs)
        rows.append([title, f"{statistics.median(t):.3f}", f"{min(t):.3f}", f"{max(t):.3f}", rss_cell(peak, floor_kib), f"{statistics.median(t) / n * 1e6:.2f}"])
    return markdown_table(["step", "median s", "min s", "max s", "peak RSS MiB", "µs/message"], rows)


def verdict(value: float | None, target: float) -> str:
    if value is None:
        return "not measured"
    return "pass" if value <= target else "FAIL"


def targets(rounds: list[dict], caps: dict) -> tuple[list[list[str]], dict]:
    """Rows of the targets table, and the same as data for --json."""
    rows, data = [], {}

    def ratio(key: str, a: str, b: str, target: float, what: str, missing: str) -> None:
        ma, mb = med(rounds, a), med(rounds, b)
        value = ma / mb if ma is not None and mb else None
        measured = f"{ma:.3f} s / {mb:.3f} s = **{value:.2f}**" if value is not None else missing
        rows.append([what, measured, f"≤ {target}", verdict(value, target)])
        data[key] = {"value": value, "target": target, "pass": value is not None and value <= target}

    no_reuse = "not measured: this build's engine cannot reuse (copy_tree has no `reference`)"
    no_prune = no_reuse if not caps["reuse"] else "not measured: this build's engine has no `delete_tree`"
    ratio("first_vs_cp", "first", "cp", TARGET_FIRST, "first snapshot ÷ `cp -a`", "")
    ratio("second_vs_rsync", "second", "rsync", TARGET_RSYNC, "second snapshot ÷ `rsync --link-dest`", no_reuse)
    ratio("second_vs_cp_al", "second", "cpal", TARGET_PROOF, "second snapshot ÷ `cp -al` of the reference's data/", no_reuse)
    ratio("second_vs_same_fs", "second", "same_fs", TARGET_SAME_FS, "second snapshot ÷ same-fs `mailbak backup`", no_reuse)
    # Space: the worst round.
    spaces = [(r["space_delta_bytes"], r["churn"]["delivered_bytes"] + r["db_bytes"], r["churn"]["delivered_bytes_in_blocks"] + r["db_bytes"], r["space_du_bytes"]) for r in rounds if "space_delta_bytes" in r]
    if spaces:
        delta, allowance, in_blocks, du = max(spaces, key=lambda x: x[0] / x[1])
        value = delta / allowance
        note = f" (in whole {rounds[0]['churn']['block']}-byte blocks: {in_blocks:,} B, {delta / in_blocks:.3f}; du: {du:,} B, {du / allowance:.3f})"
        verdict_ = verdict(value, TARGET_SPACE)
        disturbed = any(disturbed_space(x[0], x[3]) for x in spaces)
        if disturbed:
            verdict_ = "unreliable: statvfs and du disagree (another writer on the file system)"
        rows.append(["space the second snapshot adds (statvfs) ÷ (delivered bytes + database bytes)", f"{delta:,} / {allowance:,} B = **{value:.3f}**{note}", f"≤ {TARGET_SPACE}", verdict_])
        data["space"] = {
            "value": value,
            "target": TARGET_SPACE,
            "pass": value <= TARGET_SPACE and not disturbed,
            "disturbed": disturbed,
            "delta_bytes": delta,
            "allowance_bytes": allowance,
            "allowance_in_blocks_bytes": in_blocks,
            "du_bytes": du,
        }
    else:
        rows.append(["space the second snapshot adds", no_reuse, f"≤ {TARGET_SPACE}", "not measured"])
    ratio("prune_vs_rm", "prune", "rm", TARGET_PRUNE, "prune of one snapshot ÷ `rm -rf` of the same shape", no_prune)
    peaks = {step: max(r["samples"][step]["rss_kib"] for r in rounds if step in r["samples"]) for step in MAILBAK_STEPS if any(step in r["samples"] for r in rounds)}
    worst = max(peaks.values()) * 1024 if peaks else None
    cells = ", ".join(f"{step} {v * 1024 / 1e6:.0f}" for step, v in peaks.items())
    rows.append(["peak RSS of backup and prune (MB)", cells, f"≤ {TARGET_RSS_BYTES / 1e6:.0f} MB", verdict(worst, TARGET_RSS_BYTES)])
    data["peak_rss"] = {"bytes": {step: v * 1024 for step, v in peaks.items()}, "target": TARGET_RSS_BYTES, "pass": worst is not None and worst <= TARGET_RSS_BYTES}
    return rows, data


def facts_lines(rounds: list[dict]) -> str:
    lines = []
    for r in rounds:
        c = r["churn"]
        parts = [
            f"round {r['round']}: W made in {r['work_store_seconds']} s ({r['work_store_copied_files']} non-message files copied)",
            f"churn {c['delivered']:,} delivered ({c['delivered_bytes']:,} B; {c['delivered_bytes_in_blocks']:,} B in whole blocks) and {c['expunged']:,} expunged of {c['live_before']:,} in {c['accounts']} accounts",
            f"databases {r['db_bytes']:,} B",
            f"rsync linked {r['rsync']['linked']:,} of {r['rsync']['regular_files']:,} files",
        ]
        if "second_transfer" in r:
            t = r["second_transfer"]
            parts.append(f"second snapshot: reused {t.get('reused', 0):,}, copied {t.get('copied', 0):,} ({t.get('bytes_copied', 0):,} B), statvfs delta {r['space_delta_bytes']:,} B (du: {r['space_du_bytes']:,} B beyond the first)")
        lines.append("- " + "; ".join(parts))
    return "\n".join(lines)


def scaling_table(sizes: list[int], per_size: dict[int, list[dict]]) -> tuple[str, list[list[str]], dict]:
    """µs per message of each mailbak step per size, and whether it is flat."""
    rows, checks, data = [], [], {}
    for step, title in STEPS:
        if step not in MAILBAK_STEPS:
            continue
        meds = [med(per_size[n], step) for n in sizes]
        rows.append([title, *(f"{m / n * 1e6:.2f}" if m is not None else "—" for m, n in zip(meds, sizes, strict=True))])
        if meds[0] is not None and meds[-1] is not None:
            value = (meds[-1] / sizes[-1]) / (meds[0] / sizes[0])
            checks.append([f"{title}: µs/message at {sizes[-1]:,} ÷ at {sizes[0]:,}", f"**{value:.2f}**", f"≤ {TARGET_FLAT}", verdict(value, TARGET_FLAT)])
            data[step] = {"value": value, "target": TARGET_FLAT, "pass": value <= TARGET_FLAT}
    table = markdown_table(["step", *(f"{n:,}" for n in sizes)], rows)
    return table, checks, data


# Main --------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/repo.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", help="messages per store, a comma list (e.g. 100000,1000000)")
    p.add_argument("--accounts", type=int, help="accounts per store (default 50; 4 with --smoke)")
    p.add_argument("--seed", type=int, default=1, help="generator seed, also seeds the churn (default 1)")
    p.add_argument("--rounds", type=int, help="rounds per size (default 3; 1 with --smoke)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write machine info and every raw timing here")
    p.add_argument("--smoke", action="store_true", help=f"{SMOKE_MESSAGES} messages, one round, in temporary directories: checks that everything runs")
    p.add_argument("--churn-child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--churn-block", type=int, default=4096, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.churn_child:
        return args
    sizes_and_counts(p, args, "rounds")
    return args


def run(args: argparse.Namespace, roots: dict[str, Path]) -> None:
    places = Places.of(roots, "disk")
    places.create()
    if os.stat(places.near).st_dev == os.stat(places.far).st_dev:
        raise HarnessError(f"{places.near} and {places.far} are on one file system: the repository must be on another")
    why = ensure_rsync()
    if why:
        raise HarnessError(why)
    mailbak = probe_mailbak()
    caps = probe_engine()
    info = machine_info(places, [sys.executable, *sys.argv], mailbak)
    info["engine_reuse"] = "yes" if caps["reuse"] else "no (second snapshot, space and prune not measured)"
    info["engine_delete_tree"] = "yes" if caps["delete_tree"] else "no (prune not measured)"
    info["churn"] = f"{DELIVER_FRACTION:.1%} of the messages delivered and {EXPUNGE_FRACTION:.1%} expunged per round"
    if info["engine_warning"]:
        log(f"bench: warning: {info['engine_warning']}")
    for what, ok in (("reuse from a reference", caps["reuse"]), ("delete_tree", caps["delete_tree"])):
        if not ok:
            log(f"bench: note: this build's engine has no {what} (issue 11's engine side): the steps needing it are not measured")
    log_path = places.near / "last-command.log"
    print(f"## mailbak repository benchmark\n\n{machine_markdown(info)}\n", flush=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report: dict = {"machine": info, "settings": settings, "engine": caps, "sizes": []}
    per_size: dict[int, list[dict]] = {}
    for n in args.sizes:
        cache_store, facts = ensure_store(places.cache, n, args.accounts, args.seed)
        log(f"bench: [{n:,}] fingerprinting the cached store {cache_store}")
        before = fingerprint(cache_store)
        rounds = []
        for round_no in range(1, args.rounds + 1):
            rounds.append(run_round(n, round_no, cache_store, facts, places, caps, log_path, args.seed))
            diffs = fingerprint_diff(before, fingerprint(cache_store))
            if diffs:
                raise HarnessError(f"the cached store {cache_store} changed during round {round_no}:\n" + "\n".join(diffs[:20]))
        per_size[n] = rounds
        floor = rss_floor_kib()
        rows, target_data = targets(rounds, caps)
        print(f"## {n:,} messages, {args.accounts} accounts (seed {args.seed})\n")
        checked = f"sha256 and mtime of {len(before['files'])} files, {len(before['dirs'])} directories' mtimes, {before['data_files']:,} files under data/"
        print(f"Store: {facts['disk_bytes'] / 1e9:.2f} GB on disk. {args.rounds} round(s). Cached store unchanged after every round ({checked}).")
        print(f"Peak RSS is the largest single process of a step's tree; ≤{floor / 1024:.0f} marks the harness's floor (the step used less).\n")
        print(f"{steps_table(rounds, n, floor)}\n\n{facts_lines(rounds)}\n")
        print(f"### Targets, {n:,} messages\n\n{markdown_table(['target', 'measured (medians)', 'target', ''], rows)}\n", flush=True)
        report["sizes"].append({"messages": n, "store": str(cache_store), "store_facts": facts, "rss_floor_kib": floor, "cache_fingerprint_files": len(before["files"]), "rounds": rounds, "targets": target_data})
        if args.json:
            args.json.write_text(json.dumps(report, indent=1) + "\n")
    if len(args.sizes) > 1:
        table, checks, flat = scaling_table(args.sizes, per_size)
        print(f"## Scaling: µs per message (median)\n\n{table}\n")
        if checks:
            print(f"### Flat time per message\n\n{markdown_table(['step', 'ratio', 'target', ''], checks)}\n", flush=True)
        report["flat"] = flat
    note = code_changed(mailbak, info)
    if note:
        report["warning"] = note
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    log_path.unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.churn_child:
        print(json.dumps(churn(args.churn_child, args.seed, args.churn_block)))
        return 0
    return run_harness(run, args, "mailbak-bench-repo-smoke-")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

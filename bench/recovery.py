"""Benchmark of granular recovery (issue 20, "Speed"): ls, find, export and restore --account,
each side by side with a peer in one run, reported as ratios.

    .venv/bin/python bench/recovery.py [--repeat R] [--seed S] [--only GROUP[,GROUP...]]
        [--json FILE] [--smoke]

The four groups (sizes of a full run; --smoke shrinks them to seconds):

1. ``export``: ``mailbak export BACKUP --account A --format maildir OUT`` of a 100,000-message
   account against ``cp -a BACKUP/data/accounts/A/msg OUT`` (target: at most 1.5 x), and the same
   export ``--format mbox`` (no target: shown beside the same ``cp -a``). OUT is new on the cache's
   file system for all three, removed after each run.
2. ``find``: ``mailbak find REPO --message-id ID`` across a repository of 30 snapshots of a
   200,000-message, 50-account store against ``mailbak find SNAPSHOT --message-id ID`` on its
   newest snapshot (target: at most 2 x). ID is the Message-ID of a message in every snapshot.
3. ``ls``: ``mailbak ls BACKUP A M`` of a 100,000-message mailbox. The targets are absolute: under
   2 s on this machine and a peak RSS of at most 150 MB. ``ls`` has no true peer (no tool lists a
   mailbox of this format); beside it, for scale, runs the floor of its file work:
   ``xargs -0 -a LIST head -q -c 4096 > /dev/null``, opening and reading the first 4 KiB of each
   of the mailbox's files (LIST: their paths, made untimed from the index). The ratio to it is
   shown, not judged.
4. ``restore``: ``mailbak restore BACKUP STORE --account A --mailbox M`` of a 10,000-message
   mailbox into a live store, against the writer library's own delivery of the same messages:
   ``bench/recovery.py --deliver-child`` opens BACKUP with the catalog (the reader restore uses)
   and calls ``Account.deliver`` in a Python loop, with each message's received time, flags and
   keywords, into ``Delivered/M`` of the same kind of store, durable as ``Store.open`` is by
   default (restore's is too). Target: restore takes at most 2 x the writer's time (a rate of at
   least 0.5 x). Each run gets a fresh copy of the target store, made untimed as bench/repo.py
   makes its work store (``cp -al`` of the cached store, every non-message file a real copy, so
   that no write reaches the cache); the child also reports the time of its delivery loop alone.

Stores. ``mailbak gen`` spreads an account over its mailboxes (Inbox, Sent, Archive/YYYY, user
folders, ...), Inbox, the largest, taking about 37.5 % of the messages, and leaves about 95 %
live. So each group has its own one-account store, sized so that what it measures has the
issue's size: 105,000 messages for the export (about 100,000 live in the account), 281,000 for
ls and 28,100 for restore (the account's largest mailbox, the one measured, then holds about
100,000 and 10,000 live messages). The counts actually measured are printed and recorded, with
a warning when one is more than 10 % off (the generator changed). A store written message by
message with the writer library would hit the sizes exactly, but would not be gen's realistic
store (sizes, flags and keywords, RFC 2047 subjects, other mailboxes around the one measured).
Stores are generated once and cached (bench/run.py's ensure_store), each with a backup
(``mailbak backup`` on the same file system: hardlinks) cached beside it, a marker written after
success. A cache made by an older generator is not noticed: remove bench/.cache/ after changing
gen.

The repository of the find group is built once and cached the same way (bench/.cache/repo-...,
marker written last): a work store (bench/repo.py's make_work_store of the cached 200,000-message
store), ``mailbak init``, then 30 times: ``mailbak backup W REPO``, and between snapshots
bench/repo.py's churn (the writer library delivers 0.5 % and expunges 0.5 % of the messages).
The work store is removed afterwards. The repository sits on the cache's file system (a disk: it
is kept across runs), so its snapshots hardlink the cached store's message files; nothing writes
message files in place, and the cached stores are fingerprinted (bench/repo.py) before and after.
The Message-ID searched for is that of a message of the middle account (by name) whose file is
in the oldest and in the newest snapshot, chosen with the seed.

Measuring is bench/run.py's (imported): contenders alternate within a round (A B A B), one
untimed warm-up round (warm page cache: nothing is dropped), then R timed rounds; wall time around
the subprocess, peak RSS from os.wait4; the file systems synced before each run; every run must
exit 0 and is checked to have done its work (files counted, output looked at). The machine
(cores, load at start and end, kernel, dentry hash entries, file systems), the commit and a
digest of the code run head the report. Markdown goes to stdout, progress to stderr; --json FILE
also keeps every raw timing.
"""

from __future__ import annotations

import argparse
import email.parser
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from repo import count_data_files, fingerprint, fingerprint_diff, make_work_store, run_churn  # noqa: E402  (bench/ is not a package)
from run import (  # noqa: E402
    Contender,
    Group,
    HarnessError,
    Places,
    Result,
    check_space,
    code_changed,
    ensure_store,
    log,
    machine_info,
    machine_markdown,
    mailbak_cli,
    markdown_table,
    probe_mailbak,
    remove_tree,
    rss_floor_kib,
    run_group,
    run_harness,
    run_once,
)
from run import group_table as run_group_table  # noqa: E402

GROUPS = ("export", "find", "ls", "restore")

#: The issue's targets.
TARGET_EXPORT = 1.5  # export --format maildir / cp -a of msg/
TARGET_FIND = 2.0  # find across the repository / find in one snapshot
TARGET_LS_SECONDS = 2.0
TARGET_LS_RSS_BYTES = 150_000_000
TARGET_RESTORE = 2.0  # restore / the writer's delivery loop (a rate of at least 0.5 x)

#: Bytes of each file's head the ls peer reads.
HEAD_BYTES = 4096


@dataclass(frozen=True)
class Sizes:
    """What each group measures (messages generated per store; see the module doc)."""

    export_messages: int
    find_messages: int
    find_accounts: int
    find_snapshots: int
    ls_messages: int
    restore_messages: int
    #: Live messages the measured account (export) or mailbox (ls, restore) should hold; a
    #: count more than 10 % off is warned of.
    export_want: int
    ls_want: int
    restore_want: int


FULL = Sizes(105_000, 200_000, 50, 30, 281_000, 28_100, 100_000, 100_000, 10_000)
SMOKE = Sizes(1_000, 2_000, 3, 3, 1_000, 200, 950, 380, 90)


def log_tail(path: Path, size: int = 3000) -> str:
    """The end of a command's output (read from there: a listing can be tens of megabytes)."""
    with open(path, "rb") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - size))
        return f.read().decode(errors="replace")


def count_lines(path: Path) -> int:
    """Lines of a command's output, counted in pieces: reading a 100,000-line listing whole
    raised the harness's peak RSS, every later contender's floor, to 94 MiB."""
    lines = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            lines += chunk.count(b"\n")
    return lines


# Children (mailbak imported there only: the harness's own peak RSS is every contender's floor) --


def facts_child(backup: Path, list_account: str | None, list_mailbox: str | None, list_file: Path | None) -> dict:
    """What a backup holds, per account and mailbox (live messages, bytes), read with the
    catalog; with ``list_file``, also writes the absolute paths of one mailbox's message files
    there, NUL-separated (the ls peer's input)."""
    from mailbak.catalog import Source

    out: dict = {}
    with Source.open(backup) as src:
        for name in src.accounts():
            with src.account(name) as view:
                per: dict[int, list[int]] = {mb: [0, 0] for mb in view.mailboxes}
                for m in view.messages:
                    per[m.mailbox_id][0] += 1
                    per[m.mailbox_id][1] += m.size
                mailboxes = {view.mailboxes[i].name: {"messages": c, "bytes": b} for i, (c, b) in per.items()}
                out[name] = {"messages": len(view.messages), "bytes": sum(m.size for m in view.messages), "mailboxes": mailboxes, "rel": view.rel}
                if list_file is not None and name == list_account:
                    mb = view.mailbox(list_mailbox)
                    data = os.fsencode(backup / "data")
                    paths = [data + b"/" + os.fsencode(view.message_rel(m.id)) for m in view.messages if m.mailbox_id == mb.id]
                    list_file.write_bytes(b"\0".join(paths) + b"\0")
    return out


def deliver_child(backup: Path, store: Path, account: str, mailbox: str) -> dict:
    """The writer library's delivery of one mailbox of ``backup`` into ``store`` (the restore
    group's peer): read with the catalog, delivered with ``Account.deliver`` one by one into
    ``Delivered/MAILBOX``, the store opened as ``Store.open`` opens it by default (durable)."""
    from mailbak.catalog import Selection, Source
    from mailbak.store import Store

    with Source.open(backup) as src, src.account(account) as view, Store.open(store) as target:
        messages = view.select(Selection(mailboxes=(mailbox,)))
        acc = target.account(account)
        mailbox_id = acc.ensure_mailbox(f"Delivered/{mailbox}")
        t0 = time.perf_counter()
        for m in messages:
            acc.deliver(mailbox_id, view.read_message(m.id, m.size), received=m.received, flags=m.flags, keywords=m.keywords)
        loop = time.perf_counter() - t0
    return {"delivered": len(messages), "loop_seconds": loop}


def child_json(argv: list[str], what: str) -> dict:
    done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise HarnessError(f"{what} failed (status {done.returncode}): {shlex.join(argv)}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def backup_facts(backup: Path, listing: tuple[str, str, Path] | None = None) -> dict:
    argv = [sys.executable, str(Path(__file__).resolve()), "--facts-child", str(backup)]
    if listing:
        argv += ["--list", listing[0], listing[1], str(listing[2])]
    return child_json(argv, f"reading {backup}")


# Cached stores, backups and the repository -----------------------------------------------------


def ensure_backup(cache: Path, store: Path, log_path: Path) -> Path:
    """A backup of a cached store, made once beside it (same file system: hardlinks) and cached
    with a marker written after success."""
    entry = cache / f"backup-of-{store.parent.name}"
    marker = entry / "complete.json"
    if marker.exists():
        return entry / "backup"
    remove_tree(entry)
    entry.mkdir(parents=True)
    log(f"bench: backing up {store} into {entry / 'backup'} (cached)")
    t0 = time.perf_counter()
    run_once(mailbak_cli("backup", "--quiet", str(store), str(entry / "backup")), discard_stdout=False, log_path=log_path)
    marker.write_text(json.dumps({"store": str(store), "seconds": round(time.perf_counter() - t0, 2)}) + "\n")
    return entry / "backup"


def snapshot_names(repo: Path) -> list[str]:
    return sorted(p.name for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))


def message_id_of(path: Path) -> str:
    """The Message-ID of a message file (its head only)."""
    with open(path, "rb") as f:
        head = f.read(64 * 1024)
    value = email.parser.BytesHeaderParser().parsebytes(head.split(b"\r\n\r\n")[0].split(b"\n\n")[0] + b"\r\n\r\n")["Message-ID"]
    if not value:
        raise HarnessError(f"{path}: no Message-ID")
    return str(value).strip()


def pick_message(repo: Path, snapshots: list[str], seed: int) -> dict:
    """A message in every snapshot: its file is in the oldest and in the newest (IDs are never
    reused and an expunge is for good, so it is live in every snapshot between)."""
    first, last = repo / snapshots[0], repo / snapshots[-1]
    rng = random.Random(seed)
    accounts = sorted(p.name for p in (first / "data" / "accounts").iterdir())
    account = accounts[len(accounts) // 2]
    rels = []
    msg = first / "data" / "accounts" / account / "msg"
    for top, _, files in os.walk(msg):
        for name in files:
            rel = os.path.relpath(os.path.join(top, name), msg)
            if (last / "data" / "accounts" / account / "msg" / rel).is_file():
                rels.append(rel)
    if not rels:
        raise HarnessError(f"{repo}: no message of account {account} is in both {snapshots[0]} and {snapshots[-1]}")
    rel = rng.choice(sorted(rels))
    return {"account": account, "file": rel, "message_id": message_id_of(msg / rel)}


def ensure_repo(cache: Path, store: Path, sizes: Sizes, seed: int, log_path: Path) -> tuple[Path, dict]:
    """The find group's repository (module doc), built once and cached."""
    entry = cache / f"repo-{sizes.find_messages}m-{sizes.find_accounts}a-seed{seed}-{sizes.find_snapshots}s"
    marker = entry / "complete.json"
    if marker.exists():
        return entry / "repo", json.loads(marker.read_text())
    if entry.exists():
        log(f"bench: {entry} has no completion marker (interrupted build?); rebuilding")
        remove_tree(entry)
    entry.mkdir(parents=True)
    check_space(entry, sizes.find_messages // 10, "the repository's databases and churn")
    work, repo = entry / "work", entry / "repo"
    log(f"bench: building a repository of {sizes.find_snapshots} snapshots of {store} in {repo} (cached)")
    t0 = time.perf_counter()
    make_work_store(store, work)
    run_once(mailbak_cli("init", "--quiet", str(repo)), discard_stdout=False, log_path=log_path)
    churned = {"delivered": 0, "expunged": 0, "delivered_bytes": 0}
    for i in range(1, sizes.find_snapshots + 1):
        if i > 1:
            c = run_churn(work, seed * 1000 + i, 4096, log_path)
            for k in churned:
                churned[k] += c[k]
        run_once(mailbak_cli("backup", "--quiet", str(work), str(repo)), discard_stdout=False, log_path=log_path)
        log(f"  snapshot {i}/{sizes.find_snapshots} ({time.perf_counter() - t0:.0f} s)")
    remove_tree(work)
    names = snapshot_names(repo)
    if len(names) != sizes.find_snapshots:
        raise HarnessError(f"{repo}: {len(names)} snapshots, expected {sizes.find_snapshots}")
    du = subprocess.run(["du", "-s", "--block-size=1", str(repo)], capture_output=True, text=True, check=True)
    facts = {
        "store": str(store),
        "snapshots": names,
        "churn_total": churned,
        "build_seconds": round(time.perf_counter() - t0, 1),
        "disk_bytes": int(du.stdout.split()[0]),
        "message": pick_message(repo, names, seed),
    }
    marker.write_text(json.dumps(facts) + "\n")
    return repo, facts


# The groups --------------------------------------------------------------------------------------


@dataclass
class Measured:
    """One group's results and what they measured."""

    group: Group
    results: list[Result]
    #: Messages the µs/message column divides by.
    messages: int
    facts: dict


def largest_mailbox(facts: dict, account: str) -> tuple[str, int]:
    mailboxes = facts[account]["mailboxes"]
    name = max(mailboxes, key=lambda n: (mailboxes[n]["messages"], n))
    return name, mailboxes[name]["messages"]


def warn_size(what: str, got: int, want: int) -> None:
    if abs(got - want) > 0.1 * want:
        log(f"bench: warning: {what} holds {got:,} live messages, not about {want:,} (the generator changed?)")


def count_files(root: Path, *find_args: str) -> int:
    out = subprocess.run(["find", str(root), *find_args, "-type", "f", "-printf", "x"], capture_output=True, check=True).stdout
    return len(out)


def export_group(places: Places, sizes: Sizes, seed: int, repeat: int, log_path: Path) -> Measured:
    store, store_facts = ensure_store(places.cache, sizes.export_messages, 1, seed)
    backup = ensure_backup(places.cache, store, log_path)
    facts = backup_facts(backup)
    (account,) = facts
    n, size = facts[account]["messages"], facts[account]["bytes"]
    warn_size(f"account {account}", n, sizes.export_want)
    msg = backup / "data" / facts[account]["rel"] / "msg"
    out = places.near / "export-out"

    def check(contender: Contender, _log: Path) -> None:
        if contender.name == "cp -a":
            got = count_files(out)
        elif "mbox" in contender.name:
            got = sum(p.stat().st_size for p in out.rglob("*.mbox"))
            if got < size:
                raise HarnessError(f"{contender.name}: the mbox files hold {got:,} bytes, less than the account's {size:,}")
            return
        else:
            got = count_files(out, "-regex", r".*/\(cur\|new\)/[^/]*")
        if got != n:
            raise HarnessError(f"{contender.name}: {got:,} message files in {out}, expected {n:,}")

    contenders = [
        Contender("mailbak export --format maildir", lambda s, t: mailbak_cli("export", str(backup), "--account", account, "--format", "maildir", str(t))),
        Contender("cp -a", lambda s, t: ["cp", "-a", str(msg), str(t)]),
        Contender("mailbak export --format mbox", lambda s, t: mailbak_cli("export", str(backup), "--account", account, "--format", "mbox", str(t))),
    ]
    group = Group("export", f"export a {n:,}-message account", contenders, out, reference="cp -a", check=check)
    check_space(places.near, sizes.export_messages, "an export of the account")
    results = run_group(group, store, repeat, f"[export {n:,}]", log_path)
    return Measured(group, results, n, {"store": str(store), "store_facts": store_facts, "backup": str(backup), "account": account, "messages": n, "bytes": size})


def find_group(places: Places, sizes: Sizes, seed: int, repeat: int, log_path: Path) -> Measured:
    store, store_facts = ensure_store(places.cache, sizes.find_messages, sizes.find_accounts, seed)
    before = fingerprint(store)
    repo, repo_facts = ensure_repo(places.cache, store, sizes, seed, log_path)
    diffs = fingerprint_diff(before, fingerprint(store))
    if diffs:
        raise HarnessError(f"the cached store {store} changed while the repository was built:\n" + "\n".join(diffs[:20]))
    newest = repo / repo_facts["snapshots"][-1]
    message_id = repo_facts["message"]["message_id"]

    account, snapshots = repo_facts["message"]["account"], len(repo_facts["snapshots"])

    def check(contender: Contender, path: Path) -> None:
        text = path.read_text(errors="replace")
        if message_id not in text:
            raise HarnessError(f"{contender.name}: {message_id} is not in its output:\n{text[-2000:]}")

    contenders = [
        Contender(f"mailbak find REPO ({snapshots} snapshots)", lambda s, t: mailbak_cli("find", str(repo), "--message-id", message_id)),
        Contender("mailbak find SNAPSHOT (the newest)", lambda s, t: mailbak_cli("find", str(newest), "--message-id", message_id)),
    ]
    # Once, untimed, with --json: each finds the message, in every snapshot it searched.
    for contender, want in zip(contenders, (snapshots, 1), strict=True):
        argv = [*contender.argv(store, repo), "--json"]
        run_once(argv, discard_stdout=False, log_path=log_path)
        events = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
        counts = [e.get("count") for e in events if e.get("message_type") == "match" and e.get("message_id") == message_id and e.get("account") == account]
        if counts != [want]:
            raise HarnessError(f"{shlex.join(argv)}: expected one match of {message_id} in account {account} seen in {want} snapshot(s), got counts {counts}:\n{log_tail(log_path)}")
    group = Group("find", f"find a Message-ID across {len(repo_facts['snapshots'])} snapshots", contenders, repo, makes_target=False, reference=contenders[1].name, check=check)
    results = run_group(group, store, repeat, f"[find {sizes.find_messages:,}]", log_path)
    return Measured(group, results, sizes.find_messages, {"store": str(store), "store_facts": store_facts, "repo": str(repo), "repo_facts": repo_facts, "message_id": message_id})


def ls_group(places: Places, sizes: Sizes, seed: int, repeat: int, log_path: Path) -> Measured:
    store, store_facts = ensure_store(places.cache, sizes.ls_messages, 1, seed)
    backup = ensure_backup(places.cache, store, log_path)
    facts = backup_facts(backup)
    (account,) = facts
    mailbox, n = largest_mailbox(facts, account)
    warn_size(f"mailbox {mailbox}", n, sizes.ls_want)
    listing = places.near / "ls-files"
    backup_facts(backup, (account, mailbox, listing))

    argv = mailbak_cli("ls", str(backup), account, mailbox)
    # Timed runs discard the listing; one untimed run to a file shows it lists every message.
    run_once(argv, discard_stdout=False, log_path=log_path)
    lines = count_lines(log_path)
    if lines < n:
        raise HarnessError(f"{shlex.join(argv)}: {lines:,} lines of output for a {n:,}-message mailbox:\n{log_tail(log_path)}")
    contenders = [
        Contender("mailbak ls BACKUP A M", lambda s, t: argv, discard_stdout=True),
        Contender(f"xargs head -c {HEAD_BYTES} (the same files)", lambda s, t: ["xargs", "-0", "-a", str(listing), "head", "-q", "-c", str(HEAD_BYTES)], discard_stdout=True),
    ]
    group = Group("ls", f"list a {n:,}-message mailbox", contenders, backup, makes_target=False, reference=contenders[0].name)
    try:
        results = run_group(group, store, repeat, f"[ls {n:,}]", log_path)
    finally:
        listing.unlink(missing_ok=True)
    return Measured(group, results, n, {"store": str(store), "store_facts": store_facts, "backup": str(backup), "account": account, "mailbox": mailbox, "messages": n})


def restore_group(places: Places, sizes: Sizes, seed: int, repeat: int, log_path: Path) -> Measured:
    store, store_facts = ensure_store(places.cache, sizes.restore_messages, 1, seed)
    backup = ensure_backup(places.cache, store, log_path)
    facts = backup_facts(backup)
    (account,) = facts
    mailbox, n = largest_mailbox(facts, account)
    warn_size(f"mailbox {mailbox}", n, sizes.restore_want)
    before = fingerprint(store)
    base_files = count_data_files(store)
    target = places.near / "restore-target"
    loops: list[float] = []

    def prepare() -> None:
        remove_tree(target)
        make_work_store(store, target)

    def check(contender: Contender, path: Path) -> None:
        got = count_data_files(target) - base_files
        if got != n:
            raise HarnessError(f"{contender.name}: {got:,} files more in {target}, expected {n:,}:\n{log_tail(path)}")
        if contender.name.startswith("writer"):
            report = json.loads([line for line in path.read_text().splitlines() if line.startswith("{")][-1])
            loops.append(report["loop_seconds"])

    here = str(Path(__file__).resolve())
    contenders = [
        Contender("mailbak restore --account A --mailbox M", lambda s, t: mailbak_cli("restore", str(backup), str(t), "--account", account, "--mailbox", mailbox)),
        Contender("writer library: Account.deliver loop", lambda s, t: [sys.executable, here, "--deliver-child", str(backup), str(t), account, mailbox]),
    ]
    group = Group("restore", f"restore a {n:,}-message mailbox into a live store", contenders, target, reference=contenders[1].name, prepare=prepare, check=check)
    check_space(places.near, sizes.restore_messages, "a copy of the target store")
    results = run_group(group, store, repeat, f"[restore {n:,}]", log_path)
    diffs = fingerprint_diff(before, fingerprint(store))
    if diffs:
        raise HarnessError(f"the cached store {store} changed during the restore group:\n" + "\n".join(diffs[:20]))
    # The warm-up run's loop time is dropped, as its wall time is.
    return Measured(group, results, n, {"store": str(store), "store_facts": store_facts, "backup": str(backup), "account": account, "mailbox": mailbox, "messages": n, "writer_loop_seconds": loops[1:]})


BUILDERS: dict[str, Callable[[Places, Sizes, int, int, Path], Measured]] = {"export": export_group, "find": find_group, "ls": ls_group, "restore": restore_group}


# Reporting ----------------------------------------------------------------------------------------


def median_of(m: Measured, name: str) -> float:
    return next(r for r in m.results if r.name == name).median


def peak_of(m: Measured, name: str) -> int:
    """Peak RSS in bytes over the timed runs."""
    return max(s.rss_kib for s in next(r for r in m.results if r.name == name).samples) * 1024


def verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def targets(measured: dict[str, Measured]) -> tuple[list[list[str]], dict]:
    """Rows of the targets table, and the same as data for --json."""
    rows, data = [], {}

    def ratio(key: str, m: Measured, a: str, b: str, target: float | None, what: str) -> None:
        ma, mb = median_of(m, a), median_of(m, b)
        value = ma / mb
        ok = target is None or value <= target
        rows.append([what, f"{ma:.3f} s / {mb:.3f} s = **{value:.2f}**", f"≤ {target}" if target else "(none)", verdict(ok) if target else "—"])
        data[key] = {"value": value, "seconds": [ma, mb], "target": target, "pass": ok if target else None}

    if "export" in measured:
        m = measured["export"]
        ratio("export_maildir_vs_cp", m, "mailbak export --format maildir", "cp -a", TARGET_EXPORT, f"export --format maildir ÷ `cp -a` of msg/ ({m.messages:,} messages)")
        ratio("export_mbox_vs_cp", m, "mailbak export --format mbox", "cp -a", None, "export --format mbox ÷ `cp -a` of msg/")
    if "find" in measured:
        m = measured["find"]
        a, b = (c.name for c in m.group.contenders)
        ratio("find_repo_vs_snapshot", m, a, b, TARGET_FIND, f"find across {len(m.facts['repo_facts']['snapshots'])} snapshots ÷ in one ({m.messages:,} messages each)")
    if "ls" in measured:
        m = measured["ls"]
        a, b = (c.name for c in m.group.contenders)
        t, rss = median_of(m, a), peak_of(m, a)
        rows.append([f"ls of a {m.messages:,}-message mailbox: time", f"**{t:.3f} s**", f"< {TARGET_LS_SECONDS} s", verdict(t < TARGET_LS_SECONDS)])
        rows.append(["ls: peak RSS", f"**{rss / 1e6:.0f} MB**", f"≤ {TARGET_LS_RSS_BYTES / 1e6:.0f} MB", verdict(rss <= TARGET_LS_RSS_BYTES)])
        data["ls_seconds"] = {"value": t, "target": TARGET_LS_SECONDS, "pass": t < TARGET_LS_SECONDS}
        data["ls_rss_bytes"] = {"value": rss, "target": TARGET_LS_RSS_BYTES, "pass": rss <= TARGET_LS_RSS_BYTES}
        ratio("ls_vs_head", m, a, b, None, f"ls ÷ `xargs head -c {HEAD_BYTES}` of the mailbox's files")
    if "restore" in measured:
        m = measured["restore"]
        a, b = (c.name for c in m.group.contenders)
        ratio("restore_vs_writer", m, a, b, TARGET_RESTORE, f"restore ÷ the writer's delivery ({m.messages:,} messages; rate ≥ 0.5 x)")
        loops = m.facts["writer_loop_seconds"]
        if loops:
            loop = statistics.median(loops)
            ra = median_of(m, a)
            rows.append(["restore ÷ the writer's delivery loop alone (no start-up, no reading of the index)", f"{ra:.3f} s / {loop:.3f} s = **{ra / loop:.2f}**", "(none)", "—"])
            data["restore_vs_writer_loop"] = {"value": ra / loop, "seconds": [ra, loop], "target": None, "pass": None}
    return rows, data


# Main ----------------------------------------------------------------------------------------------


def probe_commands() -> dict[str, bool]:
    """Which of the four verbs this build has (asked of a child, as probe_mailbak does), so that
    a build without one stops the run at once, not after the groups before it."""
    out = {}
    for group, argv, needle in (("export", ["export", "--help"], "--format"), ("find", ["find", "--help"], "--message-id"), ("ls", ["ls", "--help"], "ls"), ("restore", ["restore", "--help"], "--account")):
        done = subprocess.run(mailbak_cli(*argv), capture_output=True, text=True, stdin=subprocess.DEVNULL)
        out[group] = done.returncode == 0 and needle in done.stdout
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/recovery.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=1, help="generator seed, also seeds the churn and the message chosen (default 1)")
    p.add_argument("--repeat", type=int, help="timed rounds after the warm-up round (default 3; 1 with --smoke)")
    p.add_argument("--only", help=f"a comma list of groups to run, of {', '.join(GROUPS)} (default: all)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write machine info and every raw timing here")
    p.add_argument("--smoke", action="store_true", help="small sizes, one round, in temporary directories: checks that everything runs")
    p.add_argument("--facts-child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--list", nargs=3, metavar=("ACCOUNT", "MAILBOX", "FILE"), help=argparse.SUPPRESS)
    p.add_argument("--deliver-child", nargs=4, metavar=("BACKUP", "STORE", "ACCOUNT", "MAILBOX"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.facts_child or args.deliver_child:
        return args
    args.groups = GROUPS if not args.only else tuple(g.strip() for g in args.only.split(","))
    unknown = [g for g in args.groups if g not in GROUPS]
    if unknown:
        p.error(f"--only: unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    args.repeat = args.repeat or (1 if args.smoke else 3)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    return args


def run(args: argparse.Namespace, roots: dict[str, Path]) -> None:
    cache = roots["disk"]
    # Every output is on the cache's file system; no group crosses devices.
    places = Places(cache=cache, near=cache / "work", far=cache / "work")
    places.near.mkdir(parents=True, exist_ok=True)
    sizes = SMOKE if args.smoke else FULL
    mailbak = probe_mailbak()
    info = machine_info(places, [sys.executable, *sys.argv], mailbak)
    del info["fs_cross_device_dest"]
    if info["engine_warning"]:
        log(f"bench: warning: {info['engine_warning']}")
    have = probe_commands()
    missing = [g for g in args.groups if not have[g]]
    if missing:
        raise HarnessError(f"this build has no {', '.join(f'`mailbak {g}`' for g in missing)} of issue 20 (python -m mailbak ... --help)")
    log_path = places.near / "last-command.log"
    print(f"## mailbak recovery benchmark (issue 20)\n\n{machine_markdown(info)}\n", flush=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report: dict = {"machine": info, "settings": settings, "sizes": vars(sizes), "groups": {}}
    measured: dict[str, Measured] = {}
    for name in args.groups:
        m = measured[name] = BUILDERS[name](places, sizes, args.seed, args.repeat, log_path)
        floor = rss_floor_kib()
        print(f"### {name}: {m.group.title}\n\n{run_group_table(m.group, m.results, m.messages, floor)}\n", flush=True)
        report["groups"][name] = {"facts": m.facts, "messages": m.messages, "rss_floor_kib": floor, "results": [r.to_json() for r in m.results]}
        if args.json:
            # Written after every group, so that a long run aborted later keeps what it measured.
            args.json.write_text(json.dumps(report, indent=1) + "\n")
    rows, data = targets(measured)
    floor = rss_floor_kib()
    report["targets"] = data
    info["load_average_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"Each group: {args.repeat} timed round(s) after a warm-up round, contenders alternating. Load average at the end: {info['load_average_at_end']}.")
    print(f"Peak RSS is the largest single process of a contender's tree; ≤{floor / 1024:.0f} marks the harness's floor (the contender used less).\n")
    if rows:
        print(f"### Targets\n\n{markdown_table(['measure', 'measured (medians)', 'target', ''], rows)}\n", flush=True)
    note = code_changed(mailbak, info)
    if note:
        report["warning"] = note
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    log_path.unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.facts_child:
        listing = (args.list[0], args.list[1], Path(args.list[2])) if args.list else (None, None, None)
        print(json.dumps(facts_child(args.facts_child, *listing)))
        return 0
    if args.deliver_child:
        backup, store, account, mailbox = args.deliver_child
        print(json.dumps(deliver_child(Path(backup), Path(store), account, mailbox)))
        return 0
    return run_harness(run, args, "mailbak-bench-recovery-smoke-")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

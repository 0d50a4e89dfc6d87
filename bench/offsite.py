"""Benchmark of off-site pushes: the second push after a day's churn against the first.

    .venv/bin/python bench/offsite.py [--messages N] [--accounts K] [--churn C] [--seed S]
        [--dir DIR] [--json FILE] [--max-ratio R]

Method: a store of N messages is generated (``mailbak gen``), a repository made with one
snapshot of it (``mailbak backup STORE REPO/<name>``), and a local restic repository initialised
beside it. The first push (everything is read and stored) is timed; then C x N new messages are
delivered and as many expunged, spread over the accounts through the writer library, a second
snapshot is taken, and its push (against the first: ``--parent``, ``--ignore-ctime``) is timed.
Times are the wall time of ``mailbak offsite push`` as a subprocess, restic included, warm page
cache. The issue's bar (docs/OFFSITE.md): at 200,000 messages and 1 % churn, the second push
takes at most 0.1 x the first; exit status 1 when the ratio is above --max-ratio.

Markdown to stdout (with restic's version), progress to stderr, raw numbers with --json FILE.
Everything is made in a temporary directory under --dir (default: bench/.cache) and removed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        log(f"failed ({p.returncode}): {' '.join(argv)}\n{p.stdout[-4000:]}{p.stderr[-4000:]}")
        sys.exit(1)
    return p


def mailbak(*args: str | os.PathLike, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "mailbak", *map(str, args)], env)


def churn(store: Path, n: int, seed: int) -> tuple[int, int]:
    """Delivers ``n`` new messages and expunges ``n`` live ones, spread over the accounts."""
    from mailbak.store import Store

    rng = random.Random(seed)
    delivered = expunged = 0
    with Store.open(store, durable=False) as s:
        names = list(s.account_names())
        for i in range(n):
            acc = s.account(names[i % len(names)])
            inbox = next(iter(acc.mailboxes()))
            acc.deliver(inbox, b"Subject: churn %d\r\n\r\n" % i + rng.randbytes(rng.randrange(500, 8000)))
            delivered += 1
        for name in names:
            acc = s.account(name)
            share = n // len(names) + (1 if names.index(name) < n % len(names) else 0)
            ids = sorted(acc.messages())
            victims = rng.sample(ids, min(share, len(ids)))
            if victims:
                acc.expunge(victims)
                expunged += len(victims)
    return delivered, expunged


def timed_push(repo: Path, name: str, env: dict[str, str]) -> tuple[float, dict]:
    t0 = time.perf_counter()
    p = mailbak("offsite", "push", "--json", repo, name, env=env)
    seconds = time.perf_counter() - t0
    summary = next(json.loads(line) for line in p.stdout.splitlines() if '"summary"' in line)
    return seconds, summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--accounts", type=int, default=50)
    ap.add_argument("--churn", type=float, default=0.01, help="share of messages delivered, and as many expunged (default 0.01)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dir", type=Path, default=BENCH_DIR / ".cache")
    ap.add_argument("--json", type=Path, help="write the raw numbers here")
    ap.add_argument("--max-ratio", type=float, default=0.1, help="exit 1 when second/first is above this (default 0.1)")
    args = ap.parse_args(argv)

    restic = shutil.which("restic")
    if restic is None:
        log("restic not found on PATH: apt-get install restic (make setup installs it)")
        return 2
    version = run([restic, "version"]).stdout.strip()
    args.dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="offsite-bench-", dir=args.dir) as tmp:
        root = Path(tmp)
        store, repo = root / "store", root / "repo"
        (root / "password").write_text("offsite-bench\n")
        env = {**os.environ, "RESTIC_REPOSITORY": str(root / "restic"), "RESTIC_PASSWORD_FILE": str(root / "password"), "RESTIC_CACHE_DIR": str(root / "cache")}
        log(f"generating {args.messages} messages in {args.accounts} accounts")
        mailbak("gen", "-q", store, "--messages", args.messages, "--accounts", args.accounts, "--seed", args.seed)
        from mailbak import repository

        repository.init(repo)
        first_name, second_name = "2026-11-25T020000Z", "2026-11-26T020000Z"
        mailbak("backup", "-q", store, repo / first_name)
        run([restic, "init"], env)
        log("first push")
        t1, s1 = timed_push(repo, first_name, env)
        n = max(1, round(args.messages * args.churn))
        log(f"churn: {n} deliveries, {n} expunges")
        delivered, expunged = churn(store, n, args.seed)
        time.sleep(1.1 - time.time() % 1)  # restic's times are to the second
        mailbak("backup", "-q", store, repo / second_name)
        log("second push")
        t2, s2 = timed_push(repo, second_name, env)
    ratio = t2 / t1
    result = {
        "messages": args.messages,
        "accounts": args.accounts,
        "churn": args.churn,
        "delivered": delivered,
        "expunged": expunged,
        "restic": version,
        "first_seconds": round(t1, 3),
        "second_seconds": round(t2, 3),
        "ratio": round(ratio, 4),
        "max_ratio": args.max_ratio,
        "first": s1,
        "second": s2,
    }
    print(f"### offsite push: {args.messages:,} messages, {args.accounts} accounts, churn {args.churn:.1%} ({delivered} delivered, {expunged} expunged)\n")
    print(f"{version}\n")
    print("| push | seconds | files new | changed | unmodified | bytes added |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, t, s in (("first", t1, s1), ("second", t2, s2)):
        print(f"| {label} | {t:.2f} | {s['files_new']} | {s['files_changed']} | {s['files_unmodified']} | {s['bytes_added']:,} |")
    print(f"\nsecond / first = {ratio:.3f} (bar: at most {args.max_ratio})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if ratio <= args.max_ratio else 1


if __name__ == "__main__":
    sys.exit(main())

"""``mailbak gen`` with a progress bar, and ``mailbak demo``: generate a sample store, then run
the real commands on it (backup, verify, restore) exactly as an operator would type them."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

from mailbak.gen import GenSummary, generate
from mailbak.report import make_reporter
from mailbak.runner import Runner
from mailbak.status import Status


def generate_with_report(root: Path, *, messages: int, accounts: int, seed: int, median_size: int, jobs: int, quiet: bool = False) -> GenSummary:
    """Runs the generator with a live progress bar and prints what it made."""
    reporter = make_reporter(json_output=False, quiet=quiet, verbose=False)
    runner = Runner(reporter)
    runner.new_phase("generating")  # generate() adds the expected total itself
    started = time.monotonic()
    try:
        s: GenSummary = runner.call(generate, root, messages=messages, accounts=accounts, seed=seed, median_size=median_size, jobs=jobs)
    except BaseException:
        reporter.close()
        raise
    took = time.monotonic() - started
    rows = [
        ("", "count"),
        ("accounts", str(len(s.accounts))),
        ("messages (records)", str(s.messages)),
        ("  live", str(s.live)),
        ("  expunged", str(s.expunged)),
        ("  pending erase", str(s.pending_erase)),
        ("queued", str(s.queued)),
        ("bytes of message files", f"{s.bytes:,}"),
        ("seconds", f"{took:.1f}"),
    ]
    reporter.summary(f"generated {root}", {"status": Status.OK}, rows)
    return s


def _run(argv: list[str]) -> int:
    print(f"\n$ {shlex.join(['mailbak', *argv])}", flush=True)
    return subprocess.call([sys.executable, "-m", "mailbak", *argv])


def run_demo(workdir: Path, *, messages: int, accounts: int, jobs: int, keep: bool) -> int:
    """Generate, back up, verify, restore. Returns 0 when every step did what it should."""
    store, backup, restored = workdir / "store", workdir / "backup", workdir / "restored"
    print(f"$ {shlex.join(['mailbak', 'gen', str(store), '--messages', str(messages), '--accounts', str(accounts)])}", flush=True)
    generate_with_report(store, messages=messages, accounts=accounts, seed=1, median_size=4096, jobs=jobs)
    # A few odd files, as real stores collect them, so the backup has something to report.
    (store / "data" / "accounts" / "user0000" / "msg" / "a" / "notes.txt").write_text("left here by hand\n")
    (store / "data" / "core.12345").write_bytes(b"\0" * 64)
    steps = [
        (["backup", str(store), str(backup)], 0),
        (["verify", str(backup)], 0),
        (["restore", str(backup), str(restored)], 0),
    ]
    for argv, want in steps:
        if _run(argv) != want:
            print(f"demo: `mailbak {argv[0]}` did not exit {want}", file=sys.stderr)
            return 1
    if keep:
        print(f"\ndemo: done. Store, backup and restored store are in {workdir}")
    else:
        print("\ndemo: done. (They were in a temporary directory, now removed: `mailbak demo DIR` keeps them.)")
    return 0

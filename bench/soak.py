"""Soak: many backups of a store under a live writer, and SIGKILLs at random points.

    python bench/soak.py [--runs 20] [--kills 30] [--messages 20000] [--accounts 8] [--report FILE]

For each run: a writer process (tests/live_writer.py: deliver, expunge and erase, enqueue,
dequeue, as fast as it can, following the lease protocol) runs while `mailbak backup` runs; then
the same checks as tests/test_live.py: exit 0 and verify clean (or exit 1 with the cause named),
each account's backup exactly a committed state of the writer that includes everything committed
before the backup began, and every file the writer did not touch unchanged in the store. It
also records the writer's worst operation latency while the backup ran, against its worst latency
over a same-length window with no backup.

Then SIGKILL at random points of a backup: what is left must verify as incomplete (its manifest
still says running, or there is none yet; or, when the kill came after the final manifest, clean), and a fresh backup afterwards must succeed.

Prints a Markdown report (and writes it to --report). Exit status 0 when every run kept every
promise.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import make_store, run_cli  # noqa: E402
from live_writer import read_log  # noqa: E402
from test_live import check_live_run, live_sets, start_writer, stop_writer, untouched  # noqa: E402


def manifest_status(dest: Path) -> str | None:
    """The status a backup's manifest says (None without one): a killed backup leaves
    ``running``, only a finished one ``ok`` or ``failed``."""
    try:
        return json.loads((dest / "mailbak.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def worst_in(ops: list[dict], t0: float, t1: float) -> tuple[float, int]:
    """Worst latency and count of the writer's operations that overlapped [t0, t1]."""
    inside = [op for op in ops if op["end"] >= t0 and op["start"] <= t1]
    return max((op["end"] - op["start"] for op in inside), default=0.0), len(inside)


def live_runs(work: Path, store: Path, runs: int) -> tuple[list[str], bool]:
    rows = ["| run | exit | verify | backup s | writer ops during backup | worst writer latency during backup (ms) | worst latency, same window without backup (ms) |", "|---|---|---|---|---|---|---|"]
    ok = True
    for i in range(runs):
        initial, before = live_sets(store), untouched(store)
        log = work / f"writer{i}.log"
        dest = work / f"b{i}"
        w = start_writer(store, log, "--seed", str(i))
        try:
            started = time.time()
            result = run_cli("backup", store, dest, timeout=1800)
            finished = time.time()
            time.sleep(finished - started)  # a quiet window of the same length, for comparison
            quiet_end = time.time()
        finally:
            stop_writer(w)
        verdict = "clean"
        try:
            check_live_run(store, dest, log, started, result, initial, before)
            if result.returncode != 0:
                verdict = "failed, cause named"
                ok = False  # with the protocol followed, every run must succeed
        except AssertionError as e:
            verdict = f"BROKEN PROMISE: {str(e).splitlines()[0][:120]}"
            ok = False
        ops, _ = read_log(log)
        busy, n = worst_in(ops, started, finished)
        quiet, _ = worst_in(ops, finished, quiet_end)
        rows.append(f"| {i + 1} | {result.returncode} | {verdict} | {finished - started:.2f} | {n} | {busy * 1000:.1f} | {quiet * 1000:.1f} |")
        print(rows[-1], flush=True)
        shutil.rmtree(dest, ignore_errors=True)
    return rows, ok


def kills(work: Path, store: Path, count: int) -> tuple[list[str], bool]:
    start = time.monotonic()
    probe = work / "probe"
    assert run_cli("backup", store, probe).returncode == 0
    duration = time.monotonic() - start
    shutil.rmtree(probe)
    rng = random.Random(1)
    outcomes = {"incomplete": 0, "complete (killed after the manifest)": 0, "before DEST existed": 0}
    ok = True
    for i in range(count):
        dest = work / f"k{i}"
        p = subprocess.Popen([sys.executable, "-m", "mailbak", "backup", str(store), str(dest)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0, duration))
        p.kill()
        p.wait()
        if not dest.exists():
            outcomes["before DEST existed"] += 1
            continue
        v = run_cli("verify", dest)
        if manifest_status(dest) in ("ok", "failed"):
            outcomes["complete (killed after the manifest)"] += 1
            ok &= v.returncode == 0
        else:
            # No manifest yet, or the first one, which still says running.
            outcomes["incomplete"] += 1
            ok &= v.returncode == 1 and "incomplete" in v.stderr
        shutil.rmtree(dest, ignore_errors=True)
    after = run_cli("backup", store, work / "after")
    ok &= after.returncode == 0 and run_cli("verify", work / "after").returncode == 0
    rows = [f"{count} SIGKILLs at uniform random points of a {duration:.1f} s backup:", ""]
    rows += [f"- {k}: {v}" for k, v in outcomes.items()]
    rows.append(f"- fresh backup afterwards: exit {after.returncode}")
    return rows, ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--kills", type=int, default=30)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--accounts", type=int, default=8)
    ap.add_argument("--report", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mailbak-soak-"))
    try:
        store = make_store(work / "store", messages=args.messages, accounts=args.accounts, seed=42)
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        lines = [f"Soak of {when}: `python bench/soak.py --runs {args.runs} --kills {args.kills} --messages {args.messages} --accounts {args.accounts}`", ""]
        rows, ok_live = live_runs(work, store, args.runs)
        lines += rows + [""]
        rows, ok_kill = kills(work, store, args.kills)
        lines += rows
        report = "\n".join(lines) + "\n"
        print(report)
        if args.report:
            args.report.write_text(report)
        return 0 if ok_live and ok_kill else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

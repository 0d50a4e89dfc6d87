"""The benchmark harness runs end to end: `bench/run.py --smoke` generates a small store in
temporary directories, runs every group's contenders once, and prints each group's table.
Nothing about timing is asserted: this only keeps the harness from rotting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

RUN = Path(__file__).resolve().parent.parent / "bench" / "run.py"


def test_bench_smoke():
    done = subprocess.run([sys.executable, str(RUN), "--smoke"], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-4000:]
    for group in ("same-fs", "cross-device", "verify"):
        heading = next((line for line in done.stdout.splitlines() if line.startswith(f"### {group}:")), None)
        assert heading is not None, f"no table for {group}:\n{done.stdout}"
    # Every contender row has the full set of cells (the header has 7 columns).
    rows = [line for line in done.stdout.splitlines() if line.startswith("| `")]
    assert rows and all(line.count("|") == 8 for line in rows), done.stdout

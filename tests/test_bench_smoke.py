"""The benchmark harness runs end to end: `bench/run.py --smoke` generates a small store in
temporary directories, runs every group's contenders once, and prints each group's table.
Nothing about timing is asserted: this only keeps the harness from rotting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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

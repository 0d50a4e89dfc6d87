"""The test side of the pause-point protocol (python/mailbak/testpause.py, rust/testpause.rs):
start a run that stops at a named point, act while it stands still, let it go on."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import CLI_ENV
from mailbak.testpause import ENV_DIR, ENV_POINT


class PausePoint:
    """One point of one run: its environment, and the handshake files in ``folder``."""

    def __init__(self, folder: Path, point: str, after: int = 1):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.point = point
        self.env = {**CLI_ENV, ENV_POINT: point, ENV_DIR: str(folder), "MAILBAK_TEST_PAUSE_AFTER": str(after)}

    @property
    def reached_file(self) -> Path:
        return self.folder / f"{self.point}.reached"

    def popen(self, *args: str | os.PathLike, **kw) -> subprocess.Popen:
        """Starts `mailbak ARGS` with this point armed."""
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen([sys.executable, "-m", "mailbak", *map(str, args)], text=True, env=self.env, **kw)

    def mark_file(self, mark: str) -> Path:
        """The file the run creates when it passes ``mark`` (``mailbak.testpause.mark``)."""
        return self.folder / f"{mark}.reached"

    def wait_reached(self, proc: subprocess.Popen, timeout: float = 120, mark: str | None = None) -> None:
        """Waits until the run stands at the point (or, with ``mark``, has passed that mark);
        fails (never skips) if it ends first."""
        what = mark or self.point
        reached = self.mark_file(what)
        deadline = time.monotonic() + timeout
        while not reached.exists():
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(f"the run ended (exit {proc.returncode}) without reaching {what}:\n{out}\n{err}")
            assert time.monotonic() < deadline, f"{what} not reached in {timeout}s"
            time.sleep(0.005)

    def go(self) -> None:
        """Lets the run go on."""
        (self.folder / f"{self.point}.go").touch()

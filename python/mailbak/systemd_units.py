"""The systemd units shipped as package data in ``mailbak/systemd/`` (``mailbak systemd``)."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

#: Where the shipped files are installed.
UNIT_DIR = Path(__file__).with_name("systemd")

#: Characters a path may have to be written into the units' ``sh -c '...'`` line unquoted.
_SAFE_PATH = re.compile(r"[A-Za-z0-9_./+-]+")


def names() -> list[str]:
    """The names of the shipped files (the units and example.env), sorted."""
    return sorted(p.name for p in UNIT_DIR.iterdir() if p.is_file())


def mailbak_executable() -> str | None:
    """The absolute path of the ``mailbak`` command being run, or of the one next to this
    Python (a virtualenv), or on PATH."""
    candidates = []
    if os.path.basename(sys.argv[0]) == "mailbak":
        candidates.append(os.path.abspath(sys.argv[0]))
    candidates.append(os.path.join(os.path.dirname(sys.executable), "mailbak"))
    candidates.append(shutil.which("mailbak") or "")
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def render(name: str) -> str:
    """A shipped file's text; in units, ``exec mailbak`` names the absolute path of this
    mailbak when there is one that can be written unquoted. Raises KeyError for an unknown name."""
    if name not in names():
        raise KeyError(name)
    text = (UNIT_DIR / name).read_text()
    exe = mailbak_executable()
    if exe and _SAFE_PATH.fullmatch(exe):
        text = text.replace("exec mailbak ", f"exec {exe} ")
    return text

"""Named outcomes and exit statuses: the one vocabulary every module uses for how a run ended
(ok, failed; a verification's clean, problems) and what a backup or snapshot is (running,
incomplete), and the command's exit status for each.
"""

from __future__ import annotations

import enum

#: Exit statuses (docs/BACKUP.md, docs/VERIFY.md): 0 ok, 1 failed or problems found, 2 bad
#: usage or input, 130 interrupted.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class Status(enum.StrEnum):
    """Every named outcome: of a run (ok, failed; a verification's clean, problems) and of a
    backup or snapshot (running, incomplete). A ``str``: it is its own text in JSON, in the
    manifest and in comparisons with plain strings."""

    OK = "ok"
    FAILED = "failed"
    CLEAN = "clean"
    PROBLEMS = "problems"
    RUNNING = "running"
    INCOMPLETE = "incomplete"

    @property
    def good(self) -> bool:
        """Whether a run with this outcome succeeded (ok, clean)."""
        return self in (Status.OK, Status.CLEAN)

    @property
    def exit_status(self) -> int:
        """The command's exit status for a run that ended with this outcome."""
        return EXIT_OK if self.good else EXIT_FAILED

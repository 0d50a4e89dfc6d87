"""Test-only clock seam: the wall clock a backup names its snapshot by, inert otherwise.

A snapshot is named by its backup's start, to the second (``repository.snapshot_name``), so a
test that makes several snapshots would otherwise have to sleep past a second boundary between
them. Instead it sets ``MAILBAK_TEST_CLOCK`` to the Unix time (seconds, a float) the run is to
start at; the run's clock then reads that value at its start and runs on at real speed, so that
the manifest's start and finish stay one run's elapsed time apart.

For tests only: a start in the past makes the reuse rule stricter (a reference file is reused
only if it is older than the reference's start less ``manifest.REUSE_MARGIN_NS``), a start in
the future laxer; tests pick starts no later than the real one unless the rule is not what they
are about. Without the variable, the run reads ``time.time()`` where it always did; the seam
costs one dictionary lookup per run.
"""

from __future__ import annotations

import os
import time

#: Environment variable holding the Unix time a run starts at.
ENV_CLOCK = "MAILBAK_TEST_CLOCK"


class RunClock:
    """The wall clock of one run: the real one, or the one a test set (see the module doc)."""

    def __init__(self) -> None:
        real = time.time()
        value = os.environ.get(ENV_CLOCK)
        #: When the run started, as recorded (the test's value exactly, so that its second is
        #: the snapshot's name even where float arithmetic would round below it).
        self.start = real if value is None else float(value)
        #: Seconds added to the real clock after the start; 0 without the variable.
        self.shift = self.start - real

    def now(self) -> float:
        """The run's current time."""
        return time.time() if self.shift == 0 else time.time() + self.shift

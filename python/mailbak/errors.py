"""The exceptions that stop a command, and what the command line makes of each.

- :class:`UsageError`: bad usage or input, found before anything was written (exit 2).
- :class:`Interrupted`: SIGINT or SIGTERM (exit 130); a BaseException, so that no ``except
  Exception`` on the way swallows it.
- :class:`DestinationFull`: the destination cannot take more data (exit 1); the run stops.
- :class:`RepositoryBusy`: a repository's lock is held and the caller would not wait (exit 1);
  repository.py raises it.
- :class:`ResticError`: restic failed (exit 1); restic.py raises it (the API names it
  ``mailbak.restic.ResticError``; ``mailbak.offsite.ResticError`` is the same class). It lives
  here so that the one runner (job.py) maps it without importing restic's client.
- :class:`ManifestError`: a backup's manifest is missing or malformed; its ``kind`` says which,
  so that callers never match message text.

Errors on single files are not exceptions: they are events (report.py), and the run goes on.
The public API (docs/API.md) exports ``UsageError`` and ``DestinationFull`` from ``mailbak`` and
``mailbak.api``.
"""

from __future__ import annotations

import errno
import os

#: Errors on the destination after which nothing more can be written: the run stops.
FATAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class UsageError(Exception):
    """Bad usage or input, found before anything was written (exit status 2)."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; the command stops and exits 130."""


class DestinationFull(Exception):
    """The destination cannot take more data (ENOSPC, EDQUOT, EROFS); the run stops. ``what``
    says which place is full, for the one line the command prints."""

    def __init__(self, text: str, what: str = "the destination cannot take more data"):
        super().__init__(text)
        self.what = what


class RepositoryBusy(Exception):
    """The repository lock is held by another mailbak and the caller would not wait (exit 1)."""


class ResticError(Exception):
    """restic failed; the message is the one line the command prints (exit status 1)."""


def is_destination_full(text: str) -> bool:
    """Whether an error message (from LMDB, say, which gives no errno) means DestinationFull."""
    return any(os.strerror(e) in text for e in FATAL_ERRNOS)


class ManifestError(Exception):
    """A backup's manifest is missing, unreadable or malformed; the message says which and
    ``kind`` tells callers apart: ``MISSING`` (no manifest at all: an incomplete backup) or
    ``MALFORMED`` (anything else)."""

    MISSING = "missing"
    MALFORMED = "malformed"

    def __init__(self, text: str, kind: str = MALFORMED):
        super().__init__(text)
        self.kind = kind

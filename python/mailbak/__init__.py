"""mailbak: consistent online backups of LMDB mail stores.

The Python API (docs/API.md): :func:`backup`, :func:`verify`, :func:`restore`, for
repositories :func:`init`, :func:`snapshots` and :func:`prune`, and for recovery :func:`ls`,
:func:`find`, :func:`export` and :func:`restore_account` return typed results
(:class:`BackupResult`, :class:`VerifyResult`, :class:`RestoreResult`, :class:`SnapshotInfo`,
:class:`PruneResult`, :class:`LsResult`, :class:`FindResult`, :class:`ExportResult`,
:class:`AccountRestoreResult`) and raise :class:`UsageError` for bad usage or input,
:class:`DestinationFull` when the destination cannot take more data, :class:`RepositoryBusy`
when a repository is locked and the caller would not wait; they live in ``mailbak.api`` and are
loaded on first use.

The commands live in their own modules, named for what does the work (``archiver``: backup,
``verifier``, ``restorer``, ``pruner``; ``gen`` makes test stores), so that no module shares a
name with an API function; the store format and its writer library in ``layout`` and
``store``; the parallel file work in the Rust extension ``mailbak._engine``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("mailbak")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    "backup",
    "verify",
    "check",
    "restore",
    "init",
    "snapshots",
    "prune",
    "ls",
    "find",
    "export",
    "restore_account",
    "BackupResult",
    "VerifyResult",
    "CheckResult",
    "RestoreResult",
    "PruneResult",
    "LsResult",
    "FindResult",
    "ExportResult",
    "AccountRestoreResult",
    "SnapshotInfo",
    "UsageError",
    "DestinationFull",
    "RepositoryBusy",
]

#: Names of the API, loaded from mailbak.api on first use (``import mailbak`` stays cheap for
#: the command line).
_API = tuple(n for n in __all__ if n != "__version__")

if TYPE_CHECKING:
    from mailbak.api import (
        AccountRestoreResult,
        BackupResult,
        CheckResult,
        DestinationFull,
        ExportResult,
        FindResult,
        LsResult,
        PruneResult,
        RepositoryBusy,
        RestoreResult,
        SnapshotInfo,
        UsageError,
        VerifyResult,
        backup,
        check,
        export,
        find,
        init,
        ls,
        prune,
        restore,
        restore_account,
        snapshots,
        verify,
    )


def __getattr__(name: str) -> Any:
    if name in _API:
        from mailbak import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

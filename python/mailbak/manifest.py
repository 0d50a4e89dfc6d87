"""The backup manifest ``DEST/mailbak.json``: written first and last, atomically; read with limits.

A backup says it is one from its first byte: ``mailbak backup`` writes the manifest with
``"status": "running"`` (and the start time) before anything else in DEST, and replaces it
atomically at the end with ``ok`` or ``failed`` and the facts of the run. So a directory holding
``mailbak.json`` is a backup, whatever else it holds (lock files, ``data/tmp/``):

- ``running``: incomplete (killed, interrupted, stopped by a full disk, or still being written);
- ``failed``: complete as far as it goes, but lacking files or databases, each named in the run's
  errors;
- ``ok``: complete; the facts (databases, areas, known files) are what verify checks it against.

A destination without a manifest at all is incomplete too (a backup by a mailbak that wrote the
manifest only at the end, killed before it).
"""

from __future__ import annotations

import calendar
import functools
import json
import math
import time
from pathlib import Path
from typing import Any

from mailbak.errors import ManifestError
from mailbak.fsio import replace_file
from mailbak.layout import read_tagged_json
from mailbak.status import Status

#: File name of the manifest inside a backup.
MANIFEST = "mailbak.json"
#: The temporary file each manifest write goes through (written, fsynced, renamed): a backup
#: killed during its first manifest write leaves only this.
MANIFEST_TMP = MANIFEST + ".tmp"
#: Identifies the file as ours.
KIND = "mailbak-backup"
#: Version of the manifest's layout.
MANIFEST_VERSION = 1
#: What the manifest says of the copy of each area's index (``lmdbcopy.Index.summary``).
AREA_FACTS = ("records", "live", "expunged", "erasing", "highest_id")
#: Mode of the manifest file: it names the store and its accounts, nothing for others.
MANIFEST_MODE = 0o640
#: Largest manifest accepted when reading (a store of 100k accounts stays far below).
MAX_BYTES = 64 * 1024 * 1024
#: How the manifest writes times (report.rfc3339: UTC, to the second).
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
#: A file is reused from a reference backup only when its mtime is older than the reference's
#: start by this much (docs/REPOSITORY.md): a file rewritten in the clock tick it was copied in
#: keeps its mtime, since file systems stamp it with a coarse clock (the kernel's tick) or
#: truncate it (1 s on ext3 and HFS+, 2 s on FAT and exFAT). 2 s covers the coarsest; the
#: manifest's start is already rounded down to the second.
REUSE_MARGIN_NS = 2_000_000_000


def write(dest: Path, facts: dict[str, Any]) -> Path:
    """Writes the manifest atomically: temporary file, fsync, rename, fsync of the directory."""
    path = dest / MANIFEST
    body = json.dumps({"kind": KIND, "manifest_version": MANIFEST_VERSION, **facts}, indent=2, sort_keys=False, ensure_ascii=False)
    replace_file(path, (body + "\n").encode("utf-8"), mode=MANIFEST_MODE, tmp_name=MANIFEST_TMP)
    return path


def read(backup: Path) -> dict[str, Any]:
    """Reads and validates a manifest of any status (callers decide what ``running`` and
    ``failed`` mean to them); raises ManifestError."""
    path = backup / MANIFEST
    missing = ManifestError(f"{path}: no manifest: the backup is incomplete (interrupted, killed, or its disk filled up)", ManifestError.MISSING)
    doc = read_tagged_json(path, MAX_BYTES, missing, ManifestError, KIND, "a mailbak manifest")
    if doc.get("manifest_version") != MANIFEST_VERSION:
        raise ManifestError(f"{path}: manifest version {doc.get('manifest_version')!r} is not supported (this mailbak reads {MANIFEST_VERSION})")
    status = doc.get("status")
    if status not in (Status.OK, Status.FAILED, Status.RUNNING):
        raise ManifestError(f'{path}: status {status!r} is none of "ok", "failed", "running"')
    if status == Status.RUNNING:
        # Written before anything else: only the start is known. Callers treat it as incomplete.
        if not isinstance(doc.get("started"), str):
            raise ManifestError(f"{path}: field 'started' is missing or not a str")
        return doc
    for key, typ in (("accounts", dict), ("databases", dict), ("errors", int), ("warnings", int)):
        if not isinstance(doc.get(key), typ):
            raise ManifestError(f"{path}: field {key!r} is missing or not a {typ.__name__}")
    _check_facts(path, doc)
    return doc


def reuse_cutoff(doc: dict[str, Any]) -> int | None:
    """For a reference backup whose manifest is ``doc``: the mtime (nanoseconds since the epoch)
    from which its files are never reused (the engine's ``reference_cutoff``), its start less
    REUSE_MARGIN_NS; None when the start cannot be read."""
    try:
        started = calendar.timegm(time.strptime(doc["started"], TIME_FORMAT))
    except (KeyError, TypeError, ValueError):
        return None
    return started * 1_000_000_000 - REUSE_MARGIN_NS


def own_cutoff(started: float) -> int:
    """For a run started at ``started`` (seconds since the epoch): the cutoff a later run will
    read from its manifest with :func:`reuse_cutoff` (the start to the second, as the manifest
    writes it, less REUSE_MARGIN_NS), computed without parsing (no ``strptime``: a run that
    dropped privileges may no longer import it)."""
    return math.floor(started) * 1_000_000_000 - REUSE_MARGIN_NS


def _is_int(v: Any) -> bool:
    # ``type`` rather than ``isinstance``: a bool is no count, and JSON makes exact ints. Every
    # listing (snapshots, prune, a backup's reference) checks every snapshot's facts: 200
    # manifests of 50 accounts made this half of `mailbak snapshots`.
    return type(v) is int and v >= 0


def _is_rel(rel: Any) -> bool:
    """A relative path below ``data/`` that cannot leave it."""
    return isinstance(rel, str) and _is_rel_str(rel)


@functools.lru_cache(maxsize=1 << 16)
def _is_rel_str(rel: str) -> bool:
    # Cached: the same database and account names recur in every snapshot's manifest.
    return bool(rel) and not rel.startswith("/") and all(p not in ("", ".", "..") for p in rel.split("/"))


def _check_facts(path: Path, doc: dict[str, Any]) -> None:
    """The facts verify compares a backup with must have the shapes ``mailbak backup`` writes, so
    that a damaged or forged manifest is one clear error, never a traceback or a path outside
    the backup. ``files``, ``copy_txnid`` and ``source_inode`` came later within version 1:
    optional."""

    def bad(what: str) -> ManifestError:
        return ManifestError(f"{path}: {what}")

    for rel, db in doc["databases"].items():
        # Plain conditions, no generators: this runs for every database of every snapshot a
        # listing reads.
        if not _is_rel(rel) or type(db) is not dict or not (_is_int(db.get("txnid")) and _is_int(db.get("bytes")) and _is_int(db.get("copy_txnid", 0)) and _is_int(db.get("source_inode", 0))):
            raise bad(f"database entry {rel!r} is malformed")
    files = doc.setdefault("files", {})
    if not isinstance(files, dict) or not all(_is_rel(rel) and isinstance(f, dict) and _is_int(f.get("bytes")) for rel, f in files.items()):
        raise bad("field 'files' is malformed")
    areas = [("queue", doc.get("queue"))] if doc.get("queue") is not None else []
    for name, area in [*areas, *doc["accounts"].items()]:
        if not _is_rel(name) or "/" in name or type(area) is not dict or not all([_is_int(area.get(k)) for k in AREA_FACTS]):
            raise bad(f"area entry {name!r} is malformed")
    plain = doc.setdefault("plain_copied_accounts", [])
    if not isinstance(plain, list) or not all(_is_rel(n) and "/" not in n for n in plain):
        raise bad("field 'plain_copied_accounts' is malformed")

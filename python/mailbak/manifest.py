"""The backup manifest ``DEST/mailbak.json``: written last, atomically; read with limits.

A destination without a manifest is an incomplete backup (interrupted, killed, or stopped by a
full disk); one whose manifest says ``failed`` is complete as far as it goes but lacks files or
databases, each named in the run's errors.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mailbak.layout import read_bounded

#: File name of the manifest inside a backup.
MANIFEST = "mailbak.json"
#: Identifies the file as ours.
KIND = "mailbak-backup"
#: Version of the manifest's layout.
MANIFEST_VERSION = 1
#: Largest manifest accepted when reading (a store of 100k accounts stays far below).
MAX_BYTES = 64 * 1024 * 1024


class ManifestError(Exception):
    """The manifest is missing, unreadable or malformed; the message says which."""


def write(dest: Path, facts: dict[str, Any]) -> Path:
    """Writes the manifest atomically: temporary file, fsync, rename, fsync of the directory."""
    path = dest / MANIFEST
    tmp = dest / (MANIFEST + ".tmp")
    body = json.dumps({"kind": KIND, "manifest_version": MANIFEST_VERSION, **facts}, indent=2, sort_keys=False, ensure_ascii=False)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
    try:
        view = memoryview((body + "\n").encode("utf-8"))
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dfd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return path


def read(backup: Path) -> dict[str, Any]:
    """Reads and validates a manifest; raises ManifestError."""
    path = backup / MANIFEST
    raw = read_bounded(path, MAX_BYTES, "no manifest: the backup is incomplete (interrupted, killed, or its disk filled up)", ManifestError)
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path}: malformed JSON: {e}") from e
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise ManifestError(f"{path}: not a mailbak manifest (no \"kind\": \"{KIND}\")")
    if doc.get("manifest_version") != MANIFEST_VERSION:
        raise ManifestError(f"{path}: manifest version {doc.get('manifest_version')!r} is not supported (this mailbak reads {MANIFEST_VERSION})")
    status = doc.get("status")
    if status not in ("ok", "failed"):
        raise ManifestError(f"{path}: status {status!r} is neither \"ok\" nor \"failed\"")
    for key, typ in (("accounts", dict), ("databases", dict), ("errors", int), ("warnings", int)):
        if not isinstance(doc.get(key), typ):
            raise ManifestError(f"{path}: field {key!r} is missing or not a {typ.__name__}")
    return doc

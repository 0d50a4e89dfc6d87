"""Content digests of a backup's files (docs/FORMAT.md, "Digests"): ``BACKUP/digests/``.

- ``digests/files``: every regular file of the backup that is not a message file (config,
  databases as written, keys, junk filters, strays), keyed by its path below the backup root.
- ``digests/queue/<shard>`` and ``digests/accounts/<name>/<shard>``: the message files with IDs
  ``shard * 256`` to ``shard * 256 + 255``. A shard in which every message was reused from the
  reference is a hardlink of the reference's shard file, so an unchanged history's digests are
  stored once, like its files; a shard may therefore list IDs the snapshot no longer holds.

Each file is text with a header naming the algorithm and a trailer holding the SHA-256 of the
rest, so that damage to a digest file is told from damage to what it describes. The format is
the engine's (``rust/digests.rs``: the backup writes shards there); this module is its Python
face: parse, render, read and write below a held directory, and the recording of ``files``.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

from mailbak import _engine
from mailbak.fsio import Refused, read_small

#: The algorithm every digest names (restic's blob IDs are SHA-256 too: docs/OFFSITE.md).
ALGORITHM = "sha256"
#: Version of the format of digest files.
FORMAT = 1
#: The directory of a backup holding them.
DIR = "digests"
#: The digest file of every non-message file, in DIR.
FILES = "files"
#: log2 of the IDs per shard file (the engine's SHARD_SHIFT).
SHARD_SHIFT = 8
#: Largest digest file read (the engine's MAX_FILE_BYTES).
MAX_BYTES = 64 << 20
#: Modes of digest directories and files: a backup is root's.
DIR_MODE = 0o700
FILE_MODE = 0o600


class DigestError(ValueError):
    """A digest file that is malformed, truncated or fails its own checksum: none of its entries
    is trusted."""


class How(StrEnum):
    """How an entry's digest was obtained."""

    #: Hashed from the bytes the backup wrote (a copy, a database as written).
    WRITTEN = "w"
    #: Hashed by a later read (``check --read-data`` of a file that had none).
    READ = "r"
    #: None recorded: a message file hardlinked from the live store, never read by backup.
    NONE = "-"


class Entry(NamedTuple):
    """One entry: a message ID (shards) or a path below the backup root (``files``)."""

    key: int | bytes
    size: int
    #: 32 raw bytes; None with How.NONE.
    digest: bytes | None
    how: How


def shard_of(message_id: int) -> int:
    """The shard holding message ``message_id``."""
    return message_id >> SHARD_SHIFT


def area_dir(area_rel: str) -> str:
    """The directory of an area's shards below the backup root (``area_rel``: ``queue`` or
    ``accounts/NAME``, as below ``data/``)."""
    return f"{DIR}/{area_rel}"


def shard_rel(area_rel: str, shard: int) -> str:
    """The path of a shard file below the backup root, e.g. ``digests/accounts/alice/12``."""
    return f"{area_dir(area_rel)}/{shard}"


def parse(data: bytes, *, shard: bool) -> list[Entry]:
    """The entries of a digest file; raises DigestError."""
    try:
        raw = _engine.parse_digests(data, shard=shard)
    except ValueError as e:
        raise DigestError(str(e)) from e
    return [Entry(k, size, d, How(how)) for k, size, d, how in raw]


def render(entries: Iterable[Entry], *, shard: bool) -> bytes:
    """The text of a digest file holding ``entries`` (sorted by key here)."""
    return _engine.render_digests([(e.key, e.size, e.digest, str(e.how)) for e in entries], shard=shard)


def read(dir_fd: int, rel: str, *, shard: bool) -> list[Entry]:
    """The digest file ``rel`` below the directory ``dir_fd`` (never through a symlink, a regular
    file only, at most MAX_BYTES); raises FileNotFoundError when absent, DigestError when it
    cannot be trusted."""
    try:
        data = read_small(rel, MAX_BYTES, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except Refused as e:
        raise DigestError(f"{rel}: {e.strerror}") from e
    except OSError as e:
        raise DigestError(f"{rel}: cannot read it: {e.strerror}") from e
    try:
        return parse(data, shard=shard)
    except DigestError as e:
        raise DigestError(f"{rel}: {e}") from e


def write(dir_fd: int, rel: str, entries: Iterable[Entry], *, shard: bool) -> int:
    """Writes the digest file ``rel`` below ``dir_fd`` as a new file (never over one, never
    through a symlink); returns its size."""
    data = render(entries, shard=shard)
    fd = os.open(rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    return len(data)


def hash_fd(fd: int) -> tuple[bytes, int]:
    """The SHA-256 of a file's whole content (read from offset 0 with pread, so the descriptor's
    offset is left alone) and its length."""
    h = hashlib.sha256()
    off = 0
    while chunk := os.pread(fd, 1 << 20, off):
        h.update(chunk)
        off += len(chunk)
    return h.digest(), off


def hash_at(dir_fd: int, rel: str) -> tuple[bytes, int]:
    """:func:`hash_fd` of the regular file ``rel`` below ``dir_fd`` (never through a symlink;
    a FIFO is never waited on); raises OSError."""
    fd = os.open(rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(0, "not a regular file")
        return hash_fd(fd)
    finally:
        os.close(fd)


@dataclass
class Recording:
    """What a backup records for ``digests/files`` while it runs, and the facts of its shards:
    files copied come with the digest of what was written, reused ones inherit the reference's
    entry (``inherited``, read once), databases are hashed as written."""

    #: Entries of the reference's ``digests/files`` by path (empty: no reference or none there).
    inherited: dict[bytes, Entry] = field(default_factory=dict)
    #: This backup's entries by path.
    files: dict[bytes, Entry] = field(default_factory=dict)
    #: Sums of the engine's shard facts over the areas.
    shards: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("shards_written", "shards_linked", "bytes_written", "messages", "pending"), 0))

    @classmethod
    def against(cls, reference_fd: int | None) -> Recording:
        """A recording whose reused files inherit from the backup held by ``reference_fd``
        (None: no reference). A reference without digests, or whose ``files`` cannot be
        trusted, leaves reused files without a digest; never an error of this backup."""
        inherited: dict[bytes, Entry] = {}
        if reference_fd is not None:
            try:
                entries = read(reference_fd, f"{DIR}/{FILES}", shard=False)
            except (OSError, DigestError):
                entries = []
            inherited = {e.key: e for e in entries if isinstance(e.key, bytes)}
        return cls(inherited)

    def add_engine_files(self, files: Iterable[tuple[bytes, int, bytes | None]]) -> None:
        """The plain files an engine call placed: (path below the backup root, size, digest of
        the copy, or None when reused from the reference)."""
        for path, size, digest in files:
            if digest is not None:
                self.files[path] = Entry(path, size, digest, How.WRITTEN)
                continue
            old = self.inherited.get(path)
            if old is not None and old.size == size:
                self.files[path] = old
            else:
                self.files[path] = Entry(path, size, None, How.NONE)

    def add_written(self, path: bytes, digest: bytes, size: int) -> None:
        """A file the backup wrote itself (a database copy), hashed after writing."""
        self.files[path] = Entry(path, size, digest, How.WRITTEN)

    def add_shards(self, facts: dict[str, int]) -> None:
        """An area's shard facts from the engine."""
        for k in self.shards:
            self.shards[k] += facts.get(k, 0)

    def write_files(self, backup_fd: int) -> None:
        """Writes ``digests/files`` into the backup held by ``backup_fd``."""
        self.shards["bytes_written"] += write(backup_fd, f"{DIR}/{FILES}", self.files.values(), shard=False)

    def facts(self) -> dict[str, int | str]:
        """The manifest's ``digests`` object (docs/FORMAT.md)."""
        return {"algorithm": ALGORITHM, "format": FORMAT, "files": len(self.files), **self.shards}

"""The mail store format of docs/FORMAT.md: names, paths, account names and the config file.

Each kind of area (:class:`AreaKind`: ``data/`` itself, the queue, an account) is described once,
by its :class:`AreaLayout`: its message tree, its index and other databases, its plain files and
what is never backed up; backup, verify and restore use only these (``lmdbcopy.engine_area``
turns an area and the copy of its index into what the engine's ``backup_areas`` and
``check_areas`` take).

Naming convention, kept across mailbak: a name ending in ``_path`` or ``_dir`` is a full
filesystem path (``pathlib.Path``); ``rel`` names are relative to the store's data directory
and use ``/`` separators.
"""

from __future__ import annotations

import os
import stat
import sys
import tomllib
from array import array
from collections.abc import Callable, Collection
from dataclasses import dataclass
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

from mailbak import _engine
from mailbak.anchor import open_problem, open_store_dir
from mailbak.fsio import read_bounded, read_json
from mailbak.testpause import pause

#: Format version written to ``data/mailstore-version``.
FORMAT_VERSION = 1

#: The file of ``data/`` holding the format version, and the most of it mailbak reads (the
#: version is a short line of text).
VERSION_FILE, MAX_VERSION_BYTES = "mailstore-version", 64

#: The lease file of the erase protocol (docs/FORMAT.md, "Removing files while a backup runs").
LEASE_FILE = "backup.lease"

#: Suffix of LMDB lock files (a ``NAME-lock`` beside a database file ``NAME``); never part of a
#: backup, wherever it is: :func:`lock_file` and :func:`lock_files` are the rule.
LOCK_SUFFIX = "-lock"


def lock_file(db: str) -> str:
    """The name of the LMDB lock file of the database file named ``db``: ``db-lock``."""
    return db + LOCK_SUFFIX


def lock_files(names: Collection[bytes], regular: Callable[[set[bytes]], set[bytes]]) -> set[bytes]:
    """The LMDB lock files among ``names``, the entries of one directory: each ``NAME-lock``
    that is a regular file beside a regular file ``NAME``, the engine's rule (rust/walk.rs).
    ``regular`` returns the regular files among the names it is given; it is called only when
    some name has that form (a directory without them costs no stat)."""
    suffix = LOCK_SUFFIX.encode()
    present = set(names)
    pairs = {n: n[: -len(suffix)] for n in names if n.endswith(suffix) and len(n) > len(suffix) and n[: -len(suffix)] in present}
    if not pairs:
        return set()
    found = regular({*pairs, *pairs.values()})
    return {n for n, db in pairs.items() if n in found and db in found}


#: The directory of ``data/`` for writers' temporary files: never backed up, recreated by restore.
TMP_DIR = "tmp"

#: The directory of the queue, and the one holding an account directory per account, in ``data/``.
QUEUE_DIR, ACCOUNTS_DIR = "queue", "accounts"


class AreaKind(Enum):
    """The kinds of area of ``data/`` (docs/FORMAT.md section 1); each is described once, by
    its :class:`AreaLayout` (``kind.layout``). The values are the engine's names of index kinds."""

    #: ``data/`` itself: the top-level databases and plain files.
    DATA = "data"
    #: ``data/queue/``: the outgoing queue.
    QUEUE = "queue"
    #: ``data/accounts/NAME/``: one account.
    ACCOUNT = "account"

    @property
    def layout(self) -> AreaLayout:
        """What an area of this kind holds."""
        return _LAYOUTS[self]


@dataclass(frozen=True)
class AreaLayout:
    """What one kind of area holds."""

    #: Message tree relative to the area ("" is the area itself); None: no message files.
    tree: str | None
    #: The index database (the message records), or None.
    index: str | None
    #: Tables of the index.
    tables: tuple[str, ...]
    #: Other LMDB databases, copied from a read transaction when present; opaque to mailbak.
    databases: tuple[str, ...]
    #: Plain files, copied and never hardlinked (they may change in place).
    files: tuple[str, ...]
    #: Directories of plain files.
    dirs: tuple[str, ...]
    #: Entries that are never part of a backup (besides lock files, which never are anywhere).
    never: tuple[str, ...]

    @property
    def all_databases(self) -> tuple[str, ...]:
        """Every LMDB database of the area: the index first (when it has one), then the others."""
        return ((self.index,) if self.index else ()) + self.databases

    @property
    def known(self) -> tuple[str, ...]:
        """The root-level files the phases handle themselves: databases, their lock files and
        the plain files."""
        return (*(n for db in self.all_databases for n in (db, lock_file(db))), *self.files)


_LAYOUTS = {
    AreaKind.DATA: AreaLayout(
        tree=None,
        index=None,
        tables=(),
        databases=("auth.db", "dmarcrpt.db", "dmarceval.db", "mtasts.db", "tlsrpt.db", "tlsrptresult.db"),
        files=(VERSION_FILE, "receivedid.key"),
        # ACME keys and certificates, and what ``mailbak verify --fix`` moved out of message
        # directories.
        dirs=("acme", "moved"),
        never=(TMP_DIR, "ctl"),
    ),
    AreaKind.QUEUE: AreaLayout(tree="", index="index.db", tables=("msg", "msg_erase", "meta"), databases=(), files=(), dirs=(), never=()),
    AreaKind.ACCOUNT: AreaLayout(
        tree="msg",
        index="index.db",
        tables=("message", "mailbox", "message_erase", "meta"),
        databases=("junkfilter.db",),
        files=("junkfilter.bloom",),
        dirs=(),
        never=(),
    ),
}


def area_rel(kind: AreaKind, name: str) -> str:
    """The directory of an area relative to ``data/``: ``queue`` or ``accounts/NAME``."""
    return QUEUE_DIR if kind is AreaKind.QUEUE else f"{ACCOUNTS_DIR}/{name}"


def area_label(kind: AreaKind, name: str) -> str:
    """An area in summary tables: ``queue`` or ``account NAME``."""
    return QUEUE_DIR if kind is AreaKind.QUEUE else f"account {name}"


#: The config file listing accounts, relative to the config directory.
CONFIG_FILE = "mailstore.toml"

#: Largest config file mailbak parses (a store with 100k accounts fits in well under this).
MAX_CONFIG_BYTES = 16 * 1024 * 1024

#: Key of the ID counter in each index's ``meta`` table.
NEXT_ID_KEY = b"next_id"


def message_rel(id_: int) -> str:
    """Path of message ``id_`` relative to its message tree: ``dir(id)/id``."""
    return _engine.message_path(id_)


def id_key(id_: int) -> bytes:
    """The LMDB key of a record ID: 8 bytes, big-endian."""
    return id_.to_bytes(8, "big")


def key_id(key: bytes) -> int:
    """The record ID of an LMDB key."""
    return int.from_bytes(key, "big")


def is_real_dir(path: Path) -> bool:
    """A directory itself, not a symlink to one: areas reached through a symlink would lead
    reads (and restores' writes) outside the tree, so they are never treated as directories."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def unpack_ids(packed: bytes, code: str = "Q") -> array:
    """The engine's packed little-endian 64-bit integers as an array (``code`` "Q" unsigned,
    "q" signed): the reverse of :func:`pack_ids`."""
    a = array(code)
    a.frombytes(packed)
    if sys.byteorder != "little":
        a.byteswap()
    return a


def pack_ids(values) -> bytes:
    """IDs (or sizes) as one buffer of little-endian u64, the engine's input format."""
    a = array("Q", values)
    if sys.byteorder != "little":
        a.byteswap()
    return a.tobytes()


class FormatError(ValueError):
    """The store (or a backup of it) does not follow docs/FORMAT.md."""


def check_account_name(name: str) -> None:
    """Raises FormatError unless ``name`` is a valid account name.

    Valid: non-empty UTF-8 without ``/`` or NUL and not starting with ``.``. The rules keep an
    account directory a single, visible path component: ``..``, ``a/b`` and ``.hidden`` could
    otherwise reach outside ``data/accounts/`` or hide from listings.
    """
    problem = account_name_problem(name)
    if problem is not None:
        raise FormatError("account name is empty" if name == "" else f"account name {name!r} {problem}")


def account_name_problem(name: str) -> str | None:
    """What makes ``name`` an invalid account name (see check_account_name), without repeating
    the name, or None when it is valid."""
    if not isinstance(name, str) or name == "":
        return "is empty"
    if "/" in name or "\0" in name:
        return "contains '/' or NUL"
    if name.startswith("."):
        return "starts with '.'"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    return None


class Flag(StrEnum):
    """The message flags a ``message`` record's ``flags`` may hold (docs/FORMAT.md section 3):
    the IMAP system flags (RFC 9051 section 2.3.2) and the well-known keywords of RFC 5788's
    registry that mail clients act on. Any other keyword goes in ``keywords``."""

    SEEN = "\\Seen"
    ANSWERED = "\\Answered"
    FLAGGED = "\\Flagged"
    DELETED = "\\Deleted"
    DRAFT = "\\Draft"
    FORWARDED = "$Forwarded"
    JUNK = "$Junk"
    NOT_JUNK = "$NotJunk"
    PHISHING = "$Phishing"
    MDN_SENT = "$MDNSent"


#: The five IMAP system flags (the backslash ones); a client cannot create others of that form.
SYSTEM_FLAGS = (Flag.SEEN, Flag.ANSWERED, Flag.FLAGGED, Flag.DELETED, Flag.DRAFT)

#: The hierarchy separator of mailbox names (``Archive/2024`` lies below ``Archive``), as in mox.
MAILBOX_SEPARATOR = "/"


def _is_control(ch: str) -> bool:
    """C0 and C1 controls and DEL: the characters ``text.escape_path`` escapes in a line."""
    o = ord(ch)
    return o < 0x20 or 0x7F <= o <= 0x9F


def mailbox_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be written as a mailbox name, without repeating it, or None when it
    can (docs/FORMAT.md section 3).

    A writer's names are non-empty UTF-8 without control characters, made of non-empty
    components separated by ``/`` (no leading, trailing or doubled ``/``), none of them ``.``
    or ``..``: a name that is also a relative path then stays below the directory it is joined
    to. Readers must not rely on this: a store or backup may hold any name."""
    if not isinstance(name, str) or name == "":
        return "is empty"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if any(_is_control(ch) for ch in name):
        return "contains a control character"
    for part in name.split(MAILBOX_SEPARATOR):
        if part == "":
            return f"has an empty component (a leading, trailing or doubled {MAILBOX_SEPARATOR!r})"
        if part in (".", ".."):
            return f"has a component {part!r}"
    return None


def mailbox_ancestors(name: str) -> list[str]:
    """The names above ``name`` in the hierarchy, outermost first: ``a/b/c`` gives
    ``["a", "a/b"]``, a top-level name none."""
    parts = name.split(MAILBOX_SEPARATOR)
    return [MAILBOX_SEPARATOR.join(parts[:i]) for i in range(1, len(parts))]


@dataclass(frozen=True)
class Config:
    """What mailbak reads from ``config/mailstore.toml``."""

    #: Valid account names, in file order.
    accounts: tuple[str, ...]
    #: (name, reason) of configured accounts whose names are invalid.
    invalid: tuple[tuple[str, str], ...]


def read_tagged_json(path: Path, limit: int, missing: Exception, error: Callable[[str], Exception], kind: str, what: str) -> dict[str, Any]:
    """A small JSON object of mailbak's own (a manifest, a repository marker): read with
    ``fsio.read_json``, and refused unless it says ``"kind": kind``; ``what`` names it in
    that refusal ("a mailbak manifest"). Each caller checks its own version field."""
    doc = read_json(path, limit, missing, error)
    if not isinstance(doc, dict) or doc.get("kind") != kind:
        raise error(f'{path}: not {what} (no "kind": "{kind}")')
    return doc


def read_config(config_dir: Path) -> Config:
    """Parses the account list; raises FormatError for a missing, oversized or malformed file,
    or a config directory or file that is a symlink (``read_small``: never followed)."""
    pause("read_config")
    path = config_dir / CONFIG_FILE
    try:
        dir_fd = open_store_dir(config_dir)
    except OSError as e:
        raise FormatError(f"{config_dir}: cannot open the config directory: {open_problem(config_dir, e)}") from e
    try:
        raw = read_bounded(path, MAX_CONFIG_BYTES, FormatError(f"{path}: missing (a store's config directory has {CONFIG_FILE})"), FormatError, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise FormatError(f"{path}: not valid TOML: {e}") from e
    except RecursionError as e:
        # tomllib parses nested arrays and inline tables recursively: a small file nesting them
        # some thousands deep exhausts the stack, whatever the size bound.
        raise FormatError(f"{path}: not valid TOML: arrays or tables nested too deeply") from e
    accounts = doc.get("accounts", {})
    if not isinstance(accounts, dict):
        raise FormatError(f"{path}: 'accounts' must be a table of [accounts.NAME] tables")
    valid: list[str] = []
    invalid: list[tuple[str, str]] = []
    for name, body in accounts.items():
        # Reasons never repeat the name: the caller's message starts with it.
        problem = account_name_problem(name)
        if problem is not None:
            invalid.append((name, f"the name {problem}"))
        elif not isinstance(body, dict):
            invalid.append((name, "its entry must be a table ([accounts.NAME])"))
        else:
            valid.append(name)
    return Config(tuple(valid), tuple(invalid))


@dataclass(frozen=True)
class StorePaths:
    """Where a store's two halves are."""

    config_dir: Path
    data_dir: Path

    @classmethod
    def of(cls, store: os.PathLike | str, config: os.PathLike | str | None = None, data: os.PathLike | str | None = None) -> StorePaths:
        """The paths of the store at ``store``: its ``config/`` and ``data/``, unless ``config`` or
        ``data`` name them elsewhere."""
        root = Path(store)
        return cls(Path(config) if config else root / "config", Path(data) if data else root / "data")

    def problem(self) -> str | None:
        """Why this is not a store, or None when it looks like one. ``config/``, ``data/`` and
        the config file are looked at themselves: a symlink at any of them is refused (never
        followed), as every later open refuses it."""
        for path, what, want in ((self.config_dir, "config directory", stat.S_ISDIR), (self.data_dir, "data directory", stat.S_ISDIR), (self.config_dir / CONFIG_FILE, CONFIG_FILE, stat.S_ISREG)):
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                mode = None
            except OSError as e:
                return f"{path}: cannot access the {what}: {e.strerror}"
            if mode is not None and stat.S_ISLNK(mode):
                hint = "" if want is stat.S_ISREG else "; a backup can name the directory it points to with --config or --data"
                return f"{path}: the {what} is a symlink (never followed{hint})"
            if mode is None or not want(mode):
                return f"{path}: no {what} (is this a mail store?)"
        return None

"""What a backup, a repository's snapshot or a live store holds, read for the recovery verbs
(``ls``, ``find``, ``export``, ``restore --account``): accounts, mailboxes, messages and the
messages' files. Each verb is written against this one reader.

Step by step:

1. :meth:`Source.open` decides what PATH is: a directory with ``mailbak.json`` is a backup (a
   snapshot when it sits in a repository, whose shared lock it then holds, so that no prune
   removes it while it is read), a directory with ``config/mailstore.toml`` and ``data/`` a live
   store. ``data/`` is held by descriptor (anchor.DataRoot) for the whole run; in a live store the
   lease is held shared (lmdbcopy.ReaderLease), so writers defer removing message files.
2. :meth:`Source.account` reads the account's index from one LMDB view, through the engine's
   bounds-checked reader (LMDB's own C code trusts page contents, and a store's owner can write
   any bytes into a database): the ``mailbox`` table (``_engine.read_tables``), then the live
   messages, decoded by the engine into columns (``_engine.read_messages``: not expunged, not in
   ``message_erase``; of the mailboxes a selection takes, or of given IDs, when asked).
   :meth:`Source.live_ids` takes only the IDs and sizes. A backup's copy is read at rest; a live
   store's database is opened as one more LMDB reader, as the store's owner
   (lmdbcopy.open_readonly), and read at that read transaction's ID while the transaction pins
   its pages.
3. :class:`AccountView` opens message files below the account's ``msg/`` descriptor, one
   component at a time, never following a symlink nor waiting on a FIFO, as the store's owner in
   a live store; a file that is not a regular file is refused. Heads of many messages are read
   by the engine in parallel (``_engine.read_heads``), as root below that descriptor, as backup
   reads a store.

Records are untrusted input: a record that does not decode as docs/FORMAT.md says is left out
and named in ``AccountView.problems``; names (accounts, mailboxes) may hold any text, and are
escaped by whoever prints them.

Not guaranteed: in a live store each account is read from its own read transaction (LMDB has
none spanning databases), and a message the server expunges and sweeps after that transaction
but before its file is read (only possible when the lease could not be held) is a missing file,
reported by the verb that reads it.
"""

from __future__ import annotations

import errno
import os
import stat
from array import array
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import msgpack

from mailbak import _engine, manifest
from mailbak.anchor import DataRoot, open_problem
from mailbak.errors import ManifestError, UsageError
from mailbak.fsio import open_dir, open_file
from mailbak.headers import Head, heads_of
from mailbak.identity import StoreOwner, acting_as
from mailbak.layout import CONFIG_FILE, MAILBOX_SEPARATOR, AreaKind, FormatError, area_rel, key_id, message_rel, pack_ids, read_config, unpack_ids
from mailbak.lmdbcopy import CHECK_ATTEMPTS, DatabaseError, ReaderLease, describe, maps_file, open_readonly
from mailbak.report import Reporter
from mailbak.repository import NAME_RE, RepoLock, is_repository, parse_time, reader_lock
from mailbak.status import Status
from mailbak.store import unpack
from mailbak.testpause import pause

#: Heads the engine reads per call when many are asked for (iter_heads): the raw fields of
#: 100,000 heads at once were 60 MB more at the peak of ls.
HEAD_BATCH = 10_000

#: What a reader of an index returns.
T = TypeVar("T")


class SourceKind(StrEnum):
    """What PATH is."""

    BACKUP = "backup"
    SNAPSHOT = "snapshot"
    STORE = "store"


@dataclass(frozen=True)
class Mailbox:
    """A live mailbox of an account."""

    id: int
    name: str
    uidvalidity: int
    uidnext: int


class Message(NamedTuple):
    """A live message of an account, as its record says. A named tuple, not a frozen dataclass:
    an account holds 100,000 of them, and a frozen dataclass's constructor (one
    ``object.__setattr__`` a field) cost 5 µs each, a quarter of ``ls`` of such a mailbox."""

    id: int
    mailbox_id: int
    uid: int
    size: int
    received: int
    flags: tuple[str, ...]
    keywords: tuple[str, ...]


@dataclass(frozen=True)
class Selection:
    """Which messages of an account a verb takes: those of the named mailboxes (all when none
    is named; with ``recursive``, also every mailbox below a named one), received at or after
    ``since`` and before ``before`` (unix seconds)."""

    mailboxes: tuple[str, ...] = ()
    recursive: bool = False
    since: int | None = None
    before: int | None = None

    @classmethod
    def of(cls, mailboxes: str | Iterable[str] = (), recursive: bool = False, since: DateArg | None = None, before: DateArg | None = None) -> Selection:
        """The selection ``--mailbox``, ``--recursive``, ``--since`` and ``--before`` make
        (export, restore --account; their keyword arguments in the API): ``mailboxes`` a name or
        names, the dates as :func:`timestamp_of` takes them. Raises UsageError for a date that
        is none, or ``recursive`` without a mailbox (it would mean nothing)."""
        names = (mailboxes,) if isinstance(mailboxes, str) else tuple(mailboxes)
        if recursive and not names:
            raise UsageError("--recursive needs --mailbox")
        return cls(mailboxes=names, recursive=recursive, since=timestamp_of(since, "--since"), before=timestamp_of(before, "--before"))


#: A date as the recovery verbs take it: a text :func:`parse_date` reads, a ``datetime`` (naive:
#: local time) or ``date`` (its local midnight), or unix seconds.
DateArg = str | int | date


def timestamp_of(value: DateArg | None, option: str) -> int | None:
    """Unix seconds of ``value`` (a :data:`DateArg`; None stays None); raises UsageError naming
    ``option`` (``--since``) for a text that is no date or a value of another type."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return parse_date(value)
        except ValueError as e:
            raise UsageError(f"{option} {value!r}: {e}") from None
    if isinstance(value, datetime):
        return int(value.timestamp())  # naive: local time, as parse_date reads a text
    if isinstance(value, date):
        return int(datetime(value.year, value.month, value.day).timestamp())
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise UsageError(f"{option}: a date (text, datetime or date) or unix seconds, not {value!r}")


def parse_date(text: str) -> int:
    """Unix seconds of ``text``: a date (``2026-11-24``, its midnight) or an ISO 8601 date and
    time (``2026-11-24T13:05``, ``2026-11-24 13:05:00+01:00``), in local time when it names no
    zone. Raises ValueError."""
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD) or an ISO 8601 date and time") from None
    return int(t.timestamp())  # a naive datetime is local time, as the operator means it


def _str_tuple(value: Any) -> tuple[str, ...]:
    """A record's list of strings (flags, keywords); anything else in it is left out."""
    if not value or not isinstance(value, list):
        return ()  # most records: an empty list
    return tuple(value) if all(type(v) is str for v in value) else tuple(v for v in value if isinstance(v, str))


def _uint(rec: dict, key: str) -> int:
    """The unsigned integer ``rec[key]``; raises FormatError when it is not one."""
    v = rec.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise FormatError(f"{key} is not an unsigned integer")
    return v


class Source:
    """A backup, a snapshot or a live store opened for reading (a context manager)."""

    def __init__(self, path: Path, kind: SourceKind, doc: dict[str, Any] | None, reporter: Reporter):
        self.path = path
        self.kind = kind
        #: The manifest of a backup or snapshot.
        self.manifest = doc
        self.reporter = reporter
        #: The manifest's start (unix seconds); None for a live store.
        self.started: float | None = None
        #: ok, failed, running (an incomplete backup), or "live".
        self.status = "live"
        if doc is not None:
            self.status = str(doc.get("status"))
            started = parse_time(doc.get("started"))
            self.started = started.timestamp() if started is not None else None
        #: How the source is named in output: a snapshot's name, a backup's start, or "live".
        self.label = path.name if kind is SourceKind.SNAPSHOT else (str(doc.get("started")) if doc and doc.get("started") else "live" if kind is SourceKind.STORE else path.name)
        self.lock: RepoLock | None = None
        self.lease: ReaderLease | None = None
        #: The accounts opened (account()): closed with the source.
        self.views: list[AccountView] = []
        self._accounts: tuple[str, ...] | None = None
        self.root: DataRoot | None = None
        self.owner: StoreOwner | None = None

    @classmethod
    def open(cls, path: Path, reporter: Reporter | None = None, *, lock: bool = True) -> Source:
        """Opens PATH; raises UsageError when it is neither a backup (or snapshot) nor a store,
        or cannot be read. ``lock``: take the repository's shared lock for a snapshot (a caller
        reading many snapshots holds it itself). Warnings (an incomplete backup, a lease that
        cannot be held) go to ``reporter``."""
        reporter = reporter or Reporter()
        try:
            st = os.lstat(path)
        except OSError as e:
            raise UsageError(f"{path}: {e.strerror}") from e
        if stat.S_ISLNK(st.st_mode):
            raise UsageError(f"{path}: is a symlink (never followed); name the directory it points to itself")
        if not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{path}: not a directory (a backup, a snapshot or a store)")
        if is_repository(path):
            raise UsageError(f"{path}: is a repository; name one of its snapshots (`mailbak snapshots {path}` lists them)")
        snapshot = bool(NAME_RE.match(path.name)) and is_repository(path.parent)
        src: Source
        if os.path.lexists(path / manifest.MANIFEST):
            try:
                doc = manifest.read(path)
            except ManifestError as e:
                raise UsageError(str(e)) from e
            src = cls(path, SourceKind.SNAPSHOT if snapshot else SourceKind.BACKUP, doc, reporter)
        elif os.path.lexists(path / "config" / CONFIG_FILE):
            src = cls(path, SourceKind.STORE, None, reporter)
        else:
            raise UsageError(f"{path}: neither a backup (no {manifest.MANIFEST}) nor a store (no config/{CONFIG_FILE})")
        try:
            src._hold(lock)
        except BaseException:
            src.close()
            raise
        return src

    def _hold(self, lock: bool) -> None:
        """Takes what the run holds: the repository's lock, ``data/``, the lease."""
        if lock and self.kind is SourceKind.SNAPSHOT:
            self.lock = reader_lock(self.path, on_wait=self.reporter.message)
        if self.status == Status.RUNNING:
            self.reporter.warn("incomplete", manifest.MANIFEST, 'the backup is incomplete (its manifest says "running"): what it lacks is missing here too')
        elif self.status == Status.FAILED:
            self.reporter.warn("backup_failed", manifest.MANIFEST, "the backup is marked failed: what its errors name is missing here too")
        data = self.path / "data"
        try:
            self.root = DataRoot(data)
        except OSError as e:
            raise UsageError(f"{data}: cannot open: {open_problem(data, e)}") from e
        if self.kind is SourceKind.STORE:
            self.owner = StoreOwner.of(data)
            self.lease = ReaderLease(data, self.reporter).__enter__()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Releases the accounts opened, the lease, ``data/`` and the repository's lock;
        harmless when called again."""
        for view in self.views:
            view.close()
        self.views.clear()
        if self.lease is not None:
            self.lease.release()
            self.lease = None
        if self.root is not None:
            self.root.close()
            self.root = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def accounts(self) -> tuple[str, ...]:
        """The valid configured account names, in the config's order, read once (find opens
        each account of each snapshot: parsing the config every time was a tenth of a search of
        30 snapshots). Raises UsageError when the config cannot be read."""
        if self._accounts is None:
            try:
                self._accounts = read_config(self.path / "config").accounts
            except FormatError as e:
                raise UsageError(str(e)) from e
        return self._accounts

    def _check_account(self, name: str) -> str:
        """The directory of account ``name`` below ``data/``; raises UsageError naming the
        accounts there are when it is not one of them."""
        names = self.accounts()
        if name not in names:
            raise UsageError(f"no account {name!r} in {self.path} (accounts: {', '.join(map(repr, names)) or 'none'})")
        assert self.root is not None, "Source used after close"
        return area_rel(AreaKind.ACCOUNT, name)

    def account(self, name: str, only: Collection[int] | None = None, within: Selection | None = None) -> AccountView:
        """The account ``name`` read (step 2 of the module doc): every mailbox, and its live
        messages; with ``only``, those of these IDs (none: only the mailboxes are read); with
        ``within``, those of the mailboxes that selection takes (its dates are the caller's).
        The engine decodes the messages' records and leaves the others out. Raises UsageError
        naming the accounts there are when it is not one of them, when its index cannot be
        read, and for a mailbox ``within`` names that does not exist."""
        rel = self._check_account(name)

        def read(held: str, txnid: int | None) -> AccountView:
            # The mailboxes first (a few records), to tell the engine which messages to keep;
            # both from the same view.
            (rows,) = _engine.read_tables(held, [b"mailbox"], txnid)
            view = AccountView(name, rel, rows, self.owner)
            if only is None or only:
                boxes = [mb.id for mb in view.selected_mailboxes(within)] if within is not None and within.mailboxes else None
                view.load(_engine.read_messages(held, txnid, boxes, None if only is None else list(only)))
            return view

        view = self._read_index(rel, read)
        self.views.append(view)
        assert self.root is not None
        try:
            view.msg_fd = self.root.open_dir(f"{rel}/{AreaKind.ACCOUNT.layout.tree}")
        except OSError as e:
            # Every message is then unreadable: each an error of the verb that reads it.
            self.reporter.error("message_dir", f"data/{rel}/msg", f"cannot open: {e.strerror}")
        return view

    def live_ids(self, name: str) -> tuple[array, array]:
        """The live message IDs of account ``name`` and their recorded sizes (aligned arrays of
        unsigned 64-bit integers), decoded by the engine alone: for a verb that looks at many
        snapshots before it needs any record (``find``). Raises UsageError as :meth:`account`."""
        rel = self._check_account(name)
        index = self._read_index(rel, lambda held, txnid: _engine.read_index(held, AreaKind.ACCOUNT.value, txnid))
        return unpack_ids(index["live"], "Q"), unpack_ids(index["sizes"], "Q")

    def _read_index(self, rel: str, read: Callable[[str, int | None], T]) -> T:
        """``read(path, txnid)`` of account ``rel``'s index: the path names the very file held,
        ``txnid`` is None for a copy at rest, or the ID of the read transaction held on a live
        database meanwhile. Raises UsageError when it cannot be read."""
        assert self.root is not None
        db = f"{rel}/{AreaKind.ACCOUNT.layout.index}"
        try:
            try:
                fd, st = self.root.open_entry(db)
            except FileNotFoundError as e:
                raise DatabaseError("missing") from e
            except OSError as e:
                raise DatabaseError(f"cannot open: {e.strerror}") from e
            try:
                if not stat.S_ISREG(st.st_mode):
                    raise DatabaseError("not a regular file (a symlink or special file is never opened)")
                # The engine reads the very file held (the /proc link reopens the descriptor's file).
                held = f"/proc/self/fd/{fd}"
                try:
                    return read(held, None) if self.kind is not SourceKind.STORE else self._read_live(db, held, st, read)
                except _engine.LmdbError as e:
                    raise DatabaseError(f"damaged: {describe(e).replace(held, db)}") from e
                except OSError as e:
                    raise DatabaseError(f"cannot read: {e.strerror}") from e
            finally:
                os.close(fd)
        except DatabaseError as e:
            raise UsageError(f"{self.path}/data/{db}: {e}") from e

    def _read_live(self, db: str, held: str, st: os.stat_result, read: Callable[[str, int | None], T]) -> T:
        """``read`` of a live database (``st``: the file held), at the ID of a read transaction
        held meanwhile on that very file."""
        assert self.root is not None
        env = open_readonly(self.root.path / db, self.owner)
        try:
            if not maps_file(st):
                # LMDB opens by path: the owner swapped the file (or a directory above it)
                # after it was held, and a transaction on another file pins nothing here.
                raise DatabaseError("replaced while it was being opened (its path now leads to another file, through a symlink?); not read")
            last: BaseException | None = None
            for _ in range(CHECK_ATTEMPTS):
                with env.begin() as txn:
                    pause("catalog.live_view")  # tests commit twice here: the view's meta page goes
                    try:
                        return read(held, txn.id())
                    except _engine.LmdbError as e:
                        # A writer may have overwritten our view's meta page before the engine
                        # read it (two commits in between): a fresh transaction clears that.
                        last = e
            assert last is not None
            raise last
        finally:
            env.close()


class AccountView:
    """One account of a source, as its index says (a context manager: it holds ``msg/``)."""

    def __init__(self, name: str, rel: str, mailbox_rows: list[tuple[bytes, bytes]] | None, owner: StoreOwner | None):
        self.name = name
        #: The account's directory below ``data/``.
        self.rel = rel
        self.owner = owner
        #: The account's ``msg/`` (None: it cannot be opened; set by Source.account).
        self.msg_fd: int | None = None
        self._dirs: dict[str, int] = {}
        #: (code, detail) of what could not be read from the index.
        self.problems: list[tuple[str, str]] = []
        if mailbox_rows is None:
            self.problems.append(("missing_table", "the index has no mailbox table"))
        self.mailboxes: dict[int, Mailbox] = {}
        for key, value in mailbox_rows or ():
            try:
                rec = unpack(value)
                id_ = key_id(key)
                if rec.get("expunged") is True:
                    continue
                name_ = rec.get("name")
                if not isinstance(name_, str):
                    raise FormatError("name is not a string")
                self.mailboxes[id_] = Mailbox(id_, name_, _uint(rec, "uidvalidity"), _uint(rec, "uidnext"))
            except (FormatError, ValueError) as e:
                self.problems.append(("bad_record", f"mailbox {key.hex()}: {e}"))
        self.messages: list[Message] = []

    def load(self, cols: _engine.MessageColumns) -> None:
        """Takes the messages the engine decoded (``read_messages``) as :class:`Message` rows;
        one naming a mailbox that does not exist is left out and named."""
        for _id, detail in cols["problems"]:
            self.problems.append(("bad_record", detail))
        if cols["problem_count"] > len(cols["problems"]):
            self.problems.append(("bad_record", f"{cols['problem_count'] - len(cols['problems'])} more records that do not decode"))
        # One tuple per distinct encoded list, not one per message (100,000 of them).
        lists: dict[bytes, tuple[str, ...]] = {b"": ()}

        def strings(raw: bytes) -> tuple[str, ...]:
            t = lists.get(raw)
            if t is None:
                try:
                    t = _str_tuple(msgpack.unpackb(raw, raw=False))
                except Exception:  # msgpack raises several unrelated types; the engine checked the shape
                    t = ()
                lists[raw] = t
            return t

        boxes = self.mailboxes
        columns = [unpack_ids(cols[k], "Q") for k in ("ids", "mailbox_ids", "uids", "sizes")] + [unpack_ids(cols["received"], "q")]
        for id_, mailbox_id, uid, size, received, flags, keywords in zip(*columns, cols["flags"], cols["keywords"], strict=True):
            if mailbox_id in boxes:
                self.messages.append(Message(id_, mailbox_id, uid, size, received, strings(flags), strings(keywords)))
            else:
                self.problems.append(("unknown_mailbox", f"message {id_} names mailbox {mailbox_id}, which does not exist"))

    def __enter__(self) -> AccountView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the message directories held; harmless when called again."""
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()
        if self.msg_fd is not None:
            os.close(self.msg_fd)
            self.msg_fd = None

    # Mailboxes and selections ------------------------------------------------------------------

    def mailbox(self, name: str) -> Mailbox:
        """The live mailbox called ``name``; raises UsageError naming the mailboxes there are."""
        for mb in self.mailboxes.values():
            if mb.name == name:
                return mb
        names = sorted(mb.name for mb in self.mailboxes.values())
        raise UsageError(f"no mailbox {name!r} in account {self.name!r} (mailboxes: {', '.join(map(repr, names)) or 'none'})")

    def selected_mailboxes(self, sel: Selection) -> list[Mailbox]:
        """The mailboxes ``sel`` names, by ID: every one when it names none; with
        ``recursive``, also every mailbox below a named one. Raises UsageError for a name no
        mailbox has."""
        if not sel.mailboxes:
            return sorted(self.mailboxes.values(), key=lambda mb: mb.id)
        named = {self.mailbox(name).name for name in sel.mailboxes}
        below = tuple(n + MAILBOX_SEPARATOR for n in named) if sel.recursive else ()
        return sorted((mb for mb in self.mailboxes.values() if mb.name in named or (below and mb.name.startswith(below))), key=lambda mb: mb.id)

    def select(self, sel: Selection) -> list[Message]:
        """The messages ``sel`` takes, by ID; raises UsageError for a mailbox that does not
        exist."""
        ids = {mb.id for mb in self.selected_mailboxes(sel)}
        return [m for m in self.messages if m.mailbox_id in ids and (sel.since is None or m.received >= sel.since) and (sel.before is None or m.received < sel.before)]

    # Message files -----------------------------------------------------------------------------

    def message_rel(self, id_: int) -> str:
        """The path of message ``id_``'s file below ``data/``, for messages."""
        return f"{self.rel}/msg/{message_rel(id_)}"

    def open_message(self, id_: int) -> int:
        """A read-only descriptor of message ``id_``'s file (step 3 of the module doc). Raises
        OSError with ``filename`` the file's path below ``data/``."""
        dname, _, fname = message_rel(id_).partition("/")
        try:
            if self.msg_fd is None:
                raise OSError(errno.ENOENT, "the message directory cannot be opened")
            with acting_as(self.owner):
                dfd = self._dirs.get(dname)
                if dfd is None:
                    dfd = self._dirs[dname] = open_dir(dname, dir_fd=self.msg_fd)
                fd = open_file(fname, dir_fd=dfd)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError(errno.EINVAL, "not a regular file (a FIFO, socket or device is never read)")
            except BaseException:
                os.close(fd)
                raise
        except OSError as e:
            strerror = "a symlink, or below one (never followed)" if e.errno == errno.ELOOP else e.strerror
            raise OSError(e.errno, strerror, self.message_rel(id_)) from e
        return fd

    def read_message(self, id_: int, size: int | None = None) -> bytes:
        """The bytes of message ``id_``'s file, never more than ``size`` (its record's) plus one,
        so a file grown past its record shows as one; raises OSError as :meth:`open_message`."""
        fd = self.open_message(id_)
        try:
            limit = (size if size is not None else os.fstat(fd).st_size) + 1
            chunks, got = [], 0
            while got < limit:
                chunk = os.read(fd, min(limit - got, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def heads(self, ids: list[int], jobs: int = 2) -> list[Head | OSError]:
        """The parsed heads of messages ``ids`` (each from its file's first 64 KiB only), in
        order, read by the engine in ``jobs`` threads; a file that cannot be read is its OSError
        (``filename``: its path below ``data/``). Read as root in a live store too, as backup
        reads it: below the held ``msg/``, never following a symlink."""
        return self._decode_heads(ids, self._read_heads(ids, jobs))

    def iter_heads(self, ids: list[int], jobs: int = 2, batch: int = HEAD_BATCH) -> Iterator[Head | OSError]:
        """:meth:`heads` of many messages, ``batch`` at a time, the engine reading the next
        batch on another thread while this one decodes the last: on two cores, listing 100,000
        heads took the engine's time plus Python's, and now about the larger of the two. Only
        two batches are held at once."""
        batches = [ids[at : at + batch] for at in range(0, len(ids), batch)]
        if len(batches) < 2:
            yield from self.heads(ids, jobs)
            return
        # The engine gets one thread fewer: the other core decodes meanwhile.
        threads = max(1, jobs - 1)
        with ThreadPoolExecutor(1, thread_name_prefix="heads") as pool:
            pending = pool.submit(self._read_heads, batches[0], threads)
            for i, part in enumerate(batches):
                got = pending.result()
                if i + 1 < len(batches):
                    pending = pool.submit(self._read_heads, batches[i + 1], threads)
                yield from self._decode_heads(part, got)

    def _read_heads(self, ids: list[int], jobs: int) -> list[list[bytes] | int]:
        """The engine's raw fields of the heads of ``ids`` (an errno for a file that cannot be
        read; ENOENT for each when the message directory could not be opened)."""
        if self.msg_fd is None:
            return [errno.ENOENT] * len(ids)
        return _engine.read_heads(f"/proc/self/fd/{self.msg_fd}", pack_ids(ids), jobs=jobs)

    def _decode_heads(self, ids: list[int], got: list[list[bytes] | int]) -> list[Head | OSError]:
        """Heads from the engine's raw fields: decoded together (headers.heads_of), the errors
        one by one."""
        read = heads_of([r for r in got if not isinstance(r, int)])
        if len(read) == len(got):
            return list(read)
        out: list[Head | OSError] = []
        heads = iter(read)
        for id_, r in zip(ids, got, strict=True):
            if isinstance(r, int):
                why = "not a regular file (a FIFO, socket or device is never read)" if r < 0 else "a symlink, or below one (never followed)" if r == errno.ELOOP else os.strerror(r)
                out.append(OSError(r if r > 0 else errno.EINVAL, why, self.message_rel(id_)))
            else:
                out.append(next(heads))
        return out

    def head(self, id_: int) -> Head:
        """The parsed head of message ``id_``; raises OSError as :meth:`heads` gives it."""
        (h,) = self.heads([id_], jobs=1)
        if isinstance(h, OSError):
            raise h
        return h

    def stat_message(self, id_: int) -> os.stat_result:
        """``fstat`` of message ``id_``'s file; raises OSError."""
        fd = self.open_message(id_)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

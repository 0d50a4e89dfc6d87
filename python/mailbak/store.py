"""The writer library: keeps a mail store the way a mail server would (docs/FORMAT.md).

What it guarantees, step by step:

* **IDs** are allocated in their own committed transaction on the ``meta`` table, so an ID is
  never handed out twice, even after a crash, and never reused.
* **Deliver** writes the message to ``data/tmp/``, fsyncs it, renames it to ``path(id)``, fsyncs
  the directory, and only then commits the record. A crash can leave a file without a record
  (an orphan under an ID nobody will reuse, reported by ``mailbak verify``), never a record
  without its file.
* **Mailboxes** are made with their ancestors (``Archive/2024`` also makes ``Archive``): IDs
  first, then every record in one transaction that looks for the names again, so concurrent
  writers leave one live mailbox per name. Names ``layout.mailbox_name_problem`` refuses are
  never written.
* **Expunge** marks messages expunged and records them in ``message_erase`` in one transaction;
  **dequeue** deletes the queue record and records it in ``msg_erase`` in one transaction. The
  files are then removed by :meth:`_Area.sweep`, and the erase records deleted last.
* **Sweep** follows the lease protocol: it removes files only while holding an exclusive,
  non-blocking ``flock`` on ``data/backup.lease``. A running backup holds that lease shared, so
  the sweep then leaves files and erase records alone and a later sweep finishes the job. The
  writer never waits for a backup.

Rules for callers (LMDB's, plus the protocol): open each store once per process (LMDB forbids
opening one environment twice in a process) and do not use it across ``fork``; any number of
processes may keep one store open at once; remove message files only through ``sweep``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import lmdb
import msgpack

from mailbak.layout import (
    CONFIG_FILE,
    FORMAT_VERSION,
    LEASE_FILE,
    NEXT_ID_KEY,
    AreaKind,
    FormatError,
    check_account_name,
    id_key,
    key_id,
    mailbox_ancestors,
    mailbox_name_problem,
    message_rel,
    read_config,
)
from mailbak.testpause import pause
from mailbak.text import toml_key

#: Virtual size reserved for each LMDB map. LMDB files grow only as data is written; the map
#: only bounds them. 8 GiB holds tens of millions of records.
MAP_SIZE = int(os.environ.get("MAILBAK_MAP_SIZE", str(8 << 30)))

#: Named databases an environment may hold.
MAX_DBS = 16


def open_env(path: Path, *, readonly: bool = False, lock: bool = True, durable: bool = True) -> lmdb.Environment:
    """Opens an LMDB database file the way the format requires (``subdir=False``).

    A writer also clears reader slots left by dead processes (a killed backup, say): LMDB
    keeps every page such a slot pins until someone does, and the file would grow."""
    env = lmdb.open(
        str(path),
        subdir=False,
        map_size=MAP_SIZE,
        max_dbs=MAX_DBS,
        readonly=readonly,
        lock=lock,
        create=not readonly,
        sync=durable,
        metasync=durable,
        readahead=False,
        meminit=False,
        # auth.db and friends hold secrets: not readable by others.
        mode=0o640,
    )
    if lock and not readonly:
        env.reader_check()
    return env


def pack(record: dict) -> bytes:
    """A record value: a msgpack map with string keys."""
    return msgpack.packb(record, use_bin_type=True)


def unpack(value: bytes) -> dict:
    """Decodes a record value; raises FormatError unless it is a msgpack map."""
    try:
        rec = msgpack.unpackb(value, raw=False)
    except Exception as e:  # msgpack raises several unrelated types
        raise FormatError(f"record is not msgpack: {e}") from e
    if not isinstance(rec, dict):
        raise FormatError("record is not a msgpack map")
    return rec


def message_record(
    *,
    mailbox_id: int,
    uid: int,
    size: int,
    received: int,
    expunged: bool = False,
    flags: Iterable[str] = (),
    keywords: Iterable[str] = (),
    origin: str | None = None,
) -> dict:
    """The fields of a ``message`` record: ``flags`` are ``layout.Flag`` values, ``keywords``
    any other IMAP keywords, ``origin`` the restore's idempotence key (docs/FORMAT.md section
    3). ``keywords`` and ``origin`` are written only when there are some (most messages have
    none, and readers take an absent key for empty)."""
    rec = {"mailbox_id": mailbox_id, "uid": uid, "size": size, "expunged": expunged, "received": received, "flags": list(flags)}
    keywords = list(keywords)
    if keywords:
        rec["keywords"] = keywords
    if origin is not None:
        rec["origin"] = origin
    return rec


def mailbox_record(*, name: str, uidvalidity: int, uidnext: int = 1, expunged: bool = False) -> dict:
    """The fields of a ``mailbox`` record."""
    return {"name": name, "uidvalidity": uidvalidity, "uidnext": uidnext, "expunged": expunged}


def queue_record(*, size: int, sender: str, recipient: str, queued: int) -> dict:
    """The fields of a queue ``msg`` record."""
    return {"size": size, "sender": sender, "recipient": recipient, "queued": queued}


class Lease:
    """The backup lease: a file in ``data/`` that backups lock shared and sweeps lock exclusive."""

    def __init__(self, data_dir: Path):
        self.path = data_dir / LEASE_FILE

    @contextmanager
    def exclusive_nowait(self) -> Iterator[bool]:
        """Yields whether the exclusive lock was taken; never waits."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            # A store without a lease file predates the protocol: nobody can be holding it.
            yield True
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Area:
    """What an account and the queue share: an index, a message tree, IDs and the sweep."""

    #: Name of the table of live records.
    records_table: bytes
    #: Name of the table of IDs being erased.
    erase_table: bytes
    #: All tables of the index.
    tables: tuple[str, ...]

    def __init__(self, store: Store, area_dir: Path, msg_dir: Path):
        self.store = store
        self.msg_dir = msg_dir
        self.env = open_env(area_dir / "index.db", durable=store.durable)
        self.db = {name: self.env.open_db(name.encode()) for name in self.tables}

    def close(self) -> None:
        self.env.close()

    def _alloc_ids(self, n: int = 1) -> int:
        """Reserves ``n`` consecutive IDs in their own transaction; returns the first."""
        with self.env.begin(write=True, db=self.db["meta"]) as txn:
            raw = txn.get(NEXT_ID_KEY)
            first = int.from_bytes(raw, "big") if raw else 1
            txn.put(NEXT_ID_KEY, (first + n).to_bytes(8, "big"))
        return first

    def message_path(self, id_: int) -> Path:
        """Full path of message ``id_``'s file."""
        return self.msg_dir / message_rel(id_)

    def _place(self, id_: int, data: bytes) -> None:
        """Writes ``data`` durably at ``path(id_)`` (tmp file, fsync, rename, fsync dir)."""
        tmp = self.store.data_dir / "tmp" / f"deliver.{os.getpid()}.{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self.store.durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        target = self.message_path(id_)
        if not target.parent.is_dir():
            target.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            if self.store.durable:
                _fsync_dir(target.parent.parent)
        os.rename(tmp, target)
        if self.store.durable:
            _fsync_dir(target.parent)

    def _discard(self, id_: int) -> None:
        """Removes the file of a record that was never committed."""
        try:
            os.unlink(self.message_path(id_))
        except FileNotFoundError:
            pass

    def erasing(self) -> list[int]:
        """IDs whose files are waiting to be removed."""
        with self.env.begin(db=self.db[self.erase_table.decode()]) as txn:
            return [key_id(k) for k in txn.cursor().iternext(values=False)]

    def sweep(self) -> int:
        """Removes the files of erased records, if no backup holds the lease; returns how many.

        Never waits: with a backup running it returns 0 and leaves everything for a later sweep.
        """
        pending = self.erasing()
        if not pending:
            return 0
        with self.store.lease.exclusive_nowait() as held:
            if not held:
                return 0
            dirs = set()
            for id_ in pending:
                path = self.message_path(id_)
                try:
                    os.unlink(path)
                    dirs.add(path.parent)
                except FileNotFoundError:
                    pass
            if self.store.durable:
                for d in dirs:
                    _fsync_dir(d)
            with self.env.begin(write=True, db=self.db[self.erase_table.decode()]) as txn:
                for id_ in pending:
                    txn.delete(id_key(id_))
        return len(pending)


class Account(_Area):
    """One account: mailboxes, messages, and their files under ``msg/``."""

    records_table = b"message"
    erase_table = b"message_erase"
    tables = AreaKind.ACCOUNT.layout.tables

    def __init__(self, store: Store, name: str):
        self.name = name
        area = store.data_dir / "accounts" / name
        super().__init__(store, area, area / "msg")

    def create_mailbox(self, name: str) -> int:
        """Adds the mailbox ``name`` and those of its ancestors no live mailbox is called (so
        ``Archive/2024`` also makes ``Archive``); returns its ID. Raises FormatError for a name
        ``layout.mailbox_name_problem`` refuses, or one a live mailbox already has."""
        id_, created = self._make_mailbox(name)
        if not created:
            raise FormatError(f"mailbox {name!r} exists")
        return id_

    def ensure_mailbox(self, name: str) -> int:
        """The ID of the live mailbox ``name``, created with its missing ancestors when there
        is none (see create_mailbox)."""
        return self._make_mailbox(name)[0]

    def _make_mailbox(self, name: str) -> tuple[int, bool]:
        """(ID of the live mailbox ``name``, whether this call created it), creating it and its
        missing ancestors. IDs are allocated first (their own transaction, as for every ID);
        then one transaction looks again and writes the records of the names still missing,
        so that a concurrent writer making the same mailbox leaves one live mailbox of each
        name. IDs it allocated for names another writer made meanwhile stay unused (gaps are
        allowed; reuse is not)."""
        problem = mailbox_name_problem(name)
        if problem is not None:
            raise FormatError(f"mailbox name {name!r} {problem}")
        wanted = [*mailbox_ancestors(name), name]
        live = self._live_mailbox_ids()
        if name in live:
            return live[name], False
        missing = [n for n in wanted if n not in live]
        first = self._alloc_ids(len(missing))
        pause("store.make_mailbox")
        uidvalidity = int(time.time()) & 0xFFFFFFFF or 1
        with self.env.begin(write=True, db=self.db["mailbox"]) as txn:
            live = self._live_mailbox_ids(txn)
            if name in live:
                return live[name], False
            for i, n in enumerate(missing):
                if n not in live:
                    live[n] = first + i
                    txn.put(id_key(first + i), pack(mailbox_record(name=n, uidvalidity=uidvalidity)))
        return live[name], True

    def _live_mailbox_ids(self, txn: lmdb.Transaction | None = None) -> dict[str, int]:
        """Live mailboxes' IDs by name (the first by ID when a store holds a name twice), read
        in ``txn`` or a read transaction of its own."""
        if txn is None:
            with self.env.begin(db=self.db["mailbox"]) as own:
                return self._live_mailbox_ids(own)
        out: dict[str, int] = {}
        for k, v in txn.cursor(db=self.db["mailbox"]):
            rec = unpack(v)
            if not rec["expunged"]:
                out.setdefault(rec["name"], key_id(k))
        return out

    def mailboxes(self) -> dict[int, dict]:
        """All mailbox records by ID."""
        with self.env.begin(db=self.db["mailbox"]) as txn:
            return {key_id(k): unpack(v) for k, v in txn.cursor()}

    def mailbox_id(self, name: str) -> int:
        """The ID of the live mailbox called ``name``; KeyError when there is none."""
        return self._live_mailbox_ids()[name]

    def deliver(
        self,
        mailbox_id: int,
        data: bytes,
        *,
        received: int | None = None,
        flags: Iterable[str] = (),
        keywords: Iterable[str] = (),
        origin: str | None = None,
    ) -> int:
        """Adds a message to a mailbox, crash-safely (see the module doc); returns its ID.
        ``received`` defaults to now; ``flags``, ``keywords`` and ``origin`` go into the record
        as given (see message_record)."""
        id_ = self._alloc_ids()
        self._place(id_, data)
        try:
            with self.env.begin(write=True) as txn:
                raw = txn.get(id_key(mailbox_id), db=self.db["mailbox"])
                if raw is None:
                    raise KeyError(f"no mailbox {mailbox_id}")
                mb = unpack(raw)
                if mb["expunged"]:
                    raise KeyError(f"mailbox {mailbox_id} is expunged")
                uid = mb["uidnext"]
                mb["uidnext"] = uid + 1
                txn.put(id_key(mailbox_id), pack(mb), db=self.db["mailbox"])
                when = int(time.time()) if received is None else received
                rec = message_record(mailbox_id=mailbox_id, uid=uid, size=len(data), received=when, flags=flags, keywords=keywords, origin=origin)
                txn.put(id_key(id_), pack(rec), db=self.db["message"])
        except BaseException:
            self._discard(id_)
            raise
        return id_

    def message(self, id_: int) -> dict:
        """One message record."""
        with self.env.begin(db=self.db["message"]) as txn:
            raw = txn.get(id_key(id_))
        if raw is None:
            raise KeyError(id_)
        return unpack(raw)

    def messages(self, *, expunged: bool = False) -> dict[int, dict]:
        """Message records by ID (live ones only unless ``expunged``)."""
        with self.env.begin(db=self.db["message"]) as txn:
            recs = ((key_id(k), unpack(v)) for k, v in txn.cursor())
            return {i: r for i, r in recs if expunged or not r["expunged"]}

    def expunge(self, ids: list[int]) -> int:
        """Marks messages expunged and schedules their files for removal (one transaction), then
        sweeps. Returns how many files the sweep removed now."""
        with self.env.begin(write=True) as txn:
            for id_ in ids:
                raw = txn.get(id_key(id_), db=self.db["message"])
                if raw is None:
                    raise KeyError(f"no message {id_}")
                rec = unpack(raw)
                if rec["expunged"]:
                    continue
                rec["expunged"] = True
                txn.put(id_key(id_), pack(rec), db=self.db["message"])
                txn.put(id_key(id_), b"", db=self.db["message_erase"])
        return self.sweep()

    def expunge_mailbox(self, mailbox_id: int) -> int:
        """Expunges a mailbox and every message in it; returns files removed now."""
        ids = [i for i, r in self.messages().items() if r["mailbox_id"] == mailbox_id]
        self.expunge(ids)
        with self.env.begin(write=True, db=self.db["mailbox"]) as txn:
            mb = unpack(txn.get(id_key(mailbox_id)))
            mb["expunged"] = True
            txn.put(id_key(mailbox_id), pack(mb))
        return self.sweep()


class Queue(_Area):
    """The outgoing queue: one record and one file per queued message."""

    records_table = b"msg"
    erase_table = b"msg_erase"
    tables = AreaKind.QUEUE.layout.tables

    def __init__(self, store: Store):
        area = store.data_dir / "queue"
        super().__init__(store, area, area)

    def enqueue(self, data: bytes, *, sender: str, recipient: str) -> int:
        """Queues a message, crash-safely like Account.deliver; returns its ID."""
        id_ = self._alloc_ids()
        self._place(id_, data)
        try:
            with self.env.begin(write=True, db=self.db["msg"]) as txn:
                txn.put(id_key(id_), pack(queue_record(size=len(data), sender=sender, recipient=recipient, queued=int(time.time()))))
        except BaseException:
            self._discard(id_)
            raise
        return id_

    def ids(self) -> list[int]:
        """IDs of queued messages."""
        with self.env.begin(db=self.db["msg"]) as txn:
            return [key_id(k) for k in txn.cursor().iternext(values=False)]

    def dequeue(self, id_: int) -> int:
        """Removes a message from the queue (delivered or bounced); returns files removed now."""
        with self.env.begin(write=True) as txn:
            if not txn.delete(id_key(id_), db=self.db["msg"]):
                raise KeyError(f"no queued message {id_}")
            txn.put(id_key(id_), b"", db=self.db["msg_erase"])
        return self.sweep()


class Store:
    """A mail store opened for writing. Use as a context manager, or call close()."""

    def __init__(self, root: Path, *, durable: bool = True):
        self.root = Path(root)
        self.config_dir = self.root / "config"
        self.data_dir = self.root / "data"
        self.durable = durable
        self.lease = Lease(self.data_dir)
        self._accounts: dict[str, Account] = {}
        self._queue: Queue | None = None

    @classmethod
    def create(cls, root: Path | str, *, durable: bool = True) -> Store:
        """Creates an empty store at ``root`` (which must not exist or be empty)."""
        root = Path(root)
        if root.exists() and any(root.iterdir()):
            raise FileExistsError(errno.EEXIST, "not empty", str(root))
        root.mkdir(mode=0o750, parents=True, exist_ok=True)
        config = root / "config"
        data = root / "data"
        for d in (config, data, data / "tmp", data / "queue", data / "accounts"):
            d.mkdir(mode=0o750)
        (config / CONFIG_FILE).write_text("# Accounts of this mail store, one [accounts.NAME] table each.\n")
        (data / "mailstore-version").write_text(f"{FORMAT_VERSION}\n")
        key = data / "receivedid.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(16))
        (data / LEASE_FILE).touch(mode=0o640)
        for name in AreaKind.DATA.layout.databases:
            open_env(data / name, durable=durable).close()
        store = cls(root, durable=durable)
        _ = store.queue  # creates queue/index.db with its tables
        return store

    @classmethod
    def open(cls, root: Path | str, *, durable: bool = True) -> Store:
        """Opens an existing store."""
        store = cls(Path(root), durable=durable)
        if not (store.config_dir / CONFIG_FILE).is_file() or not store.data_dir.is_dir():
            raise FormatError(f"{root}: not a mail store (no config/{CONFIG_FILE} or data/)")
        if not store.lease.path.exists():
            store.lease.path.touch(mode=0o640)
        return store

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Closes the account and queue databases opened so far."""
        for acc in self._accounts.values():
            acc.close()
        self._accounts.clear()
        if self._queue is not None:
            self._queue.close()
            self._queue = None

    def account_names(self) -> tuple[str, ...]:
        """Valid configured account names."""
        return read_config(self.config_dir).accounts

    def add_account(self, name: str, *, mailboxes: tuple[str, ...] = ("Inbox",)) -> Account:
        """Configures a new account, creates its index and mailboxes (nested names with their
        ancestors, each once)."""
        check_account_name(name)
        if name in self.account_names():
            raise FormatError(f"account {name!r} exists")
        config = self.config_dir / CONFIG_FILE
        text = config.read_text()
        tmp = config.with_name(config.name + ".tmp")
        tmp.write_text(text + f"\n[accounts.{toml_key(name)}]\n")
        os.replace(tmp, config)
        area = self.data_dir / "accounts" / name
        area.mkdir(mode=0o750)
        (area / "msg").mkdir(mode=0o750)
        acc = self.account(name)
        for mb in mailboxes:
            # ensure: a nested name listed after its ancestor (or before it) makes each once.
            acc.ensure_mailbox(mb)
        return acc

    def account(self, name: str) -> Account:
        """The open account ``name`` (one Account per store object, as LMDB requires)."""
        if name not in self._accounts:
            check_account_name(name)
            self._accounts[name] = Account(self, name)
        return self._accounts[name]

    def close_account(self, name: str) -> None:
        """Closes one account's environment (keeps memory flat when touching many accounts)."""
        acc = self._accounts.pop(name, None)
        if acc is not None:
            acc.close()

    @property
    def queue(self) -> Queue:
        """The open queue."""
        if self._queue is None:
            self._queue = Queue(self)
        return self._queue

"""mailbak ls: what a backup, a snapshot or a live store holds, at one of three levels.

Step by step:

1. ``check()`` opens PATH (catalog.Source: a backup, a snapshot, under its repository's shared
   lock, or a live store, under its lease) and, when an account is named, reads that account's
   index; an unknown account or mailbox is bad input (exit 2), its message listing the ones
   there are.
2. ``run()`` computes the listing:

   - no account: per account, its live messages and their bytes (the engine decodes the IDs and
     sizes, ``Source.live_ids``) and its mailboxes; no message file is read;
   - an account: its mailboxes as a tree of the ``/`` hierarchy (a level that is no mailbox
     itself is shown bare), each with its messages, unseen messages (no ``\\Seen``) and bytes,
     from the records;
   - an account and a mailbox: its messages in UID order, each with its record (ID, UID,
     received, size, flags and keywords) and the From, Subject, Date and Message-ID of its
     file's head, which the engine reads in parallel from the first 64 KiB of each file
     (``AccountView.heads``): the whole file is never read.

3. The command line prints the listing (cli.py): a table, its cells escaped (names and headers
   are the store owner's text), or one JSON object per line.

A message file that cannot be read (missing, a symlink, a FIFO, unreadable) is an error naming
the account, the message's ID and its path; the message is still listed with its record, and
the run ends failed (exit 1). Records that do not decode are errors too (they are not listed).

Not guaranteed: in a live store each account is read in its own read transaction, so a listing
of all accounts is not one instant of the whole store (catalog.py); a head is what the file said
when it was read.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from mailbak.catalog import AccountView, Mailbox, Message, Source
from mailbak.headers import Head
from mailbak.job import Metrics, Stage
from mailbak.layout import MAILBOX_SEPARATOR, SYSTEM_FLAGS, Flag
from mailbak.report import Reporter
from mailbak.status import Status

#: Heads read per call of the engine (see Ls._message_entries).
HEAD_BATCH = 10_000


@dataclass(frozen=True)
class AccountEntry:
    """One account, as ``ls PATH`` shows it."""

    name: str
    messages: int
    bytes: int
    mailboxes: int


@dataclass(frozen=True)
class MailboxEntry:
    """One level of an account's mailbox tree, as ``ls PATH ACCOUNT`` shows it: a mailbox, or
    (``mailbox`` None) a level of the hierarchy that is no mailbox itself."""

    #: The name's components (``Archive/2024``: ``("Archive", "2024")``).
    parts: tuple[str, ...]
    mailbox: Mailbox | None
    messages: int = 0
    unseen: int = 0
    bytes: int = 0

    @property
    def name(self) -> str:
        """The full name."""
        return MAILBOX_SEPARATOR.join(self.parts)


@dataclass(frozen=True, slots=True)
class MessageEntry:
    """One message, as ``ls PATH ACCOUNT MAILBOX`` shows it: its record and its head (None
    when its file could not be read: ``error`` says why)."""

    message: Message
    head: Head | None
    error: str | None = None


def mailbox_tree(mailboxes: list[Mailbox], messages: list[Message]) -> list[MailboxEntry]:
    """The mailbox tree of an account: every mailbox with its counts, and every level above one
    that is no mailbox itself, parents before children, siblings by name."""
    counts: dict[int, list[int]] = {mb.id: [0, 0, 0] for mb in mailboxes}
    for m in messages:
        c = counts.get(m.mailbox_id)
        if c is not None:
            c[0] += 1
            c[1] += Flag.SEEN not in m.flags
            c[2] += m.size
    by_parts: dict[tuple[str, ...], list[MailboxEntry]] = {}
    for mb in mailboxes:
        parts = tuple(mb.name.split(MAILBOX_SEPARATOR))
        n, unseen, size = counts[mb.id]
        by_parts.setdefault(parts, []).append(MailboxEntry(parts, mb, n, unseen, size))
    for parts in list(by_parts):
        for i in range(1, len(parts)):
            by_parts.setdefault(parts[:i], [MailboxEntry(parts[:i], None)])
    # A hostile store may hold two live mailboxes of one name: both are shown, by ID.
    return [e for parts in sorted(by_parts) for e in sorted(by_parts[parts], key=lambda e: e.mailbox.id if e.mailbox else -1)]


def local_time(ts: int) -> str:
    """Unix seconds as a local date and time, to the minute (a time no clock can show: "-")."""
    try:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))
    except (OverflowError, OSError, ValueError):
        return "-"


class Ls:
    """One run of ``mailbak ls`` (a job: job.py): see the module doc. Once run, one of
    ``accounts``, ``mailboxes`` or ``messages`` holds the listing, by level."""

    command: ClassVar[str] = "ls"
    file_kinds: ClassVar[tuple[str, ...]] = ()
    counts_bytes: ClassVar[bool] = False
    reports_failure: ClassVar[bool] = False

    def __init__(self, path: Path, account: str | None = None, mailbox: str | None = None, *, jobs: int = 2, reporter: Reporter | None = None):
        self.path = path
        self.account = account
        self.mailbox_name = mailbox
        self.jobs = jobs
        self.reporter = reporter or Reporter()
        self.source: Source | None = None
        self.view: AccountView | None = None
        self.accounts: list[AccountEntry] | None = None
        self.mailboxes: list[MailboxEntry] | None = None
        self.messages: list[MessageEntry] | None = None
        self.errors = 0
        #: Whether ``run()`` finished: only then is there a listing to print.
        self.done = False

    def check(self) -> None:
        """Opens PATH and the account; raises UsageError for a PATH that is no backup, snapshot
        or store, an unknown account or mailbox (naming the ones there are)."""
        self.source = Source.open(self.path, self.reporter)
        if self.account is not None:
            self.view = self.source.account(self.account)
            if self.mailbox_name is not None:
                self.view.mailbox(self.mailbox_name)

    def _error(self, code: str, path: str | None, detail: str) -> None:
        self.errors += 1
        self.reporter.error(code, path, detail)

    def _index_problems(self, view: AccountView) -> None:
        """The account's records that did not decode: errors (they are not listed)."""
        for code, detail in view.problems:
            self._error(code, f"data/{view.rel}/index.db", f"account {view.name!r}: {detail}; not listed")

    def run(self) -> Status:
        """Computes the listing of the level asked for."""
        assert self.source is not None
        if self.view is None:
            self.accounts = [self._account_entry(name) for name in self.source.accounts()]
        elif self.mailbox_name is None:
            self._index_problems(self.view)
            self.mailboxes = mailbox_tree(list(self.view.mailboxes.values()), self.view.messages)
        else:
            self._index_problems(self.view)
            self.messages = self._message_entries(self.view, self.view.mailbox(self.mailbox_name))
        self.done = True
        return Status.FAILED if self.errors else Status.OK

    def _account_entry(self, name: str) -> AccountEntry:
        """An account's counts, from its index alone."""
        assert self.source is not None
        ids, sizes = self.source.live_ids(name)
        with self.source.account(name, only=()) as view:
            return AccountEntry(name, len(ids), sum(sizes), len(view.mailboxes))

    def _message_entries(self, view: AccountView, mailbox: Mailbox) -> list[MessageEntry]:
        """The mailbox's messages in UID order, with their heads."""
        msgs = sorted((m for m in view.messages if m.mailbox_id == mailbox.id), key=lambda m: m.uid)
        # In batches: the raw fields of 100,000 heads at once, and the engine's buffers, were
        # 60 MB more at the peak.
        heads: list[Head | OSError] = []
        for at in range(0, len(msgs), HEAD_BATCH):
            heads.extend(view.heads([m.id for m in msgs[at : at + HEAD_BATCH]], jobs=self.jobs))
        out = []
        for m, h in zip(msgs, heads, strict=True):
            if isinstance(h, OSError):
                why = h.strerror or str(h)
                self._error("message_unreadable", f"data/{h.filename}", f"account {view.name!r}, message {m.id}: {why}")
                out.append(MessageEntry(m, None, why))
            else:
                out.append(MessageEntry(m, h))
        return out

    def facts(self, status: str) -> dict[str, Any]:
        """The status and how much was listed."""
        listed = self.accounts if self.accounts is not None else self.mailboxes if self.mailboxes is not None else self.messages
        return {"status": status, "listed": len(listed or ()), "errors": self.errors}

    def headline(self, status: Status) -> str:
        """The summary's title."""
        return f"ls of {self.path}"

    def table(self) -> list[tuple[str, ...]] | None:
        """The listing for people: a header and one row per entry (cells unescaped:
        report.format_table escapes them)."""
        if self.accounts is not None:
            return [("account", "messages", "bytes", "mailboxes"), *((a.name, str(a.messages), str(a.bytes), str(a.mailboxes)) for a in self.accounts)]
        if self.mailboxes is not None:
            rows: list[tuple[str, ...]] = [("mailbox", "messages", "unseen", "bytes")]
            for e in self.mailboxes:
                label = "  " * (len(e.parts) - 1) + e.parts[-1]
                rows.append((label, str(e.messages), str(e.unseen), str(e.bytes)) if e.mailbox else (label + MAILBOX_SEPARATOR, "", "", ""))
            return rows
        rows = [("id", "uid", "received", "size", "flags", "from", "subject", "date", "message-id")]
        # One text per distinct set of flags (the catalog shares their tuples).
        shown: dict[tuple[tuple[str, ...], tuple[str, ...]], str] = {}
        for e in self.messages or ():
            m, h = e.message, e.head
            flags = shown.get((m.flags, m.keywords))
            if flags is None:
                # System flags without their backslash, which the table would show doubled
                # (escaped); --json gives them as recorded.
                flags = shown[(m.flags, m.keywords)] = " ".join([f[1:] if f in SYSTEM_FLAGS else f for f in m.flags] + list(m.keywords))
            if h is None:
                rows.append((str(m.id), str(m.uid), local_time(m.received), str(m.size), flags, "-", f"(unreadable: {e.error})", "-", "-"))
            else:
                rows.append((str(m.id), str(m.uid), local_time(m.received), str(m.size), flags, h.from_, h.subject, h.date, h.message_id))
        return rows

    def objects(self) -> Iterator[dict[str, Any]]:
        """The listing for ``--json``: one object per entry, with its ``message_type`` (made
        one at a time: 100,000 at once would double the memory ls needs)."""
        if self.accounts is not None:
            for a in self.accounts:
                yield {"message_type": "account", "account": a.name, "messages": a.messages, "bytes": a.bytes, "mailboxes": a.mailboxes}
            return
        if self.mailboxes is not None:
            for e in self.mailboxes:
                obj: dict[str, Any] = {"message_type": "mailbox", "account": self.account, "name": e.name, "level": len(e.parts) - 1, "exists": e.mailbox is not None}
                if e.mailbox is not None:
                    obj.update({"id": e.mailbox.id, "uidvalidity": e.mailbox.uidvalidity, "messages": e.messages, "unseen": e.unseen, "bytes": e.bytes})
                yield obj
            return
        for e in self.messages or ():
            m, h = e.message, e.head
            obj = {"message_type": "message", "account": self.account, "mailbox": self.mailbox_name, "id": m.id, "uid": m.uid, "received": m.received, "size": m.size, "flags": list(m.flags), "keywords": list(m.keywords)}
            if h is None:
                obj["error"] = e.error
            else:
                obj.update({"from": h.from_, "to": h.to, "subject": h.subject, "date": h.date, "message_id": h.message_id})
            yield obj

    def close(self) -> None:
        """Releases the account's directories, PATH's lease and lock."""
        if self.view is not None:
            self.view.close()
            self.view = None
        if self.source is not None:
            self.source.close()
            self.source = None

    def left_behind(self, stage: Stage | None) -> str:
        """Listing changes nothing."""
        return "nothing was changed"

    def metrics(self, facts: dict[str, Any] | None) -> Metrics:
        """None (not monitored)."""
        return Metrics.none(type(self))

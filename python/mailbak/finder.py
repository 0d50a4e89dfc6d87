"""mailbak find: every message of a repository's history (or of one backup, snapshot or live
store) that matches the criteria, once, with the snapshots that hold it.

A message is identified across snapshots by (account, message ID, size): a store never reuses
an ID and message files are immutable, so the file a snapshot shares by hardlink with another
is the same message, and its head is parsed once, from the newest snapshot that holds it.

Step by step:

1. ``check()``: a repository is opened (repository.Repository) and its shared lock taken once
   for the whole run (a prune waits); its snapshots are taken newest first, those neither ok
   nor failed (incomplete, running) skipped with a warning. Any other PATH is opened alone
   (catalog.Source). Criteria are checked; an account or mailbox named that no source has is bad
   input (exit 2), its message listing the ones there are.
2. Candidates: per source and account, the live IDs and sizes, decoded by the engine
   (``Source.live_ids``); each distinct (ID, size) is remembered with the newest source holding
   it. Only ``--mailbox``, ``--since`` and ``--before`` need records here: then each source's
   account records are decoded too (``Source.account``), which costs several times more.
3. Heads: each candidate's head is read once, from its newest source, by the engine in batches
   (``AccountView.iter_heads``), and matched: ``--from``, ``--to``, ``--subject`` are
   case-insensitive substrings of the decoded field, ``--message-id`` is exact (angle brackets
   optional); all criteria must hold.
4. History: for the matches only, each source's records of their IDs (``Source.account(name,
   only=IDs)``): mailbox, UID, flags per snapshot, from which the first and last snapshot and
   the runs of mailboxes ("where it moved") follow.

A head that cannot be read (missing file, symlink, FIFO) is an error naming the account, the
ID and the path: that message cannot be matched, the run ends failed (exit 1), the rest is
searched. A snapshot that cannot be read is an error naming it.

Not guaranteed: a message whose file is damaged differently in two snapshots (same ID, same
size, different bytes: only a hostile store or a broken disk) shows the newest snapshot's head.
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from mailbak import _engine
from mailbak.catalog import DateArg, Source, timestamp_of
from mailbak.errors import UsageError
from mailbak.headers import Head
from mailbak.job import Metrics, Stage
from mailbak.layout import pack_ids, unpack_ids
from mailbak.report import Reporter
from mailbak.repository import RepoLock, Repository, is_repository
from mailbak.status import Status

#: Heads read per call of the engine: bounds the memory of a search of millions of messages.
HEAD_BATCH = 20_000


def bare_message_id(text: str) -> str:
    """A Message-ID as compared: surrounding whitespace and one pair of angle brackets off."""
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    return text


@dataclass(frozen=True)
class Criteria:
    """What a message must match (all that are set; none set: every message)."""

    account: str | None = None
    mailbox: str | None = None
    from_: str | None = None
    to: str | None = None
    subject: str | None = None
    message_id: str | None = None
    #: Received at or after, before (unix seconds).
    since: int | None = None
    before: int | None = None

    @classmethod
    def parse(cls, *, since: DateArg | None = None, before: DateArg | None = None, **kw: str | None) -> Criteria:
        """Criteria from the command line's text (the API's values: the dates as
        catalog.timestamp_of takes them); raises UsageError for a date that is none."""
        return cls(since=timestamp_of(since, "--since"), before=timestamp_of(before, "--before"), **kw)

    @property
    def needs_records(self) -> bool:
        """Whether candidates are chosen by their records (step 2 of the module doc)."""
        return self.mailbox is not None or self.since is not None or self.before is not None

    def matches(self, head: Head) -> bool:
        """Whether ``head`` matches the criteria on heads."""
        return self.matcher()(head)

    def matcher(self) -> Callable[[Head], bool]:
        """:meth:`matches` with the criteria prepared once, for matching many heads."""
        needles = [(i, text.casefold()) for i, text in ((0, self.from_), (1, self.to), (2, self.subject)) if text is not None]
        want = bare_message_id(self.message_id) if self.message_id is not None else None

        def match(head: Head) -> bool:
            # The wanted ID must be in the head's (one C search): most heads are out here.
            if want is not None and (want not in head.message_id or bare_message_id(head.message_id) != want):
                return False
            return all(needle in head[i].casefold() for i, needle in needles)

        return match


@dataclass(frozen=True)
class Sighting:
    """A match as one source holds it."""

    #: The source's label (a snapshot's name).
    source: str
    mailbox: str
    id: int
    uid: int
    flags: tuple[str, ...]


@dataclass
class Match:
    """A matching message and the sources holding it (newest first)."""

    account: str
    id: int
    size: int
    head: Head
    received: int | None = None
    seen: list[Sighting] = field(default_factory=list)

    def moves(self) -> list[tuple[str, str, str | None]]:
        """Where the message was, oldest first: (mailbox, first source, last source), runs of
        consecutive sources in one mailbox; the last run's end is None when it is still there
        in the newest source searched."""
        runs: list[tuple[str, str, str | None]] = []
        for s in reversed(self.seen):
            if runs and runs[-1][0] == s.mailbox:
                runs[-1] = (s.mailbox, runs[-1][1], s.source)
            else:
                runs.append((s.mailbox, s.source, s.source))
        return runs


def _without(values: array, positions: list[int]) -> bytes:
    """The bytes of ``values`` but those at ``positions`` (in order), copied in C."""
    view = memoryview(values)
    parts, start = [], 0
    for p in positions:
        parts.append(view[start:p])
        start = p + 1
    parts.append(view[start:])
    return b"".join(parts)


class Distinct:
    """The distinct messages of one account across sources (step 2 of the module doc), fed
    newest source first: for each ID, its size and the index of the newest source holding it;
    a same ID with another size in an older source (only in a hostile store) is another message,
    in ``apart``.

    Consecutive snapshots differ by a few messages (1% a day), so a source is compared with the
    one fed before it: the IDs added and removed are found by one merge in the engine
    (``diff_ids``), and the sizes of the rest must be equal position by position (compared as
    bytes in C); only the added are looked at in Python. When that does not hold (unsorted IDs,
    a size changed), every (ID, size) is compared with what is known, which costs ten times
    more."""

    def __init__(self) -> None:
        self.size: dict[int, int] = {}
        self.where: dict[int, int] = {}
        self.apart: dict[tuple[int, int], int] = {}
        self._prev: tuple[array, array] | None = None

    def add(self, k: int, ids: array, sizes: array) -> list[tuple[int, int]]:
        """Source ``k``'s IDs and their sizes (aligned, sorted by ID); returns the (ID, size)
        of the messages no newer source holds, whose newest source ``k`` therefore is (their
        heads can be read from it at once)."""
        prev = self._prev
        if prev is not None and ids == prev[0] and sizes == prev[1]:
            return []  # as in the source before (an account nobody wrote to)
        new: list[tuple[int, int]] = []
        if prev is None or not self._add_changes(k, ids, sizes, prev, new):
            new.clear()
            self._add_all(k, ids, sizes, new)
        self._prev = (ids, sizes)
        return new

    def _note(self, k: int, i: int, size: int, new: list[tuple[int, int]]) -> None:
        known = self.size.get(i)
        if known is None:
            self.size[i], self.where[i] = size, k
            new.append((i, size))
        elif known != size and (i, size) not in self.apart:
            self.apart[(i, size)] = k
            new.append((i, size))

    def _add_all(self, k: int, ids: array, sizes: array, new: list[tuple[int, int]]) -> None:
        got = dict(zip(ids, sizes, strict=True))
        if not self.size:
            self.size, self.where = got, dict.fromkeys(got, k)
            new.extend(got.items())
            return
        for i, size in got.items() - self.size.items():
            self._note(k, i, size, new)

    def _add_changes(self, k: int, ids: array, sizes: array, prev: tuple[array, array], new: list[tuple[int, int]]) -> bool:
        """The fast path (see the class doc); False when it does not apply."""
        pids, psizes = prev
        diff = _engine.diff_ids(pack_ids(ids), pack_ids(pids))
        if diff is None:
            return False
        at, gone = (list(unpack_ids(d)) for d in diff)
        if _without(sizes, at) != _without(psizes, gone):
            return False
        for p in at:
            self._note(k, ids[p], sizes[p], new)
        return True


class Find:
    """One run of ``mailbak find`` (a job: job.py): see the module doc. ``matches`` once run."""

    command: ClassVar[str] = "find"
    file_kinds: ClassVar[tuple[str, ...]] = ()
    counts_bytes: ClassVar[bool] = False
    reports_failure: ClassVar[bool] = False

    def __init__(self, path: Path, criteria: Criteria, *, jobs: int = 2, reporter: Reporter | None = None):
        self.path = path
        self.criteria = criteria
        self.jobs = jobs
        self.reporter = reporter or Reporter()
        self.lock: RepoLock | None = None
        #: The sources searched, newest first.
        self.sources: list[Source] = []
        #: Each source's accounts, by id() of the source.
        self._names: dict[int, tuple[str, ...]] = {}
        self.matches: list[Match] = []
        self.errors = 0
        #: Heads parsed (each distinct message once: the tests hold find to it).
        self.heads_read = 0
        #: The labels of the sources searched, newest first (kept after close()).
        self.labels: list[str] = []
        self.done = False

    # Step 1 -------------------------------------------------------------------------------------

    def check(self) -> None:
        """Opens the sources; raises UsageError for a PATH that is none, or an account or
        mailbox no source has."""
        if is_repository(self.path):
            repo = Repository.open(self.path)
            self.lock = RepoLock(self.path, exclusive=False, on_wait=self.reporter.message)
            for info in repo.snapshots():
                if info.status not in (Status.OK, Status.FAILED):
                    self.reporter.warn("snapshot_skipped", str(info.path), f"snapshot is {info.status}{f' ({info.detail})' if info.detail else ''}: not searched")
                    continue
                try:
                    self.sources.append(Source.open(info.path, self.reporter, lock=False))
                except UsageError as e:
                    self._error("snapshot_unreadable", str(info.path), f"not searched: {e}")
        else:
            self.sources.append(Source.open(self.path, self.reporter))
        self._check_names()

    def _check_names(self) -> None:
        """Refuses an account, or a mailbox of it, that no source has."""
        want = self.criteria.account
        if want is not None:
            every = {a for s in self.sources for a in self._all_accounts(s)}
            if want not in every:
                raise UsageError(f"no account {want!r} in {self.path} (accounts: {', '.join(map(repr, sorted(every))) or 'none'})")
        if self.criteria.mailbox is not None:
            names: set[str] = set()
            for src in self.sources:
                for account in self._accounts(src):
                    with src.account(account, only=()) as view:
                        names.update(mb.name for mb in view.mailboxes.values())
            if self.criteria.mailbox not in names:
                raise UsageError(f"no mailbox {self.criteria.mailbox!r} in {self.path}{f' (account {want!r})' if want else ''} (mailboxes: {', '.join(map(repr, sorted(names))) or 'none'})")

    def _all_accounts(self, src: Source) -> tuple[str, ...]:
        """The accounts of ``src`` (its config read once)."""
        names = self._names.get(id(src))
        if names is None:
            names = self._names[id(src)] = src.accounts()
        return names

    def _accounts(self, src: Source) -> tuple[str, ...]:
        """The accounts of ``src`` searched."""
        names = self._all_accounts(src)
        want = self.criteria.account
        return names if want is None else tuple(n for n in names if n == want)

    def _error(self, code: str, path: str | None, detail: str) -> None:
        self.errors += 1
        self.reporter.error(code, path, detail)

    # Steps 2 to 4 -------------------------------------------------------------------------------

    def run(self) -> Status:
        """Finds the candidates, reads their heads once, and the history of the matches."""
        distinct: dict[str, Distinct] = {}
        received: dict[tuple[str, int, int], int] = {}
        tasks = [(k, src, account) for k, src in enumerate(self.sources) for account in self._accounts(src)]
        found: dict[tuple[str, int, int], Match] = {}
        # Sources come newest first, so the messages a source is the first to hold are read
        # from it as soon as its index is: their heads are read here while the pool reads the
        # older indexes (steps 2 and 3 overlap: a search of 30 snapshots took the sum of both).
        for (k, src, account), got in zip(tasks, self._in_parallel(tasks, received), strict=True):
            if isinstance(got, UsageError):
                self._error("index_unreadable", None, f"{src.label}: account {account!r}: {got}")
                continue
            new = distinct.setdefault(account, Distinct()).add(k, *got)
            for m in self._match_heads(src, account, sorted(new)) if new else ():
                m.received = received.get((account, m.id, m.size))
                found[(account, m.id, m.size)] = m
        self._history(found)
        self.matches = sorted(found.values(), key=lambda m: (m.account, m.id, m.size))
        self.labels = [src.label for src in self.sources]
        self.done = True
        return Status.FAILED if self.errors else Status.OK

    def _in_parallel(self, tasks: list[tuple[int, Source, str]], received: dict[tuple[str, int, int], int]) -> Iterator[tuple[array, array] | UsageError]:
        """Step 2's reads (:meth:`_candidates`) of ``tasks``, in order, ``jobs`` at a time: the
        engine reads an index without holding the GIL, so the indexes of several snapshots are
        read at once (a few ahead only: each is 16 bytes a message)."""
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            ahead: deque[Future] = deque()
            pending = iter(tasks)
            while True:
                while len(ahead) < 2 * self.jobs and (task := next(pending, None)) is not None:
                    ahead.append(pool.submit(self._candidates, task[1], task[2], received))
                if not ahead:
                    return
                try:
                    yield ahead.popleft().result()
                except UsageError as e:
                    yield e

    def _candidates(self, src: Source, account: str, received: dict[tuple[str, int, int], int]) -> tuple[array, array]:
        """Step 2: the candidates of one account of one source: their IDs and sizes, by ID."""
        c = self.criteria
        if not c.needs_records:
            return src.live_ids(account)
        with src.account(account) as view:
            mailboxes = {mb.id for mb in view.mailboxes.values() if c.mailbox is None or mb.name == c.mailbox}
            ids, sizes = array("Q"), array("Q")
            for m in sorted(view.messages, key=lambda m: m.id):
                if m.mailbox_id in mailboxes and (c.since is None or m.received >= c.since) and (c.before is None or m.received < c.before):
                    ids.append(m.id)
                    sizes.append(m.size)
                    received[(account, m.id, m.size)] = m.received
            return ids, sizes

    def _match_heads(self, src: Source, account: str, msgs: list[tuple[int, int]]) -> Iterator[Match]:
        """Step 3: the heads of ``msgs`` (id, size) read from ``src``, those that match."""
        match = self.criteria.matcher()
        with src.account(account, only=()) as view:
            for (i, size), h in zip(msgs, view.iter_heads([i for i, _ in msgs], jobs=self.jobs, batch=HEAD_BATCH), strict=True):
                self.heads_read += 1
                if isinstance(h, OSError):
                    self._error("message_unreadable", f"data/{h.filename}", f"{src.label}: account {account!r}, message {i}: {h.strerror or h}; not searched")
                elif match(h):
                    yield Match(account, i, size, h)

    def _history(self, found: dict[tuple[str, int, int], Match]) -> None:
        """Step 4: each match's sightings, from the records of the matches alone."""
        by_account: dict[str, set[int]] = {}
        for account, i, _ in found:
            by_account.setdefault(account, set()).add(i)
        for src in self.sources:
            for account, ids in by_account.items():
                if account not in self._accounts(src):
                    continue
                try:
                    view = src.account(account, only=ids)
                except UsageError as e:
                    self._error("index_unreadable", None, f"{src.label}: account {account!r}: {e}")
                    continue
                with view:
                    for msg in view.messages:
                        m = found.get((account, msg.id, msg.size))
                        if m is not None:
                            m.seen.append(Sighting(src.label, view.mailboxes[msg.mailbox_id].name, msg.id, msg.uid, msg.flags + msg.keywords))
                            if m.received is None:
                                m.received = msg.received

    # Output -------------------------------------------------------------------------------------

    def facts(self, status: str) -> dict[str, Any]:
        """The status, what was searched and how much was found."""
        return {"status": status, "sources": len(self.sources), "matches": len(self.matches), "heads_read": self.heads_read, "errors": self.errors}

    def headline(self, status: Status) -> str:
        """The summary's title."""
        return f"find in {self.path}"

    def history_text(self, m: Match) -> str:
        """Where a match was, for people: ``Inbox (A..B), Archive/2026 (C..)``, the last run
        open when the newest source searched still holds it."""
        newest = self.labels[0] if self.labels else None
        parts = []
        for mailbox, first, last in m.moves():
            end = "" if last == newest else last
            parts.append(f"{mailbox} ({first}..{end})")
        return ", ".join(parts)

    def table(self) -> None:
        """None: the summary has no table (the listing is the result: :meth:`listing`)."""
        return None

    def listing(self) -> list[tuple[str, ...]]:
        """The matches for people: a header and one row each (cells unescaped:
        report.format_table escapes them)."""
        rows: list[tuple[str, ...]] = [("account", "message-id", "date", "from", "subject", "size", "first seen", "last seen", "snapshots", "mailboxes")]
        for m in self.matches:
            first = m.seen[-1].source if m.seen else "-"
            last = m.seen[0].source if m.seen else "-"
            rows.append((m.account, m.head.message_id, m.head.date, m.head.from_, m.head.subject, str(m.size), first, last, str(len(m.seen)), self.history_text(m)))
        return rows

    def objects(self) -> Iterator[dict[str, Any]]:
        """The matches for ``--json``: one ``match`` object each, its snapshots newest first."""
        return (
            {
                "message_type": "match",
                "account": m.account,
                "id": m.id,
                "size": m.size,
                "received": m.received,
                "message_id": m.head.message_id,
                "date": m.head.date,
                "from": m.head.from_,
                "to": m.head.to,
                "subject": m.head.subject,
                "first_seen": m.seen[-1].source if m.seen else None,
                "last_seen": m.seen[0].source if m.seen else None,
                "count": len(m.seen),
                "mailboxes": [{"mailbox": mb, "first": a, "last": b} for mb, a, b in m.moves()],
                "snapshots": [{"snapshot": s.source, "mailbox": s.mailbox, "id": s.id, "uid": s.uid, "flags": list(s.flags)} for s in m.seen],
            }
            for m in self.matches
        )

    def close(self) -> None:
        """Releases the sources and the repository's lock."""
        for src in self.sources:
            src.close()
        self.sources.clear()
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def left_behind(self, stage: Stage | None) -> str:
        """Searching changes nothing."""
        return "nothing was changed"

    def metrics(self, facts: dict[str, Any] | None) -> Metrics:
        """None (not monitored)."""
        return Metrics.none(type(self))

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
   account records are decoded in Python (``Source.account``), which costs several times more.
3. Heads: each candidate's head is read once, from its newest source, by the engine in batches
   (``AccountView.heads``), and matched: ``--from``, ``--to``, ``--subject`` are
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

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from mailbak.catalog import Source, parse_date
from mailbak.errors import UsageError
from mailbak.headers import Head
from mailbak.job import Metrics, Stage
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
    def parse(cls, *, since: str | None = None, before: str | None = None, **kw: str | None) -> Criteria:
        """Criteria from the command line's text; raises UsageError for a date that is none."""
        try:
            return cls(since=parse_date(since) if since else None, before=parse_date(before) if before else None, **kw)
        except ValueError as e:
            raise UsageError(str(e)) from e

    @property
    def needs_records(self) -> bool:
        """Whether candidates are chosen by their records (step 2 of the module doc)."""
        return self.mailbox is not None or self.since is not None or self.before is not None

    def matches(self, head: Head) -> bool:
        """Whether ``head`` matches the criteria on heads."""
        for want, got in ((self.from_, head.from_), (self.to, head.to), (self.subject, head.subject)):
            if want is not None and want.casefold() not in got.casefold():
                return False
        return self.message_id is None or bare_message_id(self.message_id) == bare_message_id(head.message_id)


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
            every = {a for s in self.sources for a in s.accounts()}
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

    def _accounts(self, src: Source) -> tuple[str, ...]:
        """The accounts of ``src`` searched."""
        names = src.accounts()
        want = self.criteria.account
        return names if want is None else tuple(n for n in names if n == want)

    def _error(self, code: str, path: str | None, detail: str) -> None:
        self.errors += 1
        self.reporter.error(code, path, detail)

    # Steps 2 to 4 -------------------------------------------------------------------------------

    def run(self) -> Status:
        """Finds the candidates, reads their heads once, and the history of the matches."""
        # Per account: each ID's size and the index of the newest source holding it; a same ID
        # with another size in an older source is another message (a hostile store): apart.
        sizes: dict[str, dict[int, int]] = {}
        where: dict[str, dict[int, int]] = {}
        apart: dict[str, dict[tuple[int, int], int]] = {}
        received: dict[tuple[str, int, int], int] = {}
        last: dict[str, dict[int, int]] = {}
        for k, src in enumerate(self.sources):
            for account in self._accounts(src):
                try:
                    got = self._candidates(src, account, received)
                except UsageError as e:
                    self._error("index_unreadable", None, f"{src.label}: account {account!r}: {e}")
                    continue
                if got == last.get(account):
                    continue  # as in the newer source (compared in C): nothing new
                last[account] = got
                known, at = sizes.setdefault(account, {}), where.setdefault(account, {})
                # (ID, size) pairs not met before, compared in C: new messages (1% a day
                # between snapshots), or a known ID with another size.
                for i, size in got.items() - known.items():
                    if i in known:
                        apart.setdefault(account, {}).setdefault((i, size), k)
                    else:
                        known[i], at[i] = size, k
        found: dict[tuple[str, int, int], Match] = {}
        for account, at in where.items():
            known = sizes[account]
            per_source: dict[int, list[tuple[int, int]]] = {}
            for i, k in at.items():
                per_source.setdefault(k, []).append((i, known[i]))
            for (i, size), k in apart.get(account, {}).items():
                per_source.setdefault(k, []).append((i, size))
            for k, msgs in sorted(per_source.items()):
                for m in self._match_heads(self.sources[k], account, sorted(msgs)):
                    m.received = received.get((account, m.id, m.size))
                    found[(account, m.id, m.size)] = m
        self._history(found)
        self.matches = sorted(found.values(), key=lambda m: (m.account, m.id, m.size))
        self.labels = [src.label for src in self.sources]
        self.done = True
        return Status.FAILED if self.errors else Status.OK

    def _candidates(self, src: Source, account: str, received: dict[tuple[str, int, int], int]) -> dict[int, int]:
        """Step 2: the candidates of one account of one source, {id: size}."""
        c = self.criteria
        if not c.needs_records:
            ids, sizes = src.live_ids(account)
            return dict(zip(ids, sizes, strict=True))
        with src.account(account) as view:
            mailboxes = {mb.id for mb in view.mailboxes.values() if c.mailbox is None or mb.name == c.mailbox}
            out = {}
            for m in view.messages:
                if m.mailbox_id in mailboxes and (c.since is None or m.received >= c.since) and (c.before is None or m.received < c.before):
                    out[m.id] = m.size
                    received[(account, m.id, m.size)] = m.received
            return out

    def _match_heads(self, src: Source, account: str, msgs: list[tuple[int, int]]) -> Iterator[Match]:
        """Step 3: the heads of ``msgs`` (id, size) read from ``src``, those that match."""
        with src.account(account, only=()) as view:
            for at in range(0, len(msgs), HEAD_BATCH):
                batch = msgs[at : at + HEAD_BATCH]
                heads = view.heads([i for i, _ in batch], jobs=self.jobs)
                self.heads_read += len(batch)
                for (i, size), h in zip(batch, heads, strict=True):
                    if isinstance(h, OSError):
                        self._error("message_unreadable", f"data/{h.filename}", f"{src.label}: account {account!r}, message {i}: {h.strerror or h}; not searched")
                    elif self.criteria.matches(h):
                        yield Match(account, i, size, h)

    def _history(self, found: dict[tuple[str, int, int], Match]) -> None:
        """Step 4: each match's sightings, from the records of the matches alone."""
        by_account: dict[str, set[int]] = {}
        for account, i, _ in found:
            by_account.setdefault(account, set()).add(i)
        for src in self.sources:
            for account, ids in by_account.items():
                if account not in src.accounts():
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

    def table(self) -> list[tuple[str, ...]] | None:
        """The matches for people: a header and one row each (cells unescaped:
        report.format_table escapes them)."""
        rows: list[tuple[str, ...]] = [("account", "message-id", "date", "from", "subject", "size", "first seen", "last seen", "snapshots", "mailboxes")]
        for m in self.matches:
            first = m.seen[-1].source if m.seen else "-"
            last = m.seen[0].source if m.seen else "-"
            rows.append((m.account, m.head.message_id, m.head.date, m.head.from_, m.head.subject, str(m.size), first, last, str(len(m.seen)), self.history_text(m)))
        return rows

    def objects(self) -> list[dict[str, Any]]:
        """The matches for ``--json``: one ``match`` object each, its snapshots newest first."""
        return [
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
        ]

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

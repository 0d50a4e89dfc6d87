"""mailbak restore --account: part of an account, from a backup, a snapshot or another store,
delivered anew into a LIVE store while the server runs. Additive only: existing mailboxes and
messages are never modified or deleted.

Step by step:

1. Check (bad input is exit 2, nothing written): STORE is a mail store (not a backup, not a
   repository, not PATH itself); PATH opens as a catalog source (catalog.py) with the account
   and the selection (mailboxes, recursive, since, before); the target account exists in STORE
   (or ``--create-account``); the prefix is a valid mailbox name.
2. Plan: every selected message gets its idempotence key (:func:`origin_key`: which backup or
   store, which account, which message ID) and its target mailbox ``PREFIX/<source name>``. The
   target account's live messages' ``origin`` values are read once; a message whose key is
   among them is "already there" and skipped. ``--dry-run`` stops here and shows the plan.
3. Deliver, in the calling thread, message after message: the source file is read (as root, or
   as the source store's owner: catalog.py), then delivered through the writer library
   (store.py: new ID, new UID, file before record) with its received time, flags, keywords and
   its key as ``origin``. Each target mailbox (and its missing ancestors) is created when the
   first message goes into it (an empty source mailbox: created empty).

As root, everything in STORE (opening its databases, creating files, directories, mailboxes,
the account) is done as the store's owner (identity.py), so that every file and record is
theirs and the kernel refuses what they could not do: a symlink they plant in ``data/tmp/`` or
in a message directory leads nowhere they could not write themselves. STORE is reached through
a descriptor (``/proc/self/fd/N``), so the owner needs no search permission above it. Source
files are read with root's identity in between (a backup's files need not be the owner's).

Errors that are values (the run goes on, exit 1): a source message that cannot be read or whose
size differs from its record, a source mailbox whose name the writer refuses (``..``, control
characters: its messages are not restored). Anything failing in STORE stops the run.

Not guaranteed: a run killed between a message's file and its record leaves that file as an
orphan (``mailbak verify`` warns of it; ``verify --fix`` moves it to ``data/moved/``); the message itself is
delivered by the next run. A key is only as good as the target's records: the store's owner can
forge ``origin`` values, and so make a restore skip messages of their own account. Messages
moved by the server after a first restore keep no ``origin`` unless the server copies it.
"""

from __future__ import annotations

import errno
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import lmdb

from mailbak import manifest
from mailbak.anchor import identity
from mailbak.catalog import AccountView, Message, Selection, Source
from mailbak.errors import UsageError
from mailbak.fsio import open_dir
from mailbak.identity import PROC_FD, StoreOwner, acting_as
from mailbak.job import Metrics, Stage
from mailbak.layout import CONFIG_FILE, FormatError, account_name_problem, mailbox_ancestors, mailbox_name_problem
from mailbak.report import Event, Reporter, rfc3339
from mailbak.repository import MARKER
from mailbak.runner import Runner
from mailbak.status import Status
from mailbak.store import Account, Store
from mailbak.testpause import pause, pause_at
from mailbak.text import escape_path, toml_key

#: The default prefix's first component; the source's time follows (:func:`default_prefix`).
RESTORED = "Restored"
#: How the default prefix writes the source's time (local time, as ``mailbak snapshots`` shows it).
PREFIX_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def default_prefix(started: float | None, now: float | None = None) -> str:
    """``Restored/<time>``: the backup's or snapshot's start in local time, as ``mailbak
    snapshots`` lists it; for a live store (no start) the time of this run."""
    when = started if started is not None else (time.time() if now is None else now)
    return f"{RESTORED}/{time.strftime(PREFIX_TIME_FORMAT, time.localtime(when))}"


def target_name(prefix: str, name: str) -> str:
    """The target mailbox of source mailbox ``name``: ``PREFIX/name``, or ``name`` itself for
    the empty prefix (``--into ''``: the original names)."""
    return f"{prefix}/{name}" if prefix else name


def source_identity(source: Source) -> str:
    """What identifies the source in keys, wherever it lies now: for a backup or a snapshot,
    the store it was made of and its start time (its manifest's: the same for a copy restored
    from off-site); for a live store, its path."""
    doc = source.manifest
    if doc is not None and isinstance(doc.get("started"), str):
        return f"{doc.get('store')}@{doc['started']}"
    return f"{os.path.realpath(source.path)}@{source.label}"


def origin_key(source_id: str, account: str, id_: int) -> str:
    """The idempotence key a restored message carries as ``origin``: a JSON array (source,
    account, source message ID), unambiguous whatever the names hold."""
    return json.dumps([source_id, account, id_], ensure_ascii=False, separators=(",", ":"))


def quoted(name: str) -> str:
    """A mailbox name in a message: escaped (text.escape_path) and in quotes."""
    return f"'{escape_path(name)}'"


def with_ancestors(name: str) -> list[str]:
    """``a``, ``a/b``, ``a/b/c`` for ``a/b/c``: what ``ensure_mailbox`` creates when missing."""
    return [*mailbox_ancestors(name), name]


@dataclass
class MailboxPlan:
    """One source mailbox: where it goes and what of it is restored."""

    #: The source mailbox's name and its target's.
    source: str
    target: str
    #: Why the writer refuses the target name (then nothing of it is restored), or None.
    problem: str | None
    #: Selected messages whose key is not in the target account yet, by ID.
    todo: list[tuple[Message, str]] = field(default_factory=list)
    #: Selected messages already in the target account (found by key).
    already_there: int = 0
    #: Whether the source mailbox holds no live message at all and no dates were given (it is
    #: restored as an empty mailbox).
    empty: bool = False
    #: Messages delivered, their bytes, and messages that could not be.
    restored: int = 0
    bytes: int = 0
    failed: int = 0

    @property
    def bytes_todo(self) -> int:
        """Bytes the plan delivers."""
        return sum(m.size for m, _ in self.todo)


class Redeliver:
    """One run of ``mailbak restore PATH STORE --account A`` (a job: job.py)."""

    command: ClassVar[str] = "restore"
    file_kinds: ClassVar[tuple[str, ...]] = ()
    counts_bytes: ClassVar[bool] = False
    reports_failure: ClassVar[bool] = False

    def __init__(
        self,
        path: Path,
        store: Path,
        *,
        account: str,
        selection: Selection,
        to_account: str | None = None,
        into: str | None = None,
        create_account: bool = False,
        dry_run: bool = False,
        reporter: Reporter,
        verbose: bool = False,
    ):
        self.path = path
        self.store_path = store
        self.account = account
        self.selection = selection
        self.to_account = to_account if to_account is not None else account
        self.into = into
        self.create_account = create_account
        self.dry_run = dry_run
        self.reporter = reporter
        self.verbose = verbose
        self.runner = Runner(reporter, verbose=verbose)
        #: The prefix in use (set by check()).
        self.prefix = ""
        self.source: Source | None = None
        self.view: AccountView | None = None
        #: STORE's descriptor, and the path naming it through that descriptor.
        self.store_fd: int | None = None
        self.held = store
        self.owner: StoreOwner | None = None
        self.target: Store | None = None
        self.target_account: Account | None = None
        #: Whether the target account is (or, dry run, would be) created by this run.
        self.account_missing = False
        self.account_created = False
        self.plans: list[MailboxPlan] = []
        #: Target mailbox names live in STORE when the run began, and those this run created.
        self.live_names: set[str] = set()
        self.created: list[str] = []
        #: Mailbox IDs of target names ensured so far.
        self.mailbox_ids: dict[str, int] = {}
        #: Messages delivered so far.
        self.delivered = 0

    # Checking -----------------------------------------------------------------------------

    def check(self) -> None:
        """Step 1 and the plan (step 2); raises UsageError."""
        pause("redeliver.check")
        self.check_names()
        self.hold_store()
        # Before anything opens either (LMDB forbids opening one environment twice in a process).
        if self.same_store():
            raise UsageError(f"{self.path} and {self.store_path} are the same store; restore from a backup or snapshot of it (`mailbak snapshots REPO` lists them), or into another store")
        self.source = Source.open(self.path, self.reporter)
        self.view = self.source.account(self.account)
        self.report_problems()
        selected = self.view.select(self.selection)
        self.prefix = self.into if self.into is not None else default_prefix(self.source.started)
        self.open_target()
        origins = self.read_origins()
        self.plans = self.make_plans(selected, origins)

    def report_problems(self) -> None:
        """Records of the source account that do not decode (catalog.py leaves them out): with
        the whole account asked for, each is an error (what it held is not restored); with
        mailboxes named, a warning (it may belong to another mailbox)."""
        assert self.source is not None
        index = f"{self.source.path}/data/{self.src.rel}/index.db"
        for code, detail in self.src.problems:
            if self.selection.mailboxes:
                self.reporter.warn(code, index, f"{detail}; not restored if it belongs to the mailboxes asked for")
            else:
                self.reporter.error(code, index, f"{detail}; not restored")

    @property
    def src(self) -> AccountView:
        """The source account (once check() opened it)."""
        assert self.view is not None, "used before check()"
        return self.view

    def same_store(self) -> bool:
        """Whether PATH is STORE, or has STORE's ``data/`` (by identity: a symlink or a bind
        mount gives one directory a second path)."""
        pairs = ((self.path, self.held), (self.path / "data", self.held / "data"))
        for a, b in pairs:
            try:
                if identity(os.stat(a)) == identity(os.stat(b)):
                    return True
            except OSError:
                continue
        return False

    def check_names(self) -> None:
        """The target account's name and the prefix (the operator's): valid, or bad usage."""
        problem = account_name_problem(self.to_account)
        if problem is not None:
            raise UsageError(f"account name {quoted(self.to_account)} {problem}")
        if self.into:
            problem = mailbox_name_problem(self.into)
            if problem is not None:
                raise UsageError(f"--into {quoted(self.into)}: not a usable mailbox name: {problem}")

    def hold_store(self) -> None:
        """Opens STORE (the operator's path, followed) and refuses a backup or a repository."""
        try:
            self.store_fd = open_dir(self.store_path, follow=True)
        except OSError as e:
            raise UsageError(f"{self.store_path}: cannot open: {e.strerror}") from e
        self.held = PROC_FD / str(self.store_fd) if PROC_FD.is_dir() else self.store_path
        if os.path.lexists(self.held / manifest.MANIFEST):
            raise UsageError(f"{self.store_path}: a backup, not a live store; restore --account writes into a store a mail server uses (to put a whole backup back as a new store, leave out --account)")
        if os.path.lexists(self.held / MARKER):
            raise UsageError(f"{self.store_path}: a repository, not a live store; restore --account writes into a store a mail server uses")

    def open_target(self) -> None:
        """Opens STORE with the writer library, as its owner, and the target account when it
        exists; a missing one is bad usage unless ``--create-account``."""
        self.owner = StoreOwner.of(self.held / "data")
        with acting_as(self.owner):
            try:
                self.target = Store.open(self.held)
                names = self.target.account_names()
            except FormatError as e:
                raise UsageError(f"{self.store_path}: not a mail store: {self.unheld(str(e))}") from e
            except OSError as e:
                raise UsageError(f"{self.store_path}: cannot open: {e.strerror}") from e
            if self.to_account not in names:
                if not self.create_account:
                    have = ", ".join(escape_path(n) for n in names) or "none"
                    raise UsageError(f"account {escape_path(self.to_account)} is not in {self.store_path} (accounts: {have}); add it to the server first, or pass --create-account")
                self.account_missing = True
                return
            try:
                self.target_account = self.target.account(self.to_account)
                self.live_names = {r["name"] for r in self.target_account.mailboxes().values() if not r.get("expunged")}
            except (lmdb.Error, OSError) as e:
                raise UsageError(f"{self.store_path}: account {escape_path(self.to_account)}: cannot open its index: {e}") from e

    def read_origins(self) -> set[str]:
        """The ``origin`` values of the target account's live messages (read once)."""
        if self.target_account is None:
            return set()
        with acting_as(self.owner):
            recs = self.target_account.messages()
        return {r["origin"] for r in recs.values() if isinstance(r.get("origin"), str)}

    def make_plans(self, selected: list[Message], origins: set[str]) -> list[MailboxPlan]:
        """One plan per selected source mailbox, in name order; messages in ID order."""
        assert self.source is not None
        source_id = source_identity(self.source)
        by_mailbox: dict[int, list[Message]] = {}
        for m in selected:
            by_mailbox.setdefault(m.mailbox_id, []).append(m)
        # An empty source mailbox comes back as an empty mailbox, unless dates select messages
        # (then "empty" is only "nothing in the dates").
        dated = self.selection.since is not None or self.selection.before is not None
        holding = {m.mailbox_id for m in self.src.messages}
        plans = []
        for mb in self.src.selected_mailboxes(self.selection):
            mid, name = mb.id, mb.name
            target = target_name(self.prefix, name)
            plan = MailboxPlan(name, target, mailbox_name_problem(target), empty=not dated and mid not in holding)
            for m in sorted(by_mailbox.get(mid, []), key=lambda m: m.id):
                key = origin_key(source_id, self.account, m.id)
                if key in origins:
                    plan.already_there += 1
                else:
                    plan.todo.append((m, key))
            plans.append(plan)
        return sorted(plans, key=lambda p: p.source)

    # Running ------------------------------------------------------------------------------

    def run(self) -> Status:
        """Step 3 (nothing with --dry-run but the plan's lines)."""
        todo = sum(len(p.todo) for p in self.plans)
        if self.dry_run:
            self.show_plan()
            return Status.OK
        self.runner.new_phase("restore", todo)
        if self.account_missing:
            self.add_account()
        for plan in self.plans:
            self.restore_mailbox(plan)
        self.runner.finish()
        if self.created:
            self.reporter.message(f"created mailboxes in {escape_path(self.to_account)}: {', '.join(quoted(n) for n in self.created)}")
        return Status.FAILED if self.reporter.counts.errors else Status.OK

    def add_account(self) -> None:
        """``--create-account``: configures the target account (store.py's add_account) and says
        what it added."""
        assert self.target is not None
        with acting_as(self.owner):
            self.target_account = self.target.add_account(self.to_account, mailboxes=())
        self.account_created = True
        self.reporter.message(
            f"created account {escape_path(self.to_account)}: added [accounts.{escape_path(toml_key(self.to_account))}] to "
            f"{self.store_path}/config/{CONFIG_FILE} and its directory data/accounts/{escape_path(self.to_account)}/; "
            "the mail server may need its own configuration of the account too"
        )

    def restore_mailbox(self, plan: MailboxPlan) -> None:
        """Delivers one mailbox's plan; a refused name is one error for all its messages."""
        if plan.problem is not None:
            self.refuse(plan)
            return
        if plan.empty and not plan.todo:
            self.ensure(plan.target)
        for message, key in plan.todo:
            self.restore_message(plan, message, key)

    def refuse(self, plan: MailboxPlan) -> None:
        """A source mailbox whose target name the writer refuses: one error, none of its
        messages restored."""
        plan.failed = len(plan.todo)
        self.reporter.error(
            "mailbox_name",
            None,
            f"account {escape_path(self.account)}: mailbox {quoted(plan.source)} cannot be restored as {quoted(plan.target)} ({plan.problem}); its {len(plan.todo)} messages {'would not be' if self.dry_run else 'were not'} restored",
        )

    def restore_message(self, plan: MailboxPlan, m: Message, key: str) -> None:
        """Reads one source message (as root, or as the source store's owner) and delivers it
        (as the target's owner); an unreadable source file is an error value."""
        assert self.target_account is not None
        where = f"account {escape_path(self.account)}, mailbox {quoted(plan.source)}, message {m.id}"
        try:
            data = self.src.read_message(m.id, m.size)
        except OSError as e:
            plan.failed += 1
            self.reporter.error("unreadable", e.filename, f"{where}: {e.strerror or e}; not restored")
            return
        if len(data) != m.size:
            plan.failed += 1
            self.reporter.error("size", None, f"{where}: the file holds {len(data)} bytes, its record says {m.size}; not restored")
            return
        try:
            mailbox_id = self.ensure(plan.target)
            with acting_as(self.owner):
                new = self.target_account.deliver(mailbox_id, data, received=m.received, flags=m.flags, keywords=m.keywords, origin=key)
        except KeyError:
            # Someone removed the target mailbox while the restore ran: not made again against
            # their will; the next run would.
            plan.failed += 1
            self.reporter.error("mailbox_gone", None, f"{where}: the target mailbox {quoted(plan.target)} was removed while the restore ran; not restored")
            return
        except OSError as e:
            # Ends the run (STORE fails): named as the operator named STORE, not by its descriptor.
            if isinstance(e.filename, str):
                e.filename = self.unheld(e.filename)
            raise
        except lmdb.Error as e:
            index = f"{self.store_path}/data/accounts/{escape_path(self.to_account)}/index.db"
            raise OSError(errno.EIO, f"the account's index cannot be written: {e}", index) from e
        self.delivered += 1
        plan.restored += 1
        plan.bytes += len(data)
        if self.verbose:
            self.reporter.event(Event("info", "restored", None, f"{where} -> {quoted(plan.target)} as message {new}"))
        self.runner.step()
        pause_at("redeliver.delivered", self.delivered)

    def ensure(self, name: str) -> int:
        """The ID of target mailbox ``name``, created (with missing ancestors) the first time."""
        assert self.target_account is not None
        if name not in self.mailbox_ids:
            with acting_as(self.owner):
                self.mailbox_ids[name] = self.target_account.ensure_mailbox(name)
            for n in with_ancestors(name):
                if n not in self.live_names:
                    self.live_names.add(n)
                    self.created.append(n)
        return self.mailbox_ids[name]

    def show_plan(self) -> None:
        """--dry-run: the mailboxes that would be created (the table shows the counts); with
        --verbose, each message that would be restored."""
        if self.account_missing:
            self.reporter.message(f"would create account {escape_path(self.to_account)} (--create-account)")
        for plan in self.plans:
            if plan.problem is not None:
                self.refuse(plan)
                continue
            if plan.todo or plan.empty:
                self.created.extend(n for n in with_ancestors(plan.target) if n not in self.live_names and n not in self.created)
            if self.verbose:
                for m, _ in plan.todo:
                    self.reporter.event(Event("info", "would_restore", None, f"mailbox {quoted(plan.source)}, message {m.id} (UID {m.uid}, {m.size} bytes, received {rfc3339(m.received)}) -> {quoted(plan.target)}"))
        if self.created:
            self.reporter.message(f"would create mailboxes in {escape_path(self.to_account)}: {', '.join(quoted(n) for n in self.created)}")

    # Results ------------------------------------------------------------------------------

    def unheld(self, text: str) -> str:
        """``text`` with STORE's descriptor path replaced by STORE as the operator named it."""
        return text.replace(str(self.held), str(self.store_path)) if self.held != self.store_path else text

    def facts(self, status: str) -> dict[str, Any]:
        """The summary's facts: counts of messages (restored, already there, not restored), bytes,
        the mailboxes created, the target account and the prefix."""
        would = self.dry_run
        return {
            "status": status,
            "source": str(self.path),
            "store": str(self.store_path),
            "account": self.account,
            "to_account": self.to_account,
            "prefix": self.prefix,
            "dry_run": would,
            "restored": sum(len(p.todo) for p in self.plans if p.problem is None) if would else self.delivered,
            "already_there": sum(p.already_there for p in self.plans),
            "not_restored": sum(p.failed for p in self.plans),
            "bytes": sum(p.bytes_todo for p in self.plans if p.problem is None) if would else sum(p.bytes for p in self.plans),
            "mailboxes_created": list(self.created),
            "account_created": self.account_created or (would and self.account_missing),
            "warnings": self.reporter.counts.warnings,
            "errors": self.reporter.counts.errors,
        }

    def headline(self, status: Status) -> str:
        """The summary's title."""
        into = f"{self.to_account} of {self.store_path}"
        if self.dry_run:
            return f"restore (dry run, nothing written) {status}: {self.account} from {self.path} would go into {into}"
        return f"restore {status}: {self.account} from {self.path} into {into}"

    def table(self) -> list[tuple[str, ...]]:
        """One row per source mailbox: its target, messages restored (or to restore), already
        there, not restored, bytes."""
        verb = "to restore" if self.dry_run else "restored"
        rows: list[tuple[str, ...]] = [("", "into", verb, "already there", "not restored", "bytes")]
        for p in self.plans:
            n, b = (len(p.todo), p.bytes_todo) if self.dry_run and p.problem is None else (p.restored, p.bytes)
            rows.append((p.source, p.target, str(n), str(p.already_there), str(p.failed), str(b)))
        if len(self.plans) > 1:
            f = self.facts(Status.OK)
            rows.append(("total", "", str(f["restored"]), str(f["already_there"]), str(f["not_restored"]), str(f["bytes"])))
        return rows

    def left_behind(self, stage: Stage | None) -> str:
        """A run stopped early leaves the messages delivered so far; running it again finishes
        the restore without duplicates."""
        if self.dry_run or (stage is not None and stage.stage == "check"):
            return "nothing was written"
        if stage is not None and stage.stage == "summary":
            return f"the restore itself finished ({stage.status}); only its summary was cut short"
        return f"{self.delivered} messages were restored so far; run the same restore again to finish it (it skips them)"

    def metrics(self, facts: dict[str, Any] | None) -> Metrics:
        """None of its own (restore takes no --metrics-file)."""
        return Metrics.none(type(self))

    def close(self) -> None:
        """Closes the source, the target store and STORE's descriptor; harmless when called
        again."""
        if self.view is not None:
            self.view.close()
            self.view = None
        if self.source is not None:
            self.source.close()
            self.source = None
        if self.target is not None:
            self.target.close()
            self.target = None
            self.target_account = None
        if self.store_fd is not None:
            os.close(self.store_fd)
            self.store_fd = None

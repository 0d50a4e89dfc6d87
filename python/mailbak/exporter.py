"""``mailbak export``: one account's mailboxes, from a backup, a snapshot or a live store, as
a tree of Maildirs or mbox files other mail software reads (mailformat.py has the formats,
the file names and the escaping of mailbox names).

1. ``check()``: opens PATH (catalog.Source; a snapshot under the repository's shared lock)
   and the account, selects the messages (``--mailbox``, ``--recursive``, ``--since``,
   ``--before``); an unknown account or mailbox is bad usage naming what exists. OUT must be
   new or an empty directory (destdir.check_destination), not inside PATH; it is reached from
   ``/`` without following a symlink and held (destdir.hold_parent, hold_new): as root it is
   root's, mode 0700, while it is written, so nobody can plant a link in it. All of it: exit
   2, nothing written.
2. ``run()``: mailbox by mailbox (by name: a hostile store's two live mailboxes of one name
   are one folder), the selected mailboxes all made, those without selected messages empty;
   each message copied from its file (Maildir: in the kernel, the bytes unchanged; mbox: read,
   quoted, flags as headers). A message whose file is missing or unreadable is an error value
   naming the account, mailbox, ID and path; the rest is exported and the run ends failed
   (exit 1). Every file and directory is created new, relative to held descriptors, and given
   to the owner (``--owner``, else the running user) as it is made; OUT itself last.

Not guaranteed: an export stopped midway (Ctrl-C; a full or read-only OUT, which stops the
run: exit 1) leaves OUT incomplete (the message says so: delete it and export again). Keywords neither format can hold are left out
with a warning per mailbox (mailformat.py). Flags a live store changes during the export are
those of the read transaction the catalog took.
"""

from __future__ import annotations

import os
import pwd
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from mailbak.anchor import inside
from mailbak.catalog import AccountView, Message, Selection, Source
from mailbak.destdir import HeldDir, check_destination, hold_new, hold_parent
from mailbak.errors import FATAL_ERRNOS, DestinationFull, UsageError
from mailbak.job import Metrics, Stage, interrupted_hint
from mailbak.mailformat import MaildirFolder, MailFormat, MboxFile, Tree, relpath
from mailbak.report import Event, Reporter
from mailbak.runner import Runner
from mailbak.status import Status
from mailbak.testpause import pause
from mailbak.text import escape_path


def resolve_owner(user: str | None) -> tuple[int, int] | None:
    """(uid, gid) that ``--owner USER`` (a name or a number) gives every exported file, or
    None: the running user's, as created. Only root can give files away: run as another user,
    USER must be that user. Raises UsageError."""
    if user is None:
        return None
    try:
        pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except (KeyError, ValueError):
        raise UsageError(f"--owner {escape_path(user)}: no such user") from None
    if os.geteuid() != 0:
        if pw.pw_uid != os.geteuid():
            raise UsageError(f"--owner {escape_path(user)}: only root can export files owned by another user")
        return None
    return (pw.pw_uid, pw.pw_gid)


@dataclass
class Folder:
    """One folder to write: a mailbox name and its selected messages."""

    name: str
    messages: list[Message]


class Export:
    """One run of ``mailbak export`` (a job: job.py)."""

    command: ClassVar[str] = "export"
    file_kinds: ClassVar[tuple[str, ...]] = ("messages",)
    counts_bytes: ClassVar[bool] = True
    reports_failure: ClassVar[bool] = False

    def __init__(self, path: Path, out: Path, *, account: str, selection: Selection, fmt: MailFormat, owner: str | None, reporter: Reporter, verbose: bool = False):
        self.path = path
        self.out = out
        self.account = account
        self.selection = selection
        self.fmt = fmt
        self.owner_name = owner
        self.reporter = reporter
        self.verbose = verbose
        self.runner = Runner(reporter, verbose=verbose)
        self.owner: tuple[int, int] | None = None
        self.source: Source | None = None
        self.view: AccountView | None = None
        #: OUT, held while it is written (set by check()).
        self.held: HeldDir | None = None
        self.folders: list[Folder] = []
        self.counts = {"messages": 0, "bytes": 0, "mailboxes": 0}

    # Phase 1 ----------------------------------------------------------------------------------

    def check(self) -> None:
        """Step 1; raises UsageError."""
        self.owner = resolve_owner(self.owner_name)
        self.source = Source.open(self.path, self.reporter)
        self.view = self.source.account(self.account)
        messages = self.view.select(self.selection)
        for code, detail in self.view.problems:
            self.reporter.error(code, None, f"account {escape_path(self.account)}: {escape_path(detail)}; not exported")
        self.folders = self.plan(messages)
        check_destination(self.out, "export")
        if inside(self.out, [self.path]) or (os.path.lexists(self.out) and inside(self.path, [self.out])):
            raise UsageError(f"{self.out}: the output is inside {self.path} (or holds it); export elsewhere")
        parent = hold_parent(self.out, "the output directory")
        try:
            self.held, _existed = hold_new(parent, self.out)
        except OSError as e:
            raise UsageError(f"{self.out}: cannot write: {e.strerror}") from e
        finally:
            parent.close()
        pause("export.held")

    def plan(self, messages: list[Message]) -> list[Folder]:
        """The folders to write, by name: every selected mailbox (an empty one too), with its
        messages by UID."""
        assert self.view is not None
        wanted = {mb.name for mb in self.view.selected_mailboxes(self.selection)}
        by_name: dict[str, list[Message]] = defaultdict(list)
        for name in wanted:
            by_name[name] = []
        for msg in messages:
            # The catalog keeps only messages of live mailboxes (the others are its problems).
            by_name[self.view.mailboxes[msg.mailbox_id].name].append(msg)
        return [Folder(name, sorted(msgs, key=lambda m: (m.uid, m.id))) for name, msgs in sorted(by_name.items())]

    # Phase 2 ----------------------------------------------------------------------------------

    def run(self) -> Status:
        """Step 2; ok, or failed when a message or mailbox could not be exported."""
        assert self.held is not None and self.held.fd is not None
        tree = Tree(self.held.fd, self.owner)
        self.runner.new_phase("export", sum(len(f.messages) for f in self.folders))
        for folder in self.folders:
            try:
                self.write_folder(tree, folder)
            except OSError as e:
                self.stop_if_full(e)
                self.reporter.error("mailbox", str(self.out / relpath(folder.name, self.fmt)), f"account {escape_path(self.account)}, mailbox {escape_path(folder.name)}: cannot write it: {e.strerror}; its messages not exported")
        self.runner.finish()
        if self.owner is not None:
            os.fchown(self.held.fd, *self.owner)
        os.fsync(self.held.fd)
        return Status.FAILED if self.reporter.counts.errors else Status.OK

    def write_folder(self, tree: Tree, folder: Folder) -> None:
        """One mailbox's folder and its messages. Raises OSError when the folder itself cannot
        be made (a message that cannot be read or written is an error value)."""
        writer: MaildirFolder | MboxFile
        writer = MaildirFolder(tree, folder.name) if self.fmt is MailFormat.MAILDIR else MboxFile(tree, folder.name)
        with writer:
            self.counts["mailboxes"] += 1
            for msg in folder.messages:
                try:
                    self.counts["bytes"] += self.write_message(writer, msg)
                    self.counts["messages"] += 1
                    if self.verbose:
                        self.reporter.event(Event("info", "exported", os.fsencode(writer.rel), f"message {msg.id}"))
                except OSError as e:
                    self.stop_if_full(e)
                    self.message_error(folder.name, msg, e)
                self.runner.step()
        if writer.dropped:
            words = ", ".join(escape_path(d) for d in writer.dropped)
            self.reporter.warn("keywords", writer.rel, f"account {escape_path(self.account)}, mailbox {escape_path(folder.name)}: flags or keywords the {self.fmt} format cannot hold were left out: {words}")

    def write_message(self, writer: MaildirFolder | MboxFile, msg: Message) -> int:
        """Copies one message; returns the bytes written. Raises OSError."""
        assert self.view is not None
        if isinstance(writer, MboxFile):
            data = self.view.read_message(msg.id)
            return writer.add(data, received=msg.received, flags=msg.flags, keywords=msg.keywords)
        src = self.view.open_message(msg.id)
        try:
            return writer.add(src, os.fstat(src).st_size, id_=msg.id, received=msg.received, flags=msg.flags, keywords=msg.keywords)
        finally:
            os.close(src)

    def stop_if_full(self, e: OSError) -> None:
        """A full (or read-only) OUT stops the run: every further message would fail too."""
        if e.errno in FATAL_ERRNOS:
            raise DestinationFull(f"{self.out}: {e.strerror}", "the output directory cannot take more data") from e

    def message_error(self, mailbox: str, msg: Message, e: OSError) -> None:
        """A message that could not be exported, as an error value naming it."""
        path = e.filename if isinstance(e.filename, (str, bytes)) else None
        self.reporter.error("message", path, f"account {escape_path(self.account)}, mailbox {escape_path(mailbox)}, message {msg.id}: {e.strerror or e}; not exported")

    # The rest of the protocol -------------------------------------------------------------------

    def close(self) -> None:
        """Releases the account, the source (and a repository's lock) and OUT's descriptor."""
        if self.view is not None:
            self.view.close()
            self.view = None
        if self.source is not None:
            self.source.close()
            self.source = None
        if self.held is not None:
            self.held.close()
            self.held = None

    def facts(self, status: str) -> dict[str, Any]:
        """The summary's facts: messages, bytes, mailboxes written, warnings, errors."""
        return {
            "status": status,
            "path": str(self.path),
            "account": self.account,
            "format": str(self.fmt),
            "out": str(self.out),
            **self.counts,
            "warnings": self.reporter.counts.warnings,
            "errors": self.reporter.counts.errors,
        }

    def headline(self, status: Status) -> str:
        """The summary's title."""
        return f"export {status}: {escape_path(self.account)} to {self.out}"

    def table(self) -> list[tuple[str, ...]]:
        """The counts."""
        return [("", "count"), *((k, str(v)) for k, v in self.counts.items()), ("errors", str(self.reporter.counts.errors))]

    def left_behind(self, stage: Stage | None) -> str:
        """An export stopped early leaves an incomplete OUT."""
        return interrupted_hint(stage, self.out, "export") or f"{self.out} is incomplete; delete it and export again"

    def metrics(self, facts: dict[str, Any] | None) -> Metrics:
        """Messages exported and their bytes."""
        if not facts:
            return Metrics.none(type(self))
        return Metrics({"messages": facts.get("messages", 0)}, bytes_copied=facts.get("bytes", 0))

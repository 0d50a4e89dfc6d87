"""Writers of the two formats other mail software reads: a tree of Maildirs and mbox files
(``mailbak export``). Pure writers: they take a held output directory and, per message, its
bytes (mbox) or a descriptor to copy them from (Maildir), its flags, keywords and received
time; choosing and reading the messages is exporter.py's.

Layout below OUT (a mailbox name's components, ``/``-separated, each escaped by
:func:`escape_component`):

- Maildir (:class:`MaildirFolder`): ``OUT/Archive/2024/{cur,new,tmp}``, one maildir per
  mailbox in a tree mirroring the hierarchy, as Dovecot's ``LAYOUT=fs`` reads it (and
  ``mox import maildir``, one maildir at a time). Names are UTF-8 on disk (Dovecot needs
  ``UTF-8`` in ``mail_location``, else it expects modified UTF-7). Mox's inbox ``Inbox`` is
  ``OUT/Inbox``: Dovecot needs ``INBOX=OUT/Inbox`` in ``mail_location`` to take it as its
  INBOX (``maildir:OUT:LAYOUT=fs:UTF-8:INBOX=OUT/Inbox``). A message is
  ``cur/<received>.I<ID>.mailbak,S=<size>:2,<letters>``: mox import takes the received time
  from the name's first dot-separated part, Dovecot checks ``S=`` against the file's size. The
  letters are the Maildir flags (``D`` draft, ``F`` flagged, ``R`` answered, ``S`` seen, ``T``
  deleted, in ASCII order) and, for keywords and the well-known ``$`` flags (which have no
  Maildir letter: Dovecot ignores ``P``), ``a`` to ``z`` as listed in the maildir's
  ``dovecot-keywords`` file (``N name`` lines, ``0`` being ``a``). A maildir has room for 26
  keywords; more are left out and reported (:attr:`MaildirFolder.dropped`). The bytes are the
  message file's, unchanged; the file's mtime is the received time.
- mbox (:class:`MboxFile`): mailbox ``Archive/2024`` is ``OUT/Archive/2024.mbox`` (and
  ``Archive`` is ``OUT/Archive.mbox``: both fit). Each message is a ``From MAILER-DAEMON
  <received, asctime in UTC>`` line, the message with mboxrd quoting (a line matching
  ``>*From `` gets one more ``>``), then an empty line (a message not ending in a newline gets
  one first). Flags are headers as mox import and Dovecot read them, written at the end of the
  header: ``Status: RO`` (``O`` when unseen), ``X-Status:`` (``A`` answered, ``F`` flagged,
  ``T`` draft, ``D`` deleted) when any, ``X-Keywords:`` (comma-separated, as mox splits them)
  when any. Those three headers already in a message are removed: a stale ``Status: RO``
  would mark an unseen message seen.

Escaping (reversible, :func:`escape_component` / :func:`unescape_component`): a name is split
at ``/``; in each component ``%`` becomes ``%25`` and each control character (C0, DEL, C1)
its UTF-8 bytes as ``%XX``. The first character is written ``%XX`` too when the component
would otherwise start with ``.`` (``.`` and ``..`` included: never a path outside OUT, never
hidden) or be a name the format reserves: in Maildir ``cur``, ``new``, ``tmp``,
``maildirfolder``, ``subscriptions`` and names starting with ``dovecot`` (Dovecot's own files
and directories); in mbox a component ending in ``.mbox`` has that dot written ``%2E`` (a
mailbox ``A.mbox/b``'s directory would otherwise be the file of mailbox ``A``). An empty
component is ``%``. Decoding is percent-decoding (UTF-8), with ``%`` alone the empty
component. Every directory and file is created relative to a held descriptor, new
(``O_EXCL|O_NOFOLLOW``; a directory made here is opened without following a symlink), so
nothing in OUT can lead a write elsewhere.

Not here: which messages, reading the store, errors as values (exporter.py). Keywords that
are not IMAP atoms (or hold ``,``) cannot be written in either format and are left out
(reported as dropped).
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections.abc import Iterable
from enum import StrEnum
from urllib.parse import unquote

from mailbak.fsio import create_new, open_dir
from mailbak.layout import MAILBOX_SEPARATOR, Flag

#: Mode of every file and directory an export creates: mail is private to its owner.
FILE_MODE, DIR_MODE = 0o600, 0o700

#: Maildir letters of the IMAP system flags (Dovecot, mox and cr.yp.to's maildir spec agree).
MAILDIR_LETTERS: dict[str, str] = {Flag.DRAFT: "D", Flag.FLAGGED: "F", Flag.ANSWERED: "R", Flag.SEEN: "S", Flag.DELETED: "T"}
#: ``X-Status:`` letters of the mbox headers (Dovecot's, which mox import reads).
X_STATUS_LETTERS: dict[str, str] = {Flag.ANSWERED: "A", Flag.FLAGGED: "F", Flag.DRAFT: "T", Flag.DELETED: "D"}
#: Keywords a maildir can name: its ``dovecot-keywords`` letters ``a`` to ``z``.
MAX_MAILDIR_KEYWORDS = 26
#: The name of a maildir's keywords file (Dovecot's).
KEYWORDS_FILE = "dovecot-keywords"
#: The host part of a Maildir file name.
MAILDIR_HOST = "mailbak"

#: Bytes per copy call: large enough that a message takes one or two calls.
_COPY_CHUNK = 1 << 30


#: The received times both formats can write (1970 to the end of 9999): a record's time
#: outside them (a damaged or hostile one) is written as the nearest.
MIN_RECEIVED, MAX_RECEIVED = 0, 253_402_300_799


def clamp_received(received: int) -> int:
    """``received`` within the times the formats can write."""
    return min(max(received, MIN_RECEIVED), MAX_RECEIVED)


class MailFormat(StrEnum):
    """The formats ``mailbak export`` writes."""

    MAILDIR = "maildir"
    MBOX = "mbox"


# Names ----------------------------------------------------------------------------------------

#: Maildir component names that are Dovecot's or the maildir's own (a mailbox ``A/new`` would
#: land in ``A``'s ``new/``; Dovecot hides ``subscriptions`` and its ``dovecot*`` files).
_MAILDIR_RESERVED = frozenset({"cur", "new", "tmp", "maildirfolder", "subscriptions"})
_MBOX_SUFFIX = ".mbox"


def _is_control(ch: str) -> bool:
    o = ord(ch)
    return o < 0x20 or 0x7F <= o <= 0x9F


def _pct(ch: str) -> str:
    return "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))


def escape_component(part: str, fmt: MailFormat) -> str:
    """One component of a mailbox name as a file or directory name in OUT (module doc:
    "Escaping"): never empty, ``.``, ``..``, hidden, a control character or a name the format
    reserves."""
    if part == "":
        return "%"
    out = [_pct(ch) if ch == "%" or _is_control(ch) else ch for ch in part]
    if part[0] == "." or (fmt is MailFormat.MAILDIR and (part in _MAILDIR_RESERVED or part.startswith("dovecot"))):
        out[0] = _pct(part[0])
    if fmt is MailFormat.MBOX and part.endswith(_MBOX_SUFFIX) and len(part) > len(_MBOX_SUFFIX):
        out[len(part) - len(_MBOX_SUFFIX)] = "%2E"
    return "".join(out)


def unescape_component(text: str) -> str:
    """The component :func:`escape_component` wrote as ``text``."""
    return "" if text == "%" else unquote(text, errors="surrogatepass")


def disk_parts(name: str, fmt: MailFormat) -> list[str]:
    """The escaped components of mailbox ``name`` as directories below OUT (Maildir), or the
    directories and, last, the file name without ``.mbox`` (mbox)."""
    return [escape_component(p, fmt) for p in name.split(MAILBOX_SEPARATOR)]


def relpath(name: str, fmt: MailFormat) -> str:
    """Where mailbox ``name`` is written, relative to OUT: a maildir's directory or an mbox file."""
    rel = "/".join(disk_parts(name, fmt))
    return rel + _MBOX_SUFFIX if fmt is MailFormat.MBOX else rel


_ATOM_SPECIALS = frozenset('(){ %*"\\],')


def writable_keyword(word: str) -> bool:
    """Whether keyword ``word`` can be written in both formats: an IMAP atom (RFC 9051: no
    space, control, ``(){%*"\\]`` or non-ASCII), without ``,`` (mox splits ``X-Keywords`` at
    commas) and not starting with ``\\`` (a system flag)."""
    return word != "" and all(0x21 <= ord(c) <= 0x7E and c not in _ATOM_SPECIALS for c in word)


def split_flags(flags: Iterable[str], keywords: Iterable[str]) -> tuple[set[str], list[str], list[str]]:
    """A record's flags and keywords as (system flags, keywords to write in order, dropped):
    the well-known ``$`` flags go with the keywords (neither format has a letter for them);
    what cannot be written (module doc) is dropped."""
    system: set[str] = set()
    words: list[str] = []
    dropped: list[str] = []
    for f in flags:
        if f in MAILDIR_LETTERS:
            system.add(f)
        elif not f.startswith("\\") and writable_keyword(f):
            words.append(f)
        else:
            dropped.append(f)
    for k in keywords:
        (words if writable_keyword(k) else dropped).append(k)
    return system, list(dict.fromkeys(words)), dropped


# The tree below OUT --------------------------------------------------------------------------


class Tree:
    """The directories below OUT, held by descriptor: each is created (mode 0700, given the
    owner) and opened relative to its parent's descriptor, never through a symlink."""

    def __init__(self, out_fd: int, owner: tuple[int, int] | None):
        #: OUT's descriptor (the caller's; not closed here).
        self.out_fd = out_fd
        #: (uid, gid) every created file and directory is given; None: the running user's.
        self.owner = owner

    def give(self, fd: int) -> None:
        """Gives a created file or directory to the owner."""
        if self.owner is not None:
            os.fchown(fd, *self.owner)

    def subdir(self, parent: int, name: str) -> int:
        """Directory ``name`` in ``parent``, created when missing; a new descriptor of it
        (ELOOP for a symlink, ENOTDIR for anything else there). Raises OSError."""
        try:
            os.mkdir(name, DIR_MODE, dir_fd=parent)
            created = True
        except FileExistsError:
            created = False
        fd = open_dir(name, dir_fd=parent)
        if created:
            try:
                self.give(fd)
            except BaseException:
                os.close(fd)
                raise
        return fd

    def open_path(self, parts: list[str]) -> int:
        """A new descriptor of ``OUT/parts...``, each directory created when missing."""
        fd = os.dup(self.out_fd)
        try:
            for part in parts:
                new = self.subdir(fd, part)
                os.close(fd)
                fd = new
        except BaseException:
            os.close(fd)
            raise
        return fd

    def create(self, dir_fd: int, name: str) -> int:
        """File ``name`` in ``dir_fd``, created new (mode 0600), given to the owner."""
        fd = create_new(name, FILE_MODE, dir_fd=dir_fd)
        try:
            self.give(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd


def copy_fd(src: int, dst: int, size: int) -> int:
    """Copies up to ``size`` bytes of ``src`` (from its start) to ``dst`` in the kernel
    (``copy_file_range``, which may share extents; ``sendfile`` where it cannot); returns the
    bytes copied (fewer when ``src`` is shorter)."""
    done = 0
    use_range = True
    while done < size:
        n = min(size - done, _COPY_CHUNK)
        if use_range:
            try:
                got = os.copy_file_range(src, dst, n, done)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                use_range = False
                continue
        else:
            got = os.sendfile(dst, src, done, n)
        if got == 0:
            break
        done += got
    return done


class MaildirFolder:
    """One mailbox written as a maildir (module doc); :meth:`close` writes its keywords file."""

    def __init__(self, tree: Tree, name: str):
        self.tree = tree
        #: The mailbox's name (as the store has it).
        self.name = name
        #: Where it is, relative to OUT.
        self.rel = relpath(name, MailFormat.MAILDIR)
        #: Keywords and flags left out (module doc), in order.
        self.dropped: list[str] = []
        self.letters: dict[str, str] = {}
        self.fd = tree.open_path(disk_parts(name, MailFormat.MAILDIR))
        self.cur = -1
        try:
            for sub in ("tmp", "new", "cur"):
                fd = tree.subdir(self.fd, sub)
                if sub == "cur":
                    self.cur = fd
                else:
                    os.close(fd)
        except BaseException:
            os.close(self.fd)
            raise

    def __enter__(self) -> MaildirFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(write=exc[0] is None)

    def flag_letters(self, flags: Iterable[str], keywords: Iterable[str]) -> str:
        """The ``:2,`` letters of a message, keyword letters assigned in order of first use."""
        system, words, dropped = split_flags(flags, keywords)
        out = [MAILDIR_LETTERS[f] for f in system]
        for w in words:
            letter = self.letters.get(w)
            if letter is None:
                if len(self.letters) >= MAX_MAILDIR_KEYWORDS:
                    dropped.append(w)
                    continue
                letter = self.letters[w] = chr(ord("a") + len(self.letters))
            out.append(letter)
        self.dropped.extend(d for d in dropped if d not in self.dropped)
        return "".join(sorted(out))

    def add(self, src: int, size: int, *, id_: int, received: int, flags: Iterable[str] = (), keywords: Iterable[str] = ()) -> int:
        """Writes the message ``id_`` from descriptor ``src`` (``size`` bytes, its fstat size)
        into ``cur/``; returns the bytes written. Raises OSError (the file is then removed)."""
        letters = self.flag_letters(flags, keywords)
        received = clamp_received(received)
        stem = f"{received}.I{id_}.{MAILDIR_HOST}"
        name = f"{stem},S={size}:2,{letters}"
        fd = self.tree.create(self.cur, name)
        try:
            done = copy_fd(src, fd, size)
            os.utime(fd, (received, received))
        except BaseException:
            os.close(fd)
            os.unlink(name, dir_fd=self.cur)
            raise
        os.close(fd)
        if done != size:  # the file was shorter than its fstat said: the name must say its size
            os.rename(name, f"{stem},S={done}:2,{letters}", src_dir_fd=self.cur, dst_dir_fd=self.cur)
        return done

    def close(self, write: bool = True) -> None:
        """Writes ``dovecot-keywords`` (when any keyword was used) and releases the maildir's
        descriptors; harmless when called again."""
        if self.fd < 0:
            return
        try:
            if write and self.letters:
                fd = self.tree.create(self.fd, KEYWORDS_FILE)
                try:
                    text = "".join(f"{ord(letter) - ord('a')} {w}\n" for w, letter in self.letters.items())
                    os.write(fd, text.encode("ascii"))
                finally:
                    os.close(fd)
        finally:
            os.close(self.cur)
            os.close(self.fd)
            self.fd = self.cur = -1


# mbox -----------------------------------------------------------------------------------------

#: A header line (``Name:`` ...) with its continuation lines.
_FIELD = re.compile(rb"[^\n]*\n(?:[ \t][^\n]*\n)*|[^\n]+$")
#: Header fields this writer owns in mbox (matched in lower case).
_OWN_FIELDS = (b"status:", b"x-status:", b"x-keywords:")
#: A line mboxrd quotes: ``From `` after any number of ``>``.
_FROM_LINE = re.compile(rb"^(>*From )", re.MULTILINE)


def from_line(received: int) -> bytes:
    """An mbox separator line for a message received at ``received`` (unix seconds): asctime
    in UTC, which mox import parses (Go's ``time.ANSIC``)."""
    return b"From MAILER-DAEMON " + time.asctime(time.gmtime(clamp_received(received))).encode("ascii") + b"\n"


def mbox_status(flags: Iterable[str], keywords: Iterable[str], eol: bytes) -> tuple[bytes, list[str]]:
    """The ``Status``/``X-Status``/``X-Keywords`` header lines of a message (module doc),
    and what was dropped."""
    system, words, dropped = split_flags(flags, keywords)
    lines = [b"Status: " + (b"RO" if Flag.SEEN in system else b"O") + eol]
    x = "".join(letter for f, letter in X_STATUS_LETTERS.items() if f in system)
    if x:
        lines.append(b"X-Status: " + x.encode("ascii") + eol)
    if words:
        lines.append(b"X-Keywords: " + ", ".join(words).encode("ascii") + eol)
    return b"".join(lines), dropped


def mbox_entry(data: bytes, received: int, flags: Iterable[str] = (), keywords: Iterable[str] = ()) -> tuple[bytes, list[str]]:
    """One message as an mbox entry (From line, headers with the flags, mboxrd-quoted lines,
    an empty line), and the flags and keywords dropped."""
    eol = b"\r\n" if re.match(rb"[^\n]*\r\n", data) else b"\n"
    end = re.search(rb"\n\r?\n", data)
    if data.startswith((b"\n", b"\r\n")):
        head, body = b"", data
    elif end is None:
        head, body = data, b""
    else:
        head, body = data[: end.start() + 1], data[end.start() + 1 :]
    kept = [f for f in _FIELD.findall(head) if not f.lower().startswith(_OWN_FIELDS)]
    if kept and not kept[-1].endswith(b"\n"):
        kept[-1] += eol
    status, dropped = mbox_status(flags, keywords, eol)
    message = _FROM_LINE.sub(rb">\1", b"".join(kept) + status + body)
    if not message.endswith(b"\n"):
        message += b"\n"
    return from_line(received) + message + b"\n", dropped


class MboxFile:
    """One mailbox written as an mbox file (module doc)."""

    def __init__(self, tree: Tree, name: str):
        self.name = name
        #: Where it is, relative to OUT.
        self.rel = relpath(name, MailFormat.MBOX)
        #: Keywords and flags left out, in order.
        self.dropped: list[str] = []
        parts = disk_parts(name, MailFormat.MBOX)
        dfd = tree.open_path(parts[:-1])
        try:
            fd = tree.create(dfd, parts[-1] + _MBOX_SUFFIX)
        finally:
            os.close(dfd)
        self.file = os.fdopen(fd, "wb", buffering=1 << 20)

    def __enter__(self) -> MboxFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, data: bytes, *, received: int, flags: Iterable[str] = (), keywords: Iterable[str] = ()) -> int:
        """Appends one message; returns the bytes written."""
        entry, dropped = mbox_entry(data, received, flags, keywords)
        self.dropped.extend(d for d in dropped if d not in self.dropped)
        self.file.write(entry)
        return len(entry)

    def close(self) -> None:
        """Flushes and closes the file; harmless when called again."""
        if not self.file.closed:
            self.file.close()

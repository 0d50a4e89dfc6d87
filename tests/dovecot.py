"""Dovecot's real ``imap`` binary on stdin/stdout, reading a Maildir tree, driven by Python's
``imaplib.IMAP4_stream``: what a mail server makes of an export.

The config is the least Dovecot needs: ``mail_location`` with ``LAYOUT=fs``, ``UTF-8`` (names
on disk are UTF-8, not modified UTF-7) and ``INBOX=`` naming mox's ``Inbox`` maildir, and a log
file. The binary runs as an unprivileged user with a clean environment (``USER``, ``HOME``), as
Dovecot's own ``imap`` does after login."""

from __future__ import annotations

import base64
import imaplib
import pwd
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

#: Dovecot's IMAP binary (Debian's dovecot-imapd; not on PATH).
IMAP_BINARY = "/usr/lib/dovecot/imap"


def dovecot_config(maildir: Path, conf_dir: Path) -> Path:
    """A config file in ``conf_dir`` for the Maildir tree at ``maildir`` (mailbak export's)."""
    conf = conf_dir / "dovecot.conf"
    conf.write_text(f"mail_location = maildir:{maildir}:LAYOUT=fs:UTF-8:INBOX={maildir}/Inbox\nlog_path = {conf_dir}/dovecot.log\n")
    conf.chmod(0o644)
    return conf


@dataclass
class Fetched:
    """One message as Dovecot serves it."""

    flags: set[str]
    body: bytes
    internaldate: str


_LIST = re.compile(rb'\((?P<attrs>[^)]*)\) (?P<sep>"[^"]*"|NIL) (?P<name>.*)$')


def _unquote(name: bytes) -> str:
    if name.startswith(b'"'):
        name = re.sub(rb"\\(.)", rb"\1", name[1:-1])
    return mutf7_decode(name.decode("ascii"))


def mutf7_decode(text: str) -> str:
    """A mailbox name in IMAP's modified UTF-7 (RFC 3501 section 5.1.3) as text: Dovecot
    without UTF8=ACCEPT sends non-ASCII names so."""

    def part(m: re.Match) -> str:
        b64 = m[1]
        if b64 == "":
            return "&"
        raw = base64.b64decode(b64.replace(",", "/") + "=" * (-len(b64) % 4))
        return raw.decode("utf-16-be")

    return re.sub(r"&([^-]*)-", part, text)


def mutf7_encode(name: str) -> str:
    """``name`` in IMAP's modified UTF-7, as a SELECT takes it."""
    out, run = [], []

    def flush() -> None:
        if run:
            b64 = base64.b64encode("".join(run).encode("utf-16-be")).decode("ascii").rstrip("=").replace("/", ",")
            out.append(f"&{b64}-")
            run.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    flush()
    return "".join(out)


class Imap:
    """A session with Dovecot's ``imap`` as ``user`` over the Maildir tree ``maildir``
    (a context manager)."""

    def __init__(self, maildir: Path, conf_dir: Path, user: str = "nobody"):
        pw = pwd.getpwnam(user)
        conf = dovecot_config(maildir, conf_dir)
        cmd = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", "env", "-i", f"USER={user}", f"HOME={conf_dir}", IMAP_BINARY, "-c", str(conf)]
        self.log = conf_dir / "dovecot.log"
        self.conn = imaplib.IMAP4_stream(shlex.join(cmd))

    def __enter__(self) -> Imap:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.conn.logout()
        except (imaplib.IMAP4.error, OSError):
            pass

    def ok(self, typ: str, data: list) -> list:
        assert typ == "OK", (typ, data, self.log.read_text() if self.log.exists() else "")
        return data

    def mailboxes(self) -> dict[str, set[str]]:
        """Every mailbox LIST shows, with its attributes; the separator must be ``/``."""
        out = {}
        for line in self.ok(*self.conn.list()):
            if line is None:
                continue
            m = _LIST.match(line)
            assert m and m["sep"] == b'"/"', line
            out[_unquote(m["name"])] = set(m["attrs"].decode().split())
        return out

    def fetch_all(self, mailbox: str) -> list[Fetched]:
        """Every message of ``mailbox`` in UID order: its flags (``\\Recent`` left out: a
        session's, not the message's), body and internal date."""
        quoted = mutf7_encode(mailbox).replace("\\", "\\\\").replace('"', '\\"')
        typ, data = self.conn.select(f'"{quoted}"', readonly=True)
        count = int(self.ok(typ, data)[0])
        if count == 0:
            return []
        out = []
        for item in self.ok(*self.conn.fetch("1:*", "(FLAGS INTERNALDATE BODY.PEEK[])")):
            if not isinstance(item, tuple):
                continue
            head, body = item
            flags = re.search(rb"FLAGS \(([^)]*)\)", head)
            date = re.search(rb'INTERNALDATE "([^"]*)"', head)
            assert flags and date, head
            out.append(Fetched(set(flags[1].decode().split()) - {"\\Recent"}, body, date[1].decode()))
        assert len(out) == count, (len(out), count)
        return out


def as_served(data: bytes) -> bytes:
    """A message file's bytes as IMAP serves them: bare LF as CRLF."""
    return re.sub(rb"(?<!\r)\n", b"\r\n", data)

"""Dovecot's real ``imap`` binary on stdin/stdout, reading a Maildir tree, driven by Python's
``imaplib.IMAP4_stream``: what a mail server makes of an export.

The config is the least Dovecot needs (``mail_location`` with ``LAYOUT=fs`` and ``INBOX=``
naming mox's ``Inbox`` maildir, and a log file); the binary runs as an unprivileged user with
a clean environment (``USER``, ``HOME``), as Dovecot's own ``imap`` does after login."""

from __future__ import annotations

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
    conf.write_text(f"mail_location = maildir:{maildir}:LAYOUT=fs:INBOX={maildir}/Inbox\nlog_path = {conf_dir}/dovecot.log\n")
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
        return re.sub(rb"\\(.)", rb"\1", name[1:-1]).decode("utf-8")
    return name.decode("utf-8")


class Imap:
    """A session with Dovecot's ``imap`` as ``user`` over the Maildir tree ``maildir``
    (a context manager)."""

    def __init__(self, maildir: Path, conf_dir: Path, user: str = "nobody"):
        pw = pwd.getpwnam(user)
        conf = dovecot_config(maildir, conf_dir)
        cmd = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", "env", "-i", f"USER={user}", f"HOME={conf_dir}", IMAP_BINARY, "-c", str(conf)]
        self.log = conf_dir / "dovecot.log"
        self.conn = imaplib.IMAP4_stream(shlex.join(cmd))
        # UTF-8 mailbox names (RFC 6855) rather than modified UTF-7.
        self.conn.enable("UTF8=ACCEPT")

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
        typ, data = self.conn.select('"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"', readonly=True)
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

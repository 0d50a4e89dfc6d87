"""`mailbak export`: Maildir trees that Dovecot's own `imap` serves, mbox files that Python's
mailbox module and procmail's formail read back, and bad input (unknown account or mailbox,
OUT not empty, a missing message file, hostile mailbox names)."""

from __future__ import annotations

import mailbox
import os
import re
import stat
import subprocess
from datetime import datetime
from pathlib import Path

import pytest
from conftest import NOBODY, backup_into, backup_ok, chown_tree, init_ok, json_lines, run_cli
from dovecot import Imap, as_served
from mailbak.layout import id_key, message_rel
from mailbak.mailformat import MailFormat, escape_component, relpath, unescape_component
from mailbak.store import Store, mailbox_record, pack
from pausing import PausePoint

T0 = 1_700_000_000

#: (mailbox, bytes, received, flags, keywords) of the test account: LF and CRLF messages,
#: "From " lines to quote, a stale Status header, every flag, keywords, a non-ASCII mailbox.
MESSAGES = [
    ("Inbox", b"From: a@example.org\nSubject: hi\n\nFrom here on\n>From quoted once\n", T0, ["\\Seen", "$Forwarded"], ["work"]),
    ("Inbox", b"From: b@example.org\r\nSubject: crlf\r\n\r\nline\r\nFrom crlf\r\n", T0 + 60, ["\\Answered", "\\Flagged"], ["$label1"]),
    ("Inbox", b"Subject: stale\nStatus: RO\nX-Keywords: bogus\n\nunseen although the header says read\n", T0 + 120, ["\\Draft"], []),
    ("Sent", b"Subject: sent\n\n>>From twice\n", T0 + 180, ["\\Seen", "\\Deleted", "$Junk"], ["todo", "work"]),
    ("Archive", b"Subject: archived\n\nold\n", T0 - 86400 * 400, ["\\Seen"], []),
    ("Archive/2024", b"Subject: 2024\n\nbody\n", T0 - 86400 * 30, [], ["$MDNSent"]),
    ("Archive/2024", b"Subject: 2024 b\n\nbody b\n", T0 - 86400 * 20, ["\\Seen", "$NotJunk", "$Phishing"], []),
    ("Überweisungen", "Subject: =?utf-8?q?=C3=9C?=\n\nGrüße\n".encode(), T0 + 240, ["\\Seen"], []),
]
MAILBOXES = ("Inbox", "Sent", "Drafts", "Archive", "Archive/2024", "Überweisungen")


def build_store(path: Path, extra: list[tuple[str, bytes, int, list[str], list[str]]] = ()) -> dict[int, tuple]:
    """A store with account alice holding MESSAGES (and ``extra``); returns them by ID."""
    s = Store.create(path, durable=False)
    try:
        acc = s.add_account("alice", mailboxes=MAILBOXES)
        s.add_account("bob")
        out = {}
        for mb, data, received, flags, keywords in [*MESSAGES, *extra]:
            id_ = acc.deliver(acc.ensure_mailbox(mb), data, received=received, flags=flags, keywords=keywords)
            out[id_] = (mb, data, received, flags, keywords)
        return out
    finally:
        s.close()


def add_raw_mailbox(store: Path, name: str) -> int:
    """A mailbox record with any name at all (the writer library refuses hostile ones), as
    the store's owner could write it."""
    s = Store.open(store, durable=False)
    try:
        acc = s.account("alice")
        id_ = acc._alloc_ids()
        with acc.env.begin(write=True, db=acc.db["mailbox"]) as txn:
            txn.put(id_key(id_), pack(mailbox_record(name=name, uidvalidity=7)))
        return id_
    finally:
        s.close()


def deliver(store: Path, mailbox_id: int, data: bytes, received: int, flags=(), keywords=()) -> int:
    s = Store.open(store, durable=False)
    try:
        return s.account("alice").deliver(mailbox_id, data, received=received, flags=flags, keywords=keywords)
    finally:
        s.close()


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, dict[int, tuple]]:
    """A backup of the test store, and the messages by ID."""
    msgs = build_store(tmp_path / "store")
    backup_ok(tmp_path / "store", tmp_path / "backup")
    return tmp_path / "backup", msgs


def export_ok(*args) -> list[dict]:
    p = run_cli("export", "--json", *args)
    assert p.returncode == 0, p.stdout + p.stderr
    return json_lines(p.stdout)


def tree(root: Path) -> dict[str, int]:
    """Every entry below ``root`` (relative path: mode), symlinks as themselves."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = Path(dirpath) / n
            out[str(p.relative_to(root))] = os.lstat(p).st_mode
    return out


def internaldate(text: str) -> int:
    return int(datetime.strptime(text.strip(), "%d-%b-%Y %H:%M:%S %z").timestamp())


# Maildir --------------------------------------------------------------------------------------


def test_maildir_export_is_what_dovecot_serves(source, public_dir):
    backup, msgs = source
    out = public_dir / "out"
    lines = export_ok(backup, out, "--account", "alice", "--owner", "nobody")
    summary = lines[-1]
    assert summary["message_type"] == "summary" and summary["status"] == "ok"
    assert (summary["messages"], summary["mailboxes"], summary["errors"]) == (len(MESSAGES), len(MAILBOXES), 0)
    assert summary["bytes"] == sum(len(m[1]) for m in MESSAGES)
    # Everything is nobody's and private; file names start with the received time; mtime too.
    for rel, mode in tree(out).items():
        st = os.lstat(out / rel)
        assert (st.st_uid, st.st_gid) == (NOBODY.pw_uid, NOBODY.pw_gid), rel
        assert stat.S_IMODE(mode) == (0o700 if stat.S_ISDIR(mode) else 0o600), rel
    assert os.stat(out).st_uid == NOBODY.pw_uid
    for id_, (mb, data, received, _flags, _keywords) in msgs.items():
        [name] = [n for n in os.listdir(out / relpath(mb, MailFormat.MAILDIR) / "cur") if f".I{id_}." in n]
        assert name.startswith(f"{received}.I{id_}.mailbak,S={len(data)}:2,")
        f = out / relpath(mb, MailFormat.MAILDIR) / "cur" / name
        assert f.read_bytes() == data and int(f.stat().st_mtime) == received
    with Imap(out, public_dir) as imap:
        listed = imap.mailboxes()
        assert set(listed) == {"INBOX" if n == "Inbox" else n for n in MAILBOXES}
        assert "\\HasChildren" in listed["Archive"] and "\\Noselect" not in listed["Archive"]
        for name in MAILBOXES:
            want = sorted((as_served(d), r, {*f, *k}) for mb, d, r, f, k in msgs.values() if mb == name)
            got = sorted((m.body, internaldate(m.internaldate), m.flags) for m in imap.fetch_all("INBOX" if name == "Inbox" else name))
            assert got == want, name


def test_live_store_its_backup_and_a_snapshot_export_the_same(tmp_path):
    """A live store owned by the mail server's user (nobody; root reads it as that user), a
    backup of it and a repository snapshot of it give the same tree."""
    store = tmp_path / "store"
    build_store(store)
    chown_tree(store)
    backup_ok(store, tmp_path / "backup")
    init_ok(tmp_path / "repo")
    backup_into(store, tmp_path / "repo")
    [snapshot] = [p for p in (tmp_path / "repo").iterdir() if not p.name.startswith(".") and p.is_dir()]
    export_ok(store, tmp_path / "a", "--account", "alice")
    export_ok(tmp_path / "backup", tmp_path / "b", "--account", "alice")
    export_ok(snapshot, tmp_path / "c", "--account", "alice")
    a, b, c = tree(tmp_path / "a"), tree(tmp_path / "b"), tree(tmp_path / "c")
    assert a == b == c and len([r for r in a if "/cur/" in r]) == len(MESSAGES)
    for rel, mode in a.items():
        if stat.S_ISREG(mode):
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes() == (tmp_path / "c" / rel).read_bytes()


def test_more_keywords_than_a_maildir_holds_are_left_out_with_a_warning(tmp_path, public_dir):
    words = [f"kw{i:02d}" for i in range(30)]
    build_store(tmp_path / "store", extra=[("Drafts", f"Subject: {w}\n\n{w}\n".encode(), T0 + i, [], [w]) for i, w in enumerate(words)])
    out = public_dir / "out"
    lines = export_ok(tmp_path / "store", out, "--account", "alice", "--owner", "nobody")
    [warn] = [e for e in lines if e["message_type"] == "warning"]
    assert warn["code"] == "keywords" and warn["path"] == "Drafts" and "kw26, kw27, kw28, kw29" in warn["cause"]
    assert (out / "Drafts" / "dovecot-keywords").read_text() == "".join(f"{i} {w}\n" for i, w in enumerate(words[:26]))
    with Imap(out, public_dir) as imap:
        got = sorted(tuple(sorted(m.flags)) for m in imap.fetch_all("Drafts"))
    assert got == sorted([(w,) for w in words[:26]] + [()] * 4)


def test_selection_mailbox_recursive_and_dates(source, tmp_path):
    backup, msgs = source
    export_ok(backup, tmp_path / "r", "--account", "alice", "--mailbox", "Archive", "--recursive")
    assert {r for r, m in tree(tmp_path / "r").items() if r.endswith("/cur")} == {"Archive/cur", "Archive/2024/cur"}
    export_ok(backup, tmp_path / "one", "--account", "alice", "--mailbox", "Archive/2024", "--mailbox", "Sent")
    cur = {r for r, m in tree(tmp_path / "one").items() if r.endswith("/cur")}
    assert cur == {"Sent/cur", "Archive/2024/cur"}
    since = datetime.fromtimestamp(T0 + 60).isoformat()
    before = datetime.fromtimestamp(T0 + 180).isoformat()
    summary = export_ok(backup, tmp_path / "d", "--account", "alice", "--since", since, "--before", before)[-1]
    want = [d for _, d, r, _, _ in MESSAGES if T0 + 60 <= r < T0 + 180]
    got = [p.read_bytes() for p in (tmp_path / "d").rglob("*.mailbak,*")]
    assert summary["messages"] == len(want) == 2 and sorted(got) == sorted(want)
    # Every mailbox is there, the ones without a message in the window empty.
    assert summary["mailboxes"] == len(MAILBOXES)


# mbox -----------------------------------------------------------------------------------------

_OWN = re.compile(rb"^(?:status|x-status|x-keywords):[^\n]*\n", re.IGNORECASE | re.MULTILINE)


def without_flag_headers(data: bytes) -> bytes:
    """``data`` without Status, X-Status and X-Keywords in its header (what export rewrites)."""
    end = re.search(rb"\n\r?\n", data)
    cut = end.start() + 1 if end else len(data)
    return _OWN.sub(b"", data[:cut]) + data[cut:]


def test_mbox_export_reads_back_with_mailbox_and_formail(source, tmp_path):
    backup, msgs = source
    out = tmp_path / "out"
    summary = export_ok(backup, out, "--account", "alice", "--format", "mbox")[-1]
    assert summary["messages"] == len(MESSAGES) and summary["errors"] == 0
    files = {r for r, m in tree(out).items() if stat.S_ISREG(m)}
    assert files == {relpath(n, MailFormat.MBOX) for n in MAILBOXES} == {"Inbox.mbox", "Sent.mbox", "Drafts.mbox", "Archive.mbox", "Archive/2024.mbox", "Überweisungen.mbox"}
    letters = {"\\Seen": "R", "\\Answered": "A", "\\Flagged": "F", "\\Draft": "T", "\\Deleted": "D"}
    for name in MAILBOXES:
        path = out / relpath(name, MailFormat.MBOX)
        want = [(d, f, k) for mb, d, _, f, k in msgs.values() if mb == name]
        box = mailbox.mbox(path, create=False)
        got = [box.get_bytes(key) for key in box.keys()]
        assert len(got) == len(want), name
        for raw, (data, flags, keywords) in zip(got, want, strict=True):
            assert without_flag_headers(re.sub(rb"(?m)^>(>*From )", rb"\1", raw)) == without_flag_headers(data)
            m = mailbox.mboxMessage(raw)
            assert set(m.get_flags()) == {"O"} | {letters[f] for f in flags if f in letters}
            words = [w.strip() for w in (m["X-Keywords"] or "").split(",") if w.strip()]
            assert words == [f for f in flags if f.startswith("$")] + keywords
        box.close()
        # formail (procmail) splits it into as many messages.
        split = subprocess.run(["formail", "-s", "sh", "-c", "cat >/dev/null; echo x"], stdin=path.open("rb"), capture_output=True, check=True)
        assert split.stdout.count(b"x") == len(want), name
    # mboxrd quoting: the one ">From" line got one more ">", the "From " line one.
    inbox = (out / "Inbox.mbox").read_bytes()
    assert b"\n>From here on\n>>From quoted once\n" in inbox and b"\n>>>From twice\n" in (out / "Sent.mbox").read_bytes()
    assert inbox.startswith(b"From MAILER-DAEMON Tue Nov 14 22:13:20 2023\n")
    # The stale header is gone: the message is unseen.
    assert b"Status: RO\nX-Keywords: bogus" not in inbox and b"Subject: stale\nStatus: O\nX-Status: T\n\n" in inbox


# Bad input ------------------------------------------------------------------------------------


def test_unknown_account_and_mailbox_name_what_exists(source, tmp_path):
    backup, _ = source
    p = run_cli("export", backup, tmp_path / "o", "--account", "carol")
    assert p.returncode == 2 and p.stderr.startswith("mailbak: error:") and len(p.stderr.splitlines()) == 1
    assert "alice" in p.stderr and "bob" in p.stderr
    p = run_cli("export", backup, tmp_path / "o", "--account", "alice", "--mailbox", "Nope")
    assert p.returncode == 2 and "Archive/2024" in p.stderr and "Sent" in p.stderr
    p = run_cli("export", backup, tmp_path / "o", "--account", "alice", "--since", "yesterday-ish")
    assert p.returncode == 2 and "--since" in p.stderr
    assert not (tmp_path / "o").exists()


def test_out_not_empty_or_a_symlink_is_refused_and_untouched(source, tmp_path):
    backup, _ = source
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("mine\n")
    p = run_cli("export", backup, out, "--account", "alice")
    assert p.returncode == 2 and "not empty" in p.stderr
    assert os.listdir(out) == ["keep"] and (out / "keep").read_text() == "mine\n"
    os.symlink("victim", out / "Inbox")
    p = run_cli("export", backup, out, "--account", "alice")
    assert p.returncode == 2 and sorted(os.listdir(out)) == ["Inbox", "keep"]
    link = tmp_path / "link"
    empty = tmp_path / "empty"
    empty.mkdir()
    link.symlink_to(empty)
    p = run_cli("export", backup, link, "--account", "alice")
    assert p.returncode == 2 and "symlink" in p.stderr and os.listdir(empty) == []
    p = run_cli("export", backup, backup / "data" / "x", "--account", "alice")
    assert p.returncode == 2 and not (backup / "data" / "x").exists()


def test_owner_of_another_user_needs_root(source, tmp_path):
    backup, _ = source
    p = run_cli("export", backup, tmp_path / "o", "--account", "alice", "--owner", "no-such-user-here")
    assert p.returncode == 2 and "no such user" in p.stderr and not (tmp_path / "o").exists()


def test_missing_or_irregular_message_files_are_errors_naming_them_and_the_rest_is_exported(tmp_path):
    msgs = build_store(tmp_path / "store")
    backup_ok(tmp_path / "store", tmp_path / "backup")
    victim_id = next(i for i, m in msgs.items() if m[0] == "Sent")
    msg_dir = tmp_path / "backup" / "data" / "accounts" / "alice" / "msg"
    (msg_dir / message_rel(victim_id)).unlink()
    # Two more in Archive/2024 that are not regular files: a symlink (never followed) and a FIFO
    # (never waited for): errors naming them too.
    link_id, fifo_id = sorted(i for i, m in msgs.items() if m[0] == "Archive/2024")
    (msg_dir / message_rel(link_id)).unlink()
    (msg_dir / message_rel(link_id)).symlink_to("/etc/passwd")
    (msg_dir / message_rel(fifo_id)).unlink()
    os.mkfifo(msg_dir / message_rel(fifo_id))
    for fmt in ("maildir", "mbox"):
        out = tmp_path / f"out-{fmt}"
        p = run_cli("export", tmp_path / "backup", out, "--account", "alice", "--format", fmt)
        assert p.returncode == 1, p.stdout + p.stderr
        errs = [line for line in (p.stdout + p.stderr).splitlines() if line.startswith("error:")]
        assert len(errs) == 3, errs
        for id_, mb in ((victim_id, "Sent"), (link_id, "Archive/2024"), (fifo_id, "Archive/2024")):
            [err] = [e for e in errs if f"message {id_}:" in e]
            assert "alice" in err and f"mailbox {mb}," in err and message_rel(id_) in err
        p = run_cli("export", "--json", tmp_path / "backup", tmp_path / f"json-{fmt}", "--account", "alice", "--format", fmt)
        summary = json_lines(p.stdout)[-1]
        assert (p.returncode, summary["status"], summary["errors"], summary["messages"]) == (1, "failed", 3, len(MESSAGES) - 3)
    assert len(list((tmp_path / "out-maildir").rglob("*.mailbak,*"))) == len(MESSAGES) - 3
    assert (tmp_path / "out-mbox" / "Sent.mbox").stat().st_size == 0
    assert sum(len(mailbox.mbox(f).keys()) for f in (tmp_path / "out-mbox").rglob("*.mbox")) == len(MESSAGES) - 3
    assert b"root:" not in b"".join(f.read_bytes() for f in (tmp_path / "out-mbox").rglob("*.mbox"))


HOSTILE = ["..", "../x", "../../etc", "/abs", "a\nb", ".hidden", "x/new", "cur", "dovecot.index", "sub%2Fescaped", "tail/", "A.mbox/b", "A"]


@pytest.mark.parametrize("fmt", ["maildir", "mbox"])
def test_hostile_mailbox_names_stay_inside_out_escaped(tmp_path, public_dir, fmt):
    store = tmp_path / "store"
    build_store(store)
    for i, name in enumerate(HOSTILE):
        deliver(store, add_raw_mailbox(store, name), f"Subject: {i}\n\nbody {i}\n".encode(), T0 + i, ["\\Seen"], ["k"])
    base = public_dir / "base"
    base.mkdir()
    out = base / "out"
    p = run_cli("export", store, out, "--account", "alice", "--format", fmt, "--owner", "nobody")
    assert p.returncode == 0, p.stdout + p.stderr
    assert os.listdir(base) == ["out"] and os.listdir(public_dir) == ["base"]
    real = os.path.realpath(out)
    entries = tree(out)
    for rel, mode in entries.items():
        assert not stat.S_ISLNK(mode) and os.path.realpath(out / rel).startswith(real + "/")
        assert "\n" not in rel and not any(part.startswith(".") for part in rel.split("/"))
    fm = MailFormat(fmt)
    for i, name in enumerate(HOSTILE):
        rel = relpath(name, fm)
        parts = rel.removesuffix(".mbox").split("/") if fm is MailFormat.MBOX else rel.split("/")
        assert "/".join(unescape_component(c) for c in parts) == name
        if fm is MailFormat.MBOX:
            assert mailbox.mbox(out / rel).get_bytes(0).endswith(f"body {i}\n".encode()), name
        else:
            [f] = os.listdir(out / rel / "cur")
            assert (out / rel / "cur" / f).read_bytes() == f"Subject: {i}\n\nbody {i}\n".encode()
    assert relpath("..", fm).startswith("%2E.") and relpath("a\nb", fm).startswith("a%0Ab")
    if fm is MailFormat.MAILDIR:
        # Dovecot lists each as the escaped name, one level per "/".
        with Imap(out, public_dir) as imap:
            listed = imap.mailboxes()
            for i, name in enumerate(HOSTILE):
                [m] = imap.fetch_all(relpath(name, fm))
                assert m.body == as_served(f"Subject: {i}\n\nbody {i}\n".encode()) and m.flags == {"\\Seen", "k"}
            assert "%2E./%2E./etc" in listed and "x/%6Eew" in listed


def test_escaping_is_reversible():
    names = ["", ".", "..", ".x", "a%b", "%", "%25", "a\x00b", "a\x7fb", "a\u0085b", "new", "cur", "tmp", "dovecot", "x.mbox", ".mbox", "Grüße", "a b"]
    for fmt in MailFormat:
        seen = set()
        for n in names:
            e = escape_component(n, fmt)
            assert unescape_component(e) == n and e not in seen and e not in ("", ".", "..")
            assert not e.startswith(".") and "/" not in e and not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in e)
            seen.add(e)


def test_hostile_name_in_an_error_line_is_escaped(tmp_path):
    store = tmp_path / "store"
    build_store(store)
    mid = deliver(store, add_raw_mailbox(store, "evil\nerror: forged"), b"Subject: x\n\nx\n", T0)
    s = Store.open(store, durable=False)
    s.account("alice").message_path(mid).unlink()
    s.close()
    p = run_cli("export", store, tmp_path / "out", "--account", "alice")
    assert p.returncode == 1
    assert not any(line.startswith("error: forged") for line in (p.stdout + p.stderr).splitlines())
    assert "evil\\nerror: forged" in p.stdout + p.stderr


def test_out_taken_from_its_owner_while_written(source, public_dir):
    """An empty OUT owned by someone else: root takes it (root's, 0700) before writing, so its
    former owner cannot plant a symlink in it; it gets --owner's at the end."""
    backup, _ = source
    out = public_dir / "out"
    out.mkdir()
    os.chown(out, NOBODY.pw_uid, NOBODY.pw_gid)
    point = PausePoint(public_dir / "pause", "export.held")
    proc = point.popen("export", backup, out, "--account", "alice", "--owner", "nobody")
    point.wait_reached(proc)
    st = os.stat(out)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o700)
    plant = subprocess.run(["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups", "ln", "-s", "/etc", str(out / "Inbox")], capture_output=True)
    assert plant.returncode != 0 and not os.path.lexists(out / "Inbox")
    point.go()
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stdout + stderr
    assert os.stat(out).st_uid == NOBODY.pw_uid and (out / "Inbox" / "cur").is_dir()


def test_received_times_out_of_range_are_written_as_the_nearest(tmp_path):
    build_store(tmp_path / "store", extra=[("Drafts", b"Subject: past\n\nx\n", -5, [], []), ("Drafts", b"Subject: future\n\ny\n", 1 << 62, [], [])])
    export_ok(tmp_path / "store", tmp_path / "m", "--account", "alice", "--mailbox", "Drafts")
    names = sorted(os.listdir(tmp_path / "m" / "Drafts" / "cur"))
    assert [n.split(".")[0] for n in names] == ["0", "253402300799"]
    past, future = sorted(int((tmp_path / "m" / "Drafts" / "cur" / n).stat().st_mtime) for n in names)
    # The future as far as the file system stores it (ext4: year 2446).
    assert past == 0 and future > T0 + 400 * 365 * 86400
    export_ok(tmp_path / "store", tmp_path / "b", "--account", "alice", "--mailbox", "Drafts", "--format", "mbox")
    box = (tmp_path / "b" / "Drafts.mbox").read_bytes()
    assert box.startswith(b"From MAILER-DAEMON Thu Jan  1 00:00:00 1970\n") and b"\n\nFrom MAILER-DAEMON Fri Dec 31 23:59:59 9999\n" in box


@pytest.mark.parametrize("fmt", ["maildir", "mbox"])
def test_a_full_out_stops_the_export_with_one_line(tmp_path, small_tmpfs, fmt):
    big = [("Inbox", b"Subject: big\n\n" + b"x" * 99_999 + b"\n", T0 + i, [], []) for i in range(40)]
    build_store(tmp_path / "store", extra=big)
    p = run_cli("export", tmp_path / "store", small_tmpfs / "out", "--account", "alice", "--format", fmt)
    assert p.returncode == 1, p.stdout + p.stderr
    assert p.stderr.splitlines()[-1].startswith("mailbak: error: the output directory cannot take more data")
    assert "is incomplete; delete it and export again" in p.stderr
    assert not [line for line in p.stderr.splitlines() if line.startswith("error:")]

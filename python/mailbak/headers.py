"""A message's head as ``ls`` and ``find`` show it: From, To, Subject, Date and Message-ID.

The engine finds the fields in the first 64 KiB of each file (``_engine.read_heads``, many
files in parallel: opening and reading them from Python cost 18 µs a message, against a 2 s
budget for listing a 100,000-message mailbox); this decodes their values. RFC 2047 encoded words
are left to ``email.header``, and only for a value that holds one (building the standard
library's header objects for every field cost 40 µs a message).

Text is what the sender wrote, decoded: it may hold anything (control characters included);
whoever prints it escapes it (report.py).
"""

from __future__ import annotations

import binascii
import re
from functools import partial
from typing import NamedTuple

#: Runs of whitespace (folding included) inside a field's value.
_SPACE = re.compile(r"\s+")


class Head(NamedTuple):
    """The fields of a message's head a listing shows, decoded; "" when absent. A named tuple:
    a frozen dataclass's constructor cost 4 µs a head (ls of 100,000 messages)."""

    from_: str = ""
    to: str = ""
    subject: str = ""
    date: str = ""
    message_id: str = ""


#: One RFC 2047 encoded word: charset (an RFC 2231 language suffix allowed), B or Q, text.
_WORD = re.compile(r"=\?([^?\s*]+)(?:\*[^?\s]*)?\?([BbQq])\?([^?\s]*)\?=")


def _word_bytes(encoding: str, text: str) -> bytes:
    """The bytes an encoded word's text stands for; raises binascii.Error, ValueError."""
    if encoding in "Bb":
        return binascii.a2b_base64(text + "=" * (-len(text) % 4))
    return binascii.a2b_qp(text.encode("ascii"), header=True)  # header: "_" is a space


def decode_words(text: str) -> str:
    """``text`` with its RFC 2047 encoded words decoded. Whitespace between two encoded words
    goes (RFC 2047 section 6.2), and adjacent words of one charset are decoded together (a
    character may be split across them). A word that cannot be decoded (an unknown charset,
    bad base64) stays as written.

    Written here rather than left to ``email.header`` (decode_header and make_header): that
    took 68 µs a field, 5 of the 7 s a listing of 100,000 messages took when half the subjects
    and senders were encoded, as mail from outside the ASCII world is; this takes about 3."""
    out: list[str] = []
    pending: list[bytes] = []
    charset = ""
    last = 0

    def flush() -> None:
        if pending:
            out.append(b"".join(pending).decode(charset, "replace"))
            pending.clear()

    for m in _WORD.finditer(text):
        gap = text[last : m.start()]
        try:
            data = _word_bytes(m.group(2), m.group(3))
            "".encode(m.group(1))  # LookupError for a charset Python does not know
        except (binascii.Error, ValueError, LookupError):
            flush()
            out.append(gap + m.group(0))
            last = m.end()
            continue
        if not (pending and gap.strip(" \t\r\n") == ""):
            flush()
            out.append(gap)
        elif m.group(1).lower() != charset:
            flush()
        charset = m.group(1).lower()
        pending.append(data)
        last = m.end()
    flush()
    out.append(text[last:])
    return "".join(out)


def _decode(raw: bytes) -> str:
    """A field's value as text: RFC 2047 encoded words decoded, other bytes as UTF-8 (invalid
    sequences replaced), runs of whitespace collapsed to one space."""
    text = raw.decode("utf-8", "replace")
    if "=?" in text:
        text = decode_words(text)
    # The engine joined folded lines with one space; only odd spacing needs the regex.
    return _SPACE.sub(" ", text).strip() if "  " in text or "\t" in text or "\r" in text else text


def head_of(fields: list[bytes]) -> Head:
    """The head whose raw field values (From, To, Subject, Date, Message-ID, as the engine
    returns them) are ``fields``."""
    return Head(*(_decode(v) for v in fields))


def heads_of(rows: list[list[bytes]]) -> list[Head]:
    """The heads of many messages, as :func:`head_of` gives each: the values of all are decoded
    as UTF-8 in one call, and only a value that holds an encoded word or odd spacing goes
    through :func:`_decode` (a listing of 100,000 messages: a fifth of the time)."""
    width = len(Head._fields)
    flat = [v for r in rows for v in r]
    joined = b"\0".join(flat)
    if joined.count(b"\0") != len(flat) - 1 or any(len(r) != width for r in rows):
        return [head_of(r) for r in rows]  # a value holds the separator: value by value
    whole = joined.decode("utf-8", "replace")
    texts = whole.split("\0")
    # What sends a value to _decode; odd spacing is rare enough to look for in all at once.
    spacing = "  " in whole or "\t" in whole or "\r" in whole
    # Senders and subjects repeat (a thread, a list, a colleague): each distinct value once.
    decoded: dict[bytes, str] = {}
    for i, t in enumerate(texts):
        if "=?" in t or (spacing and ("  " in t or "\t" in t or "\r" in t)):
            d = decoded.get(flat[i])
            if d is None:
                d = decoded[flat[i]] = _decode(flat[i])
            texts[i] = d
    # tuple.__new__ makes each Head without running Python code (Head's own __new__ does).
    return list(map(partial(tuple.__new__, Head), zip(*(texts[k::width] for k in range(width)), strict=True)))

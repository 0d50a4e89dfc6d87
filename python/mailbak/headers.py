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

import email.errors
import email.header
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


def _decode(raw: bytes) -> str:
    """A field's value as text: RFC 2047 encoded words decoded, other bytes as UTF-8 (invalid
    sequences replaced), runs of whitespace collapsed to one space."""
    text = raw.decode("utf-8", "replace")
    if "=?" in text:
        try:
            text = str(email.header.make_header(email.header.decode_header(text)))
        except (email.errors.HeaderParseError, ValueError, LookupError, UnicodeError, AssertionError):
            pass  # a malformed encoded word: shown as written
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
    for i, t in enumerate(texts):
        if "=?" in t or (spacing and ("  " in t or "\t" in t or "\r" in t)):
            texts[i] = _decode(flat[i])
    # tuple.__new__ makes each Head without running Python code (Head's own __new__ does).
    return list(map(partial(tuple.__new__, Head), zip(*(texts[k::width] for k in range(width)), strict=True)))

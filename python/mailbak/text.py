"""Names as text for somewhere else: a report line (:func:`escape_path`) or a TOML key
(:func:`toml_key`). Both are lossless and keep a hostile name from forging lines or syntax.

Written here because no library does either: ``bytes.decode("utf-8", "backslashreplace")``
escapes invalid bytes but leaves control characters and backslashes as they are (so it is
neither safe on one line nor reversible); the stdlib reads TOML (``tomllib``, used by
``layout.read_config``) but does not write it, and a writer (tomli-w) would rewrite the whole
config file where the store library appends one table header.
"""

from __future__ import annotations

import os
import re

#: Text escape_path returns as it is: no control character (C0, DEL, C1), no backslash, no
#: surrogate (an undecodable byte of a file name).
_PLAIN = re.compile(r"[^\x00-\x1f\x7f-\x9f\\\ud800-\udfff]*")


def escape_path(raw: bytes | str) -> str:
    """A file name for a one-line report, losslessly.

    Valid UTF-8 prints as itself; each byte that is not is written ``\\xNN``, a backslash is
    doubled, and control characters (newline included; C1 controls as their UTF-8 bytes) are
    written ``\\n``, ``\\t`` or ``\\xNN``,
    so a hostile name can neither forge report lines nor lose bytes.
    """
    if isinstance(raw, str):
        if _PLAIN.fullmatch(raw):
            # Nothing to escape (no control character, backslash or undecodable byte): the
            # common case, checked in C, which keeps a 100,000-row listing fast (ls).
            return raw
        raw = os.fsencode(raw)
    text = raw.decode("utf-8", errors="surrogateescape")
    out = []
    for ch in text:
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:
            out.append(f"\\x{o - 0xDC00:02x}")
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        elif 0x80 <= o <= 0x9F:
            # C1 controls (U+009B is a CSI on some terminals): their UTF-8 bytes, so nothing is lost.
            out.append("".join(f"\\x{b:02x}" for b in ch.encode("utf-8")))
        else:
            out.append(ch)
    return "".join(out)


def escape_all(cells: list[str]) -> list[str]:
    """Each of ``cells`` as :func:`escape_path` gives it. The common case, nothing to escape in
    any of them, is one check in C of them all: a column of a 100,000-row listing (ls) costs a
    millisecond instead of a function call per cell."""
    if _PLAIN.fullmatch(" ".join(cells)):
        return cells
    return [escape_path(c) for c in cells]


def toml_key(name: str) -> str:
    """``name`` as a TOML quoted key (basic string with escapes)."""
    out = []
    for ch in name:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'

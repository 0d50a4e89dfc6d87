"""A plain, serial Python reference of the engine's link-and-classify step (docs/BACKUP.md rules
5 and 6), written from the rules and nothing else. Tests only: the property test checks that the
Rust engine and this reference agree on random trees.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-_"


def dir_name(id_: int) -> str:
    v = id_ >> 13
    out = ""
    while True:
        out += ALPHABET[v & 63]
        v >>= 6
        if v == 0:
            return out


def parse_id(name: str) -> int | None:
    if not name or len(name) > 20 or name[0] == "0" or not all("0" <= c <= "9" for c in name):
        return None
    v = int(name)
    return v if v < 2**64 else None


@dataclass
class Outcome:
    """What a backup of one area must do."""

    linked: set[str] = field(default_factory=set)
    skipped_new: set[str] = field(default_factory=set)
    skipped_erasing: set[str] = field(default_factory=set)
    known: set[str] = field(default_factory=set)
    unrecognized: set[str] = field(default_factory=set)
    orphans: set[str] = field(default_factory=set)
    special: set[str] = field(default_factory=set)
    missing: set[str] = field(default_factory=set)
    #: LMDB lock files (a regular ``NAME-lock`` beside a regular ``NAME``): never backed up.
    locks: set[str] = field(default_factory=set)


def is_regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def classify_area(root: Path, *, tree: str, known: set[str], live: set[int], erasing: set[int], next_id: int) -> Outcome:
    """Walks ``root`` (never following symlinks) and applies the rules to every entry."""
    out = Outcome()
    seen: set[int] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            mode = os.lstat(os.path.join(dirpath, name)).st_mode
            if name.endswith("-lock") and len(name) > 5 and stat.S_ISREG(mode) and is_regular(os.path.join(dirpath, name[:-5])):
                out.locks.add(rel)
                continue
            if rel_dir == "" and name in known:
                out.known.add(rel)
                continue
            parent = rel_dir[len(tree) + 1 :] if tree and rel_dir.startswith(tree + "/") else (rel_dir if not tree else None)
            id_ = parse_id(name)
            at_path = parent is not None and "/" not in parent and parent != "" and id_ is not None and dir_name(id_) == parent
            if at_path and id_ in live and not stat.S_ISREG(mode):
                # Where a message file should be, something else: the message is not backed up.
                out.missing.add(rel)
                seen.add(id_)
                if not stat.S_ISLNK(mode):
                    out.special.add(rel)
                continue
            if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                out.special.add(rel)
                continue
            if at_path and stat.S_ISREG(mode):
                if id_ in live:
                    out.linked.add(rel)
                    seen.add(id_)
                elif id_ in erasing:
                    out.skipped_erasing.add(rel)
                elif id_ >= next_id:
                    out.skipped_new.add(rel)
                else:
                    out.orphans.add(rel)
                continue
            out.unrecognized.add(rel)
    for id_ in live - seen:
        prefix = f"{tree}/" if tree else ""
        out.missing.add(f"{prefix}{dir_name(id_)}/{id_}")
    return out

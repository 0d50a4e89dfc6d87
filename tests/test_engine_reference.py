"""The Rust engine's link-and-classify step agrees with the plain Python reference on random
trees: random IDs with gaps, files newer than the snapshot, erase sets, misplaced and stray
names, nested junk, symlinks and FIFOs."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mailbak import _engine
from mailbak.layout import pack_ids
from reference import classify_area, dir_name

KNOWN = {"index.db", "index.db-lock", "junkfilter.bloom"}

ids = st.integers(min_value=1, max_value=3 * 8192 + 100)
stray_names = st.sampled_from(["x", "007", "0", "12a", "-5", "notes.txt", "99999999999999999999999", "5 ", "é", "index.db", "x-lock", "007-lock", "-lock"])


@st.composite
def areas(draw):
    tree = draw(st.sampled_from(["msg", ""]))
    present = draw(st.sets(ids, max_size=60))
    live = draw(st.sets(st.sampled_from(sorted(present)), max_size=len(present))) if present else set()
    live |= draw(st.sets(ids, max_size=5))  # some live IDs without a file: missing
    erasing = draw(st.sets(ids, max_size=8)) | (draw(st.sets(st.sampled_from(sorted(present)), max_size=5)) if present else set())
    next_id = draw(st.integers(min_value=1, max_value=3 * 8192 + 100))
    strays = draw(st.lists(st.tuples(st.sampled_from(["", "a", "b", "c", "a/deep", "junk"]), stray_names), max_size=8))
    misplaced = draw(st.lists(ids, max_size=4))
    links = draw(st.lists(st.sampled_from(sorted(present | live)), max_size=2)) if present | live else []
    fifos = draw(st.lists(st.sampled_from(["", "a", "b"]), max_size=2))
    return dict(tree=tree, present=present, live=live, erasing=erasing, next_id=next_id, strays=strays, misplaced=misplaced, links=links, fifos=fifos)


def build(root: Path, a: dict) -> None:
    tree = root / a["tree"] if a["tree"] else root
    tree.mkdir(parents=True, exist_ok=True)
    for name in KNOWN:
        (root / name).write_text(name)
    for id_ in a["present"]:
        p = tree / dir_name(id_) / str(id_)
        p.parent.mkdir(exist_ok=True)
        p.write_text(f"message {id_}")
    for id_ in a["misplaced"]:
        wrong = "zz" if dir_name(id_) != "zz" else "a"
        (tree / wrong).mkdir(exist_ok=True)
        (tree / wrong / str(id_)).write_text("misplaced")
    for sub, name in a["strays"]:
        d = tree / sub if sub else root
        d.mkdir(parents=True, exist_ok=True)
        if not (d / name).exists():
            (d / name).write_text("stray")
    for id_ in a["links"]:
        p = tree / dir_name(id_) / str(id_)
        p.parent.mkdir(exist_ok=True)
        if p.exists() or p.is_symlink():
            p.unlink()
        p.symlink_to("/etc/shadow")
    for i, sub in enumerate(a["fifos"]):
        d = tree / sub if sub else root
        d.mkdir(parents=True, exist_ok=True)
        os.mkfifo(d / f"fifo{i}")


def dst_entries(dst: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(dst):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = Path(dirpath) / name
            out[str(p.relative_to(dst))] = "link" if p.is_symlink() else p.read_text()
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(areas(), st.integers(min_value=1, max_value=4))
def test_engine_matches_reference(a, jobs):
    work = Path(tempfile.mkdtemp(prefix="mailbak-prop-"))
    try:
        src, dst = work / "src", work / "dst"
        src.mkdir()
        dst.mkdir()
        build(src, a)
        want = classify_area(src, tree=a["tree"], known=KNOWN, live=a["live"], erasing=a["erasing"], next_id=a["next_id"])
        progress = _engine.Progress()
        live = sorted(a["live"])
        sizes = pack_ids([len(f"message {i}") for i in live])
        spec = {"src": src, "dst": dst, "tree": a["tree"].encode(), "known": [k.encode() for k in KNOWN], "live": pack_ids(live), "sizes": sizes, "erasing": pack_ids(a["erasing"]), "next_id": a["next_id"], "prefix": b""}
        (got,) = _engine.backup_areas([_engine.BackupArea(spec)], jobs=jobs, progress=progress)
        events = progress.drain()
        assert got["linked"] == len(want.linked)
        assert got["skipped_new"] == len(want.skipped_new)
        assert got["skipped_erasing"] == len(want.skipped_erasing)
        assert got["known"] == len(want.known)
        assert got["unrecognized"] == len(want.unrecognized)
        assert got["orphans"] == len(want.orphans)
        assert got["missing"] == len(want.missing)
        assert got["special"] == len(want.special)
        assert {e[2].decode() for e in events if e[0] == "error"} == want.missing
        assert {e[2].decode() for e in events if e[1] == "orphan_message"} == want.orphans
        assert {e[2].decode() for e in events if e[1] == "unrecognized"} == want.unrecognized
        # The destination holds exactly the linked, orphan and unrecognized files (and
        # symlinks), linked ones sharing the source inode, copies not.
        copied = want.unrecognized | want.orphans
        links = {rel for rel in want.missing if (src / rel).is_symlink()}
        have = dst_entries(dst)
        assert set(have) == want.linked | copied | links
        for rel in want.linked:
            assert (dst / rel).stat().st_ino == (src / rel).stat().st_ino
        for rel in copied:
            if not (src / rel).is_symlink():
                assert (dst / rel).stat().st_ino != (src / rel).stat().st_ino
                assert have[rel] == (src / rel).read_text()
    finally:
        shutil.rmtree(work)

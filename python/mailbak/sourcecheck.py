"""Source bit rot: ``mailbak verify --read-data STORE --against REPO|BACKUP``.

A message file is immutable: once delivered, its bytes never change. So a file of the live
store whose size and modification time are those of its copy in a backup, but whose bytes no
longer have the digest that backup recorded, was damaged in the store (a bad block, a bug in
the storage stack), and the next backup that has to copy it would keep the damage. Nobody else
checks this (restic #805, borg #5296).

Steps:
1. The reference: BACKUP, or the newest complete snapshot of REPO (under the repository's
   shared lock, held to the end, so no prune removes it meanwhile). Its manifest must say ``ok``
   and record digests; else bad input (exit 2).
2. Per area of the store (the verify run's copy of each index: live IDs and recorded sizes), the
   reference's shard files are read (a damaged one is a warning: its messages are not compared).
3. Each message live in both, with a digest recorded and the same size in both records, is
   compared: the reference's file is stat'ed, the store's opened as the store's owner, below the
   run's descriptor of ``data/`` without following a symlink at any step, a regular file only;
   when its size and modification time (to the nanosecond; copies keep it) are the reference's,
   it is read and hashed. Another digest is the error ``source_damaged``; another modification
   time is the warning ``source_changed`` (rewritten in place, against the format), not read.

Not guaranteed: messages the reference does not hold (delivered since), and those it holds
without a digest (hardlinked from the store: the same inode, nothing to compare), are not
checked.
"""

from __future__ import annotations

import os
import stat
from array import array
from bisect import bisect_left
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mailbak import digests, manifest
from mailbak.anchor import DataRoot
from mailbak.errors import ManifestError, UsageError
from mailbak.identity import StoreOwner, acting_as
from mailbak.layout import message_rel
from mailbak.report import Reporter
from mailbak.repository import RepoLock, Repository, is_repository
from mailbak.status import Status

#: What the pass counts, as the summary names it.
COUNTS = ("source_compared", "source_bytes_read", "source_damaged", "source_changed", "source_not_compared")


@dataclass(frozen=True)
class Area:
    """One area of the store as the verify run read it: ``rel`` below ``data/`` (``queue`` or
    ``accounts/NAME``), the message tree below it (``msg`` or empty), its live IDs (ascending)
    with their recorded sizes, aligned, and the IDs whose size is unknown. Arrays, not a dict:
    a million messages cost 16 MB here, and only the reference's entries are looked up."""

    rel: str
    tree: str
    ids: array
    sizes: array
    unknown_sizes: frozenset[int] = frozenset()

    def holds(self, message_id: int) -> bool:
        """Whether ``message_id`` is live."""
        i = bisect_left(self.ids, message_id)
        return i < len(self.ids) and self.ids[i] == message_id

    def size_of(self, message_id: int) -> int | None:
        """The recorded size of live message ``message_id``; None when it is unknown."""
        return None if message_id in self.unknown_sizes else self.sizes[bisect_left(self.ids, message_id)]


@dataclass
class Finding:
    """One compared message's outcome: ``code`` is None when its bytes have the digest."""

    rel: str
    code: str | None
    detail: str = ""
    bytes_read: int = 0


@dataclass
class SourceCheck:
    """The pass of one verify run (see the module doc)."""

    #: The backup or snapshot compared with.
    reference: Path
    #: How reports name it (a snapshot's name, or the backup's path).
    name: str
    lock: RepoLock | None = None
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))

    @classmethod
    def open(cls, against: Path, reporter: Reporter) -> SourceCheck:
        """Step 1; raises UsageError."""
        lock = None
        if is_repository(against):
            lock = RepoLock(against, exclusive=False, on_wait=reporter.message)
            try:
                repo = Repository.open(against)
                newest = repo.newest_complete()
            except BaseException:
                lock.release()
                raise
            if newest is None:
                lock.release()
                raise UsageError(f"--against {against}: the repository has no complete snapshot to compare with")
            reference, name = newest.path, newest.name
        else:
            reference, name = against, str(against)
        try:
            doc = manifest.read(reference)
        except ManifestError as e:
            if lock is not None:
                lock.release()
            raise UsageError(f"--against {against}: not a complete backup: {e}") from e
        if doc["status"] != Status.OK or not isinstance(doc.get("digests"), dict):
            if lock is not None:
                lock.release()
            why = f"its manifest says {doc['status']}" if doc["status"] != Status.OK else "it records no digests (made with --no-digests or before they existed)"
            raise UsageError(f"--against {reference}: cannot be compared with: {why}")
        return cls(reference, name, lock)

    def close(self) -> None:
        """Releases the repository's lock, if held."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def run(self, root: DataRoot, owner: StoreOwner | None, areas: Iterable[Area], *, jobs: int, reporter: Reporter) -> None:
        """Steps 2 and 3, each finding reported with its path below the store."""
        ref_fd = os.open(self.reference, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            # The reference's message directories are reached like the store's: one component
            # at a time below its data/, never through a symlink (a backup keeps the store's).
            with DataRoot(self.reference / "data") as ref_root:
                work = [(a, group) for a in areas for group in self._groups(ref_fd, a, reporter)]
                with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="mailbak-source") as pool:
                    for findings in pool.map(lambda w: self._compare_dir(root, owner, ref_root, *w), work):
                        for f in findings:
                            self._count(f, reporter)
        finally:
            os.close(ref_fd)

    def _groups(self, ref_fd: int, area: Area, reporter: Reporter) -> list[list[digests.Entry]]:
        """The reference's entries of ``area`` worth comparing (a digest, the same recorded
        size in both), grouped by message directory."""
        shard_dir = digests.area_dir(area.rel)
        try:
            fd = os.open(shard_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=ref_fd)
        except OSError:
            return []  # no digests of that area in the reference (an account added since)
        try:
            shards = sorted(os.listdir(fd))
        finally:
            os.close(fd)
        by_dir: dict[str, list[digests.Entry]] = {}
        for name in shards:
            try:
                entries = digests.read(ref_fd, f"{shard_dir}/{name}", shard=True)
            except (OSError, digests.DigestError) as e:
                reporter.warn("digests", f"{self.name}/{shard_dir}/{name}", f"the reference's digest file cannot be used ({e}); its messages are not compared")
                continue
            for e in entries:
                assert isinstance(e.key, int)
                if e.digest is None or not area.holds(e.key):
                    continue
                if area.size_of(e.key) != e.size:
                    self.counts["source_not_compared"] += 1
                    continue
                by_dir.setdefault(message_rel(e.key).rsplit("/", 1)[0], []).append(e)
        return list(by_dir.values())

    def _compare_dir(self, root: DataRoot, owner: StoreOwner | None, ref_root: DataRoot, area: Area, entries: list[digests.Entry]) -> list[Finding]:
        """Step 3 for the messages of one message directory."""
        tree = f"{area.tree}/" if area.tree else ""
        dir_rel = f"{area.rel}/{tree}{message_rel(int(entries[0].key)).rsplit('/', 1)[0]}"
        try:
            ref_dir = ref_root.open_dir(dir_rel)
        except OSError as e:
            return [Finding(f"data/{dir_rel}", "not_compared", f"the reference's message directory cannot be opened without following a symlink ({e.strerror}); not compared")]
        try:
            try:
                with acting_as(owner):
                    dir_fd = root.open_dir(dir_rel)
            except OSError as e:
                return [Finding(f"data/{dir_rel}", "not_compared", f"cannot open the message directory ({e.strerror}); not compared")]
            try:
                return [self._compare(ref_dir, dir_fd, owner, f"data/{area.rel}/{tree}{message_rel(int(e.key))}", e) for e in entries]
            finally:
                os.close(dir_fd)
        finally:
            os.close(ref_dir)

    def _compare(self, ref_dir: int, dir_fd: int, owner: StoreOwner | None, rel: str, e: digests.Entry) -> Finding:
        """One message: ``rel`` is its path below ``data/``; ``ref_dir`` and ``dir_fd`` hold its
        directory in the reference and in the store."""
        name = rel.rsplit("/", 1)[1]
        try:
            ref = os.stat(name, dir_fd=ref_dir, follow_symlinks=False)
        except OSError:
            return Finding(rel, "not_compared")
        try:
            with acting_as(owner):
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            return Finding(rel, "not_compared")  # gone (expunged since), or not readable: verify says which
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or not stat.S_ISREG(ref.st_mode) or st.st_size != ref.st_size:
                return Finding(rel, "not_compared")  # verify's own checks report these
            if st.st_mtime_ns != ref.st_mtime_ns:
                return Finding(rel, "source_changed", f"message {e.key}: its modification time differs from its copy in {self.name} although message files never change; rewritten in place? (not read)")
            got, n = digests.hash_fd(fd)
        except OSError as err:
            return Finding(rel, "source_damaged", f"message {e.key}: cannot be read ({err.strerror})")
        finally:
            os.close(fd)
        if got != e.digest:
            why = f"its bytes no longer have the SHA-256 recorded by {self.name}, with its size and modification time unchanged"
            return Finding(rel, "source_damaged", f"message {e.key}: {why}: damaged in the store (bit rot); its good copy is in the backup", n)
        return Finding(rel, None, bytes_read=n)

    def _count(self, f: Finding, reporter: Reporter) -> None:
        """Counts one finding and reports it."""
        self.counts["source_bytes_read"] += f.bytes_read
        if f.code is None:
            self.counts["source_compared"] += 1
        elif f.code == "not_compared":
            self.counts["source_not_compared"] += 1
            if f.detail:
                reporter.warn("source_not_compared", f.rel, f.detail)
        elif f.code == "source_changed":
            self.counts["source_changed"] += 1
            reporter.warn(f.code, f.rel, f.detail)
        else:
            self.counts["source_compared"] += 1
            self.counts["source_damaged"] += 1
            reporter.error(f.code, f.rel, f.detail)

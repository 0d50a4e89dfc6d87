"""mailbak prune: thin a repository's history by restic's ``forget`` rules (retention.py).

The steps, in order:
1. **Check.** REPO must be a repository (repository.py) and the policy not empty: else bad
   input, exit 2, nothing touched. Then the repository's lock, exclusively: no backup writes a
   snapshot (whose reference could be removed), and no verify or restore reads one, while
   prune runs. One of them holding it makes prune wait, saying so, or, with ``--no-wait``,
   fail at once (exit 1).
2. **Leftover trash.** Snapshots a killed prune had moved into ``REPO/.trash`` (and subvolumes
   a backup killed while setting them up left, ``repository.CREATING_PREFIX``) are deleted
   first: the decision to remove them was made and made durable.
3. **Decide.** Every snapshot's status and start time come from its manifest and lock
   (``repository.status_of``); ``retention.decide`` gives keep or remove and the reasons.
4. **Move.** Unless ``--dry-run``, each snapshot to remove is renamed into ``REPO/.trash/``
   (atomic, then the directories are fsynced): from then on the decision survives any crash,
   and ``mailbak snapshots`` no longer lists it.
5. **Delete.** The engine deletes the trash bottom-up in parallel (``_engine.delete_tree``), by
   default at the lowest CPU and idle I/O priority, so that the mail server does not notice
   (``--no-nice`` to run at normal priority). Errors on single files are reported with their
   path; the run is then failed, and what is left stays in the trash for the next prune. A
   trash entry that is a btrfs subvolume (a repository of the subvolume method) is deleted by
   the kernel instead (``_engine.btrfs_destroy``: one call, made writable first; the space
   comes back in the background).

Nothing outside REPO is ever deleted: the engine opens the trash entry without following a
symlink, removes symlinks as links, and never enters another file system.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, ClassVar

from mailbak import _engine, repository, retention
from mailbak.errors import UsageError
from mailbak.fsio import open_dir
from mailbak.job import Metrics, Stage, interrupted_hint
from mailbak.report import Reporter, rfc3339
from mailbak.repository import RepoLock, Repository
from mailbak.runner import Runner
from mailbak.status import Status
from mailbak.testpause import pause

#: Delete workers of a prune when ``--jobs`` is not given (default_prune_jobs).
PRUNE_JOBS = 2


def default_prune_jobs() -> int:
    """Delete workers of a prune when ``--jobs`` is not given: two, whatever the cores. Measured
    with caches dropped before each run (bench/cold.py's worker sweep, BENCHMARKS.md "Cold
    caches (issue 22)", raw result bench/results/cold-cf05f45-200k.json): deleting a
    200,000-message snapshot of hardlinks on an ext4 image (loop device on a virtio disk, 2
    cores) took, median of 2 rounds, 6.6 s with 1 worker, 4.0 s with 2, 5.8 s with 4, 8.7 s
    with 8 and 8.5 s with 16 (``rm -rf``: 7.1 s). More workers did not keep the disk busier:
    past two they only spread the reads of inode tables and directory blocks over more places
    at once, and every unlink waits in the journal. Unlike job.default_jobs this does not grow
    with the cores: the disk, not the CPU, bounds a cold prune."""
    return PRUNE_JOBS


class Prune:
    """One run of ``mailbak prune`` (a job: job.py); ``jobs`` None is default_prune_jobs()."""

    command: ClassVar[str] = "prune"
    file_kinds: ClassVar[tuple[str, ...]] = ("deleted",)
    counts_bytes: ClassVar[bool] = False
    reports_failure: ClassVar[bool] = False

    def __init__(self, repo: Path, policy: retention.Policy, *, dry_run: bool = False, wait: bool = True, nice: bool = True, jobs: int | None = None, reporter: Reporter, verbose: bool = False):
        self.path = repo
        self.policy = policy
        self.dry_run = dry_run
        self.wait = wait
        self.nice = nice
        self.jobs = default_prune_jobs() if jobs is None else jobs
        self.reporter = reporter
        self.runner = Runner(reporter, verbose=verbose)
        self.started = time.time()
        self.finished: float | None = None
        self.repo: Repository | None = None
        self.lock: RepoLock | None = None
        self.decisions: list[retention.Decision] = []
        #: Trash entries deleted (leftovers and this run's), and their engine counts.
        self.deleted: list[str] = []
        self.counts = {"files": 0, "dirs": 0, "errors": 0, "subvolumes": 0}
        #: Whether this run moved a snapshot into the trash (what an interrupted run leaves).
        self.moved = False

    def check(self) -> None:
        """Step 1; raises UsageError or RepositoryBusy."""
        self.repo = Repository.open(self.path)
        self.repo.trash_entries()  # a .trash that is not a directory is refused here
        self.lock = RepoLock(self.path, exclusive=True, wait=self.wait, on_wait=self.reporter.message)

    def close(self) -> None:
        """Releases the repository's exclusive lock; harmless when called again."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    @property
    def title(self) -> str:
        """The command as the summary names it."""
        return "prune (dry run)" if self.dry_run else "prune"

    def headline(self, status: Status) -> str:
        """The summary's title."""
        return f"{self.title} {status}: {self.path}"

    def left_behind(self, stage: Stage | None) -> str:
        """Snapshots already in the trash stay there until the next prune deletes them."""
        hint = interrupted_hint(stage, self.path, self.title)
        if hint is not None:
            return hint
        return f"snapshots moved to {self.path}/.trash are deleted by the next prune" if self.moved else "no snapshot was removed"

    def metrics(self, facts: dict[str, Any] | None) -> Metrics:
        """Files deleted; snapshots kept and removed."""
        if not facts:
            return Metrics.none(type(self))
        return Metrics({"deleted": facts.get("files_deleted", 0)}, snapshots={"kept": facts.get("kept", 0), "removed": facts.get("removed", 0)})

    def run(self) -> Status:
        """Steps 2 to 5; returns ``ok``, or ``failed`` when something could not be deleted."""
        assert self.repo is not None, "check() first"
        if not self.dry_run:
            # Subvolumes of snapshots whose backup was killed while setting them up (the
            # subvolume method) go with the leftover trash.
            for name in self.repo.leftover_creations():
                self.repo.move_to_trash(name)
                self.moved = True
            self.empty_trash("trash")
        infos = self.repo.snapshots()
        self.decisions = retention.decide([retention.Snapshot(s.name, s.status, s.start) for s in infos], self.policy)
        removals = [d.name for d in self.decisions if not d.keep]
        if not self.dry_run and removals:
            for name in removals:
                self.repo.move_to_trash(name)
                self.moved = True
            pause("prune.moved")
            self.empty_trash("delete")
        self.runner.finish()
        self.finished = time.time()
        return Status.FAILED if self.reporter.counts.errors or self.counts["errors"] else Status.OK

    def empty_trash(self, phase: str) -> None:
        """Steps 2 and 5: deletes every entry of the trash."""
        assert self.repo is not None
        names = self.repo.trash_entries()
        if not names:
            return
        self.runner.new_phase(phase)
        for name in names:
            where = f"{repository.TRASH}/{name}"
            if self.delete_subvolume(name, where):
                continue
            try:
                result = self.runner.call(_engine.delete_tree, self.repo.trash / name, jobs=self.jobs, prefix=where.encode(), low_priority=self.nice)
            except OSError as e:
                # Not a directory of this file system (a symlink, a mount point, a file): one
                # error, nothing of it deleted, and the rest of the trash goes on.
                self.reporter.error("trash", where, f"cannot delete ({e.strerror}); left in place: remove it by hand (every prune reports it until then)")
                continue
            for key in self.counts:
                self.counts[key] += result.get(key, 0)
            if not os.path.lexists(self.repo.trash / name):
                self.deleted.append(name)

    def delete_subvolume(self, name: str, where: str) -> bool:
        """Deletes trash entry ``name`` when it is a btrfs subvolume (the subvolume method):
        True when it was one (deleted, or an error reported); False for a directory, left to
        the engine's walk."""
        assert self.repo is not None
        try:
            if not _engine.btrfs_is_subvolume(self.repo.trash / name):
                return False
        except OSError:
            return False  # not a directory: the walk reports it
        fd = open_dir(self.repo.trash)
        try:
            _engine.btrfs_destroy(fd, os.fsencode(name))
        except OSError as e:
            self.reporter.error("trash", where, f"cannot delete the subvolume ({e.strerror}); left in place: remove it by hand (every prune reports it until then)")
        else:
            self.deleted.append(name)
            self.counts["subvolumes"] += 1
        finally:
            os.close(fd)
        return True

    def facts(self, status: str) -> dict[str, Any]:
        """The summary's facts: the policy, each snapshot's action and reasons, and what was deleted
        or is left in the trash."""
        return {
            "status": status,
            "repository": str(self.path),
            "policy": str(self.policy),
            "dry_run": self.dry_run,
            "started": rfc3339(self.started),
            "finished": rfc3339(self.finished),
            "snapshots": [{"name": d.name, "status": d.status, "started": rfc3339(d.start.timestamp()), "action": d.action, "reasons": list(d.reasons)} for d in self.decisions],
            "kept": sum(1 for d in self.decisions if d.keep),
            "removed": sum(1 for d in self.decisions if not d.keep) if not self.dry_run else 0,
            "would_remove": sum(1 for d in self.decisions if not d.keep) if self.dry_run else 0,
            "deleted": self.deleted,
            "files_deleted": self.counts["files"],
            "dirs_deleted": self.counts["dirs"],
            "subvolumes_deleted": self.counts["subvolumes"],
            "trash_left": self.repo.trash_entries() if self.repo is not None else [],
            "warnings": self.reporter.counts.warnings,
            "errors": max(self.reporter.counts.errors, self.counts["errors"]),
        }

    def table(self) -> list[tuple[str, ...]]:
        """One row per snapshot, newest first: what happens to it and why."""
        verb = ("keep", "would remove") if self.dry_run else ("keep", "remove")
        rows: list[tuple[str, ...]] = [("snapshot", "status", "started", "action", "reasons")]
        for d in self.decisions:
            rows.append((d.name, d.status, local_time(d.start.timestamp()), verb[0] if d.keep else verb[1], ", ".join(d.reasons)))
        return rows


def local_time(ts: float) -> str:
    """A time as the tables show it: local, to the second."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def policy_from_options(**options: str | None) -> retention.Policy:
    """The policy of the ``--keep-*`` options (their text, None when absent); raises UsageError
    for a bad value or an empty policy."""
    values: dict[str, Any] = {}
    for name, text in options.items():
        if text is None:
            continue
        try:
            values[name] = retention.parse_duration(text) if name == "keep_within" else retention.parse_count(text)
        except retention.PolicyError as e:
            raise UsageError(f"--{name.replace('_', '-')}: {e}") from e
    try:
        return retention.Policy(**values)
    except retention.PolicyError as e:
        raise UsageError(str(e)) from e

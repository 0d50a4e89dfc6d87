"""mailbak check: every snapshot of a repository verified, each piece of shared work done once.

In a repository an unchanged message is one inode shared by every snapshot: one bad block on the
backup disk damages it in all of them at once, and a check of each snapshot on its own would
stat (or read) it once per snapshot. The steps, in order:

1. **Check.** REPO must be a repository (repository.py) and the subset valid: else bad input,
   exit 2. Then the repository's lock: shared (a prune waits; backups go on), exclusive with
   ``--repair``, which changes snapshots.
2. **Order.** Every snapshot's status comes from its manifest and lock
   (``repository.status_of``). One being written (``running``) is skipped with a warning.
   Trusted snapshots (manifest ``ok`` with ``digests``) come first, newest first, then the
   others: an inode is then read, when it is read, against a digest a finished run recorded.
3. **Verify each snapshot** as ``mailbak verify`` does (verifier.py: manifest, databases
   structurally, records, account rules, sizes, unknown files, the manifest's facts), its
   paths reported below the snapshot's name. The per-file work goes through one
   :class:`~mailbak.verifier.ContentCheck` for the whole run (the engine's inode map): an
   inode met in an earlier snapshot is answered from the map, without a system call.
4. **Read data** (``--read-data``, ``--read-data-subset``): each distinct inode of a trusted
   snapshot that the subset selects is read once and its SHA-256 compared with the digest its
   snapshot recorded (docs/FORMAT.md, "Digests"). ``N/M`` is a stable partition (M runs over an
   unchanged repository read every inode exactly once), ``P%`` a random share, ``SIZE`` random
   inodes until that many bytes.
5. **Report.** Each damaged inode once, naming the message and every snapshot holding it; with
   ``--repair``, ``repairer.heal`` then replaces it from a good copy (the live store, the
   off-site repository) and re-points every snapshot's path.

Not guaranteed: snapshots that are not trusted are checked, but their digest files prove
nothing (a killed run's are incomplete); their own inodes are checked by size only. A digest
file is read only where a file needs it (docs/VERIFY.md).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from mailbak import repairer
from mailbak.errors import UsageError
from mailbak.job import Metrics, Stage, files_from, interrupted_hint, run_within
from mailbak.layout import ACCOUNTS_DIR
from mailbak.report import Event, Reporter
from mailbak.repository import RepoLock, Repository, SnapshotInfo
from mailbak.restic import ResticConfig
from mailbak.status import Status
from mailbak.verifier import AREA_COUNTS, ContentCheck, Subset, Verify

#: Units of ``--read-data-subset SIZE`` (binary, as restic's).
SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_subset(text: str) -> Subset:
    """``--read-data-subset``: ``N/M`` (1 <= N <= M), ``P%`` (0 < P <= 100) or ``SIZE``
    (bytes, or with K, M, G, T); raises UsageError naming what is wrong."""
    t = text.strip()
    if m := re.fullmatch(r"(\d+)/(\d+)", t):
        n, of = int(m.group(1)), int(m.group(2))
        if not 1 <= n <= of:
            raise UsageError(f"--read-data-subset {text!r}: N/M needs 1 <= N <= M")
        return Subset(part=(n, of))
    if m := re.fullmatch(r"(\d+(?:\.\d+)?)%", t):
        p = float(m.group(1))
        if not 0 < p <= 100:
            raise UsageError(f"--read-data-subset {text!r}: a percentage must be above 0 and at most 100")
        return Subset(fraction=p / 100)
    if m := re.fullmatch(r"(\d+)([KMGT]?)B?", t, re.IGNORECASE):
        size = int(m.group(1)) * SIZE_UNITS[m.group(2).upper()]
        if size <= 0:
            raise UsageError(f"--read-data-subset {text!r}: a size must be above 0")
        return Subset(budget=size)
    raise UsageError(f"--read-data-subset {text!r}: expected N/M (e.g. 3/30), P% (e.g. 5%) or SIZE (e.g. 500M, 2G)")


class SnapshotReporter(Reporter):
    """What one snapshot's verification says, passed on with its paths below the snapshot's
    name (``2026-11-26T020000Z/data/...``) and its phases named for it."""

    def __init__(self, inner: Reporter, name: str):
        super().__init__()
        self.inner = inner
        self.name = name

    def event(self, ev: Event) -> None:
        """Counts it and passes it on below the snapshot's name."""
        super().event(ev)
        path = self.name.encode() + b"/" + ev.path if ev.path is not None else self.name.encode()
        self.inner.event(replace(ev, path=path))

    def phase(self, name: str, total: int | None = None) -> None:
        """The phase, named for the snapshot."""
        super().phase(name, total)
        self.inner.phase(f"{self.name}: {name}", total)

    def advance(self, done: int, total: int | None) -> None:
        """Passed on."""
        self.inner.advance(done, total)

    def message(self, text: str) -> None:
        """Passed on."""
        self.inner.message(text)


class Check:
    """One run of ``mailbak check`` (a job: job.py)."""

    command: ClassVar[str] = "check"
    #: Message files by what the check found of them (over all snapshots), and inodes by what
    #: reading them found.
    file_kinds: ClassVar[tuple[str, ...]] = ("checked", "missing", "read", "damaged", "unrecorded", "unverified", "repaired")
    counts_bytes: ClassVar[bool] = False
    reports_failure: ClassVar[bool] = False

    def __init__(
        self,
        repo: Path,
        *,
        read_data: bool = False,
        subset: Subset | None = None,
        repair: bool = False,
        jobs: int,
        reporter: Reporter,
        verbose: bool = False,
        seed: int | None = None,
        store: Path | None = None,
        offsite: ResticConfig | None = None,
    ):
        self.path = repo
        # A subset implies reading (restic's --read-data-subset does too), and so does a repair:
        # only reading finds what it heals.
        self.read_data = read_data or subset is not None or repair
        self.subset = subset
        self.repair = repair
        self.jobs = jobs
        self.reporter = reporter
        self.verbose = verbose
        self.seed = secrets.randbits(63) if seed is None else seed
        #: Where --repair looks for good copies: the live store (None: the one the newest
        #: snapshot's manifest names) and the off-site restic repository (None: not tried).
        self.store = store
        self.offsite = offsite
        self.repo: Repository | None = None
        self.lock: RepoLock | None = None
        self.content: ContentCheck | None = None
        #: (snapshot, its manifest status, verify's result, its area counts summed).
        self.results: list[tuple[SnapshotInfo, str | None, Status, dict[str, int]]] = []
        self.skipped: list[str] = []
        self.healed: list[repairer.Healed] = []

    def check(self) -> None:
        """Step 1; raises UsageError (not a repository) or RepositoryBusy."""
        self.repo = Repository.open(self.path)
        self.lock = RepoLock(self.path, exclusive=self.repair, on_wait=self.reporter.message)

    def close(self) -> None:
        """Releases the repository's lock; harmless when called again."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def run(self) -> Status:
        """Steps 2 to 5; clean, or problems (anything found, healed or not)."""
        assert self.repo is not None, "check() first"
        infos = self.repo.snapshots()
        for s in infos:
            if s.status == Status.RUNNING:
                self.skipped.append(s.name)
                self.reporter.warn("running", s.name, "a backup is writing this snapshot now: not checked")
        todo = [s for s in infos if s.status != Status.RUNNING]
        # Trusted first (stable: newest first within each group).
        todo.sort(key=lambda s: not ContentCheck.trusted(s.manifest, s.status))
        self.content = ContentCheck(read_data=self.read_data, subset=self.subset, seed=self.seed)
        for info in todo:
            sub = SnapshotReporter(self.reporter, info.name)
            v = Verify(info.path, fix=False, jobs=self.jobs, reporter=sub, verbose=self.verbose, content=self.content, name=info.name, in_check=True)
            try:
                status = run_within(v)
            except UsageError as e:
                # What would be bad input for `verify SNAPSHOT` is damage of this snapshot here:
                # the rest of the history is still checked.
                self.reporter.error("snapshot", info.name, f"cannot be verified: {e}")
                status = Status.PROBLEMS
            counts = {k: sum(a.counts.get(k, 0) for a in v.areas) for k in AREA_COUNTS}
            self.results.append((info, v.manifest_status, status, counts))
        self.content.report(self.reporter, in_repository=True)
        if self.repair:
            self.heal()
        return Status.PROBLEMS if self.reporter.counts.errors else Status.CLEAN

    def heal(self) -> None:
        """Step 5's repair: every damaged inode to ``repairer.heal``, under the exclusive lock;
        it reports each outcome itself."""
        assert self.repo is not None and self.content is not None
        damages = self.content.damages()
        if not damages:
            return
        damaged = [
            repairer.Damage(
                area=d["area"].decode("utf-8", "surrogateescape").removeprefix(ACCOUNTS_DIR + "/"),
                id=d["id"],
                rel=d["rel"].decode("utf-8", "surrogateescape"),
                size=d["size"],
                digest=d["digest"] or b"",
                snapshots=d["snapshots"],
                inode=(d["inode"][0], d["inode"][1]),
                cause=d["cause"],
            )
            for d in damages
        ]
        self.runner_phase("repair", len(damaged))
        self.healed = repairer.heal(self.repo, damaged, store=self.store, offsite=self.offsite, reporter=self.reporter)

    def runner_phase(self, name: str, total: int) -> None:
        """Names a phase for the reporter (the repair runs in Python, without the engine)."""
        self.reporter.phase(name, total)

    def facts(self, status: str) -> dict[str, Any]:
        """The summary's facts: snapshots checked and skipped, files by outcome over all of
        them, the content check's counts, and each damaged inode with its snapshots."""
        c = self.reporter.counts
        content = self.content.counts() if self.content is not None else {}
        damages = self.content.damages() if self.content is not None else []
        totals = {k: sum(r[3].get(k, 0) for r in self.results) for k in AREA_COUNTS}
        return {
            "status": status,
            "repository": str(self.path),
            "read_data": self.read_data,
            "subset": _subset_text(self.subset),
            "snapshots": len(self.results),
            "snapshots_skipped": self.skipped,
            "snapshots_with_problems": [r[0].name for r in self.results if r[2] != Status.CLEAN],
            **{f"files_{k}": v for k, v in totals.items()},
            **content,
            "repaired": sum(1 for h in self.healed if h.complete),
            "repairs": [h.as_json() for h in self.healed],
            "damage": [
                {
                    "area": d["area"].decode("utf-8", "surrogateescape"),
                    "id": d["id"],
                    "path": d["rel"].decode("utf-8", "surrogateescape"),
                    "cause": d["cause"],
                    "snapshots": d["snapshots"],
                }
                for d in damages
            ],
            "warnings": c.warnings,
            "errors": c.errors,
        }

    def headline(self, status: Status) -> str:
        """The summary's title."""
        return f"check {status}: {self.path}"

    def table(self) -> list[tuple[str, ...]]:
        """One row per snapshot checked, then the content check's counts."""
        rows: list[tuple[str, ...]] = [("snapshot", "manifest", "result", "files", "missing", "damaged")]
        for info, manifest_status, status, counts in self.results:
            rows.append((info.name, str(manifest_status or "-"), str(status), str(counts["checked"]), str(counts["missing"]), str(counts["damaged"])))
        if self.content is not None:
            c = self.content.counts()
            rows.append(("inodes", "", "", str(c["inodes_checked"]), "", str(c["damaged"])))
            if self.read_data:
                rows.append((f"read: {c['inodes_read']} inodes, {c['bytes_read']} bytes", "", "", "", "", ""))
        return rows

    def left_behind(self, stage: Stage | None) -> str:
        """A check writes nothing (but --repair, whose every step is atomic)."""
        return interrupted_hint(stage, self.path, "check") or ("check incomplete; inodes already healed stay healed" if self.repair else "check incomplete; nothing was changed")

    def metrics(self, facts: dict[str, Any] | None) -> Metrics:
        """Files by outcome, bytes read and distinct inodes met."""
        if not facts:
            return Metrics(dict.fromkeys(self.file_kinds, 0), bytes_read=0, inodes_checked=0)
        kinds = {"checked": "files_checked", "missing": "files_missing", "read": "inodes_read"}
        return Metrics(files_from(self.file_kinds, facts, lambda k: kinds.get(k, k)), bytes_read=facts.get("bytes_read", 0), inodes_checked=facts.get("inodes_checked", 0))


def _subset_text(subset: Subset | None) -> str | None:
    """The subset as the summary shows it."""
    if subset is None:
        return None
    if subset.part is not None:
        return f"{subset.part[0]}/{subset.part[1]}"
    if subset.fraction is not None:
        return f"{subset.fraction * 100:g}%"
    return f"{subset.budget} bytes"

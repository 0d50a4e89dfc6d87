"""mailbak restore: brings a backup back as a new store, then verifies it.

Step by step:
1. Check: BACKUP has an ``ok`` manifest (else refused unless ``--force``); STORE does not exist
   or is empty. Problems here are bad input: exit 2, nothing written.
2. ``config/`` is copied (modes kept, symlinks recreated as they are, never followed).
3. ``data/``: in the queue and each account directory, files at a message path are hardlinked
   (copied across file systems, or always with ``--copy``); everything else, databases included,
   is copied, because the server modifies those in place. The backup's databases are compact
   LMDB snapshots without lock files, so their copies are fresh LMDB files.
4. ``data/tmp/`` is created (it is never backed up; writers need it).
5. The restored store is verified as ``mailbak verify`` would, and the result shown.

Every write goes through directory descriptors and single names read from the backup's
directories, so no name in a backup (``..``, absolute symlink targets) can lead a write outside
STORE; symlinks are recreated as links, never followed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mailbak import _engine, manifest
from mailbak.anchor import identity, inside
from mailbak.backup import check_destination, make_dir
from mailbak.layout import is_real_dir
from mailbak.report import Reporter
from mailbak.runner import Runner, UsageError
from mailbak.verify import Verify

#: Names expected at the top of a backup.
BACKUP_ENTRIES = ("config", "data", manifest.MANIFEST)



class Restore:
    """One run of ``mailbak restore``."""

    def __init__(self, backup: Path, store: Path, *, force_copy: bool, force: bool, jobs: int, reporter: Reporter, verbose: bool = False):
        self.backup = backup
        self.store = store
        self.force_copy = force_copy
        self.force = force
        self.jobs = jobs
        self.reporter = reporter
        self.verbose = verbose
        self.runner = Runner(reporter, verbose=verbose)
        self.counts = {"linked": 0, "copied": 0, "symlinks": 0}
        self.verify: Verify | None = None
        # (st_dev, st_ino) of the target: no walk ever enters it (set by check()).
        self.skip: list[tuple[int, int]] = []

    def check(self) -> None:
        """Step 1; raises UsageError."""
        if not self.backup.is_dir():
            raise UsageError(f"{self.backup}: not a directory")
        try:
            doc = manifest.read(self.backup)
        except manifest.ManifestError as e:
            if not self.force:
                raise UsageError(f"{e}; refusing to restore it (use --force to restore what is there)") from e
            self.reporter.warn("manifest", manifest.MANIFEST, f"{e}; restoring anyway (--force)")
        else:
            if doc["status"] != "ok" and not self.force:
                raise UsageError(f"{self.backup}: the backup is marked failed ({doc['errors']} errors when it was made); refusing to restore it (use --force)")
        for part in ("config", "data"):
            if not is_real_dir(self.backup / part):
                raise UsageError(f"{self.backup}: no {part}/ directory; not a mailbak backup")
        check_destination(self.store)
        # By identity, not by path: a bind mount or a symlink gives a directory a second path.
        if inside(self.store, [self.backup, self.backup / "config", self.backup / "data"]) or (os.path.lexists(self.store) and inside(self.backup, [self.store])):
            raise UsageError(f"{self.store}: the target is inside the backup (or holds it); restore elsewhere")
        try:
            if not self.store.exists():
                os.mkdir(self.store, 0o750)
            make_dir(self.store / "config", self.backup / "config")
            make_dir(self.store / "data", self.backup / "data")
        except OSError as e:
            raise UsageError(f"{self.store}: cannot write: {e.strerror}") from e
        self.skip = [identity(os.stat(self.store))]

    def run(self) -> str:
        """Steps 2 to 5; returns the verification result ("clean" or "problems")."""
        for name in sorted(set(os.listdir(self.backup)) - set(BACKUP_ENTRIES)):
            self.reporter.warn("unrecognized", name, "not part of a mailbak backup; not restored")
        self.runner.new_phase("config")
        self.copy(self.backup / "config", self.store / "config", b"config")
        self.runner.new_phase("data")
        data_src, data_dst = self.backup / "data", self.store / "data"
        top = [n for n in os.listdir(os.fsencode(data_src)) if n not in (b"queue", b"accounts")]
        if top:
            self.copy(data_src, data_dst, b"data", only=top)
        if is_real_dir(data_src / "queue"):
            make_dir(data_dst / "queue", data_src / "queue")
            self.copy(data_src / "queue", data_dst / "queue", b"data/queue", message_tree=b"")
        accounts = data_src / "accounts"
        if is_real_dir(accounts):
            make_dir(data_dst / "accounts", accounts)
            for name in sorted(os.listdir(os.fsencode(accounts))):
                src = accounts / os.fsdecode(name)
                if is_real_dir(src):
                    make_dir(data_dst / "accounts" / os.fsdecode(name), src)
                    self.copy(src, data_dst / "accounts" / os.fsdecode(name), b"data/accounts/" + name, message_tree=b"msg")
                else:
                    self.copy(accounts, data_dst / "accounts", b"data/accounts", only=[name])
        if not (data_dst / "tmp").exists():
            os.mkdir(data_dst / "tmp", 0o750)
        self.runner.finish()
        _engine.syncfs(self.store)
        self.reporter.message(f"restored into {self.store}; verifying it")
        self.verify = Verify(self.store, fix=False, jobs=self.jobs, reporter=self.reporter, verbose=self.verbose)
        self.verify.check()
        return self.verify.run()

    def copy(self, src: Path, dst: Path, prefix: bytes, *, only: list[bytes] | None = None, message_tree: bytes | None = None) -> None:
        result = self.runner.call(_engine.copy_tree, src, dst, jobs=self.jobs, prefix=prefix, only=only, message_tree=message_tree, force_copy=self.force_copy, skip=self.skip)
        for k in self.counts:
            self.counts[k] += result[k]
        self.runner.note_link_fallback(result, "the backup is on another file system")

    def facts(self, result: str) -> dict[str, Any]:
        facts: dict[str, Any] = {"status": result, "store": str(self.store), **self.counts}
        if self.verify is not None:
            facts["verify"] = self.verify.facts(result)
        facts["warnings"] = self.reporter.counts.warnings
        facts["errors"] = self.reporter.counts.errors
        return facts

    def table(self) -> list[tuple[str, ...]]:
        rows = [("", "count"), *((k, str(v)) for k, v in self.counts.items())]
        if self.verify is not None:
            rows += [(f"verify {k}", str(v)) for k, v in self.verify.facts("").items() if isinstance(v, int)]
        return rows

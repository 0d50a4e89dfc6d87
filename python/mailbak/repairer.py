"""Healing damaged files of a repository (``mailbak check --repair``, docs/VERIFY.md).

In a repository every unchanged file is one inode shared by every snapshot that holds it, so
one bad block damages it in all of them. ``check`` finds such an inode (its bytes no longer hash
to the digest recorded when it was written) and hands it here as a :class:`Damage`; :func:`heal`
writes a new inode with the good bytes and re-points every snapshot's path to it. Each damage
ends as one :class:`Healed` value, healed or not (errors on single files are values).

Per damage, in this order:

1. **Paths.** Each snapshot's path (``REPO/SNAPSHOT/REL``) is reached from the repository's
   directory one component at a time, never through a symlink, and looked at with ``lstat``:
   only a path that still holds the damaged inode (same device and inode, a regular file) is
   re-pointed; any other (changed, removed, a symlink now) is left as it is and named.
2. **A good copy**, the first of:

   - the live store's file at the same place (``data/...`` or ``config/...`` of the store the
     newest snapshot's manifest names, unless the caller names one): opened below the store's
     ``data/`` (or ``config/``) held by descriptor, never through a symlink, as the store's
     owner when run as root (identity.py), a regular file only, read no further than its
     recorded size; it is good only when its size and SHA-256 are the recorded ones (a message
     file hardlinked into the repository is the damaged inode itself, and never good);
   - the off-site restic repository (restic.py, the settings of ``mailbak offsite``): a file
     under 512 KiB is one restic blob whose ID is its SHA-256 (restic's chunker cuts nothing
     smaller), so ``restic cat blob <digest>`` gives it whichever snapshot holds it; a larger
     one is ``restic dump``-ed from the restic snapshots of the snapshots that hold it (found
     through the push tags: pushed.py), oldest first. Either must hash to the digest again.

   The copy is written straight into a new file (``O_CREAT|O_EXCL|O_NOFOLLOW``) in the
   directory of the first path, never through memory.
3. **The new inode** gets the damaged one's mode, owner, group and times, is fsynced, and is
   read back and hashed once more: only bytes on disk with the recorded size and digest
   replace anything.
4. **Re-pointing**, per path: still the damaged inode (``lstat`` again)? Then the new inode is
   linked to a temporary name in that directory and renamed over the path (one atomic rename:
   a reader sees the old file or the new one); the directories are fsynced, and the
   temporary names left are removed.

What it guarantees: nothing is deleted or replaced without a good replacement on disk (a
damage without a good copy leaves every path as it was); a path is replaced only when it
still holds the damaged inode; nothing outside the repository is written (the store is only
read).

What it does not: it takes no lock (the caller, ``check --repair``, holds the repository's lock
exclusively, so no backup or prune changes a snapshot meanwhile); between the last ``lstat``
of a path and its rename only root could change the path. A database or config file of 512 KiB
or more is healed only from the store, whose copy has usually changed since (databases change
every night): ``restic dump`` is looked for message files alone. A smaller one can come from the
blob its digest names (the digest is its content's name, whatever file it belongs to).
The damaged inode itself is freed by the file system once no path holds it.

Each outcome is also reported: a message when healed, a warning ``repair_partial`` when some
paths were left, an error ``not_healed`` when nothing could be done.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from mailbak import _engine, manifest
from mailbak.anchor import DataRoot, open_problem
from mailbak.digests import hash_fd
from mailbak.errors import ManifestError, ResticError, UsageError
from mailbak.fsio import create_new, open_dir, open_file
from mailbak.identity import StoreOwner, acting_as
from mailbak.layout import StorePaths
from mailbak.pushed import OffsiteSnapshot, pushed_snapshots, repo_tag
from mailbak.report import Reporter
from mailbak.repository import Method, Repository
from mailbak.restic import Restic, ResticConfig, error_line

#: restic's chunker never cuts a file before 512 KiB: a smaller file (not empty) is one blob,
#: and a data blob's ID is the SHA-256 of its bytes.
SINGLE_BLOB_LIMIT = 512 * 1024

#: Bytes per read when copying.
CHUNK = 1 << 20


class Source(StrEnum):
    """Where a good copy came from."""

    STORE = "store"
    OFFSITE = "offsite"


@dataclass(frozen=True)
class Damage:
    """A damaged inode of a repository, as check met it (the check -> repair interface)."""

    #: "queue" or the account name (of a message file; of a non-message file: its area or "").
    area: str
    #: The message ID; None for a non-message file (from the digests' ``files``).
    id: int | None
    #: Its path below the snapshot root, e.g. ``data/accounts/alice/msg/a/77``.
    rel: str
    #: The recorded size and SHA-256 (32 bytes): what a good copy must have.
    size: int
    digest: bytes
    #: Every snapshot whose ``rel`` is this damaged inode, newest first.
    snapshots: list[str]
    #: (st_dev, st_ino) of the damaged file as check met it.
    inode: tuple[int, int]
    #: "digest_mismatch", "size_mismatch", "unreadable" (EIO) or "missing".
    cause: str


@dataclass
class Healed:
    """The outcome of one damage: healed (``source`` set) or not (None: ``detail`` says why)."""

    damage: Damage
    #: "store" or "offsite"; None: not healed.
    source: str | None
    #: Why not, or what was done (and which paths were left as they were).
    detail: str
    #: Snapshot names whose path now holds the new inode.
    repointed: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Whether every snapshot path of the damage now holds a good inode."""
        return self.source is not None and len(self.repointed) == len(self.damage.snapshots)

    def as_json(self) -> dict[str, object]:
        """The outcome as JSON output shows it."""
        d = self.damage
        return {
            "area": d.area,
            "id": d.id,
            "path": d.rel,
            "cause": d.cause,
            "source": self.source,
            "detail": self.detail,
            "snapshots": list(d.snapshots),
            "repointed": list(self.repointed),
        }


def heal(repo: Repository, damaged: list[Damage], *, store: Path | None, offsite: ResticConfig | None, reporter: Reporter) -> list[Healed]:
    """Heals each of ``damaged`` (see the module doc) from the live store (``store``; None:
    the one the newest snapshot's manifest names) or the off-site restic repository
    (``offsite``; None: not tried). Call it with the repository's lock held exclusively.
    Never raises for one file: every outcome is a :class:`Healed`, in the order given."""
    healer = _Healer(repo, store, offsite, reporter)
    try:
        return [healer.heal(d) for d in damaged]
    finally:
        healer.close()


# Internals ------------------------------------------------------------------------------------


def _parts(rel: str) -> list[str]:
    """``rel``'s components; raises ValueError for a path that could leave the snapshot."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not a path below a snapshot: {rel!r}")
    return parts


def _what(st: os.stat_result | None) -> str:
    """What a path holds now, in words."""
    if st is None:
        return "missing"
    if stat.S_ISLNK(st.st_mode):
        return "a symlink now (never followed)"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file now"
    return "another file now (changed since check)"


@dataclass
class _Path:
    """One snapshot's path of a damage: its directory held, and its entry's stat."""

    snapshot: str
    dir_fd: int
    name: str
    st: os.stat_result | None


@dataclass
class _Store:
    """A live store's ``data/`` and ``config/`` held, and whom to act as inside it."""

    path: Path
    roots: dict[str, DataRoot | str]
    owner: StoreOwner | None


class _Healer:
    """The state :func:`heal` keeps across damages: the stores, restic and its snapshot list,
    each opened once and only when needed."""

    def __init__(self, repo: Repository, store: Path | None, offsite: ResticConfig | None, reporter: Reporter):
        self.repo = repo
        self.store_arg = store
        self.offsite = offsite
        self.reporter = reporter
        self.stores: dict[Path, _Store] = {}
        self.manifest_store: dict[str, Path | str] = {}
        self.restic: Restic | str | None = None
        self.pushed: list[OffsiteSnapshot] | str | None = None
        self.repo_fd: int | None = None

    def close(self) -> None:
        """Closes every descriptor held."""
        for s in self.stores.values():
            for root in s.roots.values():
                if isinstance(root, DataRoot):
                    root.close()
        self.stores.clear()
        if self.repo_fd is not None:
            os.close(self.repo_fd)
            self.repo_fd = None

    # One damage --------------------------------------------------------------------------------

    def heal(self, d: Damage) -> Healed:
        """Heals one damage; reports and returns its outcome."""
        try:
            healed = self._heal(d)
        except OSError as e:
            # Anything not tied to one path (the repository's directory): still a value.
            healed = Healed(d, None, f"cannot repair: {e.strerror or e}")
        where = f"{d.snapshots[0]}/{d.rel}" if d.snapshots else d.rel
        if healed.source is None:
            self.reporter.error("not_healed", where, healed.detail)
        elif not healed.complete:
            self.reporter.warn("repair_partial", where, healed.detail)
        else:
            self.reporter.message(f"healed {where}: {healed.detail}")
        return healed

    def _heal(self, d: Damage) -> Healed:
        try:
            parts = _parts(d.rel)
        except ValueError as e:
            return Healed(d, None, str(e))
        if len(d.digest) != 32:
            return Healed(d, None, "no recorded SHA-256 to check a copy against")
        paths, left = self._paths(d, parts)
        try:
            holding = [p for p in paths if p.st is not None and stat.S_ISREG(p.st.st_mode) and (p.st.st_dev, p.st.st_ino) == d.inode]
            left += [f"{p.snapshot}: {_what(p.st)}" for p in paths if p not in holding]
            if not holding:
                return Healed(d, None, "no snapshot path holds the damaged file any more; " + "; ".join(left))
            opened = self._writable(holding)
            try:
                return self._replace(d, holding, left)
            finally:
                self._read_only_again(opened)
        finally:
            for p in paths:
                os.close(p.dir_fd)

    def _writable(self, holding: list[_Path]) -> list[Path]:
        """In a repository on btrfs each snapshot is a read-only subvolume holding its own
        inodes (a damage has one snapshot there): made writable for the re-point, and read-only
        again right after by :meth:`_read_only_again`. Nothing to do in a hardlink repository."""
        if self.repo.method is not Method.SUBVOLUME:
            return []
        opened = []
        for name in dict.fromkeys(p.snapshot for p in holding):
            path = self.repo.path / name
            if _engine.btrfs_is_readonly(path):
                _engine.btrfs_set_readonly(path, False)
                opened.append(path)
        return opened

    def _read_only_again(self, opened: list[Path]) -> None:
        """Makes the subvolumes :meth:`_writable` opened read-only again; one that refuses is
        an error naming it (the snapshot stays complete, only writable)."""
        for path in opened:
            try:
                _engine.btrfs_set_readonly(path, True)
            except OSError as e:
                self.reporter.error("read_only", path.name, f"the snapshot could not be made read-only again after its repair ({e.strerror}); run the repair again or `btrfs property set {path} ro true`")

    def _paths(self, d: Damage, parts: list[str]) -> tuple[list[_Path], list[str]]:
        """Each snapshot's path of ``d``: its directory held (reached without a symlink) and the
        entry's lstat; and the snapshots whose directory could not be reached, with why."""
        if self.repo_fd is None:
            self.repo_fd = open_dir(self.repo.path, follow=True)
        paths: list[_Path] = []
        left: list[str] = []
        for name in d.snapshots:
            fd = os.dup(self.repo_fd)
            try:
                for part in [name, *parts[:-1]]:
                    new = open_dir(part, dir_fd=fd)
                    os.close(fd)
                    fd = new
            except OSError as e:
                os.close(fd)
                why = "a symlink or not a directory on the way (never followed)" if e.errno in (errno.ELOOP, errno.ENOTDIR) else e.strerror
                left.append(f"{name}: {why}")
                continue
            paths.append(_Path(name, fd, parts[-1], self._lstat(fd, parts[-1])))
        return paths, left

    @staticmethod
    def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def _replace(self, d: Damage, holding: list[_Path], left: list[str]) -> Healed:
        """Writes the good copy as a new inode next to the first path and re-points every path
        still holding the damaged inode to it."""
        first = holding[0]
        assert first.st is not None
        tmp, fd = self._create(first)
        try:
            source, why = self._fill(d, fd)
            if source is None:
                return Healed(d, None, f"no good copy: {why}; left as it was")
            st = first.st
            os.fchown(fd, st.st_uid, st.st_gid)
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
            os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.fsync(fd)
            digest, size = hash_fd(fd)
            if (digest, size) != (d.digest, d.size):
                return Healed(d, None, "no good copy: the new file did not read back with the recorded digest; left as it was")
            repointed, dirs = [], {first.dir_fd}
            for p in holding:
                why = self._repoint(d, first.dir_fd, tmp, p)
                if why is None:
                    repointed.append(p.snapshot)
                    dirs.add(p.dir_fd)
                else:
                    left.append(f"{p.snapshot}: {why}")
        finally:
            os.close(fd)
            try:
                os.unlink(tmp, dir_fd=first.dir_fd)
            except OSError:
                pass
        for dfd in dirs:
            os.fsync(dfd)
        done = f"from the {'live store' if source is Source.STORE else 'off-site restic repository'}; {len(repointed)} snapshot path(s) re-pointed to a new file"
        if left:
            done += "; left as they were: " + "; ".join(left)
        return Healed(d, source, done, repointed)

    @staticmethod
    def _create(first: _Path) -> tuple[str, int]:
        """A new file in the first path's directory, at a free temporary name."""
        for _ in range(100):
            tmp = f".{first.name}.repair-{secrets.token_hex(6)}.tmp"
            try:
                return tmp, create_new(tmp, 0o600, dir_fd=first.dir_fd, access=os.O_RDWR)
            except FileExistsError:
                continue
        raise FileExistsError(errno.EEXIST, "no free temporary name", first.name)

    def _repoint(self, d: Damage, src_dir: int, src: str, p: _Path) -> str | None:
        """Renames a link of the new file over ``p`` when it still holds the damaged inode; None
        when done, else why it was left."""
        st = self._lstat(p.dir_fd, p.name)
        if st is None or not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != d.inode:
            return _what(st)
        for _ in range(100):
            tmp = f".{p.name}.repair-{secrets.token_hex(6)}.tmp"
            try:
                os.link(src, tmp, src_dir_fd=src_dir, dst_dir_fd=p.dir_fd, follow_symlinks=False)
                break
            except FileExistsError:
                continue
            except OSError as e:
                return f"cannot link the new file there: {e.strerror}"
        else:
            return "no free temporary name"
        try:
            os.rename(tmp, p.name, src_dir_fd=p.dir_fd, dst_dir_fd=p.dir_fd)
        except OSError as e:
            try:
                os.unlink(tmp, dir_fd=p.dir_fd)
            except OSError:
                pass
            return f"cannot rename the new file over it: {e.strerror}"
        return None

    # Good copies ---------------------------------------------------------------------------------

    def _fill(self, d: Damage, fd: int) -> tuple[Source | None, str]:
        """Writes the first good copy of ``d`` into ``fd``: its source, or None and why not."""
        whys = []
        for source, fill in ((Source.STORE, self._from_store), (Source.OFFSITE, self._from_offsite)):
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            why = fill(d, fd)
            if why is None:
                return source, ""
            whys.append(f"{source}: {why}")
        return None, "; ".join(whys)

    def _check(self, d: Damage, fd: int, what: str) -> str | None:
        """Whether ``fd`` now holds the recorded bytes: None when it does, else why not."""
        digest, size = hash_fd(fd)
        if size != d.size:
            return f"{what} gave {size} bytes, recorded {d.size}"
        if digest != d.digest:
            return f"{what}'s bytes do not have the recorded digest"
        return None

    def _store_of(self, d: Damage) -> _Store | str:
        """The live store to heal ``d`` from (held), or why there is none."""
        path: Path | str
        if self.store_arg is not None:
            path = self.store_arg
        else:
            name = d.snapshots[0] if d.snapshots else ""
            if name not in self.manifest_store:
                try:
                    doc = manifest.read(self.repo.path / name)
                    named = doc.get("store")
                    self.manifest_store[name] = Path(named) if isinstance(named, str) and named.startswith("/") else "the snapshot's manifest names no store"
                except ManifestError as e:
                    self.manifest_store[name] = str(e)
            path = self.manifest_store[name]
            if isinstance(path, str):
                return path
        if path not in self.stores:
            sp = StorePaths.of(path)
            roots: dict[str, DataRoot | str] = {}
            for top, where in (("data", sp.data_dir), ("config", sp.config_dir)):
                try:
                    roots[top] = DataRoot(where)
                except OSError as e:
                    roots[top] = f"{where}: {open_problem(where, e)}"
            self.stores[path] = _Store(path, roots, StoreOwner.of(sp.data_dir))
        return self.stores[path]

    def _from_store(self, d: Damage, fd: int) -> str | None:
        """Copies the store's file at ``d.rel`` into ``fd`` when it is good; None when done."""
        s = self._store_of(d)
        if isinstance(s, str):
            return s
        top, _, rel = d.rel.partition("/")
        root = s.roots.get(top)
        if root is None:
            return "not a file of a store (only data/ and config/ have a copy there)"
        if isinstance(root, str):
            return root
        parent, _, name = rel.rpartition("/")
        try:
            with acting_as(s.owner):
                dfd = root.open_dir(parent)
                try:
                    src = open_file(name, dir_fd=dfd)
                finally:
                    os.close(dfd)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return f"{s.path}/{d.rel}: no such file"
            why = "a symlink, or below one (never followed)" if e.errno in (errno.ELOOP, errno.ENOTDIR) else e.strerror
            return f"{s.path}/{d.rel}: {why}"
        try:
            st = os.fstat(src)
            if not stat.S_ISREG(st.st_mode):
                return f"{s.path}/{d.rel}: not a regular file"
            if (st.st_dev, st.st_ino) == d.inode:
                return f"{s.path}/{d.rel} is the damaged file itself (hardlinked into the repository)"
            if st.st_size != d.size:
                return f"{s.path}/{d.rel}: {st.st_size} bytes, recorded {d.size}"
            _copy(src, fd, d.size + 1)
        except OSError as e:
            return f"{s.path}/{d.rel}: cannot read: {e.strerror}"
        finally:
            os.close(src)
        return self._check(d, fd, "the store's file")

    def _restic_of(self) -> Restic | str:
        """restic with the off-site settings, or why not."""
        if self.offsite is None:
            return "no off-site repository configured"
        if self.restic is None:
            try:
                self.restic = Restic(self.offsite)
            except UsageError as e:
                self.restic = str(e)
        return self.restic

    def _pushed(self, restic: Restic) -> list[OffsiteSnapshot] | str:
        """The restic snapshots of this repository's pushes, oldest first, or why not."""
        if self.pushed is None:
            try:
                self.pushed = pushed_snapshots(restic, repo_tag(self.repo))
            except (ResticError, UsageError) as e:
                self.pushed = str(e)
        return self.pushed

    def _from_offsite(self, d: Damage, fd: int) -> str | None:
        """Writes the off-site copy of ``d`` into ``fd`` when one is good; None when done."""
        restic = self._restic_of()
        if isinstance(restic, str):
            return restic
        if 0 < d.size < SINGLE_BLOB_LIMIT:
            p = restic.run(restic.command("cat", "blob", d.digest.hex()), stdout=fd)
            if p.returncode != 0:
                return f"restic cat blob {d.digest.hex()[:16]}...: {error_line(p.stderr, p.returncode, restic.repos)}"
            return self._check(d, fd, "restic's blob")
        if d.id is None:
            return "only message files are looked for off-site"
        pushed = self._pushed(restic)
        if isinstance(pushed, str):
            return pushed
        holding = [s for s in pushed if s.snapshot in d.snapshots]
        if not holding:
            return f"a file of {d.size} bytes is several restic blobs, and none of its snapshots was pushed: not healable off-site"
        whys = []
        for snap in holding:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            p = restic.run(restic.command("dump", snap.id, "/" + d.rel), stdout=fd)
            why = f"restic dump: {error_line(p.stderr, p.returncode, restic.repos)}" if p.returncode != 0 else self._check(d, fd, f"restic snapshot {snap.short_id}")
            if why is None:
                return None
            whys.append(why)
        return "; ".join(whys)


def _copy(src: int, dst: int, limit: int) -> int:
    """Copies at most ``limit`` bytes from ``src`` to ``dst``; the bytes copied."""
    done = 0
    while done < limit:
        chunk = os.read(src, min(CHUNK, limit - done))
        if not chunk:
            break
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view) :]
        done += len(chunk)
    return done

"""mailbak's Rust engine: the per-file work of backup, verify, restore and gen, in parallel.

Every call runs in a pool of ``jobs`` threads with the GIL released, so call it from a worker
thread and poll ``Progress`` from the main one (``mailbak.runner`` does). Per-file problems never
raise: they arrive as events through ``Progress.drain()`` and are counted in the returned dict.
Paths in events are bytes (file names need not be UTF-8), prefixed with the call's ``prefix``.

ID sets and sizes are buffers of little-endian u64 (``mailbak.layout.pack_ids``), never lists.
"""

import os
from typing import TypedDict, final

__all__ = [
    "Progress",
    "BackupArea",
    "RepoCheck",
    "LmdbError",
    "backup_areas",
    "copy_tree",
    "delete_tree",
    "drop_stale",
    "btrfs_is_btrfs",
    "btrfs_is_subvolume",
    "btrfs_create_subvolume",
    "btrfs_snapshot",
    "btrfs_set_readonly",
    "btrfs_is_readonly",
    "btrfs_seal",
    "btrfs_destroy",
    "rename_noreplace",
    "diff_ids",
    "parse_digests",
    "render_digests",
    "check_areas",
    "lmdb_check",
    "read_index",
    "read_messages",
    "read_heads",
    "read_tables",
    "write_messages",
    "message_path",
    "syncfs",
    "parse_message_name",
    "fs_identity",
    "set_fs_identity",
    "build_info",
]

StrPath = str | os.PathLike[str]

class LmdbError(Exception):
    """A database failed the structural check; ``args`` is (kind, page, message) with kind one
    of "corrupt", "unsupported", "stale" (the snapshot's meta page was reused: retry with a new
    read transaction) or "io"."""

@final
class Progress:
    """Progress counters, the cancel flag and the event queue shared with running calls."""

    def __new__(cls, verbose: bool = False, max_queued: int = ...) -> Progress:
        """``verbose`` queues per-file "info" events; past ``max_queued`` (default 100,000) undrained events,
        further ones are counted in ``dropped`` but not kept."""
    def cancel(self) -> None:
        """Asks every worker to stop at its next file; the call then returns early."""
    @property
    def cancelled(self) -> bool: ...
    def position(self) -> tuple[int, int]:
        """(done, total) units of work (files)."""
    def add_total(self, n: int) -> None:
        """Adds to the expected total (the caller knows it from the snapshot)."""
    def add_done(self, n: int) -> None:
        """Records work done outside the engine."""
    def drain(self) -> list[tuple[str, str, bytes, int, str]]:
        """Takes the queued events: (severity "info"|"warning"|"error", code, path, errno, detail)."""
    @property
    def dropped(self) -> int:
        """Events not kept because the queue was full."""

class Tally(TypedDict):
    """Exact counts of one call (keys present in every result dict)."""

    linked: int
    copied: int
    reused: int  # files hardlinked from the ``reference`` backup instead of copied
    reflinked: int  # files copied by a reflink (FICLONE; shared extents): a subset of ``copied``
    bytes_copied: int
    skipped_new: int
    skipped_erasing: int
    known: int
    unrecognized: int
    orphans: int
    missing: int
    damaged: int
    special: int
    symlinks: int
    dirs: int
    checked: int
    moved: int
    errors: int
    warnings: int
    dropped: int  # entries removed from a clone of the reference the store no longer has (``in_place``, ``drop_stale``)

class TransferResult(Tally):
    """A Tally plus the errno of the first link that had to become a copy (None if none) and
    how many files were copied because a link was impossible."""

    link_fallback_errno: int | None
    link_fallbacks: int
    digests: ShardFacts  # the area's shard files (backup_areas with "digests"; zeros otherwise)
    files: list[tuple[bytes, int, bytes | None]]  # plain files placed: (path, size, digest or None if reused); calls recording digests only
    racy: list[int]  # backup_areas with racy_from: IDs of message files copied with an mtime at or after it, ascending (empty otherwise)

class ShardFacts(TypedDict):
    """What writing one area's shard files of digests did (docs/FORMAT.md, "Digests")."""

    shards_written: int
    shards_linked: int
    bytes_written: int
    messages: int
    pending: int

class Area(TypedDict, total=False):
    """One message area (the queue or an account) for BackupArea (backup_areas) and check_areas."""

    src: StrPath  # the area's directory (relative to ``root`` when given)
    dst: StrPath  # BackupArea: the destination directory (must exist)
    tree: bytes  # message tree relative to src: b"msg" for accounts, b"" for the queue
    known: list[bytes]  # root-level names the caller handles itself (index.db, ...)
    copy: list[bytes]  # optional: root-level regular files the call copies (never links), e.g. b"junkfilter.bloom"
    live: bytes  # live IDs, packed u64, ascending
    sizes: bytes  # required: recorded sizes aligned with live, packed u64 (every value is a size)
    unknown_sizes: bytes  # optional: live IDs whose record has no readable size (not compared)
    erasing: bytes  # IDs being erased, packed u64
    next_id: int  # the first ID not allocated at the snapshot; files at the path of an ID from here on are new
    prefix: bytes  # prefix of every reported path, e.g. b"data/accounts/bob"
    fix_rel: bytes  # check_areas with fix_root: where this area's strays go below fix_root
    reference_live: bytes  # BackupArea, optional: the reference snapshot's copy of the index, trusted to prove messages: its live IDs, packed u64, ascending
    reference_sizes: bytes  # with reference_live: their recorded sizes (a live ID of both with the same size is linked from the reference unlooked-at)
    reference_unknown_sizes: bytes  # optional: the reference's live IDs whose record has no readable size (never proven)
    reference_racy: bytes  # optional: IDs the reference copied within its racily-clean window, packed u64 (never proven)
    reference_sealed: bool  # optional, in place: the clone is of a read-only reference that named its racy files; a proven message the clone holds is kept without a stat
    digests: tuple[StrPath, bytes]  # BackupArea: the directory for the area's shard files, and its place below reference_digests

@final
class BackupArea:
    """One area of a backup_areas call, built from its description (``Area``, with ``dst``)
    ahead of the call: the engine's own copy of its IDs, sizes and proof, so that the caller
    can let go of the index buffers area by area. Raises ValueError for a malformed area."""

    def __new__(cls, area: Area) -> BackupArea: ...

def backup_areas(
    areas: list[BackupArea],
    *,
    jobs: int,
    progress: Progress,
    force_copy: bool = False,
    root: int | None = None,
    skip: list[tuple[int, int]] = ...,
    reference: StrPath | None = None,
    reference_cutoff: int | None = None,
    reference_digests: StrPath | None = None,
    in_place: bool = False,
    racy_from: int | None = None,
) -> list[TransferResult]:
    """Backs up message areas from their index snapshots, all in one pool (workers spread over
    every area's directories); one result per area, in order.

    For each area: walks ``src`` mirroring directories into ``dst``. Files at
    ``tree/dir(id)/id`` with ``id`` in ``live`` are hardlinked (copied when a link is impossible);
    with ``id`` in ``erasing`` or at or above ``next_id`` they are skipped; root-level ``known``
    names are left to the caller; root-level ``copy`` names are copied as plain files (never
    hardlinked: they change in place), counted in ``known`` and ``bytes_copied``, not in
    ``copied`` nor in progress; a file at the path of an allocated ID no record claims is an
    orphan ("orphan_message"), anything else is "unrecognized"; both are reported and copied.
    Live IDs without a regular file are errors ("missing", "not_regular"); a placed file whose
    size differs from ``sizes`` is an error ("size_mismatch"). An area whose
    directory cannot be opened is an error event of that area.

    ``root``: a descriptor of a directory (the store's ``data/``) that each ``src`` is relative
    to; every component is then opened without following a symlink. ``skip``: ``(st_dev,
    st_ino)`` of directories never entered (the destination; meeting one is a "dest_inside"
    error). LMDB lock files (``NAME-lock`` beside a file ``NAME``) are never copied.

    ``reference``: the root of an earlier complete backup on the destination's file system
    (raises OSError if it cannot be opened). Each area's tree in it is at the area's ``prefix``,
    opened without following a symlink at any component (absent: no reference for that area).
    A file that cannot be hardlinked from the store (the destination is on another file system,
    decided once from the roots' ``st_dev``; or the link failed), and every file the call copies
    anyway (``copy`` names, strays), is hardlinked from the reference instead when the
    reference holds a regular file at the same path with the same size, mtime (seconds and
    nanoseconds), permission bits and, as root, owner, and, for a message, a known recorded size
    equal to that size: counted in ``reused`` (verbose event "reused"), not in ``copied``. A
    reference link that fails (EMLINK, EPERM, ...) becomes a copy counted in
    ``link_fallbacks``. ``reference_cutoff`` (nanoseconds since the epoch): a reference file
    whose mtime is at or after it is never reused but copied from the store (a file rewritten
    in the clock tick the reference copied it in keeps its size and mtime: "racily clean"). With a ``reference``, copies because the destination is on another file
    system are plain copies, not fallbacks. Copies try a reflink, ``copy_file_range``, then
    read/write (what fails is remembered per pair of file systems for the process) and keep
    the source's mtime.

    An area with ``digests`` (directory, rel) records digests (docs/FORMAT.md, "Digests"):
    every copy is hashed from what it wrote, and after the walk the area's shard files are
    written into the directory; a shard in which every message was reused is hardlinked from
    ``reference_digests``/rel when that holds it. The result's ``digests`` says what was written
    and ``files`` lists the plain files placed.

    ``in_place`` (a repository on btrfs, docs/REPOSITORY.md): each ``dst`` is a clone of the
    reference and ``reference`` is the clone's own root. Before an area is walked, what its
    clone holds that today's snapshot does not is removed (counted in ``dropped``): live
    message files stay unlooked-at, files being erased or added after the snapshot go, anything
    else stays only where the store has an entry of the same kind (symlinks are recreated).
    A file the reuse rule would link from the reference is kept where it is (``reused``); any
    other is replaced by a copy of the store's file. The area's databases are the caller's. An
    area with ``reference_sealed`` keeps a proven message its clone lists as a regular file
    without any call (no stat).

    ``racy_from`` (nanoseconds since the epoch: this backup's start less the margin): each
    result's ``racy`` lists the message files copied with an mtime at or after it, which a later
    backup passes as ``reference_racy`` (never proven)."""

def copy_tree(
    src: StrPath,
    dst: StrPath,
    *,
    jobs: int,
    progress: Progress,
    prefix: bytes,
    only: list[bytes] | None = None,
    message_tree: bytes | None = None,
    force_copy: bool = False,
    root: int | None = None,
    skip: list[tuple[int, int]] = ...,
    skip_locks: bool = False,
    reference: StrPath | None = None,
    reference_cutoff: int | None = None,
    digests: bool = False,
    in_place: bool = False,
) -> TransferResult:
    """Copies a tree into ``dst`` (which must exist): files copied with their mode bits and
    mtime, symlinks recreated and never followed, special files skipped with a warning. ``only``
    limits the root level to those names. With ``message_tree`` (restore), files at a message
    path below it are hardlinked instead when possible. ``root``, ``skip``: as for
    ``backup_areas`` (``src`` relative to ``root``); ``skip_locks``: leave out LMDB lock files.
    ``reference``, ``reference_cutoff``: as for ``backup_areas``; the tree in it is at
    ``prefix`` (message files of ``message_tree`` have no recorded size here and are never
    reused). With ``digests``, every copy is hashed from what it wrote and the result's
    ``files`` lists the regular files placed. ``in_place``: as for ``backup_areas`` (the
    caller removes what the store lacks first: ``drop_stale``)."""

def drop_stale(
    src: StrPath,
    dst: StrPath,
    *,
    jobs: int,
    progress: Progress,
    prefix: bytes,
    root: int | None = None,
    leave: list[bytes] = ...,
    drop: list[bytes] = ...,
) -> Tally:
    """Removes from the tree ``dst`` (a clone of the reference, about to be brought up to date
    in place) every entry the store's tree ``src`` (relative to ``root``, never through a
    symlink) has no entry of the same kind for: a regular file or directory stays where the
    store has one (to be compared, or descended into), symlinks and special files always go.
    ``leave``: paths below ``dst`` left alone and not entered; ``drop``: paths removed whatever
    the store holds. ``dropped`` counts what was removed (not the symlinks, which the copy
    recreates); errors are events with the path after ``prefix``."""

def btrfs_is_btrfs(path: StrPath) -> bool:
    """Whether the directory ``path`` (a symlink is never followed) is on btrfs (``statfs``)."""

def btrfs_is_subvolume(path: StrPath) -> bool:
    """Whether the directory ``path`` (never followed) is the root of a btrfs subvolume."""

def btrfs_create_subvolume(dir_fd: int, name: bytes) -> None:
    """Creates the empty subvolume ``name`` in the held directory ``dir_fd``
    (``BTRFS_IOC_SUBVOL_CREATE``); raises OSError."""

def btrfs_snapshot(source: StrPath, dir_fd: int, name: bytes, *, readonly: bool = False) -> None:
    """Makes ``name`` in the held directory ``dir_fd`` a snapshot of the subvolume ``source``
    (``BTRFS_IOC_SNAP_CREATE_V2``), read-only with ``readonly``; raises OSError (EXDEV: another
    file system; EINVAL: not a subvolume)."""

def btrfs_set_readonly(path: StrPath, readonly: bool) -> None:
    """Makes the subvolume ``path`` read-only, or writable (``BTRFS_IOC_SUBVOL_SETFLAGS``)."""

def btrfs_is_readonly(path: StrPath) -> bool:
    """Whether the subvolume ``path`` is read-only."""

def btrfs_seal(path: StrPath) -> str | None:
    """The seal of the subvolume ``path`` (its root directory, never followed): its UUID and the
    transaction of its last change, ``"UUIDHEX:TRANSID"``; any change of its content since (it
    must be made writable for that) raises the transaction. None when it is writable. Raises
    OSError."""

def btrfs_destroy(dir_fd: int, name: bytes) -> None:
    """Deletes the subvolume ``name`` of the held directory ``dir_fd``, made writable first
    (``BTRFS_IOC_SNAP_DESTROY_V2``, or the old call on kernels before 5.7); its space comes back
    in the background. OSError ENOTTY when ``name`` is no subvolume."""

def rename_noreplace(dir_fd: int, old: bytes, new: bytes) -> None:
    """Renames ``old`` to ``new`` in the held directory ``dir_fd`` without replacing anything
    (``RENAME_NOREPLACE``): FileExistsError when ``new`` exists."""

def parse_digests(data: bytes, *, shard: bool) -> list[tuple[int | bytes, int, bytes | None, str]]:
    """The entries (key, size, digest or None, how) of a digest file: keys are message IDs
    with ``shard``, else paths (unescaped). Raises ValueError naming what is wrong: a bad header,
    a malformed line, entries out of order, a missing or wrong trailer checksum."""

def render_digests(entries: list[tuple[int | bytes, int, bytes | None, str]], *, shard: bool) -> bytes:
    """The text of a digest file holding ``entries`` (sorted here): header, entries, trailer."""

class DeleteResult(TypedDict):
    """What ``delete_tree`` removed, and its event counts."""

    files: int  # entries other than directories removed (symlinks included)
    dirs: int  # directories removed, ``path`` itself included
    errors: int
    warnings: int

def delete_tree(
    path: StrPath,
    *,
    jobs: int,
    progress: Progress,
    low_priority: bool = True,
    prefix: bytes = ...,
) -> DeleteResult:
    """Deletes the directory ``path`` and everything in it, in parallel and bottom-up. The
    parent of ``path`` is opened by path, ``path`` itself without following a symlink: a
    symlink, a non-directory or a mount point at ``path`` raises OSError and nothing is
    deleted. Inside, entries are removed with ``unlinkat`` only (a symlink is removed, never
    followed); a subdirectory on another device (a mount point) is never entered nor deleted
    ("mount_point" error). An entry that cannot be removed is an error event (path relative to
    ``path``, after ``prefix``, default empty) and the rest goes on; ``path`` itself is removed last, when empty.
    Progress: one unit per file removed. ``low_priority``: the worker threads run at nice 19 in
    the idle I/O scheduling class (the calling thread keeps its priority); if that fails, one
    "priority" warning and the deletion goes on."""

class DamageRecord(TypedDict):
    """A damaged inode ``RepoCheck`` found (``checkrepo.rs``)."""

    area: bytes  # below data/: b"queue", b"accounts/alice"; b"" for a non-message file
    id: int | None
    rel: bytes  # below the snapshot root
    size: int  # recorded
    digest: bytes | None  # recorded sha256 (32 bytes)
    cause: str  # "digest_mismatch" or "unreadable"
    detail: str
    inode: tuple[int, int]
    snapshots: list[str]  # in the order checked

class ContentCounts(TypedDict):
    inodes_checked: int
    inodes_read: int
    bytes_read: int
    shared: int
    sizes_only: int
    good: int
    damaged: int
    unrecorded: int
    unverified: int

@final
class RepoCheck:
    """One run of ``mailbak check`` (or ``verify --read-data``): the inode map its snapshots
    share, so that each distinct inode is stat'ed, and with ``read_data`` read and hashed, once.
    At most one subset: ``part`` (n, m) (content key modulo m), ``fraction`` in (0, 1] at random
    (keyed by ``seed``), or a byte ``budget``; ValueError otherwise."""

    def __new__(cls, *, read_data: bool, part: tuple[int, int] | None = None, fraction: float | None = None, budget: int | None = None, seed: int = 0) -> RepoCheck: ...
    def check_snapshot(self, name: str, snapshot: StrPath, trusted: bool, areas: list[Area], *, jobs: int, progress: Progress, root: int) -> list[Tally]:
        """``check_areas`` of one snapshot (areas relative to the descriptor ``root``, its
        ``data/``), each live message's file answered from the inode map when met before; with
        ``read_data`` and ``trusted`` (manifest ok with digests) new inodes the subset selects
        are hashed and compared with ``snapshot``'s shard files. "read" info events (verbose)
        name each file read."""
    def check_files(self, name: str, snapshot: StrPath, trusted: bool, *, jobs: int, progress: Progress) -> Tally:
        """With ``read_data`` and ``trusted``: the files ``digests/files`` lists, read the same way."""
    def damages(self) -> list[DamageRecord]:
        """The damaged inodes so far, each with every snapshot met holding it."""
    def counts(self) -> ContentCounts:
        """Distinct inodes met and read, bytes read, files answered from the map, inodes by state."""

def check_areas(
    areas: list[Area],
    *,
    live: bool,
    jobs: int,
    progress: Progress,
    fix_root: StrPath | None = None,
    fix_owner: tuple[int, int, list[int]] | None = None,
    root: int | None = None,
) -> list[Tally]:
    """Verifies message areas' files against their indexes (stat only), all in one pool: each
    live ID has a regular file of its recorded size. Unknown files in the message tree: in a
    backup (``live`` false), one at the path of an ID at or above ``next_id`` is an error
    ("unrecognized_message": a future message would collide with it); in a live store such files
    are new and skipped. Orphans and other unknown files are warnings. With ``fix_root`` they are
    all moved below ``fix_root/<area fix_rel>`` keeping their relative path (never overwriting;
    in a live store only once unchanged for 15 minutes). With ``fix_owner`` (uid, gid, groups)
    each move is made with that file-system identity (``set_fs_identity``): the kernel refuses
    what that user could not do, and the directories created are theirs. ``root``: as for
    ``backup_areas``."""

class CheckSummary(TypedDict):
    txnid: int
    page_size: int
    last_page: int
    tree_pages: int
    free_pages: int
    dbs: list[tuple[bytes, int]]
    compact_copy_safe: bool  # False: a DUPSORT+DUPFIXED database; LMDB's compacting copy can crash on it

def lmdb_check(path: StrPath, txnid: int | None = None) -> CheckSummary:
    """Structural check of an LMDB data file by reading it directly (never through LMDB):
    every B-tree page of the snapshot ``txnid`` (default: a file at rest, read as LMDB would: both
    meta pages intact, the newer one checked) is bounds-checked, typed,
    ordered and counted. Raises LmdbError for damage, OSError (with errno) if the file cannot
    be read."""

class IndexSnapshot(TypedDict):
    txnid: int
    live: bytes
    sizes: bytes  # aligned with live; 0 where the record has no readable size
    unknown_sizes: bytes  # the live IDs whose record has no readable size
    erasing: bytes
    highest: int
    records: int
    expunged: int
    mailboxes: int
    next_id: int | None
    problems: list[tuple[str, int, str]]
    problem_count: int

def read_index(path: StrPath, kind: str, txnid: int | None = None) -> IndexSnapshot:
    """Reads an area index ("account" or "queue") from an LMDB file: live IDs and sizes, erase
    set, highest ID, and the first 1000 problems (codes ``bad_*``/``missing_*``: unreadable, e.g.
    ``bad_key`` for a key that is not an 8-byte ID from 1 to 2^64-2; others: consistency rules
    of docs/FORMAT.md). Raises LmdbError."""

def diff_ids(a: bytes, b: bytes) -> tuple[bytes, bytes] | None:
    """Where two strictly ascending ID lists (packed u64s) differ: the positions (packed) in
    ``a`` of the IDs ``b`` lacks, and in ``b`` of those ``a`` lacks; None when a list is not
    strictly ascending."""

def read_heads(root: StrPath, ids: bytes, *, jobs: int) -> list[list[bytes] | int]:
    """For each message ID of ``ids`` (packed u64s), the raw values of From, To, Subject, Date
    and Message-ID from the head of its file below the message tree ``root`` (its first 64 KiB
    only; "" when absent), or the errno of the open or read that failed (-1: not a regular
    file, never read). Files are opened without following a symlink."""

class MessageColumns(TypedDict):
    ids: bytes  # packed little-endian u64s, ascending
    mailbox_ids: bytes  # aligned with ids, as are all the others
    uids: bytes
    sizes: bytes
    received: bytes  # packed little-endian i64s
    flags: list[bytes]  # each record's flags as an encoded msgpack array; b"" when absent
    keywords: list[bytes]
    problems: list[tuple[int, str]]  # (ID, what is wrong) of records left out; the first 1000
    problem_count: int

def read_messages(path: StrPath, txnid: int | None = None, mailboxes: list[int] | None = None, only: list[int] | None = None) -> MessageColumns:
    """The live messages (not expunged, not being erased) of an account index, as columns: of
    the mailbox IDs ``mailboxes`` and the message IDs ``only`` only, when given. Records that
    do not decode or lack a field are left out and named. Raises LmdbError, OSError."""

def read_tables(path: StrPath, tables: list[bytes], txnid: int | None = None, only: list[bytes] | None = None) -> list[list[tuple[bytes, bytes]] | None]:
    """For each named database of ``tables``: every (key, value) in key order (with ``only``:
    those whose key is in it), or None when the file has no such table; all from one snapshot,
    read directly like ``lmdb_check`` (of the snapshot ``txnid`` when given). Raises LmdbError
    for damage met on the way, OSError if the file cannot be read."""

def write_messages(root: StrPath, ids: bytes, sizes: bytes, received: bytes, *, to: str, seed: int, jobs: int, progress: Progress) -> Tally:
    """Writes generated message files below message tree ``root`` (deterministic for ``seed``):
    each a head (Message-ID, Date from its ``received`` unix seconds, From, To: ``to`` or, when
    empty, an address picked per message, Subject) and body text, cut at its size."""

def syncfs(path: StrPath) -> None:
    """Flushes the file system holding ``path`` to stable storage."""

def message_path(id: int) -> str:
    """``dir(id)/id``, the path of message ``id`` relative to its message tree."""

def parse_message_name(name: bytes) -> int | None:
    """The ID a file name stands for, if it is canonical decimal (no sign, no leading zero)."""

def fs_identity() -> tuple[int, int, list[int]]:
    """The calling thread's file-system identity: (fsuid, fsgid, supplementary groups)."""

def set_fs_identity(uid: int, gid: int, groups: list[int]) -> tuple[int, int, list[int]]:
    """Gives the calling thread, and only it, the file-system identity (uid, gid, groups) and
    returns the previous one (``setfsuid``/``setfsgid`` and the raw ``setgroups`` syscall). A
    non-zero uid also drops root's file-system capabilities for that thread, so the kernel
    checks every open and create as that user would be checked. Raises OSError (EPERM) when the
    process may not take that identity. Threads started meanwhile inherit it."""

class BuildInfo(TypedDict):
    version: str
    profile: str
    arch: str
    os: str

def build_info() -> BuildInfo:
    """The extension's crate version, build profile ("release" or "debug"), CPU architecture and
    operating system, as ``mailbak --version`` shows them."""

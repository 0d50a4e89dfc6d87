//! Writing trees into a destination: a message area from a snapshot (backup), and plain trees
//! (configuration, everything else under `data/`, and restores).
//!
//! Backup of one area:
//! 1. Walk the area (see `walk.rs`), mirroring directories into the destination.
//! 2. Classify each file against the snapshot (`classify.rs`): snapshot messages are hardlinked
//!    (or copied), files added after the snapshot and files being erased are skipped, the
//!    caller's known files are left to the caller, the area's `copy` files (which change in
//!    place, like a junk filter) are copied, anything else is reported and copied.
//! 3. Every snapshot ID the walk did not meet is placed by its path directly; one that does not
//!    exist there is reported missing (the backup is then failed). A message directory that is
//!    a symlink (never followed) or cannot be opened is one error, its messages counted missing;
//!    a directory where a message file belongs is an error for that message.
//! 4. Every placed message file is compared with its record's size, as verify of the backup will
//!    (one stat of the placed file; a copy knows its size): a mismatch is an error, so that a
//!    backup called ok always verifies clean.
//!
//! [`backup_areas`] runs every area of one call (the queue and all accounts) in the caller's
//! rayon pool, so that workers spread over all areas' directories; each area has its own tally
//! and link policy, and an area whose root cannot be opened is that area's error only.
//! [`copy_tree`] is the plain copy of one tree.
//!
//! The module's parts: `area.rs` backs up one message area ([`AreaBackup`]), `plain.rs` copies a
//! plain tree ([`PlainCopy`]); this file holds what a call shares (options, outcomes, counting
//! and the copy of odd files).
//!
//! Not guaranteed: a file removed by a writer after step 1 met it is reported missing, not
//! waited for. Writers following the lease protocol of docs/FORMAT.md never do that.

mod area;
mod plain;
#[cfg(test)]
mod tests;

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use rayon::prelude::*;
use rustix::io::Errno;

use crate::areas::{open_area_root, AreaSpec};
use crate::classify::{Area, Class};
use crate::digests::{self, FileRecord, ShardStats};
use crate::error::Error;
use crate::fsutil::{self, Kind};
use crate::ids::SeenSet;
use crate::inplace::{self, Verdict};
use crate::linkcopy::{LinkPolicy, Placed};
use crate::progress::{Progress, Sink, Tally};
use crate::walk::{Dir, Fence};

use area::AreaBackup;
use plain::PlainCopy;

/// One area of a backup call: what to back up and where (an existing directory).
pub struct AreaJob {
    /// The area.
    pub spec: AreaSpec,
    /// The destination directory, opened as named.
    pub dst: PathBuf,
    /// Where the area's shard files of digests go (an existing, empty directory), and the
    /// path of the area's shard directory below the reference's digests directory; None: no
    /// digests recorded.
    pub digests: Option<(PathBuf, Vec<u8>)>,
}

/// What every area of a backup call shares.
#[derive(Default)]
pub struct BackupOptions {
    /// Copy every message file instead of hardlinking it.
    pub force_copy: bool,
    /// The trusted directory each area's `src` is relative to (the store's `data/`).
    pub anchor: Option<OwnedFd>,
    /// What the walks never visit.
    pub fence: Fence,
    /// The root of an earlier complete backup to reuse unchanged files from; each area's tree
    /// in it is at the area's `prefix` (see `linkcopy.rs`).
    pub reference: Option<OwnedFd>,
    /// Reference files with an mtime at or after this (ns since the epoch) are copied, never
    /// reused ([`LinkPolicy::with_reuse_cutoff`]).
    pub reference_cutoff: Option<i64>,
    /// The reference's `digests` directory, whose shard files unchanged shards are linked
    /// from (`digests.rs`).
    pub reference_digests: Option<OwnedFd>,
    /// Each destination is a clone of the reference (`reference` is the destination's own
    /// root) brought to the store's state in place (`inplace.rs`): what the store no longer
    /// has is removed first, unchanged files are kept, others replaced.
    pub in_place: bool,
    /// This backup's own racily-clean cutoff (ns since the epoch: its start less the margin):
    /// a message file it copies with an mtime at or after it is named in
    /// [`Transferred::racy`], so that a later backup never takes it as proven unlooked at.
    pub racy_from: Option<i64>,
}

/// The directory `prefix` below reference root `r`, opened without following a symlink at
/// any component; None when absent or unusable (no reference for that tree, never an error).
fn reference_below(r: Option<&OwnedFd>, prefix: &[u8]) -> Option<OwnedFd> {
    fsutil::open_dir_below(r?.as_fd(), prefix).ok()
}

/// What a transfer did: its counts, the errno of its first link that became a copy, how many
/// files were copied because a link was impossible, and what it recorded for digests.
#[derive(Debug)]
pub struct Transferred {
    /// The counts.
    pub tally: Tally,
    /// Why the first link became a copy, if one did.
    pub first_fallback: Option<Errno>,
    /// Files copied because a link was impossible.
    pub fallbacks: u64,
    /// The shard files of digests written for the area (backups recording digests).
    pub shards: ShardStats,
    /// The plain files placed (recording calls only), for the backup's `digests/files`.
    pub files: Vec<FileRecord>,
    /// The IDs of the message files copied with an mtime at or after
    /// [`BackupOptions::racy_from`] (written within this backup's racily-clean window),
    /// ascending; backups of areas only.
    pub racy: Vec<u64>,
}

impl Transferred {
    /// The outcome of a call that reported into `sink` with `policy`.
    fn of(sink: Sink<'_>, policy: &LinkPolicy) -> Self {
        let files = sink
            .recorder
            .as_ref()
            .map(|r| r.take_files())
            .unwrap_or_default();
        Transferred {
            tally: sink.tally,
            first_fallback: policy.first_fallback(),
            fallbacks: policy.fallbacks(),
            shards: ShardStats::default(),
            files,
            racy: Vec::new(),
        }
    }
}

/// Backs up every area in the current rayon pool, areas and their directories interleaved;
/// one outcome per area, in order. An area whose root or destination cannot be opened is an
/// error event of that area.
pub fn backup_areas(
    jobs: &[&AreaJob],
    opts: &BackupOptions,
    progress: &Progress,
) -> Vec<Transferred> {
    jobs.par_iter()
        .map(|job| {
            let a = &job.spec;
            let sink = Sink::new(progress, &a.prefix).recording(job.digests.is_some());
            let mut policy = LinkPolicy::new(opts.force_copy);
            let mut racy = Vec::new();
            if let (Some(src), Some(dst)) = (
                open_area_root(opts.anchor.as_ref(), &a.src, &sink),
                open_area_root(None, &job.dst, &sink),
            ) {
                policy = LinkPolicy::for_roots(
                    opts.force_copy,
                    src.as_fd(),
                    dst.as_fd(),
                    opts.reference.is_some(),
                )
                .with_reuse_cutoff(opts.reference_cutoff)
                .hashing(job.digests.is_some())
                .in_place(opts.in_place);
                let present = opts
                    .in_place
                    .then(|| drop_stale_messages(a, src.as_fd(), dst.as_fd(), &sink));
                let backup = AreaBackup::new(&a.area, &a.snap, &a.sizes, &policy, &sink)
                    .with_fence(&opts.fence)
                    .with_reference(reference_below(opts.reference.as_ref(), &a.prefix))
                    .with_proven(&a.proven)
                    .with_present(present.as_ref().filter(|_| a.sealed))
                    .with_racy_from(opts.racy_from);
                backup.run(src, dst);
                racy = backup.take_racy();
            }
            let shards = job
                .digests
                .as_ref()
                .map(|(dir, rel)| write_area_shards(&sink, dir, rel, opts))
                .unwrap_or_default();
            Transferred {
                shards,
                racy,
                ..Transferred::of(sink, &policy)
            }
        })
        .collect()
}

/// Before an area is backed up in place: removes from its clone what today's snapshot does not
/// hold. A live message file stays without a look at the store (its placement checks it, as
/// the proof rule says); files being erased or added after the snapshot go; anything else
/// stays only where the store has the same kind of entry (see `inplace.rs`). The area's own
/// databases are the caller's (copied anew). Returns which live messages the clone holds as a
/// regular file (the listing's own file type: no stat).
fn drop_stale_messages(
    a: &AreaSpec,
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    sink: &Sink<'_>,
) -> SeenSet {
    let present = SeenSet::new(a.snap.live.len());
    let verdict = |rel: &[u8], name: &[u8], kind: Kind| {
        if kind != Kind::File {
            return Verdict::Check;
        }
        match a.area.classify(&a.snap, rel, name) {
            Class::Message(i) => {
                present.mark(i);
                Verdict::Keep
            }
            Class::Known => Verdict::Leave,
            Class::New | Class::Erasing => Verdict::Drop,
            Class::Orphan | Class::Copy | Class::StrayInTree | Class::Stray => Verdict::Check,
        }
    };
    let dropped = inplace::drop_stale(src, dst, &verdict, sink);
    sink.tally
        .dropped
        .fetch_add(dropped.entries.load(Ordering::Relaxed), Ordering::Relaxed);
    present
}

/// Writes the shard files of the messages `sink` recorded into `dir`, sharing unchanged ones
/// with the reference's shard directory `rel` (below [`BackupOptions::reference_digests`]).
/// A shard that cannot be written is an error of the area: the backup's digests are then
/// incomplete, and the backup failed.
fn write_area_shards(sink: &Sink<'_>, dir: &Path, rel: &[u8], opts: &BackupOptions) -> ShardStats {
    let Some(recorder) = sink.recorder.as_ref() else {
        return ShardStats::default();
    };
    let messages = recorder.take_messages();
    let dst = match fsutil::open_root_dir(None, dir) {
        Ok(d) => d,
        Err(e) => {
            sink.io_error(b"", "open the digests directory", e);
            return ShardStats::default();
        }
    };
    let reference = reference_below(opts.reference_digests.as_ref(), rel);
    let (stats, errors) =
        digests::write_shards(messages, dst.as_fd(), reference.as_ref().map(|r| r.as_fd()));
    for (shard, e) in errors {
        sink.error(
            "digests",
            b"",
            e.raw_os_error(),
            format!(
                "shard {shard} of the area's digests not written: {}",
                std::io::Error::from_raw_os_error(e.raw_os_error())
            ),
        );
    }
    stats
}

/// A plain copy of one tree (see [`PlainCopy`]).
#[derive(Default)]
pub struct TreeCopy {
    /// Prefix of every reported path.
    pub prefix: Vec<u8>,
    /// When set, only these root-level names are copied.
    pub only: Option<Vec<Vec<u8>>>,
    /// The message area whose message files are linked (restore), if any.
    pub messages: Option<Area>,
    /// Copy message files instead of linking them.
    pub force_copy: bool,
    /// What the walk never visits.
    pub fence: Fence,
    /// The root of an earlier complete backup; the tree in it is at `prefix` (see
    /// [`BackupOptions::reference`]).
    pub reference: Option<OwnedFd>,
    /// As [`BackupOptions::reference_cutoff`].
    pub reference_cutoff: Option<i64>,
    /// Record the regular files placed, hashing copies ([`Transferred::files`]).
    pub digests: bool,
    /// `dst` is a clone of the reference brought up to date in place (see
    /// [`BackupOptions::in_place`]; the caller removed what the store lacks first).
    pub in_place: bool,
}

/// Copies the tree `src` into `dst` in the current rayon pool.
pub fn copy_tree(src: OwnedFd, dst: OwnedFd, job: &TreeCopy, progress: &Progress) -> Transferred {
    let sink = Sink::new(progress, &job.prefix).recording(job.digests);
    let policy = LinkPolicy::for_roots(
        job.force_copy,
        src.as_fd(),
        dst.as_fd(),
        job.reference.is_some(),
    )
    .with_reuse_cutoff(job.reference_cutoff)
    .hashing(job.digests)
    .in_place(job.in_place);
    PlainCopy::new(job.messages.as_ref(), &policy, &sink)
        .with_fence(&job.fence)
        .with_reference(reference_below(job.reference.as_ref(), &job.prefix))
        .run(src, dst, job.only.as_deref());
    Transferred::of(sink, &policy)
}

/// Counts a placed file and reports it in verbose mode.
fn count_placed(sink: &Sink<'_>, rel: &[u8], placed: Placed) {
    match placed {
        Placed::Linked => {
            Tally::bump(&sink.tally.linked);
            sink.info("linked", rel, "hardlinked");
        }
        Placed::Reused(_) => {
            Tally::bump(&sink.tally.reused);
            sink.info("reused", rel, "hardlinked from the reference");
        }
        Placed::Copied(c) => {
            Tally::bump(&sink.tally.copied);
            sink.tally
                .bytes_copied
                .fetch_add(c.bytes, Ordering::Relaxed);
            if c.reflinked {
                Tally::bump(&sink.tally.reflinked);
                sink.info("copied", rel, "copied (reflink)");
            } else {
                sink.info("copied", rel, "copied");
            }
        }
    }
}

/// Notes a placed plain (non-message) regular file for the backup's digests, when the call
/// records them: a copy with the digest of what was written, a reused file without (it
/// inherits the reference's entry).
fn record_plain(sink: &Sink<'_>, rel: &[u8], placed: Placed) {
    let Some(recorder) = sink.recorder.as_ref() else {
        return;
    };
    let (size, digest) = match placed {
        Placed::Copied(c) => (c.bytes, c.digest),
        Placed::Reused(n) => (n, None),
        Placed::Linked => unreachable!("plain files are never linked from the store"),
    };
    recorder.file(FileRecord {
        path: sink.full(rel),
        size,
        digest,
    });
}

/// The reference directory of a walked directory, if the walk has one there.
fn ref_of<'d>(dir: &Dir<'d>) -> Option<BorrowedFd<'d>> {
    dir.refs.first().copied().flatten()
}

/// Copies one non-directory entry of `dir` into its mirror as a plain file: regular files
/// copied (or reused from the directory's reference), symlinks recreated, special files skipped with a warning. Shared by every
/// visitor that meets odd files.
fn copy_plain(
    policy: &LinkPolicy,
    sink: &Sink<'_>,
    dir: &Dir<'_>,
    name: &CStr,
    kind: Kind,
    rel: &[u8],
) {
    let (src, reference) = (dir.src, ref_of(dir));
    let dst = dir.dst.expect("copies mirror into a destination");
    let result = match kind {
        Kind::File => policy.place_plain(src, dst, name, reference).map(|p| {
            count_placed(sink, rel, p);
            record_plain(sink, rel, p);
        }),
        Kind::Symlink => fsutil::copy_symlink(src, dst, name, policy.as_root())
            .map(|()| {
                Tally::bump(&sink.tally.symlinks);
                sink.info("symlink", rel, "symlink recreated");
            })
            .map_err(|e| Error::new("symlink", e)),
        Kind::Special | Kind::Dir => {
            Tally::bump(&sink.tally.special);
            sink.warn(
                "special",
                rel,
                0,
                "socket, FIFO or device: not backed up".into(),
            );
            Ok(())
        }
    };
    if let Err(e) = result {
        sink.fs_error(rel, &e);
    }
}

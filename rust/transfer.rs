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
//! Not guaranteed: a file removed by a writer after step 1 met it is reported missing, not
//! waited for. Writers following the lease protocol of docs/FORMAT.md never do that.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use rayon::prelude::*;
use rustix::io::Errno;

use crate::areas::{open_area_root, AreaSpec};
use crate::classify::{Area, Class, Snapshot};
use crate::error::Error;
use crate::fsutil::{self, join, Kind};
use crate::ids::SeenSet;
use crate::linkcopy::{LinkPolicy, Placed};
use crate::msgpath;
use crate::progress::{Progress, Sink, Tally};
use crate::testpause::{self, Pause};
use crate::walk::{self, Dir, Fence, Roots, Visitor};

/// One area of a backup call: what to back up and where (an existing directory).
pub struct AreaJob {
    /// The area.
    pub spec: AreaSpec,
    /// The destination directory, opened as named.
    pub dst: PathBuf,
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
}

/// The directory `prefix` below reference root `r`, opened without following a symlink at
/// any component; None when absent or unusable (no reference for that tree, never an error).
fn reference_below(r: Option<&OwnedFd>, prefix: &[u8]) -> Option<OwnedFd> {
    fsutil::open_dir_below(r?.as_fd(), prefix).ok()
}

/// What a transfer did: its counts, the errno of its first link that became a copy, and how
/// many files were copied because a link was impossible.
#[derive(Debug)]
pub struct Transferred {
    /// The counts.
    pub tally: Tally,
    /// Why the first link became a copy, if one did.
    pub first_fallback: Option<Errno>,
    /// Files copied because a link was impossible.
    pub fallbacks: u64,
}

impl Transferred {
    /// The outcome of a call that reported into `sink` with `policy`.
    fn of(sink: Sink<'_>, policy: &LinkPolicy) -> Self {
        Transferred {
            tally: sink.tally,
            first_fallback: policy.first_fallback(),
            fallbacks: policy.fallbacks(),
        }
    }
}

/// Backs up every area in the current rayon pool, areas and their directories interleaved;
/// one outcome per area, in order. An area whose root or destination cannot be opened is an
/// error event of that area.
pub fn backup_areas(
    jobs: &[AreaJob],
    opts: &BackupOptions,
    progress: &Progress,
) -> Vec<Transferred> {
    jobs.par_iter()
        .map(|job| {
            let a = &job.spec;
            let sink = Sink::new(progress, &a.prefix);
            let mut policy = LinkPolicy::new(opts.force_copy);
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
                .with_reuse_cutoff(opts.reference_cutoff);
                AreaBackup::new(&a.area, &a.snap, &a.sizes, &policy, &sink)
                    .with_fence(&opts.fence)
                    .with_reference(reference_below(opts.reference.as_ref(), &a.prefix))
                    .run(src, dst);
            }
            Transferred::of(sink, &policy)
        })
        .collect()
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
}

/// Copies the tree `src` into `dst` in the current rayon pool.
pub fn copy_tree(src: OwnedFd, dst: OwnedFd, job: &TreeCopy, progress: &Progress) -> Transferred {
    let sink = Sink::new(progress, &job.prefix);
    let policy = LinkPolicy::for_roots(
        job.force_copy,
        src.as_fd(),
        dst.as_fd(),
        job.reference.is_some(),
    )
    .with_reuse_cutoff(job.reference_cutoff);
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
        Placed::Copied(n) => {
            Tally::bump(&sink.tally.copied);
            sink.tally.bytes_copied.fetch_add(n, Ordering::Relaxed);
            sink.info("copied", rel, "copied");
        }
        Placed::Reflinked(n) => {
            Tally::bump(&sink.tally.copied);
            Tally::bump(&sink.tally.reflinked);
            sink.tally.bytes_copied.fetch_add(n, Ordering::Relaxed);
            sink.info("copied", rel, "copied (reflink)");
        }
    }
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
        Kind::File => policy
            .place_plain(src, dst, name, reference)
            .map(|p| count_placed(sink, rel, p)),
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

/// Backs up one message area (see the module doc).
pub struct AreaBackup<'a> {
    /// The area's layout.
    area: &'a Area,
    /// The snapshot deciding what belongs.
    snap: &'a Snapshot,
    /// Recorded sizes aligned with `snap.live` (None: no readable size, already reported).
    sizes: &'a [Option<u64>],
    /// Which live IDs the walk met.
    seen: SeenSet,
    /// Link-or-copy decisions.
    policy: &'a LinkPolicy,
    /// Where counts and events go.
    sink: &'a Sink<'a>,
    /// Test-only pause point [`testpause::MID_LINK`], inert unless a test armed it.
    pause: Pause,
    /// What the walk never visits (the destination, lock files).
    fence: &'a Fence,
    /// The area's tree in the reference backup, if any.
    reference: Option<OwnedFd>,
}

impl<'a> AreaBackup<'a> {
    /// A backup of `area` from `snap`, checking placed files against `sizes`.
    pub fn new(
        area: &'a Area,
        snap: &'a Snapshot,
        sizes: &'a [Option<u64>],
        policy: &'a LinkPolicy,
        sink: &'a Sink<'a>,
    ) -> Self {
        debug_assert_eq!(
            sizes.len(),
            snap.live.len(),
            "checked by areas::recorded_sizes"
        );
        AreaBackup {
            area,
            snap,
            sizes,
            seen: SeenSet::new(snap.live.len()),
            policy,
            sink,
            pause: Pause::from_env(testpause::MID_LINK),
            fence: Fence::NONE,
            reference: None,
        }
    }

    /// The same, never visiting what `fence` names.
    pub fn with_fence(self, fence: &'a Fence) -> Self {
        AreaBackup { fence, ..self }
    }

    /// The same, reusing unchanged files from `reference` (the area's tree in an earlier
    /// backup on the destination's file system).
    pub fn with_reference(self, reference: Option<OwnedFd>) -> Self {
        AreaBackup { reference, ..self }
    }

    /// Runs steps 1 to 3 of the module doc.
    pub fn run(&self, src: OwnedFd, dst: OwnedFd) {
        let (src2, dst2) = match (fsutil::dup(&src), fsutil::dup(&dst)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return self.sink.io_error(b"", "dup", e),
        };
        let refs = match self.reference.as_ref().map(fsutil::dup).transpose() {
            Ok(r) => vec![r],
            Err(e) => return self.sink.io_error(b"", "dup", e),
        };
        walk::walk(
            Roots {
                src,
                dst: Some(dst),
                refs,
                only: None,
                fence: self.fence,
            },
            self,
            self.sink,
        );
        if !self.sink.cancelled() {
            self.place_unseen(src2.as_fd(), dst2.as_fd());
        }
    }

    /// Places the file of snapshot message number `i` (in `live`); `met` says whether the walk
    /// saw it (then a missing file vanished during the run, else it was never there). `reference`:
    /// its directory in the reference, if any (a message of unknown recorded size is never reused).
    #[allow(clippy::too_many_arguments)]
    fn place(
        &self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        reference: Option<BorrowedFd<'_>>,
        name: &CStr,
        rel: &[u8],
        i: usize,
        met: bool,
    ) {
        let id = self.snap.live.as_slice()[i];
        let reference = reference.zip(self.sizes[i]);
        match self.policy.place_message(src, dst, name, reference) {
            Ok(p) => {
                count_placed(self.sink, rel, p);
                self.check_size(dst, name, rel, i, p);
            }
            Err(Error {
                errno: Errno::NOENT,
                ..
            }) => self.missing(rel, id, met),
            Err(e) => self.sink.fs_error(rel, &e),
        }
        self.sink.progress.add_done(1);
        self.pause.tick();
    }

    /// Step 4: the placed file (what verify of the backup will stat) against its record.
    fn check_size(&self, dst: BorrowedFd<'_>, name: &CStr, rel: &[u8], i: usize, placed: Placed) {
        let Some(want) = self.sizes[i] else { return };
        let have = match placed {
            Placed::Copied(n) | Placed::Reflinked(n) | Placed::Reused(n) => n,
            Placed::Linked => match fsutil::lstat_at(dst, name) {
                Ok(st) => st.st_size as u64,
                Err(e) => return self.sink.io_error(rel, "stat", e),
            },
        };
        if have != want {
            Tally::bump(&self.sink.tally.damaged);
            let id = self.snap.live.as_slice()[i];
            self.sink.error("size_mismatch", rel, 0, format!("message {id}: file has {have} bytes, its record says {want}; backed up as it is"));
        }
    }

    /// Reports the file of snapshot message `id` missing (see `place`).
    fn missing(&self, rel: &[u8], id: u64, met: bool) {
        Tally::bump(&self.sink.tally.missing);
        let detail = if met {
            format!("message {id}: its file disappeared while the backup ran (removed by a writer that ignores the lease?); not backed up")
        } else {
            format!("message {id} of the snapshot has no file; not backed up")
        };
        self.sink
            .error("missing", rel, Errno::NOENT.raw_os_error(), detail);
    }

    /// Step 3: live IDs whose file the walk did not meet, by path.
    fn place_unseen(&self, src_root: BorrowedFd<'_>, dst_root: BorrowedFd<'_>) {
        let unseen = self.seen.unmarked();
        let ids = self.snap.live.as_slice();
        let mut i = 0;
        while i < unseen.len() && !self.sink.cancelled() {
            // One message directory at a time: IDs are sorted, so a directory is one run.
            let dir_idx = msgpath::dir_index(ids[unseen[i]]);
            let end = unseen[i..]
                .iter()
                .position(|&u| msgpath::dir_index(ids[u]) != dir_idx)
                .map_or(unseen.len(), |n| i + n);
            let dir_rel = join(
                &self.area.tree,
                msgpath::dir_name(ids[unseen[i]]).as_bytes(),
            );
            let dirs = fsutil::open_dir_below(src_root, &dir_rel)
                .and_then(|s| Ok((s, make_dirs(src_root, dst_root, &dir_rel)?)));
            let ref_dir = reference_below(self.reference.as_ref(), &dir_rel);
            if let Err(e) = &dirs {
                if *e != Errno::NOENT {
                    // The message directory itself is unusable (a symlink, never followed, or
                    // unreadable): one error for it, not one per message, and each of its
                    // messages counted missing, since none of them is in the backup.
                    self.unusable_dir(&dir_rel, *e, (end - i) as u64);
                    i = end;
                    continue;
                }
            }
            let mut name = Vec::new();
            for &u in &unseen[i..end] {
                msgpath::file_name(ids[u], &mut name);
                let rel = join(&dir_rel, &name);
                match &dirs {
                    Ok((s, d)) => {
                        let cname = CString::new(name.clone()).expect("digits only");
                        let r = ref_dir.as_ref().map(|r| r.as_fd());
                        self.place(s.as_fd(), d.as_fd(), r, &cname, &rel, u, false);
                    }
                    Err(Errno::NOENT) => {
                        self.missing(&rel, ids[u], false);
                        self.sink.progress.add_done(1);
                    }
                    Err(_) => unreachable!("handled for the whole directory above"),
                }
            }
            i = end;
        }
    }

    /// Reports message directory `dir_rel` unusable (`e`) with `n` snapshot messages in it.
    fn unusable_dir(&self, dir_rel: &[u8], e: Errno, n: u64) {
        self.sink.unusable_message_dir(
            dir_rel,
            e,
            n,
            "open or create",
            "of the snapshot are not backed up",
        );
    }
}

/// Creates (or opens) the destination directories for `rel`, each with its source's mode
/// when the source directory exists.
fn make_dirs(
    src_root: BorrowedFd<'_>,
    dst_root: BorrowedFd<'_>,
    rel: &[u8],
) -> Result<OwnedFd, Errno> {
    let mut done = Vec::new();
    let mut cur = fsutil::dup(dst_root)?;
    for comp in rel.split(|&c| c == b'/').filter(|c| !c.is_empty()) {
        done = join(&done, comp);
        let mode = fsutil::open_dir_below(src_root, &done)
            .and_then(|fd| fsutil::fstat(&fd))
            .map_or(fsutil::NEW_DIR_MODE, |st| st.st_mode);
        let name = CString::new(comp).map_err(|_| Errno::INVAL)?;
        cur = fsutil::make_dir_at(cur.as_fd(), &name, mode, None)?;
    }
    Ok(cur)
}

impl Visitor for AreaBackup<'_> {
    fn descend(&self, rel: &[u8], name: &CStr) -> bool {
        if let Class::Message(i) = self.area.classify(self.snap, rel, name.to_bytes()) {
            // A directory where a message file should be: the message itself is not in the
            // backup (linking it would only fail on the mirrored directory). The directory is
            // still mirrored, like any odd entry, and its contents reported as strays.
            self.seen.mark(i);
            Tally::bump(&self.sink.tally.missing);
            let id = self.snap.live.as_slice()[i];
            self.sink.error(
                "not_regular",
                &join(rel, name.to_bytes()),
                0,
                format!("message {id}: not a regular file (a directory); not backed up"),
            );
            self.sink.progress.add_done(1);
        }
        true
    }

    fn entry(&self, dir: &Dir<'_>, name: &CStr, kind: Kind) {
        let dst = dir.dst.expect("area backups mirror into a destination");
        let rel = join(dir.rel, name.to_bytes());
        let class = self.area.classify(self.snap, dir.rel, name.to_bytes());
        let t = &self.sink.tally;
        match (class, kind) {
            (Class::Message(i), Kind::File) => {
                self.seen.mark(i);
                self.place(dir.src, dst, ref_of(dir), name, &rel, i, true);
            }
            (Class::New, Kind::File) => {
                Tally::bump(&t.skipped_new);
                self.sink
                    .info("skipped_new", &rel, "added after the snapshot");
            }
            (Class::Erasing, Kind::File) => {
                Tally::bump(&t.skipped_erasing);
                self.sink.info("skipped_erasing", &rel, "being erased");
            }
            (Class::Known, _) => Tally::bump(&t.known),
            (Class::Copy, Kind::File) => {
                // Copied, never linked (the server changes it in place); counted as a known file
                // and in bytes, not as a message: the area's progress counts messages only.
                Tally::bump(&t.known);
                match self.policy.place_plain(dir.src, dst, name, ref_of(dir)) {
                    Ok(Placed::Reused(_)) => {
                        Tally::bump(&t.reused);
                        self.sink
                            .info("reused", &rel, "hardlinked from the reference");
                    }
                    Ok(Placed::Copied(n) | Placed::Reflinked(n)) => {
                        t.bytes_copied.fetch_add(n, Ordering::Relaxed);
                        self.sink.info("copied", &rel, "copied");
                    }
                    Ok(Placed::Linked) => {
                        unreachable!("plain files are never linked from the store")
                    }
                    Err(e) => self.sink.fs_error(&rel, &e),
                }
            }
            (Class::Copy, _) => {
                Tally::bump(&t.known);
                copy_plain(self.policy, self.sink, dir, name, kind, &rel);
            }
            (Class::Message(i), _) => {
                // A symlink or special file where a message file should be: the message itself is
                // not in the backup. The odd entry is kept as it is (a link, never followed).
                self.seen.mark(i);
                Tally::bump(&t.missing);
                self.sink.error(
                    "not_regular",
                    &rel,
                    0,
                    format!(
                        "message {}: not a regular file; not backed up",
                        self.snap.live.as_slice()[i]
                    ),
                );
                copy_plain(self.policy, self.sink, dir, name, kind, &rel);
                self.sink.progress.add_done(1);
            }
            (_, Kind::Special) => copy_plain(self.policy, self.sink, dir, name, kind, &rel),
            (Class::Orphan, Kind::File) => {
                Tally::bump(&t.orphans);
                self.sink.warn("orphan_message", &rel, 0, "no record of the snapshot claims this message file: a delivery in progress, or one a crash interrupted (its ID is allocated, so it cannot collide with a future message); copied".into());
                copy_plain(self.policy, self.sink, dir, name, kind, &rel);
            }
            (Class::StrayInTree | Class::Orphan | Class::New | Class::Erasing, _) => {
                // A symlink named like a message is not a message: it is reported, never followed.
                Tally::bump(&t.unrecognized);
                self.sink.warn(
                    "unrecognized",
                    &rel,
                    0,
                    "unrecognized file in a message directory; copied".into(),
                );
                copy_plain(self.policy, self.sink, dir, name, kind, &rel);
            }
            (Class::Stray, _) => {
                Tally::bump(&t.unrecognized);
                self.sink
                    .warn("unrecognized", &rel, 0, "unrecognized file; copied".into());
                copy_plain(self.policy, self.sink, dir, name, kind, &rel);
            }
        }
    }
}

/// Copies a tree as plain files (configuration, unknown data, restores). With `messages` set,
/// files at a message path of that area are placed by link-or-copy (restore); everything else
/// is always copied, because databases and configuration are modified in place by the server.
pub struct PlainCopy<'a> {
    /// The message area layout whose message files may be linked, if any.
    messages: Option<&'a Area>,
    /// Link-or-copy decisions.
    policy: &'a LinkPolicy,
    /// Where counts and events go.
    sink: &'a Sink<'a>,
    /// What the walk never visits (the destination, lock files).
    fence: &'a Fence,
    /// The tree in the reference backup, if any.
    reference: Option<OwnedFd>,
}

impl<'a> PlainCopy<'a> {
    /// A plain copy; see the type doc for `messages`.
    pub fn new(messages: Option<&'a Area>, policy: &'a LinkPolicy, sink: &'a Sink<'a>) -> Self {
        PlainCopy {
            messages,
            policy,
            sink,
            fence: Fence::NONE,
            reference: None,
        }
    }

    /// The same, never visiting what `fence` names.
    pub fn with_fence(self, fence: &'a Fence) -> Self {
        PlainCopy { fence, ..self }
    }

    /// The same, reusing unchanged files from `reference` (the tree in an earlier backup).
    pub fn with_reference(self, reference: Option<OwnedFd>) -> Self {
        PlainCopy { reference, ..self }
    }

    /// Copies the tree (only the root-level `only` names when given).
    pub fn run(&self, src: OwnedFd, dst: OwnedFd, only: Option<&[Vec<u8>]>) {
        let refs = match self.reference.as_ref().map(fsutil::dup).transpose() {
            Ok(r) => vec![r],
            Err(e) => return self.sink.io_error(b"", "dup", e),
        };
        walk::walk(
            Roots {
                src,
                dst: Some(dst),
                refs,
                only,
                fence: self.fence,
            },
            self,
            self.sink,
        );
    }
}

impl Visitor for PlainCopy<'_> {
    fn entry(&self, dir: &Dir<'_>, name: &CStr, kind: Kind) {
        let dst = dir.dst.expect("plain copies mirror into a destination");
        let rel = join(dir.rel, name.to_bytes());
        let is_message = kind == Kind::File
            && self
                .messages
                .is_some_and(|a| a.is_message_path(dir.rel, name.to_bytes()));
        if is_message {
            // A restore's messages have no recorded size here: never reused.
            match self.policy.link_or_copy(dir.src, dst, name) {
                Ok(p) => count_placed(self.sink, &rel, p),
                Err(e) => self.sink.fs_error(&rel, &e),
            }
        } else {
            copy_plain(self.policy, self.sink, dir, name, kind, &rel);
        }
        self.sink.progress.add_done(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::testutil::Scratch;
    use crate::ids::IdSet;
    use crate::progress::Progress;
    use std::os::unix::fs::MetadataExt;

    fn area() -> Area {
        Area {
            tree: b"msg".to_vec(),
            known: vec![b"index.db".to_vec()],
            copy: vec![b"junkfilter.bloom".to_vec()],
        }
    }

    /// A snapshot of the live IDs `live`, nothing being erased, IDs from `next_id` new.
    fn snap(live: Vec<u64>, next_id: u64) -> Snapshot {
        Snapshot {
            live: IdSet::new(live),
            erasing: IdSet::default(),
            next_id,
        }
    }

    fn get(t: &Tally) -> std::collections::HashMap<&'static str, u64> {
        t.to_pairs().into_iter().collect()
    }

    #[test]
    fn backup_area_links_skips_reports_and_finds_missing() {
        let s = Scratch::new("area");
        for f in [
            "msg/a/1",
            "msg/a/2",
            "msg/a/3",
            "msg/b/9000",
            "msg/a/9001",
            "msg/a/stray",
            "notes",
            "index.db",
        ] {
            s.file(&format!("src/{f}"), f.as_bytes());
        }
        std::fs::create_dir(s.path("dst")).unwrap();
        // 1 and 2 live, 4 live but missing, 3 being erased, next ID 6: 9000 is new, 9001 is at
        // the wrong path (dir "a" holds IDs below 8192) and so is a stray.
        let snap = Snapshot {
            live: IdSet::new(vec![1, 2, 4]),
            erasing: IdSet::new(vec![3]),
            next_id: 6,
        };
        let a = area();
        let p = Progress::new(false, 100);
        let sink = Sink::new(&p, b"data/accounts/x");
        let policy = LinkPolicy::new(false);
        let sizes = [Some(7), Some(7), Some(7)]; // "msg/a/1" and "msg/a/2" hold 7 bytes
        AreaBackup::new(&a, &snap, &sizes, &policy, &sink).run(
            fsutil::open_dir(&s.path("src")).unwrap(),
            fsutil::open_dir(&s.path("dst")).unwrap(),
        );
        let t = get(&sink.tally);
        assert_eq!(
            (
                t["linked"],
                t["skipped_new"],
                t["skipped_erasing"],
                t["known"],
                t["unrecognized"],
                t["missing"]
            ),
            (2, 1, 1, 1, 3, 1)
        );
        assert_eq!(
            std::fs::metadata(s.path("src/msg/a/1")).unwrap().ino(),
            std::fs::metadata(s.path("dst/msg/a/1")).unwrap().ino()
        );
        assert_ne!(
            std::fs::metadata(s.path("src/notes")).unwrap().ino(),
            std::fs::metadata(s.path("dst/notes")).unwrap().ino()
        );
        assert!(s.path("dst/msg/a/stray").exists() && s.path("dst/msg/a/9001").exists());
        assert!(
            !s.path("dst/msg/b/9000").exists()
                && !s.path("dst/msg/a/3").exists()
                && !s.path("dst/index.db").exists()
        );
        let events = p.drain();
        let missing: Vec<_> = events.iter().filter(|e| e.code == "missing").collect();
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].path, b"data/accounts/x/msg/a/4");
        assert_eq!(p.position().0, 3);
    }

    #[test]
    fn copy_names_travel_with_the_area_as_plain_copies() {
        // The junk filter changes in place: it must be a copy (own inode), not a link, and not
        // a message (no progress unit, no "unrecognized" warning). A copy name deeper than the
        // area root is an ordinary stray.
        let s = Scratch::new("copyname");
        s.file("src/msg/a/1", b"one");
        s.file("src/junkfilter.bloom", b"bloom bits");
        s.file("src/sub/junkfilter.bloom", b"x");
        std::fs::create_dir(s.path("dst")).unwrap();
        let snap = snap(vec![1], 2);
        let a = area();
        let p = Progress::new(false, 100);
        let sink = Sink::new(&p, b"data/accounts/x");
        let policy = LinkPolicy::new(false);
        AreaBackup::new(&a, &snap, &[Some(3)], &policy, &sink).run(
            fsutil::open_dir(&s.path("src")).unwrap(),
            fsutil::open_dir(&s.path("dst")).unwrap(),
        );
        let ino = |p: &str| std::fs::metadata(s.path(p)).unwrap().ino();
        assert_ne!(ino("src/junkfilter.bloom"), ino("dst/junkfilter.bloom"));
        assert_eq!(
            std::fs::read(s.path("dst/junkfilter.bloom")).unwrap(),
            b"bloom bits"
        );
        let t = get(&sink.tally);
        // Linked: msg/a/1; copied: the stray sub/junkfilter.bloom only.
        assert_eq!(
            (t["linked"], t["copied"], t["known"], t["unrecognized"]),
            (1, 1, 1, 1)
        );
        assert_eq!(t["bytes_copied"], 10 + 1);
        assert_eq!(p.position().0, 1, "one progress unit: the message");
        let warned: Vec<_> = p
            .drain()
            .into_iter()
            .filter(|e| e.code == "unrecognized")
            .map(|e| e.path)
            .collect();
        assert_eq!(
            warned,
            vec![b"data/accounts/x/sub/junkfilter.bloom".to_vec()]
        );
    }

    #[test]
    fn backup_areas_runs_every_area_in_order_below_the_anchor() {
        // Two areas of one call, relative to an anchor: the first is backed up, the second's
        // root does not exist, which is that area's error and does not stop the first.
        let s = Scratch::new("areas");
        s.file("data/accounts/a/msg/a/1", b"one");
        s.file("data/accounts/a/msg/a/1-lock", b"");
        std::fs::create_dir_all(s.path("dst/a")).unwrap();
        std::fs::create_dir_all(s.path("dst/b")).unwrap();
        let spec = |src: &str, prefix: &[u8]| AreaSpec {
            src: src.into(),
            area: area(),
            snap: snap(vec![1], 2),
            sizes: vec![Some(3)],
            prefix: prefix.to_vec(),
        };
        let jobs = [
            AreaJob {
                spec: spec("accounts/a", b"data/accounts/a"),
                dst: s.path("dst/a"),
            },
            AreaJob {
                spec: spec("accounts/b", b"data/accounts/b"),
                dst: s.path("dst/b"),
            },
        ];
        let opts = BackupOptions {
            anchor: Some(fsutil::open_dir(&s.path("data")).unwrap()),
            fence: Fence {
                skip: Vec::new(),
                skip_locks: true,
            },
            ..BackupOptions::default()
        };
        let p = Progress::new(false, 100);
        let out = backup_areas(&jobs, &opts, &p);
        let (a, b) = (get(&out[0].tally), get(&out[1].tally));
        assert_eq!((a["linked"], a["errors"], a["unrecognized"]), (1, 0, 0));
        assert_eq!((b["linked"], b["errors"]), (0, 1));
        assert_eq!((out[0].first_fallback, out[0].fallbacks), (None, 0));
        assert!(s.path("dst/a/msg/a/1").exists());
        assert!(
            !s.path("dst/a/msg/a/1-lock").exists(),
            "lock files never copied"
        );
        let ev = p.drain();
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(
            (ev[0].code, ev[0].path.as_slice()),
            ("io", b"data/accounts/b/".as_slice())
        );
    }

    #[test]
    fn copy_tree_counts_fallbacks_and_keeps_only_the_named_entries() {
        let s = Scratch::new("copytree");
        s.file("src/keep", b"k");
        s.file("src/leave", b"l");
        std::fs::create_dir(s.path("dst")).unwrap();
        let job = TreeCopy {
            prefix: b"data".to_vec(),
            only: Some(vec![b"keep".to_vec()]),
            ..TreeCopy::default()
        };
        let p = Progress::new(false, 100);
        let out = copy_tree(
            fsutil::open_dir(&s.path("src")).unwrap(),
            fsutil::open_dir(&s.path("dst")).unwrap(),
            &job,
            &p,
        );
        assert_eq!(get(&out.tally)["copied"], 1);
        assert!(s.path("dst/keep").exists() && !s.path("dst/leave").exists());
    }

    #[test]
    fn unreadable_message_dir_files_are_placed_by_path() {
        // A message directory the walk cannot list (here: one that is really a symlink to a
        // directory, which the walk refuses to enter) still gets its snapshot files placed by
        // path, never through the symlink.
        let s = Scratch::new("unseen");
        s.file("elsewhere/5", b"five");
        std::fs::create_dir_all(s.path("src/msg")).unwrap();
        std::os::unix::fs::symlink(s.path("elsewhere"), s.path("src/msg/a")).unwrap();
        std::fs::create_dir(s.path("dst")).unwrap();
        let snap = snap(vec![5], 6);
        let a = area();
        let p = Progress::new(false, 100);
        let sink = Sink::new(&p, b"");
        let policy = LinkPolicy::new(false);
        AreaBackup::new(&a, &snap, &[None], &policy, &sink).run(
            fsutil::open_dir(&s.path("src")).unwrap(),
            fsutil::open_dir(&s.path("dst")).unwrap(),
        );
        let t = get(&sink.tally);
        assert_eq!(t["linked"], 0);
        assert_eq!(t["errors"], 1);
        assert_eq!(
            t["missing"], 1,
            "the message behind the symlink is not in the backup"
        );
        assert_eq!(p.position().0, 1);
        // The symlink was recreated as a link, and nothing was written through it.
        assert!(std::fs::symlink_metadata(s.path("dst/msg/a"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_dir(s.path("elsewhere")).unwrap().count(), 1);
        let ev = p.drain();
        let errors: Vec<_> = ev
            .iter()
            .filter(|e| e.severity == crate::progress::Severity::Error)
            .collect();
        assert_eq!(errors.len(), 1, "{ev:?}");
        assert_eq!(errors[0].path, b"msg/a");
        assert!(
            errors[0]
                .detail
                .contains("not a directory (a symlink is never followed)"),
            "{ev:?}"
        );
    }

    #[test]
    fn a_directory_at_a_message_path_is_one_clear_error() {
        let s = Scratch::new("dirmsg");
        s.file("src/msg/a/5/inside", b"x");
        s.file("src/msg/a/6", b"six");
        std::fs::create_dir(s.path("dst")).unwrap();
        let snap = snap(vec![5, 6], 7);
        let a = area();
        let p = Progress::new(false, 100);
        let sink = Sink::new(&p, b"");
        let policy = LinkPolicy::new(false);
        let sizes = [None, Some(3)];
        AreaBackup::new(&a, &snap, &sizes, &policy, &sink).run(
            fsutil::open_dir(&s.path("src")).unwrap(),
            fsutil::open_dir(&s.path("dst")).unwrap(),
        );
        let t = get(&sink.tally);
        assert_eq!((t["linked"], t["missing"], t["errors"]), (1, 1, 1));
        assert_eq!(
            p.position().0,
            2,
            "one unit of progress per snapshot message, no more"
        );
        let ev = p.drain();
        let errors: Vec<_> = ev
            .iter()
            .filter(|e| e.severity == crate::progress::Severity::Error)
            .collect();
        assert_eq!(errors.len(), 1, "{ev:?}");
        assert_eq!(
            (errors[0].code, errors[0].path.as_slice()),
            ("not_regular", b"msg/a/5".as_slice())
        );
        assert!(errors[0].detail.contains("not a regular file"), "{ev:?}");
    }

    #[test]
    fn placed_files_are_checked_against_their_record_sizes() {
        let s = Scratch::new("sizes");
        s.file("src/msg/a/1", b"12345");
        s.file("src/msg/a/2", b"12345");
        s.file("src/msg/a/3", b"12345");
        std::fs::create_dir(s.path("dst")).unwrap();
        // 1 matches, 2 is shorter than its record, 3 claims the largest u64 (no sentinel).
        let snap = snap(vec![1, 2, 3], 4);
        let a = area();
        for force_copy in [false, true] {
            let _ = std::fs::remove_dir_all(s.path("dst"));
            std::fs::create_dir(s.path("dst")).unwrap();
            let p = Progress::new(false, 100);
            let sink = Sink::new(&p, b"");
            let policy = LinkPolicy::new(force_copy);
            AreaBackup::new(
                &a,
                &snap,
                &[Some(5), Some(9), Some(u64::MAX)],
                &policy,
                &sink,
            )
            .run(
                fsutil::open_dir(&s.path("src")).unwrap(),
                fsutil::open_dir(&s.path("dst")).unwrap(),
            );
            let mut bad: Vec<_> = p
                .drain()
                .into_iter()
                .filter(|e| e.code == "size_mismatch")
                .map(|e| e.path)
                .collect();
            bad.sort();
            assert_eq!(
                bad,
                vec![b"msg/a/2".to_vec(), b"msg/a/3".to_vec()],
                "force_copy {force_copy}"
            );
            assert_eq!(get(&sink.tally)["errors"], 2);
        }
    }

    #[test]
    fn plain_copy_recreates_symlinks_and_skips_fifos() {
        let s = Scratch::new("plain");
        s.file("src/conf/a.toml", b"x");
        std::os::unix::fs::symlink("/etc/shadow", s.path("src/conf/shadow")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            s.path("src/fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        std::fs::create_dir(s.path("dst")).unwrap();
        let p = Progress::new(false, 100);
        let sink = Sink::new(&p, b"config");
        let policy = LinkPolicy::new(false);
        PlainCopy::new(None, &policy, &sink).run(
            fsutil::open_dir(&s.path("src")).unwrap(),
            fsutil::open_dir(&s.path("dst")).unwrap(),
            None,
        );
        let t = get(&sink.tally);
        assert_eq!(
            (t["copied"], t["symlinks"], t["special"], t["warnings"]),
            (1, 1, 1, 1)
        );
        assert_eq!(
            std::fs::read_link(s.path("dst/conf/shadow"))
                .unwrap()
                .to_str(),
            Some("/etc/shadow")
        );
        assert!(!s.path("dst/fifo").exists());
        assert_eq!(p.drain()[0].path, b"config/fifo");
    }

    #[test]
    fn plain_copy_links_only_message_files_when_asked() {
        let s = Scratch::new("restore");
        s.file("src/msg/a/7", b"m");
        s.file("src/index.db", b"db");
        std::fs::create_dir(s.path("dst")).unwrap();
        let a = area();
        let p = Progress::new(false, 100);
        let sink = Sink::new(&p, b"");
        let policy = LinkPolicy::new(false);
        PlainCopy::new(Some(&a), &policy, &sink).run(
            fsutil::open_dir(&s.path("src")).unwrap(),
            fsutil::open_dir(&s.path("dst")).unwrap(),
            None,
        );
        let ino = |p: &str| std::fs::metadata(s.path(p)).unwrap().ino();
        assert_eq!(ino("src/msg/a/7"), ino("dst/msg/a/7"));
        assert_ne!(ino("src/index.db"), ino("dst/index.db"));
    }

    /// Makes `dst` a copy of `src` as a backup would: same bytes, mode, owner and mtime.
    fn clone_file(src: &std::path::Path, dst: &std::path::Path) {
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(src, dst).unwrap();
        let m = std::fs::metadata(src).unwrap();
        std::fs::set_permissions(dst, m.permissions()).unwrap();
        let f = std::fs::File::options().write(true).open(dst).unwrap();
        f.set_modified(m.modified().unwrap()).unwrap();
    }

    /// Sets the mtime of `path` to `sec`.`nsec`.
    fn set_mtime(path: &std::path::Path, sec: u64, nsec: u32) {
        let t = std::time::UNIX_EPOCH + std::time::Duration::new(sec, nsec);
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    #[test]
    fn reuse_from_a_reference_only_for_the_same_file() {
        // Links from the store are ruled out (force_copy), so every placed file consults the
        // reference: only a regular file of the same size, mtime (to the nanosecond), mode and
        // owner, with a known recorded size for a message, is linked from it.
        use std::os::unix::fs::PermissionsExt;
        let s = Scratch::new("reuse");
        for id in 1..=8 {
            s.file(
                &format!("src/msg/a/{id}"),
                format!("message {id}").as_bytes(),
            );
            set_mtime(
                &s.path(&format!("src/msg/a/{id}")),
                1_700_000_000,
                123_456_789,
            );
        }
        s.file("src/msg/b/9000", b"message in b");
        s.file("src/junkfilter.bloom", b"bloom");
        s.file("src/notes", b"a stray");
        s.file("outside/8", b"message 8");
        for f in [
            "msg/a/1",
            "msg/a/2",
            "msg/a/3",
            "msg/a/4",
            "msg/a/5",
            "msg/b/9000",
            "junkfilter.bloom",
            "notes",
        ] {
            clone_file(&s.path(&format!("src/{f}")), &s.path(&format!("ref/{f}")));
        }
        // 2: other size (same mtime); 3: same size, other nanoseconds; 4: other mode;
        // 5: unknown recorded size; 6: other owner; 7: a symlink to the outside file in the ref;
        // b/: the reference's directory is a symlink to a directory holding the same file.
        std::fs::write(s.path("ref/msg/a/2"), b"message 2 changed").unwrap();
        set_mtime(&s.path("ref/msg/a/2"), 1_700_000_000, 123_456_789);
        set_mtime(&s.path("ref/msg/a/3"), 1_700_000_000, 123_456_788);
        std::fs::set_permissions(
            s.path("ref/msg/a/4"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::fs::set_permissions(
            s.path("src/msg/a/4"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        // 6: the same file but another owner (compared when running as root, as tests do).
        clone_file(&s.path("src/msg/a/6"), &s.path("ref/msg/a/6"));
        std::os::unix::fs::chown(s.path("ref/msg/a/6"), Some(65534), Some(65534)).unwrap();
        clone_file(&s.path("src/msg/a/7"), &s.path("outside/7"));
        std::os::unix::fs::symlink(s.path("outside/7"), s.path("ref/msg/a/7")).unwrap();
        std::fs::rename(s.path("ref/msg/b"), s.path("outside/b")).unwrap();
        std::os::unix::fs::symlink(s.path("outside/b"), s.path("ref/msg/b")).unwrap();
        std::fs::create_dir(s.path("dst")).unwrap();
        let ids: Vec<u64> = (1..=8).chain([9000]).collect();
        let snap = snap(ids.clone(), 9001);
        let sizes: Vec<Option<u64>> = ids
            .iter()
            .map(|&id| {
                let n = std::fs::metadata(s.path(&format!(
                    "src/{}",
                    String::from_utf8(join(b"msg", &msgpath::rel_path(id))).unwrap()
                )))
                .unwrap()
                .len();
                (id != 5).then_some(n)
            })
            .collect();
        let a = area();
        let p = Progress::new(true, 1000);
        let sink = Sink::new(&p, b"");
        let policy = LinkPolicy::new(true);
        AreaBackup::new(&a, &snap, &sizes, &policy, &sink)
            .with_reference(Some(fsutil::open_dir(&s.path("ref")).unwrap()))
            .run(
                fsutil::open_dir(&s.path("src")).unwrap(),
                fsutil::open_dir(&s.path("dst")).unwrap(),
            );
        let ino = |p: &str| std::fs::symlink_metadata(s.path(p)).unwrap().ino();
        let t = get(&sink.tally);
        // Reused: msg/a/1, junkfilter.bloom, notes; copied: messages 2-8 and 9000 plus nothing else.
        assert_eq!(
            (t["reused"], t["copied"], t["errors"]),
            (3, 8, 0),
            "{:?}",
            p.drain()
        );
        assert_eq!(ino("dst/msg/a/1"), ino("ref/msg/a/1"));
        assert_eq!(ino("dst/junkfilter.bloom"), ino("ref/junkfilter.bloom"));
        assert_eq!(ino("dst/notes"), ino("ref/notes"));
        for f in ["msg/a/2", "msg/a/3", "msg/a/4", "msg/a/5", "msg/a/6"] {
            assert_ne!(
                ino(&format!("dst/{f}")),
                ino(&format!("ref/{f}")),
                "{f} reused"
            );
            assert_eq!(
                std::fs::read(s.path(&format!("dst/{f}"))).unwrap(),
                std::fs::read(s.path(&format!("src/{f}"))).unwrap()
            );
        }
        assert_ne!(
            ino("dst/msg/a/7"),
            ino("outside/7"),
            "a symlink in the reference was followed"
        );
        assert_ne!(
            ino("dst/msg/b/9000"),
            ino("outside/b/9000"),
            "a symlinked reference directory was followed"
        );
        assert!(std::fs::symlink_metadata(s.path("dst/msg/a/7"))
            .unwrap()
            .is_file());
        assert_eq!(std::fs::read(s.path("outside/8")).unwrap(), b"message 8");
        assert_eq!((policy.fallbacks(), policy.first_fallback()), (0, None));
        let reused: Vec<_> = p
            .drain()
            .into_iter()
            .filter(|e| e.code == "reused")
            .map(|e| e.path)
            .collect();
        assert_eq!(reused.len(), 3);
        // The same run without the reference copies everything: the test above is about it.
        let p2 = Progress::new(false, 1000);
        let sink2 = Sink::new(&p2, b"");
        std::fs::create_dir(s.path("dst2")).unwrap();
        AreaBackup::new(&a, &snap, &sizes, &policy, &sink2).run(
            fsutil::open_dir(&s.path("src")).unwrap(),
            fsutil::open_dir(&s.path("dst2")).unwrap(),
        );
        assert_eq!(get(&sink2.tally)["reused"], 0);
    }

    #[test]
    fn a_failed_link_from_the_reference_is_a_counted_fallback_copy() {
        // The reference's file cannot be linked (here: the reference is on another file system
        // than the destination, EXDEV; on ext4 at 65,000 links it would be EMLINK): the file is
        // copied and counted as one link fallback with that errno, never an error.
        let shm = std::path::Path::new("/dev/shm");
        let s = Scratch::new("reusefail");
        let refdir = shm.join(format!("mailbak-reusefail-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&refdir);
        s.file("src/msg/a/1", b"one");
        clone_file(&s.path("src/msg/a/1"), &refdir.join("msg/a/1"));
        std::fs::create_dir(s.path("dst")).unwrap();
        let same_dev = std::fs::metadata(&refdir).unwrap().dev()
            == std::fs::metadata(s.path("dst")).unwrap().dev();
        let snap = snap(vec![1], 2);
        let a = area();
        let p = Progress::new(false, 100);
        let sink = Sink::new(&p, b"");
        let policy = LinkPolicy::new(true);
        AreaBackup::new(&a, &snap, &[Some(3)], &policy, &sink)
            .with_reference(Some(fsutil::open_dir(&refdir).unwrap()))
            .run(
                fsutil::open_dir(&s.path("src")).unwrap(),
                fsutil::open_dir(&s.path("dst")).unwrap(),
            );
        let _ = std::fs::remove_dir_all(&refdir);
        assert!(
            !same_dev,
            "/dev/shm must be another file system than the scratch directory"
        );
        let t = get(&sink.tally);
        assert_eq!((t["reused"], t["copied"], t["errors"]), (0, 1, 0));
        assert_eq!(
            (policy.fallbacks(), policy.first_fallback()),
            (1, Some(Errno::XDEV))
        );
        assert_eq!(std::fs::read(s.path("dst/msg/a/1")).unwrap(), b"one");
    }
}

//! Backup of one message area: the walk's visitor, the size check of placed files, and the
//! snapshot messages the walk did not meet (steps 1 to 4 of the module doc of `transfer`).

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use rustix::io::Errno;

use super::{copy_plain, count_placed, record_plain, ref_of, reference_below};
use crate::areas::{AreaState, Sizes, Unseen};
use crate::classify::{Area, Class, Snapshot};
use crate::digests::{MessageRecord, Source};
use crate::error::Error;
use crate::fsutil::{self, join, Kind};
use crate::ids::SeenSet;
use crate::linkcopy::{LinkPolicy, Placed};
use crate::progress::{Sink, Tally};
use crate::testpause::{self, Pause};
use crate::walk::{self, Dir, Fence, Roots, Visitor};

/// Backs up one message area (see the module doc).
pub struct AreaBackup<'a> {
    /// The area, the snapshot deciding what belongs, the recorded sizes, and which live IDs
    /// the walk met.
    state: AreaState<'a>,
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
    /// Aligned with the live IDs: the messages the reference's index proves to be the
    /// reference's files (`areas::proven`), linked from it without a look at the store's file;
    /// empty: none.
    proven: &'a [bool],
    /// In place, from a sealed reference (a read-only subvolume that named its racy files):
    /// which live messages the clone holds as a regular file. A proven one of them is kept
    /// without a stat ([`AreaBackup::place`]).
    present: Option<&'a SeenSet>,
    /// This backup's own racily-clean cutoff (`BackupOptions::racy_from`).
    racy_from: Option<i64>,
    /// The IDs of message files copied with an mtime at or after `racy_from`.
    racy: Mutex<Vec<u64>>,
}

impl<'a> AreaBackup<'a> {
    /// A backup of `area` from `snap`, checking placed files against `sizes`.
    pub fn new(
        area: &'a Area,
        snap: &'a Snapshot,
        sizes: &'a Sizes,
        policy: &'a LinkPolicy,
        sink: &'a Sink<'a>,
    ) -> Self {
        AreaBackup {
            state: AreaState::new(area, snap, sizes),
            policy,
            sink,
            pause: Pause::from_env(testpause::MID_LINK),
            fence: Fence::NONE,
            reference: None,
            proven: &[],
            present: None,
            racy_from: None,
            racy: Mutex::new(Vec::new()),
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

    /// The same, linking the messages `proven` marks from the reference without a look at the
    /// store's file ([`LinkPolicy::place_proven`]).
    pub fn with_proven(self, proven: &'a [bool]) -> Self {
        AreaBackup { proven, ..self }
    }

    /// The same, keeping a proven message that `present` marks (the clone of a sealed
    /// reference holds it as a regular file) where it is, with no call at all: the clone is a
    /// snapshot of a read-only subvolume, whose files are those the reference placed and
    /// checked against their records, and whose racy files are not proven
    /// (`areas::proven`). None: every proven message is checked as
    /// [`LinkPolicy::place_proven`] does.
    pub fn with_present(self, present: Option<&'a SeenSet>) -> Self {
        AreaBackup { present, ..self }
    }

    /// The same, naming the message files copied with an mtime at or after `cutoff` (this
    /// backup's racily-clean window) in [`AreaBackup::take_racy`].
    pub fn with_racy_from(self, cutoff: Option<i64>) -> Self {
        AreaBackup {
            racy_from: cutoff,
            ..self
        }
    }

    /// The IDs of the message files copied within this backup's racily-clean window, ascending.
    pub fn take_racy(&self) -> Vec<u64> {
        let mut ids = std::mem::take(&mut *self.racy.lock().unwrap_or_else(|e| e.into_inner()));
        ids.sort_unstable();
        ids
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
            self.state.visit_unseen(
                self.sink,
                &UnseenBackup {
                    backup: self,
                    src_root: src2.as_fd(),
                    dst_root: dst2.as_fd(),
                },
            );
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
        let id = self.state.id(i);
        let reference = reference.zip(self.state.sizes.get(i));
        let proven = self.proven.get(i).copied().unwrap_or(false);
        let placed = match reference {
            Some((_, want)) if proven && self.present.is_some_and(|p| p.is_marked(i)) => {
                Ok(Placed::Reused(want))
            }
            Some((r, want)) if proven => self.policy.place_proven(src, dst, name, r, want),
            _ => self.policy.place_message(src, dst, name, reference),
        };
        match placed {
            Ok(p) => {
                if let (Placed::Copied(c), Some(cutoff)) = (p, self.racy_from) {
                    if c.mtime_ns >= i128::from(cutoff) {
                        self.racy.lock().unwrap_or_else(|e| e.into_inner()).push(id);
                    }
                }
                count_placed(self.sink, rel, p);
                let size = self.check_size(dst, name, rel, i, p);
                self.record(id, size, p);
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
    fn check_size(
        &self,
        dst: BorrowedFd<'_>,
        name: &CStr,
        rel: &[u8],
        i: usize,
        placed: Placed,
    ) -> Option<u64> {
        let want = self.state.sizes.get(i);
        let have = match placed {
            Placed::Copied(c) => c.bytes,
            Placed::Reused(n) => n,
            // A file linked from the store is stat'ed only when there is a size to compare with
            // (or to record: its digest entry needs one).
            Placed::Linked if want.is_none() && self.sink.recorder.is_none() => return None,
            Placed::Linked => match fsutil::lstat_at(dst, name) {
                Ok(st) => st.st_size as u64,
                Err(e) => {
                    self.sink.io_error(rel, "stat", e);
                    return None;
                }
            },
        };
        let Some(want) = want else {
            return Some(have);
        };
        if have != want {
            Tally::bump(&self.sink.tally.damaged);
            let id = self.state.id(i);
            self.sink.error("size_mismatch", rel, 0, format!("message {id}: file has {have} bytes, its record says {want}; backed up as it is"));
        }
        Some(have)
    }

    /// Notes placed message file `id` of `size` for the backup's digests, when it records them.
    fn record(&self, id: u64, size: Option<u64>, placed: Placed) {
        let (Some(recorder), Some(size)) = (self.sink.recorder.as_ref(), size) else {
            return;
        };
        let source = match placed {
            Placed::Linked => Source::Linked,
            Placed::Reused(_) => Source::Reused,
            Placed::Copied(c) => match c.digest {
                Some(d) => Source::Copied(d),
                None => Source::Linked,
            },
        };
        recorder.message(MessageRecord { id, size, source });
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
}

/// Step 3: the live IDs whose file the walk did not meet, placed by path.
struct UnseenBackup<'b, 'a> {
    /// The backup they belong to.
    backup: &'b AreaBackup<'a>,
    /// The area root in the store.
    src_root: BorrowedFd<'b>,
    /// The area root in the destination.
    dst_root: BorrowedFd<'b>,
}

impl Unseen for UnseenBackup<'_, '_> {
    /// The message directory in the store, its mirror, and its reference directory if any.
    type Dir = (OwnedFd, OwnedFd, Option<OwnedFd>);

    fn open(&self, dir_rel: &[u8]) -> Result<Self::Dir, Errno> {
        let src = fsutil::open_dir_below(self.src_root, dir_rel)?;
        let dst = make_dirs(self.src_root, self.dst_root, dir_rel)?;
        Ok((
            src,
            dst,
            reference_below(self.backup.reference.as_ref(), dir_rel),
        ))
    }

    fn unusable(&self, dir_rel: &[u8], e: Errno, n: u64) {
        // The message directory itself is unusable (a symlink, never followed, or unreadable):
        // one error for it, not one per message, and each of its messages counted missing,
        // since none of them is in the backup.
        self.backup.sink.unusable_message_dir(
            dir_rel,
            e,
            n,
            "open or create",
            "of the snapshot are not backed up",
        );
    }

    fn file(&self, (src, dst, reference): &Self::Dir, name: &CStr, rel: &[u8], i: usize) {
        let r = reference.as_ref().map(|r| r.as_fd());
        self.backup
            .place(src.as_fd(), dst.as_fd(), r, name, rel, i, false);
    }

    fn absent(&self, rel: &[u8], i: usize) {
        self.backup.missing(rel, self.backup.state.id(i), false);
        self.backup.sink.progress.add_done(1);
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
        if let Class::Message(i) = self
            .state
            .area
            .classify(self.state.snap, rel, name.to_bytes())
        {
            // A directory where a message file should be: the message itself is not in the
            // backup (linking it would only fail on the mirrored directory). The directory is
            // still mirrored, like any odd entry, and its contents reported as strays.
            self.state.seen.mark(i);
            Tally::bump(&self.sink.tally.missing);
            let id = self.state.id(i);
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
        let class = self
            .state
            .area
            .classify(self.state.snap, dir.rel, name.to_bytes());
        let t = &self.sink.tally;
        match (class, kind) {
            (Class::Message(i), Kind::File) => {
                self.state.seen.mark(i);
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
                    Ok(p @ Placed::Reused(_)) => {
                        Tally::bump(&t.reused);
                        self.sink
                            .info("reused", &rel, "hardlinked from the reference");
                        record_plain(self.sink, &rel, p);
                    }
                    Ok(p @ Placed::Copied(c)) => {
                        t.bytes_copied.fetch_add(c.bytes, Ordering::Relaxed);
                        self.sink.info("copied", &rel, "copied");
                        record_plain(self.sink, &rel, p);
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
                self.state.seen.mark(i);
                Tally::bump(&t.missing);
                self.sink.error(
                    "not_regular",
                    &rel,
                    0,
                    format!(
                        "message {}: not a regular file; not backed up",
                        self.state.id(i)
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

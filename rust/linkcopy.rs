//! Placing a file in the destination: a hardlink where possible, a copy where not.
//!
//! Message files are immutable once committed, so a hardlink is a complete, free backup of one.
//! When a link is impossible the file is copied, and the first reason is kept so the caller can
//! warn once per run (not once per file). A cross-device failure switches the whole operation to
//! copies, since every later link would fail the same way; other reasons (EMLINK on one inode,
//! EPERM from protected_hardlinks on one file) only affect that file. [`LinkPolicy::for_roots`]
//! decides the cross-device case up front from the roots' `st_dev`, so that no link is tried in
//! vain per area.
//!
//! Reuse from a reference (an earlier backup on the destination's file system): when the store
//! link is impossible (or was never wanted: plain files), a regular file at the same path in the
//! reference directory with the same size, mtime (seconds and nanoseconds), permission bits and,
//! as root, owner as the source (and, for a message, a known recorded size equal to that size)
//! is hardlinked from the reference instead ([`Placed::Reused`]). ctime and inode numbers are
//! never compared (linking changes the one, a restore the other). When that link fails (EMLINK
//! at ext4's 65,000 links, EPERM, ...) the file is copied and counted as a link fallback.
//!
//! A message the reference's own index proves to be the reference's file (`areas::proven`) is
//! linked from the reference without a look at the store's file
//! ([`LinkPolicy::place_proven`]); only the reference's file is checked (a regular file of the
//! recorded size), and the store's file is copied when it is not. A reference file not older
//! than the reuse cutoff (below) is compared with the store's file as any other.
//!
//! Size and mtime do not tell a file rewritten in the clock tick the reference copied it in
//! from the copy: its mtime stays the same, and every later backup would reuse the stale copy
//! ("racily clean", as git calls it). So a reference file whose mtime is not older than the
//! caller's cutoff ([`LinkPolicy::with_reuse_cutoff`]: the reference's start less a margin for
//! coarse timestamps) is never reused: the file is copied from the store.
//!
//! In place ([`LinkPolicy::in_place`]: a repository on btrfs, `inplace.rs`), the destination is
//! a clone of the reference and is its own reference: a file the rule above would link from the
//! reference is kept where it is, and a copy first removes the clone's file it replaces.
//!
//! Copies themselves (reflink, `copy_file_range`, read/write; owner, mode and mtime) are
//! `copy.rs`'s; this module decides when a file is linked, reused or copied, and counts the
//! copies that stand in for a link.

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

use rustix::fs as rfs;
use rustix::io::Errno;

use crate::copy::{Copied, Copier};
use crate::error::Error;
use crate::fsutil::{self, file_mode, Kind};

/// How a file was placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placed {
    /// Hardlinked from the source.
    Linked,
    /// Hardlinked from the reference; its size (from a stat of the placed file).
    Reused(u64),
    /// Copied (possibly by a reflink); what the copy wrote.
    Copied(Copied),
}

/// Shared decisions of one operation (one area, one tree): whether links are still tried, why
/// the first one failed, and the copier used when they are not.
pub struct LinkPolicy {
    /// False once links are known to be impossible (cross-device), or when copies are forced.
    try_links: AtomicBool,
    /// Links were ruled out up front (the roots are on different file systems) and the caller
    /// expects it (it gave a reference on the destination's file system): copies are then plain
    /// copies, not fallbacks.
    xdev_expected: bool,
    /// errno of the first failed link (0 = none yet).
    first_fallback: AtomicI32,
    /// Files copied because a link was impossible (not counting forced copies), so that the
    /// one warning can say how many files it is about.
    fallbacks: AtomicU64,
    /// Whether copies were asked for (then no copy is a fallback).
    force_copy: bool,
    /// How copies are made between the operation's file systems (see `copy.rs`).
    copier: Copier,
    /// Whether `linkat(fd, "", ..., AT_EMPTY_PATH)` works (it needs CAP_DAC_READ_SEARCH); false
    /// once refused, then reuse links by name and checks what it linked (see `reuse`).
    empty_path_links: AtomicBool,
    /// Reference files whose mtime (nanoseconds since the epoch) is at or after this are never
    /// reused (see the module doc); None: no such bound.
    reuse_cutoff: Option<i64>,
    /// The reference directory is the destination directory itself (see the module doc).
    in_place: bool,
}

/// Why a file about to be copied was not linked (counted as a fallback when Some).
type Reason = Option<Errno>;

/// What the reference's file of a proven message is worth ([`LinkPolicy::judge_proven`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proven {
    /// A regular file of the recorded size, older than the reuse cutoff: kept.
    Sound,
    /// Written within the reuse cutoff's window: compared with the store's file.
    Racy,
    /// Not a regular file, or of another size: the store's file is copied.
    Damaged,
}

impl LinkPolicy {
    /// A policy that tries links first (`force_copy` = false) or never links.
    pub fn new(force_copy: bool) -> Self {
        LinkPolicy {
            try_links: AtomicBool::new(!force_copy),
            xdev_expected: false,
            first_fallback: AtomicI32::new(0),
            fallbacks: AtomicU64::new(0),
            force_copy,
            copier: Copier::new(),
            empty_path_links: AtomicBool::new(true),
            reuse_cutoff: None,
            in_place: false,
        }
    }

    /// The same policy, the destination being its own reference when `on` (see the module
    /// doc): reuse keeps the destination's file, a copy replaces it.
    pub fn in_place(self, on: bool) -> Self {
        LinkPolicy {
            in_place: on,
            ..self
        }
    }

    /// The same policy, never reusing a reference file whose mtime is at or after `cutoff`
    /// (nanoseconds since the epoch; see the module doc).
    pub fn with_reuse_cutoff(self, cutoff: Option<i64>) -> Self {
        LinkPolicy {
            reuse_cutoff: cutoff,
            ..self
        }
    }

    /// The same policy, hashing every copy from what it wrote when `on` (`digests.rs`).
    pub fn hashing(self, on: bool) -> Self {
        LinkPolicy {
            copier: self.copier.hashing(on),
            ..self
        }
    }

    /// The policy of an operation from `src` into `dst` (their roots): links are ruled out up
    /// front when they are on different file systems (when `xdev_expected`, the copies that
    /// follow are not fallbacks), and copy calls use the process-wide memo of that pair.
    pub fn for_roots(
        force_copy: bool,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        xdev_expected: bool,
    ) -> Self {
        let mut p = Self::new(force_copy);
        if let (Ok(s), Ok(d)) = (fsutil::fstat(src), fsutil::fstat(dst)) {
            #[allow(clippy::unnecessary_cast)] // dev_t is not u64 on every target
            let (sd, dd) = (s.st_dev as u64, d.st_dev as u64);
            p.copier = p.copier.between(sd, dd, d.st_mode & 0o2000 != 0);
            if sd != dd && !force_copy {
                p.try_links.store(false, Ordering::Relaxed);
                p.xdev_expected = xdev_expected;
            }
        }
        p
    }

    /// The errno of the first link that failed and was replaced by a copy, if any.
    pub fn first_fallback(&self) -> Option<Errno> {
        match self.first_fallback.load(Ordering::Relaxed) {
            0 => None,
            e => Some(Errno::from_raw_os_error(e)),
        }
    }

    /// How many files were copied because a link was impossible.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// Whether copies keep the source owner.
    pub fn as_root(&self) -> bool {
        self.copier.as_root()
    }

    /// Places `name` of `src` into `dst` under the same name: hardlink, else copy.
    pub fn link_or_copy(
        &self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &CStr,
    ) -> Result<Placed, Error> {
        self.place_message(src, dst, name, None)
    }

    /// Places message file `name` of `src` into `dst`: a hardlink from the store, else one from
    /// `reference` (`(directory, recorded size)`; see the module doc), else a copy.
    pub fn place_message(
        &self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &CStr,
        reference: Option<(BorrowedFd<'_>, u64)>,
    ) -> Result<Placed, Error> {
        let mut reason: Reason = None;
        if self.try_links.load(Ordering::Relaxed) {
            match fsutil::link_at(src, dst, name) {
                Ok(()) => return Ok(Placed::Linked),
                Err(e) if link_impossible(e) => {
                    reason = Some(e);
                    if e == Errno::XDEV {
                        self.try_links.store(false, Ordering::Relaxed);
                    }
                }
                Err(e) => return Err(Error::new("link", e)),
            }
        } else if !self.force_copy && !self.xdev_expected {
            reason = Some(Errno::XDEV);
        }
        if let Some((r, want)) = reference {
            match self.reuse(src, r, dst, name, Some(want)) {
                Ok(Some(n)) => return Ok(Placed::Reused(n)),
                Ok(None) => {}
                Err(e) => reason = Some(e),
            }
        }
        self.copy_counted(src, dst, name, true, reason)
    }

    /// Places plain file `name` (configuration, junk filter, stray: always copied from the
    /// store, since it may change in place) into `dst`: a hardlink from `reference` when it
    /// holds the same file (see the module doc), else a copy.
    pub fn place_plain(
        &self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &CStr,
        reference: Option<BorrowedFd<'_>>,
    ) -> Result<Placed, Error> {
        let mut reason: Reason = None;
        if let Some(r) = reference {
            match self.reuse(src, r, dst, name, None) {
                Ok(Some(n)) => return Ok(Placed::Reused(n)),
                Ok(None) => {}
                Err(e) => reason = Some(e),
            }
        }
        self.copy_counted(src, dst, name, false, reason)
    }

    /// Copies and, when `reason` says the file should have been a link, counts a fallback.
    fn copy_counted(
        &self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &CStr,
        immutable: bool,
        reason: Reason,
    ) -> Result<Placed, Error> {
        if self.in_place {
            // The clone's file (a stale or damaged copy) gives way to the store's.
            match fsutil::unlink_at(dst, name) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(Error::new("unlink", e)),
            }
        }
        let placed = Placed::Copied(self.copier.copy_file(src, dst, name, immutable)?);
        if let Some(e) = reason {
            let _ = self.first_fallback.compare_exchange(
                0,
                e.raw_os_error(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            self.fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        Ok(placed)
    }

    /// Hardlinks `name` from the reference directory `r` into `dst` when it is the same file as
    /// `name` of `src` (see the module doc; `want`: the message's recorded size). Ok(Some(size))
    /// when linked, Ok(None) when it is not the same file (or not a regular file, or absent),
    /// Err(errno) when the link failed.
    fn reuse(
        &self,
        src: BorrowedFd<'_>,
        r: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &CStr,
        want: Option<u64>,
    ) -> Result<Option<u64>, Errno> {
        // The reference first: for a new file it is absent, and the source is not stat'ed. It is
        // opened (O_PATH: no access to its content, no open of a FIFO) rather than stat'ed by
        // name, so that the link below is of exactly the inode compared, whatever happens to
        // the name meanwhile, and the name is looked up once, not twice: on a machine with
        // millions of dentries each lookup is most of the cost of a reused file.
        let Some((rfd, rst)) = self.open_reference(r, name) else {
            return Ok(None);
        };
        if Kind::from_mode(rst.st_mode) != Kind::File {
            return Ok(None);
        }
        let Ok(sst) = fsutil::lstat_at(src, name) else {
            return Ok(None);
        };
        if !same_file(&sst, &rst, self.copier.as_root())
            || want.is_some_and(|w| w != sst.st_size as u64)
            || self
                .reuse_cutoff
                .is_some_and(|c| fsutil::mtime_ns(&rst) >= i128::from(c))
        {
            return Ok(None);
        }
        self.link_reference(rfd.as_ref(), &rst, r, dst, name)
    }

    /// The reference file `name` of directory `r`, opened (`O_PATH`, never followed: the link
    /// is then of exactly the inode compared) with its stat; in place, only its stat (`lstat`:
    /// nothing is linked, and one call instead of three is most of the cost of a kept file).
    /// None when it cannot be had (absent, ...).
    fn open_reference(
        &self,
        r: BorrowedFd<'_>,
        name: &CStr,
    ) -> Option<(Option<OwnedFd>, rfs::Stat)> {
        if self.in_place {
            return fsutil::lstat_at(r, name).ok().map(|st| (None, st));
        }
        let rfd = fsutil::open_path_at(r, name).ok()?;
        let rst = fsutil::fstat(&rfd).ok()?;
        Some((Some(rfd), rst))
    }

    /// Places message file `name` that the reference's index proves to be the reference's
    /// file (`areas::proven`: live in both indexes with the same recorded size `want`) without
    /// looking at the store's file: the reference's file (`r`: its directory) is linked and
    /// kept when it is a regular file of `want` bytes ([`LinkPolicy::link_proven`]; in place,
    /// the clone's file is stat'ed and kept). One that is missing, not a regular file or of
    /// another size (a damaged reference) is not kept: the store's file is copied. Where the
    /// store's files are linked (the repository on the store's file system), that rule wins
    /// ([`LinkPolicy::place_message`]).
    pub fn place_proven(
        &self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &CStr,
        r: BorrowedFd<'_>,
        want: u64,
    ) -> Result<Placed, Error> {
        if self.try_links.load(Ordering::Relaxed) {
            return self.place_message(src, dst, name, Some((r, want)));
        }
        if !self.in_place {
            return self.link_proven(src, dst, name, r, want);
        }
        // In place the reference's file is the clone's own, where it stands: looked at, kept.
        match fsutil::lstat_at(r, name).map(|st| self.judge_proven(&st, want)) {
            Ok(Proven::Racy) => self.place_message(src, dst, name, Some((r, want))),
            Ok(Proven::Sound) => Ok(Placed::Reused(want)),
            Ok(Proven::Damaged) | Err(_) => self.copy_counted(src, dst, name, true, None),
        }
    }

    /// What the reference's file of a proven message (its stat `st`; `want`: the recorded
    /// size) is worth: written within the reuse cutoff's window (compared with the store's file
    /// as any other; see the module doc), sound (a regular file of `want` bytes), or damaged.
    fn judge_proven(&self, st: &rfs::Stat, want: u64) -> Proven {
        if self
            .reuse_cutoff
            .is_some_and(|c| fsutil::mtime_ns(st) >= i128::from(c))
        {
            Proven::Racy
        } else if Kind::from_mode(st.st_mode) == Kind::File && st.st_size as u64 == want {
            Proven::Sound
        } else {
            Proven::Damaged
        }
    }

    /// [`LinkPolicy::place_proven`] into a new snapshot: the reference's `name` is linked by
    /// name first and the link then checked (`lstat` of the new entry, never followed): a
    /// regular file of `want` bytes, older than the reuse cutoff, stays; anything else is
    /// unlinked again and the store's file copied (compared first when within the cutoff).
    ///
    /// Linking first, instead of opening the reference (`O_PATH`) to check it and linking
    /// through that descriptor: `perf` of the nightly at 1,000,000 messages on tmpfs put the
    /// open, its `fstat` and the close at 29 % of all samples against 34 % for the links
    /// themselves (an open file to set up and tear down per message); this is one lookup in a
    /// directory the run just wrote. Linking by name is safe here: the reference is a snapshot
    /// in the repository, which only root writes, so nothing swaps its entries meanwhile.
    fn link_proven(
        &self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &CStr,
        r: BorrowedFd<'_>,
        want: u64,
    ) -> Result<Placed, Error> {
        let reason: Reason = match fsutil::link_at(r, dst, name) {
            Ok(()) => match fsutil::lstat_at(dst, name).map(|st| self.judge_proven(&st, want)) {
                Ok(Proven::Racy) => {
                    unlink_placed(dst, name)?;
                    return self.place_message(src, dst, name, Some((r, want)));
                }
                Ok(Proven::Sound) => return Ok(Placed::Reused(want)),
                // A damaged reference (another size, a symlink or a special file): not kept.
                Ok(Proven::Damaged) | Err(_) => {
                    unlink_placed(dst, name)?;
                    None
                }
            },
            // Missing from the reference: copied.
            Err(Errno::NOENT) => None,
            // The link failed: a fallback when the reference holds what would have been
            // linked, else a damaged reference (a directory there: EPERM).
            Err(e) => fsutil::lstat_at(r, name)
                .ok()
                .filter(|st| Kind::from_mode(st.st_mode) == Kind::File && st.st_size as u64 == want)
                .map(|_| e),
        };
        self.copy_counted(src, dst, name, true, reason)
    }

    /// Hardlinks reference file `rfd` (`rst`: its stat; `name` in reference directory `r`) into
    /// `dst`: through the descriptor where the kernel allows it, else by name, checked to be
    /// that inode. Ok(Some(size)) when linked, Ok(None) when the name led elsewhere (nothing
    /// linked), Err(errno) when the link failed.
    fn link_reference(
        &self,
        rfd: Option<&OwnedFd>,
        rst: &rfs::Stat,
        r: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &CStr,
    ) -> Result<Option<u64>, Errno> {
        if self.in_place {
            // The destination's own entry, compared as a reference file: kept.
            return Ok(Some(rst.st_size as u64));
        }
        let rfd = rfd.expect("a reference file is opened unless in place");
        if self.empty_path_links.load(Ordering::Relaxed) {
            match fsutil::link_fd_at(rfd.as_fd(), dst, name) {
                Ok(()) => return Ok(Some(rst.st_size as u64)),
                // ENOENT: this thread lacks CAP_DAC_READ_SEARCH (not root, or acting as another
                // user); link by name from now on.
                Err(Errno::NOENT) => self.empty_path_links.store(false, Ordering::Relaxed),
                Err(e) => return Err(e),
            }
        }
        fsutil::link_at(r, dst, name)?;
        // Linked by name: the entry could have been swapped between the open and the link, so
        // what was linked must be the inode compared, else it is removed and the file copied.
        match fsutil::lstat_at(dst, name) {
            Ok(st) if (st.st_dev, st.st_ino) == (rst.st_dev, rst.st_ino) => {
                Ok(Some(st.st_size as u64))
            }
            _ => {
                let _ = fsutil::unlink_at(dst, name);
                Ok(None)
            }
        }
    }

    /// Copies regular file `name` of `src` into `dst` under the same name; fails if it exists.
    #[cfg(test)]
    pub fn copy(
        &self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &CStr,
    ) -> Result<u64, Error> {
        self.copier.copy(src, dst, name)
    }
}

/// Removes `name` of `dst` that this run just placed and will not keep.
fn unlink_placed(dst: BorrowedFd<'_>, name: &CStr) -> Result<(), Error> {
    match fsutil::unlink_at(dst, name) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(Error::new("unlink", e)),
    }
}

/// Whether reference file `r` stands for source file `s` (see the module doc).
fn same_file(s: &rfs::Stat, r: &rfs::Stat, as_root: bool) -> bool {
    s.st_size == r.st_size
        && s.st_mtime == r.st_mtime
        && s.st_mtime_nsec == r.st_mtime_nsec
        && r.st_mode & 0o7777 == file_mode(s.st_mode)
        && (!as_root || (s.st_uid, s.st_gid) == (r.st_uid, r.st_gid))
}

/// Errors after which a copy can stand in for the link.
fn link_impossible(e: Errno) -> bool {
    matches!(
        e,
        Errno::XDEV | Errno::PERM | Errno::MLINK | Errno::OPNOTSUPP | Errno::ACCESS
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::open_dir;
    use crate::fsutil::testutil::Scratch;
    use rustix::fs::{AtFlags, Timespec, Timestamps};
    use std::os::fd::AsFd;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn reuse_links_by_name_when_the_descriptor_link_is_refused() {
        // Both ways of linking a reused file: through the compared descriptor (AT_EMPTY_PATH)
        // and, where the kernel refuses that, by name with the check afterwards.
        let s = Scratch::new("byname");
        let (src, dst) = s.src_dst();
        std::fs::create_dir_all(s.path("ref")).unwrap();
        let refd = open_dir(&s.path("ref")).unwrap();
        for name in [c"1", c"2"] {
            s.file(&format!("src/{}", name.to_str().unwrap()), b"same bytes");
            // A copy keeps size, mode and mtime: the reference holds the same file.
            LinkPolicy::new(true)
                .copy(src.as_fd(), refd.as_fd(), name)
                .unwrap();
        }
        for (name, by_descriptor) in [(c"1", true), (c"2", false)] {
            let p = LinkPolicy::new(false);
            p.empty_path_links.store(by_descriptor, Ordering::Relaxed);
            assert_eq!(
                p.place_plain(src.as_fd(), dst.as_fd(), name, Some(refd.as_fd()))
                    .unwrap(),
                Placed::Reused(10)
            );
            let n = name.to_str().unwrap();
            let a = std::fs::metadata(s.path(&format!("ref/{n}"))).unwrap();
            let b = std::fs::metadata(s.path(&format!("dst/{n}"))).unwrap();
            assert_eq!(a.ino(), b.ino(), "{n} is the reference's inode");
            assert_eq!(p.fallbacks(), 0);
        }
    }

    #[test]
    fn reference_files_not_older_than_the_cutoff_are_copied_not_reused() {
        // A file rewritten in the tick the reference copied it in keeps size and mtime: from
        // the cutoff on, the store's bytes are copied; before it, the reference is reused.
        let s = Scratch::new("racy");
        let (src, dst) = s.src_dst();
        std::fs::create_dir_all(s.path("ref")).unwrap();
        let refd = open_dir(&s.path("ref")).unwrap();
        let mtime = |name: &str| {
            let m = std::fs::metadata(s.path(name)).unwrap();
            m.mtime() * 1_000_000_000 + m.mtime_nsec()
        };
        s.file("src/f", b"old bytes");
        LinkPolicy::new(true)
            .copy(src.as_fd(), refd.as_fd(), c"f")
            .unwrap();
        let t = mtime("src/f");
        s.file("src/f", b"new bytes");
        let times = Timestamps {
            last_access: Timespec {
                tv_sec: t.div_euclid(1_000_000_000),
                tv_nsec: t.rem_euclid(1_000_000_000) as _,
            },
            last_modification: Timespec {
                tv_sec: t.div_euclid(1_000_000_000),
                tv_nsec: t.rem_euclid(1_000_000_000) as _,
            },
        };
        rfs::utimensat(&src, c"f", &times, AtFlags::empty()).unwrap();
        assert_eq!(mtime("src/f"), mtime("ref/f"));
        for (cutoff, reused) in [(None, true), (Some(t + 1), true), (Some(t), false)] {
            let _ = std::fs::remove_file(s.path("dst/f"));
            let p = LinkPolicy::new(false).with_reuse_cutoff(cutoff);
            let placed = p
                .place_plain(src.as_fd(), dst.as_fd(), c"f", Some(refd.as_fd()))
                .unwrap();
            let bytes = std::fs::read(s.path("dst/f")).unwrap();
            if reused {
                assert_eq!(placed, Placed::Reused(9), "cutoff {cutoff:?}");
                assert_eq!(bytes, b"old bytes");
            } else {
                assert!(matches!(placed, Placed::Copied(c) if c.bytes == 9));
                assert_eq!(bytes, b"new bytes");
                assert_eq!(
                    p.fallbacks(),
                    0,
                    "a racy file is a plain copy, not a fallback"
                );
            }
        }
    }

    #[test]
    fn proven_messages_link_the_reference_unlooked_at_unless_it_is_damaged() {
        // The store's file is never looked at: one gone from the store is still linked from a
        // sound reference. A reference file missing or of another size than the record is not
        // linked: the store's file is copied.
        let s = Scratch::new("proven");
        let (src, dst) = s.src_dst();
        std::fs::create_dir_all(s.path("ref")).unwrap();
        let refd = open_dir(&s.path("ref")).unwrap();
        s.file("ref/1", b"twelve bytes");
        s.file("ref/2", b"short");
        s.file("src/2", b"twelve bytes");
        s.file("src/3", b"twelve bytes");
        // A symlink and a directory where the reference's file belongs: damage too.
        std::os::unix::fs::symlink("1", s.path("ref/4")).unwrap();
        std::fs::create_dir(s.path("ref/5")).unwrap();
        s.file("src/4", b"twelve bytes");
        s.file("src/5", b"twelve bytes");
        let p = LinkPolicy::new(true);
        let placed = |name| {
            p.place_proven(src.as_fd(), dst.as_fd(), name, refd.as_fd(), 12)
                .unwrap()
        };
        assert_eq!(placed(c"1"), Placed::Reused(12));
        let (a, b) = (
            std::fs::metadata(s.path("ref/1")).unwrap(),
            std::fs::metadata(s.path("dst/1")).unwrap(),
        );
        assert_eq!(a.ino(), b.ino());
        for name in [c"2", c"3", c"4", c"5"] {
            assert!(matches!(placed(name), Placed::Copied(c) if c.bytes == 12));
            let n = name.to_str().unwrap();
            let placed = s.path(&format!("dst/{n}"));
            assert_eq!(std::fs::read(&placed).unwrap(), b"twelve bytes");
            assert!(std::fs::symlink_metadata(&placed).unwrap().is_file());
        }
        // The damaged reference file linked first was unlinked again: not shared.
        assert_eq!(std::fs::metadata(s.path("ref/2")).unwrap().nlink(), 1);
        assert_eq!(p.fallbacks(), 0, "a damaged reference is no link fallback");
    }

    #[test]
    fn links_on_one_file_system() {
        let s = Scratch::new("link");
        let (src, dst) = s.src_dst();
        s.file("src/5", b"hello");
        let p = LinkPolicy::new(false);
        assert_eq!(
            p.link_or_copy(src.as_fd(), dst.as_fd(), c"5").unwrap(),
            Placed::Linked
        );
        let a = std::fs::metadata(s.path("src/5")).unwrap();
        let b = std::fs::metadata(s.path("dst/5")).unwrap();
        assert_eq!(a.ino(), b.ino());
        assert_eq!(p.first_fallback(), None);
    }

    #[test]
    fn forced_copy_keeps_bytes_mode_and_mtime_but_not_setuid() {
        let s = Scratch::new("copy");
        let (src, dst) = s.src_dst();
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        let f = s.file("src/7", &data);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o4640)).unwrap();
        let p = LinkPolicy::new(true);
        assert_eq!(
            p.link_or_copy(src.as_fd(), dst.as_fd(), c"7").unwrap(),
            Placed::Copied(Copied {
                bytes: data.len() as u64,
                reflinked: false,
                digest: None,
                mtime_ns: i128::from(std::fs::metadata(&f).unwrap().mtime()) * 1_000_000_000
                    + i128::from(std::fs::metadata(&f).unwrap().mtime_nsec()),
            })
        );
        let a = std::fs::metadata(&f).unwrap();
        let b = std::fs::metadata(s.path("dst/7")).unwrap();
        assert_ne!(a.ino(), b.ino());
        assert_eq!(std::fs::read(s.path("dst/7")).unwrap(), data);
        assert_eq!(b.mode() & 0o7777, 0o640);
        assert_eq!(p.fallbacks(), 0, "a copy that was asked for is no fallback");
        assert_eq!(a.mtime(), b.mtime());
        assert_eq!(a.mtime_nsec(), b.mtime_nsec());
    }

    #[test]
    fn missing_source_is_a_link_error_with_errno() {
        let s = Scratch::new("missing");
        let (src, dst) = s.src_dst();
        let err = LinkPolicy::new(false)
            .link_or_copy(src.as_fd(), dst.as_fd(), c"9")
            .unwrap_err();
        assert_eq!(err, Error::new("link", Errno::NOENT));
        let err = LinkPolicy::new(true)
            .link_or_copy(src.as_fd(), dst.as_fd(), c"9")
            .unwrap_err();
        assert_eq!(err, Error::new("open", Errno::NOENT));
    }

    #[test]
    fn cross_device_falls_back_to_copy_once() {
        // /dev/shm is a tmpfs; the scratch dir is on the root file system.
        let shm = std::path::Path::new("/dev/shm");
        if !shm.is_dir() {
            return;
        }
        let s = Scratch::new("xdev");
        std::fs::create_dir_all(s.path("dst")).unwrap();
        let src_path = shm.join(format!("mailbak-xdev-{}", std::process::id()));
        std::fs::create_dir_all(&src_path).unwrap();
        std::fs::write(src_path.join("1"), b"one").unwrap();
        std::fs::write(src_path.join("2"), b"two").unwrap();
        let same_dev = std::fs::metadata(&src_path).unwrap().dev()
            == std::fs::metadata(s.path("dst")).unwrap().dev();
        let src = open_dir(&src_path).unwrap();
        let dst = open_dir(&s.path("dst")).unwrap();
        let p = LinkPolicy::new(false);
        let a = p.link_or_copy(src.as_fd(), dst.as_fd(), c"1").unwrap();
        let b = p.link_or_copy(src.as_fd(), dst.as_fd(), c"2").unwrap();
        let _ = std::fs::remove_dir_all(&src_path);
        if same_dev {
            return;
        }
        assert!([a, b]
            .iter()
            .all(|p| matches!(p, Placed::Copied(c) if c.bytes == 3)));
        assert_eq!(p.first_fallback(), Some(Errno::XDEV));
        assert_eq!(
            p.fallbacks(),
            2,
            "both files count, not only the one whose link failed"
        );
        assert_eq!(std::fs::read(s.path("dst/2")).unwrap(), b"two");
    }
}

//! Placing a file in the destination: a hardlink where possible, a copy where not.
//!
//! Message files are immutable once committed, so a hardlink is a complete, free backup of one.
//! When a link is impossible the file is copied, and the first reason is kept so the caller can
//! warn once per run (not once per file). A cross-device failure switches the whole operation to
//! copies, since every later link would fail the same way; other reasons (EMLINK on one inode,
//! EPERM from protected_hardlinks on one file) only affect that file.
//!
//! Copies use `copy_file_range` and fall back to a read/write loop when the kernel refuses it
//! (it fails across file systems on recent kernels); that decision is also kept for the whole
//! operation. A copy keeps the permission bits (without setuid/setgid/sticky), the modification
//! time, and, when running as root, the owner. A copy that fails half-way is removed.

use std::cell::RefCell;
use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::fsutil::{file_mode, Owner};

/// How a file was placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placed {
    /// Hardlinked.
    Linked,
    /// Copied; the number of bytes written.
    Copied(u64),
}

/// A failed operation on one file: which step, and the OS error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpError {
    /// The step that failed ("open", "link", "read", ...).
    pub op: &'static str,
    /// The error the kernel returned.
    pub errno: Errno,
}

impl OpError {
    /// Wraps an errno with the step it came from.
    pub fn new(op: &'static str, errno: Errno) -> Self {
        OpError { op, errno }
    }
}

/// Shared decisions of one operation (one area, one tree): whether links are still tried, why
/// the first one failed, whether `copy_file_range` works between these file systems.
pub struct LinkPolicy {
    /// False once links are known to be impossible (cross-device), or when copies are forced.
    try_links: AtomicBool,
    /// errno of the first failed link (0 = none yet).
    first_fallback: AtomicI32,
    /// Files copied because a link was impossible (not counting forced copies), so that the
    /// one warning can say how many files it is about.
    fallbacks: AtomicU64,
    /// Whether copies were asked for (then no copy is a fallback).
    force_copy: bool,
    /// False once `copy_file_range` has been refused.
    cfr_works: AtomicBool,
    /// Whether this process can keep source owners.
    as_root: bool,
}

impl LinkPolicy {
    /// A policy that tries links first (`force_copy` = false) or never links.
    pub fn new(force_copy: bool) -> Self {
        LinkPolicy {
            try_links: AtomicBool::new(!force_copy),
            first_fallback: AtomicI32::new(0),
            fallbacks: AtomicU64::new(0),
            force_copy,
            cfr_works: AtomicBool::new(true),
            as_root: crate::fsutil::is_root(),
        }
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
        self.as_root
    }

    /// Places `name` of `src` into `dst` under the same name: hardlink, else copy.
    pub fn link_or_copy(
        &self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &CStr,
    ) -> Result<Placed, OpError> {
        if self.try_links.load(Ordering::Relaxed) {
            match rfs::linkat(src, name, dst, name, AtFlags::empty()) {
                Ok(()) => return Ok(Placed::Linked),
                Err(e) if link_impossible(e) => {
                    let _ = self.first_fallback.compare_exchange(
                        0,
                        e.raw_os_error(),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    if e == Errno::XDEV {
                        self.try_links.store(false, Ordering::Relaxed);
                    }
                }
                Err(e) => return Err(OpError::new("link", e)),
            }
        }
        let copied = self.copy(src, dst, name)?;
        if !self.force_copy {
            self.fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Placed::Copied(copied))
    }

    /// Copies regular file `name` of `src` into `dst` under the same name; fails if it exists.
    pub fn copy(
        &self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &CStr,
    ) -> Result<u64, OpError> {
        // O_NONBLOCK: if the entry was swapped for a FIFO since it was listed, opening it must not
        // wait for a writer forever; fstat then refuses it. Regular files ignore the flag.
        let from = rfs::openat(
            src,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| OpError::new("open", e))?;
        let st = rfs::fstat(&from).map_err(|e| OpError::new("stat", e))?;
        if crate::fsutil::Kind::from_mode(st.st_mode) != crate::fsutil::Kind::File {
            return Err(OpError::new("open", Errno::INVAL));
        }
        let to = rfs::openat(
            dst,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(COPY_CREATE_MODE),
        )
        .map_err(|e| OpError::new("create", e))?;
        let result = self.fill(&from, &to, st.st_size as u64).and_then(|n| {
            finish_copy(&to, &st, self.as_root)?;
            Ok(n)
        });
        if result.is_err() {
            // A partial copy must never pass for the real file.
            let _ = rfs::unlinkat(dst, name, AtFlags::empty());
        }
        result
    }

    /// Copies all bytes of `from` into `to`; `size_hint` is the size seen by fstat.
    fn fill(&self, from: &OwnedFd, to: &OwnedFd, size_hint: u64) -> Result<u64, OpError> {
        if size_hint == 0 {
            // Still read once: a file that grew since fstat is copied whole.
            return read_write(from, to, 0);
        }
        if self.cfr_works.load(Ordering::Relaxed) {
            let mut total = 0u64;
            loop {
                match rfs::copy_file_range(from, None, to, None, 1 << 30) {
                    Ok(0) => return Ok(total),
                    Ok(n) => total += n as u64,
                    Err(e) if total == 0 && cfr_refused(e) => {
                        self.cfr_works.store(false, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => return Err(OpError::new("copy", e)),
                }
            }
        }
        read_write(from, to, 0)
    }
}

/// Errors after which a copy can stand in for the link.
fn link_impossible(e: Errno) -> bool {
    matches!(
        e,
        Errno::XDEV | Errno::PERM | Errno::MLINK | Errno::OPNOTSUPP | Errno::ACCESS
    )
}

/// Errors by which the kernel says `copy_file_range` does not work for this pair of files.
fn cfr_refused(e: Errno) -> bool {
    matches!(
        e,
        Errno::XDEV | Errno::NOSYS | Errno::OPNOTSUPP | Errno::INVAL | Errno::IO
    )
}

/// Mode a copy is created with: private until its content and final mode are in place.
const COPY_CREATE_MODE: u32 = 0o600;

/// Size of the read/write buffer; one buffer per worker thread.
const COPY_BUF: usize = 256 * 1024;

thread_local! {
    /// Each worker's copy buffer, allocated once.
    static BUF: RefCell<Vec<u8>> = RefCell::new(vec![0u8; COPY_BUF]);
}

/// Copies from the current offset of `from` to EOF with read and write.
fn read_write(from: &OwnedFd, to: &OwnedFd, mut total: u64) -> Result<u64, OpError> {
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        loop {
            let n = match rustix::io::read(from, &mut buf[..]) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(OpError::new("read", e)),
            };
            let mut off = 0;
            while off < n {
                match rustix::io::write(to, &buf[off..n]) {
                    Ok(w) => off += w,
                    Err(Errno::INTR) => continue,
                    Err(e) => return Err(OpError::new("write", e)),
                }
            }
            total += n as u64;
        }
    })
}

/// Gives a finished copy its owner, mode and modification time.
fn finish_copy(to: &OwnedFd, st: &rfs::Stat, as_root: bool) -> Result<(), OpError> {
    if let Some(o) = Owner::of(st, as_root) {
        o.apply_fd(to.as_fd())
            .map_err(|e| OpError::new("chown", e))?;
    }
    rfs::fchmod(to, Mode::from_raw_mode(file_mode(st.st_mode)))
        .map_err(|e| OpError::new("chmod", e))?;
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: Timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec as _,
        },
    };
    rfs::futimens(to, &times).map_err(|e| OpError::new("utimens", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::open_dir;
    use crate::fsutil::testutil::Scratch;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn dirs(s: &Scratch) -> (OwnedFd, OwnedFd) {
        std::fs::create_dir_all(s.path("src")).unwrap();
        std::fs::create_dir_all(s.path("dst")).unwrap();
        (
            open_dir(&s.path("src")).unwrap(),
            open_dir(&s.path("dst")).unwrap(),
        )
    }

    #[test]
    fn links_on_one_file_system() {
        let s = Scratch::new("link");
        let (src, dst) = dirs(&s);
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
        let (src, dst) = dirs(&s);
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        let f = s.file("src/7", &data);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o4640)).unwrap();
        let p = LinkPolicy::new(true);
        assert_eq!(
            p.link_or_copy(src.as_fd(), dst.as_fd(), c"7").unwrap(),
            Placed::Copied(data.len() as u64)
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
    fn empty_file_copies() {
        let s = Scratch::new("empty");
        let (src, dst) = dirs(&s);
        s.file("src/e", b"");
        assert_eq!(
            LinkPolicy::new(true)
                .copy(src.as_fd(), dst.as_fd(), c"e")
                .unwrap(),
            0
        );
        assert_eq!(std::fs::read(s.path("dst/e")).unwrap(), b"");
    }

    #[test]
    fn missing_source_is_a_link_error_with_errno() {
        let s = Scratch::new("missing");
        let (src, dst) = dirs(&s);
        let err = LinkPolicy::new(false)
            .link_or_copy(src.as_fd(), dst.as_fd(), c"9")
            .unwrap_err();
        assert_eq!(err, OpError::new("link", Errno::NOENT));
        let err = LinkPolicy::new(true)
            .link_or_copy(src.as_fd(), dst.as_fd(), c"9")
            .unwrap_err();
        assert_eq!(err, OpError::new("open", Errno::NOENT));
    }

    #[test]
    fn existing_destination_is_never_overwritten() {
        let s = Scratch::new("exists");
        let (src, dst) = dirs(&s);
        s.file("src/1", b"new");
        s.file("dst/1", b"old");
        assert_eq!(
            LinkPolicy::new(true)
                .copy(src.as_fd(), dst.as_fd(), c"1")
                .unwrap_err()
                .errno,
            Errno::EXIST
        );
        assert_eq!(std::fs::read(s.path("dst/1")).unwrap(), b"old");
    }

    #[test]
    fn a_fifo_is_refused_at_once_not_waited_on() {
        let s = Scratch::new("fifo");
        let (src, dst) = dirs(&s);
        rustix::fs::mkfifoat(&src, c"f", Mode::from_raw_mode(0o600)).unwrap();
        let err = LinkPolicy::new(true)
            .copy(src.as_fd(), dst.as_fd(), c"f")
            .unwrap_err();
        assert_eq!(err, OpError::new("open", Errno::INVAL));
        assert!(!s.path("dst/f").exists());
    }

    #[test]
    fn symlink_source_is_not_followed_by_copy() {
        let s = Scratch::new("nofollow");
        let (src, dst) = dirs(&s);
        s.file("secret", b"top secret");
        std::os::unix::fs::symlink(s.path("secret"), s.path("src/l")).unwrap();
        let err = LinkPolicy::new(true)
            .copy(src.as_fd(), dst.as_fd(), c"l")
            .unwrap_err();
        assert_eq!(err.op, "open");
        assert!(!s.path("dst/l").exists());
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
        assert_eq!((a, b), (Placed::Copied(3), Placed::Copied(3)));
        assert_eq!(p.first_fallback(), Some(Errno::XDEV));
        assert_eq!(
            p.fallbacks(),
            2,
            "both files count, not only the one whose link failed"
        );
        assert_eq!(std::fs::read(s.path("dst/2")).unwrap(), b"two");
    }
}

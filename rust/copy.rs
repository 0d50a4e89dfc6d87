//! Copying one regular file into a destination directory, as fast as the file systems allow.
//!
//! Copies try, in order, a reflink (`FICLONE`: btrfs, XFS), `copy_file_range`, then a read/write
//! loop. What the kernel refused is remembered process-wide per (source `st_dev`, destination
//! `st_dev`) pair ([`Caps`]), so that a million files do not each retry a failing call. A copy
//! keeps the permission bits (without setuid/setgid/sticky), the modification time, and, when
//! running as root, the owner; which metadata calls that takes is decided once per file
//! ([`Plan`]) so that none is spent when the creation mode already says it all. A copy that fails
//! half-way is removed, so that a partial copy never passes for the real file.
//!
//! Whether to copy at all (rather than link or reuse) is `linkcopy.rs`'s decision.

use std::cell::RefCell;
use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rustix::fs::{self as rfs, Mode, Timespec, Timestamps};
use rustix::io::Errno;

use crate::digests::{self, Digest};
use crate::error::Error;
use crate::fsutil::{self, file_mode, Kind, Owner};

/// What a copy wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Copied {
    /// Bytes written (by `copy_file_range` or read/write), or the file's size for a reflink.
    pub bytes: u64,
    /// Whether it is a reflink (shared extents).
    pub reflinked: bool,
    /// The SHA-256 of the copy as written, when the copier hashes ([`Copier::hashing`]).
    pub digest: Option<Digest>,
    /// The source's mtime (nanoseconds since the epoch), which the copy keeps: whether the
    /// file was written within the backup's racily-clean window (`transfer/area.rs`).
    pub mtime_ns: i128,
}

impl Copied {
    /// `bytes` written by a copy call.
    fn written(bytes: u64) -> Self {
        Copied {
            bytes,
            reflinked: false,
            digest: None,
            mtime_ns: 0,
        }
    }

    /// A reflink of a file of `bytes`.
    fn reflinked(bytes: u64) -> Self {
        Copied {
            bytes,
            reflinked: true,
            digest: None,
            mtime_ns: 0,
        }
    }
}

/// Which copy calls work between two file systems, shared by every operation of the process
/// on that pair (see [`caps_for`]).
#[derive(Debug)]
pub struct Caps {
    /// False once `FICLONE` has been refused.
    reflink: AtomicBool,
    /// False once `copy_file_range` has been refused.
    cfr: AtomicBool,
}

impl Caps {
    /// Everything assumed to work until refused.
    fn new() -> Self {
        Caps {
            reflink: AtomicBool::new(true),
            cfr: AtomicBool::new(true),
        }
    }
}

/// (source `st_dev`, destination `st_dev`).
type DevPair = (u64, u64);

/// The process-wide memo of [`Caps`] per [`DevPair`]: a handful of entries, looked up once per
/// operation (never per file).
static CAPS: Mutex<Vec<(DevPair, Arc<Caps>)>> = Mutex::new(Vec::new());

/// The shared [`Caps`] of a pair of file systems.
pub fn caps_for(src_dev: u64, dst_dev: u64) -> Arc<Caps> {
    let mut memo = CAPS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, c)) = memo.iter().find(|(k, _)| *k == (src_dev, dst_dev)) {
        return Arc::clone(c);
    }
    let c = Arc::new(Caps::new());
    memo.push(((src_dev, dst_dev), Arc::clone(&c)));
    c
}

/// The process's umask, from `/proc/self/status` (the `umask` call would change it); None when
/// unknown. Read once per operation, since the caller may change it between calls.
fn umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Umask:"))?;
    u32::from_str_radix(line["Umask:".len()..].trim(), 8).ok()
}

/// How one operation (one area, one tree) copies files: which copy calls work between its file
/// systems, and which owner and mode calls a copy needs.
pub struct Copier {
    /// Which copy calls work between the operation's file systems.
    caps: Arc<Caps>,
    /// Whether this process can keep source owners.
    as_root: bool,
    /// (euid, egid): the owner a created file gets, so that a chown to it can be skipped.
    me: (u32, u32),
    /// The destination root has the setgid bit: files created in it may get its group.
    dst_setgid: bool,
    /// The umask when the operation started (None: unknown, then every copy gets an fchmod).
    umask: Option<u32>,
    /// Whether each copy is hashed from what was written (a backup recording digests).
    hash: bool,
}

impl Copier {
    /// A copier assuming every copy call works, for the process's current identity and umask.
    pub fn new() -> Self {
        Copier {
            caps: Arc::new(Caps::new()),
            as_root: crate::fsutil::is_root(),
            // The file-system identity of the pool's threads (they inherit it): the owner the
            // files they create get.
            me: crate::fsid::current().map_or(
                (
                    rustix::process::geteuid().as_raw(),
                    rustix::process::getegid().as_raw(),
                ),
                |id| (id.uid, id.gid),
            ),
            dst_setgid: true,
            umask: umask(),
            hash: false,
        }
    }

    /// The same copier, hashing every copy from what it wrote when `on` (the copy was just
    /// written, so the read is served by the page cache).
    pub fn hashing(self, on: bool) -> Self {
        Copier { hash: on, ..self }
    }

    /// The same copier for copies from device `src_dev` into a destination root on `dst_dev`
    /// (`dst_setgid`: whether that root has the setgid bit), sharing the process-wide memo of
    /// that pair.
    pub fn between(self, src_dev: u64, dst_dev: u64, dst_setgid: bool) -> Self {
        Copier {
            caps: caps_for(src_dev, dst_dev),
            dst_setgid,
            ..self
        }
    }

    /// Whether copies keep the source owner.
    pub fn as_root(&self) -> bool {
        self.as_root
    }

    /// Copies regular file `name` of `src` into `dst` under the same name; fails if it exists.
    #[cfg(test)]
    pub fn copy(
        &self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &CStr,
    ) -> Result<u64, Error> {
        Ok(self.copy_file(src, dst, name, false)?.bytes)
    }

    /// Copies regular file `name` of `src` into `dst`; `immutable`: a message file, whose size
    /// cannot change after its fstat (no call to find its end).
    pub fn copy_file(
        &self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &CStr,
        immutable: bool,
    ) -> Result<Copied, Error> {
        // Non-blocking: a FIFO swapped in since the listing is refused below, never waited on.
        let from = fsutil::open_file_at(src, name).map_err(Error::op("open"))?;
        let st = fsutil::fstat(&from).map_err(Error::op("stat"))?;
        if Kind::from_mode(st.st_mode) != Kind::File {
            return Err(Error::new("open", Errno::INVAL));
        }
        let plan = self.plan(&st);
        let to =
            fsutil::create_file_at(dst, name, plan.create_mode).map_err(Error::op("create"))?;
        let result = self
            .fill(&from, &to, st.st_size as u64, immutable)
            .and_then(|mut copied| {
                if self.hash {
                    let (d, _) = digests::hash_fd(to.as_fd()).map_err(Error::op("hash"))?;
                    copied.digest = Some(d);
                }
                copied.mtime_ns = fsutil::mtime_ns(&st);
                finish_copy(&to, &st, &plan)?;
                Ok(copied)
            });
        if result.is_err() {
            // A partial copy must never pass for the real file.
            let _ = fsutil::unlink_at(dst, name);
        }
        result
    }

    /// Which metadata calls a copy of a file with stat `st` needs (see [`Plan`]).
    fn plan(&self, st: &rfs::Stat) -> Plan {
        let mode = file_mode(st.st_mode);
        let owner =
            Owner::of(st, self.as_root).filter(|o| self.dst_setgid || (o.uid, o.gid) != self.me);
        // The final mode at creation spares an fchmod when the umask leaves it whole, and when
        // no chown follows or the mode shows nothing to group and others (a file created by
        // root must not be readable by root's group while it still belongs to root).
        let direct =
            self.umask.is_some_and(|m| mode & m == 0) && (owner.is_none() || mode & 0o077 == 0);
        Plan {
            create_mode: if direct { mode } else { COPY_CREATE_MODE },
            chmod: !direct,
            owner,
        }
    }

    /// Copies all bytes of `from` into `to`; `size` is the size seen by fstat.
    fn fill(
        &self,
        from: &OwnedFd,
        to: &OwnedFd,
        size: u64,
        immutable: bool,
    ) -> Result<Copied, Error> {
        if size == 0 {
            if immutable {
                return Ok(Copied::written(0));
            }
            // Still read once: a file that grew since fstat is copied whole.
            return read_write(from, to, 0, None).map(Copied::written);
        }
        let caps = &self.caps;
        if caps.reflink.load(Ordering::Relaxed) {
            match rfs::ioctl_ficlone(to, from) {
                Ok(()) if immutable => return Ok(Copied::reflinked(size)),
                Ok(()) => {
                    // A file that changes in place may have grown: the clone took it whole.
                    let n = rfs::fstat(to).map_or(size, |s| s.st_size as u64);
                    return Ok(Copied::reflinked(n));
                }
                Err(e) if clone_refused(e) => caps.reflink.store(false, Ordering::Relaxed),
                // Anything else (ENOSPC, EIO): the next method reports it if it persists.
                Err(_) => {}
            }
        }
        let limit = immutable.then_some(size);
        if caps.cfr.load(Ordering::Relaxed) {
            let mut total = 0u64;
            loop {
                if limit.is_some_and(|l| total >= l) {
                    return Ok(Copied::written(total));
                }
                match rfs::copy_file_range(from, None, to, None, 1 << 30) {
                    Ok(0) => return Ok(Copied::written(total)),
                    Ok(n) => total += n as u64,
                    Err(e) if total == 0 && cfr_refused(e) => {
                        caps.cfr.store(false, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => return Err(Error::new("copy", e)),
                }
            }
        }
        read_write(from, to, 0, limit).map(Copied::written)
    }
}

/// The metadata calls one copy needs.
struct Plan {
    /// The mode the copy is created with.
    create_mode: u32,
    /// Whether the final mode must be set after the content.
    chmod: bool,
    /// The owner to give it, when it differs from the one it gets.
    owner: Option<Owner>,
}

/// Errors by which the kernel says `copy_file_range` does not work for this pair of files.
fn cfr_refused(e: Errno) -> bool {
    matches!(
        e,
        Errno::XDEV | Errno::NOSYS | Errno::OPNOTSUPP | Errno::INVAL | Errno::IO
    )
}

/// Errors by which the kernel says `FICLONE` does not work for this pair of files.
fn clone_refused(e: Errno) -> bool {
    matches!(
        e,
        Errno::XDEV | Errno::NOSYS | Errno::OPNOTSUPP | Errno::INVAL | Errno::NOTTY | Errno::PERM
    )
}

/// Mode a copy is created with when its final mode cannot be: private until its content and
/// final mode are in place.
const COPY_CREATE_MODE: u32 = 0o600;

/// Size of the read/write buffer; one buffer per worker thread.
const COPY_BUF: usize = 256 * 1024;

thread_local! {
    /// Each worker's copy buffer, allocated once.
    static BUF: RefCell<Vec<u8>> = RefCell::new(vec![0u8; COPY_BUF]);
}

/// Copies from the current offset of `from` to EOF with read and write (or until `limit` bytes
/// are copied in all: an immutable file's size, so that no read is spent to find its end).
fn read_write(
    from: &OwnedFd,
    to: &OwnedFd,
    mut total: u64,
    limit: Option<u64>,
) -> Result<u64, Error> {
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        loop {
            if limit.is_some_and(|l| total >= l) {
                return Ok(total);
            }
            let n = match rustix::io::read(from, &mut buf[..]) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(Error::new("read", e)),
            };
            let mut off = 0;
            while off < n {
                match rustix::io::write(to, &buf[off..n]) {
                    Ok(w) => off += w,
                    Err(Errno::INTR) => continue,
                    Err(e) => return Err(Error::new("write", e)),
                }
            }
            total += n as u64;
        }
    })
}

/// Gives a finished copy its owner, mode and modification time.
fn finish_copy(to: &OwnedFd, st: &rfs::Stat, plan: &Plan) -> Result<(), Error> {
    if let Some(o) = plan.owner {
        o.apply_fd(to.as_fd()).map_err(|e| Error::new("chown", e))?;
    }
    if plan.chmod {
        rfs::fchmod(to, Mode::from_raw_mode(file_mode(st.st_mode)))
            .map_err(|e| Error::new("chmod", e))?;
    }
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
    rfs::futimens(to, &times).map_err(|e| Error::new("utimens", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::testutil::Scratch;

    #[test]
    fn empty_file_copies() {
        let s = Scratch::new("empty");
        let (src, dst) = s.src_dst();
        s.file("src/e", b"");
        assert_eq!(
            Copier::new().copy(src.as_fd(), dst.as_fd(), c"e").unwrap(),
            0
        );
        assert_eq!(std::fs::read(s.path("dst/e")).unwrap(), b"");
    }

    #[test]
    fn existing_destination_is_never_overwritten() {
        let s = Scratch::new("exists");
        let (src, dst) = s.src_dst();
        s.file("src/1", b"new");
        s.file("dst/1", b"old");
        assert_eq!(
            Copier::new()
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
        let (src, dst) = s.src_dst();
        rustix::fs::mkfifoat(&src, c"f", Mode::from_raw_mode(0o600)).unwrap();
        let err = Copier::new()
            .copy(src.as_fd(), dst.as_fd(), c"f")
            .unwrap_err();
        assert_eq!(err, Error::new("open", Errno::INVAL));
        assert!(!s.path("dst/f").exists());
    }

    #[test]
    fn symlink_source_is_not_followed_by_copy() {
        let s = Scratch::new("nofollow");
        let (src, dst) = s.src_dst();
        s.file("secret", b"top secret");
        std::os::unix::fs::symlink(s.path("secret"), s.path("src/l")).unwrap();
        let err = Copier::new()
            .copy(src.as_fd(), dst.as_fd(), c"l")
            .unwrap_err();
        assert_eq!(err.op, "open");
        assert!(!s.path("dst/l").exists());
    }
}

//! The engine's file-system seam: thin, directory-relative primitives shared by every engine
//! operation (restic's `internal/fs` is the model).
//!
//! Every call that names a file goes through here, so that the rules are written once:
//! everything works on directory file descriptors and single name components (`*at` calls with
//! `O_NOFOLLOW`), so a symlink planted anywhere in a tree can never redirect a read or a write,
//! and the kernel resolves one component per call instead of a whole path; every descriptor is
//! close-on-exec. The phases (`transfer/`, `check.rs`, `delete.rs`, `walk.rs`, `linkcopy.rs`)
//! never open, link, stat or remove by name themselves. Calls on an open descriptor's content
//! (read, write, `copy_file_range`, `FICLONE`, `fchmod`) stay with the copy engine (`copy.rs`).

use std::ffi::{CStr, CString};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, RawDir};
use rustix::io::Errno;

/// What a directory entry is, from `d_type` (or `lstat` where the file system does not say).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (never followed).
    Symlink,
    /// A socket, FIFO or device.
    Special,
}

impl Kind {
    /// The kind of a `FileType`.
    fn of(t: FileType) -> Option<Kind> {
        match t {
            FileType::RegularFile => Some(Kind::File),
            FileType::Directory => Some(Kind::Dir),
            FileType::Symlink => Some(Kind::Symlink),
            FileType::Unknown => None,
            _ => Some(Kind::Special),
        }
    }

    /// The kind described by a `st_mode`.
    pub fn from_mode(mode: u32) -> Kind {
        Kind::of(FileType::from_raw_mode(mode)).unwrap_or(Kind::Special)
    }
}

/// The entries of one directory: names packed in one buffer (one allocation per directory, not
/// per file; message directories hold up to 8192 files).
#[derive(Default)]
pub struct Entries {
    /// NUL-terminated names, back to back.
    names: Vec<u8>,
    /// Start of each name in `names`, and its kind.
    items: Vec<(u32, Kind)>,
    /// Each entry's inode number as the listing gives it (`d_ino`), by index.
    inos: Vec<u64>,
}

impl Entries {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Entry `i`: its name and kind.
    pub fn get(&self, i: usize) -> (&CStr, Kind) {
        let (start, kind) = self.items[i];
        let rest = &self.names[start as usize..];
        let end = rest
            .iter()
            .position(|&c| c == 0)
            .expect("names are NUL-terminated");
        (
            CStr::from_bytes_with_nul(&rest[..=end]).expect("one NUL"),
            kind,
        )
    }

    /// Entry `i`'s inode number from the listing (`d_ino`): on the file systems mailbak runs
    /// on, the `st_ino` an `lstat` would give, without the system call.
    pub fn ino(&self, i: usize) -> u64 {
        self.inos[i]
    }

    /// Indexes of the entries, in the order `getdents` returned them.
    pub fn indexes(&self) -> std::ops::Range<usize> {
        0..self.items.len()
    }
}

/// Size of the `getdents64` buffer: a 8192-file message directory needs about 4 calls.
const DIRENT_BUF: usize = 64 * 1024;

/// Reads all entries of the directory `dir` (except `.` and `..`).
pub fn read_entries(dir: BorrowedFd<'_>) -> Result<Entries, Errno> {
    let mut buf: Vec<MaybeUninit<u8>> = Vec::with_capacity(DIRENT_BUF);
    buf.resize_with(DIRENT_BUF, MaybeUninit::uninit);
    let mut raw = RawDir::new(dir, &mut buf);
    let mut out = Entries::default();
    let mut unknown = Vec::new();
    while let Some(entry) = raw.next() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let start = u32::try_from(out.names.len()).map_err(|_| Errno::NOMEM)?;
        out.names.extend_from_slice(name);
        out.names.push(0);
        out.inos.push(entry.ino());
        match Kind::of(entry.file_type()) {
            Some(kind) => out.items.push((start, kind)),
            None => {
                unknown.push(out.items.len());
                out.items.push((start, Kind::Special));
            }
        }
    }
    // File systems without d_type: one lstat per such entry, after the listing is complete.
    for i in unknown {
        let (name, _) = out.get(i);
        let kind = match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Kind::from_mode(st.st_mode),
            Err(Errno::NOENT) => Kind::Special,
            Err(e) => return Err(e),
        };
        out.items[i].1 = kind;
    }
    Ok(out)
}

/// Opens the directory `name` in `dir` without following a symlink.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> Result<OwnedFd, Errno> {
    rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Opens a directory by path (the root of an operation, named by the caller).
pub fn open_dir(path: &Path) -> Result<OwnedFd, Errno> {
    rfs::openat(
        rfs::CWD,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Opens a directory `rel` (several components) below `root`, refusing symlinks at every step
/// and `..` (which would climb out of `root`).
pub fn open_dir_below(root: BorrowedFd<'_>, rel: &[u8]) -> Result<OwnedFd, Errno> {
    let mut cur: Option<OwnedFd> = None;
    for comp in rel.split(|&c| c == b'/').filter(|c| !c.is_empty()) {
        if comp == b".." {
            return Err(Errno::INVAL);
        }
        let name = CString::new(comp).map_err(|_| Errno::INVAL)?;
        let parent = cur.as_ref().map_or(root, |fd| fd.as_fd());
        cur = Some(open_dir_at(parent, &name)?);
    }
    match cur {
        Some(fd) => Ok(fd),
        None => rfs::openat(
            root,
            c".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ),
    }
}

/// Opens the root directory of an operation: `path` below `anchor` when the caller holds a
/// descriptor of a trusted directory (the store's `data/`, opened once per run), refusing a
/// symlink at every component, so that an area replaced by a symlink after the caller checked it
/// is never entered; otherwise `path` as the caller named it.
pub fn open_root_dir(anchor: Option<BorrowedFd<'_>>, path: &Path) -> Result<OwnedFd, Errno> {
    use std::os::unix::ffi::OsStrExt;
    match anchor {
        Some(root) => open_dir_below(root, path.as_os_str().as_bytes()),
        None => open_dir(path),
    }
}

/// A second descriptor of `fd`, close-on-exec like every descriptor the engine opens (`dup`
/// would leave the flag off).
pub fn dup(fd: impl AsFd) -> Result<OwnedFd, Errno> {
    rustix::io::fcntl_dupfd_cloexec(fd, 0)
}

/// `fstat` of an open file.
pub fn fstat(fd: impl AsFd) -> Result<rfs::Stat, Errno> {
    rfs::fstat(fd)
}

/// Opens regular file `name` in `dir` for reading without following a symlink. `O_NONBLOCK`: if
/// the entry was swapped for a FIFO since it was listed, the open must not wait for a writer
/// forever (the caller's fstat then refuses it); regular files ignore the flag.
pub fn open_file_at(dir: BorrowedFd<'_>, name: &CStr) -> Result<OwnedFd, Errno> {
    rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Creates file `name` in `dir` for writing with `mode` (before the umask); fails with `EEXIST`
/// when anything, a symlink included, is there already, so nothing is ever overwritten. Opened
/// for reading too, so that a copy can be hashed from what was written (`digests.rs`).
pub fn create_file_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> Result<OwnedFd, Errno> {
    rfs::openat(
        dir,
        name,
        OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )
}

/// A handle on the entry `name` in `dir` itself (`O_PATH`, never following a symlink): no access
/// to its content and no open of a FIFO, but enough to stat it and link exactly that inode.
pub fn open_path_at(dir: BorrowedFd<'_>, name: &CStr) -> Result<OwnedFd, Errno> {
    rfs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Hardlinks `name` of `src` as `name` in `dst` (a symlink is linked as itself, never followed).
pub fn link_at(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, name: &CStr) -> Result<(), Errno> {
    rfs::linkat(src, name, dst, name, AtFlags::empty())
}

/// Hardlinks the inode `fd` holds (from [`open_path_at`]) as `name` in `dst`
/// (`AT_EMPTY_PATH`: it needs CAP_DAC_READ_SEARCH, else `ENOENT`).
pub fn link_fd_at(fd: BorrowedFd<'_>, dst: BorrowedFd<'_>, name: &CStr) -> Result<(), Errno> {
    rfs::linkat(fd, c"", dst, name, AtFlags::EMPTY_PATH)
}

/// Removes the non-directory `name` from `dir` (a symlink is removed, never followed).
pub fn unlink_at(dir: BorrowedFd<'_>, name: &CStr) -> Result<(), Errno> {
    rfs::unlinkat(dir, name, AtFlags::empty())
}

/// Removes the empty directory `name` from `dir`.
pub fn remove_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> Result<(), Errno> {
    rfs::unlinkat(dir, name, AtFlags::REMOVEDIR)
}

/// Moves `name` of `from` to `to_name` in `to`, failing with `EEXIST` rather than replacing
/// what is there (`RENAME_NOREPLACE`: checked by the kernel, so no race can overwrite a file).
pub fn rename_noreplace_at(
    from: BorrowedFd<'_>,
    name: &CStr,
    to: BorrowedFd<'_>,
    to_name: &CStr,
) -> Result<(), Errno> {
    rfs::renameat_with(from, name, to, to_name, rfs::RenameFlags::NOREPLACE)
}

/// The identity of a file: `(st_dev, st_ino)`. Two paths name the same directory exactly when
/// their identities are equal, whatever mounts or symlinks lie on the way.
pub fn identity(st: &rfs::Stat) -> (u64, u64) {
    #[allow(clippy::unnecessary_cast)] // dev_t and ino_t are not u64 on every target
    (st.st_dev as u64, st.st_ino as u64)
}

/// A file's mtime in nanoseconds since the epoch (i128: no overflow whatever the file says).
pub fn mtime_ns(st: &rfs::Stat) -> i128 {
    #[allow(clippy::unnecessary_cast)] // the fields' types differ between targets
    let (sec, nsec) = (st.st_mtime as i128, st.st_mtime_nsec as i128);
    sec * 1_000_000_000 + nsec
}

/// `lstat` of `name` in `dir`.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> Result<rfs::Stat, Errno> {
    rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
}

/// Whether this process may give files away (`chown`): only root keeps source owners.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Ownership to give a created file: the source's, when running as root; otherwise the
/// creating user keeps it.
#[derive(Clone, Copy, Debug)]
pub struct Owner {
    /// Source uid.
    pub uid: u32,
    /// Source gid.
    pub gid: u32,
}

impl Owner {
    /// The owner to apply for a source stat, if this process can apply it.
    pub fn of(st: &rfs::Stat, as_root: bool) -> Option<Owner> {
        as_root.then_some(Owner {
            uid: st.st_uid,
            gid: st.st_gid,
        })
    }

    /// Applies the owner to an open file.
    pub fn apply_fd(self, fd: BorrowedFd<'_>) -> Result<(), Errno> {
        rfs::fchown(fd, Some(uid(self.uid)), Some(gid(self.gid)))
    }

    /// Applies the owner to `name` in `dir` without following a symlink.
    pub fn apply_at(self, dir: BorrowedFd<'_>, name: &CStr) -> Result<(), Errno> {
        rfs::chownat(
            dir,
            name,
            Some(uid(self.uid)),
            Some(gid(self.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
    }
}

/// A uid for rustix.
fn uid(raw: u32) -> rustix::fs::Uid {
    // SAFETY-free: from_raw is safe; u32::MAX (-1) would mean "unchanged", which a stat never holds.
    rustix::fs::Uid::from_raw(raw)
}

/// A gid for rustix.
fn gid(raw: u32) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(raw)
}

/// Permission bits a copy keeps (read/write/execute for user, group and other).
const PERMISSION_BITS: u32 = 0o777;

/// The most a directory mailbak creates may allow: nothing for others.
const DIR_MODE_MAX: u32 = 0o770;

/// Owner read/write/execute: what a directory needs while it is filled.
const OWNER_RWX: u32 = 0o700;

/// Mode of a directory mailbak creates with no source directory to take it from (message
/// directories placed by path, moved-aside trees, generated stores), as the store's own are.
pub const NEW_DIR_MODE: u32 = 0o750;

/// The permission bits a copy keeps: read/write/execute for user, group and other. setuid,
/// setgid and sticky bits are dropped, because a copy made by root must never become a setuid
/// file owned by someone else.
pub fn file_mode(src_mode: u32) -> u32 {
    src_mode & PERMISSION_BITS
}

/// The mode of a directory mailbak creates: never more than 0770 (a backup is never readable
/// by others; it holds keys and passwords).
pub fn dir_mode(src_mode: u32) -> u32 {
    src_mode & DIR_MODE_MAX
}

/// Creates directory `name` in `dst` for a source directory of mode `src_mode`, or opens it when
/// it exists already (the caller created the root, or placed a database in it first).
///
/// The directory gets owner rwx while it is filled; when the final mode lacks one of those bits
/// the caller must apply it once the directory's contents are written ([`finish_dir`]).
pub fn make_dir_at(
    dst: BorrowedFd<'_>,
    name: &CStr,
    src_mode: u32,
    owner: Option<Owner>,
) -> Result<OwnedFd, Errno> {
    let mode = dir_mode(src_mode) | OWNER_RWX;
    match rfs::mkdirat(dst, name, Mode::from_raw_mode(mode)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(e),
    }
    let fd = open_dir_at(dst, name)?;
    // mkdir is subject to the umask; fchmod sets exactly the bits we chose.
    rfs::fchmod(&fd, Mode::from_raw_mode(mode))?;
    if let Some(o) = owner {
        o.apply_fd(fd.as_fd())?;
    }
    Ok(fd)
}

/// Whether a directory created by [`make_dir_at`] needs its final mode applied afterwards.
pub fn dir_needs_finish(src_mode: u32) -> bool {
    dir_mode(src_mode) & OWNER_RWX != OWNER_RWX
}

/// Applies a directory's final mode (see [`make_dir_at`]).
pub fn finish_dir(dir: BorrowedFd<'_>, rel: &[u8], src_mode: u32) -> Result<(), Errno> {
    let fd = open_dir_below(dir, rel)?;
    rfs::fchmod(&fd, Mode::from_raw_mode(dir_mode(src_mode)))
}

/// Recreates the symlink `name` of `src` in `dst`, with the same target text; the target is
/// never resolved or read.
pub fn copy_symlink(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    name: &CStr,
    as_root: bool,
) -> Result<(), Errno> {
    let st = lstat_at(src, name)?;
    let target = rfs::readlinkat(src, name, Vec::new())?;
    rfs::symlinkat(target.as_c_str(), dst, name)?;
    if let Some(o) = Owner::of(&st, as_root) {
        o.apply_at(dst, name)?;
    }
    Ok(())
}

/// `rel` joined with `name` by `/` (`name` alone when `rel` is empty).
pub fn join(rel: &[u8], name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rel.len() + 1 + name.len());
    out.extend_from_slice(rel);
    if !rel.is_empty() {
        out.push(b'/');
    }
    out.extend_from_slice(name);
    out
}

#[cfg(test)]
pub(crate) mod testutil {
    //! A scratch directory per test, removed afterwards.
    use std::os::fd::OwnedFd;
    use std::path::{Path, PathBuf};

    /// A temporary directory under the system temp dir.
    pub struct Scratch(pub PathBuf);

    impl Scratch {
        /// A fresh directory named after the test.
        pub fn new(tag: &str) -> Scratch {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "mailbak-test-{}-{}-{}",
                tag,
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Scratch(p)
        }

        /// A path inside the scratch directory.
        pub fn path(&self, rel: &str) -> PathBuf {
            self.0.join(rel)
        }

        /// Writes a file, creating parent directories.
        pub fn file(&self, rel: &str, data: &[u8]) -> PathBuf {
            let p = self.path(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, data).unwrap();
            p
        }

        /// The root.
        pub fn root(&self) -> &Path {
            &self.0
        }

        /// Directories `src` and `dst` made in it and opened: the two ends of a copy or link.
        pub fn src_dst(&self) -> (OwnedFd, OwnedFd) {
            std::fs::create_dir_all(self.path("src")).unwrap();
            std::fs::create_dir_all(self.path("dst")).unwrap();
            (
                super::open_dir(&self.path("src")).unwrap(),
                super::open_dir(&self.path("dst")).unwrap(),
            )
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::Scratch;
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn read_entries_lists_kinds_without_dots() {
        let s = Scratch::new("entries");
        s.file("f", b"x");
        std::fs::create_dir(s.path("d")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", s.path("l")).unwrap();
        let dir = open_dir(s.root()).unwrap();
        let e = read_entries(dir.as_fd()).unwrap();
        let mut got: Vec<(String, Kind)> = e
            .indexes()
            .map(|i| e.get(i))
            .map(|(n, k)| (n.to_string_lossy().into_owned(), k))
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            vec![
                ("d".into(), Kind::Dir),
                ("f".into(), Kind::File),
                ("l".into(), Kind::Symlink)
            ]
        );
    }

    #[test]
    fn open_dir_below_refuses_symlinks() {
        let s = Scratch::new("below");
        std::fs::create_dir_all(s.path("a/b")).unwrap();
        std::os::unix::fs::symlink(s.path("a"), s.path("link")).unwrap();
        let root = open_dir(s.root()).unwrap();
        assert!(open_dir_below(root.as_fd(), b"a/b").is_ok());
        assert_eq!(
            open_dir_below(root.as_fd(), b"link/b").unwrap_err(),
            Errno::NOTDIR
        );
    }

    #[test]
    fn a_root_below_an_anchor_never_follows_a_symlink_nor_climbs_out() {
        let s = Scratch::new("anchor");
        std::fs::create_dir_all(s.path("data/accounts/alice")).unwrap();
        std::fs::create_dir_all(s.path("secrets")).unwrap();
        std::os::unix::fs::symlink(s.path("secrets"), s.path("data/accounts/bob")).unwrap();
        let data = open_dir(&s.path("data")).unwrap();
        let anchor = Some(data.as_fd());
        assert!(open_root_dir(anchor, Path::new("accounts/alice")).is_ok());
        // The last component, an intermediate one, and `..` are all refused.
        assert!(open_root_dir(anchor, Path::new("accounts/bob")).is_err());
        std::os::unix::fs::symlink(s.path("data/accounts"), s.path("data/acc")).unwrap();
        assert!(open_root_dir(anchor, Path::new("acc/alice")).is_err());
        assert_eq!(
            open_root_dir(anchor, Path::new("../secrets")).unwrap_err(),
            Errno::INVAL
        );
        // Without an anchor the caller's path is opened as named (a root the operator chose).
        assert!(open_root_dir(None, &s.path("data/accounts/bob")).is_ok());
    }

    #[test]
    fn make_dir_caps_mode_and_finish_applies_it() {
        let s = Scratch::new("mkdir");
        let root = open_dir(s.root()).unwrap();
        make_dir_at(root.as_fd(), c"open", 0o777, None).unwrap();
        assert_eq!(
            std::fs::metadata(s.path("open"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o770
        );
        make_dir_at(root.as_fd(), c"ro", 0o555, None).unwrap();
        assert!(dir_needs_finish(0o555));
        finish_dir(root.as_fd(), b"ro", 0o555).unwrap();
        assert_eq!(
            std::fs::metadata(s.path("ro"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o550
        );
        // An existing directory is reused, not an error.
        make_dir_at(root.as_fd(), c"open", 0o750, None).unwrap();
        assert_eq!(
            std::fs::metadata(s.path("open"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o750
        );
    }

    #[test]
    fn symlink_is_recreated_not_followed() {
        let s = Scratch::new("symlink");
        std::fs::create_dir(s.path("src")).unwrap();
        std::fs::create_dir(s.path("dst")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/secret", s.path("src/l")).unwrap();
        let src = open_dir(&s.path("src")).unwrap();
        let dst = open_dir(&s.path("dst")).unwrap();
        copy_symlink(src.as_fd(), dst.as_fd(), c"l", false).unwrap();
        assert_eq!(
            std::fs::read_link(s.path("dst/l")).unwrap(),
            Path::new("/nonexistent/secret")
        );
    }
}

//! btrfs subvolumes for snapshot repositories (docs/REPOSITORY.md, "Repositories on btrfs"):
//! the ioctls that make, snapshot, freeze and delete one, called on directory descriptors.
//!
//! A repository on btrfs keeps each snapshot in a subvolume of its own: the nightly snapshot
//! begins as a btrfs snapshot of the reference (a copy-on-write clone of its whole tree, in
//! milliseconds), which the backup then brings to the store's state in place (`inplace.rs`),
//! and a prune deletes a snapshot by deleting its subvolume (the kernel frees the space in the
//! background). Hardlinks between subvolumes fail (`EXDEV`), so a repository uses one method
//! or the other, never both.
//!
//! The ioctl numbers and argument layouts are the kernel's uapi (`linux/btrfs.h`); nothing here
//! needs btrfs-progs. Creating and deleting subvolumes needs `CAP_SYS_ADMIN` (root) unless the
//! file system is mounted with `user_subvol_rm_allowed`.

use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use rustix::io::Errno;

/// `BTRFS_SUPER_MAGIC`: `statfs.f_type` of a btrfs file system.
const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;
/// The inode number of every subvolume's root directory (`BTRFS_FIRST_FREE_OBJECTID`).
const SUBVOLUME_ROOT_INO: u64 = 256;
/// `BTRFS_IOCTL_MAGIC`.
const MAGIC: u64 = 0x94;
/// `BTRFS_SUBVOL_RDONLY`: the flag of a read-only subvolume.
const SUBVOL_RDONLY: u64 = 1 << 1;
/// `BTRFS_PATH_NAME_MAX + 1`: the name field of `btrfs_ioctl_vol_args`.
const VOL_NAME_LEN: usize = 4088;
/// `BTRFS_SUBVOL_NAME_MAX + 1`: the name field of `btrfs_ioctl_vol_args_v2`.
const VOL_V2_NAME_LEN: usize = 4040;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    /// A file descriptor (unused by the calls here).
    fd: i64,
    /// The subvolume's name, NUL-terminated.
    name: [u8; VOL_NAME_LEN],
}

/// `struct btrfs_ioctl_vol_args_v2`.
#[repr(C)]
struct VolArgsV2 {
    /// The source subvolume of a snapshot.
    fd: i64,
    /// Out: the transaction of a snapshot (unused).
    transid: u64,
    /// `BTRFS_SUBVOL_*` flags.
    flags: u64,
    /// The union of the qgroup inheritance (unused) and padding.
    unused: [u64; 4],
    /// The new (or deleted) subvolume's name, NUL-terminated.
    name: [u8; VOL_V2_NAME_LEN],
}

/// `struct btrfs_ioctl_timespec` (16 bytes with its padding).
#[repr(C)]
struct IoctlTimespec {
    /// Seconds.
    sec: u64,
    /// Nanoseconds.
    nsec: u32,
}

/// `struct btrfs_ioctl_get_subvol_info_args` (504 bytes); only `uuid` and `ctransid` are read.
#[allow(dead_code)] // the kernel's layout, whole
#[repr(C)]
struct SubvolInfo {
    /// The subvolume's tree ID.
    treeid: u64,
    /// Its name in its parent directory.
    name: [u8; 256],
    /// The tree ID of the subvolume holding it.
    parent_id: u64,
    /// The inode number of the directory holding it.
    dirid: u64,
    /// The transaction of its tree's last write (a snapshot of it writes it too).
    generation: u64,
    /// Its root item's flags.
    flags: u64,
    /// Its UUID.
    uuid: [u8; 16],
    /// The UUID of the subvolume it is a snapshot of.
    parent_uuid: [u8; 16],
    /// Set by `btrfs receive`.
    received_uuid: [u8; 16],
    /// The transaction of the subvolume's last change (of any file, directory or attribute);
    /// neither a snapshot taken of it nor its read-only flag changes it.
    ctransid: u64,
    /// The transaction that created it.
    otransid: u64,
    /// Set by `btrfs receive`.
    stransid: u64,
    /// Set by `btrfs receive`.
    rtransid: u64,
    /// When `ctransid` was.
    ctime: IoctlTimespec,
    /// When `otransid` was.
    otime: IoctlTimespec,
    /// Set by `btrfs receive`.
    stime: IoctlTimespec,
    /// Set by `btrfs receive`.
    rtime: IoctlTimespec,
    /// Zero.
    reserved: [u64; 8],
}

/// `_IOC(dir, 0x94, nr, size)` as the kernel's asm-generic ioctl.h builds it.
const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (MAGIC << 8) | nr
}
/// `_IOC_WRITE`.
const W: u64 = 1;
/// `_IOC_READ`.
const R: u64 = 2;
/// `BTRFS_IOC_SUBVOL_CREATE`.
const IOC_SUBVOL_CREATE: u64 = ioc(W, 14, std::mem::size_of::<VolArgs>());
/// `BTRFS_IOC_SNAP_DESTROY`.
const IOC_SNAP_DESTROY: u64 = ioc(W, 15, std::mem::size_of::<VolArgs>());
/// `BTRFS_IOC_SNAP_CREATE_V2`.
const IOC_SNAP_CREATE_V2: u64 = ioc(W, 23, std::mem::size_of::<VolArgsV2>());
/// `BTRFS_IOC_SUBVOL_GETFLAGS`.
const IOC_SUBVOL_GETFLAGS: u64 = ioc(R, 25, std::mem::size_of::<u64>());
/// `BTRFS_IOC_SUBVOL_SETFLAGS`.
const IOC_SUBVOL_SETFLAGS: u64 = ioc(W, 26, std::mem::size_of::<u64>());
/// `BTRFS_IOC_GET_SUBVOL_INFO` (kernel 4.18).
const IOC_GET_SUBVOL_INFO: u64 = ioc(R, 60, std::mem::size_of::<SubvolInfo>());
/// `BTRFS_IOC_SNAP_DESTROY_V2`.
const IOC_SNAP_DESTROY_V2: u64 = ioc(W, 63, std::mem::size_of::<VolArgsV2>());

/// Copies `name` into a zeroed name field; a name too long for it (or holding a `/`, which
/// the kernel refuses anyway) is `EINVAL`.
fn fill_name(field: &mut [u8], name: &CStr) -> Result<(), Errno> {
    let bytes = name.to_bytes();
    if bytes.is_empty() || bytes.len() >= field.len() || bytes.contains(&b'/') {
        return Err(Errno::INVAL);
    }
    field[..bytes.len()].copy_from_slice(bytes);
    Ok(())
}

/// One ioctl with a pointer argument; the errno on failure.
///
/// # Safety
/// `arg` must point to what `request` expects, valid for the call.
unsafe fn ioctl<T>(fd: BorrowedFd<'_>, request: u64, arg: *mut T) -> Result<(), Errno> {
    // SAFETY: the caller passes the argument the request expects; the descriptor is borrowed.
    #[allow(clippy::useless_conversion)] // the request's type differs between C libraries
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg) };
    if rc < 0 {
        Err(Errno::from_raw_os_error(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        ))
    } else {
        Ok(())
    }
}

/// A zeroed `VolArgsV2` naming `name`.
fn v2_args(name: &CStr) -> Result<Box<VolArgsV2>, Errno> {
    let mut args = Box::new(VolArgsV2 {
        fd: 0,
        transid: 0,
        flags: 0,
        unused: [0; 4],
        name: [0; VOL_V2_NAME_LEN],
    });
    fill_name(&mut args.name, name)?;
    Ok(args)
}

/// Whether the directory `fd` lies on a btrfs file system.
pub fn is_btrfs(fd: impl AsFd) -> Result<bool, Errno> {
    let st = rustix::fs::fstatfs(fd)?;
    #[allow(clippy::unnecessary_cast)] // f_type's type differs between targets
    Ok(st.f_type as i64 == BTRFS_SUPER_MAGIC)
}

/// Whether the directory `fd` is the root of a btrfs subvolume.
pub fn is_subvolume(fd: impl AsFd) -> Result<bool, Errno> {
    let st = crate::fsutil::fstat(fd.as_fd())?;
    #[allow(clippy::unnecessary_cast)] // ino_t is not u64 on every target
    Ok(st.st_ino as u64 == SUBVOLUME_ROOT_INO && is_btrfs(fd)?)
}

/// Creates the empty subvolume `name` in the directory `parent`.
pub fn create_subvolume(parent: BorrowedFd<'_>, name: &CStr) -> Result<(), Errno> {
    let mut args = Box::new(VolArgs {
        fd: 0,
        name: [0; VOL_NAME_LEN],
    });
    fill_name(&mut args.name, name)?;
    // SAFETY: a `btrfs_ioctl_vol_args` the kernel only reads.
    unsafe { ioctl(parent, IOC_SUBVOL_CREATE, &mut *args) }
}

/// Makes `name` in the directory `parent` a snapshot of the subvolume `source` (writable, or
/// read-only with `readonly`). The source must be a subvolume of the same file system.
pub fn snapshot(
    source: BorrowedFd<'_>,
    parent: BorrowedFd<'_>,
    name: &CStr,
    readonly: bool,
) -> Result<(), Errno> {
    let mut args = v2_args(name)?;
    args.fd = i64::from(source.as_raw_fd());
    args.flags = if readonly { SUBVOL_RDONLY } else { 0 };
    // SAFETY: a `btrfs_ioctl_vol_args_v2` with no qgroup inheritance.
    unsafe { ioctl(parent, IOC_SNAP_CREATE_V2, &mut *args) }
}

/// Whether the subvolume `fd` (its root directory) is read-only.
pub fn is_readonly(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    let mut flags: u64 = 0;
    // SAFETY: the kernel writes one u64.
    unsafe { ioctl(fd, IOC_SUBVOL_GETFLAGS, &mut flags) }?;
    Ok(flags & SUBVOL_RDONLY != 0)
}

/// The seal of the read-only subvolume `fd` (its root directory): its UUID and the transaction
/// of its last change, which any later change of its content raises (it must be made writable
/// for that, by root). None when it is writable: it has no seal.
pub fn seal(fd: BorrowedFd<'_>) -> Result<Option<([u8; 16], u64)>, Errno> {
    if !is_readonly(fd)? {
        return Ok(None);
    }
    // SAFETY: all-zero bytes are a valid `SubvolInfo` (integers and byte arrays only).
    let mut info: Box<SubvolInfo> = Box::new(unsafe { std::mem::zeroed() });
    // SAFETY: a `btrfs_ioctl_get_subvol_info_args` the kernel fills.
    unsafe { ioctl(fd, IOC_GET_SUBVOL_INFO, &mut *info) }?;
    Ok(Some((info.uuid, info.ctransid)))
}

/// Makes the subvolume `fd` (its root directory) read-only, or writable again.
pub fn set_readonly(fd: BorrowedFd<'_>, readonly: bool) -> Result<(), Errno> {
    let mut flags: u64 = 0;
    // SAFETY: the kernel writes one u64.
    unsafe { ioctl(fd, IOC_SUBVOL_GETFLAGS, &mut flags) }?;
    let mut want = if readonly {
        flags | SUBVOL_RDONLY
    } else {
        flags & !SUBVOL_RDONLY
    };
    if want == flags {
        return Ok(());
    }
    // SAFETY: the kernel reads one u64.
    unsafe { ioctl(fd, IOC_SUBVOL_SETFLAGS, &mut want) }
}

/// Deletes the subvolume `name` of the directory `parent` (its entry goes now; the kernel frees
/// its extents in the background). A read-only one is made writable first, since some kernels
/// refuse to delete it otherwise. Kernels before 5.7 lack the V2 call: the old one is used.
pub fn destroy(parent: BorrowedFd<'_>, name: &CStr) -> Result<(), Errno> {
    let sub = crate::fsutil::open_dir_at(parent, name)?;
    if !is_subvolume(&sub)? {
        return Err(Errno::NOTTY);
    }
    if is_readonly(sub.as_fd())? {
        set_readonly(sub.as_fd(), false)?;
    }
    drop(sub);
    let mut args = v2_args(name)?;
    // SAFETY: a `btrfs_ioctl_vol_args_v2` naming the subvolume (flags 0: by name).
    match unsafe { ioctl(parent, IOC_SNAP_DESTROY_V2, &mut *args) } {
        Err(Errno::NOTTY | Errno::OPNOTSUPP) => {
            let mut old = Box::new(VolArgs {
                fd: 0,
                name: [0; VOL_NAME_LEN],
            });
            fill_name(&mut old.name, name)?;
            // SAFETY: a `btrfs_ioctl_vol_args` the kernel only reads.
            unsafe { ioctl(parent, IOC_SNAP_DESTROY, &mut *old) }
        }
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_are_the_kernels() {
        // From linux/btrfs.h as compiled on x86_64 (struct sizes 4096 and 8).
        assert_eq!(std::mem::size_of::<VolArgs>(), 4096);
        assert_eq!(std::mem::size_of::<VolArgsV2>(), 4096);
        assert_eq!(IOC_SUBVOL_CREATE, 0x5000_940E);
        assert_eq!(IOC_SNAP_DESTROY, 0x5000_940F);
        assert_eq!(IOC_SNAP_CREATE_V2, 0x5000_9417);
        assert_eq!(IOC_SUBVOL_GETFLAGS, 0x8008_9419);
        assert_eq!(std::mem::size_of::<SubvolInfo>(), 504);
        assert_eq!(IOC_GET_SUBVOL_INFO, 0x81f8_943c);
        assert_eq!(IOC_SUBVOL_SETFLAGS, 0x4008_941A);
        assert_eq!(IOC_SNAP_DESTROY_V2, 0x5000_943F);
    }

    #[test]
    fn names_must_fit_and_hold_no_slash() {
        let mut f = [0u8; 8];
        assert_eq!(fill_name(&mut f, c"a/b"), Err(Errno::INVAL));
        assert_eq!(fill_name(&mut f, c""), Err(Errno::INVAL));
        assert_eq!(fill_name(&mut f, c"12345678"), Err(Errno::INVAL));
        fill_name(&mut f, c"snap").unwrap();
        assert_eq!(&f[..5], b"snap\0");
    }

    #[test]
    fn a_plain_directory_is_no_subvolume() {
        let d = crate::fsutil::open_dir(std::path::Path::new("/tmp")).unwrap();
        assert!(!is_subvolume(&d).unwrap());
    }
}

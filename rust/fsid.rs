//! The file-system identity of the calling thread: fsuid, fsgid and supplementary groups.
//!
//! mailbak runs as root, while everything inside a store belongs to the mail server's user, who
//! can put a symlink anywhere in it (for example at the lock file LMDB opens with `O_CREAT`, or
//! where `verify --fix` creates `data/moved/`). Checking paths first can always lose a race;
//! switching to the store owner's identity around every open or create inside the store makes
//! the kernel refuse whatever that user could not do, and makes what is created theirs.
//!
//! Why these calls: `setfsuid`/`setfsgid` change only the identity used for file-system
//! permission checks, and only of the calling thread (the kernel keeps credentials per thread;
//! glibc's wrappers for these two are plain syscalls, unlike `setuid` or `setgroups`, which it
//! broadcasts to every thread). A change of fsuid from 0 to another uid also clears the
//! file-system capabilities (`CAP_DAC_OVERRIDE`, `CAP_DAC_READ_SEARCH`, `CAP_FOWNER`, `CAP_CHOWN`,
//! ...) from the effective set, and setting it back to 0 restores them. Supplementary groups go
//! through rustix's raw `setgroups` syscall for the same per-thread reason; without it the thread
//! would keep root's groups. Other threads (the engine's workers, Python's) are unaffected.
//!
//! Not guaranteed: the identity is per thread, so a caller must switch in the thread that does
//! the opening, and restore it before that thread writes anything of its own. A thread started
//! while the identity is switched inherits it.

use rustix::io::Errno;
use rustix::process::Gid;

/// One file-system identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsId {
    /// File-system uid.
    pub uid: u32,
    /// File-system gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// The value `setfsuid`/`setfsgid` reject without changing anything: calling with it only
/// returns the current id.
const QUERY: u32 = u32::MAX;

/// The calling thread's identity.
pub fn current() -> Result<FsId, Errno> {
    // SAFETY: setfsuid/setfsgid take a plain integer and touch only this thread's credentials;
    // the invalid id -1 changes nothing and returns the current value.
    let (uid, gid) = unsafe { (libc::setfsuid(QUERY) as u32, libc::setfsgid(QUERY) as u32) };
    let groups = rustix::process::getgroups()?
        .into_iter()
        .map(Gid::as_raw)
        .collect();
    Ok(FsId { uid, gid, groups })
}

/// Gives the calling thread identity `id`; returns the one it had. On failure the thread is
/// left with its old identity (as far as the kernel lets it be restored) and the error says why:
/// EPERM when this process may not take that identity (it is not root).
pub fn switch(id: &FsId) -> Result<FsId, Errno> {
    let old = current()?;
    if let Err(e) = apply(id) {
        let _ = apply(&old);
        return Err(e);
    }
    Ok(old)
}

/// Sets all three parts and checks that each took effect (setfsuid reports no errors; reading
/// the value back is the documented way to learn whether it changed).
fn apply(id: &FsId) -> Result<(), Errno> {
    let groups: Vec<Gid> = id.groups.iter().map(|&g| Gid::from_raw(g)).collect();
    rustix::thread::set_thread_groups(&groups)?;
    // SAFETY: as in `current`.
    unsafe {
        libc::setfsgid(id.gid);
        libc::setfsuid(id.uid);
        if libc::setfsgid(QUERY) as u32 != id.gid || libc::setfsuid(QUERY) as u32 != id.uid {
            return Err(Errno::PERM);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::testutil::Scratch;

    #[test]
    fn switch_is_per_thread_and_the_kernel_enforces_it() {
        if !rustix::process::geteuid().is_root() {
            // Only root may take another identity; as another user the switch must fail cleanly.
            let other = FsId {
                uid: 0,
                gid: 0,
                groups: vec![],
            };
            assert_eq!(switch(&other), Err(Errno::PERM));
            return;
        }
        let s = Scratch::new("fsid");
        s.file("secret", b"root only");
        std::fs::set_permissions(
            s.path("secret"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let before = current().unwrap();
        // A thread started before the switch keeps root's identity (one started after it would
        // inherit the switched one: clone copies the creating thread's credentials).
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let secret = s.path("secret");
        let other = std::thread::spawn(move || {
            wait.recv().unwrap();
            (current().unwrap(), std::fs::read(secret).is_ok())
        });
        let nobody = FsId {
            uid: 65534,
            gid: 65534,
            groups: vec![],
        };
        let old = switch(&nobody).unwrap();
        assert_eq!(old, before);
        assert_eq!(current().unwrap(), nobody);
        // Root's CAP_DAC_OVERRIDE is gone for this thread's file accesses...
        assert_eq!(
            std::fs::read(s.path("secret")).unwrap_err().raw_os_error(),
            Some(Errno::ACCESS.raw_os_error())
        );
        // ...and only for this thread.
        go.send(()).unwrap();
        assert_eq!(other.join().unwrap(), (before.clone(), true));
        assert_eq!(switch(&old).unwrap(), nobody);
        assert_eq!(std::fs::read(s.path("secret")).unwrap(), b"root only");
    }
}

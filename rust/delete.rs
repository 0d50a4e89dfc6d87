//! Deleting a directory tree in parallel, bottom-up: the trash of a snapshot repository (a
//! pruned snapshot of a million hardlinks), never anything outside it.
//!
//! Algorithm (on the walker of `walk.rs`, whose `leave_dir` hooks run bottom-up in parallel):
//! 1. Open the parent of the target by path, then the target itself below it with
//!    `O_NOFOLLOW | O_DIRECTORY`: a symlink at the target is an error of the call and nothing is
//!    deleted. A target on another device than its parent (a mount point) is refused the same way.
//! 2. Walk the target: every entry that is not a directory is removed with `unlinkat` (a symlink
//!    is removed, never followed); each directory, once its entries and subdirectories are
//!    done, is removed from its parent with `unlinkat(AT_REMOVEDIR)`. Subdirectories are opened
//!    relative to their parent with `O_NOFOLLOW`, so nothing below the target can lead outside it;
//!    one on another device (a mount point) is never entered nor deleted, and is an error.
//! 3. The target itself is removed last, when empty.
//!
//! An entry that cannot be removed is an error event (its path relative to the target, with
//! the call's prefix) and the rest goes on; its directories then stay (not empty), each one
//! more error. Progress counts one unit per file removed.
//!
//! Deleting pruned snapshots is background work: [`delete_tree_lowered`] runs in a pool whose
//! workers gave themselves the lowest CPU and I/O priority (`priority.rs`) and reports once when
//! they could not.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::io::Errno;

use crate::error::Error;
use crate::fsutil::{self, join, Kind};
use crate::priority::Lowering;
use crate::progress::{Progress, Sink};
use crate::testpause::{self, Pause};
use crate::walk::{self, Dir, Fence, Roots, Visitor};

/// The directory to delete, opened (step 1).
pub struct Target {
    /// Its parent, opened by path.
    parent: OwnedFd,
    /// Its name in the parent.
    name: CString,
    /// The directory itself, opened without following a symlink.
    root: OwnedFd,
}

impl Target {
    /// Opens `path` for deletion (step 1); fails (nothing deleted) when it is a symlink, not a
    /// directory, a mount point, or names no entry of a parent (`/`, `..`). The error carries
    /// `path`.
    pub fn open(path: &Path) -> Result<Target, Error> {
        Target::open_errno(path).map_err(|e| Error::new("open", e).with_path(path))
    }

    /// [`Target::open`], failing with the bare errno.
    fn open_errno(path: &Path) -> Result<Target, Errno> {
        let name = path.file_name().ok_or(Errno::INVAL)?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = CString::new(name.as_bytes()).map_err(|_| Errno::INVAL)?;
        Target::at(fsutil::open_dir(parent)?, &name)
    }

    /// The directory `name` of the held directory `parent`, opened for deletion as
    /// [`Target::open`] opens a path (never a symlink, never another file system).
    pub fn at(parent: OwnedFd, name: &CStr) -> Result<Target, Errno> {
        let root = fsutil::open_dir_at(parent.as_fd(), name)?;
        if fsutil::fstat(&root)?.st_dev != fsutil::fstat(&parent)?.st_dev {
            return Err(Errno::XDEV);
        }
        Ok(Target {
            parent,
            name: name.to_owned(),
            root,
        })
    }
}

/// What a deletion did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Deleted {
    /// Files (anything but directories) removed.
    pub files: u64,
    /// Directories removed, the target included.
    pub dirs: u64,
    /// Error events.
    pub errors: u64,
    /// Warning events.
    pub warnings: u64,
}

/// Removes entries as the walk meets them and directories as it leaves them.
struct Remover<'a> {
    /// Files removed.
    files: AtomicU64,
    /// Directories removed.
    dirs: AtomicU64,
    /// Where events go.
    sink: &'a Sink<'a>,
    /// Test-only pause point [`testpause::MID_DELETE`].
    pause: Pause,
}

impl Visitor for Remover<'_> {
    fn one_file_system(&self) -> bool {
        true
    }

    fn entry(&self, dir: &Dir<'_>, name: &CStr, _kind: Kind) {
        match fsutil::unlink_at(dir.src, name) {
            Ok(()) => {
                self.files.fetch_add(1, Ordering::Relaxed);
                self.sink.progress.add_done(1);
                self.pause.tick();
            }
            // Gone already (a second prune racing this one): what was wanted.
            Err(Errno::NOENT) => {}
            Err(e) => self
                .sink
                .io_error(&join(dir.rel, name.to_bytes()), "unlink", e),
        }
    }

    fn leave_dir(&self, dir: &Dir<'_>) {
        // The root is removed by `delete_tree` through the parent it opened.
        let Some(parent) = dir.parent else { return };
        let last = dir.rel.rsplit(|&c| c == b'/').next().unwrap_or(dir.rel);
        let Ok(name) = CString::new(last) else { return };
        match fsutil::remove_dir_at(parent, &name) {
            Ok(()) => {
                self.dirs.fetch_add(1, Ordering::Relaxed);
            }
            Err(Errno::NOENT) => {}
            Err(e) => self.sink.io_error(dir.rel, "remove directory", e),
        }
    }
}

/// Deletes `target` and everything in it (see the module doc), in the current rayon pool;
/// events carry `prefix`.
pub fn delete_tree(target: Target, progress: &Progress, prefix: &[u8]) -> Deleted {
    let sink = Sink::new(progress, prefix);
    let remover = Remover {
        files: AtomicU64::new(0),
        dirs: AtomicU64::new(0),
        sink: &sink,
        pause: Pause::from_env(testpause::MID_DELETE),
    };
    let Target { parent, name, root } = target;
    walk::walk(
        Roots {
            src: root,
            dst: None,
            refs: Vec::new(),
            only: None,
            fence: Fence::NONE,
        },
        &remover,
        &sink,
    );
    if !sink.cancelled() {
        match fsutil::remove_dir_at(parent.as_fd(), &name) {
            Ok(()) => {
                remover.dirs.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => sink.io_error(b"", "remove directory", e),
        }
    }
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    Deleted {
        files: get(&remover.files),
        dirs: get(&remover.dirs),
        errors: get(&sink.tally.errors),
        warnings: get(&sink.tally.warnings),
    }
}

/// [`delete_tree`] in a pool whose workers `lowering` lowered as they started (see
/// `priority.rs`; None: normal priority): a worker left at normal priority is one warning of
/// the call, and the deletion goes on.
pub fn delete_tree_lowered(
    target: Target,
    progress: &Progress,
    prefix: &[u8],
    lowering: Option<&Lowering>,
) -> Deleted {
    let mut d = delete_tree(target, progress, prefix);
    if let Some(e) = lowering.and_then(Lowering::first_error) {
        d.warnings += priority_warning(progress, prefix, e).warnings;
    }
    d
}

/// Reports that the workers could not be given low priority (`e`), once per call.
fn priority_warning(progress: &Progress, prefix: &[u8], e: Errno) -> Deleted {
    let sink = Sink::new(progress, prefix);
    sink.warn(
        "priority",
        b"",
        e.raw_os_error(),
        format!(
            "cannot lower the priority of the delete workers ({e}); deleting at normal priority"
        ),
    );
    Deleted {
        warnings: 1,
        ..Deleted::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::testutil::Scratch;
    use std::os::unix::fs::PermissionsExt;

    fn run(path: &Path, jobs: usize) -> (Deleted, Vec<crate::progress::Event>) {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(jobs)
            .build()
            .unwrap();
        let p = Progress::new(false, 1000);
        let t = Target::open(path).unwrap();
        let d = pool.install(|| delete_tree(t, &p, b"trash/x"));
        (d, p.drain())
    }

    #[test]
    fn deletes_a_nested_tree_bottom_up_with_counts_and_progress() {
        for jobs in [1, 4] {
            let s = Scratch::new("delnest");
            for i in 0..30 {
                for j in 0..4 {
                    s.file(&format!("t/{i}/{j}/f"), b"x");
                }
                s.file(&format!("t/{i}/g"), b"y");
            }
            std::os::unix::fs::symlink("/nonexistent", s.path("t/link")).unwrap();
            s.file("keep", b"beside the target");
            let p = Progress::new(false, 1000);
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(jobs)
                .build()
                .unwrap();
            let d = pool.install(|| delete_tree(Target::open(&s.path("t")).unwrap(), &p, b""));
            assert_eq!(
                d,
                Deleted {
                    files: 30 * 5 + 1,
                    dirs: 1 + 30 + 120,
                    errors: 0,
                    warnings: 0
                },
                "jobs {jobs}"
            );
            assert_eq!(p.position().0, 151);
            assert!(!s.path("t").exists());
            assert_eq!(std::fs::read(s.path("keep")).unwrap(), b"beside the target");
        }
    }

    #[test]
    fn a_symlink_inside_is_removed_never_followed() {
        let s = Scratch::new("dellink");
        s.file("outside/precious", b"keep me");
        s.file("t/a/f", b"x");
        std::os::unix::fs::symlink(s.path("outside"), s.path("t/a/dirlink")).unwrap();
        std::os::unix::fs::symlink(s.path("outside/precious"), s.path("t/filelink")).unwrap();
        let (d, ev) = run(&s.path("t"), 2);
        assert_eq!((d.files, d.dirs, d.errors), (3, 2, 0), "{ev:?}");
        assert!(!s.path("t").exists());
        assert_eq!(
            std::fs::read(s.path("outside/precious")).unwrap(),
            b"keep me"
        );
    }

    #[test]
    fn a_symlink_as_the_target_is_refused_and_nothing_deleted() {
        let s = Scratch::new("delroot");
        s.file("real/f", b"x");
        std::os::unix::fs::symlink(s.path("real"), s.path("t")).unwrap();
        let err = Target::open(&s.path("t")).err().unwrap().errno;
        assert!(matches!(err, Errno::LOOP | Errno::NOTDIR), "{err:?}");
        assert!(s.path("real/f").exists() && s.path("t").exists());
        let errno = |p: &Path| Target::open(p).err().map(|e| e.errno);
        assert_eq!(errno(Path::new("/")), Some(Errno::INVAL));
        assert_eq!(errno(&s.path("real/..")), Some(Errno::INVAL));
    }

    #[test]
    fn an_entry_that_cannot_be_deleted_is_reported_and_the_rest_removed() {
        // An immutable file (chattr +i) cannot be removed even by root; where the file system
        // does not support the flag, a directory without write permission does it for a user.
        let s = Scratch::new("delstuck");
        s.file("t/a/stuck", b"x");
        s.file("t/a/free", b"y");
        s.file("t/b/c/d", b"z");
        s.file("t/e", b"w");
        let stuck = s.path("t/a/stuck");
        let immutable = std::process::Command::new("chattr")
            .arg("+i")
            .arg(&stuck)
            .status()
            .is_ok_and(|st| st.success());
        assert!(
            immutable,
            "chattr +i is needed for this test (e2fsprogs; a file system with the flag)"
        );
        let (d, ev) = run(&s.path("t"), 2);
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&stuck)
            .status();
        assert_eq!((d.files, d.errors), (3, 3), "{ev:?}");
        let mut paths: Vec<_> = ev
            .iter()
            .map(|e| String::from_utf8(e.path.clone()).unwrap())
            .collect();
        paths.sort();
        // The file, then its directory and the root (not empty).
        assert_eq!(paths, vec!["trash/x/", "trash/x/a", "trash/x/a/stuck"]);
        assert!(stuck.exists());
        assert!(!s.path("t/a/free").exists() && !s.path("t/b").exists());
        assert!(!s.path("t/e").exists());
        let _ = std::fs::set_permissions(s.path("t"), std::fs::Permissions::from_mode(0o755));
    }
}

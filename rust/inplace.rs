//! Bringing a clone of the reference to the store's state in place: the first half of the
//! nightly snapshot of a repository on btrfs (docs/REPOSITORY.md, "Repositories on btrfs").
//!
//! The new snapshot starts as a btrfs snapshot of the reference (`btrfs.rs`): it already holds
//! every file of the reference. The backup then runs as it always does, with the snapshot being
//! both the destination and its own reference ([`crate::linkcopy::LinkPolicy::in_place`]): a
//! file the reuse rule would link from the reference is kept where it is, anything else is
//! replaced by a copy of the store's file. What that leaves to do is removing what the store
//! no longer has, before the backup runs: [`drop_stale`].
//!
//! [`drop_stale`] walks the snapshot's tree (directories in parallel) and, per entry, asks the
//! caller's [`Verdict`]: keep it without a look at the store (a live message of today's
//! snapshot: the backup's placement checks it), drop it (a database about to be copied anew, a
//! message being erased), leave it and everything below alone (a tree another pass handles), or
//! check it: it stays when the store holds an entry of the same kind (a regular file or a
//! directory) at the same path, which the backup then compares or descends into, and goes
//! otherwise. Symlinks and special files always go: the backup recreates the store's symlinks,
//! and special files are never backed up. Nothing is followed: the walk opens directories
//! below the snapshot's root without following symlinks, and the store is looked up below its
//! own root the same way.
//!
//! Not guaranteed: a directory's permission bits and owner are set by the backup's mirror of
//! the store's directory (`fsutil::make_dir_at`), not here.

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::io::Errno;

use crate::delete::{self, Target};
use crate::fsutil::{self, join, Kind};
use crate::progress::Sink;

/// What happens to one entry of the snapshot being brought up to date (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Kept without a look at the store.
    Keep,
    /// Removed (a directory with everything in it).
    Drop,
    /// Left alone, and not entered when a directory.
    Leave,
    /// Kept when the store has an entry of the same kind at the same path, else removed.
    Check,
}

/// What [`drop_stale`] removed.
#[derive(Debug, Default)]
pub struct Dropped {
    /// Entries removed because the store has no such entry there (files, symlinks and
    /// directories, those inside removed directories too); not the symlinks removed to be recreated.
    pub entries: AtomicU64,
}

/// Removes from the tree `dst` what the store's tree `src` no longer has, as `verdict`
/// (directory relative to the root, entry name, entry kind) decides for each entry (see the
/// module doc). Errors are the sink's events, with the entry's path.
pub fn drop_stale<F>(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    verdict: &F,
    sink: &Sink<'_>,
) -> Dropped
where
    F: Fn(&[u8], &[u8], Kind) -> Verdict + Sync,
{
    let out = Dropped::default();
    rayon::scope(|s| visit(s, src, dst, Vec::new(), verdict, sink, &out));
    out
}

/// One directory of [`drop_stale`]: `dir` in the snapshot at `rel`; subdirectories are spawned.
fn visit<'s, F>(
    scope: &rayon::Scope<'s>,
    src_root: BorrowedFd<'s>,
    dir: BorrowedFd<'_>,
    rel: Vec<u8>,
    verdict: &'s F,
    sink: &'s Sink<'s>,
    out: &'s Dropped,
) where
    F: Fn(&[u8], &[u8], Kind) -> Verdict + Sync,
{
    if sink.cancelled() {
        return;
    }
    let entries = match fsutil::read_entries(dir) {
        Ok(e) => e,
        Err(e) => return sink.io_error(&rel, "read directory", e),
    };
    // The store's directory, opened once, when an entry needs it; None: the store has none.
    let mut store: Option<Option<OwnedFd>> = None;
    for i in entries.indexes() {
        let (name, kind) = entries.get(i);
        let path = join(&rel, name.to_bytes());
        // Whether the entry stays, and whether removing it counts (a symlink removed only to be
        // recreated from the store's does not).
        let (keep, counted) = match verdict(&rel, name.to_bytes(), kind) {
            Verdict::Leave => continue,
            Verdict::Keep => (true, false),
            Verdict::Drop => (false, true),
            Verdict::Check => {
                let sdir = store.get_or_insert_with(|| fsutil::open_dir_below(src_root, &rel).ok());
                let theirs = sdir
                    .as_ref()
                    .and_then(|d| fsutil::lstat_at(d.as_fd(), name).ok())
                    .map(|st| Kind::from_mode(st.st_mode));
                let same = theirs == Some(kind);
                (same && matches!(kind, Kind::File | Kind::Dir), !same)
            }
        };
        if !keep {
            match remove(dir, name, kind, counted.then_some(out), sink, &path) {
                Ok(()) => {}
                Err(e) => sink.io_error(&path, "remove", e),
            }
            continue;
        }
        if kind == Kind::Dir {
            match fsutil::open_dir_at(dir, name) {
                Ok(sub) => {
                    scope.spawn(move |s| visit(s, src_root, sub.as_fd(), path, verdict, sink, out))
                }
                Err(e) => sink.io_error(&path, "open directory", e),
            }
        }
    }
}

/// Removes `name` of `dir` (of `kind`; a directory with everything below it through
/// `delete.rs`, which never follows a symlink nor leaves the file system, and walks however deep
/// a store's owner nested it), counting into `out` when given. A directory's entries that could
/// not be removed are `sink`'s events (below `path`); the directory then stays.
fn remove(
    dir: BorrowedFd<'_>,
    name: &CStr,
    kind: Kind,
    out: Option<&Dropped>,
    sink: &Sink<'_>,
    path: &[u8],
) -> Result<(), Errno> {
    let removed = if kind == Kind::Dir {
        let target = Target::at(fsutil::dup(dir)?, name)?;
        let d = delete::delete_tree(target, sink.progress, &sink.full(path));
        d.files + d.dirs
    } else {
        match fsutil::unlink_at(dir, name) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(e),
        }
        1
    };
    if let Some(out) = out {
        out.entries.fetch_add(removed, Ordering::Relaxed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::testutil::Scratch;
    use crate::progress::Progress;

    #[test]
    fn drops_what_the_store_lacks_and_keeps_what_it_has() {
        let s = Scratch::new("inplace");
        let (src, dst) = s.src_dst();
        s.file("src/same", b"1");
        s.file("src/d/x", b"1");
        s.file("dst/same", b"old");
        s.file("dst/gone", b"old");
        s.file("dst/d/x", b"old");
        s.file("dst/d/y", b"old");
        s.file("dst/olddir/z", b"old");
        s.file("dst/kept/z", b"old");
        s.file("dst/dropped", b"old");
        std::os::unix::fs::symlink("same", s.path("dst/link")).unwrap();
        std::os::unix::fs::symlink("same", s.path("dst/link2")).unwrap();
        std::os::unix::fs::symlink("same", s.path("src/link2")).unwrap();
        std::fs::create_dir_all(s.path("src/file_in_dst_is_dir")).unwrap();
        s.file("dst/file_in_dst_is_dir", b"old");
        let progress = Progress::new(false, 100);
        let sink = Sink::new(&progress, b"");
        let verdict = |rel: &[u8], name: &[u8], _k: Kind| match (rel, name) {
            (b"", b"kept") => Verdict::Leave,
            (b"", b"dropped") => Verdict::Drop,
            _ => Verdict::Check,
        };
        let out = drop_stale(src.as_fd(), dst.as_fd(), &verdict, &sink);
        let mut left: Vec<String> = walk_names(&s.path("dst"));
        left.sort();
        assert_eq!(left, ["d", "d/x", "kept", "kept/z", "same"]);
        // gone, d/y, olddir/z, olddir, dropped, link, file_in_dst_is_dir; link2 is removed too
        // (the backup recreates it) but not counted.
        assert_eq!(out.entries.load(Ordering::Relaxed), 7);
        assert_eq!(sink.tally.errors.load(Ordering::Relaxed), 0);
    }

    /// Every path below `root`, relative to it.
    fn walk_names(root: &std::path::Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
                if p.symlink_metadata().unwrap().is_dir() {
                    stack.push(p);
                }
            }
        }
        out
    }

    #[test]
    fn a_deeply_nested_stale_tree_is_removed_whole_never_a_crash() {
        // A store's owner can nest directories without limit; a recursive removal would
        // overflow a worker's stack on such a tree and abort every nightly.
        let s = Scratch::new("deep");
        let root = fsutil::open_dir(&s.path("")).unwrap();
        rustix::fs::mkdirat(&root, c"top", rustix::fs::Mode::from_raw_mode(0o700)).unwrap();
        let mut cur = fsutil::open_dir_at(root.as_fd(), c"top").unwrap();
        for _ in 0..600 {
            rustix::fs::mkdirat(&cur, c"d", rustix::fs::Mode::from_raw_mode(0o700)).unwrap();
            cur = fsutil::open_dir_at(cur.as_fd(), c"d").unwrap();
        }
        drop(cur);
        let progress = Progress::new(false, 100);
        let sink = Sink::new(&progress, b"");
        let out = Dropped::default();
        assert_eq!(
            remove(root.as_fd(), c"top", Kind::Dir, Some(&out), &sink, b"top"),
            Ok(())
        );
        assert!(!s.path("top").exists());
        assert_eq!(out.entries.load(Ordering::Relaxed), 601);
        assert!(progress.drain().is_empty());
    }
}

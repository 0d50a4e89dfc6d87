//! A parallel directory walk that hands every non-directory entry to a [`Visitor`], optionally
//! mirroring the directory structure into a destination tree as it goes.
//!
//! Algorithm:
//! 1. Read a directory completely (`getdents64`, file type from `d_type`: no `stat` per file).
//! 2. Spawn one rayon task per subdirectory the visitor wants entered; each task opens its
//!    directory relative to its parent's descriptor (never by path, never through a symlink) and
//!    creates the destination directory the same way. Parents' descriptors are held only until
//!    the child has opened its own, so open descriptors stay bounded by the number of workers,
//!    not by the depth or width of the tree.
//! 3. Hand the directory's other entries to the visitor: in one task, so that different workers
//!    work in different directories (see [`CHUNK`]); in parallel chunks only when there are
//!    very many (a single directory of 200k files still spreads over all workers).
//!
//! Two things are never visited, whatever the visitor says (the walk is where they show):
//! - a directory whose `(st_dev, st_ino)` is in [`Fence::skip`]: the run's destination, met
//!   inside the tree it copies (a bind mount or another second path to it). Entering it would
//!   copy the destination into itself until the disk is full; it is reported as an error.
//! - with [`Fence::skip_locks`], an LMDB lock file: a regular file `NAME-lock` beside a regular
//!   file `NAME` in the same directory (LMDB names its lock file so). A lock file describes the
//!   readers of one running system and is never part of a backup.
//!
//! Errors on a directory (unreadable, cannot be created in the destination) are reported
//! through the [`Sink`] with their path and skip that subtree; the walk goes on. The cancel flag
//! is checked before each directory and each file.
//!
//! Not guaranteed: entries created or removed while the walk runs may or may not be seen.

use std::collections::HashSet;
use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use crate::fsutil::{self, join, Kind};
use crate::progress::{Sink, Tally};

/// Files of one directory handled by one task. Linking or creating files in one directory
/// serialises on that directory's lock in the kernel, so workers go faster on different
/// directories than sharing one: a message directory (at most 8192 files) is one task, and
/// only unusually large directories (200k strays) are split across workers.
const CHUNK: usize = 8192;

/// The directory a visited entry is in.
pub struct Dir<'a> {
    /// The source directory.
    pub src: BorrowedFd<'a>,
    /// Its mirror in the destination, when the walk has one.
    pub dst: Option<BorrowedFd<'a>>,
    /// Its path relative to the walk's root (empty for the root).
    pub rel: &'a [u8],
}

/// What a walk does with what it finds.
pub trait Visitor: Sync {
    /// Whether to enter subdirectory `name` of the directory at `rel` (and mirror it).
    fn enter(&self, _rel: &[u8], _name: &CStr) -> bool {
        true
    }

    /// Handles one entry that is not a directory.
    fn entry(&self, dir: &Dir<'_>, name: &CStr, kind: Kind);
}

/// Where a walk goes: its source root, its optional destination root, and an optional filter on
/// the names at the root level.
pub struct Roots<'n> {
    /// The source root directory.
    pub src: OwnedFd,
    /// The destination root directory, created by the caller.
    pub dst: Option<OwnedFd>,
    /// When set, only these root-level names are visited.
    pub only: Option<&'n [Vec<u8>]>,
    /// What the walk never visits.
    pub fence: &'n Fence,
}

/// What a walk never visits (see the module doc).
#[derive(Clone, Debug, Default)]
pub struct Fence {
    /// `(st_dev, st_ino)` of directories never entered: the run's destination.
    pub skip: Vec<(u64, u64)>,
    /// Whether LMDB lock files are left out.
    pub skip_locks: bool,
}

impl Fence {
    /// The fence that lets everything through.
    pub const NONE: &'static Fence = &Fence {
        skip: Vec::new(),
        skip_locks: false,
    };
}

/// Suffix LMDB appends to a data file's name for its lock file.
pub const LOCK_SUFFIX: &[u8] = b"-lock";

/// Indexes of the entries that are LMDB lock files: regular files `NAME-lock` with a regular
/// file `NAME` beside them. Almost every directory has none, so the set of names is built only
/// when some name ends with the suffix.
fn lock_files(entries: &fsutil::Entries) -> HashSet<usize> {
    let is_candidate = |i: usize| {
        let (name, kind) = entries.get(i);
        let n = name.to_bytes();
        kind == Kind::File && n.len() > LOCK_SUFFIX.len() && n.ends_with(LOCK_SUFFIX)
    };
    let candidates: Vec<usize> = entries.indexes().filter(|&i| is_candidate(i)).collect();
    if candidates.is_empty() {
        return HashSet::new();
    }
    let files: HashSet<&[u8]> = entries
        .indexes()
        .map(|i| entries.get(i))
        .filter(|(_, kind)| *kind == Kind::File)
        .map(|(name, _)| name.to_bytes())
        .collect();
    candidates
        .into_iter()
        .filter(|&i| {
            let n = entries.get(i).0.to_bytes();
            files.contains(&n[..n.len() - LOCK_SUFFIX.len()])
        })
        .collect()
}

/// A directory waiting to be walked.
struct Task {
    /// Its source descriptor.
    src: OwnedFd,
    /// Its destination descriptor.
    dst: Option<OwnedFd>,
    /// Its path relative to the root.
    rel: Vec<u8>,
}

/// Destination directories whose final mode must wait until their contents are written.
type Finish = Mutex<Vec<(Vec<u8>, u32)>>;

/// Walks the tree below `roots.src`, in the current rayon pool.
pub fn walk<V: Visitor>(roots: Roots<'_>, v: &V, sink: &Sink<'_>) {
    let finish: Finish = Mutex::new(Vec::new());
    let dst_root = roots.dst.as_ref().map(rustix::io::dup).transpose();
    let dst_root = match dst_root {
        Ok(d) => d,
        Err(e) => return sink.io_error(b"", "dup", e),
    };
    let (only, fence) = (roots.only, roots.fence);
    if !fence.skip.is_empty() {
        match rustix::fs::fstat(&roots.src) {
            Ok(st) if fence.skip.contains(&fsutil::identity(&st)) => return fenced(sink, b""),
            Ok(_) => {}
            Err(e) => return sink.io_error(b"", "stat directory", e),
        }
    }
    rayon::scope(|s| {
        visit(
            s,
            Task {
                src: roots.src,
                dst: roots.dst,
                rel: Vec::new(),
            },
            only,
            fence,
            v,
            sink,
            &finish,
        )
    });
    if let Some(dst) = dst_root {
        let mut dirs = finish.into_inner().unwrap_or_else(|p| p.into_inner());
        // Deepest first, so a read-only parent is closed only after its children are.
        dirs.sort_by_key(|(rel, _)| std::cmp::Reverse(rel.iter().filter(|&&c| c == b'/').count()));
        for (rel, mode) in dirs {
            if let Err(e) = fsutil::finish_dir(dst.as_fd(), &rel, mode) {
                sink.io_error(&rel, "chmod directory", e);
            }
        }
    }
}

/// Reports a fenced-off directory (the destination met inside the tree).
fn fenced(sink: &Sink<'_>, rel: &[u8]) {
    sink.error("dest_inside", rel, 0, "this directory is the destination itself, reached from inside the tree being copied (a bind mount?); not entered".into());
}

/// Walks one directory and spawns its subdirectories.
#[allow(clippy::too_many_arguments)]
fn visit<'s, V: Visitor>(
    s: &rayon::Scope<'s>,
    t: Task,
    only: Option<&'s [Vec<u8>]>,
    fence: &'s Fence,
    v: &'s V,
    sink: &'s Sink<'s>,
    finish: &'s Finish,
) {
    if sink.cancelled() {
        return;
    }
    let entries = match fsutil::read_entries(t.src.as_fd()) {
        Ok(e) => e,
        Err(e) => return sink.io_error(&t.rel, "read directory", e),
    };
    let src = Arc::new(t.src);
    let dst = t.dst.map(Arc::new);
    let locks = if fence.skip_locks {
        lock_files(&entries)
    } else {
        HashSet::new()
    };
    let mut files = Vec::with_capacity(entries.len());
    for i in entries.indexes() {
        let (name, kind) = entries.get(i);
        if let Some(only) = only {
            if !only.iter().any(|n| n.as_slice() == name.to_bytes()) {
                continue;
            }
        }
        if locks.contains(&i) {
            sink.info(
                "lock_file",
                &join(&t.rel, name.to_bytes()),
                "LMDB lock file; never backed up",
            );
            continue;
        }
        if kind != Kind::Dir {
            files.push(i);
            continue;
        }
        if !v.enter(&t.rel, name) {
            continue;
        }
        let rel = join(&t.rel, name.to_bytes());
        let name = name.to_owned();
        let (src, dst) = (Arc::clone(&src), dst.clone());
        s.spawn(move |s| {
            if let Some(child) =
                open_child(&src, dst.as_deref(), &name, &rel, &fence.skip, sink, finish)
            {
                drop((src, dst));
                visit(
                    s,
                    Task {
                        src: child.0,
                        dst: child.1,
                        rel,
                    },
                    None,
                    fence,
                    v,
                    sink,
                    finish,
                );
            }
        });
    }
    let dir = Dir {
        src: src.as_fd(),
        dst: dst.as_ref().map(|d| d.as_fd()),
        rel: &t.rel,
    };
    let one = |i: usize| {
        if !sink.cancelled() {
            let (name, kind) = entries.get(i);
            v.entry(&dir, name, kind);
        }
    };
    if files.len() > CHUNK {
        files
            .par_chunks(CHUNK)
            .for_each(|c| c.iter().copied().for_each(one));
    } else {
        files.into_iter().for_each(one);
    }
}

/// Opens subdirectory `name` and creates its mirror; reports and returns None on failure, and
/// when the directory is one of `skip` (checked on the opened descriptor, before anything is
/// created, so no rename can slip the destination past the check).
#[allow(clippy::too_many_arguments)]
fn open_child(
    src: &OwnedFd,
    dst: Option<&OwnedFd>,
    name: &CStr,
    rel: &[u8],
    skip: &[(u64, u64)],
    sink: &Sink<'_>,
    finish: &Finish,
) -> Option<(OwnedFd, Option<OwnedFd>)> {
    let child = match fsutil::open_dir_at(src.as_fd(), name) {
        Ok(fd) => fd,
        Err(e) => {
            sink.io_error(rel, "open directory", e);
            return None;
        }
    };
    if dst.is_none() && skip.is_empty() {
        return Some((child, None));
    }
    let st = match rustix::fs::fstat(&child) {
        Ok(st) => st,
        Err(e) => {
            sink.io_error(rel, "stat directory", e);
            return None;
        }
    };
    if skip.contains(&fsutil::identity(&st)) {
        fenced(sink, rel);
        return None;
    }
    let Some(dst) = dst else {
        return Some((child, None));
    };
    let owner = fsutil::Owner::of(&st, fsutil::is_root());
    match fsutil::make_dir_at(dst.as_fd(), name, st.st_mode, owner) {
        Ok(d) => {
            Tally::bump(&sink.tally.dirs);
            if fsutil::dir_needs_finish(st.st_mode) {
                finish
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((rel.to_vec(), st.st_mode));
            }
            Some((child, Some(d)))
        }
        Err(e) => {
            sink.io_error(rel, "create directory", e);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::testutil::Scratch;
    use crate::progress::Progress;
    use std::collections::BTreeSet;

    /// Records every entry it sees as "rel/name".
    struct Collect(Mutex<BTreeSet<String>>, Option<&'static str>);

    impl Visitor for Collect {
        fn enter(&self, _rel: &[u8], name: &CStr) -> bool {
            Some(name.to_str().unwrap()) != self.1
        }
        fn entry(&self, dir: &Dir<'_>, name: &CStr, _kind: Kind) {
            let p = join(dir.rel, name.to_bytes());
            self.0.lock().unwrap().insert(String::from_utf8(p).unwrap());
        }
    }

    fn tree(s: &Scratch) {
        // More than one CHUNK, so the parallel split of one directory is exercised too.
        for i in 0..9000 {
            s.file(&format!("big/{i}"), b"x");
        }
        s.file("a/b/c/d/e", b"x");
        s.file("skip/me", b"x");
        s.file("top", b"x");
    }

    fn run(s: &Scratch, jobs: usize, skip: Option<&'static str>) -> BTreeSet<String> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(jobs)
            .build()
            .unwrap();
        let p = Progress::new(false, 100);
        let sink = Sink::new(&p, b"");
        let c = Collect(Mutex::new(BTreeSet::new()), skip);
        let roots = Roots {
            src: fsutil::open_dir(s.root()).unwrap(),
            dst: None,
            only: None,
            fence: Fence::NONE,
        };
        pool.install(|| walk(roots, &c, &sink));
        c.0.into_inner().unwrap()
    }

    #[test]
    fn sequential_and_parallel_walks_agree() {
        let s = Scratch::new("walk");
        tree(&s);
        let one = run(&s, 1, None);
        let four = run(&s, 4, None);
        assert_eq!(one.len(), 9003);
        assert!(one.contains("a/b/c/d/e") && one.contains("big/8999") && one.contains("top"));
        assert_eq!(one, four);
    }

    #[test]
    fn visitor_can_skip_subtrees() {
        let s = Scratch::new("walkskip");
        tree(&s);
        let got = run(&s, 2, Some("skip"));
        assert!(!got.contains("skip/me"));
        assert_eq!(got.len(), 9002);
    }

    #[test]
    fn mirrors_directories_and_reports_unreadable_ones() {
        let s = Scratch::new("walkmirror");
        tree(&s);
        std::fs::create_dir(s.path("out")).unwrap();
        let p = Progress::new(false, 100);
        let sink = Sink::new(&p, b"data");
        let c = Collect(Mutex::new(BTreeSet::new()), Some("out"));
        let roots = Roots {
            src: fsutil::open_dir(s.root()).unwrap(),
            dst: Some(fsutil::open_dir(&s.path("out")).unwrap()),
            only: None,
            fence: Fence::NONE,
        };
        walk(roots, &c, &sink);
        assert!(s.path("out/a/b/c/d").is_dir());
        assert!(s.path("out/big").is_dir());
        assert!(!s.path("out/out").exists());
        assert_eq!(
            sink.tally.dirs.load(std::sync::atomic::Ordering::Relaxed),
            6
        );
    }

    #[test]
    fn root_filter_limits_the_top_level() {
        let s = Scratch::new("walkonly");
        tree(&s);
        let p = Progress::new(false, 100);
        let sink = Sink::new(&p, b"");
        let c = Collect(Mutex::new(BTreeSet::new()), None);
        let only = vec![b"top".to_vec(), b"a".to_vec()];
        let roots = Roots {
            src: fsutil::open_dir(s.root()).unwrap(),
            dst: None,
            only: Some(&only),
            fence: Fence::NONE,
        };
        walk(roots, &c, &sink);
        let got: Vec<String> = c.0.into_inner().unwrap().into_iter().collect();
        assert_eq!(got, vec!["a/b/c/d/e".to_string(), "top".to_string()]);
    }

    /// Walks `s` mirroring into `s/out` with `fence`; returns what was visited and the events.
    fn run_fenced(
        s: &Scratch,
        fence: &Fence,
        out: &'static str,
    ) -> (BTreeSet<String>, Vec<crate::progress::Event>) {
        std::fs::create_dir_all(s.path(out)).unwrap();
        let p = Progress::new(true, 1000);
        let sink = Sink::new(&p, b"");
        let c = Collect(Mutex::new(BTreeSet::new()), Some(out));
        let roots = Roots {
            src: fsutil::open_dir(s.root()).unwrap(),
            dst: Some(fsutil::open_dir(&s.path(out)).unwrap()),
            only: None,
            fence,
        };
        walk(roots, &c, &sink);
        (c.0.into_inner().unwrap(), p.drain())
    }

    fn id_of(path: &std::path::Path) -> (u64, u64) {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).unwrap();
        (m.dev(), m.ino())
    }

    #[test]
    fn a_fenced_directory_is_never_entered_nor_mirrored() {
        // The destination met inside the tree it copies: only its (dev, ino) tells, as a bind
        // mount gives it another path. A hardlink cannot make a second path to a directory, so
        // the directory is fenced by its identity under its own name here.
        let s = Scratch::new("walkfence");
        tree(&s);
        s.file("a/b/dest/inner", b"x");
        let fence = Fence {
            skip: vec![id_of(&s.path("a/b/dest"))],
            skip_locks: false,
        };
        let (got, events) = run_fenced(&s, &fence, "out");
        assert!(!got.contains("a/b/dest/inner"));
        assert!(got.contains("a/b/c/d/e") && got.contains("top"));
        assert!(
            !s.path("out/a/b/dest").exists(),
            "the fenced directory was mirrored"
        );
        assert!(s.path("out/a/b/c/d").is_dir());
        let fenced: Vec<_> = events.iter().filter(|e| e.code == "dest_inside").collect();
        assert_eq!(fenced.len(), 1, "{events:?}");
        assert_eq!(fenced[0].path, b"a/b/dest");
        // Without the fence the same walk enters it: the test above is about the fence.
        let (all, _) = run_fenced(&s, Fence::NONE, "out2");
        assert!(all.contains("a/b/dest/inner"));
    }

    #[test]
    fn a_fenced_root_is_not_walked() {
        let s = Scratch::new("walkfenceroot");
        tree(&s);
        let fence = Fence {
            skip: vec![id_of(s.root())],
            skip_locks: false,
        };
        let (got, events) = run_fenced(&s, &fence, "out");
        assert!(got.is_empty());
        assert!(events
            .iter()
            .any(|e| e.code == "dest_inside" && e.path.is_empty()));
    }

    #[test]
    fn lock_files_beside_their_database_are_left_out() {
        let s = Scratch::new("walklocks");
        for f in [
            "index.db",
            "index.db-lock",
            "sub/extra.db",
            "sub/extra.db-lock",
            "sub/foo-lock",
            "-lock",
            "x/a-lock",
        ] {
            s.file(f, b"x");
        }
        std::fs::create_dir_all(s.path("x/a")).unwrap(); // a directory named like the database
        let (got, events) = run_fenced(
            &s,
            &Fence {
                skip: Vec::new(),
                skip_locks: true,
            },
            "out",
        );
        let want: BTreeSet<String> = [
            "index.db",
            "sub/extra.db",
            "sub/foo-lock",
            "-lock",
            "x/a-lock",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(got, want);
        assert!(!s.path("out/index.db-lock").exists() && !s.path("out/sub/extra.db-lock").exists());
        let locks: BTreeSet<Vec<u8>> = events
            .iter()
            .filter(|e| e.code == "lock_file")
            .map(|e| e.path.clone())
            .collect();
        assert_eq!(
            locks,
            [b"index.db-lock".to_vec(), b"sub/extra.db-lock".to_vec()]
                .into_iter()
                .collect()
        );
        // Without the rule, every file is visited.
        let (all, _) = run_fenced(&s, Fence::NONE, "out2");
        assert!(all.contains("index.db-lock") && all.contains("sub/extra.db-lock"));
    }

    #[test]
    fn cancel_stops_the_walk() {
        let s = Scratch::new("walkcancel");
        tree(&s);
        let p = Progress::new(false, 100);
        p.cancel();
        let sink = Sink::new(&p, b"");
        let c = Collect(Mutex::new(BTreeSet::new()), None);
        walk(
            Roots {
                src: fsutil::open_dir(s.root()).unwrap(),
                dst: None,
                only: None,
                fence: Fence::NONE,
            },
            &c,
            &sink,
        );
        assert!(c.0.into_inner().unwrap().is_empty());
    }
}

//! A parallel directory walk through several trees in step: a source tree whose every
//! non-directory entry is handed to a [`Visitor`], an optional destination into which the
//! source's directories are mirrored as the walk goes, and zero or more reference trees (an
//! earlier backup, say) whose directory at the same path is handed to the visitor with each
//! source directory.
//!
//! Algorithm:
//! 1. Open a directory (its mirror and its reference directories with it: once per directory,
//!    never per file; a reference directory that is absent, or not a directory, is None, never
//!    an error) and call the visitor's `enter_dir`. Read the source directory completely
//!    (`getdents64`, file type from `d_type`: no `stat` per file).
//! 2. Spawn one rayon task per subdirectory the visitor wants entered; each task opens its
//!    directory relative to its parent's descriptors (never by path, never through a symlink)
//!    and creates the destination directory the same way.
//! 3. Hand the directory's other entries to the visitor: in one task, so that different workers
//!    work in different directories (see [`CHUNK`]); in parallel chunks only when there are
//!    very many (a single directory of 200k files still spreads over all workers).
//! 4. When a directory's entries and all its subdirectories are done, call the visitor's
//!    `leave_dir` (bottom-up, as a deletion needs): each directory counts its unfinished tasks,
//!    and the last one to finish leaves it and counts one task of its parent done. A directory's
//!    descriptors stay open until it is left, so open descriptors grow with the directories in
//!    progress (workers times depth in practice, since rayon runs a worker's newest task first),
//!    not with the size of the tree.
//!
//! Two things are never visited, whatever the visitor says (the walk is where they show):
//! - a directory whose `(st_dev, st_ino)` is in [`Fence::skip`]: the run's destination, met
//!   inside the tree it copies (a bind mount or another second path to it). Entering it would
//!   copy the destination into itself until the disk is full; it is reported as an error.
//! - with [`Fence::skip_locks`], an LMDB lock file: a regular file `NAME-lock` beside a regular
//!   file `NAME` in the same directory (LMDB names its lock file so). A lock file describes the
//!   readers of one running system and is never part of a backup.
//!
//! A visitor may also ask the walk to stay on the root's file system
//! ([`Visitor::one_file_system`]: deletion): a subdirectory on another device is then not entered
//! and reported ("mount_point"). `leave_dir` gets the directory's parent descriptor ([`Dir::parent`])
//! so that it can remove the directory.
//!
//! Errors on a directory (unreadable, cannot be created in the destination) are reported
//! through the [`Sink`] with their path and skip that subtree; the walk goes on. The cancel flag
//! is checked before each directory and each file.
//!
//! Not guaranteed: entries created or removed while the walk runs may or may not be seen.

use std::any::Any;
use std::collections::HashSet;
use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rayon::prelude::*;

use crate::fsutil::{self, join, Kind};
use crate::progress::{Sink, Tally};

/// Files of one directory handled by one task. Linking or creating files in one directory
/// serialises on that directory's lock in the kernel, so workers go faster on different
/// directories than sharing one: a message directory (at most 8192 files) is one task, and
/// only unusually large directories (200k strays) are split across workers.
const CHUNK: usize = 8192;

/// The directory a visited entry is in, with its counterparts in the walk's other trees.
pub struct Dir<'a> {
    /// The source directory.
    pub src: BorrowedFd<'a>,
    /// Its mirror in the destination, when the walk has one.
    pub dst: Option<BorrowedFd<'a>>,
    /// The directory at the same path in each reference tree, in the order of [`Roots::refs`]:
    /// opened once per directory (not once per file), None where a reference tree has no
    /// directory there (absent, not a directory, a symlink: never followed, never an error).
    pub refs: &'a [Option<BorrowedFd<'a>>],
    /// Its path relative to the walk's root (empty for the root).
    pub rel: &'a [u8],
    /// The source directory it is in (None for the root): with the last component of `rel`,
    /// what a visitor needs to remove the directory in `leave_dir`.
    pub parent: Option<BorrowedFd<'a>>,
    /// What the visitor keeps for this directory while it is walked (set in `enter_dir`, read
    /// by `entry`, dropped once the directory is left): per-directory state handed down, not
    /// looked up by path in a shared map on every entry.
    pub state: &'a DirSlot,
}

/// A visitor's per-directory state ([`Dir::state`]).
pub type DirSlot = OnceLock<Box<dyn Any + Send + Sync>>;

/// What a walk does with what it finds.
pub trait Visitor: Sync {
    /// Whether to descend into subdirectory `name` of the directory at `rel` (and mirror it).
    fn descend(&self, _rel: &[u8], _name: &CStr) -> bool {
        true
    }

    /// Whether the walk stays on the root's file system: a subdirectory with another `st_dev`
    /// (a mount point) is then never entered and reported as an error ("mount_point"). Costs
    /// one `fstat` per directory, so only visitors that need it (deletion) ask.
    fn one_file_system(&self) -> bool {
        false
    }

    /// Called once per directory the walk opened (its mirror and references opened too),
    /// before any of its entries.
    fn enter_dir(&self, _dir: &Dir<'_>) {}

    /// Handles one entry that is not a directory.
    fn entry(&self, dir: &Dir<'_>, name: &CStr, kind: Kind);

    /// [`Visitor::entry`] with the entry's inode number from the listing (`d_ino`), which the
    /// walk calls; visitors that can use the number (the repository check) override it.
    fn entry_ino(&self, dir: &Dir<'_>, name: &CStr, kind: Kind, _ino: u64) {
        self.entry(dir, name, kind)
    }

    /// Called once per entered directory after all its entries and all its subdirectories
    /// (their own `leave_dir` included): bottom-up, in the parallel walk too. Not called once
    /// the walk is cancelled.
    fn leave_dir(&self, _dir: &Dir<'_>) {}
}

/// The trees a walk goes through in step: its source, an optional destination it mirrors the
/// source's directories into, and reference trees it only reads (an earlier backup, say); and
/// an optional filter on the names at the root level.
pub struct Roots<'n> {
    /// The source root directory.
    pub src: OwnedFd,
    /// The destination root directory, created by the caller.
    pub dst: Option<OwnedFd>,
    /// The reference trees' roots (None: that tree is absent); see [`Dir::refs`].
    pub refs: Vec<Option<OwnedFd>>,
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

/// A directory being walked. Its subdirectories' nodes hold it until they are done, so that its
/// `leave_dir` can run after theirs; it holds its descriptors until then.
struct Node {
    /// Its source descriptor.
    src: OwnedFd,
    /// Its destination descriptor.
    dst: Option<OwnedFd>,
    /// Its counterparts in the reference trees.
    refs: Vec<Option<OwnedFd>>,
    /// Its path relative to the root.
    rel: Vec<u8>,
    /// Its own task plus each subdirectory not done yet; `leave_dir` runs when this reaches 0.
    pending: AtomicUsize,
    /// The directory it is in (None for the root).
    parent: Option<Arc<Node>>,
    /// The visitor's state for it ([`Dir::state`]).
    state: DirSlot,
}

impl Node {
    /// Runs `f` with this directory as the visitor sees it.
    fn with_dir<R>(&self, f: impl FnOnce(&Dir<'_>) -> R) -> R {
        let refs: Vec<Option<BorrowedFd<'_>>> = self
            .refs
            .iter()
            .map(|r| r.as_ref().map(|fd| fd.as_fd()))
            .collect();
        f(&Dir {
            src: self.src.as_fd(),
            dst: self.dst.as_ref().map(|d| d.as_fd()),
            refs: &refs,
            rel: &self.rel,
            parent: self.parent.as_ref().map(|p| p.src.as_fd()),
            state: &self.state,
        })
    }

    /// Counts one task of `node` done; each directory whose last task this was is left, then
    /// its parent counted, up the tree.
    fn done<V: Visitor>(node: &Arc<Node>, v: &V, sink: &Sink<'_>) {
        let mut cur = Some(node);
        while let Some(n) = cur {
            if n.pending.fetch_sub(1, Ordering::AcqRel) != 1 {
                return;
            }
            if !sink.cancelled() {
                n.with_dir(|d| v.leave_dir(d));
            }
            cur = n.parent.as_ref();
        }
    }
}

/// Destination directories whose final mode must wait until their contents are written.
type Finish = Mutex<Vec<(Vec<u8>, u32)>>;

/// Walks the tree below `roots.src`, in the current rayon pool.
pub fn walk<V: Visitor>(roots: Roots<'_>, v: &V, sink: &Sink<'_>) {
    let finish: Finish = Mutex::new(Vec::new());
    let dst_root = roots.dst.as_ref().map(fsutil::dup).transpose();
    let dst_root = match dst_root {
        Ok(d) => d,
        Err(e) => return sink.io_error(b"", "dup", e),
    };
    let (only, fence) = (roots.only, roots.fence);
    let mut root_dev = None;
    if !fence.skip.is_empty() || v.one_file_system() {
        match fsutil::fstat(&roots.src) {
            Ok(st) if fence.skip.contains(&fsutil::identity(&st)) => return fenced(sink, b""),
            Ok(st) => root_dev = v.one_file_system().then_some(fsutil::identity(&st).0),
            Err(e) => return sink.io_error(b"", "stat directory", e),
        }
    }
    let root = Arc::new(Node {
        src: roots.src,
        dst: roots.dst,
        refs: roots.refs,
        rel: Vec::new(),
        pending: AtomicUsize::new(1),
        parent: None,
        state: OnceLock::new(),
    });
    let limits = Limits { fence, root_dev };
    rayon::scope(|s| visit(s, root, only, &limits, v, sink, &finish));
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

/// What bounds a walk: the caller's fence, and the root's device when the walk stays on it.
struct Limits<'f> {
    /// What the walk never visits.
    fence: &'f Fence,
    /// `st_dev` of the root when subdirectories on other devices are not entered.
    root_dev: Option<u64>,
}

/// Reports a fenced-off directory (the destination met inside the tree).
fn fenced(sink: &Sink<'_>, rel: &[u8]) {
    sink.error("dest_inside", rel, 0, "this directory is the destination itself, reached from inside the tree being copied (a bind mount?); not entered".into());
}

/// Walks one opened directory and spawns its subdirectories.
#[allow(clippy::too_many_arguments)]
fn visit<'s, V: Visitor>(
    s: &rayon::Scope<'s>,
    node: Arc<Node>,
    only: Option<&'s [Vec<u8>]>,
    limits: &'s Limits<'s>,
    v: &'s V,
    sink: &'s Sink<'s>,
    finish: &'s Finish,
) {
    if sink.cancelled() {
        return;
    }
    node.with_dir(|d| v.enter_dir(d));
    let entries = match fsutil::read_entries(node.src.as_fd()) {
        Ok(e) => e,
        Err(e) => {
            sink.io_error(&node.rel, "read directory", e);
            return Node::done(&node, v, sink);
        }
    };
    let locks = if limits.fence.skip_locks {
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
                &join(&node.rel, name.to_bytes()),
                "LMDB lock file; never backed up",
            );
            continue;
        }
        if kind != Kind::Dir {
            files.push(i);
            continue;
        }
        if !v.descend(&node.rel, name) {
            continue;
        }
        let rel = join(&node.rel, name.to_bytes());
        let name = name.to_owned();
        let parent = Arc::clone(&node);
        parent.pending.fetch_add(1, Ordering::AcqRel);
        s.spawn(move |s| {
            let opened = open_child(
                &parent.src,
                parent.dst.as_ref(),
                &name,
                &rel,
                limits,
                sink,
                finish,
            );
            let Some((src, dst)) = opened else {
                return Node::done(&parent, v, sink);
            };
            let refs = parent
                .refs
                .iter()
                .map(|r| {
                    r.as_ref()
                        .and_then(|r| fsutil::open_dir_at(r.as_fd(), &name).ok())
                })
                .collect();
            let child = Node {
                src,
                dst,
                refs,
                rel,
                pending: AtomicUsize::new(1),
                parent: Some(parent),
                state: OnceLock::new(),
            };
            visit(s, Arc::new(child), None, limits, v, sink, finish);
        });
    }
    node.with_dir(|dir| {
        let one = |i: usize| {
            if !sink.cancelled() {
                let (name, kind) = entries.get(i);
                v.entry_ino(dir, name, kind, entries.ino(i));
            }
        };
        if files.len() > CHUNK {
            files
                .par_chunks(CHUNK)
                .for_each(|c| c.iter().copied().for_each(one));
        } else {
            files.into_iter().for_each(one);
        }
    });
    Node::done(&node, v, sink);
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
    limits: &Limits<'_>,
    sink: &Sink<'_>,
    finish: &Finish,
) -> Option<(OwnedFd, Option<OwnedFd>)> {
    let skip = &limits.fence.skip;
    let child = match fsutil::open_dir_at(src.as_fd(), name) {
        Ok(fd) => fd,
        Err(e) => {
            sink.io_error(rel, "open directory", e);
            return None;
        }
    };
    if dst.is_none() && skip.is_empty() && limits.root_dev.is_none() {
        return Some((child, None));
    }
    let st = match fsutil::fstat(&child) {
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
    if limits
        .root_dev
        .is_some_and(|d| d != fsutil::identity(&st).0)
    {
        sink.error(
            "mount_point",
            rel,
            0,
            "another file system is mounted here; not entered".into(),
        );
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
    use crate::progress::{Event, Progress};
    use std::collections::BTreeSet;

    /// Records every entry it sees as "rel/name".
    struct Collect(Mutex<BTreeSet<String>>, Option<&'static str>);

    impl Visitor for Collect {
        fn descend(&self, _rel: &[u8], name: &CStr) -> bool {
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

    /// Walks `roots` with `v` in a pool of `jobs` threads; returns the events.
    fn walk_in_pool<V: Visitor>(jobs: usize, roots: Roots<'_>, v: &V) -> Vec<Event> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(jobs)
            .build()
            .unwrap();
        let p = Progress::new(false, 100);
        let sink = Sink::new(&p, b"");
        pool.install(|| walk(roots, v, &sink));
        p.drain()
    }

    fn run(s: &Scratch, jobs: usize, skip: Option<&'static str>) -> BTreeSet<String> {
        let c = Collect(Mutex::new(BTreeSet::new()), skip);
        let roots = Roots {
            src: fsutil::open_dir(s.root()).unwrap(),
            dst: None,
            refs: Vec::new(),
            only: None,
            fence: Fence::NONE,
        };
        walk_in_pool(jobs, roots, &c);
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
            refs: Vec::new(),
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
            refs: Vec::new(),
            only: Some(&only),
            fence: Fence::NONE,
        };
        walk(roots, &c, &sink);
        let got: Vec<String> = c.0.into_inner().unwrap().into_iter().collect();
        assert_eq!(got, vec!["a/b/c/d/e".to_string(), "top".to_string()]);
    }

    /// Walks `s` mirroring into `s/out` with `fence`; returns what was visited and the events.
    fn run_fenced(s: &Scratch, fence: &Fence, out: &'static str) -> (BTreeSet<String>, Vec<Event>) {
        std::fs::create_dir_all(s.path(out)).unwrap();
        let p = Progress::new(true, 1000);
        let sink = Sink::new(&p, b"");
        let c = Collect(Mutex::new(BTreeSet::new()), Some(out));
        let roots = Roots {
            src: fsutil::open_dir(s.root()).unwrap(),
            dst: Some(fsutil::open_dir(&s.path(out)).unwrap()),
            refs: Vec::new(),
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

    /// Records what the per-directory hooks see: for each file, the reference directory it
    /// was handed (as the descriptor's number and the directory's inode, or None), and the
    /// order in which directories are entered and left.
    #[derive(Default)]
    struct Hooks {
        /// rel of each file -> (fd number, inode) of its directory's reference, if any.
        refs: Mutex<std::collections::BTreeMap<String, Option<(i32, u64)>>>,
        /// rel of each directory, in the order it was entered.
        entered: Mutex<Vec<String>>,
        /// rel of each directory, in the order it was left.
        left: Mutex<Vec<String>>,
    }

    fn rel_str(rel: &[u8]) -> String {
        String::from_utf8(rel.to_vec()).unwrap()
    }

    impl Visitor for Hooks {
        fn enter_dir(&self, dir: &Dir<'_>) {
            self.entered.lock().unwrap().push(rel_str(dir.rel));
        }
        fn entry(&self, dir: &Dir<'_>, name: &CStr, _kind: Kind) {
            use std::os::fd::AsRawFd;
            let r = dir.refs[0].map(|fd| {
                let st = rustix::fs::fstat(fd).unwrap();
                (fd.as_raw_fd(), st.st_ino)
            });
            let path = rel_str(&join(dir.rel, name.to_bytes()));
            self.refs.lock().unwrap().insert(path, r);
        }
        fn leave_dir(&self, dir: &Dir<'_>) {
            self.left.lock().unwrap().push(rel_str(dir.rel));
        }
    }

    fn walk_with_ref(s: &Scratch, jobs: usize) -> Hooks {
        let h = Hooks::default();
        let roots = Roots {
            src: fsutil::open_dir(&s.path("src")).unwrap(),
            dst: None,
            refs: vec![Some(fsutil::open_dir(&s.path("ref")).unwrap())],
            only: None,
            fence: Fence::NONE,
        };
        let events = walk_in_pool(jobs, roots, &h);
        assert!(
            events.is_empty(),
            "a missing reference directory is no error"
        );
        h
    }

    #[test]
    fn reference_directories_are_opened_once_and_handed_to_the_visitor() {
        let s = Scratch::new("walkref");
        for i in 0..50 {
            s.file(&format!("src/a/{i}"), b"x");
            s.file(&format!("ref/a/{i}"), b"y");
        }
        s.file("src/b/c/1", b"x"); // ref has b/ but no b/c/
        s.file("ref/b/other", b"y");
        s.file("src/d/1", b"x"); // ref has a file, not a directory, at d
        s.file("ref/d", b"y");
        s.file("src/e/1", b"x"); // ref has a symlink to a directory at e: never followed
        std::os::unix::fs::symlink(s.path("ref/a"), s.path("ref/e")).unwrap();
        let ino = |p: &str| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(s.path(p)).unwrap().ino()
        };
        for jobs in [1, 4] {
            let h = walk_with_ref(&s, jobs);
            let refs = h.refs.into_inner().unwrap();
            let in_a: BTreeSet<_> = (0..50).map(|i| refs[&format!("a/{i}")]).collect();
            // One descriptor for the whole directory, and it is the reference's own a/.
            assert_eq!(in_a.len(), 1, "jobs {jobs}: {in_a:?}");
            assert_eq!(in_a.into_iter().next().unwrap().unwrap().1, ino("ref/a"));
            assert_eq!(refs["b/c/1"], None);
            assert_eq!(refs["d/1"], None);
            assert_eq!(refs["e/1"], None);
            let mut entered = h.entered.into_inner().unwrap();
            entered.sort();
            assert_eq!(
                entered,
                vec!["", "a", "b", "b/c", "d", "e"],
                "each directory entered once"
            );
        }
    }

    #[test]
    fn directories_are_left_bottom_up_after_all_their_children() {
        let s = Scratch::new("walkleave");
        for i in 0..20 {
            for j in 0..5 {
                s.file(&format!("src/{i}/{j}/f"), b"x");
            }
        }
        std::fs::create_dir(s.path("ref")).unwrap();
        for jobs in [1, 4] {
            let h = walk_with_ref(&s, jobs);
            let left = h.left.into_inner().unwrap();
            assert_eq!(
                left.len(),
                1 + 20 + 100,
                "jobs {jobs}: every directory left once"
            );
            // Each directory is left after every directory below it.
            for (i, d) in left.iter().enumerate() {
                let below = |e: &String| {
                    e.len() > d.len()
                        && (d.is_empty()
                            || e.strip_prefix(d.as_str())
                                .is_some_and(|r| r.starts_with('/')))
                };
                assert!(
                    !left[i..].iter().any(below),
                    "jobs {jobs}: {d:?} left before a subdirectory: {left:?}"
                );
            }
        }
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
                refs: Vec::new(),
                only: None,
                fence: Fence::NONE,
            },
            &c,
            &sink,
        );
        assert!(c.0.into_inner().unwrap().is_empty());
    }
}

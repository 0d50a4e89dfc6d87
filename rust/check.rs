//! Verifying a message area's files against its index: every live message has a regular file
//! of the recorded size, and nothing else sits in the message tree.
//!
//! Algorithm (stat only, no reads):
//! 1. Walk the area; classify each entry (`classify.rs`). A snapshot message gets one `lstat`
//!    relative to its directory descriptor and its size compared with the record.
//! 2. Anything else in the message tree is reported. Only one kind is an error: in a backup, a
//!    file at the path of an ID at or above the index's next ID, because the first message that
//!    gets that ID after a restore would collide with it. Orphans (allocated IDs no record claims)
//!    and other unknown files are warnings. With a fix root, all of them are moved there instead,
//!    keeping their relative path, never deleted, never overwriting (a numeric suffix is added
//!    when the name is taken); in a live store only once unchanged for [`FIX_MIN_AGE_SECS`],
//!    since a delivery in progress looks exactly like an orphan until its record is committed.
//! 3. Live IDs the walk did not meet are looked up by path; absent ones are missing. A message
//!    directory that is a symlink (never followed) or cannot be opened is one error, and each of
//!    its live messages counts as missing.
//!
//! Unrecognized files outside the message tree are warnings and are never moved; an area's
//! known and `copy` files are counted as known.
//!
//! [`check_areas`] runs every area of one call in the caller's rayon pool, one tally per area;
//! an area whose root cannot be opened is that area's error only.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rayon::prelude::*;
use rustix::io::Errno;

use crate::areas::{open_area_root, AreaSpec, AreaState, Sizes, Unseen};
use crate::classify::{Area, Class, Snapshot};
use crate::error::Error;
use crate::fsid::{self, FsId};
use crate::fsutil::{self, join, Kind};
use crate::progress::{Progress, Sink, Tally};
use crate::testpause::{self, Pause};
use crate::walk::{self, Dir, Fence, Roots, Visitor};

/// How long an unknown file in a live store's message tree must be unchanged before `--fix`
/// moves it: writers commit a record milliseconds after placing its file, so a quarter of an
/// hour leaves a wide margin even on an overloaded server.
pub const FIX_MIN_AGE_SECS: i64 = 15 * 60;

/// Longest entry path [`AreaCheck`] builds on the stack (longer ones are allocated).
const REL_ON_STACK: usize = 256;

/// One area of a check call.
pub struct CheckJob {
    /// The area.
    pub spec: AreaSpec,
    /// Where --fix moves this area's unrecognized files, below the fix root.
    pub fix_rel: Vec<u8>,
}

/// What every area of a check call shares.
#[derive(Default)]
pub struct CheckOptions {
    /// A store in use (files above the next ID are new; --fix waits for files to settle).
    pub live: bool,
    /// The trusted directory each area's `src` is relative to (the store's `data/`).
    pub anchor: Option<OwnedFd>,
    /// With --fix: the directory unrecognized files move below.
    pub fix_root: Option<OwnedFd>,
    /// With --fix: the identity each move is made with (see `fsid.rs`).
    pub fix_owner: Option<FsId>,
}

/// Checks every area in the current rayon pool, areas and their directories interleaved; one
/// tally per area, in order. An area whose root cannot be opened is an error event of that area.
pub fn check_areas(jobs: &[CheckJob], opts: &CheckOptions, progress: &Progress) -> Vec<Tally> {
    check_areas_with(jobs, opts, progress, None)
}

/// Makes the [`FileStat`] of area number `i` of a call.
pub type HookFactory<'h> = dyn Fn(usize, &CheckJob) -> Box<dyn FileStat + 'h> + Sync + 'h;

/// [`check_areas`], each area's live files stat'ed by the hook `hooks` makes for it (None: a
/// plain `lstat`).
pub fn check_areas_with(
    jobs: &[CheckJob],
    opts: &CheckOptions,
    progress: &Progress,
    hooks: Option<&HookFactory<'_>>,
) -> Vec<Tally> {
    jobs.par_iter()
        .enumerate()
        .map(|(i, job)| {
            let a = &job.spec;
            let sink = Sink::new(progress, &a.prefix);
            // --fix asked for and impossible (no descriptor left) is an error, never a silent
            // skip: the user would believe the strays were moved.
            let fix = opts.fix_root.as_ref().and_then(|r| match fsutil::dup(r) {
                Ok(root) => Some(FixTarget {
                    root,
                    rel: job.fix_rel.clone(),
                    owner: opts.fix_owner.clone(),
                }),
                Err(e) => {
                    sink.io_error(b"", "--fix: open data/ again (nothing moved here)", e);
                    None
                }
            });
            if let Some(root) = open_area_root(opts.anchor.as_ref(), &a.src, &sink) {
                let hook = hooks.map(|make| make(i, job));
                let check = AreaCheck::new(&a.area, &a.snap, &a.sizes, fix, opts.live, &sink);
                match &hook {
                    Some(h) => check.with_hook(h.as_ref()).run(root),
                    None => check.run(root),
                }
            }
            sink.tally
        })
        .collect()
}

/// What kind of unknown file step 2 met.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unknown {
    /// At the path of an ID at or above the next ID, in a backup.
    Collides,
    /// At the path of an allocated ID that no record claims.
    Orphan,
    /// Anything else in the message tree.
    Other,
}

/// Where `--fix` moves unrecognized files: a directory and the path below it for this area.
pub struct FixTarget {
    /// The directory the relative path starts from (the store's `data/`).
    pub root: OwnedFd,
    /// Path below `root` that mirrors the area root, e.g. `moved/accounts/alice`.
    pub rel: Vec<u8>,
    /// The store owner's identity, taken around each move (see `fsid.rs`): the kernel then
    /// refuses what that user could not do, and the directories created are theirs.
    pub owner: Option<FsId>,
}

/// What a caller may put in place of the `lstat` that checks a live message's file: the
/// repository check (`checkrepo.rs`) answers from what it already knows of the file's inode
/// (one `stat` or read per inode, not per snapshot) and reads the files it was asked to.
/// Reporting (missing, not regular, size) stays here, the same for both.
pub trait FileStat: Sync {
    /// Called for every directory the walk enters, before its entries.
    fn enter_dir(&self, _dir: &Dir<'_>, _sink: &Sink<'_>) {}
    /// Called once a directory's entries and subdirectories are done.
    fn leave_dir(&self, _dir: &Dir<'_>) {}
    /// The kind and size of live message `id`'s file `name` in `dir` (at `rel` below the area
    /// root; `size`: its recorded size). `listed`: the walk's directory and the file's inode
    /// number from its listing (None: looked up by path after the walk). Problems other than
    /// these three go to `sink`.
    #[allow(clippy::too_many_arguments)]
    fn stat(
        &self,
        dir: BorrowedFd<'_>,
        listed: Option<(&Dir<'_>, u64)>,
        name: &CStr,
        rel: &[u8],
        id: u64,
        size: Option<u64>,
        sink: &Sink<'_>,
    ) -> Result<(Kind, u64), Errno>;
}

/// Checks one area (see the module doc).
pub struct AreaCheck<'a> {
    /// The area, the index's IDs and sizes, and which live IDs the walk met.
    state: AreaState<'a>,
    /// Where unrecognized files go, with --fix.
    fix: Option<FixTarget>,
    /// Whether the tree is a live store (writers may be adding files) rather than a backup.
    live: bool,
    /// Where counts and events go.
    sink: &'a Sink<'a>,
    /// Test-only pause point [`testpause::MID_CHECK`], inert unless a test armed it.
    pause: Pause,
    /// What stats each live message's file, when not a plain `lstat`.
    hook: Option<&'a dyn FileStat>,
}

impl<'a> AreaCheck<'a> {
    /// A check of `area` against `snap` and `sizes`; `live` for a store in use.
    pub fn new(
        area: &'a Area,
        snap: &'a Snapshot,
        sizes: &'a Sizes,
        fix: Option<FixTarget>,
        live: bool,
        sink: &'a Sink<'a>,
    ) -> Self {
        AreaCheck {
            state: AreaState::new(area, snap, sizes),
            fix,
            live,
            sink,
            pause: Pause::from_env(testpause::MID_CHECK),
            hook: None,
        }
    }

    /// The same check with `hook` in place of the `lstat` of each live message's file.
    pub fn with_hook(mut self, hook: &'a dyn FileStat) -> Self {
        self.hook = Some(hook);
        self
    }

    /// Runs steps 1 to 3.
    pub fn run(&self, root: OwnedFd) {
        let root2 = match fsutil::dup(&root) {
            Ok(fd) => fd,
            Err(e) => return self.sink.io_error(b"", "dup", e),
        };
        walk::walk(
            Roots {
                src: root,
                dst: None,
                refs: Vec::new(),
                only: None,
                fence: Fence::NONE,
            },
            self,
            self.sink,
        );
        if !self.sink.cancelled() {
            // Step 3.
            self.state.visit_unseen(
                self.sink,
                &UnseenCheck {
                    check: self,
                    root: root2.as_fd(),
                },
            );
        }
    }

    /// Compares one live message's file with its record.
    fn check_file(
        &self,
        dir: BorrowedFd<'_>,
        listed: Option<(&Dir<'_>, u64)>,
        name: &CStr,
        rel: &[u8],
        index: usize,
    ) {
        Tally::bump(&self.sink.tally.checked);
        self.sink.progress.add_done(1);
        self.pause.tick();
        let id = self.state.id(index);
        let got = match self.hook {
            Some(h) => h.stat(
                dir,
                listed,
                name,
                rel,
                id,
                self.state.sizes.get(index),
                self.sink,
            ),
            None => fsutil::lstat_at(dir, name)
                .map(|st| (Kind::from_mode(st.st_mode), st.st_size as u64)),
        };
        let (kind, size) = match got {
            Ok(st) => st,
            Err(Errno::NOENT) => {
                Tally::bump(&self.sink.tally.missing);
                return self.sink.error(
                    "missing",
                    rel,
                    Errno::NOENT.raw_os_error(),
                    format!("message {id} has no file"),
                );
            }
            Err(e) => return self.sink.io_error(rel, "stat", e),
        };
        if kind != Kind::File {
            Tally::bump(&self.sink.tally.damaged);
            return self.sink.error(
                "not_regular",
                rel,
                0,
                "message file is not a regular file".into(),
            );
        }
        if let Some(want) = self.state.sizes.get(index) {
            if size != want {
                Tally::bump(&self.sink.tally.damaged);
                self.sink.error(
                    "size_mismatch",
                    rel,
                    0,
                    format!("file has {} bytes, its record says {}", size, want),
                );
            }
        }
    }

    /// Step 2 for one unknown file in the message tree: reported, or moved aside with --fix.
    fn unknown(&self, dir: &Dir<'_>, name: &CStr, rel: &[u8], what: Unknown) {
        let t = &self.sink.tally;
        Tally::bump(if what == Unknown::Orphan {
            &t.orphans
        } else {
            &t.unrecognized
        });
        let Some(fix) = &self.fix else {
            return match what {
                Unknown::Collides => self.sink.error("unrecognized_message", rel, 0, "no record claims this message file and its ID is not allocated yet: a future message would collide with it; move it with verify --fix".into()),
                Unknown::Orphan => self.sink.warn("orphan_message", rel, 0, "no record claims this message file: a delivery in progress, or one a crash interrupted (its ID is allocated, so nothing will collide with it); move it with verify --fix".into()),
                Unknown::Other => self.sink.warn("unrecognized", rel, 0, "unrecognized file in a message directory; move it with verify --fix".into()),
            };
        };
        if self.live && !unchanged_for(dir.src, name, FIX_MIN_AGE_SECS) {
            return self.sink.warn("not_moved", rel, 0, format!("unrecognized file changed in the last {} minutes (it may be a delivery in progress); not moved", FIX_MIN_AGE_SECS / 60));
        }
        match move_aside(fix, dir, name) {
            Ok(to) => {
                Tally::bump(&t.moved);
                self.sink.warn(
                    "moved",
                    rel,
                    0,
                    format!(
                        "unrecognized file moved to {}",
                        String::from_utf8_lossy(&to)
                    ),
                );
            }
            Err(e) => self.sink.fs_error(rel, &e),
        }
    }
}

/// Step 3: the live IDs the walk did not meet, looked up by path below the area root.
struct UnseenCheck<'c, 'a> {
    /// The check they belong to.
    check: &'c AreaCheck<'a>,
    /// The area root.
    root: BorrowedFd<'c>,
}

impl Unseen for UnseenCheck<'_, '_> {
    type Dir = OwnedFd;

    fn open(&self, dir_rel: &[u8]) -> Result<OwnedFd, Errno> {
        fsutil::open_dir_below(self.root, dir_rel)
    }

    fn unusable(&self, dir_rel: &[u8], e: Errno, n: u64) {
        // One error for an unusable message directory (a symlink is never followed), its
        // messages counted missing, instead of one per message.
        let sink = self.check.sink;
        sink.tally
            .checked
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        sink.unusable_message_dir(dir_rel, e, n, "open", "count as missing");
    }

    fn file(&self, dir: &OwnedFd, name: &CStr, rel: &[u8], i: usize) {
        self.check.check_file(dir.as_fd(), None, name, rel, i);
    }

    fn absent(&self, rel: &[u8], i: usize) {
        let sink = self.check.sink;
        Tally::bump(&sink.tally.checked);
        Tally::bump(&sink.tally.missing);
        sink.progress.add_done(1);
        let id = self.check.state.id(i);
        sink.error(
            "missing",
            rel,
            Errno::NOENT.raw_os_error(),
            format!("message {id} has no file"),
        );
    }
}

/// Whether `name` in `dir` has not been modified (or renamed: ctime) for `secs` seconds.
fn unchanged_for(dir: BorrowedFd<'_>, name: &CStr, secs: i64) -> bool {
    let Ok(st) = fsutil::lstat_at(dir, name) else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    now - st.st_mtime.max(st.st_ctime) >= secs
}

/// Moves `name` of `dir` to the same relative place below the fix target, as the store's owner
/// when one is given; returns where it went.
fn move_aside(fix: &FixTarget, dir: &Dir<'_>, name: &CStr) -> Result<Vec<u8>, Error> {
    let Some(owner) = &fix.owner else {
        return move_aside_as_is(fix, dir, name);
    };
    let old = fsid::switch(owner).map_err(Error::op("take the store owner's identity"))?;
    let moved = move_aside_as_is(fix, dir, name);
    // Going back to root's identity cannot be refused (the capabilities it needs are not
    // file-system ones); if it ever were, this worker must not go on with a mixed identity.
    fsid::switch(&old).expect("restore the file-system identity");
    moved
}

/// [`move_aside`] with the thread's current identity.
fn move_aside_as_is(fix: &FixTarget, dir: &Dir<'_>, name: &CStr) -> Result<Vec<u8>, Error> {
    let target_rel = join(&fix.rel, dir.rel);
    let mut cur = fsutil::dup(&fix.root).map_err(Error::op("dup"))?;
    for comp in target_rel.split(|&c| c == b'/').filter(|c| !c.is_empty()) {
        let c = CString::new(comp).map_err(|_| Error::new("create directory", Errno::INVAL))?;
        cur = fsutil::make_dir_at(cur.as_fd(), &c, fsutil::NEW_DIR_MODE, None)
            .map_err(Error::op("create directory"))?;
    }
    for n in 0..100u32 {
        let mut to = name.to_bytes().to_vec();
        if n > 0 {
            to.extend_from_slice(format!(".{n}").as_bytes());
        }
        let to_c = CString::new(to.clone()).expect("no NUL in a file name");
        match fsutil::rename_noreplace_at(dir.src, name, cur.as_fd(), &to_c) {
            Ok(()) => return Ok(join(&target_rel, &to)),
            Err(Errno::EXIST) => continue,
            Err(e) => return Err(Error::new("move", e)),
        }
    }
    Err(Error::new("move", Errno::EXIST))
}

impl Visitor for AreaCheck<'_> {
    fn enter_dir(&self, dir: &Dir<'_>) {
        if let Some(h) = self.hook {
            h.enter_dir(dir, self.sink);
        }
    }

    fn leave_dir(&self, dir: &Dir<'_>) {
        if let Some(h) = self.hook {
            h.leave_dir(dir);
        }
    }

    fn entry(&self, dir: &Dir<'_>, name: &CStr, kind: Kind) {
        self.entry_at(dir, name, kind, None)
    }

    fn entry_ino(&self, dir: &Dir<'_>, name: &CStr, kind: Kind, ino: u64) {
        self.entry_at(dir, name, kind, Some(ino))
    }
}

impl AreaCheck<'_> {
    /// One entry the walk met (`ino`: its inode number from the listing, when known).
    fn entry_at(&self, dir: &Dir<'_>, name: &CStr, kind: Kind, ino: Option<u64>) {
        // The entry's path, on the stack when short (every message path is): no allocation
        // per file.
        let (mut stack, heap);
        let name_b = name.to_bytes();
        let len = dir.rel.len() + usize::from(!dir.rel.is_empty()) + name_b.len();
        let rel: &[u8] = if len <= REL_ON_STACK {
            stack = [0u8; REL_ON_STACK];
            let mut n = dir.rel.len();
            stack[..n].copy_from_slice(dir.rel);
            if n > 0 {
                stack[n] = b'/';
                n += 1;
            }
            stack[n..len].copy_from_slice(name_b);
            &stack[..len]
        } else {
            heap = join(dir.rel, name_b);
            &heap
        };
        let t = &self.sink.tally;
        match self
            .state
            .area
            .classify(self.state.snap, dir.rel, name.to_bytes())
        {
            Class::Message(i) => {
                self.state.seen.mark(i);
                self.check_file(dir.src, ino.map(|n| (dir, n)), name, rel, i);
            }
            Class::New if self.live => Tally::bump(&t.skipped_new),
            Class::New if kind == Kind::File => self.unknown(dir, name, rel, Unknown::Collides),
            Class::Orphan if kind == Kind::File => self.unknown(dir, name, rel, Unknown::Orphan),
            Class::Erasing => Tally::bump(&t.skipped_erasing),
            Class::Known | Class::Copy => Tally::bump(&t.known),
            Class::StrayInTree | Class::New | Class::Orphan => {
                self.unknown(dir, name, rel, Unknown::Other)
            }
            Class::Stray => {
                let what = if kind == Kind::Symlink {
                    "symlink"
                } else {
                    "file"
                };
                self.sink.warn(
                    "unrecognized",
                    rel,
                    0,
                    format!("unrecognized {what} outside the message directories"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::testutil::Scratch;
    use crate::ids::IdSet;
    use crate::progress::Progress;

    fn tally(t: &Tally) -> std::collections::HashMap<&'static str, u64> {
        t.to_pairs().into_iter().collect()
    }

    /// Live 1, 2, 5 (5 has no file, 2 the wrong size), 3 being erased, next ID 70: 20 is an
    /// orphan, 77 would collide with a future message, notes.txt is unknown, readme is outside.
    fn setup(s: &Scratch) -> (Area, Snapshot, Sizes) {
        s.file("acc/msg/a/1", b"12345");
        s.file("acc/msg/a/2", b"123");
        s.file("acc/msg/a/20", b"orphan");
        s.file("acc/msg/a/77", b"stray");
        s.file("acc/msg/a/3", b"erasing");
        s.file("acc/readme", b"x");
        s.file("acc/msg/a/notes.txt", b"x");
        let area = Area {
            tree: b"msg".to_vec(),
            known: vec![],
            ..Default::default()
        };
        let snap = Snapshot {
            live: IdSet::new(vec![1, 2, 5]),
            erasing: IdSet::new(vec![3]),
            next_id: 70,
        };
        (
            area,
            snap,
            [Some(5), Some(4), Some(9)].into_iter().collect(),
        )
    }

    fn codes(p: &Progress) -> Vec<(&'static str, String)> {
        let mut c: Vec<_> = p
            .drain()
            .into_iter()
            .map(|e| (e.code, String::from_utf8(e.path).unwrap()))
            .collect();
        c.sort();
        c
    }

    #[test]
    fn paths_longer_than_the_stack_buffer_are_reported_whole() {
        let s = Scratch::new("check-long");
        let (area, snap, sizes) = setup(&s);
        // Directory and name together beyond REL_ON_STACK, and one just within it.
        let long = "n".repeat(250);
        let fits = "f".repeat(REL_ON_STACK - "msg/a/".len());
        s.file(&format!("acc/msg/a/{long}"), b"x");
        s.file(&format!("acc/msg/a/{fits}"), b"x");
        let p = Progress::new(false, 100);
        let sink = Sink::new(&p, b"data/accounts/x");
        AreaCheck::new(&area, &snap, &sizes, None, false, &sink)
            .run(fsutil::open_dir(&s.path("acc")).unwrap());
        let c = codes(&p);
        for n in [&long, &fits] {
            let want = ("unrecognized", format!("data/accounts/x/msg/a/{n}"));
            assert!(c.contains(&want), "{c:?}");
        }
    }

    #[test]
    fn backup_check_finds_missing_size_mismatch_collisions_and_orphans() {
        let s = Scratch::new("check");
        let (area, snap, sizes) = setup(&s);
        let p = Progress::new(false, 100);
        let sink = Sink::new(&p, b"data/accounts/x");
        AreaCheck::new(&area, &snap, &sizes, None, false, &sink)
            .run(fsutil::open_dir(&s.path("acc")).unwrap());
        let t = tally(&sink.tally);
        assert_eq!(
            (
                t["checked"],
                t["missing"],
                t["damaged"],
                t["unrecognized"],
                t["orphans"],
                t["warnings"],
                t["errors"]
            ),
            (3, 1, 1, 2, 1, 3, 3)
        );
        let x = |p: &str| format!("data/accounts/x/{p}");
        assert_eq!(
            codes(&p),
            vec![
                ("missing", x("msg/a/5")),
                ("orphan_message", x("msg/a/20")),
                ("size_mismatch", x("msg/a/2")),
                ("unrecognized", x("msg/a/notes.txt")),
                ("unrecognized", x("readme")),
                ("unrecognized_message", x("msg/a/77")),
            ]
        );
        assert!(
            s.path("acc/msg/a/77").exists(),
            "verify without --fix writes nothing"
        );
    }

    #[test]
    fn check_areas_runs_every_area_in_order_below_the_anchor() {
        // Two areas of one call: the first is the setup's account (moved strays go below its
        // fix_rel), the second does not exist, which is that area's error and nothing more.
        let s = Scratch::new("checkareas");
        let (area, snap, sizes) = setup(&s);
        std::fs::create_dir(s.path("fix")).unwrap();
        let spec = |src: &str, prefix: &[u8]| AreaSpec {
            src: src.into(),
            area: area.clone(),
            snap: snap.clone(),
            sizes: sizes.clone(),
            prefix: prefix.to_vec(),
            proven: Vec::new(),
            sealed: false,
        };
        let jobs = [
            CheckJob {
                spec: spec("acc", b"data/accounts/x"),
                fix_rel: b"moved/x".to_vec(),
            },
            CheckJob {
                spec: spec("gone", b"data/accounts/y"),
                fix_rel: b"moved/y".to_vec(),
            },
        ];
        let opts = CheckOptions {
            anchor: Some(fsutil::open_dir(s.root()).unwrap()),
            fix_root: Some(fsutil::open_dir(&s.path("fix")).unwrap()),
            ..CheckOptions::default()
        };
        let p = Progress::new(false, 100);
        let tallies = check_areas(&jobs, &opts, &p);
        let (x, y) = (tally(&tallies[0]), tally(&tallies[1]));
        assert_eq!((x["checked"], x["missing"], x["moved"]), (3, 1, 3));
        assert_eq!((y["checked"], y["errors"]), (0, 1));
        assert!(s.path("fix/moved/x/msg/a/77").exists());
        assert!(!s.path("acc/msg/a/77").exists());
        let errors: Vec<_> = codes(&p)
            .into_iter()
            .filter(|(_, path)| path.starts_with("data/accounts/y"))
            .collect();
        assert_eq!(errors, vec![("io", "data/accounts/y/".to_string())]);
    }

    #[test]
    fn the_largest_recorded_size_is_compared_like_any_other() {
        // u64::MAX once meant "unknown" and switched the check off.
        let s = Scratch::new("checkmax");
        s.file("acc/msg/a/1", b"12345");
        s.file("acc/msg/a/2", b"12345");
        let area = Area {
            tree: b"msg".to_vec(),
            known: vec![],
            ..Default::default()
        };
        let snap = Snapshot {
            live: IdSet::new(vec![1, 2]),
            erasing: IdSet::default(),
            next_id: 3,
        };
        let p = Progress::new(false, 100);
        let sink = Sink::new(&p, b"");
        AreaCheck::new(
            &area,
            &snap,
            &[Some(u64::MAX), None].into_iter().collect(),
            None,
            false,
            &sink,
        )
        .run(fsutil::open_dir(&s.path("acc")).unwrap());
        assert_eq!(codes(&p), vec![("size_mismatch", "msg/a/1".to_string())]);
    }

    #[test]
    fn live_store_files_above_the_next_id_are_new() {
        let s = Scratch::new("checklive");
        let (area, snap, sizes) = setup(&s);
        let p = Progress::new(false, 100);
        let sink = Sink::new(&p, b"");
        AreaCheck::new(&area, &snap, &sizes, None, true, &sink)
            .run(fsutil::open_dir(&s.path("acc")).unwrap());
        let t = tally(&sink.tally);
        assert_eq!((t["skipped_new"], t["errors"]), (1, 2));
        assert!(!codes(&p).iter().any(|(c, _)| *c == "unrecognized_message"));
    }

    #[test]
    fn fix_moves_strays_and_never_overwrites() {
        let s = Scratch::new("fix");
        let (area, snap, sizes) = setup(&s);
        s.file("data/moved/accounts/x/msg/a/77", b"earlier");
        let p = Progress::new(false, 100);
        let sink = Sink::new(&p, b"");
        let fix = FixTarget {
            root: fsutil::open_dir(&s.path("data")).unwrap(),
            rel: b"moved/accounts/x".to_vec(),
            owner: None,
        };
        AreaCheck::new(&area, &snap, &sizes, Some(fix), false, &sink)
            .run(fsutil::open_dir(&s.path("acc")).unwrap());
        assert_eq!(tally(&sink.tally)["moved"], 3);
        assert!(!s.path("acc/msg/a/77").exists() && !s.path("acc/msg/a/20").exists());
        assert_eq!(
            std::fs::read(s.path("data/moved/accounts/x/msg/a/77")).unwrap(),
            b"earlier"
        );
        assert_eq!(
            std::fs::read(s.path("data/moved/accounts/x/msg/a/77.1")).unwrap(),
            b"stray"
        );
        assert!(
            s.path("acc/readme").exists(),
            "files outside the message tree are never moved"
        );
    }

    #[test]
    fn fix_as_the_owner_creates_their_directories_and_cannot_exceed_their_rights() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        if !fsutil::is_root() {
            return; // only root has another identity to take; the non-root path is the one above
        }
        let s = Scratch::new("fixowner");
        let (area, snap, sizes) = setup(&s);
        std::fs::create_dir(s.path("data")).unwrap();
        std::fs::set_permissions(s.path("data"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let nobody = FsId {
            uid: 65534,
            gid: 65534,
            groups: vec![],
        };
        let run = |rel: &[u8]| {
            let p = Progress::new(false, 100);
            let sink = Sink::new(&p, b"");
            let fix = FixTarget {
                root: fsutil::open_dir(&s.path("data")).unwrap(),
                rel: rel.to_vec(),
                owner: Some(nobody.clone()),
            };
            AreaCheck::new(&area, &snap, &sizes, Some(fix), false, &sink)
                .run(fsutil::open_dir(&s.path("acc")).unwrap());
            let t = tally(&sink.tally);
            (t["moved"], t["errors"])
        };
        // data/ belongs to root: the owner may not create moved/ there, so neither may the fix.
        assert_eq!(run(b"moved"), (0, 5));
        assert!(!s.path("data/moved").exists());
        // Once it is theirs, the fix works and what it creates is theirs.
        std::os::unix::fs::chown(s.path("data"), Some(65534), Some(65534)).unwrap();
        std::os::unix::fs::chown(s.path("acc/msg/a"), Some(65534), Some(65534)).unwrap();
        assert_eq!(run(b"moved").0, 3);
        assert!(!s.path("acc/msg/a/77").exists());
        let st = std::fs::metadata(s.path("data/moved/msg/a")).unwrap();
        assert_eq!((st.uid(), st.gid()), (65534, 65534));
        assert_eq!(
            fsid::current().unwrap().uid,
            0,
            "the test thread is root again"
        );
    }

    #[test]
    fn fix_in_a_live_store_leaves_recent_files_alone() {
        let s = Scratch::new("fixlive");
        let (area, snap, sizes) = setup(&s);
        let p = Progress::new(false, 100);
        let sink = Sink::new(&p, b"");
        std::fs::create_dir(s.path("data")).unwrap();
        let fix = FixTarget {
            root: fsutil::open_dir(&s.path("data")).unwrap(),
            rel: b"moved".to_vec(),
            owner: None,
        };
        AreaCheck::new(&area, &snap, &sizes, Some(fix), true, &sink)
            .run(fsutil::open_dir(&s.path("acc")).unwrap());
        assert_eq!(tally(&sink.tally)["moved"], 0);
        assert!(s.path("acc/msg/a/20").exists());
        assert!(codes(&p)
            .iter()
            .any(|(c, r)| *c == "not_moved" && r == "msg/a/20"));
    }
    #[test]
    fn a_symlinked_message_directory_is_one_error_and_its_messages_are_missing() {
        let s = Scratch::new("checksymdir");
        s.file("elsewhere/1", b"1");
        s.file("elsewhere/2", b"22");
        std::fs::create_dir_all(s.path("acc/msg")).unwrap();
        std::os::unix::fs::symlink(s.path("elsewhere"), s.path("acc/msg/a")).unwrap();
        let area = Area {
            tree: b"msg".to_vec(),
            known: vec![],
            ..Default::default()
        };
        let snap = Snapshot {
            live: IdSet::new(vec![1, 2]),
            erasing: IdSet::default(),
            next_id: 3,
        };
        let sizes: Sizes = [Some(1u64), Some(2)].into_iter().collect();
        let p = Progress::new(false, 100);
        let sink = Sink::new(&p, b"");
        AreaCheck::new(&area, &snap, &sizes, None, false, &sink)
            .run(fsutil::open_dir(&s.path("acc")).unwrap());
        let t = tally(&sink.tally);
        assert_eq!((t["missing"], t["errors"], t["checked"]), (2, 1, 2));
        assert_eq!(p.position().0, 2);
        let c = codes(&p);
        assert!(c.contains(&("message_dir", "msg/a".to_string())), "{c:?}");
    }
}

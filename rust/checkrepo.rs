//! `mailbak check REPO`: every snapshot of a repository verified, each piece of shared work done
//! once. In a repository an unchanged message is one inode shared by every snapshot, so a check
//! that stat'ed (or read) every snapshot's files would do the same work 30 times over.
//!
//! Algorithm (one [`RepoCheck`] per run; Python calls [`RepoCheck::check_snapshot`] once per
//! snapshot, trusted snapshots newest first, then the others):
//! 1. Each snapshot's areas are walked as `verify` walks them (`check.rs`: unknown files, missing
//!    files, sizes), but the file of each live message is looked up by the inode number its
//!    directory listing gives (`getdents`' `d_ino`, one `fstat` per directory for the device):
//!    an inode met before (in this or an earlier snapshot) is answered from the run's inode map
//!    without a system call; a new one is `lstat`ed, or opened, `fstat`ed and read once.
//! 2. With `read_data`, a new inode of a trusted snapshot (manifest `ok` with `digests`) that the
//!    subset selects is hashed (SHA-256) and compared with the digest its snapshot's shard file
//!    records. Shard files are read lazily, once per message directory and snapshot, only when
//!    a file in it needs its digest. A later snapshot meeting an inode that was hashed without a
//!    digest to compare (`-` entry, damaged or missing shard) compares the hash then.
//! 3. The subset (restic's `--read-data-subset`): `N/M` takes the inodes whose content key (the
//!    recorded digest's first 8 bytes; for an entry without one, a hash of its area and ID) is
//!    `N-1` modulo `M`, so that M runs over an unchanged repository read every inode exactly
//!    once; a fraction takes each inode with that probability (keyed by a per-run seed); a byte
//!    budget takes each with the probability 2 x budget / bytes of the first snapshot and stops
//!    reading once the budget is spent.
//! 4. A mismatch (or an unreadable file, EIO) becomes a [`Damage`] record naming the inode and
//!    every snapshot met holding it; Python reports each once, with every snapshot.
//!
//! The run's memory is the inode map: (device, inode) to size and state, in blocks of
//! [`BLOCK`] consecutive inode numbers (88 bytes a block: about 13 bytes per distinct inode
//! where, as usual, a file system numbers files created together closely, at most 88), plus the
//! first 8 bytes of the hash of the few hashed without a digest to compare; nothing per
//! snapshot file is kept. Blocks also keep a directory's lookups on a few cache lines: one
//! block per file (a plain hash map) cost a cache miss per lookup, most of a lookup's time.
//!
//! Not guaranteed: a digest file is only read where a file needs it, so a damaged shard file
//! whose every message was verified through another snapshot's shard is not reported; inodes
//! that only untrusted snapshots (failed, incomplete, no digests) hold are checked by size only.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::hash::{BuildHasherDefault, Hasher};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rayon::prelude::*;
use rustix::io::Errno;

use crate::check::{self, CheckJob, CheckOptions, FileStat};
use crate::digests::{self, Digest, Entry, How};
use crate::fsutil::{self, Kind};
use crate::progress::{Progress, Sink, Tally};
use crate::walk::Dir;

/// Number of independently locked parts of the inode map (workers rarely wait on each other).
const MAP_PARTS: usize = 64;

/// Mixed into a key to pick its part of the map.
const PART_SALT: u64 = 0x9e37_79b9_7f4a_7c15;

/// One part of the inode map, alone on its cache lines: the two workers lock different parts
/// without pulling one line back and forth.
#[derive(Default)]
#[repr(align(128))]
struct Part(Mutex<InodeMap>);

/// (st_dev, st_ino / [`BLOCK`]) -> that block.
type InodeMap = HashMap<(u64, u64), Block, BuildHasherDefault<KeyHasher>>;

/// The inode map's hasher: [`mix`] of the two numbers. Inode numbers are the repository file
/// system's, not chosen by anyone hostile, so SipHash's resistance to chosen keys buys nothing
/// here, and it cost a fifth of a lookup (perf, check of 30 snapshots).
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        mix(self.0)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = self.0.rotate_left(32) ^ n;
    }
}

/// Which inodes a `--read-data` run reads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Subset {
    /// Every inode.
    All,
    /// Part `n` (1-based) of `m`, by content key.
    Part {
        /// Which part.
        n: u64,
        /// Of how many.
        m: u64,
    },
    /// Each inode with this probability.
    Fraction(f64),
    /// Inodes at random until this many bytes are read.
    Budget(u64),
}

/// What the run knows of one inode's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Stat'ed only (sizes): not selected, not read.
    Sized,
    /// Read; its bytes have the recorded digest.
    Good,
    /// Read; its bytes differ from the recorded digest, or it could not be read.
    Damaged,
    /// Read; no digest recorded for it (`-`): hashed, nothing to compare.
    Unrecorded,
    /// Read; its digest file is damaged or has no entry for it: nothing trusted to compare.
    Unverified,
}

/// Consecutive inode numbers per block of the inode map.
const BLOCK: u64 = 8;

/// [`BLOCK`] consecutive inodes of the map: each one's size and state (0: not met, else
/// `State as u8 + 1`).
#[derive(Clone, Copy, Default)]
struct Block {
    /// Sizes, by inode number modulo [`BLOCK`].
    sizes: [u64; BLOCK as usize],
    /// States, likewise.
    states: [u8; BLOCK as usize],
}

impl State {
    /// The state of a block's state byte (None: not met).
    fn of_byte(b: u8) -> Option<State> {
        Some(match b {
            1 => State::Sized,
            2 => State::Good,
            3 => State::Damaged,
            4 => State::Unrecorded,
            5 => State::Unverified,
            _ => return None,
        })
    }
}

/// One inode of the map, as looked up.
#[derive(Clone, Copy, Debug)]
struct Inode {
    /// Its size when met.
    size: u64,
    /// What is known of its content.
    state: State,
}

/// A damaged inode: what repair needs, and every snapshot found holding it.
#[derive(Clone, Debug)]
pub struct Damage {
    /// The area's path below `data/` (`queue`, `accounts/alice`), empty for a non-message file.
    pub area: Vec<u8>,
    /// The message ID (None: a non-message file).
    pub id: Option<u64>,
    /// Its path below the snapshot root.
    pub rel: Vec<u8>,
    /// Its recorded size.
    pub size: u64,
    /// The recorded digest (None: the file could not be read and had no digest recorded).
    pub digest: Option<Digest>,
    /// `digest_mismatch` or `unreadable`.
    pub cause: &'static str,
    /// What was found, in words.
    pub detail: String,
    /// (st_dev, st_ino).
    pub inode: (u64, u64),
    /// The snapshots holding it, in the order they were checked.
    pub snapshots: Vec<String>,
}

/// Run-wide counts.
#[derive(Default)]
struct Counts {
    /// Distinct inodes met.
    inodes: AtomicU64,
    /// Distinct inodes read and hashed.
    read: AtomicU64,
    /// Bytes read to hash them.
    bytes: AtomicU64,
    /// Files answered from the inode map (met in an earlier snapshot or place).
    shared: AtomicU64,
}

/// Parsed shard files: (st_dev, st_ino) -> (the snapshot that last used it, its entries).
type ShardCache = HashMap<(u64, u64), (u64, Arc<Shard>)>;

/// Damaged inodes in the order found, and each one's place in that list by (dev, ino).
type DamageList = (Vec<Damage>, HashMap<(u64, u64), usize>);

/// One run of `check` over a repository (see the module doc).
pub struct RepoCheck {
    /// Whether data is read at all.
    read_data: bool,
    /// Which inodes are read.
    subset: Subset,
    /// Seed of the random subsets.
    seed: u64,
    /// The probability of [`Subset::Budget`], fixed by the first snapshot (f64 bits).
    budget_p: OnceLock<f64>,
    /// Bytes of the budget not yet spent.
    budget_left: AtomicI64,
    /// (dev, ino) -> what is known, in blocks, in parts: the map is the run's memory.
    map: Vec<Part>,
    /// The first 8 bytes of the SHA-256 of inodes hashed with nothing to compare it with
    /// (unrecorded, unverified), for a later snapshot that records their digest; kept apart
    /// because few inodes need it.
    unmatched: Mutex<HashMap<(u64, u64), u64>>,
    /// Damaged inodes, and where each is in the list.
    damage: Mutex<DamageList>,
    /// Run-wide counts.
    counts: Counts,
    /// Parsed shard files by their (st_dev, st_ino), with the snapshot number that last used
    /// each: a shard file is linked into every snapshot whose range did not change (expunges
    /// leave it linked), so it is read, verified and parsed once, not once per snapshot; only
    /// the shards the previous snapshot used are kept.
    shard_cache: Mutex<ShardCache>,
    /// Snapshots begun so far (the cache's clock).
    snapshots: AtomicU64,
    /// Shard files read and parsed (not answered from the cache).
    shard_loads: AtomicU64,
}

/// One snapshot of a [`RepoCheck::check_snapshot`] call.
pub struct SnapshotArgs {
    /// Its name, as damage records list it.
    pub name: String,
    /// Its root directory (holding `digests/` and `data/`).
    pub root: OwnedFd,
    /// Whether its manifest is `ok` and names digests: only then is its data read against
    /// its digest files.
    pub trusted: bool,
}

impl RepoCheck {
    /// A run reading data (`read_data`) of `subset`; `seed` keys the random subsets.
    pub fn new(read_data: bool, subset: Subset, seed: u64) -> Self {
        let budget = match subset {
            Subset::Budget(b) => i64::try_from(b).unwrap_or(i64::MAX),
            _ => i64::MAX,
        };
        RepoCheck {
            read_data,
            subset,
            seed,
            budget_p: OnceLock::new(),
            budget_left: AtomicI64::new(budget),
            map: (0..MAP_PARTS).map(|_| Part::default()).collect(),
            unmatched: Mutex::new(HashMap::new()),
            damage: Mutex::new((Vec::new(), HashMap::new())),
            counts: Counts::default(),
            shard_cache: Mutex::new(HashMap::new()),
            snapshots: AtomicU64::new(0),
            shard_loads: AtomicU64::new(0),
        }
    }

    /// The map part holding block `key`.
    fn part(&self, key: (u64, u64)) -> &Mutex<InodeMap> {
        // Not the map's own hash: keys of one part would then share its low bits, which
        // pick the bucket inside the part.
        &self.map[(mix(key.1 ^ key.0.rotate_left(32) ^ PART_SALT) as usize) % MAP_PARTS].0
    }

    /// Checks one snapshot's areas (`jobs`, each relative to `opts.anchor`, the snapshot's
    /// `data/`), in the current rayon pool; one tally per area, in order.
    pub fn check_snapshot(
        &self,
        snap: &SnapshotArgs,
        jobs: &[CheckJob],
        opts: &CheckOptions,
        progress: &Progress,
    ) -> Vec<Tally> {
        if let Subset::Budget(b) = self.subset {
            self.budget_p.get_or_init(|| {
                let total: u64 = jobs.iter().flat_map(|j| j.spec.sizes.known()).sum();
                // Twice the share the budget is of the first snapshot: the budget, not the
                // chance, is what ends a run (the history holds more than one snapshot).
                if total == 0 {
                    1.0
                } else {
                    (2.0 * b as f64 / total as f64).min(1.0)
                }
            });
        }
        let now = self.snapshots.fetch_add(1, Ordering::Relaxed) + 1;
        self.shard_cache
            .lock()
            .expect("shard cache lock")
            .retain(|_, (used, _)| *used + 1 >= now);
        let make = |_i: usize, job: &CheckJob| -> Box<dyn FileStat + '_> {
            Box::new(AreaHook {
                run: self,
                snap,
                area: area_of(&job.spec.prefix),
                read: self.read_data && snap.trusted,
                digests: OnceLock::new(),
            })
        };
        check::check_areas_with(jobs, opts, progress, Some(&make))
    }

    /// Checks the non-message files a trusted snapshot's `digests/files` lists (databases,
    /// config, keys), with the same inode map; problems are events of `progress`.
    pub fn check_files(&self, snap: &SnapshotArgs, progress: &Progress) -> Tally {
        let sink = Sink::new(progress, b"");
        if !(self.read_data && snap.trusted) {
            return sink.tally;
        }
        let dir = match fsutil::open_dir_below(snap.root.as_fd(), b"digests") {
            Ok(d) => d,
            Err(e) => {
                sink.error(
                    "digest_missing",
                    b"digests",
                    e.raw_os_error(),
                    "the manifest names digests but the digests directory cannot be opened: no file of this snapshot can be verified".into(),
                );
                return sink.tally;
            }
        };
        let entries: Vec<Entry<Vec<u8>>> = match digests::read_file(dir.as_fd(), c"files")
            .map_err(|e| e.to_string())
            .and_then(|d| digests::parse(&d))
        {
            Ok(e) => e,
            Err(why) => {
                sink.error(
                    "digest_damaged",
                    b"digests/files",
                    0,
                    format!("digest file damaged or unreadable ({why}): the databases and other files it lists are unverified"),
                );
                return sink.tally;
            }
        };
        progress.add_total(entries.len() as u64);
        entries.par_iter().for_each(|e| {
            if sink.cancelled() {
                return;
            }
            progress.add_done(1);
            self.check_plain(snap, e, &sink);
        });
        sink.tally
    }

    /// One entry of `digests/files`.
    fn check_plain(&self, snap: &SnapshotArgs, e: &Entry<Vec<u8>>, sink: &Sink<'_>) {
        let rel = &e.key;
        let (dir_rel, name) = match rel.iter().rposition(|&c| c == b'/') {
            Some(i) => (&rel[..i], &rel[i + 1..]),
            None => (&rel[..0], &rel[..]),
        };
        let Ok(cname) = CString::new(name) else {
            return sink.error(
                "digest_damaged",
                b"digests/files",
                0,
                "a key holds NUL".into(),
            );
        };
        let file = fsutil::open_dir_below(snap.root.as_fd(), dir_rel)
            .and_then(|d| fsutil::open_file_at(d.as_fd(), &cname));
        let fd = match file {
            Ok(fd) => fd,
            // Absent files are verify's (check 7) to report; a digest cannot be compared.
            Err(_) => return,
        };
        let Ok(st) = fsutil::fstat(&fd) else { return };
        if Kind::from_mode(st.st_mode) != Kind::File {
            return;
        }
        let key = fsutil::identity(&st);
        if self.lookup(key).is_some() {
            Tally::bump(&sink.tally.known);
            self.counts.shared.fetch_add(1, Ordering::Relaxed);
            self.note_holder(key, &snap.name);
            return;
        }
        self.counts.inodes.fetch_add(1, Ordering::Relaxed);
        let area = area_of_path(rel);
        let content = e
            .digest
            .map_or_else(|| fnv(&[rel.as_slice()]), |d| digest_key(&d));
        if !self.selects(content, key, st.st_size as u64) {
            self.insert(key, st.st_size as u64, State::Sized);
            return;
        }
        let rec = Recorded {
            size: e.size,
            digest: e.digest,
            state_without: if e.how == How::None {
                State::Unrecorded
            } else {
                State::Unverified
            },
        };
        self.read(
            &fd,
            key,
            st.st_size as u64,
            &rec,
            &area,
            None,
            rel,
            snap,
            sink,
        );
    }

    /// What the map knows of `key`.
    fn lookup(&self, key: (u64, u64)) -> Option<Inode> {
        let (block, slot) = block_of(key);
        let g = self.part(block).lock().expect("map lock");
        let b = g.get(&block)?;
        State::of_byte(b.states[slot]).map(|state| Inode {
            size: b.sizes[slot],
            state,
        })
    }

    /// Records `key`'s state. [`State::Sized`] never replaces a state learnt by reading (the
    /// same inode met at two paths at once, by both workers).
    fn insert(&self, key: (u64, u64), size: u64, state: State) {
        let (block, slot) = block_of(key);
        let mut g = self.part(block).lock().expect("map lock");
        let b = g.entry(block).or_default();
        if state == State::Sized && b.states[slot] != 0 {
            return;
        }
        b.sizes[slot] = size;
        b.states[slot] = state as u8 + 1;
    }

    /// Whether the subset reads the inode of content key `content` and identity `key`.
    fn selects(&self, content: u64, key: (u64, u64), size: u64) -> bool {
        let random = || mix(self.seed ^ mix(key.0 ^ mix(key.1))) as f64 / u64::MAX as f64;
        match self.subset {
            Subset::All => true,
            Subset::Part { n, m } => content % m == n - 1,
            Subset::Fraction(p) => random() < p,
            Subset::Budget(_) => {
                let p = *self.budget_p.get().unwrap_or(&1.0);
                random() < p && self.budget_left.fetch_sub(size as i64, Ordering::Relaxed) > 0
            }
        }
    }

    /// Reads and hashes the open file `fd` (identity `key`, `size` bytes), compares it with
    /// what is recorded, and stores the outcome.
    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        fd: &OwnedFd,
        key: (u64, u64),
        size: u64,
        rec: &Recorded,
        area: &[u8],
        id: Option<u64>,
        rel: &[u8],
        snap: &SnapshotArgs,
        sink: &Sink<'_>,
    ) {
        self.counts.read.fetch_add(1, Ordering::Relaxed);
        sink.info("read", rel, "read and hashed");
        let (hash, n) = match digests::hash_fd(fd.as_fd()) {
            Ok(h) => h,
            Err(e) => {
                self.insert(key, size, State::Damaged);
                return self.damaged(Damage {
                    area: area.to_vec(),
                    id,
                    rel: rel.to_vec(),
                    size: rec.size,
                    digest: rec.digest,
                    cause: "unreadable",
                    detail: format!(
                        "cannot be read: {}",
                        std::io::Error::from_raw_os_error(e.raw_os_error())
                    ),
                    inode: key,
                    snapshots: vec![snap.name.clone()],
                });
            }
        };
        self.counts.bytes.fetch_add(n, Ordering::Relaxed);
        let hash8 = digest_key(&hash);
        let state = match rec.digest {
            Some(d) if d == hash => State::Good,
            Some(d) => {
                self.insert(key, size, State::Damaged);
                return self.damaged(Damage {
                    area: area.to_vec(),
                    id,
                    rel: rel.to_vec(),
                    size: rec.size,
                    digest: Some(d),
                    cause: "digest_mismatch",
                    detail: format!(
                        "its bytes do not match the recorded digest (sha256 {} recorded, {} read)",
                        digests::to_hex(&d),
                        digests::to_hex(&hash)
                    ),
                    inode: key,
                    snapshots: vec![snap.name.clone()],
                });
            }
            None => rec.state_without,
        };
        if matches!(state, State::Unrecorded | State::Unverified) {
            self.unmatched
                .lock()
                .expect("unmatched lock")
                .insert(key, hash8);
        }
        self.insert(key, size, state);
    }

    /// Adds a damage record.
    fn damaged(&self, d: Damage) {
        let mut g = self.damage.lock().expect("damage lock");
        let i = g.0.len();
        g.1.insert(d.inode, i);
        g.0.push(d);
    }

    /// Notes that snapshot `name` holds `key` when it is damaged.
    fn note_holder(&self, key: (u64, u64), name: &str) {
        let mut g = self.damage.lock().expect("damage lock");
        if let Some(&i) = g.1.get(&key) {
            let list = &mut g.0[i].snapshots;
            if !list.iter().any(|s| s == name) {
                list.push(name.to_string());
            }
        }
    }

    /// The damage records so far.
    pub fn damages(&self) -> Vec<Damage> {
        self.damage.lock().expect("damage lock").0.clone()
    }

    /// Run-wide counts: inodes met, read, bytes read, files answered from the map, and the
    /// inodes by state.
    pub fn counts(&self) -> Vec<(&'static str, u64)> {
        let mut by = [0u64; 5];
        for part in &self.map {
            for b in part.0.lock().expect("map lock").values() {
                for s in b.states.iter().filter_map(|&s| State::of_byte(s)) {
                    by[s as usize] += 1;
                }
            }
        }
        let c = &self.counts;
        vec![
            ("inodes_checked", c.inodes.load(Ordering::Relaxed)),
            ("inodes_read", c.read.load(Ordering::Relaxed)),
            ("bytes_read", c.bytes.load(Ordering::Relaxed)),
            ("shared", c.shared.load(Ordering::Relaxed)),
            ("sizes_only", by[State::Sized as usize]),
            ("good", by[State::Good as usize]),
            ("damaged", by[State::Damaged as usize]),
            ("unrecorded", by[State::Unrecorded as usize]),
            ("unverified", by[State::Unverified as usize]),
        ]
    }
}

/// What a snapshot records of a file, for [`RepoCheck::read`].
struct Recorded {
    /// The recorded size.
    size: u64,
    /// The recorded digest (None: none, or none trusted).
    digest: Option<Digest>,
    /// The state of a file read without a digest: unrecorded (`-`) or unverified.
    state_without: State,
}

/// A shard file of one message directory, as loaded: its entries, or why none is trusted.
enum Shard {
    /// Parsed.
    Entries(Vec<Entry<u64>>),
    /// Absent, damaged or unreadable (already reported).
    Untrusted,
}

/// One directory being walked ([`Dir::state`]): its device, and its shard files once a file
/// needs them.
struct DirState {
    /// `st_dev` of the directory (its files are on it; with the listing's `d_ino`, a file's
    /// identity without a `stat`).
    dev: u64,
    /// Shard number -> loaded shard, filled lazily.
    shards: Mutex<HashMap<u64, Arc<Shard>>>,
}

/// The [`FileStat`] of one area of one snapshot.
struct AreaHook<'r> {
    /// The run.
    run: &'r RepoCheck,
    /// The snapshot.
    snap: &'r SnapshotArgs,
    /// The area's path below `data/` (`queue`, `accounts/alice`).
    area: Vec<u8>,
    /// Whether this snapshot's files are read (the run reads data, the snapshot is trusted).
    read: bool,
    /// The area's directory of shard files, opened on first need (None: absent, reported).
    digests: OnceLock<Option<OwnedFd>>,
}

impl AreaHook<'_> {
    /// The shard directory, reporting once when it cannot be opened.
    fn digest_dir(&self, sink: &Sink<'_>) -> Option<BorrowedFd<'_>> {
        self.digests
            .get_or_init(|| {
                let mut rel = b"digests/".to_vec();
                rel.extend_from_slice(&self.area);
                match fsutil::open_dir_below(self.snap.root.as_fd(), &rel) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        sink.error(
                            "digest_missing",
                            b"",
                            e.raw_os_error(),
                            format!(
                                "the manifest names digests but {} cannot be opened ({}): this area's files are unverified",
                                String::from_utf8_lossy(&rel),
                                std::io::Error::from_raw_os_error(e.raw_os_error())
                            ),
                        );
                        None
                    }
                }
            })
            .as_ref()
            .map(|d| d.as_fd())
    }

    /// Shard `shard` of this area, loaded once per directory state.
    fn shard(&self, dir: Option<&DirState>, shard: u64, sink: &Sink<'_>) -> Arc<Shard> {
        if let Some(d) = dir {
            if let Some(s) = d.shards.lock().expect("shard lock").get(&shard) {
                return Arc::clone(s);
            }
        }
        let loaded = self.load_shard(shard, sink);
        if let Some(d) = dir {
            d.shards
                .lock()
                .expect("shard lock")
                .insert(shard, Arc::clone(&loaded));
        }
        loaded
    }

    /// A shard file of this area, from the run-wide cache or read (see [`RepoCheck::shard_cache`]).
    fn load_shard(&self, shard: u64, sink: &Sink<'_>) -> Arc<Shard> {
        let Some(dir) = self.digest_dir(sink) else {
            return Arc::new(Shard::Untrusted);
        };
        let name = CString::new(shard.to_string()).expect("digits");
        // The same file (inode) parsed for an earlier snapshot: its entries as parsed then.
        // Untrusted ones are not kept, so each snapshot holding one still reports it.
        let run = self.run;
        let now = run.snapshots.load(Ordering::Relaxed);
        let ident = || {
            fsutil::lstat_at(dir, &name)
                .ok()
                .filter(|st| Kind::from_mode(st.st_mode) == Kind::File)
                .map(|st| fsutil::identity(&st))
        };
        let before = ident();
        if let Some(k) = before {
            if let Some((used, s)) = run
                .shard_cache
                .lock()
                .expect("shard cache lock")
                .get_mut(&k)
            {
                *used = now;
                return Arc::clone(s);
            }
        }
        let loaded = Arc::new(self.read_shard(dir, &name, shard, sink));
        // Kept only when the file read is the one identified (not replaced meanwhile).
        if let (Some(k), Shard::Entries(_)) = (before, loaded.as_ref()) {
            if ident() == Some(k) {
                run.shard_cache
                    .lock()
                    .expect("shard cache lock")
                    .insert(k, (now, Arc::clone(&loaded)));
            }
        }
        loaded
    }

    /// Reads and parses shard file `name` of `dir`; reports a missing or damaged one.
    fn read_shard(&self, dir: BorrowedFd<'_>, name: &CStr, shard: u64, sink: &Sink<'_>) -> Shard {
        self.run.shard_loads.fetch_add(1, Ordering::Relaxed);
        let mut where_ = b"digests/".to_vec();
        where_.extend_from_slice(&self.area);
        where_.push(b'/');
        where_.extend_from_slice(shard.to_string().as_bytes());
        // The sink's prefix is the area's (`data/...`): name the digest file from the root.
        let shown = String::from_utf8_lossy(&where_).into_owned();
        match digests::read_file(dir, name) {
            Ok(data) => match digests::parse::<u64>(&data) {
                Ok(mut e) => {
                    // Kept for the run (the cache): parse's estimate of the count from the
                    // size leaves up to twice the room needed.
                    e.shrink_to_fit();
                    Shard::Entries(e)
                }
                Err(why) => {
                    sink.error("digest_damaged", b"", 0, format!("digest file {shown} is damaged ({why}): none of its entries is trusted, its files are unverified"));
                    Shard::Untrusted
                }
            },
            Err(Errno::NOENT) => {
                sink.error(
                    "digest_missing",
                    b"",
                    Errno::NOENT.raw_os_error(),
                    format!("digest file {shown} is missing: its files are unverified"),
                );
                Shard::Untrusted
            }
            Err(e) => {
                sink.error(
                    "digest_damaged",
                    b"",
                    e.raw_os_error(),
                    format!(
                        "digest file {shown} cannot be read ({}): its files are unverified",
                        std::io::Error::from_raw_os_error(e.raw_os_error())
                    ),
                );
                Shard::Untrusted
            }
        }
    }

    /// What this snapshot records of message `id` (None: no trusted entry, reported).
    fn recorded(
        &self,
        dir: Option<&DirState>,
        id: u64,
        rel: &[u8],
        sink: &Sink<'_>,
    ) -> Option<Entry<u64>> {
        let shard = self.shard(dir, id >> digests::SHARD_SHIFT, sink);
        let Shard::Entries(entries) = shard.as_ref() else {
            return None;
        };
        match entries.binary_search_by_key(&id, |e| e.key) {
            Ok(i) => Some(entries[i].clone()),
            Err(_) => {
                sink.error(
                    "digest_missing",
                    rel,
                    0,
                    format!("message {id} has no entry in its digest file: unverified"),
                );
                None
            }
        }
    }
}

impl FileStat for AreaHook<'_> {
    fn enter_dir(&self, dir: &Dir<'_>, sink: &Sink<'_>) {
        let st = match fsutil::fstat(dir.src) {
            Ok(st) => st,
            Err(e) => return sink.io_error(dir.rel, "fstat", e),
        };
        let state = DirState {
            dev: fsutil::identity(&st).0,
            shards: Mutex::new(HashMap::new()),
        };
        // Only this visitor sets the slot, once per directory.
        let _ = dir.state.set(Box::new(state));
    }

    fn stat(
        &self,
        dir: BorrowedFd<'_>,
        listed: Option<(&Dir<'_>, u64)>,
        name: &CStr,
        rel: &[u8],
        id: u64,
        size: Option<u64>,
        sink: &Sink<'_>,
    ) -> Result<(Kind, u64), Errno> {
        let run = self.run;
        // The directory's state, handed down by the walk (no shared map, no lock).
        let state: Option<&DirState> =
            listed.and_then(|(d, _)| d.state.get().and_then(|b| b.downcast_ref::<DirState>()));
        // The inode from the listing; a file the walk did not list (looked up by path after
        // it) costs an lstat.
        let key = match (state, listed) {
            (Some(s), Some((_, ino))) => (s.dev, ino),
            _ => {
                let st = fsutil::lstat_at(dir, name)?;
                if Kind::from_mode(st.st_mode) != Kind::File {
                    return Ok((Kind::from_mode(st.st_mode), st.st_size as u64));
                }
                fsutil::identity(&st)
            }
        };
        if let Some(known) = run.lookup(key) {
            run.counts.shared.fetch_add(1, Ordering::Relaxed);
            if known.state == State::Damaged {
                run.note_holder(key, &self.snap.name);
            } else if self.read && matches!(known.state, State::Unrecorded | State::Unverified) {
                // Hashed where nothing could be compared: this snapshot may record a digest.
                if let Some(e) = self.recorded(state, id, rel, sink) {
                    if let Some(d) = e.digest {
                        let hash8 = run.unmatched.lock().expect("unmatched lock").remove(&key);
                        if hash8 == Some(digest_key(&d)) {
                            run.insert(key, known.size, State::Good);
                        } else {
                            run.insert(key, known.size, State::Damaged);
                            run.damaged(Damage {
                                area: self.area.clone(),
                                id: Some(id),
                                rel: full_rel(&self.area, rel),
                                size: e.size,
                                digest: Some(d),
                                cause: "digest_mismatch",
                                detail: "its bytes do not match the digest this snapshot records"
                                    .into(),
                                inode: key,
                                snapshots: vec![self.snap.name.clone()],
                            });
                        }
                    }
                }
            }
            return Ok((Kind::File, known.size));
        }
        // A new inode: what does this snapshot record, and is it read?
        let rec = if self.read {
            let e = self.recorded(state, id, rel, sink);
            let content = match &e {
                Some(Entry {
                    digest: Some(d), ..
                }) => digest_key(d),
                _ => fnv(&[&self.area, &id.to_le_bytes()]),
            };
            Some((e, content))
        } else {
            None
        };
        if rec.is_none() {
            // Sizes only: one lstat instead of open, fstat and close.
            let st = fsutil::lstat_at(dir, name)?;
            let (kind, have) = (Kind::from_mode(st.st_mode), st.st_size as u64);
            if kind == Kind::File {
                run.counts.inodes.fetch_add(1, Ordering::Relaxed);
                run.insert(fsutil::identity(&st), have, State::Sized);
            }
            return Ok((kind, have));
        }
        let fd = fsutil::open_file_at(dir, name);
        let fd = match fd {
            Ok(fd) => fd,
            Err(Errno::LOOP) | Err(Errno::NXIO) => {
                // A symlink (never followed) or a socket: not a regular file.
                let st = fsutil::lstat_at(dir, name)?;
                return Ok((Kind::from_mode(st.st_mode), st.st_size as u64));
            }
            Err(e) => return Err(e),
        };
        let st = fsutil::fstat(&fd)?;
        let kind = Kind::from_mode(st.st_mode);
        let have = st.st_size as u64;
        if kind != Kind::File {
            return Ok((kind, have));
        }
        let key = fsutil::identity(&st);
        run.counts.inodes.fetch_add(1, Ordering::Relaxed);
        match rec {
            Some((e, content)) if run.selects(content, key, have) => {
                let recorded = Recorded {
                    size: e.as_ref().map_or(size.unwrap_or(have), |e| e.size),
                    digest: e.as_ref().and_then(|e| e.digest),
                    state_without: match &e {
                        Some(e) if e.how == How::None => State::Unrecorded,
                        _ => State::Unverified,
                    },
                };
                let full = full_rel(&self.area, rel);
                // The hash covers whatever the file holds; a size that differs from the record
                // is reported by the caller, and the digest then differs too.
                run.read(
                    &fd,
                    key,
                    have,
                    &recorded,
                    &self.area,
                    Some(id),
                    &full,
                    self.snap,
                    &Sink::new(sink.progress, b""),
                );
            }
            _ => run.insert(key, have, State::Sized),
        }
        Ok((Kind::File, have))
    }
}

/// The path below the snapshot root of `rel` below area `area`.
fn full_rel(area: &[u8], rel: &[u8]) -> Vec<u8> {
    let mut out = b"data/".to_vec();
    out.extend_from_slice(area);
    out.push(b'/');
    out.extend_from_slice(rel);
    out
}

/// The area below `data/` of an area's reported prefix (`data/accounts/bob` -> `accounts/bob`).
fn area_of(prefix: &[u8]) -> Vec<u8> {
    prefix.strip_prefix(b"data/").unwrap_or(prefix).to_vec()
}

/// The area of a path below the snapshot root (`data/accounts/bob/index.db` ->
/// `accounts/bob`, `data/queue/index.db` -> `queue`), empty for any other.
fn area_of_path(rel: &[u8]) -> Vec<u8> {
    let parts: Vec<&[u8]> = rel.split(|&c| c == b'/').collect();
    match parts.as_slice() {
        [b"data", b"queue", _, ..] => b"queue".to_vec(),
        [b"data", b"accounts", name, _, ..] => [b"accounts/".as_slice(), name].concat(),
        _ => Vec::new(),
    }
}

/// The map block of inode `key` (its device and number / [`BLOCK`]) and its slot in it.
fn block_of(key: (u64, u64)) -> ((u64, u64), usize) {
    ((key.0, key.1 / BLOCK), (key.1 % BLOCK) as usize)
}

/// The content key of a digest: its first 8 bytes.
fn digest_key(d: &Digest) -> u64 {
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// FNV-1a of the parts, then [`mix`]: a stable key for entries without a digest (the same in
/// every run and every build, unlike std's hasher).
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

/// splitmix64's finalizer: spreads every input bit over the output.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::areas::AreaSpec;
    use crate::classify::{Area, Snapshot};
    use crate::fsutil::testutil::Scratch;
    use crate::ids::IdSet;

    /// An account area of a snapshot under `root` holding `ids` (files of `id` bytes each),
    /// with a shard file recording each one's digest (wrong for `bad`).
    fn snapshot(s: &Scratch, root: &str, ids: &[u64], bad: Option<u64>) {
        let mut entries = Vec::new();
        for &id in ids {
            let body = vec![b'x'; id as usize];
            let path = format!("{root}/data/accounts/a/msg/a/{id}");
            if !s.path(&path).exists() {
                s.file(&path, &body);
            }
            let mut d = digests::sha256(&body);
            if Some(id) == bad {
                d[0] ^= 1;
            }
            entries.push(Entry {
                key: id,
                size: id,
                digest: Some(d),
                how: How::Written,
            });
        }
        s.file(
            &format!("{root}/digests/accounts/a/0"),
            &digests::render(&mut entries),
        );
    }

    fn job(ids: &[u64]) -> CheckJob {
        CheckJob {
            spec: AreaSpec {
                src: "accounts/a".into(),
                area: Area {
                    tree: b"msg".to_vec(),
                    known: vec![],
                    ..Default::default()
                },
                snap: Snapshot {
                    live: IdSet::new(ids.to_vec()),
                    erasing: IdSet::default(),
                    next_id: 1000,
                },
                sizes: ids.iter().map(|&i| Some(i)).collect(),
                prefix: b"data/accounts/a".to_vec(),
                proven: Vec::new(),
                sealed: false,
            },
            fix_rel: Vec::new(),
        }
    }

    fn run(rc: &RepoCheck, s: &Scratch, root: &str, ids: &[u64], trusted: bool) -> Progress {
        let snap = SnapshotArgs {
            name: root.into(),
            root: fsutil::open_dir(&s.path(root)).unwrap(),
            trusted,
        };
        let opts = CheckOptions {
            anchor: Some(fsutil::open_dir(&s.path(&format!("{root}/data"))).unwrap()),
            ..Default::default()
        };
        let p = Progress::new(true, 10_000);
        rc.check_snapshot(&snap, &[job(ids)], &opts, &p);
        p
    }

    fn count(rc: &RepoCheck, k: &str) -> u64 {
        rc.counts().into_iter().find(|(n, _)| *n == k).unwrap().1
    }

    #[test]
    fn a_shared_inode_is_read_once_and_its_damage_names_every_snapshot() {
        let s = Scratch::new("repoc1");
        snapshot(&s, "s2", &[1, 2, 3], Some(2));
        std::fs::create_dir_all(s.path("s1/data/accounts/a/msg/a")).unwrap();
        for id in [1u64, 2] {
            std::fs::hard_link(
                s.path(&format!("s2/data/accounts/a/msg/a/{id}")),
                s.path(&format!("s1/data/accounts/a/msg/a/{id}")),
            )
            .unwrap();
        }
        snapshot(&s, "s1", &[1, 2], Some(2));
        let rc = RepoCheck::new(true, Subset::All, 0);
        run(&rc, &s, "s2", &[1, 2, 3], true);
        run(&rc, &s, "s1", &[1, 2], true);
        assert_eq!(
            (
                count(&rc, "inodes_checked"),
                count(&rc, "inodes_read"),
                count(&rc, "bytes_read")
            ),
            (3, 3, 6)
        );
        assert_eq!(
            (
                count(&rc, "good"),
                count(&rc, "damaged"),
                count(&rc, "shared")
            ),
            (2, 1, 2)
        );
        let d = rc.damages();
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].id, d[0].cause, d[0].snapshots.clone()),
            (
                Some(2),
                "digest_mismatch",
                vec!["s2".to_string(), "s1".to_string()]
            )
        );
        assert_eq!(d[0].rel, b"data/accounts/a/msg/a/2");
    }

    #[test]
    fn parts_cover_every_inode_once_and_untrusted_snapshots_are_sizes_only() {
        let s = Scratch::new("repoc2");
        let ids: Vec<u64> = (1..=40).collect();
        snapshot(&s, "s", &ids, None);
        let mut total = 0;
        for n in 1..=4 {
            let rc = RepoCheck::new(true, Subset::Part { n, m: 4 }, 7);
            run(&rc, &s, "s", &ids, true);
            total += count(&rc, "inodes_read");
            assert_eq!(count(&rc, "inodes_checked"), 40);
        }
        assert_eq!(total, 40);
        let rc = RepoCheck::new(true, Subset::All, 0);
        run(&rc, &s, "s", &ids, false);
        assert_eq!(
            (count(&rc, "inodes_read"), count(&rc, "sizes_only")),
            (0, 40)
        );
    }

    #[test]
    fn an_inode_hashed_without_a_digest_is_compared_where_a_later_snapshot_records_one() {
        let s = Scratch::new("repoc4");
        snapshot(&s, "s1", &[1, 2], Some(2));
        std::fs::create_dir_all(s.path("s2/data/accounts/a/msg/a")).unwrap();
        for id in [1u64, 2] {
            std::fs::hard_link(
                s.path(&format!("s1/data/accounts/a/msg/a/{id}")),
                s.path(&format!("s2/data/accounts/a/msg/a/{id}")),
            )
            .unwrap();
        }
        // s2 (checked first) records no digest: both are hashed and unrecorded until s1.
        let mut pending = vec![1u64, 2]
            .into_iter()
            .map(|id| Entry {
                key: id,
                size: id,
                digest: None,
                how: How::None,
            })
            .collect::<Vec<_>>();
        s.file("s2/digests/accounts/a/0", &digests::render(&mut pending));
        let rc = RepoCheck::new(true, Subset::All, 0);
        run(&rc, &s, "s2", &[1, 2], true);
        assert_eq!(
            (count(&rc, "unrecorded"), count(&rc, "inodes_read")),
            (2, 2)
        );
        run(&rc, &s, "s1", &[1, 2], true);
        assert_eq!(
            (
                count(&rc, "good"),
                count(&rc, "damaged"),
                count(&rc, "unrecorded")
            ),
            (1, 1, 0)
        );
        assert_eq!(count(&rc, "inodes_read"), 2, "nothing read twice");
        assert_eq!(rc.damages()[0].id, Some(2));
    }

    /// Events of a progress, sorted, as comparable tuples.
    fn findings(p: &Progress) -> Vec<(&'static str, Vec<u8>, String)> {
        let mut v: Vec<_> = p
            .drain()
            .into_iter()
            .map(|e| (e.code, e.path, e.detail))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_listing_fast_path_finds_exactly_what_verify_finds() {
        // Live 1, 2 (wrong size), 3, 4 (a symlink), 5 (no file), 6 (a FIFO); 20 an orphan,
        // notes.txt and 0042 unknown: each pass through the inode map (new inodes, then
        // known ones) must report what a plain verify of the tree reports.
        let s = Scratch::new("repoc5");
        let dir = "s/data/accounts/a/msg/a";
        s.file(&format!("{dir}/1"), b"x");
        s.file(&format!("{dir}/2"), b"xxxxx");
        s.file(&format!("{dir}/3"), b"xxx");
        s.file(&format!("{dir}/20"), b"orphan");
        s.file(&format!("{dir}/notes.txt"), b"n");
        s.file(&format!("{dir}/0042"), b"z");
        std::os::unix::fs::symlink("1", s.path(&format!("{dir}/4"))).unwrap();
        let fifo = CString::new(
            s.path(&format!("{dir}/6"))
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let ids = [1u64, 2, 3, 4, 5, 6];
        let anchor = || Some(fsutil::open_dir(&s.path("s/data")).unwrap());
        let plain = Progress::new(true, 10_000);
        let want_tally = check::check_areas(
            &[job(&ids)],
            &CheckOptions {
                anchor: anchor(),
                ..Default::default()
            },
            &plain,
        );
        let want = findings(&plain);
        assert_eq!(
            want.iter().map(|f| f.0).collect::<Vec<_>>(),
            [
                "missing",
                "not_regular",
                "not_regular",
                "orphan_message",
                "size_mismatch",
                "unrecognized",
                "unrecognized"
            ]
        );
        let rc = RepoCheck::new(false, Subset::All, 0);
        for pass in 0..2 {
            let p = Progress::new(true, 10_000);
            let snap = SnapshotArgs {
                name: "s".into(),
                root: fsutil::open_dir(&s.path("s")).unwrap(),
                trusted: false,
            };
            let opts = CheckOptions {
                anchor: anchor(),
                ..Default::default()
            };
            let got_tally = rc.check_snapshot(&snap, &[job(&ids)], &opts, &p);
            assert_eq!(findings(&p), want, "pass {pass}");
            assert_eq!(
                got_tally[0].to_pairs(),
                want_tally[0].to_pairs(),
                "pass {pass}"
            );
        }
        // Three regular message files: met once, then answered from the map.
        assert_eq!((count(&rc, "inodes_checked"), count(&rc, "shared")), (3, 3));
    }

    #[test]
    fn a_shard_file_linked_into_several_snapshots_is_parsed_once() {
        // s2 (newer, checked first) expunged 2 and keeps the shard linked (a superset); s1
        // still holds 2, an inode new to the map whose digest comes from the same shard file.
        let s = Scratch::new("repoc6");
        snapshot(&s, "s1", &[1, 2], Some(2));
        std::fs::create_dir_all(s.path("s2/data/accounts/a/msg/a")).unwrap();
        std::fs::create_dir_all(s.path("s2/digests/accounts/a")).unwrap();
        std::fs::hard_link(
            s.path("s1/data/accounts/a/msg/a/1"),
            s.path("s2/data/accounts/a/msg/a/1"),
        )
        .unwrap();
        std::fs::hard_link(
            s.path("s1/digests/accounts/a/0"),
            s.path("s2/digests/accounts/a/0"),
        )
        .unwrap();
        let rc = RepoCheck::new(true, Subset::All, 0);
        run(&rc, &s, "s2", &[1], true);
        run(&rc, &s, "s1", &[1, 2], true);
        assert_eq!(rc.shard_loads.load(Ordering::Relaxed), 1);
        assert_eq!((count(&rc, "good"), count(&rc, "damaged")), (1, 1));
        assert_eq!(rc.damages()[0].snapshots, vec!["s1".to_string()]);
        // A shard file that is not the same file is read again, and kept only while used.
        snapshot(&s, "s3", &[1], None);
        run(&rc, &s, "s3", &[1], true);
        assert_eq!(rc.shard_loads.load(Ordering::Relaxed), 2);
        let rc2 = RepoCheck::new(true, Subset::All, 0);
        run(&rc2, &s, "s3", &[1], true);
        run(&rc2, &s, "s1", &[1, 2], true);
        assert_eq!(rc2.shard_loads.load(Ordering::Relaxed), 2);
        assert_eq!(rc2.shard_cache.lock().unwrap().len(), 2);
        run(&rc2, &s, "s2", &[1], true);
        run(&rc2, &s, "s2", &[1], true);
        assert!(
            rc2.shard_cache.lock().unwrap().is_empty(),
            "unused: dropped"
        );
    }

    #[test]
    fn a_block_of_8_inodes_costs_88_bytes_in_the_map() {
        assert_eq!(std::mem::size_of::<((u64, u64), Block)>(), 88);
    }

    #[test]
    fn neighbouring_inodes_share_a_block_without_mixing_their_states() {
        let rc = RepoCheck::new(false, Subset::All, 0);
        for ino in 0..20u64 {
            if ino % 3 != 0 {
                rc.insert((7, ino), ino * 10, State::Sized);
            }
        }
        rc.insert((8, 4), 1, State::Damaged);
        for ino in 0..20u64 {
            let got = rc.lookup((7, ino)).map(|i| (i.size, i.state));
            let want = (ino % 3 != 0).then_some((ino * 10, State::Sized));
            assert_eq!(got, want, "inode {ino}");
        }
        assert_eq!(rc.lookup((8, 4)).map(|i| i.state), Some(State::Damaged));
        assert!(rc.lookup((8, 5)).is_none() && rc.lookup((9, 4)).is_none());
        let c = rc.counts();
        assert_eq!(
            c.iter().find(|(n, _)| *n == "sizes_only").unwrap().1,
            13,
            "{c:?}"
        );
    }

    #[test]
    fn a_damaged_shard_leaves_its_files_unverified() {
        let s = Scratch::new("repoc3");
        snapshot(&s, "s", &[1, 2], None);
        let p = s.path("s/digests/accounts/a/0");
        let mut data = std::fs::read(&p).unwrap();
        let n = data.len();
        data[n - 3] ^= 1;
        std::fs::write(&p, data).unwrap();
        let rc = RepoCheck::new(true, Subset::All, 0);
        let prog = run(&rc, &s, "s", &[1, 2], true);
        assert_eq!((count(&rc, "unverified"), count(&rc, "damaged")), (2, 0));
        let codes: Vec<_> = prog.drain().into_iter().map(|e| e.code).collect();
        assert_eq!(
            codes.iter().filter(|c| **c == "digest_damaged").count(),
            1,
            "{codes:?}"
        );
    }
}

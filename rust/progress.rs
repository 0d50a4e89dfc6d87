//! What a running engine call shares with its caller: progress counters, the cancel flag, and
//! the queue of located events (warnings, errors, per-file lines).
//!
//! The engine never prints. Python polls [`Progress`] from its own thread a few times a second,
//! draws the progress bar and renders the drained events; per-file problems are values in that
//! queue, never exceptions. Warnings and errors are always kept: each one decides what the user
//! is told and whether a backup is ok. Only per-file `Info` lines (--verbose) are bounded: past
//! `max_queued` undrained events they are counted in `dropped` but not kept, so a verbose run over
//! a million files cannot exhaust memory. Warnings and errors stay bounded in practice because
//! they are drained every 100 ms (200k of them in one directory peak at a few MB). Counts in
//! [`Tally`] are always exact.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// How bad an event is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// A per-file line, only queued in verbose mode.
    Info,
    /// Something odd; the result is still good.
    Warning,
    /// Something the result lacks; it is marked failed.
    Error,
}

impl Severity {
    /// The name Python sees.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// One located event.
#[derive(Clone, Debug)]
pub struct Event {
    /// How bad it is.
    pub severity: Severity,
    /// A stable machine name, e.g. `unrecognized` or `missing` (listed in docs/BACKUP.md).
    pub code: &'static str,
    /// The path it is about, relative to the root the caller named, as raw bytes.
    pub path: Vec<u8>,
    /// The OS error number, or 0.
    pub errno: i32,
    /// Human detail: the operation that failed, or what was done about it.
    pub detail: String,
}

/// Exact per-call counts, updated by all workers.
#[derive(Default, Debug)]
pub struct Tally {
    /// Files hardlinked.
    pub linked: AtomicU64,
    /// Files copied (link impossible, or copy wanted).
    pub copied: AtomicU64,
    /// Files hardlinked from the reference (an earlier backup) instead of copied.
    pub reused: AtomicU64,
    /// Files copied by a reflink (shared extents): a subset of `copied`.
    pub reflinked: AtomicU64,
    /// Bytes written by copies.
    pub bytes_copied: AtomicU64,
    /// Message files added after the snapshot, skipped.
    pub skipped_new: AtomicU64,
    /// Message files of messages being erased, skipped.
    pub skipped_erasing: AtomicU64,
    /// Files the caller handles itself (databases, lock files, ...), skipped.
    pub known: AtomicU64,
    /// Files nobody accounts for (reported; copied by backup, moved by `verify --fix`).
    pub unrecognized: AtomicU64,
    /// Files at the path of an allocated ID that no record claims (in-flight or interrupted
    /// deliveries).
    pub orphans: AtomicU64,
    /// Message files of the snapshot that do not exist.
    pub missing: AtomicU64,
    /// Message files that exist but are wrong (size, type); verify only.
    pub damaged: AtomicU64,
    /// Sockets, FIFOs and devices, skipped.
    pub special: AtomicU64,
    /// Symlinks recreated (or seen, in verify).
    pub symlinks: AtomicU64,
    /// Directories created (or walked, in verify).
    pub dirs: AtomicU64,
    /// Files checked by verify.
    pub checked: AtomicU64,
    /// Unrecognized files moved aside by `verify --fix`.
    pub moved: AtomicU64,
    /// Errors of any kind (each also queued as an event).
    pub errors: AtomicU64,
    /// Warnings of any kind (each also queued as an event).
    pub warnings: AtomicU64,
    /// Entries removed from a clone of the reference that the store no longer has (a backup
    /// in place, `inplace.rs`).
    pub dropped: AtomicU64,
}

impl Tally {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters by name, for Python.
    pub fn to_pairs(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("linked", get(&self.linked)),
            ("copied", get(&self.copied)),
            ("reused", get(&self.reused)),
            ("reflinked", get(&self.reflinked)),
            ("bytes_copied", get(&self.bytes_copied)),
            ("skipped_new", get(&self.skipped_new)),
            ("skipped_erasing", get(&self.skipped_erasing)),
            ("known", get(&self.known)),
            ("unrecognized", get(&self.unrecognized)),
            ("orphans", get(&self.orphans)),
            ("missing", get(&self.missing)),
            ("damaged", get(&self.damaged)),
            ("special", get(&self.special)),
            ("symlinks", get(&self.symlinks)),
            ("dirs", get(&self.dirs)),
            ("checked", get(&self.checked)),
            ("moved", get(&self.moved)),
            ("errors", get(&self.errors)),
            ("warnings", get(&self.warnings)),
            ("dropped", get(&self.dropped)),
        ]
    }
}

/// Default bound on undrained events; Python drains every 100 ms, so this is only reached when
/// a tree holds hundreds of thousands of odd files.
pub const DEFAULT_MAX_QUEUED: usize = 100_000;

/// Shared state of one engine call (or of several calls in a row, in one phase).
pub struct Progress {
    /// Units of work done (files placed or checked).
    done: AtomicU64,
    /// Units of work expected, when the caller knows it (0 = unknown).
    total: AtomicU64,
    /// Set by the caller to stop all workers at their next file.
    cancel: AtomicBool,
    /// Whether per-file `Info` events are wanted.
    verbose: bool,
    /// Bound on undrained events.
    max_queued: usize,
    /// Events not yet drained.
    events: Mutex<Vec<Event>>,
    /// Events not kept because the queue was full.
    dropped: AtomicU64,
}

impl Progress {
    /// Fresh counters.
    pub fn new(verbose: bool, max_queued: usize) -> Self {
        Progress {
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            cancel: AtomicBool::new(false),
            verbose,
            max_queued,
            events: Mutex::new(Vec::new()),
            dropped: AtomicU64::new(0),
        }
    }

    /// Whether per-file lines are wanted.
    pub fn verbose(&self) -> bool {
        self.verbose
    }

    /// Asks every worker to stop.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Whether a stop was asked for; workers check it before each file.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Adds to the expected amount of work.
    pub fn add_total(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
    }

    /// Records `n` units of work done.
    pub fn add_done(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// (done, total) right now.
    pub fn position(&self) -> (u64, u64) {
        (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }

    /// Events not kept because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Queues an event (per-file `Info` lines only in verbose mode).
    pub fn emit(
        &self,
        severity: Severity,
        code: &'static str,
        path: Vec<u8>,
        errno: i32,
        detail: String,
    ) {
        if severity == Severity::Info && !self.verbose {
            return;
        }
        let mut q = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if severity == Severity::Info && q.len() >= self.max_queued {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.push(Event {
            severity,
            code,
            path,
            errno,
            detail,
        });
    }

    /// Takes all queued events.
    pub fn drain(&self) -> Vec<Event> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The reporting side of one engine call: its own exact [`Tally`], and events queued on the
/// shared [`Progress`] with paths made relative to what the user named (the caller's prefix, e.g.
/// `data/accounts/alice`, joined with the path inside the walked tree).
pub struct Sink<'a> {
    /// Where events and progress go.
    pub progress: &'a Progress,
    /// This call's counts.
    pub tally: Tally,
    /// Prefix of every reported path.
    prefix: Vec<u8>,
    /// Where placed files are noted for the backup's digests (`digests.rs`); None: not recorded.
    pub recorder: Option<crate::digests::Recorder>,
}

impl<'a> Sink<'a> {
    /// A sink reporting paths below `prefix`.
    pub fn new(progress: &'a Progress, prefix: &[u8]) -> Self {
        Sink {
            progress,
            tally: Tally::default(),
            prefix: prefix.to_vec(),
            recorder: None,
        }
    }

    /// The same sink, noting placed files for digests when `on`.
    pub fn recording(self, on: bool) -> Self {
        Sink {
            recorder: on.then(crate::digests::Recorder::default),
            ..self
        }
    }

    /// The reported form of a path relative to the walked root.
    pub fn full(&self, rel: &[u8]) -> Vec<u8> {
        crate::fsutil::join(&self.prefix, rel)
    }

    /// Whether the caller asked to stop.
    pub fn cancelled(&self) -> bool {
        self.progress.cancelled()
    }

    /// A warning about `rel`; the result stays good.
    pub fn warn(&self, code: &'static str, rel: &[u8], errno: i32, detail: String) {
        Tally::bump(&self.tally.warnings);
        self.progress
            .emit(Severity::Warning, code, self.full(rel), errno, detail);
    }

    /// An error about `rel`; the result is marked failed.
    pub fn error(&self, code: &'static str, rel: &[u8], errno: i32, detail: String) {
        Tally::bump(&self.tally.errors);
        self.progress
            .emit(Severity::Error, code, self.full(rel), errno, detail);
    }

    /// A per-file line, shown with --verbose.
    pub fn info(&self, code: &'static str, rel: &[u8], detail: &str) {
        if self.progress.verbose() {
            self.progress
                .emit(Severity::Info, code, self.full(rel), 0, detail.to_string());
        }
    }

    /// An I/O error on `rel` during step `op`.
    pub fn io_error(&self, rel: &[u8], op: &'static str, errno: rustix::io::Errno) {
        let e = errno.raw_os_error();
        self.error(
            "io",
            rel,
            e,
            format!("{}: {}", op, std::io::Error::from_raw_os_error(e)),
        );
    }

    /// A failed operation on `rel` (its step and errno; the walk's own `rel` locates it).
    pub fn fs_error(&self, rel: &[u8], e: &crate::error::Error) {
        self.io_error(rel, e.op, e.errno);
    }

    /// One error for a message directory that cannot be used (`errno`, met trying to `verb`
    /// it; a symlink is never followed), its `n` snapshot messages counted missing and done, so
    /// that backup and verify report it alike: once, not once per message. `consequence` says
    /// what it means for those messages.
    pub fn unusable_message_dir(
        &self,
        dir_rel: &[u8],
        errno: rustix::io::Errno,
        n: u64,
        verb: &str,
        consequence: &str,
    ) {
        self.tally.missing.fetch_add(n, Ordering::Relaxed);
        self.progress.add_done(n);
        let what = if matches!(errno, rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP) {
            "not a directory (a symlink is never followed)".to_string()
        } else {
            format!(
                "cannot {verb} it: {}",
                std::io::Error::from_raw_os_error(errno.raw_os_error())
            )
        };
        self.error(
            "message_dir",
            dir_rel,
            errno.raw_os_error(),
            format!("message directory: {what}; its {n} message(s) {consequence}"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_per_file_lines_are_dropped_when_the_queue_is_full() {
        let p = Progress::new(true, 2);
        for _ in 0..3 {
            p.emit(Severity::Info, "linked", b"y".to_vec(), 0, String::new());
        }
        for _ in 0..5 {
            p.emit(
                Severity::Warning,
                "unrecognized",
                b"x".to_vec(),
                0,
                String::new(),
            );
        }
        p.emit(Severity::Error, "missing", b"z".to_vec(), 2, String::new());
        let got = p.drain();
        assert_eq!(got.len(), 2 + 5 + 1, "every warning and error is kept");
        assert_eq!(p.dropped(), 1);
        assert!(p.drain().is_empty());
    }

    #[test]
    fn sink_counts_and_prefixes() {
        let p = Progress::new(false, 10);
        let s = Sink::new(&p, b"data/queue");
        s.warn("unrecognized", b"a/x", 0, String::new());
        s.error("missing", b"a/5", 2, String::new());
        s.info("linked", b"a/6", "");
        let ev = p.drain();
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].path, b"data/queue/a/x");
        assert_eq!(s.tally.warnings.load(Ordering::Relaxed), 1);
        assert_eq!(s.tally.errors.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn info_events_only_when_verbose() {
        let p = Progress::new(true, 10);
        p.emit(Severity::Info, "linked", b"y".to_vec(), 0, String::new());
        assert_eq!(p.drain().len(), 1);
    }
}

//! Read-only, bounds-checked reader of LMDB 0.9 data files.
//!
//! Scope: single-file environments (`MDB_NOSUBDIR`) written by a 64-bit little-endian LMDB 0.9,
//! data format version 1.
//!
//! The file is read with positioned reads, one page or one overflow run at a time, and never
//! mapped: it may belong to a live environment that a writer keeps growing, and a mapping over a
//! file that changes length can fault with SIGBUS, which no error value could report. Memory stays
//! at one page per tree level, one overflow value at most, and one bit per page of the snapshot.
//!
//! Every number read from the file (page numbers, offsets, sizes, counts, depths) is untrusted:
//! it is checked against the page, the snapshot or the file before it is used, so a damaged file
//! yields an [`LmdbError`], never a panic, an endless walk or an allocation larger than the file.
//!
//! Two checks are limited:
//! - Key order is checked only for databases with LMDB's default comparison; a database opened
//!   with `MDB_REVERSEKEY`/`MDB_INTEGERKEY` (or `MDB_REVERSEDUP`/`MDB_INTEGERDUP` for its
//!   duplicates) is not order-checked, and one written with a custom comparator
//!   (`mdb_set_compare`) would be reported as out of order.
//! - The page counts in a DUPSORT database's record are not compared: LMDB 0.9.24 leaves the
//!   duplicates sub-trees out of them, while later 0.9 releases (0.9.36, bundled with py-lmdb
//!   3.0) count sub-tree pages as they are allocated but not when a key's whole sub-tree is
//!   dropped. Its entry count and depth are compared, and so are each sub-tree's own counts.
//!
//! Here: the error type, the on-disk constants and [`LmdbFile`] (open a snapshot, check it,
//! read a named database). `meta.rs` chooses the snapshot from the two meta pages, `page.rs`
//! parses one page, `tree.rs` walks a B-tree; `tests.rs` checks all of it on real LMDB files
//! and on damaged copies of them.

mod meta;
mod page;
#[cfg(test)]
mod tests;
mod tree;

use meta::*;
use page::*;
use tree::*;

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Size of the header at the start of every page (`MDB_page` up to `mp_ptrs`).
const PAGEHDRSZ: usize = 16;
/// Size of a node header (`MDB_node` up to `mn_data`).
const NODESIZE: usize = 8;
/// Size of an on-disk `MDB_db` record.
const DB_RECORD_SIZE: usize = 48;
/// Bytes at the start of a meta page that hold its header and the `MDB_meta` fields.
const META_BYTES: usize = PAGEHDRSZ + 136;
/// `MDB_MAGIC`: a meta page's stamp, which also exposes a byte-order mismatch.
const MDB_MAGIC: u32 = 0xBEEF_C0DE;
/// `MDB_DATA_VERSION` of LMDB 0.9 built without `MDB_DEVEL`.
const MDB_DATA_VERSION: u32 = 1;
/// `P_INVALID`: the root of an empty tree.
const P_INVALID: u64 = u64::MAX;
/// Pages 0 and 1 are the meta pages; tree pages start here.
const FIRST_DATA_PAGE: u64 = 2;
/// Smallest page size accepted in a meta page.
const MIN_PAGE_SIZE: usize = 512;
/// Largest page size accepted in a meta page.
const MAX_PAGE_SIZE: usize = 65536;
/// LMDB's cursors hold at most `CURSOR_STACK` (32) pages, so no readable tree is deeper.
const MAX_DEPTH: u16 = 32;

/// Page flag: branch page.
const P_BRANCH: u16 = 0x01;
/// Page flag: leaf page.
const P_LEAF: u16 = 0x02;
/// Page flag: first page of an overflow run.
const P_OVERFLOW: u16 = 0x04;
/// Page flag: meta page.
const P_META: u16 = 0x08;
/// Page flag: dirty; left set on sub-pages, which are written inside their parent node.
const P_DIRTY: u16 = 0x10;
/// Page flag: leaf of packed fixed-size keys (`MDB_DUPFIXED` duplicates).
const P_LEAF2: u16 = 0x20;
/// Page flag: duplicates sub-page stored inside a leaf node.
const P_SUBP: u16 = 0x40;

/// Node flag: the value lives in an overflow run; the node holds its first page number.
const F_BIGDATA: u16 = 0x01;
/// Node flag: the data is an `MDB_db` record (named database, or duplicates sub-tree).
const F_SUBDATA: u16 = 0x02;
/// Node flag: the key has duplicates (a sub-page, or with `F_SUBDATA` a sub-tree).
const F_DUPDATA: u16 = 0x04;
/// Node flags of a duplicates sub-tree record.
const F_DUPDATA_SUBDATA: u16 = F_DUPDATA | F_SUBDATA;

/// Database flag: keys compare from their last byte.
const MDB_REVERSEKEY: u16 = 0x02;
/// Database flag: sorted duplicates.
const MDB_DUPSORT: u16 = 0x04;
/// Database flag: keys are native unsigned integers.
const MDB_INTEGERKEY: u16 = 0x08;
/// Database flag: duplicates all have one size.
const MDB_DUPFIXED: u16 = 0x10;
/// Database flag: duplicates are native unsigned integers.
const MDB_INTEGERDUP: u16 = 0x20;
/// Database flag: duplicates compare from their last byte.
const MDB_REVERSEDUP: u16 = 0x40;
/// Every flag `mdb_dbi_open` can store in an `MDB_db` record.
const DB_FLAGS_KNOWN: u16 =
    MDB_REVERSEKEY | MDB_DUPSORT | MDB_INTEGERKEY | MDB_DUPFIXED | MDB_INTEGERDUP | MDB_REVERSEDUP;

/// `EIO`, for read failures that carry no errno.
const EIO: i32 = 5;

/// What kind of failure an [`LmdbError`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The operating system failed a call; the value is its errno.
    Io(i32),
    /// The file's structure is inconsistent.
    Corrupt,
    /// The file is an LMDB file in a format this reader does not handle.
    Unsupported,
    /// The requested snapshot is gone from the file because a writer has moved on.
    Stale,
    /// The caller's callback stopped the walk; the message is the callback's.
    Callback,
}

/// A failure to open, check or read an LMDB file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LmdbError {
    /// What kind of failure this is.
    pub kind: ErrorKind,
    /// The page where the problem was found, when there is one.
    pub page: Option<u64>,
    /// What is wrong, e.g. "page 17: node 3 extends past the page end".
    pub message: String,
}

impl LmdbError {
    /// An error of `kind` with no particular page.
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        LmdbError {
            kind,
            page: None,
            message: message.into(),
        }
    }

    /// A structural problem not tied to one page.
    fn corrupt(message: impl Into<String>) -> Self {
        LmdbError::new(ErrorKind::Corrupt, message)
    }

    /// A structural problem found on page `page`.
    fn at(page: u64, message: impl fmt::Display) -> Self {
        LmdbError {
            kind: ErrorKind::Corrupt,
            page: Some(page),
            message: format!("page {page}: {message}"),
        }
    }

    /// A failed read or open; a short read means the file ends early, which is corruption.
    fn io(err: &io::Error, what: impl fmt::Display, page: Option<u64>) -> Self {
        let kind = match err.raw_os_error() {
            Some(errno) => ErrorKind::Io(errno),
            None if err.kind() == io::ErrorKind::UnexpectedEof => ErrorKind::Corrupt,
            None => ErrorKind::Io(EIO),
        };
        let message = if kind == ErrorKind::Corrupt {
            format!("{what}: the file ends before it")
        } else {
            format!("{what}: {err}")
        };
        LmdbError {
            kind,
            page,
            message,
        }
    }
}

impl fmt::Display for LmdbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ErrorKind::Io(errno) => write!(f, "I/O error (errno {errno}): {}", self.message),
            ErrorKind::Corrupt => write!(f, "corrupt LMDB file: {}", self.message),
            ErrorKind::Unsupported => write!(f, "unsupported LMDB file: {}", self.message),
            ErrorKind::Stale => write!(f, "stale LMDB snapshot: {}", self.message),
            ErrorKind::Callback => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for LmdbError {}

/// What [`LmdbFile::check`] found in a sound snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckSummary {
    /// Transaction ID of the checked snapshot.
    pub txnid: u64,
    /// Page size in bytes.
    pub page_size: usize,
    /// Last page in use by the snapshot (`mm_last_pg`).
    pub last_page: u64,
    /// Branch, leaf and overflow pages of all trees (free DB, main DB, named DBs, duplicates).
    pub tree_pages: u64,
    /// Page numbers listed in the free DB.
    pub free_pages: u64,
    /// Each named database with its number of entries, in name order.
    pub dbs: Vec<(Vec<u8>, u64)>,
    /// False when a named database is DUPSORT with DUPFIXED duplicates: LMDB's compacting copy
    /// (as bundled with py-lmdb 3.0) crashes on such a database once it holds a duplicate
    /// sub-tree, so callers must use a plain page copy for this file.
    pub compact_copy_safe: bool,
}

/// Little-endian u16 at `at`, if `b` is long enough.
fn get_u16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    s.try_into().ok().map(u16::from_le_bytes)
}

/// Little-endian u32 at `at`, if `b` is long enough.
fn get_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    s.try_into().ok().map(u32::from_le_bytes)
}

/// Little-endian u64 at `at`, if `b` is long enough.
fn get_u64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    s.try_into().ok().map(u64::from_le_bytes)
}

/// A key or name made printable for messages.
fn show(bytes: &[u8]) -> String {
    format!("\"{}\"", bytes.escape_ascii())
}

/// A read-only view of one snapshot of an LMDB data file.
#[derive(Debug)]
pub struct LmdbFile {
    /// The data file, read only with positioned reads.
    file: File,
    /// The meta page chosen at open: the snapshot every walk reads.
    meta: Meta,
    /// Whether the caller named the txnid, i.e. holds a read transaction that keeps the
    /// snapshot's pages from being reused.
    pinned: bool,
}

impl LmdbFile {
    /// Opens the file and reads both meta pages.
    ///
    /// `txnid`: `Some(t)` selects the valid meta whose txnid is `t`, for a caller that holds a
    /// read transaction at `t` in a live environment; if neither valid meta has it the result is
    /// [`ErrorKind::Stale`] (a writer has moved on; retry with a fresh read transaction).
    /// `None` is for a file at rest: both metas must be valid, with txnids of the right parity,
    /// and the one with the higher txnid is chosen, as LMDB does (see `at_rest_meta`). A meta is valid when its page header
    /// has `P_META` and its own page number, magic and version match, the page size is a power
    /// of two in 512..=65536, and its last page lies within the file. No valid meta: wrong magic
    /// on both gives Corrupt ("not an LMDB file"), another format version gives Unsupported.
    pub fn open(path: &Path, txnid: Option<u64>) -> Result<LmdbFile, LmdbError> {
        let file = File::open(path)
            .map_err(|e| LmdbError::io(&e, format_args!("opening {}", path.display()), None))?;
        let metas = read_metas(&file)?;
        let valid: Vec<&Meta> = metas.iter().filter_map(|m| m.as_ref().ok()).collect();
        if valid.is_empty() {
            let faults: Vec<&MetaFault> = metas.iter().filter_map(|m| m.as_ref().err()).collect();
            let joined = faults
                .iter()
                .map(|f| f.message.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            return Err(if faults.iter().any(|f| f.kind == ErrorKind::Unsupported) {
                LmdbError::new(ErrorKind::Unsupported, joined)
            } else if faults.iter().all(|f| !f.has_magic) {
                LmdbError::corrupt(format!("{} is not an LMDB file ({joined})", path.display()))
            } else {
                LmdbError::corrupt(format!("no usable meta page: {joined}"))
            });
        }
        let chosen = match txnid {
            Some(t) => valid.iter().find(|m| m.txnid == t).copied().ok_or_else(|| {
                let have: Vec<String> = valid.iter().map(|m| m.txnid.to_string()).collect();
                LmdbError::new(
                    ErrorKind::Stale,
                    format!("no valid meta page has txnid {t} (the file has txnid {}): a writer has moved on", have.join(" and ")),
                )
            }).copied()?,
            None => at_rest_meta(&metas)?,
        };
        Ok(LmdbFile {
            file,
            meta: chosen,
            pinned: txnid.is_some(),
        })
    }

    /// Transaction ID of the chosen snapshot.
    pub fn txnid(&self) -> u64 {
        self.meta.txnid
    }

    /// Full structural check of the snapshot the chosen meta describes.
    ///
    /// Walks the free DB, the main DB, every named DB and every duplicates sub-tree, and checks:
    /// page numbers within 2..=last page, header page numbers, no page reached twice, page type
    /// by level and depth, free-space bounds, node and sub-page extents, key order within pages
    /// and against the separators above them, node flags, overflow runs (range, type, length,
    /// overlap), counts against each tree's record, and the free list (txnid keys, page lists in
    /// range, no page listed twice or also used by a tree).
    ///
    /// For a file opened without a txnid, damage found after a writer has committed twice more
    /// is reported as [`ErrorKind::Stale`], since the writer may have reused those pages.
    pub fn check(&self) -> Result<CheckSummary, LmdbError> {
        self.settle(self.check_inner())
    }

    /// Calls `f(key, value)` for every record of named database `name`, in key order, with
    /// overflow values assembled; for DUPSORT databases once per (key, duplicate value).
    ///
    /// Returns `Ok(false)` when there is no such named database. An `Err(message)` from `f`
    /// stops the walk and comes back as [`ErrorKind::Callback`] with that message. The tree is
    /// validated as it is walked, so records before a damaged page may already have been passed
    /// to `f` when the error comes back.
    // The callback type is spelled out in the signature so callers see it without an alias.
    #[allow(clippy::type_complexity)]
    pub fn for_each(
        &self,
        name: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> Result<(), String>,
    ) -> Result<bool, LmdbError> {
        self.settle(self.for_each_inner(name, f))
    }

    /// [`LmdbFile::check`] before the stale-snapshot test.
    fn check_inner(&self) -> Result<CheckSummary, LmdbError> {
        let meta = self.meta;
        let mut walker = Walker::new(self);
        let mut free = PageSet::new(self.page_count());
        let mut free_pages = 0u64;
        let free_spec = TreeSpec {
            label: "the free DB".to_string(),
            db: meta.free,
            order: KeyOrder::Txnid,
            role: Role::Free,
            read_values: true,
        };
        walker.walk(&free_spec, &mut |key, rec| {
            let id = get_u64(key, 0).unwrap_or(u64::MAX);
            if id > meta.txnid {
                return Err(LmdbError::corrupt(format!(
                    "the free DB has a record for txnid {id}, newer than the snapshot's txnid {}",
                    meta.txnid
                )));
            }
            let Rec::Value(list) = rec else {
                return Err(LmdbError::corrupt(format!("the free DB record for txnid {id} is not a page list")));
            };
            let count = get_u64(list, 0).ok_or_else(|| {
                LmdbError::corrupt(format!("the free DB record for txnid {id} is {} bytes, too short for a page list", list.len()))
            })?;
            let room = (list.len() as u64 - 8) / 8;
            if count > room {
                return Err(LmdbError::corrupt(format!(
                    "the free DB record for txnid {id} claims {count} pages but has room for {room}"
                )));
            }
            // count <= room, and room came from the record's length, so this fits in usize.
            let ids = list.get(8..8 + count as usize * 8).unwrap_or_default();
            for chunk in ids.chunks_exact(8) {
                let page = chunk.try_into().map(u64::from_le_bytes).unwrap_or(0);
                if page < FIRST_DATA_PAGE || page > meta.last_pg {
                    return Err(LmdbError::corrupt(format!(
                        "the free DB record for txnid {id} lists page {page}, outside the data pages 2..={}",
                        meta.last_pg
                    )));
                }
                if !free.insert(page) {
                    return Err(LmdbError::at(page, "is listed twice on the free list"));
                }
                free_pages += 1;
            }
            Ok(())
        })?;
        let named = self.named_dbs(&mut walker)?;
        let mut dbs = Vec::with_capacity(named.len());
        let mut compact_copy_safe = true;
        for (name, db) in named {
            compact_copy_safe &=
                db.flags & (MDB_DUPSORT | MDB_DUPFIXED) != (MDB_DUPSORT | MDB_DUPFIXED);
            let spec = TreeSpec::named(&name, db, false)?;
            let entries = walker.walk(&spec, &mut |_, _| Ok(()))?;
            dbs.push((name, entries));
        }
        if let Some(page) = walker.seen.first_common(&free) {
            return Err(LmdbError::at(
                page,
                "is on the free list but also belongs to a tree",
            ));
        }
        Ok(CheckSummary {
            txnid: meta.txnid,
            page_size: meta.page_size,
            last_page: meta.last_pg,
            tree_pages: walker.tree_pages,
            free_pages,
            dbs,
            compact_copy_safe,
        })
    }

    /// [`LmdbFile::for_each`] before the stale-snapshot test.
    #[allow(clippy::type_complexity)]
    fn for_each_inner(
        &self,
        name: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> Result<(), String>,
    ) -> Result<bool, LmdbError> {
        let mut walker = Walker::new(self);
        let Some((_, db)) = self
            .named_dbs(&mut walker)?
            .into_iter()
            .find(|(n, _)| n == name)
        else {
            return Ok(false);
        };
        let spec = TreeSpec::named(name, db, true)?;
        walker.walk(&spec, &mut |key, rec| match rec {
            Rec::Value(value) => f(key, value).map_err(|m| LmdbError::new(ErrorKind::Callback, m)),
            // Role::Named admits neither unread values (read_values is set) nor DB records.
            Rec::Unread | Rec::Db(_) => Err(LmdbError::corrupt(format!(
                "{}: a record has no value",
                spec.label
            ))),
        })?;
        Ok(true)
    }

    /// Walks the main DB and returns its named-DB records in key order.
    fn named_dbs(&self, walker: &mut Walker<'_>) -> Result<Vec<(Vec<u8>, DbRecord)>, LmdbError> {
        let main = self.meta.main;
        if main.flags & !DB_FLAGS_KNOWN != 0 {
            return Err(LmdbError::corrupt(format!(
                "the main DB has unknown flags 0x{:04x}",
                main.flags
            )));
        }
        let spec = TreeSpec {
            label: "the main DB".to_string(),
            db: main,
            order: KeyOrder::for_keys(main.flags),
            role: Role::Main(DupSpec::for_flags(main.flags)),
            read_values: false,
        };
        let mut named = Vec::new();
        walker.walk(&spec, &mut |key, rec| {
            if let Rec::Db(db) = rec {
                named.push((key.to_vec(), db));
            }
            Ok(())
        })?;
        Ok(named)
    }

    /// Number of pages in the snapshot, meta pages included.
    fn page_count(&self) -> u64 {
        // last_pg + 1 pages fit in the file (checked at open), so this cannot overflow.
        self.meta.last_pg.saturating_add(1)
    }

    /// Page `pgno`, which the caller has checked is in the snapshot.
    fn read_page(&self, pgno: u64) -> Result<Vec<u8>, LmdbError> {
        let mut page = vec![0; self.meta.page_size];
        self.read_into(pgno, &mut page)?;
        Ok(page)
    }

    /// Fills `buf` from the start of page `pgno` on; the caller has checked that those pages are
    /// in the snapshot, so `buf` is no longer than the file.
    fn read_into(&self, pgno: u64, buf: &mut [u8]) -> Result<(), LmdbError> {
        let offset = pgno
            .checked_mul(self.meta.page_size as u64)
            .ok_or_else(|| LmdbError::at(pgno, "lies beyond any possible file offset"))?;
        self.file.read_exact_at(buf, offset).map_err(|e| {
            LmdbError::io(
                &e,
                format_args!("page {pgno}: reading {} bytes", buf.len()),
                Some(pgno),
            )
        })
    }

    /// Turns a Corrupt result of an unpinned walk into Stale when a writer has since committed
    /// twice: from then on it may reuse the walked snapshot's pages, so damage seen in them may
    /// be the writer's new data rather than corruption.
    fn settle<T>(&self, result: Result<T, LmdbError>) -> Result<T, LmdbError> {
        match result {
            Err(err) if err.kind == ErrorKind::Corrupt && !self.pinned => {
                let newest = read_metas(&self.file).ok().and_then(|metas| {
                    metas
                        .iter()
                        .filter_map(|m| m.as_ref().ok())
                        .map(|m| m.txnid)
                        .max()
                });
                match newest {
                    Some(now) if now >= self.meta.txnid.saturating_add(2) => Err(LmdbError {
                        kind: ErrorKind::Stale,
                        page: err.page,
                        message: format!(
                            "{} (the file moved from txnid {} to {now} during the walk, so those pages may have been reused)",
                            err.message, self.meta.txnid
                        ),
                    }),
                    _ => Err(err),
                }
            }
            other => other,
        }
    }
}

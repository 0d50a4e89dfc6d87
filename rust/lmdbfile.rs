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

use std::cmp::Ordering;
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

/// An on-disk `MDB_db` record: the root and statistics of one tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DbRecord {
    /// `md_pad`: page size in the free DB's meta copy, key size of `MDB_DUPFIXED` duplicates.
    pad: u32,
    /// `md_flags`: database flags (in the free DB's meta copy: environment flags).
    flags: u16,
    /// `md_depth`: levels in the tree, 0 when empty.
    depth: u16,
    /// `md_branch_pages`: branch pages in the tree.
    branch_pages: u64,
    /// `md_leaf_pages`: leaf pages in the tree.
    leaf_pages: u64,
    /// `md_overflow_pages`: pages in the tree's overflow runs.
    overflow_pages: u64,
    /// `md_entries`: records, counting each duplicate.
    entries: u64,
    /// `md_root`: root page, or `P_INVALID` when the tree is empty.
    root: u64,
}

impl DbRecord {
    /// Decodes the 48 bytes at the start of `b`.
    fn parse(b: &[u8]) -> Option<DbRecord> {
        Some(DbRecord {
            pad: get_u32(b, 0)?,
            flags: get_u16(b, 4)?,
            depth: get_u16(b, 6)?,
            branch_pages: get_u64(b, 8)?,
            leaf_pages: get_u64(b, 16)?,
            overflow_pages: get_u64(b, 24)?,
            entries: get_u64(b, 32)?,
            root: get_u64(b, 40)?,
        })
    }
}

/// The fields of a meta page as found, before any validation.
#[derive(Clone, Copy, Debug)]
struct RawMeta {
    /// Page number in the page header.
    pgno: u64,
    /// Flags in the page header.
    flags: u16,
    /// `mm_magic`.
    magic: u32,
    /// `mm_version`.
    version: u32,
    /// `mm_dbs[FREE_DBI]`; its `pad` is the page size.
    free: DbRecord,
    /// `mm_dbs[MAIN_DBI]`.
    main: DbRecord,
    /// `mm_last_pg`.
    last_pg: u64,
    /// `mm_txnid`.
    txnid: u64,
}

impl RawMeta {
    /// Decodes a meta page's first [`META_BYTES`] bytes.
    fn parse(b: &[u8]) -> Option<RawMeta> {
        Some(RawMeta {
            pgno: get_u64(b, 0)?,
            flags: get_u16(b, 10)?,
            magic: get_u32(b, 16)?,
            version: get_u32(b, 20)?,
            free: DbRecord::parse(b.get(40..88)?)?,
            main: DbRecord::parse(b.get(88..136)?)?,
            last_pg: get_u64(b, 136)?,
            txnid: get_u64(b, 144)?,
        })
    }
}

/// A meta page that passed validation: one committed snapshot.
#[derive(Clone, Copy, Debug)]
struct Meta {
    /// Page size in bytes.
    page_size: usize,
    /// Last page in use.
    last_pg: u64,
    /// Transaction that committed this snapshot.
    txnid: u64,
    /// The free DB's record.
    free: DbRecord,
    /// The main DB's record.
    main: DbRecord,
}

/// Why a meta page was rejected.
#[derive(Clone, Debug)]
struct MetaFault {
    /// Unsupported for a foreign format version, Corrupt otherwise.
    kind: ErrorKind,
    /// Whether the page at least carried the LMDB magic.
    has_magic: bool,
    /// What is wrong with it.
    message: String,
}

/// Whether `psize` is a page size LMDB can have written.
fn sane_page_size(psize: usize) -> bool {
    psize.is_power_of_two() && (MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&psize)
}

/// Reads the meta bytes at `offset`; `None` when the file is too short to hold them.
fn read_raw_meta(file: &File, offset: u64) -> Result<Option<RawMeta>, LmdbError> {
    let mut buf = [0u8; META_BYTES];
    match file.read_exact_at(&mut buf, offset) {
        Ok(()) => Ok(RawMeta::parse(&buf)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(LmdbError::io(
            &e,
            format_args!("reading a meta page at byte {offset}"),
            None,
        )),
    }
}

/// Reads meta pages 0 and 1, each with the byte offset it was read at.
///
/// Meta page 1 sits one page after meta page 0, but the page size is only recorded inside the
/// meta pages; when meta page 0 does not locate it, every legal page size is tried and the meta
/// page whose own page size matches its offset is taken.
fn read_raw_metas(file: &File) -> Result<[(Option<RawMeta>, u64); 2], LmdbError> {
    let meta0 = read_raw_meta(file, 0)?;
    let hinted = meta0
        .map(|m| u64::from(m.free.pad))
        .filter(|&p| usize::try_from(p).is_ok_and(sane_page_size));
    let locates =
        |m: &RawMeta, offset: u64| m.magic == MDB_MAGIC && u64::from(m.free.pad) == offset;
    let mut fallback = (None, 0);
    if let Some(offset) = hinted {
        fallback = (read_raw_meta(file, offset)?, offset);
        if fallback.0.is_some_and(|m| locates(&m, offset)) {
            return Ok([(meta0, 0), fallback]);
        }
    }
    let mut offset = MIN_PAGE_SIZE as u64;
    while offset <= MAX_PAGE_SIZE as u64 {
        if Some(offset) != hinted {
            let found = read_raw_meta(file, offset)?;
            if found.is_some_and(|m| locates(&m, offset)) {
                return Ok([(meta0, 0), (found, offset)]);
            }
        }
        offset *= 2;
    }
    Ok([(meta0, 0), fallback])
}

/// Validates meta page `index`, read at byte `offset`, against the file length.
fn judge_meta(
    raw: Option<RawMeta>,
    index: u64,
    offset: u64,
    file_len: u64,
) -> Result<Meta, MetaFault> {
    let fault = |kind, has_magic, message: String| MetaFault {
        kind,
        has_magic,
        message,
    };
    let Some(raw) = raw else {
        let message = if index == 0 {
            "the file is too short to hold meta page 0".to_string()
        } else {
            "meta page 1 was not found at any page size".to_string()
        };
        return Err(fault(ErrorKind::Corrupt, false, message));
    };
    if raw.magic != MDB_MAGIC {
        return Err(fault(
            ErrorKind::Corrupt,
            false,
            format!(
                "meta page {index} has magic 0x{:08x}, not 0x{MDB_MAGIC:08x}",
                raw.magic
            ),
        ));
    }
    if raw.version != MDB_DATA_VERSION {
        return Err(fault(
            ErrorKind::Unsupported,
            true,
            format!("meta page {index} has data format version {}; only version 1 (LMDB 0.9) is supported", raw.version),
        ));
    }
    if raw.flags & P_META == 0 {
        return Err(fault(
            ErrorKind::Corrupt,
            true,
            format!(
                "meta page {index} has page flags 0x{:04x} without P_META",
                raw.flags
            ),
        ));
    }
    if raw.pgno != index {
        return Err(fault(
            ErrorKind::Corrupt,
            true,
            format!(
                "meta page {index} has page number {} in its header",
                raw.pgno
            ),
        ));
    }
    let page_size = usize::try_from(raw.free.pad).unwrap_or(0);
    if !sane_page_size(page_size) {
        return Err(fault(
            ErrorKind::Corrupt,
            true,
            format!("meta page {index} has page size {}", raw.free.pad),
        ));
    }
    if index == 1 && offset != page_size as u64 {
        return Err(fault(
            ErrorKind::Corrupt,
            true,
            format!(
                "meta page 1 at byte {offset} has page size {page_size}, which puts it elsewhere"
            ),
        ));
    }
    if raw.last_pg < 1 {
        return Err(fault(
            ErrorKind::Corrupt,
            true,
            format!("meta page {index} has last page {}", raw.last_pg),
        ));
    }
    let end = raw
        .last_pg
        .checked_add(1)
        .and_then(|n| n.checked_mul(page_size as u64));
    if end.is_none_or(|end| end > file_len) {
        return Err(fault(
            ErrorKind::Corrupt,
            true,
            format!(
                "meta page {index} has last page {}, past the end of the {file_len}-byte file",
                raw.last_pg
            ),
        ));
    }
    Ok(Meta {
        page_size,
        last_pg: raw.last_pg,
        txnid: raw.txnid,
        free: raw.free,
        main: raw.main,
    })
}

/// Reads and validates both meta pages as the file is now.
fn read_metas(file: &File) -> Result<[Result<Meta, MetaFault>; 2], LmdbError> {
    let [(raw0, at0), (raw1, at1)] = read_raw_metas(file)?;
    // The length is taken after the metas: the file only grows, so every page a meta names
    // was written before the meta and lies within this length.
    let len = file
        .metadata()
        .map_err(|e| LmdbError::io(&e, "reading the file length", None))?
        .len();
    Ok([judge_meta(raw0, 0, at0, len), judge_meta(raw1, 1, at1, len)])
}

/// The meta page LMDB itself reads from a file at rest (no txnid given: a backup, a fresh
/// copy), given that at least one meta page is valid.
///
/// LMDB opens a file only when both meta pages carry `P_META`, the magic and the version, and
/// then reads the one with the higher txnid whatever its other fields say. So an invalid meta
/// page is damage here, not a torn write to step around: checking the older, valid meta would
/// vouch for a snapshot LMDB does not read (a damaged page size or root in the newer one). The
/// commit parity (txn N writes meta page N % 2) must hold too. Live files are checked with the
/// txnid of a read transaction instead, which tolerates the meta page a writer is rewriting.
fn at_rest_meta(metas: &[Result<Meta, MetaFault>; 2]) -> Result<Meta, LmdbError> {
    for m in metas {
        if let Err(f) = m {
            return Err(LmdbError::new(
                f.kind,
                format!(
                    "{} (the other meta page is intact, but LMDB reads both)",
                    f.message
                ),
            ));
        }
    }
    let (Ok(m0), Ok(m1)) = (&metas[0], &metas[1]) else {
        unreachable!("both checked above")
    };
    if m0.txnid % 2 == 1
        || (m1.txnid != 0 && m1.txnid % 2 == 0)
        || (m0.txnid != 0 && m0.txnid == m1.txnid)
    {
        return Err(LmdbError::corrupt(format!(
            "meta pages 0 and 1 have txnids {} and {}: LMDB writes even txnids to page 0 and odd ones to page 1",
            m0.txnid, m1.txnid
        )));
    }
    Ok(if m1.txnid > m0.txnid { *m1 } else { *m0 })
}

/// One set of pages, one bit each, bounded by the snapshot's last page.
struct PageSet {
    /// Bit `p % 64` of word `p / 64` stands for page `p`.
    words: Vec<u64>,
}

impl PageSet {
    /// An empty set for pages `0..pages`.
    fn new(pages: u64) -> PageSet {
        let words = usize::try_from(pages.div_ceil(64)).unwrap_or(0);
        PageSet {
            words: vec![0; words],
        }
    }

    /// Adds `page`; false when it was already present (or outside the set, which callers exclude).
    fn insert(&mut self, page: u64) -> bool {
        let Some(word) = usize::try_from(page / 64)
            .ok()
            .and_then(|i| self.words.get_mut(i))
        else {
            return false;
        };
        let bit = 1u64 << (page % 64);
        let fresh = *word & bit == 0;
        *word |= bit;
        fresh
    }

    /// The lowest page present in both sets.
    fn first_common(&self, other: &PageSet) -> Option<u64> {
        self.words
            .iter()
            .zip(&other.words)
            .enumerate()
            .find_map(|(i, (a, b))| {
                let both = a & b;
                (both != 0).then(|| i as u64 * 64 + u64::from(both.trailing_zeros()))
            })
    }
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

    /// Page size in bytes.
    pub fn page_size(&self) -> usize {
        self.meta.page_size
    }

    /// Last page in use by the chosen snapshot.
    pub fn last_page(&self) -> u64 {
        self.meta.last_pg
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

    /// Names of the named databases (main-DB keys with `F_SUBDATA`), in key order.
    pub fn db_names(&self) -> Result<Vec<Vec<u8>>, LmdbError> {
        self.settle(
            self.named_dbs(&mut Walker::new(self))
                .map(|dbs| dbs.into_iter().map(|(name, _)| name).collect()),
        )
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

/// How a tree's keys are ordered, which decides the order checks that apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyOrder {
    /// Default comparison: bytewise, a prefix sorts first.
    Bytes,
    /// The free DB: 8-byte native txnids.
    Txnid,
    /// Reverse or integer comparison: order not checked.
    Unchecked,
}

impl KeyOrder {
    /// The key order of a database with flags `flags`.
    fn for_keys(flags: u16) -> KeyOrder {
        if flags & (MDB_REVERSEKEY | MDB_INTEGERKEY) != 0 {
            KeyOrder::Unchecked
        } else {
            KeyOrder::Bytes
        }
    }

    /// How `a` compares with `b`, or None when this order is not checked.
    fn compare(self, a: &[u8], b: &[u8]) -> Result<Option<Ordering>, String> {
        match self {
            KeyOrder::Bytes => Ok(Some(a.cmp(b))),
            KeyOrder::Unchecked => Ok(None),
            KeyOrder::Txnid => match (<[u8; 8]>::try_from(a), <[u8; 8]>::try_from(b)) {
                (Ok(a), Ok(b)) => Ok(Some(u64::from_le_bytes(a).cmp(&u64::from_le_bytes(b)))),
                _ => Err(format!(
                    "a free DB key of {} bytes is not an 8-byte txnid",
                    if a.len() == 8 { b.len() } else { a.len() }
                )),
            },
        }
    }
}

/// How the duplicates of a DUPSORT database are stored and ordered.
#[derive(Clone, Copy, Debug)]
struct DupSpec {
    /// Order of the duplicates of one key.
    order: KeyOrder,
    /// `MDB_DUPFIXED`: duplicates are packed fixed-size keys on LEAF2 pages.
    fixed: bool,
}

impl DupSpec {
    /// The duplicates layout of a database with flags `flags`, None unless DUPSORT.
    fn for_flags(flags: u16) -> Option<DupSpec> {
        (flags & MDB_DUPSORT != 0).then_some(DupSpec {
            order: if flags & (MDB_INTEGERDUP | MDB_REVERSEDUP) != 0 {
                KeyOrder::Unchecked
            } else {
                KeyOrder::Bytes
            },
            fixed: flags & MDB_DUPFIXED != 0,
        })
    }
}

/// What a tree is, which decides the page and node forms legal in it.
#[derive(Clone, Copy, Debug)]
enum Role {
    /// The free DB: txnid keys, page-list values.
    Free,
    /// The main DB: may hold named-DB records, and be DUPSORT itself.
    Main(Option<DupSpec>),
    /// A named database.
    Named(Option<DupSpec>),
    /// The duplicates sub-tree of one key: nodes without data, or with `Some(size)` LEAF2
    /// leaves of `size`-byte keys.
    Dups(Option<usize>),
}

/// One tree to walk.
struct TreeSpec {
    /// Names the tree in messages.
    label: String,
    /// Root, depth and counts that the walk must confirm.
    db: DbRecord,
    /// How the tree's keys are ordered.
    order: KeyOrder,
    /// What its leaves may hold.
    role: Role,
    /// Whether overflow values are read and passed on, or only their pages checked.
    read_values: bool,
}

impl TreeSpec {
    /// The spec of named database `name` with record `db`.
    fn named(name: &[u8], db: DbRecord, read_values: bool) -> Result<TreeSpec, LmdbError> {
        let label = format!("DB {}", show(name));
        if db.flags & !DB_FLAGS_KNOWN != 0 {
            return Err(LmdbError::corrupt(format!(
                "{label} has unknown flags 0x{:04x}",
                db.flags
            )));
        }
        Ok(TreeSpec {
            label,
            db,
            order: KeyOrder::for_keys(db.flags),
            role: Role::Named(DupSpec::for_flags(db.flags)),
            read_values,
        })
    }
}

/// One record as handed from a leaf to a walk's visitor.
enum Rec<'a> {
    /// A value, a duplicate, or empty for a duplicates sub-tree's key.
    Value(&'a [u8]),
    /// An overflow value whose pages were checked but not read.
    Unread,
    /// A named-DB record in the main DB.
    Db(DbRecord),
}

/// What a walk calls for each record.
type Visit<'v> = dyn FnMut(&[u8], Rec<'_>) -> Result<(), LmdbError> + 'v;

/// Pages and records counted while walking one tree.
#[derive(Default)]
struct Counts {
    /// Branch pages.
    branch: u64,
    /// Leaf pages.
    leaf: u64,
    /// Pages of overflow runs.
    overflow: u64,
    /// Records, counting each duplicate.
    entries: u64,
}

/// The previous key of a run of keys, for the ascending check.
#[derive(Default)]
struct LastKey {
    /// The key bytes, valid when `set`.
    key: Vec<u8>,
    /// Whether a key has been seen.
    set: bool,
}

/// A page on the walk's stack.
struct Frame {
    /// Its page number.
    pgno: u64,
    /// Its bytes.
    page: Vec<u8>,
    /// 1 for the root, the tree's depth for leaves.
    level: u16,
    /// `mp_upper`: nodes must lie at or above it.
    upper: usize,
    /// Number of nodes.
    nkeys: usize,
    /// Next child to descend into (branch pages).
    next: usize,
    /// The range its keys, and all keys below it, must fall in.
    bounds: Bounds,
}

/// The key range of a page, set by the branch nodes above it.
#[derive(Clone, Default)]
struct Bounds {
    /// Keys are >= this key (None: no lower bound).
    lo: Option<Vec<u8>>,
    /// Keys are < this key (None: no upper bound).
    hi: Option<Vec<u8>>,
}

/// A node of a branch or leaf page.
struct Node<'a> {
    /// `mn_lo`: low 16 bits of the data size or child page.
    lo: u16,
    /// `mn_hi`: next 16 bits of the data size or child page.
    hi: u16,
    /// `mn_flags`: node flags on leaves, bits 32..48 of the child page on branches.
    flags: u16,
    /// The key.
    key: &'a [u8],
    /// The data stored in the node (8 bytes for `F_BIGDATA`, nothing on branch pages).
    data: &'a [u8],
}

impl Node<'_> {
    /// The child page of a branch node.
    fn child(&self) -> u64 {
        u64::from(self.lo) | u64::from(self.hi) << 16 | u64::from(self.flags) << 32
    }

    /// The data size of a leaf node (the full value size for `F_BIGDATA`).
    fn data_size(&self) -> u32 {
        u32::from(self.lo) | u32::from(self.hi) << 16
    }
}

/// The fields of a page header that matter here.
struct Header {
    /// `mp_pgno`.
    pgno: u64,
    /// `mp_pad`: key size on LEAF2 sub-pages.
    pad: u16,
    /// `mp_flags`.
    flags: u16,
    /// `mp_lower`.
    lower: u16,
    /// `mp_upper`.
    upper: u16,
    /// `mp_pages`, which shares its bytes with lower and upper on overflow pages.
    pages: u32,
}

/// Decodes the header at the start of `b`.
fn header(b: &[u8]) -> Option<Header> {
    Some(Header {
        pgno: get_u64(b, 0)?,
        pad: get_u16(b, 8)?,
        flags: get_u16(b, 10)?,
        lower: get_u16(b, 12)?,
        upper: get_u16(b, 14)?,
        pages: get_u32(b, 12)?,
    })
}

/// Number of nodes of a (sub-)page of `size` bytes, after checking its free-space bounds.
fn slots(h: &Header, size: usize) -> Result<usize, String> {
    let (lower, upper) = (usize::from(h.lower), usize::from(h.upper));
    if lower < PAGEHDRSZ || lower > upper || upper > size {
        return Err(format!("free-space bounds lower {lower}, upper {upper} break {PAGEHDRSZ} <= lower <= upper <= {size}"));
    }
    if (lower - PAGEHDRSZ) % 2 != 0 {
        return Err(format!("lower {lower} leaves half a node pointer"));
    }
    Ok((lower - PAGEHDRSZ) / 2)
}

/// Node `i` of a (sub-)page whose nodes lie in `upper..page.len()`; `leaf` says whether data
/// follows the key.
fn node(page: &[u8], upper: usize, i: usize, leaf: bool) -> Result<Node<'_>, String> {
    let at = usize::from(
        get_u16(page, PAGEHDRSZ + 2 * i)
            .ok_or_else(|| format!("node {i}'s pointer lies past the page end"))?,
    );
    if at < upper {
        return Err(format!(
            "node {i} at offset {at} lies in the free space below upper {upper}"
        ));
    }
    let (Some(lo), Some(hi), Some(flags), Some(ksize)) = (
        get_u16(page, at),
        get_u16(page, at + 2),
        get_u16(page, at + 4),
        get_u16(page, at + 6),
    ) else {
        return Err(format!("node {i} at offset {at} extends past the page end"));
    };
    let key_start = at + NODESIZE;
    let key_end = key_start + usize::from(ksize);
    let key = page
        .get(key_start..key_end)
        .ok_or_else(|| format!("node {i}'s {ksize}-byte key extends past the page end"))?;
    let mut n = Node {
        lo,
        hi,
        flags,
        key,
        data: &[],
    };
    if leaf {
        let stored = if flags & F_BIGDATA != 0 {
            8
        } else {
            n.data_size() as usize
        };
        n.data = key_end
            .checked_add(stored)
            .and_then(|end| page.get(key_end..end))
            .ok_or_else(|| format!("node {i}'s {stored}-byte data extends past the page end"))?;
    }
    Ok(n)
}

/// Checks that `key` follows `last` and lies in `[lo, hi)`, then records it as the last key.
fn check_key(
    order: KeyOrder,
    key: &[u8],
    last: &mut LastKey,
    lo: Option<&[u8]>,
    hi: Option<&[u8]>,
) -> Result<(), String> {
    if last.set
        && order
            .compare(&last.key, key)?
            .is_some_and(|o| o != Ordering::Less)
    {
        return Err(format!(
            "key {} does not sort after the key before it, {}",
            show(key),
            show(&last.key)
        ));
    }
    if let Some(lo) = lo {
        if order.compare(key, lo)? == Some(Ordering::Less) {
            return Err(format!(
                "key {} sorts before {}, the lower bound set by the parent branch",
                show(key),
                show(lo)
            ));
        }
    }
    if let Some(hi) = hi {
        if order.compare(key, hi)?.is_some_and(|o| o != Ordering::Less) {
            return Err(format!(
                "key {} does not sort before {}, the upper bound set by the parent branch",
                show(key),
                show(hi)
            ));
        }
    }
    last.key.clear();
    last.key.extend_from_slice(key);
    last.set = true;
    Ok(())
}

/// Walks trees of one snapshot, sharing one record of the pages already reached.
struct Walker<'f> {
    /// The file and snapshot being walked.
    file: &'f LmdbFile,
    /// Pages reached by any tree so far: catches cycles, shared pages and overlapping runs.
    seen: PageSet,
    /// Branch, leaf and overflow pages reached so far.
    tree_pages: u64,
}

impl<'f> Walker<'f> {
    /// A walker that has reached no page yet.
    fn new(file: &'f LmdbFile) -> Walker<'f> {
        Walker {
            file,
            seen: PageSet::new(file.page_count()),
            tree_pages: 0,
        }
    }

    /// Walks one tree in key order, calling `visit` per record, checks the tree's counts against
    /// its record, and returns its number of entries.
    fn walk(&mut self, spec: &TreeSpec, visit: &mut Visit<'_>) -> Result<u64, LmdbError> {
        let db = spec.db;
        // md_pad is the page size in the free DB's record, and a DUPFIXED key size (or 0) in
        // every other: LMDB never writes one larger than a page's usable space.
        let usable = self.file.meta.page_size - PAGEHDRSZ;
        if !matches!(spec.role, Role::Free) && db.pad as usize > usable {
            return Err(LmdbError::corrupt(format!(
                "{} has md_pad {}, more than the {usable} usable bytes of a page",
                spec.label, db.pad
            )));
        }
        if db.root == P_INVALID {
            if (
                db.depth,
                db.branch_pages,
                db.leaf_pages,
                db.overflow_pages,
                db.entries,
            ) != (0, 0, 0, 0, 0)
            {
                return Err(LmdbError::corrupt(format!(
                    "{} has no root page, yet its record claims depth {} and {} entries",
                    spec.label, db.depth, db.entries
                )));
            }
            return Ok(0);
        }
        if db.depth == 0 || db.depth > MAX_DEPTH {
            return Err(LmdbError::corrupt(format!(
                "{} has depth {}, outside 1..={MAX_DEPTH}",
                spec.label, db.depth
            )));
        }
        let mut counts = Counts::default();
        let mut last = LastKey::default();
        let mut stack = Vec::with_capacity(usize::from(db.depth));
        stack.push(self.load(spec, db.root, 1, None, Bounds::default(), &mut counts)?);
        while let Some(top) = stack.last_mut() {
            if top.level == db.depth {
                if let Some(frame) = stack.pop() {
                    self.leaf(spec, &frame, &mut last, &mut counts, visit)?;
                }
                continue;
            }
            if top.next >= top.nkeys {
                stack.pop();
                continue;
            }
            let i = top.next;
            top.next += 1;
            let at = |m: String| LmdbError::at(top.pgno, format!("{m} ({})", spec.label));
            let child = node(&top.page, top.upper, i, false).map_err(at)?;
            // Child i holds the keys from separator i (inclusive) to separator i + 1.
            let lo = if i == 0 {
                top.bounds.lo.clone()
            } else {
                Some(child.key.to_vec())
            };
            let hi = if i + 1 < top.nkeys {
                Some(
                    node(&top.page, top.upper, i + 1, false)
                        .map_err(at)?
                        .key
                        .to_vec(),
                )
            } else {
                top.bounds.hi.clone()
            };
            let (from, level, pgno) = ((top.pgno, i), top.level + 1, child.child());
            let frame = self.load(
                spec,
                pgno,
                level,
                Some(from),
                Bounds { lo, hi },
                &mut counts,
            )?;
            stack.push(frame);
        }
        let claims = [
            ("branch pages", db.branch_pages, counts.branch),
            ("leaf pages", db.leaf_pages, counts.leaf),
            ("overflow pages", db.overflow_pages, counts.overflow),
            ("entries", db.entries, counts.entries),
        ];
        // A DUPSORT tree's page counts differ between LMDB releases (see the module docs) and
        // drift upward in newer ones; its entries and depth are exact in all of them.
        let skip = match spec.role {
            Role::Main(dups) | Role::Named(dups) => usize::from(dups.is_some()) * 3,
            Role::Free | Role::Dups(_) => 0,
        };
        for (what, claimed, found) in claims.into_iter().skip(skip) {
            if claimed != found {
                return Err(LmdbError::corrupt(format!(
                    "{}: its record counts {claimed} {what}, the tree has {found}",
                    spec.label
                )));
            }
        }
        Ok(counts.entries)
    }

    /// Claims page `pgno` for a tree, reads it and checks its header for `level`; branch pages
    /// also get their keys checked, as they bound the keys below them.
    fn load(
        &mut self,
        spec: &TreeSpec,
        pgno: u64,
        level: u16,
        from: Option<(u64, usize)>,
        bounds: Bounds,
        counts: &mut Counts,
    ) -> Result<Frame, LmdbError> {
        let last_pg = self.file.meta.last_pg;
        if !(FIRST_DATA_PAGE..=last_pg).contains(&pgno) {
            return Err(match from {
                Some((parent, i)) => LmdbError::at(
                    parent,
                    format!(
                        "node {i} points to page {pgno}, outside the data pages 2..={last_pg} ({})",
                        spec.label
                    ),
                ),
                None => LmdbError::corrupt(format!(
                    "{}: root page {pgno} is outside the data pages 2..={last_pg}",
                    spec.label
                )),
            });
        }
        if !self.seen.insert(pgno) {
            return Err(LmdbError::at(
                pgno,
                format!(
                    "reached a second time, a cycle or a page shared between trees ({})",
                    spec.label
                ),
            ));
        }
        let page = self.file.read_page(pgno)?;
        let at = |m: String| LmdbError::at(pgno, format!("{m} ({})", spec.label));
        let h = header(&page).ok_or_else(|| at("too short for a page header".to_string()))?;
        if h.pgno != pgno {
            return Err(at(format!("its header says it is page {}", h.pgno)));
        }
        let depth = spec.db.depth;
        let want = if level < depth {
            P_BRANCH
        } else if matches!(spec.role, Role::Dups(Some(_))) {
            P_LEAF | P_LEAF2
        } else {
            P_LEAF
        };
        if h.flags != want {
            return Err(at(format!(
                "has page flags 0x{:04x} at level {level} of a depth-{depth} tree, expected 0x{want:04x}",
                h.flags
            )));
        }
        let nkeys = slots(&h, page.len()).map_err(at)?;
        if nkeys == 0 {
            return Err(at("has no nodes".to_string()));
        }
        if want == P_BRANCH {
            counts.branch += 1;
        } else {
            counts.leaf += 1;
        }
        self.tree_pages += 1;
        let frame = Frame {
            pgno,
            page,
            level,
            upper: usize::from(h.upper),
            nkeys,
            next: 0,
            bounds,
        };
        if want == P_BRANCH {
            let mut last = LastKey::default();
            for i in 0..nkeys {
                let n = node(&frame.page, frame.upper, i, false).map_err(at)?;
                // The first key of a branch page is never compared by LMDB and is usually empty.
                if i > 0 {
                    check_key(
                        spec.order,
                        n.key,
                        &mut last,
                        frame.bounds.lo.as_deref(),
                        frame.bounds.hi.as_deref(),
                    )
                    .map_err(|m| at(format!("node {i}: {m}")))?;
                }
            }
        }
        Ok(frame)
    }

    /// Checks the records of one leaf page and passes them to `visit`.
    fn leaf(
        &mut self,
        spec: &TreeSpec,
        frame: &Frame,
        last: &mut LastKey,
        counts: &mut Counts,
        visit: &mut Visit<'_>,
    ) -> Result<(), LmdbError> {
        let pgno = frame.pgno;
        let at = |m: String| LmdbError::at(pgno, format!("{m} ({})", spec.label));
        let (lo, hi) = (frame.bounds.lo.as_deref(), frame.bounds.hi.as_deref());
        if let Role::Dups(Some(size)) = spec.role {
            let keys = size
                .checked_mul(frame.nkeys)
                .and_then(|len| frame.page.get(PAGEHDRSZ..PAGEHDRSZ.checked_add(len)?))
                .ok_or_else(|| {
                    at(format!(
                        "{} keys of {size} bytes extend past the page end",
                        frame.nkeys
                    ))
                })?;
            for i in 0..frame.nkeys {
                let key = keys.get(i * size..(i + 1) * size).unwrap_or_default();
                check_key(spec.order, key, last, lo, hi)
                    .map_err(|m| at(format!("key {i}: {m}")))?;
                counts.entries += 1;
                visit(key, Rec::Value(&[]))?;
            }
            return Ok(());
        }
        let dups = match spec.role {
            Role::Main(dups) | Role::Named(dups) => dups,
            Role::Free | Role::Dups(_) => None,
        };
        for i in 0..frame.nkeys {
            let n = node(&frame.page, frame.upper, i, true).map_err(at)?;
            check_key(spec.order, n.key, last, lo, hi).map_err(|m| at(format!("node {i}: {m}")))?;
            match (n.flags, spec.role, dups) {
                (0, Role::Dups(_), _) => {
                    if !n.data.is_empty() {
                        return Err(at(format!(
                            "node {i} is a duplicate but carries {} bytes of data",
                            n.data.len()
                        )));
                    }
                    counts.entries += 1;
                    visit(n.key, Rec::Value(&[]))?;
                }
                (0, _, _) => {
                    counts.entries += 1;
                    visit(n.key, Rec::Value(n.data))?;
                }
                (F_BIGDATA, Role::Free | Role::Main(_) | Role::Named(_), _) => {
                    let value = self.overflow(spec, pgno, i, &n, counts)?;
                    counts.entries += 1;
                    match &value {
                        Some(v) => visit(n.key, Rec::Value(v))?,
                        None => visit(n.key, Rec::Unread)?,
                    }
                }
                (F_SUBDATA, Role::Main(_), _) => {
                    let db = db_record(&n).map_err(|m| at(format!("node {i}: {m}")))?;
                    counts.entries += 1;
                    visit(n.key, Rec::Db(db))?;
                }
                (F_DUPDATA, _, Some(dup)) => {
                    let found = sub_page(n.data, dup, n.key, visit).map_err(|e| match e {
                        SubPageError::Bad(m) => at(format!("node {i}'s duplicates sub-page: {m}")),
                        SubPageError::Visit(e) => e,
                    })?;
                    counts.entries += found;
                }
                (F_DUPDATA_SUBDATA, _, Some(dup)) => {
                    let db = db_record(&n).map_err(|m| at(format!("node {i}: {m}")))?;
                    let fixed = if dup.fixed {
                        Some(
                            usize::try_from(db.pad)
                                .map_err(|_| at(format!("node {i}: duplicate size {}", db.pad)))?,
                        )
                    } else {
                        None
                    };
                    let sub = TreeSpec {
                        label: format!("duplicates of key {} in {}", show(n.key), spec.label),
                        db,
                        order: dup.order,
                        role: Role::Dups(fixed),
                        read_values: false,
                    };
                    let key = n.key;
                    counts.entries +=
                        self.walk(&sub, &mut |dup_value, _| visit(key, Rec::Value(dup_value)))?;
                }
                (flags, _, _) => {
                    return Err(at(format!(
                        "node {i} has node flags 0x{flags:x}, which {} cannot hold",
                        spec.label
                    )));
                }
            }
        }
        Ok(())
    }

    /// Claims and checks the overflow run of node `i` on page `pgno`; returns its value when the
    /// spec asks for values.
    fn overflow(
        &mut self,
        spec: &TreeSpec,
        pgno: u64,
        i: usize,
        n: &Node<'_>,
        counts: &mut Counts,
    ) -> Result<Option<Vec<u8>>, LmdbError> {
        let last_pg = self.file.meta.last_pg;
        let psize = self.file.meta.page_size;
        let size = n.data_size();
        let first = get_u64(n.data, 0).unwrap_or(0);
        if !(FIRST_DATA_PAGE..=last_pg).contains(&first) {
            return Err(LmdbError::at(
                pgno,
                format!("node {i}'s value lives on page {first}, outside the data pages 2..={last_pg} ({})", spec.label),
            ));
        }
        let at = |m: String| LmdbError::at(first, format!("{m} ({})", spec.label));
        if !self.seen.insert(first) {
            return Err(at(
                "overflow page reached a second time, shared or overlapping".to_string(),
            ));
        }
        let mut run = self.file.read_page(first)?;
        let h = header(&run).ok_or_else(|| at("too short for a page header".to_string()))?;
        if h.pgno != first {
            return Err(at(format!("its header says it is page {}", h.pgno)));
        }
        if h.flags != P_OVERFLOW {
            return Err(at(format!(
                "has page flags 0x{:04x}, expected an overflow page (0x{P_OVERFLOW:04x})",
                h.flags
            )));
        }
        let pages = u64::from(h.pages);
        let end = first.checked_add(pages).and_then(|e| e.checked_sub(1));
        let end = match end {
            Some(end) if pages > 0 && end <= last_pg => end,
            _ => {
                return Err(at(format!(
                    "overflow run of {pages} pages does not fit in pages {first}..={last_pg}"
                )))
            }
        };
        let room = (pages * psize as u64).saturating_sub(PAGEHDRSZ as u64);
        if u64::from(size) > room {
            return Err(at(format!(
                "overflow run of {pages} pages holds {room} bytes, too few for a {size}-byte value"
            )));
        }
        for page in first + 1..=end {
            if !self.seen.insert(page) {
                return Err(LmdbError::at(
                    page,
                    format!("lies inside the overflow run at page {first} but is also used elsewhere ({})", spec.label),
                ));
            }
        }
        counts.overflow += pages;
        self.tree_pages += pages;
        if !spec.read_values {
            return Ok(None);
        }
        // Only the pages the value reaches are read: a run may be longer than its value when
        // LMDB overwrote it in place with a smaller one. The value fits in `room`, so the
        // length is within the run, which lies within the file.
        let len = PAGEHDRSZ + size as usize;
        if len > psize {
            run.resize(len, 0);
            if let Some(rest) = run.get_mut(psize..) {
                self.file.read_into(first + 1, rest)?;
            }
        }
        run.truncate(len);
        run.drain(..PAGEHDRSZ);
        Ok(Some(run))
    }
}

/// The `MDB_db` record held by a node.
fn db_record(n: &Node<'_>) -> Result<DbRecord, String> {
    if n.data.len() != DB_RECORD_SIZE {
        return Err(format!(
            "its database record is {} bytes, not {DB_RECORD_SIZE}",
            n.data.len()
        ));
    }
    DbRecord::parse(n.data).ok_or_else(|| "its database record is unreadable".to_string())
}

/// Why a duplicates sub-page walk stopped.
enum SubPageError {
    /// The sub-page is malformed.
    Bad(String),
    /// The visitor stopped the walk.
    Visit(LmdbError),
}

/// Checks the duplicates sub-page `sub` of key `key` and passes each duplicate to `visit`;
/// returns the number of duplicates.
fn sub_page(
    sub: &[u8],
    dup: DupSpec,
    key: &[u8],
    visit: &mut Visit<'_>,
) -> Result<u64, SubPageError> {
    let bad = SubPageError::Bad;
    let h = header(sub).ok_or_else(|| {
        bad(format!(
            "{} bytes is too small for a page header",
            sub.len()
        ))
    })?;
    let want = P_LEAF | P_SUBP | if dup.fixed { P_LEAF2 } else { 0 };
    if h.flags & !P_DIRTY != want {
        return Err(bad(format!(
            "has page flags 0x{:04x}, expected 0x{want:04x}",
            h.flags
        )));
    }
    let n = slots(&h, sub.len()).map_err(bad)?;
    if n == 0 {
        return Err(bad("holds no duplicates".to_string()));
    }
    let mut last = LastKey::default();
    if dup.fixed {
        let size = usize::from(h.pad);
        let values = sub.get(PAGEHDRSZ..PAGEHDRSZ + size * n).ok_or_else(|| {
            bad(format!(
                "{n} duplicates of {size} bytes extend past its end"
            ))
        })?;
        for i in 0..n {
            let value = values.get(i * size..(i + 1) * size).unwrap_or_default();
            check_key(dup.order, value, &mut last, None, None)
                .map_err(|m| bad(format!("duplicate {i}: {m}")))?;
            visit(key, Rec::Value(value)).map_err(SubPageError::Visit)?;
        }
    } else {
        let upper = usize::from(h.upper);
        for i in 0..n {
            let d = node(sub, upper, i, true).map_err(bad)?;
            if d.flags != 0 || !d.data.is_empty() {
                return Err(bad(format!(
                    "duplicate {i} has node flags 0x{:x} and {} bytes of data",
                    d.flags,
                    d.data.len()
                )));
            }
            check_key(dup.order, d.key, &mut last, None, None)
                .map_err(|m| bad(format!("duplicate {i}: {m}")))?;
            visit(key, Rec::Value(d.key)).map_err(SubPageError::Visit)?;
        }
    }
    Ok(n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testlmdb::{Env, TempDir};
    use lmdb_sys as ffi;
    use std::collections::{BTreeMap, BTreeSet};
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::path::PathBuf;

    /// splitmix64: deterministic test data without a dependency.
    struct Rng {
        /// Generator state.
        state: u64,
    }

    impl Rng {
        fn new(seed: u64) -> Rng {
            Rng { state: seed }
        }

        fn next(&mut self) -> u64 {
            self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
        }

        /// Random bytes, `min..min + spread` of them.
        fn blob(&mut self, min: u64, spread: u64) -> Vec<u8> {
            let len = min + self.below(spread);
            self.bytes(len as usize)
        }
    }

    /// (key, value) pairs in LMDB order.
    type Records = Vec<(Vec<u8>, Vec<u8>)>;

    /// What a test database holds: per named DB, its records.
    type Model = BTreeMap<Vec<u8>, Records>;

    /// Byte-ordered contents of one DB while a fixture is built.
    type Sorted = BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>>;

    fn flatten(db: &Sorted) -> Records {
        db.iter()
            .flat_map(|(k, vs)| vs.iter().map(move |v| (k.clone(), v.clone())))
            .collect()
    }

    /// A mail-store-like environment: several named DBs, thousands of records, overflow values,
    /// a DUPSORT DB with sub-pages and sub-trees, a DUPFIXED DB, an INTEGERKEY DB, an empty DB,
    /// and deletions over several transactions so the free list is not empty.
    fn build_mailstore(path: &Path) -> (Env, Model) {
        let env = Env::create(path);
        let mut rng = Rng::new(7);
        let (mut messages, mut threads, mut fixed) = (Sorted::new(), Sorted::new(), Sorted::new());
        let mut counters: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        env.write(|t| {
            let (m, th, fx, c) = (
                t.db("messages", 0),
                t.db("threads", ffi::MDB_DUPSORT),
                t.db("fixed", ffi::MDB_DUPSORT | ffi::MDB_DUPFIXED),
                t.db("counters", ffi::MDB_INTEGERKEY),
            );
            t.db("empty", 0);
            for i in 0..3000u32 {
                let key = format!("msg{i:06}").into_bytes();
                let len = if i % 40 == 7 {
                    3000 + rng.below(20000)
                } else {
                    40 + rng.below(400)
                };
                let value = rng.bytes(len as usize);
                t.put(m, &key, &value);
                messages.entry(key).or_default().insert(value);
            }
            for i in 0..300u32 {
                let key = format!("thread{i:04}").into_bytes();
                for _ in 0..1 + i % 4 {
                    let value = rng.blob(10, 20);
                    t.put(th, &key, &value);
                    threads.entry(key.clone()).or_default().insert(value);
                }
            }
            for _ in 0..800 {
                let value = rng.bytes(20);
                t.put(th, b"thread-big", &value);
                threads
                    .entry(b"thread-big".to_vec())
                    .or_default()
                    .insert(value);
            }
            for i in 0..50u64 {
                let key = format!("f{i:03}").into_bytes();
                for j in 0..1 + i % 6 {
                    let value = (i * 1000 + j).to_be_bytes().to_vec();
                    t.put(fx, &key, &value);
                    fixed.entry(key.clone()).or_default().insert(value);
                }
            }
            for j in 0..3000u64 {
                let value = (j * 3).to_be_bytes().to_vec();
                t.put(fx, b"f-big", &value);
                fixed.entry(b"f-big".to_vec()).or_default().insert(value);
            }
            for i in 0..100u64 {
                let value = rng.bytes(16);
                t.put(c, &(i * 7).to_le_bytes(), &value);
                counters.insert(i * 7, value);
            }
        });
        env.write(|t| {
            let (m, th, fx) = (
                t.db("messages", 0),
                t.db("threads", ffi::MDB_DUPSORT),
                t.db("fixed", ffi::MDB_DUPSORT | ffi::MDB_DUPFIXED),
            );
            for i in (0..3000u32).step_by(3) {
                let key = format!("msg{i:06}").into_bytes();
                t.del(m, &key, None);
                messages.remove(&key);
            }
            for i in (1..3000u32).step_by(40) {
                let key = format!("msg{i:06}").into_bytes();
                if messages.contains_key(&key) {
                    let value = rng.blob(5000, 5000);
                    t.put(m, &key, &value);
                    messages.insert(key, BTreeSet::from([value]));
                }
            }
            for i in (0..300u32).step_by(5) {
                let key = format!("thread{i:04}").into_bytes();
                let first = threads[&key].iter().next().cloned().unwrap();
                t.del(th, &key, Some(&first));
                threads.get_mut(&key).unwrap().remove(&first);
                if threads[&key].is_empty() {
                    threads.remove(&key);
                }
            }
            for j in (0..3000u64).step_by(6) {
                let value = (j * 3).to_be_bytes();
                t.del(fx, b"f-big", Some(&value));
                fixed.get_mut(&b"f-big"[..]).unwrap().remove(&value[..]);
            }
        });
        env.write(|t| {
            let m = t.db("messages", 0);
            for i in 0..500u32 {
                let key = format!("msh{i:06}").into_bytes();
                let value = rng.blob(60, 200);
                t.put(m, &key, &value);
                messages.entry(key).or_default().insert(value);
            }
        });
        env.write(|t| {
            let m = t.db("messages", 0);
            t.del(m, b"msg000001", None);
            messages.remove(&b"msg000001"[..]);
        });
        let mut model = Model::new();
        model.insert(b"messages".to_vec(), flatten(&messages));
        model.insert(b"threads".to_vec(), flatten(&threads));
        model.insert(b"fixed".to_vec(), flatten(&fixed));
        model.insert(
            b"counters".to_vec(),
            counters
                .into_iter()
                .map(|(k, v)| (k.to_le_bytes().to_vec(), v))
                .collect(),
        );
        model.insert(b"empty".to_vec(), Vec::new());
        (env, model)
    }

    fn read_all(file: &LmdbFile, name: &[u8]) -> Result<Records, LmdbError> {
        let mut out = Vec::new();
        let found = file.for_each(name, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(())
        })?;
        assert!(found, "no DB {}", show(name));
        Ok(out)
    }

    /// The bytes of page `pgno`.
    fn page_of(file: &LmdbFile, pgno: u64) -> Vec<u8> {
        file.read_page(pgno).unwrap()
    }

    /// The record of named DB `name`.
    fn record_of(file: &LmdbFile, name: &[u8]) -> DbRecord {
        let named = file.named_dbs(&mut Walker::new(file)).unwrap();
        named
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, db)| db)
            .unwrap()
    }

    /// A node as found on a page, for locating the bytes to damage.
    struct RawNode {
        /// Byte offset of the node in its page.
        at: usize,
        /// Node flags.
        flags: u16,
        /// The key.
        key: Vec<u8>,
        /// The data stored in the node.
        data: Vec<u8>,
    }

    impl RawNode {
        /// Byte offset of the node's data in its page.
        fn data_at(&self) -> u64 {
            (self.at + NODESIZE + self.key.len()) as u64
        }
    }

    /// The nodes of a branch or leaf page.
    fn nodes_of(page: &[u8]) -> Vec<RawNode> {
        let h = header(page).unwrap();
        let n = slots(&h, page.len()).unwrap();
        (0..n)
            .map(|i| {
                let at = usize::from(get_u16(page, PAGEHDRSZ + 2 * i).unwrap());
                let nd = node(page, usize::from(h.upper), i, h.flags & P_LEAF != 0).unwrap();
                RawNode {
                    at,
                    flags: nd.flags,
                    key: nd.key.to_vec(),
                    data: nd.data.to_vec(),
                }
            })
            .collect()
    }

    /// The first node of `page` that satisfies `pick`.
    fn node_where(file: &LmdbFile, page: u64, pick: impl Fn(&RawNode) -> bool) -> RawNode {
        nodes_of(&page_of(file, page))
            .into_iter()
            .find(|n| pick(n))
            .unwrap()
    }

    /// Branch and leaf page numbers of a tree, in key order, each level before the next.
    fn levels_of(file: &LmdbFile, db: DbRecord) -> Vec<Vec<u64>> {
        let mut levels = vec![vec![db.root]];
        while levels.len() < usize::from(db.depth) {
            let next = levels
                .last()
                .unwrap()
                .iter()
                .flat_map(|&p| children_of(&page_of(file, p)))
                .collect();
            levels.push(next);
        }
        levels
    }

    /// Child page numbers of a branch page.
    fn children_of(page: &[u8]) -> Vec<u64> {
        let h = header(page).unwrap();
        (0..slots(&h, page.len()).unwrap())
            .map(|i| node(page, usize::from(h.upper), i, false).unwrap().child())
            .collect()
    }

    /// Overwrites bytes of the file at `offset`.
    fn patch(path: &Path, offset: u64, bytes: &[u8]) {
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(bytes, offset).unwrap();
    }

    /// Byte offset of page `pgno` in `file`.
    fn offset_of(file: &LmdbFile, pgno: u64) -> u64 {
        pgno * file.page_size() as u64
    }

    /// Opens `path` and checks it, expecting corruption reported with `needle` in the message.
    fn assert_corrupt(path: &Path, needle: &str) -> LmdbError {
        let err = match LmdbFile::open(path, None) {
            Err(e) => e,
            Ok(file) => file.check().expect_err("check passed on a corrupt file"),
        };
        assert_eq!(err.kind, ErrorKind::Corrupt, "{err}");
        assert!(
            err.message.contains(needle),
            "expected {needle:?} in: {err}"
        );
        err
    }

    #[test]
    fn real_file_checks_and_reads_back() {
        let dir = TempDir::new("real");
        let path = dir.join("store.mdb");
        let (_env, model) = build_mailstore(&path);
        // The C library wrote LMDB 0.9's data format: magic and version 1 in both meta pages.
        let bytes = std::fs::read(&path).unwrap();
        let file = LmdbFile::open(&path, None).unwrap();
        for meta in [16, 16 + file.page_size()] {
            assert_eq!(bytes[meta..meta + 8], [0xde, 0xc0, 0xef, 0xbe, 1, 0, 0, 0]);
        }
        let summary = file.check().unwrap();
        assert_eq!(summary.txnid, 4);
        assert_eq!(summary.page_size, file.page_size());
        assert!(summary.free_pages > 0, "{summary:?}");
        assert_eq!(
            summary.tree_pages + summary.free_pages + 2,
            summary.last_page + 1,
            "{summary:?}"
        );
        let names: Vec<Vec<u8>> = model.keys().cloned().collect();
        assert_eq!(file.db_names().unwrap(), names);
        let counts: Vec<(Vec<u8>, u64)> = model
            .iter()
            .map(|(k, v)| (k.clone(), v.len() as u64))
            .collect();
        assert_eq!(summary.dbs, counts);
        for (name, records) in &model {
            assert!(
                read_all(&file, name).unwrap() == *records,
                "DB {} differs",
                show(name)
            );
        }
        assert_eq!(file.for_each(b"nope", &mut |_, _| Ok(())), Ok(false));

        // The fixture covers what it claims to: overflow values in a deep tree, plain values,
        // sub-pages and sub-trees (deeper than one page) in both DUPSORT layouts, a real free list.
        let messages = record_of(&file, b"messages");
        assert!(
            messages.depth >= 2 && messages.overflow_pages > 0,
            "{messages:?}"
        );
        assert!(file.meta.free.entries >= 2, "{:?}", file.meta.free);
        for name in [&b"threads"[..], b"fixed"] {
            let db = record_of(&file, name);
            let mut kinds = BTreeMap::new();
            for leaf in levels_of(&file, db).last().unwrap() {
                for n in nodes_of(&page_of(&file, *leaf)) {
                    if n.flags == F_DUPDATA | F_SUBDATA {
                        assert!(
                            DbRecord::parse(&n.data).unwrap().depth >= 2,
                            "shallow sub-tree in {}",
                            show(name)
                        );
                    }
                    *kinds.entry(n.flags).or_insert(0) += 1;
                }
            }
            // Keys with one value keep it as a plain node, more go to a sub-page, many to a sub-tree.
            assert!(
                [0, F_DUPDATA, F_DUPDATA | F_SUBDATA]
                    .iter()
                    .all(|k| kinds.contains_key(k)),
                "{kinds:?}"
            );
        }
    }

    #[test]
    fn compact_copy_checks_and_reads_back() {
        let dir = TempDir::new("compact");
        let (env, model) = build_mailstore(&dir.join("store.mdb"));
        let copy = dir.join("copy.mdb");
        env.copy_compact(&copy);
        let file = LmdbFile::open(&copy, None).unwrap();
        let summary = file.check().unwrap();
        // A compacting copy writes an empty snapshot 0 and the data as snapshot 1, no free list.
        assert_eq!((summary.txnid, summary.free_pages), (1, 0));
        assert_eq!(summary.tree_pages + 2, summary.last_page + 1);
        for (name, records) in &model {
            assert!(
                read_all(&file, name).unwrap() == *records,
                "DB {} differs",
                show(name)
            );
        }
        let empty = LmdbFile::open(&copy, Some(0)).unwrap();
        assert_eq!(empty.check().unwrap().dbs, Vec::new());
        assert_eq!(empty.db_names().unwrap(), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn open_selects_meta_by_txnid() {
        let dir = TempDir::new("txnid");
        let path = dir.join("store.mdb");
        let (env, model) = build_mailstore(&path);
        assert_eq!(LmdbFile::open(&path, None).unwrap().txnid(), 4);
        assert_eq!(LmdbFile::open(&path, Some(4)).unwrap().txnid(), 4);
        // The previous snapshot is still intact: nothing reuses its pages before txnid 5 commits.
        let older = LmdbFile::open(&path, Some(3)).unwrap();
        assert_eq!(older.txnid(), 3);
        let summary = older.check().unwrap();
        assert_eq!(summary.txnid, 3);
        for txnid in [0, 2, 5, 99] {
            let err = LmdbFile::open(&path, Some(txnid)).err().unwrap();
            assert_eq!(err.kind, ErrorKind::Stale, "{err}");
        }
        let records = read_all(&LmdbFile::open(&path, Some(4)).unwrap(), b"messages").unwrap();
        assert!(records == model[&b"messages"[..]]);
        // After two more commits, snapshot 3 is gone from the metas.
        env.write(|t| {
            t.put(
                t.db("counters", ffi::MDB_INTEGERKEY),
                &1u64.to_le_bytes(),
                b"x",
            )
        });
        env.write(|t| {
            t.put(
                t.db("counters", ffi::MDB_INTEGERKEY),
                &2u64.to_le_bytes(),
                b"y",
            )
        });
        assert_eq!(
            LmdbFile::open(&path, Some(3)).err().unwrap().kind,
            ErrorKind::Stale
        );
        assert_eq!(LmdbFile::open(&path, None).unwrap().txnid(), 6);
    }

    #[test]
    fn damage_seen_after_the_writer_moved_on_is_stale_unless_pinned() {
        let dir = TempDir::new("moved");
        let path = dir.join("store.mdb");
        let (env, _) = build_mailstore(&path);
        let unpinned = LmdbFile::open(&path, None).unwrap();
        let pinned = LmdbFile::open(&path, Some(4)).unwrap();
        let leaf = *levels_of(&unpinned, record_of(&unpinned, b"messages"))
            .last()
            .unwrap()
            .first()
            .unwrap();
        patch(&path, offset_of(&unpinned, leaf), &(leaf + 1).to_le_bytes());
        assert_eq!(unpinned.check().unwrap_err().kind, ErrorKind::Corrupt);
        env.write(|t| {
            t.put(
                t.db("counters", ffi::MDB_INTEGERKEY),
                &1u64.to_le_bytes(),
                b"x",
            )
        });
        env.write(|t| {
            t.put(
                t.db("counters", ffi::MDB_INTEGERKEY),
                &2u64.to_le_bytes(),
                b"y",
            )
        });
        assert_eq!(unpinned.check().unwrap_err().kind, ErrorKind::Stale);
        assert_eq!(pinned.check().unwrap_err().kind, ErrorKind::Corrupt);
        assert_eq!(
            unpinned
                .for_each(b"messages", &mut |_, _| Ok(()))
                .unwrap_err()
                .kind,
            ErrorKind::Stale
        );
    }

    #[test]
    fn callback_errors_stop_the_walk() {
        let dir = TempDir::new("callback");
        let path = dir.join("store.mdb");
        let (_env, _) = build_mailstore(&path);
        let file = LmdbFile::open(&path, None).unwrap();
        let mut seen = 0;
        let err = file
            .for_each(b"threads", &mut |_, _| {
                seen += 1;
                if seen == 10 {
                    Err("enough".to_string())
                } else {
                    Ok(())
                }
            })
            .unwrap_err();
        assert_eq!(
            (err.kind, err.message.as_str(), seen),
            (ErrorKind::Callback, "enough", 10)
        );
    }

    /// A fresh fixture for one corruption, with the open file for locating pages.
    fn damaged(dir: &TempDir, name: &str) -> (PathBuf, LmdbFile) {
        let path = dir.join(name);
        drop(build_mailstore(&path));
        let file = LmdbFile::open(&path, None).unwrap();
        file.check().unwrap();
        (path, file)
    }

    #[test]
    fn branch_child_pgno_damage_is_corrupt() {
        let dir = TempDir::new("branch");
        let (path, file) = damaged(&dir, "out-of-range.mdb");
        let root = record_of(&file, b"messages").root;
        let nodes = nodes_of(&page_of(&file, root));
        // Bits 16..32 of node 1's child page number.
        patch(
            &path,
            offset_of(&file, root) + nodes[1].at as u64 + 2,
            &[0xff, 0x7f],
        );
        assert_corrupt(&path, "outside the data pages");
        assert_eq!(
            file.for_each(b"messages", &mut |_, _| Ok(()))
                .unwrap_err()
                .kind,
            ErrorKind::Corrupt
        );

        let (path, file) = damaged(&dir, "shared.mdb");
        let page = page_of(&file, root);
        let nodes = nodes_of(&page);
        let child0 = children_of(&page)[0];
        let at = offset_of(&file, root) + nodes[1].at as u64;
        patch(&path, at, &(child0 as u32).to_le_bytes());
        patch(&path, at + 4, &((child0 >> 32) as u16).to_le_bytes());
        assert_corrupt(&path, "reached a second time");
    }

    #[test]
    fn leaf_bounds_damage_is_corrupt() {
        let dir = TempDir::new("bounds");
        // Each case maps the leaf's (lower, upper) to damaged ones.
        type Damage = fn(u16, u16) -> (u16, u16);
        let cases: [(Damage, &str); 5] = [
            (|lower, upper| (lower + 1, upper), "half a node pointer"),
            (|_, upper| (8, upper), "break 16 <= lower"),
            (|lower, _| (lower, 5000), "break 16 <= lower"),
            (|lower, _| (lower, lower - 2), "break 16 <= lower"),
            (|_, upper| (upper + 2, upper), "break 16 <= lower"),
        ];
        for (i, (damage, needle)) in cases.into_iter().enumerate() {
            let (path, file) = damaged(&dir, &format!("bounds{i}.mdb"));
            assert!(file.page_size() < 5000);
            let leaf = levels_of(&file, record_of(&file, b"messages"))
                .last()
                .unwrap()[3];
            let h = header(&page_of(&file, leaf)).unwrap();
            let (lower, upper) = damage(h.lower, h.upper);
            patch(
                &path,
                offset_of(&file, leaf) + 12,
                &[lower.to_le_bytes(), upper.to_le_bytes()].concat(),
            );
            assert_corrupt(&path, needle);
        }
    }

    #[test]
    fn node_damage_is_corrupt() {
        let dir = TempDir::new("node");
        // A node pointer into the free space.
        let (path, file) = damaged(&dir, "pointer.mdb");
        let leaf = levels_of(&file, record_of(&file, b"messages"))
            .last()
            .unwrap()[2];
        let h = header(&page_of(&file, leaf)).unwrap();
        patch(
            &path,
            offset_of(&file, leaf) + 16,
            &(h.upper - 2).to_le_bytes(),
        );
        assert_corrupt(&path, "free space below upper");
        // A key size running past the page end.
        let (path, file) = damaged(&dir, "ksize.mdb");
        let nodes = nodes_of(&page_of(&file, leaf));
        patch(
            &path,
            offset_of(&file, leaf) + nodes[0].at as u64 + 6,
            &4000u16.to_le_bytes(),
        );
        assert_corrupt(&path, "extends past the page end");
        // Unknown node flags.
        let (path, file) = damaged(&dir, "flags.mdb");
        let nodes = nodes_of(&page_of(&file, leaf));
        patch(
            &path,
            offset_of(&file, leaf) + nodes[0].at as u64 + 4,
            &0x08u16.to_le_bytes(),
        );
        assert_corrupt(&path, "node flags 0x8");
    }

    #[test]
    fn header_pgno_damage_is_corrupt() {
        let dir = TempDir::new("pgno");
        let (path, file) = damaged(&dir, "leaf.mdb");
        let leaf = levels_of(&file, record_of(&file, b"threads"))
            .last()
            .unwrap()[1];
        patch(&path, offset_of(&file, leaf), &(leaf + 1000).to_le_bytes());
        let err = assert_corrupt(&path, "header says it is page");
        assert_eq!(err.page, Some(leaf));
    }

    /// The first overflow value of "messages" spanning at least `min_pages`: (leaf, node offset,
    /// first overflow page, pages).
    fn big_value(file: &LmdbFile, min_pages: u32) -> (u64, usize, u64, u32) {
        for leaf in levels_of(file, record_of(file, b"messages"))
            .last()
            .unwrap()
        {
            for n in nodes_of(&page_of(file, *leaf)) {
                if n.flags == F_BIGDATA {
                    let first = get_u64(&n.data, 0).unwrap();
                    let pages = header(&page_of(file, first)).unwrap().pages;
                    if pages >= min_pages {
                        return (*leaf, n.at, first, pages);
                    }
                }
            }
        }
        panic!("no overflow value of {min_pages} pages");
    }

    #[test]
    fn overflow_count_damage_is_corrupt() {
        let dir = TempDir::new("overflow");
        for (i, (pages, needle)) in [
            (Some(0u32), "does not fit"),
            (Some(u32::MAX), "does not fit"),
            (Some(1), "too few"),
            (None, ""),
        ]
        .into_iter()
        .enumerate()
        {
            let (path, file) = damaged(&dir, &format!("overflow{i}.mdb"));
            let (_, _, first, have) = big_value(&file, 3);
            // None: one page more than the run has, which overlaps a page in other use.
            let pages = pages.unwrap_or(have + 1);
            patch(&path, offset_of(&file, first) + 12, &pages.to_le_bytes());
            assert_corrupt(&path, needle);
            assert_eq!(
                file.for_each(b"messages", &mut |_, _| Ok(()))
                    .unwrap_err()
                    .kind,
                ErrorKind::Corrupt
            );
        }
        // A node pointing at a page that is not an overflow page.
        let (path, file) = damaged(&dir, "not-overflow.mdb");
        let (leaf, at, _, _) = big_value(&file, 1);
        let ksize = get_u16(&page_of(&file, leaf), at + 6).unwrap();
        patch(
            &path,
            offset_of(&file, leaf) + (at + NODESIZE) as u64 + u64::from(ksize),
            &leaf.to_le_bytes(),
        );
        assert_corrupt(&path, "");
    }

    #[test]
    fn key_order_damage_is_corrupt() {
        let dir = TempDir::new("order");
        let (path, file) = damaged(&dir, "swap.mdb");
        let leaf = levels_of(&file, record_of(&file, b"messages"))
            .last()
            .unwrap()[1];
        let page = page_of(&file, leaf);
        let mut ptrs = page[16..20].to_vec();
        ptrs.rotate_left(2);
        patch(&path, offset_of(&file, leaf) + 16, &ptrs);
        assert_corrupt(&path, "does not sort after");
        // Swapping the first keys of two neighbouring leaves keeps each page ascending, but breaks
        // the bounds set by the branch above.
        let (path, file) = damaged(&dir, "bounds.mdb");
        let leaves = levels_of(&file, record_of(&file, b"messages"))
            .last()
            .unwrap()
            .clone();
        let (a, b) = (page_of(&file, leaves[4]), page_of(&file, leaves[5]));
        let (na, nb) = (nodes_of(&a), nodes_of(&b));
        let last_a = na.last().unwrap();
        // Keys here are all 9 bytes, so a key can be rewritten in place.
        assert_eq!(last_a.key.len(), nb[0].key.len());
        patch(
            &path,
            offset_of(&file, leaves[4]) + last_a.at as u64 + 8,
            &nb[0].key,
        );
        assert_corrupt(&path, "");
    }

    #[test]
    fn sub_page_and_count_damage_is_corrupt() {
        let dir = TempDir::new("dups");
        let (path, file) = damaged(&dir, "subpage.mdb");
        let leaf = levels_of(&file, record_of(&file, b"threads"))
            .last()
            .unwrap()[0];
        let sub_at =
            offset_of(&file, leaf) + node_where(&file, leaf, |n| n.flags == F_DUPDATA).data_at();
        patch(&path, sub_at + 12, &3u16.to_le_bytes());
        assert_corrupt(&path, "duplicates sub-page");

        let (path, file) = damaged(&dir, "entries.mdb");
        let main = file.meta.main;
        assert_eq!(main.depth, 1);
        let messages = node_where(&file, main.root, |n| n.key == b"messages");
        let entries = get_u64(&messages.data, 32).unwrap();
        patch(
            &path,
            offset_of(&file, main.root) + messages.data_at() + 32,
            &(entries + 1).to_le_bytes(),
        );
        assert_corrupt(&path, "entries");

        let (path, file) = damaged(&dir, "depth.mdb");
        let messages = node_where(&file, main.root, |n| n.key == b"messages");
        let depth = get_u16(&messages.data, 6).unwrap();
        patch(
            &path,
            offset_of(&file, main.root) + messages.data_at() + 6,
            &(depth + 1).to_le_bytes(),
        );
        assert_corrupt(&path, "page flags");
    }

    #[test]
    fn dupsort_counts() {
        let dir = TempDir::new("dupcounts");
        // The parent's page counts differ between LMDB releases, so they are not compared...
        let (path, file) = damaged(&dir, "leaves.mdb");
        let main = file.meta.main.root;
        let threads = node_where(&file, main, |n| n.key == b"threads");
        let leaves = get_u64(&threads.data, 16).unwrap();
        patch(
            &path,
            offset_of(&file, main) + threads.data_at() + 16,
            &(leaves + 5).to_le_bytes(),
        );
        LmdbFile::open(&path, None).unwrap().check().unwrap();
        // ...but its entries are.
        let (path, file) = damaged(&dir, "entries.mdb");
        let main = file.meta.main.root;
        let threads = node_where(&file, main, |n| n.key == b"threads");
        patch(
            &path,
            offset_of(&file, main) + threads.data_at() + 32,
            &0u64.to_le_bytes(),
        );
        assert_corrupt(&path, "entries");
        // A duplicates sub-tree's own record is exact.
        let (path, file) = damaged(&dir, "subtree.mdb");
        let leaves = levels_of(&file, record_of(&file, b"threads"))
            .pop()
            .unwrap();
        let is_tree = |n: &RawNode| n.flags == F_DUPDATA | F_SUBDATA;
        let page = *leaves
            .iter()
            .find(|&&p| nodes_of(&page_of(&file, p)).iter().any(is_tree))
            .unwrap();
        patch(
            &path,
            offset_of(&file, page) + node_where(&file, page, is_tree).data_at() + 16,
            &1000u64.to_le_bytes(),
        );
        assert_corrupt(&path, "leaf pages");
    }

    #[test]
    fn free_list_damage_is_corrupt() {
        let dir = TempDir::new("free");
        for (i, needle) in [
            "listed twice",
            "also belongs to a tree",
            "outside the data pages",
        ]
        .into_iter()
        .enumerate()
        {
            let (path, file) = damaged(&dir, &format!("free{i}.mdb"));
            let free = file.meta.free;
            let leaf = *levels_of(&file, free).last().unwrap().first().unwrap();
            let record = node_where(&file, leaf, |n| {
                n.flags == 0 && get_u64(&n.data, 0).unwrap() >= 2
            });
            let ids = offset_of(&file, leaf) + record.data_at();
            let replacement = match i {
                0 => get_u64(&record.data, 16).unwrap(),
                1 => record_of(&file, b"messages").root,
                _ => file.last_page() + 1,
            };
            patch(&path, ids + 8, &replacement.to_le_bytes());
            assert_corrupt(&path, needle);
        }
    }

    #[test]
    fn truncated_file_is_corrupt() {
        let dir = TempDir::new("truncated");
        for (i, keep) in [0u64, 100, 4096 + 200, 3 * 4096, 40 * 4096]
            .into_iter()
            .enumerate()
        {
            let (path, file) = damaged(&dir, &format!("cut{i}.mdb"));
            assert!(file.last_page() > 40);
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(keep)
                .unwrap();
            let err = LmdbFile::open(&path, None).err().unwrap();
            assert_eq!(err.kind, ErrorKind::Corrupt, "{err}");
            if keep < 2 * 4096 {
                assert!(
                    err.message.contains("not an LMDB file") || err.message.contains("no usable"),
                    "{err}"
                );
            } else {
                assert!(err.message.contains("past the end"), "{err}");
            }
        }
        // A file cut while open: reads past the end are reported, not trusted.
        let (path, file) = damaged(&dir, "cut-open.mdb");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(3 * 4096)
            .unwrap();
        assert_eq!(file.check().unwrap_err().kind, ErrorKind::Corrupt);
    }

    #[test]
    fn a_file_at_rest_is_judged_by_the_meta_page_lmdb_reads() {
        // Found by the differential test against py-lmdb's lmdb.verify: one flipped bit in the
        // newest meta page made the check fall back to the older meta and pass, while LMDB would
        // read the newest one (with a wrong page size) or refuse the file.
        let dir = TempDir::new("at-rest");
        // Txnid 4 is in meta page 0, txnid 3 in meta page 1.
        let (path, file) = damaged(&dir, "psize.mdb");
        patch(&path, 40, &4160u32.to_le_bytes()); // mm_psize aliases the free DB's md_pad
        assert_corrupt(&path, "meta page 0 has page size 4160");
        let (path, file2) = damaged(&dir, "pgno.mdb");
        patch(&path, 0, &7u64.to_le_bytes());
        assert_corrupt(&path, "meta page 0 has page number 7");
        let (path, _) = damaged(&dir, "last-page.mdb");
        patch(
            &path,
            offset_of(&file, 1) + 136,
            &(1u64 << 40).to_le_bytes(),
        );
        assert_corrupt(&path, "meta page 1 has last page");
        // Commit parity: page 0 holds even txnids, page 1 odd ones, never the same.
        let (path, _) = damaged(&dir, "same.mdb");
        patch(&path, offset_of(&file2, 1) + 144, &4u64.to_le_bytes());
        assert_corrupt(&path, "txnids 4 and 4");
        let (path, _) = damaged(&dir, "odd.mdb");
        patch(&path, 144, &5u64.to_le_bytes());
        assert_corrupt(&path, "txnids 5 and 3");
        // Pinned to the intact snapshot, as a reader of a live file is, the check still works.
        let (path, _) = damaged(&dir, "pinned.mdb");
        patch(&path, 0, &7u64.to_le_bytes());
        assert_eq!(
            LmdbFile::open(&path, Some(3))
                .unwrap()
                .check()
                .unwrap()
                .txnid,
            3
        );
    }

    #[test]
    fn a_database_record_with_an_impossible_md_pad_is_corrupt() {
        // Also found by the differential test: a flipped bit in the main DB's md_pad.
        let dir = TempDir::new("pad");
        let (path, _) = damaged(&dir, "main-pad.mdb");
        patch(&path, 88, &(1u32 << 18).to_le_bytes()); // meta page 0 (txnid 4): main DB's md_pad
        assert_corrupt(&path, "the main DB has md_pad 262144");
    }

    #[test]
    fn zeroed_meta_pages() {
        let dir = TempDir::new("meta");
        let zero_page = |path: &Path, file: &LmdbFile, pgno: u64| {
            patch(path, offset_of(file, pgno), &vec![0; file.page_size()])
        };
        // Txnid 4 was written to meta page 4 % 2 = 0. A reader pinned to a txnid finds the
        // intact one (a live file's writer may be rewriting the other); a file at rest with
        // either meta page damaged is damaged, since LMDB refuses to open it.
        let (path, file) = damaged(&dir, "newest.mdb");
        zero_page(&path, &file, 0);
        let older = LmdbFile::open(&path, Some(3)).unwrap();
        assert_eq!(older.txnid(), 3);
        older.check().unwrap();
        assert_eq!(
            LmdbFile::open(&path, Some(4)).err().unwrap().kind,
            ErrorKind::Stale
        );
        let err = LmdbFile::open(&path, None).err().unwrap();
        assert!(
            err.kind == ErrorKind::Corrupt && err.message.contains("meta page 0"),
            "{err}"
        );

        let (path, file) = damaged(&dir, "older.mdb");
        zero_page(&path, &file, 1);
        assert_eq!(
            LmdbFile::open(&path, Some(4))
                .unwrap()
                .check()
                .unwrap()
                .txnid,
            4
        );
        let err = LmdbFile::open(&path, None).err().unwrap();
        assert!(
            err.kind == ErrorKind::Corrupt && err.message.contains("meta page 1"),
            "{err}"
        );

        let (path, file) = damaged(&dir, "both.mdb");
        zero_page(&path, &file, 0);
        zero_page(&path, &file, 1);
        let err = LmdbFile::open(&path, None).err().unwrap();
        assert!(
            err.kind == ErrorKind::Corrupt && err.message.contains("not an LMDB file"),
            "{err}"
        );

        let (path, file) = damaged(&dir, "version.mdb");
        patch(&path, 20, &2u32.to_le_bytes());
        patch(&path, offset_of(&file, 1) + 20, &2u32.to_le_bytes());
        assert_eq!(
            LmdbFile::open(&path, None).err().unwrap().kind,
            ErrorKind::Unsupported
        );

        let dir2 = TempDir::new("not-lmdb");
        let junk = dir2.join("junk");
        std::fs::write(&junk, vec![0x5a; 3 * 4096]).unwrap();
        let err = LmdbFile::open(&junk, None).err().unwrap();
        assert!(
            err.kind == ErrorKind::Corrupt && err.message.contains("not an LMDB file"),
            "{err}"
        );
        let missing = LmdbFile::open(&dir2.join("missing"), None).err().unwrap();
        assert_eq!(missing.kind, ErrorKind::Io(2));
    }

    #[test]
    fn random_workload_over_many_transactions() {
        // Splits, merges, sub-page growth, sub-trees appearing and being dropped, overflow values
        // replaced and deleted: every snapshot along the way must check, and reads match a model.
        let dir = TempDir::new("workload");
        let path = dir.join("store.mdb");
        let env = Env::create(&path);
        let mut rng = Rng::new(99);
        let mut model: BTreeMap<&str, Sorted> = BTreeMap::new();
        let specs = [
            ("p", 0),
            ("d", ffi::MDB_DUPSORT),
            ("f", ffi::MDB_DUPSORT | ffi::MDB_DUPFIXED),
        ];
        for round in 0..30 {
            env.write(|t| {
                for _ in 0..1 + rng.below(600) {
                    let (name, flags) = specs[rng.below(3) as usize];
                    let dbi = t.db(name, flags);
                    let db = model.entry(name).or_default();
                    let key = format!("k{:03}", rng.below(if name == "p" { 400 } else { 8 }))
                        .into_bytes();
                    let value = match name {
                        "p" if rng.below(10) == 0 => rng.blob(2000, 12000),
                        "p" => rng.blob(1, 300),
                        "d" => rng.blob(1, 80),
                        _ => rng.below(6000).to_be_bytes().to_vec(),
                    };
                    let op = rng.below(100);
                    if op < 80 {
                        t.put(dbi, &key, &value);
                        let values = db.entry(key).or_default();
                        if name == "p" {
                            values.clear();
                        }
                        values.insert(value);
                    } else if let Some(values) = db.get_mut(&key) {
                        if op < 97 && name != "p" {
                            let victim = values
                                .iter()
                                .nth(rng.below(values.len() as u64) as usize)
                                .cloned()
                                .unwrap();
                            t.del(dbi, &key, Some(&victim));
                            values.remove(&victim);
                            if values.is_empty() {
                                db.remove(&key);
                            }
                        } else {
                            t.del(dbi, &key, None);
                            db.remove(&key);
                        }
                    }
                }
            });
            let file = LmdbFile::open(&path, None).unwrap();
            let summary = file
                .check()
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(
                summary.tree_pages + summary.free_pages + 2,
                summary.last_page + 1
            );
            if round % 10 == 9 {
                for (name, db) in &model {
                    assert!(
                        read_all(&file, name.as_bytes()).unwrap() == flatten(db),
                        "round {round}: DB {name} differs"
                    );
                }
            }
        }
    }

    /// A small environment for fuzzing: overflow values, sub-pages, a sub-tree, a free list.
    fn build_small(path: &Path) {
        let env = Env::create(path);
        let mut rng = Rng::new(11);
        env.write(|t| {
            let (a, d) = (t.db("a", 0), t.db("d", ffi::MDB_DUPSORT));
            for i in 0..60u32 {
                let value = if i % 20 == 3 {
                    rng.blob(4500, 4000)
                } else {
                    rng.blob(10, 100)
                };
                t.put(a, format!("k{i:03}").as_bytes(), &value);
            }
            for i in 0..20u32 {
                for _ in 0..1 + i % 3 {
                    t.put(d, format!("d{i:02}").as_bytes(), &rng.blob(4, 12));
                }
            }
            for _ in 0..300 {
                t.put(d, b"dbig", &rng.bytes(16));
            }
        });
        env.write(|t| {
            let a = t.db("a", 0);
            for i in (0..60u32).step_by(4) {
                t.del(a, format!("k{i:03}").as_bytes(), None);
            }
        });
    }

    /// Runs everything on `path`; an error must be Corrupt or Unsupported, and a passing check
    /// implies readable databases.
    fn exercise(path: &Path) {
        let file = match LmdbFile::open(path, None) {
            Ok(file) => file,
            Err(e) => {
                assert!(
                    matches!(e.kind, ErrorKind::Corrupt | ErrorKind::Unsupported),
                    "{e}"
                );
                return;
            }
        };
        let checked = file.check();
        let names = file.db_names().unwrap_or_default();
        // The fixture's names, too, in case damage hides them from db_names.
        let wanted: BTreeSet<&[u8]> = names
            .iter()
            .map(Vec::as_slice)
            .chain([&b"a"[..], b"d"])
            .collect();
        for name in wanted {
            let read = file.for_each(name, &mut |_, _| Ok(()));
            if checked.is_ok() && names.iter().any(|n| n == name) {
                assert_eq!(read, Ok(true));
            }
            if let Err(e) = read {
                assert!(
                    matches!(e.kind, ErrorKind::Corrupt | ErrorKind::Unsupported),
                    "{e}"
                );
            }
        }
        if let Err(e) = checked {
            assert!(
                matches!(e.kind, ErrorKind::Corrupt | ErrorKind::Unsupported),
                "{e}"
            );
        }
    }

    #[test]
    fn fuzzed_files_never_panic() {
        let dir = TempDir::new("fuzz");
        let path = dir.join("small.mdb");
        build_small(&path);
        let original = std::fs::read(&path).unwrap();
        let psize = LmdbFile::open(&path, None)
            .unwrap()
            .check()
            .unwrap()
            .page_size;
        let pages = (original.len() / psize) as u64;
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let mut rng = Rng::new(2024);
        for iteration in 0..2000 {
            let mut touched = Vec::new();
            if rng.below(5) == 0 {
                let cut = rng.below(original.len() as u64);
                f.set_len(cut).unwrap();
                touched.push((cut as usize, original.len()));
            } else {
                for _ in 0..1 + rng.below(4) {
                    let page = (rng.below(pages) as usize) * psize;
                    let at = match rng.below(3) {
                        0 => rng.below(original.len() as u64) as usize,
                        1 => page + rng.below(48) as usize,
                        _ => page + psize - 1 - rng.below(512) as usize,
                    };
                    let flip = 1 + rng.below(255) as u8;
                    f.write_all_at(&[original[at] ^ flip], at as u64).unwrap();
                    touched.push((at, at + 1));
                }
            }
            let outcome = catch_unwind(AssertUnwindSafe(|| exercise(&path)));
            assert!(
                outcome.is_ok(),
                "iteration {iteration} panicked after changing {touched:?}"
            );
            f.set_len(original.len() as u64).unwrap();
            for (start, end) in touched {
                f.write_all_at(&original[start..end], start as u64).unwrap();
            }
        }
        assert_eq!(std::fs::read(&path).unwrap(), original);
    }
}

//! The two meta pages: parsing them, judging each (magic, version, page size, sanity of its
//! records), and choosing the snapshot to read (the newer intact one at rest, or the one of a
//! given transaction).

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::*;

/// An on-disk `MDB_db` record: the root and statistics of one tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct DbRecord {
    /// `md_pad`: page size in the free DB's meta copy, key size of `MDB_DUPFIXED` duplicates.
    pub(super) pad: u32,
    /// `md_flags`: database flags (in the free DB's meta copy: environment flags).
    pub(super) flags: u16,
    /// `md_depth`: levels in the tree, 0 when empty.
    pub(super) depth: u16,
    /// `md_branch_pages`: branch pages in the tree.
    pub(super) branch_pages: u64,
    /// `md_leaf_pages`: leaf pages in the tree.
    pub(super) leaf_pages: u64,
    /// `md_overflow_pages`: pages in the tree's overflow runs.
    pub(super) overflow_pages: u64,
    /// `md_entries`: records, counting each duplicate.
    pub(super) entries: u64,
    /// `md_root`: root page, or `P_INVALID` when the tree is empty.
    pub(super) root: u64,
}

impl DbRecord {
    /// Decodes the 48 bytes at the start of `b`.
    pub(super) fn parse(b: &[u8]) -> Option<DbRecord> {
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
pub(super) struct RawMeta {
    /// Page number in the page header.
    pub(super) pgno: u64,
    /// Flags in the page header.
    pub(super) flags: u16,
    /// `mm_magic`.
    pub(super) magic: u32,
    /// `mm_version`.
    pub(super) version: u32,
    /// `mm_dbs[FREE_DBI]`; its `pad` is the page size.
    pub(super) free: DbRecord,
    /// `mm_dbs[MAIN_DBI]`.
    pub(super) main: DbRecord,
    /// `mm_last_pg`.
    pub(super) last_pg: u64,
    /// `mm_txnid`.
    pub(super) txnid: u64,
}

impl RawMeta {
    /// Decodes a meta page's first [`META_BYTES`] bytes.
    pub(super) fn parse(b: &[u8]) -> Option<RawMeta> {
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
pub(super) struct Meta {
    /// Page size in bytes.
    pub(super) page_size: usize,
    /// Last page in use.
    pub(super) last_pg: u64,
    /// Transaction that committed this snapshot.
    pub(super) txnid: u64,
    /// The free DB's record.
    pub(super) free: DbRecord,
    /// The main DB's record.
    pub(super) main: DbRecord,
}

/// Why a meta page was rejected.
#[derive(Clone, Debug)]
pub(super) struct MetaFault {
    /// Unsupported for a foreign format version, Corrupt otherwise.
    pub(super) kind: ErrorKind,
    /// Whether the page at least carried the LMDB magic.
    pub(super) has_magic: bool,
    /// What is wrong with it.
    pub(super) message: String,
}

/// Whether `psize` is a page size LMDB can have written.
pub(super) fn sane_page_size(psize: usize) -> bool {
    psize.is_power_of_two() && (MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&psize)
}

/// Reads the meta bytes at `offset`; `None` when the file is too short to hold them.
pub(super) fn read_raw_meta(file: &File, offset: u64) -> Result<Option<RawMeta>, LmdbError> {
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
pub(super) fn read_raw_metas(file: &File) -> Result<[(Option<RawMeta>, u64); 2], LmdbError> {
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
pub(super) fn judge_meta(
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
pub(super) fn read_metas(file: &File) -> Result<[Result<Meta, MetaFault>; 2], LmdbError> {
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
pub(super) fn at_rest_meta(metas: &[Result<Meta, MetaFault>; 2]) -> Result<Meta, LmdbError> {
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

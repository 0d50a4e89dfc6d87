//! Walking a B-tree of one snapshot: pages reached once (a page reached twice is damage),
//! branch bounds and key order checked, leaf values read (overflow runs, duplicates sub-pages
//! and sub-trees), and every record handed to a visitor.

use std::cmp::Ordering;

use super::*;

/// One set of pages, one bit each, bounded by the snapshot's last page.
pub(super) struct PageSet {
    /// Bit `p % 64` of word `p / 64` stands for page `p`.
    pub(super) words: Vec<u64>,
}

impl PageSet {
    /// An empty set for pages `0..pages`.
    pub(super) fn new(pages: u64) -> PageSet {
        let words = usize::try_from(pages.div_ceil(64)).unwrap_or(0);
        PageSet {
            words: vec![0; words],
        }
    }

    /// Adds `page`; false when it was already present (or outside the set, which callers exclude).
    pub(super) fn insert(&mut self, page: u64) -> bool {
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
    pub(super) fn first_common(&self, other: &PageSet) -> Option<u64> {
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

/// How a tree's keys are ordered, which decides the order checks that apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum KeyOrder {
    /// Default comparison: bytewise, a prefix sorts first.
    Bytes,
    /// The free DB: 8-byte native txnids.
    Txnid,
    /// Reverse or integer comparison: order not checked.
    Unchecked,
}

impl KeyOrder {
    /// The key order of a database with flags `flags`.
    pub(super) fn for_keys(flags: u16) -> KeyOrder {
        if flags & (MDB_REVERSEKEY | MDB_INTEGERKEY) != 0 {
            KeyOrder::Unchecked
        } else {
            KeyOrder::Bytes
        }
    }

    /// How `a` compares with `b`, or None when this order is not checked.
    pub(super) fn compare(self, a: &[u8], b: &[u8]) -> Result<Option<Ordering>, String> {
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
pub(super) struct DupSpec {
    /// Order of the duplicates of one key.
    pub(super) order: KeyOrder,
    /// `MDB_DUPFIXED`: duplicates are packed fixed-size keys on LEAF2 pages.
    pub(super) fixed: bool,
}

impl DupSpec {
    /// The duplicates layout of a database with flags `flags`, None unless DUPSORT.
    pub(super) fn for_flags(flags: u16) -> Option<DupSpec> {
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
pub(super) enum Role {
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
pub(super) struct TreeSpec {
    /// Names the tree in messages.
    pub(super) label: String,
    /// Root, depth and counts that the walk must confirm.
    pub(super) db: DbRecord,
    /// How the tree's keys are ordered.
    pub(super) order: KeyOrder,
    /// What its leaves may hold.
    pub(super) role: Role,
    /// Whether overflow values are read and passed on, or only their pages checked.
    pub(super) read_values: bool,
}

impl TreeSpec {
    /// The spec of named database `name` with record `db`.
    pub(super) fn named(
        name: &[u8],
        db: DbRecord,
        read_values: bool,
    ) -> Result<TreeSpec, LmdbError> {
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
pub(super) enum Rec<'a> {
    /// A value, a duplicate, or empty for a duplicates sub-tree's key.
    Value(&'a [u8]),
    /// An overflow value whose pages were checked but not read.
    Unread,
    /// A named-DB record in the main DB.
    Db(DbRecord),
}

/// What a walk calls for each record.
pub(super) type Visit<'v> = dyn FnMut(&[u8], Rec<'_>) -> Result<(), LmdbError> + 'v;

/// Pages and records counted while walking one tree.
#[derive(Default)]
pub(super) struct Counts {
    /// Branch pages.
    pub(super) branch: u64,
    /// Leaf pages.
    pub(super) leaf: u64,
    /// Pages of overflow runs.
    pub(super) overflow: u64,
    /// Records, counting each duplicate.
    pub(super) entries: u64,
}

/// The previous key of a run of keys, for the ascending check.
#[derive(Default)]
pub(super) struct LastKey {
    /// The key bytes, valid when `set`.
    pub(super) key: Vec<u8>,
    /// Whether a key has been seen.
    pub(super) set: bool,
}

/// A page on the walk's stack.
pub(super) struct Frame {
    /// Its page number.
    pub(super) pgno: u64,
    /// Its bytes.
    pub(super) page: Vec<u8>,
    /// 1 for the root, the tree's depth for leaves.
    pub(super) level: u16,
    /// `mp_upper`: nodes must lie at or above it.
    pub(super) upper: usize,
    /// Number of nodes.
    pub(super) nkeys: usize,
    /// Next child to descend into (branch pages).
    pub(super) next: usize,
    /// The range its keys, and all keys below it, must fall in.
    pub(super) bounds: Bounds,
}

/// The key range of a page, set by the branch nodes above it.
#[derive(Clone, Default)]
pub(super) struct Bounds {
    /// Keys are >= this key (None: no lower bound).
    pub(super) lo: Option<Vec<u8>>,
    /// Keys are < this key (None: no upper bound).
    pub(super) hi: Option<Vec<u8>>,
}

/// Checks that `key` follows `last` and lies in `[lo, hi)`, then records it as the last key.
pub(super) fn check_key(
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
pub(super) struct Walker<'f> {
    /// The file and snapshot being walked.
    pub(super) file: &'f LmdbFile,
    /// Pages reached by any tree so far: catches cycles, shared pages and overlapping runs.
    pub(super) seen: PageSet,
    /// Branch, leaf and overflow pages reached so far.
    pub(super) tree_pages: u64,
}

impl<'f> Walker<'f> {
    /// A walker that has reached no page yet.
    pub(super) fn new(file: &'f LmdbFile) -> Walker<'f> {
        Walker {
            file,
            seen: PageSet::new(file.page_count()),
            tree_pages: 0,
        }
    }

    /// Walks one tree in key order, calling `visit` per record, checks the tree's counts against
    /// its record, and returns its number of entries.
    pub(super) fn walk(
        &mut self,
        spec: &TreeSpec,
        visit: &mut Visit<'_>,
    ) -> Result<u64, LmdbError> {
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
    pub(super) fn load(
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
    pub(super) fn leaf(
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
    pub(super) fn overflow(
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
pub(super) fn db_record(n: &Node<'_>) -> Result<DbRecord, String> {
    if n.data.len() != DB_RECORD_SIZE {
        return Err(format!(
            "its database record is {} bytes, not {DB_RECORD_SIZE}",
            n.data.len()
        ));
    }
    DbRecord::parse(n.data).ok_or_else(|| "its database record is unreadable".to_string())
}

/// Why a duplicates sub-page walk stopped.
pub(super) enum SubPageError {
    /// The sub-page is malformed.
    Bad(String),
    /// The visitor stopped the walk.
    Visit(LmdbError),
}

/// Checks the duplicates sub-page `sub` of key `key` and passes each duplicate to `visit`;
/// returns the number of duplicates.
pub(super) fn sub_page(
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

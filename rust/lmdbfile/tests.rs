use super::*;
use crate::testlmdb::{Env, TempDir};
use lmdb_sys as ffi;
use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

/// What the tests look at besides the engine's own calls.
impl LmdbFile {
    /// Page size in bytes.
    fn page_size(&self) -> usize {
        self.meta.page_size
    }

    /// Last page in use by the chosen snapshot.
    fn last_page(&self) -> u64 {
        self.meta.last_pg
    }

    /// Names of the named databases (main-DB keys with `F_SUBDATA`), in key order.
    fn db_names(&self) -> Result<Vec<Vec<u8>>, LmdbError> {
        self.settle(
            self.named_dbs(&mut Walker::new(self))
                .map(|dbs| dbs.into_iter().map(|(name, _)| name).collect()),
        )
    }
}

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
/// Two more commits by the writer: a snapshot older than that is gone from the meta pages.
fn commit_twice(env: &Env) {
    for (key, value) in [(1u64, b"x"), (2, b"y")] {
        env.write(|t| {
            t.put(
                t.db("counters", ffi::MDB_INTEGERKEY),
                &key.to_le_bytes(),
                value,
            )
        });
    }
}

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
    commit_twice(&env);
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
    commit_twice(&env);
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
                let key =
                    format!("k{:03}", rng.below(if name == "p" { 400 } else { 8 })).into_bytes();
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

//! Reading an area's index database from a snapshot file: the live IDs and their sizes, the IDs
//! being erased, the highest ID; and every record checked to decode, with the account's
//! consistency rules of docs/FORMAT.md.
//!
//! Doing this in Rust from the snapshot file (instead of iterating records in Python) is what
//! keeps a million-message account at tens of milliseconds here rather than over a second; see
//! docs/BACKUP.md for the measurement.

use std::collections::{HashMap, HashSet};

use crate::lmdbfile::{LmdbError, LmdbFile};
use crate::msgpack::{self, Scalar};

/// Which kind of index a file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexKind {
    /// `accounts/NAME/index.db`: `message`, `mailbox`, `message_erase`, `meta`.
    Account,
    /// `queue/index.db`: `msg`, `msg_erase`, `meta`.
    Queue,
}

/// Something wrong with one record. Codes starting with `bad_` or `missing_` mean the record
/// (or table) could not be read; the others are consistency rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Stable machine name (listed in docs/VERIFY.md).
    pub code: &'static str,
    /// The record's ID (0 when the key itself is bad).
    pub id: u64,
    /// What exactly is wrong.
    pub detail: String,
}

/// Most problems kept per index; further ones are only counted.
pub const MAX_PROBLEMS: usize = 1000;

/// What an index says about its area.
#[derive(Debug, Default)]
pub struct AreaIndex {
    /// IDs whose files belong to the area, ascending.
    pub live: Vec<u64>,
    /// Recorded file size of each live ID; None when the record has no readable size. An
    /// Option rather than a reserved value: every u64 is a size a record can claim.
    pub sizes: Vec<Option<u64>>,
    /// IDs being erased, ascending.
    pub erasing: Vec<u64>,
    /// The highest ID of any record (0 when there is none).
    pub highest: u64,
    /// Number of message (or queue) records.
    pub records: u64,
    /// Number of expunged message records.
    pub expunged: u64,
    /// Number of mailbox records.
    pub mailboxes: u64,
    /// The `next_id` counter of the `meta` table, if present.
    pub next_id: Option<u64>,
    /// The first [`MAX_PROBLEMS`] problems.
    pub problems: Vec<Problem>,
    /// All problems, counted.
    pub problem_count: u64,
}

impl AreaIndex {
    /// Records a problem (kept while under the bound).
    fn problem(&mut self, code: &'static str, id: u64, detail: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(Problem { code, id, detail });
        }
    }
}

/// The fields mailbak reads from one record; each is None when absent or of the wrong type.
#[derive(Default)]
struct Fields<'a> {
    /// `size`.
    size: Option<u64>,
    /// `expunged`.
    expunged: Option<bool>,
    /// `mailbox_id`.
    mailbox_id: Option<u64>,
    /// `uid`.
    uid: Option<u64>,
    /// `uidnext`.
    uidnext: Option<u64>,
    /// `uidvalidity`.
    uidvalidity: Option<u64>,
    /// `name`.
    name: Option<&'a [u8]>,
    /// `received` or `queued`.
    time: Option<i64>,
    /// `sender`.
    sender: Option<&'a [u8]>,
    /// `recipient`.
    recipient: Option<&'a [u8]>,
    /// `flags`, as encoded (a msgpack array; decoded by the caller).
    flags: Option<&'a [u8]>,
    /// `keywords`, as encoded.
    keywords: Option<&'a [u8]>,
}

/// Decodes a record value into [`Fields`]; Err names the decoding problem.
fn fields(value: &[u8]) -> Result<Fields<'_>, String> {
    let mut f = Fields::default();
    msgpack::read_map(value, |k, v| match (k, v) {
        (b"size", Scalar::UInt(n)) => f.size = Some(n),
        (b"expunged", Scalar::Bool(b)) => f.expunged = Some(b),
        (b"mailbox_id", Scalar::UInt(n)) => f.mailbox_id = Some(n),
        (b"uid", Scalar::UInt(n)) => f.uid = Some(n),
        (b"uidnext", Scalar::UInt(n)) => f.uidnext = Some(n),
        (b"uidvalidity", Scalar::UInt(n)) => f.uidvalidity = Some(n),
        (b"name", Scalar::Str(s)) => f.name = Some(s),
        (b"received" | b"queued", Scalar::UInt(n)) => f.time = i64::try_from(n).ok(),
        (b"received" | b"queued", Scalar::Int(n)) => f.time = Some(n),
        (b"sender", Scalar::Str(s)) => f.sender = Some(s),
        (b"recipient", Scalar::Str(s)) => f.recipient = Some(s),
        (b"flags", Scalar::Compound(raw)) => f.flags = Some(raw),
        (b"keywords", Scalar::Compound(raw)) => f.keywords = Some(raw),
        _ => {}
    })
    .map_err(|e| format!("value is not a msgpack map: {e}"))?;
    Ok(f)
}

/// The names of the fields that are missing, given (name, present) pairs.
fn missing(pairs: &[(&str, bool)]) -> Option<String> {
    let names: Vec<&str> = pairs
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(n, _)| *n)
        .collect();
    (!names.is_empty()).then(|| format!("record lacks a valid {}", names.join(", ")))
}

/// The ID a key stands for: 8 bytes, big-endian, from 1 to 2^64-2. The largest u64 is no valid
/// ID: the next-ID counter (a u64) must lie above every ID, and nothing lies above it.
fn key_id(key: &[u8]) -> Option<u64> {
    let id = u64::from_be_bytes(key.try_into().ok()?);
    (id != 0 && id != u64::MAX).then_some(id)
}

/// Calls `f(id, value)` for every record of table `table`, reporting bad keys. A missing table
/// reads as empty; when the format requires it, that is also a problem.
fn each_record(
    file: &LmdbFile,
    idx: &mut AreaIndex,
    table: &'static str,
    required: bool,
    mut f: impl FnMut(&mut AreaIndex, u64, &[u8]),
) -> Result<(), LmdbError> {
    // The closure for for_each cannot borrow idx mutably twice; collect problems of keys aside.
    let mut bad_keys = 0u64;
    let found = file.for_each(table.as_bytes(), &mut |k, v| {
        match key_id(k) {
            Some(id) => {
                idx.highest = idx.highest.max(id);
                f(idx, id, v);
            }
            None => bad_keys += 1,
        }
        Ok(())
    })?;
    if !found && required {
        idx.problem(
            "missing_table",
            0,
            format!("the index has no `{table}` table"),
        );
    }
    if bad_keys > 0 {
        idx.problem(
            "bad_key",
            0,
            format!("{bad_keys} key(s) of `{table}` are not 8-byte IDs from 1 to 2^64-2"),
        );
    }
    Ok(())
}

/// Reads the index of an area from `file` (a snapshot: a compact copy or a file held by a
/// read transaction).
pub fn read_index(file: &LmdbFile, kind: IndexKind) -> Result<AreaIndex, LmdbError> {
    let mut idx = AreaIndex::default();
    read_meta(file, &mut idx)?;
    let mut mailboxes: HashMap<u64, (u64, bool)> = HashMap::new();
    let mut expunged_ids: Vec<u64> = Vec::new();
    if kind == IndexKind::Account {
        each_record(file, &mut idx, "mailbox", true, |idx, id, v| {
            idx.mailboxes += 1;
            match fields(v) {
                Err(e) => idx.problem("bad_record", id, format!("mailbox {id}: {e}")),
                Ok(f) => {
                    if let Some(m) = missing(&[
                        ("name", f.name.is_some()),
                        ("uidvalidity", f.uidvalidity.is_some()),
                        ("uidnext", f.uidnext.is_some()),
                        ("expunged", f.expunged.is_some()),
                    ]) {
                        idx.problem("bad_record", id, format!("mailbox {id}: {m}"));
                    }
                    mailboxes.insert(
                        id,
                        (f.uidnext.unwrap_or(u64::MAX), f.expunged.unwrap_or(false)),
                    );
                }
            }
        })?;
    }
    let table = if kind == IndexKind::Account {
        "message"
    } else {
        "msg"
    };
    each_record(file, &mut idx, table, true, |idx, id, v| {
        idx.records += 1;
        let f = match fields(v) {
            Ok(f) => f,
            Err(e) => {
                idx.problem("bad_record", id, format!("record {id}: {e}"));
                // Conservative: a record that does not say it is expunged keeps its file.
                idx.live.push(id);
                idx.sizes.push(None);
                return;
            }
        };
        let need: Vec<(&str, bool)> = match kind {
            IndexKind::Account => vec![
                ("mailbox_id", f.mailbox_id.is_some()),
                ("uid", f.uid.is_some()),
                ("size", f.size.is_some()),
                ("expunged", f.expunged.is_some()),
                ("received", f.time.is_some()),
            ],
            IndexKind::Queue => vec![
                ("size", f.size.is_some()),
                ("sender", f.sender.is_some()),
                ("recipient", f.recipient.is_some()),
                ("queued", f.time.is_some()),
            ],
        };
        if let Some(m) = missing(&need) {
            idx.problem("bad_record", id, format!("record {id}: {m}"));
        }
        if f.expunged == Some(true) {
            idx.expunged += 1;
            expunged_ids.push(id);
            return;
        }
        idx.live.push(id);
        idx.sizes.push(f.size);
        if kind == IndexKind::Account {
            check_message(idx, &mailboxes, id, &f);
        }
    })?;
    let erase_table = if kind == IndexKind::Account {
        "message_erase"
    } else {
        "msg_erase"
    };
    let mut erasing = Vec::new();
    // `msg_erase` came with the lease protocol; stores written before it lack the table.
    each_record(
        file,
        &mut idx,
        erase_table,
        kind == IndexKind::Account,
        |idx, id, v| {
            erasing.push(id);
            if !v.is_empty() {
                idx.problem(
                    "erase_value",
                    id,
                    format!("erase entry {id} has a non-empty value"),
                );
            }
            let live = idx.live.binary_search(&id).is_ok();
            match kind {
                IndexKind::Account if live => idx.problem(
                    "erase_not_expunged",
                    id,
                    format!("message {id} is being erased but is not expunged"),
                ),
                IndexKind::Account if expunged_ids.binary_search(&id).is_err() => idx.problem(
                    "erase_unknown",
                    id,
                    format!("erase entry {id} has no message record"),
                ),
                IndexKind::Queue if live => idx.problem(
                    "erase_still_queued",
                    id,
                    format!("queue message {id} is being erased but is still queued"),
                ),
                _ => {}
            }
        },
    )?;
    idx.erasing = erasing;
    if let Some(next) = idx.next_id {
        if idx.highest >= next {
            idx.problem(
                "id_above_next",
                idx.highest,
                format!(
                    "ID {} is not below the next ID counter {next}: IDs could be reused",
                    idx.highest
                ),
            );
        }
    }
    Ok(idx)
}

/// An account's live messages as columns, for the recovery verbs (`ls`, `find`, `export`,
/// `restore --account`): decoded here, so that Python builds one row per message from numbers
/// instead of decoding each record (5 µs a record in Python, the largest cost of listing a
/// 100,000-message mailbox).
#[derive(Debug, Default)]
pub struct MessageColumns {
    /// IDs, ascending.
    pub ids: Vec<u64>,
    /// Each message's `mailbox_id`.
    pub mailbox_ids: Vec<u64>,
    /// Each message's `uid`.
    pub uids: Vec<u64>,
    /// Each message's `size`.
    pub sizes: Vec<u64>,
    /// Each message's `received`.
    pub received: Vec<i64>,
    /// Each message's `flags` as encoded (a msgpack array), empty when the record has none.
    pub flags: Vec<Vec<u8>>,
    /// Each message's `keywords` as encoded, empty when the record has none.
    pub keywords: Vec<Vec<u8>>,
    /// (ID, what is wrong) of the first [`MAX_PROBLEMS`] records left out: undecodable, or
    /// lacking a field.
    pub problems: Vec<(u64, String)>,
    /// All records left out, counted.
    pub problem_count: u64,
}

impl MessageColumns {
    /// Leaves a record out, saying why.
    fn problem(&mut self, id: u64, detail: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push((id, detail));
        }
    }
}

/// The live messages of an account index (not expunged, not being erased): of the mailboxes
/// `mailboxes` only, and of the IDs `only` only, when given. Records that do not decode as
/// docs/FORMAT.md says, or lack a field, are left out and named.
pub fn read_messages(
    file: &LmdbFile,
    mailboxes: Option<&HashSet<u64>>,
    only: Option<&HashSet<u64>>,
) -> Result<MessageColumns, LmdbError> {
    let mut erasing = HashSet::new();
    file.for_each(b"message_erase", &mut |k, _| {
        if let Some(id) = key_id(k) {
            erasing.insert(id);
        }
        Ok(())
    })?;
    let mut out = MessageColumns::default();
    let mut bad_keys = 0u64;
    let found = file.for_each(b"message", &mut |k, v| {
        let Some(id) = key_id(k) else {
            bad_keys += 1;
            return Ok(());
        };
        if erasing.contains(&id) || only.is_some_and(|o| !o.contains(&id)) {
            return Ok(());
        }
        let f = match fields(v) {
            Ok(f) => f,
            Err(e) => {
                out.problem(id, format!("message {id}: {e}"));
                return Ok(());
            }
        };
        match f.expunged {
            Some(true) => return Ok(()),
            Some(false) => {}
            None => {
                out.problem(id, format!("message {id}: record lacks a valid expunged"));
                return Ok(());
            }
        }
        let (Some(mailbox_id), Some(uid), Some(size), Some(received)) =
            (f.mailbox_id, f.uid, f.size, f.time)
        else {
            let m = missing(&[
                ("mailbox_id", f.mailbox_id.is_some()),
                ("uid", f.uid.is_some()),
                ("size", f.size.is_some()),
                ("received", f.time.is_some()),
            ]);
            out.problem(id, format!("message {id}: {}", m.unwrap_or_default()));
            return Ok(());
        };
        if mailboxes.is_some_and(|m| !m.contains(&mailbox_id)) {
            return Ok(());
        }
        out.ids.push(id);
        out.mailbox_ids.push(mailbox_id);
        out.uids.push(uid);
        out.sizes.push(size);
        out.received.push(received);
        out.flags
            .push(f.flags.map(<[u8]>::to_vec).unwrap_or_default());
        out.keywords
            .push(f.keywords.map(<[u8]>::to_vec).unwrap_or_default());
        Ok(())
    })?;
    if !found {
        out.problem(0, "the index has no message table".to_string());
    }
    if bad_keys > 0 {
        out.problem(
            0,
            format!("{bad_keys} key(s) of `message` are not 8-byte IDs from 1 to 2^64-2"),
        );
    }
    Ok(out)
}

/// Consistency of one live message with its mailbox.
fn check_message(
    idx: &mut AreaIndex,
    mailboxes: &HashMap<u64, (u64, bool)>,
    id: u64,
    f: &Fields<'_>,
) {
    let Some(mb) = f.mailbox_id else { return };
    match mailboxes.get(&mb) {
        None => idx.problem(
            "unknown_mailbox",
            id,
            format!("message {id} is in mailbox {mb}, which does not exist"),
        ),
        Some(&(uidnext, expunged)) => {
            if let Some(uid) = f.uid {
                if uid >= uidnext {
                    idx.problem(
                        "uid_not_below_uidnext",
                        id,
                        format!(
                            "message {id} has uid {uid}, not below its mailbox's uidnext {uidnext}"
                        ),
                    );
                }
            }
            if expunged {
                idx.problem(
                    "live_in_expunged_mailbox",
                    id,
                    format!("message {id} is not expunged but its mailbox {mb} is"),
                );
            }
        }
    }
}

/// Reads `meta`'s `next_id` (8 bytes, big-endian), when the table has it.
fn read_meta(file: &LmdbFile, idx: &mut AreaIndex) -> Result<(), LmdbError> {
    let mut next = None;
    let mut bad = false;
    file.for_each(b"meta", &mut |k, v| {
        if k == b"next_id" {
            match <[u8; 8]>::try_from(v) {
                Ok(b) => next = Some(u64::from_be_bytes(b)),
                Err(_) => bad = true,
            }
        }
        Ok(())
    })?;
    if bad {
        idx.problem(
            "bad_record",
            0,
            "meta next_id is not an 8-byte integer".into(),
        );
    }
    idx.next_id = next;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testlmdb::{Env, TempDir};

    /// A msgpack value for the test encoder.
    enum V<'a> {
        U(u64),
        B(bool),
        S(&'a str),
    }

    /// Encodes a small map the way Python's msgpack does.
    fn map(fields: &[(&str, V<'_>)]) -> Vec<u8> {
        let mut out = vec![0x80 | fields.len() as u8];
        for (k, v) in fields {
            out.push(0xa0 | k.len() as u8);
            out.extend_from_slice(k.as_bytes());
            match v {
                V::U(n) if *n < 128 => out.push(*n as u8),
                V::U(n) => {
                    out.push(0xcf);
                    out.extend_from_slice(&n.to_be_bytes());
                }
                V::B(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
                V::S(s) => {
                    out.push(0xa0 | s.len() as u8);
                    out.extend_from_slice(s.as_bytes());
                }
            }
        }
        out
    }

    fn message(mailbox: u64, uid: u64, size: u64, expunged: bool) -> Vec<u8> {
        map(&[
            ("mailbox_id", V::U(mailbox)),
            ("uid", V::U(uid)),
            ("size", V::U(size)),
            ("expunged", V::B(expunged)),
            ("received", V::U(1_700_000_000)),
        ])
    }

    fn mailbox(uidnext: u64, expunged: bool) -> Vec<u8> {
        map(&[
            ("name", V::S("Inbox")),
            ("uidvalidity", V::U(1)),
            ("uidnext", V::U(uidnext)),
            ("expunged", V::B(expunged)),
        ])
    }

    fn key(id: u64) -> [u8; 8] {
        id.to_be_bytes()
    }

    /// Writes an account index with `body`, compacts it as a backup would, and reads it back.
    fn account(body: impl FnOnce(&crate::testlmdb::Txn)) -> AreaIndex {
        let dir = TempDir::new("records");
        let env = Env::create(&dir.join("live.db"));
        env.write(body);
        env.copy_compact(&dir.join("copy.db"));
        let file = LmdbFile::open(&dir.join("copy.db"), None).unwrap();
        read_index(&file, IndexKind::Account).unwrap()
    }

    fn codes(idx: &AreaIndex) -> Vec<&'static str> {
        let mut c: Vec<_> = idx.problems.iter().map(|p| p.code).collect();
        c.sort();
        c
    }

    #[test]
    fn live_sizes_erasing_and_highest() {
        let idx = account(|t| {
            let (mb, msg, erase, meta) = (
                t.db("mailbox", 0),
                t.db("message", 0),
                t.db("message_erase", 0),
                t.db("meta", 0),
            );
            t.put(mb, &key(1), &mailbox(10, false));
            t.put(msg, &key(2), &message(1, 1, 100, false));
            t.put(msg, &key(3), &message(1, 2, 200, true));
            t.put(msg, &key(9), &message(1, 3, 300, false));
            t.put(erase, &key(3), b"");
            t.put(meta, b"next_id", &10u64.to_be_bytes());
        });
        assert_eq!(
            (
                idx.live.as_slice(),
                idx.sizes.as_slice(),
                idx.erasing.as_slice()
            ),
            (&[2u64, 9][..], &[Some(100u64), Some(300)][..], &[3u64][..])
        );
        assert_eq!(
            (
                idx.highest,
                idx.records,
                idx.expunged,
                idx.mailboxes,
                idx.next_id
            ),
            (9, 3, 1, 1, Some(10))
        );
        assert!(idx.problems.is_empty(), "{:?}", idx.problems);
    }

    #[test]
    fn message_columns_keep_live_records_and_name_the_rest() {
        let dir = TempDir::new("columns");
        let env = Env::create(&dir.join("live.db"));
        env.write(|t| {
            let (msg, erase) = (t.db("message", 0), t.db("message_erase", 0));
            // flags: ["\\Seen"] as Python's msgpack writes it.
            let mut flagged = message(1, 1, 100, false);
            flagged[0] += 1;
            flagged.extend_from_slice(b"\xa5flags\x91\xa5\\Seen");
            t.put(msg, &key(2), &flagged);
            t.put(msg, &key(3), &message(2, 1, 200, false));
            t.put(msg, &key(4), &message(1, 2, 300, true));
            t.put(msg, &key(5), &message(1, 3, 400, false));
            t.put(erase, &key(5), b"");
            t.put(
                msg,
                &key(6),
                &map(&[("mailbox_id", V::U(1)), ("expunged", V::B(false))]),
            );
            t.put(msg, &key(7), b"\xc1");
        });
        env.copy_compact(&dir.join("copy.db"));
        let file = LmdbFile::open(&dir.join("copy.db"), None).unwrap();
        let all = read_messages(&file, None, None).unwrap();
        assert_eq!(
            all.ids,
            [2, 3],
            "expunged (4), being erased (5) and bad records left out"
        );
        assert_eq!(
            (all.uids.as_slice(), all.sizes.as_slice()),
            (&[1u64, 1][..], &[100u64, 200][..])
        );
        assert_eq!(all.flags[0], b"\x91\xa5\\Seen", "flags come as encoded");
        assert!(all.flags[1].is_empty() && all.keywords[0].is_empty());
        let ids: Vec<u64> = all.problems.iter().map(|p| p.0).collect();
        assert_eq!(ids, [6, 7]);
        assert!(
            all.problems[0].1.contains("uid, size, received"),
            "{:?}",
            all.problems
        );
        let one = read_messages(&file, Some(&HashSet::from([2])), None).unwrap();
        assert_eq!(one.ids, [3], "of mailbox 2 only");
        let only = read_messages(&file, None, Some(&HashSet::from([2, 5]))).unwrap();
        assert_eq!(
            (only.ids.as_slice(), only.problem_count),
            (&[2u64][..], 0),
            "of these IDs only"
        );
    }

    #[test]
    fn consistency_rules() {
        let idx = account(|t| {
            let (mb, msg, erase, meta) = (
                t.db("mailbox", 0),
                t.db("message", 0),
                t.db("message_erase", 0),
                t.db("meta", 0),
            );
            t.put(mb, &key(1), &mailbox(3, false));
            t.put(mb, &key(2), &mailbox(9, true));
            t.put(msg, &key(3), &message(1, 3, 1, false)); // uid not below uidnext 3
            t.put(msg, &key(4), &message(2, 1, 1, false)); // live in an expunged mailbox
            t.put(msg, &key(5), &message(7, 1, 1, false)); // unknown mailbox
            t.put(erase, &key(4), b""); // erase of a live message
            t.put(erase, &key(8), b"x"); // erase of nothing, with a value
            t.put(meta, b"next_id", &6u64.to_be_bytes()); // below the highest ID 8
        });
        assert_eq!(
            codes(&idx),
            vec![
                "erase_not_expunged",
                "erase_unknown",
                "erase_value",
                "id_above_next",
                "live_in_expunged_mailbox",
                "uid_not_below_uidnext",
                "unknown_mailbox"
            ]
        );
    }

    #[test]
    fn undecodable_records_keep_their_files() {
        let idx = account(|t| {
            let (mb, msg) = (t.db("mailbox", 0), t.db("message", 0));
            t.db("message_erase", 0);
            t.put(mb, &key(1), &mailbox(5, false));
            t.put(msg, &key(2), b"\xc1 not msgpack");
            t.put(msg, &key(3), &map(&[("uid", V::U(1))]));
            t.put(msg, b"short", &message(1, 1, 1, false));
        });
        // Record 2 cannot say it is expunged, so its file is kept (size unknown); record 3 lacks
        // fields but is not expunged either.
        assert_eq!(idx.live, vec![2, 3]);
        assert_eq!(idx.sizes, vec![None, None]);
        assert_eq!(codes(&idx), vec!["bad_key", "bad_record", "bad_record"]);
    }

    #[test]
    fn missing_required_tables_are_problems() {
        let idx = account(|t| {
            t.db("meta", 0);
        });
        assert_eq!(
            codes(&idx),
            vec!["missing_table", "missing_table", "missing_table"]
        );
        assert!(idx.live.is_empty());
    }

    #[test]
    fn the_largest_id_is_a_bad_key_and_leaves_room_for_the_counter() {
        // Key ff..ff once made `highest + 1` overflow in the callers.
        let idx = account(|t| {
            let (mb, msg) = (t.db("mailbox", 0), t.db("message", 0));
            t.db("message_erase", 0);
            t.put(mb, &key(1), &mailbox(5, false));
            t.put(msg, &key(2), &message(1, 1, 10, false));
            t.put(msg, &key(u64::MAX), &message(1, 2, 10, false));
        });
        assert_eq!(idx.live, vec![2]);
        assert_eq!(idx.highest, 2);
        assert_eq!(codes(&idx), vec!["bad_key"]);
    }

    #[test]
    fn the_largest_size_is_a_size_like_any_other() {
        let idx = account(|t| {
            let (mb, msg) = (t.db("mailbox", 0), t.db("message", 0));
            t.db("message_erase", 0);
            t.put(mb, &key(1), &mailbox(5, false));
            t.put(msg, &key(2), &message(1, 1, u64::MAX, false));
        });
        assert_eq!(idx.sizes, vec![Some(u64::MAX)]);
    }
}

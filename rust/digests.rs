//! Content digests of a backup's files: the format of `BACKUP/digests/`, hashing, and the
//! recording a backup does while it places files (docs/FORMAT.md, "Digests").
//!
//! Every digest file is text: a header naming the algorithm, one entry per file (`<key> <size>
//! <digest> <how>`), and a trailer holding the SHA-256 of everything before it, so that a
//! damaged digest file is told apart from a damaged message: its entries are then not trusted at
//! all. Message files are listed per shard of 256 IDs (`digests/<area>/<id >> 8>`); a shard in
//! which every message was reused from the reference is a hardlink of the reference's shard file,
//! so the digests of an unchanged history are stored once, like the files. A shard may list IDs
//! the snapshot no longer holds (expunged since it was written): readers look up what the
//! snapshot holds.
//!
//! A digest costs a read only where bytes are read anyway or where the file is new: a copy is
//! hashed from the file just written (page cache), a reused file inherits the reference's entry,
//! and a message hardlinked from the live store is recorded without a digest (`-`).

use std::cell::RefCell;
use std::ffi::CString;
use std::fmt::Write as _;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Mutex;

use rustix::io::Errno;
use sha2::{Digest as _, Sha256};

use crate::fsutil::{self, Kind};

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// The first line of every digest file.
const HEADER: &[u8] = b"mailbak-digests 1 sha256\n";
/// log2 of the number of IDs per shard file.
pub const SHARD_SHIFT: u32 = 8;
/// Largest digest file read: a shard holds at most 256 entries and `files` one per plain file;
/// 64 MiB is far beyond either, and bounds what a damaged file can make a reader allocate.
pub const MAX_FILE_BYTES: u64 = 64 << 20;
/// Mode of digest files (backups are root's: nothing in them is for others).
const FILE_MODE: u32 = 0o600;

/// How an entry's digest was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// Hashed from the bytes the backup wrote.
    Written,
    /// Hashed by a later read (`check --read-data` of a file that had none).
    Read,
    /// None recorded: a message file hardlinked from the live store, never read by backup.
    None,
}

impl How {
    /// Its one-character form in a digest file.
    pub fn as_char(self) -> char {
        match self {
            How::Written => 'w',
            How::Read => 'r',
            How::None => '-',
        }
    }

    /// From its one-character form.
    pub fn from_char(c: char) -> Option<How> {
        let mut b = [0u8; 4];
        How::parse(c.encode_utf8(&mut b).as_bytes())
    }

    /// From its form in a digest file.
    fn parse(s: &[u8]) -> Option<How> {
        match s {
            b"w" => Some(How::Written),
            b"r" => Some(How::Read),
            b"-" => Some(How::None),
            _ => None,
        }
    }
}

/// One line of a digest file: a message ID (shards) or a path (`files`), the size, the digest
/// when one is recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<K> {
    /// The message ID, or the path below the backup root.
    pub key: K,
    /// Size in bytes when the digest was recorded.
    pub size: u64,
    /// The digest; None with [`How::None`].
    pub digest: Option<Digest>,
    /// How the digest was obtained.
    pub how: How,
}

/// The SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Digest {
    Sha256::digest(data).into()
}

/// Lowercase hex of a digest.
pub fn to_hex(d: &Digest) -> String {
    let mut s = String::with_capacity(64);
    for b in d {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A digest from 64 lowercase hex digits.
pub fn from_hex(s: &[u8]) -> Option<Digest> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let hi = hex_value(pair[0])?;
        let lo = hex_value(pair[1])?;
        out[i] = hi << 4 | lo;
    }
    Some(out)
}

/// The value of one lowercase hex digit.
fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// A path as a key of `files`: bytes outside `!`..`~`, and `%`, as `%XX`, so that a key never
/// holds a space or a newline whatever the store's names hold.
pub fn escape(path: &[u8]) -> String {
    let mut s = String::with_capacity(path.len());
    for &b in path {
        if (0x21..=0x7e).contains(&b) && b != b'%' {
            s.push(b as char);
        } else {
            let _ = write!(s, "%{b:02X}");
        }
    }
    s
}

/// The inverse of [`escape`]; None for a malformed escape.
pub fn unescape(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(v);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Some(out)
}

/// A key of a digest file.
pub trait Key: Ord + Clone {
    /// Its text form.
    fn render(&self, out: &mut String);
    /// Parsed from its text form.
    fn parse(s: &[u8]) -> Option<Self>;
}

impl Key for u64 {
    fn render(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
    fn parse(s: &[u8]) -> Option<u64> {
        if s.is_empty() || s.len() > 20 || !s.iter().all(u8::is_ascii_digit) || s[0] == b'0' {
            return None;
        }
        std::str::from_utf8(s).ok()?.parse().ok()
    }
}

impl Key for Vec<u8> {
    fn render(&self, out: &mut String) {
        out.push_str(&escape(self));
    }
    fn parse(s: &[u8]) -> Option<Vec<u8>> {
        unescape(s).filter(|p| !p.is_empty())
    }
}

/// The text of a digest file holding `entries` (sorted here by key).
pub fn render<K: Key>(entries: &mut [Entry<K>]) -> Vec<u8> {
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    let mut s = String::with_capacity(HEADER.len() + entries.len() * 96 + 72);
    s.push_str(std::str::from_utf8(HEADER).expect("ascii"));
    for e in entries.iter() {
        e.key.render(&mut s);
        let _ = write!(s, " {} ", e.size);
        match &e.digest {
            Some(d) => s.push_str(&to_hex(d)),
            None => s.push('-'),
        }
        s.push(' ');
        s.push(e.how.as_char());
        s.push('\n');
    }
    let sum = to_hex(&sha256(s.as_bytes()));
    let _ = writeln!(s, "end {sum}");
    s.into_bytes()
}

/// The entries of a digest file; Err names what is wrong (then nothing in it is trusted).
pub fn parse<K: Key>(data: &[u8]) -> Result<Vec<Entry<K>>, String> {
    let body_end = match data.strip_suffix(b"\n") {
        Some(d) => d.iter().rposition(|&c| c == b'\n').map_or(0, |p| p + 1),
        None => return Err("truncated: no final newline".into()),
    };
    let (body, trailer) = data.split_at(body_end);
    let sum = trailer
        .strip_prefix(b"end ")
        .and_then(|t| t.strip_suffix(b"\n"))
        .and_then(from_hex)
        .ok_or("no trailer (\"end <sha256>\"): truncated or damaged")?;
    if sha256(body) != sum {
        return Err("its checksum does not match its content: damaged".into());
    }
    let rest = body
        .strip_prefix(HEADER)
        .ok_or("not a mailbak digest file of format 1 with sha256")?;
    let mut out: Vec<Entry<K>> = Vec::with_capacity(rest.len() / 80);
    for (n, line) in rest.split(|&c| c == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let bad = || format!("line {}: malformed entry", n + 2);
        let mut f = line.split(|&c| c == b' ');
        let (Some(k), Some(size), Some(digest), Some(how), None) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            return Err(bad());
        };
        let key = K::parse(k).ok_or_else(bad)?;
        let size = <u64 as Key>::parse(size)
            .or((size == b"0").then_some(0))
            .ok_or_else(bad)?;
        let how = How::parse(how).ok_or_else(bad)?;
        let digest = match (digest, how) {
            (b"-", How::None) => None,
            (d, How::Written | How::Read) => Some(from_hex(d).ok_or_else(bad)?),
            _ => return Err(bad()),
        };
        if out.last().is_some_and(|p| p.key >= key) {
            return Err(format!("line {}: entries out of order or repeated", n + 2));
        }
        out.push(Entry {
            key,
            size,
            digest,
            how,
        });
    }
    Ok(out)
}

/// Size of the read buffer of [`hash_fd`]; one per thread.
const HASH_BUF: usize = 256 * 1024;

thread_local! {
    /// Each thread's read buffer of [`hash_fd`], allocated once.
    static BUF: RefCell<Vec<u8>> = RefCell::new(vec![0u8; HASH_BUF]);
}

/// The SHA-256 of a file's whole content from offset 0 (by `pread`: the descriptor's offset is
/// left alone), and the number of bytes read.
pub fn hash_fd(fd: BorrowedFd<'_>) -> Result<(Digest, u64), Errno> {
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        let mut h = Sha256::new();
        let mut off = 0u64;
        loop {
            match rustix::io::pread(fd, &mut buf[..], off) {
                Ok(0) => return Ok((h.finalize().into(), off)),
                Ok(n) => {
                    h.update(&buf[..n]);
                    off += n as u64;
                }
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e),
            }
        }
    })
}

/// Reads digest file `name` of directory `dir`: opened without following a symlink, a regular
/// file only, at most [`MAX_FILE_BYTES`]. Err(NOENT) when absent, Err(INVAL) when not a regular
/// file or too large.
pub fn read_file(dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> Result<Vec<u8>, Errno> {
    let fd = fsutil::open_file_at(dir, name)?;
    let st = fsutil::fstat(&fd)?;
    if Kind::from_mode(st.st_mode) != Kind::File || st.st_size as u64 > MAX_FILE_BYTES {
        return Err(Errno::INVAL);
    }
    let mut out = Vec::with_capacity(st.st_size as usize);
    let mut buf = [0u8; 64 * 1024];
    loop {
        match rustix::io::read(&fd, &mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() as u64 > MAX_FILE_BYTES {
                    return Err(Errno::INVAL);
                }
            }
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Writes `data` as the new file `name` in `dir` (which must not hold it: O_EXCL, never
/// following a symlink); a file written half-way is removed.
pub fn write_file(dir: BorrowedFd<'_>, name: &std::ffi::CStr, data: &[u8]) -> Result<(), Errno> {
    let fd = fsutil::create_file_at(dir, name, FILE_MODE)?;
    let mut off = 0;
    while off < data.len() {
        match rustix::io::write(&fd, &data[off..]) {
            Ok(n) => off += n,
            Err(Errno::INTR) => continue,
            Err(e) => {
                let _ = fsutil::unlink_at(dir, name);
                return Err(e);
            }
        }
    }
    Ok(())
}

/// How a message file got into the backup, as far as its digest is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Hardlinked from the reference: its digest is the reference's.
    Reused,
    /// Hardlinked from the live store: never read, no digest.
    Linked,
    /// Copied: hashed from what was written.
    Copied(Digest),
}

/// A placed message file.
#[derive(Clone, Copy, Debug)]
pub struct MessageRecord {
    /// The message ID.
    pub id: u64,
    /// The placed file's size.
    pub size: u64,
    /// How it was placed.
    pub source: Source,
}

/// A placed regular file that is not a message: its path (as reported: below the call's
/// prefix), size, and digest (None: reused from the reference, whose `files` entry it inherits).
#[derive(Clone, Debug)]
pub struct FileRecord {
    /// The path as the call reports it.
    pub path: Vec<u8>,
    /// Its size.
    pub size: u64,
    /// The digest of what was written; None when it was reused from the reference.
    pub digest: Option<Digest>,
}

/// What one engine call records while it places files: filled by its workers, read once at the
/// end.
#[derive(Default)]
pub struct Recorder {
    /// Message files placed.
    messages: Mutex<Vec<MessageRecord>>,
    /// Plain regular files placed.
    files: Mutex<Vec<FileRecord>>,
}

impl Recorder {
    /// Notes a placed message file.
    pub fn message(&self, rec: MessageRecord) {
        self.messages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(rec);
    }

    /// Notes a placed plain file.
    pub fn file(&self, rec: FileRecord) {
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(rec);
    }

    /// The message files noted so far (taken: a second call has none).
    pub fn take_messages(&self) -> Vec<MessageRecord> {
        std::mem::take(&mut *self.messages.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The plain files noted so far (taken: a second call has none).
    pub fn take_files(&self) -> Vec<FileRecord> {
        std::mem::take(&mut *self.files.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// What writing one area's shard files did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Shard files written anew.
    pub written: u64,
    /// Shard files hardlinked from the reference.
    pub linked: u64,
    /// Bytes of the shard files written anew.
    pub bytes: u64,
    /// Message files recorded (in shards written or linked).
    pub messages: u64,
    /// Of those in shards written anew, the ones without a digest (linked shards keep what the
    /// reference recorded).
    pub pending: u64,
}

/// The decimal name of a shard file.
fn shard_name(shard: u64) -> CString {
    CString::new(shard.to_string()).expect("digits")
}

/// Writes the shard files of one area into `dst` from what the backup placed (`records`, any
/// order), sharing each unchanged one with the reference's shard directory `reference` (see the
/// module doc). Errors are returned with the shard they concern; the other shards are still
/// written.
pub fn write_shards(
    mut records: Vec<MessageRecord>,
    dst: BorrowedFd<'_>,
    reference: Option<BorrowedFd<'_>>,
) -> (ShardStats, Vec<(u64, Errno)>) {
    records.sort_unstable_by_key(|r| r.id);
    let mut stats = ShardStats::default();
    let mut errors = Vec::new();
    for group in records.chunk_by(|a, b| a.id >> SHARD_SHIFT == b.id >> SHARD_SHIFT) {
        let shard = group[0].id >> SHARD_SHIFT;
        match write_shard(shard, group, dst, reference, &mut stats) {
            Ok(()) => {}
            Err(e) => errors.push((shard, e)),
        }
    }
    (stats, errors)
}

/// One shard of [`write_shards`].
fn write_shard(
    shard: u64,
    group: &[MessageRecord],
    dst: BorrowedFd<'_>,
    reference: Option<BorrowedFd<'_>>,
    stats: &mut ShardStats,
) -> Result<(), Errno> {
    let name = shard_name(shard);
    let all_reused = group.iter().all(|r| r.source == Source::Reused);
    if let (true, Some(r)) = (all_reused, reference) {
        // The reference's shard lists every message it held in this range, so it lists these:
        // link exactly the inode looked at (O_PATH, never following a symlink), if it is a file.
        if let Ok(fd) = fsutil::open_path_at(r, &name) {
            if fsutil::fstat(&fd).is_ok_and(|st| Kind::from_mode(st.st_mode) == Kind::File)
                && fsutil::link_fd_at(fd.as_fd(), dst, &name)
                    .or_else(|_| fsutil::link_at(r, dst, &name))
                    .is_ok()
            {
                stats.linked += 1;
                stats.messages += group.len() as u64;
                return Ok(());
            }
        }
    }
    // Written anew: reused messages inherit the reference's entry when it has one of that size.
    let inherited: Vec<Entry<u64>> = if group.iter().any(|r| r.source == Source::Reused) {
        reference
            .and_then(|r| read_file(r, &name).ok())
            .and_then(|data| parse::<u64>(&data).ok())
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let mut entries: Vec<Entry<u64>> = group
        .iter()
        .map(|r| {
            let (digest, how) = match r.source {
                Source::Copied(d) => (Some(d), How::Written),
                Source::Linked => (None, How::None),
                Source::Reused => inherited
                    .binary_search_by_key(&r.id, |e| e.key)
                    .ok()
                    .map(|i| &inherited[i])
                    .filter(|e| e.size == r.size)
                    .map_or((None, How::None), |e| (e.digest, e.how)),
            };
            Entry {
                key: r.id,
                size: r.size,
                digest,
                how,
            }
        })
        .collect();
    entries.dedup_by_key(|e| e.key);
    stats.messages += entries.len() as u64;
    stats.pending += entries.iter().filter(|e| e.digest.is_none()).count() as u64;
    let data = render(&mut entries);
    write_file(dst, &name, &data)?;
    stats.written += 1;
    stats.bytes += data.len() as u64;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::testutil::Scratch;

    fn entry(id: u64, size: u64, d: Option<u8>) -> Entry<u64> {
        Entry {
            key: id,
            size,
            digest: d.map(|b| [b; 32]),
            how: if d.is_some() { How::Written } else { How::None },
        }
    }

    #[test]
    fn render_and_parse_round_trip() {
        let mut e = vec![
            entry(300, 5, Some(1)),
            entry(257, 0, None),
            entry(12, 9, Some(2)),
        ];
        let text = render(&mut e);
        assert!(text.starts_with(HEADER));
        let back: Vec<Entry<u64>> = parse(&text).unwrap();
        assert_eq!(back, e);
        assert_eq!(back[0].key, 12);
    }

    #[test]
    fn any_flipped_byte_is_damage_never_a_different_digest() {
        let text = render(&mut [entry(1, 5, Some(7)), entry(2, 6, Some(8))]);
        for i in 0..text.len() {
            let mut bad = text.clone();
            bad[i] ^= 0x01;
            assert!(parse::<u64>(&bad).is_err(), "byte {i}");
        }
        assert!(parse::<u64>(&text[..text.len() - 1]).is_err());
        assert!(parse::<u64>(b"").is_err());
    }

    #[test]
    fn malformed_lines_are_refused_even_with_a_good_trailer() {
        for body in [
            "7 5 - w\n",
            "7 5 abc w\n",
            "07 5 - -\n",
            "7 5 - - x\n",
            "8 1 - -\n7 1 - -\n",
            "8 1 - -\n8 1 - -\n",
        ] {
            let mut s = String::from_utf8(HEADER.to_vec()).unwrap();
            s.push_str(body);
            let sum = to_hex(&sha256(s.as_bytes()));
            s.push_str(&format!("end {sum}\n"));
            assert!(parse::<u64>(s.as_bytes()).is_err(), "{body:?}");
        }
    }

    #[test]
    fn paths_are_escaped_so_any_name_round_trips() {
        let hostile = b"data/a b\n%zz/\xff..".to_vec();
        let mut e = vec![Entry {
            key: hostile.clone(),
            size: 3,
            digest: Some([9; 32]),
            how: How::Written,
        }];
        let text = render(&mut e);
        assert_eq!(text.iter().filter(|&&c| c == b'\n').count(), 3);
        let back: Vec<Entry<Vec<u8>>> = parse(&text).unwrap();
        assert_eq!(back[0].key, hostile);
    }

    #[test]
    fn hash_fd_is_sha256_of_the_whole_file() {
        let s = Scratch::new("hash");
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        s.file("f", &data);
        let f = std::fs::File::open(s.path("f")).unwrap();
        let (d, n) = hash_fd(f.as_fd()).unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(d, sha256(&data));
        assert_eq!(
            to_hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn unchanged_shards_are_linked_changed_ones_written_with_inherited_entries() {
        let s = Scratch::new("shards");
        let (reference, dst) = s.src_dst();
        // The reference: shard 0 with IDs 1 and 2, shard 1 with ID 300.
        write_file(
            reference.as_fd(),
            c"0",
            &render(&mut [entry(1, 10, Some(1)), entry(2, 20, Some(2))]),
        )
        .unwrap();
        write_file(
            reference.as_fd(),
            c"1",
            &render(&mut [entry(300, 30, Some(3))]),
        )
        .unwrap();
        let rec = |id, size, source| MessageRecord { id, size, source };
        let (stats, errors) = write_shards(
            vec![
                rec(2, 20, Source::Reused),            // shard 0: only reused (1 expunged)
                rec(300, 30, Source::Reused),          // shard 1: reused ...
                rec(301, 31, Source::Copied([4; 32])), // ... and a new copy
                rec(600, 60, Source::Linked),          // shard 2: linked from the store
            ],
            dst.as_fd(),
            Some(reference.as_fd()),
        );
        assert!(errors.is_empty());
        assert_eq!((stats.linked, stats.written), (1, 2));
        let ino =
            |p: &str| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(s.path(p)).unwrap());
        assert_eq!(ino("src/0"), ino("dst/0"));
        let one: Vec<Entry<u64>> = parse(&std::fs::read(s.path("dst/1")).unwrap()).unwrap();
        assert_eq!(one, vec![entry(300, 30, Some(3)), entry(301, 31, Some(4))]);
        let two: Vec<Entry<u64>> = parse(&std::fs::read(s.path("dst/2")).unwrap()).unwrap();
        assert_eq!(two, vec![entry(600, 60, None)]);
        assert_eq!((stats.messages, stats.pending), (4, 1));
    }

    #[test]
    fn a_damaged_reference_shard_is_not_inherited() {
        let s = Scratch::new("damagedref");
        let (reference, dst) = s.src_dst();
        let mut text = render(&mut [entry(1, 10, Some(1))]);
        text[30] ^= 1;
        write_file(reference.as_fd(), c"0", &text).unwrap();
        let recs = vec![
            MessageRecord {
                id: 1,
                size: 10,
                source: Source::Reused,
            },
            MessageRecord {
                id: 2,
                size: 5,
                source: Source::Copied([2; 32]),
            },
        ];
        let (stats, _) = write_shards(recs, dst.as_fd(), Some(reference.as_fd()));
        assert_eq!((stats.written, stats.pending), (1, 1));
        let back: Vec<Entry<u64>> = parse(&std::fs::read(s.path("dst/0")).unwrap()).unwrap();
        assert_eq!(back[0], entry(1, 10, None));
    }
}

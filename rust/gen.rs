//! Writing the message files of a generated store, in parallel, one message directory per task.
//!
//! Content is deterministic for a seed: a short RFC 5322 header naming the ID, then a slice of a
//! block of pseudo-random words made once per call. Files are not fsynced: a generated store is
//! test and benchmark material, and the caller may `syncfs` once at the end.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rayon::prelude::*;
use rustix::io::Errno;

use crate::fsutil::{self, join};
use crate::msgpath;
use crate::progress::Sink;

/// Size of the shared text block; message sizes are capped well below it by the generator.
const BLOCK: usize = 2 * 1024 * 1024;

/// Mode of a generated message file, as a mail server writes them.
const MESSAGE_FILE_MODE: u32 = 0o640;

/// splitmix64: a tiny, good-enough deterministic generator.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A block of lowercase words and line breaks, determined by `seed`.
fn text_block(seed: u64) -> Vec<u8> {
    const WORDS: [&[u8]; 16] = [
        b"mail",
        b"backup",
        b"queue",
        b"the",
        b"of",
        b"snapshot",
        b"message",
        b"and",
        b"store",
        b"server",
        b"lmdb",
        b"link",
        b"account",
        b"inbox",
        b"a",
        b"to",
    ];
    let mut out = Vec::with_capacity(BLOCK + 16);
    let mut s = seed;
    let mut col = 0;
    while out.len() < BLOCK {
        s = mix(s);
        let w = WORDS[(s & 15) as usize];
        out.extend_from_slice(w);
        col += w.len() + 1;
        if col > 72 {
            out.extend_from_slice(b"\r\n");
            col = 0;
        } else {
            out.push(b' ');
        }
    }
    out.truncate(BLOCK);
    out
}

/// Writes message files `ids` (with `sizes`, aligned) below `root` (a message tree), creating
/// directories (mode 0750) and files (mode 0640). Existing files are an error (O_EXCL).
pub fn write_messages(
    root: &Path,
    ids: &[u64],
    sizes: &[u64],
    seed: u64,
    sink: &Sink<'_>,
) -> Result<(), Errno> {
    assert_eq!(ids.len(), sizes.len(), "one size per ID");
    let root = fsutil::open_dir(root)?;
    let block = text_block(seed);
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_unstable_by_key(|&i| ids[i]);
    // Runs of one directory each.
    let mut runs: Vec<&[usize]> = Vec::new();
    let mut rest = &order[..];
    while let Some(&first) = rest.first() {
        let d = msgpath::dir_index(ids[first]);
        let n = rest
            .iter()
            .position(|&i| msgpath::dir_index(ids[i]) != d)
            .unwrap_or(rest.len());
        runs.push(&rest[..n]);
        rest = &rest[n..];
    }
    runs.par_iter().for_each(|run| {
        if sink.cancelled() {
            return;
        }
        let dname = msgpath::dir_name(ids[run[0]]);
        let cdir = CString::new(dname.as_bytes()).expect("alphabet only");
        let dir = match fsutil::make_dir_at(root.as_fd(), &cdir, fsutil::NEW_DIR_MODE, None) {
            Ok(d) => d,
            Err(e) => return sink.io_error(dname.as_bytes(), "create directory", e),
        };
        let mut buf = Vec::new();
        let mut name = Vec::new();
        for &i in run.iter() {
            msgpath::file_name(ids[i], &mut name);
            fill(&mut buf, &block, ids[i], seed, sizes[i] as usize);
            if let Err(e) = write_file(&dir, &name, &buf) {
                sink.io_error(&join(dname.as_bytes(), &name), "write", e);
            }
            sink.progress.add_done(1);
        }
    });
    Ok(())
}

/// The content of message `id`: header, then body text, exactly `size` bytes.
fn fill(buf: &mut Vec<u8>, block: &[u8], id: u64, seed: u64, size: usize) {
    use std::io::Write;
    buf.clear();
    let _ = write!(
        buf,
        "Message-ID: <{id}.{seed}@gen.mailbak.example>\r\nFrom: sender{}@example.org\r\nSubject: generated message {id}\r\n\r\n",
        mix(id ^ seed) % 1000
    );
    buf.truncate(size);
    let body = size - buf.len();
    let body = body.min(block.len());
    let start = (mix(id.wrapping_add(seed)) as usize) % (block.len() - body + 1);
    buf.extend_from_slice(&block[start..start + body]);
}

/// Creates and writes one file.
fn write_file(dir: &OwnedFd, name: &[u8], data: &[u8]) -> Result<(), Errno> {
    let cname = CString::new(name).map_err(|_| Errno::INVAL)?;
    let fd = fsutil::create_file_at(dir.as_fd(), &cname, MESSAGE_FILE_MODE)?;
    let mut off = 0;
    while off < data.len() {
        off += rustix::io::write(&fd, &data[off..])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::testutil::Scratch;
    use crate::progress::Progress;

    #[test]
    fn writes_exact_sizes_deterministically() {
        let s = Scratch::new("gen");
        std::fs::create_dir_all(s.path("one")).unwrap();
        std::fs::create_dir_all(s.path("two")).unwrap();
        let ids = [1u64, 8192, 9000, 5];
        let sizes = [10u64, 4096, 200_000, 0];
        let p = Progress::new(false, 10);
        for d in ["one", "two"] {
            let sink = Sink::new(&p, b"");
            write_messages(&s.path(d), &ids, &sizes, 42, &sink).unwrap();
        }
        for (id, size) in ids.iter().zip(sizes) {
            let rel = String::from_utf8(msgpath::rel_path(*id)).unwrap();
            let a = std::fs::read(s.path(&format!("one/{rel}"))).unwrap();
            assert_eq!(a.len() as u64, size);
            assert_eq!(a, std::fs::read(s.path(&format!("two/{rel}"))).unwrap());
        }
        assert!(std::fs::read(s.path("one/b/9000"))
            .unwrap()
            .starts_with(b"Message-ID: <9000.42@"));
    }

    #[test]
    fn existing_file_is_an_error_not_overwritten() {
        let s = Scratch::new("genexist");
        s.file("m/a/1", b"keep");
        let p = Progress::new(false, 10);
        let sink = Sink::new(&p, b"");
        write_messages(&s.path("m"), &[1], &[100], 1, &sink).unwrap();
        assert_eq!(
            sink.tally.errors.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert_eq!(std::fs::read(s.path("m/a/1")).unwrap(), b"keep");
    }
}

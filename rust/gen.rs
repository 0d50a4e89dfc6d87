//! Writing the message files of a generated store, in parallel, one message directory per task.
//!
//! Content is deterministic for a seed: an RFC 5322 head (`Message-ID` naming the ID and seed,
//! `Date` from the message's received time, `From`, `To` and `Subject` picked from small tables,
//! some as RFC 2047 encoded words of non-ASCII text), then a slice of a block of pseudo-random
//! words made once per call. Files are not fsynced: a generated store is test and benchmark
//! material, and the caller may `syncfs` once at the end.

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

/// Writes message files `ids` (with `sizes` and `received` times in unix seconds, aligned)
/// below `root` (a message tree), creating directories (mode 0750) and files (mode 0640); `to`
/// is the `To` address of every message (the account's), or empty for one picked per message.
/// Existing files are an error (O_EXCL).
pub fn write_messages(
    root: &Path,
    ids: &[u64],
    sizes: &[u64],
    received: &[u64],
    to: &str,
    seed: u64,
    sink: &Sink<'_>,
) -> Result<(), Errno> {
    assert_eq!(ids.len(), sizes.len(), "one size per ID");
    assert_eq!(ids.len(), received.len(), "one received time per ID");
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
            let head = Head {
                id: ids[i],
                seed,
                received: received[i],
                to,
            };
            fill(&mut buf, &block, &head, sizes[i] as usize);
            if let Err(e) = write_file(&dir, &name, &buf) {
                sink.io_error(&join(dname.as_bytes(), &name), "write", e);
            }
            sink.progress.add_done(1);
        }
    });
    Ok(())
}

/// Senders: display name (an RFC 2047 encoded word when not ASCII) and address.
const SENDERS: [&str; 16] = [
    "Alice Martin <alice.martin@example.org>",
    "=?UTF-8?Q?J=C3=BCrgen_M=C3=BCller?= <juergen@example.de>",
    "Bob Smith <bob@example.net>",
    "=?UTF-8?B?w4ltaWxpZSBEdXBvbnQ=?= <emilie.dupont@example.fr>",
    "GitHub <noreply@github.example>",
    "Shop Newsletter <news@shop.example>",
    "=?UTF-8?B?5p2O6Zu3?= <li.lei@example.cn>",
    "carol@example.com",
    "\"Nguyen, Thanh\" <thanh@example.vn>",
    "=?UTF-8?Q?Ren=C3=A9e_=C3=98ster?= <renee@example.no>",
    "Debian Bug Tracker <owner@bugs.example.org>",
    "Dave O'Brien <dave@example.ie>",
    "Support <support@helpdesk.example>",
    "Mallory <mallory@phish.example>",
    "Erin Walsh <erin.walsh@example.org>",
    "Frank <frank@example.com>",
];

/// Subjects; the non-ASCII ones as RFC 2047 encoded words (base64 and quoted-printable), which
/// decode to `Überweisung bestätigt`, `Réunion de l'équipe`, `Спасибо за заказ`, `会议纪要`,
/// `Grüße aus München`, `Café ☕ tomorrow?`, `Ärger mit dem Drucker`, `¿Cenamos el sábado?`.
/// Each is followed by ` #ID`, so a subject names its message.
const SUBJECTS: [&str; 16] = [
    "Quarterly report",
    "=?UTF-8?B?w5xiZXJ3ZWlzdW5nIGJlc3TDpHRpZ3Q=?=",
    "Re: Lunch on Friday?",
    "=?UTF-8?Q?R=C3=A9union_de_l=27=C3=A9quipe?=",
    "Your order has shipped",
    "=?UTF-8?B?0KHQv9Cw0YHQuNCx0L4g0LfQsCDQt9Cw0LrQsNC3?=",
    "Meeting notes",
    "=?UTF-8?B?5Lya6K6u57qq6KaB?=",
    "Fwd: Invoice 2024-117",
    "=?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus_M=C3=BCnchen?=",
    "[debian-devel] Bug triage",
    "=?UTF-8?B?Q2Fmw6kg4piVIHRvbW9ycm93Pw==?=",
    "Re: Re: Project plan",
    "=?UTF-8?Q?=C3=84rger_mit_dem_Drucker?=",
    "Welcome to the team",
    "=?UTF-8?Q?=C2=BFCenamos_el_s=C3=A1bado=3F?=",
];

/// Zone offsets of `Date` headers, in minutes east of UTC.
const ZONES: [i64; 8] = [0, 60, 120, -300, -420, 330, 540, 60];

/// Day names of RFC 5322 dates; day 0 is Sunday.
const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
/// Month names of RFC 5322 dates.
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// The proleptic Gregorian (year, month 1-12, day 1-31) of a day counted from 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, usize, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m as usize, d)
}

/// Writes `unix` seconds as an RFC 5322 date in the zone `offset` minutes east of UTC:
/// `Tue, 05 Mar 2024 14:03:12 +0100`.
fn write_date(buf: &mut Vec<u8>, unix: i64, offset: i64) {
    use std::io::Write;
    let local = unix + offset * 60;
    let (days, secs) = (local.div_euclid(86_400), local.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let sign = if offset < 0 { '-' } else { '+' };
    let _ = write!(
        buf,
        "{}, {d:02} {} {y} {:02}:{:02}:{:02} {sign}{:02}{:02}",
        DAYS[(days + 4).rem_euclid(7) as usize],
        MONTHS[m - 1],
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        offset.abs() / 60,
        offset.abs() % 60,
    );
}

/// What the head of one generated message is made from.
struct Head<'a> {
    /// The message's ID.
    id: u64,
    /// The generator's seed.
    seed: u64,
    /// Received time, unix seconds; the `Date` lies up to ten minutes before it.
    received: u64,
    /// The `To` address, or empty for one picked by the ID.
    to: &'a str,
}

/// The content of a message: head, then body text, exactly `size` bytes (the head is cut
/// short for a message smaller than it).
fn fill(buf: &mut Vec<u8>, block: &[u8], head: &Head<'_>, size: usize) {
    use std::io::Write;
    let Head {
        id,
        seed,
        received,
        to,
    } = *head;
    let r = mix(id ^ seed);
    buf.clear();
    let _ = write!(
        buf,
        "Message-ID: <{id}.{seed}@gen.mailbak.example>\r\nDate: "
    );
    let sent = i64::try_from(received).unwrap_or(i64::MAX / 2) - (r % 600) as i64;
    write_date(buf, sent, ZONES[(r >> 10) as usize % ZONES.len()]);
    let _ = write!(
        buf,
        "\r\nFrom: {}\r\nTo: ",
        SENDERS[(r >> 20) as usize % 16]
    );
    if to.is_empty() {
        let _ = write!(buf, "rcpt{}@example.net", (r >> 30) % 10_000);
    } else {
        buf.extend_from_slice(to.as_bytes());
    }
    let _ = write!(
        buf,
        "\r\nSubject: {} #{id}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
        SUBJECTS[(r >> 44) as usize % 16]
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
        let received = [1_700_000_000u64, 0, 1_709_647_392, 1];
        let p = Progress::new(false, 10);
        for d in ["one", "two"] {
            let sink = Sink::new(&p, b"");
            write_messages(&s.path(d), &ids, &sizes, &received, "", 42, &sink).unwrap();
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
    fn head_names_the_message_and_its_date() {
        let block = text_block(7);
        let mut buf = Vec::new();
        // 2024-03-05T14:03:12Z, a Tuesday.
        let head = Head {
            id: 12,
            seed: 7,
            received: 1_709_647_392,
            to: "renée@example.org",
        };
        fill(&mut buf, &block, &head, 4096);
        assert_eq!(buf.len(), 4096);
        let text = String::from_utf8_lossy(&buf);
        let head_end = text.find("\r\n\r\n").expect("a head");
        let head_text = &text[..head_end];
        assert!(head_text.starts_with("Message-ID: <12.7@gen.mailbak.example>\r\nDate: "));
        assert!(head_text.contains("\r\nTo: renée@example.org\r\n"));
        assert!(head_text.contains(" #12\r\n"), "{head_text}");
        let mut short = Vec::new();
        fill(&mut short, &block, &head, 30);
        assert_eq!(short, &buf[..30], "a small message is its head cut short");
    }

    #[test]
    fn dates_are_rfc5322() {
        let mut buf = Vec::new();
        write_date(&mut buf, 1_709_647_392, 60);
        assert_eq!(buf, b"Tue, 05 Mar 2024 15:03:12 +0100");
        buf.clear();
        write_date(&mut buf, 0, -300);
        assert_eq!(buf, b"Wed, 31 Dec 1969 19:00:00 -0500");
        buf.clear();
        write_date(&mut buf, 951_825_600, 330); // 2000-02-29T12:00:00Z, a leap day
        assert_eq!(buf, b"Tue, 29 Feb 2000 17:30:00 +0530");
        buf.clear();
        write_date(&mut buf, 1_767_225_599, 0);
        assert_eq!(buf, b"Wed, 31 Dec 2025 23:59:59 +0000");
    }

    #[test]
    fn existing_file_is_an_error_not_overwritten() {
        let s = Scratch::new("genexist");
        s.file("m/a/1", b"keep");
        let p = Progress::new(false, 10);
        let sink = Sink::new(&p, b"");
        write_messages(&s.path("m"), &[1], &[100], &[0], "a@b", 1, &sink).unwrap();
        assert_eq!(
            sink.tally.errors.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert_eq!(std::fs::read(s.path("m/a/1")).unwrap(), b"keep");
    }
}

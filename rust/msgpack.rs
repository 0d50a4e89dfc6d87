//! Minimal msgpack decoder for record values: one map with string keys.
//!
//! Scalar values are handed out as borrowed [`Scalar`]s; nested arrays, maps and ext values are
//! validated and skipped. The input is untrusted: every length is checked against the bytes that
//! remain before it is used, nesting is bounded, and nothing is allocated.
//!
//! Hand-written rather than built on the `rmp` crate because it is faster where it matters: on
//! 1M generated message records (the ignored test `decode_one_million_records`), an `rmp`-based
//! reader of the same shape and limits took about 1.3 times as long (numbers in the commit that
//! kept this module).

use std::fmt;

/// Deepest nesting accepted, counting the top-level map as 1; bounds the recursion.
const MAX_DEPTH: usize = 32;

/// One value of the top-level map.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scalar<'a> {
    /// nil.
    Nil,
    /// true or false.
    Bool(bool),
    /// A negative integer, whatever its encoding.
    Int(i64),
    /// A non-negative integer, whatever its encoding (signed formats included).
    UInt(u64),
    /// float 32 (widened) or float 64.
    Float(f64),
    /// A str's bytes, not checked for UTF-8.
    Str(&'a [u8]),
    /// A bin's bytes.
    Bin(&'a [u8]),
    /// An array, map or ext, validated and skipped: its encoded bytes, for a caller that
    /// decodes it itself (a message's flags).
    Compound(&'a [u8]),
}

/// Why a buffer is not a msgpack map of the accepted shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeError {
    /// Byte offset in the buffer where the problem was found.
    pub offset: usize,
    /// What is wrong.
    pub message: &'static str,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "msgpack: {} at byte {}", self.message, self.offset)
    }
}

impl std::error::Error for DecodeError {}

/// Decodes `buf` as exactly one msgpack map (no trailing bytes) whose keys are all str; calls
/// `f(key, value)` for each entry in order; returns the number of entries.
///
/// The whole buffer is validated before the first call to `f`, so `f` sees either every entry
/// of a valid map or nothing. Nested arrays, maps and ext values are validated and reported as
/// [`Scalar::Compound`] with their encoded bytes; nesting deeper than 32 levels is an error.
pub fn read_map<'a>(
    buf: &'a [u8],
    mut f: impl FnMut(&'a [u8], Scalar<'a>),
) -> Result<usize, DecodeError> {
    // A record has a handful of entries: they are kept from the one pass that validates the
    // map and handed out after it. Validating first and decoding again was half the time of
    // reading an index (find reads one per account and snapshot). A longer map takes the two
    // passes.
    let mut kept = [(&b""[..], Scalar::Nil); KEPT_ENTRIES];
    let mut n = 0;
    let count = decode(buf, &mut |k, v| {
        if let Some(slot) = kept.get_mut(n) {
            *slot = (k, v);
        }
        n += 1;
    })?;
    if count <= KEPT_ENTRIES {
        for &(k, v) in &kept[..count] {
            f(k, v);
        }
    } else {
        decode(buf, &mut f)?;
    }
    Ok(count)
}

/// Entries of a map kept from the validating pass (more: decoded a second time).
const KEPT_ENTRIES: usize = 16;

/// One pass over the map, calling `f` per entry.
fn decode<'a>(
    buf: &'a [u8],
    f: &mut dyn FnMut(&'a [u8], Scalar<'a>),
) -> Result<usize, DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    let first = r.byte()?;
    let count = match first {
        0x80..=0x8f => usize::from(first & 0x0f),
        0xde => r.length(2)?,
        0xdf => r.length(4)?,
        _ => {
            return Err(DecodeError {
                offset: 0,
                message: "top level is not a map",
            })
        }
    };
    r.room_for(count, 2)?;
    for _ in 0..count {
        let at = r.pos;
        let key = match r.value(1)? {
            Scalar::Str(key) => key,
            _ => {
                return Err(DecodeError {
                    offset: at,
                    message: "map key is not a string",
                })
            }
        };
        let value = r.value(1)?;
        f(key, value);
    }
    if r.pos != buf.len() {
        return Err(DecodeError {
            offset: r.pos,
            message: "trailing bytes after the map",
        });
    }
    Ok(count)
}

/// A cursor over the buffer.
struct Reader<'a> {
    /// The whole input.
    buf: &'a [u8],
    /// Offset of the next unread byte.
    pos: usize,
}

impl<'a> Reader<'a> {
    /// An error at the current offset.
    fn error(&self, message: &'static str) -> DecodeError {
        DecodeError {
            offset: self.pos,
            message,
        }
    }

    /// The next `n` bytes.
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.buf.len());
        let bytes = end
            .and_then(|end| self.buf.get(self.pos..end))
            .ok_or_else(|| self.error("truncated"))?;
        self.pos += n;
        Ok(bytes)
    }

    /// The next byte.
    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?.first().copied().unwrap_or(0))
    }

    /// The next `n` (1, 2, 4 or 8) bytes as a big-endian unsigned integer.
    fn uint(&mut self, n: usize) -> Result<u64, DecodeError> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, &b| acc << 8 | u64::from(b)))
    }

    /// The next `n` bytes as a big-endian two's-complement integer.
    fn int(&mut self, n: usize) -> Result<i64, DecodeError> {
        let raw = self.uint(n)?;
        let shift = 64 - 8 * n as u32;
        // Shifting left then arithmetically right sign-extends the n-byte value.
        Ok(((raw << shift) as i64) >> shift)
    }

    /// A `width`-byte length field.
    fn length(&mut self, width: usize) -> Result<usize, DecodeError> {
        let at = self.pos;
        let n = self.uint(width)?;
        usize::try_from(n).map_err(|_| DecodeError {
            offset: at,
            message: "length does not fit in memory",
        })
    }

    /// Fails unless `count` items of at least `each` bytes can still follow, so an absurd count
    /// is rejected before any loop runs over it.
    fn room_for(&self, count: usize, each: usize) -> Result<(), DecodeError> {
        let left = self.buf.len().saturating_sub(self.pos);
        match count.checked_mul(each) {
            Some(need) if need <= left => Ok(()),
            _ => Err(self.error("element count exceeds the remaining buffer")),
        }
    }

    /// `n` bytes of payload, with its length checked first.
    fn payload(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len().saturating_sub(self.pos) {
            return Err(self.error("length exceeds the remaining buffer"));
        }
        self.take(n)
    }

    /// An ext's type byte and `n` bytes of data.
    fn ext(&mut self, n: usize) -> Result<Scalar<'a>, DecodeError> {
        self.byte()?;
        self.payload(n)?;
        Ok(Scalar::Compound(&[]))
    }

    /// `count` values nested at `depth`.
    fn items(&mut self, count: usize, depth: usize) -> Result<Scalar<'a>, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(self.error("nesting deeper than 32 levels"));
        }
        self.room_for(count, 1)?;
        for _ in 0..count {
            self.value(depth)?;
        }
        Ok(Scalar::Compound(&[]))
    }

    /// `count` key/value pairs nested at `depth`.
    fn pairs(&mut self, count: usize, depth: usize) -> Result<Scalar<'a>, DecodeError> {
        self.room_for(count, 2)?;
        let items = count
            .checked_mul(2)
            .ok_or_else(|| self.error("element count exceeds the remaining buffer"))?;
        self.items(items, depth)
    }

    /// One value at nesting `depth` (its container's depth); a compound one with its bytes.
    fn value(&mut self, depth: usize) -> Result<Scalar<'a>, DecodeError> {
        let at = self.pos;
        Ok(match self.scalar(depth)? {
            Scalar::Compound(_) => Scalar::Compound(&self.buf[at..self.pos]),
            other => other,
        })
    }

    /// One value at nesting `depth`; a compound one without its bytes (`value` adds them).
    fn scalar(&mut self, depth: usize) -> Result<Scalar<'a>, DecodeError> {
        let at = self.pos;
        let b = self.byte()?;
        let inner = depth + 1;
        Ok(match b {
            0x00..=0x7f => Scalar::UInt(u64::from(b)),
            0x80..=0x8f => self.pairs(usize::from(b & 0x0f), inner)?,
            0x90..=0x9f => self.items(usize::from(b & 0x0f), inner)?,
            0xa0..=0xbf => Scalar::Str(self.payload(usize::from(b & 0x1f))?),
            0xc0 => Scalar::Nil,
            0xc1 => {
                return Err(DecodeError {
                    offset: at,
                    message: "byte 0xc1 is never used",
                })
            }
            0xc2 => Scalar::Bool(false),
            0xc3 => Scalar::Bool(true),
            0xc4 => {
                let n = self.length(1)?;
                Scalar::Bin(self.payload(n)?)
            }
            0xc5 => {
                let n = self.length(2)?;
                Scalar::Bin(self.payload(n)?)
            }
            0xc6 => {
                let n = self.length(4)?;
                Scalar::Bin(self.payload(n)?)
            }
            0xc7 => {
                let n = self.length(1)?;
                self.ext(n)?
            }
            0xc8 => {
                let n = self.length(2)?;
                self.ext(n)?
            }
            0xc9 => {
                let n = self.length(4)?;
                self.ext(n)?
            }
            0xca => Scalar::Float(f64::from(f32::from_bits(self.uint(4)? as u32))),
            0xcb => Scalar::Float(f64::from_bits(self.uint(8)?)),
            0xcc => Scalar::UInt(self.uint(1)?),
            0xcd => Scalar::UInt(self.uint(2)?),
            0xce => Scalar::UInt(self.uint(4)?),
            0xcf => Scalar::UInt(self.uint(8)?),
            0xd0 => signed(self.int(1)?),
            0xd1 => signed(self.int(2)?),
            0xd2 => signed(self.int(4)?),
            0xd3 => signed(self.int(8)?),
            0xd4 => self.ext(1)?,
            0xd5 => self.ext(2)?,
            0xd6 => self.ext(4)?,
            0xd7 => self.ext(8)?,
            0xd8 => self.ext(16)?,
            0xd9 => {
                let n = self.length(1)?;
                Scalar::Str(self.payload(n)?)
            }
            0xda => {
                let n = self.length(2)?;
                Scalar::Str(self.payload(n)?)
            }
            0xdb => {
                let n = self.length(4)?;
                Scalar::Str(self.payload(n)?)
            }
            0xdc => {
                let n = self.length(2)?;
                self.items(n, inner)?
            }
            0xdd => {
                let n = self.length(4)?;
                self.items(n, inner)?
            }
            0xde => {
                let n = self.length(2)?;
                self.pairs(n, inner)?
            }
            0xdf => {
                let n = self.length(4)?;
                self.pairs(n, inner)?
            }
            0xe0..=0xff => Scalar::Int(i64::from(b as i8)),
        })
    }
}

/// A decoded signed integer as the scalar its sign calls for.
fn signed(v: i64) -> Scalar<'static> {
    if v < 0 {
        Scalar::Int(v)
    } else {
        Scalar::UInt(v as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::{catch_unwind, AssertUnwindSafe};

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// A map16 of fixstr keys to hand-encoded values.
    fn map16(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut buf = vec![0xde];
        buf.extend_from_slice(&(entries.len() as u16).to_be_bytes());
        for (key, value) in entries {
            buf.push(0xa0 | key.len() as u8);
            buf.extend_from_slice(key.as_bytes());
            buf.extend_from_slice(&hex(value));
        }
        buf
    }

    /// Every value format once; Python's msgpack 1.x decodes the same bytes to the same values.
    const EVERY_FORMAT: &[(&str, &str)] = &[
        ("pos", "05"),
        ("neg", "e0"),
        ("nil", "c0"),
        ("t", "c3"),
        ("f", "c2"),
        ("u8", "ccff"),
        ("u16", "cd0100"),
        ("u32", "ce00010000"),
        ("u64", "cfffffffffffffffff"),
        ("i8", "d080"),
        ("i16", "d1ff7f"),
        ("i32", "d2ffff7fff"),
        ("i64", "d38000000000000000"),
        ("i8p", "d005"),
        ("f32", "ca3fc00000"),
        ("f64", "cb400921fb54442d18"),
        ("s", "a3616263"),
        ("s8", "d90378797a"),
        ("s16", "da00026869"),
        ("s32", "db000000017a"),
        ("b8", "c4020102"),
        ("b16", "c50001ff"),
        ("b32", "c600000000"),
        ("fa", "9201a178"),
        ("a16", "dc0002c0c3"),
        ("a32", "dd0000000190"),
        ("fm", "8101a179"),
        ("m16", "de0001a16b80"),
        ("m32", "df00000001c0c0"),
        ("fx1", "d401aa"),
        ("fx2", "d501aabb"),
        ("fx4", "d6ff00000000"),
        ("fx8", "d7010102030405060708"),
        ("fx16", "d80100000000000000000000000000000000"),
        ("e8", "c70305010203"),
        ("e16", "c8000105ff"),
        ("e32", "c90000000005"),
    ];

    fn decoded(buf: &[u8]) -> Result<Vec<(String, Scalar<'_>)>, DecodeError> {
        let mut out = Vec::new();
        let n = read_map(buf, |k, v| {
            out.push((String::from_utf8(k.to_vec()).unwrap(), v))
        })?;
        assert_eq!(n, out.len());
        Ok(out)
    }

    #[test]
    fn decodes_every_format() {
        let buf = map16(EVERY_FORMAT);
        let got = decoded(&buf).unwrap();
        let expected = [
            Scalar::UInt(5),
            Scalar::Int(-32),
            Scalar::Nil,
            Scalar::Bool(true),
            Scalar::Bool(false),
            Scalar::UInt(255),
            Scalar::UInt(256),
            Scalar::UInt(65536),
            Scalar::UInt(u64::MAX),
            Scalar::Int(-128),
            Scalar::Int(-129),
            Scalar::Int(-32769),
            Scalar::Int(i64::MIN),
            Scalar::UInt(5),
            Scalar::Float(1.5),
            Scalar::Float(std::f64::consts::PI),
            Scalar::Str(b"abc"),
            Scalar::Str(b"xyz"),
            Scalar::Str(b"hi"),
            Scalar::Str(b"z"),
            Scalar::Bin(&[1, 2]),
            Scalar::Bin(&[0xff]),
            Scalar::Bin(&[]),
        ];
        assert_eq!(got.len(), EVERY_FORMAT.len());
        for (i, (key, value)) in got.iter().enumerate() {
            assert_eq!(key, EVERY_FORMAT[i].0);
            match expected.get(i) {
                Some(want) => assert_eq!(value, want, "{key}"),
                None => assert!(matches!(*value, Scalar::Compound(_)), "{key}"),
            }
        }
    }

    #[test]
    fn header_and_key_formats() {
        // fixmap, and keys as str8, str16 and str32.
        let buf = hex("83d9016101da0001620adb000000016314");
        let got = decoded(&buf).unwrap();
        assert_eq!(
            got,
            vec![
                ("a".into(), Scalar::UInt(1)),
                ("b".into(), Scalar::UInt(10)),
                ("c".into(), Scalar::UInt(20))
            ]
        );
        // map32 and an empty fixmap.
        assert_eq!(
            decoded(&hex("df00000001a178c0")).unwrap(),
            vec![("x".into(), Scalar::Nil)]
        );
        assert_eq!(read_map(&[0x80], |_, _| panic!("no entries")), Ok(0));
        assert_eq!(read_map(&hex("de0000"), |_, _| ()), Ok(0));
    }

    #[test]
    fn rejects_bad_shapes() {
        let cases: &[(&str, &str)] = &[
            ("", "truncated"),
            ("c0", "top level is not a map"),
            ("9101", "top level is not a map"),
            ("a161", "top level is not a map"),
            ("8101c0", "map key is not a string"),
            ("81c401610c", "map key is not a string"),
            ("81c0c0", "map key is not a string"),
            ("80c0", "trailing bytes after the map"),
            ("81a161c1", "byte 0xc1 is never used"),
            ("81a16191c1", "byte 0xc1 is never used"),
            ("81a161dbffffffff", "length exceeds the remaining buffer"),
            ("81a161c6ffffffff00", "length exceeds the remaining buffer"),
            ("81a161c9ffffffff05", "length exceeds the remaining buffer"),
            (
                "81a161ddffffffff",
                "element count exceeds the remaining buffer",
            ),
            (
                "81a161dfffffffff",
                "element count exceeds the remaining buffer",
            ),
            ("dfffffffff", "element count exceeds the remaining buffer"),
            ("82a16101", "element count exceeds the remaining buffer"),
        ];
        for (bytes, message) in cases {
            let mut calls = 0;
            let err = read_map(&hex(bytes), |_, _| calls += 1).unwrap_err();
            assert_eq!(err.message, *message, "{bytes}");
            assert_eq!(calls, 0, "{bytes}: f was called before the error was found");
        }
        let err = read_map(&hex("81a161c1"), |_, _| ()).unwrap_err();
        assert_eq!(
            (err.offset, err.to_string().as_str()),
            (3, "msgpack: byte 0xc1 is never used at byte 3")
        );
    }

    #[test]
    fn long_maps_are_handed_out_whole_too() {
        // More entries than the validating pass keeps: the second pass hands them out.
        let mut buf = vec![0xde, 0, 20];
        for i in 0..20u8 {
            buf.extend_from_slice(&[0xa1, b'a' + i, i]);
        }
        let got = decoded(&buf).unwrap();
        assert_eq!(got.len(), 20);
        assert_eq!(got[19], ("t".into(), Scalar::UInt(19)));
        buf.push(0xc0);
        assert_eq!(
            read_map(&buf, |_, _| panic!("nothing of an invalid map"))
                .unwrap_err()
                .message,
            "trailing bytes after the map"
        );
    }

    #[test]
    fn nesting_is_bounded() {
        // The top-level map is level 1; arrays nested 31 deep inside it reach the limit of 32.
        let nested = |levels: usize| {
            let mut buf = hex("81a161");
            buf.extend(std::iter::repeat_n(0x91, levels - 1));
            buf.push(0x90);
            buf
        };
        let ok = nested(31);
        assert_eq!(
            decoded(&ok).unwrap(),
            vec![("a".into(), Scalar::Compound(&ok[3..]))],
            "a compound value comes with its encoded bytes"
        );
        assert_eq!(
            read_map(&nested(32), |_, _| ()).unwrap_err().message,
            "nesting deeper than 32 levels"
        );
        // Far deeper input fails the same way instead of exhausting the stack.
        assert_eq!(
            read_map(&nested(200_000), |_, _| ()).unwrap_err().message,
            "nesting deeper than 32 levels"
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        let buf = map16(EVERY_FORMAT);
        for len in 0..buf.len() {
            let result = catch_unwind(|| read_map(&buf[..len], |_, _| ()));
            assert!(matches!(result, Ok(Err(_))), "prefix of {len} bytes");
        }
        let mut longer = buf.clone();
        longer.push(0xc0);
        assert_eq!(
            read_map(&longer, |_, _| ()).unwrap_err(),
            DecodeError {
                offset: buf.len(),
                message: "trailing bytes after the map"
            }
        );
    }

    /// 1M message records as mailbak.store packs them: {"mailbox_id", "uid", "size",
    /// "expunged", "received", "flags": [...]}, msgpack-python's encoding.
    fn records(n: u64) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                let mut b = vec![0x86];
                b.extend_from_slice(b"\xaamailbox_id");
                b.push((i % 7) as u8);
                b.extend_from_slice(b"\xa3uid\xce");
                b.extend_from_slice(&(i as u32 + 1).to_be_bytes());
                b.extend_from_slice(b"\xa4size\xcd");
                b.extend_from_slice(&(4096 + (i % 50_000) as u16).to_be_bytes());
                b.extend_from_slice(b"\xa8expunged");
                b.push(if i % 10 == 0 { 0xc3 } else { 0xc2 });
                b.extend_from_slice(b"\xa8received\xce");
                b.extend_from_slice(&(1_700_000_000 + i as u32).to_be_bytes());
                b.extend_from_slice(b"\xa5flags\x92\xa5\\Seen\xa8\\Flagged");
                b
            })
            .collect()
    }

    /// Decode time of 1M records (`cargo test --release -- --ignored --nocapture
    /// decode_one_million`): the measurement that chose this decoder, see the commit message.
    #[test]
    #[ignore]
    fn decode_one_million_records() {
        let recs = records(1_000_000);
        let mut best = f64::MAX;
        for _ in 0..5 {
            let start = std::time::Instant::now();
            let mut sum = 0u64;
            for r in &recs {
                read_map(r, |k, v| {
                    if let (b"size", Scalar::UInt(n)) = (k, v) {
                        sum += n;
                    }
                })
                .unwrap();
            }
            best = best.min(start.elapsed().as_secs_f64());
            assert!(sum > 0);
        }
        let msg = format!(
            "msgpack: 1M records decoded in {:.1} ms (best of 5)",
            best * 1e3
        );
        std::io::Write::write_all(&mut std::io::stderr(), msg.as_bytes()).unwrap();
    }

    #[test]
    fn mutated_input_never_panics() {
        let base = map16(EVERY_FORMAT);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..5000 {
            let mut buf = base.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() % buf.len() as u64) as usize;
                buf[at] = next() as u8;
            }
            let cut = if next() % 4 == 0 {
                (next() % buf.len() as u64) as usize
            } else {
                buf.len()
            };
            let outcome = catch_unwind(AssertUnwindSafe(|| read_map(&buf[..cut], |_, _| ())));
            assert!(outcome.is_ok(), "panic on {buf:02x?}");
        }
    }
}

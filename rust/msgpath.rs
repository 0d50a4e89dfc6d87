//! Where a message file lives: the mox scheme of `docs/FORMAT.md`.
//!
//! A message with ID `id` lives at `<dir(id)>/<id>` below its area (`accounts/NAME/msg/` or
//! `queue/`). `dir(id)` packs `id >> 13` into base-64 digits, least significant first, so each
//! directory holds at most 8192 messages and directory names stay short.

/// The digits of directory names, in value order.
pub const ALPHABET: &[u8; 64] = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-_";

/// log2 of the number of message files per directory.
pub const FILES_PER_DIR_SHIFT: u32 = 13;

/// Longest directory name: `u64::MAX >> 13` has 51 bits, 9 base-64 digits.
const MAX_DIR_LEN: usize = 9;

/// A directory name built on the stack (no allocation per message on the hot path).
#[derive(Clone, Copy)]
pub struct DirName {
    /// The digits; only the first `len` are used.
    buf: [u8; MAX_DIR_LEN],
    /// Number of digits in use (at least one).
    len: u8,
}

impl DirName {
    /// The name as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
}

/// The directory that holds message `id`.
pub fn dir_name(id: u64) -> DirName {
    let mut v = id >> FILES_PER_DIR_SHIFT;
    let mut out = DirName {
        buf: [0; MAX_DIR_LEN],
        len: 0,
    };
    loop {
        out.buf[out.len as usize] = ALPHABET[(v & 63) as usize];
        out.len += 1;
        v >>= 6;
        if v == 0 {
            return out;
        }
    }
}

/// Index of the directory `dir(id)` for ordering and grouping: all IDs in one directory share it.
pub fn dir_index(id: u64) -> u64 {
    id >> FILES_PER_DIR_SHIFT
}

/// The file name of message `id`: its decimal form.
pub fn file_name(id: u64, out: &mut Vec<u8>) {
    out.clear();
    let mut digits = [0u8; 20];
    let mut n = id;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// The relative path `dir(id)/id`.
pub fn rel_path(id: u64) -> Vec<u8> {
    let mut name = Vec::with_capacity(24);
    file_name(id, &mut name);
    let dir = dir_name(id);
    let mut out = Vec::with_capacity(dir.len as usize + 1 + name.len());
    out.extend_from_slice(dir.as_bytes());
    out.push(b'/');
    out.extend_from_slice(&name);
    out
}

/// The ID a file name stands for, if it is the canonical decimal form of an ID >= 1.
///
/// "007" and "+7" are not IDs: they could never be written by the store, so such files are
/// strays, not messages.
pub fn parse_id(name: &[u8]) -> Option<u64> {
    if name.is_empty() || name.len() > 20 || name[0] == b'0' {
        return None;
    }
    let mut v: u64 = 0;
    for &c in name {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(v)
}

/// The ID of a file named `name` in directory `dir`, if the file sits exactly at `path(id)`.
pub fn id_at_path(dir: &[u8], name: &[u8]) -> Option<u64> {
    let id = parse_id(name)?;
    (dir_name(id).as_bytes() == dir).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(id: u64) -> String {
        String::from_utf8(rel_path(id)).unwrap()
    }

    #[test]
    fn worked_examples_from_format_doc() {
        assert_eq!(path(1), "a/1");
        assert_eq!(path(5), "a/5");
        assert_eq!(path(8191), "a/8191");
        assert_eq!(path(8192), "b/8192");
        assert_eq!(path(516096), "_/516096");
        assert_eq!(path(524288), "ab/524288");
        assert_eq!(path(1000000), "Wb/1000000");
        assert_eq!(dir_name(u64::MAX).as_bytes(), b"________h");
    }

    #[test]
    fn parse_accepts_only_canonical_decimal() {
        assert_eq!(parse_id(b"1"), Some(1));
        assert_eq!(parse_id(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"0",
            b"07",
            b"+7",
            b"-7",
            b"7a",
            b"18446744073709551616",
            b" 7",
        ] {
            assert_eq!(parse_id(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn id_at_path_requires_the_right_directory() {
        assert_eq!(id_at_path(b"a", b"5"), Some(5));
        assert_eq!(id_at_path(b"b", b"5"), None);
        assert_eq!(id_at_path(b"Wb", b"1000000"), Some(1000000));
        assert_eq!(id_at_path(b"W", b"1000000"), None);
    }

    #[test]
    fn round_trip_over_directory_boundaries() {
        for id in (1..200_000u64)
            .step_by(97)
            .chain([8191, 8192, 8193, 524287, 524288, u64::MAX])
        {
            let p = rel_path(id);
            let slash = p.iter().position(|&c| c == b'/').unwrap();
            assert_eq!(id_at_path(&p[..slash], &p[slash + 1..]), Some(id));
        }
    }
}

//! Parsing one branch or leaf page: its header, its node slots and each node, every offset and
//! size checked against the page before use.

use super::*;

/// A node of a branch or leaf page.
pub(super) struct Node<'a> {
    /// `mn_lo`: low 16 bits of the data size or child page.
    pub(super) lo: u16,
    /// `mn_hi`: next 16 bits of the data size or child page.
    pub(super) hi: u16,
    /// `mn_flags`: node flags on leaves, bits 32..48 of the child page on branches.
    pub(super) flags: u16,
    /// The key.
    pub(super) key: &'a [u8],
    /// The data stored in the node (8 bytes for `F_BIGDATA`, nothing on branch pages).
    pub(super) data: &'a [u8],
}

impl Node<'_> {
    /// The child page of a branch node.
    pub(super) fn child(&self) -> u64 {
        u64::from(self.lo) | u64::from(self.hi) << 16 | u64::from(self.flags) << 32
    }

    /// The data size of a leaf node (the full value size for `F_BIGDATA`).
    pub(super) fn data_size(&self) -> u32 {
        u32::from(self.lo) | u32::from(self.hi) << 16
    }
}

/// The fields of a page header that matter here.
pub(super) struct Header {
    /// `mp_pgno`.
    pub(super) pgno: u64,
    /// `mp_pad`: key size on LEAF2 sub-pages.
    pub(super) pad: u16,
    /// `mp_flags`.
    pub(super) flags: u16,
    /// `mp_lower`.
    pub(super) lower: u16,
    /// `mp_upper`.
    pub(super) upper: u16,
    /// `mp_pages`, which shares its bytes with lower and upper on overflow pages.
    pub(super) pages: u32,
}

/// Decodes the header at the start of `b`.
pub(super) fn header(b: &[u8]) -> Option<Header> {
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
pub(super) fn slots(h: &Header, size: usize) -> Result<usize, String> {
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
pub(super) fn node(page: &[u8], upper: usize, i: usize, leaf: bool) -> Result<Node<'_>, String> {
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

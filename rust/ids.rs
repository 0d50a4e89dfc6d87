//! Sets of message IDs taken from one LMDB snapshot.
//!
//! IDs cross the Python boundary as one buffer of little-endian u64 (8 bytes a message), never as
//! a list of Python ints. In Rust they are a sorted vector: 8 bytes a message, lookups by binary
//! search, and iteration in ID order, which is directory order on disk.

use std::sync::atomic::{AtomicU64, Ordering};

/// Where two ascending lists of IDs differ, found by one merge: the positions in `a` of the IDs
/// `b` lacks, and the positions in `b` of the IDs `a` lacks. None unless both are strictly
/// ascending. (find compares each snapshot's IDs with the next one's: with Python sets that was
/// a fifth of a search across 30 snapshots.)
pub fn sorted_diff(a: &[u64], b: &[u64]) -> Option<(Vec<u64>, Vec<u64>)> {
    if !a.windows(2).all(|w| w[0] < w[1]) || !b.windows(2).all(|w| w[0] < w[1]) {
        return None;
    }
    let (mut only_a, mut only_b) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Equal => {
                i += 1;
                j += 1;
            }
            std::cmp::Ordering::Less => {
                only_a.push(i as u64);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                only_b.push(j as u64);
                j += 1;
            }
        }
    }
    only_a.extend((i..a.len()).map(|p| p as u64));
    only_b.extend((j..b.len()).map(|p| p as u64));
    Some((only_a, only_b))
}

/// A sorted set of IDs without duplicates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdSet {
    /// The IDs, ascending, unique.
    ids: Vec<u64>,
}

impl IdSet {
    /// A set from IDs in any order; duplicates are merged.
    pub fn new(mut ids: Vec<u64>) -> Self {
        ids.sort_unstable();
        ids.dedup();
        IdSet { ids }
    }

    /// A set from IDs the caller has checked are strictly ascending (no second sort).
    pub fn from_ascending(ids: Vec<u64>) -> Self {
        debug_assert!(ids.windows(2).all(|w| w[0] < w[1]), "strictly ascending");
        IdSet { ids }
    }

    /// A set from packed little-endian u64s, as handed over from Python.
    pub fn from_le_bytes(buf: &[u8]) -> Result<Self, String> {
        if buf.len() % 8 != 0 {
            return Err(format!(
                "ID buffer of {} bytes is not a whole number of u64s",
                buf.len()
            ));
        }
        let ids = buf
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        Ok(IdSet::new(ids))
    }

    /// Whether `id` is in the set.
    pub fn contains(&self, id: u64) -> bool {
        self.ids.binary_search(&id).is_ok()
    }

    /// Position of `id` in ascending order, if present.
    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.ids.binary_search(&id).ok()
    }

    /// Number of IDs.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// The IDs in ascending order.
    pub fn as_slice(&self) -> &[u64] {
        &self.ids
    }
}

/// One bit per member of an [`IdSet`], set concurrently by walker threads when they meet the
/// member's file; what stays clear afterwards was not found by the walk.
pub struct SeenSet {
    /// Bit `i` stands for the set's `i`-th ID.
    words: Vec<AtomicU64>,
    /// Number of members.
    len: usize,
}

impl SeenSet {
    /// An all-clear bitmap for a set of `len` members.
    pub fn new(len: usize) -> Self {
        SeenSet {
            words: (0..len.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            len,
        }
    }

    /// Marks member `index`; returns whether it was already marked.
    pub fn mark(&self, index: usize) -> bool {
        let bit = 1u64 << (index % 64);
        self.words[index / 64].fetch_or(bit, Ordering::Relaxed) & bit != 0
    }

    /// Whether member `index` is marked.
    pub fn is_marked(&self, index: usize) -> bool {
        self.words[index / 64].load(Ordering::Relaxed) & (1u64 << (index % 64)) != 0
    }

    /// Indexes of the members never marked, ascending.
    pub fn unmarked(&self) -> Vec<usize> {
        (0..self.len).filter(|&i| !self.is_marked(i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_diff_names_the_positions_on_each_side() {
        let (a, b) = sorted_diff(&[1, 3, 5, 9, 10], &[1, 2, 5, 10, 11, 12]).unwrap();
        assert_eq!((a, b), (vec![1, 3], vec![1, 4, 5]));
        assert_eq!(sorted_diff(&[], &[4]).unwrap(), (vec![], vec![0]));
        assert!(sorted_diff(&[2, 1], &[]).is_none(), "unsorted");
        assert!(sorted_diff(&[1], &[1, 1]).is_none(), "a duplicate");
    }

    #[test]
    fn sorts_dedups_and_round_trips() {
        let s = IdSet::new(vec![9, 3, 3, 7]);
        assert_eq!(s.as_slice(), &[3, 7, 9]);
        assert!(s.contains(7) && !s.contains(8));
        let packed: Vec<u8> = s.as_slice().iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(IdSet::from_le_bytes(&packed).unwrap(), s);
    }

    #[test]
    fn rejects_ragged_buffer() {
        assert!(IdSet::from_le_bytes(&[1, 2, 3]).is_err());
    }

    #[test]
    fn seen_set_reports_unmarked() {
        let seen = SeenSet::new(130);
        assert!(!seen.mark(0));
        assert!(seen.mark(0));
        seen.mark(129);
        let rest = seen.unmarked();
        assert_eq!(rest.len(), 128);
        assert!(!rest.contains(&0) && !rest.contains(&129));
    }
}

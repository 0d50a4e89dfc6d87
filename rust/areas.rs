//! One engine call's message areas (the queue and accounts): what the caller says about each
//! area, checked once when the call's arguments are read, and the opening of an area's root.
//!
//! A call gets many areas and runs them all in one pool (`transfer::backup_areas`,
//! `check::check_areas`), so that workers spread over every area's directories. What one area
//! needs is an [`AreaSpec`]: its root, its layout, its snapshot and the recorded size of each live
//! message. The sizes are aligned with the live IDs; [`recorded_sizes`] checks that once, and
//! the per-area workers rely on it.
//!
//! An area whose root cannot be opened is an error event of that area, never a failure of the
//! call: one unreadable account does not stop the others.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::classify::{Area, Snapshot};
use crate::fsutil;
use crate::ids::IdSet;
use crate::progress::Sink;

/// One message area of a call.
#[derive(Clone, Debug)]
pub struct AreaSpec {
    /// The area's directory (relative to the call's anchor when it has one).
    pub src: PathBuf,
    /// Layout of the area.
    pub area: Area,
    /// The snapshot's IDs.
    pub snap: Snapshot,
    /// Recorded sizes aligned with `snap.live` (None: the record has no readable size).
    pub sizes: Vec<Option<u64>>,
    /// Prefix of every path reported for this area, e.g. `data/accounts/bob`.
    pub prefix: Vec<u8>,
}

/// The live IDs as a set and their recorded sizes, checked once: `live` must be strictly
/// ascending (as the index yields them) and `sizes` aligned with it. `unknown`: the live IDs
/// whose record has no readable size; they are named apart, never by a reserved size value.
pub fn recorded_sizes(
    live: Vec<u64>,
    sizes: Vec<u64>,
    unknown: &IdSet,
) -> Result<(IdSet, Vec<Option<u64>>), String> {
    if sizes.len() != live.len() || !live.windows(2).all(|w| w[0] < w[1]) {
        return Err("sizes must align with ascending unique live IDs".into());
    }
    let sizes = live
        .iter()
        .zip(sizes)
        .map(|(id, n)| (!unknown.contains(*id)).then_some(n))
        .collect();
    Ok((IdSet::from_ascending(live), sizes))
}

/// Opens an area's root inside a worker (below `anchor` when given, refusing symlinks at every
/// step); failure is the area's error event.
pub(crate) fn open_area_root(
    anchor: Option<&OwnedFd>,
    path: &Path,
    sink: &Sink<'_>,
) -> Option<OwnedFd> {
    fsutil::open_root_dir(anchor.map(|a| a.as_fd()), path)
        .map_err(|e| sink.io_error(b"", "open directory", e))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_must_align_with_strictly_ascending_ids() {
        let none = IdSet::default();
        assert!(recorded_sizes(vec![1, 2], vec![5], &none).is_err());
        assert!(recorded_sizes(vec![2, 1], vec![5, 5], &none).is_err());
        assert!(recorded_sizes(vec![1, 1], vec![5, 5], &none).is_err());
        let (live, sizes) = recorded_sizes(vec![1, 7], vec![5, 0], &IdSet::new(vec![7])).unwrap();
        assert_eq!(live.as_slice(), &[1, 7]);
        assert_eq!(sizes, vec![Some(5), None]);
    }
}

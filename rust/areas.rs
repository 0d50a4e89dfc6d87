//! One engine call's message areas (the queue and accounts): what the caller says about each
//! area, checked once when the call's arguments are read, and the opening of an area's root.
//!
//! A call gets many areas and runs them all in one pool (`transfer::backup_areas`,
//! `check::check_areas`), so that workers spread over every area's directories. What one area
//! needs is an [`AreaSpec`]: its root, its layout, its snapshot and the recorded size of each live
//! message. The sizes are aligned with the live IDs; [`recorded_sizes`] checks that once, and
//! the per-area workers rely on it.
//!
//! What the reference snapshot's own copy of the index proves ([`proven`]): a live message whose
//! ID the reference's index also holds live, with the same recorded size, is the reference's
//! file (message files are immutable and IDs are never handed out twice by one store). The
//! caller decides whether the reference's index may be trusted for that (the store did not go
//! back in time since: a restore from an older backup hands IDs out again); the backup then
//! links such a message from the reference without a look at the store's file.
//!
//! An area whose root cannot be opened is an error event of that area, never a failure of the
//! call: one unreadable account does not stop the others.
//!
//! Both per-area phases (backup and check) walk an area the same way: they carry an
//! [`AreaState`] (layout, snapshot, sizes, and which live IDs the walk met), and after the walk
//! they visit every live ID the walk did not meet by its path, one message directory at a time
//! ([`AreaState::visit_unseen`]): the directory is opened once for all its messages; one that
//! does not exist makes each of them absent, one that cannot be used (a symlink, never
//! followed) is one error for all of them. What each phase does with a directory and a file is
//! its [`Unseen`] implementation.

use std::ffi::CStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::io::Errno;

use crate::classify::{Area, Snapshot};
use crate::fsutil::{self, join};
use crate::ids::{IdSet, SeenSet};
use crate::msgpath;
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
    /// Recorded sizes aligned with `snap.live`.
    pub sizes: Sizes,
    /// Prefix of every path reported for this area, e.g. `data/accounts/bob`.
    pub prefix: Vec<u8>,
    /// Aligned with `snap.live`: the messages the reference's index proves (see [`proven`]);
    /// empty when nothing is proven (no reference, or one not trusted for this area).
    pub proven: Vec<bool>,
    /// In place: the clone is of a sealed reference (a read-only subvolume that named its
    /// racy files), so a proven message the clone holds is kept without a stat
    /// (`transfer::AreaBackup::with_present`).
    pub sealed: bool,
}

/// Which live messages (`live`, with their recorded `sizes`) the reference's index proves to be
/// the reference's files: live there too (`ref_live`, ascending) with the same known recorded
/// size (`ref_sizes`, aligned with it). One merge of the two sorted ID lists. A message of
/// unknown recorded size on either side is never proven, nor one the reference copied within
/// its own racily-clean window (`racy`: the reference's file may be an older write of the
/// same tick, so it is compared with the store's file).
pub fn proven(
    live: &IdSet,
    sizes: &Sizes,
    ref_live: &IdSet,
    ref_sizes: &Sizes,
    racy: &IdSet,
) -> Vec<bool> {
    let (ids, ref_ids) = (live.as_slice(), ref_live.as_slice());
    let mut out = vec![false; ids.len()];
    let mut j = 0;
    for (i, &id) in ids.iter().enumerate() {
        while j < ref_ids.len() && ref_ids[j] < id {
            j += 1;
        }
        if j == ref_ids.len() {
            break;
        }
        let size = sizes.get(i);
        out[i] = ref_ids[j] == id && size.is_some() && size == ref_sizes.get(j);
    }
    for &id in racy.as_slice() {
        if let Some(i) = live.index_of(id) {
            out[i] = false;
        }
    }
    out
}

/// Recorded sizes aligned with a snapshot's live IDs, eight bytes a message: an `Option<u64>`
/// takes sixteen, which at 5,000,000 messages was 38 MB of a nightly's peak memory. The few
/// records without a readable size are named apart, by position, never by a reserved value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sizes {
    /// One value per live message.
    values: Vec<u64>,
    /// Ascending positions whose record has no readable size (their value means nothing).
    unknown: Vec<usize>,
}

impl Sizes {
    /// The recorded size of live message number `i`; None when its record has none. Panics
    /// beyond the end, as indexing does.
    pub fn get(&self, i: usize) -> Option<u64> {
        let n = self.values[i];
        (self.unknown.is_empty() || self.unknown.binary_search(&i).is_err()).then_some(n)
    }

    /// The number of live messages.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// The sizes that are known, in order.
    pub fn known(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }
}

impl FromIterator<Option<u64>> for Sizes {
    fn from_iter<I: IntoIterator<Item = Option<u64>>>(iter: I) -> Self {
        let mut sizes = Sizes::default();
        for (i, n) in iter.into_iter().enumerate() {
            if n.is_none() {
                sizes.unknown.push(i);
            }
            sizes.values.push(n.unwrap_or(0));
        }
        sizes
    }
}

/// The live IDs as a set and their recorded sizes, checked once: `live` must be strictly
/// ascending (as the index yields them) and `sizes` aligned with it. `unknown`: the live IDs
/// whose record has no readable size.
pub fn recorded_sizes(
    live: Vec<u64>,
    sizes: Vec<u64>,
    unknown: &IdSet,
) -> Result<(IdSet, Sizes), String> {
    if sizes.len() != live.len() || !live.windows(2).all(|w| w[0] < w[1]) {
        return Err("sizes must align with ascending unique live IDs".into());
    }
    let live = IdSet::from_ascending(live);
    let mut unknown: Vec<usize> = unknown
        .as_slice()
        .iter()
        .filter_map(|&id| live.index_of(id))
        .collect();
    unknown.sort_unstable();
    Ok((
        live,
        Sizes {
            values: sizes,
            unknown,
        },
    ))
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

/// What a per-area phase carries through its walk: the area's layout, the snapshot deciding
/// what belongs, the recorded sizes, and which live IDs the walk met.
pub struct AreaState<'a> {
    /// The area's layout.
    pub area: &'a Area,
    /// The snapshot's IDs.
    pub snap: &'a Snapshot,
    /// Recorded sizes aligned with `snap.live` (unknown: the record has no readable size,
    /// already reported by the index read; the size is then not compared).
    pub sizes: &'a Sizes,
    /// Which live IDs the walk met.
    pub seen: SeenSet,
}

impl<'a> AreaState<'a> {
    /// The state of a walk of `area` against `snap`, nothing met yet.
    pub fn new(area: &'a Area, snap: &'a Snapshot, sizes: &'a Sizes) -> Self {
        debug_assert_eq!(sizes.len(), snap.live.len(), "checked by recorded_sizes");
        AreaState {
            area,
            snap,
            sizes,
            seen: SeenSet::new(snap.live.len()),
        }
    }

    /// The ID of live message number `i`.
    pub fn id(&self, i: usize) -> u64 {
        self.snap.live.as_slice()[i]
    }

    /// Visits every live ID the walk did not meet (see the module doc), until the caller
    /// cancels: one [`Unseen::open`] per message directory, then one [`Unseen::file`] per message
    /// in it (or [`Unseen::absent`] when the directory does not exist, or one
    /// [`Unseen::unusable`] for all of them when it cannot be used).
    pub fn visit_unseen<U: Unseen>(&self, sink: &Sink<'_>, u: &U) {
        let unseen = self.seen.unmarked();
        let ids = self.snap.live.as_slice();
        let mut name = Vec::new();
        let mut i = 0;
        while i < unseen.len() && !sink.cancelled() {
            // IDs are sorted, so a message directory is one run of them.
            let dir_idx = msgpath::dir_index(ids[unseen[i]]);
            let end = unseen[i..]
                .iter()
                .position(|&u| msgpath::dir_index(ids[u]) != dir_idx)
                .map_or(unseen.len(), |n| i + n);
            let dir_rel = join(
                &self.area.tree,
                msgpath::dir_name(ids[unseen[i]]).as_bytes(),
            );
            let dir = match u.open(&dir_rel) {
                Ok(d) => Some(d),
                Err(Errno::NOENT) => None,
                Err(e) => {
                    u.unusable(&dir_rel, e, (end - i) as u64);
                    i = end;
                    continue;
                }
            };
            for &k in &unseen[i..end] {
                if sink.cancelled() {
                    return;
                }
                msgpath::file_name(ids[k], &mut name);
                let rel = join(&dir_rel, &name);
                match &dir {
                    Some(d) => {
                        name.push(0);
                        let c = CStr::from_bytes_with_nul(&name).expect("digits, one NUL");
                        u.file(d, c, &rel, k);
                    }
                    None => u.absent(&rel, k),
                }
            }
            i = end;
        }
    }
}

/// What a phase does with the live IDs its walk did not meet ([`AreaState::visit_unseen`]).
pub trait Unseen {
    /// What an opened message directory is to the phase (its descriptors).
    type Dir;

    /// Opens message directory `dir_rel` (relative to the area root); `ENOENT` makes its
    /// messages absent, any other error unusable.
    fn open(&self, dir_rel: &[u8]) -> Result<Self::Dir, Errno>;

    /// Message directory `dir_rel` cannot be used (`e`); `n` live messages were expected in it.
    fn unusable(&self, dir_rel: &[u8], e: Errno, n: u64);

    /// Live message number `i`, file `name` of `dir` (at `rel` below the area root).
    fn file(&self, dir: &Self::Dir, name: &CStr, rel: &[u8], i: usize);

    /// Live message number `i`, whose directory does not exist (`rel`: where its file belongs).
    fn absent(&self, rel: &[u8], i: usize);
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
        assert_eq!(sizes, [Some(5), None].into_iter().collect());
        assert_eq!((sizes.get(0), sizes.get(1)), (Some(5), None));
        assert_eq!(sizes.known().collect::<Vec<_>>(), vec![5]);
    }

    #[test]
    fn proven_needs_the_same_id_live_with_the_same_known_size() {
        let live = IdSet::new(vec![1, 2, 3, 5, 8, 9]);
        let sizes = [Some(10), Some(20), None, Some(50), Some(80), Some(90)]
            .into_iter()
            .collect();
        // 1: same size; 2: other size; 3: unknown today; 5: unknown in the reference;
        // 8: not live in the reference (new); 9: beyond the reference's last ID.
        let ref_live = IdSet::new(vec![0, 1, 2, 3, 5, 7]);
        let ref_sizes = [Some(1), Some(10), Some(21), Some(30), None, Some(80)]
            .into_iter()
            .collect();
        let none = IdSet::default();
        assert_eq!(
            proven(&live, &sizes, &ref_live, &ref_sizes, &none),
            vec![true, false, false, false, false, false]
        );
        assert!(
            proven(&live, &sizes, &IdSet::default(), &Sizes::default(), &none)
                .iter()
                .all(|p| !p)
        );
        // A racy file of the reference proves nothing; racy IDs no longer live change nothing.
        assert!(proven(
            &live,
            &sizes,
            &ref_live,
            &ref_sizes,
            &IdSet::new(vec![1, 4])
        )
        .iter()
        .all(|p| !p));
    }
}

//! Deciding what a file in a message area is, against one snapshot's IDs.
//!
//! An area is a queue directory or an account directory. Its message tree is the area root for
//! the queue and `msg/` for an account; a message file sits at `<tree>/<dir(id)>/<id>`. Given the
//! snapshot's live IDs, its erase set and its next unallocated ID, every file in the area is
//! exactly one of the [`Class`] outcomes. This module is pure (no I/O) so that the Python
//! reference in `tests/` can be checked against it on random trees.
//!
//! Why the next ID and not the highest record: writers allocate an ID (committing the counter)
//! before they place the file, and commit the record after. So a file at the path of an ID at or
//! above the snapshot's counter was allocated after the snapshot (new), while a file at the path
//! of a lower ID that no record claims is a delivery in flight, or one a crash interrupted, and
//! can never collide with a future message. With several writers, an in-flight ID can be below
//! the highest committed one, so the highest record cannot tell these apart.

use crate::ids::IdSet;
use crate::msgpath;

/// The IDs of one snapshot of an area's index.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// IDs whose files belong in the backup (non-expunged messages, queued messages).
    pub live: IdSet,
    /// IDs whose files are being removed (`message_erase`, `msg_erase`).
    pub erasing: IdSet,
    /// The first ID not allocated at the snapshot (the `meta` counter, or the highest record
    /// ID + 1 for stores without one); files at the path of an ID from here on are newer.
    pub next_id: u64,
}

/// What a file in an area is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// A message file of the snapshot; the index of its ID in `live`.
    Message(usize),
    /// A message file added after the snapshot (ID at or above `next_id`, at its exact path).
    New,
    /// A message file being erased.
    Erasing,
    /// At the exact path of an allocated ID (below `next_id`) that no record claims: a delivery
    /// in flight or interrupted. It cannot collide with a future message.
    Orphan,
    /// A file the caller handles itself (the index database, its lock file, ...).
    Known,
    /// A root-level file the area's call copies as a plain file (never linked: it changes in
    /// place), such as an account's junk filter.
    Copy,
    /// Anything else inside the message tree (not at a message path).
    StrayInTree,
    /// Anything else outside the message tree.
    Stray,
}

/// The layout of an area.
#[derive(Clone, Debug, Default)]
pub struct Area {
    /// Path of the message tree relative to the area root (empty: the root itself).
    pub tree: Vec<u8>,
    /// Root-level file names the caller handles itself.
    pub known: Vec<Vec<u8>>,
    /// Root-level file names copied as plain files with the area (wins over `known`).
    pub copy: Vec<Vec<u8>>,
}

impl Area {
    /// The message directory name if `rel_dir` is a directory directly inside the message tree.
    fn message_dir<'a>(&self, rel_dir: &'a [u8]) -> Option<&'a [u8]> {
        let rest = if self.tree.is_empty() {
            rel_dir
        } else {
            rel_dir
                .strip_prefix(self.tree.as_slice())?
                .strip_prefix(b"/")?
        };
        (!rest.is_empty() && !rest.contains(&b'/')).then_some(rest)
    }

    /// Whether `rel_dir` is the message tree or below it.
    fn in_tree(&self, rel_dir: &[u8]) -> bool {
        self.tree.is_empty()
            || rel_dir == self.tree.as_slice()
            || rel_dir
                .strip_prefix(self.tree.as_slice())
                .is_some_and(|r| r.starts_with(b"/"))
    }

    /// Whether `name` in `rel_dir` sits exactly at the path of some message ID.
    pub fn is_message_path(&self, rel_dir: &[u8], name: &[u8]) -> bool {
        self.message_dir(rel_dir)
            .and_then(|d| msgpath::id_at_path(d, name))
            .is_some()
    }

    /// Classifies the regular file `name` in directory `rel_dir` (relative to the area root).
    pub fn classify(&self, snap: &Snapshot, rel_dir: &[u8], name: &[u8]) -> Class {
        if rel_dir.is_empty() {
            if self.copy.iter().any(|k| k.as_slice() == name) {
                return Class::Copy;
            }
            if self.known.iter().any(|k| k.as_slice() == name) {
                return Class::Known;
            }
        }
        if let Some(id) = self
            .message_dir(rel_dir)
            .and_then(|d| msgpath::id_at_path(d, name))
        {
            // A live ID wins over the erase set: if the snapshot says the message exists, its
            // file belongs in the backup whatever else is recorded.
            if let Some(i) = snap.live.index_of(id) {
                return Class::Message(i);
            }
            if snap.erasing.contains(id) {
                return Class::Erasing;
            }
            return if id >= snap.next_id {
                Class::New
            } else {
                Class::Orphan
            };
        }
        if self.in_tree(rel_dir) {
            Class::StrayInTree
        } else {
            Class::Stray
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> Area {
        Area {
            tree: b"msg".to_vec(),
            known: vec![b"index.db".to_vec(), b"index.db-lock".to_vec()],
            copy: vec![b"junkfilter.bloom".to_vec()],
        }
    }

    fn queue() -> Area {
        Area {
            tree: Vec::new(),
            known: vec![b"index.db".to_vec(), b"index.db-lock".to_vec()],
            ..Default::default()
        }
    }

    fn snap() -> Snapshot {
        Snapshot {
            live: IdSet::new(vec![1, 5, 8192]),
            erasing: IdSet::new(vec![3]),
            next_id: 9000,
        }
    }

    #[test]
    fn account_outcomes() {
        let (a, s) = (account(), snap());
        assert_eq!(a.classify(&s, b"msg/a", b"5"), Class::Message(1));
        assert_eq!(a.classify(&s, b"msg/b", b"8192"), Class::Message(2));
        assert_eq!(a.classify(&s, b"msg/a", b"3"), Class::Erasing);
        assert_eq!(a.classify(&s, b"msg/b", b"9000"), Class::New);
        assert_eq!(a.classify(&s, b"msg/a", b"2"), Class::Orphan);
        assert_eq!(a.classify(&s, b"msg/b", b"8999"), Class::Orphan);
        // Right name, wrong directory: not at path(id), so neither new nor an orphan.
        assert_eq!(a.classify(&s, b"msg/a", b"9001"), Class::StrayInTree);
        assert_eq!(a.classify(&s, b"msg/b", b"5"), Class::StrayInTree);
        assert_eq!(a.classify(&s, b"msg", b"5"), Class::StrayInTree);
        assert_eq!(a.classify(&s, b"msg/a/x", b"5"), Class::StrayInTree);
        assert_eq!(a.classify(&s, b"", b"index.db"), Class::Known);
        assert_eq!(a.classify(&s, b"", b"junkfilter.bloom"), Class::Copy);
        assert_eq!(
            a.classify(&s, b"msg", b"junkfilter.bloom"),
            Class::StrayInTree
        );
        assert_eq!(a.classify(&s, b"", b"notes.txt"), Class::Stray);
        assert_eq!(a.classify(&s, b"msgx/a", b"5"), Class::Stray);
        assert_eq!(a.classify(&s, b"other/index.db", b"x"), Class::Stray);
    }

    #[test]
    fn queue_tree_is_the_area_root() {
        let (q, s) = (queue(), snap());
        assert_eq!(q.classify(&s, b"a", b"1"), Class::Message(0));
        assert_eq!(q.classify(&s, b"", b"index.db-lock"), Class::Known);
        assert_eq!(q.classify(&s, b"", b"1"), Class::StrayInTree);
        assert_eq!(q.classify(&s, b"a", b"0042"), Class::StrayInTree);
    }

    #[test]
    fn live_wins_over_erasing() {
        let s = Snapshot {
            live: IdSet::new(vec![3]),
            erasing: IdSet::new(vec![3]),
            next_id: 4,
        };
        assert_eq!(account().classify(&s, b"msg/a", b"3"), Class::Message(0));
    }
}

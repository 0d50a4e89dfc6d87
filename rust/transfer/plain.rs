//! A plain copy of one tree (configuration, everything else under `data/`, restores): every
//! file copied, message files linked when the caller names the message area (restore).

use std::ffi::CStr;
use std::os::fd::OwnedFd;

use super::{copy_plain, count_placed};
use crate::classify::Area;
use crate::fsutil::{self, join, Kind};
use crate::linkcopy::LinkPolicy;
use crate::progress::Sink;
use crate::walk::{self, Dir, Fence, Roots, Visitor};

/// Copies a tree as plain files (configuration, unknown data, restores). With `messages` set,
/// files at a message path of that area are placed by link-or-copy (restore); everything else
/// is always copied, because databases and configuration are modified in place by the server.
pub struct PlainCopy<'a> {
    /// The message area layout whose message files may be linked, if any.
    messages: Option<&'a Area>,
    /// Link-or-copy decisions.
    policy: &'a LinkPolicy,
    /// Where counts and events go.
    sink: &'a Sink<'a>,
    /// What the walk never visits (the destination, lock files).
    fence: &'a Fence,
    /// The tree in the reference backup, if any.
    reference: Option<OwnedFd>,
}

impl<'a> PlainCopy<'a> {
    /// A plain copy; see the type doc for `messages`.
    pub fn new(messages: Option<&'a Area>, policy: &'a LinkPolicy, sink: &'a Sink<'a>) -> Self {
        PlainCopy {
            messages,
            policy,
            sink,
            fence: Fence::NONE,
            reference: None,
        }
    }

    /// The same, never visiting what `fence` names.
    pub fn with_fence(self, fence: &'a Fence) -> Self {
        PlainCopy { fence, ..self }
    }

    /// The same, reusing unchanged files from `reference` (the tree in an earlier backup).
    pub fn with_reference(self, reference: Option<OwnedFd>) -> Self {
        PlainCopy { reference, ..self }
    }

    /// Copies the tree (only the root-level `only` names when given).
    pub fn run(&self, src: OwnedFd, dst: OwnedFd, only: Option<&[Vec<u8>]>) {
        let refs = match self.reference.as_ref().map(fsutil::dup).transpose() {
            Ok(r) => vec![r],
            Err(e) => return self.sink.io_error(b"", "dup", e),
        };
        walk::walk(
            Roots {
                src,
                dst: Some(dst),
                refs,
                only,
                fence: self.fence,
            },
            self,
            self.sink,
        );
    }
}

impl Visitor for PlainCopy<'_> {
    fn entry(&self, dir: &Dir<'_>, name: &CStr, kind: Kind) {
        let dst = dir.dst.expect("plain copies mirror into a destination");
        let rel = join(dir.rel, name.to_bytes());
        let is_message = kind == Kind::File
            && self
                .messages
                .is_some_and(|a| a.is_message_path(dir.rel, name.to_bytes()));
        if is_message {
            // A restore's messages have no recorded size here: never reused.
            match self.policy.link_or_copy(dir.src, dst, name) {
                Ok(p) => count_placed(self.sink, &rel, p),
                Err(e) => self.sink.fs_error(&rel, &e),
            }
        } else {
            copy_plain(self.policy, self.sink, dir, name, kind, &rel);
        }
        self.sink.progress.add_done(1);
    }
}

//! mailbak's engine: the parts of a mail store backup that touch millions of files.
//!
//! Python decides what belongs in a backup (it owns the LMDB transactions and the phases); this
//! crate does the per-file work in parallel and reports back counts and located events. The core
//! has no PyO3 in it and is tested by `cargo test`; `py.rs` is the binding glue.

pub mod areas;
pub mod check;
pub mod classify;
pub mod fsid;
pub mod fsutil;
pub mod gen;
pub mod ids;
pub mod linkcopy;
pub mod lmdbfile;
pub mod msgpack;
pub mod msgpath;
pub mod progress;
#[cfg(feature = "python")]
mod py;
pub mod records;
#[cfg(test)]
mod testlmdb;
pub mod testpause;
pub mod transfer;
pub mod walk;

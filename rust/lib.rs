//! mailbak's engine: the parts of a mail store backup that touch millions of files.
//!
//! Python decides what belongs in a backup (it owns the LMDB transactions and the phases); this
//! crate does the per-file work in parallel and reports back counts and located events. The core
//! has no PyO3 in it and is tested by `cargo test`; `py.rs` is the binding glue.
//!
//! Every module is private: the Python module (`py.rs`) and the tests are the only users, so
//! the compiler's dead-code lint sees whatever they no longer use. Without the `python`
//! feature nothing calls the core, so the lint is off in that build only.
//!
//! Every item has a doc comment, and `make lint` (clippy with `-D warnings`) holds that: rustc's
//! `missing_docs` only sees the public surface, which for a crate of private modules is the crate
//! itself, so clippy's `missing_docs_in_private_items` checks the rest (fields, private
//! functions, constants; test code aside).

#![cfg_attr(not(feature = "python"), allow(dead_code))]
#![warn(missing_docs)]
#![warn(clippy::missing_docs_in_private_items)]

mod areas;
mod btrfs;
mod check;
mod checkrepo;
mod classify;
mod copy;
mod delete;
mod digests;
mod error;
mod fsid;
mod fsutil;
mod gen;
mod heads;
mod ids;
mod inplace;
mod linkcopy;
mod lmdbfile;
mod msgpack;
mod msgpath;
mod priority;
mod progress;
#[cfg(feature = "python")]
mod py;
mod records;
#[cfg(test)]
mod testlmdb;
mod testpause;
mod transfer;
mod walk;

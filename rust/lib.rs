//! mailbak's engine: the parts of a mail store backup that touch millions of files.
//!
//! Python decides what belongs in a backup (it owns the LMDB transactions and the phases); this
//! crate does the per-file work in parallel and reports back counts and located events. The core
//! has no PyO3 in it and is tested by `cargo test`; `py.rs` is the binding glue.
//!
//! Every module is private: the Python module (`py.rs`) and the tests are the only users, so
//! the compiler's dead-code lint sees whatever they no longer use. Without the `python`
//! feature nothing calls the core, so the lint is off in that build only.

#![cfg_attr(not(feature = "python"), allow(dead_code))]

mod areas;
mod check;
mod classify;
mod copy;
mod delete;
mod error;
mod fsid;
mod fsutil;
mod gen;
mod ids;
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

//! Test support: real LMDB files written through the C library (LMDB 0.9, data format 1, the
//! format py-lmdb writes), and scratch directories. Compiled for `cargo test` only.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use lmdb_sys as ffi;

/// A scratch directory that is removed when dropped.
pub(crate) struct TempDir {
    /// Its path.
    pub(crate) path: PathBuf,
}

impl TempDir {
    /// A fresh directory named after `tag`.
    pub(crate) fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, AtomicOrdering::Relaxed);
        let path = std::env::temp_dir().join(format!("lmdbfile-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }

    /// A path inside the directory.
    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// An LMDB environment opened through the C library (LMDB 0.9, data format version 1).
pub(crate) struct Env {
    /// The C handle.
    env: *mut ffi::MDB_env,
}

/// A write transaction of an [`Env`].
pub(crate) struct Txn {
    /// The C handle.
    txn: *mut ffi::MDB_txn,
}

/// Panics unless an LMDB call returned success.
pub(crate) fn ok(rc: i32, what: &str) {
    assert_eq!(rc, 0, "{what} failed with LMDB error {rc}");
}

/// An `MDB_val` viewing `bytes`.
pub(crate) fn val(bytes: &[u8]) -> ffi::MDB_val {
    ffi::MDB_val {
        mv_size: bytes.len(),
        mv_data: bytes.as_ptr() as *mut _,
    }
}

impl Env {
    /// Creates a single-file environment at `path`.
    pub(crate) fn create(path: &Path) -> Env {
        let c_path = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        let mut env = std::ptr::null_mut();
        // SAFETY: plain LMDB C API use; the handle lives until Drop.
        unsafe {
            ok(ffi::mdb_env_create(&mut env), "mdb_env_create");
            ok(
                ffi::mdb_env_set_mapsize(env, 1 << 28),
                "mdb_env_set_mapsize",
            );
            ok(ffi::mdb_env_set_maxdbs(env, 16), "mdb_env_set_maxdbs");
            ok(
                ffi::mdb_env_open(
                    env,
                    c_path.as_ptr(),
                    ffi::MDB_NOSUBDIR | ffi::MDB_NOSYNC,
                    0o644,
                ),
                "mdb_env_open",
            );
        }
        Env { env }
    }

    /// Runs `body` in one write transaction and commits it.
    pub(crate) fn write(&self, body: impl FnOnce(&Txn)) {
        let mut txn = std::ptr::null_mut();
        // SAFETY: one write transaction at a time on a live env.
        unsafe {
            ok(
                ffi::mdb_txn_begin(self.env, std::ptr::null_mut(), 0, &mut txn),
                "mdb_txn_begin",
            )
        };
        let t = Txn { txn };
        body(&t);
        // SAFETY: the transaction is live and committed once.
        unsafe { ok(ffi::mdb_txn_commit(t.txn), "mdb_txn_commit") };
    }

    /// A compacting copy, as `mdb_copy -c` makes.
    pub(crate) fn copy_compact(&self, dst: &Path) {
        let c_path = CString::new(dst.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: the env is open; LMDB writes a new file at dst.
        unsafe {
            ok(
                ffi::mdb_env_copy2(self.env, c_path.as_ptr(), ffi::MDB_CP_COMPACT),
                "mdb_env_copy2",
            )
        };
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // SAFETY: no transaction is open when an Env is dropped.
        unsafe { ffi::mdb_env_close(self.env) };
    }
}

impl Txn {
    /// Opens (creating) named database `name`.
    pub(crate) fn db(&self, name: &str, flags: u32) -> ffi::MDB_dbi {
        let c_name = CString::new(name).unwrap();
        let mut dbi = 0;
        // SAFETY: the transaction is live.
        unsafe {
            ok(
                ffi::mdb_dbi_open(self.txn, c_name.as_ptr(), flags | ffi::MDB_CREATE, &mut dbi),
                "mdb_dbi_open",
            )
        };
        dbi
    }

    /// Stores one record.
    pub(crate) fn put(&self, dbi: ffi::MDB_dbi, key: &[u8], value: &[u8]) {
        let (mut k, mut v) = (val(key), val(value));
        // SAFETY: LMDB copies key and value before returning.
        unsafe { ok(ffi::mdb_put(self.txn, dbi, &mut k, &mut v, 0), "mdb_put") };
    }

    /// Deletes a record (one duplicate, or all of them when `value` is None).
    pub(crate) fn del(&self, dbi: ffi::MDB_dbi, key: &[u8], value: Option<&[u8]>) {
        let mut k = val(key);
        let mut v = value.map(val);
        let vp = v.as_mut().map_or(std::ptr::null_mut(), |v| v as *mut _);
        // SAFETY: the transaction is live; a null value deletes all duplicates.
        unsafe { ok(ffi::mdb_del(self.txn, dbi, &mut k, vp), "mdb_del") };
    }
}

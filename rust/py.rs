//! The PyO3 boundary: argument conversion, GIL release, result conversion. Nothing else.
//!
//! Each function turns its arguments into core types (an area dict through one
//! `#[derive(FromPyObject)]` struct, `AreaArgs`), runs the core in a rayon pool of `jobs`
//! threads with the GIL released, and returns plain dicts of counts. Every errno crosses as
//! OSError through one conversion (`From<Error> for PyErr`). Per-file problems never raise: they travel as events
//! on the shared `Progress`. Only failures of the whole call raise (a root or database file
//! that cannot be read: `OSError`; a damaged LMDB file: `LmdbError`; an engine panic:
//! `RuntimeError`). The core's errors are [`Error`] values, turned into OSError by the one
//! `From<Error> for PyErr` below. The contract is `python/mailbak/_engine.pyi`.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyAny, PyBytes, PyDict};

use crate::areas::{self, AreaSpec};
use crate::check::{self, CheckJob, CheckOptions};
use crate::checkrepo::{self, SnapshotArgs, Subset};
use crate::classify::{Area, Snapshot};
use crate::error::Error;
use crate::fsid::{self, FsId};
use crate::heads::{self, HeadError};
use crate::ids::IdSet;
use crate::lmdbfile::{ErrorKind, LmdbFile};
use crate::priority::StartHook;
use crate::progress::{self, Sink, Tally};
use crate::records::{self, IndexKind};
use crate::transfer::{self, AreaJob, BackupOptions, Transferred, TreeCopy};
use crate::walk::Fence;
use crate::{btrfs, delete, digests, fsutil, gen, inplace, msgpath, priority};

create_exception!(
    _engine,
    LmdbError,
    PyException,
    "An LMDB file failed the structural check (args: kind, page, message)."
);

/// Progress counters, cancel flag and event queue shared with running engine calls.
#[pyclass(frozen, module = "mailbak._engine")]
struct Progress {
    /// The shared state.
    inner: Arc<progress::Progress>,
}

#[pymethods]
impl Progress {
    /// Fresh counters; `verbose` keeps per-file lines, `max_queued` bounds them.
    #[new]
    #[pyo3(signature = (verbose = false, max_queued = progress::DEFAULT_MAX_QUEUED))]
    fn new(verbose: bool, max_queued: usize) -> Self {
        Progress {
            inner: Arc::new(progress::Progress::new(verbose, max_queued)),
        }
    }

    /// Asks all workers to stop at their next file.
    fn cancel(&self) {
        self.inner.cancel();
    }

    /// Whether cancel() was called.
    #[getter]
    fn cancelled(&self) -> bool {
        self.inner.cancelled()
    }

    /// (done, total).
    fn position(&self) -> (u64, u64) {
        self.inner.position()
    }

    /// Adds to the expected total.
    fn add_total(&self, n: u64) {
        self.inner.add_total(n);
    }

    /// Records work done outside the engine (e.g. records without a file).
    fn add_done(&self, n: u64) {
        self.inner.add_done(n);
    }

    /// Takes the queued events: (severity, code, path bytes, errno, detail).
    fn drain<'py>(
        &self,
        py: Python<'py>,
    ) -> Vec<(&'static str, &'static str, Bound<'py, PyBytes>, i32, String)> {
        self.inner
            .drain()
            .into_iter()
            .map(|e| {
                (
                    e.severity.as_str(),
                    e.code,
                    PyBytes::new(py, &e.path),
                    e.errno,
                    e.detail,
                )
            })
            .collect()
    }

    /// Events not kept because the queue was full.
    #[getter]
    fn dropped(&self) -> u64 {
        self.inner.dropped()
    }
}

/// Runs `f` in a pool of `jobs` threads with the GIL released; a panic becomes RuntimeError.
fn run<T: Send>(py: Python<'_>, jobs: usize, f: impl FnOnce() -> T + Send) -> PyResult<T> {
    run_with_start(py, jobs, None, f)
}

/// [`run`] whose worker threads each run `start` first (e.g. to lower their priority).
fn run_with_start<T: Send>(
    py: Python<'_>,
    jobs: usize,
    start: Option<StartHook>,
    f: impl FnOnce() -> T + Send,
) -> PyResult<T> {
    if jobs == 0 {
        return Err(PyValueError::new_err("jobs must be at least 1"));
    }
    let mut builder = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .thread_name(|i| format!("mailbak-{i}"));
    if let Some(hook) = start {
        builder = builder.start_handler(hook);
    }
    let pool = builder
        .build()
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start worker threads: {e}")))?;
    py.detach(|| catch_unwind(AssertUnwindSafe(|| pool.install(f))))
        .map_err(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            PyRuntimeError::new_err(format!("engine panic: {}", msg.unwrap_or_default()))
        })
}

/// The engine's error as OSError (errno, message[, path]): the one way an errno crosses the
/// boundary. The step (`op`) stays out, as it always has: Python words its own messages.
impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        let (errno, msg) = (e.errno.raw_os_error(), e.message());
        match e.path {
            Some(p) => PyOSError::new_err((errno, msg, p)),
            None => PyOSError::new_err((errno, msg)),
        }
    }
}

/// Opens a root directory below `anchor` when given (see `fsutil::open_root_dir`), as OSError
/// with the path on failure.
fn open_root(anchor: Option<&OwnedFd>, path: &Path) -> PyResult<OwnedFd> {
    Ok(fsutil::open_root_dir(anchor.map(|a| a.as_fd()), path)
        .map_err(|e| Error::new("open directory", e).with_path(path))?)
}

/// Our own duplicate of the caller's descriptor of a trusted directory (the store's `data/`,
/// which Python opened once for the whole run), so that the engine call never depends on the
/// caller keeping it open.
fn anchor(raw: Option<i32>) -> PyResult<Option<OwnedFd>> {
    let Some(raw) = raw else { return Ok(None) };
    let not_dir = || PyValueError::new_err("root must be an open directory descriptor");
    if raw < 0 {
        return Err(not_dir());
    }
    // SAFETY: the caller passes a descriptor it holds open for the duration of this call (the
    // GIL is held here); it is only borrowed long enough to duplicate it.
    let fd = unsafe { BorrowedFd::borrow_raw(raw) };
    let own = fsutil::dup(fd).map_err(Error::op("dup"))?;
    match fsutil::fstat(&own) {
        Ok(st) if fsutil::Kind::from_mode(st.st_mode) == fsutil::Kind::Dir => Ok(Some(own)),
        _ => Err(not_dir()),
    }
}

/// A tally as a dict.
fn tally_dict<'py>(py: Python<'py>, t: &Tally) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (k, v) in t.to_pairs() {
        d.set_item(k, v)?;
    }
    Ok(d)
}

/// A transfer's tally plus the errno of its first link that became a copy and how many files
/// were copied because a link was impossible.
fn transfer_dict<'py>(py: Python<'py>, t: &Transferred) -> PyResult<Bound<'py, PyDict>> {
    let d = tally_dict(py, &t.tally)?;
    d.set_item(
        "link_fallback_errno",
        t.first_fallback.map(|e| e.raw_os_error()),
    )?;
    d.set_item("link_fallbacks", t.fallbacks)?;
    let sh = PyDict::new(py);
    sh.set_item("shards_written", t.shards.written)?;
    sh.set_item("shards_linked", t.shards.linked)?;
    sh.set_item("bytes_written", t.shards.bytes)?;
    sh.set_item("messages", t.shards.messages)?;
    sh.set_item("pending", t.shards.pending)?;
    d.set_item("digests", sh)?;
    let files = t
        .files
        .iter()
        .map(|f| {
            (
                PyBytes::new(py, &f.path),
                f.size,
                f.digest.map(|d| PyBytes::new(py, &d)),
            )
        })
        .collect::<Vec<_>>();
    d.set_item("files", files)?;
    d.set_item("racy", &t.racy)?;
    Ok(d)
}

/// An entry of a digest file as Python sees it: (key, size, digest or None, how), the key an
/// int (a shard's message ID) or bytes (a path of `files`).
type PyEntry<'py> = (Bound<'py, PyAny>, u64, Option<Bound<'py, PyBytes>>, char);

/// An entry as Python hands it to [`render_digests`] (the digest as 32 bytes).
type PyEntryIn<'py> = (Bound<'py, PyAny>, u64, Option<Vec<u8>>, char);

/// The entries of a digest file (`digests.rs`); `shard`: keys are message IDs, else paths.
/// Raises ValueError naming what is wrong (the file is then damaged).
#[pyfunction]
#[pyo3(signature = (data, *, shard))]
fn parse_digests<'py>(py: Python<'py>, data: &[u8], shard: bool) -> PyResult<Vec<PyEntry<'py>>> {
    fn out<'py, K>(
        py: Python<'py>,
        entries: Vec<digests::Entry<K>>,
        key: impl Fn(Python<'py>, K) -> PyResult<Bound<'py, PyAny>>,
    ) -> PyResult<Vec<PyEntry<'py>>> {
        entries
            .into_iter()
            .map(|e| {
                Ok((
                    key(py, e.key)?,
                    e.size,
                    e.digest.map(|d| PyBytes::new(py, &d)),
                    e.how.as_char(),
                ))
            })
            .collect()
    }
    if shard {
        let e = digests::parse::<u64>(data).map_err(PyValueError::new_err)?;
        out(py, e, |py, k| Ok(k.into_pyobject(py)?.into_any()))
    } else {
        let e = digests::parse::<Vec<u8>>(data).map_err(PyValueError::new_err)?;
        out(py, e, |py, k| Ok(PyBytes::new(py, &k).into_any()))
    }
}

/// The text of a digest file holding `entries` ((key, size, digest or None, how) as
/// [`parse_digests`] gives them), sorted here.
#[pyfunction]
#[pyo3(signature = (entries, *, shard))]
fn render_digests<'py>(
    py: Python<'py>,
    entries: Vec<PyEntryIn<'py>>,
    shard: bool,
) -> PyResult<Bound<'py, PyBytes>> {
    fn entry<K>(
        key: K,
        size: u64,
        digest: Option<Vec<u8>>,
        how: char,
    ) -> PyResult<digests::Entry<K>> {
        let how = digests::How::from_char(how)
            .ok_or_else(|| PyValueError::new_err("how must be 'w', 'r' or '-'"))?;
        let digest = digest
            .map(|d| <digests::Digest>::try_from(d.as_slice()))
            .transpose()
            .map_err(|_| PyValueError::new_err("a digest has 32 bytes"))?;
        if digest.is_none() != (how == digests::How::None) {
            return Err(PyValueError::new_err(
                "an entry has a digest exactly when how is not '-'",
            ));
        }
        Ok(digests::Entry {
            key,
            size,
            digest,
            how,
        })
    }
    let text = if shard {
        let mut v = entries
            .into_iter()
            .map(|(k, size, d, how)| entry(k.extract::<u64>()?, size, d, how))
            .collect::<PyResult<Vec<_>>>()?;
        digests::render(&mut v)
    } else {
        let mut v = entries
            .into_iter()
            .map(|(k, size, d, how)| entry(k.extract::<Vec<u8>>()?, size, d, how))
            .collect::<PyResult<Vec<_>>>()?;
        digests::render(&mut v)
    };
    Ok(PyBytes::new(py, &text))
}

/// An ID set from packed little-endian u64s.
fn ids(buf: &[u8]) -> PyResult<IdSet> {
    IdSet::from_le_bytes(buf).map_err(PyValueError::new_err)
}

/// Packed little-endian u64s from a slice.
fn packed(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// u64s from a packed little-endian buffer.
fn unpack_u64(buf: &[u8]) -> PyResult<Vec<u64>> {
    if buf.len() % 8 != 0 {
        return Err(PyValueError::new_err(
            "buffer is not a whole number of u64s",
        ));
    }
    Ok(buf
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

/// One message area as Python describes it (a dict; see `Area` in `_engine.pyi`). Buffers stay
/// `bytes` objects until converted, never lists of ints.
#[derive(FromPyObject)]
struct AreaArgs<'py> {
    /// The area's directory (relative to `root` when the call has one).
    #[pyo3(item("src"))]
    src: PathBuf,
    /// Where a backup writes the area (backups only).
    #[pyo3(item("dst"), default)]
    dst: Option<PathBuf>,
    /// The message tree below `src`, e.g. `msg`.
    #[pyo3(item("tree"))]
    tree: Bound<'py, PyBytes>,
    /// Root-level names the caller handles itself (databases, lock files).
    #[pyo3(item("known"))]
    known: Vec<Vec<u8>>,
    /// Root-level names that change in place: always copied, never linked.
    #[pyo3(item("copy"), default)]
    copy: Vec<Vec<u8>>,
    /// The snapshot's live IDs, packed little-endian u64s, ascending.
    #[pyo3(item("live"))]
    live: Bound<'py, PyBytes>,
    /// Their recorded sizes, aligned with `live`.
    #[pyo3(item("sizes"))]
    sizes: Bound<'py, PyBytes>,
    /// The live IDs whose record has no readable size.
    #[pyo3(item("unknown_sizes"), default)]
    unknown_sizes: Option<Bound<'py, PyBytes>>,
    /// IDs being erased, packed like `live`.
    #[pyo3(item("erasing"))]
    erasing: Bound<'py, PyBytes>,
    /// The index's next ID: files at or above it are new.
    #[pyo3(item("next_id"))]
    next_id: u64,
    /// Prefix of every reported path, e.g. `data/accounts/bob`.
    #[pyo3(item("prefix"))]
    prefix: Bound<'py, PyBytes>,
    /// Where `verify --fix` moves this area's strays, below `fix_root`.
    #[pyo3(item("fix_rel"), default)]
    fix_rel: Option<Vec<u8>>,
    /// The reference snapshot's copy of this area's index, when the caller trusts it to prove
    /// messages (`areas::proven`): its live IDs, packed like `live` (backups only).
    #[pyo3(item("reference_live"), default)]
    reference_live: Option<Bound<'py, PyBytes>>,
    /// Their recorded sizes, aligned with `reference_live`.
    #[pyo3(item("reference_sizes"), default)]
    reference_sizes: Option<Bound<'py, PyBytes>>,
    /// The reference's live IDs whose record has no readable size.
    #[pyo3(item("reference_unknown_sizes"), default)]
    reference_unknown_sizes: Option<Bound<'py, PyBytes>>,
    /// The IDs the reference copied within its racily-clean window, packed like `live`:
    /// never proven.
    #[pyo3(item("reference_racy"), default)]
    reference_racy: Option<Bound<'py, PyBytes>>,
    /// In place: the clone is of a sealed reference (see `areas::AreaSpec::sealed`).
    #[pyo3(item("reference_sealed"), default)]
    reference_sealed: bool,
    /// Backup: the existing directory the area's shard files of digests go into, and the
    /// area's shard directory below the reference's `digests/` (e.g. `accounts/bob`).
    #[pyo3(item("digests"), default)]
    digests: Option<(PathBuf, Vec<u8>)>,
}

impl AreaArgs<'_> {
    /// The core's description of the area, the sizes checked against the IDs here, once.
    fn spec(&self) -> PyResult<AreaSpec> {
        let unknown = match &self.unknown_sizes {
            Some(b) => ids(b.as_bytes())?,
            None => IdSet::default(),
        };
        let (live, sizes) = areas::recorded_sizes(
            unpack_u64(self.live.as_bytes())?,
            unpack_u64(self.sizes.as_bytes())?,
            &unknown,
        )
        .map_err(PyValueError::new_err)?;
        let proven = match (&self.reference_live, &self.reference_sizes) {
            (Some(l), Some(n)) => {
                let unknown = match &self.reference_unknown_sizes {
                    Some(b) => ids(b.as_bytes())?,
                    None => IdSet::default(),
                };
                let (ref_live, ref_sizes) = areas::recorded_sizes(
                    unpack_u64(l.as_bytes())?,
                    unpack_u64(n.as_bytes())?,
                    &unknown,
                )
                .map_err(|e| PyValueError::new_err(format!("reference: {e}")))?;
                let racy = match &self.reference_racy {
                    Some(b) => ids(b.as_bytes())?,
                    None => IdSet::default(),
                };
                areas::proven(&live, &sizes, &ref_live, &ref_sizes, &racy)
            }
            (None, None) => Vec::new(),
            _ => {
                return Err(PyValueError::new_err(
                    "reference_live and reference_sizes go together",
                ))
            }
        };
        Ok(AreaSpec {
            src: self.src.clone(),
            area: Area {
                tree: self.tree.as_bytes().to_vec(),
                known: self.known.clone(),
                copy: self.copy.clone(),
            },
            snap: Snapshot {
                live,
                erasing: ids(self.erasing.as_bytes())?,
                next_id: self.next_id,
            },
            sizes,
            prefix: self.prefix.as_bytes().to_vec(),
            proven,
            sealed: self.reference_sealed,
        })
    }
}

/// One area of a backup, built from its description ahead of the call: the engine's own copy
/// of the area's IDs, sizes and proof, so that the caller can let go of the index buffers (and
/// of the reference's) area by area instead of holding every area's until the call returns.
#[pyclass(frozen, module = "mailbak._engine")]
struct BackupArea {
    /// What the call backs up for this area.
    job: AreaJob,
}

#[pymethods]
impl BackupArea {
    /// Checks and converts `area` (a dict, `Area` in `_engine.pyi`, with `dst`).
    #[new]
    fn new(area: AreaArgs<'_>) -> PyResult<Self> {
        let dst = area
            .dst
            .clone()
            .ok_or_else(|| PyValueError::new_err("a backup area needs a destination (\"dst\")"))?;
        Ok(BackupArea {
            job: AreaJob {
                spec: area.spec()?,
                dst,
                digests: area.digests.clone(),
            },
        })
    }
}

/// Backs up message areas (the queue and accounts), all in one pool; see
/// `transfer::backup_areas`. With `root`, each area's `src` is relative to that directory
/// descriptor. `skip`: directories never entered, by `(st_dev, st_ino)`. Lock files are always
/// left out (a backup never holds one).
#[pyfunction]
#[pyo3(signature = (areas, *, jobs, progress, force_copy = false, root = None, skip = Vec::new(), reference = None, reference_cutoff = None, reference_digests = None, in_place = false, racy_from = None))]
#[allow(clippy::too_many_arguments)]
fn backup_areas<'py>(
    py: Python<'py>,
    areas: Vec<Py<BackupArea>>,
    jobs: usize,
    progress: &Progress,
    force_copy: bool,
    root: Option<i32>,
    skip: Vec<(u64, u64)>,
    reference: Option<PathBuf>,
    reference_cutoff: Option<i64>,
    reference_digests: Option<PathBuf>,
    in_place: bool,
    racy_from: Option<i64>,
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let areas: Vec<&AreaJob> = areas.iter().map(|a| &a.get().job).collect();
    let opts = BackupOptions {
        force_copy,
        anchor: anchor(root)?,
        fence: Fence {
            skip,
            skip_locks: true,
        },
        reference: reference.map(|r| open_root(None, &r)).transpose()?,
        reference_cutoff,
        // A reference without digests (made before they existed) is no error: shards are then
        // written anew, reused messages without a digest.
        reference_digests: reference_digests.and_then(|r| open_root(None, &r).ok()),
        in_place,
        racy_from,
    };
    let p = Arc::clone(&progress.inner);
    let results = run(py, jobs, move || transfer::backup_areas(&areas, &opts, &p))?;
    results.iter().map(|t| transfer_dict(py, t)).collect()
}

/// Copies a tree (or the named root-level entries of it); see `transfer::copy_tree`. With
/// `root`, `src` is relative to that directory descriptor. `skip`: directories never entered,
/// by `(st_dev, st_ino)`; `skip_locks`: leave out LMDB lock files.
#[pyfunction]
#[pyo3(signature = (src, dst, *, jobs, progress, prefix, only = None, message_tree = None, force_copy = false, root = None, skip = Vec::new(), skip_locks = false, reference = None, reference_cutoff = None, digests = false, in_place = false))]
#[allow(clippy::too_many_arguments)]
fn copy_tree<'py>(
    py: Python<'py>,
    src: PathBuf,
    dst: PathBuf,
    jobs: usize,
    progress: &Progress,
    prefix: Vec<u8>,
    only: Option<Vec<Vec<u8>>>,
    message_tree: Option<Vec<u8>>,
    force_copy: bool,
    root: Option<i32>,
    skip: Vec<(u64, u64)>,
    skip_locks: bool,
    reference: Option<PathBuf>,
    reference_cutoff: Option<i64>,
    digests: bool,
    in_place: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let job = TreeCopy {
        prefix,
        only,
        messages: message_tree.map(|tree| Area {
            tree,
            ..Area::default()
        }),
        force_copy,
        fence: Fence { skip, skip_locks },
        reference: reference.map(|r| open_root(None, &r)).transpose()?,
        reference_cutoff,
        digests,
        in_place,
    };
    let root = anchor(root)?;
    let (src, dst) = (open_root(root.as_ref(), &src)?, open_root(None, &dst)?);
    let p = Arc::clone(&progress.inner);
    let result = run(py, jobs, move || transfer::copy_tree(src, dst, &job, &p))?;
    transfer_dict(py, &result)
}

/// Removes from the tree `dst` (a clone of the reference, to be brought up to date in place)
/// every entry the store's tree `src` has no entry of the same kind for; see
/// `inplace::drop_stale`. `leave`: paths below `dst` left alone (not entered); `drop`: paths
/// removed whatever the store holds. With `root`, `src` is relative to that descriptor.
#[pyfunction]
#[pyo3(signature = (src, dst, *, jobs, progress, prefix, root = None, leave = Vec::new(), drop = Vec::new()))]
#[allow(clippy::too_many_arguments)]
fn drop_stale<'py>(
    py: Python<'py>,
    src: PathBuf,
    dst: PathBuf,
    jobs: usize,
    progress: &Progress,
    prefix: Vec<u8>,
    root: Option<i32>,
    leave: Vec<Vec<u8>>,
    drop: Vec<Vec<u8>>,
) -> PyResult<Bound<'py, PyDict>> {
    let root = anchor(root)?;
    let (src, dst) = (open_root(root.as_ref(), &src)?, open_root(None, &dst)?);
    let p = Arc::clone(&progress.inner);
    let tally = run(py, jobs, move || {
        let sink = Sink::new(&p, &prefix);
        let verdict = |rel: &[u8], name: &[u8], _kind: fsutil::Kind| {
            let path = fsutil::join(rel, name);
            if leave.contains(&path) {
                inplace::Verdict::Leave
            } else if drop.contains(&path) {
                inplace::Verdict::Drop
            } else {
                inplace::Verdict::Check
            }
        };
        let out = inplace::drop_stale(src.as_fd(), dst.as_fd(), &verdict, &sink);
        sink.tally.dropped.store(
            out.entries.into_inner(),
            std::sync::atomic::Ordering::Relaxed,
        );
        sink.tally
    })?;
    tally_dict(py, &tally)
}

/// A descriptor the caller holds open for the call (`dir_fd` arguments), borrowed.
fn borrowed<'a>(raw: i32) -> PyResult<BorrowedFd<'a>> {
    if raw < 0 {
        return Err(PyValueError::new_err(
            "dir_fd must be an open directory descriptor",
        ));
    }
    // SAFETY: the caller holds the descriptor open for the duration of the call (the GIL is
    // held throughout: these calls take milliseconds).
    Ok(unsafe { BorrowedFd::borrow_raw(raw) })
}

/// A name for the btrfs calls, as a C string.
fn c_name(name: &[u8]) -> PyResult<std::ffi::CString> {
    std::ffi::CString::new(name).map_err(|_| PyValueError::new_err("a name holds no NUL"))
}

/// Whether the directory `path` (never followed if a symlink) is on btrfs.
#[pyfunction]
fn btrfs_is_btrfs(path: PathBuf) -> PyResult<bool> {
    let fd = open_root(None, &path)?;
    Ok(btrfs::is_btrfs(&fd).map_err(|e| Error::new("statfs", e).with_path(&path))?)
}

/// Whether the directory `path` (never followed if a symlink) is the root of a btrfs subvolume.
#[pyfunction]
fn btrfs_is_subvolume(path: PathBuf) -> PyResult<bool> {
    let fd = open_root(None, &path)?;
    Ok(btrfs::is_subvolume(&fd).map_err(|e| Error::new("stat", e).with_path(&path))?)
}

/// Creates the empty subvolume `name` in the held directory `dir_fd`.
#[pyfunction]
fn btrfs_create_subvolume(dir_fd: i32, name: &[u8]) -> PyResult<()> {
    let name = c_name(name)?;
    Ok(btrfs::create_subvolume(borrowed(dir_fd)?, &name)
        .map_err(|e| Error::new("create a subvolume", e))?)
}

/// Makes `name` in the held directory `dir_fd` a snapshot of the subvolume `source` (a
/// directory, never followed), read-only with `readonly`.
#[pyfunction]
#[pyo3(signature = (source, dir_fd, name, *, readonly = false))]
fn btrfs_snapshot(source: PathBuf, dir_fd: i32, name: &[u8], readonly: bool) -> PyResult<()> {
    let src = open_root(None, &source)?;
    let name = c_name(name)?;
    Ok(
        btrfs::snapshot(src.as_fd(), borrowed(dir_fd)?, &name, readonly)
            .map_err(|e| Error::new("snapshot a subvolume", e).with_path(&source))?,
    )
}

/// Makes the subvolume `path` (its root directory, never followed) read-only, or writable.
#[pyfunction]
fn btrfs_set_readonly(path: PathBuf, readonly: bool) -> PyResult<()> {
    let fd = open_root(None, &path)?;
    Ok(btrfs::set_readonly(fd.as_fd(), readonly)
        .map_err(|e| Error::new("set the subvolume's read-only flag", e).with_path(&path))?)
}

/// Whether the subvolume `path` (its root directory, never followed) is read-only.
#[pyfunction]
fn btrfs_is_readonly(path: PathBuf) -> PyResult<bool> {
    let fd = open_root(None, &path)?;
    Ok(btrfs::is_readonly(fd.as_fd())
        .map_err(|e| Error::new("read the subvolume's flags", e).with_path(&path))?)
}

/// The seal of the subvolume `path` (its root directory, never followed): its UUID and the
/// transaction of its last change as `UUIDHEX:TRANSID`, or None when it is writable.
#[pyfunction]
fn btrfs_seal(path: PathBuf) -> PyResult<Option<String>> {
    let fd = open_root(None, &path)?;
    let seal = btrfs::seal(fd.as_fd())
        .map_err(|e| Error::new("read the subvolume's information", e).with_path(&path))?;
    Ok(seal.map(|(uuid, transid)| {
        let hex: String = uuid.iter().map(|b| format!("{b:02x}")).collect();
        format!("{hex}:{transid}")
    }))
}

/// Deletes the subvolume `name` of the held directory `dir_fd` (made writable first); the
/// kernel frees its space in the background. OSError ENOTTY when `name` is no subvolume.
#[pyfunction]
fn btrfs_destroy(py: Python<'_>, dir_fd: i32, name: &[u8]) -> PyResult<()> {
    let name = c_name(name)?;
    let dir = borrowed(dir_fd)?;
    Ok(py
        .detach(|| btrfs::destroy(dir, &name))
        .map_err(|e| Error::new("delete a subvolume", e))?)
}

/// Renames `old` to `new` within the held directory `dir_fd`, never replacing an entry
/// (`RENAME_NOREPLACE`: FileExistsError when `new` exists).
#[pyfunction]
fn rename_noreplace(dir_fd: i32, old: &[u8], new: &[u8]) -> PyResult<()> {
    let dir = borrowed(dir_fd)?;
    let (o, n) = (c_name(old)?, c_name(new)?);
    Ok(fsutil::rename_noreplace_at(dir, &o, dir, &n).map_err(|e| Error::new("rename", e))?)
}

/// Deletes the directory `path` and everything in it, in parallel and bottom-up; see
/// `delete::delete_tree`. With `low_priority`, the worker threads run at nice 19 in the idle
/// I/O class. Raises OSError when `path` is a symlink, not a directory or a mount point.
#[pyfunction]
#[pyo3(signature = (path, *, jobs, progress, low_priority = true, prefix = Vec::new()))]
fn delete_tree<'py>(
    py: Python<'py>,
    path: PathBuf,
    jobs: usize,
    progress: &Progress,
    low_priority: bool,
    prefix: Vec<u8>,
) -> PyResult<Bound<'py, PyDict>> {
    let target = delete::Target::open(&path)?;
    let lowering = low_priority.then(|| Arc::new(priority::Lowering::default()));
    let start = lowering.as_ref().map(priority::Lowering::start_hook);
    let p = Arc::clone(&progress.inner);
    let out = run_with_start(py, jobs, start, move || {
        delete::delete_tree_lowered(target, &p, &prefix, lowering.as_deref())
    })?;
    let d = PyDict::new(py);
    d.set_item("files", out.files)?;
    d.set_item("dirs", out.dirs)?;
    d.set_item("errors", out.errors)?;
    d.set_item("warnings", out.warnings)?;
    Ok(d)
}

/// Verifies message areas' files against their indexes, all in one pool; see
/// `check::check_areas`. `live`: a store in use. With `fix_root`, unrecognized files move below
/// `fix_root/<area's fix_rel>`, as `fix_owner` (uid, gid, groups) when given. With `root`, each
/// area's `src` is relative to that directory descriptor.
#[pyfunction]
#[pyo3(signature = (areas, *, live, jobs, progress, fix_root = None, fix_owner = None, root = None))]
#[allow(clippy::too_many_arguments)]
fn check_areas<'py>(
    py: Python<'py>,
    areas: Vec<AreaArgs<'py>>,
    live: bool,
    jobs: usize,
    progress: &Progress,
    fix_root: Option<PathBuf>,
    fix_owner: Option<(u32, u32, Vec<u32>)>,
    root: Option<i32>,
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let areas = areas
        .iter()
        .map(|a| {
            Ok(CheckJob {
                spec: a.spec()?,
                fix_rel: a.fix_rel.clone().unwrap_or_default(),
            })
        })
        .collect::<PyResult<Vec<_>>>()?;
    let opts = CheckOptions {
        live,
        anchor: anchor(root)?,
        fix_root: fix_root.map(|r| open_root(None, &r)).transpose()?,
        fix_owner: fix_owner.map(|(uid, gid, groups)| FsId { uid, gid, groups }),
    };
    let p = Arc::clone(&progress.inner);
    let tallies = run(py, jobs, move || check::check_areas(&areas, &opts, &p))?;
    tallies.iter().map(|t| tally_dict(py, t)).collect()
}

/// One run of `mailbak check` over a repository: the inode map shared by its snapshots; see
/// `checkrepo.rs`.
#[pyclass(frozen, module = "mailbak._engine")]
struct RepoCheck {
    /// The run.
    inner: Arc<checkrepo::RepoCheck>,
}

/// The damage record as a dict (see `_engine.pyi`).
fn damage_dict<'py>(py: Python<'py>, d: &checkrepo::Damage) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    out.set_item("area", PyBytes::new(py, &d.area))?;
    out.set_item("id", d.id)?;
    out.set_item("rel", PyBytes::new(py, &d.rel))?;
    out.set_item("size", d.size)?;
    out.set_item("digest", d.digest.map(|x| PyBytes::new(py, &x)))?;
    out.set_item("cause", d.cause)?;
    out.set_item("detail", &d.detail)?;
    out.set_item("inode", d.inode)?;
    out.set_item("snapshots", d.snapshots.clone())?;
    Ok(out)
}

#[pymethods]
impl RepoCheck {
    /// A run; with `read_data`, the subset read: at most one of `part` (n, m), `fraction`
    /// (0 < f <= 1), `budget` (bytes). `seed` keys the random subsets.
    #[new]
    #[pyo3(signature = (*, read_data, part = None, fraction = None, budget = None, seed = 0))]
    fn new(
        read_data: bool,
        part: Option<(u64, u64)>,
        fraction: Option<f64>,
        budget: Option<u64>,
        seed: u64,
    ) -> PyResult<Self> {
        let subset = match (part, fraction, budget) {
            (None, None, None) => Subset::All,
            (Some((n, m)), None, None) if m >= 1 && (1..=m).contains(&n) => Subset::Part { n, m },
            (None, Some(f), None) if f > 0.0 && f <= 1.0 => Subset::Fraction(f),
            (None, None, Some(b)) => Subset::Budget(b),
            _ => {
                return Err(PyValueError::new_err(
                    "one subset: part (n, m) with 1 <= n <= m, fraction in (0, 1], or budget",
                ))
            }
        };
        Ok(RepoCheck {
            inner: Arc::new(checkrepo::RepoCheck::new(read_data, subset, seed)),
        })
    }

    /// Checks one snapshot's areas (as `check_areas` does, each relative to the descriptor
    /// `root`, the snapshot's `data/`); `snapshot` is its directory, `trusted` whether its
    /// manifest is ok and names digests. One tally per area.
    #[pyo3(signature = (name, snapshot, trusted, areas, *, jobs, progress, root))]
    #[allow(clippy::too_many_arguments)]
    fn check_snapshot<'py>(
        &self,
        py: Python<'py>,
        name: String,
        snapshot: PathBuf,
        trusted: bool,
        areas: Vec<AreaArgs<'py>>,
        jobs: usize,
        progress: &Progress,
        root: i32,
    ) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let areas = areas
            .iter()
            .map(|a| {
                Ok(CheckJob {
                    spec: a.spec()?,
                    fix_rel: Vec::new(),
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        let snap = SnapshotArgs {
            name,
            root: open_root(None, &snapshot)?,
            trusted,
        };
        let opts = CheckOptions {
            anchor: anchor(Some(root))?,
            ..Default::default()
        };
        let p = Arc::clone(&progress.inner);
        let run_ = Arc::clone(&self.inner);
        let tallies = run(py, jobs, move || {
            run_.check_snapshot(&snap, &areas, &opts, &p)
        })?;
        tallies.iter().map(|t| tally_dict(py, t)).collect()
    }

    /// Reads the files a trusted snapshot's `digests/files` lists (with `read_data`).
    #[pyo3(signature = (name, snapshot, trusted, *, jobs, progress))]
    fn check_files<'py>(
        &self,
        py: Python<'py>,
        name: String,
        snapshot: PathBuf,
        trusted: bool,
        jobs: usize,
        progress: &Progress,
    ) -> PyResult<Bound<'py, PyDict>> {
        let snap = SnapshotArgs {
            name,
            root: open_root(None, &snapshot)?,
            trusted,
        };
        let p = Arc::clone(&progress.inner);
        let run_ = Arc::clone(&self.inner);
        let t = run(py, jobs, move || run_.check_files(&snap, &p))?;
        tally_dict(py, &t)
    }

    /// The damaged inodes found so far.
    fn damages<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        self.inner
            .damages()
            .iter()
            .map(|d| damage_dict(py, d))
            .collect()
    }

    /// The run's counts (inodes checked, read, bytes read, by state).
    fn counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, v) in self.inner.counts() {
            d.set_item(k, v)?;
        }
        Ok(d)
    }
}

/// Converts an LMDB error to the Python exception: OSError when the file could not be read
/// (with its errno), LmdbError when its content is wrong.
fn lmdb_err(e: crate::lmdbfile::LmdbError, path: &Path) -> PyErr {
    if let ErrorKind::Io(errno) = e.kind {
        return Error::new("read", rustix::io::Errno::from_raw_os_error(errno))
            .with_path(path)
            .into();
    }
    let kind = match e.kind {
        ErrorKind::Io(_) => unreachable!("handled above"),
        ErrorKind::Corrupt => "corrupt",
        ErrorKind::Unsupported => "unsupported",
        ErrorKind::Stale => "stale",
        ErrorKind::Callback => "corrupt",
    };
    LmdbError::new_err((kind, e.page, e.message))
}

/// Structural check of an LMDB file (optionally of the snapshot `txnid`).
#[pyfunction]
#[pyo3(signature = (path, txnid = None))]
fn lmdb_check<'py>(
    py: Python<'py>,
    path: PathBuf,
    txnid: Option<u64>,
) -> PyResult<Bound<'py, PyDict>> {
    let s = py
        .detach(|| LmdbFile::open(&path, txnid).and_then(|f| f.check()))
        .map_err(|e| lmdb_err(e, &path))?;
    let d = PyDict::new(py);
    d.set_item("txnid", s.txnid)?;
    d.set_item("page_size", s.page_size)?;
    d.set_item("last_page", s.last_page)?;
    d.set_item("tree_pages", s.tree_pages)?;
    d.set_item("free_pages", s.free_pages)?;
    let dbs: Vec<(Bound<'py, PyBytes>, u64)> = s
        .dbs
        .iter()
        .map(|(n, c)| (PyBytes::new(py, n), *c))
        .collect();
    d.set_item("dbs", dbs)?;
    d.set_item("compact_copy_safe", s.compact_copy_safe)?;
    Ok(d)
}

/// Reads an area's index from an LMDB file; see `records.rs`.
#[pyfunction]
#[pyo3(signature = (path, kind, txnid = None))]
fn read_index<'py>(
    py: Python<'py>,
    path: PathBuf,
    kind: &str,
    txnid: Option<u64>,
) -> PyResult<Bound<'py, PyDict>> {
    let kind = match kind {
        "account" => IndexKind::Account,
        "queue" => IndexKind::Queue,
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown index kind {other:?}"
            )))
        }
    };
    let (file_txnid, idx) = py
        .detach(|| {
            LmdbFile::open(&path, txnid)
                .and_then(|f| Ok((f.txnid(), records::read_index(&f, kind)?)))
        })
        .map_err(|e| lmdb_err(e, &path))?;
    let d = PyDict::new(py);
    d.set_item("txnid", file_txnid)?;
    d.set_item("live", PyBytes::new(py, &packed(&idx.live)))?;
    let sizes: Vec<u64> = idx.sizes.iter().map(|n| n.unwrap_or(0)).collect();
    let unknown: Vec<u64> = idx
        .live
        .iter()
        .zip(&idx.sizes)
        .filter(|(_, n)| n.is_none())
        .map(|(id, _)| *id)
        .collect();
    d.set_item("sizes", PyBytes::new(py, &packed(&sizes)))?;
    d.set_item("unknown_sizes", PyBytes::new(py, &packed(&unknown)))?;
    d.set_item("erasing", PyBytes::new(py, &packed(&idx.erasing)))?;
    d.set_item("highest", idx.highest)?;
    d.set_item("records", idx.records)?;
    d.set_item("expunged", idx.expunged)?;
    d.set_item("mailboxes", idx.mailboxes)?;
    d.set_item("next_id", idx.next_id)?;
    let problems: Vec<(&str, u64, String)> = idx
        .problems
        .into_iter()
        .map(|p| (p.code, p.id, p.detail))
        .collect();
    d.set_item("problems", problems)?;
    d.set_item("problem_count", idx.problem_count)?;
    Ok(d)
}

/// One LMDB record as Python sees it: (key, value).
type Record<'py> = (Bound<'py, PyBytes>, Bound<'py, PyBytes>);

/// Records of LMDB file `path`: for each named database of `tables`, every (key, value) in
/// key order, or None when the file has no such table. Read directly by the bounds-checked
/// reader (`lmdbfile`), all from one snapshot: `txnid` when given (see `read_index`). `only`:
/// just the records with these keys (the whole tree is still walked, and checked as it goes).
#[pyfunction]
#[pyo3(signature = (path, tables, txnid = None, only = None))]
fn read_tables<'py>(
    py: Python<'py>,
    path: PathBuf,
    tables: Vec<Vec<u8>>,
    txnid: Option<u64>,
    only: Option<Vec<Vec<u8>>>,
) -> PyResult<Vec<Option<Vec<Record<'py>>>>> {
    /// The records of one table, or None when it is absent.
    type Table = Option<Vec<(Vec<u8>, Vec<u8>)>>;
    let read = py
        .detach(|| -> Result<Vec<Table>, crate::lmdbfile::LmdbError> {
            let file = LmdbFile::open(&path, txnid)?;
            let only: Option<std::collections::HashSet<Vec<u8>>> =
                only.map(|o| o.into_iter().collect());
            tables
                .iter()
                .map(|name| {
                    let mut out = Vec::new();
                    let found = file.for_each(name, &mut |k, v| {
                        if only.as_ref().is_none_or(|o| o.contains(k)) {
                            out.push((k.to_vec(), v.to_vec()));
                        }
                        Ok(())
                    })?;
                    Ok(found.then_some(out))
                })
                .collect()
        })
        .map_err(|e| lmdb_err(e, &path))?;
    Ok(read
        .into_iter()
        .map(|t| {
            t.map(|rs| {
                rs.iter()
                    .map(|(k, v)| (PyBytes::new(py, k), PyBytes::new(py, v)))
                    .collect()
            })
        })
        .collect())
}

/// Fewer heads than this are read without a pool of worker threads.
const SMALL_HEAD_READ: usize = 256;

/// The heads of messages `ids` (packed u64s) below the message tree `root`; see `heads.rs`.
/// Each item: the five raw field values, or the errno of what failed (-1: not a regular file).
#[pyfunction]
#[pyo3(signature = (root, ids, *, jobs))]
fn read_heads<'py>(
    py: Python<'py>,
    root: PathBuf,
    ids: &[u8],
    jobs: usize,
) -> PyResult<Vec<Bound<'py, PyAny>>> {
    let ids = unpack_u64(ids)?;
    let dir = fsutil::open_dir(&root).map_err(|e| Error::new("open", e).with_path(&root))?;
    // A few heads (find reads the handful an older snapshot alone holds, account by account)
    // are read on this thread: starting a pool of threads per call cost more than the reads.
    let got = if ids.len() < SMALL_HEAD_READ {
        py.detach(|| heads::read_heads_here(dir.as_fd(), &ids))
    } else {
        run(py, jobs, || heads::read_heads(dir.as_fd(), &ids))?
    };
    got.into_iter()
        .map(|r| match r {
            Ok(fields) => Ok(fields
                .iter()
                .map(|f| PyBytes::new(py, f))
                .collect::<Vec<_>>()
                .into_pyobject(py)?
                .into_any()),
            Err(HeadError::NotRegular) => Ok((-1i32).into_pyobject(py)?.into_any()),
            Err(HeadError::Io(e)) => Ok(e.raw_os_error().into_pyobject(py)?.into_any()),
        })
        .collect()
}

/// An account's live messages as columns; see `records::read_messages`. IDs, mailbox IDs, UIDs
/// and sizes come packed as little-endian u64s, received times as i64s; flags and keywords as
/// their encoded msgpack arrays (empty bytes when absent).
#[pyfunction]
#[pyo3(signature = (path, txnid = None, mailboxes = None, only = None))]
fn read_messages<'py>(
    py: Python<'py>,
    path: PathBuf,
    txnid: Option<u64>,
    mailboxes: Option<Vec<u64>>,
    only: Option<Vec<u64>>,
) -> PyResult<Bound<'py, PyDict>> {
    let mailboxes: Option<std::collections::HashSet<u64>> =
        mailboxes.map(|m| m.into_iter().collect());
    let only: Option<std::collections::HashSet<u64>> = only.map(|o| o.into_iter().collect());
    let cols = py
        .detach(|| {
            LmdbFile::open(&path, txnid)
                .and_then(|f| records::read_messages(&f, mailboxes.as_ref(), only.as_ref()))
        })
        .map_err(|e| lmdb_err(e, &path))?;
    let d = PyDict::new(py);
    d.set_item("ids", PyBytes::new(py, &packed(&cols.ids)))?;
    d.set_item("mailbox_ids", PyBytes::new(py, &packed(&cols.mailbox_ids)))?;
    d.set_item("uids", PyBytes::new(py, &packed(&cols.uids)))?;
    d.set_item("sizes", PyBytes::new(py, &packed(&cols.sizes)))?;
    let received: Vec<u8> = cols.received.iter().flat_map(|t| t.to_le_bytes()).collect();
    d.set_item("received", PyBytes::new(py, &received))?;
    let raw = |v: &[Vec<u8>]| -> Vec<Bound<'py, PyBytes>> {
        v.iter().map(|b| PyBytes::new(py, b)).collect()
    };
    d.set_item("flags", raw(&cols.flags))?;
    d.set_item("keywords", raw(&cols.keywords))?;
    d.set_item("problems", cols.problems)?;
    d.set_item("problem_count", cols.problem_count)?;
    Ok(d)
}

/// Where two ascending ID lists (packed u64s) differ; see `ids::sorted_diff`. Positions come
/// packed too; None when a list is not strictly ascending.
#[pyfunction]
fn diff_ids<'py>(
    py: Python<'py>,
    a: &[u8],
    b: &[u8],
) -> PyResult<Option<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)>> {
    let (a, b) = (unpack_u64(a)?, unpack_u64(b)?);
    Ok(crate::ids::sorted_diff(&a, &b)
        .map(|(x, y)| (PyBytes::new(py, &packed(&x)), PyBytes::new(py, &packed(&y)))))
}

/// Writes generated message files; see `gen.rs`.
#[pyfunction]
#[pyo3(signature = (root, ids, sizes, received, *, to, seed, jobs, progress))]
#[allow(clippy::too_many_arguments)]
fn write_messages<'py>(
    py: Python<'py>,
    root: PathBuf,
    ids: &[u8],
    sizes: &[u8],
    received: &[u8],
    to: String,
    seed: u64,
    jobs: usize,
    progress: &Progress,
) -> PyResult<Bound<'py, PyDict>> {
    let (ids, sizes, received) = (unpack_u64(ids)?, unpack_u64(sizes)?, unpack_u64(received)?);
    if ids.len() != sizes.len() || ids.len() != received.len() {
        return Err(PyValueError::new_err(
            "ids, sizes and received must be of equal length",
        ));
    }
    let p = Arc::clone(&progress.inner);
    let tally = run(py, jobs, move || {
        let sink = Sink::new(&p, b"");
        gen::write_messages(&root, &ids, &sizes, &received, &to, seed, &sink).map(|()| sink.tally)
    })?
    .map_err(Error::op("write messages"))?;
    tally_dict(py, &tally)
}

/// Flushes the file system holding `path` to stable storage (`syncfs`), with the GIL released.
#[pyfunction]
fn syncfs(py: Python<'_>, path: PathBuf) -> PyResult<()> {
    let fd = open_root(None, &path)?;
    Ok(py
        .detach(|| rustix::fs::syncfs(&fd))
        .map_err(|e| Error::new("syncfs", e).with_path(&path))?)
}

/// The calling thread's file-system identity: (fsuid, fsgid, supplementary groups).
#[pyfunction]
fn fs_identity() -> PyResult<(u32, u32, Vec<u32>)> {
    let id = fsid::current().map_err(Error::op("read the file-system identity"))?;
    Ok((id.uid, id.gid, id.groups))
}

/// Gives the calling thread (only it) the file-system identity (uid, gid, groups); returns the
/// previous one. See `fsid.rs`.
#[pyfunction]
fn set_fs_identity(uid: u32, gid: u32, groups: Vec<u32>) -> PyResult<(u32, u32, Vec<u32>)> {
    let old = fsid::switch(&FsId { uid, gid, groups })
        .map_err(Error::op("set the file-system identity"))?;
    Ok((old.uid, old.gid, old.groups))
}

/// The relative path of message `id`: `dir(id)/id`.
#[pyfunction]
fn message_path(id: u64) -> String {
    String::from_utf8(msgpath::rel_path(id)).expect("ASCII")
}

/// The ID a message file name stands for, if it is canonical decimal.
#[pyfunction]
fn parse_message_name(name: &[u8]) -> Option<u64> {
    msgpath::parse_id(name)
}

/// What this extension was built as, for `mailbak --version` and bug reports: the crate version,
/// the build profile (a debug build is many times slower, so a report must say which ran) and
/// the platform.
#[pyfunction]
fn build_info<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("version", env!("CARGO_PKG_VERSION"))?;
    d.set_item(
        "profile",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    )?;
    d.set_item("arch", std::env::consts::ARCH)?;
    d.set_item("os", std::env::consts::OS)?;
    Ok(d)
}

/// The module.
#[pymodule]
fn _engine(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Progress>()?;
    m.add_class::<BackupArea>()?;
    m.add_class::<RepoCheck>()?;
    m.add("LmdbError", m.py().get_type::<LmdbError>())?;
    m.add_function(wrap_pyfunction!(backup_areas, m)?)?;
    m.add_function(wrap_pyfunction!(copy_tree, m)?)?;
    m.add_function(wrap_pyfunction!(delete_tree, m)?)?;
    m.add_function(wrap_pyfunction!(drop_stale, m)?)?;
    m.add_function(wrap_pyfunction!(btrfs_is_btrfs, m)?)?;
    m.add_function(wrap_pyfunction!(btrfs_is_subvolume, m)?)?;
    m.add_function(wrap_pyfunction!(btrfs_create_subvolume, m)?)?;
    m.add_function(wrap_pyfunction!(btrfs_snapshot, m)?)?;
    m.add_function(wrap_pyfunction!(btrfs_set_readonly, m)?)?;
    m.add_function(wrap_pyfunction!(btrfs_is_readonly, m)?)?;
    m.add_function(wrap_pyfunction!(btrfs_seal, m)?)?;
    m.add_function(wrap_pyfunction!(btrfs_destroy, m)?)?;
    m.add_function(wrap_pyfunction!(rename_noreplace, m)?)?;
    m.add_function(wrap_pyfunction!(check_areas, m)?)?;
    m.add_function(wrap_pyfunction!(lmdb_check, m)?)?;
    m.add_function(wrap_pyfunction!(read_index, m)?)?;
    m.add_function(wrap_pyfunction!(read_tables, m)?)?;
    m.add_function(wrap_pyfunction!(read_heads, m)?)?;
    m.add_function(wrap_pyfunction!(diff_ids, m)?)?;
    m.add_function(wrap_pyfunction!(read_messages, m)?)?;
    m.add_function(wrap_pyfunction!(write_messages, m)?)?;
    m.add_function(wrap_pyfunction!(message_path, m)?)?;
    m.add_function(wrap_pyfunction!(syncfs, m)?)?;
    m.add_function(wrap_pyfunction!(parse_message_name, m)?)?;
    m.add_function(wrap_pyfunction!(fs_identity, m)?)?;
    m.add_function(wrap_pyfunction!(set_fs_identity, m)?)?;
    m.add_function(wrap_pyfunction!(build_info, m)?)?;
    m.add_function(wrap_pyfunction!(parse_digests, m)?)?;
    m.add_function(wrap_pyfunction!(render_digests, m)?)?;
    Ok(())
}

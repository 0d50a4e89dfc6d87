//! The engine's one error type: a failed file-system operation, with the step that failed, the
//! OS error, and (once known) the path it was about.
//!
//! As ripgrep's `ignore` crate has one `Error`, the core makes every failure of an operation as
//! an [`Error`] from the errno the kernel returned and adds context by wrapping
//! ([`Error::with_path`]) on the error path only: the per-file hot paths carry no path until
//! something fails. The errno survives all the way out: per-file errors become events
//! (`progress::Sink::fs_error`), failures of a whole call become Python's `OSError` in exactly
//! one place (`py.rs`).

use std::fmt;
use std::path::{Path, PathBuf};

use rustix::io::Errno;

/// A failed operation: which step, the OS error, and the path when the caller knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// The step that failed ("open", "link", "read", ...), as events name it.
    pub op: &'static str,
    /// The error the kernel returned.
    pub errno: Errno,
    /// The path the operation was about, as the caller named it; None inside a walk, whose
    /// events carry their own relative path.
    pub path: Option<PathBuf>,
}

impl Error {
    /// The failure of step `op` with `errno`, not yet located.
    pub fn new(op: &'static str, errno: Errno) -> Self {
        Error {
            op,
            errno,
            path: None,
        }
    }

    /// A `map_err` adapter: the errno of step `op` as an [`Error`].
    pub fn op(op: &'static str) -> impl FnOnce(Errno) -> Error {
        move |errno| Error::new(op, errno)
    }

    /// The same error, about `path`.
    pub fn with_path(self, path: &Path) -> Self {
        Error {
            path: Some(path.to_path_buf()),
            ..self
        }
    }

    /// The OS's message for the errno, e.g. `No such file or directory (os error 2)`.
    pub fn message(&self) -> String {
        std::io::Error::from_raw_os_error(self.errno.raw_os_error()).to_string()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(p) => write!(f, "{} {}: {}", self.op, p.display(), self.message()),
            None => write!(f, "{}: {}", self.op, self.message()),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_step_the_path_and_the_os_message() {
        let e = Error::new("open", Errno::NOENT);
        assert_eq!(e.to_string(), format!("open: {}", e.message()));
        let e = e.with_path(Path::new("/srv/x"));
        assert_eq!(e.errno, Errno::NOENT);
        assert!(e.to_string().starts_with("open /srv/x: No such file"));
    }
}

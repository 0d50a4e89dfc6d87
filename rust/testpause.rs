//! Test-only pause points inside engine calls: the protocol of `python/mailbak/testpause.py`,
//! so that a test can act at an exact moment of a run (send a signal while files are being
//! linked, remove a file the snapshot claims, look at the lease while verify runs).
//!
//! Protocol: `MAILBAK_TEST_PAUSE` names the point, `MAILBAK_TEST_PAUSE_DIR` a directory the test
//! owns. The point pauses once, when its `MAILBAK_TEST_PAUSE_AFTER`-th file (default 1) of the
//! area is done: it creates `DIR/NAME.reached`, then waits until `DIR/NAME.go` exists (at most
//! [`WAIT_SECS`], so a broken test cannot hang a run forever). Other workers go on meanwhile;
//! with `--jobs 1` the whole call stands still.
//!
//! Cost when unset: the variables are read once per area (when its [`Pause`] is made), never
//! per file; a file then costs one branch on a `None`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Environment variable naming the one point to pause at.
pub const ENV_POINT: &str = "MAILBAK_TEST_PAUSE";
/// Environment variable naming the directory of the handshake files.
pub const ENV_DIR: &str = "MAILBAK_TEST_PAUSE_DIR";
/// Environment variable: pause after this many files of the area (default 1).
pub const ENV_AFTER: &str = "MAILBAK_TEST_PAUSE_AFTER";
/// Longest wait for the test's go-ahead (as in testpause.py).
pub const WAIT_SECS: u64 = 60;

/// In a backup's link/copy worker, after a snapshot message file has been placed.
pub const MID_LINK: &str = "engine_mid_link";
/// In verify's file check, as a live message file is checked (before its `lstat`).
pub const MID_CHECK: &str = "engine_mid_check";
/// In `delete_tree`'s workers, after a file has been removed.
pub const MID_DELETE: &str = "engine_mid_delete";

/// An armed point: where to signal, and after how many files.
struct Armed {
    /// Name of the point (file names of the handshake).
    point: &'static str,
    /// The test's directory.
    dir: PathBuf,
    /// The file count at which to pause.
    after: u64,
    /// Files done so far.
    count: AtomicU64,
}

/// One pause point of one area; inert unless a test armed it.
pub struct Pause(Option<Armed>);

impl Pause {
    /// The point `point`, armed when the environment asks for it.
    pub fn from_env(point: &'static str) -> Self {
        Self::from_vars(point, |k| std::env::var_os(k))
    }

    /// As `from_env`, reading variables through `get` (tests use this; the environment of a
    /// multi-threaded test binary is not safe to change).
    pub fn from_vars(point: &'static str, get: impl Fn(&str) -> Option<OsString>) -> Self {
        if get(ENV_POINT).is_none_or(|p| p != point) {
            return Pause(None);
        }
        let Some(dir) = get(ENV_DIR).filter(|d| !d.is_empty()) else {
            return Pause(None);
        };
        let after = get(ENV_AFTER)
            .and_then(|s| s.to_str()?.parse::<u64>().ok())
            .unwrap_or(1)
            .max(1);
        Pause(Some(Armed {
            point,
            dir: PathBuf::from(dir),
            after,
            count: AtomicU64::new(0),
        }))
    }

    /// Counts one file done; the `after`-th one waits for the test (see the module doc).
    #[inline]
    pub fn tick(&self) {
        if let Some(a) = &self.0 {
            if a.count.fetch_add(1, Ordering::Relaxed) + 1 == a.after {
                a.wait();
            }
        }
    }
}

impl Armed {
    /// Announces the point and waits for the go-ahead.
    #[cold]
    fn wait(&self) {
        // Errors are ignored: a test that cannot see `.reached` fails on its own assertion.
        let _ = std::fs::File::create(self.dir.join(format!("{}.reached", self.point)));
        let go = self.dir.join(format!("{}.go", self.point));
        let deadline = Instant::now() + Duration::from_secs(WAIT_SECS);
        while !go.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::testutil::Scratch;

    fn vars(
        point: &str,
        dir: &std::path::Path,
        after: Option<&str>,
    ) -> impl Fn(&str) -> Option<OsString> {
        let (point, dir, after) = (
            point.to_string(),
            dir.as_os_str().to_owned(),
            after.map(str::to_string),
        );
        move |k| match k {
            ENV_POINT => Some(point.clone().into()),
            ENV_DIR => Some(dir.clone()),
            ENV_AFTER => after.clone().map(Into::into),
            _ => None,
        }
    }

    #[test]
    fn unarmed_or_other_point_never_touches_the_directory() {
        let s = Scratch::new("pause-off");
        std::fs::create_dir_all(s.path("p")).unwrap();
        let other = Pause::from_vars(MID_LINK, vars(MID_CHECK, &s.path("p"), None));
        let none = Pause::from_vars(MID_LINK, |_| None);
        for _ in 0..10 {
            other.tick();
            none.tick();
        }
        assert_eq!(std::fs::read_dir(s.path("p")).unwrap().count(), 0);
    }

    #[test]
    fn pauses_once_at_the_nth_file_until_go() {
        let s = Scratch::new("pause-on");
        let dir = s.path("p");
        std::fs::create_dir_all(&dir).unwrap();
        let p = std::sync::Arc::new(Pause::from_vars(MID_LINK, vars(MID_LINK, &dir, Some("3"))));
        p.tick();
        p.tick();
        assert!(!dir.join("engine_mid_link.reached").exists());
        let worker = {
            let p = std::sync::Arc::clone(&p);
            std::thread::spawn(move || p.tick())
        };
        let reached = dir.join("engine_mid_link.reached");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !reached.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(reached.exists());
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !worker.is_finished(),
            "the third file waits for the go-ahead"
        );
        std::fs::File::create(dir.join("engine_mid_link.go")).unwrap();
        worker.join().unwrap();
        std::fs::remove_file(&reached).unwrap();
        std::fs::remove_file(dir.join("engine_mid_link.go")).unwrap();
        p.tick();
        assert!(!reached.exists(), "a point pauses once");
    }
}

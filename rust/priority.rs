//! Running a thread at low CPU and I/O priority: nice 19 and the idle I/O scheduling class, so
//! that a long background job (deleting pruned snapshots) yields to everything else on the
//! machine.
//!
//! Both settings are per thread on Linux (`setpriority(PRIO_PROCESS, 0)` and
//! `ioprio_set(IOPRIO_WHO_PROCESS, 0)` name the calling thread), so a worker pool lowers each
//! of its threads as it starts (a rayon `start_handler`) and the caller's thread keeps its
//! priority. Neither needs privileges: any thread may lower its own priority.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use rustix::io::Errno;

/// The nice value of a low-priority thread (the lowest CPU priority).
pub const LOW_NICE: i32 = 19;

/// `IOPRIO_WHO_PROCESS` of `linux/ioprio.h`: `who` names a thread (0: the calling one).
const IOPRIO_WHO_PROCESS: libc::c_int = 1;
/// `IOPRIO_CLASS_IDLE`: I/O only when no other thread wants the disk.
pub const IOPRIO_CLASS_IDLE: u32 = 3;
/// `IOPRIO_CLASS_SHIFT`: the class sits above the 13 bits of priority data.
const IOPRIO_CLASS_SHIFT: u32 = 13;

/// A hook each worker thread of a rayon pool runs as it starts, before any work (its
/// `start_handler`).
pub type StartHook = Box<dyn Fn(usize) + Send + Sync>;

/// Lowers threads as they start and remembers the first failure, so that the caller can report
/// it once (a failure leaves the thread at normal priority; the work still runs).
#[derive(Default)]
pub struct Lowering {
    /// errno of the first failure (0: none).
    first_error: AtomicI32,
}

impl Lowering {
    /// Lowers the calling thread; a failure is recorded, never raised.
    pub fn lower_this_thread(&self) {
        if let Err(e) = lower_current_thread() {
            let _ = self.first_error.compare_exchange(
                0,
                e.raw_os_error(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// A pool start hook that lowers each worker thread as it starts, recording failures here.
    pub fn start_hook(self: &Arc<Self>) -> StartHook {
        let l = Arc::clone(self);
        Box::new(move |_| l.lower_this_thread())
    }

    /// The first failure, if any thread could not be lowered.
    pub fn first_error(&self) -> Option<Errno> {
        match self.first_error.load(Ordering::Relaxed) {
            0 => None,
            e => Some(Errno::from_raw_os_error(e)),
        }
    }
}

/// Gives the calling thread nice [`LOW_NICE`] and the idle I/O class.
pub fn lower_current_thread() -> Result<(), Errno> {
    rustix::process::setpriority_process(None, LOW_NICE)?;
    let prio = (IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT) as libc::c_int;
    // SAFETY: ioprio_set takes three integers and changes only the I/O priority of the thread
    // they name (here the calling one); rustix has no wrapper for it.
    let rc = unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, prio) };
    if rc != 0 {
        return Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::INVAL));
    }
    Ok(())
}

/// The calling thread's I/O priority class (`ioprio_get`), for tests.
#[cfg(test)]
pub fn current_io_class() -> Result<u32, Errno> {
    // SAFETY: as above; ioprio_get only reads.
    let rc = unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0) };
    if rc < 0 {
        return Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::INVAL));
    }
    Ok((rc as u32) >> IOPRIO_CLASS_SHIFT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lowered_thread_has_nice_19_and_the_idle_class_and_others_keep_theirs() {
        let before = rustix::process::getpriority_process(None).unwrap();
        let (nice, class) = std::thread::spawn(|| {
            let l = Lowering::default();
            l.lower_this_thread();
            assert_eq!(l.first_error(), None);
            (
                rustix::process::getpriority_process(None).unwrap(),
                current_io_class().unwrap(),
            )
        })
        .join()
        .unwrap();
        assert_eq!((nice, class), (LOW_NICE, IOPRIO_CLASS_IDLE));
        assert_eq!(
            rustix::process::getpriority_process(None).unwrap(),
            before,
            "only the lowered thread changed"
        );
        assert_ne!(current_io_class().unwrap(), IOPRIO_CLASS_IDLE);
    }
}

//! `fork` itself, and the hooks that run around it.

use super::{cvt, Pid};
use std::io;

/// The result of `fork`, seen from each side.
#[derive(Debug)]
pub enum Forked {
    /// In the parent: the child's pid.
    Parent(Pid),
    /// In the child.
    Child,
}

/// fork(2).
///
/// # Safety
/// The caller must be single-threaded, or the child must restrict itself to
/// async-signal-safe calls until it execs or exits: another thread may have
/// held a lock (the allocator's among them) at the moment of the fork.
pub unsafe fn fork() -> io::Result<Forked> {
    // SAFETY: the caller upholds the single-threaded precondition.
    match cvt(unsafe { libc::fork() })? {
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(Pid(pid))),
    }
}

/// `pthread_atfork(NULL, NULL, handler)`: registers `handler` to run in
/// every child this process forks, right after the fork, in the forking
/// thread. Registration lasts for the life of the process and cannot be
/// undone.
///
/// # Safety
/// `handler` runs in a freshly forked child of a possibly multi-threaded
/// parent, where another thread may have held a lock (the allocator's among
/// them) at the moment of the fork: it may only make async-signal-safe
/// calls (no allocation, no lock, no printing).
pub unsafe fn at_fork_child(handler: extern "C" fn()) -> io::Result<()> {
    // SAFETY: a plain `extern "C"` function with no captured state; what it
    // may do in the child is the caller's contract.
    let rc = unsafe { libc::pthread_atfork(None, None, Some(handler)) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

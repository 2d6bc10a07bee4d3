//! The first steps of every process forked to run forkroot code: a daemon
//! (forked by the root) and a transaction (forked by its daemon) alike.
//!
//! Between `fork` and these steps' end the child makes only fork-safe calls
//! (no allocation, no lock, no print, no unwrap); after them it is settled
//! enough to run the caller's own start-up.

use std::io;

use crate::sys::{self, Pid, Signal};

/// Settles a freshly forked child of `parent`:
///
/// 1. dies with its parent (`PR_SET_PDEATHSIG = SIGKILL`), and refuses to
///    go on if the parent already died between `fork` and here (it was
///    reparented, and no signal will come): `Err(ESRCH)`;
/// 2. gives the crash signals their default action back (the Rust
///    runtime's SIGSEGV handler would swallow a `kill -SEGV`);
/// 3. refreshes the pid the tracing layer caches;
/// 4. starts counting allocations (`alloc::Policy::Count`, counters at 0):
///    start-up may allocate, steady state may not.
///
/// Fork-safe.
pub(crate) fn after_fork(parent: Pid) -> io::Result<()> {
    sys::set_parent_death_signal(Signal::KILL)?;
    if sys::getppid() != parent {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    sys::default_crash_signals();
    crate::trace::after_fork();
    crate::alloc::reset_stats();
    crate::alloc::set_policy(crate::alloc::Policy::Count);
    Ok(())
}

/// The first steps of a child that shares the root's memory until it
/// execs ([`sys::fork::spawn_vm`]): steps 1 and 2 of [`after_fork`] only.
/// Steps 3 and 4 write globals, which here are the root's own. Fork-safe,
/// and writes nothing outside the caller's stack.
pub(crate) fn after_clone_vm(parent: Pid) -> io::Result<()> {
    sys::set_parent_death_signal(Signal::KILL)?;
    if sys::getppid() != parent {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    sys::default_crash_signals();
    Ok(())
}

/// Runs the forked process's code, `f`. A panic is a crash (SIGABRT): it
/// must not unwind into the frames the process was forked in (the root's
/// or the daemon's), whose destructors would run in the wrong process.
pub(crate) fn run_or_abort<R>(f: impl FnOnce() -> R) -> R {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => sys::die_by(Signal::ABRT),
    }
}

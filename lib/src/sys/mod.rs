//! The only place that calls libc directly: thin, checked wrappers.
//!
//! Every function here turns `-1`/errno into [`io::Result`] through [`cvt`]
//! and keeps its `unsafe` to the one call it wraps. Functions marked
//! *fork-safe* neither allocate nor lock, so a freshly forked child may call
//! them before it is settled.

// The kernel's integer types (pid_t, id_t, c_long, ssize_t, rlim_t,
// time_t) are converted to and from Rust's here, at the boundary, on
// purpose: each converted value is one the kernel bounds (a pid > 0, a
// byte count `cvt` checked is not -1, a clock reading >= 0), so
// `clippy::pedantic`'s cast lints would flag only those conversions.
#![allow(
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_possible_truncation
)]

use std::io;

pub mod cgroup;
pub mod cred;
pub mod dgram;
mod epoll;
mod fd;
pub mod file;
pub mod fork;
pub mod futex;
pub mod mem;
pub mod mutex;
pub mod proc;
mod process;
pub mod setup;
mod signal;
pub mod title;

pub use epoll::Epoll;
pub use fd::{
    close, close_between, close_from, dup2, dup_at_least, dup_onto, is_open, pipe_cloexec,
    raise_fd_limit, read, restore_fd_limit, set_cloexec, set_nonblocking, try_lock_exclusive,
    unshare_below, write_all,
};
pub use fork::{fork, Forked};
pub use mem::{
    allocate, dont_fork, file_region, map_fixed, memfd_sealed, page_size, protect, punch_hole,
    reopen_read_only, reserve, unmap, zero_range, Access,
};
pub use process::{
    exec, exit_now, getpid, getppid, reap_one, reap_pid, set_child_subreaper, set_comm,
    set_parent_death_signal, setsid, thread_count, wait_pid, WaitStatus,
};
pub use signal::{
    default_crash_signals, default_signal, default_sigpipe, die_by, kill, kill_group,
    read_signalfd, signal_name, take_pending, wait_signal, SigSet,
};

/// A process id as the kernel gives it (always > 0 for a real process).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pid(pub libc::pid_t);

impl std::fmt::Display for Pid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Turns a libc return value of `-1` into the current errno. Fork-safe.
pub fn cvt<T: IsMinusOne>(t: T) -> io::Result<T> {
    if t.is_minus_one() {
        Err(io::Error::last_os_error())
    } else {
        Ok(t)
    }
}

/// Like [`cvt`], retrying while the call fails with `EINTR`. Fork-safe.
pub fn cvt_r<T: IsMinusOne>(mut f: impl FnMut() -> T) -> io::Result<T> {
    loop {
        match cvt(f()) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// Integer return values that signal failure with `-1`.
pub trait IsMinusOne {
    /// Whether this is the failure value.
    fn is_minus_one(&self) -> bool;
}
macro_rules! minus_one {
    ($($t:ty),*) => { $(impl IsMinusOne for $t {
        fn is_minus_one(&self) -> bool { *self == -1 }
    })* };
}
minus_one!(i32, i64, isize);

/// Monotonic clock in nanoseconds (vDSO, no syscall). Fork-safe.
#[inline]
#[must_use]
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Wall clock in nanoseconds since the epoch. Fork-safe.
#[inline]
#[must_use]
pub fn realtime_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

#[inline]
fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; both clocks always exist.
    unsafe { libc::clock_gettime(clock, &raw mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

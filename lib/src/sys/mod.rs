//! The only place that calls libc directly: thin, checked wrappers.
//!
//! Every function here turns `-1`/errno into [`io::Result`] through [`cvt`]
//! and keeps its `unsafe` to the one call it wraps. Functions marked
//! *fork-safe* neither allocate nor lock, so a freshly forked child may call
//! them before it is settled.

// The kernel's integer types (pid_t, ssize_t, off_t, socklen_t, time_t)
// are converted to and from Rust's here, at the boundary, without `as`:
// through the helpers below, `try_from`, or `unsigned_abs` where the kernel
// bounds the value (a count `cvt` checked is not -1, a clock reading).

use std::io;

pub mod cgroup;
pub mod cred;
pub mod dgram;
mod epoll;
mod fd;
pub mod fdpass;
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
    close, close_between, close_from, dup2, dup_at_least, dup_onto, is_open, open_std_fds,
    pipe_cloexec, raise_fd_limit, read, restore_fd_limit, set_cloexec, set_nonblocking,
    try_lock_exclusive, unshare_below, write_all,
};
pub use fork::{fork, fork_sibling, Forked};
pub use mem::{
    allocate, dont_fork, file_region, map_fixed, memfd_sealed, page_size, protect, punch_hole,
    reopen_read_only, reserve, unmap, zero_range, Access,
};
pub use process::{
    exec, exit_now, getpid, getppid, pidfd_open, reap_one, reap_pid, set_child_subreaper, set_comm,
    set_parent_death_signal, setsid, thread_count, wait_pid, WaitStatus,
};
pub use signal::{
    default_crash_signals, default_signal, default_sigpipe, die_by, exists, kill, kill_group,
    take_pending, wait_signal, SigSet, Signal, SignalFd,
};

/// A process id as the kernel gives it: always > 0 (a real process; a
/// process group's id is its leader's pid). Built only here, from what the
/// kernel returned, or checked with [`Pid::from_raw`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pid(libc::pid_t);

impl Pid {
    /// The pid `raw`, if it can be one (> 0). Fork-safe.
    #[must_use]
    pub const fn from_raw(raw: libc::pid_t) -> Option<Pid> {
        if raw > 0 {
            Some(Pid(raw))
        } else {
            None
        }
    }

    /// A pid the kernel returned for a process (> 0 by its contract).
    /// Fork-safe.
    pub(super) fn from_kernel(raw: libc::pid_t) -> Pid {
        debug_assert!(raw > 0, "the kernel gave pid {raw}");
        Pid(raw)
    }

    /// The number the kernel's calls take. Fork-safe.
    #[must_use]
    pub const fn as_raw(self) -> libc::pid_t {
        self.0
    }

    /// The pid as the unsigned number shared memory and the mailbox record
    /// (lossless: a pid is > 0). Fork-safe.
    #[must_use]
    pub const fn as_u32(self) -> u32 {
        self.0.unsigned_abs()
    }
}

impl From<Pid> for u32 {
    fn from(pid: Pid) -> u32 {
        pid.as_u32()
    }
}

impl TryFrom<u32> for Pid {
    type Error = io::Error;

    /// A pid read back from shared memory or a message: 0 and numbers past
    /// `pid_t` are not pids (`InvalidInput`). Allocates nothing; fork-safe.
    fn try_from(n: u32) -> io::Result<Pid> {
        libc::pid_t::try_from(n)
            .ok()
            .and_then(Pid::from_raw)
            .ok_or_else(|| io::ErrorKind::InvalidInput.into())
    }
}

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

/// A count a call returned (bytes, events), once [`cvt`] has ruled out
/// -1: never negative, so its magnitude is its value. Fork-safe.
fn count(n: isize) -> usize {
    debug_assert!(n >= 0, "a count of {n}");
    n.unsigned_abs()
}

/// A file offset or length as the kernel takes it (`off_t`); past its
/// range, the kernel's own `EOVERFLOW`. Allocates nothing; fork-safe.
fn off_t(n: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(n).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))
}

/// A buffer length as a socket call takes it; one past `socklen_t`
/// (never, in practice) is told as the largest, which only under-reports
/// the room the kernel may use.
fn socklen(n: usize) -> libc::socklen_t {
    libc::socklen_t::try_from(n).unwrap_or(libc::socklen_t::MAX)
}

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
    // Both clocks read >= 0 (seconds since boot, since the epoch).
    ts.tv_sec.unsigned_abs() * 1_000_000_000 + ts.tv_nsec.unsigned_abs()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pid is > 0 and fits `pid_t`, whichever way it comes in, and goes
    /// out as the same number.
    #[test]
    fn a_pid_is_positive_and_round_trips() {
        assert_eq!(Pid::from_raw(0), None);
        assert_eq!(Pid::from_raw(-1), None);
        assert!(Pid::try_from(0u32).is_err());
        assert!(Pid::try_from(u32::MAX).is_err(), "past pid_t");
        let me = getpid();
        assert!(me.as_raw() > 0);
        assert_eq!(Pid::from_raw(me.as_raw()), Some(me));
        assert_eq!(Pid::try_from(me.as_u32()).unwrap(), me);
        assert_eq!(u32::from(me), me.as_u32());
        assert_eq!(me.to_string(), me.as_raw().to_string());
    }
}

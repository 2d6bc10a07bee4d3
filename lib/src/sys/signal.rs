//! Signals: sending them, their dispositions, the blocked mask, signalfd,
//! and waiting for one.

use super::process::exit_now;
use super::{cvt, monotonic_ns, Pid};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// kill(2).
pub fn kill(pid: Pid, signal: i32) -> io::Result<()> {
    // SAFETY: kill has no memory preconditions.
    cvt(unsafe { libc::kill(pid.0, signal) })?;
    Ok(())
}

/// Sends `signal` to the process group `pgid`.
pub fn kill_group(pgid: Pid, signal: i32) -> io::Result<()> {
    // SAFETY: killpg has no memory preconditions.
    cvt(unsafe { libc::killpg(pgid.0, signal) })?;
    Ok(())
}

/// A set of signals.
#[derive(Clone, Copy)]
pub struct SigSet(libc::sigset_t);

impl std::fmt::Debug for SigSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigSet")
    }
}

impl SigSet {
    /// The empty set. Fork-safe.
    #[must_use]
    pub fn empty() -> SigSet {
        let mut set = std::mem::MaybeUninit::uninit();
        // SAFETY: sigemptyset initialises the set it is given.
        unsafe { libc::sigemptyset(set.as_mut_ptr()) };
        // SAFETY: initialised just above.
        SigSet(unsafe { set.assume_init() })
    }

    /// The set of `signals`. Fork-safe.
    #[must_use]
    pub fn of(signals: &[i32]) -> SigSet {
        let mut set = SigSet::empty();
        for &s in signals {
            // SAFETY: `set.0` is initialised; an invalid number is ignored.
            unsafe { libc::sigaddset(&raw mut set.0, s) };
        }
        set
    }

    /// Replaces the calling thread's signal mask with this set. Fork-safe.
    pub fn set_mask(&self) -> io::Result<()> {
        // SAFETY: both pointers are valid for the call.
        let rc = unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &raw const self.0, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(())
    }

    /// Adds this set to the calling thread's blocked signals.
    pub fn block(&self) -> io::Result<()> {
        // SAFETY: both pointers are valid for the call.
        let rc = unsafe {
            libc::pthread_sigmask(libc::SIG_BLOCK, &raw const self.0, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(())
    }

    /// A non-blocking, close-on-exec signalfd for this set.
    pub fn signalfd(&self) -> io::Result<OwnedFd> {
        // SAFETY: `self.0` is a valid sigset for the call.
        let raw = cvt(unsafe {
            libc::signalfd(
                -1,
                &raw const self.0,
                libc::SFD_NONBLOCK | libc::SFD_CLOEXEC,
            )
        })?;
        // SAFETY: signalfd returned a fresh descriptor that we now own.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    }
}

/// Reads one pending signal from a non-blocking signalfd: its number and
/// the pid that sent it (for SIGCHLD: the child), or `None` when none is
/// pending.
pub fn read_signalfd(fd: RawFd) -> io::Result<Option<(i32, Pid)>> {
    // SAFETY: signalfd_siginfo is plain data; all-zero is a valid value.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: `info` is a writable buffer of `size` bytes.
    let n = unsafe { libc::read(fd, (&raw mut info).cast(), size) };
    if n == -1 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            io::ErrorKind::Interrupted => read_signalfd(fd),
            _ => Err(e),
        };
    }
    Ok(Some((
        info.ssi_signo as i32,
        Pid(info.ssi_pid as libc::pid_t),
    )))
}

/// Restores the default action of the crash signals (SIGSEGV, SIGBUS,
/// SIGILL, SIGFPE, SIGABRT), which the Rust runtime or a library may have
/// caught: a daemon that receives one dies of it. Fork-safe.
pub fn default_crash_signals() {
    for sig in [
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGILL,
        libc::SIGFPE,
        libc::SIGABRT,
    ] {
        // SAFETY: SIG_DFL is a valid disposition for these signals.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
}

/// Gives SIGPIPE its default action back (the Rust runtime ignores it), as
/// a program started from a shell expects. Fork-safe.
pub fn default_sigpipe() {
    // SAFETY: SIG_DFL is a valid disposition for SIGPIPE.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// The name of a signal (`"SIGKILL"`), or `"signal N"` for an unnamed one.
#[must_use]
pub fn signal_name(signal: i32) -> std::borrow::Cow<'static, str> {
    match nix::sys::signal::Signal::try_from(signal) {
        Ok(s) => s.as_str().into(),
        Err(_) => format!("signal {signal}").into(),
    }
}

/// Waits up to `d` for `signal` (which must be blocked) and consumes it.
/// Returns whether it arrived. Fork-safe.
pub fn wait_signal(signal: i32, d: Duration) -> bool {
    let set = SigSet::of(&[signal]);
    let deadline = monotonic_ns().saturating_add(d.as_nanos().min(u128::from(u64::MAX)) as u64);
    loop {
        let left = deadline.saturating_sub(monotonic_ns());
        let ts = libc::timespec {
            tv_sec: (left / 1_000_000_000) as libc::time_t,
            tv_nsec: (left % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: `set` and `ts` are valid; a NULL siginfo is allowed.
        let rc =
            unsafe { libc::sigtimedwait(&raw const set.0, std::ptr::null_mut(), &raw const ts) };
        if rc == signal {
            return true;
        }
        let errno = io::Error::last_os_error().raw_os_error();
        if errno == Some(libc::EAGAIN) || left == 0 {
            return false;
        }
        // EINTR (another signal was handled): wait out the rest.
    }
}

/// Consumes `signal` if it is pending (it must be blocked). Fork-safe.
#[must_use]
pub fn take_pending(signal: i32) -> bool {
    wait_signal(signal, Duration::ZERO)
}

/// Ends the process by `signal` with its default action (a core dump for
/// SIGSEGV/SIGABRT where enabled), as a crash would.
pub fn die_by(signal: i32) -> ! {
    // SAFETY: SIG_DFL is a valid disposition for any catchable signal.
    unsafe { libc::signal(signal, libc::SIG_DFL) };
    let _ = SigSet::empty().set_mask();
    // SAFETY: raise has no memory preconditions.
    unsafe { libc::raise(signal) };
    exit_now(128 + signal)
}

/// Restores the default action of `signal` (for SIGCHLD: children stay
/// zombies until reaped, rather than being reaped by the kernel as under
/// `SIG_IGN`). Fork-safe.
pub fn default_signal(signal: i32) {
    // SAFETY: SIG_DFL is a valid disposition for any catchable signal.
    unsafe { libc::signal(signal, libc::SIG_DFL) };
}

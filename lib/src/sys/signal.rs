//! Signals: the [`Signal`] type, sending them, their dispositions, the
//! blocked mask, signalfd, and waiting for one.
//!
//! Sets and the signalfd are nix's (`SigSet`, `SignalFd`: no allocation,
//! fork-safe); `sigtimedwait`, `signal(SIG_DFL)` and `raise` stay libc
//! calls: nix has no timed wait, and its `signal()` is `unsafe` for the
//! same reason ours is, with nothing to add.

use super::process::exit_now;
use super::{cvt, monotonic_ns, Pid};
use nix::sys::signal as nix_signal;
use nix::sys::signalfd::SfdFlags;
use std::borrow::Cow;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

/// A signal, by its number: one of the standard signals or a real-time one
/// (1 to 64, Linux's `_NSIG - 1`). Not nix's `Signal`: that enum names only
/// the standard signals, and a process can be killed by a real-time one,
/// which a wait status must still carry.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Signal(libc::c_int);

impl Signal {
    /// `SIGHUP`.
    pub const HUP: Signal = Signal(libc::SIGHUP);
    /// `SIGINT`.
    pub const INT: Signal = Signal(libc::SIGINT);
    /// `SIGQUIT`.
    pub const QUIT: Signal = Signal(libc::SIGQUIT);
    /// `SIGILL`.
    pub const ILL: Signal = Signal(libc::SIGILL);
    /// `SIGABRT`.
    pub const ABRT: Signal = Signal(libc::SIGABRT);
    /// `SIGBUS`.
    pub const BUS: Signal = Signal(libc::SIGBUS);
    /// `SIGFPE`.
    pub const FPE: Signal = Signal(libc::SIGFPE);
    /// `SIGKILL`.
    pub const KILL: Signal = Signal(libc::SIGKILL);
    /// `SIGUSR1`.
    pub const USR1: Signal = Signal(libc::SIGUSR1);
    /// `SIGSEGV`.
    pub const SEGV: Signal = Signal(libc::SIGSEGV);
    /// `SIGUSR2`.
    pub const USR2: Signal = Signal(libc::SIGUSR2);
    /// `SIGPIPE`.
    pub const PIPE: Signal = Signal(libc::SIGPIPE);
    /// `SIGALRM`.
    pub const ALRM: Signal = Signal(libc::SIGALRM);
    /// `SIGTERM`.
    pub const TERM: Signal = Signal(libc::SIGTERM);
    /// `SIGCHLD`.
    pub const CHLD: Signal = Signal(libc::SIGCHLD);
    /// `SIGCONT`.
    pub const CONT: Signal = Signal(libc::SIGCONT);
    /// `SIGSTOP`.
    pub const STOP: Signal = Signal(libc::SIGSTOP);

    /// The signal numbered `raw`, if there is one (1 to 64). Fork-safe.
    #[must_use]
    pub const fn from_raw(raw: libc::c_int) -> Option<Signal> {
        if raw >= 1 && raw <= 64 {
            Some(Signal(raw))
        } else {
            None
        }
    }

    /// A signal number the kernel reported (a wait status's: 1 to 64 by
    /// its contract). Fork-safe.
    pub(super) fn from_kernel(raw: libc::c_int) -> Signal {
        debug_assert!((1..=64).contains(&raw), "the kernel gave signal {raw}");
        Signal(raw)
    }

    /// The number the kernel's calls take. Fork-safe.
    #[must_use]
    pub const fn as_raw(self) -> libc::c_int {
        self.0
    }

    /// The standard signal named `name`, with or without the `SIG` prefix
    /// and in any case (`"SIGSEGV"`, `"SEGV"`, `"segv"`).
    #[must_use]
    pub fn from_name(name: &str) -> Option<Signal> {
        let upper = name.trim().to_ascii_uppercase();
        let full: Cow<'_, str> = if upper.starts_with("SIG") {
            upper.into()
        } else {
            format!("SIG{upper}").into()
        };
        full.parse::<nix_signal::Signal>()
            .ok()
            .map(|s| Signal(s as libc::c_int))
    }

    /// Its name (`"SIGKILL"`), or `"signal N"` for a real-time one.
    #[must_use]
    pub fn name(self) -> Cow<'static, str> {
        match self.to_nix() {
            Some(s) => s.as_str().into(),
            None => format!("signal {}", self.0).into(),
        }
    }

    /// Whether it is one of the standard signals, which have names (not a
    /// real-time one). Fork-safe.
    #[must_use]
    pub fn is_standard(self) -> bool {
        self.to_nix().is_some()
    }

    /// nix's name for it; `None` for a real-time signal. Fork-safe.
    fn to_nix(self) -> Option<nix_signal::Signal> {
        nix_signal::Signal::try_from(self.0).ok()
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl fmt::Debug for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// kill(2).
pub fn kill(pid: Pid, signal: Signal) -> io::Result<()> {
    // SAFETY: kill has no memory preconditions.
    cvt(unsafe { libc::kill(pid.as_raw(), signal.0) })?;
    Ok(())
}

/// Whether process `pid` exists (kill(2) with signal 0): `Ok(false)` for
/// `ESRCH`; `EPERM` (it exists, another user's) is `Ok(true)`.
pub fn exists(pid: Pid) -> io::Result<bool> {
    // SAFETY: signal 0 only checks that the process can be signalled.
    match cvt(unsafe { libc::kill(pid.as_raw(), 0) }) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(false),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(true),
        Err(e) => Err(e),
    }
}

/// Sends `signal` to the process group `pgid`.
pub fn kill_group(pgid: Pid, signal: Signal) -> io::Result<()> {
    // SAFETY: killpg has no memory preconditions.
    cvt(unsafe { libc::killpg(pgid.as_raw(), signal.0) })?;
    Ok(())
}

/// A set of signals (nix's, which names only the standard signals: a
/// real-time one is never masked here). Fork-safe throughout.
#[derive(Clone, Copy, Debug)]
pub struct SigSet(nix_signal::SigSet);

impl SigSet {
    /// The empty set. Fork-safe.
    #[must_use]
    pub fn empty() -> SigSet {
        SigSet(nix_signal::SigSet::empty())
    }

    /// The set of `signals` (standard signals only; see [`SigSet`]).
    /// Fork-safe.
    #[must_use]
    pub fn of(signals: &[Signal]) -> SigSet {
        let mut set = nix_signal::SigSet::empty();
        for s in signals {
            debug_assert!(s.to_nix().is_some(), "{s:?} cannot be masked");
            if let Some(s) = s.to_nix() {
                set.add(s);
            }
        }
        SigSet(set)
    }

    /// Replaces the calling thread's signal mask with this set. Fork-safe.
    pub fn set_mask(&self) -> io::Result<()> {
        Ok(self.0.thread_set_mask()?)
    }

    /// Adds this set to the calling thread's blocked signals. Fork-safe.
    pub fn block(&self) -> io::Result<()> {
        Ok(self.0.thread_block()?)
    }

    /// A non-blocking, close-on-exec signalfd for this set.
    pub fn signalfd(&self) -> io::Result<SignalFd> {
        let flags = SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC;
        Ok(SignalFd(nix::sys::signalfd::SignalFd::with_flags(
            &self.0, flags,
        )?))
    }
}

/// A non-blocking signalfd (nix's): the blocked signals of its set, read
/// one at a time in the poll loop.
#[derive(Debug)]
pub struct SignalFd(nix::sys::signalfd::SignalFd);

impl SignalFd {
    /// Reads one pending signal: which, and the pid that sent it (for
    /// SIGCHLD: the child; `None` from the kernel itself), or `None` when
    /// none is pending. Retries on `EINTR`.
    pub fn read(&self) -> io::Result<Option<(Signal, Option<Pid>)>> {
        loop {
            match self.0.read_signal() {
                Ok(None) => return Ok(None),
                Ok(Some(info)) => {
                    let signal = libc::c_int::try_from(info.ssi_signo)
                        .ok()
                        .and_then(Signal::from_raw)
                        .ok_or_else(|| io::Error::other("signalfd read a signal number past 64"))?;
                    let pid = libc::pid_t::try_from(info.ssi_pid)
                        .ok()
                        .and_then(Pid::from_raw);
                    return Ok(Some((signal, pid)));
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl AsFd for SignalFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for SignalFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
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

/// Waits up to `d` for `signal` (which must be blocked) and consumes it.
/// Returns whether it arrived. Fork-safe.
#[must_use = "whether the signal arrived"]
pub fn wait_signal(signal: Signal, d: Duration) -> bool {
    let set = SigSet::of(&[signal]);
    let deadline = monotonic_ns().saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    loop {
        let left = deadline.saturating_sub(monotonic_ns());
        let ts = libc::timespec {
            tv_sec: libc::time_t::try_from(left / 1_000_000_000).unwrap_or(libc::time_t::MAX),
            tv_nsec: libc::c_long::try_from(left % 1_000_000_000).unwrap_or(0),
        };
        // SAFETY: `set` and `ts` are valid; a NULL siginfo is allowed.
        let rc = unsafe { libc::sigtimedwait(set.0.as_ref(), std::ptr::null_mut(), &raw const ts) };
        if rc == signal.0 {
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
pub fn take_pending(signal: Signal) -> bool {
    wait_signal(signal, Duration::ZERO)
}

/// Ends the process by `signal` with its default action (a core dump for
/// SIGSEGV/SIGABRT where enabled), as a crash would.
pub fn die_by(signal: Signal) -> ! {
    default_signal(signal);
    let _ = SigSet::empty().set_mask();
    // SAFETY: raise has no memory preconditions.
    unsafe { libc::raise(signal.0) };
    exit_now(128 + signal.0)
}

/// Restores the default action of `signal` (for SIGCHLD: children stay
/// zombies until reaped, rather than being reaped by the kernel as under
/// `SIG_IGN`). Fork-safe.
pub fn default_signal(signal: Signal) {
    // SAFETY: SIG_DFL is a valid disposition for any catchable signal.
    unsafe { libc::signal(signal.0, libc::SIG_DFL) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A signal is a number from 1 to 64, named if standard, and parsed
    /// by name in any of the forms a config writes.
    #[test]
    fn a_signal_is_1_to_64_and_has_its_name() {
        assert_eq!(Signal::from_raw(0), None);
        assert_eq!(Signal::from_raw(65), None);
        assert_eq!(Signal::from_raw(-9), None);
        assert_eq!(Signal::from_raw(libc::SIGKILL), Some(Signal::KILL));
        assert_eq!(Signal::KILL.as_raw(), libc::SIGKILL);
        assert_eq!(Signal::SEGV.to_string(), "SIGSEGV");
        let realtime = Signal::from_raw(libc::SIGRTMIN() + 1).unwrap();
        assert!(!realtime.is_standard());
        assert_eq!(realtime.name(), format!("signal {}", libc::SIGRTMIN() + 1));
        for name in ["SIGTERM", "TERM", "term", " sigterm "] {
            assert_eq!(Signal::from_name(name), Some(Signal::TERM), "{name:?}");
        }
        assert_eq!(Signal::from_name("SIGNOPE"), None);
    }

    /// A blocked signal sent to this thread is read from a signalfd as
    /// that signal, from this process; then nothing is pending.
    #[test]
    fn a_signalfd_reads_the_signal_and_its_sender() {
        // SIGUSR2, blocked in this test's thread only: the harness's other
        // threads keep their masks, and `raise` targets this thread.
        let set = SigSet::of(&[Signal::USR2]);
        set.block().unwrap();
        let fd = set.signalfd().unwrap();
        assert_eq!(fd.read().unwrap(), None, "nothing pending yet");
        // SAFETY: raise has no memory preconditions; the signal is blocked.
        assert_eq!(unsafe { libc::raise(libc::SIGUSR2) }, 0);
        let (signal, from) = fd.read().unwrap().expect("the raised signal");
        assert_eq!(signal, Signal::USR2);
        assert_eq!(from, Some(super::super::getpid()));
        assert_eq!(fd.read().unwrap(), None, "read once");
        SigSet::empty().set_mask().unwrap();
    }
}

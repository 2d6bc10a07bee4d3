//! This process and its children: ids, name, session, parent-death
//! signal, reaping, exec and `_exit`.

use super::{cvt, cvt_r, Pid, Signal};
use std::ffi::CStr;
use std::io;

/// The calling process's id. Fork-safe.
#[inline]
#[must_use]
pub fn getpid() -> Pid {
    // SAFETY: getpid has no preconditions and cannot fail.
    Pid::from_kernel(unsafe { libc::getpid() })
}

/// The parent's id. Fork-safe.
#[must_use]
pub fn getppid() -> Pid {
    // SAFETY: getppid has no preconditions and cannot fail.
    Pid::from_kernel(unsafe { libc::getppid() })
}

/// `pidfd_open(2)`: a descriptor that becomes readable when process `pid`
/// ends (close-on-exec, as every pidfd). The pid of an unreaped child of
/// the caller cannot be reused, so for one the descriptor is race-free.
pub fn pidfd_open(pid: Pid) -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags, no memory.
    let raw = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) })?;
    let raw = i32::try_from(raw).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: pidfd_open returned a fresh descriptor that we now own.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
}

/// `_exit(2)`: ends the process without running destructors or atexit
/// handlers (which a forked child must not run). Fork-safe.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and never returns.
    unsafe { libc::_exit(code) }
}

/// How many threads this process has (from `/proc/self/status`), if known.
#[must_use]
pub fn thread_count() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Threads:"))?;
    line["Threads:".len()..].trim().parse().ok()
}

/// Asks the kernel to send `signal` to this process when its parent dies.
/// Fork-safe.
pub fn set_parent_death_signal(signal: Signal) -> io::Result<()> {
    // A signal number is 1 to 64: it fits any unsigned long.
    let signal = libc::c_ulong::from(signal.as_raw().unsigned_abs());
    // SAFETY: PR_SET_PDEATHSIG takes a signal number.
    cvt(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal, 0, 0, 0) })?;
    Ok(())
}

/// Makes this process a child subreaper: orphans below it are reparented to
/// it rather than to init.
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes a boolean.
    cvt(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) })?;
    Ok(())
}

/// Sets the thread's name (`/proc/PID/comm`, 15 bytes kept). Fork-safe.
pub fn set_comm(name: &[u8]) {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name[..n]);
    // SAFETY: `buf` is NUL-terminated and lives through the call.
    unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

/// setsid(2): a new session and process group led by this process.
/// Fork-safe.
pub fn setsid() -> io::Result<()> {
    // SAFETY: setsid has no memory preconditions.
    cvt(unsafe { libc::setsid() })?;
    Ok(())
}

/// How a child ended, as waitpid reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStatus {
    /// Exited with this code.
    Exited(i32),
    /// Killed by this signal; `core` if it dumped core.
    Signaled {
        /// The signal.
        signal: Signal,
        /// Whether a core was dumped.
        core: bool,
    },
}

/// `waitpid(-1, WNOHANG)`: one ended child, or `None` when none is left to
/// reap right now (including when there are no children at all).
pub fn reap_one() -> io::Result<Option<(Pid, WaitStatus)>> {
    let mut status = 0;
    // SAFETY: `status` is a valid writable int.
    let pid = match cvt_r(|| unsafe { libc::waitpid(-1, &raw mut status, libc::WNOHANG) }) {
        Ok(p) => p,
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => return Ok(None),
        Err(e) => return Err(e),
    };
    if pid == 0 {
        return Ok(None);
    }
    let ws = if libc::WIFEXITED(status) {
        WaitStatus::Exited(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        WaitStatus::Signaled {
            signal: Signal::from_kernel(libc::WTERMSIG(status)),
            core: libc::WCOREDUMP(status),
        }
    } else {
        // Stopped/continued are not requested (no WUNTRACED/WCONTINUED).
        return reap_one();
    };
    Ok(Some((Pid::from_kernel(pid), ws)))
}

/// `waitid(P_PID, pid, WEXITED | WNOHANG)`: the child's end if it has ended
/// and was not reaped yet, else `None` (also for a pid that is not our
/// child). Unlike `waitpid(-1)`, the kernel finds it without walking every
/// child of the caller.
pub fn reap_pid(pid: Pid) -> io::Result<Option<WaitStatus>> {
    wait_id(pid, libc::WNOHANG)
}

/// `waitid(P_PID, pid, WEXITED)`: waits for the child to end and reaps it;
/// `None` if it is not (or no longer) our child.
pub fn wait_pid(pid: Pid) -> io::Result<Option<WaitStatus>> {
    wait_id(pid, 0)
}

/// `waitid(P_PID, pid, WEXITED | flags)`: how the child ended, or `None`
/// if it is not our child (or, with `WNOHANG`, has not ended). Fork-safe.
fn wait_id(pid: Pid, flags: libc::c_int) -> io::Result<Option<WaitStatus>> {
    // SAFETY: siginfo_t is plain data; all-zero is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid siginfo_t to fill.
    let rc = cvt_r(|| unsafe {
        libc::waitid(
            libc::P_PID,
            pid.as_u32(),
            &raw mut info,
            libc::WEXITED | flags,
        )
    });
    match rc {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => return Ok(None),
        Err(e) => return Err(e),
    }
    // SAFETY: waitid filled `info` for a child (or, under WNOHANG, left
    // si_pid 0).
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(match info.si_code {
        libc::CLD_EXITED => WaitStatus::Exited(status),
        code => WaitStatus::Signaled {
            signal: Signal::from_kernel(status),
            core: code == libc::CLD_DUMPED,
        },
    }))
}

/// execv(2) with a prepared, NUL-terminated argument vector and environment.
/// Returns only on failure. Fork-safe.
#[must_use]
pub fn exec(path: &CStr, argv: &[*const libc::c_char], envp: &[*const libc::c_char]) -> io::Error {
    debug_assert!(argv.last().is_some_and(|p| p.is_null()));
    debug_assert!(envp.last().is_some_and(|p| p.is_null()));
    // SAFETY: argv and envp are NULL-terminated arrays of C strings that
    // outlive the call (checked above in debug builds; built by the caller).
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    io::Error::last_os_error()
}

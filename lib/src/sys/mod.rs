//! The only place that calls libc directly: thin, checked wrappers.
//!
//! Every function here turns `-1`/errno into [`io::Result`] through [`cvt`]
//! and keeps its `unsafe` to the one call it wraps. Functions marked
//! *fork-safe* neither allocate nor lock, so a freshly forked child may call
//! them before it is settled.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::time::Duration;

pub mod cgroup;
pub mod cred;
pub mod fork;
pub mod futex;
pub mod mem;
pub mod mutex;
pub mod proc;
pub mod title;

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
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
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

/// The calling process's id. Fork-safe.
#[inline]
pub fn getpid() -> Pid {
    // SAFETY: getpid has no preconditions and cannot fail.
    Pid(unsafe { libc::getpid() })
}

/// The parent's id. Fork-safe.
pub fn getppid() -> Pid {
    // SAFETY: getppid has no preconditions and cannot fail.
    Pid(unsafe { libc::getppid() })
}

/// Monotonic clock in nanoseconds (vDSO, no syscall). Fork-safe.
#[inline]
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Wall clock in nanoseconds since the epoch. Fork-safe.
#[inline]
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
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

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

/// `_exit(2)`: ends the process without running destructors or atexit
/// handlers (which a forked child must not run). Fork-safe.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and never returns.
    unsafe { libc::_exit(code) }
}

/// Writes all of `buf` to `fd`, retrying on EINTR. Fork-safe.
pub fn write_all(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is a valid readable slice of `buf.len()` bytes.
        let n = cvt_r(|| unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) })?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// flock(LOCK_EX | LOCK_NB): whether the lock was taken.
pub fn try_lock_exclusive(fd: RawFd) -> io::Result<bool> {
    // SAFETY: flock has no memory preconditions.
    match cvt_r(|| unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) }) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

/// The soft limit on open descriptors the root started with, before
/// [`raise_fd_limit`]: programs it execs get it back (a raised limit breaks
/// programs that use `select`).
static ORIGINAL_FD_LIMIT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Raises the soft limit on open descriptors to the hard limit (the root
/// holds descriptors for regions, pipes and connections). Returns the new
/// soft limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit to fill.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    let _ = ORIGINAL_FD_LIMIT.compare_exchange(
        0,
        lim.rlim_cur,
        std::sync::atomic::Ordering::Relaxed,
        std::sync::atomic::Ordering::Relaxed,
    );
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit; raising the soft limit up to the
        // hard one needs no privilege.
        cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) })?;
    }
    Ok(lim.rlim_cur)
}

/// Gives back the soft descriptor limit the process started with (see
/// [`raise_fd_limit`]). Fork-safe.
pub fn restore_fd_limit() {
    let original = ORIGINAL_FD_LIMIT.load(std::sync::atomic::Ordering::Relaxed);
    if original == 0 {
        return;
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit to fill, then to set; lowering the
    // soft limit needs no privilege.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = (original as libc::rlim_t).min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// How many threads this process has (from `/proc/self/status`), if known.
pub fn thread_count() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Threads:"))?;
    line["Threads:".len()..].trim().parse().ok()
}

/// Closes `fd`. Fork-safe.
pub fn close(fd: RawFd) {
    // SAFETY: the caller gives up `fd`; close has no memory preconditions.
    unsafe { libc::close(fd) };
}

/// read(2) into `buf`, retrying on EINTR; returns 0 at end of file.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid writable slice of `buf.len()` bytes.
    let n = cvt_r(|| unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })?;
    Ok(n as usize)
}

/// A pipe whose both ends are close-on-exec (and non-blocking if asked).
pub fn pipe_cloexec(nonblocking: bool) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    let flags = libc::O_CLOEXEC | if nonblocking { libc::O_NONBLOCK } else { 0 };
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), flags) })?;
    // SAFETY: pipe2 succeeded, so both are fresh descriptors we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Closes every descriptor from `first` up. Fork-safe.
pub fn close_from(first: RawFd) -> io::Result<()> {
    // SAFETY: close_range only closes descriptors; the caller owns none of
    // them past `first` any more (that is the point of calling it).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first as u32, u32::MAX, 0u32) } as i32;
    match cvt(rc) {
        Ok(_) => Ok(()),
        // Before Linux 5.9 (or under a seccomp filter without it): close
        // one by one, up to the descriptor limit.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM)) => {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: `lim` is a valid rlimit to fill.
            cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
            let last = lim.rlim_cur.min(1 << 20) as RawFd;
            for fd in first..last {
                close(fd);
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// dup2(2): makes `to` a copy of `from` (without close-on-exec). Fork-safe.
pub fn dup2(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: dup2 only manipulates the descriptor table.
    cvt_r(|| unsafe { libc::dup2(from, to) })?;
    Ok(())
}

/// Duplicates `fd` onto the lowest free number >= `min`, close-on-exec.
/// Fork-safe.
pub fn dup_at_least(fd: RawFd, min: RawFd) -> io::Result<RawFd> {
    // SAFETY: F_DUPFD_CLOEXEC only manipulates the descriptor table.
    cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) })
}

/// Sets or clears close-on-exec on `fd`. Fork-safe.
pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    let flags = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: F_SETFD only changes the descriptor's flags.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, flags) })?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Shared memory
// ---------------------------------------------------------------------------

/// An anonymous memory file (memfd) of `size` bytes, with every block
/// allocated up front (so a later page fault cannot SIGBUS on a full tmpfs)
/// and sealed against shrinking and growing (so no process can truncate
/// the state out from under the others).
pub fn memfd_sealed(name: &CStr, size: u64) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid C string; flags are valid.
    let raw = cvt(unsafe {
        libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
    })?;
    // SAFETY: memfd_create returned a fresh descriptor that we now own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    allocate(fd.as_raw_fd(), 0, size)?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: F_ADD_SEALS on a memfd created with MFD_ALLOW_SEALING.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) })?;
    Ok(fd)
}

/// A shared-memory file at `path`, created if missing, of exactly `size`
/// bytes, every block allocated. Used for regions that must survive the
/// root itself (`state_dir`).
pub fn file_region(path: &std::path::Path, size: u64) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)?;
    let len = file.metadata()?.len();
    if len != size {
        if len != 0 {
            // The daemon's `memory` changed: its state keeps what fits (the
            // layout checks of typed state and checkpoints will tell).
            tracing::warn!(
                file = %path.display(),
                was = len,
                now = size,
                "region file resized: the daemon's memory setting changed"
            );
        }
        file.set_len(size)?;
    }
    allocate(file.as_raw_fd(), 0, size)?;
    Ok(file.into())
}

/// fallocate(2) mode 0: allocates the blocks of `[offset, offset+len)`.
pub fn allocate(fd: RawFd, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: fallocate only operates on the file behind `fd`.
    cvt_r(|| unsafe { libc::fallocate(fd, 0, offset as i64, len as i64) })?;
    Ok(())
}

/// Discards the contents of `[offset, offset+len)` (they read back as
/// zeroes) and allocates the blocks again.
pub fn zero_range(fd: RawFd, offset: u64, len: u64) -> io::Result<()> {
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: fallocate only operates on the file behind `fd`.
    cvt_r(|| unsafe { libc::fallocate(fd, mode, offset as i64, len as i64) })?;
    allocate(fd, offset, len)
}

/// Opens the file behind `fd` again, read-only: a new open file description
/// whose mappings can never be made writable (mprotect fails with EACCES).
pub fn reopen_read_only(fd: RawFd) -> io::Result<OwnedFd> {
    let mut path = *b"/proc/self/fd/\0\0\0\0\0\0\0\0\0\0\0\0";
    let digits = fd.to_string();
    path[14..14 + digits.len()].copy_from_slice(digits.as_bytes());
    // SAFETY: `path` is NUL-terminated (the buffer ends in NULs and an i32
    // has at most 10 digits).
    let raw = cvt(unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) })?;
    // SAFETY: open returned a fresh descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Reserves `len` bytes of address space with no access (PROT_NONE) and no
/// memory behind them; regions are mapped into it with [`map_fixed`], and
/// what stays unmapped between them is a guard.
pub fn reserve(len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: a fresh anonymous PROT_NONE mapping touches no existing memory.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(NonNull::new(p.cast()).expect("mmap returned NULL"))
}

/// Access to a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// PROT_READ.
    ReadOnly,
    /// PROT_READ | PROT_WRITE.
    ReadWrite,
}

impl Access {
    fn prot(self) -> i32 {
        match self {
            Access::ReadOnly => libc::PROT_READ,
            Access::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
        }
    }
}

/// Maps `len` bytes of `fd` from `offset` (page-aligned) shared at exactly
/// `addr`, replacing whatever was mapped there. Fork-safe.
///
/// # Safety
/// `[addr, addr+len)` must lie inside a reservation of this process made by
/// [`reserve`], and no live Rust reference may point into it (the old
/// contents are replaced).
pub unsafe fn map_fixed(
    addr: NonNull<u8>,
    len: usize,
    fd: RawFd,
    offset: u64,
    access: Access,
) -> io::Result<()> {
    // SAFETY: the caller guarantees the range is ours to replace.
    let p = unsafe {
        libc::mmap(
            addr.as_ptr().cast(),
            len,
            access.prot(),
            libc::MAP_SHARED | libc::MAP_FIXED,
            fd,
            offset as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Unmaps `[addr, addr+len)`.
///
/// # Safety
/// No live reference may point into the range.
pub unsafe fn unmap(addr: NonNull<u8>, len: usize) -> io::Result<()> {
    // SAFETY: the caller guarantees nothing refers into the range.
    cvt(unsafe { libc::munmap(addr.as_ptr().cast(), len) })?;
    Ok(())
}

/// Gives SIGPIPE its default action back (the Rust runtime ignores it), as
/// a program started from a shell expects. Fork-safe.
pub fn default_sigpipe() {
    // SAFETY: SIG_DFL is a valid disposition for SIGPIPE.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// mprotect(2) on `[addr, addr+len)`.
///
/// # Safety
/// The range must be mapped by this process, and removing access must not
/// invalidate live references into it.
pub unsafe fn protect(addr: NonNull<u8>, len: usize, access: Access) -> io::Result<()> {
    // SAFETY: the caller guarantees the range and reference rules.
    cvt(unsafe { libc::mprotect(addr.as_ptr().cast(), len, access.prot()) })?;
    Ok(())
}

/// The system's page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

// ---------------------------------------------------------------------------
// Processes and signals
// ---------------------------------------------------------------------------

/// Asks the kernel to send `signal` to this process when its parent dies.
/// Fork-safe.
pub fn set_parent_death_signal(signal: i32) -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number.
    cvt(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) })?;
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
    pub fn empty() -> SigSet {
        let mut set = std::mem::MaybeUninit::uninit();
        // SAFETY: sigemptyset initialises the set it is given.
        unsafe { libc::sigemptyset(set.as_mut_ptr()) };
        // SAFETY: initialised just above.
        SigSet(unsafe { set.assume_init() })
    }

    /// The set of `signals`. Fork-safe.
    pub fn of(signals: &[i32]) -> SigSet {
        let mut set = SigSet::empty();
        for &s in signals {
            // SAFETY: `set.0` is initialised; an invalid number is ignored.
            unsafe { libc::sigaddset(&mut set.0, s) };
        }
        set
    }

    /// Replaces the calling thread's signal mask with this set. Fork-safe.
    pub fn set_mask(&self) -> io::Result<()> {
        // SAFETY: both pointers are valid for the call.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(())
    }

    /// Adds this set to the calling thread's blocked signals.
    pub fn block(&self) -> io::Result<()> {
        // SAFETY: both pointers are valid for the call.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &self.0, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(())
    }

    /// A non-blocking, close-on-exec signalfd for this set.
    pub fn signalfd(&self) -> io::Result<OwnedFd> {
        // SAFETY: `self.0` is a valid sigset for the call.
        let raw =
            cvt(unsafe { libc::signalfd(-1, &self.0, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) })?;
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
    let n = unsafe { libc::read(fd, (&mut info as *mut libc::signalfd_siginfo).cast(), size) };
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

/// `waitid(P_PID, pid, WEXITED | WNOHANG)`: the child's end if it has ended
/// and was not reaped yet, else `None` (also for a pid that is not our
/// child). Unlike `waitpid(-1)`, the kernel finds it without walking every
/// child of the caller.
pub fn reap_pid(pid: Pid) -> io::Result<Option<WaitStatus>> {
    // SAFETY: siginfo_t is plain data; all-zero is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid siginfo_t to fill.
    let rc = cvt_r(|| unsafe {
        libc::waitid(
            libc::P_PID,
            pid.0 as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        )
    });
    match rc {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => return Ok(None),
        Err(e) => return Err(e),
    }
    // SAFETY: waitid filled `info` for a child (or left si_pid 0).
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(match info.si_code {
        libc::CLD_EXITED => WaitStatus::Exited(status),
        libc::CLD_DUMPED => WaitStatus::Signaled {
            signal: status,
            core: true,
        },
        _ => WaitStatus::Signaled {
            signal: status,
            core: false,
        },
    }))
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

/// How a child ended, as waitpid reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStatus {
    /// Exited with this code.
    Exited(i32),
    /// Killed by this signal; `core` if it dumped core.
    Signaled {
        /// The signal number.
        signal: i32,
        /// Whether a core was dumped.
        core: bool,
    },
}

/// `waitpid(-1, WNOHANG)`: one ended child, or `None` when none is left to
/// reap right now (including when there are no children at all).
pub fn reap_one() -> io::Result<Option<(Pid, WaitStatus)>> {
    let mut status = 0;
    // SAFETY: `status` is a valid writable int.
    let pid = match cvt_r(|| unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) }) {
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
            signal: libc::WTERMSIG(status),
            core: libc::WCOREDUMP(status),
        }
    } else {
        // Stopped/continued are not requested (no WUNTRACED/WCONTINUED).
        return reap_one();
    };
    Ok(Some((Pid(pid), ws)))
}

/// The name of a signal (`"SIGKILL"`), or `"signal N"` for an unnamed one.
pub fn signal_name(signal: i32) -> std::borrow::Cow<'static, str> {
    match nix::sys::signal::Signal::try_from(signal) {
        Ok(s) => s.as_str().into(),
        Err(_) => format!("signal {signal}").into(),
    }
}

/// execv(2) with a prepared, NUL-terminated argument vector and environment.
/// Returns only on failure. Fork-safe.
pub fn exec(path: &CStr, argv: &[*const libc::c_char], envp: &[*const libc::c_char]) -> io::Error {
    debug_assert!(argv.last().is_some_and(|p| p.is_null()));
    debug_assert!(envp.last().is_some_and(|p| p.is_null()));
    // SAFETY: argv and envp are NULL-terminated arrays of C strings that
    // outlive the call (checked above in debug builds; built by the caller).
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    io::Error::last_os_error()
}

// ---------------------------------------------------------------------------
// epoll
// ---------------------------------------------------------------------------

/// An epoll instance.
#[derive(Debug)]
pub struct Epoll(OwnedFd);

impl Epoll {
    /// A new close-on-exec epoll instance.
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 has no memory preconditions.
        let raw = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: a fresh descriptor that we now own.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(raw) }))
    }

    /// Watches `fd` for readability (and hang-up), reporting `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, false)
    }

    /// Changes what `fd` is watched for: readability, or writability when
    /// `writable` (for a reply that did not fit in the socket buffer).
    pub fn modify(&self, fd: RawFd, token: u64, writable: bool) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, writable)
    }

    fn ctl(&self, op: i32, fd: RawFd, token: u64, writable: bool) -> io::Result<()> {
        let events = if writable {
            libc::EPOLLOUT
        } else {
            libc::EPOLLIN | libc::EPOLLRDHUP
        };
        let mut ev = libc::epoll_event {
            events: events as u32,
            u64: token,
        };
        // SAFETY: `ev` is valid for the call.
        cvt(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut ev) })?;
        Ok(())
    }

    /// Stops watching `fd`.
    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        // SAFETY: a NULL event is allowed for EPOLL_CTL_DEL.
        cvt(unsafe {
            libc::epoll_ctl(
                self.0.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        })?;
        Ok(())
    }

    /// Waits for events, at most `timeout` (`None`: forever). Returns the
    /// tokens of ready descriptors in `out` (cleared first). EINTR gives an
    /// empty result.
    pub fn wait(&self, out: &mut Vec<u64>, timeout: Option<Duration>) -> io::Result<()> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
        let ms = match timeout {
            None => -1,
            // Round up, so a deadline 0.3 ms away does not spin at 0 ms.
            Some(d) => d.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32,
        };
        out.clear();
        // SAFETY: `events` is a writable array of 64 entries.
        let n = unsafe { libc::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), 64, ms) };
        if n == -1 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        out.extend(events[..n as usize].iter().map(|e| e.u64));
        Ok(())
    }
}

/// Waits up to `d` for `signal` (which must be blocked) and consumes it.
/// Returns whether it arrived. Fork-safe.
pub fn wait_signal(signal: i32, d: Duration) -> bool {
    let set = SigSet::of(&[signal]);
    let deadline = monotonic_ns().saturating_add(d.as_nanos().min(u64::MAX as u128) as u64);
    loop {
        let left = deadline.saturating_sub(monotonic_ns());
        let ts = libc::timespec {
            tv_sec: (left / 1_000_000_000) as libc::time_t,
            tv_nsec: (left % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: `set` and `ts` are valid; a NULL siginfo is allowed.
        let rc = unsafe { libc::sigtimedwait(&set.0, std::ptr::null_mut(), &ts) };
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
/// SIG_IGN). Fork-safe.
pub fn default_signal(signal: i32) {
    // SAFETY: SIG_DFL is a valid disposition for any catchable signal.
    unsafe { libc::signal(signal, libc::SIG_DFL) };
}

/// `waitid(P_PID, pid, WEXITED)`: waits for the child to end and reaps it;
/// `None` if it is not (or no longer) our child.
pub fn wait_pid(pid: Pid) -> io::Result<Option<WaitStatus>> {
    // SAFETY: siginfo_t is plain data; all-zero is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid siginfo_t to fill.
    let rc = cvt_r(|| unsafe {
        libc::waitid(libc::P_PID, pid.0 as libc::id_t, &mut info, libc::WEXITED)
    });
    match rc {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => return Ok(None),
        Err(e) => return Err(e),
    }
    // SAFETY: waitid filled `info` for an ended child.
    let status = unsafe { info.si_status() };
    Ok(Some(match info.si_code {
        libc::CLD_EXITED => WaitStatus::Exited(status),
        code => WaitStatus::Signaled {
            signal: status,
            core: code == libc::CLD_DUMPED,
        },
    }))
}

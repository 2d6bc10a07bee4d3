//! Descriptors: reading, writing, duplicating, closing, locking, and the
//! process's limit on how many it may hold.
//!
//! A descriptor that is borrowed is a [`BorrowedFd`], one that is handed
//! over an [`OwnedFd`]. The calls that take a [`RawFd`] are the forked
//! child's descriptor shuffle ([`dup2`], [`dup_at_least`], [`set_cloexec`],
//! [`close`], [`close_between`], [`close_from`]): they move numbers the
//! exec'd program or the daemon receives at fixed places (fd 0–2, 3, ...),
//! which no Rust value owns there (an `OwnedFd` would close on a drop the
//! child never runs).

use super::{cvt, cvt_r};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// Writes all of `buf` to `fd`, retrying on EINTR. Fork-safe.
pub fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    while !buf.is_empty() {
        // SAFETY: `buf` is a valid readable slice of `buf.len()` bytes.
        let n = cvt_r(|| unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) })?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[super::count(n)..];
    }
    Ok(())
}

/// `flock(LOCK_EX | LOCK_NB)`: whether the lock was taken.
pub fn try_lock_exclusive(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: flock has no memory preconditions.
    match cvt_r(|| unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }) {
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
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) })?;
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
        cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) })?;
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
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) == 0 {
            lim.rlim_cur = (original as libc::rlim_t).min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim);
        }
    }
}

/// Closes `fd`, a number no Rust value owns (see the module's note).
/// Fork-safe.
pub fn close(fd: RawFd) {
    // SAFETY: the caller gives up `fd`; close has no memory preconditions.
    unsafe { libc::close(fd) };
}

/// read(2) into `buf`, retrying on EINTR; returns 0 at end of file.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid writable slice of `buf.len()` bytes.
    let n = cvt_r(|| unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })?;
    Ok(super::count(n))
}

/// A pipe whose both ends are close-on-exec (and non-blocking if asked).
pub fn pipe_cloexec(nonblocking: bool) -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::fcntl::OFlag;
    let mut flags = OFlag::O_CLOEXEC;
    flags.set(OFlag::O_NONBLOCK, nonblocking);
    Ok(nix::unistd::pipe2(flags)?)
}

/// Closes every descriptor from `first` up. Fork-safe. Numbers: what is
/// closed is a range of the table, owned by no value.
pub fn close_from(first: RawFd) -> io::Result<()> {
    close_between(first, RawFd::MAX)
}

/// Closes every descriptor from `first` to `last`, both included.
/// Fork-safe. Numbers: a range of the table, owned by no value.
pub fn close_between(first: RawFd, last: RawFd) -> io::Result<()> {
    if last < first {
        return Ok(());
    }
    // SAFETY: close_range only closes descriptors; the caller owns none of
    // them in the range any more (that is the point of calling it).
    // Descriptor numbers are >= 0: as unsigned, the same numbers.
    let (from, to) = (first.unsigned_abs(), last.unsigned_abs());
    // SAFETY: as above.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, from, to, 0u32) };
    match cvt(rc) {
        Ok(_) => Ok(()),
        // Before Linux 5.9 (or under a seccomp filter without it): close
        // one by one, up to the descriptor limit.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: `lim` is a valid rlimit to fill.
            cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) })?;
            let end = (lim.rlim_cur.min(1 << 20) as RawFd).min(last.saturating_add(1));
            for fd in first..end {
                close(fd);
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Gives this process a descriptor table of its own, holding copies of the
/// descriptors below `end` only (`close_range(end, ~0,
/// CLOSE_RANGE_UNSHARE)`): a child created sharing its parent's table
/// (`CLONE_FILES`) leaves it without copying, or closing one by one, the
/// descriptors it does not keep. In a process whose table is its own it
/// closes every descriptor from `end` up. Fork-safe.
pub fn unshare_below(end: RawFd) -> io::Result<()> {
    // Descriptor numbers are >= 0: as unsigned, the same numbers.
    let end = end.unsigned_abs();
    // SAFETY: close_range only copies and closes descriptors; the caller
    // keeps none at `end` or above.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            end,
            u32::MAX,
            libc::CLOSE_RANGE_UNSHARE,
        )
    };
    cvt(rc).map(drop)
}

/// Whether `fd` is an open descriptor of this process. Fork-safe.
#[must_use]
pub fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads a descriptor's flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    flags >= 0
}

/// Opens `/dev/null` on whichever of 0, 1 and 2 is closed (a process
/// started with a standard descriptor closed), so no descriptor opened
/// later lands there, where a forked child would keep it as its stdin,
/// stdout or stderr. Numbers: the standard descriptors, owned by no value.
pub fn open_std_fds() -> io::Result<()> {
    for fd in 0..=2 {
        if is_open(fd) {
            continue;
        }
        let null = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")?;
        // The lowest free number, which is `fd` (those below are open);
        // kept open for the process's life, as an inherited one would be.
        let got = std::os::fd::IntoRawFd::into_raw_fd(null);
        if got != fd {
            dup2(got, fd)?;
            close(got);
        }
        set_cloexec(fd, false)?;
    }
    Ok(())
}

/// dup3(2) with `O_CLOEXEC`: makes `to` a copy of `from`, closing what
/// `to` was, in one step (never a moment without a descriptor at `to`).
pub fn dup_onto(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: dup3 only manipulates the descriptor table.
    cvt_r(|| unsafe { libc::dup3(from, to, libc::O_CLOEXEC) })?;
    Ok(())
}

/// Makes reads and writes on `fd`'s open file description non-blocking.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL only read and change the file status flags.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

/// dup2(2): makes `to` a copy of `from` (without close-on-exec). Fork-safe.
/// Numbers: `to` is the place the exec'd program or daemon finds it.
pub fn dup2(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: dup2 only manipulates the descriptor table.
    cvt_r(|| unsafe { libc::dup2(from, to) })?;
    Ok(())
}

/// Duplicates `fd` onto the lowest free number >= `min`, close-on-exec.
/// Fork-safe. Numbers: the copy is a stepping stone of the child's
/// shuffle, moved again by [`dup2`] and never closed by a drop.
pub fn dup_at_least(fd: RawFd, min: RawFd) -> io::Result<RawFd> {
    // SAFETY: F_DUPFD_CLOEXEC only manipulates the descriptor table.
    cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) })
}

/// Sets or clears close-on-exec on `fd`. Fork-safe. A number: one the
/// child's shuffle placed, or one inherited at a documented place.
pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    let flags = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: F_SETFD only changes the descriptor's flags.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, flags) })?;
    Ok(())
}

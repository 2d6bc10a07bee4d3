//! Futexes on 32-bit words in shared memory.
//!
//! Both operations are the shared (not `FUTEX_PRIVATE_FLAG`) variants: the
//! word may lie in memory that other processes map, at other addresses, and
//! the kernel keys the wait queue on the underlying page.

use super::cvt;
use std::io;
use std::ptr;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// `FUTEX_WAIT`: sleeps while `word` holds `expected`, at most `timeout`
/// (`None`: until woken). Returns at once with `EAGAIN` if the word already
/// differs; `EINTR` and `ETIMEDOUT` are errors too, and every one of them
/// means "re-check the word". Fork-safe.
#[inline]
pub fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> io::Result<()> {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: libc::time_t::from(i32::try_from(d.as_secs()).unwrap_or(i32::MAX)),
        tv_nsec: libc::c_long::from(d.subsec_nanos()),
    });
    let tsp = ts
        .as_ref()
        .map_or(ptr::null(), ptr::from_ref::<libc::timespec>);
    // SAFETY: `word` is an aligned 32-bit atomic valid for the call;
    // FUTEX_WAIT only reads it and sleeps; `tsp` is null or points to a
    // timespec that lives through the call.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr().cast_const(),
            libc::FUTEX_WAIT,
            expected,
            tsp,
            ptr::null::<u32>(),
            0u32,
        )
    })?;
    Ok(())
}

/// `FUTEX_WAKE`: wakes up to `n` waiters on `word` (`i32::MAX`: all);
/// returns how many were woken. Fork-safe.
#[inline]
pub fn wake(word: &AtomicU32, n: i32) -> io::Result<usize> {
    // SAFETY: `word` is an aligned 32-bit atomic valid for the call;
    // FUTEX_WAKE does not touch the word or the unused arguments.
    let woken = cvt(unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr().cast_const(),
            libc::FUTEX_WAKE,
            n,
            ptr::null::<libc::timespec>(),
            ptr::null::<u32>(),
            0u32,
        )
    })?;
    // A count of woken waiters, >= 0.
    Ok(usize::try_from(woken).unwrap_or(0))
}

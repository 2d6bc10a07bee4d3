//! Process-shared, robust pthread mutexes: the calls behind
//! [`crate::mutex::RobustMutex`].
//!
//! pthread functions return the error number itself (0 on success) rather
//! than `-1` and errno, so they go through [`check`] instead of
//! [`super::cvt`]. Every function takes the mutex by raw pointer: it lives in
//! shared memory that several processes map, and its owner type states when
//! it is initialised.

use std::io;
use std::time::Duration;

/// Turns a pthread return code (0, or an error number) into `io::Result`.
/// Fork-safe.
#[inline]
fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Initialises the mutex at `m` unlocked, as a process-shared
/// (`PTHREAD_PROCESS_SHARED`), robust (`PTHREAD_MUTEX_ROBUST`),
/// error-checking (`PTHREAD_MUTEX_ERRORCHECK`) mutex. Fork-safe.
///
/// # Safety
/// `m` must be valid for writes of a `pthread_mutex_t` and aligned for it,
/// and no thread in any process may be using a mutex at `m` (holding it or
/// waiting on it) while it is (re-)initialised.
pub unsafe fn init_robust_shared(m: *mut libc::pthread_mutex_t) -> io::Result<()> {
    let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
    let a = attr.as_mut_ptr();
    // SAFETY: `attr` is local storage for pthread_mutexattr_init to fill.
    check(unsafe { libc::pthread_mutexattr_init(a) })?;
    // SAFETY: each call gets the attribute object initialised just above;
    // `m` is valid for writes and not in use (caller's contract).
    let r = unsafe {
        check(libc::pthread_mutexattr_setpshared(
            a,
            libc::PTHREAD_PROCESS_SHARED,
        ))
        .and_then(|()| {
            check(libc::pthread_mutexattr_setrobust(
                a,
                libc::PTHREAD_MUTEX_ROBUST,
            ))
        })
        .and_then(|()| {
            check(libc::pthread_mutexattr_settype(
                a,
                libc::PTHREAD_MUTEX_ERRORCHECK,
            ))
        })
        .and_then(|()| check(libc::pthread_mutex_init(m, a)))
    };
    // SAFETY: `attr` was initialised above and is destroyed once; a mutex
    // initialised from it does not depend on it afterwards.
    unsafe { libc::pthread_mutexattr_destroy(a) };
    r
}

/// `pthread_mutex_lock(3)`: waits for the mutex. For a robust mutex whose
/// owner died, the error is `EOWNERDEAD` (and the caller holds the lock);
/// for one abandoned in that state, `ENOTRECOVERABLE`.
///
/// # Safety
/// `m` must point to a mutex initialised by [`init_robust_shared`] that
/// stays mapped for the call.
#[inline]
pub unsafe fn lock(m: *mut libc::pthread_mutex_t) -> io::Result<()> {
    // SAFETY: the caller guarantees `m` is an initialised, mapped mutex.
    check(unsafe { libc::pthread_mutex_lock(m) })
}

/// `pthread_mutex_timedlock(3)` with an absolute `CLOCK_REALTIME` deadline
/// (time since the epoch); `ETIMEDOUT` once it has passed. Otherwise as
/// [`lock`].
///
/// # Safety
/// As for [`lock`].
#[inline]
pub unsafe fn timed_lock(m: *mut libc::pthread_mutex_t, deadline: Duration) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(deadline.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(deadline.subsec_nanos()),
    };
    // SAFETY: the caller guarantees `m`; `ts` is a valid timespec that
    // lives through the call.
    check(unsafe { libc::pthread_mutex_timedlock(m, &raw const ts) })
}

/// `pthread_mutex_unlock(3)`. Fork-safe.
///
/// # Safety
/// `m` must be an initialised mutex held by the calling thread.
#[inline]
pub unsafe fn unlock(m: *mut libc::pthread_mutex_t) -> io::Result<()> {
    // SAFETY: the caller holds the initialised mutex `m`.
    check(unsafe { libc::pthread_mutex_unlock(m) })
}

/// `pthread_mutex_consistent(3)`: marks a robust mutex taken over from a dead
/// owner (`EOWNERDEAD`) as consistent again. Fork-safe.
///
/// # Safety
/// `m` must be an initialised robust mutex that the calling thread holds in
/// the owner-died state.
#[inline]
pub unsafe fn make_consistent(m: *mut libc::pthread_mutex_t) -> io::Result<()> {
    // SAFETY: the caller holds `m` in the owner-died state.
    check(unsafe { libc::pthread_mutex_consistent(m) })
}

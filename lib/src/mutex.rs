//! A process-shared robust mutex and a seqlock for one-writer, many-reader state.
//!
//! [`RobustMutex`] is glibc's robust, process-shared pthread mutex with the
//! value it protects beside it. When its owner dies holding it, the kernel
//! (through glibc's robust list) hands it to the next locker with
//! `EOWNERDEAD`, which [`RobustMutex::lock`] turns into
//! [`LockError::OwnerDied`]: the caller gets an [`OwnerDiedGuard`], repairs
//! the value, and calls [`OwnerDiedGuard::make_consistent`]. If it drops the
//! guard instead, the mutex is unrecoverable and every later lock returns
//! [`LockError::NotRecoverable`] at once — an error, never a hang.
//!
//! [`SeqLock`] is for state that one process writes and many read without
//! blocking the writer: a sequence word, odd while a write is in progress.

use crate::region::Plain;
use crate::sys;
use std::cell::UnsafeCell;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A robust, process-shared mutex protecting a `T` in shared memory.
///
/// Layout (`#[repr(C)]`): the glibc `pthread_mutex_t` (40 bytes on x86_64),
/// then the value. The mutex word holds the owner's thread id and the
/// waiters/owner-died bits, as glibc's robust futex protocol defines; the
/// value may be read or written only by the holder of the lock.
#[repr(C)]
pub struct RobustMutex<T: Plain> {
    raw: UnsafeCell<libc::pthread_mutex_t>,
    value: UnsafeCell<T>,
}

// SAFETY: the value is only reached through a guard, which exists only while
// the calling thread holds the lock, so at most one thread (in any process)
// accesses it at a time. `T: Plain` holds no pointers, so sharing it across
// processes is meaningful, and `Send` lets the value move between threads.
unsafe impl<T: Plain + Send> Sync for RobustMutex<T> {}
// SAFETY: as above; the mutex itself has no thread affinity while unlocked.
unsafe impl<T: Plain + Send> Send for RobustMutex<T> {}

impl<T: Plain> fmt::Debug for RobustMutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RobustMutex").finish_non_exhaustive()
    }
}

/// Why a lock was not simply acquired.
pub enum LockError<'a, T: Plain> {
    /// The previous owner died holding the lock. The lock is now held by the
    /// caller; the value may be half-updated. Repair it through the guard,
    /// then call [`OwnerDiedGuard::make_consistent`].
    OwnerDied(OwnerDiedGuard<'a, T>),
    /// An owner died and the next holder released the lock without making
    /// it consistent: the mutex cannot be locked again until it is
    /// re-initialised (by the root, when no process uses it).
    NotRecoverable,
    /// Only from [`RobustMutex::try_lock`]: another thread holds the lock.
    WouldBlock,
    /// Any other error from pthread, such as `EDEADLK` when the calling
    /// thread already holds the lock.
    Os(io::Error),
}

impl<T: Plain> fmt::Debug for LockError<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::OwnerDied(_) => f.write_str("OwnerDied(..)"),
            LockError::NotRecoverable => f.write_str("NotRecoverable"),
            LockError::WouldBlock => f.write_str("WouldBlock"),
            LockError::Os(e) => f.debug_tuple("Os").field(e).finish(),
        }
    }
}

impl<T: Plain> fmt::Display for LockError<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::OwnerDied(_) => f.write_str("the previous lock owner died"),
            LockError::NotRecoverable => f.write_str("the mutex is not recoverable"),
            LockError::WouldBlock => f.write_str("the mutex is held"),
            LockError::Os(e) => write!(f, "pthread mutex: {e}"),
        }
    }
}

impl<T: Plain> std::error::Error for LockError<'_, T> {}

impl<T: Plain> RobustMutex<T> {
    /// Initialises a mutex in place at `this` (normally in a MAP_SHARED
    /// region), unlocked and holding `value`.
    ///
    /// The mutex is process-shared, robust, and of the error-checking type,
    /// so a thread that locks it twice gets [`LockError::Os`] (`EDEADLK`)
    /// instead of deadlocking.
    ///
    /// # Safety
    /// `this` must be valid for writes of `size_of::<Self>()` bytes, aligned
    /// for `Self`, and stay mapped while any process uses the mutex. No
    /// process may be using a mutex at `this` (locked or waiting on it)
    /// while it is (re-)initialised.
    pub unsafe fn init(this: *mut Self, value: T) -> io::Result<()> {
        debug_assert!(!this.is_null() && this.is_aligned());
        // SAFETY: `this` is valid for writes and aligned, and no process
        // uses a mutex there (caller's contract), so its `raw` field may be
        // initialised and `value` written through `addr_of!` without
        // creating references to uninitialised data.
        unsafe {
            sys::mutex::init_robust_shared(UnsafeCell::raw_get(std::ptr::addr_of!((*this).raw)))?;
            UnsafeCell::raw_get(std::ptr::addr_of!((*this).value)).write(value);
        }
        Ok(())
    }

    fn raw(&self) -> *mut libc::pthread_mutex_t {
        self.raw.get()
    }

    fn result(&self, rc: io::Result<()>) -> Result<MutexGuard<'_, T>, LockError<'_, T>> {
        let Err(e) = rc else {
            return Ok(MutexGuard {
                mutex: self,
                _not_send: PhantomData,
            });
        };
        match e.raw_os_error() {
            Some(libc::EOWNERDEAD) => Err(LockError::OwnerDied(OwnerDiedGuard {
                mutex: self,
                _not_send: PhantomData,
            })),
            Some(libc::ENOTRECOVERABLE) => Err(LockError::NotRecoverable),
            Some(libc::EBUSY) => Err(LockError::WouldBlock),
            _ => Err(LockError::Os(e)),
        }
    }

    /// Locks, waiting as long as a live process holds the lock.
    ///
    /// Returns [`LockError::OwnerDied`] if the holder died (the caller then
    /// holds the lock and must repair), [`LockError::NotRecoverable`] if an
    /// earlier repair was abandoned.
    pub fn lock(&self) -> Result<MutexGuard<'_, T>, LockError<'_, T>> {
        // SAFETY: `raw` was initialised by `init` (type invariant: a
        // `RobustMutex` reference only exists over initialised memory).
        let rc = unsafe { sys::mutex::lock(self.raw()) };
        self.result(rc)
    }

    /// Like [`RobustMutex::lock`], but returns [`LockError::WouldBlock`]
    /// instead of waiting.
    pub fn try_lock(&self) -> Result<MutexGuard<'_, T>, LockError<'_, T>> {
        // Not pthread_mutex_trylock: glibc's trylock leaves a
        // not-recoverable robust mutex locked by the caller when it returns
        // ENOTRECOVERABLE, so every later locker would hang. A timed lock
        // with a deadline in the past takes the same path as `lock` (which
        // releases it correctly) and returns ETIMEDOUT instead of waiting.
        // SAFETY: as in `lock`.
        let rc = unsafe { sys::mutex::timed_lock(self.raw(), Duration::ZERO) };
        self.result(rc.map_err(|e| {
            if e.raw_os_error() == Some(libc::ETIMEDOUT) {
                io::Error::from_raw_os_error(libc::EBUSY)
            } else {
                e
            }
        }))
    }

    fn unlock(&self) {
        // SAFETY: called only from a guard's drop, while this thread holds
        // the lock.
        let rc = unsafe { sys::mutex::unlock(self.raw()) };
        debug_assert!(rc.is_ok(), "pthread_mutex_unlock: {rc:?}");
    }
}

/// Access to the value while the lock is held; unlocks on drop.
/// Not `Send`: a pthread mutex must be unlocked by the thread that locked it.
pub struct MutexGuard<'a, T: Plain> {
    mutex: &'a RobustMutex<T>,
    _not_send: PhantomData<*const ()>,
}

impl<T: Plain> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while this thread holds the lock,
        // so no other thread or process accesses the value.
        unsafe { &*self.mutex.value.get() }
    }
}

impl<T: Plain> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this access unique.
        unsafe { &mut *self.mutex.value.get() }
    }
}

impl<T: Plain> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        self.mutex.unlock();
    }
}

impl<T: Plain> fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MutexGuard").finish_non_exhaustive()
    }
}

/// The lock, taken over from an owner that died holding it. The value may
/// be inconsistent: repair it through `Deref`/`DerefMut`, then call
/// [`OwnerDiedGuard::make_consistent`]. Dropping this guard instead unlocks
/// and leaves the mutex permanently unrecoverable.
pub struct OwnerDiedGuard<'a, T: Plain> {
    mutex: &'a RobustMutex<T>,
    _not_send: PhantomData<*const ()>,
}

impl<'a, T: Plain> OwnerDiedGuard<'a, T> {
    /// Marks the repaired value consistent and continues as a normal guard.
    pub fn make_consistent(self) -> MutexGuard<'a, T> {
        let mutex = self.mutex;
        std::mem::forget(self);
        // SAFETY: this thread holds the lock in the owner-died state (that
        // is the guard's invariant), which is exactly when
        // pthread_mutex_consistent may be called.
        let rc = unsafe { sys::mutex::make_consistent(mutex.raw()) };
        debug_assert!(rc.is_ok(), "pthread_mutex_consistent: {rc:?}");
        MutexGuard {
            mutex,
            _not_send: PhantomData,
        }
    }
}

impl<T: Plain> Deref for OwnerDiedGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: this thread holds the lock (in the owner-died state).
        unsafe { &*self.mutex.value.get() }
    }
}

impl<T: Plain> DerefMut for OwnerDiedGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this access unique.
        unsafe { &mut *self.mutex.value.get() }
    }
}

impl<T: Plain> Drop for OwnerDiedGuard<'_, T> {
    fn drop(&mut self) {
        // Unlocking without pthread_mutex_consistent makes the mutex
        // ENOTRECOVERABLE for everyone, as documented.
        self.mutex.unlock();
    }
}

impl<T: Plain> fmt::Debug for OwnerDiedGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnerDiedGuard").finish_non_exhaustive()
    }
}

/// Why a [`SeqLock`] operation did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqLockError {
    /// The sequence stayed at one odd value through every retry: the
    /// writer died mid-write, or is stalled there (stopped, throttled, or
    /// preempted for longer than [`SEQLOCK_READ_PATIENCE`]). Not proof of
    /// death: the writer's replacement, which knows the old one is gone
    /// (the root reaped it), calls [`SeqLock::recover`].
    WriterDied,
    /// The sequence kept changing through every retry (a very busy
    /// writer).
    Torn,
    /// Only from [`SeqLock::write`]: another write is in progress, or a
    /// writer died mid-write and [`SeqLock::recover`] has not run.
    Busy,
}

impl fmt::Display for SeqLockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SeqLockError::WriterDied => "seqlock writer died or stalled mid-write",
            SeqLockError::Torn => "seqlock value kept changing",
            SeqLockError::Busy => "seqlock write in progress",
        })
    }
}

impl std::error::Error for SeqLockError {}

/// How many times [`SeqLock::read`] tries before it gives up.
pub const SEQLOCK_READ_TRIES: u32 = 10_000;

/// How long [`SeqLock::read`] keeps yielding before it gives up, whatever
/// is left of its tries. A yield on an idle CPU returns at once, but on a
/// busy one it can give the CPU away for a whole time slice: bounded by
/// tries alone, a reader of a dead writer's seqlock took 13 s on two CPUs
/// beside four busy threads. A live writer copies its value in far less,
/// unless it is stalled mid-write (stopped, or throttled by a CPU quota),
/// which a reader then reports as [`SeqLockError::WriterDied`].
pub const SEQLOCK_READ_PATIENCE: Duration = Duration::from_millis(20);

/// State one process writes and many read, without locks.
///
/// Layout (`#[repr(C)]`): an 8-byte sequence word, then the value.
/// Invariant of `seq`: even when the value is complete; odd exactly while a
/// writer copies a new value in; it only grows (by 1 to start a write, by 1
/// to end it). Readers copy the value between two reads of `seq` and accept
/// the copy only if both are the same even number.
#[repr(C)]
pub struct SeqLock<T: Plain + Copy> {
    seq: AtomicU64,
    value: UnsafeCell<T>,
}

// SAFETY: the value is only read by copying it with volatile reads (a torn
// copy is still a valid `T`, by `Plain`, and is discarded), and only written
// by the one writer that won the CAS on `seq`.
unsafe impl<T: Plain + Copy + Send> Sync for SeqLock<T> {}

impl<T: Plain + Copy> fmt::Debug for SeqLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeqLock")
            .field("seq", &self.seq.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<T: Plain + Copy> SeqLock<T> {
    /// A seqlock holding `value` (for use inside one process, or to be
    /// copied into place before other processes see it).
    pub const fn new(value: T) -> SeqLock<T> {
        SeqLock {
            seq: AtomicU64::new(0),
            value: UnsafeCell::new(value),
        }
    }

    /// Initialises a seqlock in place at `this` (normally shared memory).
    ///
    /// # Safety
    /// `this` must be valid for writes of `size_of::<Self>()` bytes and
    /// aligned, and no other thread or process may access it during `init`.
    pub unsafe fn init(this: *mut Self, value: T) {
        debug_assert!(!this.is_null() && this.is_aligned());
        // SAFETY: `this` is valid for writes and unshared (caller's contract).
        unsafe { this.write(SeqLock::new(value)) };
    }

    /// The current sequence number (even: stable; odd: a write is under way
    /// or was cut off by the writer's death).
    pub fn seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// Replaces the value with `f` applied to a copy of it.
    ///
    /// `f` runs before the sequence turns odd, so the odd window is only the
    /// copy, and a panic in `f` changes nothing. Returns
    /// [`SeqLockError::Busy`] if another write is under way or a dead
    /// writer's odd sequence was left behind (see [`SeqLock::recover`]).
    pub fn write(&self, f: impl FnOnce(&mut T)) -> Result<(), SeqLockError> {
        let s = self.seq.load(Ordering::Relaxed);
        if s % 2 == 1 {
            return Err(SeqLockError::Busy);
        }
        // SAFETY: a volatile copy of a `Plain` value: any bits are a valid
        // `T`; a concurrent writer is excluded by the CAS below (if one ran,
        // the CAS fails and this copy is discarded).
        let mut v = unsafe { self.value.get().read_volatile() };
        f(&mut v);
        self.seq
            .compare_exchange(s, s + 1, Ordering::Relaxed, Ordering::Relaxed)
            .map_err(|_| SeqLockError::Busy)?;
        fence(Ordering::Release);
        // SAFETY: this thread won the CAS, so it is the only writer; readers
        // copy with volatile reads and discard what they see while odd.
        unsafe { self.value.get().write_volatile(v) };
        self.seq.store(s + 2, Ordering::Release);
        Ok(())
    }

    /// A consistent copy of the value. Retries up to [`SEQLOCK_READ_TRIES`]
    /// times (yielding the CPU after the first hundred) and for at most
    /// [`SEQLOCK_READ_PATIENCE`] once it yields, then gives up with
    /// [`SeqLockError::WriterDied`] if the sequence stayed at one odd value
    /// throughout, or [`SeqLockError::Torn`] if it changed. Never spins
    /// forever.
    pub fn read(&self) -> Result<T, SeqLockError> {
        // The first sequence seen, and whether it ever changed since.
        let mut first = None;
        let mut changed = false;
        let mut give_up = None;
        for i in 0..SEQLOCK_READ_TRIES {
            let s1 = self.seq.load(Ordering::Acquire);
            changed |= *first.get_or_insert(s1) != s1;
            if s1 % 2 == 0 {
                // SAFETY: volatile copy of a `Plain` value (any bits valid);
                // a torn copy is detected below and discarded.
                let v = unsafe { self.value.get().read_volatile() };
                fence(Ordering::Acquire);
                if self.seq.load(Ordering::Relaxed) == s1 {
                    return Ok(v);
                }
                changed = true;
            }
            if i < 100 {
                std::hint::spin_loop();
                continue;
            }
            let now = Instant::now();
            if *give_up.get_or_insert(now + SEQLOCK_READ_PATIENCE) <= now {
                break;
            }
            std::thread::yield_now();
        }
        Err(if !changed && first.is_some_and(|s| s % 2 == 1) {
            SeqLockError::WriterDied
        } else {
            SeqLockError::Torn
        })
    }

    /// Recovery after the writer died mid-write: if the sequence is odd,
    /// lets `repair` fix a copy of the (possibly half-written) value, stores
    /// it and makes the sequence even again; returns whether it did.
    ///
    /// # Safety
    /// The caller must be the only writer and know that the previous writer
    /// is dead (normally: it is the dead daemon's replacement, started by
    /// the root after it reaped the old one).
    pub unsafe fn recover(&self, repair: impl FnOnce(&mut T)) -> bool {
        let s = self.seq.load(Ordering::Acquire);
        if s % 2 == 0 {
            return false;
        }
        // SAFETY: the caller is the only writer (contract); `Plain` makes
        // any bits a valid `T`.
        let mut v = unsafe { self.value.get().read_volatile() };
        repair(&mut v);
        // SAFETY: as above; the sequence is still odd, so readers discard
        // anything they copy during this store.
        unsafe { self.value.get().write_volatile(v) };
        self.seq.store(s + 1, Ordering::Release);
        true
    }
}

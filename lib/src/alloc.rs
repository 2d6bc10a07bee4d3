//! The global allocator wrapper that enforces no allocation after fork.
//!
//! The `forkroot` binary installs it:
//!
//! ```no_run
//! #[global_allocator]
//! static A: forkroot::alloc::Guarded = forkroot::alloc::Guarded::new();
//! # fn main() {}
//! ```
//!
//! It forwards every call to [`std::alloc::System`] and applies a
//! process-wide [`Policy`], which a forked child inherits:
//!
//! - [`Policy::Off`] (the root, and the default): nothing is checked or
//!   counted; the cost is one relaxed atomic load per call.
//! - [`Policy::Count`] allows and counts every allocation ([`stats`]).
//! - Under [`Policy::Forbid`], an allocation (`alloc`, `alloc_zeroed`, `realloc`)
//!   outside an [`allow`] scope writes
//!   `forkroot: daemon "NAME" allocated N bytes after fork (alloc policy forbid)`
//!   to the current flight log ([`crate::log::current`]) and to stderr with a
//!   raw `write(2)`, then calls `abort()`: the root sees SIGABRT and the
//!   crash report holds the message. Freeing is always allowed (start-up
//!   memory may be released in the steady state).
//!
//! Under `Count` and `Forbid`, every allocation, including those inside
//! [`allow`], is counted. The forbid path allocates nothing: the message is
//! formatted into a stack buffer, and a second violation while reporting the
//! first aborts at once.

use crate::log::Level;
use crate::sys;
use crate::trace::StackWriter;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};

/// What the allocator does with an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Policy {
    /// Not checked, not counted.
    Off = 0,
    /// Allowed and counted.
    Count = 1,
    /// Counted inside [`allow`]; anywhere else, reported and aborted.
    Forbid = 2,
}

/// Allocation counters since the last [`reset_stats`] (or process start),
/// kept only under [`Policy::Count`] and [`Policy::Forbid`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AllocStats {
    /// Calls to `alloc`, `alloc_zeroed` and `realloc`.
    pub allocs: u64,
    /// Calls to `dealloc`.
    pub deallocs: u64,
    /// Bytes requested by those allocations (`realloc`: the new size).
    pub bytes: u64,
}

/// The process's policy, a `Policy as u8`.
static POLICY: AtomicU8 = AtomicU8::new(Policy::Off as u8);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static DEALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
/// Set once the forbid path runs, so a violation while reporting aborts.
static REPORTING: AtomicBool = AtomicBool::new(false);

/// Longest daemon name kept for the message, in bytes.
const NAME_MAX: usize = 64;
/// The daemon's name (UTF-8, `NAME_LEN` bytes), for the forbid message.
static NAME: [AtomicU8; NAME_MAX] = [const { AtomicU8::new(0) }; NAME_MAX];
static NAME_LEN: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Depth of nested [`allow`] scopes on this thread. Const-initialised and
    /// without a destructor, so reading it never allocates.
    static ALLOW: Cell<u32> = const { Cell::new(0) };
}

/// Sets the calling process's allocation policy (inherited across fork).
pub fn set_policy(p: Policy) {
    POLICY.store(p as u8, Ordering::SeqCst);
}

/// The calling process's allocation policy.
pub fn policy() -> Policy {
    match POLICY.load(Ordering::Relaxed) {
        1 => Policy::Count,
        2 => Policy::Forbid,
        _ => Policy::Off,
    }
}

/// Sets the name the forbid message gives (cut to 64 bytes at a char
/// boundary). Does not allocate.
pub fn set_name(name: &str) {
    let mut n = name.len().min(NAME_MAX);
    while !name.is_char_boundary(n) {
        n -= 1;
    }
    NAME_LEN.store(0, Ordering::Relaxed);
    for (slot, &b) in NAME.iter().zip(&name.as_bytes()[..n]) {
        slot.store(b, Ordering::Relaxed);
    }
    NAME_LEN.store(n, Ordering::Release);
}

/// The counters so far.
pub fn stats() -> AllocStats {
    AllocStats {
        allocs: ALLOCS.load(Ordering::Relaxed),
        deallocs: DEALLOCS.load(Ordering::Relaxed),
        bytes: BYTES.load(Ordering::Relaxed),
    }
}

/// Sets the counters to zero (a daemon does this when its steady state
/// begins, so [`stats`] shows only what came after).
pub fn reset_stats() {
    ALLOCS.store(0, Ordering::Relaxed);
    DEALLOCS.store(0, Ordering::Relaxed);
    BYTES.store(0, Ordering::Relaxed);
}

/// Runs `f` with allocation permitted on this thread even under
/// [`Policy::Forbid`] (for deliberate start-up work). Nests; other threads
/// are not affected.
pub fn allow<R>(f: impl FnOnce() -> R) -> R {
    struct Scope;
    impl Drop for Scope {
        fn drop(&mut self) {
            let _ = ALLOW.try_with(|a| a.set(a.get().saturating_sub(1)));
        }
    }
    let _ = ALLOW.try_with(|a| a.set(a.get() + 1));
    let _scope = Scope;
    f()
}

fn allowed() -> bool {
    ALLOW.try_with(|a| a.get() > 0).unwrap_or(false)
}

/// Applies the policy to an allocation of `size` bytes.
#[inline]
fn on_alloc(size: usize) {
    match POLICY.load(Ordering::Relaxed) {
        0 => {}
        p => {
            if p == Policy::Forbid as u8 && !allowed() {
                forbidden(size);
            }
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(size as u64, Ordering::Relaxed);
        }
    }
}

/// Reports a forbidden allocation and aborts. Allocates nothing.
#[cold]
#[inline(never)]
fn forbidden(size: usize) -> ! {
    if !REPORTING.swap(true, Ordering::SeqCst) {
        let mut name = [0u8; NAME_MAX];
        let len = NAME_LEN.load(Ordering::Acquire).min(NAME_MAX);
        for (dst, src) in name.iter_mut().zip(&NAME[..len]) {
            *dst = src.load(Ordering::Relaxed);
        }
        let name = std::str::from_utf8(&name[..len]).unwrap_or("?");
        let mut buf = [0u8; 200];
        let mut w = StackWriter::new(&mut buf);
        let _ = write!(
            w,
            "forkroot: daemon \"{name}\" allocated {size} bytes after fork (alloc policy forbid)"
        );
        if let Some(log) = crate::log::current() {
            log.write(
                Level::Error,
                crate::trace::pid(),
                crate::trace::transaction(),
                w.as_str(),
            );
        }
        let _ = w.write_str("\n");
        let msg = w.as_str().as_bytes();
        // A failed write is harmless: we abort next anyway.
        let _ = sys::write_all(std::os::fd::AsFd::as_fd(&std::io::stderr()), msg);
    }
    std::process::abort()
}

/// The allocator wrapper: [`System`] under the process's [`Policy`].
#[derive(Debug, Default)]
pub struct Guarded {
    _private: (),
}

impl Guarded {
    /// A wrapper to put in a `#[global_allocator]` static.
    pub const fn new() -> Guarded {
        Guarded { _private: () }
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees carry over; the bookkeeping before it
// never allocates (atomics and a const thread-local) and never unwinds.
unsafe impl GlobalAlloc for Guarded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        on_alloc(layout.size());
        // SAFETY: forwarded with the caller's layout, as GlobalAlloc requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        on_alloc(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if POLICY.load(Ordering::Relaxed) != Policy::Off as u8 {
            DEALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: `ptr` came from this allocator (hence from System) with
        // `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        on_alloc(new_size);
        // SAFETY: forwarded unchanged; `ptr`/`layout` came from System.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

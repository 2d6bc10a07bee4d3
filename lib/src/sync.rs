//! One shim for atomics and `UnsafeCell`, so loom can replace them in model checks.
//!
//! Every shared-memory structure that relies on an atomics protocol ([`ring`],
//! [`pool`]) imports its atomics, fences and cells from here and nowhere else.
//! A normal build re-exports `std`'s types; a build with `RUSTFLAGS="--cfg loom"`
//! re-exports [loom]'s, so the same code is explored under every interleaving
//! that the C++11 memory model allows (the approach of crossbeam-epoch and
//! iceoryx2).
//!
//! [`UnsafeCell`] follows loom's closure API (`with`, `with_mut`) in both
//! builds, so code that touches a cell compiles unchanged under either.
//!
//! [`ring`]: crate::ring
//! [`pool`]: crate::pool
//! [loom]: https://docs.rs/loom

#[cfg(loom)]
pub use loom::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};

#[cfg(not(loom))]
pub use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};

#[cfg(loom)]
pub use loom::cell::UnsafeCell;

/// Tells the processor (or, under loom, the model scheduler) that the caller
/// is spinning while it waits for another process or thread.
#[inline]
pub fn spin_loop() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}

/// `std::cell::UnsafeCell` with loom's closure API.
///
/// `#[repr(transparent)]`: in a normal build it has exactly the layout of `T`,
/// so it may sit inside `#[repr(C)]` shared-memory layouts.
#[cfg(not(loom))]
#[derive(Debug, Default)]
#[repr(transparent)]
pub struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    /// Wraps `value`.
    pub const fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }

    /// Calls `f` with a shared raw pointer to the contents. The caller's
    /// protocol must ensure no one writes the contents meanwhile.
    #[inline]
    pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Calls `f` with a mutable raw pointer to the contents. The caller's
    /// protocol must ensure no one else reads or writes the contents meanwhile.
    #[inline]
    pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

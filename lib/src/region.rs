//! Regions: the shared memory the root preallocates for each daemon.
//!
//! Every region starts with a system area the library owns (a header page,
//! then the flight recorder), followed by the user area the daemon declared
//! with `memory = "..."`:
//!
//! ```text
//! 0        4 KiB             64 KiB                         64 KiB + memory
//! | header | flight log (60 KiB) | user area (typed state, checkpoints) |
//! ```

/// Bytes at the start of every region that belong to the library.
pub const SYSTEM_SIZE: usize = 64 * 1024;
/// Offset of the flight recorder inside a region.
pub const LOG_OFFSET: usize = 4096;
/// Size of the flight recorder area.
pub const LOG_SIZE: usize = SYSTEM_SIZE - LOG_OFFSET;

/// Types that may live in shared memory and be read by another process.
///
/// # Safety
/// An implementor must be `#[repr(C)]` (or `#[repr(transparent)]`, or a
/// primitive), must hold no pointers, references or file descriptors, and
/// every bit pattern of its size (all zeroes in particular) must be a valid
/// value: a reader may see whatever a crashed writer left.
pub unsafe trait Plain: Sized + 'static {}

macro_rules! plain {
    ($($t:ty),*) => { $(
        // SAFETY: primitives and atomics of primitives have no invalid bit
        // patterns and hold no pointers.
        unsafe impl Plain for $t {}
    )* };
}
plain!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize);
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, AtomicU8, AtomicUsize};
plain!(AtomicU8, AtomicU32, AtomicU64, AtomicI32, AtomicI64, AtomicUsize);
// SAFETY: an array of `Plain` elements is laid out contiguously with no
// padding between elements, so it is `Plain` too.
unsafe impl<T: Plain, const N: usize> Plain for [T; N] {}

//! Helpers shared by the integration tests: shared memory, fork and reap,
//! a watchdog, and small reproducible random generators.
//!
//! Each test binary compiles this module on its own and uses a part of it.
#![allow(dead_code)]

use std::sync::atomic::AtomicU64;

/// `len` bytes of zeroed, readable and writable `MAP_SHARED | MAP_ANONYMOUS`
/// memory: shared with every child forked afterwards, like a region.
/// Never unmapped (see [`Shm`] for a mapping that is).
pub(crate) fn map_shared(len: usize) -> *mut u8 {
    // SAFETY: a fresh anonymous mapping; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "mmap failed");
    p.cast()
}

/// [`map_shared`] as a zeroed slice that lives for the whole program.
pub(crate) fn shared_slice(len: usize) -> &'static mut [u8] {
    let p = map_shared(len);
    // SAFETY: `len` fresh, writable bytes that are never unmapped and that
    // nothing else in this process refers to (anonymous memory is zeroed).
    unsafe { std::slice::from_raw_parts_mut(p, len) }
}

/// A shared anonymous mapping, like the user area of a region (and
/// inherited across fork like one), unmapped on drop.
pub(crate) struct Shm {
    /// Start of the mapping (page-aligned).
    pub(crate) ptr: *mut u8,
    /// Its length in bytes.
    pub(crate) len: usize,
}

impl Shm {
    /// `len` zeroed bytes.
    pub(crate) fn new(len: usize) -> Shm {
        Shm {
            ptr: map_shared(len),
            len,
        }
    }

    /// The whole mapping.
    pub(crate) fn area(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes, readable and writable, owned by
        // `self` and borrowed mutably here.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// The mapping as 64-bit atomics (for reports from a forked child).
    pub(crate) fn words(&self) -> &[AtomicU64] {
        debug_assert!(self.len >= 8);
        // SAFETY: the mapping is page-aligned, `len` bytes long, and only
        // accessed through atomics by every process sharing it.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<AtomicU64>(), self.len / 8) }
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`; no borrow of
        // it outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Arms a watchdog: unless re-armed, SIGALRM kills this process after
/// `seconds`, so a hang becomes a failure. Forked children inherit nothing
/// (they arm their own if they need one).
pub(crate) fn watchdog(seconds: u32) {
    // SAFETY: alarm only schedules SIGALRM for this process; its default
    // action ends the process.
    unsafe { libc::alarm(seconds) };
}

/// fork(2), for a single-threaded test process (so the child may do
/// anything). Returns 0 in the child, the child's pid in the parent.
pub(crate) fn fork() -> libc::pid_t {
    // SAFETY: the caller is single-threaded, so the child may do anything.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    pid
}

/// Waits for child `pid` to end; its raw wait status.
pub(crate) fn reap(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: `pid` is our child; `status` is a valid out pointer.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    status
}

/// Waits for child `pid` and fails unless it exited with 0.
pub(crate) fn reap_ok(pid: libc::pid_t) {
    let st = reap(pid);
    assert!(
        libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
        "child failed: {st:#x}"
    );
}

/// Ends a forked child at once, without running the parent's atexit
/// handlers or destructors.
pub(crate) fn child_exit() -> ! {
    // SAFETY: `_exit` only ends this process.
    unsafe { libc::_exit(0) }
}

/// SIGKILLs child `pid` and reaps it; its raw wait status.
pub(crate) fn kill_and_reap(pid: libc::pid_t) -> i32 {
    // SAFETY: `pid` is our unreaped child, so the signal reaches no one else.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    reap(pid)
}

/// xorshift64 (13, 7, 17): reproducible randomness without a dependency.
/// A zero state stays zero.
pub(crate) struct Xorshift64(pub(crate) u64);

impl Xorshift64 {
    /// The next value.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value in `0..n`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// xorshift64*: reproducible randomness without a dependency, with better
/// low bits than [`Xorshift64`]. A zero state stays zero.
pub(crate) struct Xorshift64Star(pub(crate) u64);

impl Xorshift64Star {
    /// A generator from `seed` (made odd, so never zero).
    pub(crate) fn new(seed: u64) -> Xorshift64Star {
        Xorshift64Star(seed | 1)
    }

    /// The next value.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n`.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Writes all of `buf` to `fd` (a pipe or socket end), panicking on error.
pub(crate) fn write_all(fd: i32, buf: &[u8]) {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: `buf[done..]` is readable for its length.
        let n = unsafe { libc::write(fd, buf[done..].as_ptr().cast(), buf.len() - done) };
        assert!(n > 0, "write failed");
        done += n as usize;
    }
}

/// Reads exactly `buf.len()` bytes from `fd`, panicking on error or EOF.
pub(crate) fn read_exact(fd: i32, buf: &mut [u8]) {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: `buf[done..]` is writable for its length.
        let n = unsafe { libc::read(fd, buf[done..].as_mut_ptr().cast(), buf.len() - done) };
        assert!(n > 0, "read failed");
        done += n as usize;
    }
}

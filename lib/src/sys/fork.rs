//! `fork` itself, a fork straight into a cgroup, and the hooks that run
//! around them.

use super::{cvt, Pid};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicUsize, Ordering};

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
        pid => Ok(Forked::Parent(Pid::from_raw(pid).ok_or_else(bad_pid)?)),
    }
}

/// A fork that returned neither 0, -1 nor a pid (never seen; kept an error
/// rather than a panic in the parent).
fn bad_pid() -> io::Error {
    io::Error::other("fork returned an impossible pid")
}

/// `pthread_atfork(NULL, NULL, handler)`: registers `handler` to run in
/// every child this process forks, right after the fork, in the forking
/// thread, and in every child of [`fork_into`]. Registration lasts for the
/// life of the process and cannot be undone; at most four handlers.
///
/// # Safety
/// `handler` runs in a freshly forked child of a possibly multi-threaded
/// parent, where another thread may have held a lock (the allocator's among
/// them) at the moment of the fork: it may only make async-signal-safe
/// calls (no allocation, no lock, no printing).
pub unsafe fn at_fork_child(handler: extern "C" fn()) -> io::Result<()> {
    let slot = CHILD_HANDLERS
        .iter()
        .find(|s| {
            s.compare_exchange(0, handler as usize, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        })
        .ok_or_else(|| io::Error::other("more than 4 fork handlers"))?;
    // SAFETY: a plain `extern "C"` function with no captured state; what it
    // may do in the child is the caller's contract.
    let rc = unsafe { libc::pthread_atfork(None, None, Some(handler)) };
    if rc != 0 {
        slot.store(0, Ordering::Release);
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// The handlers registered with [`at_fork_child`], for [`fork_into`] to
/// run (the kernel's clone3 does not run glibc's fork handlers).
static CHILD_HANDLERS: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];

/// Runs the [`at_fork_child`] handlers, in registration order. Fork-safe.
fn run_child_handlers() {
    for slot in &CHILD_HANDLERS {
        let h = slot.load(Ordering::Acquire);
        if h != 0 {
            // SAFETY: only `at_fork_child` stores here, and only the
            // address of an `extern "C" fn()`.
            let f: extern "C" fn() = unsafe { std::mem::transmute::<usize, extern "C" fn()>(h) };
            f();
        }
    }
}

/// `struct clone_args` of clone3(2) (linux/sched.h; fields added at the end
/// only, its size tells the kernel which version it is).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP` (Linux 5.7).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The kernel's `struct robust_list_head` (linux/futex.h).
#[repr(C)]
struct RobustListHead {
    list: *const RobustListHead,
    futex_offset: libc::c_long,
    list_op_pending: *const libc::c_void,
}

/// Forks a child that is born in the cgroup whose directory is open at
/// `cgroup` if given (clone3 with `CLONE_INTO_CGROUP`), as [`fork`] does
/// otherwise.
///
/// A fork followed by the child writing itself into `cgroup.procs` costs a
/// cgroup migration, which takes the kernel's threadgroup lock for writing
/// and waits for an RCU grace period: 4–20 ms on an idle machine, on every
/// restart. A child created in its cgroup costs nothing more than a fork.
///
/// glibc's `fork` does three things after the system call that a raw clone3
/// would skip; this function does them too:
/// - the thread's cached tid (which robust and error-checking mutexes
///   store as their owner) is written by the kernel, as glibc's own fork
///   has it written: `CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID` at the
///   address glibc gave `set_tid_address` (read back with
///   `PR_GET_TID_ADDRESS`, and checked to hold the caller's tid);
/// - the robust-mutex list, which the kernel clears in a new process, is
///   registered again at the same head (read with `get_robust_list`; the
///   list must be empty, as it is in a process that holds no robust
///   mutex);
/// - the handlers registered with [`at_fork_child`] run. Handlers that
///   other code registered with `pthread_atfork` directly do not.
///
/// `Err(Unsupported)` when any of this cannot be done as described (a
/// kernel before 5.7, a libc that keeps its tid elsewhere, a robust mutex
/// held): the caller forks the usual way and enters the cgroup instead.
///
/// With `share_files`, the child is created sharing the caller's descriptor
/// table (`CLONE_FILES`), which nothing copies: the child must take a table
/// of its own ([`super::unshare_below`]) before it opens, closes or moves
/// any descriptor, and the caller must not change the descriptors the child
/// will keep until it has.
///
/// # Safety
/// As [`fork`]: the caller must be single-threaded.
pub unsafe fn fork_into(cgroup: Option<BorrowedFd<'_>>, share_files: bool) -> io::Result<Forked> {
    // SAFETY: the caller's contract is this function's.
    unsafe { clone_fork(cgroup, files_flag(share_files), libc::SIGCHLD as u64) }
}

/// As [`fork_into`] without sharing the table, but the child is the
/// caller's sibling (`CLONE_PARENT`): a child of the caller's parent, which
/// reaps it and gets its exit signal (the caller's own exit signal, as the
/// kernel wants with `CLONE_PARENT`). A process that forks on its parent's
/// behalf (the root's zygote) creates its children this way.
/// `Unsupported` where clone3 is not there; the caller forks otherwise.
///
/// # Safety
/// As [`fork`]: the caller must be single-threaded.
pub unsafe fn fork_sibling(cgroup: Option<BorrowedFd<'_>>) -> io::Result<Forked> {
    // SAFETY: the caller's contract is this function's.
    unsafe { clone_fork(cgroup, libc::CLONE_PARENT as u64, 0) }
}

/// clone3 as fork with `extra` flags and `exit_signal`, born in `cgroup`.
///
/// # Safety
/// As [`fork`]: the caller must be single-threaded.
unsafe fn clone_fork(
    cgroup: Option<BorrowedFd<'_>>,
    extra: u64,
    exit_signal: u64,
) -> io::Result<Forked> {
    let unsupported = || io::Error::from(io::ErrorKind::Unsupported);
    if CLONE3_BROKEN.load(Ordering::Relaxed) {
        return Err(unsupported());
    }
    let mut tid_addr: *mut libc::pid_t = std::ptr::null_mut();
    // SAFETY: PR_GET_TID_ADDRESS stores one pointer at the address given.
    let got = unsafe { libc::prctl(libc::PR_GET_TID_ADDRESS, &raw mut tid_addr) };
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // SAFETY: a non-null tid address is the thread's own `clear_child_tid`
    // word, live as long as the thread (glibc: its `struct pthread`'s tid).
    if got != 0 || tid_addr.is_null() || unsafe { tid_addr.read_volatile() } != tid {
        return Err(unsupported());
    }
    let mut head: *const RobustListHead = std::ptr::null();
    let mut head_len: libc::size_t = 0;
    // SAFETY: get_robust_list(0, ..) writes the calling thread's head
    // pointer and its length to the two addresses given.
    let got = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            0,
            &raw mut head,
            &raw mut head_len,
        )
    };
    if got != 0 || head.is_null() || head_len != std::mem::size_of::<RobustListHead>() {
        return Err(unsupported());
    }
    // SAFETY: the kernel returned the head glibc registered for this
    // thread, which lives as long as the thread.
    let empty = unsafe { (*head).list == head && (*head).list_op_pending.is_null() };
    if !empty {
        return Err(unsupported());
    }
    let mut args = CloneArgs {
        flags: (libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID) as u64
            | cgroup.map_or(0, |_| CLONE_INTO_CGROUP)
            | extra,
        child_tid: tid_addr as u64,
        exit_signal,
        // A descriptor number is >= 0.
        cgroup: cgroup.map_or(0, |fd| u64::from(fd.as_raw_fd().unsigned_abs())),
        ..CloneArgs::default()
    };
    // SAFETY: as fork(2) (no new stack: the child returns on a copy of
    // ours); the caller upholds the single-threaded precondition, and
    // `args` is a valid clone_args of the size given.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &raw mut args,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match pid {
        0 => {
            // SAFETY: the head checked above, at the same address in this
            // copy of the parent's memory.
            unsafe { libc::syscall(libc::SYS_set_robust_list, head, head_len) };
            run_child_handlers();
            Ok(Forked::Child)
        }
        -1 => {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                // No clone3, or one without CLONE_INTO_CGROUP: not again.
                Some(libc::ENOSYS | libc::E2BIG | libc::EINVAL) => {
                    CLONE3_BROKEN.store(true, Ordering::Relaxed);
                    Err(unsupported())
                }
                _ => Err(e),
            }
        }
        pid => Ok(Forked::Parent(
            libc::pid_t::try_from(pid)
                .ok()
                .and_then(Pid::from_raw)
                .ok_or_else(bad_pid)?,
        )),
    }
}

/// `CLONE_FILES` if asked for.
fn files_flag(share: bool) -> u64 {
    if share {
        libc::CLONE_FILES as u64
    } else {
        0
    }
}

/// Set once clone3 with `CLONE_INTO_CGROUP` failed as unknown.
static CLONE3_BROKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A stack for the children of [`spawn_vm`]: mapped once, with an
/// inaccessible guard page below it (an overflow faults, never writes into
/// other memory).
#[derive(Debug)]
pub struct ChildStack {
    /// The whole mapping, guard page first.
    base: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; it is only used
// as the stack of a child whose parent is suspended until it execs or
// exits (CLONE_VFORK), so no two users ever run on it at once.
unsafe impl Send for ChildStack {}
// SAFETY: as above; `&ChildStack` gives no access to the bytes.
unsafe impl Sync for ChildStack {}

impl ChildStack {
    /// Maps a stack of `len` bytes (rounded up to pages) plus its guard page.
    pub fn new(len: usize) -> io::Result<ChildStack> {
        use nix::sys::mman::{MapFlags, ProtFlags};
        let page = 4096;
        let len = len.div_ceil(page) * page + page;
        let size = std::num::NonZeroUsize::new(len).expect("at least the guard page");
        // SAFETY: a fresh private anonymous mapping; no existing memory is
        // named.
        let p = unsafe {
            nix::sys::mman::mmap_anonymous(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_STACK,
            )
        }?;
        let stack = ChildStack {
            base: p.cast(),
            len,
        };
        // SAFETY: the first page of the mapping made above.
        unsafe { nix::sys::mman::mprotect(p, page, ProtFlags::PROT_NONE) }?;
        Ok(stack)
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        let _ = unsafe { nix::sys::mman::munmap(self.base.cast(), self.len) };
    }
}

/// Starts `child(arg)` in a new process that shares the caller's memory
/// until it execs (clone3 with `CLONE_VM | CLONE_VFORK`, as `posix_spawn`
/// does), on `stack`, born in the cgroup open at `cgroup` if given
/// (`CLONE_INTO_CGROUP`). The caller is suspended until the child execs or
/// exits; then this returns the child's pid.
///
/// Nothing of the caller's memory is copied: no page tables, no
/// copy-on-write faults afterwards in either process, and the child runs
/// at once on the caller's CPU. That is what makes an exec from a large
/// process as cheap as from a small one.
///
/// `Err(Unsupported)` on an architecture this is not written for, or a
/// kernel without clone3 or `CLONE_INTO_CGROUP`: the caller forks instead.
///
/// With `share_files` the child also shares the caller's descriptor table
/// (`CLONE_FILES`), as [`fork_into`] says; the caller, suspended until the
/// child execs or exits, cannot change it meanwhile.
///
/// # Safety
/// The caller must be single-threaded (no other thread may use the memory
/// the child shares). `child` runs in a process that shares every byte of
/// the caller's memory, its TLS and its allocator among them, while the
/// caller is stopped at this call: it must not allocate, lock, unwind,
/// return, or write any memory the caller uses afterwards (globals, the
/// caller's stack), only its own stack and what `arg` lends it; it must end
/// in `execve` or `_exit`. Signals it could receive before it resets their
/// handlers run the caller's handlers on this stack.
pub unsafe fn spawn_vm(
    cgroup: Option<BorrowedFd<'_>>,
    share_files: bool,
    stack: &ChildStack,
    child: extern "C" fn(*mut libc::c_void) -> !,
    arg: *mut libc::c_void,
) -> io::Result<Pid> {
    if !cfg!(target_arch = "x86_64") || CLONE3_BROKEN.load(Ordering::Relaxed) {
        return Err(io::Error::from(io::ErrorKind::Unsupported));
    }
    let page = 4096;
    let mut args = CloneArgs {
        flags: (libc::CLONE_VM | libc::CLONE_VFORK) as u64
            | cgroup.map_or(0, |_| CLONE_INTO_CGROUP)
            | files_flag(share_files),
        exit_signal: libc::SIGCHLD as u64,
        // Above the guard page; the kernel starts the child at its top
        // (16-byte aligned: `len` is a multiple of the page size).
        stack: stack.base.as_ptr() as u64 + page as u64,
        stack_size: (stack.len - page) as u64,
        cgroup: cgroup.map_or(0, |fd| u64::from(fd.as_raw_fd().unsigned_abs())),
        ..CloneArgs::default()
    };
    // SAFETY: as the caller promises; `args` is a valid clone_args of the
    // size given, its stack a mapping of ours.
    let ret = unsafe { clone3_call(&raw mut args, child, arg) };
    match ret {
        pid if pid > 0 => libc::pid_t::try_from(pid)
            .ok()
            .and_then(Pid::from_raw)
            .ok_or_else(bad_pid),
        e if matches!(errno(e), libc::ENOSYS | libc::E2BIG | libc::EINVAL) => {
            CLONE3_BROKEN.store(true, Ordering::Relaxed);
            Err(io::Error::from(io::ErrorKind::Unsupported))
        }
        e => Err(io::Error::from_raw_os_error(errno(e))),
    }
}

/// The errno of a raw system call's `-errno` result.
fn errno(ret: i64) -> i32 {
    i32::try_from(-ret).unwrap_or(libc::EINVAL)
}

/// The clone3 system call for [`spawn_vm`]: the child starts on the new
/// stack and calls `child(arg)`, which never returns; the parent gets the
/// raw result (a pid, or `-errno`).
///
/// # Safety
/// `args` is a valid `clone_args` whose stack is mapped and writable.
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_call(
    args: *mut CloneArgs,
    child: extern "C" fn(*mut libc::c_void) -> !,
    arg: *mut libc::c_void,
) -> i64 {
    let ret: i64;
    // SAFETY: the system call preserves every register but rax, rcx and
    // r11. In the parent this is a plain system call. In the child, rax is
    // 0 and rsp the top of the new stack (16-byte aligned, as a `call`
    // needs); r12 and r13 still hold `arg` and `child`: rbp is cleared (the
    // end of the frame chain) and `child` is called, which never returns
    // (`ud2` traps if it did). Memory is not marked unread: the child writes
    // what it was lent before the parent resumes.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") arg,
            in("r13") child,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// No [`spawn_vm`] here (it returns before calling this): the caller forks.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn clone3_call(
    _args: *mut CloneArgs,
    _child: extern "C" fn(*mut libc::c_void) -> !,
    _arg: *mut libc::c_void,
) -> i64 {
    unreachable!("spawn_vm is x86_64 only")
}

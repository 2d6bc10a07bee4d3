//! `sys::fork::fork_into` and `sys::fork::spawn_vm`.
//!
//! `fork_into`: a child created directly in a cgroup (clone3
//! with `CLONE_INTO_CGROUP`) is a full process, as one from glibc's fork:
//! it is in the cgroup from its first instruction, its robust mutexes are
//! recovered by the kernel when it dies holding one (which needs both its
//! tid, stored as the lock's owner, and its robust list to be right), and
//! the fork handlers registered through the library ran in it.
//!
//! `spawn_vm`: a child that shares this process's memory until it execs
//! (`CLONE_VM | CLONE_VFORK`, on a stack of its own) runs the program, in
//! the cgroup, with the descriptors it set up, and leaves this process's
//! memory as it was: the caller's stack and globals intact after 200
//! spawns, an exec failure reported through its own pipe.
//!
//! `share_files` with `sys::unshare_below`: a child created sharing the
//! caller's descriptor table takes one of its own holding only the
//! descriptors below a bound, and the caller's table is as it was. Runs as its
//! own process (`harness = false`): the caller of a fork must be
//! single-threaded. Needs a writable cgroup v2 hierarchy; says so and
//! passes without one.

use forkroot::mutex::{LockError, RobustMutex};
use forkroot::sys::{self, Forked};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

mod common;
use common::{kill_and_reap, map_shared};

#[repr(C)]
struct Shared {
    mutex: RobustMutex<u64>,
    /// The child's pid as it saw it, once it holds the lock.
    locked: AtomicU32,
    /// Set by the fork handler in the child.
    handler_ran: AtomicU32,
}

static SHARED: std::sync::atomic::AtomicPtr<Shared> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

extern "C" fn mark_handler() {
    let sh = SHARED.load(Ordering::Acquire);
    if !sh.is_null() {
        // SAFETY: set to the live shared mapping before any fork.
        unsafe { (*sh).handler_ran.fetch_add(1, Ordering::AcqRel) };
    }
}

fn main() {
    common::watchdog(60);
    let Some(mount) = sys::cgroup::mount_point().unwrap() else {
        println!("fork_into: skipped: no cgroup v2 hierarchy mounted");
        return;
    };
    let dir = mount.join(format!("forkroot-fork-into-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir(&dir) {
        println!(
            "fork_into: skipped: cannot make a cgroup at {}: {e}",
            dir.display()
        );
        return;
    }
    let result = std::panic::catch_unwind(|| {
        run(&dir);
        run_vm(&dir);
        run_shared_table();
    });
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    let t = Instant::now();
    while std::fs::remove_dir(&dir).is_err() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

fn run(dir: &std::path::Path) {
    let sh: *mut Shared = map_shared(std::mem::size_of::<Shared>()).cast();
    // SAFETY: fresh zeroed mapping, aligned, nobody else uses it yet.
    unsafe { RobustMutex::init(std::ptr::addr_of_mut!((*sh).mutex), 0).unwrap() };
    SHARED.store(sh, Ordering::Release);
    // SAFETY: initialised above; lives until exit.
    let sh: &'static Shared = unsafe { &*sh };
    // SAFETY: the handler only makes an atomic add.
    unsafe { sys::fork::at_fork_child(mark_handler).unwrap() };
    let cg = sys::cgroup::open_dir(dir).unwrap();
    let want = format!(
        "0::/{}",
        dir.strip_prefix(sys::cgroup::mount_point().unwrap().unwrap())
            .unwrap()
            .display()
    );

    const ROUNDS: u64 = 50;
    for round in 0..ROUNDS {
        // SAFETY: this test is single-threaded (harness = false, and the
        // watchdog is an alarm, not a thread).
        match unsafe { sys::fork::fork_into(Some(cg.as_fd()), false) } {
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported && round == 0 => {
                println!("fork_into: skipped: this kernel or libc cannot clone into a cgroup");
                return;
            }
            Err(e) => panic!("round {round}: fork_into: {e}"),
            Ok(Forked::Child) => {
                // Hold the lock and die holding it.
                let g = sh.mutex.lock();
                std::mem::forget(g);
                sh.locked.store(std::process::id(), Ordering::Release);
                loop {
                    std::hint::spin_loop();
                }
            }
            Ok(Forked::Parent(pid)) => {
                let t = Instant::now();
                while sh.locked.load(Ordering::Acquire) == 0 {
                    assert!(
                        t.elapsed() < Duration::from_secs(5),
                        "round {round}: child never locked"
                    );
                    std::thread::yield_now();
                }
                assert_eq!(
                    sh.locked.swap(0, Ordering::AcqRel),
                    pid.0 as u32,
                    "child's own pid"
                );
                let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", pid.0)).unwrap();
                assert!(
                    cgroup.lines().any(|l| l == want),
                    "round {round}: child in {cgroup:?}, not {want}"
                );
                kill_and_reap(pid.0);
                // The kernel walks a dying process's robust list before it
                // can be reaped: the lock is free now, or it never will be.
                match sh.mutex.try_lock() {
                    Err(LockError::OwnerDied(mut g)) => {
                        *g += 1;
                        drop(g.make_consistent());
                    }
                    other => panic!(
                        "round {round}: a holder killed in a cloned child must read as OwnerDied, got {other:?}"
                    ),
                }
            }
        }
    }
    assert_eq!(*sh.mutex.lock().unwrap(), ROUNDS);
    assert_eq!(
        sh.handler_ran.load(Ordering::Acquire),
        ROUNDS as u32,
        "the registered fork handler runs once in every child"
    );
    println!(
        "fork_into: {ROUNDS} children born in {}: each in its cgroup, each killed holding a robust mutex read as OwnerDied, fork handler ran in each",
        dir.display()
    );
}

/// What a [`vm_child`] is lent: the program, its argv and envp, the pipe
/// for its stdout.
struct VmArgs {
    path: std::ffi::CString,
    argv: [*const libc::c_char; 3],
    envp: [*const libc::c_char; 1],
    out: libc::c_int,
}

/// Set by the test and checked after every spawn: a child that wrote the
/// caller's globals would show here.
static CANARY: AtomicU32 = AtomicU32::new(0x5eed);

extern "C" fn vm_child(arg: *mut libc::c_void) -> ! {
    // SAFETY: the `VmArgs` the test lends, alive while it waits.
    let a = unsafe { &*arg.cast::<VmArgs>() };
    // SAFETY: plain system calls on values prepared by the parent; the exec
    // either replaces this process or fails, and then _exit ends it.
    unsafe {
        libc::dup2(a.out, 1);
        libc::execve(a.path.as_ptr(), a.argv.as_ptr(), a.envp.as_ptr());
        libc::_exit(127)
    }
}

fn run_vm(dir: &std::path::Path) {
    let cg = sys::cgroup::open_dir(dir).unwrap();
    let stack = sys::fork::ChildStack::new(64 << 10).unwrap();
    let want = format!(
        "0::/{}",
        dir.strip_prefix(sys::cgroup::mount_point().unwrap().unwrap())
            .unwrap()
            .display()
    );
    let cat = std::ffi::CString::new("/bin/cat").unwrap();
    let file = std::ffi::CString::new("/proc/self/cgroup").unwrap();
    let on_stack = [0xabu8; 64];
    const ROUNDS: usize = 200;
    for round in 0..ROUNDS {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // Every tenth child gets a program that does not exist.
        let missing = round % 10 == 9;
        let path = if missing {
            std::ffi::CString::new("/nonexistent/forkroot-test").unwrap()
        } else {
            cat.clone()
        };
        let mut args = VmArgs {
            argv: [path.as_ptr(), file.as_ptr(), std::ptr::null()],
            path,
            envp: [std::ptr::null()],
            out: fds[1],
        };
        args.argv[0] = args.path.as_ptr();
        // SAFETY: this test is single-threaded; `vm_child` writes only its
        // stack and the descriptors it was lent, and ends in exec or _exit;
        // `args` lives across the call.
        let pid = match unsafe {
            sys::fork::spawn_vm(
                Some(cg.as_fd()),
                false,
                &stack,
                vm_child,
                (&raw mut args).cast(),
            )
        } {
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported && round == 0 => {
                println!(
                    "fork_into: spawn_vm skipped: not available on this architecture or kernel"
                );
                // SAFETY: the two descriptors made above.
                unsafe {
                    libc::close(fds[0]);
                    libc::close(fds[1])
                };
                return;
            }
            other => other.unwrap_or_else(|e| panic!("round {round}: spawn_vm: {e}")),
        };
        // SAFETY: our copy of the write end.
        unsafe { libc::close(fds[1]) };
        // SAFETY: the read end, now owned by the File.
        let mut out = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) };
        let mut text = String::new();
        std::io::Read::read_to_string(&mut out, &mut text).unwrap();
        let mut status = 0;
        // SAFETY: our child; `status` is writable.
        assert_eq!(unsafe { libc::waitpid(pid.0, &mut status, 0) }, pid.0);
        if missing {
            assert_eq!(
                libc::WEXITSTATUS(status),
                127,
                "round {round}: exec failure ends the child"
            );
            assert!(text.is_empty());
        } else {
            assert_eq!(libc::WEXITSTATUS(status), 0, "round {round}: {text}");
            assert!(
                text.lines().any(|l| l == want),
                "round {round}: child in {text:?}, not {want}"
            );
        }
        assert_eq!(CANARY.load(Ordering::Relaxed), 0x5eed);
        assert!(
            on_stack.iter().all(|&b| b == 0xab),
            "the caller's stack was written"
        );
    }
    println!("fork_into: spawn_vm: {ROUNDS} children sharing memory until exec: each in its cgroup, exec failures exit 127, the caller's stack and globals intact");
}

/// A child made with `share_files` that calls `unshare_below(end)` holds
/// the descriptors below `end` (the same open files) and none above; the
/// caller still holds every one of its own, above `end` too.
fn run_shared_table() {
    let (low_rd, low_wr) = sys::pipe_cloexec(false).unwrap();
    // Descriptors above the bound: a hundred pipes.
    let high: Vec<_> = (0..100)
        .map(|_| sys::pipe_cloexec(false).unwrap())
        .collect();
    let end = high[0].0.as_raw_fd();
    assert!(low_wr.as_raw_fd() < end);
    let (report_rd, report_wr) = (low_rd, low_wr);
    for _ in 0..50 {
        // SAFETY: this test process is single-threaded here (harness =
        // false); the child only makes fork-safe calls and exits.
        match unsafe { sys::fork::fork_into(None, true) }.unwrap() {
            Forked::Child => {
                let code = match sys::unshare_below(end) {
                    Err(_) => 2,
                    Ok(()) => {
                        // Above `end`: nothing. Below: the report pipe.
                        // SAFETY: F_GETFD only reads a descriptor's flags.
                        let open = |fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
                        let none_above = (end..end + 200).all(|fd| !open(fd));
                        let byte = [u8::from(none_above)];
                        match sys::write_all(report_wr.as_raw_fd(), &byte) {
                            Ok(()) => 0,
                            Err(_) => 3,
                        }
                    }
                };
                sys::exit_now(code)
            }
            Forked::Parent(pid) => {
                let status = sys::wait_pid(pid).unwrap();
                assert!(
                    matches!(status, Some(sys::WaitStatus::Exited(0))),
                    "child: {status:?}"
                );
                let mut b = [0u8; 1];
                assert_eq!(sys::read(report_rd.as_raw_fd(), &mut b).unwrap(), 1);
                assert_eq!(b[0], 1, "the child held descriptors above the bound");
                // The caller's table is untouched: every pipe still open.
                for (r, w) in &high {
                    // SAFETY: as above.
                    assert!(unsafe { libc::fcntl(r.as_raw_fd(), libc::F_GETFD) } >= 0);
                    // SAFETY: as above.
                    assert!(unsafe { libc::fcntl(w.as_raw_fd(), libc::F_GETFD) } >= 0);
                }
            }
        }
    }
    println!(
        "fork_into: 50 children sharing the table: each kept only what was below the bound, the caller's table untouched"
    );
}

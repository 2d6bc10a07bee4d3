//! `sys::fork::fork_into`: a child created directly in a cgroup (clone3
//! with `CLONE_INTO_CGROUP`) is a full process, as one from glibc's fork:
//! it is in the cgroup from its first instruction, its robust mutexes are
//! recovered by the kernel when it dies holding one (which needs both its
//! tid, stored as the lock's owner, and its robust list to be right), and
//! the fork handlers registered through the library ran in it. Runs as its
//! own process (`harness = false`): the caller of a fork must be
//! single-threaded. Needs a writable cgroup v2 hierarchy; says so and
//! passes without one.

use forkroot::mutex::{LockError, RobustMutex};
use forkroot::sys::{self, Forked};
use std::os::fd::AsFd;
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
    let result = std::panic::catch_unwind(|| run(&dir));
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
        match unsafe { sys::fork::fork_into(cg.as_fd()) } {
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

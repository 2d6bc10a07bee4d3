//! Robust mutex and seqlock under SIGKILL, across processes: a child holds
//! the lock and updates a two-field invariant in a loop; the parent kills it
//! at a random moment, locks, must see OwnerDied, repairs, and checks the
//! invariant. Runs as its own process (`harness = false`).

use forkroot::mutex::{LockError, RobustMutex, SeqLock, SeqLockError};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

mod common;
use common::{map_shared, Xorshift64 as Rng};

const ROUNDS: usize = 1000;
const SEQ_ROUNDS: usize = 300;

/// Protected value: invariant `a == b + 1` (and `b` counts updates).
#[repr(C)]
struct Pair {
    a: u64,
    b: u64,
}
// SAFETY: repr(C), two u64s, no pointers, any bits valid.
unsafe impl forkroot::region::Plain for Pair {}

#[repr(C)]
struct Shared {
    mutex: RobustMutex<Pair>,
    /// Set by the child once it holds the lock.
    locked: AtomicU32,
    seq: SeqLock<[u64; 256]>,
    seq_started: AtomicU32,
}

fn fork(child: impl FnOnce()) -> libc::pid_t {
    // SAFETY: this binary is single-threaded when it forks.
    match unsafe { libc::fork() } {
        0 => {
            child();
            // SAFETY: end the child without running the parent's exit path.
            unsafe { libc::_exit(0) }
        }
        -1 => panic!("fork failed"),
        pid => pid,
    }
}

fn kill_and_reap(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: `pid` is our unreaped child; `status` is writable.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
    }
    assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL);
}

fn spin_until(flag: &AtomicU32) {
    let t = Instant::now();
    while flag.load(Ordering::Acquire) == 0 {
        assert!(t.elapsed() < Duration::from_secs(5), "child never started");
        std::thread::yield_now();
    }
    flag.store(0, Ordering::Relaxed);
}

fn main() {
    common::watchdog(60);
    let started = Instant::now();
    let sh: *mut Shared = map_shared(std::mem::size_of::<Shared>()).cast();
    // SAFETY: fresh mapping, aligned, nobody else uses it yet.
    unsafe {
        RobustMutex::init(std::ptr::addr_of_mut!((*sh).mutex), Pair { a: 1, b: 0 }).unwrap();
        SeqLock::init(std::ptr::addr_of_mut!((*sh).seq), [0; 256]);
    }
    // SAFETY: initialised above; lives until exit.
    let sh: &'static Shared = unsafe { &*sh };
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ u64::from(std::process::id()));

    let (mut owner_died, mut broken_seen) = (0, 0);
    for round in 0..ROUNDS {
        let pid = fork(|| {
            let mut g = match sh.mutex.lock() {
                Ok(g) => g,
                Err(_) => return,
            };
            sh.locked.store(1, Ordering::Release);
            let p: *mut Pair = &mut *g;
            loop {
                // Two separate stores: between them `a == b + 2`.
                // SAFETY: we hold the lock; volatile keeps both steps.
                unsafe {
                    let b = std::ptr::addr_of!((*p).b).read_volatile();
                    std::ptr::addr_of_mut!((*p).a).write_volatile(b + 2);
                    std::ptr::addr_of_mut!((*p).b).write_volatile(b + 1);
                }
            }
        });
        spin_until(&sh.locked);
        std::thread::sleep(Duration::from_micros(rng.next() % 300));
        kill_and_reap(pid);
        let g = match sh.mutex.lock() {
            Ok(g) => g,
            Err(LockError::OwnerDied(mut g)) => {
                owner_died += 1;
                if g.a != g.b + 1 {
                    broken_seen += 1;
                    g.a = g.b + 1; // repair: the half-done step is undone
                }
                g.make_consistent()
            }
            Err(e) => panic!("round {round}: {e}"),
        };
        assert_eq!(g.a, g.b + 1, "round {round}: invariant after lock");
    }
    assert_eq!(owner_died, ROUNDS, "every next locker must see OwnerDied");
    let g = sh.mutex.lock().unwrap();
    println!(
        "mutex_crash: {ROUNDS} holders killed: OwnerDied {owner_died}/{ROUNDS}, \
         invariant broken mid-update and repaired {broken_seen} times, {} updates total",
        g.b
    );
    drop(g);

    // Abandoned repair across processes: NotRecoverable, never a hang.
    let pid = fork(|| {
        let g = sh.mutex.lock();
        sh.locked.store(1, Ordering::Release);
        std::mem::forget(g);
        loop {
            std::hint::spin_loop();
        }
    });
    spin_until(&sh.locked);
    kill_and_reap(pid);
    match sh.mutex.lock() {
        Err(LockError::OwnerDied(g)) => drop(g),
        other => panic!("expected OwnerDied, got {other:?}"),
    }
    assert!(matches!(sh.mutex.lock(), Err(LockError::NotRecoverable)));
    let pid = fork(|| {
        let code = match (sh.mutex.lock(), sh.mutex.try_lock()) {
            (Err(LockError::NotRecoverable), Err(LockError::NotRecoverable)) => 0,
            _ => 1,
        };
        // SAFETY: plain exit with the verdict.
        unsafe { libc::_exit(code) };
    });
    let mut status = 0;
    // SAFETY: our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "other process sees NotRecoverable"
    );
    println!("mutex_crash: abandoned repair -> NotRecoverable in this and another process");

    // SeqLock: a writer killed at random; readers get a whole value or a
    // bounded WriterDied, and the replacement writer recovers.
    let (mut died, mut clean) = (0, 0);
    for round in 0..SEQ_ROUNDS {
        let pid = fork(|| {
            sh.seq_started.store(1, Ordering::Release);
            loop {
                let _ = sh.seq.write(|v| {
                    let n = v[0] + 1;
                    *v = [n; 256];
                });
            }
        });
        spin_until(&sh.seq_started);
        std::thread::sleep(Duration::from_micros(rng.next() % 200));
        kill_and_reap(pid);
        match sh.seq.read() {
            Ok(v) => {
                assert!(v.iter().all(|&x| x == v[0]), "round {round}: torn read");
                clean += 1;
            }
            Err(SeqLockError::WriterDied) => {
                died += 1;
                // SAFETY: the writer is dead (reaped) and we are the only writer.
                let fixed = unsafe { sh.seq.recover(|v| *v = [v[0]; 256]) };
                assert!(fixed);
                let v = sh.seq.read().expect("readable after recover");
                assert!(v.iter().all(|&x| x == v[0]));
            }
            Err(e) => panic!("round {round}: {e}"),
        }
    }
    println!(
        "mutex_crash: seqlock writer killed {SEQ_ROUNDS} times: {clean} clean reads, \
         {died} dead mid-write (reported, recovered); total {:?}",
        started.elapsed()
    );
}

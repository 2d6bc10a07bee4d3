//! A ring writer killed mid-message whose pid is then reused by a live,
//! unrelated process: the consumer must still find the writer dead, skip its
//! slot and go on, not wait for the stranger to exit.
//!
//! Real processes and a real pid reuse: the test enters a new pid and mount
//! namespace (it needs root, as CI and the development machines run), mounts
//! that namespace's `/proc`, and after the writer is reaped writes its pid
//! minus one to `/proc/sys/kernel/ns_last_pid`, so the next fork gets the
//! writer's pid. Nothing else forks in the namespace, so the reuse is exact.
//!
//! The writer sends one 16 MiB message (with its crc), so it spends
//! milliseconds between reserving the slot and committing it; the test
//! SIGKILLs it as soon as the slot reads reserved, and checks it died
//! there (retrying otherwise).
//!
//! Runs in its own process (`harness = false`), because it forks; `alarm(60)`
//! is the watchdog in every process.

use std::process::exit;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use forkroot::ring::{self, Config, Kind};

mod common;
use common::{fork, kill_and_reap, map_shared, reap, watchdog};

const SLOT: u32 = 16 << 20;
/// Offset of slot 0's state word (the layout in `forkroot::ring`).
const SLOT0_STATE: usize = 384;

fn main() {
    watchdog(60);
    // SAFETY: unshare has no memory preconditions; this process is
    // single-threaded, as CLONE_NEWNS requires.
    if unsafe { libc::unshare(libc::CLONE_NEWPID | libc::CLONE_NEWNS) } != 0 {
        let e = std::io::Error::last_os_error();
        eprintln!("ring_pid_reuse: unshare(CLONE_NEWPID | CLONE_NEWNS) failed: {e} (needs root)");
        exit(1);
    }
    let init = fork();
    if init == 0 {
        exit(namespace_init());
    }
    let status = reap(init);
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        eprintln!("ring_pid_reuse: FAILED (status {status:#x})");
        exit(1);
    }
    println!("ring_pid_reuse: ok");
}

/// Pid 1 of the new namespace: runs the scenario, returns the exit code.
fn namespace_init() -> i32 {
    watchdog(60);
    mount_proc();
    let cfg = Config {
        kind: Kind::Mpsc,
        capacity: 4,
        slot_size: SLOT,
        checksum: true,
    };
    let len = ring::required_size(&cfg).expect("config");
    let mem = map_shared(len);
    // SAFETY: the state word of slot 0, inside the mapping, 8-aligned; only
    // read through an atomic.
    let state0 = unsafe { &*mem.add(SLOT0_STATE).cast::<AtomicU64>() };

    let mut attempts = 0;
    let writer = loop {
        attempts += 1;
        assert!(attempts <= 20, "the writer never died mid-message");
        // SAFETY: `len` bytes of shared memory, alive for the process; no
        // other process uses it until the fork below.
        let r = unsafe { ring::init(mem, len, &cfg) }.expect("init");
        let msg = vec![0xA5u8; SLOT as usize];
        let w = fork();
        if w == 0 {
            let p = r.producer().expect("producer");
            let _ = p.try_send(&msg);
            exit(0);
        }
        let t = Instant::now();
        // Reserved: `seq << 32 | writer` with seq 0 and a writer id.
        while state0.load(Ordering::Acquire) == 0 && t.elapsed() < Duration::from_secs(5) {
            std::hint::spin_loop();
        }
        kill_and_reap(w);
        let s = state0.load(Ordering::Acquire);
        if s >> 32 == 0 && s as u32 != 0 {
            break w;
        }
        eprintln!("ring_pid_reuse: writer {w} was not caught mid-message (state {s:#x}), again");
    };

    // The next fork takes the dead writer's pid.
    std::fs::write("/proc/sys/kernel/ns_last_pid", format!("{}", writer - 1))
        .expect("write ns_last_pid");
    let stranger = fork();
    if stranger == 0 {
        loop {
            // SAFETY: pause only waits for a signal.
            unsafe { libc::pause() };
        }
    }
    assert_eq!(stranger, writer, "the pid was not reused");

    // SAFETY: as above; the ring was laid out by the last `init`.
    let r = unsafe { ring::attach(mem, len) }.expect("attach");
    let p = fork();
    if p == 0 {
        r.producer()
            .expect("producer")
            .try_send(b"after")
            .expect("send");
        exit(0);
    }
    assert_eq!(reap(p), 0, "second producer failed");

    let mut c = r.consumer().expect("consumer");
    let mut buf = vec![0u8; SLOT as usize];
    let got = c.recv_timeout(&mut buf, Some(Duration::from_secs(3)));
    let stats = r.stats();
    kill_and_reap(stranger);
    match got {
        Ok(Some(5)) if &buf[..5] == b"after" => {}
        other => {
            eprintln!(
                "ring_pid_reuse: the consumer stalled behind dead writer {writer}, \
                 whose pid a live process now has: {other:?}, {stats:?}"
            );
            return 1;
        }
    }
    if stats.lost_uncommitted != 1 {
        eprintln!("ring_pid_reuse: expected 1 skipped slot, {stats:?}");
        return 1;
    }
    println!(
        "ring_pid_reuse: writer {writer} killed mid-message (attempt {attempts}), \
         pid reused by {stranger}, its slot skipped, next message received"
    );
    0
}

/// Makes `/proc` this pid namespace's, in a private mount namespace.
fn mount_proc() {
    let none = std::ptr::null::<libc::c_char>();
    // SAFETY: NUL-terminated literals and null pointers, as mount(2) allows;
    // the mount namespace is this process's own (CLONE_NEWNS).
    unsafe {
        assert_eq!(
            libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null()
            ),
            0,
            "make / private: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(
            libc::mount(
                c"proc".as_ptr(),
                c"/proc".as_ptr(),
                c"proc".as_ptr(),
                0,
                std::ptr::null()
            ),
            0,
            "mount /proc: {}",
            std::io::Error::last_os_error()
        );
    }
}

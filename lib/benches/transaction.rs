//! Transaction overhead against its floor, measured in the same run:
//!
//! - latency: `start` + poll(2) on `Transactions::fd` + `Transactions::poll`
//!   until the outcome is handed over, for a trivial task, against a bare
//!   `fork` / child `_exit(0)` / `waitpid` — median of each repetition's
//!   median, and their ratio (target: within 1.5x);
//! - throughput: transactions per second with 2 in flight, against bare
//!   forks with 2 in flight.
//!
//! Repetitions of the two alternate, so drift in the machine's load hits
//! both. `cargo bench -p forkroot --bench transaction`

use forkroot::transaction::{Output, Policy, Transactions};
use std::time::{Duration, Instant};

#[path = "../tests/common/mod.rs"]
mod common;

/// Shared memory with every page touched, so no first-touch fault is timed.
fn prefaulted(len: usize) -> &'static mut [u8] {
    let area = common::shared_slice(len);
    area.fill(0);
    area
}

const REPS: usize = 9;
const ITERS: usize = 400;
const THROUGHPUT_FOR: Duration = Duration::from_millis(700);

fn trivial(_: &[u8], out: &mut Output<'_>) -> Result<(), ()> {
    out.write(b"ok").map_err(|_| ())
}

fn wait_readable(fd: i32) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, 5000) };
}

/// One bare fork: the child `_exit(0)`s, the parent waits for it.
fn bare_fork() {
    // SAFETY: this benchmark is single-threaded; the child only `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: our own child; `status` is writable.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid);
}

/// One transaction, start to outcome.
fn one_transaction(tx: &mut Transactions<'_>) {
    tx.start(trivial, b"", 0, 0).expect("start");
    let mut done = false;
    while !done {
        wait_readable(tx.fd());
        tx.poll(|d| {
            assert_eq!(d.result.as_deref(), Ok(&b"ok"[..]));
            done = true;
        });
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median time of one call of `f` over `ITERS` calls, in µs.
fn rep(mut f: impl FnMut()) -> f64 {
    let mut v: Vec<f64> = (0..ITERS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    median(&mut v)
}

/// Transactions per second with 2 in flight.
fn tx_throughput(tx: &mut Transactions<'_>) -> f64 {
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < THROUGHPUT_FOR {
        while tx.in_flight() < 2 {
            tx.start(trivial, b"", 0, 0).expect("start");
        }
        wait_readable(tx.fd());
        tx.poll(|d| {
            assert!(d.result.is_ok());
            n += 1;
        });
    }
    while tx.in_flight() > 0 {
        wait_readable(tx.fd());
        tx.poll(|_| n += 1);
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// Bare forks per second with 2 in flight.
fn fork_throughput() -> f64 {
    let spawn = || {
        // SAFETY: single-threaded; the child only `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(0) };
        }
    };
    let t = Instant::now();
    let mut n = 0u64;
    let mut running = 0;
    while t.elapsed() < THROUGHPUT_FOR {
        while running < 2 {
            spawn();
            running += 1;
        }
        let mut status = 0;
        // SAFETY: `status` is writable.
        assert!(unsafe { libc::waitpid(-1, &mut status, 0) } > 0);
        running -= 1;
        n += 1;
    }
    for _ in 0..running {
        let mut status = 0;
        // SAFETY: `status` is writable.
        unsafe { libc::waitpid(-1, &mut status, 0) };
        n += 1;
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let slots = 2;
    let size = Transactions::required_size(slots, 64, 64);
    let policy = Policy::default();
    let mut tx = Transactions::new(prefaulted(size), slots, 64, 64, policy, "bench").unwrap();

    // Warm up both paths.
    for _ in 0..50 {
        bare_fork();
        one_transaction(&mut tx);
    }
    tx.poll(|_| {});

    let (mut bare, mut txs) = (Vec::new(), Vec::new());
    for _ in 0..REPS {
        bare.push(rep(bare_fork));
        // Drain the SIGCHLDs of the bare forks, so they do not wake the
        // transaction loop for nothing.
        tx.poll(|_| {});
        txs.push(rep(|| one_transaction(&mut tx)));
    }
    let (b, t) = (median(&mut bare), median(&mut txs));
    println!("transaction latency, median of {REPS} medians of {ITERS}:");
    println!("  bare fork/_exit/waitpid       {b:8.1} us");
    println!("  transaction start..outcome    {t:8.1} us");
    println!(
        "  ratio                         {:8.2}x (target <= 1.5x)",
        t / b
    );

    let (mut bare_tp, mut tx_tp) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        bare_tp.push(fork_throughput());
        tx.poll(|_| {});
        tx_tp.push(tx_throughput(&mut tx));
    }
    let (b, t) = (median(&mut bare_tp), median(&mut tx_tp));
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    println!("throughput with 2 in flight ({cpus} cpus), median of 5 runs:");
    println!("  bare forks                    {b:8.0} /s");
    println!("  transactions                  {t:8.0} /s");
    println!("  ratio                         {:8.2}x", b / t);
}

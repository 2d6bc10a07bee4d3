//! Transactions with real forks. Each case runs in its own forked "daemon"
//! process (single-threaded, with an alarm watchdog), which forks the
//! transactions; the case reports failure through its exit status. Runs as
//! its own process (`harness = false`), so nothing here forks from a
//! multi-threaded process.
//!
//! The allocation guard is this binary's global allocator, so the cases can
//! check that `start` and `poll` allocate nothing.

use forkroot::alloc::{self, Guarded, Policy as AllocPolicy};
use forkroot::transaction::{Done, Output, Policy, StartError, Transactions, TxError, TxId};
use forkroot::ExitReason;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod common;

#[global_allocator]
static A: Guarded = Guarded::new();

/// Seconds a case may run before its watchdog kills it.
const WATCHDOG_S: u32 = 15;

/// A shared counter page that tasks (in the forked children) and the case
/// (in the daemon) both see.
fn shared_counters() -> &'static [AtomicU64; 8] {
    let bytes = common::shared_slice(4096);
    // SAFETY: the page is 4096 bytes, page-aligned and zeroed, and lives
    // forever; an all-zero AtomicU64 array is valid.
    unsafe { &*bytes.as_ptr().cast::<[AtomicU64; 8]>() }
}

/// Counters shared with the children, set up before each case forks.
static COUNTERS: AtomicPtr<[AtomicU64; 8]> = AtomicPtr::new(std::ptr::null_mut());

fn counters() -> &'static [AtomicU64; 8] {
    let p = COUNTERS.load(Ordering::Relaxed);
    assert!(!p.is_null(), "counters set up");
    // SAFETY: a pointer from `shared_counters`, valid forever.
    unsafe { &*p }
}

fn new_tx(slots: usize, policy: Policy) -> Transactions<'static> {
    let size = Transactions::required_size(slots, 256, 256);
    Transactions::new(common::shared_slice(size), slots, 256, 256, policy, "test").unwrap()
}

fn quick(retries: u32) -> Policy {
    Policy {
        deadline: Duration::from_secs(5),
        retries,
        retry_backoff: Duration::from_millis(5),
        quarantine_after: 0,
    }
}

/// What `poll` handed out, copied (the result borrows the slot).
#[derive(Debug, Clone)]
struct Outcome {
    id: TxId,
    tag: u64,
    key: u64,
    attempts: u32,
    result: Result<Vec<u8>, TxError>,
}

/// Waits on the descriptor and the timer, as a daemon's loop would, until
/// `n` transactions finished; panics after `limit`.
fn wait_done(tx: &mut Transactions<'_>, n: usize, limit: Duration) -> Vec<Outcome> {
    let start = Instant::now();
    let mut out = Vec::new();
    while out.len() < n {
        assert!(start.elapsed() < limit, "only {} of {n} done", out.len());
        poll_fd(tx, Duration::from_millis(100));
        tx.poll(|d: Done<'_>| {
            out.push(Outcome {
                id: d.id,
                tag: d.tag,
                key: d.key,
                attempts: d.attempts,
                result: d.result.map(<[u8]>::to_vec),
            })
        });
    }
    out
}

/// poll(2) on the transactions' descriptor, at most until their next timer
/// or `max`.
fn poll_fd(tx: &Transactions<'_>, max: Duration) {
    let timeout = tx.next_timer().map_or(max, |t| t.min(max));
    let mut pfd = libc::pollfd {
        fd: tx.fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32;
    // SAFETY: `pfd` is one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, ms) };
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

// ---------------------------------------------------------------------------
// Tasks
// ---------------------------------------------------------------------------

fn echo_upper(input: &[u8], out: &mut Output<'_>) -> Result<(), ()> {
    for &b in input {
        out.write(&[b.to_ascii_uppercase()]).map_err(|_| ())?;
    }
    Ok(())
}

/// Crashes with SIGSEGV on its first attempt only (counter 0 counts
/// attempts across the forked children).
fn segv_once(input: &[u8], out: &mut Output<'_>) -> Result<(), ()> {
    if counters()[0].fetch_add(1, Ordering::SeqCst) == 0 {
        // SAFETY: deliberately not safe: the point is the SIGSEGV.
        unsafe { std::ptr::write_volatile(std::ptr::null_mut::<u8>(), 1) };
    }
    echo_upper(input, out)
}

fn segv_always(_: &[u8], _: &mut Output<'_>) -> Result<(), ()> {
    counters()[1].fetch_add(1, Ordering::SeqCst);
    // SAFETY: deliberately not safe: the point is the SIGSEGV.
    unsafe { std::ptr::write_volatile(std::ptr::null_mut::<u8>(), 1) };
    Ok(())
}

fn exit_without_commit(_: &[u8], out: &mut Output<'_>) -> Result<(), ()> {
    counters()[2].fetch_add(1, Ordering::SeqCst);
    let _ = out.write(b"half a result");
    // SAFETY: ends the process at once, before the commit.
    unsafe { libc::_exit(0) }
}

fn refuse(_: &[u8], _: &mut Output<'_>) -> Result<(), ()> {
    Err(())
}

fn sleep_forever(_: &[u8], _: &mut Output<'_>) -> Result<(), ()> {
    // SAFETY: getpid has no preconditions.
    counters()[3].store(unsafe { libc::getpid() } as u64, Ordering::SeqCst);
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// The pid `sleep_forever` published, once its transaction runs (within
/// 5 s).
fn sleeper_pid() -> i32 {
    let t0 = Instant::now();
    loop {
        let p = counters()[3].load(Ordering::SeqCst) as i32;
        if p > 0 {
            return p;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "transaction never ran"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn sleep_200ms(input: &[u8], out: &mut Output<'_>) -> Result<(), ()> {
    std::thread::sleep(Duration::from_millis(200));
    echo_upper(input, out)
}

fn panics(_: &[u8], _: &mut Output<'_>) -> Result<(), ()> {
    panic!("a task that panics");
}

/// Sums 1..=n over 4 threads (each takes every 4th number) and writes the
/// total as 8 bytes LE.
fn four_threads(input: &[u8], out: &mut Output<'_>) -> Result<(), ()> {
    let n = u64::from_le_bytes(input.try_into().map_err(|_| ())?);
    // The barrier makes the 4 threads run at the same time (it would hang,
    // and the case's watchdog fire, if they could not).
    let barrier = std::sync::Barrier::new(4);
    let total: u64 = std::thread::scope(|s| {
        let parts: Vec<_> = (0..4u64)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    (1..=n).filter(|k| k % 4 == t).sum::<u64>()
                })
            })
            .collect();
        parts.into_iter().map(|h| h.join().unwrap()).sum()
    });
    out.write(&total.to_le_bytes()).map_err(|_| ())
}

/// Writes its result, then forks a helper that flips a bit of it after the
/// commit (a wild write from a process the task made) and records that it
/// did in counter 4.
fn corrupted_after_commit(input: &[u8], out: &mut Output<'_>) -> Result<(), ()> {
    echo_upper(input, out)?;
    let victim = out.as_mut_slice().as_mut_ptr() as usize;
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    // SAFETY: this transaction is single-threaded here; the helper makes only
    // async-signal-safe calls and `_exit`s.
    match unsafe { libc::fork() } {
        0 => {
            // Wait for the commit (the transaction's exit), then scribble.
            // SAFETY: getppid/usleep are async-signal-safe; `victim` points
            // into the shared slot, which this process still maps.
            unsafe {
                while libc::getppid() == me {
                    libc::usleep(1000);
                }
                let p = victim as *mut u8;
                std::ptr::write_volatile(p, std::ptr::read_volatile(p) ^ 0x01);
            }
            counters()[4].store(1, Ordering::SeqCst);
            // SAFETY: ends the helper without running anything else.
            unsafe { libc::_exit(0) }
        }
        -1 => Err(()),
        _ => Ok(()),
    }
}

fn trivial(_: &[u8], out: &mut Output<'_>) -> Result<(), ()> {
    out.write(b"ok").map_err(|_| ())
}

// ---------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------

fn ok_result() {
    let mut tx = new_tx(2, Policy::default());
    let id = tx.start(echo_upper, b"hello", 7, 99).unwrap();
    assert_eq!(tx.in_flight(), 1);
    let done = wait_done(&mut tx, 1, Duration::from_secs(5));
    assert_eq!(done[0].id, id);
    assert_eq!((done[0].tag, done[0].key, done[0].attempts), (99, 7, 1));
    assert_eq!(done[0].result.as_deref(), Ok(&b"HELLO"[..]));
    assert_eq!(tx.in_flight(), 0);
    assert_eq!(tx.next_timer(), None);
    // The id displays as a uuid v4.
    let text = id.to_string();
    assert_eq!(text.len(), 36);
    assert_eq!(&text[14..15], "4");
}

fn segv_retried_then_ok() {
    let mut tx = new_tx(1, quick(2));
    tx.start(segv_once, b"abc", 1, 0).unwrap();
    let done = wait_done(&mut tx, 1, Duration::from_secs(5));
    assert_eq!(done.len(), 1, "exactly one outcome for the transaction");
    assert_eq!(done[0].result.as_deref(), Ok(&b"ABC"[..]));
    assert_eq!(done[0].attempts, 2, "the first attempt crashed");
    assert_eq!(counters()[0].load(Ordering::SeqCst), 2);
}

fn segv_retries_exhausted() {
    let mut tx = new_tx(1, quick(1));
    tx.start(segv_always, b"x", 2, 0).unwrap();
    let done = wait_done(&mut tx, 1, Duration::from_secs(5));
    match done[0].result {
        Err(TxError::Crashed {
            reason: ExitReason::Signaled { signal, .. },
            attempts: 2,
        }) => assert_eq!(signal, forkroot::Signal::SEGV),
        ref other => panic!("expected a SIGSEGV crash after 2 attempts, got {other:?}"),
    }
    assert_eq!(counters()[1].load(Ordering::SeqCst), 2);
}

fn exit_zero_without_commit_fails() {
    let mut tx = new_tx(1, quick(1));
    tx.start(exit_without_commit, b"x", 3, 0).unwrap();
    let done = wait_done(&mut tx, 1, Duration::from_secs(5));
    assert_eq!(done[0].result, Err(TxError::NoCommit));
    assert_eq!(done[0].attempts, 2, "NoCommit is retried like a crash");
    assert_eq!(counters()[2].load(Ordering::SeqCst), 2);
    // A task that returns Err(()) commits nothing either.
    tx.start(refuse, b"x", 4, 0).unwrap();
    let done = wait_done(&mut tx, 1, Duration::from_secs(5));
    assert_eq!(done[0].result, Err(TxError::NoCommit));
}

fn panic_is_a_crash() {
    // Quiet: the panic message is expected (the hook is inherited by the
    // transaction).
    std::panic::set_hook(Box::new(|_| {}));
    let mut tx = new_tx(1, quick(0));
    tx.start(panics, b"x", 5, 0).unwrap();
    let done = wait_done(&mut tx, 1, Duration::from_secs(5));
    assert!(
        matches!(
            done[0].result,
            Err(TxError::Crashed {
                reason: ExitReason::Signaled {
                    signal: forkroot::Signal::ABRT,
                    ..
                },
                attempts: 1
            })
        ),
        "{:?}",
        done[0].result
    );
}

fn deadline_kills() {
    let policy = Policy {
        deadline: Duration::from_millis(300),
        retries: 0,
        ..quick(0)
    };
    let mut tx = new_tx(1, policy);
    let t0 = Instant::now();
    tx.start(sleep_forever, b"x", 6, 0).unwrap();
    let timer = tx.next_timer().expect("a deadline timer");
    assert!(timer <= Duration::from_millis(300));
    let done = wait_done(&mut tx, 1, Duration::from_secs(5));
    let took = t0.elapsed();
    assert_eq!(done[0].result, Err(TxError::Deadline { attempts: 1 }));
    assert!(took >= Duration::from_millis(300), "killed early: {took:?}");
    let pid = counters()[3].load(Ordering::SeqCst) as i32;
    assert!(pid > 0);
    assert!(!pid_alive(pid), "the killed transaction is reaped");
}

fn deadline_retried() {
    let policy = Policy {
        deadline: Duration::from_millis(100),
        retries: 1,
        ..quick(0)
    };
    let mut tx = new_tx(1, policy);
    tx.start(sleep_forever, b"x", 6, 0).unwrap();
    let done = wait_done(&mut tx, 1, Duration::from_secs(5));
    assert_eq!(done[0].result, Err(TxError::Deadline { attempts: 2 }));
}

fn sigterm_ends_without_retry() {
    let policy = Policy {
        retries: 2,
        quarantine_after: 1,
        ..quick(2)
    };
    let mut tx = new_tx(1, policy);
    tx.start(sleep_forever, b"x", 8, 0).unwrap();
    let pid = sleeper_pid();
    // As the root's stop does to the daemon's process group.
    // SAFETY: kill has no memory preconditions; `pid` is our unreaped child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let done = wait_done(&mut tx, 1, Duration::from_secs(5));
    assert!(
        matches!(
            done[0].result,
            Err(TxError::Crashed {
                reason: ExitReason::Signaled {
                    signal: forkroot::Signal::TERM,
                    ..
                },
                attempts: 1
            })
        ),
        "{:?}",
        done[0].result
    );
    assert_eq!(tx.quarantined(8), None, "a stop is not the input's fault");
}

fn quarantine_after_k_crashes() {
    let policy = Policy {
        retries: 5,
        quarantine_after: 3,
        ..quick(5)
    };
    let mut tx = new_tx(2, policy);
    tx.start(segv_always, b"poison", 42, 0).unwrap();
    let done = wait_done(&mut tx, 1, Duration::from_secs(5));
    assert_eq!(done[0].result, Err(TxError::Quarantined { crashes: 3 }));
    assert_eq!(done[0].attempts, 3, "no attempt after the third crash");
    assert_eq!(counters()[1].load(Ordering::SeqCst), 3);
    match tx.start(segv_always, b"poison", 42, 0) {
        Err(StartError::Quarantined { crashes: 3 }) => {}
        other => panic!("expected Quarantined, got {other:?}"),
    }
    assert_eq!(counters()[1].load(Ordering::SeqCst), 3, "nothing forked");
    // Other keys still run; a pardon lifts the quarantine.
    tx.start(echo_upper, b"ok", 43, 0).unwrap();
    assert_eq!(
        wait_done(&mut tx, 1, Duration::from_secs(5))[0]
            .result
            .as_deref(),
        Ok(&b"OK"[..])
    );
    assert_eq!(tx.quarantined(42), Some(3));
    tx.pardon(42);
    assert_eq!(tx.quarantined(42), None);
    tx.start(echo_upper, b"poison", 42, 0).unwrap();
    wait_done(&mut tx, 1, Duration::from_secs(5));
}

fn quarantine_table_evicts_oldest() {
    let policy = Policy {
        retries: 0,
        quarantine_after: 1,
        ..quick(0)
    };
    let mut tx = new_tx(1, policy);
    // 257 distinct keys crash once each, one after the other: the first is
    // evicted.
    let n = forkroot::transaction::QUARANTINE_ENTRIES as u64 + 1;
    for k in 0..n {
        tx.start(segv_always, b"x", 1000 + k, 0).unwrap();
        let done = wait_done(&mut tx, 1, Duration::from_secs(5));
        assert_eq!(done[0].result, Err(TxError::Quarantined { crashes: 1 }));
    }
    assert_eq!(tx.quarantined(1000), None, "oldest entry evicted");
    assert_eq!(tx.quarantined(1000 + n - 1), Some(1));
    assert!(tx.quarantined(1001).is_some());
}

fn dies_with_daemon() {
    // Become a subreaper, so the orphaned transaction is reparented to this
    // process and its end can be checked with waitpid.
    // SAFETY: PR_SET_CHILD_SUBREAPER takes a boolean.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0);
    // SAFETY: this case process is single-threaded.
    let daemon = unsafe { libc::fork() };
    assert!(daemon >= 0);
    if daemon == 0 {
        // SAFETY: alarm has no preconditions (it is not inherited over fork).
        unsafe { libc::alarm(WATCHDOG_S) };
        let mut tx = new_tx(1, quick(0));
        tx.start(sleep_forever, b"x", 1, 0).unwrap();
        loop {
            std::thread::sleep(Duration::from_secs(60));
        }
    }
    let tx_pid = sleeper_pid();
    // SAFETY: our own child.
    unsafe { libc::kill(daemon, libc::SIGKILL) };
    let mut status = 0;
    // SAFETY: our own child; `status` is writable.
    assert_eq!(unsafe { libc::waitpid(daemon, &mut status, 0) }, daemon);
    let t1 = Instant::now();
    loop {
        // SAFETY: `status` is writable; the transaction is now our child.
        let r = unsafe { libc::waitpid(tx_pid, &mut status, libc::WNOHANG) };
        if r == tx_pid {
            assert!(libc::WIFSIGNALED(status));
            assert_eq!(libc::WTERMSIG(status), libc::SIGKILL, "killed by PDEATHSIG");
            break;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(2),
            "transaction {tx_pid} outlived its daemon"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(!pid_alive(tx_pid));
}

fn threads_inside() {
    let mut tx = new_tx(1, Policy::default());
    tx.start(four_threads, &1000u64.to_le_bytes(), 1, 0)
        .unwrap();
    let done = wait_done(&mut tx, 1, Duration::from_secs(5));
    assert_eq!(done[0].result.as_deref(), Ok(&500_500u64.to_le_bytes()[..]));
}

fn corrupt_result_rejected() {
    let mut tx = new_tx(1, quick(0));
    tx.start(corrupted_after_commit, b"abc", 1, 0).unwrap();
    // Let the helper flip its bit before the daemon looks at the slot.
    let t0 = Instant::now();
    while counters()[4].load(Ordering::SeqCst) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "helper never wrote");
        std::thread::sleep(Duration::from_millis(2));
    }
    let done = wait_done(&mut tx, 1, Duration::from_secs(5));
    assert_eq!(done[0].result, Err(TxError::NoCommit));
}

fn several_in_flight() {
    let mut tx = new_tx(4, Policy::default());
    let t0 = Instant::now();
    let mut ids = Vec::new();
    for k in 0..4u64 {
        ids.push(
            tx.start(sleep_200ms, format!("job{k}").as_bytes(), k, k)
                .unwrap(),
        );
    }
    assert_eq!(tx.in_flight(), 4);
    assert!(matches!(
        tx.start(trivial, b"", 9, 9),
        Err(StartError::NoFreeSlot)
    ));
    let mut done = wait_done(&mut tx, 4, Duration::from_secs(5));
    // 4 x 200 ms ran concurrently, not one after the other.
    assert!(
        t0.elapsed() < Duration::from_millis(700),
        "{:?}",
        t0.elapsed()
    );
    done.sort_by_key(|d| d.tag);
    for (k, d) in done.iter().enumerate() {
        assert_eq!(d.id, ids[k]);
        assert_eq!(d.result.as_deref(), Ok(format!("JOB{k}").as_bytes()));
    }
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 4);
}

fn input_too_large() {
    let mut tx = new_tx(1, Policy::default());
    assert!(matches!(
        tx.start(trivial, &[0; 257], 1, 0),
        Err(StartError::InputTooLarge)
    ));
    assert_eq!(tx.in_flight(), 0);
}

fn start_and_poll_allocate_nothing() {
    let mut tx = new_tx(2, quick(2));
    let mut results = [0u8; 16];
    let mut got = 0usize;
    // Count first (a clear number on failure), then forbid (an allocation
    // aborts the process: the case fails with SIGABRT).
    for policy in [AllocPolicy::Count, AllocPolicy::Forbid] {
        counters()[0].store(0, Ordering::SeqCst);
        alloc::reset_stats();
        alloc::set_policy(policy);
        tx.start(trivial, b"", 1, 1).unwrap();
        tx.start(segv_once, b"ab", 2, 2).unwrap();
        let mut left = 2;
        while left > 0 {
            poll_fd(&tx, Duration::from_millis(50));
            tx.poll(|d| {
                if let Ok(r) = d.result {
                    results[..r.len()].copy_from_slice(r);
                    got += 1;
                }
                left -= 1;
            });
        }
        let stats = alloc::stats();
        alloc::set_policy(AllocPolicy::Off);
        assert_eq!(stats.allocs, 0, "{policy:?}: start/poll allocated");
    }
    assert_eq!(got, 4);
}

fn drop_kills_in_flight() {
    let mut tx = new_tx(1, Policy::default());
    tx.start(sleep_forever, b"x", 1, 0).unwrap();
    let pid = sleeper_pid();
    drop(tx);
    assert!(
        !pid_alive(pid),
        "dropped transactions are killed and reaped"
    );
}

fn child_setup_seen_in_proc() {
    // The child's title, process group and descriptors.
    fn inspect(_: &[u8], out: &mut Output<'_>) -> Result<(), ()> {
        let comm = std::fs::read_to_string("/proc/self/comm").map_err(|_| ())?;
        // SAFETY: getpgrp/getppid have no preconditions.
        let (pgrp, ppid) = unsafe { (libc::getpgrp(), libc::getppid()) };
        let fds = std::fs::read_dir("/proc/self/fd").map_err(|_| ())?.count();
        let line = format!("{}|{pgrp}|{ppid}|{fds}", comm.trim_end());
        out.write(line.as_bytes()).map_err(|_| ())
    }
    let mut tx = new_tx(1, Policy::default());
    tx.start(inspect, b"", 1, 0).unwrap();
    let done = wait_done(&mut tx, 1, Duration::from_secs(5));
    let text = String::from_utf8(done[0].result.clone().unwrap()).unwrap();
    let parts: Vec<&str> = text.split('|').collect();
    // SAFETY: getpgrp/getpid have no preconditions.
    let (pgrp, me) = unsafe { (libc::getpgrp(), libc::getpid()) };
    assert_eq!(parts[0], "forkroot: test", "comm, cut at 15 bytes");
    assert_eq!(parts[1], pgrp.to_string(), "stays in the daemon's group");
    assert_eq!(parts[2], me.to_string());
    // 0, 1, 2 and the one read_dir itself opened.
    assert!(parts[3].parse::<usize>().unwrap() <= 4, "fds: {}", parts[3]);
}

// ---------------------------------------------------------------------------

fn run(name: &str, case: fn()) -> bool {
    let fresh: *const [AtomicU64; 8] = shared_counters();
    COUNTERS.store(fresh.cast_mut(), Ordering::Relaxed);
    // SAFETY: this test process is single-threaded.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        // SAFETY: alarm has no preconditions; the default action kills us.
        unsafe { libc::alarm(WATCHDOG_S) };
        case();
        // SAFETY: ends the case process without unwinding.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: our own child; `status` is writable.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    if ok {
        println!("test {name} ... ok");
    } else if libc::WIFSIGNALED(status) {
        println!("test {name} ... FAILED (signal {})", libc::WTERMSIG(status));
    } else {
        println!(
            "test {name} ... FAILED (exit {})",
            libc::WEXITSTATUS(status)
        );
    }
    ok
}

fn main() {
    // No core files from the deliberate crashes.
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `none` is a valid rlimit; lowering a limit needs no privilege.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) };
    let cases: &[(&str, fn())] = &[
        ("ok_result", ok_result),
        ("segv_retried_then_ok", segv_retried_then_ok),
        ("segv_retries_exhausted", segv_retries_exhausted),
        (
            "exit_zero_without_commit_fails",
            exit_zero_without_commit_fails,
        ),
        ("panic_is_a_crash", panic_is_a_crash),
        ("deadline_kills", deadline_kills),
        ("deadline_retried", deadline_retried),
        ("sigterm_ends_without_retry", sigterm_ends_without_retry),
        ("quarantine_after_k_crashes", quarantine_after_k_crashes),
        (
            "quarantine_table_evicts_oldest",
            quarantine_table_evicts_oldest,
        ),
        ("dies_with_daemon", dies_with_daemon),
        ("threads_inside", threads_inside),
        ("corrupt_result_rejected", corrupt_result_rejected),
        ("several_in_flight", several_in_flight),
        ("input_too_large", input_too_large),
        (
            "start_and_poll_allocate_nothing",
            start_and_poll_allocate_nothing,
        ),
        ("drop_kills_in_flight", drop_kills_in_flight),
        ("child_setup_seen_in_proc", child_setup_seen_in_proc),
    ];
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut failed = 0;
    let mut ran = 0;
    for (name, case) in cases {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        ran += 1;
        if !run(name, *case) {
            failed += 1;
        }
    }
    println!("\ntest result: {} passed; {failed} failed", ran - failed);
    if failed > 0 {
        std::process::exit(1);
    }
}

//! Flight log under SIGKILL: processes (each with threads) write concurrently
//! and are killed at random moments. The reader must never panic, never pass
//! a torn record, and must return every record whose write completed, within
//! the ring's capacity. Runs as its own process (`harness = false`).

use forkroot::log::{drain, tail, Cursor, FlightLog, Level, CAPACITY};
use forkroot::region::LOG_SIZE;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

mod common;
use common::{map_shared, Xorshift64 as Rng};

const PROCS: usize = 4;
const THREADS: usize = 2; // per process, plus its main thread
const ROUNDS: usize = 30;
/// Tickets tracked in the shared "done" table; writers stop beyond it.
const MAX_TICKETS: usize = 1 << 22;

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3)
    })
}

/// "w<writer> i<index> <filler> #<fnv of the rest>".
fn checked_text(buf: &mut String, w: usize, i: u64) {
    buf.clear();
    let _ = write!(buf, "w{w} i{i} ");
    for k in 0..((w as u64 * 31 + i * 7) % 150) {
        buf.push((b'a' + ((w as u64 + i + k) % 26) as u8) as char);
    }
    let h = fnv(buf.as_bytes());
    let _ = write!(buf, " #{h:016x}");
}

fn verify(text: &str) -> bool {
    let Some((body, h)) = text.rsplit_once(" #") else {
        return false;
    };
    u64::from_str_radix(h, 16).ok() == Some(fnv(body.as_bytes()))
}

fn writer(log: &'static FlightLog, done: &'static [AtomicU8], w: usize) {
    let mut text = String::with_capacity(256);
    for i in 0.. {
        checked_text(&mut text, w, i);
        if let Some(t) = log.write(Level::Info, w as u32, w as u128, &text) {
            match done.get(t as usize) {
                Some(d) => d.store(1, Ordering::Release),
                None => return,
            }
        }
    }
}

fn check(area: &[u8], log: &FlightLog, done: &[AtomicU8], round: usize) -> (usize, u64) {
    let mut seqs = HashSet::new();
    let mut torn = 0;
    tail(area, usize::MAX, |r| {
        if !verify(r.text()) {
            torn += 1;
        }
        seqs.insert(r.seq());
    });
    assert_eq!(torn, 0, "round {round}: reader passed a torn record");
    let next = log.next_seq();
    let lo = next.saturating_sub(CAPACITY as u64);
    let mut missing = Vec::new();
    for t in lo..next.min(MAX_TICKETS as u64) {
        if done[t as usize].load(Ordering::Acquire) == 1 && !seqs.contains(&t) {
            missing.push(t);
        }
    }
    assert!(
        missing.is_empty(),
        "round {round}: completed records missing: {missing:?} (next {next})"
    );
    // drain sees the same records (the second call passes the dead writers' slots).
    let mut cur = Cursor::new();
    let mut drained = HashSet::new();
    for _ in 0..2 {
        drain(area, &mut cur, |r| {
            assert!(verify(r.text()));
            drained.insert(r.seq());
        });
    }
    assert_eq!(drained, seqs, "round {round}: drain and tail disagree");
    (seqs.len(), next)
}

fn main() {
    common::watchdog(60);
    let started = Instant::now();
    let area_ptr = map_shared(LOG_SIZE);
    let done_ptr = map_shared(MAX_TICKETS);
    // SAFETY: the mappings live until exit; AtomicU8 has the size and
    // alignment of u8, and zeroed memory is a valid AtomicU8.
    let done: &'static [AtomicU8] =
        unsafe { std::slice::from_raw_parts(done_ptr.cast::<AtomicU8>(), MAX_TICKETS) };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
    let (mut total_records, mut total_writes) = (0usize, 0u64);

    for round in 0..ROUNDS {
        for d in done {
            d.store(0, Ordering::Relaxed);
        }
        // SAFETY: the area is LOG_SIZE bytes, page-aligned, mapped forever.
        unsafe { std::ptr::write_bytes(area_ptr, 0, LOG_SIZE) };
        // SAFETY: as above; only this process touches it right now.
        let log = unsafe { FlightLog::init(area_ptr, LOG_SIZE) }.expect("init");
        let mut pids = Vec::new();
        for p in 0..PROCS {
            // SAFETY: this test binary is single-threaded when it forks.
            match unsafe { libc::fork() } {
                0 => {
                    for t in 0..THREADS {
                        std::thread::spawn(move || writer(log, done, p * (THREADS + 1) + t + 1));
                    }
                    writer(log, done, p * (THREADS + 1));
                    // SAFETY: _exit ends the child without running the parent's atexit state.
                    unsafe { libc::_exit(0) };
                }
                -1 => panic!("fork failed"),
                pid => pids.push(pid),
            }
        }
        // Kill each process at its own random moment.
        for &pid in &pids {
            std::thread::sleep(Duration::from_micros(200 + rng.next() % 8000));
            // SAFETY: pid is our child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for &pid in &pids {
            let mut status = 0;
            // SAFETY: waiting for our own child; `status` is writable.
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            assert_eq!(r, pid);
        }
        // SAFETY: the area stays mapped; the reader takes it as plain bytes.
        let area = unsafe { std::slice::from_raw_parts(area_ptr, LOG_SIZE) };
        let (n, next) = check(area, log, done, round);
        total_records += n;
        total_writes += next;

        // A restarted daemon appends after its dead predecessors, over the
        // slots they left in progress.
        // SAFETY: as above.
        let log = unsafe { FlightLog::init(area_ptr, LOG_SIZE) }.expect("reinit");
        assert_eq!(log.next_seq(), next, "records kept");
        let mut buf = String::new();
        for i in 0..(2 * CAPACITY as u64) {
            checked_text(&mut buf, 999, i);
            if let Some(t) = log.write(Level::Warn, 1, 0, &buf) {
                if let Some(d) = done.get(t as usize) {
                    d.store(1, Ordering::Release);
                }
            }
        }
        let (n, _) = check(area, log, done, round);
        assert!(
            n >= CAPACITY - 2 * PROCS * (THREADS + 1),
            "round {round}: only {n} records after restart"
        );
    }
    println!(
        "log_crash: {ROUNDS} rounds, {} processes x {} writers killed per round, {total_writes} tickets, \
         {total_records} records verified, {:?}",
        PROCS,
        THREADS + 1,
        started.elapsed()
    );
}

//! Real crashes: a forked child commits in a tight loop and is SIGKILLed at
//! a random moment, over and over; after each kill the parent restores and
//! checks that the state is self-consistent and no older than the last
//! commit the child reported as done.
//!
//! Runs without the test harness (`harness = false`): it forks, and a
//! harness would run it among threads. `CHECKPOINT_CRASH_SEED` and
//! `CHECKPOINT_CRASH_ROUNDS` override the random seed and the rounds.

use forkroot::checkpoint::{CheckpointError, Checkpoints, InPlace, SlotState};
use forkroot::region::Plain;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

mod common;
use common::{Shm, Xorshift64Star as Rng};

/// What the child reports through a separate shared page.
const ATTEMPTING: usize = 0; // counter being committed (stored before commit)
const COMMITTED: usize = 1; // counter whose commit returned (stored after)

/// A counter and a 4 KiB payload derived from it: a torn copy cannot pass.
#[repr(C)]
struct Big {
    counter: u64,
    payload: [u64; 512],
}
// SAFETY: repr(C), integers only.
unsafe impl Plain for Big {}

fn word(counter: u64, i: usize) -> u64 {
    counter.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i as u64)
}

fn consistent(b: &Big) -> bool {
    b.payload
        .iter()
        .enumerate()
        .all(|(i, &w)| w == word(b.counter, i))
}

/// The child: resume, then count and commit until killed. Never returns.
fn slot_child(area: &mut [u8], report: &[AtomicU64]) -> ! {
    let Ok(mut c) = Checkpoints::<Big>::attach_with(area, 1, 2) else {
        // SAFETY: _exit is async-signal-safe and ends only this child.
        unsafe { libc::_exit(2) }
    };
    match c.restore() {
        Ok(_) | Err(CheckpointError::NoCheckpoint) => {}
        // SAFETY: as above.
        Err(_) => unsafe { libc::_exit(3) },
    }
    loop {
        let k = c.counter + 1;
        c.counter = k;
        for (i, w) in c.payload.iter_mut().enumerate() {
            *w = word(k, i);
        }
        report[ATTEMPTING].store(k, Ordering::SeqCst);
        c.commit();
        report[COMMITTED].store(k, Ordering::SeqCst);
    }
}

const ACCOUNTS: usize = 4096;
const TOTAL: u64 = 1 << 40;
const RING: usize = 64;

/// A large state changed a few words at a time, in place.
#[repr(C)]
struct Bank {
    transfers: u64,
    ring: [u64; RING],
    accounts: [u64; ACCOUNTS],
}
// SAFETY: repr(C), integers only.
unsafe impl Plain for Bank {}

const JOURNAL: usize = 4096;

fn inplace_child(area: &mut [u8], report: &[AtomicU64]) -> ! {
    let Ok(mut b) = InPlace::<Bank>::attach(area, 1, JOURNAL) else {
        // SAFETY: _exit is async-signal-safe and ends only this child.
        unsafe { libc::_exit(2) }
    };
    loop {
        let k = b.transfers + 1;
        let from = (k as usize * 7) % ACCOUNTS;
        let to = (k as usize * 13 + 1) % ACCOUNTS;
        let amount = b.accounts[from].min(k % 1000);
        report[ATTEMPTING].store(k, Ordering::SeqCst);
        let mut tx = b.begin();
        let ok = (|| {
            *tx.field(|s| &mut s.accounts[from])? -= amount;
            *tx.field(|s| &mut s.accounts[to])? += amount;
            *tx.field(|s| &mut s.ring[k as usize % RING])? = k;
            *tx.field(|s| &mut s.transfers)? = k;
            Ok::<(), CheckpointError>(())
        })();
        if ok.is_err() {
            // SAFETY: as above.
            unsafe { libc::_exit(4) }
        }
        tx.commit();
        report[COMMITTED].store(k, Ordering::SeqCst);
    }
}

/// Forks `child`, lets it run for 0..200 µs, SIGKILLs it and reaps it.
/// Returns an error if it died any other way.
fn run_and_kill(rng: &mut Rng, child: impl FnOnce()) -> Result<(), String> {
    // SAFETY: this binary is single-threaded (no harness), so the child may
    // run ordinary code; it never returns (it loops until killed or _exits).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        child();
        // SAFETY: _exit is async-signal-safe and ends only this child.
        unsafe { libc::_exit(5) }
    }
    let ns = (rng.next() % 200_000) as i64;
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: ns,
    };
    // SAFETY: a valid timespec; a null remainder is allowed.
    unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
    // SAFETY: `pid` is our unreaped child, so it cannot have been reused.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid out-pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    if r != pid {
        return Err(format!("waitpid: {}", std::io::Error::last_os_error()));
    }
    if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL {
        Ok(())
    } else {
        Err(format!("child ended otherwise: status {status:#x}"))
    }
}

struct Outcome {
    rounds: usize,
    torn: usize,
    last: u64,
}

fn slots_rounds(rounds: usize, rng: &mut Rng) -> Result<Outcome, String> {
    let mut shm = Shm::new(Checkpoints::<Big>::required_size(2).next_multiple_of(4096));
    let report = Shm::new(4096);
    let mut torn = 0;
    let mut last = 0;
    for round in 0..rounds {
        run_and_kill(rng, || slot_child(shm.area(), report.words()))?;
        let committed = report.words()[COMMITTED].load(Ordering::SeqCst);
        let attempting = report.words()[ATTEMPTING].load(Ordering::SeqCst);
        let mut c = Checkpoints::<Big>::attach_with(shm.area(), 1, 2)
            .map_err(|e| format!("round {round}: attach: {e}"))?;
        let states = c.scan();
        if states
            .as_slice()
            .iter()
            .any(|s| matches!(s, SlotState::Empty | SlotState::Corrupt { .. }))
            && committed >= 2
        {
            torn += 1;
        }
        match c.restore() {
            Ok(r) => {
                if !consistent(&c) {
                    return Err(format!(
                        "round {round}: torn state restored (seq {})",
                        r.seq
                    ));
                }
                if c.counter < committed || c.counter > attempting || c.counter < last {
                    return Err(format!(
                        "round {round}: restored {} but committed {committed}, attempting {attempting}, previous {last}",
                        c.counter
                    ));
                }
                last = c.counter;
            }
            Err(CheckpointError::NoCheckpoint) if committed == 0 => {}
            Err(e) => {
                return Err(format!(
                    "round {round}: restore: {e} (committed {committed})"
                ))
            }
        }
    }
    Ok(Outcome { rounds, torn, last })
}

fn inplace_rounds(rounds: usize, rng: &mut Rng) -> Result<Outcome, String> {
    let mut shm = Shm::new(InPlace::<Bank>::required_size(JOURNAL).next_multiple_of(4096));
    let report = Shm::new(4096);
    {
        let mut b = InPlace::<Bank>::attach(shm.area(), 1, JOURNAL).map_err(|e| e.to_string())?;
        let mut tx = b.begin();
        *tx.field(|s| &mut s.accounts[0])
            .map_err(|e| e.to_string())? = TOTAL;
        tx.commit();
    }
    let mut torn = 0;
    let mut last = 0;
    for round in 0..rounds {
        run_and_kill(rng, || inplace_child(shm.area(), report.words()))?;
        let committed = report.words()[COMMITTED].load(Ordering::SeqCst);
        let attempting = report.words()[ATTEMPTING].load(Ordering::SeqCst);
        let b = InPlace::<Bank>::attach(shm.area(), 1, JOURNAL)
            .map_err(|e| format!("round {round}: attach: {e}"))?;
        if b.recovery().rolled_back > 0 {
            torn += 1;
        }
        let sum: u64 = b.accounts.iter().sum();
        let k = b.transfers;
        if sum != TOTAL {
            return Err(format!(
                "round {round}: money not conserved: {sum} != {TOTAL}"
            ));
        }
        if k < committed || k > attempting || k < last {
            return Err(format!(
                "round {round}: {k} transfers but committed {committed}, attempting {attempting}, previous {last}"
            ));
        }
        if k > 0 && b.ring[k as usize % RING] != k {
            return Err(format!("round {round}: ring entry of transfer {k} missing"));
        }
        last = k;
    }
    Ok(Outcome { rounds, torn, last })
}

fn main() -> ExitCode {
    common::watchdog(60);
    let seed = std::env::var("CHECKPOINT_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let rounds = std::env::var("CHECKPOINT_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    println!("checkpoint_crash: seed {seed} (CHECKPOINT_CRASH_SEED), {rounds} rounds per scheme");
    let mut rng = Rng(seed | 1);
    let mut failed = false;
    type Run = fn(usize, &mut Rng) -> Result<Outcome, String>;
    let runs: [(&str, Run); 2] = [("slots (2)", slots_rounds), ("in place", inplace_rounds)];
    for (name, run) in runs {
        let t = Instant::now();
        match run(rounds, &mut rng) {
            Ok(o) => println!(
                "{name}: {} kills, {} caught mid-commit, counter reached {}, ok ({:.1} s)",
                o.rounds,
                o.torn,
                o.last,
                t.elapsed().as_secs_f64()
            ),
            Err(e) => {
                println!("{name}: FAILED: {e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

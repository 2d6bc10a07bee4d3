//! Crash test for rings: writers SIGKILLed at random moments, 1000 times,
//! and readers killed mid-receive.
//!
//! Runs in its own process (`harness = false`), because it forks. A reader
//! process verifies every message (a crc32 over generation, sequence number
//! and filler, inside the payload) and that each writer generation's
//! sequence has no gap; each writer records, after `send` returned, how many
//! messages it completed. At the end every completed message must have been
//! received. Readers are killed too; a new reader resumes from the ring (the
//! reader's own progress lives in shared memory, so a message handled but not
//! yet committed may arrive twice: at most once per reader kill).
//!
//! `alarm(60)` in every process is the watchdog: a hang fails the test.

use std::process::exit;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use forkroot::ring::{self, Config, Kind, Ring};

mod common;
use common::{fork, kill_and_reap, map_shared, reap, Xorshift64 as Rng};

/// Writer generations per test (one per forked writer), an upper bound.
const MAX_GENS: usize = 1200;
const SLOT: u32 = 64;

/// Shared between the parent, the writers and the readers.
#[repr(C)]
struct Ctl {
    /// Set by the parent once every writer is dead: drain and exit.
    stop: AtomicU32,
    /// Number of verification failures the readers found.
    errors: AtomicU64,
    /// First failure: kind (1 torn, 2 gap, 3 ring error, 4 bad gen), gen, seq, expected.
    first: [AtomicU64; 4],
    /// Duplicates seen (a message handled, then its reader killed before commit).
    dups: AtomicU64,
    /// Messages received in total.
    received: AtomicU64,
    /// `done[g]`: messages writer `g` completed (`send` returned), stored after the return.
    done: [AtomicU64; MAX_GENS],
    /// `expect[g]`: next sequence number the readers expect from writer `g`.
    expect: [AtomicU64; MAX_GENS],
}

/// Message: gen u32 | seq u64 | filler (seq % 41 bytes) | crc32 of all before.
fn encode(gen: u32, seq: u64, buf: &mut [u8; SLOT as usize]) -> usize {
    buf[0..4].copy_from_slice(&gen.to_le_bytes());
    buf[4..12].copy_from_slice(&seq.to_le_bytes());
    let fill = (seq % 41) as usize;
    for i in 0..fill {
        buf[12 + i] = (gen as u64 ^ seq ^ i as u64) as u8;
    }
    let n = 12 + fill;
    let crc = crc32fast::hash(&buf[..n]);
    buf[n..n + 4].copy_from_slice(&crc.to_le_bytes());
    n + 4
}

fn decode(msg: &[u8]) -> Option<(u32, u64)> {
    if msg.len() < 16 {
        return None;
    }
    let n = msg.len() - 4;
    let crc = u32::from_le_bytes(msg[n..].try_into().ok()?);
    if crc32fast::hash(&msg[..n]) != crc {
        return None;
    }
    let gen = u32::from_le_bytes(msg[0..4].try_into().ok()?);
    let seq = u64::from_le_bytes(msg[4..12].try_into().ok()?);
    if n != 12 + (seq % 41) as usize {
        return None;
    }
    Some((gen, seq))
}

fn writer(ring: Ring<'_>, ctl: &Ctl, gen: u32) -> ! {
    let Ok(producer) = ring.producer() else {
        exit(6);
    };
    let mut buf = [0u8; SLOT as usize];
    let mut seq = 0u64;
    loop {
        let n = encode(gen, seq, &mut buf);
        if producer.send_timeout(&buf[..n], None).is_err() {
            exit(3);
        }
        // After the return: this message counts as sent.
        ctl.done[gen as usize].store(seq + 1, Ordering::Release);
        seq += 1;
    }
}

fn fail(ctl: &Ctl, kind: u64, gen: u64, seq: u64, expected: u64) {
    if ctl.errors.fetch_add(1, Ordering::AcqRel) == 0 {
        for (slot, v) in ctl.first.iter().zip([kind, gen, seq, expected]) {
            slot.store(v, Ordering::Release);
        }
    }
}

fn reader(ring: Ring<'_>, ctl: &Ctl) -> ! {
    common::watchdog(60);
    let mut consumer = loop {
        match ring.consumer() {
            Ok(c) => break c,
            Err(ring::RingError::ConsumerBusy { .. }) => {
                std::thread::sleep(Duration::from_micros(100))
            }
            Err(_) => exit(4),
        }
    };
    loop {
        match consumer.wait(Some(Duration::from_millis(20))) {
            Ok(true) => {}
            Ok(false) => {
                if ctl.stop.load(Ordering::Acquire) != 0 {
                    exit(0);
                }
                continue;
            }
            Err(_) => {
                fail(ctl, 3, 0, 0, 0);
                exit(5);
            }
        }
        let msg = match consumer.peek() {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(_) => {
                fail(ctl, 3, 0, 0, 0);
                continue;
            }
        };
        match decode(&msg) {
            None => fail(ctl, 1, 0, 0, 0),
            Some((gen, seq)) if (gen as usize) < MAX_GENS => {
                let e = &ctl.expect[gen as usize];
                let want = e.load(Ordering::Acquire);
                if seq == want {
                    e.store(want + 1, Ordering::Release);
                    ctl.received.fetch_add(1, Ordering::Relaxed);
                } else if seq + 1 == want {
                    ctl.dups.fetch_add(1, Ordering::Relaxed);
                } else {
                    fail(ctl, 2, gen.into(), seq, want);
                }
            }
            Some((gen, seq)) => fail(ctl, 4, gen.into(), seq, 0),
        }
        msg.commit();
    }
}

struct Phase {
    name: &'static str,
    kind: Kind,
    writers_at_once: usize,
    rounds: usize,
    reader_kill_every: usize,
}

/// Runs one phase; returns (writer kills, reader kills).
fn run(phase: &Phase, rng: &mut Rng) -> (usize, usize) {
    let cfg = Config {
        kind: phase.kind,
        capacity: 64,
        slot_size: SLOT,
        // The protocol alone must prevent torn messages: the ring's own crc
        // is off here, and the payload's crc checks.
        checksum: false,
    };
    let len = ring::required_size(&cfg).expect("config");
    let mem = map_shared(len);
    // SAFETY: fresh mapping of `len` bytes, used by no one yet; it is never
    // unmapped while this process runs.
    let ring = unsafe { ring::init(mem, len, &cfg) }.expect("init");
    let ctl_ptr = map_shared(size_of::<Ctl>());
    // SAFETY: a fresh anonymous mapping is zeroed, and all-zero is a valid
    // `Ctl` (atomics only); the mapping lives to the end of the process.
    let ctl: &Ctl = unsafe { &*ctl_ptr.cast::<Ctl>() };

    let start = Instant::now();
    let spawn_reader = || {
        let pid = fork();
        if pid == 0 {
            reader(ring, ctl);
        }
        pid
    };
    let mut reader_pid = spawn_reader();
    let mut gen = 0u32;
    let mut kills = 0;
    let mut reader_kills = 0;
    for round in 0..phase.rounds {
        let mut pids = Vec::new();
        for _ in 0..phase.writers_at_once {
            let g = gen;
            gen += 1;
            assert!((gen as usize) < MAX_GENS);
            let pid = fork();
            if pid == 0 {
                writer(ring, ctl, g);
            }
            pids.push(pid);
        }
        std::thread::sleep(Duration::from_micros(rng.below(1500)));
        for pid in pids {
            let st = kill_and_reap(pid);
            assert!(
                libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGKILL,
                "writer exited on its own: status {st:#x}"
            );
            kills += 1;
            std::thread::sleep(Duration::from_micros(rng.below(200)));
        }
        if round % phase.reader_kill_every == phase.reader_kill_every / 2 {
            std::thread::sleep(Duration::from_micros(rng.below(300)));
            kill_and_reap(reader_pid);
            reader_kills += 1;
            reader_pid = spawn_reader();
        }
    }
    ctl.stop.store(1, Ordering::Release);
    let st = reap(reader_pid);
    assert!(
        libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
        "{}: reader failed: status {st:#x}",
        phase.name
    );

    let errors = ctl.errors.load(Ordering::Acquire);
    let first: Vec<u64> = ctl
        .first
        .iter()
        .map(|a| a.load(Ordering::Acquire))
        .collect();
    assert_eq!(
        errors, 0,
        "{}: reader found {errors} bad messages; first (kind, gen, seq, expected) = {first:?}",
        phase.name
    );
    let mut sent = 0;
    let mut in_flight_delivered = 0;
    for g in 0..gen as usize {
        let done = ctl.done[g].load(Ordering::Acquire);
        let got = ctl.expect[g].load(Ordering::Acquire);
        assert!(
            got >= done,
            "{}: writer {g} completed {done} sends, reader got {got}: lost",
            phase.name
        );
        assert!(
            got <= done + 1,
            "{}: writer {g} completed {done} sends, reader got {got}: invented",
            phase.name
        );
        sent += done;
        in_flight_delivered += got - done;
    }
    let dups = ctl.dups.load(Ordering::Acquire);
    assert!(
        dups <= reader_kills as u64,
        "{}: {dups} duplicates for {reader_kills} reader kills",
        phase.name
    );
    let stats = ring.stats();
    assert!(sent > 0, "{}: writers never completed a send", phase.name);
    println!(
        "{}: {kills} writer kills, {reader_kills} reader kills, {} messages received \
         ({sent} completed sends, {in_flight_delivered} committed just before a kill), \
         {} slots skipped uncommitted, {dups} redelivered after a reader kill, {:.1} s",
        phase.name,
        ctl.received.load(Ordering::Acquire),
        stats.lost_uncommitted,
        start.elapsed().as_secs_f64()
    );
    (kills, reader_kills)
}

fn main() {
    common::watchdog(60);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    println!("ring_crash: seed {seed}");
    let mut rng = Rng(seed);
    let phases = [
        Phase {
            name: "mpsc, 3 writers at once",
            kind: Kind::Mpsc,
            writers_at_once: 3,
            rounds: 250,
            reader_kill_every: 25,
        },
        Phase {
            name: "spsc, 1 writer at a time",
            kind: Kind::Spsc,
            writers_at_once: 1,
            rounds: 250,
            reader_kill_every: 25,
        },
    ];
    let mut total = 0;
    for p in &phases {
        total += run(p, &mut rng).0;
    }
    assert_eq!(total, 1000);
    println!("ring_crash: ok, {total} writer kills");
}

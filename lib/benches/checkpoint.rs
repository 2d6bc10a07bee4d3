//! Checkpoint commit cost against state size, each next to a plain memcpy
//! of the same size measured in the same run (the floor: a copy scheme
//! cannot beat one copy), reported as a ratio. Medians of several
//! repetitions.
//!
//! `cargo bench -p forkroot --bench checkpoint`

use forkroot::checkpoint::{Checkpoints, InPlace};
use std::hint::black_box;
use std::time::Instant;

const REPS: usize = 15;

#[path = "../tests/common/mod.rs"]
mod common;
use common::Shm;

/// A shared anonymous mapping of whole pages, every page touched, so no
/// first-touch fault is timed.
fn prefaulted(len: usize) -> Shm {
    let mut s = Shm::new(len.next_multiple_of(4096));
    s.area().fill(1);
    s.area().fill(0);
    s
}

/// Median over `REPS` batches of the time per call of `f`, in ns.
fn median_ns(iters: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm up
    let mut v: Vec<f64> = (0..REPS)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            t.elapsed().as_nanos() as f64 / iters as f64
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[REPS / 2]
}

/// Calls per batch so a batch copies about 8 MiB (at least one call).
fn iters_for(bytes: usize) -> usize {
    (8 << 20) / bytes.max(1)
}

fn memcpy_ns(bytes: usize) -> f64 {
    let mut a = prefaulted(bytes);
    let mut b = prefaulted(bytes);
    let (src, dst) = (a.area(), b.area());
    src.fill(0x5a);
    median_ns(iters_for(bytes).max(1), || {
        dst[..bytes].copy_from_slice(black_box(&src[..bytes]));
        black_box(&mut dst[..bytes]);
    })
}

fn human(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} B")
    }
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} us", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

fn slots<const N: usize>() -> f64 {
    let mut shm = prefaulted(Checkpoints::<[u8; N]>::required_size(3));
    let mut c = Checkpoints::<[u8; N]>::attach(shm.area(), 1).expect("attach");
    c.fill(0xa5);
    let commit = median_ns(iters_for(N).max(1), || {
        c[0] = c[0].wrapping_add(1);
        black_box(c.commit());
    });
    let restore = median_ns(iters_for(N).max(1), || {
        black_box(c.restore().expect("restore"));
    });
    let copy = memcpy_ns(N);
    println!(
        "slots     {:>8}  commit {:>10}  memcpy {:>10}  ratio {:>5.2}  ({:.1} GB/s)  restore {:>10}",
        human(N),
        fmt_ns(commit),
        fmt_ns(copy),
        commit / copy,
        N as f64 / commit,
        fmt_ns(restore),
    );
    commit
}

const BIG: usize = 16 << 20;

fn in_place(dirty: usize, full_commit: f64) {
    let journal = 64 * 1024;
    let mut shm = prefaulted(InPlace::<[u8; BIG]>::required_size(journal));
    let mut s = InPlace::<[u8; BIG]>::attach(shm.area(), 1, journal).expect("attach");
    let mut tx_at = |at: usize| {
        let mut tx = s.begin();
        let bytes = tx.bytes(at, dirty).expect("journal");
        bytes[0] = bytes[0].wrapping_add(1);
        black_box(tx.commit());
    };
    // The same range every time (in cache, like the memcpy floor) ...
    let commit = median_ns(10_000, || tx_at(4096));
    // ... and ranges spread over the whole state (mostly cache misses).
    let mut at = 0usize;
    let spread = median_ns(10_000, || {
        tx_at(at);
        at = (at + 4096 * 7 + 64) % (BIG - dirty);
    });
    let copy = memcpy_ns(dirty);
    println!(
        "in place  {:>8}  commit {:>10}  memcpy {:>10}  ratio {:>5.2}  (dirty range of {}; spread over the state {}; {:.0}x cheaper than a slot commit)",
        human(BIG),
        fmt_ns(commit),
        fmt_ns(copy),
        commit / copy,
        human(dirty),
        fmt_ns(spread),
        full_commit / commit,
    );
}

fn main() {
    let t = Instant::now();
    println!("checkpoint commit cost against state size (median of {REPS} batches; ratio = commit / memcpy of the same bytes, same run)");
    slots::<{ 4 << 10 }>();
    slots::<{ 64 << 10 }>();
    slots::<{ 1 << 20 }>();
    let full = slots::<BIG>();
    for dirty in [64, 4096] {
        in_place(dirty, full);
    }
    println!("total {:.1} s", t.elapsed().as_secs_f64());
}

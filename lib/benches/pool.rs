//! Pool benchmark: alloc + free of one 64-byte block, next to `Box::new` +
//! drop of 64 bytes measured in the same run.
//!
//! `cargo bench -p forkroot --bench pool`
//!
//! Two patterns, each the median ns per alloc+free pair over repetitions:
//! - pair: allocate and free at once (the allocator's fast path);
//! - batch: allocate 32, then free the 32.

use std::hint::black_box;
use std::time::Instant;

use forkroot::pool::{self, BlockRef, Owner};

const REPS: usize = 7;
const BATCH: usize = 32;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn reps(mut f: impl FnMut() -> f64) -> f64 {
    let mut v: Vec<f64> = (0..REPS).map(|_| f()).collect();
    median(&mut v)
}

fn main() {
    // `cargo bench` passes `--bench`; under `cargo test --benches` only
    // check that it runs, on fewer operations.
    let full = std::env::args().any(|a| a == "--bench");
    let n: usize = if full { 5_000_000 } else { 100_000 };
    let started = Instant::now();

    let len = pool::required_size(64, 1024).expect("config");
    let layout = std::alloc::Layout::from_size_align(len, pool::ALIGN).expect("layout");
    // SAFETY: nonzero size; the memory is never freed (lives to the end).
    let mem = unsafe { std::alloc::alloc_zeroed(layout) };
    assert!(!mem.is_null());
    // SAFETY: fresh memory of `len` bytes, used only as this pool.
    let p = unsafe { pool::init(mem, len, 64, 1024) }.expect("init");
    let me = Owner {
        slot: 1,
        generation: 1,
    };

    let pool_pair = reps(|| {
        let t = Instant::now();
        for _ in 0..n {
            let mut b = p.alloc(me).expect("alloc");
            p.get_mut(&mut b).expect("in range")[0] = 1;
            p.free(black_box(b), me).expect("free");
        }
        t.elapsed().as_nanos() as f64 / n as f64
    });
    let box_pair = reps(|| {
        let t = Instant::now();
        for _ in 0..n {
            let mut b = Box::new([0u8; 64]);
            b[0] = 1;
            drop(black_box(b));
        }
        t.elapsed().as_nanos() as f64 / n as f64
    });
    let rounds = n / BATCH;
    let pool_batch = reps(|| {
        let mut held: Vec<BlockRef> = Vec::with_capacity(BATCH);
        let t = Instant::now();
        for _ in 0..rounds {
            for _ in 0..BATCH {
                held.push(p.alloc(me).expect("alloc"));
            }
            for b in held.drain(..) {
                p.free(black_box(b), me).expect("free");
            }
        }
        t.elapsed().as_nanos() as f64 / (rounds * BATCH) as f64
    });
    let box_batch = reps(|| {
        let mut held: Vec<Box<[u8; 64]>> = Vec::with_capacity(BATCH);
        let t = Instant::now();
        for _ in 0..rounds {
            for _ in 0..BATCH {
                held.push(black_box(Box::new([0u8; 64])));
            }
            held.clear();
        }
        t.elapsed().as_nanos() as f64 / (rounds * BATCH) as f64
    });

    println!("pool bench: 64-byte blocks, ns per alloc+free, median of {REPS} repetitions");
    println!("  pair  (alloc, free):  pool {pool_pair:6.1} ns   Box::new+drop {box_pair:6.1} ns   pool/Box = {:.2}", pool_pair / box_pair);
    println!("  batch ({BATCH} then free): pool {pool_batch:6.1} ns   Box::new+drop {box_batch:6.1} ns   pool/Box = {:.2}", pool_batch / box_batch);
    println!("({:.1} s)", started.elapsed().as_secs_f64());
}

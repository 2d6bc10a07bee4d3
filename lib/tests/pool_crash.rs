//! Crash test for the pool: children allocate and free in a loop and are
//! SIGKILLed at random points, 1000 times; `reclaim` and
//! `check_and_rebuild` must recover every block.
//!
//! Runs in its own process (`harness = false`), because it forks. Four child
//! slots each run one child at a time, which owns its blocks as
//! `(slot, generation)` and stamps that into each block it holds. After each
//! kill the parent reclaims the dead generation's blocks while the other
//! children keep running. Every 100 kills it pauses the live children
//! (between operations) and checks: after `check_and_rebuild`, every block is
//! free or owned by a live child that knows it holds it, the stamps match
//! (no block owned twice), and the free list yields each free block exactly
//! once. `alarm(60)` in every process is the watchdog.

use std::process::exit;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use forkroot::pool::{self, BlockRef, Owner, Pool, PoolError};

mod common;
use common::{fork, map_shared, reap, Xorshift64 as Rng};

const SLOTS: usize = 4;
const MAX_HELD: usize = 12;
const CAPACITY: u32 = 64;
const KILLS: usize = 1000;
const CHECK_EVERY: usize = 100;

const RUN: u32 = 0;
const PAUSE: u32 = 1;
const FINISH: u32 = 2;

#[repr(C)]
struct Ctl {
    /// RUN, PAUSE (park between operations) or FINISH (free all, exit).
    mode: AtomicU32,
    /// Per slot: generation + 1 of the child that parked, 0 while running.
    parked: [AtomicU32; SLOTS],
    /// Per slot: `index + 1` of each block its current child holds, 0 = none.
    held: [[AtomicU32; MAX_HELD]; SLOTS],
    /// Problems children found (a block's stamp changed under its owner, an
    /// unexpected error).
    errors: AtomicU64,
    /// Operations done, for the summary.
    ops: AtomicU64,
}

fn stamp(owner: Owner, index: u32) -> [u8; 12] {
    let mut s = [0u8; 12];
    s[0..4].copy_from_slice(&owner.slot.to_le_bytes());
    s[4..8].copy_from_slice(&owner.generation.to_le_bytes());
    s[8..12].copy_from_slice(&index.to_le_bytes());
    s
}

fn child(pool: Pool<'_>, ctl: &Ctl, slot: usize, generation: u32, seed: u64) -> ! {
    common::watchdog(60);
    let owner = Owner {
        slot: slot as u32,
        generation,
    };
    let mut rng = Rng(seed | 1);
    let mut held: [Option<BlockRef>; MAX_HELD] = Default::default();
    for h in &ctl.held[slot] {
        h.store(0, Ordering::Release);
    }
    loop {
        match ctl.mode.load(Ordering::Acquire) {
            PAUSE => {
                ctl.parked[slot].store(generation + 1, Ordering::Release);
                while ctl.mode.load(Ordering::Acquire) == PAUSE {
                    std::thread::sleep(Duration::from_micros(50));
                }
                ctl.parked[slot].store(0, Ordering::Release);
                continue;
            }
            FINISH => {
                for (k, h) in held.iter_mut().enumerate() {
                    if let Some(b) = h.take() {
                        release(pool, ctl, owner, &ctl.held[slot][k], b);
                    }
                }
                exit(0);
            }
            _ => {}
        }
        let k = rng.below(MAX_HELD as u64) as usize;
        match held[k].take() {
            Some(b) => release(pool, ctl, owner, &ctl.held[slot][k], b),
            None => match pool.alloc(owner) {
                Ok(mut b) => {
                    let index = b.index();
                    match pool.get_mut(&mut b) {
                        Ok(bytes) => bytes[..12].copy_from_slice(&stamp(owner, index)),
                        Err(_) => {
                            ctl.errors.fetch_add(1, Ordering::AcqRel);
                        }
                    }
                    ctl.held[slot][k].store(index + 1, Ordering::Release);
                    held[k] = Some(b);
                }
                Err(PoolError::Exhausted) => {}
                Err(_) => {
                    ctl.errors.fetch_add(1, Ordering::AcqRel);
                }
            },
        }
        ctl.ops.fetch_add(1, Ordering::Relaxed);
    }
}

fn release(pool: Pool<'_>, ctl: &Ctl, owner: Owner, rec: &AtomicU32, b: BlockRef) {
    let index = b.index();
    if pool
        .get(&b)
        .map(|s| s[..12] != stamp(owner, index))
        .unwrap_or(true)
    {
        ctl.errors.fetch_add(1, Ordering::AcqRel);
    }
    rec.store(0, Ordering::Release);
    if pool.free(b, owner).is_err() {
        ctl.errors.fetch_add(1, Ordering::AcqRel);
    }
}

/// Pauses the live children, recovers, checks every block; returns the report.
fn check(pool: Pool<'_>, ctl: &Ctl, gens: &[u32; SLOTS]) -> pool::Report {
    ctl.mode.store(PAUSE, Ordering::Release);
    for (s, &g) in gens.iter().enumerate() {
        while ctl.parked[s].load(Ordering::Acquire) != g + 1 {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    pool.reclaim(|o| o.slot as usize >= SLOTS || gens[o.slot as usize] != o.generation);
    let report = pool.check_and_rebuild();
    assert!(!report.list_damaged, "free list damaged: {report:?}");
    assert_eq!(report.free + report.owned, CAPACITY, "{report:?}");

    // Every owned block belongs to a live child that records it, with its stamp.
    let mut owned = 0;
    for i in 0..CAPACITY {
        let Some(o) = pool.owner(i).expect("in range") else {
            continue;
        };
        owned += 1;
        let s = o.slot as usize;
        assert!(
            s < SLOTS && gens[s] == o.generation,
            "block {i} owned by dead {o:?}"
        );
        assert!(
            ctl.held[s]
                .iter()
                .any(|h| h.load(Ordering::Acquire) == i + 1),
            "block {i} owned by {o:?}, which does not know it"
        );
        // SAFETY: read only, while its owner is parked; the BlockRef is not freed.
        let b = unsafe { BlockRef::from_index(&pool, i) };
        assert_eq!(
            pool.get(&b).expect("in range")[..12],
            stamp(o, i),
            "block {i}: stamp of another owner"
        );
    }
    let recorded: usize = ctl
        .held
        .iter()
        .flatten()
        .filter(|h| h.load(Ordering::Acquire) != 0)
        .count();
    assert_eq!(
        owned, recorded as u32,
        "owned blocks vs blocks the live children hold"
    );
    assert_eq!(owned, report.owned);

    // The free list yields each free block exactly once.
    let probe = Owner {
        slot: 1000,
        generation: 0,
    };
    let mut got = Vec::new();
    loop {
        match pool.alloc(probe) {
            Ok(b) => got.push(b),
            Err(PoolError::Exhausted) => break,
            Err(e) => panic!("alloc from rebuilt list: {e}"),
        }
    }
    assert_eq!(got.len() as u32, report.free, "free list length");
    let mut idx: Vec<u32> = got.iter().map(|b| b.index()).collect();
    idx.sort_unstable();
    idx.dedup();
    assert_eq!(idx.len(), got.len(), "a block twice on the free list");
    for b in got {
        pool.free(b, probe).expect("free probe block");
    }
    ctl.mode.store(RUN, Ordering::Release);
    report
}

fn main() {
    common::watchdog(60);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    println!("pool_crash: seed {seed}");
    let mut rng = Rng(seed);
    let len = pool::required_size(64, CAPACITY).expect("config");
    let mem = map_shared(len);
    // SAFETY: a fresh mapping of `len` bytes, used by no one yet, never unmapped.
    let pool = unsafe { pool::init(mem, len, 64, CAPACITY) }.expect("init");
    // SAFETY: a fresh anonymous mapping is zeroed, a valid `Ctl` (atomics
    // only); it lives to the end of the process.
    let ctl: &Ctl = unsafe { &*map_shared(size_of::<Ctl>()).cast::<Ctl>() };

    let start = Instant::now();
    let mut gens = [0u32; SLOTS];
    let mut pids = [0 as libc::pid_t; SLOTS];
    let spawn = |slot: usize, generation: u32, rng: &mut Rng| {
        let seed = rng.next();
        let pid = fork();
        if pid == 0 {
            child(pool, ctl, slot, generation, seed);
        }
        pid
    };
    for (s, pid) in pids.iter_mut().enumerate() {
        *pid = spawn(s, 0, &mut rng);
    }
    let mut reclaimed = 0;
    let mut relinked = 0;
    let mut owned_on_list = 0;
    for kill in 1..=KILLS {
        std::thread::sleep(Duration::from_micros(rng.below(300)));
        let s = rng.below(SLOTS as u64) as usize;
        // SAFETY: our child.
        unsafe { libc::kill(pids[s], libc::SIGKILL) };
        let st = reap(pids[s]);
        assert!(
            libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGKILL,
            "child exited on its own: status {st:#x}"
        );
        gens[s] += 1;
        // Concurrent with the other children: frees the dead generation's blocks.
        reclaimed +=
            pool.reclaim(|o| o.slot as usize >= SLOTS || gens[o.slot as usize] != o.generation);
        pids[s] = spawn(s, gens[s], &mut rng);
        if kill % CHECK_EVERY == 0 {
            let r = check(pool, ctl, &gens);
            relinked += r.relinked;
            owned_on_list += r.owned_on_list;
        }
    }
    ctl.mode.store(FINISH, Ordering::Release);
    for pid in pids {
        let st = reap(pid);
        assert!(
            libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
            "child failed: status {st:#x}"
        );
    }
    let errors = ctl.errors.load(Ordering::Acquire);
    assert_eq!(
        errors, 0,
        "children found {errors} problems (stamp changed or unexpected error)"
    );
    let final_report = pool.check_and_rebuild();
    assert_eq!(final_report.free, CAPACITY, "{final_report:?}");
    assert_eq!(pool.counts(), (CAPACITY, 0));
    println!(
        "pool_crash: ok, {KILLS} kills, {} operations, {reclaimed} blocks reclaimed from dead \
         owners, {relinked} relinked and {owned_on_list} unlinked by check_and_rebuild, {:.1} s",
        ctl.ops.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64()
    );
}

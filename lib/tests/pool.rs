//! Pool behaviour within one process: validation, ownership checks, limits.

use forkroot::pool::{self, Owner, PoolError};

mod common;
use common::map_shared as memory;

const A: Owner = Owner {
    slot: 1,
    generation: 7,
};
const B: Owner = Owner {
    slot: 2,
    generation: 0,
};

#[test]
fn attach_rejects_garbage() {
    let len = pool::required_size(100, 4).unwrap();
    let mem = memory(len);
    // SAFETY: `mem` is valid for `len` bytes for the whole test.
    unsafe {
        assert!(matches!(
            pool::attach(mem, len),
            Err(PoolError::NotAPool(_))
        ));
        std::ptr::write_bytes(mem, 0x5A, len);
        assert!(matches!(
            pool::attach(mem, len),
            Err(PoolError::NotAPool(_))
        ));
        let p = pool::init(mem, len, 100, 4).unwrap();
        assert_eq!(p.block_size(), 128);
        assert!(pool::attach(mem, len).is_ok());
        assert!(matches!(
            pool::attach(mem, len - 1),
            Err(PoolError::Undersized { .. })
        ));
        assert_eq!(
            pool::attach(mem.add(8), len).unwrap_err(),
            PoolError::Misaligned
        );
    }
}

#[test]
fn alloc_free_ownership_and_exhaustion() {
    let len = pool::required_size(64, 3).unwrap();
    // SAFETY: fresh memory of `len` bytes, alive for the test.
    let p = unsafe { pool::init(memory(len), len, 64, 3) }.unwrap();
    let mut a = p.alloc(A).unwrap();
    let b = p.alloc(B).unwrap();
    let c = p.alloc(A).unwrap();
    assert_eq!(p.alloc(A).unwrap_err(), PoolError::Exhausted);
    assert_ne!(a.index(), b.index());
    p.get_mut(&mut a).unwrap()[..5].copy_from_slice(b"hello");
    assert_eq!(&p.get(&a).unwrap()[..5], b"hello");
    assert_eq!(p.owner(b.index()), Ok(Some(B)));
    // Only the owner frees; a refused free leaves the block owned.
    let bi = b.index();
    assert_eq!(
        p.free(b, A).unwrap_err(),
        PoolError::NotOwner {
            index: bi,
            owner: Some(B)
        }
    );
    assert_eq!(p.owner(bi), Ok(Some(B)));
    p.free(a, A).unwrap();
    assert_eq!(p.counts(), (1, 2));
    // Reclaim frees exactly the dead owner's blocks.
    assert_eq!(p.reclaim(|o| o == A), 1);
    assert_eq!(p.reclaim(|o| o == A), 0);
    assert_eq!(p.counts(), (2, 1));
    // SAFETY: index 99 is no block; only the range check is exercised.
    let bogus = unsafe { pool::BlockRef::from_index(&p, 99) };
    assert_eq!(
        p.get(&bogus).unwrap_err(),
        PoolError::OutOfRange { index: 99 }
    );
    assert_eq!(
        p.free(bogus, A).unwrap_err(),
        PoolError::OutOfRange { index: 99 }
    );
    let _ = c;
    let r = p.check_and_rebuild();
    assert_eq!(
        (r.free, r.owned, r.relinked, r.list_damaged),
        (2, 1, 0, false)
    );
    assert_eq!(
        p.alloc(Owner {
            slot: u32::MAX,
            generation: 0
        })
        .unwrap_err(),
        PoolError::InvalidOwner
    );
}

#[test]
fn rebuild_repairs_a_damaged_list() {
    let len = pool::required_size(64, 4).unwrap();
    let mem = memory(len);
    // SAFETY: fresh memory of `len` bytes, alive for the test.
    let p = unsafe { pool::init(mem, len, 64, 4) }.unwrap();
    let held = p.alloc(A).unwrap();
    // Point block 1's link back at itself (table at 128, 16-byte entries,
    // `next` at +8): a cycle.
    // SAFETY: inside the pool's table; nobody else uses the pool.
    unsafe { mem.add(128 + 16 + 8).cast::<u32>().write(2) };
    let r = p.check_and_rebuild();
    assert!(r.list_damaged);
    assert_eq!((r.free, r.owned), (3, 1));
    let mut got: Vec<u32> = (0..3).map(|_| p.alloc(B).unwrap().index()).collect();
    got.sort_unstable();
    assert_eq!(got, [1, 2, 3]);
    assert_eq!(p.alloc(B).unwrap_err(), PoolError::Exhausted);
    assert_eq!(held.index(), 0);
}

#[test]
fn threads_allocate_concurrently() {
    let len = pool::required_size(64, 32).unwrap();
    // SAFETY: fresh memory of `len` bytes, alive for the test.
    let p = unsafe { pool::init(memory(len), len, 64, 32) }.unwrap();
    std::thread::scope(|s| {
        for t in 0..4u32 {
            s.spawn(move || {
                let me = Owner {
                    slot: t,
                    generation: 0,
                };
                for i in 0..20_000u32 {
                    let mut held = Vec::new();
                    for _ in 0..(i % 8) + 1 {
                        let mut b = p.alloc(me).unwrap();
                        let idx = b.index();
                        p.get_mut(&mut b).unwrap()[..8].copy_from_slice(&[t as u8; 8]);
                        held.push((b, idx));
                    }
                    for (b, _) in held {
                        assert_eq!(p.get(&b).unwrap()[..8], [t as u8; 8], "block shared");
                        p.free(b, me).unwrap();
                    }
                }
            });
        }
    });
    assert_eq!(p.counts(), (32, 0));
    let r = p.check_and_rebuild();
    assert_eq!(
        (r.free, r.relinked, r.owned_on_list, r.list_damaged),
        (32, 0, 0, false)
    );
}

#[test]
fn a_block_of_one_pool_is_refused_by_another() {
    let len = pool::required_size(64, 2).unwrap();
    let (ma, mb) = (memory(len), memory(len));
    // SAFETY: two fresh memories of `len` bytes, alive for the test.
    let (pa, pb) = unsafe {
        (
            pool::init(ma, len, 64, 2).unwrap(),
            pool::init(mb, len, 64, 2).unwrap(),
        )
    };
    let mut from_a = pa.alloc(A).unwrap();
    let mut from_b = pb.alloc(A).unwrap();
    // Same index in both pools: only the pool tells them apart.
    assert_eq!(from_a.index(), from_b.index());
    let index = from_a.index();
    // Two `&mut` to one block in safe code, if pool b served a's block.
    let foreign = PoolError::ForeignBlock { index };
    assert_eq!(pb.get_mut(&mut from_a).unwrap_err(), foreign);
    assert_eq!(pb.get(&from_a).unwrap_err(), foreign);
    assert_eq!(pa.get_mut(&mut from_b).unwrap_err(), foreign);
    // Its own pool serves it, through any handle on the same memory.
    pa.get_mut(&mut from_a).unwrap()[0] = 7;
    // SAFETY: the memory `pa` was laid out in, alive for the test.
    let pa2 = unsafe { pool::attach(ma, len) }.unwrap();
    assert_eq!(pa2.get(&from_a).unwrap()[0], 7);
    pb.get_mut(&mut from_b).unwrap()[0] = 9;
    assert_eq!(pa.get(&from_a).unwrap()[0], 7);
    // A foreign block is not freed either: both stay owned in their pools.
    assert_eq!(pa.free(from_b, A).unwrap_err(), foreign);
    assert_eq!(pa.owner(index), Ok(Some(A)));
    assert_eq!(pb.owner(index), Ok(Some(A)));
    pa.free(from_a, A).unwrap();
    assert_eq!(pa.owner(index), Ok(None));
    // A pool laid out again in the same memory is a new pool: a block of the
    // old one is refused.
    let old = pa.alloc(B).unwrap();
    // SAFETY: `ma`, alive for the test; no handle on the old pool is used
    // for anything but the refusal below.
    let pa3 = unsafe { pool::init(ma, len, 64, 2) }.unwrap();
    assert_eq!(pa3.get(&old).unwrap_err(), foreign);
}

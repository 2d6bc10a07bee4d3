//! The pure shared-memory modules (ring, pool, checkpoint, state, flight
//! log) on plain heap buffers, with no system call beyond clocks, futexes
//! and random numbers: small enough for Miri, which checks every access for
//! undefined behaviour and every thread interleaving it runs for data races
//! (`scripts/miri`). They run as ordinary tests too.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::UnsafeCell;
use std::time::Duration;

use forkroot::checkpoint::{CheckpointError, Checkpoints, InPlace};
use forkroot::log::{drain, tail, Cursor, FlightLog, Level};
use forkroot::pool::{self, Owner, PoolError};
use forkroot::region::{Plain, LOG_SIZE};
use forkroot::ring::{self, Config, Kind, RingError, WriterId};
use forkroot::state::{self, Status};

/// A zeroed heap buffer, page-aligned (more than any module needs).
struct Buf {
    ptr: *mut u8,
    layout: Layout,
}

impl Buf {
    fn new(len: usize) -> Buf {
        let layout = Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: nonzero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Buf { ptr, layout }
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `layout.size()` zeroed bytes owned by `self`, borrowed
        // mutably here.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; no borrow outlives self.
        unsafe { dealloc(self.ptr, self.layout) };
    }
}

fn id(slot: u16) -> WriterId {
    WriterId::new(slot, 1).unwrap()
}

#[test]
fn ring_round_trip_wraps_and_peeks() {
    let cfg = Config {
        kind: Kind::Spsc,
        capacity: 4,
        slot_size: 16,
        checksum: true,
    };
    let len = ring::required_size(&cfg).unwrap();
    let mut buf = Buf::new(len);
    // SAFETY: `len` bytes, alive until `buf` drops at the end of the test.
    let r = unsafe { ring::init(buf.ptr, len, &cfg) }.unwrap();
    let never = |_: WriterId| false;
    let mut c = r.consumer_with(id(9), &never).unwrap();
    let p = r.producer_as(id(1));
    let mut out = [0u8; 16];
    for lap in 0..3u8 {
        for i in 0..4u8 {
            p.try_send(&[lap, i, 7]).unwrap();
        }
        assert_eq!(p.try_send(b"x"), Err(RingError::Full));
        {
            let m = c.peek().unwrap().unwrap();
            assert_eq!(&*m, &[lap, 0, 7]);
        }
        for i in 0..4u8 {
            assert_eq!(c.try_recv(&mut out), Ok(Some(3)));
            assert_eq!(&out[..3], &[lap, i, 7]);
        }
        assert_eq!(c.try_recv(&mut out), Ok(None));
    }
    // A flipped payload byte is reported and skipped.
    p.try_send(b"abc").unwrap();
    p.try_send(b"def").unwrap();
    // Position 12 is in slot 0 (12 % 4): its payload starts 16 bytes in.
    let payload = 384 + 16;
    buf.bytes()[payload] ^= 0xFF;
    assert_eq!(c.try_recv(&mut out), Err(RingError::Corrupt { pos: 12 }));
    assert_eq!(c.try_recv(&mut out), Ok(Some(3)));
    assert_eq!(&out[..3], b"def");
}

#[test]
fn ring_two_producer_threads() {
    const PER: u8 = 6;
    let cfg = Config {
        kind: Kind::Mpsc,
        capacity: 4,
        slot_size: 8,
        checksum: false,
    };
    let len = ring::required_size(&cfg).unwrap();
    let buf = Buf::new(len);
    // SAFETY: `len` bytes, alive until `buf` drops after the scope.
    let r = unsafe { ring::init(buf.ptr, len, &cfg) }.unwrap();
    let never = |_: WriterId| false;
    std::thread::scope(|s| {
        for t in 1..=2u8 {
            s.spawn(move || {
                let p = r.producer_as(id(t.into()));
                for i in 0..PER {
                    while p.try_send(&[t, i]) == Err(RingError::Full) {
                        std::thread::yield_now();
                    }
                }
            });
        }
        let mut c = r.consumer_with(id(9), &never).unwrap();
        let mut next = [0u8; 3];
        let mut out = [0u8; 8];
        for _ in 0..2 * PER {
            let n = loop {
                if let Some(n) = c.try_recv(&mut out).unwrap() {
                    break n;
                }
                std::thread::yield_now();
            };
            assert_eq!(n, 2);
            let t = out[0] as usize;
            assert_eq!(out[1], next[t], "per-producer order");
            next[t] += 1;
        }
        assert_eq!(next, [0, PER, PER]);
    });
}

#[test]
fn ring_slot_of_a_dead_writer_is_skipped() {
    let cfg = Config {
        kind: Kind::Mpsc,
        capacity: 4,
        slot_size: 8,
        checksum: true,
    };
    let len = ring::required_size(&cfg).unwrap();
    let mut buf = Buf::new(len);
    // SAFETY: `len` bytes, alive until `buf` drops at the end of the test.
    let r = unsafe { ring::init(buf.ptr, len, &cfg) }.unwrap();
    // Writer 1 reserved position 0 and died: state (0, id) and tail 1, as
    // `reserve` leaves them (slot 0's state at 384, tail at 128).
    let b = buf.bytes();
    b[384..392].copy_from_slice(&u64::from(id(1).raw()).to_le_bytes());
    b[128..136].copy_from_slice(&1u64.to_le_bytes());
    r.producer_as(id(2)).try_send(b"live").unwrap();
    let dead = id(1);
    let is_dead = move |w: WriterId| w == dead;
    let mut c = r.consumer_with(id(9), &is_dead).unwrap();
    let mut out = [0u8; 8];
    let got = c.recv_timeout(&mut out, Some(Duration::from_secs(5)));
    assert_eq!(got, Ok(Some(4)));
    assert_eq!(&out[..4], b"live");
    assert_eq!(r.stats().lost_uncommitted, 1);
}

#[test]
fn pool_blocks_owners_and_foreign_refs() {
    let len = pool::required_size(64, 4).unwrap();
    let (a, b) = (Buf::new(len), Buf::new(len));
    // SAFETY: two buffers of `len` bytes, alive until the end of the test.
    let (pa, pb) = unsafe {
        (
            pool::init(a.ptr, len, 64, 4).unwrap(),
            pool::init(b.ptr, len, 64, 4).unwrap(),
        )
    };
    let me = Owner {
        slot: 1,
        generation: 1,
    };
    let mut x = pa.alloc(me).unwrap();
    pa.get_mut(&mut x).unwrap().fill(0xAB);
    assert_eq!(
        pb.get_mut(&mut x).unwrap_err(),
        PoolError::ForeignBlock { index: x.index() }
    );
    std::thread::scope(|s| {
        for t in 0..2u32 {
            s.spawn(move || {
                let who = Owner {
                    slot: 10 + t,
                    generation: 0,
                };
                for _ in 0..4 {
                    let mut blk = pa.alloc(who).unwrap();
                    pa.get_mut(&mut blk).unwrap()[..4].copy_from_slice(&t.to_le_bytes());
                    assert_eq!(pa.get(&blk).unwrap()[..4], t.to_le_bytes());
                    pa.free(blk, who).unwrap();
                }
            });
        }
    });
    assert!(pa.get(&x).unwrap().iter().all(|&v| v == 0xAB));
    assert_eq!(pa.counts(), (3, 1));
    assert_eq!(pa.reclaim(|o| o == me), 1);
    let r = pa.check_and_rebuild();
    assert_eq!((r.free, r.owned, r.list_damaged), (4, 0, false));
}

#[repr(C)]
struct S {
    words: [u64; 8],
}
// SAFETY: repr(C), integers only.
unsafe impl Plain for S {}

#[test]
fn checkpoint_slots_commit_restore_and_fall_back() {
    let len = Checkpoints::<S>::required_size(3);
    let mut buf = Buf::new(len);
    {
        let mut c = Checkpoints::<S>::attach(buf.bytes(), 1).unwrap();
        assert_eq!(c.status(), Status::Fresh);
        for k in 1..=4u64 {
            c.words = [k; 8];
            assert_eq!(c.commit().seq, k);
        }
        c.words = [99; 8];
        assert_eq!(c.restore().unwrap().seq, 4);
        assert_eq!(c.words, [4; 8]);
    }
    // Damage the newest checkpoint's payload: restore falls back to 3.
    let newest = forkroot::checkpoint::inspect(buf.bytes()).unwrap().unwrap();
    assert_eq!(newest.newest, Some(4));
    let slot = newest
        .slots
        .as_slice()
        .iter()
        .position(|s| *s == forkroot::checkpoint::SlotState::Valid { seq: 4 })
        .unwrap();
    let first = (128 + size_of::<S>()).div_ceil(64) * 64;
    let at = first + slot * (64 + size_of::<S>().div_ceil(64) * 64) + 64;
    buf.bytes()[at] ^= 1;
    let mut c = Checkpoints::<S>::attach(buf.bytes(), 1).unwrap();
    assert_eq!(c.restore().unwrap().seq, 3);
    assert_eq!(c.words, [3; 8]);
}

#[test]
fn checkpoint_in_place_rolls_back_and_refuses_forgeries() {
    const JOURNAL: usize = 512;
    let len = InPlace::<S>::required_size(JOURNAL);
    let mut buf = Buf::new(len);
    {
        let mut p = InPlace::<S>::attach(buf.bytes(), 1, JOURNAL).unwrap();
        let mut tx = p.begin();
        *tx.field(|s| &mut s.words[0]).unwrap() = 5;
        tx.commit();
        let mut tx = p.begin();
        *tx.field(|s| &mut s.words[0]).unwrap() = 6;
        *tx.field(|s| &mut s.words[7]).unwrap() = 6;
        std::mem::forget(tx); // the process dies mid-transaction
    }
    let p = InPlace::<S>::attach(buf.bytes(), 1, JOURNAL).unwrap();
    assert_eq!(p.recovery().rolled_back, 2);
    assert_eq!(p.words, [5, 0, 0, 0, 0, 0, 0, 0]);
    // An open transaction whose first record claims u64::MAX bytes.
    {
        let mut p = InPlace::<S>::attach(buf.bytes(), 1, JOURNAL).unwrap();
        let mut tx = p.begin();
        *tx.field(|s| &mut s.words[1]).unwrap() = 1;
        std::mem::forget(tx);
    }
    buf.bytes()[128 + 16..128 + 24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(
        InPlace::<S>::attach(buf.bytes(), 1, JOURNAL).unwrap_err(),
        CheckpointError::JournalCorrupt { at: 0 }
    );
}

#[test]
fn typed_state_attaches_and_refuses_another_layout() {
    let mut buf = Buf::new(state::required_size::<S>());
    {
        let mut s = state::attach::<S>(buf.bytes(), 3).unwrap();
        assert!(s.is_fresh());
        s.words[2] = 42;
    }
    let s = state::attach::<S>(buf.bytes(), 3).unwrap();
    assert_eq!(s.status(), Status::Matched);
    assert_eq!(s.words[2], 42);
    assert!(state::attach::<S>(buf.bytes(), 4).is_err());
}

#[test]
fn flight_log_writes_tail_and_drain() {
    // The log hands out a `&'static`: its memory is a static, as a region is
    // mapped for good.
    #[repr(C, align(4096))]
    struct Area(UnsafeCell<[u8; LOG_SIZE]>);
    // SAFETY: only this test touches it, through the log's atomics and a
    // read-only view while no record is being written.
    unsafe impl Sync for Area {}
    static AREA: Area = Area(UnsafeCell::new([0; LOG_SIZE]));
    let ptr = AREA.0.get().cast::<u8>();
    // SAFETY: LOG_SIZE bytes, aligned, never freed, used by this test only.
    let log = unsafe { FlightLog::init(ptr, LOG_SIZE) }.unwrap();
    for i in 0..5u32 {
        assert_eq!(
            log.write(Level::Info, i, 0, &format!("r{i}")),
            Some(u64::from(i))
        );
    }
    // SAFETY: the static's bytes; no record is being written while the
    // view lives.
    let area = unsafe { std::slice::from_raw_parts(ptr, LOG_SIZE) };
    let mut texts = Vec::new();
    tail(area, 2, |r| texts.push(r.text().to_owned()));
    assert_eq!(texts, ["r3", "r4"]);
    let mut cursor = Cursor::new();
    let mut n = 0;
    let d = drain(area, &mut cursor, |_| n += 1);
    assert_eq!(n, 5);
    assert_eq!(d.lost, 0);
}

//! Ring behaviour within one process: validation, limits, peek/commit,
//! timeouts, and several producer threads against one consumer.

use std::time::{Duration, Instant};

use forkroot::ring::{self, Config, Kind, RingError};

mod common;
use common::map_shared as memory;

fn cfg(kind: Kind, capacity: u32, slot_size: u32) -> Config {
    Config {
        kind,
        capacity,
        slot_size,
        checksum: true,
    }
}

#[test]
fn attach_rejects_garbage_and_short_memory() {
    let c = cfg(Kind::Spsc, 8, 32);
    let len = ring::required_size(&c).unwrap();
    let mem = memory(len);
    // SAFETY: `mem` is valid for `len` bytes for the whole test.
    unsafe {
        assert_eq!(
            ring::attach(mem, len).unwrap_err(),
            RingError::NotARing("bad magic")
        );
        std::ptr::write_bytes(mem, 0xA5, len);
        assert!(matches!(
            ring::attach(mem, len),
            Err(RingError::NotARing(_))
        ));
        ring::init(mem, len, &c).unwrap();
        assert!(ring::attach(mem, len).is_ok());
        assert!(matches!(
            ring::attach(mem, len - 1),
            Err(RingError::Undersized { .. })
        ));
        assert_eq!(
            ring::attach(mem.add(8), len - 8).unwrap_err(),
            RingError::Misaligned
        );
        // A flipped geometry byte fails the header checksum.
        *mem.add(16) ^= 1;
        assert_eq!(
            ring::attach(mem, len).unwrap_err(),
            RingError::NotARing("header checksum mismatch")
        );
    }
    assert!(matches!(
        ring::required_size(&cfg(Kind::Spsc, 3, 32)),
        Err(RingError::InvalidConfig(_))
    ));
    assert!(matches!(
        ring::required_size(&cfg(Kind::Spsc, 1, 32)),
        Err(RingError::InvalidConfig(_))
    ));
}

#[test]
fn limits_full_too_large_buffer_too_small() {
    let c = cfg(Kind::Spsc, 2, 16);
    let len = ring::required_size(&c).unwrap();
    // SAFETY: fresh memory of `len` bytes, alive for the test.
    let r = unsafe { ring::init(memory(len), len, &c) }.unwrap();
    let p = r.producer().unwrap();
    let mut cons = r.consumer().unwrap();
    // The same process may take the role again; another live one may not.
    assert!(r.consumer().is_ok());
    assert_eq!(
        p.try_send(&[0; 17]),
        Err(RingError::TooLarge { len: 17, max: 16 })
    );
    p.try_send(b"sixteen bytes!!!").unwrap();
    p.try_send(b"").unwrap();
    assert_eq!(p.try_send(b"x"), Err(RingError::Full));
    let t = Instant::now();
    assert_eq!(
        p.send_timeout(b"x", Some(Duration::from_millis(20))),
        Err(RingError::Full)
    );
    assert!(t.elapsed() >= Duration::from_millis(20));
    let mut small = [0u8; 4];
    assert_eq!(
        cons.try_recv(&mut small),
        Err(RingError::BufferTooSmall { need: 16 })
    );
    let mut buf = [0u8; 16];
    assert_eq!(cons.try_recv(&mut buf), Ok(Some(16)));
    assert_eq!(&buf, b"sixteen bytes!!!");
    assert_eq!(cons.try_recv(&mut buf), Ok(Some(0)));
    assert_eq!(cons.try_recv(&mut buf), Ok(None));
    let t = Instant::now();
    assert_eq!(
        cons.recv_timeout(&mut buf, Some(Duration::from_millis(20))),
        Ok(None)
    );
    assert!(t.elapsed() >= Duration::from_millis(20));
}

#[test]
fn peek_without_commit_keeps_the_message() {
    let c = cfg(Kind::Mpsc, 4, 8);
    let len = ring::required_size(&c).unwrap();
    // SAFETY: fresh memory of `len` bytes, alive for the test.
    let r = unsafe { ring::init(memory(len), len, &c) }.unwrap();
    r.producer().unwrap().try_send(b"one").unwrap();
    r.producer().unwrap().try_send(b"two").unwrap();
    let mut cons = r.consumer().unwrap();
    {
        let m = cons.peek().unwrap().unwrap();
        assert_eq!(&*m, b"one");
        assert_eq!(m.pos(), 0);
    }
    drop(cons);
    // A new consumer (the old one gone) still finds it.
    let mut cons = r.consumer().unwrap();
    let m = cons.peek().unwrap().unwrap();
    assert_eq!(&*m, b"one");
    m.commit();
    let m = cons.peek().unwrap().unwrap();
    assert_eq!((&*m, m.pos()), (&b"two"[..], 1));
    m.commit();
    assert!(cons.peek().unwrap().is_none());
    assert_eq!(r.stats().head, 2);
}

#[test]
fn corrupt_payload_is_skipped_and_reported() {
    let c = cfg(Kind::Spsc, 4, 8);
    let len = ring::required_size(&c).unwrap();
    let mem = memory(len);
    // SAFETY: fresh memory of `len` bytes, alive for the test.
    let r = unsafe { ring::init(mem, len, &c) }.unwrap();
    r.producer().unwrap().try_send(b"abc").unwrap();
    r.producer().unwrap().try_send(b"def").unwrap();
    // Flip a payload byte of slot 0 (slots start at 384, payload 16 bytes in).
    // SAFETY: inside the ring's memory; nobody reads it concurrently.
    unsafe { *mem.add(384 + 16) ^= 0xFF };
    let mut cons = r.consumer().unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(cons.try_recv(&mut buf), Err(RingError::Corrupt { pos: 0 }));
    assert_eq!(cons.try_recv(&mut buf), Ok(Some(3)));
    assert_eq!(&buf[..3], b"def");
    assert_eq!(r.stats().corrupt, 1);
}

#[test]
fn producer_threads_blocking_consumer() {
    const PER: u32 = 20_000;
    const THREADS: u32 = 3;
    let c = cfg(Kind::Mpsc, 16, 8);
    let len = ring::required_size(&c).unwrap();
    // SAFETY: fresh memory of `len` bytes, alive for the test.
    let r = unsafe { ring::init(memory(len), len, &c) }.unwrap();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            s.spawn(move || {
                let p = r.producer().unwrap();
                for i in 0..PER {
                    let mut m = [0u8; 8];
                    m[..4].copy_from_slice(&t.to_le_bytes());
                    m[4..].copy_from_slice(&i.to_le_bytes());
                    p.send_timeout(&m, None).unwrap();
                }
            });
        }
        let mut cons = r.consumer().unwrap();
        let mut next = [0u32; THREADS as usize];
        let mut buf = [0u8; 8];
        for _ in 0..PER * THREADS {
            assert_eq!(cons.recv(&mut buf), Ok(8));
            let t = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
            let i = u32::from_le_bytes(buf[4..].try_into().unwrap());
            assert_eq!(i, next[t], "per-producer order");
            next[t] += 1;
        }
        assert_eq!(next, [PER; THREADS as usize]);
    });
    assert_eq!(r.stats().lost_uncommitted, 0);
}

#[test]
fn writer_table_hands_out_distinct_ids_and_takes_them_back() {
    let c = cfg(Kind::Mpsc, 4, 8);
    let len = ring::required_size(&c).unwrap();
    // SAFETY: fresh memory of `len` bytes, alive for the test.
    let r = unsafe { ring::init(memory(len), len, &c) }.unwrap();
    let held: Vec<_> = (0..ring::WRITERS).map(|_| r.producer().unwrap()).collect();
    let mut ids: Vec<_> = held.iter().map(|p| p.id()).collect();
    ids.sort_by_key(|id| id.raw());
    ids.dedup();
    assert_eq!(ids.len(), ring::WRITERS, "two live producers share an id");
    assert_eq!(r.producer().unwrap_err(), RingError::WritersFull);
    // A freed entry is claimed again under a new generation: the old id is
    // never handed out twice.
    let old = held[7].id();
    drop(held);
    let again: Vec<_> = (0..ring::WRITERS).map(|_| r.producer().unwrap()).collect();
    let reused = again.iter().find(|p| p.id().slot() == old.slot()).unwrap();
    assert_ne!(reused.id(), old);
    assert_ne!(reused.id().generation(), old.generation());
}

#[test]
fn caller_ids_are_judged_by_the_callers_predicate() {
    let c = cfg(Kind::Mpsc, 4, 8);
    let len = ring::required_size(&c).unwrap();
    // SAFETY: fresh memory of `len` bytes, alive for the test.
    let r = unsafe { ring::init(memory(len), len, &c) }.unwrap();
    // Daemon slot 3 at restart 1 is live, at restart 0 it is dead.
    let live = ring::WriterId::new(3, 1).unwrap();
    let me = ring::WriterId::new(9, 1).unwrap();
    let is_dead = move |w: ring::WriterId| w != live && w != me;
    let mut cons = r.consumer_with(me, &is_dead).unwrap();
    r.producer_as(live).try_send(b"hi").unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(cons.try_recv(&mut buf), Ok(Some(2)));
    assert_eq!(ring::WriterId::new(0, 0), None);
    assert_eq!(ring::WriterId::from_raw(live.raw()), Some(live));
    // Another id cannot take the role from a live holder.
    let other = ring::WriterId::new(4, 1).unwrap();
    let never = |_: ring::WriterId| false;
    assert_eq!(
        r.consumer_with(other, &never).unwrap_err(),
        RingError::ConsumerBusy { holder: me }
    );
}

#[test]
fn concurrent_registrations_never_share_a_live_id() {
    use std::collections::HashSet;
    use std::sync::Mutex;
    let c = cfg(Kind::Mpsc, 4, 8);
    let len = ring::required_size(&c).unwrap();
    // SAFETY: fresh memory of `len` bytes, alive for the test.
    let r = unsafe { ring::init(memory(len), len, &c) }.unwrap();
    let live = Mutex::new(HashSet::new());
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..300 {
                    let p = r.producer().unwrap();
                    let id = p.id().raw();
                    assert!(live.lock().unwrap().insert(id), "id {id:#x} held twice");
                    std::thread::yield_now();
                    assert!(live.lock().unwrap().remove(&id));
                    drop(p);
                }
            });
        }
    });
    assert!(live.lock().unwrap().is_empty());
    // Every entry was given back: the whole table can be claimed again.
    let all: Vec<_> = (0..ring::WRITERS).map(|_| r.producer().unwrap()).collect();
    assert_eq!(all.len(), ring::WRITERS);
}

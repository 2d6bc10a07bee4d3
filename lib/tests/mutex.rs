//! Robust mutex and seqlock within one process: owner death is simulated by
//! a thread that forgets its guard and exits (the kernel's robust list then
//! marks the lock owner-died, as for a dead process).

use forkroot::mutex::{LockError, RobustMutex, SeqLock, SeqLockError};
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU64, Ordering};

fn new_mutex(v: [u64; 2]) -> &'static RobustMutex<[u64; 2]> {
    let slot: &'static mut MaybeUninit<RobustMutex<[u64; 2]>> =
        Box::leak(Box::new(MaybeUninit::uninit()));
    // SAFETY: fresh, aligned, leaked storage nobody else sees yet.
    unsafe { RobustMutex::init(slot.as_mut_ptr(), v) }.expect("init");
    // SAFETY: initialised just above.
    unsafe { slot.assume_init_ref() }
}

/// A thread locks, breaks the invariant, forgets the guard, and exits.
fn die_holding(m: &'static RobustMutex<[u64; 2]>) {
    std::thread::spawn(move || {
        let mut g = m.lock().expect("lock");
        g[0] += 10; // invariant g[0] == g[1] broken
        std::mem::forget(g);
    })
    .join()
    .unwrap();
}

#[test]
fn lock_and_try_lock() {
    let m = new_mutex([1, 1]);
    {
        let mut g = m.lock().unwrap();
        g[0] = 5;
        g[1] = 5;
        let other = std::thread::spawn(move || matches!(m.try_lock(), Err(LockError::WouldBlock)));
        assert!(
            other.join().unwrap(),
            "try_lock from another thread must not succeed"
        );
    }
    assert_eq!(*m.try_lock().unwrap(), [5, 5]);
}

#[test]
fn relock_from_the_same_thread_is_an_error_not_a_hang() {
    let m = new_mutex([0, 0]);
    let _g = m.lock().unwrap();
    match m.lock() {
        Err(LockError::Os(e)) => assert_eq!(e.raw_os_error(), Some(libc::EDEADLK)),
        other => panic!("expected EDEADLK, got {other:?}"),
    }
}

#[test]
fn owner_died_then_repaired() {
    let m = new_mutex([3, 3]);
    die_holding(m);
    match m.lock() {
        Err(LockError::OwnerDied(mut g)) => {
            assert_eq!(*g, [13, 3]);
            g[1] = g[0]; // repair
            let g = g.make_consistent();
            assert_eq!(*g, [13, 13]);
        }
        other => panic!("expected OwnerDied, got {other:?}"),
    }
    // Usable again, normally.
    assert_eq!(*m.lock().unwrap(), [13, 13]);
    // try_lock sees owner death too.
    die_holding(m);
    match m.try_lock() {
        Err(LockError::OwnerDied(g)) => drop(g.make_consistent()),
        other => panic!("expected OwnerDied from try_lock, got {other:?}"),
    }
}

#[test]
fn abandoned_repair_makes_it_not_recoverable() {
    let m = new_mutex([0, 0]);
    die_holding(m);
    match m.lock() {
        Err(LockError::OwnerDied(g)) => drop(g), // no make_consistent
        other => panic!("expected OwnerDied, got {other:?}"),
    }
    assert!(matches!(m.lock(), Err(LockError::NotRecoverable)));
    assert!(matches!(m.try_lock(), Err(LockError::NotRecoverable)));
    let from_thread =
        std::thread::spawn(move || matches!(m.lock(), Err(LockError::NotRecoverable)));
    assert!(from_thread.join().unwrap());
}

#[test]
fn seqlock_readers_never_see_a_torn_value() {
    static S: SeqLock<[u64; 8]> = SeqLock::new([0; 8]);
    let stop = &*Box::leak(Box::new(AtomicU64::new(0)));
    // Each reader's good reads so far: the writer goes on past its 100,000
    // writes until both have had one (threads of other tests may keep
    // them off the CPUs for all of the first 100,000), up to a cap past
    // which the assertion below says so.
    let reads: &'static [AtomicU64; 2] =
        Box::leak(Box::new([AtomicU64::new(0), AtomicU64::new(0)]));
    let writer = std::thread::spawn(move || {
        let mut i = 0u64;
        while i < 100_000
            || (i < 10_000_000 && reads.iter().any(|r| r.load(Ordering::Relaxed) == 0))
        {
            i += 1;
            S.write(|v| *v = [i; 8]).unwrap();
        }
        stop.store(1, Ordering::Release);
        i
    });
    let readers: Vec<_> = reads
        .iter()
        .map(|count| {
            std::thread::spawn(move || {
                let (mut n, mut last) = (0u64, 0u64);
                while stop.load(Ordering::Acquire) == 0 {
                    if let Ok(v) = S.read() {
                        assert!(v.iter().all(|&x| x == v[0]), "torn read {v:?}");
                        assert!(v[0] >= last, "went backwards");
                        last = v[0];
                        n += 1;
                        count.store(n, Ordering::Relaxed);
                    }
                }
                n
            })
        })
        .collect();
    let written = writer.join().unwrap();
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    assert_eq!(S.read().unwrap(), [written; 8]);
}

/// A sequence that stays odd but moves (a writer alive and busy, each
/// write seen mid-way) is `Torn`, not `WriterDied`: only a sequence stuck
/// at one odd value reads as a dead (or stalled) writer.
#[test]
fn seqlock_reader_tells_a_moving_odd_sequence_from_a_stuck_one() {
    let s: &'static SeqLock<[u64; 2]> = Box::leak(Box::new(SeqLock::new([1, 1])));
    // SAFETY: the seqlock's first field is its AtomicU64 sequence word.
    let seq: &'static AtomicU64 = unsafe { &*std::ptr::from_ref(s).cast::<AtomicU64>() };
    seq.fetch_add(1, Ordering::SeqCst);
    let stop = &*Box::leak(Box::new(AtomicU64::new(0)));
    let mover = std::thread::spawn(move || {
        while stop.load(Ordering::Relaxed) == 0 {
            seq.fetch_add(2, Ordering::SeqCst);
            std::hint::spin_loop();
        }
    });
    // Moving already, so that the read sees it move.
    let at = seq.load(Ordering::SeqCst);
    while seq.load(Ordering::SeqCst) == at {
        std::hint::spin_loop();
    }
    let moving = s.read();
    stop.store(1, Ordering::Relaxed);
    mover.join().unwrap();
    assert_eq!(moving, Err(SeqLockError::Torn));
    assert_eq!(s.read(), Err(SeqLockError::WriterDied));
}

#[test]
fn seqlock_dead_writer_is_an_error_then_recovered() {
    let s: &'static SeqLock<[u64; 2]> = Box::leak(Box::new(SeqLock::new([7, 7])));
    s.write(|v| *v = [8, 8]).unwrap();
    // Simulate a writer that died mid-write: the layout is #[repr(C)] with
    // the sequence word first; make it odd and half-write the value.
    let seq = std::ptr::from_ref(s).cast::<AtomicU64>();
    // SAFETY: `seq` points at the seqlock's first field, an AtomicU64.
    unsafe { &*seq }.fetch_add(1, Ordering::SeqCst);
    let value = std::ptr::from_ref(s)
        .cast::<u64>()
        .wrapping_add(1)
        .cast_mut();
    // SAFETY: the value follows the sequence word; nobody else accesses it.
    unsafe { value.write_volatile(9) };
    assert_eq!(
        s.read(),
        Err(SeqLockError::WriterDied),
        "bounded, not a hang"
    );
    assert_eq!(s.write(|v| v[0] = 1), Err(SeqLockError::Busy));
    // SAFETY: the (simulated) writer is dead and this is the only writer.
    let recovered = unsafe { s.recover(|v| v[1] = v[0]) };
    assert!(recovered);
    assert_eq!(s.read(), Ok([9, 9]));
    assert!(s.seq() % 2 == 0);
    // SAFETY: as above; nothing to do when the sequence is even.
    assert!(!unsafe { s.recover(|_| unreachable!()) });
    s.write(|v| *v = [10, 10]).unwrap();
    assert_eq!(s.read(), Ok([10, 10]));
}

//! `SeqLock::read` beside busy CPUs, alone in its test binary: it keeps
//! every CPU busy on purpose, which would starve the tests beside it in a
//! shared binary (libtest runs them on parallel threads).

use forkroot::mutex::{SeqLock, SeqLockError};
use std::sync::atomic::{AtomicU64, Ordering};

/// A reader of a dead writer's seqlock gives up in bounded time even when
/// every CPU is busy, where each yield can give the CPU away for a whole
/// time slice (bounded by tries alone, this took 13 s beside four busy
/// threads).
#[test]
fn seqlock_reader_of_a_dead_writer_gives_up_soon_on_busy_cpus() {
    let s: &'static SeqLock<[u64; 2]> = Box::leak(Box::new(SeqLock::new([1, 1])));
    let seq = std::ptr::from_ref(s).cast::<AtomicU64>();
    // SAFETY: `seq` points at the seqlock's first field, an AtomicU64;
    // odd: a writer died mid-write.
    unsafe { &*seq }.fetch_add(1, Ordering::SeqCst);
    let stop = &*Box::leak(Box::new(AtomicU64::new(0)));
    // Stops the spinning threads however the test ends.
    struct Stop(&'static AtomicU64);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(1, Ordering::Relaxed);
        }
    }
    let stopper = Stop(stop);
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let busy: Vec<_> = (0..2 * cpus)
        .map(|_| {
            std::thread::spawn(move || {
                while stop.load(Ordering::Relaxed) == 0 {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let t0 = std::time::Instant::now();
    let got = s.read();
    let took = t0.elapsed();
    drop(stopper);
    for b in busy {
        b.join().unwrap();
    }
    assert_eq!(got, Err(SeqLockError::WriterDied));
    eprintln!(
        "read gave up after {took:?} beside {} busy threads",
        2 * cpus
    );
    assert!(
        took < std::time::Duration::from_secs(2),
        "read gave up after {took:?} (patience {:?})",
        forkroot::mutex::SEQLOCK_READ_PATIENCE
    );
}

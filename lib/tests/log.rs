//! Flight log: round trip, truncation, reinit, drain accounting, garbage.

use forkroot::log::{drain, tail, Cursor, FlightLog, Level, Record, CAPACITY, TEXT_MAX};
use forkroot::region::LOG_SIZE;
use std::sync::atomic::{AtomicU64, Ordering};

mod common;
use common::Xorshift64 as Rng;

/// An 8-aligned, heap-backed log area that lives for the whole test.
fn area() -> &'static mut [u8] {
    let words: &'static mut [u64] = Box::leak(vec![0u64; LOG_SIZE / 8].into_boxed_slice());
    // SAFETY: reinterpreting an exclusively borrowed u64 slice as bytes.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), LOG_SIZE) }
}

fn open(a: &mut [u8]) -> &'static FlightLog {
    // SAFETY: `a` is leaked (lives forever), aligned and LOG_SIZE long.
    unsafe { FlightLog::init(a.as_mut_ptr(), a.len()) }.expect("init")
}

/// Reads a record's bytes back as seen by an untrusted reader.
fn bytes(a: &[u8]) -> &[u8] {
    a
}

fn collect_tail(a: &[u8], n: usize) -> Vec<Record> {
    let mut v = Vec::new();
    tail(a, n, |r| v.push(r.clone()));
    v
}

#[test]
fn round_trip_and_order() {
    let a = area();
    let log = open(a);
    for i in 0..10u32 {
        let s = log.write(
            Level::Info,
            100 + i,
            u128::from(i) << 70,
            &format!("record {i}"),
        );
        assert_eq!(s, Some(u64::from(i)));
    }
    log.write(Level::Error, 7, 0, "last");
    let recs = collect_tail(bytes(a), 3);
    assert_eq!(recs.len(), 3);
    assert_eq!(recs[0].text(), "record 8");
    assert_eq!(recs[0].pid(), 108);
    assert_eq!(recs[0].tx(), 8u128 << 70);
    assert_eq!(recs[0].level(), Level::Info);
    assert_eq!(recs[2].text(), "last");
    assert_eq!(recs[2].level(), Level::Error);
    assert!(recs[0].seq() < recs[1].seq() && recs[1].seq() < recs[2].seq());
    assert!(recs[2].timestamp_ns() >= recs[0].timestamp_ns());
    assert!(recs[2].timestamp_ns() > 1_600_000_000_000_000_000);
    assert_eq!(collect_tail(bytes(a), 1000).len(), 11);
}

#[test]
fn long_text_is_cut_at_a_char_boundary() {
    let a = area();
    let log = open(a);
    // 'é' is two bytes: 207 ASCII bytes then 'é' straddles the limit.
    let text = format!("{}é tail", "x".repeat(TEXT_MAX - 1));
    log.write(Level::Warn, 1, 0, &text);
    let r = &collect_tail(bytes(a), 1)[0];
    assert!(r.truncated());
    assert_eq!(r.text().len(), TEXT_MAX - 1);
    assert!(r.text().chars().all(|c| c == 'x'));
    log.write(Level::Warn, 1, 0, "short");
    assert!(!collect_tail(bytes(a), 1)[0].truncated());
}

#[test]
fn reinit_keeps_records_and_garbage_header_reformats() {
    let a = area();
    let log = open(a);
    log.write(Level::Info, 1, 0, "before restart");
    let log2 = open(a);
    assert_eq!(log2.next_seq(), 1);
    log2.write(Level::Info, 2, 0, "after restart");
    let texts: Vec<String> = collect_tail(bytes(a), 10)
        .iter()
        .map(|r| r.text().to_owned())
        .collect();
    assert_eq!(texts, ["before restart", "after restart"]);

    // Smash the header: the next init formats the area.
    a[..64].fill(0xA5);
    // The records survive for a reader even without a header.
    assert_eq!(collect_tail(bytes(a), 10).len(), 2);
    let log3 = open(a);
    assert_eq!(log3.next_seq(), 0);
    assert_eq!(collect_tail(bytes(a), 10).len(), 0);
}

#[test]
fn drain_counts_overwritten_records() {
    let a = area();
    let log = open(a);
    let mut cur = Cursor::new();
    for i in 0..5 {
        log.write(Level::Info, 1, 0, &format!("a{i}"));
    }
    let mut seen = Vec::new();
    let d = drain(bytes(a), &mut cur, |r| seen.push(r.text().to_owned()));
    assert_eq!((d.records, d.lost), (5, 0));
    assert_eq!(seen, ["a0", "a1", "a2", "a3", "a4"]);
    assert_eq!(drain(bytes(a), &mut cur, |_| {}).records, 0);

    let total = 2 * CAPACITY as u64 + 17;
    for i in 0..total {
        log.write(Level::Debug, 1, 0, &format!("b{i}"));
    }
    let mut first = None;
    let d = drain(bytes(a), &mut cur, |r| {
        first.get_or_insert_with(|| r.text().to_owned());
    });
    assert_eq!(d.records, CAPACITY as u64);
    assert_eq!(d.lost, total - CAPACITY as u64);
    assert_eq!(
        first.as_deref(),
        Some(format!("b{}", total - CAPACITY as u64).as_str())
    );
    assert_eq!(cur.next_seq(), 5 + total);
}

#[test]
fn drain_waits_once_for_a_record_in_progress() {
    let a = area();
    let log = open(a);
    for i in 0..3 {
        log.write(Level::Info, 1, 0, &format!("r{i}"));
    }
    // Simulate a writer that reserved ticket 3, marked slot 3 in progress
    // (commit word 2*3+1) and died: header `next` at offset 32, slot i's
    // commit word at 256 + 256*i.
    let word = |off: usize| {
        // SAFETY: in-bounds, 8-aligned word of the area, accessed atomically.
        unsafe { &*a.as_ptr().add(off).cast::<AtomicU64>() }
    };
    word(32).store(4, Ordering::SeqCst);
    word(256 + 256 * 3).store(7, Ordering::SeqCst);
    log.write(Level::Info, 1, 0, "r4");
    let mut cur = Cursor::new();
    let d = drain(bytes(a), &mut cur, |_| {});
    assert_eq!(
        (d.records, d.lost),
        (3, 0),
        "stops before the record in progress"
    );
    let mut seen = Vec::new();
    let d = drain(bytes(a), &mut cur, |r| seen.push(r.text().to_owned()));
    assert_eq!(
        (d.records, d.lost),
        (1, 1),
        "second time, the dead writer's ticket is lost"
    );
    assert_eq!(seen, ["r4"]);
}

#[test]
fn drain_restarts_after_reformat() {
    let a = area();
    let log = open(a);
    for _ in 0..20 {
        log.write(Level::Info, 1, 0, "old");
    }
    let mut cur = Cursor::new();
    assert_eq!(drain(bytes(a), &mut cur, |_| {}).records, 20);
    a[..8].fill(0); // the region was zeroed (`fresh` restart), or smashed
    let log = open(a);
    std::thread::sleep(std::time::Duration::from_millis(1)); // new epoch
    log.write(Level::Info, 1, 0, "new");
    let mut seen = Vec::new();
    let d = drain(bytes(a), &mut cur, |r| seen.push(r.text().to_owned()));
    assert_eq!(d.records, 1);
    assert_eq!(seen, ["new"]);
}

#[test]
fn garbage_never_panics_or_hangs() {
    let a = area();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for round in 0..300 {
        // Half the rounds: pure garbage. Otherwise: a real log with random
        // words and bytes overwritten, including commit words and the header.
        if round % 2 == 0 {
            for chunk in a.chunks_mut(8) {
                chunk.copy_from_slice(&rng.next().to_ne_bytes());
            }
        } else {
            a.fill(0);
            let log = open(a);
            for i in 0..(rng.next() % 600) {
                log.write(Level::Info, 1, i.into(), &format!("rec {i}"));
            }
            for _ in 0..(rng.next() % 200) {
                let off = (rng.next() as usize % (a.len() / 8)) * 8;
                let v = match rng.next() % 4 {
                    0 => rng.next(),
                    1 => rng.next() % 1000, // plausible commit words
                    2 => 2 * (rng.next() % 600) + 2,
                    _ => 0,
                };
                a[off..off + 8].copy_from_slice(&v.to_ne_bytes());
            }
            for _ in 0..(rng.next() % 50) {
                let off = rng.next() as usize % a.len();
                a[off] = rng.next() as u8;
            }
        }
        let mut n = 0;
        tail(bytes(a), usize::MAX, |r| {
            n += 1;
            assert!(r.text().len() <= TEXT_MAX);
        });
        assert!(n <= CAPACITY);
        let mut cur = Cursor::new();
        for _ in 0..3 {
            let mut m = 0u64;
            let d = drain(bytes(a), &mut cur, |r| {
                m += 1;
                let _ = r.to_string();
            });
            assert_eq!(d.records, m);
            assert!(m <= CAPACITY as u64);
        }
    }
    // Short or misaligned areas give nothing.
    assert_eq!(tail(&a[..100], 10, |_| {}), 0);
    assert_eq!(tail(&a[1..], 10, |_| {}), 0);
    assert_eq!(drain(&a[3..], &mut Cursor::new(), |_| {}).records, 0);
    // SAFETY: misaligned / short areas are rejected before any access.
    assert!(unsafe { FlightLog::init(a.as_mut_ptr().add(1), LOG_SIZE - 1) }.is_none());
    // SAFETY: as above.
    assert!(unsafe { FlightLog::init(a.as_mut_ptr(), 1000) }.is_none());
}

/// Text with a self-check: "w<writer> i<index> <filler> #<hash>".
fn checked_text(w: u64, i: u64) -> String {
    let fill_len = ((w * 31 + i * 7) % 150) as usize;
    let fill: String = (0..fill_len)
        .map(|k| (b'a' + ((w + i + k as u64) % 26) as u8) as char)
        .collect();
    let body = format!("w{w} i{i} {fill}");
    format!("{body} #{:016x}", fnv(body.as_bytes()))
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3)
    })
}

fn verify(text: &str) -> (u64, u64) {
    let (body, h) = text.rsplit_once(" #").expect("checksum present");
    assert_eq!(
        u64::from_str_radix(h, 16).expect("hex"),
        fnv(body.as_bytes()),
        "torn: {text}"
    );
    let mut it = body.split(' ');
    let w = it.next().unwrap()[1..].parse().unwrap();
    let i = it.next().unwrap()[1..].parse().unwrap();
    (w, i)
}

#[test]
fn threads_write_while_a_reader_drains() {
    let a = area();
    let log = open(a);
    let ro: &'static [u8] = a;
    const WRITERS: u64 = 4;
    const PER: u64 = 20_000;
    let handles: Vec<_> = (0..WRITERS)
        .map(|w| {
            std::thread::spawn(move || {
                for i in 0..PER {
                    log.write(Level::Info, w as u32, 0, &checked_text(w, i));
                }
            })
        })
        .collect();
    let mut cur = Cursor::new();
    let (mut records, mut lost) = (0u64, 0u64);
    let mut last = [None::<u64>; WRITERS as usize];
    let mut step = |r: &Record| {
        let (w, i) = verify(r.text());
        let prev = &mut last[w as usize];
        assert!(prev.is_none_or(|p| p < i), "per-writer order");
        *prev = Some(i);
    };
    while handles.iter().any(|h| !h.is_finished()) {
        let d = drain(ro, &mut cur, &mut step);
        records += d.records;
        lost += d.lost;
    }
    for h in handles {
        h.join().unwrap();
    }
    let d = drain(ro, &mut cur, &mut step);
    records += d.records;
    lost += d.lost;
    // Every ticket is accounted for: passed on or counted lost.
    assert_eq!(records + lost, log.next_seq());
    assert!(records > 0);
}

//! Checkpoint areas holding any bytes at all: random contents, bit flips and
//! forged records (with a correct crc) in the in-place journal, its control
//! block and the checkpoint slots. Attaching, rolling back, restoring,
//! inspecting and committing afterwards must never panic; corruption is
//! detected (`JournalCorrupt`, a refused header, a skipped slot) or harmless
//! (the state is one that was really there).
//!
//! Runs in the default (debug) profile, where an integer overflow panics.

use forkroot::checkpoint::{self, CheckpointError, Checkpoints, InPlace};
use forkroot::region::Plain;
use forkroot::state::{self, StateError};
use proptest::prelude::*;
use proptest::test_runner::Config;
use std::mem::size_of;

mod common;
use common::Shm;

const WORDS: usize = 64;

#[repr(C)]
struct S {
    words: [u64; WORDS],
}
// SAFETY: repr(C), integers only.
unsafe impl Plain for S {}

fn config() -> Config {
    Config {
        cases: 512,
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------
// In place
// ---------------------------------------------------------------------------

const JOURNAL: usize = 4096;
/// Offsets from the layout documented in `forkroot::checkpoint`.
const CONTROL_AT: usize = 64;
const JOURNAL_AT: usize = 128;
const LIVE_AT: usize = JOURNAL_AT + JOURNAL;
const RECORD_HEADER: usize = 40;

fn before(i: usize) -> u64 {
    0x1000 + i as u64
}

fn during(i: usize) -> u64 {
    0xdead_0000 + i as u64
}

/// Words the open transaction changes (one range each, and one range
/// declared twice).
const CHANGED: [usize; 5] = [0, 3, 17, 63, 3];

/// An area with one committed state (`before`) and a transaction that
/// changed `CHANGED` to `during` and was left open (its process died).
/// Returns the journal bytes used.
fn open_transaction(shm: &mut Shm) -> usize {
    state::zero(shm.area()).unwrap();
    let mut p = InPlace::<S>::attach(shm.area(), 1, JOURNAL).unwrap();
    let mut tx = p.begin();
    for i in 0..WORDS {
        *tx.field(|s| &mut s.words[i]).unwrap() = before(i);
    }
    tx.commit();
    let mut tx = p.begin();
    for &i in &CHANGED {
        *tx.field(|s| &mut s.words[i]).unwrap() = during(i);
    }
    std::mem::forget(tx);
    let used = u64::from_le_bytes(
        shm.area()[CONTROL_AT + 16..CONTROL_AT + 24]
            .try_into()
            .unwrap(),
    );
    assert_eq!(used as usize, CHANGED.len() * InPlace::<S>::record_size(8));
    used as usize
}

/// Attaches whatever the area holds; on success checks the state is made of
/// real values only, and that a transaction can still begin and commit.
/// Returns whether the attach rolled everything back to `before`.
fn attach_and_use(shm: &mut Shm) -> Result<bool, CheckpointError> {
    let mut p = InPlace::<S>::attach(shm.area(), 1, JOURNAL)?;
    for (i, &w) in p.words.iter().enumerate() {
        assert!(
            w == before(i) || w == during(i) || w == 0,
            "word {i} holds {w:#x}, a value no transaction wrote"
        );
    }
    let clean = p.words.iter().enumerate().all(|(i, &w)| w == before(i));
    let mut tx = p.begin();
    *tx.field(|s| &mut s.words[1]).unwrap() = 1;
    tx.commit();
    assert_eq!(p.words[1], 1);
    Ok(clean)
}

/// Writes a record header with a correct crc over `old` (which must be in
/// the journal right after the header) at journal offset `at`.
fn forge_record(shm: &mut Shm, at: usize, seq: u64, offset: u64, len: u64, prev: u64) {
    let a = shm.area();
    let h = JOURNAL_AT + at;
    let avail = JOURNAL - at - RECORD_HEADER;
    let old = &a[h + RECORD_HEADER..h + RECORD_HEADER + (len.min(avail as u64) as usize)];
    let mut c = crc32fast::Hasher::new();
    for v in [seq, offset, len, prev] {
        c.update(&v.to_le_bytes());
    }
    c.update(old);
    let crc = c.finalize();
    for (k, v) in [seq, offset, len, prev].into_iter().enumerate() {
        a[h + 8 * k..h + 8 * k + 8].copy_from_slice(&v.to_le_bytes());
    }
    a[h + 32..h + 36].copy_from_slice(&crc.to_le_bytes());
}

/// A field value that is extreme more often than chance would make it.
fn field() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        Just(u64::MAX),
        Just(u64::MAX - 39),
        Just(u64::MAX - 7),
        (0u64..4096),
        (u64::MAX - 4096..=u64::MAX),
    ]
}

#[test]
fn a_forged_record_of_huge_length_is_corrupt_not_a_panic() {
    let mut shm = Shm::new(InPlace::<S>::required_size(JOURNAL));
    // `len` such that the record's size overflows: header + len > 2^64.
    for len in [u64::MAX, u64::MAX - 39, u64::MAX - 7, u64::MAX - 32] {
        open_transaction(&mut shm);
        forge_record(&mut shm, 0, 2, 0, len, u64::MAX);
        assert_eq!(
            attach_and_use(&mut shm),
            Err(CheckpointError::JournalCorrupt { at: 0 }),
            "len {len:#x}"
        );
    }
}

#[test]
fn extreme_counters_and_seqs_in_the_control_block_are_no_panic() {
    let mut shm = Shm::new(InPlace::<S>::required_size(JOURNAL));
    let set = |shm: &mut Shm, field: usize, v: u64| {
        let at = CONTROL_AT + 8 * field;
        shm.area()[at..at + 8].copy_from_slice(&v.to_le_bytes());
    };
    // Informational counters at their maximum: commits and rollbacks go on.
    open_transaction(&mut shm);
    set(&mut shm, 3, u64::MAX);
    set(&mut shm, 4, u64::MAX);
    assert_eq!(attach_and_use(&mut shm), Ok(true));
    // A committed seq no transaction can follow is a corrupt control block.
    open_transaction(&mut shm);
    set(&mut shm, 0, u64::MAX);
    set(&mut shm, 1, u64::MAX);
    assert_eq!(
        attach_and_use(&mut shm),
        Err(CheckpointError::JournalCorrupt { at: usize::MAX })
    );
}

proptest! {
    #![proptest_config(config())]

    /// Bit flips inside the published records: detected, or they hit bytes
    /// no crc covers (padding) and the rollback is complete.
    #[test]
    fn bit_flips_in_records_are_detected_or_harmless(
        flips in prop::collection::vec((0usize..4096, 0u32..8), 1..6)
    ) {
        let mut shm = Shm::new(InPlace::<S>::required_size(JOURNAL));
        let used = open_transaction(&mut shm);
        for (at, bit) in flips {
            shm.area()[JOURNAL_AT + at % used] ^= 1 << bit;
        }
        match attach_and_use(&mut shm) {
            Ok(clean) => prop_assert!(clean, "an undetected flip left a partial rollback"),
            Err(CheckpointError::JournalCorrupt { at }) => prop_assert!(at < used),
            Err(e) => prop_assert!(false, "unexpected {e:?}"),
        }
    }

    /// Records with arbitrary fields and a correct crc (a stray or hostile
    /// writer can compute one): refused unless they are a real record.
    #[test]
    fn forged_records_are_refused(
        which in 0usize..CHANGED.len(),
        seq in field(), offset in field(), len in field(), prev in field(),
    ) {
        let mut shm = Shm::new(InPlace::<S>::required_size(JOURNAL));
        let used = open_transaction(&mut shm);
        let at = which * InPlace::<S>::record_size(8);
        forge_record(&mut shm, at, seq, offset, len, prev);
        let real_prev = if which == 0 { u64::MAX } else { (at - InPlace::<S>::record_size(8)) as u64 };
        let real = seq == 2 && len == 8 && prev == real_prev && offset == 8 * CHANGED[which] as u64;
        match attach_and_use(&mut shm) {
            Ok(clean) => prop_assert!(real && clean, "a forged record was applied"),
            Err(CheckpointError::JournalCorrupt { at: bad }) => {
                prop_assert!(!real);
                prop_assert!(bad >= at && bad < used);
            }
            Err(e) => prop_assert!(false, "unexpected {e:?}"),
        }
    }

    /// Any bytes over the control block and the journal: never a panic,
    /// never a value no transaction wrote.
    #[test]
    fn any_bytes_in_control_and_journal_are_no_panic(
        start in CONTROL_AT..LIVE_AT,
        bytes in prop::collection::vec(any::<u8>(), 1..512),
        used in prop_oneof![Just(None), (0u64..=JOURNAL as u64 + 8).prop_map(Some)],
    ) {
        let mut shm = Shm::new(InPlace::<S>::required_size(JOURNAL));
        open_transaction(&mut shm);
        let end = (start + bytes.len()).min(LIVE_AT);
        shm.area()[start..end].copy_from_slice(&bytes[..end - start]);
        if let Some(u) = used {
            shm.area()[CONTROL_AT + 16..CONTROL_AT + 24].copy_from_slice(&u.to_le_bytes());
        }
        match attach_and_use(&mut shm) {
            Ok(_) | Err(CheckpointError::JournalCorrupt { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected {e:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Slots
// ---------------------------------------------------------------------------

const SLOTS: u32 = 3;
const SLOT_HEADER: usize = 64;

fn slot_offset(i: usize) -> usize {
    let first = (128 + size_of::<S>()).div_ceil(64) * 64;
    first + i * (SLOT_HEADER + size_of::<S>().div_ceil(64) * 64)
}

fn value(seq: u64, i: usize) -> u64 {
    seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i as u64
}

/// Commits seqs 1..=n, state `value(seq, _)`.
fn commit_n(shm: &mut Shm, n: u64) {
    state::zero(shm.area()).unwrap();
    let mut c = Checkpoints::<S>::attach_with(shm.area(), 1, SLOTS).unwrap();
    for seq in 1..=n {
        for (i, w) in c.words.iter_mut().enumerate() {
            *w = value(seq, i);
        }
        assert_eq!(c.commit().seq, seq);
    }
}

/// Writes a slot header with a correct crc over the payload in place.
fn forge_slot(shm: &mut Shm, slot: usize, seq: u64, len: u64) {
    let a = shm.area();
    let h = slot_offset(slot);
    let payload = &a[h + SLOT_HEADER..h + SLOT_HEADER + size_of::<S>()];
    let mut c = crc32fast::Hasher::new();
    c.update(&seq.to_le_bytes());
    c.update(&len.to_le_bytes());
    c.update(payload);
    let crc = c.finalize();
    a[h..h + 8].copy_from_slice(&seq.to_le_bytes());
    a[h + 8..h + 16].copy_from_slice(&len.to_le_bytes());
    a[h + 16..h + 20].copy_from_slice(&crc.to_le_bytes());
    a[h + 20..h + 24].copy_from_slice(&0u32.to_le_bytes());
}

/// Attaches, inspects, restores and commits whatever the area holds: never
/// a panic; a restored state is a real checkpoint, read whole. With
/// `forged`, a slot header may carry a correct crc over whatever its payload
/// holds (no crc tells that from a checkpoint): the restored state must then
/// be that slot's payload, whole.
fn restore_and_commit(shm: &mut Shm, forged: bool) -> Result<(), TestCaseError> {
    let snapshot = shm.area().to_vec();
    let inspected = checkpoint::inspect(shm.area());
    let mut c = match Checkpoints::<S>::attach_with(shm.area(), 1, SLOTS) {
        Ok(c) => c,
        Err(
            StateError::BadMagic { .. }
            | StateError::CorruptHeader { .. }
            | StateError::LayoutChanged { .. },
        ) => return Ok(()),
        Err(e) => return Err(TestCaseError::fail(format!("unexpected {e:?}"))),
    };
    match c.restore() {
        Ok(r) => {
            let newest = inspected.ok().flatten().and_then(|i| i.newest);
            prop_assert_eq!(newest, Some(r.seq), "inspect and restore disagree");
            if forged {
                let at = slot_offset(r.slot) + SLOT_HEADER;
                for (i, &w) in c.words.iter().enumerate() {
                    let b = &snapshot[at + 8 * i..at + 8 * i + 8];
                    prop_assert_eq!(w, u64::from_le_bytes(b.try_into().unwrap()));
                }
                return commit_after(&mut c);
            }
            // The payload is the real one of some commit, whatever seq the
            // header carries.
            let k = (1..=8).find(|&k| value(k, 0) == c.words[0]);
            prop_assert!(k.is_some(), "restored a payload no commit wrote");
            let k = k.unwrap();
            for (i, &w) in c.words.iter().enumerate() {
                prop_assert_eq!(w, value(k, i), "torn payload");
            }
        }
        Err(CheckpointError::NoCheckpoint) => {
            prop_assert!(c.words.iter().all(|&w| w == 0));
        }
        Err(e) => return Err(TestCaseError::fail(format!("unexpected {e:?}"))),
    }
    commit_after(&mut c)
}

/// A commit after a restore lands and is the newest checkpoint.
fn commit_after(c: &mut Checkpoints<'_, S>) -> Result<(), TestCaseError> {
    c.words[5] = 5;
    let done = c.commit();
    prop_assert!(done.seq > 0);
    prop_assert_eq!(c.restore().map(|r| r.seq), Ok(done.seq));
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Any bytes anywhere past the state header.
    #[test]
    fn any_bytes_in_slots_are_no_panic(
        n in 1u64..6,
        start in 64usize..Checkpoints::<S>::required_size(SLOTS),
        bytes in prop::collection::vec(any::<u8>(), 1..256),
    ) {
        let total = Checkpoints::<S>::required_size(SLOTS);
        let mut shm = Shm::new(total);
        commit_n(&mut shm, n);
        let end = (start + bytes.len()).min(total);
        shm.area()[start..end].copy_from_slice(&bytes[..end - start]);
        restore_and_commit(&mut shm, false)?;
    }

    /// Slot headers with any seq and length and a correct crc: a length
    /// other than the type's is refused, an extreme seq breaks nothing.
    #[test]
    fn forged_slot_headers_are_no_panic(
        n in 1u64..6,
        slot in 0usize..SLOTS as usize,
        seq in field(),
        len in prop_oneof![Just(size_of::<S>() as u64), field()],
    ) {
        let mut shm = Shm::new(Checkpoints::<S>::required_size(SLOTS));
        commit_n(&mut shm, n);
        forge_slot(&mut shm, slot, seq, len);
        restore_and_commit(&mut shm, true)?;
    }
}

//! Slot checkpoints: commit and restore, corrupted, torn and truncated
//! slots, zeroed headers, the poison fallback. Every corruption must end in
//! a fallback to a checkpoint that verifies, or in `NoCheckpoint` with the
//! live state zeroed: never in garbage.

use forkroot::checkpoint::{self, CheckpointError, Checkpoints, Restored, SlotState};
use forkroot::region::Plain;
use forkroot::state::{self, StateError, Status, HEADER_SIZE};
use std::mem::size_of;

mod common;
use common::{Shm, Xorshift64Star as Rng};

/// State whose payload is derived from its counter, so any mix of two
/// states is detectable.
#[repr(C)]
struct S {
    counter: u64,
    payload: [u64; 64],
}
// SAFETY: repr(C), integers only.
unsafe impl Plain for S {}

fn word(counter: u64, i: usize) -> u64 {
    counter.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i as u64).rotate_left(17)
}

fn set(s: &mut S, counter: u64) {
    s.counter = counter;
    for (i, w) in s.payload.iter_mut().enumerate() {
        *w = word(counter, i);
    }
}

fn consistent(s: &S) -> bool {
    s.payload
        .iter()
        .enumerate()
        .all(|(i, &w)| w == word(s.counter, i))
}

fn is_zero(s: &S) -> bool {
    s.counter == 0 && s.payload.iter().all(|&w| w == 0)
}

const SLOT_HEADER: usize = 64;

/// Offset of slot `i`'s header in an area of `Checkpoints<S>` (the layout
/// documented in `forkroot::checkpoint`).
fn slot_offset(i: usize) -> usize {
    let live = 128;
    let first = (live + size_of::<S>()).div_ceil(64) * 64;
    let stride = 64 + size_of::<S>().div_ceil(64) * 64;
    first + i * stride
}

/// Commits counters 1..=n (seq == counter).
fn commit_n(area: &mut [u8], slots: u32, n: u64) {
    let mut c = Checkpoints::<S>::attach_with(area, 1, slots).unwrap();
    for k in 1..=n {
        set(&mut c, k);
        let done = c.commit();
        assert_eq!(done.seq, k);
    }
}

#[test]
fn commit_then_restore_round_trips() {
    let mut shm = Shm::new(64 * 1024);
    {
        let mut c = Checkpoints::<S>::attach(shm.area(), 1).unwrap();
        assert_eq!(c.status(), Status::Fresh);
        assert_eq!(c.last_seq(), None);
        assert_eq!(c.restore(), Err(CheckpointError::NoCheckpoint));
        for k in 1..=7 {
            set(&mut c, k);
            assert_eq!(c.commit().seq, k);
        }
        assert_eq!(c.last_seq(), Some(7));
        assert_eq!(c.commit_count(), 7);
        set(&mut c, 100); // uncommitted change, lost at the "crash"
    }
    let mut c = Checkpoints::<S>::attach(shm.area(), 1).unwrap();
    assert_eq!(c.status(), Status::Matched);
    assert_eq!(c.counter, 100, "attach leaves the live copy alone");
    let r = c.restore().unwrap();
    assert_eq!(r.seq, 7);
    assert_eq!(c.counter, 7);
    assert!(consistent(&c));
    assert_eq!(c.restored_seq(), Some(7));
    let states = c.scan();
    let mut seqs: Vec<u64> = states
        .as_slice()
        .iter()
        .map(|s| match s {
            SlotState::Valid { seq } => *seq,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    seqs.sort();
    assert_eq!(seqs, vec![5, 6, 7]);
    // Numbering continues after a restore.
    set(&mut c, 8);
    assert_eq!(c.commit().seq, 8);
}

#[test]
fn random_bit_flips_in_slots_fall_back_or_report_none() {
    let seed = 0x00c0_ffee_u64;
    let mut rng = Rng::new(seed);
    let mut shm = Shm::new(64 * 1024);
    let size = size_of::<S>();
    for case in 0..3000 {
        let slots = 2 + rng.below(3) as u32; // 2..=4
        state::zero(shm.area()).unwrap();
        let n = 1 + rng.below(6) as u64;
        commit_n(shm.area(), slots, n);
        // Which seq sits in which slot, read before damage.
        let seq_of: Vec<u64> = (0..slots as usize)
            .map(|i| {
                let o = slot_offset(i);
                u64::from_le_bytes(shm.area()[o..o + 8].try_into().unwrap())
            })
            .collect();
        // Damage 1..=3 bits in each of a random set of slots (CRC-32 catches
        // every error of up to 3 bits at these lengths), anywhere in the slot
        // header or payload.
        let mut damaged = vec![false; slots as usize];
        for (i, d) in damaged.iter_mut().enumerate() {
            if rng.below(2) == 0 {
                continue;
            }
            let flips = 1 + rng.below(3);
            let mut bits: Vec<usize> = Vec::new();
            while bits.len() < flips {
                let b = rng.below((SLOT_HEADER + size) * 8);
                if !bits.contains(&b) {
                    bits.push(b);
                }
            }
            for &b in &bits {
                shm.area()[slot_offset(i) + b / 8] ^= 1 << (b % 8);
                let byte = b / 8;
                // seq, len, crc, poison, or the payload: the slot must not be
                // restored. The reserved tail of the header is not covered.
                if !(24..SLOT_HEADER).contains(&byte) {
                    *d = true;
                }
            }
        }
        let expected = (0..slots as usize)
            .filter(|&i| !damaged[i] && seq_of[i] != 0)
            .map(|i| seq_of[i])
            .max();
        let mut c = Checkpoints::<S>::attach_with(shm.area(), 1, slots).unwrap();
        set(&mut c, 0xdead); // garbage in the live copy before restore
        match (c.restore(), expected) {
            (Ok(Restored { seq, .. }), Some(e)) => {
                assert_eq!(seq, e, "case {case} (seed {seed:#x})");
                assert_eq!(c.counter, seq, "case {case}");
                assert!(consistent(&c), "case {case}: restored garbage");
            }
            (Err(CheckpointError::NoCheckpoint), None) => {
                assert!(
                    is_zero(&c),
                    "case {case}: NoCheckpoint must zero the live state"
                );
            }
            (got, want) => panic!("case {case} (seed {seed:#x}): got {got:?}, wanted {want:?}"),
        }
    }
}

#[test]
fn random_bit_flips_anywhere_never_give_garbage() {
    let seed = 0x5eed_u64;
    let mut rng = Rng::new(seed);
    let mut shm = Shm::new(64 * 1024);
    let total = Checkpoints::<S>::required_size(3);
    let (mut fell_back, mut refused, mut none) = (0, 0, 0);
    for case in 0..3000 {
        state::zero(shm.area()).unwrap();
        commit_n(shm.area(), 3, 1 + rng.below(5) as u64);
        for _ in 0..1 + rng.below(8) {
            let b = rng.below(total * 8);
            shm.area()[b / 8] ^= 1 << (b % 8);
        }
        match Checkpoints::<S>::attach(shm.area(), 1) {
            Err(
                StateError::BadMagic { .. }
                | StateError::CorruptHeader { .. }
                | StateError::LayoutChanged { .. },
            ) => refused += 1,
            Err(e) => panic!("case {case}: unexpected {e:?}"),
            Ok(mut c) => match c.restore() {
                Ok(r) => {
                    assert_eq!(c.counter, r.seq, "case {case} (seed {seed:#x})");
                    assert!(consistent(&c), "case {case} (seed {seed:#x}): garbage");
                    fell_back += 1;
                }
                Err(CheckpointError::NoCheckpoint) => {
                    assert!(is_zero(&c), "case {case}");
                    none += 1;
                }
                Err(e) => panic!("case {case}: unexpected {e:?}"),
            },
        }
    }
    assert!(fell_back > 0 && refused > 0, "{fell_back} {refused} {none}");
}

#[test]
fn zeroed_state_header_means_no_checkpoint() {
    let mut shm = Shm::new(64 * 1024);
    commit_n(shm.area(), 3, 4);
    shm.area()[..HEADER_SIZE].fill(0);
    let mut c = Checkpoints::<S>::attach(shm.area(), 1).unwrap();
    assert_eq!(c.status(), Status::Fresh);
    assert_eq!(c.restore(), Err(CheckpointError::NoCheckpoint));
    assert!(is_zero(&c));
}

#[test]
fn zeroed_slot_header_falls_back_to_the_previous_checkpoint() {
    let mut shm = Shm::new(64 * 1024);
    commit_n(shm.area(), 2, 5); // slots hold 4 and 5
    let newest = (0..2)
        .find(|&i| shm.area()[slot_offset(i)] == 5)
        .expect("a slot with seq 5");
    let o = slot_offset(newest);
    shm.area()[o..o + SLOT_HEADER].fill(0);
    let mut c = Checkpoints::<S>::attach_with(shm.area(), 1, 2).unwrap();
    assert_eq!(c.restore().unwrap().seq, 4);
    assert_eq!(c.counter, 4);
    assert!(consistent(&c));
    // Zero the other one too: nothing left.
    let o = slot_offset(1 - newest);
    shm.area()[o..o + SLOT_HEADER].fill(0);
    let mut c = Checkpoints::<S>::attach_with(shm.area(), 1, 2).unwrap();
    assert_eq!(c.restore(), Err(CheckpointError::NoCheckpoint));
    assert!(is_zero(&c));
}

#[test]
fn truncated_areas_are_refused() {
    let mut shm = Shm::new(64 * 1024);
    commit_n(shm.area(), 3, 3);
    let need = Checkpoints::<S>::required_size(3);
    let mut rng = Rng::new(7);
    for _ in 0..200 {
        let len = rng.below(need);
        match Checkpoints::<S>::attach(&mut shm.area()[..len], 1) {
            Err(StateError::TooSmall { need: n, have }) => assert_eq!((n, have), (need, len)),
            other => panic!("len {len}: expected TooSmall, got {other:?}"),
        }
    }
    // The refused attaches changed nothing.
    let mut c = Checkpoints::<S>::attach(&mut shm.area()[..need], 1).unwrap();
    assert_eq!(c.restore().unwrap().seq, 3);
}

/// A commit torn after any prefix of its stores, in the order the protocol
/// issues them (seq = 0; poison = 0; payload bytes in any order; len; crc;
/// seq = new), restores the previous checkpoint or the new one.
#[test]
fn torn_commits_restore_old_or_new() {
    let mut rng = Rng::new(0x7042);
    let mut shm = Shm::new(64 * 1024);
    let total = Checkpoints::<S>::required_size(2);
    for case in 0..2000 {
        state::zero(shm.area()).unwrap();
        let n = 1 + rng.below(4) as u64;
        commit_n(shm.area(), 2, n);
        let before: Vec<u8> = shm.area()[..total].to_vec();
        {
            let mut c = Checkpoints::<S>::attach_with(shm.area(), 1, 2).unwrap();
            c.restore().unwrap();
            set(&mut c, n + 1);
            c.commit();
        }
        let after: Vec<u8> = shm.area()[..total].to_vec();
        // Build the torn image: start from `before` with the live copy of
        // `after` (the daemon changed it before committing).
        let target = (0..2)
            .find(|&i| after[slot_offset(i)] == (n + 1) as u8)
            .unwrap();
        let o = slot_offset(target);
        let mut torn = before.clone();
        torn[128..128 + size_of::<S>()].copy_from_slice(&after[128..128 + size_of::<S>()]);
        let steps = 6;
        let cut = rng.below(steps + 1);
        if cut >= 1 {
            torn[o..o + 8].fill(0); // seq = 0
        }
        if cut >= 2 {
            torn[o + 20..o + 24].copy_from_slice(&after[o + 20..o + 24]); // poison
        }
        if cut >= 3 {
            // Some payload bytes, in any order.
            for _ in 0..rng.below(size_of::<S>() + 1) {
                let b = o + SLOT_HEADER + rng.below(size_of::<S>());
                torn[b] = after[b];
            }
        }
        if cut >= 4 {
            torn[o + SLOT_HEADER..o + SLOT_HEADER + size_of::<S>()]
                .copy_from_slice(&after[o + SLOT_HEADER..o + SLOT_HEADER + size_of::<S>()]);
            torn[o + 8..o + 16].copy_from_slice(&after[o + 8..o + 16]); // len
        }
        if cut >= 5 {
            torn[o + 16..o + 20].copy_from_slice(&after[o + 16..o + 20]); // crc
        }
        if cut >= 6 {
            torn[o..o + 8].copy_from_slice(&after[o..o + 8]); // seq = new
        }
        shm.area()[..total].copy_from_slice(&torn);
        let mut c = Checkpoints::<S>::attach_with(shm.area(), 1, 2).unwrap();
        let r = c.restore().unwrap();
        let want = if cut == steps { n + 1 } else { n };
        assert_eq!(r.seq, want, "case {case}, cut after step {cut}");
        assert_eq!(c.counter, want);
        assert!(consistent(&c));
    }
}

#[test]
fn poison_fallback_goes_back_then_fresh() {
    let mut shm = Shm::new(64 * 1024);
    commit_n(shm.area(), 3, 5); // slots: 3, 4, 5
    {
        let mut c = Checkpoints::<S>::attach(shm.area(), 1).unwrap();
        assert_eq!(c.restore().unwrap().seq, 5);
        // The daemon died soon after resuming from 5.
        let r = c.restore_before(5).unwrap();
        assert_eq!((r.seq, c.counter), (4, 4));
        assert!(consistent(&c));
    }
    {
        // A later restart (new attachment) does not resume from 5 again.
        let mut c = Checkpoints::<S>::attach(shm.area(), 1).unwrap();
        assert!(c
            .scan()
            .as_slice()
            .contains(&SlotState::Poisoned { seq: 5 }));
        assert_eq!(c.restore().unwrap().seq, 4);
        // It commits once (into the poisoned slot, keeping 3 and 4), then
        // dies quickly again after resuming from 4.
        set(&mut c, 6);
        assert_eq!(c.commit().seq, 6, "numbering stays above poisoned seqs");
        assert!(c.scan().as_slice().contains(&SlotState::Valid { seq: 3 }));
        let r = c.restore_before(4).unwrap();
        assert_eq!((r.seq, c.counter), (3, 3));
        assert!(consistent(&c));
        assert_eq!(c.last_seq(), Some(3));
        // And once more: nothing older, the daemon starts fresh.
        assert_eq!(c.restore_before(3), Err(CheckpointError::NoCheckpoint));
        assert!(is_zero(&c));
        assert_eq!(c.restore(), Err(CheckpointError::NoCheckpoint));
        // Fresh work commits above everything seen.
        set(&mut c, 1);
        assert_eq!(c.commit().seq, 7);
        assert_eq!(c.restore().unwrap().seq, 7);
    }
}

#[test]
fn the_checkpoint_before_a_resumed_one_survives_commits_inside_the_poison_window() {
    let mut shm = Shm::new(64 * 1024);
    commit_n(shm.area(), 3, 5); // slots: 3, 4, 5
    {
        // A restart resumes from 5 and commits many times at once (a counter
        // commits every number): 4 must stay until the window is over.
        let mut c = Checkpoints::<S>::attach(shm.area(), 1).unwrap();
        assert_eq!(c.restore().unwrap().seq, 5);
        for n in 6..50 {
            set(&mut c, n);
            c.commit();
        }
        assert!(c.scan().as_slice().contains(&SlotState::Valid { seq: 4 }));
    }
    {
        // It crashed soon after resuming from 5: the next start falls back
        // to 4, not to fresh (5 and everything after it are poison).
        let mut c = Checkpoints::<S>::attach(shm.area(), 1).unwrap();
        let r = c.restore_before(5).unwrap();
        assert_eq!((r.seq, c.counter), (4, 4));
        assert!(consistent(&c));
    }
}

#[test]
fn two_slots_fall_back_to_the_other() {
    let mut shm = Shm::new(64 * 1024);
    commit_n(shm.area(), 2, 9);
    let mut c = Checkpoints::<S>::attach_with(shm.area(), 1, 2).unwrap();
    assert_eq!(c.restore_before(9).unwrap().seq, 8);
    assert_eq!(c.restore_before(8), Err(CheckpointError::NoCheckpoint));
}

#[test]
fn commit_never_overwrites_the_newest_checkpoint() {
    let mut shm = Shm::new(64 * 1024);
    let mut c = Checkpoints::<S>::attach_with(shm.area(), 1, 2).unwrap();
    let mut last_slot = None;
    for k in 1..=20 {
        set(&mut c, k);
        let done = c.commit();
        assert_ne!(
            Some(done.slot),
            last_slot,
            "commit {k} overwrote the newest slot"
        );
        last_slot = Some(done.slot);
    }
}

#[test]
fn layout_change_is_reported() {
    let mut shm = Shm::new(64 * 1024);
    commit_n(shm.area(), 3, 2);
    match Checkpoints::<S>::attach(shm.area(), 2) {
        Err(StateError::LayoutChanged {
            found_version,
            expected_version,
            ..
        }) => assert_eq!((found_version, expected_version), (1, 2)),
        other => panic!("expected LayoutChanged, got {other:?}"),
    }
    match Checkpoints::<[u64; 3]>::attach(shm.area(), 1) {
        Err(StateError::LayoutChanged {
            found, expected, ..
        }) => {
            assert_eq!(found.type_size, size_of::<S>() as u64);
            assert_eq!(expected.type_size, 24);
        }
        other => panic!("expected LayoutChanged, got {other:?}"),
    }
}

#[test]
fn inspect_reads_a_read_only_area_without_its_type() {
    let mut shm = Shm::new(64 * 1024);
    assert_eq!(checkpoint::inspect(shm.area()), Ok(None));
    commit_n(shm.area(), 3, 5);
    {
        let mut c = Checkpoints::<S>::attach(shm.area(), 1).unwrap();
        c.restore_before(5).unwrap();
    }
    // As a sibling or the root sees it: mapped read-only.
    // SAFETY: changes the protection of our own mapping; no reference into
    // it is alive, and it is only read until made writable again.
    let rc = unsafe { libc::mprotect(shm.ptr.cast(), shm.len, libc::PROT_READ) };
    assert_eq!(rc, 0);
    // SAFETY: the mapping is readable and `len` bytes long.
    let ro = unsafe { std::slice::from_raw_parts(shm.ptr, shm.len) };
    let i = checkpoint::inspect(ro).unwrap().unwrap();
    assert_eq!(i.layout.type_size, size_of::<S>() as u64);
    assert_eq!(i.newest, Some(4));
    assert_eq!(i.restored_seq, 4);
    assert_eq!(i.commit_count, 5);
    let mut seen: Vec<SlotState> = i.slots.as_slice().to_vec();
    seen.sort_by_key(|s| format!("{s:?}"));
    assert_eq!(
        seen,
        vec![
            SlotState::Poisoned { seq: 5 },
            SlotState::Valid { seq: 3 },
            SlotState::Valid { seq: 4 }
        ]
    );
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: as above, back to writable.
    let rc = unsafe { libc::mprotect(shm.ptr.cast(), shm.len, rw) };
    assert_eq!(rc, 0);
    // A plain state area is not a checkpoint area.
    state::zero(shm.area()).unwrap();
    state::attach::<S>(shm.area(), 1).unwrap();
    assert!(matches!(
        checkpoint::inspect(shm.area()),
        Err(StateError::LayoutChanged { .. })
    ));
}

/// Attach reads slot headers only; the crc of the newest slot is checked
/// when a restore picks it or a commit keeps it. A damaged payload under an
/// intact header is passed over by both: restore falls back, and a commit
/// overwrites the damaged slot, never the last checkpoint that verifies.
#[test]
fn a_damaged_newest_payload_is_found_when_restore_or_commit_needs_it() {
    let mut shm = Shm::new(64 * 1024);
    commit_n(shm.area(), 2, 5); // slots hold 4 and 5
    let newest = (0..2)
        .find(|&i| shm.area()[slot_offset(i)] == 5)
        .expect("a slot with seq 5");
    let payload = slot_offset(newest) + SLOT_HEADER + 8;
    shm.area()[payload] ^= 0x40;
    // Restore: the newest fails its crc, the one before it is resumed.
    let mut c = Checkpoints::<S>::attach_with(shm.area(), 1, 2).unwrap();
    assert_eq!(c.restore().unwrap().seq, 4);
    assert_eq!(c.counter, 4);
    assert!(consistent(&c));
    // Commit without a restore first: it must keep 4 (the one that
    // verifies) and write over the damaged 5.
    let mut c = Checkpoints::<S>::attach_with(shm.area(), 1, 2).unwrap();
    set(&mut c, 6);
    let done = c.commit();
    assert_eq!(done.slot, newest, "the damaged slot is the one written");
    let states = c.scan();
    assert!(states.as_slice().contains(&SlotState::Valid { seq: 4 }));
    assert!(states
        .as_slice()
        .contains(&SlotState::Valid { seq: done.seq }));
    let mut c = Checkpoints::<S>::attach_with(shm.area(), 1, 2).unwrap();
    assert_eq!(c.restore().unwrap().seq, done.seq);
    assert_eq!(c.counter, 6);
}

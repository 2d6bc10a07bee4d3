//! In-place commits through the undo journal: commit, rollback on drop,
//! rollback after a simulated crash (the transaction forgotten mid-way),
//! ranges declared twice, corrupted journals, full journals.

use forkroot::checkpoint::{CheckpointError, InPlace};
use forkroot::region::Plain;
use forkroot::state::{self, Status};
use std::mem::{offset_of, size_of};

mod common;
use common::Shm;

const ACCOUNTS: usize = 1024;
const TOTAL: u64 = 1_000_000;

#[repr(C)]
struct Bank {
    transfers: u64,
    accounts: [u64; ACCOUNTS],
}
// SAFETY: repr(C), integers only.
unsafe impl Plain for Bank {}

const JOURNAL: usize = 4096;
/// Offset of the journal in the area (documented layout).
const JOURNAL_AT: usize = 128;

fn open(shm: &mut Shm) -> InPlace<'_, Bank> {
    let mut b = InPlace::<Bank>::attach(shm.area(), 1, JOURNAL).unwrap();
    if b.recovery().status == Status::Fresh {
        let mut tx = b.begin();
        *tx.field(|s| &mut s.accounts[0]).unwrap() = TOTAL;
        tx.commit();
    }
    b
}

fn sum(b: &Bank) -> u64 {
    b.accounts.iter().sum()
}

/// Moves `amount` from `from` to `to` inside a transaction left open.
fn transfer(b: &mut InPlace<'_, Bank>, from: usize, to: usize, amount: u64, commit: bool) {
    let mut tx = b.begin();
    *tx.field(|s| &mut s.accounts[from]).unwrap() -= amount;
    *tx.field(|s| &mut s.accounts[to]).unwrap() += amount;
    *tx.field(|s| &mut s.transfers).unwrap() += 1;
    if commit {
        tx.commit();
    } else {
        // The process "dies" here: no rollback runs, no commit lands.
        std::mem::forget(tx);
    }
}

#[test]
fn committed_transactions_survive_reattach() {
    let mut shm = Shm::new(InPlace::<Bank>::required_size(JOURNAL));
    {
        let mut b = open(&mut shm);
        assert_eq!(b.committed_seq(), 1);
        for k in 1..=10 {
            transfer(&mut b, 0, k, 10, true);
        }
        assert_eq!(b.committed_seq(), 11);
        assert_eq!(b.commit_count(), 11);
    }
    let b = InPlace::<Bank>::attach(shm.area(), 1, JOURNAL).unwrap();
    let r = b.recovery();
    assert_eq!(
        (r.status, r.rolled_back, r.committed_seq),
        (Status::Matched, 0, 11)
    );
    assert_eq!(b.transfers, 10);
    assert_eq!(b.accounts[0], TOTAL - 100);
    assert_eq!(sum(&b), TOTAL);
}

#[test]
fn dropped_transaction_rolls_back() {
    let mut shm = Shm::new(InPlace::<Bank>::required_size(JOURNAL));
    let mut b = open(&mut shm);
    {
        let mut tx = b.begin();
        *tx.field(|s| &mut s.accounts[0]).unwrap() = 5;
        *tx.field(|s| &mut s.accounts[7]).unwrap() = 6;
        assert_eq!(tx.state().accounts[7], 6);
    }
    assert_eq!(b.accounts[0], TOTAL);
    assert_eq!(b.accounts[7], 0);
    assert_eq!(b.committed_seq(), 1);
    assert_eq!(b.rollback_count(), 1);
    let tx = b.begin();
    tx.rollback();
    assert_eq!(sum(&b), TOTAL);
}

#[test]
fn crash_mid_transaction_is_rolled_back_on_attach() {
    let mut shm = Shm::new(InPlace::<Bank>::required_size(JOURNAL));
    {
        let mut b = open(&mut shm);
        transfer(&mut b, 0, 1, 300, true);
        transfer(&mut b, 0, 2, 999, false); // dies mid-way
        assert_eq!(sum(&b), TOTAL);
        assert_eq!(b.accounts[2], 999, "the uncommitted change is in place");
    }
    let b = InPlace::<Bank>::attach(shm.area(), 1, JOURNAL).unwrap();
    assert_eq!(b.recovery().rolled_back, 3);
    assert_eq!(b.recovery().committed_seq, 2);
    assert_eq!(b.accounts[2], 0);
    assert_eq!(b.accounts[1], 300);
    assert_eq!(b.transfers, 1);
    assert_eq!(sum(&b), TOTAL);
    // Rolling back is idempotent: attaching again finds nothing to undo.
    let b = InPlace::<Bank>::attach(shm.area(), 1, JOURNAL).unwrap();
    assert_eq!(b.recovery().rolled_back, 0);
    assert_eq!(b.accounts[1], 300);
}

#[test]
fn crash_after_every_record_rolls_back_to_the_commit() {
    // Die after 0, 1, 2 or 3 declared ranges, before or after writing them.
    for declared in 0..=3 {
        for write in [false, true] {
            let mut shm = Shm::new(InPlace::<Bank>::required_size(JOURNAL));
            {
                let mut b = open(&mut shm);
                let mut tx = b.begin();
                let picks: [fn(&mut Bank) -> &mut u64; 3] = [
                    |s| &mut s.accounts[0],
                    |s| &mut s.accounts[9],
                    |s| &mut s.transfers,
                ];
                for pick in picks.iter().take(declared) {
                    let f = tx.field(pick).unwrap();
                    if write {
                        *f = 0xbad;
                    }
                }
                std::mem::forget(tx);
            }
            let b = InPlace::<Bank>::attach(shm.area(), 1, JOURNAL).unwrap();
            assert_eq!(b.recovery().rolled_back, declared);
            assert_eq!(b.accounts[0], TOTAL);
            assert_eq!((b.accounts[9], b.transfers), (0, 0));
        }
    }
}

#[test]
fn range_declared_twice_restores_the_oldest_bytes() {
    let mut shm = Shm::new(InPlace::<Bank>::required_size(JOURNAL));
    {
        let mut b = open(&mut shm);
        let mut tx = b.begin();
        *tx.field(|s| &mut s.accounts[3]).unwrap() = 1;
        *tx.field(|s| &mut s.accounts[3]).unwrap() = 2;
        let bytes = tx.bytes(offset_of!(Bank, accounts) + 2 * 8, 16).unwrap();
        bytes.fill(0xff);
        std::mem::forget(tx);
    }
    let b = InPlace::<Bank>::attach(shm.area(), 1, JOURNAL).unwrap();
    assert_eq!(b.recovery().rolled_back, 3);
    assert_eq!(&b.accounts[..5], &[TOTAL, 0, 0, 0, 0]);
}

#[test]
fn corrupted_open_journal_is_reported_not_applied() {
    let mut shm = Shm::new(InPlace::<Bank>::required_size(JOURNAL));
    {
        let mut b = open(&mut shm);
        transfer(&mut b, 0, 4, 50, false);
    }
    // Every single-bit flip in the three records is caught.
    let used = 3 * InPlace::<Bank>::record_size(8);
    let pristine = shm.area()[JOURNAL_AT..JOURNAL_AT + used].to_vec();
    for bit in 0..used * 8 {
        let byte = JOURNAL_AT + bit / 8;
        shm.area()[byte] ^= 1 << (bit % 8);
        match InPlace::<Bank>::attach(shm.area(), 1, JOURNAL) {
            Err(CheckpointError::JournalCorrupt { .. }) => {}
            // The 4-byte pad after each record's crc is not covered.
            Ok(b) if (bit / 8) % 48 >= 36 && (bit / 8) % 48 < 40 => {
                assert_eq!(b.recovery().rolled_back, 3);
                // Put the open transaction back for the next bit.
                shm.area()[JOURNAL_AT..JOURNAL_AT + used].copy_from_slice(&pristine);
                let mut b = InPlace::<Bank>::attach(shm.area(), 1, JOURNAL).unwrap();
                transfer(&mut b, 0, 4, 50, false);
                continue;
            }
            other => panic!(
                "bit {bit}: expected JournalCorrupt, got {:?}",
                other.map(|b| b.recovery())
            ),
        }
        shm.area()[byte] ^= 1 << (bit % 8);
    }
    // Undamaged, it rolls back.
    let b = InPlace::<Bank>::attach(shm.area(), 1, JOURNAL).unwrap();
    assert_eq!(b.recovery().rolled_back, 3);
    assert_eq!(sum(&b), TOTAL);
}

#[test]
fn journal_of_a_committed_transaction_is_ignored() {
    let mut shm = Shm::new(InPlace::<Bank>::required_size(JOURNAL));
    {
        let mut b = open(&mut shm);
        transfer(&mut b, 0, 4, 50, true);
    }
    // Garbage in the dead journal does not matter.
    shm.area()[JOURNAL_AT..JOURNAL_AT + 64].fill(0x77);
    let b = InPlace::<Bank>::attach(shm.area(), 1, JOURNAL).unwrap();
    assert_eq!(b.recovery().rolled_back, 0);
    assert_eq!(b.accounts[4], 50);
}

#[test]
fn full_journal_and_bad_ranges_are_errors() {
    let mut shm = Shm::new(InPlace::<Bank>::required_size(JOURNAL));
    let mut b = open(&mut shm);
    let mut tx = b.begin();
    let size = size_of::<Bank>();
    assert_eq!(
        tx.bytes(size - 4, 8).unwrap_err(),
        CheckpointError::OutOfBounds {
            offset: size - 4,
            len: 8,
            size
        }
    );
    let rec = InPlace::<Bank>::record_size(1000);
    let fit = JOURNAL / rec;
    for k in 0..fit {
        tx.bytes(8 + k * 8, 1000).unwrap().fill(1);
    }
    match tx.bytes(8, 1000) {
        Err(CheckpointError::JournalFull { need, free }) => {
            assert_eq!(need, rec);
            assert_eq!(free, JOURNAL - fit * rec);
        }
        other => panic!("expected JournalFull, got {other:?}"),
    }
    drop(tx);
    assert_eq!(sum(&b), TOTAL, "rolled back");
}

#[test]
fn fresh_restart_after_zero() {
    let mut shm = Shm::new(InPlace::<Bank>::required_size(JOURNAL));
    {
        let mut b = open(&mut shm);
        transfer(&mut b, 0, 4, 50, true);
    }
    state::zero(shm.area()).unwrap();
    let b = InPlace::<Bank>::attach(shm.area(), 1, JOURNAL).unwrap();
    assert_eq!(b.recovery().status, Status::Fresh);
    assert_eq!((b.committed_seq(), sum(&b)), (0, 0));
}

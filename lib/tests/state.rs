//! Typed state behind a versioned header: fresh, matched, changed layouts,
//! corrupted and truncated headers, zeroing.

use forkroot::checkpoint::Checkpoints;
use forkroot::region::Plain;
use forkroot::state::{self, Kind, StateError, Status, HEADER_SIZE, STATE_MAGIC};

mod common;
use common::Shm;

#[repr(C)]
#[derive(Debug)]
struct V1 {
    count: u64,
    name: [u8; 16],
}
// SAFETY: repr(C), integers only.
unsafe impl Plain for V1 {}

#[repr(C)]
#[derive(Debug)]
struct V2 {
    count: u64,
    name: [u8; 16],
    extra: u64,
}
// SAFETY: repr(C), integers only.
unsafe impl Plain for V2 {}

#[test]
fn fresh_then_matched_keeps_the_state() {
    let mut shm = Shm::new(8192);
    {
        let mut s = state::attach::<V1>(shm.area(), 1).unwrap();
        assert_eq!(s.status(), Status::Fresh);
        assert!(s.is_fresh());
        assert_eq!(s.count, 0);
        assert_eq!(s.name, [0; 16]);
        s.count = 41;
        s.name[0] = b'x';
    }
    let s = state::attach::<V1>(shm.area(), 1).unwrap();
    assert_eq!(s.status(), Status::Matched);
    assert_eq!(s.count, 41);
    assert_eq!(s.name[0], b'x');
    let layout = state::read_layout(shm.area()).unwrap().unwrap();
    assert_eq!(layout.version, 1);
    assert_eq!(layout.kind, Kind::Plain as u32);
    assert_eq!(layout.type_size, std::mem::size_of::<V1>() as u64);
}

#[test]
fn version_bump_is_reported_not_read() {
    let mut shm = Shm::new(8192);
    state::attach::<V1>(shm.area(), 1).unwrap().count = 7;
    match state::attach::<V1>(shm.area(), 2) {
        Err(StateError::LayoutChanged {
            found_version,
            expected_version,
            found,
            expected,
        }) => {
            assert_eq!((found_version, expected_version), (1, 2));
            assert_eq!(found.type_size, expected.type_size);
        }
        other => panic!("expected LayoutChanged, got {other:?}"),
    }
    // The state is untouched: the old layout still reads it.
    assert_eq!(state::attach::<V1>(shm.area(), 1).unwrap().count, 7);
}

#[test]
fn size_change_without_version_bump_is_caught() {
    let mut shm = Shm::new(8192);
    state::attach::<V1>(shm.area(), 1).unwrap();
    match state::attach::<V2>(shm.area(), 1) {
        Err(StateError::LayoutChanged {
            found, expected, ..
        }) => {
            assert_eq!(found.version, expected.version);
            assert_eq!(found.type_size, 24);
            assert_eq!(expected.type_size, 32);
        }
        other => panic!("expected LayoutChanged, got {other:?}"),
    }
}

#[test]
fn another_scheme_is_a_layout_change() {
    let mut shm = Shm::new(64 * 1024);
    Checkpoints::<V1>::attach(shm.area(), 1).unwrap();
    let err = state::attach::<V1>(shm.area(), 1).unwrap_err();
    match err {
        StateError::LayoutChanged {
            found, expected, ..
        } => {
            assert_eq!(found.kind, Kind::Slots as u32);
            assert_eq!(expected.kind, Kind::Plain as u32);
        }
        other => panic!("expected LayoutChanged, got {other:?}"),
    }
    // And the other way round, with another slot count.
    let err = Checkpoints::<V1>::attach_with(shm.area(), 1, 2).unwrap_err();
    assert!(matches!(err, StateError::LayoutChanged { .. }), "{err:?}");
}

#[test]
fn too_small_and_misaligned_areas_are_refused() {
    let mut shm = Shm::new(8192);
    let need = state::required_size::<V1>();
    assert_eq!(need, HEADER_SIZE + 24);
    for len in [0, 1, HEADER_SIZE - 1, HEADER_SIZE, need - 1] {
        match state::attach::<V1>(&mut shm.area()[..len], 1) {
            Err(StateError::TooSmall { need: n, have }) => {
                assert_eq!((n, have), (need, len));
            }
            other => panic!("len {len}: expected TooSmall, got {other:?}"),
        }
    }
    match state::attach::<V1>(&mut shm.area()[8..], 1) {
        Err(StateError::Misaligned { align, .. }) => assert_eq!(align, 64),
        other => panic!("expected Misaligned, got {other:?}"),
    }
    // Nothing was written by the refused attaches.
    assert_eq!(state::read_layout(shm.area()).unwrap(), None);
}

#[test]
fn zeroed_header_means_fresh_and_the_body_is_zeroed_too() {
    let mut shm = Shm::new(8192);
    state::attach::<V1>(shm.area(), 1).unwrap().count = 99;
    shm.area()[..HEADER_SIZE].fill(0);
    let s = state::attach::<V1>(shm.area(), 1).unwrap();
    assert_eq!(s.status(), Status::Fresh);
    assert_eq!(
        s.count, 0,
        "old body bytes must not leak into a fresh state"
    );
}

#[test]
fn corrupted_header_is_detected() {
    let mut shm = Shm::new(8192);
    state::attach::<V1>(shm.area(), 1).unwrap();
    let pristine: Vec<u8> = shm.area()[..HEADER_SIZE].to_vec();
    // Every single-bit flip in the fields the crc covers is caught; a flip
    // in the reserved tail is harmless.
    for bit in 0..(HEADER_SIZE * 8) {
        shm.area()[..HEADER_SIZE].copy_from_slice(&pristine);
        shm.area()[bit / 8] ^= 1 << (bit % 8);
        let r = state::attach::<V1>(shm.area(), 1).map(|a| a.status());
        let byte = bit / 8;
        if byte < 8 {
            // magic: another non-zero value, never zero after one flip
            assert!(
                matches!(r, Err(StateError::BadMagic { .. })),
                "bit {bit}: {r:?}"
            );
        } else if byte < 48 {
            assert!(
                matches!(r, Err(StateError::CorruptHeader { .. })),
                "bit {bit}: {r:?}"
            );
        } else {
            assert_eq!(r, Ok(Status::Matched), "bit {bit}");
        }
    }
    shm.area()[..8].copy_from_slice(&0xdead_beefu64.to_le_bytes());
    assert_eq!(
        state::read_layout(shm.area()),
        Err(StateError::BadMagic { found: 0xdead_beef })
    );
    shm.area()[..8].copy_from_slice(&STATE_MAGIC.to_le_bytes());
    assert!(state::read_layout(shm.area()).unwrap().is_some());
}

#[test]
fn zero_clears_shared_and_private_memory() {
    // Shared memory: its pages keep their blocks, the bytes are zeroed.
    let mut shm = Shm::new(5 * 4096);
    shm.area().fill(0xa5);
    state::zero(&mut shm.area()[100..]).unwrap();
    assert!(shm.area()[..100].iter().all(|&b| b == 0xa5));
    assert!(shm.area()[100..].iter().all(|&b| b == 0));
    // Private heap memory: written with zeroes.
    let mut heap = vec![0x5au8; 3 * 4096 + 17];
    state::zero(&mut heap).unwrap();
    assert!(heap.iter().all(|&b| b == 0));
    // A zeroed area attaches fresh.
    let mut shm = Shm::new(8192);
    state::attach::<V1>(shm.area(), 3).unwrap().count = 5;
    state::zero(shm.area()).unwrap();
    let s = state::attach::<V1>(shm.area(), 3).unwrap();
    assert_eq!((s.status(), s.count), (Status::Fresh, 0));
}

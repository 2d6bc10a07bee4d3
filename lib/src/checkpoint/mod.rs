//! Atomic checkpoints of a daemon's state, in two schemes.
//!
//! [`Checkpoints`] keeps a live copy of `T`, which the daemon mutates in
//! place, and N (2..=8, default [`DEFAULT_SLOTS`]) checkpoint slots. Each
//! slot holds a sequence number, the payload length and a crc32 over
//! (seq, len, payload). [`Checkpoints::commit`] copies the live state into
//! the oldest slot and publishes it; [`Checkpoints::restore`] picks the
//! newest slot whose crc verifies. A commit cut short at any instruction
//! (the committer SIGKILLed) leaves the previous checkpoint intact.
//! [`Checkpoints::restore_before`] implements the poison fallback: it
//! resumes from the newest valid checkpoint older than a given one and
//! marks the newer ones poisoned, so they are never resumed from again.
//!
//! [`InPlace`] is for state too large to copy on every commit: the daemon
//! declares each byte range before it modifies it; the old bytes go to an
//! undo journal (with a crc) before the live bytes change, and a commit
//! flips one sequence number. Attaching after a crash rolls an unfinished
//! transaction back. Its cost is proportional to the bytes modified, not to
//! the size of the state; its price is that only the last committed state
//! exists (no poison fallback: a poisoned in-place state restarts fresh).
//!
//! # Layouts
//!
//! Both start with the [`crate::state`] header (64 bytes), whose `kind` and
//! `param` (slot count, journal capacity) are part of the layout, so an area
//! stamped for one scheme or slot count is [`StateError::LayoutChanged`] for
//! another.
//!
//! ```text
//! Checkpoints<T>, N slots (A = max(64, align_of T)):
//! 0       64             128 (rounded to A)                     +N * stride
//! | State | SlotsControl | live T | pad64 | SlotHeader | payload (size_of T, pad64) | ...
//!
//! InPlace<T>, journal capacity C (rounded to 64):
//! 0       64               128               128 + C (rounded to A)
//! | State | JournalControl | journal records | live T |
//! journal record: RecordHeader (40 B) | old bytes | pad to 8
//! ```
//!
//! # Crash model
//!
//! A SIGKILLed process stops between two instructions. Every store it
//! executed before that point reaches the memory the region shares (store
//! buffers drain; they are never discarded), none after it does, and the
//! root observes the death through `waitpid`, which synchronizes with it.
//! So a reader after a crash sees a prefix, in program order of the compiled
//! code, of the committer's stores. The fences and Release stores below make
//! the compiled order the protocol's order (and give the same order to a
//! reader in another process while the committer runs).
//!
//! The slots live in `slots.rs`, the journal in `journal.rs`; this file
//! holds what they share: the error type and the area's fixed offsets.

use crate::state::{StateError, HEADER_SIZE};
use std::fmt;

mod journal;
mod slots;

pub use journal::{InPlace, JournalControl, Recovery, Tx};
pub use slots::{
    inspect, Checkpoints, Committed, Inspection, Restored, SlotHeader, SlotState, SlotStates,
    SlotsControl,
};

/// Slots a [`Checkpoints`] area has unless told otherwise: the newest
/// checkpoint, the one before it (the poison fallback) and one more, so the
/// fallback survives one commit made after resuming from a poisoned one.
pub const DEFAULT_SLOTS: u32 = 3;

/// A daemon that crashes within this time of resuming from a checkpoint
/// makes that checkpoint poison (the root judges it; see DESIGN.md). Until
/// then, the checkpoint before the one it resumed from is not overwritten,
/// so the fallback has somewhere to go.
pub const POISON_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);
/// Fewest slots: one to keep while the other is written.
pub const MIN_SLOTS: u32 = 2;
/// Most slots.
pub const MAX_SLOTS: u32 = 8;

/// Offset of the control block after the state header.
const CONTROL_OFFSET: usize = HEADER_SIZE;
/// Size of the control blocks and of a slot header.
const LINE: usize = 64;

/// Why a checkpoint operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointError {
    /// No slot holds a valid, unpoisoned checkpoint (of the seq asked for):
    /// the live state was zeroed, the daemon starts fresh.
    NoCheckpoint,
    /// The area could not be attached.
    State(StateError),
    /// The undo journal has no room for the range: commit smaller
    /// transactions or attach with a larger journal.
    JournalFull {
        /// Bytes the record needs.
        need: usize,
        /// Bytes left in the journal.
        free: usize,
    },
    /// A journal record of an unfinished transaction does not verify, so it
    /// cannot be rolled back: the state is not known to be consistent and
    /// must be zeroed ([`crate::state::zero`]).
    JournalCorrupt {
        /// Offset of the bad record (or of the control block: `usize::MAX`)
        /// in the journal.
        at: usize,
    },
    /// A declared range lies outside the state.
    OutOfBounds {
        /// Start of the range.
        offset: usize,
        /// Length of the range.
        len: usize,
        /// `size_of::<T>()`.
        size: usize,
    },
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckpointError::NoCheckpoint => write!(f, "no valid checkpoint"),
            CheckpointError::State(e) => e.fmt(f),
            CheckpointError::JournalFull { need, free } => write!(
                f,
                "undo journal full: record needs {need} bytes, {free} free"
            ),
            CheckpointError::JournalCorrupt { at } => {
                write!(f, "undo journal corrupted at offset {at}")
            }
            CheckpointError::OutOfBounds { offset, len, size } => write!(
                f,
                "range {offset}..{} outside the state ({size} bytes)",
                offset + len
            ),
        }
    }
}

impl std::error::Error for CheckpointError {}

impl From<StateError> for CheckpointError {
    fn from(e: StateError) -> Self {
        CheckpointError::State(e)
    }
}

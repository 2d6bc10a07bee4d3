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

use crate::region::Plain;
use crate::state::{self, round_up, Kind, Layout, StateError, Status, HEADER_SIZE};
use std::fmt;
use std::marker::PhantomData;
use std::mem::{align_of, size_of};
use std::ops::{Deref, DerefMut};
use std::ptr::{self, NonNull};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

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
/// Value a slot's `poison` field gets from `restore_before` (any non-zero
/// value poisons; this one survives any single bit flip as non-zero).
const POISON: u32 = 0x504f_4953;

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

// ---------------------------------------------------------------------------
// Slots
// ---------------------------------------------------------------------------

/// Control block of a [`Checkpoints`] area (64 bytes at offset 64).
///
/// Informational only: restore trusts nothing here, only the slots.
#[repr(C)]
#[derive(Debug)]
pub struct SlotsControl {
    /// Commits completed since the area was stamped (written after publish).
    commit_count: AtomicU64,
    /// Seq of the last completed commit (written after publish).
    last_seq: AtomicU64,
    /// Seq of the checkpoint the live copy was last restored from; 0 if the
    /// last restore found none.
    restored_seq: AtomicU64,
    /// Zero.
    _reserved: [u64; 5],
}

// SAFETY: repr(C), atomic integers and integers only; any bits are valid.
unsafe impl Plain for SlotsControl {}

/// Header of one checkpoint slot (64 bytes, followed by the payload).
///
/// A slot is **valid** iff `seq != 0`, `len == size_of::<T>()` and `crc ==
/// crc32(seq, len, payload)`; it may be restored iff also `poison == 0`.
#[repr(C)]
#[derive(Debug)]
pub struct SlotHeader {
    /// 0: empty, or being written. Otherwise the sequence number of the
    /// payload; stored last (Release) by a commit, and set to 0 first.
    seq: AtomicU64,
    /// Payload length in bytes; `size_of::<T>()` in a valid slot.
    len: AtomicU64,
    /// crc32 over `seq` (LE), `len` (LE) and the payload.
    crc: AtomicU32,
    /// Non-zero: poisoned by [`Checkpoints::restore_before`]; still counts
    /// for sequence numbering, never restored. Cleared only after `seq` = 0.
    poison: AtomicU32,
    /// Zero.
    _reserved: [u64; 5],
}

// SAFETY: repr(C), atomic integers and integers only; any bits are valid.
unsafe impl Plain for SlotHeader {}

const _: () = assert!(size_of::<SlotsControl>() == LINE && size_of::<SlotHeader>() == LINE);

/// What a slot holds, as found by a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlotState {
    /// `seq == 0`: never written, or a commit into it was cut short.
    Empty,
    /// A checkpoint that verifies and may be restored.
    Valid {
        /// Its sequence number.
        seq: u64,
    },
    /// A checkpoint that verifies but was poisoned by `restore_before`.
    Poisoned {
        /// Its sequence number.
        seq: u64,
    },
    /// `seq != 0` but the length or the crc does not verify.
    Corrupt {
        /// The sequence number it claims (not to be trusted).
        seq: u64,
    },
}

/// Where a commit went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Committed {
    /// Slot index written.
    pub slot: usize,
    /// Sequence number published.
    pub seq: u64,
}

/// Which checkpoint a restore copied into the live state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Restored {
    /// Slot index read.
    pub slot: usize,
    /// Its sequence number.
    pub seq: u64,
}

/// The states of every slot, from [`Checkpoints::scan`] (no allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotStates {
    states: [SlotState; MAX_SLOTS as usize],
    len: usize,
}

impl SlotStates {
    /// One entry per slot, by slot index.
    pub fn as_slice(&self) -> &[SlotState] {
        &self.states[..self.len]
    }
}

/// Offsets of a [`Checkpoints`] layout.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    live: usize,
    first_slot: usize,
    stride: usize,
    total: usize,
}

impl Geometry {
    const fn new(size: usize, align: usize, slots: usize) -> Geometry {
        let a = if align > LINE { align } else { LINE };
        let live = round_up(CONTROL_OFFSET + LINE, a);
        let first_slot = round_up(live + size, LINE);
        let stride = LINE + round_up(size, LINE);
        Geometry {
            live,
            first_slot,
            stride,
            total: first_slot + slots * stride,
        }
    }

    const fn of<T>(slots: usize) -> Geometry {
        Geometry::new(size_of::<T>(), align_of::<T>(), slots)
    }
}

/// Verifies slot `i` of a slots area at `base` (O(size)).
///
/// # Safety
/// `base` must point to a readable, [`crate::state::AREA_ALIGN`]-aligned
/// area of at least `geo.total` bytes laid out as `geo` says, with `i`
/// below the slot count and `size` the payload size of the layout.
unsafe fn check_slot_at(base: *const u8, geo: &Geometry, i: usize, size: usize) -> SlotState {
    let off = geo.first_slot + i * geo.stride;
    debug_assert!(off + LINE + size <= geo.total);
    // SAFETY: in bounds and 64-aligned by the caller's contract; SlotHeader
    // is Plain, so any bytes are a valid value.
    let h = unsafe { &*base.add(off).cast::<SlotHeader>() };
    let seq = h.seq.load(Ordering::Acquire);
    if seq == 0 {
        return SlotState::Empty;
    }
    let len = h.len.load(Ordering::Relaxed);
    let crc = h.crc.load(Ordering::Relaxed);
    let poison = h.poison.load(Ordering::Relaxed);
    if len != size as u64 {
        return SlotState::Corrupt { seq };
    }
    // SAFETY: the payload's `size` bytes follow the header, in bounds by the
    // caller's contract.
    let payload = unsafe { std::slice::from_raw_parts(base.add(off + LINE), size) };
    let computed = slot_crc(seq, len, payload);
    // A concurrent commit into this slot stores seq = 0 first: if seq is
    // unchanged after the payload was read, the payload belonged to it.
    fence(Ordering::Acquire);
    if computed != crc || h.seq.load(Ordering::Relaxed) != seq {
        return SlotState::Corrupt { seq };
    }
    if poison != 0 {
        SlotState::Poisoned { seq }
    } else {
        SlotState::Valid { seq }
    }
}

/// What [`inspect`] finds in a slots area, without knowing its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inspection {
    /// The layout recorded in the header.
    pub layout: Layout,
    /// Every slot, verified.
    pub slots: SlotStates,
    /// Seq of the newest restorable checkpoint.
    pub newest: Option<u64>,
    /// Informational: seq the live state was last restored from (0: none).
    pub restored_seq: u64,
    /// Informational: commits since the area was stamped.
    pub commit_count: u64,
}

/// Reads a [`Checkpoints`] area without writing to it and without knowing
/// its type (the header records size, alignment and slot count): for the
/// root, which maps daemons' regions and decides about poison.
///
/// `Ok(None)` for an empty area; [`StateError::LayoutChanged`] if the area
/// holds another kind of state.
pub fn inspect(area: &[u8]) -> Result<Option<Inspection>, StateError> {
    let Some(layout) = state::read_layout(area)? else {
        return Ok(None);
    };
    let slots = layout.param as usize;
    let plausible = layout.kind == Kind::Slots as u32
        && (MIN_SLOTS as usize..=MAX_SLOTS as usize).contains(&slots)
        && layout.type_align.is_power_of_two()
        && layout.type_size <= area.len() as u64;
    if !plausible {
        let expected = Layout {
            kind: Kind::Slots as u32,
            ..layout
        };
        return Err(StateError::LayoutChanged {
            found_version: layout.version,
            expected_version: layout.version,
            found: layout,
            expected,
        });
    }
    let size = layout.type_size as usize;
    let geo = Geometry::new(size, layout.type_align as usize, slots);
    let align = state::AREA_ALIGN.max(layout.type_align as usize);
    if area.len() < geo.total {
        return Err(StateError::TooSmall {
            need: geo.total,
            have: area.len(),
        });
    }
    if (area.as_ptr() as usize) % align != 0 {
        return Err(StateError::Misaligned {
            align,
            addr: area.as_ptr() as usize,
        });
    }
    let mut states = [SlotState::Empty; MAX_SLOTS as usize];
    let mut newest = None;
    for (i, st) in states.iter_mut().enumerate().take(slots) {
        // SAFETY: the area is readable, aligned and holds geo.total bytes
        // (checked above); i < slots.
        *st = unsafe { check_slot_at(area.as_ptr(), &geo, i, size) };
        if let SlotState::Valid { seq } = *st {
            newest = newest.max(Some(seq));
        }
    }
    // SAFETY: the control block is inside the area (geo.total > 128), 64-aligned; Plain.
    let control = unsafe { &*area.as_ptr().add(CONTROL_OFFSET).cast::<SlotsControl>() };
    Ok(Some(Inspection {
        layout,
        slots: SlotStates { states, len: slots },
        newest,
        restored_seq: control.restored_seq.load(Ordering::Relaxed),
        commit_count: control.commit_count.load(Ordering::Relaxed),
    }))
}

/// A live `T` with N checkpoint slots in a user area.
///
/// Dereferences to the live state, which the daemon mutates freely between
/// commits. Exactly one process may commit to an area at a time (the
/// daemon, not its transactions); readers in other processes may
/// [`Checkpoints::scan`] an area through their own attachment.
pub struct Checkpoints<'a, T: Plain> {
    base: NonNull<u8>,
    geo: Geometry,
    slots: usize,
    /// This process's knowledge of each slot (refreshed by scans, updated by commits).
    known: [SlotState; MAX_SLOTS as usize],
    /// Next sequence number to publish: above every seq that verified.
    next_seq: u64,
    /// After a restore from C: the seq of the checkpoint before C, kept
    /// from being overwritten until this monotonic time (ns), so that a
    /// poison verdict on C still finds it (see [`POISON_WINDOW`]).
    pinned: Option<(u64, u64)>,
    status: Status,
    _area: PhantomData<&'a mut [u8]>,
    _type: PhantomData<T>,
}

impl<T: Plain> fmt::Debug for Checkpoints<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkpoints")
            .field("type", &std::any::type_name::<T>())
            .field("status", &self.status)
            .field("slots", &&self.known[..self.slots])
            .field("next_seq", &self.next_seq)
            .finish()
    }
}

impl<'a, T: Plain> Checkpoints<'a, T> {
    /// Bytes an area needs for `T` with `slots` slots.
    pub const fn required_size(slots: u32) -> usize {
        Geometry::of::<T>(slots as usize).total
    }

    /// Attaches with [`DEFAULT_SLOTS`] slots; see [`Checkpoints::attach_with`].
    pub fn attach(area: &'a mut [u8], version: u32) -> Result<Self, StateError> {
        Self::attach_with(area, version, DEFAULT_SLOTS)
    }

    /// Attaches checkpoints of `T` at layout `version` with `slots` slots
    /// (clamped to [`MIN_SLOTS`]..=[`MAX_SLOTS`]) to a user area.
    ///
    /// An empty area is zeroed and stamped ([`Status::Fresh`]: no
    /// checkpoint, live state zeroed). An area of the same layout is left as
    /// it is: the live copy holds whatever the last process left in it, which
    /// may be mid-update; call [`Checkpoints::restore`] to resume from the
    /// last checkpoint. Every slot is verified (O(slots × size)).
    pub fn attach_with(area: &'a mut [u8], version: u32, slots: u32) -> Result<Self, StateError> {
        let slots = slots.clamp(MIN_SLOTS, MAX_SLOTS);
        let want = Layout::of::<T>(version, Kind::Slots, u64::from(slots));
        let geo = Geometry::of::<T>(slots as usize);
        let status = state::attach_raw(area, &want, geo.total)?;
        debug_assert!(area.len() >= geo.total);
        let mut this = Self {
            // SAFETY: a slice pointer is never null.
            base: unsafe { NonNull::new_unchecked(area.as_mut_ptr()) },
            geo,
            slots: slots as usize,
            known: [SlotState::Empty; MAX_SLOTS as usize],
            next_seq: 1,
            pinned: None,
            status,
            _area: PhantomData,
            _type: PhantomData,
        };
        this.rescan();
        Ok(this)
    }

    /// Whether the area was empty when attached.
    pub fn status(&self) -> Status {
        self.status
    }

    /// Number of slots.
    pub fn slot_count(&self) -> usize {
        self.slots
    }

    fn control(&self) -> &SlotsControl {
        debug_assert!(CONTROL_OFFSET + LINE <= self.geo.live);
        // SAFETY: the control block lies inside the attached area (checked
        // by `attach_raw` against geo.total) at a 64-aligned offset; Plain.
        unsafe {
            &*self
                .base
                .as_ptr()
                .add(CONTROL_OFFSET)
                .cast::<SlotsControl>()
        }
    }

    fn slot_header(&self, i: usize) -> &SlotHeader {
        debug_assert!(i < self.slots);
        let off = self.geo.first_slot + i * self.geo.stride;
        debug_assert!(off + self.geo.stride <= self.geo.total);
        // SAFETY: slot i < slots lies inside the area; 64-aligned; Plain.
        unsafe { &*self.base.as_ptr().add(off).cast::<SlotHeader>() }
    }

    fn payload_ptr(&self, i: usize) -> *mut u8 {
        debug_assert!(i < self.slots);
        let off = self.geo.first_slot + i * self.geo.stride + LINE;
        debug_assert!(off + size_of::<T>() <= self.geo.total);
        // SAFETY: in bounds of the area, as checked above.
        unsafe { self.base.as_ptr().add(off) }
    }

    fn payload(&self, i: usize) -> &[u8] {
        // SAFETY: size_of::<T>() bytes in bounds (payload_ptr); only the
        // committer writes a slot, and it holds `&mut self`.
        unsafe { std::slice::from_raw_parts(self.payload_ptr(i), size_of::<T>()) }
    }

    fn live_ptr(&self) -> *mut T {
        debug_assert!(self.geo.live + size_of::<T>() <= self.geo.total);
        // SAFETY: in bounds; the live offset is a multiple of align_of::<T>()
        // and the area is aligned to it (checked by `attach_raw`).
        unsafe { self.base.as_ptr().add(self.geo.live).cast::<T>() }
    }

    /// Verifies slot `i` (O(size)).
    fn check_slot(&self, i: usize) -> SlotState {
        debug_assert!(i < self.slots);
        // SAFETY: the attached area holds geo.total bytes and is aligned
        // (`attach_raw`); i < slots.
        unsafe { check_slot_at(self.base.as_ptr(), &self.geo, i, size_of::<T>()) }
    }

    /// Verifies every slot and refreshes this process's view of them.
    fn rescan(&mut self) {
        for i in 0..self.slots {
            let s = self.check_slot(i);
            if let SlotState::Valid { seq } | SlotState::Poisoned { seq } = s {
                self.next_seq = self.next_seq.max(seq + 1);
            }
            self.known[i] = s;
        }
    }

    /// Verifies every slot's crc now and reports what each holds.
    pub fn scan(&self) -> SlotStates {
        let mut states = [SlotState::Empty; MAX_SLOTS as usize];
        for (i, s) in states.iter_mut().enumerate().take(self.slots) {
            *s = self.check_slot(i);
        }
        SlotStates {
            states,
            len: self.slots,
        }
    }

    /// The newest restorable slot known to this process, limited to seqs
    /// below `limit`.
    fn newest_valid(&self, limit: u64) -> Option<(usize, u64)> {
        let mut best: Option<(usize, u64)> = None;
        for (i, s) in self.known[..self.slots].iter().enumerate() {
            if let SlotState::Valid { seq } = *s {
                if seq < limit && best.is_none_or(|(_, b)| seq > b) {
                    best = Some((i, seq));
                }
            }
        }
        best
    }

    /// The slot the next commit writes: never the newest valid one; first an
    /// empty or corrupt slot, then a poisoned one, then the oldest valid one.
    fn pick_target(&self) -> usize {
        let keep = self.newest_valid(u64::MAX).map(|(i, _)| i);
        // The checkpoint before the one this process resumed from, while a
        // poison verdict on the latter may still come; a pin gives way when
        // only two slots exist (the newest must stay, one must be written).
        let pinned = match self.pinned {
            Some((seq, until)) if self.slots > 2 && crate::sys::monotonic_ns() < until => {
                (0..self.slots).find(|&i| self.known[i] == SlotState::Valid { seq })
            }
            _ => None,
        };
        let rank = |s: SlotState| match s {
            SlotState::Empty | SlotState::Corrupt { .. } => (0, 0),
            SlotState::Poisoned { seq } => (1, seq),
            SlotState::Valid { seq } => (2, seq),
        };
        let mut target = None;
        for i in 0..self.slots {
            if Some(i) == keep || Some(i) == pinned {
                continue;
            }
            if target.is_none_or(|t: usize| rank(self.known[i]) < rank(self.known[t])) {
                target = Some(i);
            }
        }
        debug_assert!(target.is_some(), "MIN_SLOTS >= 2 leaves a slot to write");
        target.unwrap_or(0)
    }

    /// Commits the live state as a new checkpoint and returns where it went.
    ///
    /// Cost: one copy of `size_of::<T>()` bytes, one crc32 pass over them and
    /// two fences. Protocol, on the slot `s` chosen by `pick_target` (never
    /// the newest valid checkpoint, so that one stays intact throughout):
    ///
    /// 1. `s.seq = 0`, then a full fence: the slot is invalid before any of
    ///    its bytes change;
    /// 2. clear `s.poison`, copy the live state into the payload, store
    ///    `len`, compute the crc over (seq', len, payload as written), store it;
    /// 3. `s.seq = seq'` with Release: the slot becomes valid only after
    ///    every byte the crc covers is in place.
    ///
    /// A crash before 1 lands leaves `s` as it was; between 1 and 3, `s`
    /// reads as empty; after 3, `s` is the complete new checkpoint. The
    /// newest previous checkpoint is valid in every case.
    pub fn commit(&mut self) -> Committed {
        let slot = self.pick_target();
        let seq = self.next_seq;
        let len = size_of::<T>();
        let h = self.slot_header(slot);
        h.seq.store(0, Ordering::Relaxed);
        // Full fence: the invalidation above precedes, for the compiler and
        // the CPU, every store below.
        fence(Ordering::SeqCst);
        h.poison.store(0, Ordering::Relaxed);
        let dst = self.payload_ptr(slot);
        // SAFETY: live and payload are distinct, in-bounds ranges of `len`
        // bytes (Geometry puts slots after the live copy); `&mut self` means
        // no reference into either is alive in this process.
        unsafe { ptr::copy_nonoverlapping(self.live_ptr().cast::<u8>(), dst, len) };
        h.len.store(len as u64, Ordering::Relaxed);
        let crc = slot_crc(seq, len as u64, self.payload(slot));
        h.crc.store(crc, Ordering::Relaxed);
        // Release: payload, len, crc and poison are visible before the seq
        // that makes them a checkpoint.
        h.seq.store(seq, Ordering::Release);
        let c = self.control();
        c.last_seq.store(seq, Ordering::Relaxed);
        c.commit_count.store(
            c.commit_count.load(Ordering::Relaxed) + 1,
            Ordering::Relaxed,
        );
        self.known[slot] = SlotState::Valid { seq };
        self.next_seq = seq + 1;
        Committed { slot, seq }
    }

    /// Resumes from the newest valid checkpoint: verifies every slot's crc,
    /// copies the newest valid, unpoisoned one into the live state.
    ///
    /// With no such checkpoint the live state is zeroed and
    /// [`CheckpointError::NoCheckpoint`] returned: after `restore` the live
    /// state is a verified checkpoint or all zeroes, never garbage.
    pub fn restore(&mut self) -> Result<Restored, CheckpointError> {
        self.restore_below(u64::MAX)
    }

    /// Poison fallback: resumes from the newest valid checkpoint whose seq
    /// is strictly lower than `seq`, and poisons every checkpoint with a seq
    /// of `seq` or more, so no later restore resumes from them.
    ///
    /// The root calls for this when the daemon died soon after resuming from
    /// checkpoint `seq`. Poisoning happens before the copy, so a crash in
    /// between leaves the same choice for the next restore. Returns
    /// [`CheckpointError::NoCheckpoint`] (live state zeroed) when nothing
    /// older is left: the daemon starts fresh.
    pub fn restore_before(&mut self, seq: u64) -> Result<Restored, CheckpointError> {
        self.restore_below(seq)
    }

    fn restore_below(&mut self, limit: u64) -> Result<Restored, CheckpointError> {
        self.rescan();
        for i in 0..self.slots {
            if let SlotState::Valid { seq } = self.known[i] {
                if seq >= limit {
                    self.slot_header(i).poison.store(POISON, Ordering::Release);
                    self.known[i] = SlotState::Poisoned { seq };
                }
            }
        }
        let Some((slot, seq)) = self.newest_valid(limit) else {
            self.reset();
            self.control().restored_seq.store(0, Ordering::Relaxed);
            return Err(CheckpointError::NoCheckpoint);
        };
        // SAFETY: distinct in-bounds ranges of size_of::<T>() bytes; `&mut
        // self` excludes references into the live copy; the payload verified
        // in `rescan` and only a committer (this process) writes slots.
        unsafe {
            ptr::copy_nonoverlapping(
                self.payload_ptr(slot),
                self.live_ptr().cast::<u8>(),
                size_of::<T>(),
            )
        };
        self.control().restored_seq.store(seq, Ordering::Relaxed);
        let window = POISON_WINDOW.as_nanos() as u64;
        self.pinned = self
            .newest_valid(seq)
            .map(|(_, before)| (before, crate::sys::monotonic_ns() + window));
        Ok(Restored { slot, seq })
    }

    /// Zeroes the live state (checkpoints are kept).
    pub fn reset(&mut self) {
        // SAFETY: the live copy is size_of::<T>() in-bounds bytes, no
        // reference into it is alive (`&mut self`), and all-zero is a valid T.
        unsafe { ptr::write_bytes(self.live_ptr().cast::<u8>(), 0, size_of::<T>()) };
    }

    /// Seq of the newest valid checkpoint this process knows of (`None`
    /// before the first).
    pub fn last_seq(&self) -> Option<u64> {
        self.newest_valid(u64::MAX).map(|(_, s)| s)
    }

    /// Commits completed in this area since it was stamped (informational:
    /// kept in shared memory, not verified).
    pub fn commit_count(&self) -> u64 {
        self.control().commit_count.load(Ordering::Relaxed)
    }

    /// Seq of the checkpoint the live state was last restored from, if any
    /// (informational, like [`Checkpoints::commit_count`]).
    pub fn restored_seq(&self) -> Option<u64> {
        match self.control().restored_seq.load(Ordering::Relaxed) {
            0 => None,
            s => Some(s),
        }
    }
}

impl<T: Plain> Deref for Checkpoints<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: in bounds and aligned (live_ptr); T is Plain.
        unsafe { &*self.live_ptr() }
    }
}

impl<T: Plain> DerefMut for Checkpoints<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes it the only reference.
        unsafe { &mut *self.live_ptr() }
    }
}

fn slot_crc(seq: u64, len: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(&len.to_le_bytes());
    h.update(payload);
    h.finalize()
}

// ---------------------------------------------------------------------------
// In place, with an undo journal
// ---------------------------------------------------------------------------

/// Control block of an [`InPlace`] area (64 bytes at offset 64).
///
/// A transaction is **open** iff `open_seq == committed_seq + 1`; its
/// journal records are the ones in `[0, used)` carrying `open_seq`.
#[repr(C)]
#[derive(Debug)]
pub struct JournalControl {
    /// Seq of the last committed transaction (0: none). Storing the open
    /// transaction's seq here (Release) is the commit.
    committed_seq: AtomicU64,
    /// Seq of the transaction the journal belongs to. Stored (Release) when
    /// a transaction begins, after `used` was reset.
    open_seq: AtomicU64,
    /// Bytes of published journal records; a record is published by storing
    /// its end here (Release), before the live bytes it covers change.
    used: AtomicU64,
    /// Transactions committed since the area was stamped (informational).
    commit_count: AtomicU64,
    /// Unfinished transactions rolled back since the area was stamped
    /// (informational).
    rollback_count: AtomicU64,
    /// Zero.
    _reserved: [u64; 3],
}

// SAFETY: repr(C), atomic integers and integers only; any bits are valid.
unsafe impl Plain for JournalControl {}

/// Header of one undo record in the journal; the old bytes follow it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct RecordHeader {
    /// Seq of the transaction that wrote it.
    seq: u64,
    /// Offset of the range in the state.
    offset: u64,
    /// Length of the range; the record's old bytes.
    len: u64,
    /// Journal offset of the previous record of the transaction (u64::MAX
    /// for the first), so rollback walks backwards without allocating.
    prev: u64,
    /// crc32 of the four fields above (LE) and the old bytes.
    crc: u32,
    /// Zero.
    _pad: u32,
}

const RECORD_HEADER: usize = size_of::<RecordHeader>();
const _: () = assert!(RECORD_HEADER == 40 && size_of::<JournalControl>() == LINE);

fn record_crc(r: &RecordHeader, old: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&r.seq.to_le_bytes());
    h.update(&r.offset.to_le_bytes());
    h.update(&r.len.to_le_bytes());
    h.update(&r.prev.to_le_bytes());
    h.update(old);
    h.finalize()
}

/// What attaching an [`InPlace`] area found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Recovery {
    /// Whether the area was empty.
    pub status: Status,
    /// Undo records of an unfinished transaction applied (0: none was open).
    pub rolled_back: usize,
    /// Seq of the last committed transaction, the state now in place.
    pub committed_seq: u64,
}

/// A `T` committed in place through an undo journal.
///
/// Read it through [`Deref`]; change it only inside a transaction
/// ([`InPlace::begin`]), declaring each range before writing it.
pub struct InPlace<'a, T: Plain> {
    base: NonNull<u8>,
    journal: usize,
    capacity: usize,
    live: usize,
    recovery: Recovery,
    _area: PhantomData<&'a mut [u8]>,
    _type: PhantomData<T>,
}

impl<T: Plain> fmt::Debug for InPlace<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InPlace")
            .field("type", &std::any::type_name::<T>())
            .field("capacity", &self.capacity)
            .field("recovery", &self.recovery)
            .finish()
    }
}

const fn inplace_geometry<T>(capacity: usize) -> (usize, usize, usize, usize) {
    let a = if align_of::<T>() > LINE {
        align_of::<T>()
    } else {
        LINE
    };
    let journal = CONTROL_OFFSET + LINE;
    let capacity = round_up(capacity, LINE);
    let live = round_up(journal + capacity, a);
    (journal, capacity, live, live + size_of::<T>())
}

impl<'a, T: Plain> InPlace<'a, T> {
    /// Bytes an area needs for `T` with a journal of `capacity` bytes.
    pub const fn required_size(capacity: usize) -> usize {
        inplace_geometry::<T>(capacity).3
    }

    /// Journal bytes one declared range of `len` bytes takes.
    pub const fn record_size(len: usize) -> usize {
        round_up(RECORD_HEADER + len, 8)
    }

    /// Attaches `T` at layout `version` with an undo journal of `capacity`
    /// bytes (rounded up to 64) and rolls back a transaction a crashed
    /// process left unfinished (idempotent: a crash during the rollback is
    /// rolled back again on the next attach).
    pub fn attach(
        area: &'a mut [u8],
        version: u32,
        capacity: usize,
    ) -> Result<Self, CheckpointError> {
        let (journal, capacity, live, total) = inplace_geometry::<T>(capacity);
        let want = Layout::of::<T>(version, Kind::Journal, capacity as u64);
        let status = state::attach_raw(area, &want, total)?;
        debug_assert!(area.len() >= total);
        let mut this = Self {
            // SAFETY: a slice pointer is never null.
            base: unsafe { NonNull::new_unchecked(area.as_mut_ptr()) },
            journal,
            capacity,
            live,
            recovery: Recovery {
                status,
                rolled_back: 0,
                committed_seq: 0,
            },
            _area: PhantomData,
            _type: PhantomData,
        };
        let rolled_back = this.roll_back()?;
        this.recovery.rolled_back = rolled_back;
        this.recovery.committed_seq = this.control().committed_seq.load(Ordering::Acquire);
        Ok(this)
    }

    /// What attaching found and did.
    pub fn recovery(&self) -> Recovery {
        self.recovery
    }

    /// Seq of the last committed transaction (0: none).
    pub fn committed_seq(&self) -> u64 {
        self.control().committed_seq.load(Ordering::Acquire)
    }

    /// Transactions committed since the area was stamped (informational).
    pub fn commit_count(&self) -> u64 {
        self.control().commit_count.load(Ordering::Relaxed)
    }

    /// Unfinished transactions rolled back since the area was stamped
    /// (informational).
    pub fn rollback_count(&self) -> u64 {
        self.control().rollback_count.load(Ordering::Relaxed)
    }

    fn control(&self) -> &JournalControl {
        debug_assert!(CONTROL_OFFSET + LINE <= self.journal);
        // SAFETY: inside the attached area, 64-aligned; Plain.
        unsafe {
            &*self
                .base
                .as_ptr()
                .add(CONTROL_OFFSET)
                .cast::<JournalControl>()
        }
    }

    fn journal_ptr(&self, at: usize) -> *mut u8 {
        debug_assert!(at <= self.capacity);
        // SAFETY: the journal is `capacity` in-bounds bytes at `journal`.
        unsafe { self.base.as_ptr().add(self.journal + at) }
    }

    fn live_bytes(&self) -> *mut u8 {
        debug_assert!(self.live + size_of::<T>() <= InPlace::<T>::required_size(self.capacity));
        // SAFETY: in bounds of the area.
        unsafe { self.base.as_ptr().add(self.live) }
    }

    fn read_record(&self, at: usize) -> Option<RecordHeader> {
        if at + RECORD_HEADER > self.capacity {
            return None;
        }
        // SAFETY: RECORD_HEADER in-bounds journal bytes; read unaligned-safe
        // (records are 8-aligned, but `read_unaligned` does not rely on it);
        // RecordHeader is integers only, any bits are valid.
        Some(unsafe { ptr::read_unaligned(self.journal_ptr(at).cast::<RecordHeader>()) })
    }

    /// Undoes the open transaction, if any. Returns the records applied.
    fn roll_back(&mut self) -> Result<usize, CheckpointError> {
        let c = self.control();
        let committed = c.committed_seq.load(Ordering::Acquire);
        let open = c.open_seq.load(Ordering::Acquire);
        let used = c.used.load(Ordering::Acquire);
        let corrupt_control = CheckpointError::JournalCorrupt { at: usize::MAX };
        if used > self.capacity as u64 || (open != committed && open != committed.wrapping_add(1)) {
            return Err(corrupt_control);
        }
        if open == committed || used == 0 {
            return Ok(0);
        }
        let used = used as usize;
        // Pass 1, forward: every published record must verify before any
        // is applied; remember the last one.
        let size = size_of::<T>();
        let mut at = 0;
        let mut last = None;
        let mut count = 0;
        while at < used {
            let Some(r) = self.read_record(at) else {
                return Err(CheckpointError::JournalCorrupt { at });
            };
            let len = r.len as usize;
            let end = at.saturating_add(InPlace::<T>::record_size(len));
            let in_bounds = r.offset <= size as u64 && r.len <= (size as u64 - r.offset);
            let prev_ok = r.prev == last.map_or(u64::MAX, |p: usize| p as u64);
            if r.seq != open || !in_bounds || end > used || !prev_ok {
                return Err(CheckpointError::JournalCorrupt { at });
            }
            // SAFETY: `end <= used <= capacity`, so the old bytes are in the journal.
            let old =
                unsafe { std::slice::from_raw_parts(self.journal_ptr(at + RECORD_HEADER), len) };
            if record_crc(&r, old) != r.crc {
                return Err(CheckpointError::JournalCorrupt { at });
            }
            last = Some(at);
            count += 1;
            at = end;
        }
        // Pass 2, backward: restore old bytes, newest record first, so a
        // range declared twice ends with its oldest bytes.
        let mut cursor = last;
        while let Some(at) = cursor {
            let r = self
                .read_record(at)
                .ok_or(CheckpointError::JournalCorrupt { at })?;
            debug_assert!(r.offset as usize + r.len as usize <= size);
            // SAFETY: the range was checked against size_of::<T>() and the
            // journal bounds in pass 1; journal and live do not overlap;
            // `&mut self` excludes references into the live state.
            unsafe {
                ptr::copy_nonoverlapping(
                    self.journal_ptr(at + RECORD_HEADER),
                    self.live_bytes().add(r.offset as usize),
                    r.len as usize,
                )
            };
            cursor = (r.prev != u64::MAX).then_some(r.prev as usize);
        }
        // The restored bytes precede the journal's reset: a crash before the
        // reset rolls back again (same old bytes), after it finds nothing.
        fence(Ordering::SeqCst);
        let c = self.control();
        c.used.store(0, Ordering::Release);
        c.rollback_count.store(
            c.rollback_count.load(Ordering::Relaxed) + 1,
            Ordering::Relaxed,
        );
        Ok(count)
    }

    /// Begins a transaction. Dropping it without [`Tx::commit`] rolls it
    /// back.
    pub fn begin(&mut self) -> Tx<'_, 'a, T> {
        let c = self.control();
        let committed = c.committed_seq.load(Ordering::Acquire);
        let seq = committed + 1;
        // Full fence: the previous transaction's data writes and its commit
        // store precede emptying the journal, for the compiler and the CPU.
        // Otherwise `used = 0` could land before them, and a crash there
        // would leave an open transaction with no record of what it changed.
        fence(Ordering::SeqCst);
        c.used.store(0, Ordering::Relaxed);
        // Release: the emptied journal is visible before the journal is
        // declared to belong to the new transaction (else the previous,
        // committed transaction's records could be read as this one's).
        c.open_seq.store(seq, Ordering::Release);
        Tx {
            owner: self,
            seq,
            used: 0,
            last: None,
            done: false,
        }
    }
}

impl<T: Plain> Deref for InPlace<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        debug_assert_eq!((self.live_bytes() as usize) % align_of::<T>(), 0);
        // SAFETY: in bounds, aligned to align_of::<T>() (geometry and
        // `attach_raw`); T is Plain.
        unsafe { &*self.live_bytes().cast::<T>() }
    }
}

/// A transaction on an [`InPlace`] state.
///
/// Each range must be declared ([`Tx::bytes`], [`Tx::field`]) before it is
/// written: declaring journals its old bytes and returns the only way to
/// write them.
pub struct Tx<'t, 'a, T: Plain> {
    owner: &'t mut InPlace<'a, T>,
    seq: u64,
    used: usize,
    last: Option<usize>,
    done: bool,
}

impl<T: Plain> fmt::Debug for Tx<'_, '_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tx")
            .field("seq", &self.seq)
            .field("journal_used", &self.used)
            .finish()
    }
}

impl<T: Plain> Tx<'_, '_, T> {
    /// The transaction's sequence number (what [`InPlace::committed_seq`]
    /// becomes on commit).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The state as it is now, changes of this transaction included.
    pub fn state(&self) -> &T {
        self.owner
    }

    /// Declares `len` bytes at `offset` in the state: journals their old
    /// bytes, then returns them for writing.
    ///
    /// Protocol: write the record (header and old bytes) past `used`, then
    /// publish it by storing the new `used` (Release), then a full fence
    /// before returning, so no write through the returned slice can precede
    /// the published record.
    pub fn bytes(&mut self, offset: usize, len: usize) -> Result<&mut [u8], CheckpointError> {
        let size = size_of::<T>();
        if offset > size || len > size - offset {
            return Err(CheckpointError::OutOfBounds { offset, len, size });
        }
        let need = InPlace::<T>::record_size(len);
        let free = self.owner.capacity - self.used;
        if need > free {
            return Err(CheckpointError::JournalFull { need, free });
        }
        let at = self.used;
        let live = self.owner.live_bytes();
        let mut r = RecordHeader {
            seq: self.seq,
            offset: offset as u64,
            len: len as u64,
            prev: self.last.map_or(u64::MAX, |p| p as u64),
            crc: 0,
            _pad: 0,
        };
        let old_dst = self.owner.journal_ptr(at + RECORD_HEADER);
        // SAFETY: `at + need <= capacity` (checked), so header and old bytes
        // fit in the journal; the live range is in bounds (checked); journal
        // and live state do not overlap.
        let old = unsafe {
            ptr::copy_nonoverlapping(live.add(offset), old_dst, len);
            std::slice::from_raw_parts(old_dst, len)
        };
        r.crc = record_crc(&r, old);
        // SAFETY: RECORD_HEADER bytes at `at` lie in the journal (checked).
        unsafe { ptr::write_unaligned(self.owner.journal_ptr(at).cast::<RecordHeader>(), r) };
        self.used = at + need;
        self.last = Some(at);
        self.owner
            .control()
            .used
            .store(self.used as u64, Ordering::Release);
        // Full fence: the published record precedes every write the caller
        // makes through the returned slice.
        fence(Ordering::SeqCst);
        // SAFETY: in bounds (checked); the returned borrow is tied to `&mut
        // self`, so it is the only reference into the live state.
        Ok(unsafe { std::slice::from_raw_parts_mut(live.add(offset), len) })
    }

    /// Declares the field `pick` selects and returns it for writing.
    ///
    /// `pick` must only select a place (`|s| &mut s.counters[3]`): a write
    /// made inside it is not journaled.
    pub fn field<F: Plain>(
        &mut self,
        pick: impl FnOnce(&mut T) -> &mut F,
    ) -> Result<&mut F, CheckpointError> {
        let base = self.owner.live_bytes();
        // SAFETY: the live state is an in-bounds, aligned T; the reference
        // lives only for the call to `pick`.
        let field: *mut F = pick(unsafe { &mut *base.cast::<T>() });
        let offset = (field as usize).wrapping_sub(base as usize);
        let bytes = self.bytes(offset, size_of::<F>())?;
        debug_assert_eq!(bytes.as_ptr() as usize, field as usize);
        // SAFETY: `bytes` covers exactly the F `pick` pointed at, inside T
        // (bounds checked by `bytes`), aligned as that F was; F is Plain.
        Ok(unsafe { &mut *bytes.as_mut_ptr().cast::<F>() })
    }

    /// Commits: every declared change becomes the state a restart finds.
    ///
    /// The commit is one Release store of the transaction's seq into
    /// `committed_seq`: every write to the live state precedes it, and once
    /// it lands the journal is dead.
    pub fn commit(mut self) -> u64 {
        let c = self.owner.control();
        c.committed_seq.store(self.seq, Ordering::Release);
        c.commit_count.store(
            c.commit_count.load(Ordering::Relaxed) + 1,
            Ordering::Relaxed,
        );
        self.done = true;
        self.seq
    }

    /// Undoes every declared change (what dropping the transaction does).
    pub fn rollback(self) {}
}

impl<T: Plain> Drop for Tx<'_, '_, T> {
    fn drop(&mut self) {
        if !self.done {
            // The records were written and verified by this process; a
            // failure here means the journal was overwritten under us.
            if let Err(e) = self.owner.roll_back() {
                debug_assert!(false, "rollback of an in-process transaction failed: {e}");
            }
        }
    }
}

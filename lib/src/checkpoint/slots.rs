//! Checkpoint slots: a live copy of `T` and N copies of it, each published
//! with a sequence number and a crc (see the parent module and DESIGN.md §5).

use super::{
    CheckpointError, CONTROL_OFFSET, DEFAULT_SLOTS, LINE, MAX_SLOTS, MIN_SLOTS, POISON_WINDOW,
};
use crate::region::Plain;
use crate::state::{self, round_up, Kind, Layout, StateError, Status};
use std::fmt;
use std::marker::PhantomData;
use std::mem::{align_of, size_of};
use std::ops::{Deref, DerefMut};
use std::ptr::{self, NonNull};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// Value a slot's `poison` field gets from `restore_before` (any non-zero
/// value poisons; this one survives any single bit flip as non-zero).
const POISON: u32 = 0x504f_4953;

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

/// Largest seq a valid slot may carry (2^63: a commit per nanosecond for
/// 292 years), so `seq + 1` never overflows.
const MAX_SEQ: u64 = 1 << 63;

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

/// What slot `i`'s header claims, without reading its payload (O(1)):
/// `Empty`, `Corrupt` for a seq or length no commit writes, else `Valid`
/// or `Poisoned`, still to be verified ([`check_slot_at`]).
///
/// # Safety
/// As for [`check_slot_at`].
unsafe fn peek_slot_at(base: *const u8, geo: &Geometry, i: usize, size: usize) -> SlotState {
    let off = geo.first_slot + i * geo.stride;
    debug_assert!(off + LINE + size <= geo.total);
    let h = base.wrapping_add(off).cast::<SlotHeader>();
    // SAFETY: in bounds, 64-aligned and readable by the caller's contract;
    // plain integer reads of a Plain header (any bits are valid), through
    // the raw pointer as in `check_slot_at`.
    let (seq, len, poison) = unsafe {
        (
            ptr::read_volatile(ptr::addr_of!((*h).seq).cast::<u64>()),
            ptr::read_volatile(ptr::addr_of!((*h).len).cast::<u64>()),
            ptr::read_volatile(ptr::addr_of!((*h).poison).cast::<u32>()),
        )
    };
    match seq {
        0 => SlotState::Empty,
        _ if seq > MAX_SEQ || len != size as u64 => SlotState::Corrupt { seq },
        _ if poison != 0 => SlotState::Poisoned { seq },
        _ => SlotState::Valid { seq },
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
    // Fields are read through the raw pointer, never through a reference to
    // the header's atomics: `base` may come from a read-only slice
    // (`inspect`), which grants no write access that such a reference would
    // claim (undefined behaviour under Stacked Borrows).
    let h = base.wrapping_add(off).cast::<SlotHeader>();
    // SAFETY: in bounds, 64-aligned and readable by the caller's contract;
    // plain integer reads of a Plain header (any bits are valid).
    let seq = unsafe { ptr::read_volatile(ptr::addr_of!((*h).seq).cast::<u64>()) };
    // The payload, len and crc are read after the seq that vouches for them
    // (the committer stores seq last, with Release): a volatile read and an
    // acquire fence order the loads as an acquire load would (`ldr; dmb` in
    // place of `ldar`), in this process and against another's stores.
    fence(Ordering::Acquire);
    if seq == 0 {
        return SlotState::Empty;
    }
    if seq > MAX_SEQ {
        // No commit gets there; a slot claiming it was forged or flipped,
        // and would leave no seq to commit after it.
        return SlotState::Corrupt { seq };
    }
    // SAFETY: as above.
    let (len, crc, poison) = unsafe {
        (
            ptr::read_volatile(ptr::addr_of!((*h).len).cast::<u64>()),
            ptr::read_volatile(ptr::addr_of!((*h).crc).cast::<u32>()),
            ptr::read_volatile(ptr::addr_of!((*h).poison).cast::<u32>()),
        )
    };
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
    // SAFETY: as above.
    let seq_after = unsafe { ptr::read_volatile(ptr::addr_of!((*h).seq).cast::<u64>()) };
    if computed != crc || seq_after != seq {
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
    // Copied out, not borrowed, as in `check_slot_at`.
    // SAFETY: the control block is inside the area (geo.total > 128),
    // 64-aligned, readable; Plain, so any bytes are a valid value.
    let control =
        unsafe { ptr::read_volatile(area.as_ptr().add(CONTROL_OFFSET).cast::<SlotsControl>()) };
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
    /// This process's knowledge of each slot: what its header claims
    /// (read at attach and restore, O(slots)), updated by commits.
    known: [SlotState; MAX_SLOTS as usize],
    /// Whether `known[i]` was verified (its crc checked, O(size)): a slot
    /// is verified when a restore picks it or a commit keeps it, never all
    /// of them at attach.
    verified: [bool; MAX_SLOTS as usize],
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
    /// last checkpoint. Only the slots' headers are read (O(slots), not
    /// O(slots × size)): a slot's crc is checked when a restore picks it
    /// or a commit keeps it.
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
            verified: [false; MAX_SLOTS as usize],
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

    /// Reads every slot's header (O(slots)) and refreshes this process's
    /// view of them; nothing is verified yet.
    fn rescan(&mut self) {
        for i in 0..self.slots {
            // SAFETY: the attached area holds geo.total bytes and is
            // aligned (`attach_raw`); i < slots.
            let s = unsafe { peek_slot_at(self.base.as_ptr(), &self.geo, i, size_of::<T>()) };
            if let SlotState::Valid { seq } | SlotState::Poisoned { seq } = s {
                self.next_seq = self.next_seq.max(seq + 1);
            }
            self.known[i] = s;
            self.verified[i] = false;
        }
    }

    /// Verifies slot `i` if it was not yet (O(size) once), and returns
    /// what it holds.
    fn verify(&mut self, i: usize) -> SlotState {
        if !self.verified[i] {
            self.known[i] = self.check_slot(i);
            self.verified[i] = true;
        }
        self.known[i]
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
        // The slot kept intact must really be a checkpoint: verify the
        // newest claimed one (once) before another is overwritten.
        while let Some((i, _)) = self.newest_valid(u64::MAX) {
            if matches!(self.verify(i), SlotState::Valid { .. }) {
                break;
            }
        }
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
            c.commit_count.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
        self.known[slot] = SlotState::Valid { seq };
        self.verified[slot] = true;
        self.next_seq = seq + 1;
        Committed { slot, seq }
    }

    /// Resumes from the newest valid checkpoint: reads every slot's header,
    /// verifies the crc of the newest unpoisoned one (the next newest if it
    /// fails, and so on) and copies it into the live state: O(slots +
    /// size), one slot verified unless some are damaged.
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
        let picked = loop {
            match self.newest_valid(limit) {
                None => break None,
                Some((i, _)) => {
                    if let SlotState::Valid { seq } = self.verify(i) {
                        break Some((i, seq));
                    }
                }
            }
        };
        let Some((slot, seq)) = picked else {
            self.reset();
            self.control().restored_seq.store(0, Ordering::Relaxed);
            return Err(CheckpointError::NoCheckpoint);
        };
        // SAFETY: distinct in-bounds ranges of size_of::<T>() bytes; `&mut
        // self` excludes references into the live copy; the payload verified
        // just above and only a committer (this process) writes slots.
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

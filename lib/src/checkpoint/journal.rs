//! In-place state with an undo journal: old bytes are journaled before the
//! live bytes change, and a commit flips one sequence number (see the parent
//! module and DESIGN.md §5).

use super::{CheckpointError, CONTROL_OFFSET, LINE};
use crate::region::Plain;
use crate::state::{self, round_up, Kind, Layout, Status};
use std::fmt;
use std::marker::PhantomData;
use std::mem::{align_of, size_of};
use std::ops::Deref;
use std::ptr::{self, NonNull};
use std::sync::atomic::{fence, AtomicU64, Ordering};

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
    /// (`usize::MAX` for a length no journal could hold.)
    pub const fn record_size(len: usize) -> usize {
        if len > usize::MAX - RECORD_HEADER - 8 {
            return usize::MAX;
        }
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
        // No transaction can follow a committed seq of u64::MAX: only a
        // corruption writes it.
        if used > self.capacity as u64
            || committed == u64::MAX
            || (open != committed && open != committed + 1)
        {
            return Err(corrupt_control);
        }
        if open == committed || used == 0 {
            return Ok(0);
        }
        let used = used as usize;
        // Pass 1, forward: every published record must verify before any
        // is applied; remember the last one. Every field is checked before
        // it is used in arithmetic: the journal may hold any bytes.
        let size = size_of::<T>();
        let mut at = 0;
        let mut last = None;
        let mut count = 0;
        while at < used {
            let Some(r) = self.read_record(at) else {
                return Err(CheckpointError::JournalCorrupt { at });
            };
            let in_bounds = r.offset <= size as u64 && r.len <= (size as u64 - r.offset);
            let prev_ok = r.prev == last.map_or(u64::MAX, |p: usize| p as u64);
            if r.seq != open || !in_bounds || !prev_ok {
                return Err(CheckpointError::JournalCorrupt { at });
            }
            // `len <= size_of::<T>()`, so the record's size cannot overflow.
            let len = r.len as usize;
            let end = at + InPlace::<T>::record_size(len);
            if end > used {
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
            c.rollback_count.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
        Ok(count)
    }

    /// Begins a transaction. Dropping it without [`Tx::commit`] rolls it
    /// back.
    pub fn begin(&mut self) -> Tx<'_, 'a, T> {
        let c = self.control();
        let committed = c.committed_seq.load(Ordering::Acquire);
        // Below u64::MAX when attached (`roll_back`); wrapping, because the
        // shared word may be overwritten since.
        let seq = committed.wrapping_add(1);
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
            c.commit_count.load(Ordering::Relaxed).wrapping_add(1),
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

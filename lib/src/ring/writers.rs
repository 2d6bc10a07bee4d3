//! The writer table: who may reserve a ring's slots and hold its consumer
//! role, named so that a reused pid never passes for a dead writer (see
//! *Writer identity* in the parent module and DESIGN.md §6).

use std::fmt;
use std::num::NonZeroU32;

use super::{Ring, RingError, WRITERS};
use crate::sync::{fence, AtomicU64, Ordering};
use crate::sys;

/// One entry of the writer table (see *Writer identity*).
#[repr(C)]
pub(super) struct WriterEntry {
    /// `generation << 32 | pid`; pid 0: free; [`CLAIMING`] set in the pid
    /// half while its claimant has not yet stored `key`. The generation
    /// changes on every claim, so an id of an earlier owner never matches.
    pub(super) owner: AtomicU64,
    /// [`process_key`] of the process in `owner`; meaningful once `owner`
    /// no longer says [`CLAIMING`].
    pub(super) key: AtomicU64,
}

/// Bit of `WriterEntry::owner`'s pid half: the entry is being claimed.
const CLAIMING: u32 = 1 << 31;

const fn owner_word(generation: u32, pid: u32) -> u64 {
    ((generation as u64) << 32) | pid as u64
}

/// The generation after `g` whose low 16 bits (the id's) are not 0, so an
/// id is never 0.
const fn next_generation(g: u32) -> u32 {
    let n = g.wrapping_add(1);
    if n & 0xFFFF == 0 {
        n.wrapping_add(1)
    } else {
        n
    }
}

/// Who reserved a slot or holds the consumer role: an opaque nonzero token
/// `(slot, generation)`, stored in 32 bits of a slot's state word.
///
/// The ring's writer table assigns ids to [`Ring::producer`] and
/// [`Ring::consumer`]; a supervisor may assign its own (its daemon slot and
/// restart count) with [`Ring::producer_as`] and judge them with
/// [`Ring::consumer_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WriterId(NonZeroU32);

impl WriterId {
    /// The id of `slot` at `generation`; `None` for `(0, 0)`, which is
    /// reserved for "nobody".
    pub const fn new(slot: u16, generation: u16) -> Option<WriterId> {
        WriterId::from_raw(((generation as u32) << 16) | slot as u32)
    }

    /// The id stored as `raw` (as [`WriterId::raw`] gave it); `None` for 0.
    pub const fn from_raw(raw: u32) -> Option<WriterId> {
        match NonZeroU32::new(raw) {
            Some(n) => Some(WriterId(n)),
            None => None,
        }
    }

    /// The 32 bits stored in the ring.
    pub const fn raw(self) -> u32 {
        self.0.get()
    }

    /// Its slot.
    pub const fn slot(self) -> u16 {
        self.0.get() as u16
    }

    /// Its generation (modulo 2^16).
    pub const fn generation(self) -> u16 {
        (self.0.get() >> 16) as u16
    }
}

impl fmt::Display for WriterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.slot(), self.generation())
    }
}

impl<'a> Ring<'a> {
    pub(super) fn writer_entry(&self, i: usize) -> &WriterEntry {
        debug_assert!(i < WRITERS);
        let table = self.slots_offset + self.cfg.capacity as usize * self.stride;
        // SAFETY: `i < WRITERS`, so the entry lies in the table after the
        // slots, inside `total_len` (validated by `attach`); 8-aligned;
        // initialised by `init`, and any bits are valid atomics.
        unsafe {
            &*self
                .base
                .as_ptr()
                .add(table + i * size_of::<WriterEntry>())
                .cast::<WriterEntry>()
        }
    }

    /// Claims a writer table entry for this process: a free one, or one
    /// whose owner is dead.
    pub(super) fn register(&self) -> Result<Registration<'a>, RingError> {
        let pid = sys::getpid().as_u32();
        let key = own_key()?;
        for i in 0..WRITERS {
            let e = self.writer_entry(i);
            let word = e.owner.load(Ordering::Acquire);
            let (generation, owner) = ((word >> 32) as u32, word as u32);
            if owner != 0 && !self.entry_owner_dead(e, word) {
                continue;
            }
            let generation = next_generation(generation);
            let claiming = owner_word(generation, pid | CLAIMING);
            if e.owner
                .compare_exchange(word, claiming, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            e.key.store(key, Ordering::Relaxed);
            // Release: `key` is visible to whoever reads the claimed owner.
            e.owner
                .store(owner_word(generation, pid), Ordering::Release);
            // Release fence: this registration precedes every slot state
            // this id is later stored into (even a Relaxed store), for the
            // consumer's acquire fence in `registered_dead`.
            fence(Ordering::Release);
            let id = WriterId::new(i as u16, generation as u16);
            debug_assert!(id.is_some(), "next_generation never yields 0 mod 2^16");
            return Ok(Registration {
                ring: *self,
                index: i,
                word: owner_word(generation, pid),
                id: id.ok_or(RingError::WritersFull)?,
                pid,
                key,
            });
        }
        Err(RingError::WritersFull)
    }

    /// Whether the owner recorded in `e` as `word` is gone, so the entry may
    /// be claimed again. `false` if the entry changed meanwhile.
    fn entry_owner_dead(&self, e: &WriterEntry, word: u64) -> bool {
        let pid = word as u32;
        if pid == 0 {
            return true;
        }
        if pid & CLAIMING != 0 {
            // Died while claiming, or still at it: only its pid can tell.
            return pid_gone(pid & !CLAIMING);
        }
        let key = e.key.load(Ordering::Acquire);
        e.owner.load(Ordering::Acquire) == word && process_gone(pid, key)
    }

    /// Whether `id`, registered in the writer table, belongs to the process
    /// `(pid, key)`.
    pub(super) fn registered_to(&self, id: WriterId, pid: u32, key: u64) -> bool {
        let i = usize::from(id.slot());
        if i >= WRITERS {
            return false;
        }
        let e = self.writer_entry(i);
        let word = e.owner.load(Ordering::Acquire);
        (word >> 32) as u16 == id.generation()
            && word as u32 == pid
            && e.key.load(Ordering::Acquire) == key
            && e.owner.load(Ordering::Acquire) == word
    }

    /// Whether the process that registered `id` is gone: the entry moved on
    /// to another generation, was released, or its pid is exited, a zombie,
    /// or another process (its key differs). An id that names no
    /// entry (a stray write) counts as dead.
    pub(super) fn registered_dead(&self, id: WriterId) -> bool {
        // Acquire fence: pairs with the release fence in `register`, so the
        // registration of an id read from a slot state is visible here.
        fence(Ordering::Acquire);
        let i = id.slot() as usize;
        if i >= WRITERS {
            return true;
        }
        let e = self.writer_entry(i);
        let word = e.owner.load(Ordering::Acquire);
        let (generation, pid) = ((word >> 32) as u32, word as u32);
        if generation as u16 != id.generation() || pid == 0 {
            return true;
        }
        if pid & CLAIMING != 0 {
            // A claim of this generation in progress: its id is not out yet.
            return false;
        }
        let key = e.key.load(Ordering::Acquire);
        // Changed meanwhile: released or claimed again, so `id` is gone.
        e.owner.load(Ordering::Acquire) != word || process_gone(pid, key)
    }
}

/// A claimed writer table entry, given back on drop (by the process that
/// claimed it only: a forked child's copy does nothing).
#[derive(Debug)]
pub(super) struct Registration<'a> {
    ring: Ring<'a>,
    index: usize,
    /// The owner word as claimed.
    word: u64,
    pub(super) id: WriterId,
    pub(super) pid: u32,
    pub(super) key: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if sys::getpid().as_u32() != self.pid {
            return;
        }
        // The generation stays: the next claim moves it on.
        let _ = self.ring.writer_entry(self.index).owner.compare_exchange(
            self.word,
            self.word & !u64::from(u32::MAX),
            Ordering::Release,
            Ordering::Relaxed,
        );
    }
}

/// Marks a [`process_key`] that is a pidfs inode number (else it is a
/// start time in clock ticks).
const KEY_PIDFS: u64 = 1 << 63;

/// What tells process `pid` from any other that has or had the same pid:
/// its pidfs inode number where the kernel has pidfs (never reused while
/// the machine runs), else its start time in clock ticks after boot (equal
/// only for a pid reused within the tick its first owner started in).
fn process_key(pid: sys::Pid) -> std::io::Result<u64> {
    match sys::proc::pidfs_ino(pid) {
        Ok(Some(ino)) => Ok(ino | KEY_PIDFS),
        // No pidfs, no pidfd_open (before Linux 5.3), or a filter refusing
        // it: the start time.
        Ok(None) | Err(_) => sys::proc::stat(pid).map(|s| s.start_time & !KEY_PIDFS),
    }
}

/// This process's [`process_key`], which with its pid names it in the
/// writer table.
fn own_key() -> Result<u64, RingError> {
    process_key(sys::getpid()).map_err(|e| RingError::NoIdentity(e.kind()))
}

/// Whether the process that registered as `(pid, key)` is gone: exited, a
/// zombie, or its pid now names another process. The key is compared in
/// the kind it was recorded in (pidfs inode or start time); a process that
/// exists but whose key of that kind cannot be read counts as alive. System
/// calls only, no allocation.
fn process_gone(pid: u32, key: u64) -> bool {
    let Ok(p) = sys::Pid::try_from(pid) else {
        return true;
    };
    if pid_gone(pid) {
        return true;
    }
    if key & KEY_PIDFS != 0 {
        match sys::proc::pidfs_ino(p) {
            Ok(Some(ino)) => ino | KEY_PIDFS != key,
            Ok(None) => false,
            Err(e) => e.raw_os_error() == Some(libc::ESRCH),
        }
    } else {
        sys::proc::stat(p).is_ok_and(|s| s.start_time & !KEY_PIDFS != key)
    }
}

/// Whether no process has pid `pid`, or it is a zombie (key
/// unknown: for an entry whose claimant died before recording it).
fn pid_gone(pid: u32) -> bool {
    let Ok(p) = sys::Pid::try_from(pid) else {
        return true;
    };
    if matches!(sys::exists(p), Ok(false)) {
        return true;
    }
    sys::proc::state(p).is_ok_and(|s| s == b'Z' || s == b'X')
}

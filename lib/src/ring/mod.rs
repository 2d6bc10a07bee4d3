//! Bounded rings in shared memory: single- and multi-producer, crash-safe.
//!
//! A ring is a `#[repr(C)]` header followed by `capacity` fixed-size slots,
//! all inside one block of memory that several processes map `MAP_SHARED`.
//! Nothing in it is a pointer: slots are found by index, so every process may
//! map the ring at a different address. Messages are byte strings of up to
//! `slot_size` bytes, stored with their length (and, optionally, a crc32) in
//! the slot; a longer message is an error ([`RingError::TooLarge`]).
//!
//! Sending and receiving use no allocation and no system call. A consumer
//! that finds the ring empty spins briefly, then sleeps on a futex word in the
//! ring (non-private, so it works across processes); a producer issues
//! `FUTEX_WAKE` only when the consumer has said it sleeps.
//!
//! # Layout
//! ```text
//! offset 0    Header         (128 B)  geometry (magic, version, kind, capacity,
//!                                     slot size, stride, crc of these), ready word
//! offset 128  ProducerLine   (128 B)  tail, space futex, space waiters
//! offset 256  ConsumerLine   (128 B)  head, data futex, data waiter flag,
//!                                     consumer pid, lost/corrupt counters
//! offset 384  slot 0 .. slot capacity-1, each `stride` bytes (a multiple of 64):
//!             state: u64 | len: u32 | crc: u32 | payload[slot_size] | padding
//! then        writer table: 64 entries of 16 B, owner: u64 | key: u64
//! ```
//!
//! # Protocol
//! Positions are 64-bit counters that only grow; position `p` lives in slot
//! `p % capacity`. Each slot has one 64-bit *state* word, `seq << 32 | writer`
//! (`seq` is a position modulo 2^32, `writer` a [`WriterId`]: an opaque
//! nonzero `(slot, generation)` token, see *Writer identity*). For slot `i`
//! and position `p ≡ i`:
//!
//! | state            | meaning                                              |
//! |------------------|------------------------------------------------------|
//! | `(p, 0)`         | free: position `p` may be reserved                   |
//! | `(p, w)`, `w≠0`  | reserved by writer `w`, being written, not committed |
//! | `(p + 1, 0)`     | committed: the message for `p` is readable           |
//! | `(p + cap, 0)`   | consumed (or skipped): free for the next lap         |
//!
//! A producer reserves position `p = tail` by a compare-and-swap of the slot
//! state from `(p, 0)` to `(p, id)` (a plain store for [`Kind::Spsc`]), so
//! the writer's identity is recorded in the same atomic step that reserves the
//! slot. It then advances `tail`; any producer that finds the slot at `tail`
//! already reserved helps by advancing `tail`, so a producer that dies right
//! after reserving never stalls the others. It copies the payload, length and
//! crc, and commits with a release store of `(p + 1, 0)`.
//!
//! The single consumer reads the slot at `head`. Committed: it copies the
//! message out (or lends it through [`Peeked`]), and only then releases the
//! slot with `(p + cap, 0)` and advances `head`, so a consumer that dies
//! loses nothing it had not finished with. A consumer that dies between the
//! two stores leaves `head` one behind a released slot; the next consumer
//! recognises the state `(p + cap, _)` and advances `head`.
//!
//! Reserved but not committed for longer than a short bounded wait: the
//! consumer checks whether the writer is alive (through the writer table,
//! or the caller's own predicate, see [`Ring::consumer_with`]). If it is
//! dead the consumer skips the slot with a
//! compare-and-swap to `(p + cap, 0)` and counts it in
//! [`Stats::lost_uncommitted`]. A message is therefore received only if its
//! writer committed it, whole: a writer killed at any instruction cannot hand
//! the consumer a torn message, and cannot block it for longer than the
//! liveness check takes. The crc32 in each slot is a backstop against other
//! corruption (a stray write into shared memory).
//!
//! Limits: the state compares positions modulo 2^32, which is unambiguous
//! while capacity < 2^31.
//!
//! # Writer identity
//! A slot records who reserved it as a [`WriterId`], never as a pid: a pid
//! is reused once its process is reaped, and a reused pid would make a dead
//! writer look alive and stall the consumer until the stranger exits. Two
//! ways to get an id:
//! - [`Ring::producer`] / [`Ring::consumer`] register the process in the
//!   ring's *writer table* (64 entries after the slots). Entry `i` holds
//!   `owner = generation << 32 | pid` and `key`, what tells the process
//!   from any later one with its pid: the inode number of its pidfd on
//!   pidfs (Linux 6.9+; never reused while the machine runs), else its
//!   start time in clock ticks from `/proc/<pid>/stat`. The id is `(i,
//!   generation)`. Claiming an entry (free, or its owner dead) is a
//!   compare-and-swap that bumps the generation and marks the entry
//!   *claiming*; then `key` is stored and the mark cleared (Release). The id
//!   `(i, g)` is dead iff the entry's generation is no longer `g`, or its
//!   pid is released, exited, a zombie, or now a process with another key:
//!   a reused pid is told apart by its key. (Without pidfs, a pid reused
//!   within the clock tick, 10 ms, in which the dead writer *started* would
//!   pass.) Every process using one ring must share one pid namespace and
//!   see its `/proc`.
//! - [`Ring::producer_as`] / [`Ring::consumer_with`] take an id the caller
//!   assigns (a supervisor's daemon slot and restart generation) and a
//!   predicate that judges it: exact, no `/proc`, no table entry.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::ptr::{self, NonNull};
use std::time::{Duration, Instant};

use crate::sync::{fence, spin_loop, AtomicU32, AtomicU64, Ordering, UnsafeCell};
#[cfg(not(loom))]
use crate::sys;

mod writers;

pub use writers::WriterId;
use writers::{Registration, WriterEntry};

/// First eight bytes of every ring: `"FRKRING\0"`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"FRKRING\0");
/// Version of the layout described in the module documentation.
pub const VERSION: u32 = 2;
/// Entries in a ring's writer table: processes registered at once through
/// [`Ring::producer`] and [`Ring::consumer`].
pub const WRITERS: usize = 64;
/// Largest capacity a ring accepts (positions are compared modulo 2^32).
pub const MAX_CAPACITY: u32 = 1 << 30;
/// Largest slot size a ring accepts.
pub const MAX_SLOT_SIZE: u32 = 1 << 24;

/// Value of the header's `ready` word once [`init`] has finished.
const READY: u32 = 0x5245_4459; // "REDY"
/// Header flag: every slot carries a crc32 of its payload.
const FLAG_CRC: u32 = 1;
/// How long a consumer spins before it sleeps on the futex.
const SPIN_FOR: Duration = Duration::from_micros(50);
/// How long a slot may stay reserved before the consumer checks its writer.
const STALL_CHECK: Duration = Duration::from_micros(200);
/// Longest sleep while waiting on a reserved slot, between liveness checks.
const STALL_SLEEP: Duration = Duration::from_millis(1);

/// Who may send into a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    /// One producer at a time (a replacement may take over after it dies):
    /// reservation is a plain store.
    Spsc = 1,
    /// Any number of producers: reservation is a compare-and-swap.
    Mpsc = 2,
}

impl Kind {
    fn from_u32(v: u32) -> Option<Kind> {
        match v {
            1 => Some(Kind::Spsc),
            2 => Some(Kind::Mpsc),
            _ => None,
        }
    }
}

/// The shape of a ring, chosen once by [`init`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Single or multiple producers.
    pub kind: Kind,
    /// Number of slots: a power of two, at least 2, at most [`MAX_CAPACITY`].
    pub capacity: u32,
    /// Largest message in bytes (1 ..= [`MAX_SLOT_SIZE`]).
    pub slot_size: u32,
    /// Store and verify a crc32 of each message.
    pub checksum: bool,
}

/// Everything that can go wrong with a ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RingError {
    /// The configuration is not valid; the text says which field.
    InvalidConfig(&'static str),
    /// The memory is smaller than the ring needs.
    Undersized {
        /// Bytes the ring needs.
        need: usize,
        /// Bytes provided.
        have: usize,
    },
    /// The memory is not aligned to [`ALIGN`] bytes.
    Misaligned,
    /// The memory does not hold an initialised ring: wrong magic, unfinished
    /// initialisation, or a header that fails its checksum or consistency check.
    NotARing(&'static str),
    /// The ring was made by a different layout version.
    Version(u32),
    /// The message is longer than a slot.
    TooLarge {
        /// Length of the message.
        len: usize,
        /// Slot size of the ring.
        max: usize,
    },
    /// The ring is full (or, for a timed send, stayed full).
    Full,
    /// The caller's buffer is shorter than the message, which stays in the ring.
    BufferTooSmall {
        /// Length of the message.
        need: usize,
    },
    /// Another live process is the ring's consumer.
    ConsumerBusy {
        /// Its id.
        holder: WriterId,
    },
    /// Every entry of the writer table belongs to a live process.
    WritersFull,
    /// This process's identity (pidfd inode or `/proc/self/stat` start time) could not be read,
    /// so it cannot register in the writer table.
    NoIdentity(std::io::ErrorKind),
    /// A committed message failed its checks (length or crc32) and was
    /// skipped; the ring stays usable.
    Corrupt {
        /// Its position.
        pos: u64,
    },
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingError::InvalidConfig(what) => write!(f, "ring: invalid config: {what}"),
            RingError::Undersized { need, have } => {
                write!(f, "ring: needs {need} bytes, memory has {have}")
            }
            RingError::Misaligned => write!(f, "ring: memory not aligned to {ALIGN} bytes"),
            RingError::NotARing(why) => write!(f, "ring: memory holds no ring: {why}"),
            RingError::Version(v) => write!(f, "ring: layout version {v}, expected {VERSION}"),
            RingError::TooLarge { len, max } => {
                write!(f, "ring: message of {len} bytes exceeds slot size {max}")
            }
            RingError::Full => write!(f, "ring: full"),
            RingError::BufferTooSmall { need } => {
                write!(f, "ring: buffer too small for a {need}-byte message")
            }
            RingError::ConsumerBusy { holder } => {
                write!(f, "ring: writer {holder} is the consumer")
            }
            RingError::WritersFull => {
                write!(
                    f,
                    "ring: all {WRITERS} writer table entries are held by live processes"
                )
            }
            RingError::NoIdentity(e) => write!(f, "ring: cannot read /proc/self/stat: {e}"),
            RingError::Corrupt { pos } => write!(f, "ring: message at position {pos} is corrupt"),
        }
    }
}

impl std::error::Error for RingError {}

/// Alignment the ring's memory must have.
pub const ALIGN: usize = 128;

/// Immutable geometry, written once by [`init`] before `ready` is set and
/// never written again. Attach copies and validates it; afterwards nothing
/// is read from here (a stray write to it cannot make a reader misbehave).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    magic: u64,
    version: u32,
    kind: u32,
    capacity: u32,
    slot_size: u32,
    /// Bytes from one slot to the next: a multiple of 64.
    stride: u32,
    flags: u32,
    /// Offset of slot 0 from the start of the ring.
    slots_offset: u64,
    /// Bytes the ring occupies.
    total_len: u64,
    /// crc32 of the fields above, in little-endian order.
    crc: u32,
    _reserved: u32,
}

impl Geometry {
    fn compute(cfg: &Config) -> Result<Geometry, RingError> {
        if !cfg.capacity.is_power_of_two() || cfg.capacity < 2 || cfg.capacity > MAX_CAPACITY {
            return Err(RingError::InvalidConfig(
                "capacity must be a power of two in 2 ..= 2^30",
            ));
        }
        if cfg.slot_size == 0 || cfg.slot_size > MAX_SLOT_SIZE {
            return Err(RingError::InvalidConfig("slot_size must be in 1 ..= 2^24"));
        }
        let stride = (size_of::<SlotHeader>() + cfg.slot_size as usize).next_multiple_of(64);
        let slots_offset = size_of::<RingHeader>();
        let total = (cfg.capacity as usize)
            .checked_mul(stride)
            .and_then(|s| s.checked_add(slots_offset))
            .and_then(|s| s.checked_add(WRITERS * size_of::<WriterEntry>()))
            .ok_or(RingError::InvalidConfig("ring too large"))?;
        let mut g = Geometry {
            magic: MAGIC,
            version: VERSION,
            kind: cfg.kind as u32,
            capacity: cfg.capacity,
            slot_size: cfg.slot_size,
            stride: u32::try_from(stride)
                .map_err(|_| RingError::InvalidConfig("slot too large"))?,
            flags: if cfg.checksum { FLAG_CRC } else { 0 },
            slots_offset: slots_offset as u64,
            total_len: total as u64,
            crc: 0,
            _reserved: 0,
        };
        g.crc = g.checksum();
        Ok(g)
    }

    fn checksum(&self) -> u32 {
        let mut h = crc32fast::Hasher::new();
        h.update(&self.magic.to_le_bytes());
        for v in [
            self.version,
            self.kind,
            self.capacity,
            self.slot_size,
            self.stride,
            self.flags,
        ] {
            h.update(&v.to_le_bytes());
        }
        h.update(&self.slots_offset.to_le_bytes());
        h.update(&self.total_len.to_le_bytes());
        h.finalize()
    }
}

/// Cache line 0: geometry and the ready word.
#[repr(C, align(128))]
struct Header {
    geo: Geometry,
    /// [`READY`] once initialisation is complete (release store, written
    /// last); anything else means the ring must not be used.
    ready: AtomicU32,
}

/// Cache line 1: written by producers.
#[repr(C, align(128))]
struct ProducerLine {
    /// Next position to reserve. Invariant: every position below `tail` has
    /// been reserved (its slot state moved past `(p, 0)`); `tail` may lag
    /// the last reserved position by any amount after a producer dies, and
    /// producers advance it whenever they find its slot already reserved.
    tail: AtomicU64,
    /// Futex word producers sleep on when the ring is full; the consumer
    /// increments it (then wakes) after releasing a slot, if `space_waiters > 0`.
    space_futex: AtomicU32,
    /// Nonzero while some producer sleeps (or is about to) on
    /// `space_futex`. Producers set it before each sleep; the consumer swaps
    /// it to 0 when it wakes them, so a producer that dies asleep leaves at
    /// most one needless wake behind.
    space_waiters: AtomicU32,
}

/// Cache line 2: written by the consumer.
#[repr(C, align(128))]
struct ConsumerLine {
    /// Next position to consume; written only by the consumer. Invariant:
    /// every position below `head` is consumed or skipped, and `head` is at
    /// most one behind the first slot not yet released (the gap is closed by
    /// the next consumer, see the module documentation).
    head: AtomicU64,
    /// Futex word the consumer sleeps on; producers increment it (then wake)
    /// after a commit, if `data_waiters != 0`.
    data_futex: AtomicU32,
    /// 1 while the consumer sleeps (or is about to) on `data_futex`.
    data_waiters: AtomicU32,
    /// [`WriterId`] of the process that holds the consumer role, 0 if none.
    consumer: AtomicU32,
    /// Slots skipped because their writer died before committing.
    lost: AtomicU64,
    /// Committed messages skipped because they failed their checks.
    corrupt: AtomicU64,
}

#[repr(C)]
struct RingHeader {
    header: Header,
    producers: ProducerLine,
    consumer: ConsumerLine,
}

/// Length and checksum of a slot's message; written by the writer that
/// reserved the slot, read by the consumer after the commit.
#[repr(C)]
#[derive(Clone, Copy)]
struct SlotMeta {
    len: u32,
    crc: u32,
}

/// Start of every slot; the payload follows it.
#[repr(C)]
struct SlotHeader {
    /// `seq << 32 | writer`, see the table in the module documentation.
    /// Invariant: moves only forward through free → reserved → committed →
    /// free-next-lap (or reserved → free-next-lap when skipped).
    state: AtomicU64,
    /// Owned by whoever the state says: the writer while reserved, the
    /// consumer while committed. (Under loom this cell also stands for the
    /// payload, so the model checks the payload accesses too.)
    meta: UnsafeCell<SlotMeta>,
}

const fn pack(seq: u32, writer: u32) -> u64 {
    ((seq as u64) << 32) | writer as u64
}

const fn unpack(state: u64) -> (u32, u32) {
    ((state >> 32) as u32, state as u32)
}

/// Bytes of memory a ring of this shape needs.
pub fn required_size(cfg: &Config) -> Result<usize, RingError> {
    Geometry::compute(cfg).map(|g| g.total_len as usize)
}

/// Lays out a new, empty ring in `len` bytes at `ptr`.
///
/// # Safety
/// `ptr` must be valid for reads and writes of `len` bytes for `'a`, and no
/// one may use the memory as a ring (attach, send, receive) until this
/// returns. The memory may hold anything beforehand.
pub unsafe fn init<'a>(ptr: *mut u8, len: usize, cfg: &Config) -> Result<Ring<'a>, RingError> {
    let geo = Geometry::compute(cfg)?;
    check_memory(ptr, len, geo.total_len as usize)?;
    let h = ptr.cast::<RingHeader>();
    // SAFETY: `check_memory` proved `ptr` non-null, aligned for
    // `RingHeader` and followed by `total_len >= size_of::<RingHeader>()`
    // bytes, valid for writes by the caller's contract; `ptr::write` never
    // reads the (possibly uninitialised) old contents.
    unsafe {
        ptr::addr_of_mut!((*h).header.ready).write(AtomicU32::new(0));
        ptr::addr_of_mut!((*h).header.geo).write(geo);
        ptr::addr_of_mut!((*h).producers).write(ProducerLine {
            tail: AtomicU64::new(0),
            space_futex: AtomicU32::new(0),
            space_waiters: AtomicU32::new(0),
        });
        ptr::addr_of_mut!((*h).consumer).write(ConsumerLine {
            head: AtomicU64::new(0),
            data_futex: AtomicU32::new(0),
            data_waiters: AtomicU32::new(0),
            consumer: AtomicU32::new(0),
            lost: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
        });
    }
    for i in 0..geo.capacity {
        let off = geo.slots_offset as usize + i as usize * geo.stride as usize;
        debug_assert!(off + geo.stride as usize <= len);
        // SAFETY: `off + stride <= total_len <= len`, and `off` is a multiple
        // of 64 from a 128-aligned base, so the slot header fits and is aligned.
        unsafe {
            ptr.add(off).cast::<SlotHeader>().write(SlotHeader {
                state: AtomicU64::new(pack(i, 0)),
                meta: UnsafeCell::new(SlotMeta { len: 0, crc: 0 }),
            });
        }
    }
    let table = geo.slots_offset as usize + geo.capacity as usize * geo.stride as usize;
    for i in 0..WRITERS {
        let off = table + i * size_of::<WriterEntry>();
        debug_assert!(off + size_of::<WriterEntry>() <= geo.total_len as usize);
        // SAFETY: the table lies between the last slot and `total_len <=
        // len`; it starts 64-aligned (after whole strides) and entries are
        // 16 bytes, so each is in bounds and 8-aligned.
        unsafe {
            ptr.add(off).cast::<WriterEntry>().write(WriterEntry {
                owner: AtomicU64::new(0),
                key: AtomicU64::new(0),
            });
        }
    }
    // SAFETY: `ready` was initialised above and is an aligned atomic.
    let ready = unsafe { &(*h).header.ready };
    ready.store(READY, Ordering::Release);
    // SAFETY: fully initialised above; the caller's contract covers `'a`.
    unsafe { attach(ptr, len) }
}

/// Attaches to a ring that [`init`] laid out, possibly in another process.
///
/// Validates the header (magic, ready word, version, checksum, geometry
/// consistent with `len`), so memory that holds anything else gives an error.
///
/// # Safety
/// `ptr` must be valid for reads and writes of `len` bytes for `'a`, and the
/// memory must not be used other than through this module meanwhile (other
/// processes may use it as a ring concurrently).
pub unsafe fn attach<'a>(ptr: *mut u8, len: usize) -> Result<Ring<'a>, RingError> {
    check_memory(ptr, len, size_of::<RingHeader>())?;
    let h = ptr.cast::<RingHeader>();
    // SAFETY: aligned and in bounds (checked above); every bit pattern of an
    // `AtomicU32` is valid, so garbage memory yields a value, not UB.
    let ready = unsafe { &(*h).header.ready };
    // Acquire: pairs with the release store in `init`, so the geometry read
    // below is the one `init` wrote.
    let ready = ready.load(Ordering::Acquire);
    // SAFETY: in bounds and aligned; `Geometry` is integers only, so any
    // bits are a valid value.
    let geo = unsafe { ptr::addr_of!((*h).header.geo).read() };
    if geo.magic != MAGIC {
        return Err(RingError::NotARing("bad magic"));
    }
    if ready != READY {
        return Err(RingError::NotARing("initialisation not finished"));
    }
    if geo.version != VERSION {
        return Err(RingError::Version(geo.version));
    }
    if geo.crc != geo.checksum() {
        return Err(RingError::NotARing("header checksum mismatch"));
    }
    let kind = Kind::from_u32(geo.kind).ok_or(RingError::NotARing("unknown kind"))?;
    let cfg = Config {
        kind,
        capacity: geo.capacity,
        slot_size: geo.slot_size,
        checksum: geo.flags & FLAG_CRC != 0,
    };
    let expect = Geometry::compute(&cfg).map_err(|_| RingError::NotARing("bad geometry"))?;
    if expect != geo {
        return Err(RingError::NotARing("inconsistent geometry"));
    }
    if geo.total_len as usize > len {
        return Err(RingError::Undersized {
            need: geo.total_len as usize,
            have: len,
        });
    }
    Ok(Ring {
        // SAFETY: `check_memory` rejected null.
        base: unsafe { NonNull::new_unchecked(ptr) },
        cfg,
        stride: geo.stride as usize,
        slots_offset: geo.slots_offset as usize,
        _mem: PhantomData,
    })
}

fn check_memory(ptr: *mut u8, len: usize, need: usize) -> Result<(), RingError> {
    if ptr.is_null() || (ptr as usize) % ALIGN != 0 {
        return Err(RingError::Misaligned);
    }
    if len < need {
        return Err(RingError::Undersized { need, have: len });
    }
    Ok(())
}

/// A handle on a ring in shared memory; cheap to copy.
///
/// Holds the geometry validated by [`attach`] (nothing is re-read from the
/// shared header), and a pointer valid for `'a`. Producers use
/// [`Ring::producer`]; the one consumer uses [`Ring::consumer`].
#[derive(Debug, Clone, Copy)]
pub struct Ring<'a> {
    base: NonNull<u8>,
    cfg: Config,
    stride: usize,
    slots_offset: usize,
    _mem: PhantomData<&'a [u8]>,
}

// SAFETY: every shared field is an atomic or is accessed only by the party
// the slot state grants it to, so the handle may be used from any thread.
unsafe impl Send for Ring<'_> {}
// SAFETY: as above.
unsafe impl Sync for Ring<'_> {}

/// Counters of a ring, read without stopping anyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Next position the consumer will read.
    pub head: u64,
    /// Next position producers will reserve (may lag after a producer death).
    pub tail: u64,
    /// Slots skipped because their writer died before committing.
    pub lost_uncommitted: u64,
    /// Committed messages skipped because they failed their checks.
    pub corrupt: u64,
}

/// What the consumer found at `head`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    Empty,
    InFlight { pos: u64, state: u64 },
    Ready { pos: u64 },
}

impl<'a> Ring<'a> {
    /// The ring's shape.
    pub fn config(&self) -> Config {
        self.cfg
    }

    fn header(&self) -> &RingHeader {
        // SAFETY: `attach` validated alignment and size; the header is
        // initialised atomics and integers, valid for `'a`.
        unsafe { &*self.base.as_ptr().cast::<RingHeader>() }
    }

    fn slot_offset(&self, pos: u64) -> usize {
        let idx = (pos & (self.cfg.capacity as u64 - 1)) as usize;
        debug_assert!(idx < self.cfg.capacity as usize);
        self.slots_offset + idx * self.stride
    }

    fn slot(&self, pos: u64) -> &SlotHeader {
        let off = self.slot_offset(pos);
        // SAFETY: `idx < capacity`, so `off + stride <= total_len <= len`
        // (validated by `attach`); slot headers are 64-aligned and were
        // initialised by `init`.
        unsafe { &*self.base.as_ptr().add(off).cast::<SlotHeader>() }
    }

    fn payload(&self, pos: u64) -> *mut u8 {
        let off = self.slot_offset(pos) + size_of::<SlotHeader>();
        debug_assert!(size_of::<SlotHeader>() + self.cfg.slot_size as usize <= self.stride);
        // SAFETY: in bounds: `slot_size` bytes follow the header in the slot.
        unsafe { self.base.as_ptr().add(off) }
    }

    /// Counters and positions.
    pub fn stats(&self) -> Stats {
        let h = self.header();
        Stats {
            head: h.consumer.head.load(Ordering::Relaxed),
            tail: h.producers.tail.load(Ordering::Relaxed),
            lost_uncommitted: h.consumer.lost.load(Ordering::Relaxed),
            corrupt: h.consumer.corrupt.load(Ordering::Relaxed),
        }
    }

    /// A producer registered in the ring's writer table (see *Writer
    /// identity* in the module documentation); dropping it gives the entry
    /// back.
    ///
    /// The handle belongs to this process: a forked child must make its own
    /// (the id is cached, so sending makes no system call).
    pub fn producer(&self) -> Result<Producer<'a>, RingError> {
        let reg = self.register()?;
        Ok(Producer {
            ring: *self,
            id: reg.id,
            _reg: Some(reg),
        })
    }

    /// A producer with an id of the caller's choosing, which the consumer's
    /// predicate must judge (see [`Ring::consumer_with`]); for example a
    /// supervisor's daemon slot and restart generation. Pair it only with a
    /// consumer from [`Ring::consumer_with`]: the writer table knows nothing
    /// of such ids, and [`Ring::consumer`] would judge them dead.
    pub fn producer_as(&self, id: WriterId) -> Producer<'a> {
        Producer {
            ring: *self,
            id,
            _reg: None,
        }
    }

    /// Takes the consumer role for this process, registered in the writer
    /// table, which also judges the writers' liveness.
    ///
    /// Fails with [`RingError::ConsumerBusy`] while another live process
    /// holds the role (this process may take it again); a dead holder's role
    /// is taken over, and the new consumer resumes at the first message not
    /// yet consumed.
    pub fn consumer(&self) -> Result<Consumer<'a>, RingError> {
        let reg = self.register()?;
        let me = reg.id;
        let (pid, key) = (reg.pid, reg.key);
        self.take_role(me, |holder| {
            self.registered_to(holder, pid, key) || self.registered_dead(holder)
        })?;
        Ok(self.new_consumer(me, Judge::Table, Some(reg)))
    }

    /// Takes the consumer role as `me`, an id of the caller's choosing;
    /// `is_dead` judges producers' ids and a previous consumer's.
    pub fn consumer_with(
        &self,
        me: WriterId,
        is_dead: &'a (dyn Fn(WriterId) -> bool + Sync),
    ) -> Result<Consumer<'a>, RingError> {
        self.take_role(me, |holder| holder == me || is_dead(holder))?;
        Ok(self.new_consumer(me, Judge::Caller(is_dead), None))
    }

    /// Moves the consumer role to `me` if it is free or `may_take` says its
    /// holder may be replaced.
    fn take_role(
        &self,
        me: WriterId,
        may_take: impl Fn(WriterId) -> bool,
    ) -> Result<(), RingError> {
        let slot = &self.header().consumer.consumer;
        let mut cur = slot.load(Ordering::Acquire);
        loop {
            if let Some(holder) = WriterId::from_raw(cur) {
                if !may_take(holder) {
                    return Err(RingError::ConsumerBusy { holder });
                }
            }
            match slot.compare_exchange(cur, me.raw(), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(now) => cur = now,
            }
        }
    }

    fn new_consumer(
        &self,
        me: WriterId,
        judge: Judge<'a>,
        reg: Option<Registration<'a>>,
    ) -> Consumer<'a> {
        // A consumer killed while asleep left its waiter flag raised, which
        // would cost producers a needless wake per message: clear it.
        self.header()
            .consumer
            .data_waiters
            .store(0, Ordering::Relaxed);
        Consumer {
            ring: *self,
            me,
            judge,
            stall: None,
            _reg: reg,
        }
    }

    /// Reserves the next position for writer `id`, or reports the ring full.
    /// Reserves the next free slot for `id`, giving up as [`RingError::Full`]
    /// after `max_steps` looks at slots (a bound for a writer that must not
    /// trust the ring: positions and states another process may have
    /// scribbled over).
    fn reserve(&self, id: WriterId, max_steps: u32) -> Result<u64, RingError> {
        let p = &self.header().producers;
        let mut pos = p.tail.load(Ordering::Relaxed);
        for _ in 0..max_steps {
            let slot = self.slot(pos);
            // Acquire: pairs with the consumer's release of this slot, so our
            // payload writes come after its reads of the previous lap.
            let state = slot.state.load(Ordering::Acquire);
            let (seq, writer) = unpack(state);
            let dif = seq.wrapping_sub(pos as u32) as i32;
            if dif == 0 && writer == 0 {
                let mine = pack(pos as u32, id.raw());
                match self.cfg.kind {
                    Kind::Spsc => slot.state.store(mine, Ordering::Relaxed),
                    Kind::Mpsc => {
                        if slot
                            .state
                            .compare_exchange(state, mine, Ordering::Acquire, Ordering::Relaxed)
                            .is_err()
                        {
                            continue;
                        }
                    }
                }
                // Others help if we die before this.
                let _ = p
                    .tail
                    .compare_exchange(pos, pos + 1, Ordering::Relaxed, Ordering::Relaxed);
                return Ok(pos);
            } else if dif < 0 {
                // The slot still holds the previous lap's message.
                return Err(RingError::Full);
            } else {
                // Position `pos` is already reserved: help `tail` past it.
                let _ = p
                    .tail
                    .compare_exchange(pos, pos + 1, Ordering::Relaxed, Ordering::Relaxed);
                pos = p.tail.load(Ordering::Relaxed);
            }
        }
        Err(RingError::Full)
    }

    /// Writes the concatenation of `parts` into the slot of `pos`, reserved
    /// by the caller, and commits it.
    fn write_commit(&self, pos: u64, parts: &[&[u8]]) {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        debug_assert!(total <= self.cfg.slot_size as usize);
        let slot = self.slot(pos);
        let crc = if self.cfg.checksum {
            let mut h = crc32fast::Hasher::new();
            for p in parts {
                h.update(p);
            }
            h.finalize()
        } else {
            0
        };
        let dst = self.payload(pos);
        slot.meta.with_mut(|m| {
            let mut at = 0;
            for p in parts {
                // SAFETY: the slot is reserved by us (state `(pos, id)`), so
                // no one else reads or writes its meta or payload until we
                // commit; the parts total at most `slot_size` bytes (checked
                // by the caller), which fit after the header.
                unsafe { ptr::copy_nonoverlapping(p.as_ptr(), dst.add(at), p.len()) };
                at += p.len();
            }
            // SAFETY: as above: the meta is ours until the commit.
            unsafe {
                m.write(SlotMeta {
                    len: total as u32,
                    crc,
                });
            }
        });
        // Release: publishes meta and payload to the consumer's acquire load.
        slot.state
            .store(pack(pos.wrapping_add(1) as u32, 0), Ordering::Release);
        // SeqCst fence: either we see the consumer's waiter flag, or it sees
        // our commit when it re-checks after raising the flag.
        fence(Ordering::SeqCst);
        let c = &self.header().consumer;
        if c.data_waiters.load(Ordering::Relaxed) != 0 {
            c.data_futex.fetch_add(1, Ordering::Release);
            futex_wake(&c.data_futex, 1);
        }
    }
}

/// How a consumer judges whether a writer is dead.
#[derive(Clone, Copy)]
enum Judge<'a> {
    /// Through the ring's writer table.
    Table,
    /// The caller's predicate.
    Caller(&'a (dyn Fn(WriterId) -> bool + Sync)),
}

/// The sending side of a ring, for one process (see [`Ring::producer`]).
#[derive(Debug)]
pub struct Producer<'a> {
    ring: Ring<'a>,
    id: WriterId,
    _reg: Option<Registration<'a>>,
}

impl Producer<'_> {
    /// The id this producer's reservations carry.
    pub fn id(&self) -> WriterId {
        self.id
    }

    /// Sends `msg` if there is room: no allocation, no system call unless
    /// the consumer sleeps.
    pub fn try_send(&self, msg: &[u8]) -> Result<(), RingError> {
        self.try_send_parts(&[msg])
    }

    /// Sends the concatenation of `parts` as one message if there is room
    /// (a header and a body without copying them together first).
    pub fn try_send_parts(&self, parts: &[&[u8]]) -> Result<(), RingError> {
        self.check_len(parts.iter().map(|p| p.len()).sum())?;
        let pos = self.ring.reserve(self.id, u32::MAX)?;
        self.ring.write_commit(pos, parts);
        Ok(())
    }

    /// [`Producer::try_send_parts`] with a bounded search for a free slot
    /// (twice the capacity): for a writer such as a supervisor that must
    /// not loop on a ring another process damaged. May say
    /// [`RingError::Full`] under heavy contention.
    pub fn try_send_bounded(&self, parts: &[&[u8]]) -> Result<(), RingError> {
        self.check_len(parts.iter().map(|p| p.len()).sum())?;
        let pos = self
            .ring
            .reserve(self.id, self.ring.cfg.capacity.saturating_mul(2))?;
        self.ring.write_commit(pos, parts);
        Ok(())
    }

    /// Sends `msg`, sleeping while the ring is full, at most `timeout`
    /// (`None`: as long as it takes). Returns [`RingError::Full`] on timeout.
    pub fn send_timeout(&self, msg: &[u8], timeout: Option<Duration>) -> Result<(), RingError> {
        self.check_len(msg.len())?;
        let deadline = timeout.map(|t| Instant::now() + t);
        let p = &self.ring.header().producers;
        let spin_until = Instant::now() + SPIN_FOR;
        loop {
            match self.ring.reserve(self.id, u32::MAX) {
                Ok(pos) => {
                    self.ring.write_commit(pos, &[msg]);
                    return Ok(());
                }
                Err(RingError::Full) => {}
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            if now < spin_until {
                spin_loop();
                continue;
            }
            let left = match deadline {
                Some(d) if now >= d => return Err(RingError::Full),
                Some(d) => Some(d - now),
                None => None,
            };
            p.space_waiters.store(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            let v = p.space_futex.load(Ordering::Acquire);
            // Re-check after raising the flag: the consumer may have released
            // a slot before it could see the flag.
            match self.ring.reserve(self.id, u32::MAX) {
                Ok(pos) => {
                    self.ring.write_commit(pos, &[msg]);
                    return Ok(());
                }
                Err(RingError::Full) => {}
                Err(e) => return Err(e),
            }
            // A slot held by a dead writer is freed only by the consumer,
            // which then wakes us; bound the sleep anyway.
            futex_wait(
                &p.space_futex,
                v,
                Some(left.map_or(STALL_SLEEP, |l| l.min(STALL_SLEEP))),
            );
        }
    }

    fn check_len(&self, len: usize) -> Result<(), RingError> {
        let max = self.ring.cfg.slot_size as usize;
        if len > max {
            return Err(RingError::TooLarge { len, max });
        }
        Ok(())
    }
}

/// The receiving side of a ring; at most one per ring at a time.
///
/// Dropping it gives up the role. A process that dies holding it leaves the
/// role to the next [`Ring::consumer`] call, which resumes where it stopped.
pub struct Consumer<'a> {
    ring: Ring<'a>,
    me: WriterId,
    judge: Judge<'a>,
    /// The reserved slot we are waiting on and since when.
    stall: Option<(u64, Instant)>,
    /// Our writer table entry, given back after the role (field drop order).
    _reg: Option<Registration<'a>>,
}

impl fmt::Debug for Consumer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("ring", &self.ring)
            .field("id", &self.me)
            .finish_non_exhaustive()
    }
}

impl Drop for Consumer<'_> {
    fn drop(&mut self) {
        let _ = self.ring.header().consumer.consumer.compare_exchange(
            self.me.raw(),
            0,
            Ordering::Release,
            Ordering::Relaxed,
        );
    }
}

impl<'a> Consumer<'a> {
    /// The ring this consumer reads.
    pub fn ring(&self) -> Ring<'a> {
        self.ring
    }

    /// Looks at `head`, repairing a head left behind by a dead consumer.
    fn probe(&self) -> Result<Probe, RingError> {
        let c = &self.ring.header().consumer;
        let cap = self.ring.cfg.capacity;
        loop {
            let pos = c.head.load(Ordering::Relaxed);
            // Acquire: pairs with the writer's commit (release), so the
            // payload is visible once we see `(pos + 1, 0)`.
            let state = self.ring.slot(pos).state.load(Ordering::Acquire);
            let (seq, writer) = unpack(state);
            let dif = seq.wrapping_sub(pos as u32);
            match (dif, writer) {
                (1, 0) => return Ok(Probe::Ready { pos }),
                (0, 0) => return Ok(Probe::Empty),
                (0, _) => return Ok(Probe::InFlight { pos, state }),
                (d, _) if d == cap || d == cap + 1 => {
                    // Released by a consumer that died before advancing head.
                    c.head.store(pos + 1, Ordering::Release);
                }
                _ => return Err(RingError::NotARing("slot state out of sequence")),
            }
        }
    }

    /// Probes, and skips the head slot if its writer has been reserving it
    /// for longer than the stall check and is dead. Makes a system call only
    /// on that slow path.
    fn probe_skipping(&mut self) -> Result<Probe, RingError> {
        loop {
            let probe = self.probe()?;
            let Probe::InFlight { pos, state } = probe else {
                self.stall = None;
                return Ok(probe);
            };
            let now = Instant::now();
            match self.stall {
                Some((p, since)) if p == pos => {
                    if now.duration_since(since) < STALL_CHECK {
                        return Ok(probe);
                    }
                }
                _ => {
                    self.stall = Some((pos, now));
                    return Ok(probe);
                }
            }
            if !self.writer_dead(state) {
                self.stall = Some((pos, now));
                return Ok(probe);
            }
            self.skip(pos, state);
            self.stall = None;
        }
    }

    /// Whether the writer that reserved a slot now in `state` is dead.
    fn writer_dead(&self, state: u64) -> bool {
        let Some(writer) = WriterId::from_raw(unpack(state).1) else {
            return false;
        };
        match self.judge {
            Judge::Table => self.ring.registered_dead(writer),
            Judge::Caller(is_dead) => is_dead(writer),
        }
    }

    /// Skips the slot of `pos`, still in `state` (reserved by a dead writer).
    fn skip(&self, pos: u64, state: u64) {
        let cap = self.ring.cfg.capacity as u64;
        let slot = self.ring.slot(pos);
        let released = pack(pos.wrapping_add(cap) as u32, 0);
        // Compare-and-swap: if the writer committed after all, keep its message.
        if slot
            .state
            .compare_exchange(state, released, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let c = &self.ring.header().consumer;
            c.lost.fetch_add(1, Ordering::Relaxed);
            c.head.store(pos + 1, Ordering::Release);
            self.wake_producers();
        }
    }

    /// Releases the slot of `pos` (consumed) and advances `head`.
    fn release(&self, pos: u64) {
        let cap = self.ring.cfg.capacity as u64;
        let c = &self.ring.header().consumer;
        // Release: our reads of the payload happen before the next writer's
        // writes. The slot first, then head: see the module documentation.
        self.ring
            .slot(pos)
            .state
            .store(pack(pos.wrapping_add(cap) as u32, 0), Ordering::Release);
        c.head.store(pos + 1, Ordering::Release);
        self.wake_producers();
    }

    fn wake_producers(&self) {
        fence(Ordering::SeqCst);
        let p = &self.ring.header().producers;
        if p.space_waiters.load(Ordering::Relaxed) != 0
            && p.space_waiters.swap(0, Ordering::Relaxed) != 0
        {
            p.space_futex.fetch_add(1, Ordering::Release);
            futex_wake(&p.space_futex, i32::MAX);
        }
    }

    /// Length and payload pointer of the committed message at `pos`, after
    /// checking them; a bad one is skipped and reported.
    fn checked(&self, pos: u64) -> Result<(usize, *const u8), RingError> {
        let slot = self.ring.slot(pos);
        let payload = self.ring.payload(pos);
        let max = self.ring.cfg.slot_size as usize;
        let checksum = self.ring.cfg.checksum;
        let ok = slot.meta.with(|m| {
            // SAFETY: the slot is committed, so the writer is done with it and
            // only we (the consumer) touch it until we release it.
            let m = unsafe { m.read() };
            let len = m.len as usize;
            if len > max {
                return None;
            }
            if checksum {
                // SAFETY: as above; `len <= slot_size` bytes are in the slot.
                let bytes = unsafe { std::slice::from_raw_parts(payload, len) };
                if crc32fast::hash(bytes) != m.crc {
                    return None;
                }
            }
            Some(len)
        });
        match ok {
            Some(len) => Ok((len, payload)),
            None => {
                self.ring
                    .header()
                    .consumer
                    .corrupt
                    .fetch_add(1, Ordering::Relaxed);
                self.release(pos);
                Err(RingError::Corrupt { pos })
            }
        }
    }

    /// Receives one message into `buf` without blocking: `Ok(None)` if the
    /// ring is empty or its next message is still being written. The message
    /// is consumed only after it has been copied into `buf`.
    pub fn try_recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, RingError> {
        let Probe::Ready { pos } = self.probe_skipping()? else {
            return Ok(None);
        };
        let (len, payload) = self.checked(pos)?;
        if buf.len() < len {
            return Err(RingError::BufferTooSmall { need: len });
        }
        self.ring.slot(pos).meta.with(|_| {
            // SAFETY: committed slot, ours until released; `len` checked
            // against the slot size and the buffer.
            unsafe { ptr::copy_nonoverlapping(payload, buf.as_mut_ptr(), len) }
        });
        self.release(pos);
        Ok(Some(len))
    }

    /// Receives one message into `buf`, sleeping until one arrives.
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<usize, RingError> {
        loop {
            if let Some(n) = self.recv_timeout(buf, None)? {
                return Ok(n);
            }
        }
    }

    /// Receives one message into `buf`, sleeping at most `timeout` (`None`:
    /// no limit); `Ok(None)` on timeout.
    pub fn recv_timeout(
        &mut self,
        buf: &mut [u8],
        timeout: Option<Duration>,
    ) -> Result<Option<usize>, RingError> {
        if !self.wait(timeout)? {
            return Ok(None);
        }
        self.try_recv(buf)
    }

    /// Lends the next message without consuming it: `Ok(None)` if there is
    /// none yet. The message is consumed by [`Peeked::commit`]; dropping the
    /// [`Peeked`] leaves it in the ring (for this or the next consumer).
    pub fn peek(&mut self) -> Result<Option<Peeked<'_, 'a>>, RingError> {
        let Probe::Ready { pos } = self.probe_skipping()? else {
            return Ok(None);
        };
        let (len, ptr) = self.checked(pos)?;
        Ok(Some(Peeked {
            consumer: self,
            pos,
            ptr,
            len,
        }))
    }

    /// Waits until a message is ready at the head, at most `timeout`
    /// (`None`: no limit). Spins briefly, then sleeps on the futex; while the
    /// head slot is reserved by a writer it sleeps in short steps and skips
    /// the slot once the writer is found dead. Returns whether a message is
    /// ready.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<bool, RingError> {
        let start = Instant::now();
        let deadline = timeout.map(|t| start + t);
        let ring = self.ring;
        let c = &ring.header().consumer;
        let mut spins = 0u32;
        loop {
            let probe = self.probe_skipping()?;
            if let Probe::Ready { .. } = probe {
                return Ok(true);
            }
            spins = spins.wrapping_add(1);
            if spins % 64 != 0 {
                spin_loop();
                continue;
            }
            let now = Instant::now();
            let left = match deadline {
                Some(d) if now >= d => return Ok(false),
                Some(d) => Some(d - now),
                None => None,
            };
            if now.duration_since(start) < SPIN_FOR {
                spin_loop();
                continue;
            }
            // While a writer holds the head slot, sleep in short steps: if it
            // dies no one will wake us, and the next probe checks on it.
            let sleep = match probe {
                Probe::InFlight { .. } => Some(left.map_or(STALL_SLEEP, |l| l.min(STALL_SLEEP))),
                _ => left,
            };
            c.data_waiters.store(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            let v = c.data_futex.load(Ordering::Acquire);
            if self.probe()? == probe {
                futex_wait(&c.data_futex, v, sleep);
            }
            c.data_waiters.store(0, Ordering::Relaxed);
        }
    }
}

/// A message lent by [`Consumer::peek`]; derefs to its bytes.
pub struct Peeked<'c, 'a> {
    consumer: &'c mut Consumer<'a>,
    pos: u64,
    ptr: *const u8,
    len: usize,
}

impl fmt::Debug for Peeked<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peeked")
            .field("pos", &self.pos)
            .field("len", &self.len)
            .finish()
    }
}

impl Peeked<'_, '_> {
    /// The message's position in the ring (unique, increasing): a handler
    /// that must not act twice on a message can remember it.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Consumes the message.
    pub fn commit(self) {
        self.consumer.release(self.pos);
    }
}

impl Deref for Peeked<'_, '_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the slot is committed and not yet released, so no writer
        // touches it while this borrow (which holds the consumer) lives;
        // `len` was checked against the slot size.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

// A failed wait or wake needs no handling: every waiter re-checks its
// condition after waking, for whatever reason, and bounds its sleep.
#[cfg(not(loom))]
fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let _ = sys::futex::wait(word, expected, timeout);
}

#[cfg(not(loom))]
fn futex_wake(word: &AtomicU32, n: i32) {
    let _ = sys::futex::wake(word, n);
}

#[cfg(loom)]
fn futex_wait(_word: &AtomicU32, _expected: u32, _timeout: Option<Duration>) {
    loom::thread::yield_now();
}

#[cfg(loom)]
fn futex_wake(_word: &AtomicU32, _n: i32) {}

#[cfg(all(test, loom))]
mod loom_tests {
    //! Model checks of the slot-state protocol under every interleaving
    //! (`RUSTFLAGS="--cfg loom" cargo test -p forkroot --release --lib loom`).
    //! They drive the internal steps directly (reserve, commit, probe, skip,
    //! release), so no clock or system call makes the model nondeterministic.

    use super::*;
    use crate::sync::Mem;
    use loom::sync::atomic::AtomicBool;
    use loom::sync::Arc;

    /// Bounded preemptions keep the three-thread models under a minute
    /// (bugs in protocols like this one show up within two preemptions).
    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(2);
        b.check(f);
    }

    fn setup(kind: Kind, capacity: u32) -> (Arc<Mem>, Ring<'static>) {
        let cfg = Config {
            kind,
            capacity,
            slot_size: 4,
            checksum: false,
        };
        let len = required_size(&cfg).unwrap();
        let mem = Arc::new(Mem::new(len, ALIGN));
        // SAFETY: `mem` is kept alive by every thread that uses the ring
        // (each holds a clone of the Arc), and is used only as this ring.
        let ring = unsafe { init(mem.ptr, len, &cfg) }.unwrap();
        (mem, ring)
    }

    /// Writer id `n` (slot `n`, generation 1).
    fn id(n: u16) -> WriterId {
        WriterId::new(n, 1).unwrap()
    }

    /// The consumer's own id.
    const ME: u16 = 100;

    /// One consumer step: receive a ready message, skip a dead writer's
    /// slot, or yield.
    /// A producer thread (writer `id`) sending `[i; 4]` for each `i` in
    /// `values`, yielding while the ring is full.
    fn spawn_sender(
        mem: &Arc<Mem>,
        ring: Ring<'static>,
        id: WriterId,
        values: std::ops::Range<u8>,
    ) -> loom::thread::JoinHandle<()> {
        let mem = mem.clone();
        loom::thread::spawn(move || {
            let _mem = mem;
            let p = ring.producer_as(id);
            for i in values {
                while p.try_send(&[i; 4]) == Err(RingError::Full) {
                    loom::thread::yield_now();
                }
            }
        })
    }

    fn step(c: &Consumer<'_>, out: &mut Vec<[u8; 4]>) {
        match c.probe().unwrap() {
            Probe::Ready { pos } => {
                let (len, ptr) = c.checked(pos).unwrap();
                assert_eq!(len, 4);
                let mut m = [0u8; 4];
                c.ring.slot(pos).meta.with(|_| {
                    // SAFETY: committed slot, ours until released.
                    unsafe { ptr::copy_nonoverlapping(ptr, m.as_mut_ptr(), 4) }
                });
                c.release(pos);
                out.push(m);
            }
            Probe::InFlight { pos, state } if c.writer_dead(state) => c.skip(pos, state),
            _ => loom::thread::yield_now(),
        }
    }

    #[test]
    fn loom_two_producers_one_consumer() {
        model(|| {
            let (mem, ring) = setup(Kind::Mpsc, 2);
            let producers: Vec<_> = (1..=2u8)
                .map(|id| {
                    let mem = mem.clone();
                    loom::thread::spawn(move || {
                        let _mem = mem;
                        ring.producer_as(self::id(id.into()))
                            .try_send(&[id; 4])
                            .unwrap();
                    })
                })
                .collect();
            let never = |_: WriterId| false;
            let c = ring.consumer_with(id(ME), &never).unwrap();
            let mut got = Vec::new();
            while got.len() < 2 {
                step(&c, &mut got);
            }
            got.sort();
            assert_eq!(got, [[1; 4], [2; 4]]);
            for p in producers {
                p.join().unwrap();
            }
        });
    }

    #[test]
    fn loom_spsc_wraps_around_when_full() {
        model(|| {
            let (mem, ring) = setup(Kind::Spsc, 2);
            let producer = spawn_sender(&mem, ring, id(7), 0..3);
            let never = |_: WriterId| false;
            let c = ring.consumer_with(id(ME), &never).unwrap();
            let mut got = Vec::new();
            while got.len() < 3 {
                step(&c, &mut got);
            }
            assert_eq!(got, [[0; 4], [1; 4], [2; 4]]);
            producer.join().unwrap();
        });
    }

    #[test]
    fn loom_dead_writer_is_skipped_not_torn() {
        model(|| {
            let (mem, ring) = setup(Kind::Mpsc, 2);
            let dead = Arc::new(AtomicBool::new(false));
            // Writer 1 reserves a slot and dies before committing.
            let (m1, d1) = (mem.clone(), dead.clone());
            let dying = loom::thread::spawn(move || {
                let _mem = m1;
                ring.reserve(id(1), u32::MAX).unwrap();
                d1.store(true, Ordering::Release);
            });
            // Writer 2 sends normally.
            let m2 = mem.clone();
            let live = loom::thread::spawn(move || {
                let _mem = m2;
                ring.producer_as(id(2)).try_send(&[2; 4]).unwrap();
            });
            let d = dead.clone();
            let is_dead = move |w: WriterId| w == id(1) && d.load(Ordering::Acquire);
            let c = ring.consumer_with(id(ME), &is_dead).unwrap();
            let mut got = Vec::new();
            while got.is_empty() || ring.stats().lost_uncommitted == 0 {
                step(&c, &mut got);
            }
            assert_eq!(got, [[2; 4]]);
            dying.join().unwrap();
            live.join().unwrap();
            // The skipped slot is reusable: a third send fits.
            ring.producer_as(id(3)).try_send(&[3; 4]).unwrap();
            while got.len() < 2 {
                step(&c, &mut got);
            }
            assert_eq!(got, [[2; 4], [3; 4]]);
        });
    }

    #[test]
    fn loom_consumer_dies_between_release_and_head() {
        model(|| {
            let (mem, ring) = setup(Kind::Spsc, 2);
            ring.producer_as(id(1)).try_send(&[1; 4]).unwrap();
            // A consumer releases slot 0 and dies before advancing head.
            ring.slot(0).state.store(pack(2, 0), Ordering::Release);
            let producer = spawn_sender(&mem, ring, id(1), 2..4);
            let never = |_: WriterId| false;
            let c = ring.consumer_with(id(ME), &never).unwrap();
            let mut got = Vec::new();
            while got.len() < 2 {
                step(&c, &mut got);
            }
            assert_eq!(got, [[2; 4], [3; 4]]);
            producer.join().unwrap();
        });
    }
}

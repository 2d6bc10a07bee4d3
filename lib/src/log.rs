//! The flight recorder: a per-process crash-surviving log ring in shared memory.
//!
//! Each region holds one [`FlightLog`] in its `LOG_SIZE` bytes at
//! `LOG_OFFSET` (see [`crate::region`]). The daemon, its transactions and
//! their threads append records to it; the root, which maps the region
//! read-only, forwards new records to its own output ([`drain`]) and puts the
//! last records of a dead process into its crash report ([`tail`]).
//!
//! # Layout
//!
//! ```text
//! offset 0      header (256 bytes: magic, layout, capacity, epoch, next, check)
//! offset 256    slot 0   (256 bytes: commit word + 31 payload words)
//! ...
//! offset 61184  slot 238
//! ```
//!
//! A slot's payload: `check` (hash of the ticket and of the payload words up
//! to the end of the text; words past the text are not stored), realtime timestamp in ns,
//! transaction id (u128, 0 = none), one word packing pid, level, flags and
//! text length, then up to [`TEXT_MAX`] bytes of UTF-8 text.
//!
//! # Write protocol
//!
//! 1. Reserve a ticket `t = next.fetch_add(1)`; the slot is `t % CAPACITY`.
//! 2. Claim the slot by a CAS of its commit word to `2t + 1` (odd: in
//!    progress). A slot that already holds a newer ticket means this record
//!    is obsolete and it is dropped; a slot held in progress by an older
//!    writer is skipped (a new ticket is taken) at most [`MAX_SKIPS`] times,
//!    after which the writer takes it over: the old writer is most likely
//!    dead (SIGKILLed mid-record).
//! 3. Store the payload words (relaxed atomics), then publish with a CAS of
//!    the commit word from `2t + 1` to `2t + 2` (even: complete).
//!
//! No allocation, no lock, and no syscall other than `clock_gettime`, which
//! the vDSO serves.
//!
//! # Read protocol
//!
//! The reader does not trust the area: a crashed or buggy process may have
//! written anything anywhere in it. A record is accepted only if its commit
//! word is even and names a ticket that maps to this slot, the same commit
//! word is read again after the payload (a seqlock), the text length is in
//! range, the level is known, and the payload hash matches. Every loop is
//! bounded by [`CAPACITY`]; every index is checked; nothing panics.

use crate::region::LOG_SIZE;
use crate::sys;
use std::fmt;
use std::sync::atomic::{fence, AtomicPtr, AtomicU64, Ordering};

/// Bytes of one record slot.
pub const RECORD_SIZE: usize = 256;
/// Bytes of the header at the start of the area.
const HEADER_SIZE: usize = 256;
/// Records the ring holds: the area minus the header, in whole slots.
pub const CAPACITY: usize = (LOG_SIZE - HEADER_SIZE) / RECORD_SIZE;
/// Most bytes of text a record holds; longer text is cut at a char boundary.
pub const TEXT_MAX: usize = 208;
/// How many times a writer skips a slot another writer holds in progress
/// before it takes the slot over.
pub const MAX_SKIPS: u32 = 2;

/// Words of a slot after its commit word.
const PAYLOAD_WORDS: usize = RECORD_SIZE / 8 - 1;
/// Index of the first text word inside the payload.
const TEXT_WORD: usize = 5;

const MAGIC: u64 = u64::from_le_bytes(*b"FRKLOG01");
const VERSION: u64 = 1;
const LAYOUT: u64 = VERSION | ((RECORD_SIZE as u64) << 32);
/// Tickets at or above this are never valid; a header whose `next` reaches it
/// is reformatted. Keeps `2t + 2` far from overflow.
const TICKET_LIMIT: u64 = 1 << 62;

/// Severity of a record, as in `tracing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    /// Something failed.
    Error = 1,
    /// Something is wrong but work goes on.
    Warn = 2,
    /// Normal operation.
    Info = 3,
    /// Detail for debugging.
    Debug = 4,
    /// Very fine detail.
    Trace = 5,
}

impl Level {
    fn from_u8(v: u8) -> Option<Level> {
        Some(match v {
            1 => Level::Error,
            2 => Level::Warn,
            3 => Level::Info,
            4 => Level::Debug,
            5 => Level::Trace,
            _ => return None,
        })
    }

    /// The upper-case name, as `tracing` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The header at offset 0 of the area.
#[repr(C)]
#[derive(Debug)]
struct Header {
    /// `MAGIC` once the area is formatted; stored last when formatting.
    magic: AtomicU64,
    /// `LAYOUT`: version in the low half, record size in the high half.
    layout: AtomicU64,
    /// `CAPACITY`.
    capacity: AtomicU64,
    /// Realtime ns when the area was formatted; never 0. Lets a reader's
    /// cursor notice that the log was reformatted and tickets restarted.
    epoch: AtomicU64,
    /// The next ticket to hand out. Only ever incremented (fetch_add) by
    /// writers; tickets below it were reserved, not necessarily written.
    next: AtomicU64,
    /// `hash([magic, layout, capacity, epoch])`: tells a formatted header
    /// from garbage.
    check: AtomicU64,
    _reserved: [AtomicU64; HEADER_SIZE / 8 - 6],
}

/// One record slot.
#[repr(C)]
#[derive(Debug)]
struct Slot {
    /// 0: never written. `2t + 1`: ticket `t` is being written. `2t + 2`:
    /// ticket `t` is complete. Only the writer of ticket `t` moves it from
    /// `2t + 1` to `2t + 2` (CAS); a writer claims the slot by a CAS to its
    /// own odd value, and never moves it to an older ticket.
    commit: AtomicU64,
    /// Payload: `[check, ts_ns, tx_lo, tx_hi, meta, text...]` (see the
    /// module docs). Stored only by the writer that holds the slot (odd
    /// commit word), read racily and validated by readers.
    words: [AtomicU64; PAYLOAD_WORDS],
}

/// The flight recorder laid over the log area of a region.
///
/// Created with [`FlightLog::init`]; written with [`FlightLog::write`] by any
/// number of processes and threads at once; read with [`tail`] and [`drain`].
#[repr(C)]
#[derive(Debug)]
pub struct FlightLog {
    header: Header,
    slots: [Slot; CAPACITY],
}

const _: () = assert!(std::mem::size_of::<Header>() == HEADER_SIZE);
const _: () = assert!(std::mem::size_of::<Slot>() == RECORD_SIZE);
const _: () = assert!(std::mem::size_of::<FlightLog>() <= LOG_SIZE);
const _: () = assert!(std::mem::align_of::<FlightLog>() == 8);
const _: () = assert!((PAYLOAD_WORDS - TEXT_WORD) * 8 == TEXT_MAX);

/// A small word hash (multiply-xorshift); not cryptographic, but any torn
/// record or garbage passes it with probability about 2^-64.
fn hash(seed: u64, words: &[u64]) -> u64 {
    let mut h = seed ^ 0x9e37_79b9_7f4a_7c15;
    for &w in words {
        h = (h ^ w).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 32;
    }
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 29)
}

fn header_check(layout: u64, capacity: u64, epoch: u64) -> u64 {
    hash(0, &[MAGIC, layout, capacity, epoch])
}

/// Packs pid, level, flags and text length into the `meta` word.
fn meta(pid: u32, level: u8, flags: u8, len: u16) -> u64 {
    u64::from(pid) | (u64::from(level) << 32) | (u64::from(flags) << 40) | (u64::from(len) << 48)
}

/// Flag: the text was cut to fit.
const FLAG_TRUNCATED: u8 = 1;

impl FlightLog {
    /// Lays a flight log over `len` bytes at `area` and returns it.
    ///
    /// If the area already holds a valid log (magic, layout, capacity and
    /// header check match), its records are kept and new records follow
    /// them: a restarted daemon appends after its predecessor. Otherwise the
    /// area is formatted: every slot emptied, tickets start at 0, and a new
    /// epoch is stored.
    ///
    /// Returns `None` if `area` is null, not 8-byte aligned, or `len` is less
    /// than `size_of::<FlightLog>()`.
    ///
    /// # Safety
    /// `area` must point to `len` bytes of writable memory (normally the
    /// `LOG_OFFSET..LOG_OFFSET + LOG_SIZE` part of a region) that stay mapped
    /// for the rest of the process's life, and that nothing but flight log
    /// code accesses. No other process or thread may run `init` on the same
    /// area at the same time (a daemon calls it once at start, before it
    /// forks transactions); concurrent [`FlightLog::write`]s are fine.
    pub unsafe fn init(area: *mut u8, len: usize) -> Option<&'static FlightLog> {
        if area.is_null()
            || (area as usize) % std::mem::align_of::<FlightLog>() != 0
            || len < std::mem::size_of::<FlightLog>()
        {
            return None;
        }
        // SAFETY: `area` is non-null, aligned, and (caller's contract) points
        // to enough writable memory that stays mapped forever. `FlightLog` is
        // made only of atomics, for which every bit pattern (including
        // garbage left by a crash) is a valid value.
        let log: &'static FlightLog = unsafe { &*area.cast::<FlightLog>() };
        if !log.header_valid() {
            log.format();
        }
        Some(log)
    }

    fn header_valid(&self) -> bool {
        let h = &self.header;
        let layout = h.layout.load(Ordering::Relaxed);
        let capacity = h.capacity.load(Ordering::Relaxed);
        let epoch = h.epoch.load(Ordering::Relaxed);
        h.magic.load(Ordering::Acquire) == MAGIC
            && layout == LAYOUT
            && capacity == CAPACITY as u64
            && epoch != 0
            && h.check.load(Ordering::Relaxed) == header_check(layout, capacity, epoch)
            && h.next.load(Ordering::Relaxed) < TICKET_LIMIT
    }

    fn format(&self) {
        let h = &self.header;
        h.magic.store(0, Ordering::Relaxed);
        fence(Ordering::Release);
        for slot in &self.slots {
            slot.commit.store(0, Ordering::Relaxed);
            for w in &slot.words {
                w.store(0, Ordering::Relaxed);
            }
        }
        for w in &h._reserved {
            w.store(0, Ordering::Relaxed);
        }
        let epoch = sys::realtime_ns().max(1);
        h.layout.store(LAYOUT, Ordering::Relaxed);
        h.capacity.store(CAPACITY as u64, Ordering::Relaxed);
        h.epoch.store(epoch, Ordering::Relaxed);
        h.next.store(0, Ordering::Relaxed);
        h.check.store(
            header_check(LAYOUT, CAPACITY as u64, epoch),
            Ordering::Relaxed,
        );
        h.magic.store(MAGIC, Ordering::Release);
    }

    /// The next ticket a writer will reserve: every record ever written has
    /// a smaller sequence number.
    pub fn next_seq(&self) -> u64 {
        self.header.next.load(Ordering::Relaxed)
    }

    /// Appends one record and returns its sequence number, or `None` if it
    /// was dropped because newer records had already overwritten its slot
    /// (only possible when this writer stalled for a whole lap of the ring).
    ///
    /// `pid` is the writing process, `tx` its transaction id (0 = none).
    /// Text longer than [`TEXT_MAX`] bytes is cut at a char boundary. No
    /// allocation, no lock; safe from any number of threads and processes
    /// at once, and from a process that is killed at any instruction.
    pub fn write(&self, level: Level, pid: u32, tx: u128, text: &str) -> Option<u64> {
        let ts = sys::realtime_ns();
        let mut len = text.len().min(TEXT_MAX);
        while !text.is_char_boundary(len) {
            len -= 1;
        }
        let flags = if len < text.len() { FLAG_TRUNCATED } else { 0 };
        let mut payload = [0u64; PAYLOAD_WORDS];
        payload[1] = ts;
        payload[2] = tx as u64;
        payload[3] = (tx >> 64) as u64;
        // `len <= TEXT_MAX < u16::MAX`.
        payload[4] = meta(pid, level as u8, flags, len as u16);
        for (i, chunk) in text.as_bytes()[..len].chunks(8).enumerate() {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            payload[TEXT_WORD + i] = u64::from_le_bytes(b);
        }

        let used = TEXT_WORD + len.div_ceil(8);
        let (t, slot) = self.claim()?;
        payload[0] = hash(t, &payload[1..used]);
        for (dst, &src) in slot.words.iter().zip(&payload[..used]) {
            dst.store(src, Ordering::Relaxed);
        }
        // Publish; fails only if a later writer took the slot over, in which
        // case this record is gone (and the reader's hash check rejects any
        // mix of the two).
        slot.commit
            .compare_exchange(2 * t + 1, 2 * t + 2, Ordering::Release, Ordering::Relaxed)
            .ok()
            .map(|_| t)
    }

    /// Reserves a ticket and claims its slot (commit word `2t + 1`).
    fn claim(&self) -> Option<(u64, &Slot)> {
        let mut skips = 0;
        'ticket: loop {
            let t = self.header.next.fetch_add(1, Ordering::Relaxed) % TICKET_LIMIT;
            let slot = &self.slots[(t % CAPACITY as u64) as usize];
            let mut c = slot.commit.load(Ordering::Relaxed);
            // Each failed CAS means another writer moved the word; bounded by
            // the number of concurrent writers in practice, and by a hard
            // limit here so garbage cannot make us spin.
            for _ in 0..64 {
                let owner = c.wrapping_sub(1) / 2;
                if c != 0 && owner >= t && owner < self.header.next.load(Ordering::Relaxed) {
                    // A newer ticket owns the slot: this record is obsolete.
                    // (A ticket never handed out is garbage and is overwritten.)
                    return None;
                }
                if c % 2 == 1 && skips < MAX_SKIPS {
                    // An older writer is in progress here (or died here).
                    skips += 1;
                    continue 'ticket;
                }
                match slot.commit.compare_exchange_weak(
                    c,
                    2 * t + 1,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // Readers must see the odd word before any payload store.
                        fence(Ordering::Release);
                        return Some((t, slot));
                    }
                    Err(now) => c = now,
                }
            }
            return None;
        }
    }
}

/// One validated record, copied out of the ring.
#[derive(Clone)]
pub struct Record {
    seq: u64,
    ts_ns: u64,
    tx: u128,
    pid: u32,
    level: Level,
    truncated: bool,
    len: u16,
    text: [u8; TEXT_MAX],
}

impl Record {
    /// Sequence number (ticket): increases with every record written to
    /// this log since it was formatted.
    pub fn seq(&self) -> u64 {
        self.seq
    }
    /// Realtime timestamp, ns since the Unix epoch.
    pub fn timestamp_ns(&self) -> u64 {
        self.ts_ns
    }
    /// Severity.
    pub fn level(&self) -> Level {
        self.level
    }
    /// The process that wrote it.
    pub fn pid(&self) -> u32 {
        self.pid
    }
    /// Transaction id, 0 if the writer was not in a transaction.
    pub fn tx(&self) -> u128 {
        self.tx
    }
    /// Whether the writer cut the text to fit [`TEXT_MAX`].
    pub fn truncated(&self) -> bool {
        self.truncated
    }
    /// The text: its longest valid UTF-8 prefix (the writer only stores
    /// valid UTF-8, so normally all of it).
    pub fn text(&self) -> &str {
        let bytes = &self.text[..usize::from(self.len).min(TEXT_MAX)];
        match std::str::from_utf8(bytes) {
            Ok(s) => s,
            // `valid_up_to` is a char boundary inside `bytes`, so this is valid.
            Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
        }
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("seq", &self.seq)
            .field("ts_ns", &self.ts_ns)
            .field("level", &self.level)
            .field("pid", &self.pid)
            .field("tx", &self.tx)
            .field("text", &self.text())
            .finish()
    }
}

impl fmt::Display for Record {
    /// `<secs>.<micros> LEVEL pid [tx] text`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.ts_ns / 1_000_000_000;
        let micros = (self.ts_ns % 1_000_000_000) / 1000;
        write!(f, "{secs}.{micros:06} {:5} {}", self.level, self.pid)?;
        if self.tx != 0 {
            write!(f, " tx={:x}", self.tx)?;
        }
        write!(f, " {}", self.text())
    }
}

/// A read-only, untrusted view of a log area.
struct View<'a> {
    area: &'a [u8],
}

impl<'a> View<'a> {
    fn new(area: &'a [u8]) -> Option<View<'a>> {
        if area.len() < std::mem::size_of::<FlightLog>() || area.as_ptr() as usize % 8 != 0 {
            return None;
        }
        Some(View { area })
    }

    /// Reads the aligned word at byte offset `off`, or 0 if out of range.
    fn word(&self, off: usize) -> u64 {
        match self.area.get(off..off + 8) {
            Some(bytes) => {
                debug_assert!(bytes.as_ptr() as usize % 8 == 0);
                // SAFETY: `bytes` is 8 in-bounds bytes of `area` and aligned
                // (area is 8-aligned, `off` is a multiple of 8). A volatile
                // read keeps the compiler from merging or eliding the
                // re-reads the seqlock check relies on, since another process
                // may change this memory at any time.
                unsafe { std::ptr::read_volatile(bytes.as_ptr().cast::<u64>()) }
            }
            None => 0,
        }
    }

    fn epoch(&self) -> Option<u64> {
        let magic = self.word(0);
        let layout = self.word(8);
        let capacity = self.word(16);
        let epoch = self.word(24);
        let check = self.word(40);
        (magic == MAGIC
            && layout == LAYOUT
            && capacity == CAPACITY as u64
            && epoch != 0
            && check == header_check(layout, capacity, epoch))
        .then_some(epoch)
    }

    fn slot_off(i: usize) -> usize {
        HEADER_SIZE + i * RECORD_SIZE
    }

    /// The commit word of slot `i`.
    fn commit(&self, i: usize) -> u64 {
        self.word(Self::slot_off(i))
    }

    /// The ticket a complete commit word names, if it names one for slot `i`.
    fn complete_ticket(c: u64, i: usize) -> Option<u64> {
        if c == 0 || c % 2 == 1 {
            return None;
        }
        let t = c / 2 - 1;
        (t < TICKET_LIMIT && (t % CAPACITY as u64) as usize == i).then_some(t)
    }

    /// The ticket an in-progress commit word names, if any.
    fn pending_ticket(c: u64, i: usize) -> Option<u64> {
        if c % 2 == 0 {
            return None;
        }
        let t = c / 2;
        (t < TICKET_LIMIT && (t % CAPACITY as u64) as usize == i).then_some(t)
    }

    /// Reads and validates the record of ticket `t` in slot `i`.
    fn record(&self, i: usize, t: u64) -> Option<Record> {
        let base = Self::slot_off(i);
        let c1 = self.commit(i);
        if c1 != 2 * t + 2 {
            return None;
        }
        fence(Ordering::Acquire);
        let mut p = [0u64; PAYLOAD_WORDS];
        for (k, w) in p.iter_mut().enumerate() {
            *w = self.word(base + 8 + 8 * k);
        }
        fence(Ordering::Acquire);
        if self.commit(i) != c1 {
            return None;
        }
        let m = p[4];
        let pid = m as u32;
        let level = Level::from_u8((m >> 32) as u8)?;
        let flags = (m >> 40) as u8;
        let len = (m >> 48) as u16;
        if usize::from(len) > TEXT_MAX {
            return None;
        }
        let used = TEXT_WORD + usize::from(len).div_ceil(8);
        if p[0] != hash(t, &p[1..used]) {
            return None;
        }
        let mut text = [0u8; TEXT_MAX];
        for (dst, w) in text.chunks_mut(8).zip(&p[TEXT_WORD..]) {
            dst.copy_from_slice(&w.to_le_bytes());
        }
        Some(Record {
            seq: t,
            ts_ns: p[1],
            tx: u128::from(p[2]) | (u128::from(p[3]) << 64),
            pid,
            level,
            truncated: flags & FLAG_TRUNCATED != 0,
            len,
            text,
        })
    }

    /// Complete-looking slots as `(ticket, slot)`, sorted by ticket.
    /// Returns the number of entries filled in `out`.
    fn scan(&self, out: &mut [(u64, u16); CAPACITY], min: u64) -> usize {
        let mut n = 0;
        for i in 0..CAPACITY {
            if let Some(t) = Self::complete_ticket(self.commit(i), i) {
                if t >= min {
                    // `i < CAPACITY < u16::MAX`; `n <= i < CAPACITY`.
                    out[n] = (t, i as u16);
                    n += 1;
                }
            }
        }
        out[..n].sort_unstable();
        n
    }
}

/// Calls `f` with the last `n` valid records of the log in `area`, oldest
/// first, and returns how many it passed.
///
/// `area` is a log area the caller owns: the root passes a private copy
/// ([`crate::region::RegionSet::log_copy`]), never its mapping of a region
/// another process writes and may truncate. It is not trusted: invalid, torn or in-progress records are
/// skipped, nothing panics, and the work is bounded by [`CAPACITY`] whatever
/// the bytes hold. The header is not needed, so records survive even if a
/// buggy writer smashed it. An area shorter than a [`FlightLog`] or not
/// 8-byte aligned yields nothing.
pub fn tail(area: &[u8], n: usize, mut f: impl FnMut(&Record)) -> usize {
    let Some(view) = View::new(area) else {
        return 0;
    };
    let mut found = [(0u64, 0u16); CAPACITY];
    let count = view.scan(&mut found, 0);
    // Walk back from the newest until `n` records validate...
    let mut start = count;
    let mut valid = 0;
    while start > 0 && valid < n {
        start -= 1;
        let (t, i) = found[start];
        if view.record(usize::from(i), t).is_some() {
            valid += 1;
        }
    }
    // ... then pass them on oldest first.
    let mut passed = 0;
    for &(t, i) in &found[start..count] {
        if passed == n {
            break;
        }
        if let Some(rec) = view.record(usize::from(i), t) {
            f(&rec);
            passed += 1;
        }
    }
    passed
}

/// Where a [`drain`] reader is in a log: the next sequence number it wants
/// and the log's epoch (so a reformatted log restarts the cursor).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    next: u64,
    epoch: u64,
    /// One past the newest ticket (complete or in progress) the last drain
    /// saw. A record still in progress below it has had a whole drain
    /// interval to finish, so its writer is taken as dead.
    horizon: u64,
}

impl Cursor {
    /// A cursor at the start of any log.
    pub const fn new() -> Cursor {
        Cursor {
            next: 0,
            epoch: 0,
            horizon: 0,
        }
    }
    /// The next sequence number this cursor will pass on.
    pub fn next_seq(&self) -> u64 {
        self.next
    }
}

/// What one [`drain`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    /// Records passed to the callback.
    pub records: u64,
    /// Sequence numbers skipped without a readable record: overwritten
    /// before this drain (the reader fell more than [`CAPACITY`] behind),
    /// torn, abandoned by a writer that died mid-record, or reserved and
    /// skipped by a writer (see [`MAX_SKIPS`]).
    pub lost: u64,
}

/// Calls `f` with every valid record after `cursor`, oldest first, moves the
/// cursor past them, and reports how many were passed and how many were lost.
///
/// Like [`tail`], it does not trust `area` and does bounded work. If a
/// record just after the cursor is still being written while newer ones are
/// complete, the drain stops before it, so a live writer is not overtaken;
/// if it is still in progress at the next drain, its writer is taken as dead
/// and the record is counted lost (so one drain interval is the longest a
/// dead writer delays the others' records). If the log was reformatted
/// (new epoch) since the cursor's last drain, the cursor starts over.
pub fn drain(area: &[u8], cursor: &mut Cursor, mut f: impl FnMut(&Record)) -> Drained {
    let mut out = Drained::default();
    let Some(view) = View::new(area) else {
        return out;
    };
    if let Some(epoch) = view.epoch() {
        if epoch != cursor.epoch {
            *cursor = Cursor {
                next: 0,
                epoch,
                horizon: 0,
            };
        }
    }
    let mut pending = [u64::MAX; CAPACITY];
    let mut npending = 0;
    for (i, p) in pending.iter_mut().enumerate() {
        if let Some(t) = View::pending_ticket(view.commit(i), i) {
            if t >= cursor.next {
                *p = t;
                npending += 1;
            }
        }
    }
    pending.sort_unstable();
    let pending = &pending[..npending];

    let mut found = [(0u64, 0u16); CAPACITY];
    let count = view.scan(&mut found, cursor.next);
    let mut expected = cursor.next;
    for &(t, i) in &found[..count] {
        if t > expected {
            // A gap [expected, t): stop before a record still being written,
            // unless it was already there at the last drain.
            if pending
                .iter()
                .any(|&p| p >= expected && p < t && p >= cursor.horizon)
            {
                break;
            }
            out.lost += t - expected;
        }
        match view.record(usize::from(i), t) {
            Some(rec) => {
                f(&rec);
                out.records += 1;
            }
            None => out.lost += 1,
        }
        expected = t + 1;
    }
    cursor.next = cursor.next.max(expected);
    let newest = found[..count]
        .last()
        .map(|&(t, _)| t)
        .into_iter()
        .chain(pending.last().copied())
        .max();
    if let Some(newest) = newest {
        cursor.horizon = cursor.horizon.max(newest + 1);
    }
    out
}

/// The calling process's flight log, if one was installed.
static CURRENT: AtomicPtr<FlightLog> = AtomicPtr::new(std::ptr::null_mut());

/// Makes `log` the calling process's flight log, used by
/// [`crate::trace`] and [`crate::alloc`]. Forked children inherit it.
pub fn install(log: &'static FlightLog) {
    CURRENT.store(std::ptr::from_ref(log).cast_mut(), Ordering::Release);
}

/// The flight log installed with [`install`], if any.
pub fn current() -> Option<&'static FlightLog> {
    let p = CURRENT.load(Ordering::Acquire);
    // SAFETY: the only non-null value ever stored is a `&'static FlightLog`
    // (see `install`), so it is valid for 'static and only shared.
    unsafe { p.as_ref() }
}

//! The key-value table inside the daemon's state: offsets only, no
//! pointers, so a replacement process (mapping the region at another
//! address) finds it as it was.
//!
//! Every change goes through [`Bytes::bytes`], which, in the daemon, is an
//! [`forkroot::checkpoint::Tx`] on an `InPlace` state: the old bytes are
//! journaled before they change, and a write command commits once, after
//! its last change. A crash in between rolls the whole command back on the
//! next attach, so the table is always the one of the last acknowledged
//! write.
//!
//! # Layout (all integers little-endian)
//!
//! ```text
//! 0      512                          512 + 32 * buckets            size
//! | head | table: buckets x Entry     | heap: blocks of 2^class bytes  |
//!
//! head:  magic u64 | version u64 | buckets u64 | epoch u64 | live u64
//!        | used u64 | 0 u64 | heap_start u64 | free[48] u64
//! Entry: hash u64 | block u64 | expire_ms u64 | epoch u64      (32 bytes)
//! block: class u32 | klen u32 | vlen u32 | 0 u32 | key | value
//! free block: class u32 | FREE u32 | next u64 | prev u64       (0: none)
//! ```
//!
//! - An entry is live iff its `epoch` equals the head's `epoch` (>= 1); so a
//!   zeroed table is empty, and FLUSHALL is one increment of `epoch` plus a
//!   reset of the heap: O(1) journal bytes, whatever the number of keys.
//! - The table is open addressing with linear probing; deletion shifts the
//!   following entries back (no tombstones), so a probe always ends at the
//!   first non-live entry. At most 7/8 of the buckets are live, so a probe
//!   always ends.
//! - `live` counts live entries, expired ones included until they are
//!   removed (lazily on access, or by [`Store::sweep`]).
//! - The heap is a buddy allocator: it is tiled at all times by blocks of
//!   2^class bytes, each aligned to its size (relative to `heap_start`);
//!   at creation (and FLUSHALL) by the largest such blocks, all free. A
//!   block comes from its class's free list, else by halving the smallest
//!   larger free block (the upper halves go on their lists). A freed block
//!   merges with its buddy (the other half of the block it was split
//!   from, at `offset ^ 2^class`) while that buddy is free and whole, so
//!   freed neighbours become one block again and a long-running store
//!   does not fragment into small blocks. Free lists are doubly linked, so
//!   taking a buddy out of its list is O(1). A block's second u32 tells
//!   free (`FREE`, more than any key length) from allocated; a buddy's
//!   offset is always the start of a block, because the blocks tile the
//!   heap.
//! - `used` is the bytes of allocated blocks (for INFO and `-OOM`).
//! - Every offset and length read from the area (a block, its class, key
//!   and value lengths, a free-list link) is checked against the
//!   heap before it is used: a damaged table gives [`StoreError::Corrupt`],
//!   never a panic. [`Store::open`] reads only the head (O(1) of the
//!   data, so a restart costs the same with 1 GiB of keys as with none):
//!   an entry is checked when a command touches it, a free block when the
//!   allocator takes or merges it (a free list that loops shows as a block
//!   taken twice, which is then no longer marked free), and
//!   [`Store::scrub`] checks the entries a few thousand buckets at a time
//!   while the daemon serves, so a damaged entry nobody touches is
//!   reported too.

use std::ops::Range;

/// Why a write could not be applied (the whole command is then rolled back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreError {
    /// No room in the table or the heap.
    Oom,
    /// The command changes more than the undo journal holds.
    JournalFull,
    /// INCR of a value that is not a 64-bit decimal integer.
    NotInteger,
    /// INCR past `i64::MAX` or below `i64::MIN`.
    Overflow,
    /// An offset or a length read from the table points outside it: the
    /// table is damaged (the command fails; nothing is read or written
    /// outside the area).
    Corrupt,
}

/// Byte access for a write: reads see the changes made so far; a range
/// must be declared (returned mutable) before it is written.
pub(crate) trait Bytes {
    /// The whole area, as it is now.
    fn data(&self) -> &[u8];
    /// Declares `len` bytes at `offset` and returns them for writing.
    fn bytes(&mut self, offset: usize, len: usize) -> Result<&mut [u8], StoreError>;
}

/// What a SET does with an existing expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ttl {
    /// Removes it (a plain SET).
    Clear,
    /// Keeps it (KEEPTTL, INCR).
    Keep,
    /// Sets it to this realtime in ms.
    At(u64),
}

/// When a SET applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cond {
    /// Always.
    Always,
    /// Only if the key is absent (NX).
    Nx,
    /// Only if the key is present (XX).
    Xx,
}

const MAGIC: u64 = u64::from_le_bytes(*b"frkv-tbl");
/// 2: the buddy heap (1 had a bump pointer and never merged blocks).
const VERSION: u64 = 2;

const H_MAGIC: usize = 0;
const H_VERSION: usize = 8;
const H_BUCKETS: usize = 16;
const H_EPOCH: usize = 24;
const H_LIVE: usize = 32;
const H_USED: usize = 40;
const H_HEAP_START: usize = 56;
const H_FREE: usize = 64;
/// Size classes: blocks of 2^MIN_CLASS ..= 2^(NCLASS - 1) bytes.
const NCLASS: usize = 48;
const MIN_CLASS: usize = 5;
/// Bytes before the table.
const HEAD: usize = 512;
const _: () = assert!(H_FREE + 8 * NCLASS <= HEAD);

const ENTRY: usize = 32;
const E_HASH: usize = 0;
const E_BLOCK: usize = 8;
const E_EXPIRE: usize = 16;
const E_EPOCH: usize = 24;

const BLOCK_HEADER: usize = 16;
/// The second u32 of a free block (a key is at most `u32::MAX / 2` long).
const FREE: u32 = u32::MAX;

/// The smallest area [`Store::open`] accepts.
pub(crate) const MIN_SIZE: usize = 64 * 1024;

/// The geometry of a table, read from its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Store {
    mask: usize,
    table: usize,
    heap_start: usize,
    heap_end: usize,
}

fn rd(d: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[at..at + 8]);
    u64::from_le_bytes(b)
}

fn rd32(d: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&d[at..at + 4]);
    u32::from_le_bytes(b)
}

fn wr(w: &mut dyn Bytes, at: usize, v: u64) -> Result<(), StoreError> {
    w.bytes(at, 8)?.copy_from_slice(&v.to_le_bytes());
    Ok(())
}

/// A fast, non-cryptographic 64-bit hash of a key.
pub(crate) fn hash(key: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = K ^ (key.len() as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let mut chunks = key.chunks_exact(8);
    for c in &mut chunks {
        let mut b = [0u8; 8];
        b.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(b)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 29;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut b = [0u8; 8];
        b[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(b)).wrapping_mul(0x94d0_49bb_1331_11eb);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

/// The class of a block holding `need` bytes.
fn class_of(need: usize) -> usize {
    let c = (usize::BITS - need.saturating_sub(1).leading_zeros()) as usize;
    c.max(MIN_CLASS)
}

/// Parses a value as Redis does for INCR: optional '-', digits, no
/// leading zeros, no sign on zero, within i64.
pub(crate) fn parse_int(v: &[u8]) -> Option<i64> {
    let (neg, digits) = match v.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, v),
    };
    if digits.is_empty() || digits.len() > 19 || (digits[0] == b'0' && (digits.len() > 1 || neg)) {
        return None;
    }
    let mut n: i64 = 0;
    for &c in digits {
        if !c.is_ascii_digit() {
            return None;
        }
        let d = i64::from(c - b'0');
        n = n.checked_mul(10)?;
        n = if neg {
            n.checked_sub(d)?
        } else {
            n.checked_add(d)?
        };
    }
    Some(n)
}

/// `n` in decimal, in the tail of `buf`.
pub(crate) fn format_int(n: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    let mut m = n.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (m % 10) as u8;
        m /= 10;
        if m == 0 {
            break;
        }
    }
    if n < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

/// Where a key was looked for.
enum Probe {
    /// Live at this slot.
    Found(usize),
    /// Absent; this is the first free slot of its probe.
    Free(usize),
}

impl Store {
    /// Opens the table in `w` (the whole area), creating it in a zeroed
    /// area. `Err(why)` if the area holds something else or is damaged.
    pub(crate) fn open(w: &mut dyn Bytes) -> Result<Result<Store, &'static str>, StoreError> {
        let size = w.data().len();
        if size < MIN_SIZE {
            return Ok(Err("the state is too small for the table"));
        }
        let fresh = rd(w.data(), H_MAGIC) == 0;
        if fresh {
            // Fresh: about a quarter of the area for the table.
            let buckets = (size / 64).next_power_of_two() / 2;
            let buckets = if buckets * 64 > size {
                buckets / 2
            } else {
                buckets
            };
            let heap_start = HEAD + buckets * ENTRY;
            let head = w.bytes(0, HEAD)?;
            head.fill(0);
            head[H_MAGIC..H_MAGIC + 8].copy_from_slice(&MAGIC.to_le_bytes());
            head[H_VERSION..H_VERSION + 8].copy_from_slice(&VERSION.to_le_bytes());
            head[H_BUCKETS..H_BUCKETS + 8].copy_from_slice(&(buckets as u64).to_le_bytes());
            head[H_EPOCH..H_EPOCH + 8].copy_from_slice(&1u64.to_le_bytes());
            head[H_HEAP_START..H_HEAP_START + 8]
                .copy_from_slice(&(heap_start as u64).to_le_bytes());
            Store {
                mask: buckets - 1,
                table: HEAD,
                heap_start,
                heap_end: size,
            }
            .tile(w)?;
        }
        let d = w.data();
        if rd(d, H_MAGIC) != MAGIC || rd(d, H_VERSION) != VERSION {
            return Ok(Err("the state holds another layout"));
        }
        let buckets = rd(d, H_BUCKETS) as usize;
        let heap_start = rd(d, H_HEAP_START) as usize;
        let plausible = buckets.is_power_of_two()
            && buckets >= 8
            && heap_start == HEAD + buckets * ENTRY
            && heap_start < size
            && rd(d, H_EPOCH) != 0;
        if !plausible {
            return Ok(Err("the table's head is damaged"));
        }
        let store = Store {
            mask: buckets - 1,
            table: HEAD,
            heap_start,
            heap_end: size,
        };
        let free_heads_inside = (MIN_CLASS..NCLASS).all(|c| {
            let b = rd(d, H_FREE + 8 * c);
            b == 0 || store.free_block(d, b, c).is_ok()
        });
        if rd(d, H_LIVE) > store.max_keys() || !free_heads_inside {
            return Ok(Err("the table's head is damaged"));
        }
        Ok(Ok(store))
    }

    /// One step of the background check: verifies the live entries of the
    /// `count` buckets from `cursor` (their blocks, keys and values lie
    /// inside the heap) and returns the cursor to continue from (0 after
    /// the last bucket). `Err((slot, Corrupt))` names the first damaged
    /// entry; the caller continues after it. Reads only: O(`count`), so
    /// a step between two loop turns never holds up a request.
    pub(crate) fn scrub(
        &self,
        d: &[u8],
        cursor: usize,
        count: usize,
    ) -> Result<usize, (usize, StoreError)> {
        let epoch = rd(d, H_EPOCH);
        let start = cursor.min(self.buckets());
        let end = start.saturating_add(count).min(self.buckets());
        for slot in start..end {
            if self.is_live(d, slot, epoch) {
                self.ranges(d, slot).map_err(|e| (slot, e))?;
            }
        }
        Ok(if end == self.buckets() { 0 } else { end })
    }

    /// The free block of class `c` at offset `b`, checked: inside the heap,
    /// aligned, marked free with that class.
    fn free_block(&self, d: &[u8], b: u64, c: usize) -> Result<usize, StoreError> {
        let block = self.check_block(usize::try_from(b).unwrap_or(usize::MAX), c)?;
        if rd32(d, block) as usize != c || rd32(d, block + 4) != FREE {
            return Err(StoreError::Corrupt);
        }
        Ok(block)
    }

    /// Number of buckets.
    pub(crate) fn buckets(&self) -> usize {
        self.mask + 1
    }

    /// Most live entries the table takes.
    pub(crate) fn max_keys(&self) -> u64 {
        (self.buckets() - self.buckets() / 8) as u64
    }

    /// Keys in the table (expired ones not yet removed included).
    pub(crate) fn len(&self, d: &[u8]) -> u64 {
        rd(d, H_LIVE)
    }

    /// Bytes of allocated heap blocks.
    pub(crate) fn used(&self, d: &[u8]) -> u64 {
        rd(d, H_USED)
    }

    /// Bytes of the heap.
    pub(crate) fn heap_size(&self) -> u64 {
        (self.heap_end - self.heap_start) as u64
    }

    fn entry(&self, slot: usize) -> usize {
        debug_assert!(slot <= self.mask);
        self.table + slot * ENTRY
    }

    fn is_live(&self, d: &[u8], slot: usize, epoch: u64) -> bool {
        rd(d, self.entry(slot) + E_EPOCH) == epoch
    }

    /// `block` if a block of class `c` there lies inside the heap.
    fn check_block(&self, block: usize, c: usize) -> Result<usize, StoreError> {
        let inside = (MIN_CLASS..NCLASS).contains(&c)
            && block >= self.heap_start
            && (block - self.heap_start) % (1 << c) == 0
            && block
                .checked_add(1 << c)
                .is_some_and(|end| end <= self.heap_end);
        if inside {
            Ok(block)
        } else {
            Err(StoreError::Corrupt)
        }
    }

    /// The class of the allocated block at `block`, checked: the block,
    /// its key and its value lie inside the heap.
    fn block_class(&self, d: &[u8], block: usize) -> Result<usize, StoreError> {
        if block < self.heap_start || block > self.heap_end - BLOCK_HEADER {
            return Err(StoreError::Corrupt);
        }
        let c = rd32(d, block) as usize;
        self.check_block(block, c)?;
        let klen = rd32(d, block + 4) as usize;
        let vlen = rd32(d, block + 8) as usize;
        if BLOCK_HEADER + klen + vlen > 1 << c {
            return Err(StoreError::Corrupt);
        }
        Ok(c)
    }

    /// The block of the entry at `slot` and its key's and value's ranges.
    fn ranges(
        &self,
        d: &[u8],
        slot: usize,
    ) -> Result<(usize, Range<usize>, Range<usize>), StoreError> {
        let block = rd(d, self.entry(slot) + E_BLOCK);
        let block = usize::try_from(block).map_err(|_| StoreError::Corrupt)?;
        self.block_class(d, block)?;
        let klen = rd32(d, block + 4) as usize;
        let vlen = rd32(d, block + 8) as usize;
        let k = block + BLOCK_HEADER;
        Ok((block, k..k + klen, k + klen..k + klen + vlen))
    }

    fn probe(&self, d: &[u8], key: &[u8], h: u64) -> Result<Probe, StoreError> {
        let epoch = rd(d, H_EPOCH);
        let mut i = h as usize & self.mask;
        // At most 7/8 of the buckets are live, so this ends within a lap
        // (unless the table is damaged).
        for _ in 0..=self.mask {
            let e = self.entry(i);
            if rd(d, e + E_EPOCH) != epoch {
                return Ok(Probe::Free(i));
            }
            if rd(d, e + E_HASH) == h && d[self.ranges(d, i)?.1] == *key {
                return Ok(Probe::Found(i));
            }
            i = (i + 1) & self.mask;
        }
        Err(StoreError::Corrupt)
    }

    fn expired(&self, d: &[u8], slot: usize, now_ms: u64) -> bool {
        let exp = rd(d, self.entry(slot) + E_EXPIRE);
        exp != 0 && exp <= now_ms
    }

    /// The value of `key`, unless absent or expired.
    pub(crate) fn get<'d>(
        &self,
        d: &'d [u8],
        key: &[u8],
        now_ms: u64,
    ) -> Result<Option<&'d [u8]>, StoreError> {
        Ok(match self.probe(d, key, hash(key))? {
            Probe::Found(slot) if !self.expired(d, slot, now_ms) => {
                Some(&d[self.ranges(d, slot)?.2])
            }
            _ => None,
        })
    }

    /// Whether `key` is in the table but expired (to be removed lazily).
    pub(crate) fn is_expired(&self, d: &[u8], key: &[u8], now_ms: u64) -> Result<bool, StoreError> {
        Ok(
            matches!(self.probe(d, key, hash(key))?, Probe::Found(slot) if self.expired(d, slot, now_ms)),
        )
    }

    /// `None`: absent (or expired); `Some(None)`: no expiry; `Some(Some(ms))`:
    /// expires in `ms`.
    pub(crate) fn ttl_ms(
        &self,
        d: &[u8],
        key: &[u8],
        now_ms: u64,
    ) -> Result<Option<Option<u64>>, StoreError> {
        Ok(match self.probe(d, key, hash(key))? {
            Probe::Found(slot) if !self.expired(d, slot, now_ms) => {
                match rd(d, self.entry(slot) + E_EXPIRE) {
                    0 => Some(None),
                    at => Some(Some(at - now_ms)),
                }
            }
            _ => None,
        })
    }

    /// Tiles the whole heap with the largest aligned blocks, all free
    /// (a new table, FLUSHALL). Writes O(log heap) headers.
    fn tile(&self, w: &mut dyn Bytes) -> Result<(), StoreError> {
        w.bytes(H_FREE, 8 * NCLASS)?.fill(0);
        let len = self.heap_end - self.heap_start;
        let mut rel = 0;
        while len - rel >= 1 << MIN_CLASS {
            // The largest class that is aligned at `rel` and fits.
            let fits = (usize::BITS - 1 - (len - rel).leading_zeros()) as usize;
            let aligned = if rel == 0 {
                NCLASS - 1
            } else {
                rel.trailing_zeros() as usize
            };
            let c = fits.min(aligned).min(NCLASS - 1);
            self.push_free(w, self.heap_start + rel, c)?;
            rel += 1 << c;
        }
        Ok(())
    }

    /// Allocates a block for `need` bytes; returns its offset and class.
    fn alloc(&self, w: &mut dyn Bytes, need: usize) -> Result<(usize, usize), StoreError> {
        let c = class_of(need);
        if c >= NCLASS {
            return Err(StoreError::Oom);
        }
        let d = w.data();
        let Some(mut k) = (c..NCLASS).find(|&k| rd(d, H_FREE + 8 * k) != 0) else {
            return Err(StoreError::Oom);
        };
        let block = self.free_block(d, rd(d, H_FREE + 8 * k), k)?;
        self.unlink(w, block, k)?;
        while k > c {
            k -= 1;
            self.push_free(w, block + (1 << k), k)?;
        }
        // Marked allocated at once (the caller writes the rest of the
        // header), so a merge never takes it for a free buddy.
        let head = w.bytes(block, 8)?;
        head[..4].copy_from_slice(&(c as u32).to_le_bytes());
        head[4..8].fill(0);
        let used = rd(w.data(), H_USED);
        wr(w, H_USED, used + (1 << c))?;
        Ok((block, c))
    }

    /// Puts the block at `block` on the free list of class `c`, first.
    fn push_free(&self, w: &mut dyn Bytes, block: usize, c: usize) -> Result<(), StoreError> {
        let head = rd(w.data(), H_FREE + 8 * c);
        if head != 0 {
            let h = self.free_block(w.data(), head, c)?;
            wr(w, h + 16, block as u64)?;
        }
        let b = w.bytes(block, 24)?;
        b[..4].copy_from_slice(&(c as u32).to_le_bytes());
        b[4..8].copy_from_slice(&FREE.to_le_bytes());
        b[8..16].copy_from_slice(&head.to_le_bytes());
        b[16..24].fill(0);
        wr(w, H_FREE + 8 * c, block as u64)
    }

    /// Takes the free block at `block` (checked by the caller) out of the
    /// list of class `c`.
    fn unlink(&self, w: &mut dyn Bytes, block: usize, c: usize) -> Result<(), StoreError> {
        let d = w.data();
        let (next, prev) = (rd(d, block + 8), rd(d, block + 16));
        if next != 0 {
            let n = self.free_block(d, next, c)?;
            wr(w, n + 16, prev)?;
        }
        if prev != 0 {
            let p = self.free_block(w.data(), prev, c)?;
            wr(w, p + 8, next)?;
        } else {
            if rd(w.data(), H_FREE + 8 * c) != block as u64 {
                return Err(StoreError::Corrupt);
            }
            wr(w, H_FREE + 8 * c, next)?;
        }
        // No longer marked free: a later merge must not find it.
        w.bytes(block + 4, 4)?.fill(0);
        Ok(())
    }

    /// Frees the allocated block at `block` (checked: a block outside the
    /// heap is [`StoreError::Corrupt`]), merging it with its buddy while
    /// the buddy is free and whole.
    fn free(&self, w: &mut dyn Bytes, block: usize) -> Result<(), StoreError> {
        let mut c = self.block_class(w.data(), block)?;
        let used = rd(w.data(), H_USED);
        wr(w, H_USED, used.saturating_sub(1 << c))?;
        let mut rel = block - self.heap_start;
        let len = self.heap_end - self.heap_start;
        while c + 1 < NCLASS {
            let buddy = rel ^ (1 << c);
            if buddy + (1 << c) > len {
                break;
            }
            let at = self.heap_start + buddy;
            let d = w.data();
            if rd32(d, at) as usize != c || rd32(d, at + 4) != FREE {
                break;
            }
            self.unlink(w, at, c)?;
            rel = rel.min(buddy);
            c += 1;
        }
        self.push_free(w, self.heap_start + rel, c)
    }

    /// Bytes of the largest free block (what the largest value that still
    /// fits takes, with its key and the block header).
    pub(crate) fn largest_free(&self, d: &[u8]) -> u64 {
        (MIN_CLASS..NCLASS)
            .rev()
            .find(|&c| rd(d, H_FREE + 8 * c) != 0)
            .map_or(0, |c| 1 << c)
    }

    /// Writes a whole block (header, key, value).
    fn fill_block(
        w: &mut dyn Bytes,
        block: usize,
        class: usize,
        key: &[u8],
        val: &[u8],
    ) -> Result<(), StoreError> {
        let b = w.bytes(block, BLOCK_HEADER + key.len() + val.len())?;
        b[..4].copy_from_slice(&(class as u32).to_le_bytes());
        b[4..8].copy_from_slice(&(key.len() as u32).to_le_bytes());
        b[8..12].copy_from_slice(&(val.len() as u32).to_le_bytes());
        b[12..16].fill(0);
        b[BLOCK_HEADER..BLOCK_HEADER + key.len()].copy_from_slice(key);
        b[BLOCK_HEADER + key.len()..].copy_from_slice(val);
        Ok(())
    }

    /// Sets `key` to `val`. `Ok(false)`: the condition did not hold,
    /// nothing changed.
    pub(crate) fn set(
        &self,
        w: &mut dyn Bytes,
        key: &[u8],
        val: &[u8],
        ttl: Ttl,
        cond: Cond,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        if key.len() > u32::MAX as usize / 2 || val.len() > u32::MAX as usize / 2 {
            return Err(StoreError::Oom);
        }
        let h = hash(key);
        let need = BLOCK_HEADER + key.len() + val.len();
        match self.probe(w.data(), key, h)? {
            Probe::Found(slot) => {
                let d = w.data();
                let expired = self.expired(d, slot, now_ms);
                if (cond == Cond::Nx && !expired) || (cond == Cond::Xx && expired) {
                    return Ok(false);
                }
                let e = self.entry(slot);
                let old_exp = rd(d, e + E_EXPIRE);
                let exp = match ttl {
                    Ttl::Clear => 0,
                    Ttl::Keep if expired => 0,
                    Ttl::Keep => old_exp,
                    Ttl::At(t) => t,
                };
                let (block, _, _) = self.ranges(d, slot)?;
                let class = rd32(d, block) as usize;
                // In place only in a block of the right class: a value that
                // shrank moves to a smaller block, so the big one merges
                // back instead of holding a few bytes.
                if class_of(need) == class {
                    // In place: the new length, then the value after the key.
                    w.bytes(block + 8, 4)?
                        .copy_from_slice(&(val.len() as u32).to_le_bytes());
                    let at = block + BLOCK_HEADER + key.len();
                    w.bytes(at, val.len())?.copy_from_slice(val);
                } else {
                    let (nb, nc) = self.alloc(w, need)?;
                    Self::fill_block(w, nb, nc, key, val)?;
                    wr(w, e + E_BLOCK, nb as u64)?;
                    self.free(w, block)?;
                }
                if exp != old_exp {
                    wr(w, e + E_EXPIRE, exp)?;
                }
                Ok(true)
            }
            Probe::Free(slot) => {
                if cond == Cond::Xx {
                    return Ok(false);
                }
                let d = w.data();
                let live = rd(d, H_LIVE);
                if live >= self.max_keys() {
                    return Err(StoreError::Oom);
                }
                let epoch = rd(d, H_EPOCH);
                let (nb, nc) = self.alloc(w, need)?;
                Self::fill_block(w, nb, nc, key, val)?;
                let exp = match ttl {
                    Ttl::At(t) => t,
                    Ttl::Clear | Ttl::Keep => 0,
                };
                let e = w.bytes(self.entry(slot), ENTRY)?;
                e[E_HASH..E_HASH + 8].copy_from_slice(&h.to_le_bytes());
                e[E_BLOCK..E_BLOCK + 8].copy_from_slice(&(nb as u64).to_le_bytes());
                e[E_EXPIRE..E_EXPIRE + 8].copy_from_slice(&exp.to_le_bytes());
                e[E_EPOCH..E_EPOCH + 8].copy_from_slice(&epoch.to_le_bytes());
                wr(w, H_LIVE, live + 1)?;
                Ok(true)
            }
        }
    }

    /// Removes `key`. Returns whether a live, unexpired key was removed (an
    /// expired one is removed too, but counts as absent).
    pub(crate) fn del(
        &self,
        w: &mut dyn Bytes,
        key: &[u8],
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        match self.probe(w.data(), key, hash(key))? {
            Probe::Found(slot) => {
                let expired = self.expired(w.data(), slot, now_ms);
                self.remove(w, slot)?;
                Ok(!expired)
            }
            Probe::Free(_) => Ok(false),
        }
    }

    /// Frees the block of the live entry at `slot` and takes the entry out
    /// of the table, shifting back the entries of its probe run.
    fn remove(&self, w: &mut dyn Bytes, slot: usize) -> Result<(), StoreError> {
        let d = w.data();
        let epoch = rd(d, H_EPOCH);
        let live = rd(d, H_LIVE);
        let (block, _, _) = self.ranges(d, slot)?;
        self.free(w, block)?;
        wr(w, H_LIVE, live.saturating_sub(1))?;
        let mut hole = slot;
        let mut j = slot;
        for _ in 0..=self.mask {
            j = (j + 1) & self.mask;
            let d = w.data();
            if !self.is_live(d, j, epoch) {
                break;
            }
            let home = rd(d, self.entry(j) + E_HASH) as usize & self.mask;
            // Entry j stays iff its home lies cyclically in (hole, j].
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                let mut moved = [0u8; ENTRY];
                moved.copy_from_slice(&d[self.entry(j)..self.entry(j) + ENTRY]);
                w.bytes(self.entry(hole), ENTRY)?.copy_from_slice(&moved);
                hole = j;
            }
        }
        wr(w, self.entry(hole) + E_EPOCH, 0)
    }

    /// Adds `delta` to the integer value of `key` (0 if absent), keeping
    /// its expiry; returns the new value.
    pub(crate) fn incr_by(
        &self,
        w: &mut dyn Bytes,
        key: &[u8],
        delta: i64,
        now_ms: u64,
    ) -> Result<i64, StoreError> {
        let old = match self.get(w.data(), key, now_ms)? {
            None => 0,
            Some(v) => parse_int(v).ok_or(StoreError::NotInteger)?,
        };
        let new = old.checked_add(delta).ok_or(StoreError::Overflow)?;
        let mut buf = [0u8; 20];
        self.set(
            w,
            key,
            format_int(new, &mut buf),
            Ttl::Keep,
            Cond::Always,
            now_ms,
        )?;
        Ok(new)
    }

    /// The slot of `key` if it is live and not expired.
    fn find(&self, d: &[u8], key: &[u8], now_ms: u64) -> Result<Option<usize>, StoreError> {
        Ok(match self.probe(d, key, hash(key))? {
            Probe::Found(slot) if !self.expired(d, slot, now_ms) => Some(slot),
            _ => None,
        })
    }

    /// When `key` expires: `None` if absent (or expired), `Some(0)` if
    /// never, else `Some(realtime ms)`.
    pub(crate) fn expiry(
        &self,
        d: &[u8],
        key: &[u8],
        now_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        Ok(self
            .find(d, key, now_ms)?
            .map(|slot| rd(d, self.entry(slot) + E_EXPIRE)))
    }

    /// Sets when `key` expires (`0`: never). `Ok(false)`: no such key.
    pub(crate) fn set_expiry(
        &self,
        w: &mut dyn Bytes,
        key: &[u8],
        at_ms: u64,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let Some(slot) = self.find(w.data(), key, now_ms)? else {
            return Ok(false);
        };
        wr(w, self.entry(slot) + E_EXPIRE, at_ms)?;
        Ok(true)
    }

    /// Copies `len` bytes of the heap from `from` to `to` (ranges that do
    /// not overlap), through a small buffer on the stack.
    fn copy(w: &mut dyn Bytes, from: usize, to: usize, len: usize) -> Result<(), StoreError> {
        let mut chunk = [0u8; 4096];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(chunk.len());
            chunk[..n].copy_from_slice(&w.data()[from + done..from + done + n]);
            w.bytes(to + done, n)?.copy_from_slice(&chunk[..n]);
            done += n;
        }
        Ok(())
    }

    /// Makes the value of `key` `len` bytes long, creating the key (empty,
    /// no expiry) if it is absent: a shorter value is cut, a longer one
    /// padded with zero bytes (moved to a larger block if its block is too
    /// small). Returns the offset of the value's bytes, for the caller to
    /// write into with [`Store::write_value`].
    pub(crate) fn resize(
        &self,
        w: &mut dyn Bytes,
        key: &[u8],
        len: usize,
        now_ms: u64,
    ) -> Result<usize, StoreError> {
        if len > u32::MAX as usize / 2 {
            return Err(StoreError::Oom);
        }
        let slot = match self.find(w.data(), key, now_ms)? {
            Some(slot) => slot,
            None => {
                self.set(w, key, b"", Ttl::Clear, Cond::Always, now_ms)?;
                match self.find(w.data(), key, now_ms)? {
                    Some(slot) => slot,
                    None => return Err(StoreError::Corrupt),
                }
            }
        };
        let (block, k, v) = self.ranges(w.data(), slot)?;
        let class = rd32(w.data(), block) as usize;
        let need = BLOCK_HEADER + k.len() + len;
        let old = v.len();
        let value = if need <= 1 << class {
            w.bytes(block + 8, 4)?
                .copy_from_slice(&(len as u32).to_le_bytes());
            v.start
        } else {
            let (nb, nc) = self.alloc(w, need)?;
            let head = w.bytes(nb, BLOCK_HEADER)?;
            head[..4].copy_from_slice(&(nc as u32).to_le_bytes());
            head[4..8].copy_from_slice(&(k.len() as u32).to_le_bytes());
            head[8..12].copy_from_slice(&(len as u32).to_le_bytes());
            head[12..16].fill(0);
            let keep = old.min(len);
            Self::copy(w, k.start, nb + BLOCK_HEADER, k.len() + keep)?;
            wr(w, self.entry(slot) + E_BLOCK, nb as u64)?;
            self.free(w, block)?;
            nb + BLOCK_HEADER + k.len()
        };
        if len > old {
            w.bytes(value + old, len - old)?.fill(0);
        }
        Ok(value)
    }

    /// Writes `bytes` at `at` in the value that [`Store::resize`] placed at
    /// `value`.
    pub(crate) fn write_value(
        w: &mut dyn Bytes,
        value: usize,
        at: usize,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        w.bytes(value + at, bytes.len())?.copy_from_slice(bytes);
        Ok(())
    }

    /// Renames `from` to `to`, keeping its value and expiry; an existing
    /// `to` is replaced unless `nx`. `Ok(None)`: no key `from`;
    /// `Ok(Some(false))`: `nx` and `to` exists.
    pub(crate) fn rename(
        &self,
        w: &mut dyn Bytes,
        from: &[u8],
        to: &[u8],
        nx: bool,
        now_ms: u64,
    ) -> Result<Option<bool>, StoreError> {
        if self.find(w.data(), from, now_ms)?.is_none() {
            return Ok(None);
        }
        if from == to {
            return Ok(Some(!nx));
        }
        if nx && self.find(w.data(), to, now_ms)?.is_some() {
            return Ok(Some(false));
        }
        // Removes `to` (an expired one too), shifting entries: look again.
        self.del(w, to, now_ms)?;
        let Some(src) = self.find(w.data(), from, now_ms)? else {
            return Err(StoreError::Corrupt);
        };
        let d = w.data();
        let exp = rd(d, self.entry(src) + E_EXPIRE);
        let (_, _, v) = self.ranges(d, src)?;
        let (nb, nc) = self.alloc(w, BLOCK_HEADER + to.len() + v.len())?;
        let head = w.bytes(nb, BLOCK_HEADER + to.len())?;
        head[..4].copy_from_slice(&(nc as u32).to_le_bytes());
        head[4..8].copy_from_slice(&(to.len() as u32).to_le_bytes());
        head[8..12].copy_from_slice(&(v.len() as u32).to_le_bytes());
        head[12..16].fill(0);
        head[BLOCK_HEADER..].copy_from_slice(to);
        Self::copy(w, v.start, nb + BLOCK_HEADER + to.len(), v.len())?;
        let Probe::Free(slot) = self.probe(w.data(), to, hash(to))? else {
            return Err(StoreError::Corrupt);
        };
        // Filling a free slot moves no other entry: `src` is still there.
        let d = w.data();
        let (epoch, live) = (rd(d, H_EPOCH), rd(d, H_LIVE));
        let e = w.bytes(self.entry(slot), ENTRY)?;
        e[E_HASH..E_HASH + 8].copy_from_slice(&hash(to).to_le_bytes());
        e[E_BLOCK..E_BLOCK + 8].copy_from_slice(&(nb as u64).to_le_bytes());
        e[E_EXPIRE..E_EXPIRE + 8].copy_from_slice(&exp.to_le_bytes());
        e[E_EPOCH..E_EPOCH + 8].copy_from_slice(&epoch.to_le_bytes());
        wr(w, H_LIVE, live + 1)?;
        self.remove(w, src)?;
        Ok(Some(true))
    }

    /// The live, unexpired key at the first such slot from `start` on
    /// (cyclically), if any.
    pub(crate) fn key_from<'d>(
        &self,
        d: &'d [u8],
        start: usize,
        now_ms: u64,
    ) -> Result<Option<&'d [u8]>, StoreError> {
        let epoch = rd(d, H_EPOCH);
        for i in 0..=self.mask {
            let slot = (start + i) & self.mask;
            if self.is_live(d, slot, epoch) && !self.expired(d, slot, now_ms) {
                return Ok(Some(&d[self.ranges(d, slot)?.1]));
            }
        }
        Ok(None)
    }

    /// How many buckets from `cursor` a SCAN step covers to report about
    /// `keys` keys: the buckets up to the one where `keys` live entries
    /// were seen, at most `max` (a sparse table is not walked whole in
    /// one step, nor in `buckets / keys` round trips).
    pub(crate) fn span(&self, d: &[u8], cursor: usize, keys: usize, max: usize) -> usize {
        let epoch = rd(d, H_EPOCH);
        let end = cursor.saturating_add(max).min(self.buckets());
        let mut seen = 0;
        for slot in cursor..end {
            seen += usize::from(self.is_live(d, slot, epoch));
            if seen >= keys {
                return slot + 1 - cursor;
            }
        }
        end.saturating_sub(cursor).max(1)
    }

    /// SCAN's step: calls `f` with each live, unexpired key whose home
    /// bucket is in `cursor..cursor + count`; returns the next cursor (0
    /// once every bucket was covered).
    ///
    /// A key is reported when its *home* bucket is scanned, wherever
    /// probing placed it: a deletion shifts entries to earlier slots, but
    /// never changes a key's home, so a key present for a whole scan is
    /// reported exactly once. Its entry lies in the run of live slots that
    /// starts at its home, so the walk goes past the last home bucket to
    /// the end of that run. The table never grows or shrinks (no rehash),
    /// so a cursor stays valid for the life of the table.
    pub(crate) fn scan<'d>(
        &self,
        d: &'d [u8],
        cursor: usize,
        count: usize,
        now_ms: u64,
        f: &mut dyn FnMut(&'d [u8]),
    ) -> Result<usize, StoreError> {
        let buckets = self.buckets();
        if cursor >= buckets {
            return Ok(0);
        }
        let end = cursor.saturating_add(count).min(buckets);
        let epoch = rd(d, H_EPOCH);
        let mut i = cursor;
        // At most one lap past the start (a damaged table has no free slot).
        while i < cursor + buckets {
            let slot = i & self.mask;
            if !self.is_live(d, slot, epoch) {
                if i >= end {
                    break;
                }
            } else {
                let home = rd(d, self.entry(slot) + E_HASH) as usize & self.mask;
                if (cursor..end).contains(&home) && !self.expired(d, slot, now_ms) {
                    f(&d[self.ranges(d, slot)?.1]);
                }
            }
            i += 1;
        }
        Ok(if end == buckets { 0 } else { end })
    }

    /// Removes every key.
    pub(crate) fn flush(&self, w: &mut dyn Bytes) -> Result<(), StoreError> {
        let epoch = rd(w.data(), H_EPOCH);
        wr(w, H_EPOCH, epoch + 1)?;
        wr(w, H_LIVE, 0)?;
        wr(w, H_USED, 0)?;
        self.tile(w)
    }

    /// The first slot among the `count` from `cursor` (cyclically) that
    /// holds an expired key, if any: a read-only look, so a sweep opens a
    /// transaction only when it has something to remove.
    pub(crate) fn first_expired(
        &self,
        d: &[u8],
        cursor: usize,
        count: usize,
        now_ms: u64,
    ) -> Option<usize> {
        let epoch = rd(d, H_EPOCH);
        (0..count.min(self.buckets()))
            .map(|i| (cursor + i) & self.mask)
            .find(|&slot| self.is_live(d, slot, epoch) && self.expired(d, slot, now_ms))
    }

    /// Removes expired keys among the `count` buckets from `cursor`, at
    /// most `max` of them (so the transaction's journal stays small);
    /// returns the cursor to continue from and the keys removed.
    pub(crate) fn sweep(
        &self,
        w: &mut dyn Bytes,
        cursor: usize,
        count: usize,
        max: u64,
        now_ms: u64,
    ) -> Result<(usize, u64), StoreError> {
        let epoch = rd(w.data(), H_EPOCH);
        let mut slot = cursor & self.mask;
        let mut removed = 0;
        let mut left = count;
        while left > 0 && removed < max {
            let d = w.data();
            if self.is_live(d, slot, epoch) && self.expired(d, slot, now_ms) {
                // Another entry may shift into this slot: look at it again.
                self.remove(w, slot)?;
                removed += 1;
            } else {
                slot = (slot + 1) & self.mask;
            }
            left -= 1;
        }
        Ok((slot, removed))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A plain byte area (no journal): changes apply at once.
    pub(crate) struct Plain(pub(crate) Vec<u8>);

    impl Bytes for Plain {
        fn data(&self) -> &[u8] {
            &self.0
        }
        fn bytes(&mut self, offset: usize, len: usize) -> Result<&mut [u8], StoreError> {
            Ok(&mut self.0[offset..offset + len])
        }
    }

    /// Points the block offset of the live entry of `key` in the table
    /// `d` at `block` (damage, as a stray write or a bad disk would do).
    pub(crate) fn damage_entry(d: &mut [u8], key: &[u8], block: u64) {
        let s = Store::open(&mut Plain(d.to_vec())).unwrap().unwrap();
        let Ok(Probe::Found(slot)) = s.probe(d, key, hash(key)) else {
            panic!("{key:?} is not in the table");
        };
        let at = s.entry(slot) + E_BLOCK;
        d[at..at + 8].copy_from_slice(&block.to_le_bytes());
    }

    fn fresh(size: usize) -> (Plain, Store) {
        let mut p = Plain(vec![0; size]);
        let s = Store::open(&mut p).unwrap().unwrap();
        (p, s)
    }

    fn set(s: &Store, p: &mut Plain, k: &str, v: &str) -> Result<bool, StoreError> {
        s.set(
            p,
            k.as_bytes(),
            v.as_bytes(),
            Ttl::Clear,
            Cond::Always,
            1000,
        )
    }

    fn get<'a>(s: &Store, p: &'a Plain, k: &str) -> Option<&'a [u8]> {
        s.get(&p.0, k.as_bytes(), 1000).unwrap()
    }

    #[test]
    fn set_get_overwrite_del() {
        let (mut p, s) = fresh(1 << 20);
        assert_eq!(get(&s, &p, "a"), None);
        assert!(set(&s, &mut p, "a", "1").unwrap());
        assert_eq!(get(&s, &p, "a"), Some(&b"1"[..]));
        // Grows out of its block, then shrinks back in place.
        let long = "x".repeat(500);
        set(&s, &mut p, "a", &long).unwrap();
        assert_eq!(get(&s, &p, "a"), Some(long.as_bytes()));
        set(&s, &mut p, "a", "").unwrap();
        assert_eq!(get(&s, &p, "a"), Some(&b""[..]));
        assert_eq!(s.len(&p.0), 1);
        assert!(s.del(&mut p, b"a", 1000).unwrap());
        assert!(!s.del(&mut p, b"a", 1000).unwrap());
        assert_eq!(get(&s, &p, "a"), None);
        assert_eq!(s.len(&p.0), 0);
        assert_eq!(s.used(&p.0), 0);
    }

    #[test]
    fn reopen_finds_the_same_table() {
        let (mut p, s) = fresh(1 << 20);
        set(&s, &mut p, "k", "v").unwrap();
        let again = Store::open(&mut p).unwrap().unwrap();
        assert_eq!(again, s);
        assert_eq!(get(&again, &p, "k"), Some(&b"v"[..]));
    }

    #[test]
    fn foreign_bytes_are_refused() {
        let mut p = Plain(vec![7; 1 << 20]);
        assert!(Store::open(&mut p).unwrap().is_err());
        let mut small = Plain(vec![0; 1024]);
        assert!(Store::open(&mut small).unwrap().is_err());
    }

    #[test]
    fn conditions_and_expiry() {
        let (mut p, s) = fresh(1 << 20);
        let k = b"k";
        assert!(!s.set(&mut p, k, b"1", Ttl::Clear, Cond::Xx, 0).unwrap());
        assert!(s.set(&mut p, k, b"1", Ttl::At(2000), Cond::Nx, 0).unwrap());
        assert!(!s.set(&mut p, k, b"2", Ttl::Clear, Cond::Nx, 0).unwrap());
        assert_eq!(s.ttl_ms(&p.0, k, 500).unwrap(), Some(Some(1500)));
        // INCR keeps the expiry; a plain SET clears it.
        s.set(&mut p, k, b"5", Ttl::Keep, Cond::Xx, 0).unwrap();
        assert_eq!(s.incr_by(&mut p, k, 2, 100).unwrap(), 7);
        assert_eq!(s.ttl_ms(&p.0, k, 100).unwrap(), Some(Some(1900)));
        assert_eq!(s.get(&p.0, k, 1999).unwrap(), Some(&b"7"[..]));
        assert_eq!(s.get(&p.0, k, 2000).unwrap(), None);
        assert!(s.is_expired(&p.0, k, 2000).unwrap());
        // Expired: NX applies, XX does not.
        assert!(!s.set(&mut p, k, b"x", Ttl::Clear, Cond::Xx, 2000).unwrap());
        assert!(s.set(&mut p, k, b"y", Ttl::Keep, Cond::Nx, 2000).unwrap());
        assert_eq!(s.ttl_ms(&p.0, k, 3000).unwrap(), Some(None));
        // An expired key deletes as absent.
        s.set(&mut p, b"e", b"1", Ttl::At(10), Cond::Always, 0)
            .unwrap();
        assert!(!s.del(&mut p, b"e", 10).unwrap());
        assert_eq!(s.len(&p.0), 1);
    }

    #[test]
    fn sweep_removes_only_expired_keys() {
        let (mut p, s) = fresh(1 << 20);
        for i in 0..200 {
            let k = format!("k{i}");
            let ttl = if i % 2 == 0 { Ttl::At(50) } else { Ttl::Clear };
            s.set(&mut p, k.as_bytes(), b"v", ttl, Cond::Always, 0)
                .unwrap();
        }
        let mut cursor = 0;
        let mut removed = 0;
        for _ in 0..s.buckets() / 64 + 2 {
            let (c, r) = s.sweep(&mut p, cursor, 64, u64::MAX, 100).unwrap();
            cursor = c;
            removed += r;
        }
        assert_eq!(removed, 100);
        assert_eq!(s.len(&p.0), 100);
        for i in 0..200 {
            let k = format!("k{i}");
            assert_eq!(
                s.get(&p.0, k.as_bytes(), 100).unwrap().is_some(),
                i % 2 == 1,
                "{k}"
            );
        }
    }

    #[test]
    fn expiry_resize_and_rename() {
        let (mut p, s) = fresh(1 << 20);
        assert_eq!(s.expiry(&p.0, b"k", 0).unwrap(), None);
        assert!(!s.set_expiry(&mut p, b"k", 500, 0).unwrap());
        set(&s, &mut p, "k", "abc").unwrap();
        assert_eq!(s.expiry(&p.0, b"k", 0).unwrap(), Some(0));
        assert!(s.set_expiry(&mut p, b"k", 5000, 0).unwrap());
        assert_eq!(s.expiry(&p.0, b"k", 0).unwrap(), Some(5000));
        // Grow within the block, then past it (moved), then shrink.
        let at = s.resize(&mut p, b"k", 5, 0).unwrap();
        Store::write_value(&mut p, at, 3, b"de").unwrap();
        assert_eq!(get(&s, &p, "k"), Some(&b"abcde"[..]));
        let at = s.resize(&mut p, b"k", 3000, 0).unwrap();
        Store::write_value(&mut p, at, 2999, b"z").unwrap();
        let v = get(&s, &p, "k").unwrap();
        assert_eq!(
            (&v[..5], v[5], v[2999], v.len()),
            (&b"abcde"[..], 0, b'z', 3000)
        );
        s.resize(&mut p, b"k", 2, 0).unwrap();
        assert_eq!(get(&s, &p, "k"), Some(&b"ab"[..]));
        assert_eq!(s.expiry(&p.0, b"k", 0).unwrap(), Some(5000));
        // A new key.
        s.resize(&mut p, b"new", 2, 0).unwrap();
        assert_eq!(get(&s, &p, "new"), Some(&[0u8, 0][..]));
        // Rename keeps value and expiry, replaces the target unless NX.
        assert_eq!(s.rename(&mut p, b"nope", b"x", false, 0).unwrap(), None);
        assert_eq!(
            s.rename(&mut p, b"k", b"new", true, 0).unwrap(),
            Some(false)
        );
        assert_eq!(
            s.rename(&mut p, b"k", b"new", false, 0).unwrap(),
            Some(true)
        );
        assert_eq!(get(&s, &p, "k"), None);
        assert_eq!(get(&s, &p, "new"), Some(&b"ab"[..]));
        assert_eq!(s.expiry(&p.0, b"new", 0).unwrap(), Some(5000));
        assert_eq!(s.len(&p.0), 1);
        assert_eq!(
            s.rename(&mut p, b"new", b"new", false, 0).unwrap(),
            Some(true)
        );
        assert_eq!(s.key_from(&p.0, 12345, 0).unwrap(), Some(&b"new"[..]));
    }

    #[test]
    fn a_scan_reports_every_key_present_throughout_once_despite_deletions() {
        // A small table at its load limit: long runs that wrap around.
        let (mut p, s) = fresh(MIN_SIZE);
        let n = s.max_keys() as usize;
        for i in 0..n {
            set(&s, &mut p, &format!("k{i}"), "v").unwrap();
        }
        // Between the steps, delete every key that was already reported
        // once its step is done (entries shift back past the cursor).
        let mut seen = std::collections::HashMap::new();
        let mut cursor = 0;
        let mut deleted = std::collections::HashSet::new();
        loop {
            let mut got = Vec::new();
            cursor = s
                .scan(&p.0, cursor, 7, 1000, &mut |k| got.push(k.to_vec()))
                .unwrap();
            for k in got {
                *seen.entry(k.clone()).or_insert(0) += 1;
                if k.len() % 2 == 0 {
                    s.del(&mut p, &k, 1000).unwrap();
                    deleted.insert(k);
                }
            }
            if cursor == 0 {
                break;
            }
        }
        assert_eq!(seen.len(), n);
        assert!(seen.values().all(|&c| c == 1));
        assert!(!deleted.is_empty());
    }

    #[test]
    fn incr_rules() {
        let (mut p, s) = fresh(1 << 20);
        assert_eq!(s.incr_by(&mut p, b"n", 1, 0).unwrap(), 1);
        assert_eq!(s.incr_by(&mut p, b"n", -5, 0).unwrap(), -4);
        set(&s, &mut p, "t", "abc").unwrap();
        assert_eq!(s.incr_by(&mut p, b"t", 1, 0), Err(StoreError::NotInteger));
        set(&s, &mut p, "m", &i64::MAX.to_string()).unwrap();
        assert_eq!(s.incr_by(&mut p, b"m", 1, 0), Err(StoreError::Overflow));
        for bad in [
            "",
            "-",
            "+1",
            "01",
            "-0",
            " 1",
            "1 ",
            "99999999999999999999",
        ] {
            assert_eq!(parse_int(bad.as_bytes()), None, "{bad:?}");
        }
        for good in [0, 1, -1, i64::MAX, i64::MIN, 1234567] {
            assert_eq!(parse_int(good.to_string().as_bytes()), Some(good));
            let mut b = [0; 20];
            assert_eq!(format_int(good, &mut b), good.to_string().as_bytes());
        }
    }

    #[test]
    fn probing_and_backward_shift_deletion_under_collisions() {
        // Many keys in a small table: long probe runs that wrap around.
        let (mut p, s) = fresh(MIN_SIZE);
        let n = s.max_keys() as usize;
        let keys: Vec<String> = (0..n).map(|i| format!("{i}")).collect();
        for k in &keys {
            set(&s, &mut p, k, k).unwrap();
        }
        assert_eq!(s.len(&p.0), n as u64);
        // The table is at its load limit.
        assert_eq!(set(&s, &mut p, "one-more", "x"), Err(StoreError::Oom));
        // Delete every third key; every other key is still found.
        for k in keys.iter().step_by(3) {
            assert!(s.del(&mut p, k.as_bytes(), 0).unwrap());
        }
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(get(&s, &p, k).is_some(), i % 3 != 0, "{k}");
        }
        // And they can be set again.
        for k in keys.iter().step_by(3) {
            set(&s, &mut p, k, "again").unwrap();
        }
        for k in keys.iter().step_by(3) {
            assert_eq!(get(&s, &p, k), Some(&b"again"[..]));
        }
    }

    #[test]
    fn a_full_heap_is_oom_and_free_blocks_are_reused_and_split() {
        let (mut p, s) = fresh(MIN_SIZE);
        let big = "v".repeat(4000);
        let mut n = 0;
        while set(&s, &mut p, &format!("k{n}"), &big).is_ok() {
            n += 1;
        }
        assert!(n > 0 && (n as u64) < s.max_keys());
        assert_eq!(set(&s, &mut p, "more", &big), Err(StoreError::Oom));
        let used = s.used(&p.0);
        // Free one big block: many small values fit, by splitting it.
        assert!(s.del(&mut p, b"k0", 0).unwrap());
        for i in 0..100 {
            set(&s, &mut p, &format!("s{i}"), "x").unwrap();
        }
        assert!(s.used(&p.0) < used);
        for i in 0..100 {
            assert_eq!(get(&s, &p, &format!("s{i}")), Some(&b"x"[..]));
        }
        for i in 1..n {
            assert_eq!(get(&s, &p, &format!("k{i}")), Some(big.as_bytes()));
        }
    }

    #[test]
    fn flush_empties_in_constant_journal_space() {
        let (mut p, s) = fresh(1 << 20);
        for i in 0..1000 {
            set(&s, &mut p, &format!("k{i}"), "v").unwrap();
        }
        s.flush(&mut p).unwrap();
        assert_eq!(s.len(&p.0), 0);
        assert_eq!(s.used(&p.0), 0);
        assert_eq!(get(&s, &p, "k1"), None);
        set(&s, &mut p, "k1", "new").unwrap();
        assert_eq!(get(&s, &p, "k1"), Some(&b"new"[..]));
        assert_eq!(s.len(&p.0), 1);
    }

    #[test]
    fn a_damaged_entry_is_an_error_not_a_panic() {
        let (mut p, s) = fresh(1 << 20);
        set(&s, &mut p, "a", "1").unwrap();
        s.set(&mut p, b"t", b"1", Ttl::At(10), Cond::Always, 0)
            .unwrap();
        let heap_end = p.0.len() as u64;
        for bad in [
            u64::MAX,
            heap_end,
            heap_end - 8,
            8,
            s.heap_start as u64 - 16,
        ] {
            let mut q = Plain(p.0.clone());
            damage_entry(&mut q.0, b"a", bad);
            assert_eq!(s.get(&q.0, b"a", 1000), Err(StoreError::Corrupt), "{bad}");
            assert_eq!(s.ttl_ms(&q.0, b"a", 1000), Err(StoreError::Corrupt));
            assert_eq!(set(&s, &mut q, "a", "2"), Err(StoreError::Corrupt));
            assert_eq!(s.del(&mut q, b"a", 1000), Err(StoreError::Corrupt));
            // The expired key's entry is damaged: the sweep reaches it.
            let mut q = Plain(p.0.clone());
            damage_entry(&mut q.0, b"t", bad);
            let r = s.sweep(&mut q, 0, s.buckets(), u64::MAX, 1000);
            assert_eq!(r, Err(StoreError::Corrupt), "{bad}");
            // Reopening does not look (O(1)); the background check finds it.
            assert_eq!(Store::open(&mut q).unwrap(), Ok(s));
            assert_eq!(scrub_all(&s, &q.0), Some(slot_of(&s, &q.0, b"t")), "{bad}");
        }
        // A block inside the heap whose lengths run past it.
        let mut q = Plain(p.0.clone());
        let block = q.0.len() - 64;
        q.0[block..block + 4].copy_from_slice(&5u32.to_le_bytes());
        q.0[block + 4..block + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        damage_entry(&mut q.0, b"a", block as u64);
        assert_eq!(s.get(&q.0, b"a", 1000), Err(StoreError::Corrupt));
        // A block of a class bigger than what is left of the heap.
        q.0[block..block + 4].copy_from_slice(&40u32.to_le_bytes());
        q.0[block + 4..block + 8].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(s.del(&mut q, b"a", 1000), Err(StoreError::Corrupt));
        // The undamaged table still works, and the background check passes.
        assert_eq!(get(&s, &p, "a"), Some(&b"1"[..]));
        assert!(Store::open(&mut p).unwrap().is_ok());
        assert_eq!(scrub_all(&s, &p.0), None);
    }

    /// Runs the background check over the whole table in small steps:
    /// the first damaged bucket, if any.
    fn scrub_all(s: &Store, d: &[u8]) -> Option<usize> {
        let mut cursor = 0;
        loop {
            match s.scrub(d, cursor, 7) {
                Ok(0) => return None,
                Ok(next) => cursor = next,
                Err((slot, e)) => {
                    assert_eq!(e, StoreError::Corrupt);
                    return Some(slot);
                }
            }
        }
    }

    /// The bucket that holds `key`.
    fn slot_of(s: &Store, d: &[u8], key: &[u8]) -> usize {
        let epoch = rd(d, H_EPOCH);
        (0..s.buckets())
            .find(|&slot| s.is_live(d, slot, epoch) && rd(d, s.entry(slot) + E_HASH) == hash(key))
            .unwrap()
    }

    #[test]
    fn damaged_free_lists_are_errors() {
        let (mut p, s) = fresh(1 << 20);
        // `a` and `b2` share a parent block, so freeing `a` merges nothing.
        set(&s, &mut p, "a", "1").unwrap();
        set(&s, &mut p, "b2", "1").unwrap();
        s.del(&mut p, b"a", 0).unwrap();
        let list = H_FREE + 8 * class_of(BLOCK_HEADER + 2);
        assert_ne!(rd(&p.0, list), 0);
        for bad in [u64::MAX, 16, p.0.len() as u64 - 8, rd(&p.0, list) + 8] {
            let mut q = Plain(p.0.clone());
            q.0[list..list + 8].copy_from_slice(&bad.to_le_bytes());
            assert_eq!(set(&s, &mut q, "b", "2"), Err(StoreError::Corrupt));
            // A list's head is in the table's head, which opening checks.
            assert!(Store::open(&mut q).unwrap().is_err());
        }
        let b = rd(&p.0, list) as usize;
        // A free list that loops on itself: the block is taken once, and
        // taking it again finds it no longer marked free.
        let mut q = Plain(p.0.clone());
        q.0[b + 8..b + 16].copy_from_slice(&(b as u64).to_le_bytes());
        assert!(Store::open(&mut q).unwrap().is_ok());
        set(&s, &mut q, "b", "2").unwrap();
        assert_eq!(set(&s, &mut q, "c", "3"), Err(StoreError::Corrupt));
        // A free block no longer marked free.
        let mut q = Plain(p.0.clone());
        q.0[b + 4..b + 8].fill(0);
        assert_eq!(set(&s, &mut q, "b", "2"), Err(StoreError::Corrupt));
        assert!(Store::open(&mut q).unwrap().is_err());
    }

    /// Which free blocks the heap has: (class, count) for each class.
    fn free_blocks(s: &Store, d: &[u8]) -> Vec<(usize, usize)> {
        (MIN_CLASS..NCLASS)
            .map(|c| {
                let mut n = 0;
                let mut b = rd(d, H_FREE + 8 * c);
                while b != 0 {
                    n += 1;
                    b = rd(d, b as usize + 8);
                }
                (c, n)
            })
            .filter(|&(_, n)| n > 0)
            .inspect(|&(c, _)| assert!(s.largest_free(d) >= 1 << c))
            .collect()
    }

    #[test]
    fn freed_buddies_merge_back_into_the_blocks_they_were_split_from() {
        let (mut p, s) = fresh(1 << 20);
        let tiles = free_blocks(&s, &p.0);
        let largest = s.largest_free(&p.0);
        // Many small values split the largest block down to 32 bytes.
        for i in 0..1000 {
            set(&s, &mut p, &format!("k{i}"), "v").unwrap();
        }
        assert!(s.largest_free(&p.0) < largest || tiles.len() > 1);
        // Deleted in another order than they were set: every merge happens.
        for i in (0..1000).rev().step_by(2).chain((0..1000).step_by(2)) {
            assert!(s.del(&mut p, format!("k{i}").as_bytes(), 0).unwrap());
        }
        assert_eq!(free_blocks(&s, &p.0), tiles);
        assert_eq!(s.largest_free(&p.0), largest);
        assert_eq!(s.used(&p.0), 0);
        // And FLUSHALL tiles the heap the same way.
        set(&s, &mut p, "x", "y").unwrap();
        s.flush(&mut p).unwrap();
        assert_eq!(free_blocks(&s, &p.0), tiles);
    }

    /// The largest value (under a 4-byte key) that a SET still stores.
    fn largest_value(s: &Store, p: &mut Plain) -> usize {
        let fit = s.largest_free(&p.0) as usize - BLOCK_HEADER - 4;
        let value = vec![b'x'; fit];
        assert!(s
            .set(p, b"big!", &value, Ttl::Clear, Cond::Always, 0)
            .unwrap());
        assert!(s.del(p, b"big!", 0).unwrap());
        fit
    }

    #[test]
    fn a_million_mixed_sets_and_deletes_do_not_fragment_the_heap() {
        // A 64 MiB region; values of random sizes (log-uniform, 1 B to
        // 16 KiB) under 8,000 keys, set and deleted at random: about half
        // of the heap is in use at any time.
        let size = 64 << 20;
        let (mut p, s) = fresh(size);
        let fresh_largest = largest_value(&s, &mut p);
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let value = vec![b'v'; 16 << 10];
        let (mut sets, mut dels, mut ooms) = (0, 0, 0);
        for _ in 0..1_000_000 {
            let r = next();
            let key = format!("k{}", r % 8_000);
            if r >> 60 < 9 {
                let len = 1usize << (next() % 15);
                let len = len + (next() as usize % len);
                match s.set(
                    &mut p,
                    key.as_bytes(),
                    &value[..len.min(value.len())],
                    Ttl::Clear,
                    Cond::Always,
                    0,
                ) {
                    Ok(_) => sets += 1,
                    Err(StoreError::Oom) => ooms += 1,
                    Err(e) => panic!("{e:?}"),
                }
            } else {
                s.del(&mut p, key.as_bytes(), 0).unwrap();
                dels += 1;
            }
        }
        let live = s.len(&p.0);
        let used = s.used(&p.0);
        // What the live keys leave usable: 100-byte values until the heap
        // is full, against the same keys set into a fresh heap.
        let usable = |s: &Store, p: &mut Plain| {
            let mut n = 0;
            while s
                .set(
                    p,
                    format!("fill{n}").as_bytes(),
                    &value[..100],
                    Ttl::Clear,
                    Cond::Always,
                    0,
                )
                .is_ok()
            {
                n += 1;
            }
            for i in 0..n {
                s.del(p, format!("fill{i}").as_bytes(), 0).unwrap();
            }
            n
        };
        let (mut q, t) = fresh(size);
        let epoch = rd(&p.0, H_EPOCH);
        for slot in 0..s.buckets() {
            if s.is_live(&p.0, slot, epoch) {
                let (_, k, v) = s.ranges(&p.0, slot).unwrap();
                t.set(&mut q, &p.0[k], &p.0[v], Ttl::Clear, Cond::Always, 0)
                    .unwrap();
            }
        }
        let after = usable(&s, &mut p);
        let packed = usable(&t, &mut q);
        let (live_largest, packed_largest) = (s.largest_free(&p.0), t.largest_free(&q.0));
        // Every key deleted: the heap is whole again.
        for slot in (0..s.buckets()).rev() {
            while s.is_live(&p.0, slot, epoch) {
                s.remove(&mut p, slot).unwrap();
            }
        }
        let largest = largest_value(&s, &mut p);
        println!(
            "{sets} sets ({ooms} out of memory), {dels} deletes; {live} keys, {used} bytes \
             in blocks; room for {after} more 100-byte values (the same keys in a fresh heap: \
             {packed}, ratio {:.3}); largest free block {live_largest} bytes (packed: \
             {packed_largest}); all deleted, the largest value that fits is {largest} \
             bytes (fresh: {fresh_largest}, ratio {:.3})",
            after as f64 / packed as f64,
            largest as f64 / fresh_largest as f64,
        );
        assert_eq!(s.len(&p.0), 0);
        assert!(largest as f64 >= 0.9 * fresh_largest as f64);
        assert!(after as f64 >= 0.9 * packed as f64);
        assert!(live_largest as f64 >= 0.9 * packed_largest as f64);
    }

    #[test]
    fn a_table_with_no_free_bucket_is_an_error() {
        let (mut p, s) = fresh(MIN_SIZE);
        let epoch = rd(&p.0, H_EPOCH);
        for slot in 0..s.buckets() {
            let at = s.entry(slot) + E_EPOCH;
            p.0[at..at + 8].copy_from_slice(&epoch.to_le_bytes());
        }
        assert_eq!(s.get(&p.0, b"x", 0), Err(StoreError::Corrupt));
        // More live entries than the table takes: the head says so.
        let mut h = Plain(p.0.clone());
        h.0[H_LIVE..H_LIVE + 8].copy_from_slice(&(s.buckets() as u64).to_le_bytes());
        assert!(Store::open(&mut h).unwrap().is_err());
    }
}

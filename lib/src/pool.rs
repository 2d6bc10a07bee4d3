//! A fixed-block allocator inside a region, with ownership that survives crashes.
//!
//! A pool is a `#[repr(C)]` header, a table with one entry per block, and the
//! blocks themselves, all inside memory that several processes may map
//! `MAP_SHARED` (a daemon and the transactions it forks, say). Blocks are
//! named by index ([`BlockRef`]), never by pointer. Allocation and free are
//! O(1): a Treiber stack of free blocks, linked by index, whose head carries
//! a tag that changes on every update (so a stale compare-and-swap fails:
//! no ABA).
//!
//! A [`BlockRef`] names its pool as well as its block: [`init`] gives each
//! pool a random 64-bit identity, stored in the header, and a pool refuses
//! ([`PoolError::ForeignBlock`]) a reference another pool handed out, so
//! safe code cannot obtain two `&mut` to one block through two pools.
//!
//! Every block records its owner as an [`Owner`] `(slot, generation)` in its
//! table entry, so the blocks of a dead process can be found and returned
//! ([`Pool::reclaim`]), and a crash in the middle of an operation can be
//! repaired ([`Pool::check_and_rebuild`]).
//!
//! # Layout
//! ```text
//! offset 0              PoolHeader (128 B): geometry (magic, version, block
//!                       size, capacity, offsets, crc), ready word, free-list
//!                       head, pool identity
//! offset 128            table: capacity × Entry (16 B): state u64 | next u32 | mark u32
//! offset blocks_offset  blocks: capacity × block_size (block_size a multiple of 64)
//! ```
//!
//! # Protocol
//! The *state* of a block is the truth; the free list is an index over it.
//! - `alloc`: pop the head of the free list (compare-and-swap of the tagged
//!   head), then move the block's state from `FREE` to the owner.
//! - `free`: move the state from the owner to `FREE` (a compare-and-swap, so
//!   only the owner frees, and only once), then push the block.
//! - `reclaim`: for each block whose owner is dead, move the state to `FREE`
//!   and push it. Safe while others allocate: a dead owner cannot race.
//!
//! A process killed inside `alloc` (after the pop, before the owner is
//! recorded) or inside `free`/`reclaim` (after the state change, before the
//! push) leaves a block `FREE` but off the list: not lost for good, not owned
//! twice. `check_and_rebuild` walks the table and rebuilds the list from the
//! states, which it may do only while no one else uses the pool (the root
//! before restarting a daemon, or a daemon before it forks its transactions).
//!
//! Invariant outside those crash windows: a block is on the free list iff
//! its state is `FREE`, at most once; after `check_and_rebuild` it holds
//! again, and `free + owned == capacity`.

use std::fmt;
use std::marker::PhantomData;
use std::ptr::{self, NonNull};

use crate::region::Plain;
use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// First eight bytes of every pool: `"FRKPOOL\0"`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"FRKPOOL\0");
/// Version of the layout described in the module documentation.
pub const VERSION: u32 = 2;
/// Alignment the pool's memory must have.
pub const ALIGN: usize = 64;
/// Largest number of blocks.
pub const MAX_CAPACITY: u32 = (1 << 31) - 1;

const READY: u32 = 0x5245_4459; // "REDY"
/// Block state of a free block.
const FREE: u64 = u64::MAX;

/// Who owns a block: a process slot (a supervisor's daemon index, a
/// transaction slot, ...) and the generation of its current occupant, so an
/// owner that died and was replaced is told apart from its replacement.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner {
    /// The owner's slot; `u32::MAX` is reserved.
    pub slot: u32,
    /// Generation of the process in that slot.
    pub generation: u32,
}

// SAFETY: `#[repr(C)]`, two `u32`s, no pointers; every bit pattern is valid.
unsafe impl Plain for Owner {}

impl Owner {
    const fn pack(self) -> u64 {
        ((self.slot as u64) << 32) | self.generation as u64
    }

    const fn unpack(v: u64) -> Owner {
        Owner {
            slot: (v >> 32) as u32,
            generation: v as u32,
        }
    }
}

/// A block owned by the holder of this value (not `Clone`: freeing consumes it).
///
/// It carries the identity of the pool that handed it out; any other pool
/// refuses it with [`PoolError::ForeignBlock`].
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct BlockRef {
    pool: u64,
    index: u32,
}

impl BlockRef {
    /// The block's index in its pool; fits in shared memory (a message, a
    /// table) and comes back with [`BlockRef::from_index`].
    pub fn index(&self) -> u32 {
        self.index
    }

    /// A reference to block `index` of `pool`, for example read back from
    /// shared memory.
    ///
    /// # Safety
    /// The caller must own the block (`pool` records the caller's owner)
    /// and must not hold another `BlockRef` for it: a `BlockRef` stands for
    /// exclusive access to the block's bytes.
    pub unsafe fn from_index(pool: &Pool<'_>, index: u32) -> BlockRef {
        BlockRef {
            pool: pool.id,
            index,
        }
    }
}

/// Everything that can go wrong with a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolError {
    /// The configuration is not valid; the text says which field.
    InvalidConfig(&'static str),
    /// The memory is smaller than the pool needs.
    Undersized {
        /// Bytes the pool needs.
        need: usize,
        /// Bytes provided.
        have: usize,
    },
    /// The memory is not aligned to [`ALIGN`] bytes.
    Misaligned,
    /// The memory does not hold an initialised pool.
    NotAPool(&'static str),
    /// The pool was made by a different layout version.
    Version(u32),
    /// No free block.
    Exhausted,
    /// The owner's slot is `u32::MAX`, which is reserved.
    InvalidOwner,
    /// The block index is outside the pool.
    OutOfRange {
        /// The index.
        index: u32,
    },
    /// The block reference was handed out by another pool.
    ForeignBlock {
        /// The index.
        index: u32,
    },
    /// The block is not owned by the caller (a double free, or a foreign block).
    NotOwner {
        /// The index.
        index: u32,
        /// Its recorded owner, `None` if free.
        owner: Option<Owner>,
    },
    /// The free list is damaged (it held an owned block or an index out of
    /// range); [`Pool::check_and_rebuild`] repairs it.
    Corrupt,
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::InvalidConfig(what) => write!(f, "pool: invalid config: {what}"),
            PoolError::Undersized { need, have } => {
                write!(f, "pool: needs {need} bytes, memory has {have}")
            }
            PoolError::Misaligned => write!(f, "pool: memory not aligned to {ALIGN} bytes"),
            PoolError::NotAPool(why) => write!(f, "pool: memory holds no pool: {why}"),
            PoolError::Version(v) => write!(f, "pool: layout version {v}, expected {VERSION}"),
            PoolError::Exhausted => write!(f, "pool: no free block"),
            PoolError::InvalidOwner => write!(f, "pool: owner slot u32::MAX is reserved"),
            PoolError::OutOfRange { index } => write!(f, "pool: block {index} out of range"),
            PoolError::ForeignBlock { index } => {
                write!(f, "pool: block {index} belongs to another pool")
            }
            PoolError::NotOwner { index, owner } => {
                write!(
                    f,
                    "pool: block {index} is not the caller's (owner {owner:?})"
                )
            }
            PoolError::Corrupt => write!(f, "pool: free list damaged, run check_and_rebuild"),
        }
    }
}

impl std::error::Error for PoolError {}

/// Immutable geometry, written once by [`init`] before `ready` is set.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    magic: u64,
    version: u32,
    /// Bytes per block: a multiple of 64.
    block_size: u32,
    capacity: u32,
    _reserved: u32,
    /// Offset of the entry table.
    table_offset: u64,
    /// Offset of block 0.
    blocks_offset: u64,
    /// Bytes the pool occupies.
    total_len: u64,
    /// crc32 of the fields above, little-endian.
    crc: u32,
    _reserved2: u32,
}

impl Geometry {
    fn compute(block_size: u32, capacity: u32) -> Result<Geometry, PoolError> {
        if capacity == 0 || capacity > MAX_CAPACITY {
            return Err(PoolError::InvalidConfig(
                "capacity must be in 1 ..= 2^31 - 1",
            ));
        }
        if block_size == 0 || block_size > u32::MAX - 63 {
            return Err(PoolError::InvalidConfig(
                "block_size must be in 1 ..= 2^32 - 64",
            ));
        }
        let block_size = block_size.next_multiple_of(64);
        let table_offset = size_of::<PoolHeader>();
        let blocks_offset = (capacity as usize)
            .checked_mul(size_of::<Entry>())
            .and_then(|t| t.checked_add(table_offset))
            .map(|e| e.next_multiple_of(64))
            .ok_or(PoolError::InvalidConfig("pool too large"))?;
        let total = (capacity as usize)
            .checked_mul(block_size as usize)
            .and_then(|b| b.checked_add(blocks_offset))
            .ok_or(PoolError::InvalidConfig("pool too large"))?;
        let mut g = Geometry {
            magic: MAGIC,
            version: VERSION,
            block_size,
            capacity,
            _reserved: 0,
            table_offset: table_offset as u64,
            blocks_offset: blocks_offset as u64,
            total_len: total as u64,
            crc: 0,
            _reserved2: 0,
        };
        g.crc = g.checksum();
        Ok(g)
    }

    fn checksum(&self) -> u32 {
        let mut h = crc32fast::Hasher::new();
        h.update(&self.magic.to_le_bytes());
        for v in [self.version, self.block_size, self.capacity] {
            h.update(&v.to_le_bytes());
        }
        for v in [self.table_offset, self.blocks_offset, self.total_len] {
            h.update(&v.to_le_bytes());
        }
        h.finalize()
    }
}

#[repr(C, align(64))]
struct PoolHeader {
    geo: Geometry,
    /// [`READY`] once [`init`] has finished (release store, written last).
    ready: AtomicU32,
    /// Free-list head: `tag << 32 | (index + 1)`, low half 0 when empty.
    /// The tag grows on every successful update, so a compare-and-swap
    /// against a head read before another pop/push fails (no ABA).
    free_head: AtomicU64,
    /// Random identity chosen by [`init`], written before `ready`; every
    /// [`BlockRef`] carries it. Not in the checksummed geometry: a pool laid
    /// out again in the same memory gets a new one.
    id: u64,
}

/// One per block.
#[repr(C)]
struct Entry {
    /// `FREE`, or the owner packed as `slot << 32 | generation`. Only the
    /// owner moves it from itself to `FREE` (free), only the allocator that
    /// popped the block moves it from `FREE` (alloc), and reclaim moves a
    /// dead owner's to `FREE`.
    state: AtomicU64,
    /// `index + 1` of the next free block, 0 at the end. Meaningful only
    /// while the block is on the free list; written by whoever pushes it.
    next: AtomicU32,
    /// Scratch for `check_and_rebuild` (1: seen on the old list).
    mark: AtomicU32,
}

/// Bytes of memory a pool of `capacity` blocks of `block_size` bytes needs
/// (the block size is rounded up to a multiple of 64).
pub fn required_size(block_size: u32, capacity: u32) -> Result<usize, PoolError> {
    Geometry::compute(block_size, capacity).map(|g| g.total_len as usize)
}

/// Lays out a new pool, every block free, in `len` bytes at `ptr`.
///
/// # Safety
/// `ptr` must be valid for reads and writes of `len` bytes for `'a`, and no
/// one may use the memory as a pool until this returns. The memory may hold
/// anything beforehand.
pub unsafe fn init<'a>(
    ptr: *mut u8,
    len: usize,
    block_size: u32,
    capacity: u32,
) -> Result<Pool<'a>, PoolError> {
    let geo = Geometry::compute(block_size, capacity)?;
    check_memory(ptr, len, geo.total_len as usize)?;
    let h = ptr.cast::<PoolHeader>();
    // SAFETY: `check_memory` proved the pointer aligned and `len` large
    // enough; `write` does not read the old contents.
    unsafe {
        ptr::addr_of_mut!((*h).ready).write(AtomicU32::new(0));
        ptr::addr_of_mut!((*h).geo).write(geo);
        // Blocks in index order: 0 at the head.
        ptr::addr_of_mut!((*h).free_head).write(AtomicU64::new(pack_head(0, 1)));
        ptr::addr_of_mut!((*h).id).write(new_id());
    }
    for i in 0..capacity {
        let next = if i + 1 < capacity { i + 2 } else { 0 };
        let off = geo.table_offset as usize + i as usize * size_of::<Entry>();
        debug_assert!(off + size_of::<Entry>() <= geo.blocks_offset as usize);
        // SAFETY: the table lies inside the checked length; entries are
        // 8-aligned (the table starts at 64 and entries are 16 bytes).
        unsafe {
            ptr.add(off).cast::<Entry>().write(Entry {
                state: AtomicU64::new(FREE),
                next: AtomicU32::new(next),
                mark: AtomicU32::new(0),
            });
        }
    }
    // SAFETY: initialised above.
    unsafe { &(*h).ready }.store(READY, Ordering::Release);
    // SAFETY: initialised; the caller's contract covers `'a`.
    unsafe { attach(ptr, len) }
}

/// Attaches to a pool that [`init`] laid out, possibly in another process;
/// validates the header, so memory holding anything else gives an error.
///
/// # Safety
/// `ptr` must be valid for reads and writes of `len` bytes for `'a`, and the
/// memory must not be used other than through this module meanwhile.
pub unsafe fn attach<'a>(ptr: *mut u8, len: usize) -> Result<Pool<'a>, PoolError> {
    check_memory(ptr, len, size_of::<PoolHeader>())?;
    let h = ptr.cast::<PoolHeader>();
    // SAFETY: aligned and in bounds; any bits are a valid `AtomicU32`.
    let ready = unsafe { &(*h).ready }.load(Ordering::Acquire);
    // SAFETY: aligned and in bounds; `Geometry` is integers only.
    let geo = unsafe { ptr::addr_of!((*h).geo).read() };
    // SAFETY: aligned and in bounds; written before `ready` (acquired above).
    let id = unsafe { ptr::addr_of!((*h).id).read() };
    if geo.magic != MAGIC {
        return Err(PoolError::NotAPool("bad magic"));
    }
    if ready != READY {
        return Err(PoolError::NotAPool("initialisation not finished"));
    }
    if geo.version != VERSION {
        return Err(PoolError::Version(geo.version));
    }
    if geo.crc != geo.checksum() {
        return Err(PoolError::NotAPool("header checksum mismatch"));
    }
    let expect = Geometry::compute(geo.block_size, geo.capacity)
        .map_err(|_| PoolError::NotAPool("bad geometry"))?;
    if expect != geo {
        return Err(PoolError::NotAPool("inconsistent geometry"));
    }
    if geo.total_len as usize > len {
        return Err(PoolError::Undersized {
            need: geo.total_len as usize,
            have: len,
        });
    }
    Ok(Pool {
        // SAFETY: `check_memory` rejected null.
        base: unsafe { NonNull::new_unchecked(ptr) },
        capacity: geo.capacity,
        block_size: geo.block_size as usize,
        table_offset: geo.table_offset as usize,
        blocks_offset: geo.blocks_offset as usize,
        id,
        _mem: PhantomData,
    })
}

/// A pool identity: 64 random bits (never 0), so two pools, in this process
/// or any other, practically never share one.
fn new_id() -> u64 {
    loop {
        let id = uuid::Uuid::new_v4().as_u64_pair().0;
        if id != 0 {
            return id;
        }
    }
}

fn check_memory(ptr: *mut u8, len: usize, need: usize) -> Result<(), PoolError> {
    if ptr.is_null() || (ptr as usize) % ALIGN != 0 {
        return Err(PoolError::Misaligned);
    }
    if len < need {
        return Err(PoolError::Undersized { need, have: len });
    }
    Ok(())
}

/// What [`Pool::check_and_rebuild`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Report {
    /// Blocks in the pool.
    pub capacity: u32,
    /// Free blocks, all on the rebuilt free list once each.
    pub free: u32,
    /// Owned blocks.
    pub owned: u32,
    /// Free blocks that were missing from the old list (a process died
    /// between popping and recording its ownership, or between freeing and
    /// pushing), now back on it.
    pub relinked: u32,
    /// Owned blocks that were on the old list, now off it.
    pub owned_on_list: u32,
    /// The old list had a cycle, a duplicate or an index out of range.
    pub list_damaged: bool,
}

/// A handle on a pool in shared memory; cheap to copy.
#[derive(Debug, Clone, Copy)]
pub struct Pool<'a> {
    base: NonNull<u8>,
    capacity: u32,
    block_size: usize,
    table_offset: usize,
    blocks_offset: usize,
    /// The identity in the header, read once by `attach`.
    id: u64,
    _mem: PhantomData<&'a [u8]>,
}

// SAFETY: shared fields are atomics; block bytes are reached only through a
// `BlockRef`, which stands for ownership.
unsafe impl Send for Pool<'_> {}
// SAFETY: as above.
unsafe impl Sync for Pool<'_> {}

const fn pack_head(tag: u32, index1: u32) -> u64 {
    ((tag as u64) << 32) | index1 as u64
}

const fn unpack_head(v: u64) -> (u32, u32) {
    ((v >> 32) as u32, v as u32)
}

impl<'a> Pool<'a> {
    /// Number of blocks.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Bytes per block (the requested size rounded up to a multiple of 64).
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    fn header(&self) -> &PoolHeader {
        // SAFETY: validated by `attach`; atomics and integers only.
        unsafe { &*self.base.as_ptr().cast::<PoolHeader>() }
    }

    fn entry(&self, index: u32) -> &Entry {
        debug_assert!(index < self.capacity);
        let off = self.table_offset + index as usize * size_of::<Entry>();
        // SAFETY: `index < capacity`, so the entry lies in the table that
        // `attach` checked lies inside the memory; initialised by `init`.
        unsafe { &*self.base.as_ptr().add(off).cast::<Entry>() }
    }

    /// Checks that `block` was handed out by this pool and is in range.
    fn check_ref(&self, block: &BlockRef) -> Result<(), PoolError> {
        if block.pool != self.id {
            return Err(PoolError::ForeignBlock { index: block.index });
        }
        self.check_index(block.index)
    }

    fn check_index(&self, index: u32) -> Result<(), PoolError> {
        if index < self.capacity {
            Ok(())
        } else {
            Err(PoolError::OutOfRange { index })
        }
    }

    /// Takes a free block for `owner`. O(1); no system call.
    pub fn alloc(&self, owner: Owner) -> Result<BlockRef, PoolError> {
        if owner.slot == u32::MAX {
            return Err(PoolError::InvalidOwner);
        }
        let index = self.pop()?;
        // Acquire: pairs with the release in `free`, so the previous owner's
        // writes to the block come before ours.
        match self.entry(index).state.compare_exchange(
            FREE,
            owner.pack(),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => Ok(BlockRef {
                pool: self.id,
                index,
            }),
            // An owned block was on the list: leave it to its owner.
            Err(_) => Err(PoolError::Corrupt),
        }
    }

    /// Returns `block`, owned by `owner`, to the pool. O(1); no system call.
    pub fn free(&self, block: BlockRef, owner: Owner) -> Result<(), PoolError> {
        let index = block.index;
        self.check_ref(&block)?;
        // Release: our writes to the block come before the next owner's.
        match self.entry(index).state.compare_exchange(
            owner.pack(),
            FREE,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                self.push(index);
                Ok(())
            }
            Err(s) => Err(PoolError::NotOwner {
                index,
                owner: (s != FREE).then(|| Owner::unpack(s)),
            }),
        }
    }

    fn pop(&self) -> Result<u32, PoolError> {
        let h = self.header();
        let mut head = h.free_head.load(Ordering::Acquire);
        loop {
            let (tag, index1) = unpack_head(head);
            if index1 == 0 {
                return Err(PoolError::Exhausted);
            }
            let index = index1 - 1;
            self.check_index(index).map_err(|_| PoolError::Corrupt)?;
            // May be stale if another process pops `index` meanwhile; then the
            // tag has moved and the compare-and-swap below fails.
            let next = self.entry(index).next.load(Ordering::Relaxed);
            match h.free_head.compare_exchange_weak(
                head,
                pack_head(tag.wrapping_add(1), next),
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(index),
                Err(now) => head = now,
            }
        }
    }

    fn push(&self, index: u32) {
        let h = self.header();
        let e = self.entry(index);
        let mut head = h.free_head.load(Ordering::Relaxed);
        loop {
            let (tag, index1) = unpack_head(head);
            e.next.store(index1, Ordering::Relaxed);
            // Release: publishes `next` to the popper's acquire.
            match h.free_head.compare_exchange_weak(
                head,
                pack_head(tag.wrapping_add(1), index + 1),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    /// The recorded owner of block `index`, `None` if it is free.
    pub fn owner(&self, index: u32) -> Result<Option<Owner>, PoolError> {
        self.check_index(index)?;
        let s = self.entry(index).state.load(Ordering::Acquire);
        Ok((s != FREE).then(|| Owner::unpack(s)))
    }

    /// The bytes of `block`, for as long as `block` is borrowed.
    pub fn get<'r>(&self, block: &'r BlockRef) -> Result<&'r [u8], PoolError>
    where
        'a: 'r,
    {
        let (ptr, len) = self.block_raw(block)?;
        // SAFETY: the block lies inside the pool's memory, valid for `'a`;
        // the `BlockRef` stands for ownership, so its owner is the only writer.
        Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
    }

    /// The bytes of `block`, writable, for as long as `block` is borrowed.
    pub fn get_mut<'r>(&self, block: &'r mut BlockRef) -> Result<&'r mut [u8], PoolError>
    where
        'a: 'r,
    {
        let (ptr, len) = self.block_raw(block)?;
        // SAFETY: the block lies inside the pool's memory, valid for `'a`; a
        // `BlockRef` stands for exclusive ownership of its block (see
        // `BlockRef::from_index`), `block_raw` checked it is this pool's, and
        // it is borrowed mutably for `'r`, so no other reference to these
        // bytes exists meanwhile.
        Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
    }

    fn block_raw(&self, block: &BlockRef) -> Result<(*mut u8, usize), PoolError> {
        self.check_ref(block)?;
        let index = block.index;
        let off = self.blocks_offset + index as usize * self.block_size;
        debug_assert!(
            off + self.block_size <= self.blocks_offset + self.capacity as usize * self.block_size
        );
        // SAFETY: `index < capacity`, so the block lies inside the memory
        // `attach` checked.
        Ok((unsafe { self.base.as_ptr().add(off) }, self.block_size))
    }

    /// Frees every block whose owner `is_dead` says is dead; returns how many.
    ///
    /// Safe while live processes allocate and free: a dead owner cannot race
    /// with it. Blocks a dead process left between two steps of an operation
    /// need [`Pool::check_and_rebuild`].
    pub fn reclaim(&self, is_dead: impl Fn(Owner) -> bool) -> usize {
        let mut n = 0;
        for i in 0..self.capacity {
            let e = self.entry(i);
            let s = e.state.load(Ordering::Acquire);
            if s == FREE || !is_dead(Owner::unpack(s)) {
                continue;
            }
            if e.state
                .compare_exchange(s, FREE, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                self.push(i);
                n += 1;
            }
        }
        n
    }

    /// Counts free and owned blocks from the block states.
    pub fn counts(&self) -> (u32, u32) {
        let free = (0..self.capacity)
            .filter(|&i| self.entry(i).state.load(Ordering::Relaxed) == FREE)
            .count() as u32;
        (free, self.capacity - free)
    }

    /// Walks the block table and rebuilds the free list from the block
    /// states: every free block on it exactly once, no owned block on it.
    ///
    /// Call it only while no other process or thread uses the pool (after a
    /// crash, before the survivors resume): a concurrent `alloc` or `free`
    /// could be undone by the rebuild. It never changes a block's owner.
    pub fn check_and_rebuild(&self) -> Report {
        let h = self.header();
        let mut report = Report {
            capacity: self.capacity,
            ..Report::default()
        };
        for i in 0..self.capacity {
            self.entry(i).mark.store(0, Ordering::Relaxed);
        }
        let head = h.free_head.load(Ordering::Acquire);
        let (tag, mut cur) = unpack_head(head);
        let mut steps = 0u32;
        while cur != 0 {
            let index = cur - 1;
            if index >= self.capacity || steps >= self.capacity {
                report.list_damaged = true;
                break;
            }
            let e = self.entry(index);
            if e.mark.swap(1, Ordering::Relaxed) != 0 {
                report.list_damaged = true;
                break;
            }
            if e.state.load(Ordering::Acquire) != FREE {
                report.owned_on_list += 1;
            }
            cur = e.next.load(Ordering::Relaxed);
            steps += 1;
        }
        // Rebuild in descending order so block 0 ends up at the head.
        let mut first = 0u32;
        for i in (0..self.capacity).rev() {
            let e = self.entry(i);
            if e.state.load(Ordering::Acquire) == FREE {
                e.next.store(first, Ordering::Relaxed);
                first = i + 1;
                report.free += 1;
                if e.mark.load(Ordering::Relaxed) == 0 {
                    report.relinked += 1;
                }
            } else {
                report.owned += 1;
            }
        }
        // Release: publishes the `next` links to poppers.
        h.free_head
            .store(pack_head(tag.wrapping_add(1), first), Ordering::Release);
        report
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! Model checks of the free list and block states under every
    //! interleaving (`RUSTFLAGS="--cfg loom" cargo test -p forkroot --release --lib loom`).

    use super::*;
    use crate::sync::Mem;
    use loom::sync::Arc;

    fn setup(capacity: u32) -> (Arc<Mem>, Pool<'static>) {
        let len = required_size(8, capacity).unwrap();
        let mem = Arc::new(Mem::new(len, ALIGN));
        // SAFETY: kept alive by every thread that uses the pool (each holds
        // a clone of the Arc); used only as this pool.
        let pool = unsafe { init(mem.ptr, len, 8, capacity) }.unwrap();
        (mem, pool)
    }

    fn owner(slot: u32) -> Owner {
        Owner {
            slot,
            generation: 0,
        }
    }

    /// After the model's threads: every block free, each once on the list.
    fn assert_all_free(pool: &Pool<'_>) {
        let r = pool.check_and_rebuild();
        assert_eq!(
            (r.free, r.owned, r.relinked, r.owned_on_list, r.list_damaged),
            (pool.capacity(), 0, 0, 0, false),
            "{r:?}"
        );
    }

    #[test]
    fn loom_concurrent_alloc_free_no_aba() {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(|| {
            let (mem, pool) = setup(2);
            let threads: Vec<_> = (0..2u32)
                .map(|t| {
                    let mem = mem.clone();
                    loom::thread::spawn(move || {
                        let _mem = mem;
                        // Thread 0 allocates twice in a row (the ABA pattern:
                        // pop, pop, push, push while another pop is stalled).
                        for _ in 0..(2 - t) {
                            let mut x = pool.alloc(owner(t)).unwrap();
                            pool.get_mut(&mut x).unwrap()[0] = t as u8;
                            assert_eq!(pool.owner(x.index()), Ok(Some(owner(t))));
                            pool.free(x, owner(t)).unwrap();
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert_all_free(&pool);
        });
    }

    #[test]
    fn loom_two_allocators_get_distinct_blocks() {
        loom::model(|| {
            let (mem, pool) = setup(2);
            let threads: Vec<_> = (0..2u32)
                .map(|t| {
                    let mem = mem.clone();
                    loom::thread::spawn(move || {
                        let _mem = mem;
                        pool.alloc(owner(t)).unwrap().index()
                    })
                })
                .collect();
            let got: Vec<u32> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            assert_ne!(got[0], got[1]);
            assert_eq!(pool.alloc(owner(9)), Err(PoolError::Exhausted));
            assert_eq!(pool.reclaim(|o| o.slot < 2), 2);
            assert_all_free(&pool);
        });
    }

    #[test]
    fn loom_reclaim_races_with_allocation() {
        loom::model(|| {
            let (mem, pool) = setup(2);
            // A dead owner holds block 0.
            let held = pool.alloc(owner(5)).unwrap();
            assert_eq!(held.index(), 0);
            let m = mem.clone();
            let reclaimer = loom::thread::spawn(move || {
                let _mem = m;
                pool.reclaim(|o| o.slot == 5)
            });
            let m = mem.clone();
            let worker = loom::thread::spawn(move || {
                let _mem = m;
                for _ in 0..2 {
                    if let Ok(b) = pool.alloc(owner(1)) {
                        pool.free(b, owner(1)).unwrap();
                    }
                }
            });
            assert_eq!(reclaimer.join().unwrap(), 1);
            worker.join().unwrap();
            assert_all_free(&pool);
        });
    }

    #[test]
    fn loom_killed_between_pop_and_owner_is_relinked() {
        loom::model(|| {
            let (mem, pool) = setup(2);
            let m = mem.clone();
            // Dies right after popping: the block is off the list, unowned.
            let dying = loom::thread::spawn(move || {
                let _mem = m;
                pool.pop().unwrap()
            });
            let m = mem.clone();
            let live = loom::thread::spawn(move || {
                let _mem = m;
                let b = pool.alloc(owner(1)).unwrap();
                pool.free(b, owner(1)).unwrap();
            });
            let lost = dying.join().unwrap();
            live.join().unwrap();
            let r = pool.check_and_rebuild();
            assert_eq!((r.free, r.relinked, r.owned_on_list), (2, 1, 0), "{r:?}");
            assert_eq!(pool.owner(lost), Ok(None));
            assert_all_free(&pool);
        });
    }
}

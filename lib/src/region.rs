//! Regions: the shared memory the root preallocates for each daemon.
//!
//! Every region starts with a system area the library owns (a header page,
//! then the flight recorder), followed by the user area the daemon declared
//! with `memory = "..."`:
//!
//! ```text
//! 0        4 KiB             64 KiB                         64 KiB + memory
//! | header | flight log (60 KiB) | user area (typed state, checkpoints) |
//! ```

/// Bytes at the start of every region that belong to the library.
pub const SYSTEM_SIZE: usize = 64 * 1024;
/// Offset of the flight recorder inside a region.
pub const LOG_OFFSET: usize = 4096;
/// Size of the flight recorder area.
pub const LOG_SIZE: usize = SYSTEM_SIZE - LOG_OFFSET;

/// Types that may live in shared memory and be read by another process.
///
/// # Safety
/// An implementor must be `#[repr(C)]` (or `#[repr(transparent)]`, or a
/// primitive), must hold no pointers, references or file descriptors, and
/// every bit pattern of its size (all zeroes in particular) must be a valid
/// value: a reader may see whatever a crashed writer left.
pub unsafe trait Plain: Sized + 'static {}

macro_rules! plain {
    ($($t:ty),*) => { $(
        // SAFETY: primitives and atomics of primitives have no invalid bit
        // patterns and hold no pointers.
        unsafe impl Plain for $t {}
    )* };
}
plain!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize);
use std::sync::atomic::{
    AtomicI32, AtomicI64, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
plain!(
    AtomicU8,
    AtomicU32,
    AtomicU64,
    AtomicI32,
    AtomicI64,
    AtomicUsize
);
// SAFETY: an array of `Plain` elements is laid out contiguously with no
// padding between elements, so it is `Plain` too.
unsafe impl<T: Plain, const N: usize> Plain for [T; N] {}

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::ptr::NonNull;

use crate::sys;

/// `"FKROOTR1"`: the first word of a region whose header is initialised.
pub const MAGIC: u64 = u64::from_le_bytes(*b"FKROOTR1");
/// Layout version of [`Header`] and the system area.
pub const LAYOUT: u32 = 1;

/// The first bytes of every region, written by the daemon that owns it and
/// read (never trusted) by the root and by siblings.
#[repr(C)]
#[derive(Debug)]
pub struct Header {
    /// [`MAGIC`] once the owner has initialised the header.
    pub magic: AtomicU64,
    /// [`LAYOUT`] of the owner that initialised it.
    pub layout: AtomicU32,
    /// Pid of the process that last started as the region's owner.
    pub pid: AtomicU32,
    /// Monotonic clock (ns) of the owner's last heartbeat; 0 before the
    /// first. Written only by the owner; the watchdog compares it with now.
    pub heartbeat_ns: AtomicU64,
    /// How many times an owner has started on this region (1 for the first).
    pub starts: AtomicU64,
    /// The owner's allocation policy (`alloc::Policy as u8`), published at
    /// each heartbeat.
    pub alloc_policy: AtomicU32,
    _pad: AtomicU32,
    /// Allocations the owner made since its steady state began (or since
    /// its start), published at each heartbeat.
    pub allocs: AtomicU64,
    /// Bytes of those allocations.
    pub alloc_bytes: AtomicU64,
    /// Sequence number of the checkpoint the owner resumed from (0: none).
    /// The root reads it when the owner dies soon after starting, to call
    /// that checkpoint poison.
    pub resumed_seq: AtomicU64,
}

// SAFETY: repr(C), atomics of integers only; every bit pattern is valid.
unsafe impl Plain for Header {}

/// Rounds `n` up to a whole number of pages.
pub fn page_round(n: u64) -> u64 {
    let page = sys::page_size() as u64;
    n.div_ceil(page) * page
}

/// Where a region's bytes live.
#[derive(Debug)]
enum Backing {
    /// A range of the shared arena memfd, from this file offset.
    Arena(u64),
    /// A file of its own: an exec'd daemon's memfd (handed to it as fd 3)
    /// or a `state_dir` file.
    Own(OwnedFd),
}

#[derive(Debug)]
struct Slot {
    /// Offset of the region inside the reservation.
    offset: usize,
    /// Bytes of the region: SYSTEM_SIZE + the page-rounded user size.
    len: usize,
    backing: Backing,
}

/// What [`RegionSet::create`] makes for one daemon.
#[derive(Debug, Clone, Copy)]
pub struct RegionSpec<'a> {
    /// The daemon's name (names its `state_dir` file and its memfd).
    pub name: &'a str,
    /// Bytes of user area (`memory`), rounded up to pages.
    pub user: u64,
    /// Needs a file of its own (an exec'd program gets its region as a
    /// descriptor, which must not reach the other regions).
    pub own_file: bool,
}

/// Address space reserved (not memory: `PROT_NONE`, `MAP_NORESERVE`) after
/// the regions of the start, for the regions of daemons added by a reload.
pub const GROWTH: usize = 64 << 30;

/// Every daemon's region, mapped read-only in the root at one address each
/// inside a single reservation.
///
/// Because the root maps them before forking, every daemon inherits every
/// region at the same address, read-only; a daemon then maps its own region
/// writable over the same range ([`RegionSet::enter`]). The read-only views
/// come from read-only descriptors, so `mprotect` cannot make them writable.
///
/// Regions of built-in daemons are consecutive ranges of one memfd (the
/// arena), mapped with one `mmap`: the root holds one descriptor and one
/// mapping however many daemons there are, so neither `fork` (which copies
/// every mapping) nor a child's `close_range` grows with the tree. No guard
/// pages are needed between them: the neighbours of a daemon's writable
/// region are read-only in that daemon, so running off its end faults.
/// Regions with files of their own follow, each after an unmapped guard page.
#[derive(Debug)]
pub struct RegionSet {
    base: NonNull<u8>,
    len: usize,
    slots: Vec<Slot>,
    /// The arena memfd (read-write), if any region lives in it.
    arena: Option<OwnedFd>,
    /// Where the next own-file region goes (after a guard page).
    end: usize,
}

impl RegionSet {
    /// Creates and maps one region per spec. With `state_dir`, each region
    /// of a built-in daemon is the file `state_dir/NAME.region` (kept across
    /// runs of the root); otherwise a range of the arena memfd. An
    /// `own_file` region (an exec'd program's) is a sealed memfd of its own
    /// in both cases.
    pub fn create(specs: &[RegionSpec<'_>], state_dir: Option<&Path>) -> io::Result<RegionSet> {
        let page = sys::page_size();
        let lens: Vec<usize> = specs
            .iter()
            .map(|s| SYSTEM_SIZE + page_round(s.user) as usize)
            .collect();
        let in_arena = |s: &RegionSpec<'_>| state_dir.is_none() && !s.own_file;
        let arena_len: usize = specs
            .iter()
            .zip(&lens)
            .filter(|(s, _)| in_arena(s))
            .map(|(_, l)| l)
            .sum();
        let own_len: usize = specs
            .iter()
            .zip(&lens)
            .filter(|(s, _)| !in_arena(s))
            .map(|(_, l)| l + page)
            .sum();
        let len = page + arena_len + page + own_len;
        // Room for regions added at run time, if the address space allows.
        let (base, len) = match sys::reserve(len + GROWTH) {
            Ok(base) => (base, len + GROWTH),
            Err(_) => (sys::reserve(len)?, len),
        };
        let mut set = RegionSet {
            base,
            len,
            slots: Vec::with_capacity(specs.len()),
            arena: None,
            end: 0,
        };
        if arena_len > 0 {
            let arena = sys::memfd_sealed(c"forkroot:arena", arena_len as u64).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("the region arena ({arena_len} bytes): {e}"),
                )
            })?;
            let ro = sys::reopen_read_only(arena.as_raw_fd())?;
            // SAFETY: [base+page, +arena_len) lies inside our reservation,
            // and no reference into it exists yet.
            unsafe {
                sys::map_fixed(
                    set.addr(page),
                    arena_len,
                    ro.as_raw_fd(),
                    0,
                    sys::Access::ReadOnly,
                )?
            };
            set.arena = Some(arena);
        }
        let mut arena_off = 0usize;
        let mut own_off = page + arena_len + page;
        for (spec, &rlen) in specs.iter().zip(&lens) {
            if in_arena(spec) {
                set.slots.push(Slot {
                    offset: page + arena_off,
                    len: rlen,
                    backing: Backing::Arena(arena_off as u64),
                });
                arena_off += rlen;
                continue;
            }
            set.slots.push(set.map_own(spec, own_off, rlen, state_dir)?);
            own_off += rlen + page;
        }
        set.end = own_off;
        Ok(set)
    }

    /// Creates the file of an own-file region (an exec'd program's sealed
    /// memfd, or a built-in daemon's `state_dir` file) and maps it
    /// read-only at `offset` of the reservation.
    fn map_own(
        &self,
        spec: &RegionSpec<'_>,
        offset: usize,
        rlen: usize,
        state_dir: Option<&Path>,
    ) -> io::Result<Slot> {
        let name = spec.name;
        let err = |e: io::Error| {
            io::Error::new(e.kind(), format!("region of {name:?} ({rlen} bytes): {e}"))
        };
        // A region handed to an exec'd program (`own_file`) is always a
        // sealed memfd, even with a state_dir: a regular file cannot be
        // sealed, and a program that truncated it would make the root's
        // next read of its mapping a SIGBUS. Such regions live as long
        // as the root.
        let fd = match state_dir.filter(|_| !spec.own_file) {
            Some(dir) => sys::file_region(&dir.join(format!("{name}.region")), rlen as u64),
            None => {
                let cname = CString::new(format!("forkroot:{name}")).map_err(io::Error::other)?;
                sys::memfd_sealed(&cname, rlen as u64)
            }
        }
        .map_err(err)?;
        let ro = sys::reopen_read_only(fd.as_raw_fd())?;
        // SAFETY: [addr, addr+rlen) lies inside our reservation (the
        // callers check), and nothing refers into it: it was never mapped
        // before, or held a region no longer in use.
        unsafe {
            sys::map_fixed(
                self.addr(offset),
                rlen,
                ro.as_raw_fd(),
                0,
                sys::Access::ReadOnly,
            )?
        };
        Ok(Slot {
            offset,
            len: rlen,
            backing: Backing::Own(fd),
        })
    }

    /// A region for a daemon added at run time (a reload): a file of its
    /// own, mapped in the room [`GROWTH`] left at the end of the
    /// reservation. Processes forked before do not see it. Returns its
    /// index, the next one.
    pub fn add(&mut self, spec: &RegionSpec<'_>, state_dir: Option<&Path>) -> io::Result<usize> {
        let slot = self.grow(spec, state_dir)?;
        self.slots.push(slot);
        Ok(self.slots.len() - 1)
    }

    /// Region `i` is replaced by a new, empty one of `spec`'s size (its
    /// daemon's `memory` changed at a reload, and it has no process). The
    /// old one's memory is released.
    pub fn replace(
        &mut self,
        i: usize,
        spec: &RegionSpec<'_>,
        state_dir: Option<&Path>,
    ) -> io::Result<()> {
        let slot = self.grow(spec, state_dir)?;
        self.release(i);
        self.slots[i] = slot;
        Ok(())
    }

    /// Gives back the memory of region `i` (its daemon was removed, or its
    /// region replaced): its pages are punched out of the file, and its
    /// mapping reads as zeros from then on. A `state_dir` file is kept.
    pub fn release(&mut self, i: usize) {
        let (fd, off) = self.file(i);
        let state_file = matches!(self.slots[i].backing, Backing::Own(_)) && self.is_state_file(i);
        if !state_file {
            let _ = sys::punch_hole(fd, off, self.slots[i].len as u64);
        }
    }

    /// Whether region `i` is a regular file (a `state_dir` region), whose
    /// contents must survive the root.
    fn is_state_file(&self, i: usize) -> bool {
        let (fd, _) = self.file(i);
        sys::is_regular_file(fd)
    }

    /// Maps a new own-file region after the last one, if the reservation
    /// has room left.
    fn grow(&mut self, spec: &RegionSpec<'_>, state_dir: Option<&Path>) -> io::Result<Slot> {
        let page = sys::page_size();
        let rlen = SYSTEM_SIZE + page_round(spec.user) as usize;
        if self.end + rlen + page > self.len {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!(
                    "no address space left for regions added at run time ({} reserved at start, {} bytes asked): restart the root",
                    GROWTH,
                    rlen
                ),
            ));
        }
        let slot = self.map_own(spec, self.end, rlen, state_dir)?;
        self.end += rlen + page;
        Ok(slot)
    }

    fn addr(&self, offset: usize) -> NonNull<u8> {
        debug_assert!(offset < self.len);
        // SAFETY: offset is inside the reservation, so the pointer is too.
        unsafe { self.base.add(offset) }
    }

    /// The descriptor and file offset behind region `i`.
    fn file(&self, i: usize) -> (RawFd, u64) {
        match &self.slots[i].backing {
            Backing::Arena(off) => (
                self.arena
                    .as_ref()
                    .expect("an arena region has an arena")
                    .as_raw_fd(),
                *off,
            ),
            Backing::Own(fd) => (fd.as_raw_fd(), 0),
        }
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are no regions.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Region `i`, whole, as this process maps it (read-only in the root
    /// and in siblings). Its contents may change under the reader, and a
    /// crashed owner may have left anything in it: read it as untrusted.
    pub fn view(&self, i: usize) -> &[u8] {
        let s = &self.slots[i];
        // SAFETY: the range is mapped (read-only or better) for as long as
        // `self` lives; u8 has no invalid values. Another process may write
        // it concurrently, which callers treat as untrusted input.
        unsafe { std::slice::from_raw_parts(self.addr(s.offset).as_ptr(), s.len) }
    }

    /// The user area of region `i` as bytes another process may be writing
    /// while this one reads: each is an atomic load (`Relaxed` is enough for
    /// a single byte; use `Acquire` on a flag the writer publishes with
    /// `Release`), so the compiler never assumes the bytes hold still.
    pub fn user_shared(&self, i: usize) -> &[AtomicU8] {
        let s = &self.slots[i];
        // SAFETY: the range is mapped for as long as `self` lives, and
        // AtomicU8 has the size, alignment and bit validity of u8; reading it
        // through atomics is sound while the owner writes it.
        unsafe {
            std::slice::from_raw_parts(
                self.addr(s.offset + SYSTEM_SIZE)
                    .as_ptr()
                    .cast::<AtomicU8>(),
                s.len - SYSTEM_SIZE,
            )
        }
    }

    /// The header of region `i`, for reading.
    pub fn header(&self, i: usize) -> &Header {
        let p = self.addr(self.slots[i].offset).as_ptr();
        // SAFETY: every region starts page-aligned and is longer than a
        // Header; Header is Plain, so any bytes are a valid value.
        unsafe { &*p.cast::<Header>() }
    }

    /// The header of region `i` if it is initialised and names `pid` as
    /// the process that last started on it: the only header whose word
    /// (heartbeat, allocation counters, resumed checkpoint) the root
    /// believes about that process. A header left by an earlier process,
    /// or garbage, is `None`.
    pub fn header_of(&self, i: usize, pid: sys::Pid) -> Option<&Header> {
        let h = self.header(i);
        let named = h.magic.load(Ordering::Acquire) == MAGIC
            && h.pid.load(Ordering::Relaxed) == pid.0 as u32;
        named.then_some(h)
    }

    /// The read-write descriptor of a region with a file of its own (an
    /// exec'd daemon's), or `None` for a region in the arena.
    pub fn own_fd(&self, i: usize) -> Option<&OwnedFd> {
        match &self.slots[i].backing {
            Backing::Own(fd) => Some(fd),
            Backing::Arena(_) => None,
        }
    }

    /// Bytes of region `i`, system area included.
    pub fn region_len(&self, i: usize) -> usize {
        self.slots[i].len
    }

    /// Zeroes the user area of region `i` (for `on_restart = "fresh"`),
    /// keeping the system area and its flight log.
    pub fn zero_user(&self, i: usize) -> io::Result<()> {
        let (fd, off) = self.file(i);
        let s = &self.slots[i];
        sys::zero_range(fd, off + SYSTEM_SIZE as u64, (s.len - SYSTEM_SIZE) as u64)
    }

    /// In a freshly forked daemon: maps region `i` writable over its
    /// read-only view and returns it. Fork-safe. Call once per process.
    ///
    /// # Safety
    /// The caller must be the single owner of region `i` in this process
    /// (the daemon just forked for it), holding no reference into it.
    pub unsafe fn enter(&self, i: usize) -> io::Result<&'static mut [u8]> {
        let s = &self.slots[i];
        let addr = self.addr(s.offset);
        let (fd, off) = self.file(i);
        // SAFETY: the range is inside our reservation; the caller holds no
        // reference into it.
        unsafe { sys::map_fixed(addr, s.len, fd, off, sys::Access::ReadWrite)? };
        // SAFETY: just mapped writable; the mapping is never removed while
        // the process lives (the RegionSet is never dropped in a daemon),
        // and this is the only mutable reference the process makes.
        Ok(unsafe { std::slice::from_raw_parts_mut(addr.as_ptr(), s.len) })
    }
}

impl Drop for RegionSet {
    fn drop(&mut self) {
        // SAFETY: the reservation is ours; views borrow `self`, so none
        // outlive it.
        let _ = unsafe { sys::unmap(self.base, self.len) };
    }
}

/// Initialises the header of a region this process now owns. Fork-safe.
///
/// # Safety
/// `region` must point to the start of a region mapped writable in this
/// process for the rest of its life (see [`RegionSet::enter`]).
pub unsafe fn claim(region: NonNull<u8>) -> &'static Header {
    // SAFETY: the region is page-aligned, longer than a Header, mapped for
    // the process's life, and Header is Plain; every field is atomic, so
    // readers in other processes are fine.
    let h = unsafe { &*region.as_ptr().cast::<Header>() };
    if h.magic.load(Ordering::Acquire) != MAGIC || h.layout.load(Ordering::Relaxed) != LAYOUT {
        h.starts.store(0, Ordering::Relaxed);
        h.heartbeat_ns.store(0, Ordering::Relaxed);
        h.layout.store(LAYOUT, Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Release);
    }
    h.pid.store(sys::getpid().0 as u32, Ordering::Relaxed);
    h.resumed_seq.store(0, Ordering::Relaxed);
    h.starts.fetch_add(1, Ordering::Relaxed);
    h.heartbeat_ns.store(sys::monotonic_ns(), Ordering::Release);
    h
}

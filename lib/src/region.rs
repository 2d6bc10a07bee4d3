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
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
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
    /// Its file could not be made (ENOSPC, ENOMEM, EMFILE, ...): the range
    /// stays reserved and unmapped until [`RegionSet::ensure`] makes it.
    Missing,
}

/// The error a call on a [`Backing::Missing`] region's file gives: the
/// kernel's for a descriptor that is not open. Allocates nothing.
fn no_file() -> io::Error {
    io::Error::from_raw_os_error(libc::EBADF)
}

#[derive(Debug)]
struct Slot {
    /// Offset of the region inside the reservation.
    offset: usize,
    /// Bytes of the region: SYSTEM_SIZE + the page-rounded user size.
    len: usize,
    backing: Backing,
    /// The daemon's name (for a memfd's name and messages).
    name: String,
    /// The `state_dir` file, for a region that has one.
    path: Option<PathBuf>,
    /// Device and inode of that file when the root opened it: a file at
    /// `path` with another identity replaced it.
    id: Option<(u64, u64)>,
    /// An exec'd program's region (a sealed memfd of its own).
    program: bool,
}

/// What [`RegionSet::ensure`] found wrong with a region's file (and put
/// right where it could).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// The file was shorter than the region (truncated by someone): it was
    /// grown back, and the bytes past `size` read as zeroes now.
    Truncated {
        /// Its size when found.
        size: u64,
    },
    /// The file was longer than the region: cut back to the region's size
    /// (nothing the daemon maps changed).
    Grown {
        /// Its size when found.
        size: u64,
    },
    /// Another file (or none) is at the region file's path now: the daemon
    /// keeps the file the root opened, and a later root will use the new
    /// one.
    Replaced,
    /// The file could not be made before; it is now, empty.
    Made,
    /// The file had holes (blocks given back by another process, or a
    /// zeroing that could not allocate them again): they have blocks again,
    /// and those pages read as zeroes.
    Holes,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::Truncated { size } => {
                write!(
                    f,
                    "region file truncated to {size} bytes (restored, zeroed past it)"
                )
            }
            Damage::Grown { size } => write!(f, "region file grown to {size} bytes (cut back)"),
            Damage::Replaced => write!(
                f,
                "region file replaced or removed (the daemon keeps the file the root opened)"
            ),
            Damage::Made => write!(f, "region made (it could not be before)"),
            Damage::Holes => write!(
                f,
                "region file had holes (given blocks again; those pages read as zeroes)"
            ),
        }
    }
}

/// Plain values copied out of a region's [`Header`] (see
/// [`RegionSet::header`]): the owner's word, to check before believing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeaderCopy {
    /// [`Header::magic`].
    pub magic: u64,
    /// [`Header::layout`].
    pub layout: u32,
    /// [`Header::pid`].
    pub pid: u32,
    /// [`Header::heartbeat_ns`].
    pub heartbeat_ns: u64,
    /// [`Header::starts`].
    pub starts: u64,
    /// [`Header::alloc_policy`].
    pub alloc_policy: u32,
    /// [`Header::allocs`].
    pub allocs: u64,
    /// [`Header::alloc_bytes`].
    pub alloc_bytes: u64,
    /// [`Header::resumed_seq`].
    pub resumed_seq: u64,
}

impl HeaderCopy {
    /// Whether the header is initialised and names process `pid` as its
    /// owner: only then is the rest of it that process's word.
    pub fn owned_by(&self, pid: u32) -> bool {
        self.magic == MAGIC && self.layout == LAYOUT && self.pid == pid
    }

    fn decode(b: &[u8; HEADER_BYTES]) -> HeaderCopy {
        use std::mem::offset_of;
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        HeaderCopy {
            magic: u64_at(offset_of!(Header, magic)),
            layout: u32_at(offset_of!(Header, layout)),
            pid: u32_at(offset_of!(Header, pid)),
            heartbeat_ns: u64_at(offset_of!(Header, heartbeat_ns)),
            starts: u64_at(offset_of!(Header, starts)),
            alloc_policy: u32_at(offset_of!(Header, alloc_policy)),
            allocs: u64_at(offset_of!(Header, allocs)),
            alloc_bytes: u64_at(offset_of!(Header, alloc_bytes)),
            resumed_seq: u64_at(offset_of!(Header, resumed_seq)),
        }
    }
}

const HEADER_BYTES: usize = std::mem::size_of::<Header>();

/// A private copy of a region's flight log area, 8-byte aligned, for
/// [`crate::log::tail`]. Bytes the file did not have read as zeroes.
#[derive(Debug)]
pub struct LogCopy {
    words: Box<[u64]>,
}

impl LogCopy {
    /// The copied bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the words are owned, initialised and not shared; u8 has no
        // invalid values and an alignment of 1, and the byte length is the
        // words' length times 8.
        unsafe {
            std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.words.len() * 8)
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes this the only view.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.words.as_mut_ptr().cast::<u8>(),
                self.words.len() * 8,
            )
        }
    }
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
/// The root maps them only for its children to inherit: it never reads
/// them through the mapping itself, but copies bytes out with
/// [`RegionSet::read`] (`pread` on its descriptor), so a file truncated
/// under it cannot fault it.
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
    /// Counts the changes to the set's layout (a region made, added,
    /// replaced or released): a copy of the set taken in a fork is out of
    /// date once this moves on.
    generation: u64,
}

/// Reserves the address space for regions of `lens` bytes (`len` in all,
/// guard pages included), with room for regions added at run time if the
/// address space allows. Returns the base and the length reserved.
fn reserve_for(
    specs: &[RegionSpec<'_>],
    lens: &[usize],
    len: usize,
) -> io::Result<(NonNull<u8>, usize)> {
    match sys::reserve(len + GROWTH) {
        Ok(base) => Ok((base, len + GROWTH)),
        Err(_) => match sys::reserve(len) {
            Ok(base) => Ok((base, len)),
            // No room (a low RLIMIT_AS, overcommit refused): the
            // message names the daemon that asks for the most.
            Err(e) => {
                let largest = specs.iter().zip(lens).max_by_key(|(_, &l)| l);
                let who = largest
                    .map(|(s, l)| format!("; the largest, daemon {:?}'s, {l} bytes", s.name))
                    .unwrap_or_default();
                Err(io::Error::new(
                    e.kind(),
                    format!("{len} bytes of address space for the regions{who}: {e}"),
                ))
            }
        },
    }
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
        let (base, len) = reserve_for(specs, &lens, len)?;
        let mut set = RegionSet {
            base,
            len,
            slots: Vec::with_capacity(specs.len()),
            arena: None,
            end: 0,
            generation: 0,
        };
        if arena_len > 0 {
            set.map_arena(page, arena_len)?;
        }
        let mut arena_off = 0usize;
        let mut own_off = page + arena_len + page;
        for (spec, &rlen) in specs.iter().zip(&lens) {
            let name = spec.name.to_owned();
            if in_arena(spec) {
                set.slots.push(Slot {
                    offset: page + arena_off,
                    len: rlen,
                    backing: Backing::Arena(arena_off as u64),
                    name,
                    path: None,
                    id: None,
                    program: false,
                });
                arena_off += rlen;
                continue;
            }
            // A region handed to an exec'd program (`own_file`) is always a
            // sealed memfd, even with a state_dir: a regular file cannot be
            // sealed, and a program could truncate it. Such regions live as
            // long as the root. A `state_dir` file can be truncated by any
            // process of the user: the root never reads its mapping (see
            // `read`), and `ensure` repairs it before each start.
            let path = state_dir
                .filter(|_| !spec.own_file)
                .map(|dir| dir.join(format!("{}.region", spec.name)));
            set.slots.push(Slot {
                offset: own_off,
                len: rlen,
                backing: Backing::Missing,
                name,
                path,
                id: None,
                program: spec.own_file,
            });
            own_off += rlen + page;
        }
        set.end = own_off;
        // A file that cannot be made now (a full disk, no memory, no
        // descriptor) leaves its daemon, not the tree, unable to start:
        // `ensure` tries again before each start.
        for i in 0..set.slots.len() {
            if matches!(set.slots[i].backing, Backing::Missing) {
                if let Err(e) = set.make(i) {
                    tracing::error!(daemon = %set.slots[i].name, error = %e, "cannot make the region");
                }
            }
        }
        Ok(set)
    }

    /// Makes the arena memfd of `arena_len` bytes and maps it read-only at
    /// `page`, right after the reservation's first guard page.
    fn map_arena(&mut self, page: usize, arena_len: usize) -> io::Result<()> {
        let arena = sys::memfd_sealed(c"forkroot:arena", arena_len as u64).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("the region arena ({arena_len} bytes): {e}"),
            )
        })?;
        let ro = sys::reopen_read_only(arena.as_fd())?;
        // SAFETY: [base+page, +arena_len) lies inside our reservation,
        // and no reference into it exists yet.
        unsafe {
            sys::map_fixed(
                self.addr(page),
                arena_len,
                ro.as_fd(),
                0,
                sys::Access::ReadOnly,
            )?
        };
        self.arena = Some(arena);
        Ok(())
    }

    /// Makes the file of own-file region `i` (a `state_dir` file, or a
    /// sealed memfd) and maps it read-only at its place.
    fn make(&mut self, i: usize) -> io::Result<()> {
        self.generation += 1;
        let s = &self.slots[i];
        let (name, rlen) = (&s.name, s.len);
        let fd = match &s.path {
            Some(path) => sys::file_region(path, rlen as u64),
            None => {
                let cname = CString::new(format!("forkroot:{name}")).map_err(io::Error::other)?;
                sys::memfd_sealed(&cname, rlen as u64)
            }
        }
        .map_err(|e| io::Error::new(e.kind(), format!("region of {name:?} ({rlen} bytes): {e}")))?;
        let ro = sys::reopen_read_only(fd.as_fd())?;
        // SAFETY: [addr, addr+rlen) is this slot's range inside our
        // reservation; the root never makes references into it.
        unsafe {
            sys::map_fixed(
                self.addr(s.offset),
                rlen,
                ro.as_fd(),
                0,
                sys::Access::ReadOnly,
            )?
        };
        let id = sys::file::fstat(fd.as_fd())?;
        let s = &mut self.slots[i];
        s.id = Some((id.dev, id.ino));
        s.backing = Backing::Own(fd);
        Ok(())
    }

    /// A region for a daemon added at run time (a reload): a file of its
    /// own (a sealed memfd, or its `state_dir` file), placed in the room
    /// [`GROWTH`] left at the end of the reservation. Processes forked
    /// before do not see it. Returns its index, the next one. A file that
    /// cannot be made now is made by [`RegionSet::ensure`] before a start,
    /// as at [`RegionSet::create`].
    pub fn add(&mut self, spec: &RegionSpec<'_>, state_dir: Option<&Path>) -> io::Result<usize> {
        self.generation += 1;
        let slot = self.grow(spec, state_dir)?;
        self.slots.push(slot);
        let i = self.slots.len() - 1;
        if let Err(e) = self.make(i) {
            tracing::error!(daemon = %spec.name, error = %e, "cannot make the region");
        }
        Ok(i)
    }

    /// Region `i` is replaced by one of `spec`'s size, at a new place (its
    /// daemon's `memory` changed at a reload, and it has no process). The
    /// old one is released; a `state_dir` file is the same file, resized.
    pub fn replace(
        &mut self,
        i: usize,
        spec: &RegionSpec<'_>,
        state_dir: Option<&Path>,
    ) -> io::Result<()> {
        self.generation += 1;
        let slot = self.grow(spec, state_dir)?;
        self.release(i);
        self.slots[i] = slot;
        if let Err(e) = self.make(i) {
            tracing::error!(daemon = %spec.name, error = %e, "cannot make the region");
        }
        Ok(())
    }

    /// Gives back the memory of region `i` (its daemon was removed, or its
    /// region replaced): its pages are punched out of its file, which
    /// reads as zeroes from then on. A `state_dir` file is kept whole.
    pub fn release(&mut self, i: usize) {
        self.generation += 1;
        if self.slots[i].path.is_none() && !matches!(self.slots[i].backing, Backing::Missing) {
            if let Some((fd, off)) = self.file(i) {
                let _ = sys::punch_hole(fd, off, self.slots[i].len as u64);
            }
        }
    }

    /// A slot for a new own-file region after the last one, if the
    /// reservation has room left (its file not made yet).
    fn grow(&mut self, spec: &RegionSpec<'_>, state_dir: Option<&Path>) -> io::Result<Slot> {
        let page = sys::page_size();
        let rlen = SYSTEM_SIZE + page_round(spec.user) as usize;
        if self.end + rlen + page > self.len {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!(
                    "no address space left for regions added at run time \
                     ({GROWTH} bytes reserved at start, {rlen} asked): restart the root"
                ),
            ));
        }
        let slot = Slot {
            offset: self.end,
            len: rlen,
            backing: Backing::Missing,
            name: spec.name.to_owned(),
            path: state_dir
                .filter(|_| !spec.own_file)
                .map(|dir| dir.join(format!("{}.region", spec.name))),
            id: None,
            program: spec.own_file,
        };
        self.end += rlen + page;
        Ok(slot)
    }

    /// Before a start of daemon `i`: makes its region if it could not be
    /// made before, and checks the file of a `state_dir` region (which any
    /// process of the user may truncate, grow or replace), putting its size
    /// right. Returns what it found; an error (ENOSPC, ENOMEM, EMFILE ...)
    /// means the daemon cannot start now.
    pub fn ensure(&mut self, i: usize) -> io::Result<Option<Damage>> {
        if matches!(self.slots[i].backing, Backing::Missing) {
            self.make(i)?;
            return Ok(Some(Damage::Made));
        }
        let s = &self.slots[i];
        let (Backing::Own(fd), Some(path)) = (&s.backing, &s.path) else {
            // The arena and memfds are sealed against resizing.
            return Ok(None);
        };
        let now = sys::file::fstat(fd.as_fd())?;
        let len = s.len as u64;
        if now.size < len {
            // fallocate grows the file and gives it its blocks at once, or
            // fails whole (ENOSPC): then it is still short, and found so
            // again at the next try.
            sys::allocate(fd.as_fd(), 0, len)?;
            return Ok(Some(Damage::Truncated { size: now.size }));
        }
        if now.size > len {
            sys::file::set_len(fd.as_fd(), len)?;
            return Ok(Some(Damage::Grown { size: now.size }));
        }
        if !sys::mem::fully_allocated(fd.as_fd(), len) {
            // A page without a block faults (SIGBUS) on a full disk: give
            // it one first, or fail whole (ENOSPC) and retry later.
            sys::allocate(fd.as_fd(), 0, len)?;
            return Ok(Some(Damage::Holes));
        }
        let at_path = sys::file::stat(path).ok().map(|f| (f.dev, f.ino));
        if at_path != s.id {
            // Reported once: the identity the root checks against is now
            // the new file's (or none).
            self.slots[i].id = at_path;
            return Ok(Some(Damage::Replaced));
        }
        Ok(None)
    }

    fn addr(&self, offset: usize) -> NonNull<u8> {
        debug_assert!(offset < self.len);
        // SAFETY: offset is inside the reservation, so the pointer is too.
        unsafe { self.base.add(offset) }
    }

    /// The descriptor and file offset behind region `i`.
    fn file(&self, i: usize) -> Option<(BorrowedFd<'_>, u64)> {
        match &self.slots[i].backing {
            Backing::Arena(off) => Some((
                self.arena
                    .as_ref()
                    .expect("an arena region has an arena")
                    .as_fd(),
                *off,
            )),
            Backing::Own(fd) => Some((fd.as_fd(), 0)),
            Backing::Missing => None,
        }
    }

    /// Whether region `i` is an exec'd program's (a file of its own,
    /// handed to the program).
    pub fn is_program(&self, i: usize) -> bool {
        self.slots.get(i).is_some_and(|s| s.program)
    }

    /// Unmaps, in this process, the exec'd programs' regions and the guard
    /// page after each: a process that forks built-in daemons (the root's
    /// zygote) keeps them out of its children, each of which would
    /// otherwise copy two mappings per program at its fork and tear them
    /// down at its exit. Built-in daemons do not see exec'd siblings'
    /// regions ([`crate::daemon::Siblings::get`]).
    ///
    /// # Safety
    /// Nothing in this process refers into those regions, or will.
    pub unsafe fn unmap_programs(&self) -> io::Result<()> {
        let page = sys::page_size();
        for s in self.slots.iter().filter(|s| s.program) {
            // SAFETY: the slot and its guard page lie inside the
            // reservation; the caller guarantees no reference into them.
            unsafe { sys::unmap(self.addr(s.offset), s.len + page)? };
        }
        Ok(())
    }

    /// The layout's generation: it moves on with every region made,
    /// added, replaced or released.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are no regions.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Copies bytes `[offset, offset + buf.len())` of region `i` into
    /// `buf` and returns how many there were.
    ///
    /// This is how the root reads shared memory, whatever backs it: with
    /// pread(2) on its own descriptor, never through its mapping. The kernel
    /// does the copy, so a file truncated under the root gives a short read
    /// (the rest of `buf` is zeroed), never a SIGBUS; and the root's code
    /// never holds a reference to bytes another process is writing. The copy
    /// is not atomic: a value the owner writes meanwhile may be torn, so
    /// callers validate what they read (the flight log's records carry a
    /// hash; [`RegionSet::header`] reads until two copies agree).
    pub fn read(&self, i: usize, offset: usize, buf: &mut [u8]) -> io::Result<usize> {
        let s = &self.slots[i];
        let end = s.len.min(offset.saturating_add(buf.len()));
        let want = end.saturating_sub(offset);
        let n = match self.file(i) {
            Some((fd, base)) if want > 0 => {
                sys::file::pread_full(fd, &mut buf[..want], base + offset as u64)?
            }
            _ => 0,
        };
        buf[n..].fill(0);
        Ok(n)
    }

    /// A copy of the header of region `i`, or `None` if the file is too
    /// short to hold one or cannot be read. Read until two consecutive
    /// copies agree (at most a few times), so a heartbeat the owner writes
    /// meanwhile is not seen torn.
    pub fn header(&self, i: usize) -> Option<HeaderCopy> {
        let mut last = None;
        for _ in 0..4 {
            let mut b = [0u8; HEADER_BYTES];
            if self.read(i, 0, &mut b).ok()? < HEADER_BYTES {
                return None;
            }
            let h = HeaderCopy::decode(&b);
            if last == Some(h) {
                break;
            }
            last = Some(h);
        }
        last
    }

    /// A copy of the flight log area of region `i` (see [`RegionSet::read`];
    /// unreadable bytes read as zeroes, which no record validates).
    pub fn log_copy(&self, i: usize) -> LogCopy {
        let mut copy = LogCopy {
            words: vec![0u64; LOG_SIZE / 8].into_boxed_slice(),
        };
        if self.read(i, LOG_OFFSET, copy.bytes_mut()).is_err() {
            copy.bytes_mut().fill(0);
        }
        copy
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

    /// A copy of the header of region `i` if it is initialised and names
    /// `pid` as the process that last started on it: the only header whose
    /// word (heartbeat, allocation counters, resumed checkpoint) the root
    /// believes about that process. A header left by an earlier process,
    /// garbage, or a file too short to hold one is `None`.
    pub fn header_of(&self, i: usize, pid: sys::Pid) -> Option<HeaderCopy> {
        self.header(i).filter(|h| h.owned_by(pid.as_u32()))
    }

    /// The read-write descriptor of a region with a file of its own (an
    /// exec'd daemon's), or `None` for a region in the arena.
    pub fn own_fd(&self, i: usize) -> Option<&OwnedFd> {
        match &self.slots[i].backing {
            Backing::Own(fd) => Some(fd),
            Backing::Arena(_) | Backing::Missing => None,
        }
    }

    /// Bytes of region `i`, system area included.
    pub fn region_len(&self, i: usize) -> usize {
        self.slots[i].len
    }

    /// Zeroes the user area of region `i` (for `on_restart = "fresh"`),
    /// keeping the system area and its flight log.
    pub fn zero_user(&self, i: usize) -> io::Result<()> {
        let (fd, off) = self.file(i).ok_or_else(no_file)?;
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
        let (fd, _) = self.file(i).ok_or_else(no_file)?;
        // SAFETY: the caller's promise, passed on; the file is ours.
        unsafe { self.enter_from(i, fd.as_raw_fd()) }
    }

    /// The descriptor of the file region `i` is in (the arena's or its
    /// own), `None` for a region without one.
    pub(crate) fn file_fd(&self, i: usize) -> Option<RawFd> {
        self.file(i).map(|(fd, _)| fd.as_raw_fd())
    }

    /// [`RegionSet::enter`] through `fd`, a copy of the descriptor
    /// [`RegionSet::file_fd`] gives (a child may hold it at another
    /// number). Fork-safe.
    ///
    /// # Safety
    /// As [`RegionSet::enter`], and `fd` must be a copy of
    /// `self.file_fd(i)`, open in this process (the mapping is made from
    /// it at region `i`'s offset).
    pub(crate) unsafe fn enter_from(&self, i: usize, fd: RawFd) -> io::Result<&'static mut [u8]> {
        let s = &self.slots[i];
        let addr = self.addr(s.offset);
        let (_, off) = self.file(i).ok_or_else(no_file)?;
        // SAFETY: the caller promises `fd` is open here.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
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
    h.pid.store(sys::getpid().as_u32(), Ordering::Relaxed);
    h.resumed_seq.store(0, Ordering::Relaxed);
    h.starts.fetch_add(1, Ordering::Relaxed);
    h.heartbeat_ns.store(sys::monotonic_ns(), Ordering::Release);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The root's reader over a `state_dir` file of any size and any bytes:
    /// short reads, never a fault; a header only when there is one.
    #[test]
    fn the_reader_tolerates_any_size_and_any_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let spec = RegionSpec {
            name: "r",
            user: 4096,
            own_file: false,
        };
        let mut set = RegionSet::create(&[spec], Some(dir.path())).unwrap();
        let len = set.region_len(0);
        let path = dir.path().join("r.region");
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for size in [
            0,
            1,
            HEADER_BYTES - 1,
            HEADER_BYTES,
            5000,
            LOG_OFFSET + 100,
            len - 1,
        ] {
            file.set_len(size as u64).unwrap();
            // Garbage in what is left.
            let garbage: Vec<u8> = (0..size)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            std::os::unix::fs::FileExt::write_all_at(&file, &garbage, 0).unwrap();
            assert_eq!(set.header(0).is_some(), size >= HEADER_BYTES, "size {size}");
            let mut buf = vec![0xeeu8; len + 10];
            let n = set.read(0, 0, &mut buf).unwrap();
            assert_eq!(n, size);
            assert!(buf[n..].iter().all(|&b| b == 0), "zeroed past the file");
            let copy = set.log_copy(0);
            assert_eq!(copy.bytes().len(), LOG_SIZE);
            crate::log::tail(copy.bytes(), crate::log::CAPACITY, |_| {});
            // Found and made whole before the next start.
            assert_eq!(
                set.ensure(0).unwrap(),
                Some(Damage::Truncated { size: size as u64 })
            );
            assert_eq!(std::fs::metadata(&path).unwrap().len(), len as u64);
            assert_eq!(set.ensure(0).unwrap(), None);
        }
        // Longer: cut back.
        file.set_len(len as u64 + 4096).unwrap();
        assert_eq!(
            set.ensure(0).unwrap(),
            Some(Damage::Grown {
                size: len as u64 + 4096
            })
        );
        // Another file at the path.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"x").unwrap();
        assert_eq!(set.ensure(0).unwrap(), Some(Damage::Replaced));
        assert_eq!(set.ensure(0).unwrap(), None, "reported once");
    }
}

//! Typed `#[repr(C)]` views of a daemon's user area behind a versioned header.
//!
//! The user area of a region outlives the daemon that writes it, so a
//! replacement must be able to tell three situations apart before it reads a
//! single byte of its state:
//!
//! - the area is **empty** (never used, or zeroed for a `fresh` restart): the
//!   library zeroes it, writes a header and hands out a zeroed `T`;
//! - the area holds state of **the same layout**: it is handed out as it is;
//! - the area holds state of **another layout** (the daemon author bumped the
//!   layout version, or the type's size or alignment changed): the daemon gets
//!   [`StateError::LayoutChanged`] instead of reading garbage.
//!
//! Layout of an area attached with [`attach`]:
//!
//! ```text
//! 0              64                     body_offset::<T>()
//! | StateHeader  | (padding to align T) | T |
//! ```
//!
//! The checkpoint schemes in [`crate::checkpoint`] put the same header first
//! and lay their own structures after it; the header's `kind` tells them
//! apart, so attaching an area with the wrong scheme is a layout change too.

use crate::region::Plain;
use crate::sys;
use std::fmt;
use std::marker::PhantomData;
use std::mem::{align_of, size_of};
use std::ops::{Deref, DerefMut};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU64, Ordering};

/// The value of [`StateHeader`]'s `magic` once the header is complete.
pub const STATE_MAGIC: u64 = u64::from_le_bytes(*b"FRKSTATE");

/// Size in bytes of [`StateHeader`]; the first structure after it starts here.
pub const HEADER_SIZE: usize = 64;

/// Alignment every area must have: the atomics in the headers need 8, and
/// the structures after the header are laid out on cache lines.
pub const AREA_ALIGN: usize = 64;

/// Which structure follows the header (the `kind` field of a [`Layout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Kind {
    /// A bare `T` after the header ([`attach`]).
    Plain = 1,
    /// A live `T` and checkpoint slots ([`crate::checkpoint::Checkpoints`]).
    Slots = 2,
    /// An undo journal and a live `T` committed in place
    /// ([`crate::checkpoint::InPlace`]).
    Journal = 3,
}

/// What a header records about the state behind it.
///
/// Two layouts match when everything but `type_hash` is equal. The hash of
/// the type's name is kept for diagnostics only: type names are not stable
/// across compiler versions, and renaming a type must not throw state away.
/// The daemon author's `version` is the contract; size and alignment are a
/// safety net for a forgotten version bump.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Layout {
    /// The layout version the daemon author chose.
    pub version: u32,
    /// Raw [`Kind`] of the structure after the header.
    pub kind: u32,
    /// `size_of::<T>()`.
    pub type_size: u64,
    /// `align_of::<T>()`.
    pub type_align: u32,
    /// A parameter of the kind: slot count for [`Kind::Slots`], journal
    /// capacity in bytes for [`Kind::Journal`], 0 for [`Kind::Plain`].
    pub param: u64,
    /// FNV-1a hash of `std::any::type_name::<T>()` (informational).
    pub type_hash: u64,
}

impl Layout {
    /// The layout of `T` at `version`, as a structure of `kind` with `param`.
    pub fn of<T: Plain>(version: u32, kind: Kind, param: u64) -> Self {
        Layout {
            version,
            kind: kind as u32,
            type_size: size_of::<T>() as u64,
            type_align: align_of::<T>() as u32,
            param,
            type_hash: fnv1a(std::any::type_name::<T>().as_bytes()),
        }
    }

    /// Whether state written under `self` may be read as `other`.
    pub fn matches(&self, other: &Layout) -> bool {
        self.version == other.version
            && self.kind == other.kind
            && self.type_size == other.type_size
            && self.type_align == other.type_align
            && self.param == other.param
    }

    /// The crc32 a header of this layout carries.
    fn crc(&self) -> u32 {
        let mut h = crc32fast::Hasher::new();
        h.update(&STATE_MAGIC.to_le_bytes());
        h.update(&self.version.to_le_bytes());
        h.update(&self.kind.to_le_bytes());
        h.update(&self.type_align.to_le_bytes());
        h.update(&self.type_size.to_le_bytes());
        h.update(&self.param.to_le_bytes());
        h.update(&self.type_hash.to_le_bytes());
        h.finalize()
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "version {} (kind {}, size {}, align {}, param {})",
            self.version, self.kind, self.type_size, self.type_align, self.param
        )
    }
}

/// The header at offset 0 of every attached user area (64 bytes).
///
/// Written once, when an empty area is first attached: every field first,
/// `magic` last with a Release store, so a crash while writing it leaves
/// `magic == 0` and the area is seen as empty again.
#[repr(C)]
#[derive(Debug)]
pub struct StateHeader {
    /// 0: the area is empty (whatever the other bytes hold);
    /// [`STATE_MAGIC`]: the header is complete; anything else: not a header.
    magic: AtomicU64,
    /// crc32 of magic and the layout fields below ([`Layout::crc`]); a
    /// mismatch means the header itself was corrupted.
    crc: u32,
    /// [`Layout::version`].
    version: u32,
    /// [`Layout::kind`].
    kind: u32,
    /// [`Layout::type_align`].
    type_align: u32,
    /// [`Layout::type_size`].
    type_size: u64,
    /// [`Layout::param`].
    param: u64,
    /// [`Layout::type_hash`].
    type_hash: u64,
    /// Zero; room for later fields without moving the body.
    _reserved: [u64; 2],
}

const _: () = assert!(size_of::<StateHeader>() == HEADER_SIZE);

// SAFETY: repr(C), integers and an atomic integer only, no pointers; every
// bit pattern is a valid value.
unsafe impl Plain for StateHeader {}

impl StateHeader {
    fn layout(&self) -> Layout {
        Layout {
            version: self.version,
            kind: self.kind,
            type_size: self.type_size,
            type_align: self.type_align,
            param: self.param,
            type_hash: self.type_hash,
        }
    }
}

/// Whether an attached area was empty or already held state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// The area was empty: it was zeroed and a header written. The state is
    /// all zeroes.
    Fresh,
    /// The area held state of the same layout, handed out unchanged.
    Matched,
}

/// Why an area could not be attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateError {
    /// The area is smaller than the layout needs.
    TooSmall {
        /// Bytes the layout needs.
        need: usize,
        /// Bytes the area has.
        have: usize,
    },
    /// The area does not start on an [`AREA_ALIGN`] (or `align_of::<T>()`) boundary.
    Misaligned {
        /// Alignment needed.
        align: usize,
        /// Address of the area.
        addr: usize,
    },
    /// The area holds state of another layout: the daemon must not read it
    /// as its current type. Zero it ([`zero`]) or migrate it.
    LayoutChanged {
        /// Version found in the header.
        found_version: u32,
        /// Version the daemon asked for.
        expected_version: u32,
        /// Everything the header records.
        found: Layout,
        /// What the daemon asked for.
        expected: Layout,
    },
    /// The first 8 bytes are neither 0 nor [`STATE_MAGIC`]: this is not a
    /// state header (or it was overwritten).
    BadMagic {
        /// The value found.
        found: u64,
    },
    /// The header's crc does not match its fields: the header was corrupted.
    CorruptHeader {
        /// crc stored in the header.
        stored: u32,
        /// crc computed over the header's fields.
        computed: u32,
    },
    /// A page of the area has no block in its file and none can be had
    /// ([`zero`]): the file system behind a `state_dir` is full (or the
    /// file was cut short), or there is no memory. The area was not changed.
    NoBacking {
        /// What the kernel said.
        error: String,
    },
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::TooSmall { need, have } => {
                write!(f, "state area too small: need {need} bytes, have {have}")
            }
            StateError::Misaligned { align, addr } => {
                write!(f, "state area at {addr:#x} is not aligned to {align} bytes")
            }
            StateError::LayoutChanged {
                found, expected, ..
            } => write!(
                f,
                "state layout changed: found {found}, expected {expected}"
            ),
            StateError::BadMagic { found } => {
                write!(f, "state area has no state header (magic {found:#018x})")
            }
            StateError::CorruptHeader { stored, computed } => write!(
                f,
                "state header corrupted (crc {stored:#010x}, computed {computed:#010x})"
            ),
            StateError::NoBacking { error } => {
                write!(f, "state area cannot be zeroed: {error}")
            }
        }
    }
}

impl std::error::Error for StateError {}

/// Rounds `n` up to a multiple of `align` (a power of two).
pub(crate) const fn round_up(n: usize, align: usize) -> usize {
    (n + align - 1) & !(align - 1)
}

/// Offset of the `T` behind the header in an area attached with [`attach`].
pub const fn body_offset<T>() -> usize {
    round_up(HEADER_SIZE, align_of::<T>())
}

/// Bytes an area needs to hold a `T` behind the header ([`attach`]).
pub const fn required_size<T>() -> usize {
    body_offset::<T>() + size_of::<T>()
}

/// Reads the header of an area without changing it: `Ok(None)` for an empty
/// area, the recorded layout otherwise. For the root and for `decide`
/// restarts that want to know what an area holds before attaching it.
pub fn read_layout(area: &[u8]) -> Result<Option<Layout>, StateError> {
    check_area(area.as_ptr(), area.len(), HEADER_SIZE, AREA_ALIGN)?;
    // Copied out, not borrowed: a `&StateHeader` made from a read-only slice
    // would grant its atomics write access they do not have (undefined
    // behaviour under Stacked Borrows, which Miri checks). A copy torn by a
    // concurrent writer fails the magic or the crc.
    // SAFETY: the area is at least HEADER_SIZE bytes and AREA_ALIGN-aligned
    // (checked above), readable for the borrow; StateHeader is Plain, so any
    // bytes are a valid value.
    let header = unsafe { ptr::read_volatile(area.as_ptr().cast::<StateHeader>()) };
    read_header(&header)
}

fn read_header(header: &StateHeader) -> Result<Option<Layout>, StateError> {
    let magic = header.magic.load(Ordering::Acquire);
    if magic == 0 {
        return Ok(None);
    }
    if magic != STATE_MAGIC {
        return Err(StateError::BadMagic { found: magic });
    }
    let found = header.layout();
    let computed = found.crc();
    if computed != header.crc {
        return Err(StateError::CorruptHeader {
            stored: header.crc,
            computed,
        });
    }
    Ok(Some(found))
}

fn check_area(ptr: *const u8, len: usize, need: usize, align: usize) -> Result<(), StateError> {
    if len < need {
        return Err(StateError::TooSmall { need, have: len });
    }
    if (ptr as usize) % align != 0 {
        return Err(StateError::Misaligned {
            align,
            addr: ptr as usize,
        });
    }
    Ok(())
}

/// Checks an area against `want` and writes a header if it is empty.
///
/// `need` is the total size the layout needs. An empty area (magic 0) is
/// zeroed entirely ([`zero`]) before its header is written, so whatever a
/// crashed writer left behind the header is gone.
pub(crate) fn attach_raw(
    area: &mut [u8],
    want: &Layout,
    need: usize,
) -> Result<Status, StateError> {
    let align = AREA_ALIGN.max(want.type_align as usize);
    check_area(area.as_ptr(), area.len(), need, align)?;
    debug_assert!(area.len() >= HEADER_SIZE);
    let header_ptr = area.as_mut_ptr().cast::<StateHeader>();
    {
        // SAFETY: in bounds and aligned (checked above); StateHeader is
        // Plain. The shared reference ends before `zero` takes the area.
        let header = unsafe { &*header_ptr };
        if let Some(found) = read_header(header)? {
            if found.matches(want) {
                return Ok(Status::Matched);
            }
            return Err(StateError::LayoutChanged {
                found_version: found.version,
                expected_version: want.version,
                found,
                expected: *want,
            });
        }
    }
    zero(area)?;
    // Derived again: `zero` borrowed the whole area mutably, which ends the
    // validity of pointers derived from it before (Miri's Stacked Borrows
    // reports the old one's use as undefined behaviour).
    let header_ptr = area.as_mut_ptr().cast::<StateHeader>();
    // SAFETY: in bounds and aligned (checked above); StateHeader is Plain;
    // `zero` has returned, nothing else in this process borrows the area.
    let header = unsafe { &mut *header_ptr };
    header.crc = want.crc();
    header.version = want.version;
    header.kind = want.kind;
    header.type_align = want.type_align;
    header.type_size = want.type_size;
    header.param = want.param;
    header.type_hash = want.type_hash;
    // Release: every field above is visible before the magic that vouches
    // for them, to this process after a crash and to any reader.
    header.magic.store(STATE_MAGIC, Ordering::Release);
    Ok(Status::Fresh)
}

/// Zeroes an area, header included, so the next attach sees it as empty
/// (the `fresh` restart mode).
///
/// Every page of the area keeps the block it has in its file: the bytes are
/// written with zeroes, never freed (`MADV_REMOVE` would give the blocks
/// back to the file system, and on a full one the daemon's next write to
/// such a page would be a SIGBUS). A page that has no block (a hole punched
/// by another process) is given one first through `MADV_POPULATE_WRITE`,
/// which reports a file system with no space left, or no memory, as
/// [`StateError::NoBacking`] instead of a fault; the area is then left as
/// it was.
pub fn zero(area: &mut [u8]) -> Result<(), StateError> {
    // (Miri cannot call madvise; the fill below gives the same zeroes.)
    // Where the advice does not apply (`Ok(false)`: an anonymous private
    // buffer, a kernel before 5.14) the area is written as it is.
    if !cfg!(miri) {
        if let Err(e) = sys::mem::populate_write(area) {
            return Err(StateError::NoBacking {
                error: e.to_string(),
            });
        }
    }
    area.fill(0);
    Ok(())
}

/// A typed view of a user area, from [`attach`].
///
/// Dereferences to the `T` behind the header.
pub struct Attached<'a, T: Plain> {
    state: NonNull<T>,
    status: Status,
    _area: PhantomData<&'a mut [u8]>,
}

impl<T: Plain> fmt::Debug for Attached<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attached")
            .field("type", &std::any::type_name::<T>())
            .field("status", &self.status)
            .finish()
    }
}

impl<'a, T: Plain> Attached<'a, T> {
    /// Whether the area was empty ([`Status::Fresh`]) or held this layout.
    pub fn status(&self) -> Status {
        self.status
    }

    /// True when the area was empty and the state is all zeroes.
    pub fn is_fresh(&self) -> bool {
        self.status == Status::Fresh
    }

    /// The state, for as long as the area is borrowed.
    pub fn into_mut(self) -> &'a mut T {
        // SAFETY: `state` points at a T inside the area borrowed for 'a
        // (checked in `attach`); `self` is consumed, so this is the only
        // reference.
        unsafe { &mut *self.state.as_ptr() }
    }
}

impl<T: Plain> Deref for Attached<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: `state` is in bounds and aligned for T (checked in
        // `attach`); T is Plain, so any bytes are a valid T.
        unsafe { self.state.as_ref() }
    }
}

impl<T: Plain> DerefMut for Attached<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference.
        unsafe { self.state.as_mut() }
    }
}

/// Attaches a typed view of `T` at layout `version` to a user area.
///
/// An empty area is zeroed and stamped ([`Status::Fresh`]); an area of the
/// same layout is handed out as it is ([`Status::Matched`]); an area of
/// another layout gives [`StateError::LayoutChanged`].
pub fn attach<T: Plain>(area: &mut [u8], version: u32) -> Result<Attached<'_, T>, StateError> {
    let want = Layout::of::<T>(version, Kind::Plain, 0);
    let status = attach_raw(area, &want, required_size::<T>())?;
    let offset = body_offset::<T>();
    debug_assert!(offset + size_of::<T>() <= area.len());
    debug_assert_eq!((area.as_ptr() as usize + offset) % align_of::<T>(), 0);
    // SAFETY: `attach_raw` checked that the area holds `required_size::<T>()`
    // bytes and is aligned to at least align_of::<T>(); body_offset is a
    // multiple of that alignment.
    let ptr = unsafe { area.as_mut_ptr().add(offset) }.cast::<T>();
    Ok(Attached {
        // SAFETY: derived from a slice pointer, never null.
        state: unsafe { NonNull::new_unchecked(ptr) },
        status,
        _area: PhantomData,
    })
}

/// FNV-1a, 64 bits.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    /// Bytes of blocks the file behind `f` has (`st_blocks` is in 512s).
    fn allocated(f: &std::fs::File) -> u64 {
        f.metadata().expect("fstat").blocks() * 512
    }

    #[test]
    fn zero_keeps_every_block_and_gives_a_hole_one_again() {
        const LEN: usize = 16 * 4096;
        let file = std::fs::File::from(sys::memfd_sealed(c"state-test", LEN as u64).unwrap());
        let base = sys::reserve(LEN).unwrap();
        // SAFETY: the range is the reservation just made, nothing refers
        // into it; it stays mapped for the rest of the test (never
        // unmapped: the process ends with it).
        unsafe { sys::map_fixed(base, LEN, file.as_fd(), 0, sys::Access::ReadWrite) }.unwrap();
        // SAFETY: LEN bytes mapped read-write above, borrowed only here.
        let area = unsafe { std::slice::from_raw_parts_mut(base.as_ptr(), LEN) };
        area.fill(0xa5);
        assert_eq!(allocated(&file), LEN as u64);
        // A hole, as another process punching the file leaves one.
        sys::punch_hole(file.as_fd(), 4 * 4096, 2 * 4096).unwrap();
        assert_eq!(allocated(&file), (LEN - 2 * 4096) as u64);
        // Zeroed from the middle of a page to the end: the file has every
        // block again (MADV_REMOVE gave them back to the file system), then
        // (reading a hole would give it a block: checked after) every byte
        // of the area is zero and the bytes before it are kept.
        zero(&mut area[100..]).unwrap();
        assert_eq!(allocated(&file), LEN as u64);
        assert!(area[..100].iter().all(|&b| b == 0xa5));
        assert!(area[100..].iter().all(|&b| b == 0));
    }
}

//! Shared memory: memory files, the address-space reservation regions are
//! mapped into, protection, and advice to the kernel about mapped pages.
//!
//! nix's wrappers throughout (`memfd_create`, `F_ADD_SEALS`, `fallocate`,
//! `mmap` with `MAP_FIXED` into our own reservation, `mprotect`,
//! `madvise`): none allocates, so [`map_fixed`] stays fork-safe. memmap2
//! does not fit here: its maps are placed by the kernel and unmapped on
//! drop, where regions need a fixed place inside one reservation and live
//! as long as the process.

use nix::errno::Errno;
use nix::fcntl::{FallocateFlags, FcntlArg, SealFlag};
use nix::sys::memfd::MFdFlags;
use nix::sys::mman::{MapFlags, MmapAdvise, ProtFlags};
use std::ffi::CStr;
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

/// A length as nix's mappings take it: 0 is the kernel's `EINVAL`.
fn nonzero(len: usize) -> io::Result<NonZeroUsize> {
    NonZeroUsize::new(len).ok_or_else(|| Errno::EINVAL.into())
}

/// An anonymous memory file (memfd) of `size` bytes, with every block
/// allocated up front (so a later page fault cannot SIGBUS on a full tmpfs)
/// and sealed against shrinking and growing (so no process can truncate
/// the state out from under the others).
pub fn memfd_sealed(name: &CStr, size: u64) -> io::Result<OwnedFd> {
    let fd =
        nix::sys::memfd::memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    allocate(fd.as_fd(), 0, size)?;
    let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
    nix::fcntl::fcntl(&fd, FcntlArg::F_ADD_SEALS(seals))?;
    Ok(fd)
}

/// A shared-memory file at `path`, created if missing, of exactly `size`
/// bytes, every block allocated. Used for regions that must survive the
/// root itself (`state_dir`).
pub fn file_region(path: &std::path::Path, size: u64) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)?;
    let len = file.metadata()?.len();
    if len != size {
        if len != 0 {
            // The daemon's `memory` changed: its state keeps what fits (the
            // layout checks of typed state and checkpoints will tell).
            tracing::warn!(
                file = %path.display(),
                was = len,
                now = size,
                "region file resized: the daemon's memory setting changed"
            );
        }
        file.set_len(size)?;
    }
    // A file that already has every block (the root's restart on its
    // state_dir) is not allocated again: fallocate walks every page even
    // when nothing is missing, so the time to ready would grow with
    // `memory`.
    if len != size || !fully_allocated(file.as_fd(), size) {
        allocate(file.as_fd(), 0, size)?;
    }
    Ok(file.into())
}

/// Whether the file at `fd` (`size` bytes long) has a block for every
/// page: its block count covers its size. `SEEK_HOLE` cannot tell: tmpfs
/// and ext4 report fallocated pages not yet written as holes. On tmpfs
/// only data pages are counted; elsewhere a file system's own metadata
/// blocks (ext4's extent index) count too, so a hole smaller than those
/// can pass unseen. `false` where that cannot be told.
#[must_use]
pub fn fully_allocated(fd: BorrowedFd<'_>, size: u64) -> bool {
    // SAFETY: plain data, all-zero valid; filled by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid stat to fill.
    if unsafe { libc::fstat(fd.as_raw_fd(), &raw mut st) } != 0 {
        return false;
    }
    u64::try_from(st.st_blocks).is_ok_and(|b| b * 512 >= size)
}

/// fallocate(2) mode 0: allocates the blocks of `[offset, offset+len)`.
pub fn allocate(fd: BorrowedFd<'_>, at: u64, len: u64) -> io::Result<()> {
    fallocate(fd, FallocateFlags::empty(), at, len)
}

/// fallocate(2), retrying on EINTR.
fn fallocate(fd: BorrowedFd<'_>, mode: FallocateFlags, at: u64, len: u64) -> io::Result<()> {
    let (at, len) = (super::off_t(at)?, super::off_t(len)?);
    loop {
        match nix::fcntl::fallocate(fd, mode, at, len) {
            Err(Errno::EINTR) => {}
            r => return Ok(r?),
        }
    }
}

/// Discards the contents of `[offset, offset+len)` (they read back as
/// zeroes) and allocates the blocks again.
pub fn zero_range(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    punch_hole(fd, offset, len)?;
    allocate(fd, offset, len)
}

/// Discards the contents of `[offset, offset+len)` and frees their memory
/// (they read back as zeroes); the file keeps its size.
pub fn punch_hole(fd: BorrowedFd<'_>, at: u64, len: u64) -> io::Result<()> {
    let mode = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    fallocate(fd, mode, at, len)
}

/// Opens the file behind `fd` again, read-only: a new open file description
/// whose mappings can never be made writable (mprotect fails with EACCES).
pub fn reopen_read_only(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut path = *b"/proc/self/fd/\0\0\0\0\0\0\0\0\0\0\0\0";
    let digits = fd.as_raw_fd().to_string();
    path[14..14 + digits.len()].copy_from_slice(digits.as_bytes());
    // SAFETY: `path` is NUL-terminated (the buffer ends in NULs and an i32
    // has at most 10 digits).
    let raw =
        super::cvt(unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) })?;
    // SAFETY: open returned a fresh descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Reserves `len` bytes of address space with no access (`PROT_NONE`) and no
/// memory behind them; regions are mapped into it with [`map_fixed`], and
/// what stays unmapped between them is a guard.
pub fn reserve(len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: a fresh anonymous PROT_NONE mapping touches no existing memory.
    let p = unsafe {
        nix::sys::mman::mmap_anonymous(
            None,
            nonzero(len)?,
            ProtFlags::PROT_NONE,
            MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
        )
    }?;
    Ok(p.cast())
}

/// Access to a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `PROT_READ`.
    ReadOnly,
    /// `PROT_READ | PROT_WRITE`.
    ReadWrite,
}

impl Access {
    fn prot(self) -> ProtFlags {
        match self {
            Access::ReadOnly => ProtFlags::PROT_READ,
            Access::ReadWrite => ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
        }
    }
}

/// Maps `len` bytes of `fd` from `offset` (page-aligned) shared at exactly
/// `addr`, replacing whatever was mapped there. Fork-safe.
///
/// # Safety
/// `[addr, addr+len)` must lie inside a reservation of this process made by
/// [`reserve`], and no live Rust reference may point into it (the old
/// contents are replaced).
pub unsafe fn map_fixed(
    addr: NonNull<u8>,
    len: usize,
    fd: BorrowedFd<'_>,
    off: u64,
    access: Access,
) -> io::Result<()> {
    let at = NonZeroUsize::new(addr.as_ptr().addr()).expect("a NonNull address is not 0");
    let (len, off) = (nonzero(len)?, super::off_t(off)?);
    // SAFETY: the caller guarantees the range is ours to replace.
    unsafe {
        nix::sys::mman::mmap(
            Some(at),
            len,
            access.prot(),
            MapFlags::MAP_SHARED | MapFlags::MAP_FIXED,
            fd,
            off,
        )
    }?;
    Ok(())
}

/// Unmaps `[addr, addr+len)`.
///
/// # Safety
/// No live reference may point into the range.
pub unsafe fn unmap(addr: NonNull<u8>, len: usize) -> io::Result<()> {
    // SAFETY: the caller guarantees nothing refers into the range.
    unsafe { nix::sys::mman::munmap(addr.cast(), len) }?;
    Ok(())
}

/// mprotect(2) on `[addr, addr+len)`.
///
/// # Safety
/// The range must be mapped by this process, and removing access must not
/// invalidate live references into it.
pub unsafe fn protect(addr: NonNull<u8>, len: usize, access: Access) -> io::Result<()> {
    // SAFETY: the caller guarantees the range and reference rules.
    unsafe { nix::sys::mman::mprotect(addr.cast(), len, access.prot()) }?;
    Ok(())
}

/// The system's page size.
#[must_use]
pub fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|n| usize::try_from(n).ok())
        .expect("the kernel has a page size")
}

/// `madvise(MADV_POPULATE_WRITE)` (Linux 5.14) over the pages holding
/// `range`: makes each present and writable, giving it a block of its
/// backing file first where it has none (a hole), as a write would, but
/// reports a page that cannot be had as an error instead of a fault. No
/// byte changes (the pages at either end may hold bytes outside `range`:
/// they keep them). Fork-safe.
///
/// `Ok(false)` when the advice does not apply (`EINVAL`: a kernel before
/// 5.14, or memory it does not work on): nothing was done. A page that
/// would SIGBUS if written (`EFAULT`: its file system has no space left,
/// or the file is shorter than the mapping) is an error of kind
/// [`io::ErrorKind::StorageFull`] saying so; no memory is `ENOMEM`.
pub fn populate_write(range: &mut [u8]) -> io::Result<bool> {
    if range.is_empty() {
        return Ok(true);
    }
    let page = page_size();
    let first = range.as_mut_ptr();
    // The page holding the first byte: the same pointer moved back to its
    // page's start (keeping its provenance).
    let start = first.wrapping_sub(first.addr() % page);
    let end = (first.addr() + range.len()).next_multiple_of(page);
    let start = NonNull::new(start.cast::<libc::c_void>()).expect("a page of a slice is not null");
    let r = loop {
        // SAFETY: the pages cover `range`, which we borrow mutably, and the
        // bytes around it on its first and last page, which are mapped (a
        // mapping is whole pages); the advice only faults pages in and
        // writes no byte, so no live Rust value sees a change.
        match unsafe {
            nix::sys::mman::madvise(
                start,
                end - start.addr().get(),
                MmapAdvise::MADV_POPULATE_WRITE,
            )
        } {
            Err(Errno::EINTR) => {}
            r => break r,
        }
    };
    match r {
        Ok(()) => Ok(true),
        Err(Errno::EINVAL) => Ok(false),
        Err(Errno::EFAULT) => Err(io::Error::new(
            io::ErrorKind::StorageFull,
            "a page has no block in its file and cannot get one \
             (no space left on its file system, or the file is shorter than the mapping)",
        )),
        Err(e) => Err(e.into()),
    }
}

/// `MADV_DONTFORK` on `[addr, addr+len)`: a child forked later does not
/// inherit the mapping (the root keeps its writable views to itself).
///
/// # Safety
/// The range must be a whole mapping of this process (page-aligned).
pub unsafe fn dont_fork(addr: NonNull<u8>, len: usize) -> io::Result<()> {
    // SAFETY: the caller guarantees the range; the advice changes only what
    // a future fork copies.
    unsafe { nix::sys::mman::madvise(addr.cast(), len, MmapAdvise::MADV_DONTFORK) }?;
    Ok(())
}

/// Gives the heap's free pages back to the kernel (glibc's
/// `malloc_trim(0)`, which also releases whole free pages inside the
/// heap, not only at its top). A process about to fork many times calls it
/// so that no fork copies, and no exit tears down, pages that hold nothing.
/// Elsewhere than on glibc it does nothing.
pub(crate) fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions; it takes the allocator's
    // own locks (the caller is single-threaded).
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `state_dir` file is allocated once: a file with every block is
    /// seen as such, one with a hole (new, or punched) is not, and
    /// `file_region` leaves it with every block.
    #[test]
    fn a_region_file_is_allocated_only_where_it_has_a_hole() {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let path = dir.path().join("r.region");
        let size = 1 << 20;
        let fd = file_region(&path, size).unwrap();
        assert!(fully_allocated(fd.as_fd(), size));
        punch_hole(fd.as_fd(), 4096, 8192).unwrap();
        assert!(!fully_allocated(fd.as_fd(), size), "a punched hole is seen");
        drop(fd);
        let fd = file_region(&path, size).unwrap();
        assert!(fully_allocated(fd.as_fd(), size), "and filled again");
        let sparse = dir.path().join("s.region");
        std::fs::File::create(&sparse)
            .unwrap()
            .set_len(size)
            .unwrap();
        let f = std::fs::File::open(&sparse).unwrap();
        assert!(!fully_allocated(f.as_fd(), size));
    }
}

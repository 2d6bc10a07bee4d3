//! Shared memory: memory files, the address-space reservation regions are
//! mapped into, protection, and advice to the kernel about mapped pages.

use super::{cvt, cvt_r};
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

/// An anonymous memory file (memfd) of `size` bytes, with every block
/// allocated up front (so a later page fault cannot SIGBUS on a full tmpfs)
/// and sealed against shrinking and growing (so no process can truncate
/// the state out from under the others).
pub fn memfd_sealed(name: &CStr, size: u64) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid C string; flags are valid.
    let raw = cvt(unsafe {
        libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
    })?;
    // SAFETY: memfd_create returned a fresh descriptor that we now own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    allocate(fd.as_fd(), 0, size)?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: F_ADD_SEALS on a memfd created with MFD_ALLOW_SEALING.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) })?;
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
pub fn allocate(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: fallocate only operates on the file behind `fd`.
    cvt_r(|| unsafe { libc::fallocate(fd.as_raw_fd(), 0, offset as i64, len as i64) })?;
    Ok(())
}

/// Discards the contents of `[offset, offset+len)` (they read back as
/// zeroes) and allocates the blocks again.
pub fn zero_range(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    punch_hole(fd, offset, len)?;
    allocate(fd, offset, len)
}

/// Discards the contents of `[offset, offset+len)` and frees their memory
/// (they read back as zeroes); the file keeps its size.
pub fn punch_hole(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: fallocate only operates on the file behind `fd`.
    cvt_r(|| unsafe { libc::fallocate(fd.as_raw_fd(), mode, offset as i64, len as i64) })?;
    Ok(())
}

/// Opens the file behind `fd` again, read-only: a new open file description
/// whose mappings can never be made writable (mprotect fails with EACCES).
pub fn reopen_read_only(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut path = *b"/proc/self/fd/\0\0\0\0\0\0\0\0\0\0\0\0";
    let digits = fd.as_raw_fd().to_string();
    path[14..14 + digits.len()].copy_from_slice(digits.as_bytes());
    // SAFETY: `path` is NUL-terminated (the buffer ends in NULs and an i32
    // has at most 10 digits).
    let raw = cvt(unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) })?;
    // SAFETY: open returned a fresh descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Reserves `len` bytes of address space with no access (`PROT_NONE`) and no
/// memory behind them; regions are mapped into it with [`map_fixed`], and
/// what stays unmapped between them is a guard.
pub fn reserve(len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: a fresh anonymous PROT_NONE mapping touches no existing memory.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(NonNull::new(p.cast()).expect("mmap returned NULL"))
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
    fn prot(self) -> i32 {
        match self {
            Access::ReadOnly => libc::PROT_READ,
            Access::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
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
    offset: u64,
    access: Access,
) -> io::Result<()> {
    // SAFETY: the caller guarantees the range is ours to replace.
    let p = unsafe {
        libc::mmap(
            addr.as_ptr().cast(),
            len,
            access.prot(),
            libc::MAP_SHARED | libc::MAP_FIXED,
            fd.as_raw_fd(),
            offset as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Unmaps `[addr, addr+len)`.
///
/// # Safety
/// No live reference may point into the range.
pub unsafe fn unmap(addr: NonNull<u8>, len: usize) -> io::Result<()> {
    // SAFETY: the caller guarantees nothing refers into the range.
    cvt(unsafe { libc::munmap(addr.as_ptr().cast(), len) })?;
    Ok(())
}

/// mprotect(2) on `[addr, addr+len)`.
///
/// # Safety
/// The range must be mapped by this process, and removing access must not
/// invalidate live references into it.
pub unsafe fn protect(addr: NonNull<u8>, len: usize, access: Access) -> io::Result<()> {
    // SAFETY: the caller guarantees the range and reference rules.
    cvt(unsafe { libc::mprotect(addr.as_ptr().cast(), len, access.prot()) })?;
    Ok(())
}

/// The system's page size.
#[must_use]
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
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
    let start = range.as_mut_ptr() as usize & !(page - 1);
    let end = (range.as_mut_ptr() as usize + range.len()).next_multiple_of(page);
    // SAFETY: the pages cover `range`, which we borrow mutably, and the
    // bytes around it on its first and last page, which are mapped (a
    // mapping is whole pages); the advice only faults pages in and writes
    // no byte, so no live Rust value sees a change.
    let r = cvt_r(|| unsafe {
        libc::madvise(
            start as *mut libc::c_void,
            end - start,
            libc::MADV_POPULATE_WRITE,
        )
    });
    match r {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(e) if e.raw_os_error() == Some(libc::EFAULT) => Err(io::Error::new(
            io::ErrorKind::StorageFull,
            "a page has no block in its file and cannot get one \
             (no space left on its file system, or the file is shorter than the mapping)",
        )),
        Err(e) => Err(e),
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
    cvt(unsafe { libc::madvise(addr.as_ptr().cast(), len, libc::MADV_DONTFORK) })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state_dir file is allocated once: a file with every block is
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

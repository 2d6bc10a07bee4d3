//! Reading files the root does not trust, and hardening the root itself.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::{cvt, cvt_r};

/// pread(2): copies up to `buf.len()` bytes at `offset` of the file behind
/// `fd` into `buf`, retrying on EINTR and short reads; returns how many
/// were copied (fewer only at end of file). The kernel does the copy, so a
/// file shorter than expected gives a short read, never a SIGBUS.
pub fn pread_full(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let fd = fd.as_raw_fd();
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        let off = super::off_t(offset + done as u64)?;
        // SAFETY: `rest` is a valid writable slice of `rest.len()` bytes.
        let n = cvt_r(|| unsafe { libc::pread(fd, rest.as_mut_ptr().cast(), rest.len(), off) })?;
        if n == 0 {
            break;
        }
        done += super::count(n);
    }
    Ok(done)
}

/// What fstat(2) or stat(2) says identifies a file and how long it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    /// Device and inode: the file's identity.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
}

impl FileId {
    fn of(st: &libc::stat) -> FileId {
        FileId {
            dev: st.st_dev,
            ino: st.st_ino,
            // A size is >= 0.
            size: st.st_size.unsigned_abs(),
        }
    }
}

/// fstat(2) of `fd`.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<FileId> {
    // SAFETY: stat is plain data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid stat to fill.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &raw mut st) })?;
    Ok(FileId::of(&st))
}

/// stat(2) of `path`.
pub fn stat(path: &std::path::Path) -> io::Result<FileId> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    Ok(FileId {
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.len(),
    })
}

/// ftruncate(2): sets the size of the file behind `fd`.
pub fn set_len(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    // SAFETY: ftruncate only operates on the file behind `fd`.
    let len = super::off_t(len)?;
    // SAFETY: ftruncate only operates on the file behind `fd`.
    cvt_r(|| unsafe { libc::ftruncate(fd.as_raw_fd(), len) })?;
    Ok(())
}

/// `prctl(PR_SET_DUMPABLE)`: whether this process may dump core and be
/// inspected (`/proc/PID/fd`, `/proc/PID/mem`, ptrace) by other processes
/// of its user. Fork-safe.
pub fn set_dumpable(on: bool) -> io::Result<()> {
    // SAFETY: PR_SET_DUMPABLE takes an integer flag; no memory is passed.
    cvt(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, libc::c_ulong::from(on), 0, 0, 0) })?;
    Ok(())
}

/// An inotify instance (non-blocking, close-on-exec).
pub fn inotify() -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: inotify_init1 takes flags only.
    let fd = cvt(unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) })?;
    // SAFETY: a fresh descriptor that we now own.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Watches directory `dir` for `mask` events on `fd` (an [`inotify`]).
pub fn watch(fd: BorrowedFd<'_>, dir: &std::path::Path, mask: u32) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: `path` is a valid C string.
    cvt(unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) })?;
    Ok(())
}

/// Reads the queued events of inotify `fd` (non-blocking) and calls `f`
/// with each one's mask and file name; returns how many there were (0 when
/// the queue is empty).
pub fn read_events(fd: BorrowedFd<'_>, mut f: impl FnMut(u32, &[u8])) -> io::Result<usize> {
    // Aligned for `inotify_event`; room for many events.
    let mut buf = [0u64; 512];
    // SAFETY: `buf` is valid for writes of its size in bytes.
    let n = match cvt_r(|| unsafe {
        libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), 8 * buf.len())
    }) {
        Ok(n) => super::count(n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
        Err(e) => return Err(e),
    };
    // SAFETY: the first `n` bytes were written by read; u8 has no invalid
    // values and alignment 1.
    let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
    let head = std::mem::size_of::<libc::inotify_event>();
    let (mut at, mut count) = (0, 0);
    while at + head <= bytes.len() {
        let word = |o: usize| u32::from_ne_bytes(bytes[at + o..at + o + 4].try_into().expect("4"));
        // struct inotify_event { int wd; u32 mask; u32 cookie; u32 len; char name[]; }
        let mask = word(4);
        let len = word(12) as usize;
        let name = bytes.get(at + head..at + head + len).unwrap_or(&[]);
        // The name is NUL-padded to its length.
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        f(mask, &name[..end]);
        count += 1;
        at += head + len;
    }
    Ok(count)
}

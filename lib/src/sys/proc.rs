//! What `/proc` says about other processes, read without allocating.

use super::Pid;
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

/// The state letter of `/proc/<pid>/stat` (`R`, `S`, `D`, `Z` for a zombie,
/// `X` for dead, ...). Reads into a stack buffer: no allocation, no lock.
/// Fork-safe.
///
/// An unreadable or unparsable file is an error (`ENOENT` once the process
/// has been reaped; `InvalidData` for unexpected contents).
pub fn state(pid: Pid) -> io::Result<u8> {
    stat(pid).map(|s| s.state)
}

/// What `/proc/<pid>/stat` says of a process that identifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// State letter (`R`, `S`, `D`, `Z` for a zombie, `X` for dead, ...).
    pub state: u8,
    /// Start time in clock ticks after boot (field 22): with the pid, it
    /// tells a process from a later one that reuses its pid.
    pub start_time: u64,
}

/// Reads `/proc/<pid>/stat` into a stack buffer: no allocation, no lock.
/// Fork-safe. Errors as [`state`].
pub fn stat(pid: Pid) -> io::Result<Stat> {
    let mut path = [0u8; 32];
    let prefix = b"/proc/";
    path[..prefix.len()].copy_from_slice(prefix);
    let mut digits = [0u8; 10];
    let mut n = pid.as_u32();
    let mut nd = 0;
    loop {
        digits[nd] = b'0' + (n % 10) as u8;
        nd += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut at = prefix.len();
    for i in (0..nd).rev() {
        path[at] = digits[i];
        at += 1;
    }
    path[at..at + 5].copy_from_slice(b"/stat");
    // path[at + 5] is the terminating NUL.
    let path = CStr::from_bytes_until_nul(&path).map_err(|_| io::ErrorKind::InvalidInput)?;
    let fd = open_read_only(path)?;
    let mut buf = [0u8; 512];
    let n = super::read(fd.as_fd(), &mut buf)?;
    let text = &buf[..n];
    let close = text
        .iter()
        .rposition(|&b| b == b')')
        .ok_or(io::ErrorKind::InvalidData)?;
    // After "comm) ": field 3 (state) first, field 22 (starttime) 19 later.
    let mut fields = text
        .get(close + 2..)
        .ok_or(io::ErrorKind::InvalidData)?
        .split(|&b| b == b' ');
    let state = *fields
        .next()
        .and_then(|f| f.first())
        .ok_or(io::ErrorKind::InvalidData)?;
    let start = fields.nth(18).ok_or(io::ErrorKind::InvalidData)?;
    let start_time = parse_u64(start).ok_or(io::ErrorKind::InvalidData)?;
    Ok(Stat { state, start_time })
}

/// `statfs` magic of pidfs, where each pidfd's inode is its process's own.
const PIDFS_MAGIC: u64 = 0x5049_4446;

/// The inode number of a pidfd for `pid` on pidfs (Linux 6.9 and later):
/// unique to that process since boot, so unlike its pid never reused.
/// `Ok(None)` where pidfds are not pidfs inodes (older kernels); `ESRCH`
/// once no process has the pid. No allocation; fork-safe.
pub fn pidfs_ino(pid: Pid) -> io::Result<Option<u64>> {
    // SAFETY: pidfd_open(2) takes a pid and flags, no memory.
    let raw = super::cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) })?;
    let raw = i32::try_from(raw).map_err(|_| io::ErrorKind::InvalidData)?;
    // SAFETY: pidfd_open returned a fresh descriptor that we now own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut fs = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: a valid descriptor and a pointer to writable statfs storage.
    super::cvt(unsafe { libc::fstatfs(fd.as_raw_fd(), fs.as_mut_ptr()) })?;
    // SAFETY: fstatfs succeeded, so it filled the struct.
    let fs = unsafe { fs.assume_init() };
    if u64::try_from(fs.f_type).ok() != Some(PIDFS_MAGIC) {
        return Ok(None);
    }
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: a valid descriptor and a pointer to writable stat storage.
    super::cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded, so it filled the struct.
    Ok(Some(unsafe { st.assume_init() }.st_ino))
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
            .flatten()
    })
}

/// open(2) read-only and close-on-exec. Fork-safe.
fn open_read_only(path: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `path` is a NUL-terminated string that lives across the call.
    let raw = super::cvt(unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) })?;
    // SAFETY: open returned a fresh descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

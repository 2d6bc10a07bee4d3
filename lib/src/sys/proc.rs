//! What `/proc` says about other processes, read without allocating.

use super::Pid;
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The state letter of `/proc/<pid>/stat` (`R`, `S`, `D`, `Z` for a zombie,
/// `X` for dead, ...). Reads into a stack buffer: no allocation, no lock.
/// Fork-safe.
///
/// An unreadable or unparsable file is an error (`ENOENT` once the process
/// has been reaped; `InvalidData` for unexpected contents).
pub fn state(pid: Pid) -> io::Result<u8> {
    let mut path = [0u8; 32];
    let prefix = b"/proc/";
    path[..prefix.len()].copy_from_slice(prefix);
    let mut digits = [0u8; 10];
    let mut n = pid.0.unsigned_abs();
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
    let n = super::read(fd.as_raw_fd(), &mut buf)?;
    let text = &buf[..n];
    let close = text
        .iter()
        .rposition(|&b| b == b')')
        .ok_or(io::ErrorKind::InvalidData)?;
    Ok(*text.get(close + 2).ok_or(io::ErrorKind::InvalidData)?)
}

/// open(2) read-only and close-on-exec. Fork-safe.
fn open_read_only(path: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `path` is a NUL-terminated string that lives across the call.
    let raw = super::cvt(unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) })?;
    // SAFETY: open returned a fresh descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

//! Credentials: whose process this is, who is at the other end of a Unix
//! socket (`SO_PEERCRED`, `SO_PEERGROUPS`), groups by name, and the file
//! mode creation mask.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::{cvt, Pid};

/// A user id.
pub type Uid = libc::uid_t;
/// A group id.
pub type Gid = libc::gid_t;

/// The calling process's effective user id.
#[must_use]
pub fn geteuid() -> Uid {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Who connected to a Unix stream socket, as the kernel recorded it at
/// `connect` time: the process's pid, effective uid and gid, and every
/// supplementary group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The connecting process (it may have exited since); `None` if the
    /// kernel could not name it (a peer in another pid namespace).
    pub pid: Option<Pid>,
    /// Its effective user id.
    pub uid: Uid,
    /// Its effective group id.
    pub gid: Gid,
    /// Its supplementary groups.
    pub groups: Vec<Gid>,
}

impl Peer {
    /// Whether `gid` is the peer's group or one of its supplementary ones.
    #[must_use]
    pub fn in_group(&self, gid: Gid) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// The credentials of the peer of the connected Unix socket `fd`.
pub fn peer(fd: BorrowedFd<'_>) -> io::Result<Peer> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = super::socklen(std::mem::size_of::<libc::ucred>());
    // SAFETY: `cred` is a writable ucred and `len` its size, as
    // SO_PEERCRED requires; the kernel writes at most `len` bytes.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &raw mut len,
        )
    })?;
    // NGROUPS_MAX is 65536; a peer with more groups than fit in the first
    // try is asked again with the size the kernel reported.
    let mut groups: Vec<Gid> = vec![0; 64];
    loop {
        let mut len = super::socklen(std::mem::size_of_val(groups.as_slice()));
        // SAFETY: `groups` is writable for `len` bytes; the kernel writes
        // at most that many, or fails with ERANGE and sets `len` to what
        // it needs.
        let r = cvt(unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &raw mut len,
            )
        });
        match r {
            Ok(_) => {
                groups.truncate(len as usize / std::mem::size_of::<Gid>());
                break;
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) && len as usize > groups.len() * 4 => {
                groups.resize(len as usize / std::mem::size_of::<Gid>(), 0);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Peer {
        pid: Pid::from_raw(cred.pid),
        uid: cred.uid,
        gid: cred.gid,
        groups,
    })
}

/// The id of the group named `name` in the system's group database, or
/// `None` if there is no such group.
pub fn group_by_name(name: &str) -> io::Result<Option<Gid>> {
    let c_name = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in a group name"))?;
    let mut buf: Vec<libc::c_char> = vec![0; 1024];
    loop {
        // SAFETY: an all-zero `group` is a valid value of a plain C struct
        // (null pointers, zero ids); getgrnam_r overwrites it.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call: the name is a
        // NUL-terminated string, `grp` and `found` are writable, and `buf`
        // is writable for `buf.len()` bytes; the strings `grp` points into
        // live in `buf`, which is not read afterwards.
        let r = unsafe {
            libc::getgrnam_r(
                c_name.as_ptr(),
                &raw mut grp,
                buf.as_mut_ptr(),
                buf.len(),
                &raw mut found,
            )
        };
        match r {
            0 if found.is_null() => return Ok(None),
            0 => return Ok(Some(grp.gr_gid)),
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            // Some libcs report "no such group" as ENOENT and friends.
            libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => return Ok(None),
            errno => return Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

/// Runs `f` with the file mode creation mask set to `mask`, then restores
/// the previous mask. The mask is the process's: call this only while the
/// process is single-threaded (the root is).
pub fn with_umask<T>(mask: libc::mode_t, f: impl FnOnce() -> T) -> T {
    // SAFETY: umask has no preconditions and cannot fail.
    let old = unsafe { libc::umask(mask) };
    let out = f();
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    out
}

/// Changes the group of the file at `path` (not following a symlink),
/// leaving its owner.
pub fn chgrp(path: &std::path::Path, gid: Gid) -> io::Result<()> {
    std::os::unix::fs::lchown(path, None, Some(gid))
}

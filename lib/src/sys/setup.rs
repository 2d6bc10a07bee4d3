//! The calls a forked child makes to set up an exec'd program (limits,
//! directory, mask, credentials), and the look-ups the config makes to
//! prepare them (users, their groups, resources by name).
//!
//! Every function the child calls is a single system call on arguments the
//! root prepared: no allocation, no lock, safe between fork and exec.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use super::cred::{Gid, Uid};
use super::cvt;

/// The resources of `setrlimit`, by the names `ulimit` and systemd use
/// (without `RLIMIT_`, lower case).
pub const RLIMITS: &[(&str, u32)] = &[
    ("as", libc::RLIMIT_AS),
    ("core", libc::RLIMIT_CORE),
    ("cpu", libc::RLIMIT_CPU),
    ("data", libc::RLIMIT_DATA),
    ("fsize", libc::RLIMIT_FSIZE),
    ("locks", libc::RLIMIT_LOCKS),
    ("memlock", libc::RLIMIT_MEMLOCK),
    ("msgqueue", libc::RLIMIT_MSGQUEUE),
    ("nice", libc::RLIMIT_NICE),
    ("nofile", libc::RLIMIT_NOFILE),
    ("nproc", libc::RLIMIT_NPROC),
    ("rss", libc::RLIMIT_RSS),
    ("rtprio", libc::RLIMIT_RTPRIO),
    ("rttime", libc::RLIMIT_RTTIME),
    ("sigpending", libc::RLIMIT_SIGPENDING),
    ("stack", libc::RLIMIT_STACK),
];

/// A user of the password database: its uid and primary gid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct User {
    /// The user id.
    pub uid: Uid,
    /// Its primary group.
    pub gid: Gid,
}

/// The user named `name`, or `None` if there is none.
pub fn user_by_name(name: &str) -> io::Result<Option<User>> {
    let c_name = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in a user name"))?;
    let mut buf: Vec<libc::c_char> = vec![0; 1024];
    loop {
        // SAFETY: an all-zero `passwd` is a valid value of a plain C struct
        // (null pointers, zero ids); getpwnam_r overwrites it.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: the name is NUL-terminated, `pw` and `found` are
        // writable, `buf` is writable for `buf.len()` bytes; the strings
        // `pw` points into live in `buf`, which is not read afterwards.
        let r = unsafe {
            libc::getpwnam_r(
                c_name.as_ptr(),
                &raw mut pw,
                buf.as_mut_ptr(),
                buf.len(),
                &raw mut found,
            )
        };
        match r {
            0 if found.is_null() => return Ok(None),
            0 => {
                return Ok(Some(User {
                    uid: pw.pw_uid,
                    gid: pw.pw_gid,
                }))
            }
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => return Ok(None),
            errno => return Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

/// Every group user `name` belongs to, `gid` (its primary group) first,
/// as `initgroups` would set them.
pub fn group_list(name: &str, gid: Gid) -> io::Result<Vec<Gid>> {
    let c_name = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in a user name"))?;
    let mut groups: Vec<Gid> = vec![0; 64];
    loop {
        // Saturating: a smaller count only under-reports the room.
        let mut n = libc::c_int::try_from(groups.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: the name is NUL-terminated and `groups` is writable for
        // `n` entries; getgrouplist writes at most `n` and sets `n` to the
        // count (or the count needed, returning -1).
        let r =
            unsafe { libc::getgrouplist(c_name.as_ptr(), gid, groups.as_mut_ptr(), &raw mut n) };
        if r >= 0 {
            groups.truncate(usize::try_from(n).unwrap_or(0));
            return Ok(groups);
        }
        if groups.len() >= 1 << 16 {
            return Err(io::Error::other("more than 65536 groups"));
        }
        groups.resize(usize::try_from(n).unwrap_or(0).max(groups.len() * 2), 0);
    }
}

/// Sets a resource limit. Fork-safe.
pub fn set_rlimit(resource: u32, soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    // SAFETY: `lim` is a valid rlimit for the call's duration.
    cvt(unsafe { libc::setrlimit(resource as _, &raw const lim) }).map(drop)
}

/// Changes the working directory. Fork-safe.
pub fn chdir(dir: &CStr) -> io::Result<()> {
    // SAFETY: `dir` is a NUL-terminated string.
    cvt(unsafe { libc::chdir(dir.as_ptr()) }).map(drop)
}

/// Sets the file mode creation mask. Fork-safe.
pub fn set_umask(mask: u32) {
    // SAFETY: umask has no preconditions and cannot fail.
    unsafe { libc::umask(mask as libc::mode_t) };
}

/// Sets the supplementary groups (none for an empty slice). Fork-safe.
pub fn set_groups(groups: &[Gid]) -> io::Result<()> {
    // SAFETY: `groups` is readable for `groups.len()` entries.
    cvt(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) }).map(drop)
}

/// Sets the real, effective and saved group id. Fork-safe.
pub fn set_gid(gid: Gid) -> io::Result<()> {
    // SAFETY: setresgid has no memory preconditions.
    cvt(unsafe { libc::setresgid(gid, gid, gid) }).map(drop)
}

/// Sets the real, effective and saved user id. Fork-safe.
pub fn set_uid(uid: Uid) -> io::Result<()> {
    // SAFETY: setresuid has no memory preconditions.
    cvt(unsafe { libc::setresuid(uid, uid, uid) }).map(drop)
}

/// Sets `PR_SET_NO_NEW_PRIVS`: no exec from here on gains privileges.
/// Fork-safe.
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) takes no pointers.
    cvt(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }).map(drop)
}

/// Opens `path` read-only (close-on-exec). Fork-safe. A number, not an
/// `OwnedFd`: the forked child moves it to fd 0 for the program it execs.
pub fn open_read(path: &CStr) -> io::Result<RawFd> {
    // SAFETY: `path` is a NUL-terminated string.
    cvt(unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) })
}

/// Sets or clears `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL only read and change the descriptor's flags.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    let flags = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) }).map(drop)
}

//! Datagrams with their sender's credentials: the socket the root hands
//! its exec'd daemons as `NOTIFY_SOCKET` (`SO_PASSCRED`, so the kernel
//! stamps every datagram with the sending process's pid, uid and gid as
//! `SCM_CREDENTIALS`), and `getsid` to tell which daemon a sender is of.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::{cvt, cvt_r, Pid};

/// A non-blocking, close-on-exec datagram socket bound to `name` in the
/// abstract namespace (no file: nothing to clean up after a crash), with
/// `SO_PASSCRED` on.
pub fn bind_abstract_dgram(name: &[u8]) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked before it is owned.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    })?;
    // SAFETY: socket succeeded; we own the fresh descriptor.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let on: libc::c_int = 1;
    // SAFETY: `on` is a valid c_int for the option's length.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            std::ptr::from_ref(&on).cast(),
            super::socklen(std::mem::size_of::<libc::c_int>()),
        )
    })?;
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::sa_family_t::try_from(libc::AF_UNIX).expect("AF_UNIX (1) is a family");
    // sun_path[0] stays 0: the abstract namespace.
    if name.len() + 1 > addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "abstract socket name too long",
        ));
    }
    for (dst, &b) in addr.sun_path[1..].iter_mut().zip(name) {
        *dst = libc::c_char::from_ne_bytes([b]);
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + 1 + name.len();
    // SAFETY: `addr` is a valid sockaddr_un and `len` covers only its
    // family and the bytes of the name written above.
    cvt(unsafe { libc::bind(fd, std::ptr::from_ref(&addr).cast(), super::socklen(len)) })?;
    Ok(sock)
}

/// One datagram as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram {
    /// Bytes stored in the buffer.
    pub len: usize,
    /// The datagram was longer than the buffer (the rest is lost).
    pub truncated: bool,
    /// The sender's pid, from `SCM_CREDENTIALS` (`None` if none came).
    pub pid: Option<Pid>,
    /// The sender's uid.
    pub uid: u32,
}

/// Receives one datagram into `buf` with its sender's credentials; `None`
/// when none is waiting. Descriptors passed along (`SCM_RIGHTS`) are
/// closed: the root keeps none of them.
pub fn recv_with_creds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<Datagram>> {
    // Room for the credentials and a few descriptors (closed below); the
    // kernel closes any that do not fit (MSG_CTRUNC).
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 32];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` points at `iov` (into `buf`) and `control`, both live
    // and writable for the lengths given.
    let n = match cvt_r(|| unsafe {
        libc::recvmsg(
            sock.as_raw_fd(),
            &raw mut msg,
            libc::MSG_CMSG_CLOEXEC | libc::MSG_TRUNC,
        )
    }) {
        Ok(n) => super::count(n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut out = Datagram {
        len: n.min(buf.len()),
        truncated: n > buf.len() || msg.msg_flags & libc::MSG_TRUNC != 0,
        pid: None,
        uid: u32::MAX,
    };
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled,
    // within `msg_controllen`; each header's data is read with
    // read_unaligned at its own length.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            let data_len = ((*c).cmsg_len as usize).saturating_sub(data as usize - c as usize);
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::SOL_SOCKET, libc::SCM_CREDENTIALS)
                    if data_len >= std::mem::size_of::<libc::ucred>() =>
                {
                    let cred = std::ptr::read_unaligned(data.cast::<libc::ucred>());
                    out.pid = Pid::from_raw(cred.pid);
                    out.uid = cred.uid;
                }
                (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                    let k = data_len / std::mem::size_of::<RawFd>();
                    for j in 0..k {
                        let fd = std::ptr::read_unaligned(
                            data.add(j * size_of::<RawFd>()).cast::<RawFd>(),
                        );
                        // Received with the message: ours, closed here.
                        drop(OwnedFd::from_raw_fd(fd));
                    }
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(&raw const msg, c);
        }
    }
    Ok(Some(out))
}

/// The session id of process `pid` (`getsid`): for a daemon's process,
/// the pid of the daemon it belongs to (each daemon leads its session).
pub fn getsid(pid: Pid) -> io::Result<Pid> {
    // SAFETY: getsid only reads the process table.
    let sid = cvt(unsafe { libc::getsid(pid.as_raw()) })?;
    // A session id is its leader's pid (> 0).
    Pid::from_raw(sid).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidData))
}

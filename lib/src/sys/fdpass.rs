//! Messages with descriptors over a Unix socket pair (`SCM_RIGHTS`): how
//! the root hands its zygote the descriptors of each process it asks for.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    self, recvmsg, sendmsg, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockType,
};

/// Most descriptors one message carries (the kernel's own bound is 253).
pub const MAX_FDS: usize = 96;

/// A connected, close-on-exec `SOCK_SEQPACKET` pair: messages keep their
/// bounds, and a closed end reads as end-of-file on the other.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// Makes a receive on `sock` fail with `EAGAIN` after `d` without a
/// message (`SO_RCVTIMEO`).
pub fn set_recv_timeout(sock: BorrowedFd<'_>, d: std::time::Duration) -> io::Result<()> {
    let tv = nix::sys::time::TimeVal::new(
        libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
        libc::suseconds_t::from(d.subsec_micros()),
    );
    Ok(socket::setsockopt(
        &sock,
        socket::sockopt::ReceiveTimeout,
        &tv,
    )?)
}

/// Sends `bytes` and copies of `fds` as one message. `EPIPE` (never
/// SIGPIPE) when the other end is closed.
pub fn send_with_fds(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let iov = [IoSlice::new(bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs = if fds.is_empty() { &[][..] } else { &cmsg[..] };
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(_) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one message into `buf`, its descriptors (close-on-exec) into
/// `fds`; `Ok(0)` is end-of-file. A message longer than `buf`, or one whose
/// descriptors did not all fit, is `EMSGSIZE` (its descriptors closed).
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    loop {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(got) = c {
                // SAFETY: the kernel just installed these descriptors in
                // this process for this message; nothing else owns them.
                fds.extend(
                    got.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        if msg
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC)
        {
            fds.clear();
            return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
        }
        return Ok(msg.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn descriptors_cross_with_their_message_and_eof_follows_a_close() {
        let (a, b) = seqpacket_pair().unwrap();
        let (rd, wr) = crate::sys::pipe_cloexec(false).unwrap();
        send_with_fds(a.as_fd(), b"hello", &[wr.as_raw_fd(), rd.as_raw_fd()]).unwrap();
        drop(wr);
        let mut buf = [0u8; 16];
        let mut fds = Vec::new();
        let n = recv_with_fds(b.as_fd(), &mut buf, &mut fds).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(fds.len(), 2);
        // The received write end is the pipe's: what goes in comes out.
        crate::sys::write_all(fds[0].as_fd(), b"x").unwrap();
        let mut one = [0u8; 1];
        assert_eq!(crate::sys::read(rd.as_fd(), &mut one).unwrap(), 1);
        drop(a);
        assert_eq!(recv_with_fds(b.as_fd(), &mut buf, &mut fds).unwrap(), 0);
        // A message longer than the buffer is refused, not cut.
        let (a, b) = seqpacket_pair().unwrap();
        send_with_fds(a.as_fd(), &[7u8; 32], &[]).unwrap();
        let e = recv_with_fds(b.as_fd(), &mut buf, &mut Vec::new()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EMSGSIZE));
    }
}

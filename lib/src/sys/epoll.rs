//! epoll: the readiness set the root's and daemons' poll loops wait on.
//! nix's `Epoll` underneath; this adds the one event mask the loops use
//! and turns `EINTR` into an empty wait.

use nix::errno::Errno;
use nix::sys::epoll::{self as nix_epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

/// An epoll instance.
#[derive(Debug)]
pub struct Epoll(nix_epoll::Epoll);

impl Epoll {
    /// A new close-on-exec epoll instance.
    pub fn new() -> io::Result<Epoll> {
        Ok(Epoll(nix_epoll::Epoll::new(
            EpollCreateFlags::EPOLL_CLOEXEC,
        )?))
    }

    /// Watches `fd` for readability (and hang-up), reporting `token`.
    pub fn add(&self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        Ok(self.0.add(fd, event(token, false))?)
    }

    /// Changes what `fd` is watched for: readability, or writability when
    /// `writable` (for a reply that did not fit in the socket buffer).
    pub fn modify(&self, fd: BorrowedFd<'_>, token: u64, writable: bool) -> io::Result<()> {
        Ok(self.0.modify(fd, &mut event(token, writable))?)
    }

    /// Stops watching `fd`.
    pub fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        Ok(self.0.delete(fd)?)
    }

    /// Waits for events, at most `timeout` (`None`: forever). Returns the
    /// tokens of ready descriptors in `out` (cleared first). EINTR gives an
    /// empty result.
    pub fn wait(&self, out: &mut Vec<u64>, timeout: Option<Duration>) -> io::Result<()> {
        let mut events = [EpollEvent::empty(); 64];
        let timeout = match timeout {
            None => EpollTimeout::NONE,
            // Round up, so a deadline 0.3 ms away does not spin at 0 ms.
            Some(d) => EpollTimeout::try_from(d.as_nanos().div_ceil(1_000_000))
                .unwrap_or(EpollTimeout::MAX),
        };
        out.clear();
        match self.0.wait(&mut events, timeout) {
            Ok(n) => {
                out.extend(events[..n].iter().map(EpollEvent::data));
                Ok(())
            }
            Err(Errno::EINTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The event the loops watch for: readability and the peer's hang-up, or
/// writability alone.
fn event(token: u64, writable: bool) -> EpollEvent {
    let flags = if writable {
        EpollFlags::EPOLLOUT
    } else {
        EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP
    };
    EpollEvent::new(flags, token)
}

impl AsFd for Epoll {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0 .0.as_fd()
    }
}

impl AsRawFd for Epoll {
    fn as_raw_fd(&self) -> RawFd {
        self.0 .0.as_raw_fd()
    }
}

//! What daemons tell the root: systemd's notify protocol, received on one
//! datagram socket that every exec'd daemon gets as `$NOTIFY_SOCKET`, and
//! s6's notification descriptor (`notify_fd`).
//!
//! The socket is in the abstract namespace (no file to leave behind) and
//! has `SO_PASSCRED`: the kernel stamps each datagram with the sending
//! process's pid. The root believes a datagram only as coming from the
//! daemon whose session the sender is in (`getsid(sender)` is the pid of a
//! daemon the root forked: every daemon leads its own session); anything
//! else — a process of no daemon, one that escaped its daemon's session,
//! one that exited before the root looked — is ignored and counted. What a
//! daemon says is taken as its word about itself only: it can make itself
//! ready, set its status line, keep or trip its own watchdog and extend
//! its own deadline, never act on another daemon, and `MAINPID=` (which
//! would make the root watch another process) is refused.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use tracing::{debug, error, info, warn};

use super::supervisor::Event;
use super::{Role, Root, State};
use crate::config::Readiness;
use crate::sys::{self, dgram, Pid};

/// systemd reads at most this much of a notification; longer ones are
/// dropped.
pub(crate) const MAX_MESSAGE: usize = 4096;
/// A status line is kept up to this many bytes.
pub(crate) const MAX_STATUS: usize = 512;
/// At most this many datagrams are read per wake-up, so a daemon that
/// floods the socket cannot starve the loop (epoll wakes it again).
const BATCH: usize = 64;

/// One assignment of a notification, as the root understands it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Notice {
    /// `READY=1`.
    Ready,
    /// `STATUS=...`: free text for `ctl status`.
    Status(String),
    /// `WATCHDOG=1`: a heartbeat.
    Watchdog,
    /// `WATCHDOG=trigger`: the program asks to be treated as hung.
    WatchdogTrigger,
    /// `STOPPING=1`.
    Stopping,
    /// `RELOADING=1`.
    Reloading,
    /// `EXTEND_TIMEOUT_USEC=N`.
    ExtendTimeout(Duration),
    /// `ERRNO=N`.
    Errno(i32),
    /// `MAINPID=N`: refused (the root supervises the process it forked).
    MainPid(String),
    /// An assignment the root does not act on (or a malformed one).
    Other(String),
}

/// Parses one datagram: newline-separated `KEY=VALUE` assignments, as
/// `sd_notify(3)` sends them.
pub(crate) fn parse(text: &str) -> Vec<Notice> {
    text.split('\n')
        .filter(|l| !l.is_empty())
        .map(|line| {
            let Some((key, value)) = line.split_once('=') else {
                return Notice::Other(line.to_owned());
            };
            match (key, value) {
                ("READY", "1") => Notice::Ready,
                ("STATUS", v) => Notice::Status(clean_status(v)),
                ("WATCHDOG", "1") => Notice::Watchdog,
                ("WATCHDOG", "trigger") => Notice::WatchdogTrigger,
                ("STOPPING", "1") => Notice::Stopping,
                ("RELOADING", "1") => Notice::Reloading,
                ("EXTEND_TIMEOUT_USEC", v) => match v.parse::<u64>() {
                    Ok(us) => Notice::ExtendTimeout(Duration::from_micros(us)),
                    Err(_) => Notice::Other(line.to_owned()),
                },
                ("ERRNO", v) => match v.parse::<i32>() {
                    Ok(n) => Notice::Errno(n),
                    Err(_) => Notice::Other(line.to_owned()),
                },
                ("MAINPID", v) => Notice::MainPid(v.to_owned()),
                _ => Notice::Other(line.to_owned()),
            }
        })
        .collect()
}

/// A status line as the root keeps it: at most [`MAX_STATUS`] bytes (cut
/// at a character boundary), control characters replaced by spaces, so it
/// is one line wherever it is shown.
fn clean_status(v: &str) -> String {
    let mut end = v.len().min(MAX_STATUS);
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    v[..end]
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The root's notify socket.
#[derive(Debug)]
pub(crate) struct Socket {
    sock: OwnedFd,
    /// `$NOTIFY_SOCKET` as daemons get it (`@` for the abstract namespace).
    env: String,
    /// Datagrams not believed: no daemon's, truncated, or not text.
    pub(crate) rejected: u64,
}

/// A datagram from some process, not yet attributed.
#[derive(Debug)]
pub(crate) struct Received {
    /// The sender's pid (`None`: the kernel gave none).
    pub(crate) pid: Option<Pid>,
    /// Its text, or `None` when it was too long or not UTF-8.
    pub(crate) text: Option<String>,
}

impl Socket {
    /// Binds `@forkroot/PID/NONCE/notify`: the root's pid and a nonce
    /// keep two roots in one network namespace apart (two containers
    /// whose roots are both PID 1).
    pub(crate) fn bind(root: Pid) -> io::Result<Socket> {
        let nonce = sys::monotonic_ns() ^ sys::realtime_ns().rotate_left(17);
        let name = format!("forkroot/{root}/{nonce:016x}/notify");
        let sock = dgram::bind_abstract_dgram(name.as_bytes())?;
        Ok(Socket {
            sock,
            env: format!("@{name}"),
            rejected: 0,
        })
    }

    /// The value of `$NOTIFY_SOCKET` for a daemon.
    pub(crate) fn env(&self) -> &str {
        &self.env
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// Reads up to a batch of waiting datagrams into `out`.
    pub(crate) fn receive(&mut self, out: &mut Vec<Received>) -> io::Result<()> {
        let mut buf = [0u8; MAX_MESSAGE];
        for _ in 0..BATCH {
            let Some(d) = dgram::recv_with_creds(self.sock.as_fd(), &mut buf)? else {
                break;
            };
            let text = if d.truncated {
                None
            } else {
                std::str::from_utf8(&buf[..d.len]).ok().map(str::to_owned)
            };
            out.push(Received { pid: d.pid, text });
        }
        Ok(())
    }
}

/// The session a sender is in (its daemon's pid), if it still exists.
pub(crate) fn session_of(pid: Option<Pid>) -> Option<Pid> {
    dgram::getsid(pid?).ok()
}

/// What a notification descriptor said so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FdSaid {
    /// Nothing yet (or bytes without a newline).
    Nothing,
    /// A newline: ready.
    Ready,
    /// End of file without a newline: it will never say ready.
    Closed,
}

/// Reads what is waiting on a notification descriptor (s6: a newline
/// means ready; what comes before it is ignored).
pub(crate) fn read_fd(fd: BorrowedFd<'_>) -> FdSaid {
    let mut buf = [0u8; 512];
    loop {
        match sys::read(fd, &mut buf) {
            Ok(0) => return FdSaid::Closed,
            Ok(n) if buf[..n].contains(&b'\n') => return FdSaid::Ready,
            Ok(_) => {}
            Err(_) => return FdSaid::Nothing,
        }
    }
}

impl Root<'_> {
    /// The notify socket is readable: attribute each datagram to the
    /// daemon whose session sent it, and act on what it says.
    pub(super) fn on_notify(&mut self) {
        let mut got = Vec::new();
        if let Err(e) = self.notify.receive(&mut got) {
            warn!(error = %e, "reading the notify socket");
        }
        for r in got {
            let daemon = session_of(r.pid).and_then(|sid| match self.by_pid.get(&sid) {
                Some(&(i, Role::Primary)) => Some(i),
                _ => None,
            });
            match (daemon, r.text) {
                (Some(i), Some(text)) => {
                    for notice in parse(&text) {
                        self.on_notice(i, notice);
                    }
                }
                (Some(i), None) => {
                    self.reject(r.pid, Some(i), "longer than 4096 bytes or not UTF-8");
                }
                (None, _) => self.reject(r.pid, None, "not from a daemon's processes"),
            }
        }
    }

    /// Counts a datagram the root does not believe; logs the first and
    /// then every power of two, so a flood cannot flood the log.
    fn reject(&mut self, pid: Option<Pid>, daemon: Option<usize>, why: &str) {
        self.notify.rejected += 1;
        let n = self.notify.rejected;
        if n.is_power_of_two() {
            let daemon = daemon.map(|i| self.children[i].cfg.name.as_str());
            warn!(sender = %pid.map_or(0, Pid::as_raw), ?daemon, rejected = n, "notify message ignored: {why}");
        }
    }

    /// One assignment daemon `i` sent.
    fn on_notice(&mut self, i: usize, notice: Notice) {
        let c = &mut self.children[i];
        let name = c.cfg.name.as_str();
        match notice {
            Notice::Ready if c.cfg.readiness == Readiness::Notify && c.state == State::Starting => {
                info!(daemon = %name, "ready (READY=1)");
                self.ready(i);
            }
            Notice::Ready => debug!(daemon = %name, "READY=1"),
            Notice::Status(text) => {
                debug!(daemon = %name, status = %text, "status");
                c.status_text = Some(text);
            }
            Notice::Watchdog => c.ping_ns = sys::monotonic_ns(),
            Notice::WatchdogTrigger => {
                if let (Some(pid), true) =
                    (c.pid, matches!(c.state, State::Starting | State::Running))
                {
                    error!(daemon = %name, %pid, "watchdog triggered by the daemon (WATCHDOG=trigger); killing");
                    self.step(Event::Watchdog(i));
                }
            }
            Notice::Stopping => {
                info!(daemon = %name, "the daemon says it is stopping (STOPPING=1)");
            }
            Notice::Reloading => {
                info!(daemon = %name, "the daemon says it is reloading (RELOADING=1)");
            }
            Notice::ExtendTimeout(by) => {
                debug!(daemon = %name, by = ?by, "EXTEND_TIMEOUT_USEC");
                self.step(Event::Extend(i, by));
            }
            Notice::Errno(n) => {
                warn!(daemon = %name, errno = n, error = %io::Error::from_raw_os_error(n), "the daemon reports an error (ERRNO=)");
            }
            Notice::MainPid(v) => warn!(
                daemon = %name,
                mainpid = %v,
                "MAINPID= refused: the root supervises the process it forked"
            ),
            Notice::Other(line) => debug!(daemon = %name, %line, "notify assignment ignored"),
        }
    }

    /// Daemon `i`'s notification descriptor (`notify_fd`) is readable.
    pub(super) fn on_notify_fd(&mut self, i: usize) {
        let Some(c) = self.children.get_mut(i) else {
            return;
        };
        let Some(fd) = c.notify_pipe.take() else {
            return;
        };
        match read_fd(fd.as_fd()) {
            FdSaid::Nothing => c.notify_pipe = Some(fd),
            FdSaid::Ready => {
                let _ = self.epoll.delete(fd.as_fd());
                info!(daemon = %c.cfg.name, "ready (notify_fd)");
                self.ready(i);
            }
            FdSaid::Closed => {
                let _ = self.epoll.delete(fd.as_fd());
                warn!(daemon = %c.cfg.name, "closed its notify_fd without writing a newline; it stays starting until start_timeout");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_assignment_the_root_acts_on() {
        let got = parse(
            "READY=1\nSTATUS=serving 3 clients\nWATCHDOG=1\nWATCHDOG=trigger\nSTOPPING=1\n\
             RELOADING=1\nEXTEND_TIMEOUT_USEC=2500000\nERRNO=5\nMAINPID=77\nFDSTORE=1\nbogus",
        );
        assert_eq!(
            got,
            [
                Notice::Ready,
                Notice::Status("serving 3 clients".into()),
                Notice::Watchdog,
                Notice::WatchdogTrigger,
                Notice::Stopping,
                Notice::Reloading,
                Notice::ExtendTimeout(Duration::from_millis(2500)),
                Notice::Errno(5),
                Notice::MainPid("77".into()),
                Notice::Other("FDSTORE=1".into()),
                Notice::Other("bogus".into()),
            ]
        );
    }

    #[test]
    fn malformed_values_are_not_acted_on() {
        assert_eq!(
            parse("READY=0\nEXTEND_TIMEOUT_USEC=soon\nERRNO=x"),
            [
                Notice::Other("READY=0".into()),
                Notice::Other("EXTEND_TIMEOUT_USEC=soon".into()),
                Notice::Other("ERRNO=x".into()),
            ]
        );
    }

    #[test]
    fn a_status_is_one_bounded_line() {
        let long = "é".repeat(MAX_STATUS);
        let Notice::Status(s) = &parse(&format!("STATUS={long}"))[0] else {
            panic!("not a status")
        };
        assert!(s.len() <= MAX_STATUS && s.chars().all(|c| c == 'é'));
        assert_eq!(
            parse("STATUS=a\tb\u{1b}[31m")[0],
            Notice::Status("a b [31m".into())
        );
    }
}

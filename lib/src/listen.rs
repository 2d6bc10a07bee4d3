//! Sockets the root holds (`listen = ["tcp:HOST:PORT", "unix:PATH"]`).
//!
//! The root binds a daemon's listening sockets once, before its first
//! fork, and keeps them for its own life; every incarnation of the daemon
//! gets the same sockets. A connection that arrives while the daemon is
//! down waits in the kernel's backlog and is accepted by the replacement,
//! so no client is refused because of a crash.
//!
//! How a daemon finds them:
//! - a built-in kind: [`crate::Context::listeners`], at descriptors
//!   6.. (after the lock, the gate and the echo descriptor) in the order of `listen`;
//! - an exec'd program: systemd's socket activation protocol, so programs
//!   written for `sd_listen_fds` work unchanged: `LISTEN_FDS=n` sockets at
//!   descriptors 3..3+n, `LISTEN_PID` its own pid, `LISTEN_FDNAMES` the
//!   daemon's name for each (what a socket unit without
//!   `FileDescriptorName=` gives). The region then moves to descriptor
//!   3+n; `FORKROOT_REGION_FD` says where it is, as always, and
//!   `FORKROOT_LISTEN` carries the `listen` entries (one per line), which
//!   [`crate::Context::from_env`] reads back.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// Where a built-in daemon finds its first listening socket (after the
/// `state_dir` lock at 3 and a standby's gate at 4).
pub(crate) const BUILTIN_FIRST_FD: RawFd = 6;
/// Where systemd's protocol puts the first socket of an exec'd program.
pub(crate) const EXEC_FIRST_FD: RawFd = 3;
/// Most `listen` entries of one daemon.
pub(crate) const MAX_LISTEN: usize = 64;
/// Longest path a Unix socket address holds (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A parsed `listen` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Address {
    /// `tcp:HOST:PORT` with a numeric host (`127.0.0.1:6380`, `[::1]:6380`).
    Tcp(SocketAddr),
    /// `unix:PATH`.
    Unix(PathBuf),
}

impl Address {
    /// Parses `tcp:IP:PORT` or `unix:PATH`; the error says what is wrong
    /// in words for a config problem.
    pub(crate) fn parse(s: &str) -> Result<Address, String> {
        if let Some(rest) = s.strip_prefix("tcp:") {
            return rest.parse::<SocketAddr>().map(Address::Tcp).map_err(|_| {
                format!(
                    "{s:?}: {rest:?} is not IP:PORT (a numeric address and a port up to 65535, \
                     as in \"tcp:127.0.0.1:6380\" or \"tcp:[::1]:6380\")"
                )
            });
        }
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!("{s:?}: the socket path is empty"));
            }
            if path.len() > MAX_SOCKET_PATH {
                return Err(format!(
                    "{s:?}: the socket path is {} bytes long; a Unix socket path holds at most \
                     {MAX_SOCKET_PATH}",
                    path.len()
                ));
            }
            if path.contains(['\0', '\n']) {
                return Err(format!("{s:?}: the socket path holds a NUL or a newline"));
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        Err(format!(
            "{s:?} is not an address: use \"tcp:IP:PORT\" or \"unix:PATH\""
        ))
    }

    /// A listening socket on this address, close-on-exec and blocking (as
    /// systemd passes them; a daemon makes its copy non-blocking if it
    /// wants). TCP gets SO_REUSEADDR, so a new root binds at once after
    /// the old one; a Unix socket file left by an earlier root is
    /// replaced, any other file at the path is an error.
    pub(crate) fn bind(&self) -> io::Result<Bound> {
        Ok(match self {
            // std sets SO_REUSEADDR, CLOEXEC and the largest backlog.
            Address::Tcp(a) => Bound {
                fd: std::net::TcpListener::bind(a)?.into(),
                file: None,
                owner: crate::sys::getpid(),
            },
            Address::Unix(path) => {
                use std::os::unix::fs::MetadataExt;
                remove_stale_socket(path)?;
                let fd = std::os::unix::net::UnixListener::bind(path)?.into();
                let m = std::fs::symlink_metadata(path)?;
                Bound {
                    fd,
                    file: Some((path.clone(), m.dev(), m.ino())),
                    owner: crate::sys::getpid(),
                }
            }
        })
    }
}

/// A listening socket the root bound. A Unix socket's file is removed when
/// the root lets go of it (a clean exit), if the path still names the
/// socket it bound: a newer root's socket there is left alone. (A newer
/// root that binds between the check and the removal loses its file:
/// stat and unlink cannot be one step.) Only the process that bound it
/// removes it, never a forked child that happens to drop a copy.
#[derive(Debug)]
pub(crate) struct Bound {
    fd: OwnedFd,
    /// A Unix socket's path, and the device and inode of its file.
    file: Option<(PathBuf, u64, u64)>,
    /// The process that bound it.
    owner: crate::sys::Pid,
}

impl AsRawFd for Bound {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Drop for Bound {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        if crate::sys::getpid() != self.owner {
            return;
        }
        if let Some((path, dev, ino)) = &self.file {
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.dev() == *dev && m.ino() == *ino) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// Removes a socket file at `path` (left by an earlier root); anything
/// else there is left alone, and the bind then fails on it.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path),
        _ => Ok(()),
    }
}

/// One listening socket the root holds for this daemon.
#[derive(Debug, Clone, Copy)]
pub struct Listener<'a> {
    /// The socket, open for the life of the process.
    pub fd: BorrowedFd<'a>,
    /// Its `listen` entry, as written (`"tcp:127.0.0.1:6380"`).
    pub address: &'a str,
}

/// Where a process's listening sockets are: `addresses.len()` descriptors
/// from `first` on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Held<'a> {
    pub(crate) first: RawFd,
    pub(crate) addresses: &'a [String],
}

impl<'a> Held<'a> {
    /// Each socket with its address.
    pub(crate) fn iter(self) -> impl Iterator<Item = Listener<'a>> {
        self.addresses
            .iter()
            .zip(self.first..)
            .map(|(address, fd)| Listener {
                // SAFETY: the root placed a listening socket at each of
                // these descriptors before the daemon's code ran (or
                // `from_env` checked `LISTEN_FDS`), and nothing in the
                // library closes them: they stay open for the process's
                // life, longer than 'a.
                fd: unsafe { BorrowedFd::borrow_raw(fd) },
                address: address.as_str(),
            })
    }
}

/// The environment an exec'd program with `addresses.len()` sockets gets
/// besides the region's: `LISTEN_FDS`, `LISTEN_FDNAMES`, `FORKROOT_LISTEN`
/// and a `LISTEN_PID=` line with room for any pid, which the forked child
/// fills in ([`write_pid`]) before exec.
pub(crate) fn exec_env(name: &str, addresses: &[String]) -> Vec<String> {
    if addresses.is_empty() {
        return Vec::new();
    }
    let names = vec![name; addresses.len()].join(":");
    vec![
        format!("LISTEN_FDS={}", addresses.len()),
        format!("LISTEN_FDNAMES={names}"),
        format!("{LISTEN_VAR}={}", addresses.join("\n")),
    ]
}

/// `FORKROOT_LISTEN`: the `listen` entries of an exec'd program, one per line.
pub(crate) const LISTEN_VAR: &str = "FORKROOT_LISTEN";

/// Bytes of the `LISTEN_PID=` buffer: the name, 10 digits, a NUL.
pub(crate) const PID_VAR_LEN: usize = 32;

/// A `LISTEN_PID=` line to be completed in the child by [`write_pid`].
pub(crate) fn pid_var() -> [u8; PID_VAR_LEN] {
    let mut b = [0u8; PID_VAR_LEN];
    b[..PID_PREFIX.len()].copy_from_slice(PID_PREFIX);
    b
}

const PID_PREFIX: &[u8] = b"LISTEN_PID=";

/// Writes `LISTEN_PID=<pid>` and a NUL into `buf`. Fork-safe: no
/// allocation, no lock.
pub(crate) fn write_pid(buf: &mut [u8; PID_VAR_LEN], pid: u32) {
    let mut digits = [0u8; 10];
    let mut n = pid;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let len = digits.len() - i;
    let at = PID_PREFIX.len();
    buf[at..at + len].copy_from_slice(&digits[i..]);
    buf[at + len] = 0;
}

/// Reads systemd's variables for this process: the addresses of
/// `LISTEN_FDS` sockets from fd 3 on, if `LISTEN_PID` is this process.
/// The sockets are made close-on-exec, so a program this one runs does
/// not inherit them (as `sd_listen_fds` does).
pub(crate) fn from_env(
    var: impl Fn(&str) -> Option<String>,
) -> Result<Vec<String>, (&'static str, String)> {
    let Some(count) = var("LISTEN_FDS") else {
        return Ok(Vec::new());
    };
    let pid = var("LISTEN_PID").unwrap_or_default();
    if pid.parse::<libc::pid_t>().ok() != Some(crate::sys::getpid().0) {
        // Meant for another process (an ancestor's sockets).
        return Ok(Vec::new());
    }
    let n = count
        .parse::<usize>()
        .ok()
        .filter(|&n| n <= MAX_LISTEN)
        .ok_or(("LISTEN_FDS", count.clone()))?;
    let addresses: Vec<String> = match var(LISTEN_VAR) {
        Some(list) => list.split('\n').map(str::to_owned).collect(),
        None => (0..n)
            .map(|i| format!("fd:{}", EXEC_FIRST_FD + i as RawFd))
            .collect(),
    };
    if addresses.len() != n {
        return Err((LISTEN_VAR, var(LISTEN_VAR).unwrap_or_default()));
    }
    for fd in EXEC_FIRST_FD..EXEC_FIRST_FD + n as RawFd {
        crate::sys::set_cloexec(fd, true)
            .map_err(|e| ("LISTEN_FDS", format!("{count}: fd {fd}: {e}")))?;
    }
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_or_say_why() {
        assert_eq!(
            Address::parse("tcp:127.0.0.1:6380"),
            Ok(Address::Tcp("127.0.0.1:6380".parse().unwrap()))
        );
        assert_eq!(
            Address::parse("tcp:[::1]:1"),
            Ok(Address::Tcp("[::1]:1".parse().unwrap()))
        );
        assert_eq!(
            Address::parse("unix:/run/a.sock"),
            Ok(Address::Unix("/run/a.sock".into()))
        );
        for (bad, says) in [
            ("127.0.0.1:6380", "not an address"),
            ("tcp:localhost:6380", "is not IP:PORT"),
            ("tcp:127.0.0.1:70000", "is not IP:PORT"),
            ("tcp:127.0.0.1", "is not IP:PORT"),
            ("unix:", "empty"),
            ("unix:/a\nb", "newline"),
        ] {
            let e = Address::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let long = format!("unix:/{}", "a".repeat(107));
        assert!(Address::parse(&long).unwrap_err().contains("at most 107"));
    }

    #[test]
    fn the_pid_line_is_completed_in_place() {
        let mut b = pid_var();
        write_pid(&mut b, 4_194_304);
        assert_eq!(
            std::ffi::CStr::from_bytes_until_nul(&b).unwrap().to_str(),
            Ok("LISTEN_PID=4194304")
        );
        write_pid(&mut b, 7);
        assert_eq!(
            std::ffi::CStr::from_bytes_until_nul(&b).unwrap().to_str(),
            Ok("LISTEN_PID=7")
        );
        write_pid(&mut b, u32::MAX);
        assert_eq!(
            std::ffi::CStr::from_bytes_until_nul(&b).unwrap().to_str(),
            Ok("LISTEN_PID=4294967295")
        );
    }
}

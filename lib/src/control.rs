//! `forkroot ctl`'s side of the control socket: where the socket is, and
//! one request/reply exchange with the root. The messages are
//! [`proto`]'s, shared with the root's side (`root/control.rs`).

use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

pub mod proto;

pub use proto::{Failure, FailureKind, Reply, Request};

/// The longest request line the root accepts.
pub const MAX_REQUEST: usize = proto::MAX_REQUEST;

/// Where the service's control socket is.
pub const SYSTEM_SOCKET: &str = "/run/forkroot.sock";

/// How long `ctl` waits for the root's reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the control socket is when the config does not say: for uid 0
/// always `/run/forkroot.sock` (so a root login shell, whose
/// `$XDG_RUNTIME_DIR` is `/run/user/0`, finds the service's socket); for
/// anyone else `$XDG_RUNTIME_DIR/forkroot.sock`, else `/run/forkroot.sock`.
pub fn default_socket() -> PathBuf {
    if crate::sys::cred::geteuid() == 0 {
        return PathBuf::from(SYSTEM_SOCKET);
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => Path::new(&dir).join("forkroot.sock"),
        _ => PathBuf::from(SYSTEM_SOCKET),
    }
}

/// Why a request got no successful reply.
#[derive(Debug)]
pub enum Error {
    /// The root could not be reached, or it went away before replying.
    Unreachable(String),
    /// The root answered with a failure (or an unreadable reply).
    Root(Failure),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unreachable(msg) => f.write_str(msg),
            Error::Root(failure) => write!(f, "{failure}"),
        }
    }
}

impl std::error::Error for Error {}

/// Sends `request` to the root at `socket` and returns its reply, typed as
/// the request's reply type `T`.
pub fn request<T: DeserializeOwned>(socket: &Path, request: &Request) -> Result<Reply<T>, Error> {
    let unreachable = |e: io::Error| {
        Error::Unreachable(format!(
            "cannot reach the root at {}: {e}",
            socket.display()
        ))
    };
    let mut s = UnixStream::connect(socket).map_err(unreachable)?;
    s.set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(unreachable)?;
    // A root that closed early (past its connection cap, say) may still
    // have replied: read whatever came before giving up.
    let sent = s.write_all(&proto::encode_request(request));
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut reply = Vec::new();
    let read = s.read_to_end(&mut reply);
    if reply.is_empty() {
        return Err(match sent.and(read) {
            Err(e) => unreachable(e),
            Ok(_) => Error::Unreachable(format!(
                "the root at {} closed the connection without replying",
                socket.display()
            )),
        });
    }
    proto::decode_reply(&reply).map_err(Error::Root)
}

/// The control socket named by the config file at `path`: its
/// `[root] control`, else [`default_socket`]. Only that key is read, so a
/// file with problems elsewhere (being edited for a reload) still serves.
pub fn socket_from_config(path: &Path) -> Result<PathBuf, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let doc: toml::Table = text
        .parse()
        .map_err(|e| format!("{}: not valid TOML: {e}", path.display()))?;
    match doc.get("root").and_then(|r| r.get("control")) {
        None => Ok(default_socket()),
        Some(toml::Value::String(s)) if !s.is_empty() => Ok(PathBuf::from(s)),
        Some(_) => Err(format!(
            "{}: root.control: expected a non-empty path string",
            path.display()
        )),
    }
}

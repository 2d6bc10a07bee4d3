//! The control protocol between `forkroot ctl` and a running root.
//!
//! A client connects to the root's Unix stream socket, writes one request
//! line, and reads one JSON document until end-of-file:
//!
//! ```text
//! > status\n
//! < {"ok":true,"root":{...},"daemons":[...]}
//! > restart counter\n
//! < {"ok":true}
//! > stop nosuch\n
//! < {"ok":false,"error":"no daemon named \"nosuch\""}
//! ```
//!
//! Requests: `status`, `tree`, `restart NAME`, `stop NAME`, `start NAME`,
//! `logs NAME [AFTER]`, `metrics`, `shutdown`.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The longest request line the root accepts.
pub const MAX_REQUEST: usize = 4096;

/// Where the control socket is when the config does not say:
/// `$XDG_RUNTIME_DIR/forkroot.sock`, else `/run/forkroot.sock`.
pub fn default_socket() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => Path::new(&dir).join("forkroot.sock"),
        _ => PathBuf::from("/run/forkroot.sock"),
    }
}

/// Sends one request to the root at `socket` and returns its JSON reply.
/// An `{"ok": false}` reply becomes an error carrying the root's message.
pub fn request(socket: &Path, line: &str) -> io::Result<serde_json::Value> {
    let mut s = UnixStream::connect(socket).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot reach the root at {}: {e}", socket.display()),
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(line.as_bytes())?;
    s.write_all(b"\n")?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let v: serde_json::Value = serde_json::from_str(&reply).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad reply from the root: {e}"),
        )
    })?;
    if v.get("ok") == Some(&serde_json::Value::Bool(true)) {
        Ok(v)
    } else {
        let msg = v
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("request failed");
        Err(io::Error::other(msg.to_string()))
    }
}

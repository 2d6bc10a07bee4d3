//! The root's side of the control socket: accepted connections live in the
//! same poll loop as everything else, never block it, and each carries one
//! request and one reply (see [`crate::control`] for the protocol).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};
use tracing::{debug, info, warn};

use super::{AfterStop, Mode, Root, State, TOKEN_CONN};
use crate::config::{format_duration, Program, Strategy};
use crate::control::MAX_REQUEST;
use crate::sys;

/// Control connections open at once, at most.
const MAX_CONNECTIONS: usize = 64;
/// How long the listener rests after `accept` failed.
const CONTROL_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// The listening socket and its open connections.
#[derive(Debug)]
pub(crate) struct Server {
    listener: UnixListener,
    path: PathBuf,
    conns: HashMap<u64, Conn>,
    next_id: u64,
    pub(crate) requests: u64,
}

#[derive(Debug)]
struct Conn {
    stream: UnixStream,
    request: Vec<u8>,
    reply: Vec<u8>,
    sent: usize,
}

impl Server {
    /// Binds the control socket at `path`. A socket file left by a dead
    /// root is replaced; one a live root answers on is an error.
    pub(crate) fn bind(path: &Path) -> io::Result<Server> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists and is not a socket; not replacing it",
                        path.display()
                    ),
                ));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another root is listening on {}", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path).map_err(|e| {
            io::Error::new(e.kind(), format!("control socket {}: {e}", path.display()))
        })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        Ok(Server {
            listener,
            path: path.to_owned(),
            conns: HashMap::new(),
            next_id: 0,
            requests: 0,
        })
    }

    pub(crate) fn listener_fd(&self) -> i32 {
        self.listener.as_raw_fd()
    }
}

impl Root<'_> {
    /// The listener's pause is over: watch it again.
    pub(super) fn resume_control(&mut self) {
        self.control_paused = None;
        if let Some(server) = &self.control {
            if let Err(e) = self.epoll.add(server.listener_fd(), super::TOKEN_LISTENER) {
                warn!(error = %e, "cannot watch the control socket again");
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Root<'_> {
    /// Listener readable: accept every pending connection.
    pub(super) fn on_accept(&mut self) {
        let Some(server) = self.control.as_mut() else {
            return;
        };
        loop {
            match server.listener.accept() {
                Ok((stream, _)) => {
                    // Past the cap the connection is closed at once: the
                    // root's descriptors are not for clients to exhaust.
                    if server.conns.len() >= MAX_CONNECTIONS
                        || stream.set_nonblocking(true).is_err()
                    {
                        continue;
                    }
                    let id = server.next_id;
                    server.next_id += 1;
                    if self.epoll.add(stream.as_raw_fd(), TOKEN_CONN | id).is_ok() {
                        server.conns.insert(
                            id,
                            Conn {
                                stream,
                                request: Vec::new(),
                                reply: Vec::new(),
                                sent: 0,
                            },
                        );
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // EMFILE and friends: the listener stays readable, so
                    // stop watching it for a moment instead of spinning.
                    warn!(error = %e, "control socket accept failed; pausing it for 1s");
                    let _ = self.epoll.delete(server.listener.as_raw_fd());
                    self.control_paused = Some(Instant::now() + CONTROL_PAUSE);
                    return;
                }
            }
        }
    }

    /// A connection is readable (request bytes) or writable (the rest of
    /// a long reply).
    pub(super) fn on_conn(&mut self, id: u64) {
        let Some(server) = self.control.as_mut() else {
            return;
        };
        let Some(conn) = server.conns.get_mut(&id) else {
            return;
        };
        if !conn.reply.is_empty() {
            return self.flush(id);
        }
        let mut buf = [0u8; 1024];
        let line = loop {
            match conn.stream.read(&mut buf) {
                Ok(0) => break Some(conn.request.clone()),
                Ok(n) => {
                    conn.request.extend_from_slice(&buf[..n]);
                    if let Some(end) = conn.request.iter().position(|&b| b == b'\n') {
                        break Some(conn.request[..end].to_vec());
                    }
                    if conn.request.len() > MAX_REQUEST {
                        break Some(Vec::new());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break None,
                Err(_) => {
                    self.close(id);
                    return;
                }
            }
        };
        let Some(line) = line else { return };
        server.requests += 1;
        let request = String::from_utf8_lossy(&line).trim().to_string();
        debug!(request = %request, "control request");
        let reply = match self.handle(&request) {
            Ok(mut v) => {
                v["ok"] = Value::Bool(true);
                v
            }
            Err(msg) => json!({ "ok": false, "error": msg }),
        };
        let Some(conn) = self.control.as_mut().and_then(|s| s.conns.get_mut(&id)) else {
            return;
        };
        conn.reply = serde_json::to_vec(&reply).unwrap_or_default();
        conn.reply.push(b'\n');
        self.flush(id);
    }

    /// Writes what the socket takes; waits for writability for the rest.
    fn flush(&mut self, id: u64) {
        let Some(conn) = self.control.as_mut().and_then(|s| s.conns.get_mut(&id)) else {
            return;
        };
        while conn.sent < conn.reply.len() {
            match conn.stream.write(&conn.reply[conn.sent..]) {
                Ok(n) => conn.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let _ = self
                        .epoll
                        .modify(conn.stream.as_raw_fd(), TOKEN_CONN | id, true);
                    return;
                }
                Err(_) => break,
            }
        }
        self.close(id);
    }

    fn close(&mut self, id: u64) {
        if let Some(conn) = self.control.as_mut().and_then(|s| s.conns.remove(&id)) {
            let _ = self.epoll.delete(conn.stream.as_raw_fd());
        }
    }

    fn index_of(&self, name: Option<&str>) -> Result<usize, String> {
        let name = name.ok_or("missing daemon name")?;
        self.names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| format!("no daemon named {name:?}"))
    }

    /// Carries out one request.
    fn handle(&mut self, request: &str) -> Result<Value, String> {
        let mut words = request.split_whitespace();
        let verb = words.next().unwrap_or("");
        let arg = words.next();
        match verb {
            "status" => Ok(self.status()),
            "tree" => Ok(self.tree()),
            "metrics" => Ok(json!({ "text": self.metrics() })),
            "shutdown" => {
                info!("shutdown requested over the control socket");
                self.shutdown(super::EXIT_OK);
                Ok(json!({}))
            }
            "restart" | "stop" | "start" => {
                let i = self.index_of(arg)?;
                if self.mode != Mode::Supervising {
                    return Err("the root is shutting down".into());
                }
                info!(daemon = %self.names[i], "{verb} requested over the control socket");
                let c = &self.children[i];
                match (verb, c.state) {
                    ("stop", _) => {
                        self.stop(i);
                        self.children[i].after_stop = AfterStop::Rest;
                    }
                    ("restart", State::Starting | State::Running) => {
                        self.stop(i);
                        self.children[i].after_stop = AfterStop::Start;
                    }
                    ("restart", State::Stopping) => self.children[i].after_stop = AfterStop::Start,
                    (_, State::Starting | State::Running) => {}
                    (_, State::Stopping) => self.children[i].after_stop = AfterStop::Start,
                    (_, State::Stopped | State::Backoff | State::Failed) => self.start(i),
                }
                Ok(json!({ "state": self.children[i].state.as_str() }))
            }
            "logs" => {
                let i = self.index_of(arg)?;
                let after = words.next().and_then(|w| w.parse::<u64>().ok()).unwrap_or(0);
                Ok(self.logs(i, after))
            }
            "" => Err("empty request".into()),
            other => Err(format!(
                "unknown request {other:?} (status, tree, restart, stop, start, logs, metrics, shutdown)"
            )),
        }
    }

    /// Heartbeat age of daemon `i` in ms, from its header (untrusted: only
    /// believed when the header is initialised and names the current pid).
    fn heartbeat_age_ms(&self, i: usize) -> Option<u64> {
        let pid = self.children[i].pid?;
        let h = self
            .regions
            .header(i)
            .filter(|h| h.owned_by(pid.0 as u32))?;
        let hb = h.heartbeat_ns;
        (hb != 0).then(|| sys::monotonic_ns().saturating_sub(hb) / 1_000_000)
    }

    /// The allocation policy and counters daemon `i` last published, if
    /// its header names the current process.
    fn alloc_status(&self, i: usize) -> Value {
        let Some(pid) = self.children[i].pid else {
            return Value::Null;
        };
        let Some(h) = self.regions.header(i).filter(|h| h.owned_by(pid.0 as u32)) else {
            return Value::Null;
        };
        let policy = match h.alloc_policy {
            0 => "off",
            1 => "count",
            2 => "forbid",
            _ => "?",
        };
        json!({
            "policy": policy,
            "allocs": h.allocs,
            "bytes": h.alloc_bytes,
        })
    }

    fn status(&self) -> Value {
        let now = Instant::now();
        let daemons: Vec<Value> = self
            .children
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let last = c.last_exit;
                json!({
                    "name": c.cfg.name,
                    "program": match &c.cfg.program {
                        Program::Builtin(k) => json!({ "kind": k }),
                        Program::Exec(argv) => json!({ "exec": argv }),
                    },
                    "group": c.cfg.group.as_deref().unwrap_or("root"),
                    "state": c.state.as_str(),
                    "pid": c.pid.map(|p| p.0),
                    "standby_pid": c.standby.as_ref().filter(|s| s.ready).map(|s| s.pid.0),
                    "uptime_ms": c.started.map(|t| now.duration_since(t).as_millis() as u64),
                    "restarts": c.restarts,
                    "last_exit": last.map(|(reason, _)| reason.to_string()),
                    "last_exit_uptime_ms": last.map(|(_, uptime)| uptime.as_millis() as u64),
                    "fault": c.fault,
                    "heartbeat_age_ms": self.heartbeat_age_ms(i),
                    "region_bytes": self.regions.region_len(i),
                    "memory": c.cfg.memory,
                    "alloc": self.alloc_status(i),
                })
            })
            .collect();
        json!({
            "root": {
                "pid": self.pid.0,
                "uptime_ms": now.duration_since(self.started).as_millis() as u64,
                "mode": match self.mode {
                    Mode::Supervising => "supervising",
                    Mode::ShuttingDown(_) => "shutting_down",
                },
                "restarts_in_period": self.restart_times.count(),
            },
            "daemons": daemons,
        })
    }

    fn tree(&self) -> Value {
        let sup = |s: &crate::config::SupervisorConfig| {
            json!({
                "strategy": match s.strategy {
                    Strategy::OneForOne => "one_for_one",
                    Strategy::OneForAll => "one_for_all",
                    Strategy::RestForOne => "rest_for_one",
                },
                "intensity": s.intensity,
                "period": format_duration(s.period),
            })
        };
        json!({
            "supervisor": sup(&self.config.supervisor),
            "groups": self.config.groups.iter().map(|g| json!({
                "name": g.name,
                "parent": g.parent.as_deref().unwrap_or("root"),
                "supervisor": sup(&g.supervisor),
            })).collect::<Vec<_>>(),
            "daemons": self.children.iter().map(|c| json!({
                "name": c.cfg.name,
                "group": c.cfg.group.as_deref().unwrap_or("root"),
                "state": c.state.as_str(),
                "pid": c.pid.map(|p| p.0),
            })).collect::<Vec<_>>(),
        })
    }

    fn metrics(&self) -> String {
        use std::fmt::Write as _;
        let mut m = String::new();
        let _ = writeln!(
            m,
            "# TYPE forkroot_forks_total counter\nforkroot_forks_total {}",
            self.forks
        );
        let _ = writeln!(
            m,
            "# TYPE forkroot_control_requests_total counter\nforkroot_control_requests_total {}",
            self.control.as_ref().map_or(0, |s| s.requests)
        );
        let _ = writeln!(m, "# TYPE forkroot_restarts_total counter");
        for c in &self.children {
            let _ = writeln!(
                m,
                "forkroot_restarts_total{{daemon=\"{}\"}} {}",
                c.cfg.name, c.restarts
            );
        }
        let _ = writeln!(m, "# TYPE forkroot_up gauge");
        for c in &self.children {
            let up = u8::from(c.state == State::Running);
            let _ = writeln!(m, "forkroot_up{{daemon=\"{}\"}} {up}", c.cfg.name);
        }
        let _ = writeln!(m, "# TYPE forkroot_region_bytes gauge");
        for (i, c) in self.children.iter().enumerate() {
            let _ = writeln!(
                m,
                "forkroot_region_bytes{{daemon=\"{}\"}} {}",
                c.cfg.name,
                self.regions.region_len(i)
            );
        }
        m
    }

    fn logs(&self, i: usize, after: u64) -> Value {
        let mut records = Vec::new();
        let mut next = after;
        super::flight::since(&self.regions, i, &mut next, &mut records);
        json!({ "daemon": self.names[i], "next": next, "records": records })
    }
}

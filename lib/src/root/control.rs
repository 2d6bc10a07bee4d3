//! The root's side of the control socket: accepted connections live in the
//! same poll loop as everything else, never block it, and each carries one
//! request and one reply, typed by [`crate::control::proto`].

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{debug, info, warn};

use super::supervisor::{Cause, Event, Member, TOP};
use super::{Mode, Root, State, TOKEN_CONN};
use crate::config::{format_duration, AutoShutdown, Program, RestartType, Strategy};
use crate::control::proto::{
    self, ActionReply, AllocStatus, DaemonState, DaemonStatus, Empty, Failure, FailureKind,
    HealthReply, LogRecord, LogsReply, MetricsReply, ProgramRef, ReloadReply, Request, RootMode,
    RootStatus, StatusReply, Supervisor, TreeDaemon, TreeGroup, TreeNode, TreeReply, MAX_REQUEST,
};
use crate::sys::cred::Gid;
use crate::sys::{self, Pid};

/// Control connections open at once, at most. A connection past it closes
/// the oldest one, so no number of clients locks an operator out.
const MAX_CONNECTIONS: usize = 64;
/// How long a connection may take from `accept` to the end of its reply;
/// then it is closed (with a failure reply if its request never came).
const CONN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the listener rests after `accept` failed.
const CONTROL_PAUSE: Duration = Duration::from_secs(1);

/// The listening socket and its open connections.
#[derive(Debug)]
pub(crate) struct Server {
    listener: UnixListener,
    path: PathBuf,
    /// Open connections by id; ids grow with accept time and every
    /// connection has the same timeout, so the first is the oldest and
    /// the next to expire.
    conns: BTreeMap<u64, Conn>,
    next_id: u64,
    pub(crate) requests: u64,
    /// Connections closed to make room for a new one.
    evicted: u64,
    /// Connections closed at their deadline.
    expired: u64,
    /// The root's effective uid: allowed in, as uid 0 is.
    uid: sys::cred::Uid,
    /// `[root] control_group`: its members are allowed in too.
    group: Option<(String, Gid)>,
}

#[derive(Debug)]
struct Conn {
    stream: UnixStream,
    request: Vec<u8>,
    reply: Vec<u8>,
    sent: usize,
    /// Closed then, done or not.
    deadline: Instant,
}

impl Server {
    /// Binds the control socket at `path`, for the root's own uid, uid 0,
    /// and the members of `group` if one is given. A socket file left by a
    /// dead root is replaced; one a live root answers on is an error.
    ///
    /// The socket is created mode 0600 (the umask during `bind`), then
    /// given its group and opened to 0660: at no moment does it let in
    /// more than its final mode does.
    pub(crate) fn bind(path: &Path, group: Option<(String, Gid)>) -> io::Result<Server> {
        let here = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
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
            std::fs::remove_file(path).map_err(here)?;
        }
        let listener = sys::cred::with_umask(0o177, || UnixListener::bind(path)).map_err(here)?;
        // From here on a failure leaves no socket file behind.
        let server = Server {
            listener,
            path: path.to_owned(),
            conns: BTreeMap::new(),
            next_id: 0,
            requests: 0,
            evicted: 0,
            expired: 0,
            uid: sys::cred::geteuid(),
            group,
        };
        if let Some((_, gid)) = &server.group {
            sys::cred::chgrp(path, *gid).map_err(here)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(here)?;
        }
        server.listener.set_nonblocking(true)?;
        Ok(server)
    }

    /// Whether `peer` may use the socket: uid 0, the root's own uid, or a
    /// member of the control group.
    fn admits(&self, peer: &sys::cred::Peer) -> bool {
        peer.uid == 0
            || peer.uid == self.uid
            || self
                .group
                .as_ref()
                .is_some_and(|(_, gid)| peer.in_group(*gid))
    }

    /// Why the peer of `stream` may not use the socket (logged), if it
    /// may not.
    fn refusal(&self, stream: &UnixStream) -> Option<Failure> {
        let peer = match sys::cred::peer(stream.as_fd()) {
            Ok(peer) if self.admits(&peer) => return None,
            Ok(peer) => peer,
            Err(e) => {
                warn!(error = %e, "control connection refused: SO_PEERCRED failed");
                return Some(Failure::new(
                    FailureKind::Refused,
                    format!("permission denied: cannot tell who you are ({e})"),
                ));
            }
        };
        warn!(
            pid = peer.pid.map_or(0, Pid::as_raw),
            uid = peer.uid,
            gid = peer.gid,
            "control connection refused: not an allowed user or group"
        );
        let mut who = format!("uid 0 and uid {}", self.uid);
        if let Some((name, gid)) = &self.group {
            who = format!("{who} and group {name} ({gid})");
        }
        Some(Failure::new(
            FailureKind::Refused,
            format!(
                "permission denied: uid {} may not use this control socket (allowed: {who})",
                peer.uid
            ),
        ))
    }

    pub(crate) fn listener_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.listener.as_fd()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Root<'_> {
    /// When the control socket next needs the loop: the end of the
    /// listener's pause, or the oldest connection's deadline.
    pub(super) fn control_wake(&self) -> Option<Instant> {
        let oldest = self
            .control
            .as_ref()
            .and_then(|s| s.conns.first_key_value())
            .map(|(_, c)| c.deadline);
        [self.control_paused, oldest].into_iter().flatten().min()
    }

    /// Timers of the control socket: ends the listener's pause, and closes
    /// every connection past its deadline.
    pub(super) fn control_timers(&mut self, now: Instant) {
        if self.control_paused.is_some_and(|t| t <= now) {
            self.resume_control();
        }
        while let Some((&id, conn)) = self
            .control
            .as_ref()
            .and_then(|s| s.conns.first_key_value())
        {
            if conn.deadline > now {
                break;
            }
            debug!(id, "control connection timed out");
            if let Some(server) = self.control.as_mut() {
                server.expired += 1;
            }
            self.expire(id, false);
        }
    }

    /// The listener's pause is over: watch it again.
    fn resume_control(&mut self) {
        self.control_paused = None;
        if let Some(server) = &self.control {
            if let Err(e) = self.epoll.add(server.listener_fd(), super::TOKEN_LISTENER) {
                warn!(error = %e, "cannot watch the control socket again");
            }
        }
    }

    /// Closes connection `id` before it is done: a client still to send
    /// its request is told why (one non-blocking write, best effort):
    /// its deadline passed, or (`evicted`) a newer connection needed room.
    fn expire(&mut self, id: u64, evicted: bool) {
        let Some(conn) = self.control.as_mut().and_then(|s| s.conns.get_mut(&id)) else {
            return;
        };
        if conn.reply.is_empty() {
            let why = if evicted {
                format!(
                    "no complete request yet; closed to make room for a newer connection \
                     (at most {MAX_CONNECTIONS} open)"
                )
            } else {
                let within = format_duration(CONN_TIMEOUT);
                format!("no complete request within {within}; closed")
            };
            let f = Failure::new(FailureKind::BadRequest, why);
            let _ = conn.stream.write(&proto::encode_reply::<Empty>(Err(&f)));
        }
        self.close(id);
    }

    /// Listener readable: accept every pending connection.
    pub(super) fn on_accept(&mut self) {
        loop {
            let Some(server) = self.control.as_mut() else {
                return;
            };
            match server.listener.accept() {
                Ok((stream, _)) => self.admit(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // EMFILE and friends: the listener stays readable, so
                    // stop watching it for a moment instead of spinning.
                    warn!(error = %e, "control socket accept failed; pausing it for 1s");
                    let _ = self.epoll.delete(server.listener.as_fd());
                    self.control_paused = Some(Instant::now() + CONTROL_PAUSE);
                    return;
                }
            }
        }
    }

    /// Checks an accepted connection's peer: one that may not use the
    /// socket is answered and closed at once (it never holds a slot); any
    /// other joins the loop, closing the oldest connection if all slots
    /// are taken: the root's descriptors are not for clients to exhaust,
    /// and a new client (an operator) always gets in.
    fn admit(&mut self, mut stream: UnixStream) {
        let Some(server) = self.control.as_mut() else {
            return;
        };
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        if let Some(refusal) = server.refusal(&stream) {
            let _ = stream.write(&proto::encode_reply::<Empty>(Err(&refusal)));
            discard_input(&mut stream);
            return;
        }
        if server.conns.len() >= MAX_CONNECTIONS {
            if let Some(&oldest) = server.conns.keys().next() {
                debug!(id = oldest, "control connection evicted for a new one");
                server.evicted += 1;
                self.expire(oldest, true);
            }
        }
        let Some(server) = self.control.as_mut() else {
            return;
        };
        let id = server.next_id;
        server.next_id += 1;
        if self.epoll.add(stream.as_fd(), TOKEN_CONN | id).is_ok() {
            server.conns.insert(
                id,
                Conn {
                    stream,
                    request: Vec::new(),
                    reply: Vec::new(),
                    sent: 0,
                    deadline: Instant::now() + CONN_TIMEOUT,
                },
            );
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
                Ok(0) => break Ok(conn.request.clone()),
                Ok(n) => {
                    conn.request.extend_from_slice(&buf[..n]);
                    if let Some(end) = conn.request.iter().position(|&b| b == b'\n') {
                        break Ok(conn.request[..end].to_vec());
                    }
                    if conn.request.len() > MAX_REQUEST {
                        break Err(Failure::new(
                            FailureKind::BadRequest,
                            format!("the request is longer than {MAX_REQUEST} bytes"),
                        ));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.close(id);
                    return;
                }
            }
        };
        server.requests += 1;
        let reply = match line.and_then(|l| proto::decode_request(&l)) {
            Ok(request) => {
                debug!(?request, "control request");
                self.handle(request)
            }
            Err(failure) => {
                debug!(error = %failure, "bad control request");
                Err(failure)
            }
        };
        let Some(conn) = self.control.as_mut().and_then(|s| s.conns.get_mut(&id)) else {
            return;
        };
        conn.reply = proto::encode_reply(reply.as_ref());
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
                        .modify(conn.stream.as_fd(), TOKEN_CONN | id, true);
                    return;
                }
                Err(_) => break,
            }
        }
        self.close(id);
    }

    fn close(&mut self, id: u64) {
        if let Some(mut conn) = self.control.as_mut().and_then(|s| s.conns.remove(&id)) {
            let _ = self.epoll.delete(conn.stream.as_fd());
            discard_input(&mut conn.stream);
        }
    }

    fn index_of(&self, name: &str) -> Result<usize, Failure> {
        self.live_index(name)
            .ok_or_else(|| Failure::new(FailureKind::Failed, format!("no daemon named {name:?}")))
    }

    /// Carries out one request.
    fn handle(&mut self, request: Request) -> Result<Body, Failure> {
        Ok(match request {
            Request::Status => Body::Status(self.status()),
            Request::Tree => Body::Tree(self.tree()),
            Request::Metrics => Body::Metrics(MetricsReply {
                text: self.metrics(),
            }),
            Request::Health => Body::Health(self.health()),
            Request::Shutdown => {
                info!("shutdown requested over the control socket");
                self.shutdown(super::EXIT_OK);
                Body::Empty(Empty {})
            }
            Request::Restart { name } => Body::Action(self.act(Verb::Restart, &name)?),
            Request::Stop { name } => Body::Action(self.act(Verb::Stop, &name)?),
            Request::Start { name } => Body::Action(self.act(Verb::Start, &name)?),
            Request::Logs {
                name,
                after,
                output_after,
            } => Body::Logs(self.logs(self.index_of(&name)?, after, output_after)),
            Request::Reload { dry_run } => {
                info!(dry_run, "reload requested over the control socket");
                Body::Reload(self.reload(dry_run)?)
            }
        })
    }

    /// `restart`, `stop` or `start` daemon `name`.
    fn act(&mut self, verb: Verb, name: &str) -> Result<ActionReply, Failure> {
        let i = self.index_of(name)?;
        if self.mode != Mode::Supervising {
            return Err(Failure::new(
                FailureKind::Failed,
                "the root is shutting down",
            ));
        }
        info!(daemon = %self.names[i], "{} requested over the control socket", verb.as_str());
        self.step(match verb {
            Verb::Stop => Event::Stop(i),
            Verb::Start => Event::Start(i),
            Verb::Restart => Event::Restart(i),
        });
        let c = &self.children[i];
        Ok(ActionReply {
            state: wire_state(c.state),
            pid: c.pid.map(Pid::as_raw),
        })
    }

    /// The header of daemon `i`, if it is initialised and names the
    /// daemon's current process (a header is the daemon's to write, so
    /// nothing else in it is believed).
    fn live_header(&self, i: usize) -> Option<crate::region::HeaderCopy> {
        let pid = self.children[i].pid?;
        self.regions.header_of(i, pid)
    }

    /// Heartbeat age of daemon `i` in ms: its header's heartbeat or its
    /// last `WATCHDOG=1`, whichever is newer.
    fn heartbeat_age_ms(&self, i: usize) -> Option<u64> {
        let hb = self.live_header(i).map_or(0, |h| h.heartbeat_ns);
        let now = sys::monotonic_ns();
        let last = [hb, self.children[i].ping_ns]
            .into_iter()
            .filter(|&t| t != 0 && t <= now)
            .max()?;
        Some(now.saturating_sub(last) / 1_000_000)
    }

    /// The allocation policy and counters daemon `i` last published.
    fn alloc_status(&self, i: usize) -> Option<AllocStatus> {
        let h = self.live_header(i)?;
        let policy = match h.alloc_policy {
            0 => "off",
            1 => "count",
            2 => "forbid",
            _ => "?",
        };
        Some(AllocStatus {
            policy: policy.into(),
            allocs: h.allocs,
            bytes: h.alloc_bytes,
        })
    }

    fn root_mode(&self) -> RootMode {
        match self.mode {
            Mode::Supervising => RootMode::Supervising,
            Mode::ShuttingDown(_) => RootMode::ShuttingDown,
        }
    }

    fn status(&self) -> StatusReply {
        let now = Instant::now();
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let daemons = self
            .children
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.removed)
            .map(|(i, c)| DaemonStatus {
                name: c.cfg.name.clone(),
                program: match &c.cfg.program {
                    Program::Builtin(k) => ProgramRef::Kind(k.clone()),
                    Program::Exec(argv) => ProgramRef::Exec(argv.clone()),
                },
                group: c.cfg.group.clone().unwrap_or_else(|| "root".into()),
                state: wire_state(c.state),
                pid: c.pid.map(Pid::as_raw),
                standby_pid: c
                    .standby
                    .as_ref()
                    .filter(|s| s.ready)
                    .map(|s| s.pid.as_raw()),
                uptime_ms: c.started.map(|t| ms(now.duration_since(t))),
                restarts: c.restarts,
                last_exit: c.last_exit.map(|(reason, _)| reason.to_string()),
                last_exit_uptime_ms: c.last_exit.map(|(_, uptime)| ms(uptime)),
                fault: c.fault.clone(),
                heartbeat_age_ms: self.heartbeat_age_ms(i),
                status: c.status_text.clone(),
                region_bytes: self.regions.region_len(i),
                memory: c.cfg.memory,
                alloc: self.alloc_status(i),
                cause: c.pid.map(|_| self.sup.start_cause(i).as_str().to_owned()),
                starts_by_cause: Cause::ALL
                    .iter()
                    .zip(self.starts_by_cause.get(i).copied().unwrap_or_default())
                    .filter(|&(_, n)| n > 0)
                    .map(|(c, n)| (c.as_str().to_owned(), n))
                    .collect(),
            })
            .collect();
        StatusReply {
            root: RootStatus {
                pid: self.pid.as_raw(),
                uptime_ms: ms(now.duration_since(self.started)),
                mode: self.root_mode(),
                restarts_in_period: self.sup.recent_restarts(TOP, now),
                containment: self
                    .contain
                    .as_ref()
                    .map(super::cgroup::Containment::describe)
                    .unwrap_or_default(),
                zygote_pid: self.zygote.as_ref().map(|z| z.pid().as_raw()),
            },
            daemons,
        }
    }

    /// Alive (it answered); ready when no daemon is on its way up or down
    /// or given up on: every one is `running`, or `stopped` (on purpose, or
    /// a transient or temporary daemon done).
    fn health(&self) -> HealthReply {
        HealthReply {
            mode: self.root_mode(),
            not_ready: self
                .children
                .iter()
                .filter(|c| !c.removed && !matches!(c.state, State::Running | State::Stopped))
                .map(|c| (c.cfg.name.clone(), wire_state(c.state)))
                .collect(),
        }
    }

    /// The supervision tree as it is (`tree`: each supervisor with its
    /// state, strategy, intensity and restart counts, its children in start
    /// order), and the flat lists older readers know.
    fn tree(&self) -> TreeReply {
        let sup = |s: &crate::config::SupervisorConfig| Supervisor {
            strategy: strategy_name(s.strategy).into(),
            intensity: s.intensity,
            period: format_duration(s.period),
        };
        TreeReply {
            tree: Some(Box::new(self.tree_node(Member::Group(TOP), Instant::now()))),
            supervisor: sup(&self.config.supervisor),
            groups: self
                .config
                .groups
                .iter()
                .map(|g| TreeGroup {
                    name: g.name.clone(),
                    parent: g.parent.clone().unwrap_or_else(|| "root".into()),
                    supervisor: sup(&g.supervisor),
                })
                .collect(),
            daemons: self
                .children
                .iter()
                .filter(|c| !c.removed)
                .map(|c| TreeDaemon {
                    name: c.cfg.name.clone(),
                    group: c.cfg.group.clone().unwrap_or_else(|| "root".into()),
                    state: wire_state(c.state),
                    pid: c.pid.map(Pid::as_raw),
                })
                .collect(),
        }
    }

    /// One node of `ctl tree`: a group with its children, or a daemon.
    fn tree_node(&self, m: Member, now: Instant) -> TreeNode {
        let restart = |r: RestartType| {
            match r {
                RestartType::Permanent => "permanent",
                RestartType::Transient => "transient",
                RestartType::Temporary => "temporary",
            }
            .to_owned()
        };
        match m {
            Member::Daemon(i) => {
                let c = &self.children[i];
                TreeNode::Daemon {
                    name: c.cfg.name.clone(),
                    state: wire_state(c.state),
                    pid: c.pid.map(Pid::as_raw),
                    restart: restart(c.cfg.restart),
                    restarts: c.restarts,
                    cause: self.sup.start_cause(i).as_str().to_owned(),
                    significant: c.cfg.significant,
                }
            }
            Member::Group(g) => {
                let grp = &self.sup.groups()[g];
                TreeNode::Group {
                    name: grp.name.clone(),
                    state: grp.state.as_str().to_owned(),
                    strategy: strategy_name(grp.strategy).to_owned(),
                    intensity: grp.intensity,
                    period: format_duration(grp.period),
                    restart: restart(grp.restart),
                    restarts: grp.restarts,
                    restarts_in_period: self.sup.recent_restarts(g, now),
                    auto_shutdown: auto_shutdown_name(grp.auto_shutdown).to_owned(),
                    significant: grp.significant,
                    children: grp
                        .children
                        .iter()
                        .map(|&c| self.tree_node(c, now))
                        .collect(),
                }
            }
        }
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
        let (evicted, expired) = self
            .control
            .as_ref()
            .map_or((0, 0), |s| (s.evicted, s.expired));
        let _ = writeln!(
            m,
            "# TYPE forkroot_control_closed_total counter
\
             forkroot_control_closed_total{{why=\"evicted\"}} {evicted}
\
             forkroot_control_closed_total{{why=\"timeout\"}} {expired}"
        );
        let _ = writeln!(
            m,
            "# TYPE forkroot_notify_rejected_total counter\nforkroot_notify_rejected_total {}",
            self.notify.rejected
        );
        let live = || self.children.iter().enumerate().filter(|(_, c)| !c.removed);
        let _ = writeln!(m, "# TYPE forkroot_restarts_total counter");
        for (_, c) in live() {
            let _ = writeln!(
                m,
                "forkroot_restarts_total{{daemon=\"{}\"}} {}",
                c.cfg.name, c.restarts
            );
        }
        let _ = writeln!(m, "# TYPE forkroot_starts_total counter");
        for (c, counts) in self.children.iter().zip(&self.starts_by_cause) {
            for (cause, n) in Cause::ALL.iter().zip(counts) {
                let _ = writeln!(
                    m,
                    "forkroot_starts_total{{daemon=\"{}\",cause=\"{}\"}} {n}",
                    c.cfg.name,
                    cause.as_str()
                );
            }
        }
        let _ = writeln!(
            m,
            "# TYPE forkroot_system_messages_dropped_total counter\n\
             forkroot_system_messages_dropped_total {}",
            self.post.dropped()
        );
        let _ = writeln!(m, "# TYPE forkroot_up gauge");
        for (_, c) in live() {
            let up = u8::from(c.state == State::Running);
            let _ = writeln!(m, "forkroot_up{{daemon=\"{}\"}} {up}", c.cfg.name);
        }
        let _ = writeln!(m, "# TYPE forkroot_region_bytes gauge");
        for (i, c) in live() {
            let _ = writeln!(
                m,
                "forkroot_region_bytes{{daemon=\"{}\"}} {}",
                c.cfg.name,
                self.regions.region_len(i)
            );
        }
        m
    }

    fn logs(&self, i: usize, after: u64, output_after: u64) -> LogsReply {
        let mut records = Vec::new();
        let mut next = after;
        super::log_reader::since(&self.regions, i, &mut next, &mut records);
        let mut output = Vec::new();
        let mut output_next = output_after;
        self.outputs[i].since(&mut output_next, &mut output);
        LogsReply {
            output_next,
            output,
            output_dropped: self.outputs[i].dropped(),
            daemon: self.names[i].clone(),
            next,
            // `since` builds each record from a validated flight-log
            // record, with exactly these fields.
            records: records
                .into_iter()
                .filter_map(|r| serde_json::from_value::<LogRecord>(r).ok())
                .collect(),
        }
    }
}

/// Reads (bounded; the socket is non-blocking) what a client sent past its
/// request: closing a Unix socket with unread bytes in it resets the peer,
/// whose next read then fails instead of seeing the end of the reply.
fn discard_input(stream: &mut UnixStream) {
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match stream.read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

/// A reply body: one of the reply types of [`proto`].
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Body {
    Status(StatusReply),
    Tree(TreeReply),
    Metrics(MetricsReply),
    Health(HealthReply),
    Action(ActionReply),
    Logs(LogsReply),
    Reload(ReloadReply),
    Empty(Empty),
}

/// The verbs of [`Root::act`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Restart,
    Stop,
    Start,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Verb::Restart => "restart",
            Verb::Stop => "stop",
            Verb::Start => "start",
        }
    }
}

/// The root's state as the protocol names it.
fn wire_state(s: State) -> DaemonState {
    match s {
        State::Starting => DaemonState::Starting,
        State::Running => DaemonState::Running,
        State::Backoff => DaemonState::Backoff,
        State::Stopping => DaemonState::Stopping,
        State::Stopped => DaemonState::Stopped,
        State::Failed => DaemonState::Failed,
    }
}

/// A strategy as the config writes it.
fn auto_shutdown_name(a: AutoShutdown) -> &'static str {
    match a {
        AutoShutdown::Never => "never",
        AutoShutdown::AnySignificant => "any_significant",
        AutoShutdown::AllSignificant => "all_significant",
    }
}

fn strategy_name(s: Strategy) -> &'static str {
    match s {
        Strategy::OneForOne => "one_for_one",
        Strategy::OneForAll => "one_for_all",
        Strategy::RestForOne => "rest_for_one",
    }
}

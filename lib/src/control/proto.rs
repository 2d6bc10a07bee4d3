//! The control protocol's messages, defined once for both ends: the root
//! ([`crate::root`]) decodes [`Request`]s and encodes replies, `forkroot ctl`
//! ([`crate::cli`]) does the reverse, with the same types.
//!
//! # Wire format
//!
//! One request, one reply, each a JSON object on one line; the root closes
//! the connection after the reply. Every message carries the protocol
//! version `v` ([`VERSION`]):
//!
//! ```text
//! > {"v":1,"cmd":"restart","name":"counter"}
//! < {"v":1,"ok":true,"state":"stopping","pid":4242}
//! > {"v":1,"cmd":"stop","name":"nosuch"}
//! < {"v":1,"ok":false,"error":"no daemon named \"nosuch\""}
//! ```
//!
//! A reply is the request's reply type (`StatusReply` for `status`, ...)
//! with `v` and `"ok": true` added to its fields, or a [`Failure`]. The
//! envelope keeps the shape of the unversioned protocol before it
//! (`{"ok":false,"error":"..."}`), so a `ctl` from before versions prints
//! the root's explanation instead of a parse error; a root from before
//! versions answers without `v`, which [`decode_reply`] names as such.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The protocol version this build speaks. Bump it on any change a peer of
/// the other version would misread.
pub const VERSION: u32 = 1;

/// The longest request line the root accepts, in bytes.
pub const MAX_REQUEST: usize = 4096;

/// What `ctl` asks the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Every daemon's state: [`StatusReply`].
    Status,
    /// The supervision tree: [`TreeReply`].
    Tree,
    /// Counters in Prometheus' text format: [`MetricsReply`].
    Metrics,
    /// Whether the root is alive and its tree ready: [`HealthReply`].
    Health,
    /// Stop a daemon and start it again: [`ActionReply`].
    Restart {
        /// The daemon.
        name: String,
    },
    /// Stop a daemon and keep it stopped: [`ActionReply`].
    Stop {
        /// The daemon.
        name: String,
    },
    /// Start a stopped daemon: [`ActionReply`].
    Start {
        /// The daemon.
        name: String,
    },
    /// A daemon's flight-log records from sequence number `after` on:
    /// [`LogsReply`].
    Logs {
        /// The daemon.
        name: String,
        /// The first sequence number wanted (the previous reply's `next`).
        #[serde(default)]
        after: u64,
        /// The first output line wanted (the previous reply's
        /// `output_next`).
        #[serde(default)]
        output_after: u64,
    },
    /// Read the config file the root was started with again and apply
    /// it, or with `dry_run` only say what applying it would do:
    /// [`ReloadReply`]. A file with any problem changes nothing.
    Reload {
        /// Plan only.
        #[serde(default)]
        dry_run: bool,
    },
    /// Stop every daemon and end the root: [`Empty`].
    Shutdown,
}

/// Why the root did not carry out a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// What went wrong, for a person.
    pub error: String,
    /// Which kind of failure.
    #[serde(default)]
    pub kind: FailureKind,
}

/// The kinds of [`Failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The request was understood and could not be carried out (no such
    /// daemon, the root is shutting down, ...).
    #[default]
    Failed,
    /// The request could not be read: not JSON, unknown command, too long.
    BadRequest,
    /// The two ends speak different protocol versions.
    Version,
    /// The peer is not allowed to use the socket.
    Refused,
    /// A reply that could not be read (set by the client, never sent).
    BadReply,
}

impl Failure {
    /// A failure of `kind` saying `error`.
    pub fn new(kind: FailureKind, error: impl Into<String>) -> Failure {
        Failure {
            error: error.into(),
            kind,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.error)
    }
}

impl std::error::Error for Failure {}

/// Reply to `shutdown`: nothing but `ok`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// A daemon's state, as `ctl status` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DaemonState {
    /// Forked; its setup has not finished.
    Starting,
    /// Setup done; its code is running.
    Running,
    /// Dead; waiting out a backoff delay before the restart.
    Backoff,
    /// Asked to stop; SIGKILL follows at the deadline.
    Stopping,
    /// Not running and not due to run.
    Stopped,
    /// Not running because its supervisor gave up on it.
    Failed,
}

impl DaemonState {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            DaemonState::Starting => "starting",
            DaemonState::Running => "running",
            DaemonState::Backoff => "backoff",
            DaemonState::Stopping => "stopping",
            DaemonState::Stopped => "stopped",
            DaemonState::Failed => "failed",
        }
    }
}

/// What the root is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RootMode {
    /// Running the tree.
    Supervising,
    /// Stopping every daemon before it exits.
    ShuttingDown,
}

impl RootMode {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            RootMode::Supervising => "supervising",
            RootMode::ShuttingDown => "shutting_down",
        }
    }
}

/// Reply to `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    /// The root itself.
    pub root: RootStatus,
    /// Every daemon, in file order.
    pub daemons: Vec<DaemonStatus>,
}

/// The root's line of `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RootStatus {
    /// Its pid.
    pub pid: i32,
    /// Time since it started.
    pub uptime_ms: u64,
    /// Supervising or shutting down.
    pub mode: RootMode,
    /// Restarts counted in the top supervisor's intensity window.
    pub restarts_in_period: usize,
    /// How a daemon's processes are ended with it: `cgroup PATH` (each
    /// daemon in its own cgroup under PATH), or `process-group (WHY)`.
    #[serde(default)]
    pub containment: String,
    /// The zygote's pid, while there is one (it forks the built-in
    /// daemons; DESIGN.md §3).
    #[serde(default)]
    pub zygote_pid: Option<i32>,
}

/// What a daemon runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgramRef {
    /// A kind built into the binary.
    Kind(String),
    /// An exec'd program and its arguments.
    Exec(Vec<String>),
}

/// One daemon's line of `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// Its name.
    pub name: String,
    /// What it runs.
    pub program: ProgramRef,
    /// Its supervisor (`root` for the top one).
    pub group: String,
    /// Where it is in its life.
    pub state: DaemonState,
    /// Its process, if it has one.
    pub pid: Option<i32>,
    /// Its standby's process, once the standby is ready.
    pub standby_pid: Option<i32>,
    /// Time since its process started.
    pub uptime_ms: Option<u64>,
    /// Restarts so far (operator restarts and the first start excluded).
    pub restarts: u32,
    /// How its last process ended.
    pub last_exit: Option<String>,
    /// How long that process had run.
    pub last_exit_uptime_ms: Option<u64>,
    /// Why the root could not start it, or what it found wrong with its
    /// `state_dir` file (truncated, grown, replaced), if anything.
    #[serde(default)]
    pub fault: Option<String>,
    /// Age of its last heartbeat (its header's, if the header names its
    /// current process, or its last `WATCHDOG=1`, whichever is newer).
    pub heartbeat_age_ms: Option<u64>,
    /// Its last `STATUS=` line (sd_notify), if its current process sent one.
    #[serde(default)]
    pub status: Option<String>,
    /// Bytes of its whole region.
    pub region_bytes: usize,
    /// Bytes of its state (`memory` in the config).
    pub memory: u64,
    /// Its allocation policy and counters, as it last published them.
    pub alloc: Option<AllocStatus>,
    /// Why its current process started (`start`, `death`, `retry`, `link`,
    /// `strategy`, `escalation`, `operator`, `watchdog`, `reload`); absent
    /// without a process.
    #[serde(default)]
    pub cause: Option<String>,
    /// Its starts so far by cause (causes never seen left out).
    #[serde(default)]
    pub starts_by_cause: std::collections::BTreeMap<String, u64>,
}

/// A daemon's allocation policy and counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocStatus {
    /// `off`, `count` or `forbid`.
    pub policy: String,
    /// Allocations counted.
    pub allocs: u64,
    /// Bytes allocated.
    pub bytes: u64,
}

/// Reply to `tree`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeReply {
    /// The tree as the supervisor holds it, from the top supervisor down
    /// (absent from a root before nested groups).
    #[serde(default)]
    pub tree: Option<Box<TreeNode>>,
    /// The top supervisor.
    pub supervisor: Supervisor,
    /// Nested supervisors, in file order.
    pub groups: Vec<TreeGroup>,
    /// Every daemon, in file order.
    pub daemons: Vec<TreeDaemon>,
}

/// A node of `tree`: a supervisor with its children in start order, or a
/// daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TreeNode {
    /// The top supervisor (`root`) or a `[[group]]`.
    Group {
        /// Its name.
        name: String,
        /// `running`, `restarting`, `stopping`, `stopped` or `failed`.
        state: String,
        /// `one_for_one`, `one_for_all` or `rest_for_one`.
        strategy: String,
        /// Restarts allowed per period.
        intensity: u32,
        /// The period, as the config writes durations.
        period: String,
        /// Its restart type (what its parent does when it gave up).
        restart: String,
        /// How often its parent restarted it.
        restarts: u32,
        /// Restarts within its period now.
        restarts_in_period: usize,
        /// Whether the end of its significant children ends it: `never`,
        /// `any_significant` or `all_significant`.
        #[serde(default)]
        auto_shutdown: String,
        /// Its end may end its parent (the parent's `auto_shutdown`).
        #[serde(default)]
        significant: bool,
        /// Its daemons and groups, in start order.
        children: Vec<TreeNode>,
    },
    /// A daemon.
    Daemon {
        /// Its name.
        name: String,
        /// Where it is in its life.
        state: DaemonState,
        /// Its process, if it has one.
        pid: Option<i32>,
        /// Its restart type.
        restart: String,
        /// Restarts so far.
        restarts: u32,
        /// Why its current process started: `start`, `death`, `retry`,
        /// `link`, `strategy`, `escalation`, `operator`, `watchdog` or
        /// `reload`.
        cause: String,
        /// Its end may end its supervisor (the supervisor's
        /// `auto_shutdown`).
        #[serde(default)]
        significant: bool,
    },
}

/// A supervisor's policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Supervisor {
    /// `one_for_one`, `one_for_all` or `rest_for_one`.
    pub strategy: String,
    /// Restarts allowed per period.
    pub intensity: u32,
    /// The period, as the config writes durations.
    pub period: String,
}

/// A group of `tree`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeGroup {
    /// Its name.
    pub name: String,
    /// Its parent (`root` for the top supervisor).
    pub parent: String,
    /// Its policy.
    pub supervisor: Supervisor,
}

/// A daemon of `tree`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeDaemon {
    /// Its name.
    pub name: String,
    /// Its supervisor (`root` for the top one).
    pub group: String,
    /// Where it is in its life.
    pub state: DaemonState,
    /// Its process, if it has one.
    pub pid: Option<i32>,
}

/// Reply to `metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsReply {
    /// Prometheus' text format.
    pub text: String,
}

/// Reply to `restart`, `stop` and `start`: the daemon right after the root
/// acted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionReply {
    /// Its state.
    pub state: DaemonState,
    /// Its process, if it has one (during `stopping`, the one being stopped).
    #[serde(default)]
    pub pid: Option<i32>,
}

/// Reply to `reload`: the plan, by daemon name, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReply {
    /// The file read.
    pub file: String,
    /// Whether the plan is being carried out (false for a dry run).
    pub applied: bool,
    /// Daemons to start.
    pub added: Vec<String>,
    /// Daemons to stop, and forget.
    pub removed: Vec<String>,
    /// Daemons to restart with new settings, with the keys that changed.
    pub changed: Vec<(String, Vec<String>)>,
    /// Daemons left as they are (their process keeps running).
    pub unchanged: Vec<String>,
    /// Supervisor settings that change in place (`root.stop_timeout`,
    /// `supervisor`, `group[0]`).
    pub settings: Vec<String>,
}

/// Reply to `health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReply {
    /// Supervising or shutting down.
    pub mode: RootMode,
    /// Daemons that keep the tree from being ready, with their state: every
    /// daemon not `running` and not `stopped`.
    pub not_ready: Vec<(String, DaemonState)>,
}

/// Reply to `logs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsReply {
    /// The daemon.
    pub daemon: String,
    /// The sequence number to ask for next.
    pub next: u64,
    /// Records, oldest first.
    pub records: Vec<LogRecord>,
    /// The output line number to ask for next.
    #[serde(default)]
    pub output_next: u64,
    /// Lines the daemon wrote on stdout and stderr, oldest first.
    #[serde(default)]
    pub output: Vec<OutputLine>,
    /// Lines of its output the rate limit dropped so far.
    #[serde(default)]
    pub output_dropped: u64,
}

/// One line a daemon wrote on stdout or stderr. Its text is the daemon's:
/// untrusted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputLine {
    /// Its number among the daemon's output lines, from 1.
    pub seq: u64,
    /// Realtime clock when the root read it, ns since the epoch.
    pub time_ns: u64,
    /// The process it is attributed to (the one running when it was read,
    /// or the one that had just ended).
    pub pid: u32,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The line, without its newline.
    pub text: String,
}

/// One flight-log record. Its text is the daemon's: untrusted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Its sequence number in the daemon's flight log.
    pub seq: u64,
    /// Realtime clock when it was written, ns since the epoch.
    pub time_ns: u64,
    /// `ERROR`, `WARN`, `INFO`, `DEBUG` or `TRACE`.
    pub level: String,
    /// The writing process.
    pub pid: u32,
    /// The transaction it belongs to, in hex, if any.
    pub tx: Option<String>,
    /// What was logged.
    pub text: String,
}

/// Encodes `request` as one line (with its newline).
pub fn encode_request(request: &Request) -> Vec<u8> {
    let mut v = match serde_json::to_value(request) {
        Ok(Value::Object(m)) => m,
        // A tagged enum always serialises to an object.
        _ => Map::new(),
    };
    v.insert("v".into(), VERSION.into());
    line(Value::Object(v))
}

/// Decodes one request line (without its newline).
pub fn decode_request(line: &[u8]) -> Result<Request, Failure> {
    let bad = |msg: String| Failure::new(FailureKind::BadRequest, msg);
    let text = std::str::from_utf8(line)
        .map_err(|_| bad("the request is not UTF-8".into()))?
        .trim();
    if text.is_empty() {
        return Err(bad("empty request".into()));
    }
    let mut m = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(bad("the request is not a JSON object".into())),
        Err(_) if !text.starts_with('{') => {
            // The protocol before versions: a bare `status` line.
            return Err(Failure::new(
                FailureKind::Version,
                format!(
                    "this root speaks control protocol {VERSION}; the request came from an \
                     older forkroot ctl (unversioned); use the forkroot ctl that matches the root"
                ),
            ));
        }
        Err(e) => return Err(bad(format!("the request is not valid JSON: {e}"))),
    };
    match m.remove("v") {
        Some(Value::Number(n)) if n.as_u64() == Some(u64::from(VERSION)) => {}
        Some(Value::Number(n)) => {
            return Err(Failure::new(
                FailureKind::Version,
                format!(
                    "the request speaks control protocol {n}; this root speaks {VERSION}; \
                     use the forkroot ctl that matches the root"
                ),
            ))
        }
        Some(_) => return Err(bad("the protocol version \"v\" is not a number".into())),
        None => return Err(bad("the request has no protocol version \"v\"".into())),
    }
    serde_json::from_value(Value::Object(m)).map_err(|e| {
        bad(format!(
            "{e} (requests: status, tree, metrics, health, restart, stop, start, logs, shutdown)"
        ))
    })
}

/// Encodes the reply to a request: `body` with `v` and `ok` added, or the
/// failure.
pub fn encode_reply<T: Serialize>(reply: Result<&T, &Failure>) -> Vec<u8> {
    let (ok, fields) = match reply {
        Ok(body) => (true, serde_json::to_value(body)),
        Err(failure) => (false, serde_json::to_value(failure)),
    };
    match fields {
        Ok(Value::Object(m)) => line(envelope(ok, m)),
        // Every reply type is a struct; should one not serialise, the peer
        // still learns that the request failed.
        _ => {
            let mut m = Map::new();
            m.insert("error".into(), "the reply could not be encoded".into());
            line(envelope(false, m))
        }
    }
}

fn envelope(ok: bool, fields: Map<String, Value>) -> Value {
    let mut m = Map::new();
    m.insert("v".into(), VERSION.into());
    m.insert("ok".into(), ok.into());
    m.extend(fields);
    Value::Object(m)
}

fn line(v: Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(&v).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Decodes a reply: the body of type `T`, or the root's failure (or a
/// failure saying why the reply could not be read).
pub fn decode_reply<T: DeserializeOwned>(text: &[u8]) -> Result<Reply<T>, Failure> {
    let bad = |msg: String| Failure::new(FailureKind::BadReply, msg);
    let v: Value = serde_json::from_slice(text)
        .map_err(|e| bad(format!("the root's reply is not JSON: {e}")))?;
    let Value::Object(m) = v else {
        return Err(bad("the root's reply is not a JSON object".into()));
    };
    let ok = m.get("ok") == Some(&Value::Bool(true));
    match m.get("v").and_then(Value::as_u64) {
        Some(v) if v == u64::from(VERSION) => {}
        Some(v) => {
            return Err(Failure::new(
                FailureKind::Version,
                format!(
                    "the root speaks control protocol {v}; this forkroot ctl speaks {VERSION}; \
                     use the forkroot ctl that matches the root"
                ),
            ))
        }
        None => {
            return Err(Failure::new(
                FailureKind::Version,
                format!(
                    "the root speaks the unversioned control protocol of an older forkroot; \
                     this forkroot ctl speaks {VERSION}; use the forkroot ctl that matches the root"
                ),
            ))
        }
    }
    let raw = m.clone();
    if !ok {
        return Err(serde_json::from_value(Value::Object(m))
            .unwrap_or_else(|e| bad(format!("the root's failure reply is malformed: {e}"))));
    }
    let body = serde_json::from_value(Value::Object(m))
        .map_err(|e| bad(format!("the root's reply is malformed: {e}")))?;
    Ok(Reply { body, raw })
}

/// A successful reply: its typed body, and the document as it came (which
/// `ctl status --json` prints).
#[derive(Debug, Clone)]
pub struct Reply<T> {
    /// The body.
    pub body: T,
    /// Every field of the reply, `v` and `ok` included.
    pub raw: Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::Status,
            Request::Restart { name: "kv".into() },
            Request::Logs {
                name: "kv".into(),
                after: 7,
                output_after: 3,
            },
        ] {
            let line = encode_request(&r);
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(decode_request(&line[..line.len() - 1]), Ok(r));
        }
    }

    #[test]
    fn old_and_future_peers_get_a_version_failure() {
        let old = decode_request(b"status").unwrap_err();
        assert_eq!(old.kind, FailureKind::Version);
        assert!(old.error.contains("older forkroot ctl"), "{old}");
        let future = decode_request(br#"{"v":2,"cmd":"status"}"#).unwrap_err();
        assert_eq!(future.kind, FailureKind::Version);
        assert!(future.error.contains("protocol 2"), "{future}");
        let old_root = decode_reply::<Empty>(br#"{"ok":false,"error":"unknown request"}"#);
        assert_eq!(old_root.unwrap_err().kind, FailureKind::Version);
    }

    #[test]
    fn malformed_requests_say_what_is_wrong() {
        let e = decode_request(br#"{"v":1,"cmd":"reboot"}"#).unwrap_err();
        assert_eq!(e.kind, FailureKind::BadRequest);
        assert!(e.error.contains("reboot"), "{e}");
        let e = decode_request(br#"{"v":1,"cmd":"stop"}"#).unwrap_err();
        assert!(e.error.contains("name"), "{e}");
        let e = decode_request(br#"{"cmd":"status"}"#).unwrap_err();
        assert!(e.error.contains("version"), "{e}");
        let e = decode_request(b"{\"v\":1,").unwrap_err();
        assert_eq!(e.kind, FailureKind::BadRequest);
    }

    #[test]
    fn replies_keep_the_envelope() {
        let a = ActionReply {
            state: DaemonState::Stopping,
            pid: Some(9),
        };
        let line = encode_reply(Ok(&a));
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["ok"], true);
        assert_eq!(v["state"], "stopping");
        assert_eq!(decode_reply::<ActionReply>(&line).unwrap().body, a);
        let f = Failure::new(FailureKind::Failed, "no daemon named \"x\"");
        let line = encode_reply::<Empty>(Err(&f));
        assert_eq!(decode_reply::<Empty>(&line).unwrap_err(), f);
    }
}

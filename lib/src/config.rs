//! The tree's configuration: the TOML file an operator writes, parsed and
//! validated in one pass that collects every problem with its place.
//!
//! Parsing never stops at the first problem: [`Config::parse`] returns either
//! a complete, validated [`Config`] or the full list of [`Problem`]s, each
//! naming where it is (`daemon[2].memory`) and what is wrong.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A validated configuration: every name unique, every reference resolved,
/// every size and duration in range.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `[root]`: settings of the root process itself.
    pub root: RootConfig,
    /// `[supervisor]`: the top supervisor.
    pub supervisor: SupervisorConfig,
    /// `[[group]]`: nested supervisors, in file order.
    pub groups: Vec<GroupConfig>,
    /// `[[daemon]]`: the daemons, in file order (which is start order).
    pub daemons: Vec<DaemonConfig>,
}

/// `[root]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RootConfig {
    /// `control`: path of the control socket; `None` means the default
    /// (`$XDG_RUNTIME_DIR/forkroot.sock`, else `/run/forkroot.sock`).
    pub control: Option<PathBuf>,
    /// `state_dir`: where file-backed regions live, if any.
    pub state_dir: Option<PathBuf>,
    /// `stop_timeout`: time between SIGTERM and SIGKILL. Default 5s.
    pub stop_timeout: Duration,
}

/// Restart strategy of a supervisor (OTP names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Restart only the child that died.
    OneForOne,
    /// Restart every child of the supervisor.
    OneForAll,
    /// Restart the child that died and every child started after it.
    RestForOne,
}

/// `[supervisor]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SupervisorConfig {
    /// `strategy`, default `one_for_one`.
    pub strategy: Strategy,
    /// `intensity`: at most this many restarts ... (default 5)
    pub intensity: u32,
    /// `period`: ... within this window (default 10s), else escalate.
    pub period: Duration,
}

/// `[[group]]`: a nested supervisor.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupConfig {
    /// `name`: unique among groups and daemons; not `root`.
    pub name: String,
    /// `parent`: a group name, or `None` for the top supervisor (`"root"`).
    pub parent: Option<String>,
    /// The group's own strategy, intensity and period.
    pub supervisor: SupervisorConfig,
}

/// `restart`: when a daemon that exited is started again (OTP semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartType {
    /// Always restarted.
    Permanent,
    /// Restarted only after an abnormal exit (signal or non-zero code).
    Transient,
    /// Never restarted.
    Temporary,
}

/// `on_restart`: what a restarted daemon finds in its region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRestart {
    /// Zeroed state.
    Fresh,
    /// The last checkpoint that verifies.
    Resume,
    /// The daemon sees its old state and its death history, and chooses.
    Decide,
}

/// What a daemon runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Program {
    /// `kind = "..."`: a daemon built into the binary, forked without exec.
    Builtin(String),
    /// `exec = [...]`: any program; the first element is the path.
    Exec(Vec<String>),
}

/// Exponential backoff between restarts of one daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// `backoff`: delay before the first restart after a death; doubled
    /// after each further death. Zero (the default) restarts at once.
    pub initial: Duration,
    /// `backoff_max`: the cap of the doubling. Default 30s.
    pub max: Duration,
}

/// `[[daemon]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    /// `name`: unique, 1..=32 bytes of `[A-Za-z0-9_.-]`, not `root`.
    pub name: String,
    /// `kind` or `exec` (exactly one of them).
    pub program: Program,
    /// `group`: a group name, or `None` for the top supervisor.
    pub group: Option<String>,
    /// `memory`: bytes of state the root preallocates (default 1MiB).
    pub memory: u64,
    /// `restart`, default permanent.
    pub restart: RestartType,
    /// `on_restart`, default resume.
    pub on_restart: OnRestart,
    /// `watchdog`: heartbeat deadline, if any.
    pub watchdog: Option<Duration>,
    /// `standby`: keep a pre-forked hot backup.
    pub standby: bool,
    /// `links`: names of daemons linked to this one.
    pub links: Vec<String>,
    /// `backoff`, `backoff_max`.
    pub backoff: Backoff,
    /// `[daemon.args]`: settings of the kind, passed through as-is.
    pub args: toml::Table,
}

/// One thing wrong with a configuration, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: `daemon[2].memory`, `supervisor.period`, or `FILE:LINE:COL`
    /// for a TOML syntax error.
    pub place: String,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.place, self.message)
    }
}

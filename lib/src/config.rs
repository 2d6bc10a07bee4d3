//! The tree's configuration: the TOML file an operator writes, parsed and
//! validated in one pass that collects every problem with its place.
//!
//! Parsing never stops at the first problem: [`Config::parse`] returns either
//! a complete, validated [`Config`] or the full list of [`Problem`]s, each
//! naming where it is (`daemon[2].memory`) and what is wrong.
//!
//! Places are written the way the file is: `root.stop_timeout`,
//! `supervisor.period`, `group[0].parent`, `daemon[2].memory`,
//! `daemon[1].exec[0]`, `daemon[0].links[1]`, where indexes count the
//! `[[group]]` and `[[daemon]]` tables from 0 in file order. A problem with
//! a whole entry (neither `kind` nor `exec`) has the entry as its place
//! (`daemon[3]`); a TOML syntax error has `FILE:LINE:COL`.
//!
//! A daemon's `[daemon.args]` are checked in the same pass against the
//! settings its kind declares ([`Setting`]): an unknown key gets a
//! did-you-mean (`daemon[2].args.rtae`), a value of the wrong type or out
//! of range its place. The daemon reads them typed ([`Args::get`]).
//!
//! Sizes, durations and signals are read by [`parse_size`],
//! [`parse_duration`] and [`parse_signal`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::daemon::Registry;

mod check;
mod settings;
pub(crate) mod units;

pub(crate) use settings::check_declaration;
pub use settings::{Args, Check, FromArg, Setting, Type, Value};
pub use units::{
    format_duration, parse_duration, parse_signal, parse_size, MAX_DURATION, MAX_SIZE,
};

impl Config {
    /// Parses and validates the text of a config file against the daemon
    /// kinds of `kinds` (each `kind` must be one of them, and its
    /// `[daemon.args]` must fit the kind's declared settings). `file` names
    /// the text in the place of a syntax error (`FILE:LINE:COL`).
    ///
    /// Returns the config with every default applied, or every problem
    /// found, in file order.
    pub fn parse(text: &str, file: &str, kinds: &Registry) -> Result<Config, Vec<Problem>> {
        match text.parse::<toml::Table>() {
            Ok(doc) => check::check(&doc, kinds),
            Err(e) => Err(vec![syntax_problem(text, file, &e)]),
        }
    }

    /// Reports every daemon whose `kind` is not in `known`, the kinds built
    /// into the binary: `daemon[1].kind: unknown kind "x" (built in: idle,
    /// flaky)`. [`Config::parse`] does this already; this is for a config
    /// built or changed by hand.
    pub fn check_kinds(&self, known: &[&str]) -> Vec<Problem> {
        self.daemons
            .iter()
            .enumerate()
            .filter_map(|(i, d)| match &d.program {
                Program::Builtin(kind) if !known.contains(&kind.as_str()) => Some(Problem {
                    place: format!("daemon[{i}].kind"),
                    message: format!("unknown kind {kind:?} (built in: {})", known.join(", ")),
                }),
                _ => None,
            })
            .collect()
    }

    /// The daemon named `name`, if any.
    pub fn daemon(&self, name: &str) -> Option<&DaemonConfig> {
        self.daemons.iter().find(|d| d.name == name)
    }

    /// The group named `name`, if any.
    pub fn group(&self, name: &str) -> Option<&GroupConfig> {
        self.groups.iter().find(|g| g.name == name)
    }
}

/// The largest config file [`load`] reads.
pub const MAX_CONFIG: u64 = 16 << 20;

/// Reads and parses the config file at `path`, as [`Config::parse`]. A
/// file that cannot be read, or is larger than [`MAX_CONFIG`], gives one
/// problem whose place is the path.
pub fn load(path: &Path, kinds: &Registry) -> Result<Config, Vec<Problem>> {
    use std::io::Read;
    let file = path.display().to_string();
    let problem = |message: String| {
        vec![Problem {
            place: file.clone(),
            message,
        }]
    };
    // At most MAX_CONFIG bytes (and one more, to notice): `--config
    // /dev/zero` or a log file given by mistake must not fill memory.
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CONFIG + 1).read_to_end(&mut bytes))
        .map_err(|e| problem(format!("cannot read the config file: {e}")))?;
    if bytes.len() as u64 > MAX_CONFIG {
        return Err(problem(format!(
            "larger than {}MiB: not a config file",
            MAX_CONFIG >> 20
        )));
    }
    match String::from_utf8(bytes) {
        Ok(text) => Config::parse(&text, &file, kinds),
        Err(e) => {
            // Placed like a syntax error, at the first byte that is not UTF-8.
            let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let good = std::str::from_utf8(good).unwrap_or_default();
            let line = good.matches('\n').count() + 1;
            let col = good.rsplit('\n').next().unwrap_or_default().chars().count() + 1;
            Err(vec![Problem {
                place: format!("{file}:{line}:{col}"),
                message: "not UTF-8 text (a TOML file is UTF-8; a path in it too)".to_owned(),
            }])
        }
    }
}

/// Checks a daemon or group name as [`Config::parse`] does: 1 to 32 bytes
/// of `A-Z a-z 0-9 _ . -`, starting with a letter, a digit or `_`, and not
/// `root`. The error is a message without a place.
pub fn check_name(name: &str) -> Result<(), String> {
    check::check_name(name)
}

/// One problem for a TOML syntax error, placed at `FILE:LINE:COL` (both
/// counted from 1, columns in characters).
fn syntax_problem(text: &str, file: &str, e: &toml::de::Error) -> Problem {
    let place = match e.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            // A span from the parser lies on char boundaries; be safe anyway.
            let before = text.get(..start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let line_start = before.rfind('\n').map_or(0, |n| n + 1);
            let col = before[line_start..].chars().count() + 1;
            format!("{file}:{line}:{col}")
        }
        None => file.to_owned(),
    };
    let message = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    Problem {
        place,
        message: format!("TOML syntax error: {message}"),
    }
}

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
    /// `[supervisor] spare_mailboxes`: mailboxes reserved at start for
    /// daemons a reload adds (default 8), each with room for a mailbox of
    /// the default shape; a reload that adds more, or a larger one, is
    /// refused.
    pub spare_mailboxes: u32,
}

/// `[root]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RootConfig {
    /// `control`: path of the control socket; `None` means
    /// [`crate::control::default_socket`].
    pub control: Option<PathBuf>,
    /// `control_group`: a group whose members may use the control socket
    /// too (the socket is then mode 0660 and of that group), with its id.
    pub control_group: Option<(String, u32)>,
    /// `state_dir`: where file-backed regions live, if any.
    pub state_dir: Option<PathBuf>,
    /// `stop_timeout`: time between SIGTERM and SIGKILL. Default 5s.
    pub stop_timeout: Duration,
    /// `zygote`: built-in daemons are forked by the zygote, a small copy
    /// of the root made at start (default `true`); `false`: the root forks
    /// each itself.
    pub zygote: bool,
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
    /// `auto_shutdown`: whether the exit of significant children ends this
    /// supervisor (default `never`).
    pub auto_shutdown: AutoShutdown,
}

/// `auto_shutdown` of a supervisor (OTP's flag of that name): when the end
/// of its significant children (`significant = true`) ends the supervisor
/// itself. A significant child "ends" when its restart type does not
/// restart it: a `transient` one that exits with code 0, a `temporary` one
/// that exits in any way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoShutdown {
    /// The exit of no child ends the supervisor (the default).
    Never,
    /// The end of any significant child ends it.
    AnySignificant,
    /// The end of the last significant child still active (up, or due to
    /// restart) ends it.
    AllSignificant,
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
    /// `restart`: whether its parent restarts the group after it gave up
    /// (`transient`: a group that gave up ended with OTP's `shutdown`, which
    /// is not abnormal, so only `permanent` groups come back).
    pub restart: RestartType,
    /// `significant`: the group's end (its own auto shutdown, or giving
    /// up: both end it with OTP's `shutdown`, not restarted unless
    /// `permanent`) may end its parent, per the parent's `auto_shutdown`.
    /// Only with `restart = "transient"` or `"temporary"`.
    pub significant: bool,
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
    /// `significant`: the daemon's end may end its supervisor, per the
    /// supervisor's `auto_shutdown`. Only with `restart = "transient"` or
    /// `"temporary"` (default false).
    pub significant: bool,
    /// `on_restart`, default resume.
    pub on_restart: OnRestart,
    /// `watchdog`: heartbeat deadline, if any.
    pub watchdog: Option<Duration>,
    /// `standby`: keep a pre-forked hot backup.
    pub standby: bool,
    /// `links`: names of daemons linked to this one.
    pub links: Vec<String>,
    /// `listen`: addresses (`tcp:IP:PORT`, `unix:PATH`) of the listening
    /// sockets the root binds once and hands to every incarnation.
    pub listen: Vec<String>,
    /// `backoff`, `backoff_max`.
    pub backoff: Backoff,
    /// `readiness`/`notify_fd`: when the daemon counts as ready.
    pub readiness: Readiness,
    /// `start_timeout`: from fork to ready at most this long, else the
    /// start is a failure (default 90s).
    pub start_timeout: Duration,
    /// `trap_exits`: the death of a linked daemon arrives as an EXIT
    /// message in its mailbox instead of restarting it (default false).
    pub trap_exits: bool,
    /// `mailbox`: messages its mailbox holds (default 64).
    pub mailbox: u32,
    /// `mailbox_message`: bytes of its largest message (default 1KiB).
    pub mailbox_message: u32,
    /// `[daemon.args]`: the settings of its kind, checked against the
    /// kind's declaration (empty for an exec'd program).
    pub args: Args,
    /// `memory_max`, `pids_max`, `cpu_weight`: limits on its cgroup.
    pub limits: Limits,
    /// How an exec'd program is run (`None` for a built-in kind).
    pub exec: Option<ExecSettings>,
}

/// Limits written to a daemon's cgroup (cgroup v2 only; `check` refuses
/// one whose controller is not available).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// `memory_max`: bytes (`memory.max`).
    pub memory_max: Option<u64>,
    /// `pids_max`: tasks (`pids.max`).
    pub pids_max: Option<u64>,
    /// `cpu_weight`: 1..=10000, default 100 (`cpu.weight`).
    pub cpu_weight: Option<u64>,
}

/// The settings of an exec'd program, resolved when the config is loaded
/// (the program through `PATH`, the user and group to their ids), so the
/// forked child only applies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSettings {
    /// `exec[0]` resolved: itself if it has a `/`, else the first
    /// executable file of that name in the root's `PATH`.
    pub path: PathBuf,
    /// `user`: name and uid; the primary group comes from it unless
    /// `group` is given.
    pub user: Option<(String, u32)>,
    /// The gid to run as (`group`, else the user's primary group).
    pub gid: Option<u32>,
    /// Supplementary groups: the user's (`Some(list)`), or none at all
    /// (`Some([])`, with `group` but no `user`); `None` leaves them as the
    /// root's.
    pub groups: Option<Vec<u32>>,
    /// `cwd`: an existing directory.
    pub cwd: Option<PathBuf>,
    /// `umask`, at most 0o777.
    pub umask: Option<u32>,
    /// `env`: variables added (or replaced), in name order.
    pub env: Vec<(String, String)>,
    /// `env_clear`: start from an empty environment rather than the root's.
    pub env_clear: bool,
    /// `rlimits`: `(resource, soft, hard)`, `u64::MAX` meaning infinity.
    pub rlimits: Vec<(Rlimit, u64, u64)>,
    /// `no_new_privs`: set `PR_SET_NO_NEW_PRIVS` before the exec.
    pub no_new_privs: bool,
    /// `stdin`: the file opened read-only as its standard input
    /// (default `/dev/null`).
    pub stdin: PathBuf,
}

/// A resource of `rlimits`, by the name `ulimit`/systemd use without the
/// `RLIMIT_` prefix, lower case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    /// `nofile`, `core`, ...
    pub name: &'static str,
    /// The `RLIMIT_*` number.
    pub resource: u32,
}

/// `readiness`: when a daemon counts as ready (`running`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// When its setup ends: a built-in daemon's code runs, a program is
    /// exec'd.
    Exec,
    /// When it sends `READY=1` to `$NOTIFY_SOCKET` (systemd's
    /// `Type=notify`).
    Notify,
    /// When it writes a newline to this descriptor (`notify_fd`, s6's
    /// notification-fd).
    Fd(i32),
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

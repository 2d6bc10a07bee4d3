//! The validator: walks a parsed TOML table by hand, key by key, so that
//! every problem in the file is found in one pass rather than only the first.
//!
//! Problems come out in file order of sections: top-level keys, `[root]`,
//! `[supervisor]`, each `[[group]]`, each `[[daemon]]`; within a table,
//! unknown keys first, then the known keys in the order the contract lists
//! them.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use toml::{Table, Value};

use super::settings::{Args, Setting, Type, Value as ArgValue};
use super::units::{format_duration, parse_duration, parse_signal, parse_size};
use super::{
    AutoShutdown, Backoff, Config, DaemonConfig, GroupConfig, Limits, OnRestart, Problem, Program,
    Readiness, RestartType, RootConfig, Strategy, SupervisorConfig,
};
use crate::daemon::{Kind, Registry};

mod exec;

const TOP_KEYS: &[&str] = &["root", "supervisor", "group", "daemon"];
const ROOT_KEYS: &[&str] = &[
    "control",
    "control_group",
    "state_dir",
    "stop_timeout",
    "zygote",
];
const SUPERVISOR_KEYS: &[&str] = &[
    "strategy",
    "intensity",
    "period",
    "auto_shutdown",
    "spare_mailboxes",
];
/// `[supervisor] spare_mailboxes` unless the file says otherwise.
const DEFAULT_SPARE_MAILBOXES: u32 = 8;
/// The most `spare_mailboxes` (the registry has 65,534 slots in all).
const MAX_SPARE_MAILBOXES: u32 = 4096;
const GROUP_KEYS: &[&str] = &[
    "name",
    "parent",
    "strategy",
    "intensity",
    "period",
    "auto_shutdown",
    "restart",
    "significant",
];
const DAEMON_KEYS: &[&str] = &[
    "name",
    "kind",
    "exec",
    "group",
    "memory",
    "restart",
    "significant",
    "on_restart",
    "watchdog",
    "standby",
    "links",
    "listen",
    "backoff",
    "backoff_max",
    "readiness",
    "notify_fd",
    "start_timeout",
    "trap_exits",
    "mailbox",
    "mailbox_message",
    "args",
    "memory_max",
    "pids_max",
    "cpu_weight",
];

const STRATEGIES: &[(&str, Strategy)] = &[
    ("one_for_one", Strategy::OneForOne),
    ("one_for_all", Strategy::OneForAll),
    ("rest_for_one", Strategy::RestForOne),
];
const RESTARTS: &[(&str, RestartType)] = &[
    ("permanent", RestartType::Permanent),
    ("transient", RestartType::Transient),
    ("temporary", RestartType::Temporary),
];
const AUTO_SHUTDOWNS: &[(&str, AutoShutdown)] = &[
    ("never", AutoShutdown::Never),
    ("any_significant", AutoShutdown::AnySignificant),
    ("all_significant", AutoShutdown::AllSignificant),
];
/// `readiness` as written; `fd` takes its number from `notify_fd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadinessKey {
    Exec,
    Notify,
    Fd,
}
const READINESS: &[(&str, ReadinessKey)] = &[
    ("exec", ReadinessKey::Exec),
    ("notify", ReadinessKey::Notify),
    ("fd", ReadinessKey::Fd),
];
const ON_RESTARTS: &[(&str, OnRestart)] = &[
    ("fresh", OnRestart::Fresh),
    ("resume", OnRestart::Resume),
    ("decide", OnRestart::Decide),
];

/// Longest name of a daemon or group, in bytes.
pub(super) const MAX_NAME: usize = 32;
/// The name that means the top supervisor; no group or daemon may take it.
const TOP_NAME: &str = "root";
/// Longest path a Unix socket address holds (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_INTENSITY: u32 = 5;
const DEFAULT_PERIOD: Duration = Duration::from_secs(10);
const DEFAULT_MEMORY: u64 = 1 << 20;
const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// As systemd's `DefaultTimeoutStartSec`.
const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(90);
/// `notify_fd` below this is stdin/stdout/stderr, the region (3) or the
/// setup pipe (4).
const FIRST_NOTIFY_FD: i64 = 7;
const LAST_NOTIFY_FD: i64 = 255;

/// Validates a parsed document into a [`Config`], or returns every problem.
///
/// A `kind` not in `kinds` is a problem, and so is any `[daemon.args]` key
/// or value its kind does not declare (in its place among the others, so
/// one pass reports everything).
pub(super) fn check(doc: &Table, kinds: &Registry) -> Result<Config, Vec<Problem>> {
    let mut c = Checker {
        problems: Vec::new(),
        kinds,
    };
    c.unknown_keys(doc, "", TOP_KEYS);

    let root = c
        .section(doc, "root")
        .map(|t| c.root(t))
        .unwrap_or(RootConfig {
            control: None,
            control_group: None,
            state_dir: None,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            zygote: true,
        });
    let top = c.section(doc, "supervisor");
    // The names are needed for `[supervisor]` already (its significant
    // children); the problems of the two arrays come after its own.
    let before_arrays = c.problems.len();
    let group_tables = c.array_of_tables(doc, "group");
    let daemon_tables = c.array_of_tables(doc, "daemon");
    let array_problems = c.problems.split_off(before_arrays);
    let names = Names::collect(top, &group_tables, &daemon_tables);

    let supervisor = match top {
        Some(t) => {
            c.unknown_keys(t, "supervisor", SUPERVISOR_KEYS);
            c.supervisor(t, "supervisor", Some(TOP_NAME), &names)
        }
        None => default_supervisor(),
    };
    let spare_mailboxes = top.map_or(DEFAULT_SPARE_MAILBOXES, |t| c.spare_mailboxes(t));
    c.problems.extend(array_problems);

    let groups = group_tables
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.map(|t| c.group(t, i, &names)))
        .collect();
    let daemons: Vec<_> = daemon_tables
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.map(|t| c.daemon(t, i, &names)))
        .collect();
    // `daemon` of the wrong type was reported already; absent or `[]` is this.
    if daemon_tables.is_empty() && doc.get("daemon").is_none_or(Value::is_array) {
        c.problem(
            "daemon",
            "no daemons declared; add at least one [[daemon]] table",
        );
    }

    if c.problems.is_empty() {
        Ok(Config {
            root,
            supervisor,
            groups,
            daemons,
            spare_mailboxes,
        })
    } else {
        Err(c.problems)
    }
}

fn default_supervisor() -> SupervisorConfig {
    SupervisorConfig {
        strategy: Strategy::OneForOne,
        intensity: DEFAULT_INTENSITY,
        period: DEFAULT_PERIOD,
        auto_shutdown: AutoShutdown::Never,
    }
}

/// The names as written in the file (valid or not), so that references can
/// be resolved without a bad name causing a second, misleading problem.
struct Names<'a> {
    /// Group name to the index of its first declaration.
    groups: HashMap<&'a str, usize>,
    /// Daemon name to the index of its first declaration.
    daemons: HashMap<&'a str, usize>,
    /// `parent` of each group as written, by group index (`None` if absent,
    /// `"root"` or not a string).
    parents: Vec<Option<&'a str>>,
    /// Name of each group as written, by group index.
    group_names: Vec<Option<&'a str>>,
    /// `auto_shutdown` as written (a string), by supervisor name (`root`
    /// for the top; a group's first declaration).
    auto_shutdown: HashMap<&'a str, &'a str>,
    /// Supervisors (by name, `root` for the top) with a child that says
    /// `significant = true`.
    with_significant: HashSet<&'a str>,
}

impl<'a> Names<'a> {
    fn collect(
        top: Option<&'a Table>,
        groups: &[Option<&'a Table>],
        daemons: &[Option<&'a Table>],
    ) -> Self {
        let name = |t: &Option<&'a Table>| t.and_then(|t| t.get("name")).and_then(Value::as_str);
        let key = |t: &Option<&'a Table>, k: &str| t.and_then(|t| t.get(k)).and_then(Value::as_str);
        let significant = |t: &Option<&'a Table>| {
            t.and_then(|t| t.get("significant")) == Some(&Value::Boolean(true))
        };
        let mut names = Names {
            groups: HashMap::new(),
            daemons: HashMap::new(),
            parents: Vec::new(),
            group_names: Vec::new(),
            auto_shutdown: HashMap::new(),
            with_significant: HashSet::new(),
        };
        if let Some(a) = key(&top, "auto_shutdown") {
            names.auto_shutdown.insert(TOP_NAME, a);
        }
        for (i, t) in groups.iter().enumerate() {
            if let Some(n) = name(t) {
                if !names.groups.contains_key(n) {
                    names.groups.insert(n, i);
                    if let Some(a) = key(t, "auto_shutdown") {
                        names.auto_shutdown.insert(n, a);
                    }
                }
            }
            names.group_names.push(name(t));
            let parent = key(t, "parent");
            names.parents.push(parent.filter(|p| *p != TOP_NAME));
            if significant(t) {
                names.with_significant.insert(parent.unwrap_or(TOP_NAME));
            }
        }
        for (i, t) in daemons.iter().enumerate() {
            if let Some(n) = name(t) {
                names.daemons.entry(n).or_insert(i);
            }
            if significant(t) {
                names
                    .with_significant
                    .insert(key(t, "group").unwrap_or(TOP_NAME));
            }
        }
        names
    }

    /// `auto_shutdown` of supervisor `sup` (`root` or a group's name) as
    /// written, `None` when absent (`never`); `Err` when `sup` names no
    /// declared group (reported already).
    fn auto_shutdown(&self, sup: &str) -> Result<Option<&'a str>, ()> {
        if sup != TOP_NAME && !self.groups.contains_key(sup) {
            return Err(());
        }
        Ok(self.auto_shutdown.get(sup).copied())
    }

    /// The place of the first declaration of `name`, if it is not `here`.
    /// Groups are declared before daemons, so a daemon that reuses a group's
    /// name is the one reported.
    fn earlier_owner(&self, name: &str, here: &str) -> Option<String> {
        let owner = match (self.groups.get(name), self.daemons.get(name)) {
            (Some(&g), _) => format!("group[{g}]"),
            (None, Some(&d)) => format!("daemon[{d}]"),
            (None, None) => return None,
        };
        (owner != here).then_some(owner)
    }

    /// Why `name` does not name a declared group, if it does not.
    fn not_a_group(&self, name: &str) -> Option<String> {
        if self.groups.contains_key(name) {
            return None;
        }
        Some(if self.daemons.contains_key(name) {
            format!("{name:?} is a daemon, not a group")
        } else if self.groups.is_empty() {
            format!("no group named {name:?} (no [[group]] is declared)")
        } else {
            let list: Vec<&str> = self
                .group_names
                .iter()
                .flatten()
                .copied()
                .filter(|n| *n != TOP_NAME)
                .collect();
            format!("no group named {name:?} (groups: {})", list.join(", "))
        })
    }

    /// If group `i` is on a cycle of parents, the cycle's names starting and
    /// ending at `i`, but only when `i` is the cycle's first group in the
    /// file, so each cycle is reported once.
    fn cycle_from(&self, i: usize) -> Option<Vec<&'a str>> {
        let mut path = vec![i];
        let mut at = i;
        // A cycle through `i` has at most as many steps as there are groups.
        for _ in 0..self.parents.len() {
            let parent = self.parents.get(at).copied().flatten()?;
            at = *self.groups.get(parent)?;
            if at == i {
                if path.iter().any(|&g| g < i) {
                    return None;
                }
                path.push(i);
                let name = |g: usize| self.group_names.get(g).copied().flatten().unwrap_or("?");
                return Some(path.iter().map(|&g| name(g)).collect());
            }
            if path.contains(&at) {
                // A cycle further up that does not pass through `i`.
                return None;
            }
            path.push(at);
        }
        None
    }
}

/// Collects problems while reading values with their places.
struct Checker<'r> {
    problems: Vec<Problem>,
    /// The kinds built into the binary, with their settings.
    kinds: &'r Registry,
}

impl Checker<'_> {
    fn problem(&mut self, place: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            place: place.to_owned(),
            message: message.into(),
        });
    }

    fn type_problem(&mut self, place: &str, expected: &str, found: &Value) {
        self.problem(
            place,
            format!("expected {expected}, found {}", describe(found)),
        );
    }

    /// Reports every key of `table` not in `known`, suggesting the closest
    /// known key for a likely typo.
    fn unknown_keys(&mut self, table: &Table, place: &str, known: &[&str]) {
        for key in table.keys() {
            if known.contains(&key.as_str()) {
                continue;
            }
            let list = known.join(", ");
            let message = match closest(key, known) {
                Some(k) => format!("unknown key, did you mean {k:?}? (expected one of: {list})"),
                None => format!("unknown key (expected one of: {list})"),
            };
            self.problem(&at(place, key), message);
        }
    }

    /// `[daemon.args]` of a daemon running `program`, checked against its
    /// kind's settings: unknown keys (with a did-you-mean), then each
    /// declared setting in declaration order.
    fn args(&mut self, t: &Table, place: &str, program: Option<&Program>) -> Args {
        let place = at(place, "args");
        let table = match t.get("args") {
            None => None,
            Some(Value::Table(args)) => Some(args),
            Some(other) => {
                self.type_problem(&place, "a table, written [daemon.args]", other);
                return Args::none();
            }
        };
        let kind = match program {
            Some(Program::Builtin(kind)) => self.kinds.get(kind),
            Some(Program::Exec(_)) => {
                if table.is_some() {
                    self.problem(
                        &place,
                        "an exec'd program takes no [daemon.args]; give it its options in exec = [...]",
                    );
                }
                None
            }
            // Neither or both of kind and exec: reported already.
            None => None,
        };
        let (Some(kind), Some(table)) = (kind, table) else {
            return kind.map_or_else(Args::none, |k| self.settings(&Table::new(), &place, k));
        };
        self.settings(table, &place, kind)
    }

    /// Checks `table` against `kind`'s settings.
    fn settings(&mut self, table: &Table, place: &str, kind: &Kind) -> Args {
        let names: Vec<&str> = kind.settings.iter().map(|s| s.name).collect();
        for key in table.keys() {
            if names.contains(&key.as_str()) {
                continue;
            }
            let message = if names.is_empty() {
                format!("unknown setting: kind {:?} takes no settings", kind.name)
            } else {
                let list = names.join(", ");
                match closest(key, &names) {
                    Some(k) => format!(
                        "unknown setting of kind {:?}, did you mean {k:?}? (it takes: {list})",
                        kind.name
                    ),
                    None => format!("unknown setting of kind {:?} (it takes: {list})", kind.name),
                }
            };
            self.problem(&at(place, key), message);
        }
        let mut args = Args::of(kind.settings);
        for (i, s) in kind.settings.iter().enumerate() {
            if !table.contains_key(s.name) {
                if s.required {
                    let message = format!("missing; kind {:?} needs it ({})", kind.name, s.help);
                    self.problem(&at(place, s.name), message);
                }
                continue;
            }
            if let Some(v) = self.setting(table, place, s) {
                args.set(i, v);
            }
        }
        args
    }

    /// The value of one declared setting, present in `table`, checked for
    /// type, range and the setting's own check.
    fn setting<'t>(&mut self, table: &'t Table, place: &str, s: &Setting) -> Option<ArgValue<'t>> {
        let here = at(place, s.name);
        let out_of_range = |shown: String, min: String, max: String| {
            format!("{shown} is out of range (use {min}..={max})")
        };
        let v = match s.ty {
            Type::Bool => ArgValue::Bool(self.boolean(table, place, s.name)?),
            Type::Int { min, max } => match table.get(s.name)? {
                Value::Integer(n) if (min..=max).contains(n) => ArgValue::Int(*n),
                Value::Integer(n) => {
                    let message = out_of_range(n.to_string(), min.to_string(), max.to_string());
                    self.problem(&here, message);
                    return None;
                }
                other => {
                    self.type_problem(&here, "a whole number", other);
                    return None;
                }
            },
            Type::Duration { min, max } => {
                let d = self.duration(table, place, s.name)?;
                if !(min..=max).contains(&d) {
                    let (d, min, max) = (
                        format_duration(d),
                        format_duration(min),
                        format_duration(max),
                    );
                    self.problem(&here, out_of_range(d, min, max));
                    return None;
                }
                ArgValue::Duration(d)
            }
            Type::Size { min, max } => {
                let n = self.size(table, place, s.name)?;
                if !(min..=max).contains(&n) {
                    let message =
                        out_of_range(format!("{n}B"), format!("{min}B"), format!("{max}B"));
                    self.problem(&here, message);
                    return None;
                }
                ArgValue::Size(n)
            }
            Type::Signal => {
                let name = self.string(table, place, s.name)?;
                match parse_signal(name) {
                    Ok(n) => ArgValue::Signal(n),
                    Err(e) => {
                        self.problem(&here, e);
                        return None;
                    }
                }
            }
            Type::Str => ArgValue::Str(self.string(table, place, s.name)?),
            Type::Path => {
                self.path(table, place, s.name)?;
                ArgValue::Str(self.string(table, place, s.name)?)
            }
        };
        if let Some(check) = s.check {
            if let Err(e) = check(v) {
                self.problem(&here, e);
                return None;
            }
        }
        Some(v)
    }

    /// A `[name]` table at the top: `None` if absent or not a table.
    fn section<'a>(&mut self, doc: &'a Table, key: &str) -> Option<&'a Table> {
        match doc.get(key)? {
            Value::Table(t) => Some(t),
            other => {
                self.type_problem(key, &format!("a table, written [{key}]"), other);
                None
            }
        }
    }

    /// A `[[name]]` array at the top: one entry per element, `None` for an
    /// element that is not a table (already reported).
    fn array_of_tables<'a>(&mut self, doc: &'a Table, key: &str) -> Vec<Option<&'a Table>> {
        match doc.get(key) {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::Table(t) => Some(t),
                    other => {
                        self.type_problem(&format!("{key}[{i}]"), "a table", other);
                        None
                    }
                })
                .collect(),
            Some(other) => {
                let expected = format!("an array of tables, written [[{key}]]");
                self.type_problem(key, &expected, other);
                Vec::new()
            }
        }
    }

    fn string<'a>(&mut self, table: &'a Table, place: &str, key: &str) -> Option<&'a str> {
        match table.get(key)? {
            Value::String(s) => Some(s),
            other => {
                self.type_problem(&at(place, key), "a string", other);
                None
            }
        }
    }

    fn boolean(&mut self, table: &Table, place: &str, key: &str) -> Option<bool> {
        match table.get(key)? {
            Value::Boolean(b) => Some(*b),
            other => {
                self.type_problem(&at(place, key), "true or false", other);
                None
            }
        }
    }

    fn choice<T: Copy>(
        &mut self,
        table: &Table,
        place: &str,
        key: &str,
        (what, choices): (&str, &[(&str, T)]),
    ) -> Option<T> {
        let s = self.string(table, place, key)?;
        if let Some((_, v)) = choices.iter().find(|(name, _)| *name == s) {
            return Some(*v);
        }
        let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        self.problem(
            &at(place, key),
            format!("{s:?} is not {what} (use {})", names.join(", ")),
        );
        None
    }

    fn duration(&mut self, table: &Table, place: &str, key: &str) -> Option<Duration> {
        let place = at(place, key);
        match table.get(key)? {
            Value::String(s) => match parse_duration(s) {
                Ok(d) => Some(d),
                Err(e) => {
                    self.problem(&place, e);
                    None
                }
            },
            Value::Integer(n) => {
                self.problem(
                    &place,
                    format!("{n} has no unit: write a string such as \"{n}s\" or \"{n}ms\""),
                );
                None
            }
            other => {
                self.type_problem(&place, "a duration such as \"10s\"", other);
                None
            }
        }
    }

    fn positive_duration(&mut self, table: &Table, place: &str, key: &str) -> Option<Duration> {
        let d = self.duration(table, place, key)?;
        if d.is_zero() {
            self.problem(&at(place, key), "must be longer than 0s");
            return None;
        }
        Some(d)
    }

    /// A size: a string with a unit, or a bare integer meaning bytes.
    fn size(&mut self, table: &Table, place: &str, key: &str) -> Option<u64> {
        let place = at(place, key);
        let bytes = match table.get(key)? {
            Value::String(s) => parse_size(s),
            Value::Integer(n) => match u64::try_from(*n) {
                Err(_) => Err(format!("{n} is negative")),
                Ok(n) if n > super::MAX_SIZE => Err(format!("{n} is too large (at most 1024GiB)")),
                Ok(n) => Ok(n),
            },
            other => {
                self.type_problem(&place, "a size such as \"4MiB\"", other);
                return None;
            }
        };
        bytes.map_err(|e| self.problem(&place, e)).ok()
    }

    fn path(&mut self, table: &Table, place: &str, key: &str) -> Option<PathBuf> {
        let s = self.string(table, place, key)?;
        if s.is_empty() {
            self.problem(
                &at(place, key),
                "empty path (leave the key out for the default)",
            );
            return None;
        }
        if s.contains('\0') {
            self.problem(&at(place, key), "the path contains a NUL character");
            return None;
        }
        Some(PathBuf::from(s))
    }

    fn root(&mut self, t: &Table) -> RootConfig {
        let place = "root";
        self.unknown_keys(t, place, ROOT_KEYS);
        let control = self.path(t, place, "control");
        if let Some(c) = &control {
            let len = c.as_os_str().len();
            if len > MAX_SOCKET_PATH {
                self.problem(
                    &at(place, "control"),
                    format!("the socket path is {len} bytes long; a Unix socket path holds at most {MAX_SOCKET_PATH}"),
                );
            }
        }
        RootConfig {
            control,
            control_group: self.control_group(t, place),
            state_dir: self.path(t, place, "state_dir"),
            stop_timeout: self
                .duration(t, place, "stop_timeout")
                .unwrap_or(DEFAULT_STOP_TIMEOUT),
            zygote: self.boolean(t, place, "zygote").unwrap_or(true),
        }
    }

    /// `control_group`: a group of this host, resolved to its id now.
    fn control_group(&mut self, t: &Table, place: &str) -> Option<(String, u32)> {
        let gid = self.group_id(t, place, "control_group")?;
        let name = t.get("control_group").and_then(Value::as_str)?;
        Some((name.to_owned(), gid))
    }

    /// `key`: the name of a group of this host, resolved to its id now.
    fn group_id(&mut self, t: &Table, place: &str, key: &str) -> Option<u32> {
        let name = self.string(t, place, key)?;
        let why = match crate::sys::cred::group_by_name(name) {
            Ok(Some(gid)) => return Some(gid),
            Ok(None) => format!("no group named {name:?} on this host"),
            Err(e) => format!("cannot look up group {name:?}: {e}"),
        };
        self.problem(&at(place, key), why);
        None
    }

    /// `[supervisor] spare_mailboxes`: a count from 0 to
    /// [`MAX_SPARE_MAILBOXES`].
    fn spare_mailboxes(&mut self, t: &Table) -> u32 {
        let place = "supervisor.spare_mailboxes";
        match t.get("spare_mailboxes") {
            None => DEFAULT_SPARE_MAILBOXES,
            Some(Value::Integer(n)) => match u32::try_from(*n) {
                Ok(n) if n <= MAX_SPARE_MAILBOXES => n,
                _ => {
                    self.problem(
                        place,
                        format!("{n} is not a count from 0 to {MAX_SPARE_MAILBOXES} (mailboxes)"),
                    );
                    DEFAULT_SPARE_MAILBOXES
                }
            },
            Some(other) => {
                self.type_problem(place, "a number of mailboxes such as 8", other);
                DEFAULT_SPARE_MAILBOXES
            }
        }
    }

    /// The strategy, intensity, period and `auto_shutdown` of
    /// `[supervisor]` or a group (`name` as written, `root` for the top).
    /// Unknown keys are checked by the caller.
    fn supervisor(
        &mut self,
        t: &Table,
        place: &str,
        name: Option<&str>,
        names: &Names<'_>,
    ) -> SupervisorConfig {
        let strategy = self.choice(t, place, "strategy", ("a strategy", STRATEGIES));
        let intensity = self.intensity(t, place);
        let period = self.positive_duration(t, place, "period");
        let auto_shutdown = self.choice(
            t,
            place,
            "auto_shutdown",
            ("an auto_shutdown", AUTO_SHUTDOWNS),
        );
        let acts = auto_shutdown.is_some_and(|a| a != AutoShutdown::Never);
        if acts && name.is_some_and(|n| !names.with_significant.contains(n)) {
            self.problem(
                &at(place, "auto_shutdown"),
                "no child of this supervisor has significant = true, so it would never act: mark the transient or temporary children whose end should end it with significant = true, or leave auto_shutdown out",
            );
        }
        SupervisorConfig {
            strategy: strategy.unwrap_or(Strategy::OneForOne),
            intensity: intensity.unwrap_or(DEFAULT_INTENSITY),
            period: period.unwrap_or(DEFAULT_PERIOD),
            auto_shutdown: auto_shutdown.unwrap_or(AutoShutdown::Never),
        }
    }

    /// `significant` of a daemon or group (`what`) with restart type
    /// `restart` (`None`: absent or already reported), supervised by `sup`
    /// (`root` or a group's name): only a child its restart type may leave
    /// down can end its supervisor, and only a supervisor whose
    /// `auto_shutdown` is not `never` (OTP refuses both combinations).
    fn significant(
        &mut self,
        t: &Table,
        place: &str,
        what: &str,
        restart: Option<RestartType>,
        sup: &str,
        names: &Names<'_>,
    ) -> bool {
        if self.boolean(t, place, "significant") != Some(true) {
            return false;
        }
        let here = at(place, "significant");
        let permanent = match restart {
            Some(r) => r == RestartType::Permanent,
            None => !t.contains_key("restart"),
        };
        if permanent {
            self.problem(
                &here,
                format!("a significant {what} needs restart = \"transient\" or \"temporary\" (it is permanent, so it is always restarted and its end could never end its supervisor)"),
            );
        }
        if let Ok(None | Some("never")) = names.auto_shutdown(sup) {
            let table = if sup == TOP_NAME {
                "[supervisor]".to_owned()
            } else {
                format!("[[group]] {sup:?}")
            };
            self.problem(
                &here,
                format!("its supervisor {sup:?} has auto_shutdown = \"never\" (the default), so no child's end ends it: set auto_shutdown = \"any_significant\" or \"all_significant\" in {table}"),
            );
        }
        true
    }

    fn intensity(&mut self, t: &Table, place: &str) -> Option<u32> {
        let place = at(place, "intensity");
        match t.get("intensity")? {
            Value::Integer(n) if *n < 0 => {
                self.problem(&place, format!("{n} is negative (use 0 or more)"));
                None
            }
            Value::Integer(n) => match u32::try_from(*n) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.problem(&place, format!("{n} is too large (at most {})", u32::MAX));
                    None
                }
            },
            other => {
                self.type_problem(&place, "a whole number of restarts", other);
                None
            }
        }
    }

    /// `name` of a group or daemon: present, well formed, not taken.
    fn name(&mut self, t: &Table, place: &str, names: &Names<'_>) -> Option<String> {
        let what = if place.starts_with("group") {
            "group"
        } else {
            "daemon"
        };
        if !t.contains_key("name") {
            self.problem(
                &at(place, "name"),
                format!("missing; every {what} needs a name"),
            );
            return None;
        }
        let name = self.string(t, place, "name")?;
        if let Err(e) = check_name(name) {
            self.problem(&at(place, "name"), e);
            return None;
        }
        if let Some(owner) = names.earlier_owner(name, place) {
            self.problem(
                &at(place, "name"),
                format!("{name:?} is already the name of {owner}"),
            );
            return None;
        }
        Some(name.to_owned())
    }

    fn group(&mut self, t: &Table, i: usize, names: &Names<'_>) -> GroupConfig {
        let place = format!("group[{i}]");
        let place = place.as_str();
        self.unknown_keys(t, place, GROUP_KEYS);
        let name = self.name(t, place, names);
        let parent = self.string(t, place, "parent").filter(|p| *p != TOP_NAME);
        if let Some(p) = parent {
            let own = t.get("name").and_then(Value::as_str);
            let why = if Some(p) == own {
                Some("a group cannot be its own parent".to_owned())
            } else if let Some(why) = names.not_a_group(p) {
                Some(why)
            } else {
                names.cycle_from(i).map(|cycle| {
                    format!(
                        "groups form a cycle: {} (one of them must have parent = \"root\")",
                        cycle.join(" -> ")
                    )
                })
            };
            if let Some(why) = why {
                self.problem(&at(place, "parent"), why);
            }
        }
        let restart = self.choice(t, place, "restart", ("a restart type", RESTARTS));
        let own = t.get("name").and_then(Value::as_str);
        let supervisor = self.supervisor(t, place, own, names);
        let significant = self.significant(
            t,
            place,
            "group",
            restart,
            parent.unwrap_or(TOP_NAME),
            names,
        );
        GroupConfig {
            name: name.unwrap_or_default(),
            parent: parent.map(str::to_owned),
            supervisor,
            restart: restart.unwrap_or(RestartType::Permanent),
            significant,
        }
    }

    fn daemon(&mut self, t: &Table, i: usize, names: &Names<'_>) -> DaemonConfig {
        let place = format!("daemon[{i}]");
        let place = place.as_str();
        let known: Vec<&str> = DAEMON_KEYS.iter().chain(exec::EXEC_ONLY).copied().collect();
        self.unknown_keys(t, place, &known);
        let name = self.name(t, place, names);
        let program = self.program(t, place);

        let group = self.string(t, place, "group").filter(|g| *g != TOP_NAME);
        if let Some(why) = group.and_then(|g| names.not_a_group(g)) {
            self.problem(&at(place, "group"), why);
        }

        let memory = match self.size(t, place, "memory") {
            Some(0) => {
                self.problem(&at(place, "memory"), "must be more than 0B");
                None
            }
            other => other,
        };
        let restart = self.choice(t, place, "restart", ("a restart type", RESTARTS));
        let significant = self.significant(
            t,
            place,
            "daemon",
            restart,
            group.unwrap_or(TOP_NAME),
            names,
        );
        let on_restart = self.choice(
            t,
            place,
            "on_restart",
            ("an on_restart policy", ON_RESTARTS),
        );
        let watchdog = self.positive_duration(t, place, "watchdog");
        let standby = self.boolean(t, place, "standby");
        if standby == Some(true) && matches!(program, Some(Program::Exec(_))) {
            // A standby is a forked copy of a built-in daemon waiting at a
            // gate; an exec'd program would run at once, a second owner of
            // the same region.
            self.problem(
                &at(place, "standby"),
                "a standby needs a built-in kind; an exec'd program cannot wait pre-forked",
            );
        }
        let links = self.links(t, place, names);
        let listen = self.listen(t, place);

        let backoff = self.backoff(t, place);

        let readiness = self.readiness(t, place, program.as_ref(), watchdog.is_some());
        if let Readiness::Fd(n) = readiness {
            self.notify_fd_free(place, n, listen.len());
        }
        let start_timeout = self
            .positive_duration(t, place, "start_timeout")
            .unwrap_or(DEFAULT_START_TIMEOUT);
        let args = self.args(t, place, program.as_ref());
        let exec = self.exec_settings(t, place, program.as_ref());
        let (mailbox, mailbox_message) = self.mailbox(t, place);
        let trap_exits = self.boolean(t, place, "trap_exits").unwrap_or(false);
        let limits = self.limits(t, place);
        if standby == Some(true) && limits.pids_max == Some(1) {
            // The standby lives in the daemon's cgroup beside it: with room
            // for one process, its fork could never succeed.
            self.problem(
                &at(place, "pids_max"),
                "1 leaves no process for the standby (standby = true needs 2 or more)",
            );
        }

        DaemonConfig {
            name: name.unwrap_or_default(),
            program: program.unwrap_or(Program::Builtin(String::new())),
            group: group.map(str::to_owned),
            memory: memory.unwrap_or(DEFAULT_MEMORY),
            restart: restart.unwrap_or(RestartType::Permanent),
            significant,
            on_restart: on_restart.unwrap_or(OnRestart::Resume),
            watchdog,
            standby: standby.unwrap_or(false),
            links,
            listen,
            backoff,
            readiness,
            start_timeout,
            trap_exits,
            mailbox,
            mailbox_message,
            args,
            exec,
            limits,
        }
    }

    /// `backoff` and `backoff_max`: the first restart delay and its cap,
    /// which may not be below it.
    fn backoff(&mut self, t: &Table, place: &str) -> Backoff {
        let initial = self.duration(t, place, "backoff").unwrap_or(Duration::ZERO);
        let max = match self.duration(t, place, "backoff_max") {
            Some(max) if max < initial => {
                self.problem(
                    &at(place, "backoff_max"),
                    format!(
                        "{} is less than backoff ({})",
                        format_duration(max),
                        format_duration(initial)
                    ),
                );
                max
            }
            Some(max) => max,
            // Without an explicit cap, a long first delay is its own cap.
            None => DEFAULT_BACKOFF_MAX.max(initial),
        };
        Backoff { initial, max }
    }

    /// `notify_fd = n` of a daemon with `listeners` listen sockets.
    fn notify_fd_free(&mut self, place: &str, n: i32, listeners: usize) {
        // The listening sockets come first (3..), then the region, the
        // setup pipe and the mailboxes: N must be above all of them.
        let first_free = FIRST_NOTIFY_FD + listeners as i64;
        if i64::from(n) < first_free {
            self.problem(
                &at(place, "notify_fd"),
                format!("{n} is taken with {listeners} listen socket(s): use {first_free} or more"),
            );
        }
    }

    /// `memory_max`, `pids_max`, `cpu_weight`: each needs its cgroup v2
    /// controller where this runs; one that is not there is refused, never
    /// accepted and ignored.
    fn limits(&mut self, t: &Table, place: &str) -> Limits {
        let limits = Limits {
            memory_max: self.size(t, place, "memory_max"),
            pids_max: self.whole(t, place, "pids_max", 1..=u64::from(u32::MAX)),
            cpu_weight: self.whole(t, place, "cpu_weight", 1..=10_000),
        };
        let set = [limits.memory_max, limits.pids_max, limits.cpu_weight];
        if set.iter().all(Option::is_none) {
            return limits;
        }
        let probe = crate::root::cgroup::probe();
        for (k, (key, controller, _)) in crate::root::cgroup::LIMITS.iter().enumerate() {
            if set[k].is_none() {
                continue;
            }
            let why = match &probe {
                Err(why) => format!("needs a cgroup v2 hierarchy, and there is none to use here: {why}"),
                Ok(p) if !p.controllers.iter().any(|c| c == controller) => format!(
                    "needs the cgroup v2 {controller} controller, which is not available here (this cgroup offers: {})",
                    if p.controllers.is_empty() { "none".to_owned() } else { p.controllers.join(" ") }
                ),
                Ok(_) => continue,
            };
            self.problem(&at(place, key), why);
        }
        limits
    }

    /// A whole number within `range`.
    fn whole(
        &mut self,
        t: &Table,
        place: &str,
        key: &str,
        range: std::ops::RangeInclusive<u64>,
    ) -> Option<u64> {
        let place = at(place, key);
        match t.get(key)? {
            Value::Integer(n) => match u64::try_from(*n) {
                Ok(n) if range.contains(&n) => Some(n),
                _ => {
                    self.problem(
                        &place,
                        format!("{n} is out of range ({}..={})", range.start(), range.end()),
                    );
                    None
                }
            },
            other => {
                self.type_problem(&place, "a whole number", other);
                None
            }
        }
    }

    /// `readiness` and `notify_fd`: how the root learns that the daemon
    /// is ready. Built-in daemons are ready when their setup ends; an
    /// exec'd program by default when it is exec'd, or by its
    /// notification descriptor when `notify_fd` is given. A watchdog needs
    /// a program that can keep it: `readiness = "exec"` says it speaks
    /// none of the protocols.
    fn readiness(
        &mut self,
        t: &Table,
        place: &str,
        program: Option<&Program>,
        watchdog: bool,
    ) -> Readiness {
        let key = self.choice(t, place, "readiness", ("a readiness", READINESS));
        let fd = match t.get("notify_fd") {
            None => None,
            Some(Value::Integer(n)) if (FIRST_NOTIFY_FD..=LAST_NOTIFY_FD).contains(n) => {
                Some(*n as i32)
            }
            Some(Value::Integer(n)) => {
                self.problem(
                    &at(place, "notify_fd"),
                    format!(
                        "{n} is out of range (use {FIRST_NOTIFY_FD}..={LAST_NOTIFY_FD}: 0-2 are stdio, 3 is the region, 4 is the setup pipe, 5 and 6 the mailboxes)"
                    ),
                );
                return Readiness::Exec;
            }
            Some(other) => {
                self.type_problem(&at(place, "notify_fd"), "a descriptor number", other);
                return Readiness::Exec;
            }
        };
        if matches!(program, Some(Program::Builtin(_))) {
            for k in ["readiness", "notify_fd"] {
                if t.contains_key(k) {
                    self.problem(
                        &at(place, k),
                        "a built-in daemon is ready when its setup ends; readiness and notify_fd are for exec'd programs",
                    );
                }
            }
            return Readiness::Exec;
        }
        let readiness = match (key, fd) {
            (Some(ReadinessKey::Fd) | None, Some(n)) => Readiness::Fd(n),
            (Some(ReadinessKey::Fd), None) => {
                self.problem(
                    &at(place, "readiness"),
                    "\"fd\" needs notify_fd = N (the descriptor on which the program writes a newline when ready)",
                );
                Readiness::Exec
            }
            (Some(other), Some(_)) => {
                let name = if other == ReadinessKey::Exec {
                    "exec"
                } else {
                    "notify"
                };
                self.problem(
                    &at(place, "notify_fd"),
                    format!("given with readiness = {name:?}; use readiness = \"fd\" (or leave readiness out)"),
                );
                Readiness::Exec
            }
            (Some(ReadinessKey::Notify), None) => Readiness::Notify,
            (Some(ReadinessKey::Exec) | None, None) => Readiness::Exec,
        };
        if watchdog && key == Some(ReadinessKey::Exec) {
            self.problem(
                &at(place, "watchdog"),
                "nothing can keep this watchdog: readiness = \"exec\" says the program speaks no notify protocol (use readiness = \"notify\" and send WATCHDOG=1, or leave readiness out for a program that heartbeats through the forkroot library)",
            );
        }
        readiness
    }

    /// `mailbox` (messages: a power of two in 2 ..= 65536) and
    /// `mailbox_message` (a size in 64B ..= 1MiB).
    fn mailbox(&mut self, t: &Table, place: &str) -> (u32, u32) {
        use crate::mailbox::{
            DEFAULT_CAPACITY, DEFAULT_MESSAGE, MAX_CAPACITY, MAX_MESSAGE, MIN_MESSAGE,
        };
        let capacity = match t.get("mailbox") {
            None => DEFAULT_CAPACITY,
            Some(Value::Integer(n)) => match u32::try_from(*n) {
                Ok(n) if (2..=MAX_CAPACITY).contains(&n) && n.is_power_of_two() => n,
                _ => {
                    self.problem(
                        &at(place, "mailbox"),
                        format!("{n} is not a power of two from 2 to {MAX_CAPACITY} (messages)"),
                    );
                    DEFAULT_CAPACITY
                }
            },
            Some(other) => {
                self.type_problem(
                    &at(place, "mailbox"),
                    "a number of messages such as 64",
                    other,
                );
                DEFAULT_CAPACITY
            }
        };
        let message = match self.size(t, place, "mailbox_message") {
            None => DEFAULT_MESSAGE,
            Some(n) if (u64::from(MIN_MESSAGE)..=u64::from(MAX_MESSAGE)).contains(&n) => n as u32,
            Some(n) => {
                self.problem(
                    &at(place, "mailbox_message"),
                    format!("{n} bytes is not from {MIN_MESSAGE}B to 1MiB (a DOWN or EXIT message takes {MIN_MESSAGE})"),
                );
                DEFAULT_MESSAGE
            }
        };
        (capacity, message)
    }

    /// Exactly one of `kind` and `exec`.
    fn program(&mut self, t: &Table, place: &str) -> Option<Program> {
        match (t.contains_key("kind"), t.contains_key("exec")) {
            (true, true) => {
                self.problem(
                    place,
                    "has both kind and exec; keep one (kind runs a built-in daemon, exec a program)",
                );
                None
            }
            (false, false) => {
                self.problem(
                    place,
                    "needs kind = \"...\" (a built-in daemon) or exec = [\"/path/to/program\", ...]",
                );
                None
            }
            (true, false) => {
                let kind = self.string(t, place, "kind")?;
                if self.kinds.get(kind).is_none() {
                    let known: Vec<&str> = self.kinds.kinds().iter().map(|k| k.name).collect();
                    let message = if kind.is_empty() && known.is_empty() {
                        "empty, and this binary has no kinds; use exec = [...]".to_owned()
                    } else if kind.is_empty() {
                        format!(
                            "empty; name one of this binary's kinds (built in: {})",
                            known.join(", ")
                        )
                    } else if known.is_empty() {
                        format!(
                            "unknown kind {kind:?} (this binary has no kinds; use exec = [...])"
                        )
                    } else {
                        match closest(kind, &known) {
                            Some(k) => format!(
                                "unknown kind {kind:?}, did you mean {k:?}? (built in: {})",
                                known.join(", ")
                            ),
                            None => {
                                format!("unknown kind {kind:?} (built in: {})", known.join(", "))
                            }
                        }
                    };
                    self.problem(&at(place, "kind"), message);
                    return None;
                }
                Some(Program::Builtin(kind.to_owned()))
            }
            (false, true) => self.exec(t, place).map(Program::Exec),
        }
    }

    fn exec(&mut self, t: &Table, place: &str) -> Option<Vec<String>> {
        let place = at(place, "exec");
        let items = match t.get("exec")? {
            Value::Array(items) => items,
            other => {
                let expected = "an array of strings such as [\"/usr/bin/prog\", \"--flag\"]";
                self.type_problem(&place, expected, other);
                return None;
            }
        };
        if items.is_empty() {
            self.problem(&place, "empty; give the program's path, then its arguments");
            return None;
        }
        let mut argv = Vec::with_capacity(items.len());
        let mut ok = true;
        for (j, item) in items.iter().enumerate() {
            let place = format!("{place}[{j}]");
            match item {
                Value::String(s) if s.contains('\0') => {
                    self.problem(&place, "contains a NUL character");
                    ok = false;
                }
                Value::String(s) if j == 0 && s.is_empty() => {
                    self.problem(&place, "the program's path is empty");
                    ok = false;
                }
                Value::String(s) => argv.push(s.clone()),
                other => {
                    self.type_problem(&place, "a string", other);
                    ok = false;
                }
            }
        }
        ok.then_some(argv)
    }

    /// `listen`: the addresses of the sockets the root holds for the
    /// daemon, each `tcp:IP:PORT` or `unix:PATH` (see `crate::listen`).
    fn listen(&mut self, t: &Table, place: &str) -> Vec<String> {
        let place = at(place, "listen");
        let items = match t.get("listen") {
            None => return Vec::new(),
            Some(Value::Array(items)) => items,
            Some(other) => {
                self.type_problem(&place, "an array of addresses", other);
                return Vec::new();
            }
        };
        if items.len() > crate::listen::MAX_LISTEN {
            self.problem(
                &place,
                format!(
                    "{} addresses; a daemon holds at most {}",
                    items.len(),
                    crate::listen::MAX_LISTEN
                ),
            );
            return Vec::new();
        }
        let mut listen: Vec<String> = Vec::with_capacity(items.len());
        let mut seen = Vec::with_capacity(items.len());
        for (j, item) in items.iter().enumerate() {
            let place = format!("{place}[{j}]");
            let Value::String(text) = item else {
                self.type_problem(
                    &place,
                    "an address (\"tcp:IP:PORT\" or \"unix:PATH\")",
                    item,
                );
                continue;
            };
            match crate::listen::Address::parse(text) {
                Ok(a) if seen.contains(&a) => {
                    self.problem(&place, format!("{text:?} is listed twice"));
                }
                Ok(a) => {
                    seen.push(a);
                    listen.push(text.clone());
                }
                Err(why) => self.problem(&place, why),
            }
        }
        listen
    }

    fn links(&mut self, t: &Table, place: &str, names: &Names<'_>) -> Vec<String> {
        let place = at(place, "links");
        let items = match t.get("links") {
            None => return Vec::new(),
            Some(Value::Array(items)) => items,
            Some(other) => {
                self.type_problem(&place, "an array of daemon names", other);
                return Vec::new();
            }
        };
        let own = t.get("name").and_then(Value::as_str);
        let mut links: Vec<String> = Vec::with_capacity(items.len());
        for (j, item) in items.iter().enumerate() {
            let place = format!("{place}[{j}]");
            let Value::String(link) = item else {
                self.type_problem(&place, "a daemon name", item);
                continue;
            };
            let why = if own == Some(link.as_str()) {
                Some("a daemon cannot link to itself".to_owned())
            } else if links.contains(link) {
                Some(format!("{link:?} is listed twice"))
            } else if names.daemons.contains_key(link.as_str()) {
                None
            } else if names.groups.contains_key(link.as_str()) {
                Some(format!("{link:?} is a group; links join daemons"))
            } else {
                Some(format!("no daemon named {link:?}"))
            };
            match why {
                Some(why) => self.problem(&place, why),
                None => links.push(link.clone()),
            }
        }
        links
    }
}

/// Checks a daemon or group name: 1 to 32 bytes of `[A-Za-z0-9_.-]`,
/// starting with a letter, digit or `_` (so it is never a path like `..` nor
/// reads as a flag), and not `root`.
pub(super) fn check_name(name: &str) -> Result<(), String> {
    const HELP: &str = "use letters, digits, _ . -";
    if name.is_empty() {
        return Err(format!("the name is empty ({HELP})"));
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "{name:?} is {} bytes long (at most {MAX_NAME})",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!("{name:?} contains {bad:?} ({HELP})"));
    }
    if name.starts_with(['.', '-']) {
        return Err(format!("{name:?} must start with a letter, a digit or _"));
    }
    if name == TOP_NAME {
        return Err(format!("{name:?} is reserved for the top supervisor"));
    }
    // A daemon's name is the name of its cgroup directory, beside the
    // files of the cgroup interface: `cpu.stat` would be one of them.
    if let Some((prefix, _)) = name.split_once('.') {
        if CGROUP_PREFIXES.contains(&prefix) {
            return Err(format!(
                "{name:?} is shaped like a file of the cgroup interface ({prefix}.*), which a daemon's cgroup directory sits beside"
            ));
        }
    }
    Ok(())
}

/// The prefixes of the cgroup v2 interface files: the core's and each
/// controller's.
const CGROUP_PREFIXES: &[&str] = &[
    "cgroup", "cpu", "cpuset", "io", "memory", "pids", "rdma", "hugetlb", "misc", "dmem",
];

/// `place.key`, or `key` at the top; a key that is not a bare TOML key is
/// quoted so the place stays readable.
fn at(place: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if place.is_empty() {
        key
    } else {
        format!("{place}.{key}")
    }
}

/// A value as a message shows it: `the integer 10`, `the string "x"`.
fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("the string {s:?}"),
        Value::Integer(n) => format!("the integer {n}"),
        Value::Float(x) => format!("the number {x}"),
        Value::Boolean(b) => format!("{b}"),
        Value::Datetime(d) => format!("the date {d}"),
        Value::Array(_) => "an array".to_owned(),
        Value::Table(_) => "a table".to_owned(),
    }
}

/// The known key nearest to a mistyped one, if it is close enough to be
/// the likely intent (same letters in another case, or at most two edits).
fn closest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(&key.to_ascii_lowercase(), k), *k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance, counted in chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

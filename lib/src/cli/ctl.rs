//! `forkroot ctl`: talks to a running root over its control socket and
//! prints what it says, for people (`status`, `tree`, `logs`) or programs
//! (`status --json`). Requests and replies are [`proto`]'s types.

use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde::de::DeserializeOwned;

use crate::control::proto::{
    ActionReply, DaemonState, Empty, HealthReply, LogRecord, LogsReply, MetricsReply, OutputLine,
    ReloadReply, Request, StatusReply, TreeNode, TreeReply,
};
use crate::control::{self, proto, Reply};

/// Exit code: done.
pub(crate) const EXIT_OK: i32 = 0;
/// Exit code: the root refused the request, or the action failed.
pub(crate) const EXIT_FAILED: i32 = 1;
/// Exit code: the command line (or the config it names) is wrong.
pub(crate) const EXIT_USAGE: i32 = 2;
/// Exit code: the root cannot be reached.
pub(crate) const EXIT_UNREACHABLE: i32 = 69;

/// The exit codes, for `ctl --help`.
pub(crate) const EXIT_CODES: &str = "Exit codes:
  0   done
  1   the root refused the request, or the action failed (a daemon that did not
      reach the state --wait waits for; a tree not ready for `health --ready`;
      a config file with problems for `reload`)
  2   usage error: bad arguments, or a --config file that cannot be read
  69  the root cannot be reached (no socket, nobody listening, no reply)";

/// How often `--wait` and `logs -f` ask the root again.
const POLL: Duration = Duration::from_millis(100);

/// What to ask the root.
#[derive(Subcommand, Debug)]
pub(crate) enum Ctl {
    /// Every daemon: state, pid, uptime, restarts, last exit, heartbeat, region.
    Status {
        /// Print the root's JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The supervision tree: each supervisor (the top and every group) with
    /// its state and restarts, and its children in start order.
    Tree {
        /// Print the root's JSON document instead of the tree.
        #[arg(long)]
        json: bool,
    },
    /// Stop a daemon (SIGTERM, then SIGKILL after stop_timeout) and start it again.
    Restart {
        name: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Stop a daemon and keep it stopped.
    Stop {
        name: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Start a stopped daemon.
    Start {
        name: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// A daemon's flight log (its last records, kept across its crashes).
    /// Control characters in the daemon's text are shown escaped (`\n`,
    /// `\x1b`, `\\`), so one record is always one line.
    Logs {
        name: String,
        /// Keep printing new records as they come.
        #[arg(short, long)]
        follow: bool,
    },
    /// Counters in Prometheus' text format.
    Metrics,
    /// Exit 0 if the root answers and is not shutting down (liveness); with
    /// --ready, only if no daemon is starting, in backoff, stopping or
    /// failed either (readiness).
    Health {
        /// Also require the tree to be ready.
        #[arg(long)]
        ready: bool,
    },
    /// Read the root's config file again and apply it: added daemons
    /// start, removed ones stop, changed ones restart, the others keep
    /// running untouched. A file with any problem changes nothing (exit 1,
    /// with every problem). Returns once the file is accepted; `status`
    /// shows the restarts as they happen.
    Reload {
        /// Print the plan (added, removed, changed with which keys,
        /// unchanged) and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Stop every daemon in reverse order and end the root (exit 0).
    Shutdown,
}

/// `--wait [--timeout D]` of `restart`, `stop` and `start`.
#[derive(Args, Debug, Clone, Copy)]
pub(crate) struct Wait {
    /// Return only once the daemon is running (restart, start) or stopped
    /// (stop); exit 1 if it failed or did not get there in time.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits (`500ms`, `30s`, `2m`).
    #[arg(long, requires = "wait", default_value = "30s", value_parser = crate::config::parse_duration)]
    timeout: Duration,
}

/// Why a ctl command did not succeed, and so its exit code.
#[derive(Debug)]
enum CtlError {
    Failed(String),
    Unreachable(String),
}

impl CtlError {
    fn code(&self) -> i32 {
        match self {
            CtlError::Failed(_) => EXIT_FAILED,
            CtlError::Unreachable(_) => EXIT_UNREACHABLE,
        }
    }
}

impl fmt::Display for CtlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CtlError::Failed(m) | CtlError::Unreachable(m) => f.write_str(m),
        }
    }
}

impl From<control::Error> for CtlError {
    fn from(e: control::Error) -> CtlError {
        match e {
            control::Error::Unreachable(m) => CtlError::Unreachable(m),
            control::Error::Root(f) => CtlError::Failed(f.error),
        }
    }
}

/// Runs one ctl command; returns the process exit code.
pub(crate) fn run(socket: &Path, cmd: Ctl) -> i32 {
    match exec(socket, cmd) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("forkroot ctl: {e}");
            e.code()
        }
    }
}

fn ask<T: DeserializeOwned>(socket: &Path, request: &Request) -> Result<Reply<T>, CtlError> {
    Ok(control::request(socket, request)?)
}

/// A reply as a JSON document (`--json`): the reply less the protocol
/// version, the document `status --json` always printed.
fn print_json(mut doc: serde_json::Map<String, serde_json::Value>) {
    doc.remove("v");
    let doc = serde_json::Value::Object(doc);
    println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
}

fn exec(socket: &Path, cmd: Ctl) -> Result<(), CtlError> {
    match cmd {
        Ctl::Status { json } => {
            let reply = ask::<StatusReply>(socket, &Request::Status)?;
            if json {
                print_json(reply.raw);
            } else {
                print_status(&reply.body);
            }
        }
        Ctl::Tree { json } => {
            let reply = ask::<TreeReply>(socket, &Request::Tree)?;
            if json {
                print_json(reply.raw);
            } else {
                match &reply.body.tree {
                    Some(node) => print_node(node, ""),
                    None => print_tree(&reply.body),
                }
            }
        }
        Ctl::Restart { name, wait } => act(socket, Request::Restart { name }, wait)?,
        Ctl::Stop { name, wait } => act(socket, Request::Stop { name }, wait)?,
        Ctl::Start { name, wait } => act(socket, Request::Start { name }, wait)?,
        Ctl::Logs { name, follow } => {
            let (mut after, mut output_after) = (0u64, 0u64);
            let mut dropped = 0u64;
            loop {
                let request = Request::Logs {
                    name: name.clone(),
                    after,
                    output_after,
                };
                let reply = ask::<LogsReply>(socket, &request)?.body;
                // The flight log and the output, merged by time.
                let mut lines: Vec<(u64, String)> = reply
                    .records
                    .iter()
                    .map(|r| (r.time_ns, record_line(r)))
                    .chain(reply.output.iter().map(|l| (l.time_ns, output_line(l))))
                    .collect();
                lines.sort_by_key(|(t, _)| *t);
                for (_, line) in lines {
                    println!("{line}");
                }
                if reply.output_dropped > dropped {
                    dropped = reply.output_dropped;
                    eprintln!("({dropped} output lines dropped by the rate limit so far)");
                }
                after = reply.next;
                output_after = reply.output_next;
                if !follow {
                    break;
                }
                std::thread::sleep(POLL);
            }
        }
        Ctl::Metrics => print!(
            "{}",
            ask::<MetricsReply>(socket, &Request::Metrics)?.body.text
        ),
        Ctl::Health { ready } => {
            let h = ask::<HealthReply>(socket, &Request::Health)?.body;
            if h.mode != proto::RootMode::Supervising {
                return Err(CtlError::Failed(format!("the root is {}", h.mode.as_str())));
            }
            if ready && !h.not_ready.is_empty() {
                let list: Vec<String> = h
                    .not_ready
                    .iter()
                    .map(|(name, state)| format!("{name} {}", state.as_str()))
                    .collect();
                return Err(CtlError::Failed(format!("not ready: {}", list.join(", "))));
            }
            println!("{}", if ready { "ready" } else { "alive" });
        }
        Ctl::Reload { dry_run } => {
            let plan = ask::<ReloadReply>(socket, &Request::Reload { dry_run })?.body;
            print_plan(&plan);
        }
        Ctl::Shutdown => {
            ask::<Empty>(socket, &Request::Shutdown)?;
            println!("shutting down");
        }
    }
    Ok(())
}

/// A reload's plan, one line per daemon (`add`, `remove`, `change`,
/// `keep`) after a line that says whether it is carried out.
fn print_plan(plan: &ReloadReply) {
    if plan.applied {
        println!("reloading {}", plan.file);
    } else {
        println!("dry run of {}: nothing changed", plan.file);
    }
    for name in &plan.added {
        println!("add     {name}");
    }
    for name in &plan.removed {
        println!("remove  {name}");
    }
    for (name, keys) in &plan.changed {
        println!("change  {name} ({})", keys.join(", "));
    }
    for name in &plan.unchanged {
        println!("keep    {name}");
    }
    for what in &plan.settings {
        println!("set     {what}");
    }
}

/// `restart`, `stop` or `start`, then with `--wait` until it is done.
fn act(socket: &Path, request: Request, wait: Wait) -> Result<(), CtlError> {
    let (name, goal) = match &request {
        Request::Stop { name } => (name.clone(), DaemonState::Stopped),
        Request::Restart { name } | Request::Start { name } => (name.clone(), DaemonState::Running),
        _ => unreachable!("act takes restart, stop and start"),
    };
    let reply = ask::<ActionReply>(socket, &request)?.body;
    if !wait.wait {
        println!("{name}: {}", reply.state.as_str());
        return Ok(());
    }
    // A daemon being stopped for a restart still runs its old process: the
    // restart is done when a different one runs.
    let old = (reply.state == DaemonState::Stopping)
        .then_some(reply.pid)
        .flatten();
    let deadline = Instant::now() + wait.timeout;
    loop {
        let status = ask::<StatusReply>(socket, &Request::Status)?.body;
        let Some(d) = status.daemons.into_iter().find(|d| d.name == name) else {
            return Err(CtlError::Failed(format!("{name} is no longer in the tree")));
        };
        let last = d.last_exit.as_deref().unwrap_or("-");
        if d.state == goal && (goal != DaemonState::Running || d.pid != old) {
            println!("{name}: {}", d.state.as_str());
            return Ok(());
        }
        if d.state == DaemonState::Failed {
            return Err(CtlError::Failed(format!(
                "{name} failed (last exit: {last})"
            )));
        }
        if Instant::now() >= deadline {
            return Err(CtlError::Failed(format!(
                "{name} is still {} after {} (wanted {}; last exit: {last})",
                d.state.as_str(),
                crate::config::format_duration(wait.timeout),
                goal.as_str(),
            )));
        }
        std::thread::sleep(POLL);
    }
}

/// One flight-log record as one line of text: the daemon's text with every
/// control character, and the characters that reorder or break lines,
/// escaped, so it can neither drive the terminal nor pose as other lines.
fn record_line(r: &LogRecord) -> String {
    let secs = r.time_ns as f64 / 1e9;
    let tx =
        r.tx.as_deref()
            .map(|t| format!(" tx={}", escape(t)))
            .unwrap_or_default();
    format!(
        "{secs:.6} {:<5} {}{tx}: {}",
        escape(&r.level),
        r.pid,
        escape(&r.text)
    )
}

/// One line of a daemon's output, as `logs` prints it: like a flight-log
/// record, with `OUT` or `ERR` where the level would be.
fn output_line(l: &OutputLine) -> String {
    let secs = l.time_ns as f64 / 1e9;
    let tag = if l.stream == "stdout" { "OUT" } else { "ERR" };
    format!("{secs:.6} {tag:<5} {}: {}", l.pid, escape(&l.text))
}

/// `text` with backslashes doubled and control characters (C0, DEL, C1),
/// line and paragraph separators and bidirectional overrides written as
/// escapes: `\n`, `\r`, `\t`, `\x1b`, `\u{9b}`, `\u{202e}`.
pub(crate) fn escape(text: &str) -> String {
    use fmt::Write as _;
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0'..='\x1f' | '\x7f' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            '\u{80}'..='\u{9f}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Milliseconds as a short human duration: `850ms`, `12.3s`, `4m05s`, `2h13m`.
fn human_ms(ms: Option<u64>) -> String {
    let Some(ms) = ms else { return "-".into() };
    match ms {
        0..=999 => format!("{ms}ms"),
        1000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms / 60_000 % 60),
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if n >= size && n % size == 0 {
            return format!("{}{unit}", n / size);
        }
    }
    format!("{n}B")
}

fn print_status(s: &StatusReply) {
    println!(
        "root pid {} up {} ({})",
        s.root.pid,
        human_ms(Some(s.root.uptime_ms)),
        s.root.mode.as_str()
    );
    println!(
        "{:<16} {:<9} {:>7} {:>8} {:>8} {:>9} {:>8}  LAST EXIT",
        "NAME", "STATE", "PID", "UPTIME", "RESTARTS", "HEARTBEAT", "REGION"
    );
    for d in &s.daemons {
        println!(
            "{:<16} {:<9} {:>7} {:>8} {:>8} {:>9} {:>8}  {}",
            d.name,
            d.state.as_str(),
            d.pid.map_or("-".into(), |p| p.to_string()),
            human_ms(d.uptime_ms),
            d.restarts,
            human_ms(d.heartbeat_age_ms),
            human_bytes(d.region_bytes as u64),
            d.last_exit.as_deref().unwrap_or("-"),
        );
        if let Some(fault) = &d.fault {
            println!("{:<16} fault: {fault}", "");
        }
        if let Some(status) = &d.status {
            println!("{:<16} status: {}", "", escape(status));
        }
    }
    // Under the table, which keeps its shape: how a daemon's processes
    // end with it.
    if !s.root.containment.is_empty() {
        println!("containment: {}", s.root.containment);
    }
    if let Some(pid) = s.root.zygote_pid {
        println!("zygote: pid {pid}");
    }
}

/// `ctl tree`: one line per supervisor (its state, strategy, intensity,
/// its `auto_shutdown` and `significant` where set, how often its parent
/// restarted it, its restarts within its period) and per daemon (state,
/// pid, restarts, `significant` where set), children indented in start
/// order.
fn print_node(node: &TreeNode, indent: &str) {
    match node {
        TreeNode::Group {
            name,
            state,
            strategy,
            intensity,
            period,
            restart,
            restarts,
            restarts_in_period,
            auto_shutdown,
            significant,
            children,
        } => {
            // The top has no parent to restart it.
            let restarted = if indent.is_empty() {
                String::new()
            } else {
                format!("{restart} restart, restarted {restarts}, ")
            };
            // `never` (the default, and what an older root sends as
            // nothing) goes unsaid.
            let auto = match auto_shutdown.as_str() {
                "" | "never" => String::new(),
                a => format!("auto_shutdown {a}, "),
            };
            let significant = if *significant { "significant, " } else { "" };
            println!(
                "{indent}{name}/ [{state}] {strategy}, intensity {intensity} per {period}, \
                 {auto}{significant}{restarted}{restarts_in_period} restarts in period"
            );
            let deeper = format!("{indent}  ");
            for c in children {
                print_node(c, &deeper);
            }
        }
        TreeNode::Daemon {
            name,
            state,
            pid,
            restarts,
            cause,
            significant,
            ..
        } => {
            let pid = pid.map_or(String::new(), |p| format!(" pid {p}"));
            // Why it started, once that is more than the tree's start.
            let cause = if cause == "start" {
                String::new()
            } else {
                format!(" (last start: {cause})")
            };
            let significant = if *significant { ", significant" } else { "" };
            println!(
                "{indent}{name} [{}{pid}] {restarts} restarts{significant}{cause}",
                state.as_str()
            );
        }
    }
}

/// `ctl tree` from a root that sends only the flat lists.
fn print_tree(t: &TreeReply) {
    fn sup(s: &proto::Supervisor) -> String {
        format!("{}, intensity {} per {}", s.strategy, s.intensity, s.period)
    }
    fn daemons(t: &TreeReply, group: &str, indent: &str) {
        for d in t.daemons.iter().filter(|d| d.group == group) {
            let pid = d.pid.map_or(String::new(), |p| format!(" pid {p}"));
            println!("{indent}{} [{}{pid}]", d.name, d.state.as_str());
        }
    }
    fn groups(t: &TreeReply, parent: &str, indent: &str) {
        for g in t.groups.iter().filter(|g| g.parent == parent) {
            println!("{indent}{}/ ({})", g.name, sup(&g.supervisor));
            let deeper = format!("{indent}  ");
            groups(t, &g.name, &deeper);
            daemons(t, &g.name, &deeper);
        }
    }
    println!("root/ ({})", sup(&t.supervisor));
    groups(t, "root", "  ");
    daemons(t, "root", "  ");
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escape_keeps_one_line_and_no_escape_sequence() {
        let forged = "ok\x1b[2J\x1b]0;title\x07\r\nERROR crashed daemon=other\u{9b}31m\u{202e}";
        let e = escape(forged);
        assert!(!e.chars().any(|c| c.is_control()), "{e:?}");
        assert_eq!(
            e,
            "ok\\x1b[2J\\x1b]0;title\\x07\\r\\nERROR crashed daemon=other\\u{9b}31m\\u{202e}"
        );
        assert_eq!(
            escape("a\\nb"),
            "a\\\\nb",
            "a literal backslash-n stays distinct"
        );
        assert_eq!(escape("plain é ✓"), "plain é ✓");
    }
}

//! `forkroot ctl`: talks to a running root over its control socket and
//! prints what it says, for people (`status`, `tree`) or programs
//! (`status --json`).

use std::path::Path;
use std::time::Duration;

use crate::control;
use clap::Subcommand;
use serde_json::Value;

/// What to ask the root.
#[derive(Subcommand, Debug)]
pub(crate) enum Ctl {
    /// Every daemon: state, pid, uptime, restarts, last exit, heartbeat, region.
    Status {
        /// Print the root's JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The supervision tree: supervisors, groups and their daemons.
    Tree,
    /// Stop a daemon (SIGTERM, then SIGKILL after stop_timeout) and start it again.
    Restart { name: String },
    /// Stop a daemon and keep it stopped.
    Stop { name: String },
    /// Start a stopped daemon.
    Start { name: String },
    /// A daemon's flight log (its last records, kept across its crashes).
    Logs {
        name: String,
        /// Keep printing new records as they come.
        #[arg(short, long)]
        follow: bool,
    },
    /// Counters in Prometheus' text format.
    Metrics,
    /// Stop every daemon in reverse order and end the root (exit 0).
    Shutdown,
}

/// Runs one ctl command; returns the process exit code.
pub(crate) fn run(socket: &Path, cmd: Ctl) -> i32 {
    match exec(socket, cmd) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("forkroot ctl: {e}");
            1
        }
    }
}

fn exec(socket: &Path, cmd: Ctl) -> std::io::Result<()> {
    match cmd {
        Ctl::Status { json } => {
            let v = control::request(socket, "status")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print_status(&v);
            }
        }
        Ctl::Tree => print_tree(&control::request(socket, "tree")?),
        Ctl::Restart { name } | Ctl::Stop { name } | Ctl::Start { name }
            if name.contains(char::is_whitespace) =>
        {
            return Err(std::io::Error::other(format!(
                "{name:?} is not a daemon name"
            )));
        }
        Ctl::Restart { name } => print_state(
            &name,
            &control::request(socket, &format!("restart {name}"))?,
        ),
        Ctl::Stop { name } => {
            print_state(&name, &control::request(socket, &format!("stop {name}"))?)
        }
        Ctl::Start { name } => {
            print_state(&name, &control::request(socket, &format!("start {name}"))?)
        }
        Ctl::Logs { name, follow } => {
            let mut next = 0u64;
            loop {
                let v = control::request(socket, &format!("logs {name} {next}"))?;
                for r in v["records"].as_array().into_iter().flatten() {
                    print_record(r);
                }
                next = v["next"].as_u64().unwrap_or(next);
                if !follow {
                    break;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
        Ctl::Metrics => print!(
            "{}",
            control::request(socket, "metrics")?["text"]
                .as_str()
                .unwrap_or("")
        ),
        Ctl::Shutdown => {
            control::request(socket, "shutdown")?;
            println!("shutting down");
        }
    }
    Ok(())
}

fn print_state(name: &str, v: &Value) {
    println!("{name}: {}", v["state"].as_str().unwrap_or("?"));
}

fn print_record(r: &Value) {
    let secs = r["time_ns"].as_u64().unwrap_or(0) as f64 / 1e9;
    let tx = r["tx"]
        .as_str()
        .map(|t| format!(" tx={t}"))
        .unwrap_or_default();
    println!(
        "{secs:.6} {:<5} {}{tx}: {}",
        r["level"].as_str().unwrap_or("?"),
        r["pid"],
        r["text"].as_str().unwrap_or("")
    );
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

fn print_status(v: &Value) {
    let root = &v["root"];
    println!(
        "root pid {} up {} ({})",
        root["pid"],
        human_ms(root["uptime_ms"].as_u64()),
        root["mode"].as_str().unwrap_or("?")
    );
    println!(
        "{:<16} {:<9} {:>7} {:>8} {:>8} {:>9} {:>8}  LAST EXIT",
        "NAME", "STATE", "PID", "UPTIME", "RESTARTS", "HEARTBEAT", "REGION"
    );
    for d in v["daemons"].as_array().into_iter().flatten() {
        println!(
            "{:<16} {:<9} {:>7} {:>8} {:>8} {:>9} {:>8}  {}",
            d["name"].as_str().unwrap_or("?"),
            d["state"].as_str().unwrap_or("?"),
            d["pid"].as_i64().map_or("-".into(), |p| p.to_string()),
            human_ms(d["uptime_ms"].as_u64()),
            d["restarts"],
            human_ms(d["heartbeat_age_ms"].as_u64()),
            human_bytes(d["region_bytes"].as_u64().unwrap_or(0)),
            d["last_exit"].as_str().unwrap_or("-"),
        );
        if let Some(fault) = d["fault"].as_str() {
            println!("{:<16} fault: {fault}", "");
        }
    }
}

fn print_tree(v: &Value) {
    fn sup(s: &Value) -> String {
        format!(
            "{}, intensity {} per {}",
            s["strategy"].as_str().unwrap_or("?"),
            s["intensity"],
            s["period"].as_str().unwrap_or("?")
        )
    }
    fn daemons(v: &Value, group: &str, indent: &str) {
        for d in v["daemons"].as_array().into_iter().flatten() {
            if d["group"].as_str() == Some(group) {
                let pid = d["pid"]
                    .as_i64()
                    .map_or(String::new(), |p| format!(" pid {p}"));
                println!(
                    "{indent}{} [{}{pid}]",
                    d["name"].as_str().unwrap_or("?"),
                    d["state"].as_str().unwrap_or("?")
                );
            }
        }
    }
    fn groups(v: &Value, parent: &str, indent: &str) {
        for g in v["groups"].as_array().into_iter().flatten() {
            if g["parent"].as_str() == Some(parent) {
                let name = g["name"].as_str().unwrap_or("?");
                println!("{indent}{name}/ ({})", sup(&g["supervisor"]));
                let deeper = format!("{indent}  ");
                groups(v, name, &deeper);
                daemons(v, name, &deeper);
            }
        }
    }
    println!("root/ ({})", sup(&v["supervisor"]));
    groups(v, "root", "  ");
    daemons(v, "root", "  ");
}

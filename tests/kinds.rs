//! The built-in kinds' settings: declared once, listed by `forkroot kinds`,
//! and checked by `check` and `run` with the rest of the config — a typo,
//! a wrong type or a value out of range is a located problem and exit 78,
//! with nothing started.

mod common;

use std::time::Duration;

use common::{run_to_end, running_pid, Tree};
use libc::SIGTERM;

/// A daemon `name` of `kind` with `args` as its `[daemon.args]`.
fn daemon(name: &str, kind: &str, args: &str) -> String {
    format!("[[daemon]]\nname = \"{name}\"\nkind = \"{kind}\"\n[daemon.args]\n{args}\n")
}

/// `check` and `run` of the stock binary both reject `config` with
/// exactly `want`.
fn rejected(config: String, want: &[&str]) {
    common::assert_rejected(std::path::Path::new(common::BIN), &config, want);
}

#[test]
fn counter_settings_are_checked() {
    rejected(
        daemon("counter", "counter", "rtae = 5\nout = \"@DIR@/c.out\"")
            + &daemon("c1", "counter", "rate = \"fast\"")
            + &daemon("c2", "counter", "rate = 0\nout = 3"),
        &[
            "daemon[0].args.rtae: unknown setting of kind \"counter\", did you mean \"rate\"? \
             (it takes: rate, out)",
            "daemon[1].args.rate: expected a whole number, found the string \"fast\"",
            "daemon[2].args.rate: 0 is out of range (use 1..=10000000)",
            "daemon[2].args.out: expected a string, found the integer 3",
        ],
    );
}

#[test]
fn flaky_settings_are_checked() {
    rejected(
        daemon("f0", "flaky", "mean_lfe = \"1s\"\nsignal = \"SIGSEGV\"")
            + &daemon("f1", "flaky", "mean_life = 5\nsignal = 11")
            + &daemon("f2", "flaky", "mean_life = \"2d\"\nsignal = \"SIGNOPE\"")
            + &daemon("f3", "flaky", "mean_life = \"0s\"")
            + &daemon("f4", "flaky", "signal = \"SIGSTOP\"")
            + &daemon("f5", "flaky", "signal = \"chld\""),
        &[
            "daemon[0].args.mean_lfe: unknown setting of kind \"flaky\", did you mean \
             \"mean_life\"? (it takes: mean_life, signal)",
            "daemon[1].args.mean_life: 5 has no unit: write a string such as \"5s\" or \"5ms\"",
            "daemon[1].args.signal: expected a string, found the integer 11",
            "daemon[2].args.mean_life: \"2d\" is not a duration: unknown unit \"d\" \
             (use ms, s, m, h)",
            "daemon[2].args.signal: \"SIGNOPE\" is not a signal name \
             (e.g. SIGTERM, SIGKILL, SIGSEGV, SIGABRT)",
            "daemon[3].args.mean_life: 0s is out of range (use 1ms..=24h)",
            "daemon[4].args.signal: \"SIGSTOP\" does not end a process \
             (use one that does, such as SIGSEGV, SIGABRT, SIGKILL)",
            "daemon[5].args.signal: \"SIGCHLD\" does not end a process \
             (use one that does, such as SIGSEGV, SIGABRT, SIGKILL)",
        ],
    );
}

#[test]
fn kv_settings_are_checked() {
    rejected(
        daemon("kv", "kv", "lisen = \"127.0.0.1:1\"\ndebug = \"yes\"")
            + &daemon("kv1", "kv", "max_clients = 0\nlisten = \"nowhere\"")
            + &daemon("kv2", "kv", "max_clients = 100000\npassword = 5")
            + &daemon(
                "kv3",
                "kv",
                &format!("listen = \"/tmp/{}.sock\"", "k".repeat(100)),
            ),
        &[
            "daemon[0].args.lisen: unknown setting of kind \"kv\", did you mean \"listen\"? \
             (it takes: listen, max_clients, debug, password)",
            "daemon[0].args.debug: expected true or false, found the string \"yes\"",
            "daemon[1].args.listen: \"nowhere\" is neither HOST:PORT (\"127.0.0.1:6380\") \
             nor a socket path (with a /)",
            "daemon[1].args.max_clients: 0 is out of range (use 1..=65536)",
            "daemon[2].args.max_clients: 100000 is out of range (use 1..=65536)",
            "daemon[2].args.password: expected a string, found the integer 5",
            "daemon[3].args.listen: the socket path is 110 bytes long; \
             a Unix socket path holds at most 107",
        ],
    );
}

#[test]
fn probe_settings_are_checked() {
    rejected(
        daemon("probe", "probe", "out = \"@DIR@/p.out\"\nexti = 3")
            + &daemon(
                "q",
                "probe",
                "out = \"@DIR@/q.out\"\ncheckpoint = 1\nfill = \"x\"",
            )
            + &daemon("r", "probe", "out = \"@DIR@/r.out\"\nfill = 256\nexit = -1")
            + &daemon("s", "probe", "fill = 1"),
        &[
            "daemon[0].args.exti: unknown setting of kind \"probe\", did you mean \"exit\"? \
             (it takes: out, fill, attack, exit, checkpoint, crash_at, allocate, log)",
            "daemon[1].args.fill: expected a whole number, found the string \"x\"",
            "daemon[1].args.checkpoint: expected true or false, found the integer 1",
            "daemon[2].args.fill: 256 is out of range (use 0..=255)",
            "daemon[2].args.exit: -1 is out of range (use 0..=255)",
            "daemon[3].args.out: missing; kind \"probe\" needs it (file or FIFO to report to)",
        ],
    );
}

#[test]
fn idle_takes_no_settings_and_exec_takes_none_either() {
    rejected(
        daemon("idle", "idle", "rate = 1")
            + "[[daemon]]\nname = \"x\"\nexec = [\"/bin/sleep\", \"9\"]\n[daemon.args]\nrate = 1\n",
        &[
            "daemon[0].args.rate: unknown setting: kind \"idle\" takes no settings",
            "daemon[1].args: an exec'd program takes no [daemon.args]; \
             give it its options in exec = [...]",
        ],
    );
}

/// Times process `pid` has gone to sleep and been woken
/// (`voluntary_ctxt_switches` in /proc/PID/status; being preempted does
/// not count).
fn wake_ups(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e} (the daemon is gone)"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("/proc/{pid}/status has no voluntary_ctxt_switches"))
}

/// CPU time process `pid` has used, in clock ticks (utime + stime of
/// /proc/PID/stat): a daemon that spins instead of sleeping runs it up
/// without ever going to sleep.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/stat: {e} (the daemon is gone)"));
    // After the command, which may hold spaces: state is field 3, utime 14.
    let after = &stat[stat.rfind(')').expect("a comm in /proc/PID/stat") + 2..];
    let f: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse().unwrap())
        .collect();
    f[0] + f[1]
}

/// `idle` without a `watchdog` sleeps until it is told to stop: nothing
/// reads its heartbeat's time, so it does not wake up for one. With a
/// `watchdog` it heartbeats at half of it, and the watchdog never fires.
#[test]
fn idle_wakes_only_for_its_watchdog() {
    let mut t = Tree::start(
        "[[daemon]]\nname = \"still\"\nkind = \"idle\"\n\
         [[daemon]]\nname = \"kept\"\nkind = \"idle\"\nwatchdog = \"1s\"\n",
    );
    let still = running_pid(&t, "still");
    let kept = running_pid(&t, "kept");
    // Past its start-up: asleep, its count no longer moving.
    let mut last = wake_ups(still);
    t.poll("`still` asleep", || {
        std::thread::sleep(Duration::from_millis(300));
        let before = last;
        last = wake_ups(still);
        (last == before).then_some(())
    });
    let (still_0, kept_0, cpu_0) = (wake_ups(still), wake_ups(kept), cpu_ticks(still));
    std::thread::sleep(Duration::from_secs(3));
    let (still_1, kept_1, cpu_1) = (wake_ups(still), wake_ups(kept), cpu_ticks(still));
    assert_eq!(still_1, still_0, "`still` woke up in 3 s with no watchdog");
    assert!(
        cpu_1 - cpu_0 <= 1,
        "`still` used {} ticks of CPU asleep",
        cpu_1 - cpu_0
    );
    assert!(
        kept_1 - kept_0 >= 5,
        "`kept` woke {} times in 3 s; its watchdog of 1 s needs a heartbeat every 500 ms",
        kept_1 - kept_0
    );
    for (name, pid) in [("still", still), ("kept", kept)] {
        let d = t.daemon_status(name).unwrap();
        assert_eq!(d["pid"], pid, "{d}");
        assert_eq!(d["restarts"], 0, "{d}");
    }
    assert!(!t.log().contains("watchdog: no heartbeat"), "{}", t.log());
    // Asleep for good, it still stops when told to.
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
}

#[test]
fn kinds_lists_every_setting_with_its_default_and_help() {
    let dir = tempfile::tempdir().unwrap();
    let ran = run_to_end(&dir, &["kinds"]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    let out = ran.stdout;
    for line in [
        "    rate = 10                    integer 1..=10000000: numbers per second",
        "    mean_life = \"5s\"             duration 1ms..=24h: mean lifetime (exponentially distributed)",
        "    signal = \"SIGSEGV\"           signal name: the signal it dies by",
        "    listen = \"127.0.0.1:6380\"    string: HOST:PORT, or a Unix socket path (any value with a /)",
        "    out (required)               path: file or FIFO to report to",
        "    (no settings)",
    ] {
        assert!(out.lines().any(|l| l == line), "no {line:?} in:\n{out}");
    }
    for kind in ["counter", "kv", "idle", "flaky", "probe"] {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("{kind} "))),
            "no {kind} in:\n{out}"
        );
    }
}

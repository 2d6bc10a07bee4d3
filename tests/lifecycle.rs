//! The root's own life: configuration errors, clean stops on SIGTERM and
//! SIGINT, a daemon that ignores SIGTERM, and the root being killed.

mod common;

use common::{run_to_end, send, Proc, Tree};
use libc::{SIGINT, SIGKILL, SIGTERM};

const PROBES_AND_A_SHELL: &str = r#"
[[daemon]]
name = "a"
kind = "probe"
memory = "64KiB"
[daemon.args]
out = "@DIR@/a.out"

[[daemon]]
name = "b"
kind = "probe"
memory = "64KiB"
[daemon.args]
out = "@DIR@/b.out"

[[daemon]]
name = "sh"
exec = ["/bin/sh", "-c", "sleep 1000 & wait"]
memory = "64KiB"

[[daemon]]
name = "c"
kind = "probe"
memory = "64KiB"
[daemon.args]
out = "@DIR@/c.out"
"#;

/// Waits until the tree of [`PROBES_AND_A_SHELL`] is fully up (the shell's
/// `sleep` included) and returns every process in it.
fn wait_up(t: &Tree) -> Vec<Proc> {
    for n in ["a", "b", "c"] {
        t.wait_starts(n, 1);
    }
    t.poll("the shell daemon's sleep", || {
        let procs = t.processes();
        let sh = procs.iter().find(|p| p.ppid == t.pid && p.comm == "sh")?;
        procs
            .iter()
            .any(|p| p.ppid == sh.pid && p.comm == "sleep")
            .then_some(procs)
    })
}

fn stops_cleanly_on(signal: i32) {
    let mut t = Tree::start(PROBES_AND_A_SHELL);
    let procs = wait_up(&t);
    // Three probes, the shell and its sleep, and the zygote (which goes
    // too).
    assert_eq!(procs.len(), 6, "{procs:?}");
    assert!(
        procs.iter().any(|p| p.comm == "forkroot [zygot"),
        "{procs:?}"
    );

    t.signal(signal);
    assert_eq!(t.wait_code(), 0, "{}", t.log());

    // Stopped in reverse start order, each gracefully.
    let order: Vec<String> = t
        .log_lines(&["stopped daemon="])
        .iter()
        .filter_map(|l| {
            l.split(' ')
                .find_map(|w| w.strip_prefix("daemon="))
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(order, ["c", "sh", "b", "a"], "{}", t.log());
    for n in ["a", "b", "c"] {
        let pid = t.starts(n)[0].pid;
        assert!(t.out(n).contains(&format!("stop {pid}")), "{n}");
    }
    // The root reaped its daemons; the shell's sleep is dead too.
    for p in procs.iter().filter(|p| p.ppid == t.pid) {
        assert!(p.is_gone(), "{p:?} is left");
    }
    t.wait_dead(&procs);
}

#[test]
fn sigterm_stops_every_daemon_and_exits_0() {
    stops_cleanly_on(SIGTERM);
}

#[test]
fn sigint_stops_every_daemon_and_exits_0() {
    stops_cleanly_on(SIGINT);
}

/// A tree of one shell that ignores SIGTERM (and so does its `sleep`),
/// with `stop_timeout`; returns it once both processes run.
fn start_stubborn(stop_timeout: &str) -> (Tree, Vec<Proc>) {
    let t = Tree::start(&format!(
        r#"
[root]
stop_timeout = "{stop_timeout}"

[[daemon]]
name = "stubborn"
exec = ["/bin/sh", "-c", "trap '' TERM; while :; do sleep 5; done"]
memory = "64KiB"
"#
    ));
    let procs = t.poll("the stubborn shell and its sleep", || {
        let procs = t.processes();
        procs
            .iter()
            .any(|p| p.comm == "sleep" && p.ppid != t.pid)
            .then_some(procs)
    });
    (t, procs)
}

#[test]
fn a_daemon_ignoring_sigterm_is_killed_after_stop_timeout() {
    let (mut t, procs) = start_stubborn("300ms");
    assert_eq!(procs.len(), 2, "{procs:?}");
    t.signal(SIGTERM);
    t.wait_log(&["did not stop in time; killing", "daemon=stubborn"]);
    assert_eq!(t.wait_code(), 0, "{}", t.log());
    // The sleep ignored SIGTERM too (inherited); SIGKILL went to the group.
    t.wait_dead(&procs);
}

#[test]
fn a_second_stop_signal_kills_at_once() {
    let (mut t, procs) = start_stubborn("1h");
    t.signal(SIGTERM);
    t.wait_log(&["shutting down"]);
    t.signal(SIGINT);
    t.wait_log(&["second stop signal"]);
    assert_eq!(t.wait_code(), 0, "{}", t.log());
    t.wait_dead(&procs);
}

#[test]
fn killing_the_root_leaves_no_daemon_behind() {
    // Only direct daemons: a daemon's own children get no parent-death
    // signal, so a SIGKILLed root cannot take them along.
    let config = r#"
[[daemon]]
name = "a"
kind = "probe"
memory = "64KiB"
[daemon.args]
out = "@DIR@/a.out"

[[daemon]]
name = "b"
kind = "probe"
memory = "64KiB"
[daemon.args]
out = "@DIR@/b.out"

[[daemon]]
name = "sleeper"
exec = ["/bin/sleep", "1000"]
memory = "64KiB"
"#;
    let mut t = Tree::start(config);
    t.wait_starts("a", 1);
    t.wait_starts("b", 1);
    // The root's children: the three daemons and the zygote.
    let daemons = t.poll("three daemons, all set up, and the zygote", || {
        let d = common::children(t.pid);
        (d.len() == 4
            && d.iter().any(|p| p.comm == "sleep")
            && d.iter().any(|p| p.comm == "forkroot [zygot"))
        .then_some(d)
    });
    send(t.pid, SIGKILL).unwrap();
    let status = t.wait_exit();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(SIGKILL)
    );
    // Every daemon, built-in or exec'd, and the zygote die with their root
    // (their parent-death signal); with the root gone, reaping them is
    // init's job.
    t.wait_dead(&daemons);
}

const BAD: &str = r#"
[supervisor]
strategy = "one_for_none"
period = "10 parsecs"

[[daemon]]
name = "p"
kind = "probe"
memory = "4 MB"
[daemon.args]
out = "@DIR@/p.out"

[[daemon]]
name = "q"
"#;

const GOOD: &str = r#"
[[daemon]]
name = "p"
kind = "probe"
memory = "64KiB"
[daemon.args]
out = "@DIR@/p.out"

[[daemon]]
name = "q"
kind = "idle"
"#;

/// Asserts that `stderr` has one line per place, each starting with it.
fn assert_places(stderr: &str, places: &[&str]) {
    for place in places {
        assert!(
            stderr.lines().any(|l| l.starts_with(&format!("{place}: "))),
            "no line for {place} in:\n{stderr}"
        );
    }
}

#[test]
fn a_bad_config_exits_78_lists_every_problem_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_config(&dir, BAD);
    let path = path.to_str().unwrap();
    let places = [
        "supervisor.strategy",
        "supervisor.period",
        "daemon[0].memory",
        "daemon[1]",
    ];

    let check = run_to_end(&dir, &["check", "--config", path]);
    assert_eq!(check.code, Some(78), "{check:?}");
    assert_places(&check.stderr, &places);
    assert!(check.stderr.contains("4 problems"), "{check:?}");

    let run = run_to_end(&dir, &["run", "--config", path]);
    assert_eq!(run.code, Some(78), "{run:?}");
    assert_places(&run.stderr, &places);
    assert!(run.stderr.contains("nothing started"), "{run:?}");
    assert!(!run.stderr.contains("started daemon"), "{run:?}");
    assert!(!dir.path().join("p.out").exists(), "the probe ran");
}

#[test]
fn an_unknown_kind_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_config(&dir, &GOOD.replace("\"idle\"", "\"nonesuch\""));
    let path = path.to_str().unwrap();
    for cmd in ["check", "run"] {
        let ran = run_to_end(&dir, &[cmd, "--config", path]);
        assert_eq!(ran.code, Some(78), "{ran:?}");
        assert_places(&ran.stderr, &["daemon[1].kind"]);
    }
    assert!(!dir.path().join("p.out").exists(), "the probe ran");
}

#[test]
fn an_unknown_kind_is_listed_with_the_other_problems() {
    let dir = tempfile::tempdir().unwrap();
    let text = GOOD.replace("\"idle\"", "\"nonesuch\"").replace(
        "[[daemon]]\nname = \"q\"",
        "[[daemon]]\nmemory = \"4 MB\"\nname = \"q\"",
    );
    let path = common::write_config(&dir, &text);
    let ran = run_to_end(&dir, &["check", "--config", path.to_str().unwrap()]);
    assert_eq!(ran.code, Some(78), "{ran:?}");
    assert_places(&ran.stderr, &["daemon[1].kind", "daemon[1].memory"]);
    assert!(ran.stderr.contains("2 problems"), "{ran:?}");
}

#[test]
fn check_accepts_a_good_config_without_starting_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_config(&dir, GOOD);
    let ran = run_to_end(&dir, &["check", "--config", path.to_str().unwrap()]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert!(ran.stdout.contains("ok (2 daemons, 0 groups)"), "{ran:?}");
    assert!(!dir.path().join("p.out").exists(), "check ran the probe");
}

#[test]
fn syntax_errors_and_missing_files_are_placed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, "[[daemon]]\nname = \"p\"\nkind = \n").unwrap();
    let path = path.to_str().unwrap();
    let ran = run_to_end(&dir, &["run", "--config", path]);
    assert_eq!(ran.code, Some(78), "{ran:?}");
    assert!(
        ran.stderr
            .lines()
            .any(|l| l.starts_with(&format!("{path}:3:")) && l.contains("TOML syntax error")),
        "{ran:?}"
    );

    let missing = dir.path().join("missing.toml");
    let missing = missing.to_str().unwrap();
    let ran = run_to_end(&dir, &["check", "--config", missing]);
    assert_eq!(ran.code, Some(78), "{ran:?}");
    assert_places(&ran.stderr, &[missing]);
}

#[test]
fn a_root_started_with_sigchld_ignored_still_sees_its_daemons_die() {
    use std::os::unix::process::CommandExt;
    // Some launchers leave SIGCHLD ignored, which makes the kernel reap
    // children unseen; the root must restore the default.
    let mut t = Tree::start_with(GOOD, |c| {
        // SAFETY: signal(2) is async-signal-safe, as pre_exec requires.
        unsafe {
            c.pre_exec(|| {
                libc::signal(libc::SIGCHLD, libc::SIG_IGN);
                Ok(())
            });
        }
    });
    let first = t.wait_starts("p", 1)[0];
    send(first.pid, SIGKILL).unwrap();
    let s = t.wait_starts("p", 2);
    assert_ne!(s[1].pid, first.pid);
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
}

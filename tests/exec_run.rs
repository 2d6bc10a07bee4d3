//! Exec'd programs as daemons: their output captured (across restarts,
//! partial lines, the rate limit, under journald), their settings seen
//! from inside, `check` refusing what cannot run, and a setup failure
//! after the fork reported once and retried no faster than the floor.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::{run_to_end, send, Proc, Tree};

/// The pid of daemon `name` while it runs.
fn running_pid(t: &Tree, name: &str) -> Option<i32> {
    let d = t.daemon_status(name)?;
    (d["state"] == "running")
        .then(|| d["pid"].as_i64())??
        .try_into()
        .ok()
}

/// `ctl logs NAME`: stdout and stderr.
fn ctl_logs(t: &Tree, name: &str) -> (String, String) {
    let r = t.ctl_run(&["logs", name]);
    assert_eq!(r.code, Some(0), "ctl logs {name}: {}", r.stderr);
    (r.stdout, r.stderr)
}

/// How `ctl logs` shows a line `text` that `pid` wrote on stdout.
fn shown(pid: i32, text: &str) -> String {
    format!("{:<5} {pid}: {text}", "OUT")
}

#[test]
fn output_lines_survive_twenty_kills() {
    let t = Tree::start(
        r#"
[supervisor]
intensity = 100
[[daemon]]
name = "num"
exec = ["python3", "-u", "-c", """
import os, sys, time
pid = os.getpid()
rec = open(sys.argv[1], 'a', buffering=1)
k = 0
while True:
    k += 1
    line = f'{pid} {k}'
    sys.stdout.write(line + '\\n')
    sys.stdout.flush()
    rec.write(line + '\\n')
    time.sleep(0.005)
""", "@DIR@/written"]
"#,
    );
    let written = |pid: i32| {
        fs::read_to_string(t.path("written"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.split(' ').next() == Some(&pid.to_string()))
            .count()
    };
    let mut last = 0;
    for _ in 0..20 {
        let pid = t.poll("a new incarnation that wrote 3 lines", || {
            running_pid(&t, "num").filter(|&p| p != last && written(p) >= 3)
        });
        send(pid, libc::SIGKILL).expect("kill the daemon");
        last = pid;
    }
    let pid = t.poll("the 21st incarnation", || {
        running_pid(&t, "num").filter(|&p| p != last && written(p) >= 3)
    });
    let all = fs::read_to_string(t.path("written")).unwrap();
    // Every line a process got to record after printing it: in ctl logs,
    // attributed to that process, and in the root's log, tagged.
    let (logs, _) = ctl_logs(&t, "num");
    let log = t.log();
    let mut lines = 0;
    let mut pids = std::collections::BTreeSet::new();
    for line in all.lines() {
        let p: i32 = line.split(' ').next().unwrap().parse().unwrap();
        if p == pid {
            continue; // still running: its newest line may be unread yet
        }
        pids.insert(p);
        lines += 1;
        assert!(
            logs.contains(&format!("{}\n", shown(p, line))),
            "ctl logs lacks {line:?}:\n{logs}"
        );
        assert!(
            log.contains(&format!("num[{p}] stdout: {line}\n")),
            "the root's log lacks {line:?}"
        );
    }
    assert_eq!(pids.len(), 20, "20 killed incarnations wrote lines");
    eprintln!("{lines} lines of 20 killed incarnations, none lost");
}

#[test]
fn partial_line_is_flushed_with_a_marker() {
    let t = Tree::start(
        r#"
[[daemon]]
name = "part"
restart = "temporary"
exec = ["sh", "-c", "echo whole; printf 'no newline here'; sleep 0.1"]
[[daemon]]
name = "other"
exec = ["sleep", "1000"]
"#,
    );
    let line = t.wait_log(&["part[", "stdout: no newline here [no newline"]);
    assert!(line.contains("the process ended mid-line"), "{line}");
    let (logs, _) = ctl_logs(&t, "part");
    let whole = logs.find("whole").expect("the whole line first");
    let part = logs
        .find("no newline here [no newline: the process ended mid-line]")
        .unwrap_or_else(|| panic!("the partial line in ctl logs:\n{logs}"));
    assert!(whole < part, "{logs}");
}

#[test]
fn rate_limit_counts_dropped_lines() {
    let t = Tree::start(
        r#"
[[daemon]]
name = "loud"
exec = ["python3", "-c", """
import sys, time
sys.stdout.write(''.join(f'line {k}\\n' for k in range(10000)))
sys.stdout.flush()
time.sleep(1.5)
print('after', flush=True)
time.sleep(1000)
"""]
"#,
    );
    t.wait_log(&["loud[", "stdout: after"]);
    // The count is said whenever the bucket lets a line through again.
    let said = t.log_lines(&["loud[", "lines dropped (more than 1000 lines a second)"]);
    let n: usize = said
        .iter()
        .map(|l| {
            l.split("[forkroot: ")
                .nth(1)
                .and_then(|s| s.split(' ').next())
                .and_then(|s| s.parse::<usize>().ok())
                .unwrap_or_else(|| panic!("a count in {l:?}"))
        })
        .sum();
    let passed = t.log_lines(&["loud[", "stdout: line "]).len();
    assert!(n > 0 && passed > 0, "passed {passed}, dropped {n}");
    assert_eq!(passed + n, 10000, "every line either logged or counted");
    let (logs, err) = ctl_logs(&t, "loud");
    assert!(
        err.contains(&format!("({n} output lines dropped by the rate limit")),
        "{err}"
    );
    assert!(logs.contains("lines dropped"), "{logs}");
    eprintln!("10000 lines at once: {passed} logged, {n} dropped and counted");
}

/// The uid and primary gid of `user`, from the password database.
fn passwd(user: &str) -> (u32, u32) {
    let text = fs::read_to_string("/etc/passwd").unwrap();
    let f: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with(&format!("{user}:")))
        .expect("the user exists")
        .split(':')
        .collect();
    (f[2].parse().unwrap(), f[3].parse().unwrap())
}

#[test]
fn exec_settings_are_seen_from_inside() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let t = Tree::start(
        r#"
[[daemon]]
name = "inside"
exec = ["sh", "-c", "echo uid=$(id -u) gid=$(id -g) groups=$(id -G); echo cwd=$(pwd); echo umask=$(umask); echo foo=$FOO home=${HOME-unset}; grep -E 'open files|core file' /proc/self/limits | tr -s ' '; grep NoNewPrivs /proc/self/status; read x || echo stdin=eof; exec sleep 1000"]
user = "nobody"
cwd = "/tmp"
umask = "0027"
env = { FOO = "bar baz", PATH = "/usr/bin:/bin" }
env_clear = true
rlimits = { nofile = 123, core = [0, 1000] }
no_new_privs = true
"#,
    );
    if !root {
        // Without the privilege to change user, the start fails at its
        // first credential step, said once with the stage and errno.
        t.wait_log(&["daemon \"inside\": setup failed at setgroups: Operation not permitted"]);
        return;
    }
    t.wait_log(&["inside[", "stdin=eof"]);
    let (logs, _) = ctl_logs(&t, "inside");
    let (uid, gid) = passwd("nobody");
    for want in [
        format!("uid={uid} gid={gid} groups={gid}"),
        "cwd=/tmp".to_owned(),
        "umask=0027".to_owned(),
        "foo=bar baz home=unset".to_owned(),
        "Max core file size 0 1000 bytes".to_owned(),
        "Max open files 123 123 files".to_owned(),
        "NoNewPrivs:\\t1".to_owned(),
        "stdin=eof".to_owned(),
    ] {
        assert!(logs.contains(&want), "{want:?} not in:\n{logs}");
    }
}

#[test]
fn check_refuses_what_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    let noexec = dir.path().join("noexec.sh");
    fs::write(&noexec, "#!/bin/sh\n").unwrap();
    fs::set_permissions(&noexec, fs::Permissions::from_mode(0o644)).unwrap();
    let config = format!(
        r#"
[[daemon]]
name = "a"
exec = ["/nonexistent/prog"]
[[daemon]]
name = "b"
exec = ["no-such-program-anywhere"]
[[daemon]]
name = "c"
exec = ["{}"]
[[daemon]]
name = "d"
exec = ["sh"]
user = "no-such-user-here"
unix_group = "no-such-group-here"
rlimits = {{ nofiles = 5, core = [9, 1] }}
umask = "0999"
cwd = "/nonexistent/dir"
[[daemon]]
name = "e"
kind = "idle"
user = "nobody"
[[daemon]]
name = "f"
exec = ["sleep", "1"]
env = {{ WATCHDOG_USEC = "1", FORKROOT_NAME = "g", LISTEN_FDS = "1", OWN = "fine", LISTEN_ADDR = "fine", FORKROOT_LOG = "debug" }}
"#,
        noexec.display()
    );
    let path = common::write_config(&dir, &config);
    let r = run_to_end(&dir, &["check", "--config", path.to_str().unwrap()]);
    assert_eq!(r.code, Some(78), "{}", r.stderr);
    for want in [
        "daemon[0].exec[0]: /nonexistent/prog: No such file or directory",
        "daemon[1].exec[0]: \"no-such-program-anywhere\" is not an executable file in PATH",
        "not executable (no x permission)",
        "daemon[3].user: no user named \"no-such-user-here\" on this host",
        "daemon[3].unix_group: no group named \"no-such-group-here\" on this host",
        "daemon[3].rlimits.nofiles: unknown limit, did you mean \"nofile\"?",
        "daemon[3].rlimits.core: the soft limit is above the hard one",
        "daemon[3].umask: \"0999\" is not a mask",
        "daemon[3].cwd: /nonexistent/dir is not a directory on this host",
        "daemon[4].user: only an exec'd program takes this",
        "daemon[5].env.WATCHDOG_USEC: forkroot sets this variable itself",
        "daemon[5].env.FORKROOT_NAME: forkroot sets this variable itself",
        "daemon[5].env.LISTEN_FDS: forkroot sets this variable itself",
    ] {
        assert!(r.stderr.contains(want), "{want:?} not in:\n{}", r.stderr);
    }
    // The program's own names pass, even with a prefix the root uses.
    for fine in ["env.OWN", "env.LISTEN_ADDR", "env.FORKROOT_LOG"] {
        assert!(!r.stderr.contains(fine), "{fine}: {}", r.stderr);
    }
    // A program found in PATH passes, and so does a real user.
    let ok = "[[daemon]]\nname = \"ok\"\nexec = [\"sleep\", \"1\"]\nuser = \"nobody\"\n\
              rlimits = { nofile = \"infinity\" }\n";
    let path = common::write_config(&dir, ok);
    let r = run_to_end(&dir, &["check", "--config", path.to_str().unwrap()]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
}

/// Seconds of the day of a root log line's RFC 3339 timestamp.
fn seconds(line: &str) -> f64 {
    let time = line
        .split('T')
        .nth(1)
        .and_then(|s| s.split('Z').next())
        .unwrap();
    let f: Vec<f64> = time.split(':').map(|x| x.parse().unwrap()).collect();
    f[0] * 3600.0 + f[1] * 60.0 + f[2]
}

#[test]
fn setup_failure_after_fork_is_said_once_and_retried_at_the_floor() {
    let bin = tempfile::tempdir().unwrap();
    let prog = bin.path().join("prog.sh");
    fs::write(&prog, "#!/bin/sh\necho up\nexec sleep 1000\n").unwrap();
    fs::set_permissions(&prog, fs::Permissions::from_mode(0o755)).unwrap();
    let t = Tree::start(&format!(
        "[supervisor]\nintensity = 20\n[[daemon]]\nname = \"web\"\nexec = [\"{}\"]\n",
        prog.display()
    ));
    let first = t.poll("web running", || running_pid(&t, "web"));
    // The file stops being executable after check passed it.
    fs::set_permissions(&prog, fs::Permissions::from_mode(0o644)).unwrap();
    send(first, libc::SIGKILL).unwrap();
    let said = "daemon \"web\": setup failed at exec: Permission denied";
    let failures = t.poll("three failed starts", || {
        let l = t.log_lines(&[said]);
        (l.len() >= 3).then_some(l)
    });
    for pair in failures.windows(2) {
        let gap = seconds(&pair[1]) - seconds(&pair[0]);
        assert!(gap >= 0.99, "retried after {gap}s, under the 1s floor");
    }
    // Once each: no crash report repeats it.
    assert!(
        t.log_lines(&["web", "failed to start (exec"]).is_empty(),
        "{}",
        t.log()
    );
    fs::set_permissions(&prog, fs::Permissions::from_mode(0o755)).unwrap();
    let started = Instant::now();
    let back = t.poll("web running again", || {
        running_pid(&t, "web").filter(|&p| p != first)
    });
    assert!(back > 0 && started.elapsed() < Duration::from_secs(10));
    t.wait_log(&[&format!("web[{back}] stdout: up")]);
}

#[test]
fn under_journald_lines_carry_priorities_and_no_timestamps() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_config(
        &dir,
        "[[daemon]]\nname = \"j\"\nexec = [\"sh\", \"-c\", \"echo to-out; echo to-err >&2; exec sleep 1000\"]\n",
    );
    let log_path = dir.path().join("journal.log");
    let log = fs::File::create(&log_path).unwrap();
    let meta = log.metadata().unwrap();
    let mut root = common::command(&dir)
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .args(["run", "--config", path.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    // A watchdog of our own: this root is not a common::Tree.
    let deadline = Instant::now() + common::DEADLINE;
    let text = loop {
        let text = fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("to-err") && text.contains("to-out") {
            break text;
        }
        if Instant::now() > deadline {
            let _ = root.kill();
            panic!("no output under journald:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    send(root.id() as i32, libc::SIGTERM).unwrap();
    let status = loop {
        if let Some(s) = root.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = root.kill();
            panic!("the root did not stop");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0));
    let pid = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("<6>j[")?
                .split(']')
                .next()?
                .parse::<i32>()
                .ok()
        })
        .unwrap_or_else(|| panic!("a stdout line at priority 6:\n{text}"));
    assert!(text.contains(&format!("<6>j[{pid}]: to-out\n")), "{text}");
    assert!(text.contains(&format!("<4>j[{pid}]: to-err\n")), "{text}");
    // Every line of the root's own carries a priority and no timestamp.
    for line in text.lines() {
        assert!(line.starts_with('<'), "no priority: {line:?}");
        assert!(!line.contains("Z "), "a timestamp: {line:?}");
    }
    assert!(text.contains("<6>started"), "{text}");
}

#[test]
fn a_daemon_added_by_reload_has_its_output_captured() {
    let t = Tree::start("[[daemon]]\nname = \"first\"\nexec = [\"sleep\", \"1000\"]\n");
    t.poll("first running", || running_pid(&t, "first"));
    common::write_config(
        &t.dir,
        "[[daemon]]\nname = \"first\"\nexec = [\"sleep\", \"1000\"]\n\
         [[daemon]]\nname = \"added\"\nexec = [\"sh\", \"-c\", \"echo from-added; exec sleep 1000\"]\n",
    );
    let r = t.ctl_run(&["reload"]);
    assert_eq!(r.code, Some(0), "ctl reload: {}{}", r.stdout, r.stderr);
    let pid = t.poll("added running", || running_pid(&t, "added"));
    t.wait_log(&[&format!("added[{pid}] stdout: from-added")]);
    let (logs, _) = ctl_logs(&t, "added");
    assert!(logs.contains(&shown(pid, "from-added")), "{logs}");
}

/// An exec'd program starts in a child that shares the root's memory until
/// it execs (no copy of the root): thirty restarts later the root is as it
/// was — its command line (`ps`), its name, its answers — and every
/// incarnation ran the program with the root as its parent.
#[test]
fn exec_restarts_leave_the_root_as_it_was() {
    let t = Tree::start(
        r#"
[supervisor]
intensity = 100
[[daemon]]
name = "sleeper"
exec = ["/bin/sleep", "1000"]
"#,
    );
    let cmdline = || fs::read(format!("/proc/{}/cmdline", t.pid)).unwrap();
    t.poll("the first sleeper", || running_pid(&t, "sleeper"));
    let before = (cmdline(), Proc::read(t.pid).unwrap().comm);
    assert!(!before.0.is_empty());
    let mut last = 0;
    for _ in 0..30 {
        let pid = t.poll("a new sleeper", || {
            running_pid(&t, "sleeper").filter(|&p| p != last)
        });
        let p = t.poll("the program exec'd", || {
            Proc::read(pid).filter(|p| p.comm == "sleep")
        });
        assert_eq!(p.ppid, t.pid, "the root is its parent");
        send(pid, libc::SIGKILL).expect("kill the daemon");
        last = pid;
    }
    t.poll("the 31st sleeper", || {
        running_pid(&t, "sleeper").filter(|&p| p != last)
    });
    assert_eq!((cmdline(), Proc::read(t.pid).unwrap().comm), before);
    let status = t.ctl_run(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status["root"]["pid"], t.pid, "{status}");
    assert_eq!(t.daemon_status("sleeper").unwrap()["restarts"], 30);
}

#[test]
fn the_roots_environment_and_env_reach_every_incarnation() {
    // The root's environment is read once; every start must still get it
    // whole, with `env` replacing what it names (once, not twice) and the
    // variables forkroot sets itself not copied from the root's.
    let t = Tree::start_with(
        r#"
[[daemon]]
name = "envy"
exec = ["sh", "-c", "echo inherit=$FR_TEST_INHERIT override=$FR_TEST_OVERRIDE count=$(env | grep -c '^FR_TEST_OVERRIDE=') listen=${LISTEN_FDS-unset} restarts=$FORKROOT_RESTARTS; sleep 0.2; exit 1"]
env = { FR_TEST_OVERRIDE = "daemon" }
"#,
        |c| {
            c.env("FR_TEST_INHERIT", "yes")
                .env("FR_TEST_OVERRIDE", "root")
                .env("LISTEN_FDS", "7")
                .env("FORKROOT_RESTARTS", "99");
        },
    );
    for n in 0..3 {
        t.wait_log(&[
            "envy[",
            &format!("inherit=yes override=daemon count=1 listen=unset restarts={n}"),
        ]);
    }
}

//! The control socket, through the real binary against a real root: the
//! typed, versioned protocol and what `ctl` prints, clients that hold
//! connections open, daemon-written text in `ctl logs`, who may connect,
//! `--wait`, `health`, `--config` and ctl's exit codes.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};

use common::{run_to_end, Tree};
use libc::SIGTERM;
use serde_json::Value;

/// A probe daemon table reporting to `NAME.out`, with extra keys and args.
fn probe(name: &str, keys: &str, args: &str) -> String {
    format!(
        "[[daemon]]\nname = \"{name}\"\nkind = \"probe\"\nmemory = \"64KiB\"\n{keys}\n\
         [daemon.args]\nout = \"@DIR@/{name}.out\"\n{args}\n"
    )
}

/// Waits until every daemon of `ctl status --json` is running.
fn wait_running(t: &Tree, names: &[&str]) {
    t.poll(&format!("{names:?} running"), || {
        let all = t.daemons_status()?;
        names
            .iter()
            .all(|n| {
                all.iter()
                    .any(|d| d["name"] == *n && d["state"] == "running")
            })
            .then_some(())
    });
}

/// Sends `bytes` on a fresh connection to the root and returns its reply,
/// parsed (a read timeout keeps a silent root from hanging the test).
fn raw(t: &Tree, bytes: &[u8]) -> Value {
    let mut s = UnixStream::connect(t.socket()).expect("connect");
    s.set_read_timeout(Some(common::DEADLINE)).unwrap();
    s.write_all(bytes).expect("send");
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).expect("reply");
    serde_json::from_slice(&reply).unwrap_or_else(|e| panic!("{e}: {reply:?}"))
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    k.sort_unstable();
    k
}

#[test]
fn status_tree_metrics_and_json_keep_their_shape() {
    let config = format!(
        "[[group]]\nname = \"g\"\nstrategy = \"one_for_all\"\nintensity = 3\nperiod = \"5s\"\n\n{}{}",
        probe("alpha", "group = \"g\"", ""),
        "[[daemon]]\nname = \"beta\"\nkind = \"idle\"\nmemory = \"64KiB\"\n"
    );
    let mut t = Tree::start(&config);
    wait_running(&t, &["alpha", "beta"]);
    // `running` is the root's word once the child is set up; its first
    // line may come a moment later.
    let alpha_pid = t.wait_starts("alpha", 1)[0].pid;

    let table = t.ctl_run(&["status"]);
    assert_eq!(table.code, Some(0), "{table:?}");
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(
        lines[0].starts_with(&format!("root pid {} up ", t.pid)),
        "{lines:?}"
    );
    assert!(lines[0].ends_with("(supervising)"), "{lines:?}");
    assert!(lines[1].starts_with("NAME") && lines[1].ends_with("LAST EXIT"));
    let alpha: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(alpha[..3], ["alpha", "running", &alpha_pid.to_string()]);
    assert_eq!(alpha[4], "0", "restarts: {alpha:?}");
    assert_eq!(alpha.last(), Some(&"-"), "no last exit yet: {alpha:?}");
    assert!(lines[3].starts_with("beta "), "{lines:?}");

    let json = t.ctl_run(&["status", "--json"]);
    assert_eq!(json.code, Some(0), "{json:?}");
    let v: Value = serde_json::from_str(&json.stdout).expect("status --json is JSON");
    assert_eq!(keys(&v), ["daemons", "ok", "root"]);
    assert_eq!(v["ok"], true);
    assert_eq!(
        keys(&v["root"]),
        [
            "containment",
            "mode",
            "pid",
            "restarts_in_period",
            "uptime_ms",
            "zygote_pid"
        ]
    );
    // The zygote the root reports is its child of that title, and the
    // table says so under it.
    let zygote = common::zygote_of(t.pid).expect("a zygote");
    assert_eq!(v["root"]["zygote_pid"], zygote.pid);
    assert!(
        lines.contains(&format!("zygote: pid {}", zygote.pid).as_str()),
        "{lines:?}"
    );
    let containment = v["root"]["containment"].as_str().unwrap();
    assert!(
        containment.starts_with("cgroup /") || containment.starts_with("process-group ("),
        "{containment}"
    );
    assert_eq!(v["root"]["pid"], t.pid);
    assert_eq!(v["root"]["mode"], "supervising");
    let d = &v["daemons"][0];
    assert_eq!(
        keys(d),
        [
            "alloc",
            "cause",
            "fault",
            "group",
            "heartbeat_age_ms",
            "last_exit",
            "last_exit_uptime_ms",
            "memory",
            "name",
            "pid",
            "program",
            "region_bytes",
            "restarts",
            "standby_pid",
            "starts_by_cause",
            "state",
            "status",
            "uptime_ms"
        ]
    );
    assert_eq!(d["cause"], "start");
    assert_eq!(d["starts_by_cause"], serde_json::json!({ "start": 1 }));
    assert_eq!(d["program"], serde_json::json!({ "kind": "probe" }));
    assert_eq!(d["group"], "g");
    assert_eq!(d["pid"], alpha_pid);
    assert_eq!(d["last_exit"], Value::Null);
    assert_eq!(d["memory"], 64 * 1024);
    assert_eq!(v["daemons"][1]["group"], "root");

    let tree = t.ctl_run(&["tree"]);
    assert_eq!(tree.code, Some(0), "{tree:?}");
    assert_eq!(
        tree.stdout,
        format!(
            "root/ [running] one_for_one, intensity 5 per 10s, 0 restarts in period\n  \
             g/ [running] one_for_all, intensity 3 per 5s, permanent restart, restarted 0, \
             0 restarts in period\n    \
             alpha [running pid {alpha_pid}] 0 restarts\n  beta [running pid {}] 0 restarts\n",
            v["daemons"][1]["pid"]
        )
    );

    let metrics = t.ctl_run(&["metrics"]);
    assert_eq!(metrics.code, Some(0), "{metrics:?}");
    assert!(
        metrics.stdout.contains("forkroot_up{daemon=\"alpha\"} 1\n"),
        "{}",
        metrics.stdout
    );
    assert!(metrics
        .stdout
        .contains("forkroot_region_bytes{daemon=\"beta\"} "));

    let stop = t.ctl_run(&["stop", "beta"]);
    assert_eq!(
        (stop.code, stop.stdout.as_str()),
        (Some(0), "beta: stopping\n")
    );

    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
}

#[test]
fn requests_of_another_version_or_malformed_get_a_clear_error() {
    let mut t = Tree::start(&probe("alpha", "", ""));
    wait_running(&t, &["alpha"]);

    // A ctl from before versions sends a bare line.
    let old = raw(&t, b"status\n");
    assert_eq!(old["ok"], false, "{old}");
    assert_eq!(old["kind"], "version", "{old}");
    assert!(
        old["error"]
            .as_str()
            .unwrap()
            .contains("older forkroot ctl"),
        "{old}"
    );
    let future = raw(&t, b"{\"v\":2,\"cmd\":\"status\"}\n");
    assert_eq!(future["kind"], "version", "{future}");
    assert!(
        future["error"].as_str().unwrap().contains("protocol 2"),
        "{future}"
    );
    let unknown = raw(&t, b"{\"v\":1,\"cmd\":\"reboot\"}\n");
    assert_eq!(unknown["kind"], "bad_request", "{unknown}");
    assert!(
        unknown["error"].as_str().unwrap().contains("reboot"),
        "{unknown}"
    );
    let missing = raw(&t, b"{\"v\":1,\"cmd\":\"stop\"}\n");
    assert!(
        missing["error"].as_str().unwrap().contains("name"),
        "{missing}"
    );
    let garbage = raw(&t, b"{\"v\":1,\xff\n");
    assert_eq!(garbage["kind"], "bad_request", "{garbage}");
    let long = raw(&t, &vec![b'{'; 8192]);
    assert!(
        long["error"].as_str().unwrap().contains("longer than 4096"),
        "{long}"
    );
    let nosuch = raw(&t, b"{\"v\":1,\"cmd\":\"restart\",\"name\":\"nosuch\"}\n");
    assert_eq!(nosuch["kind"], "failed", "{nosuch}");
    assert_eq!(nosuch["error"], "no daemon named \"nosuch\"");

    // None of that disturbed the root.
    let ok = raw(&t, b"{\"v\":1,\"cmd\":\"status\"}\n");
    assert_eq!((ok["v"].clone(), ok["ok"].clone()), (1.into(), true.into()));
    assert_eq!(ok["daemons"][0]["state"], "running");

    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
}

#[test]
fn ctl_against_a_root_of_the_unversioned_protocol_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.sock");
    let listener = UnixListener::bind(&path).unwrap();
    // An old root: reads a line, answers without a version.
    let old_root = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(common::DEADLINE)).unwrap();
        let mut line = Vec::new();
        let _ = s.read_to_end(&mut line);
        s.write_all(b"{\"ok\":false,\"error\":\"unknown request\"}\n")
            .unwrap();
        line
    });
    let r = run_to_end(&dir, &["ctl", "--socket", path.to_str().unwrap(), "status"]);
    let sent = old_root.join().unwrap();
    assert!(sent.starts_with(b"{"), "ctl sends JSON: {sent:?}");
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("unversioned control protocol"), "{r:?}");
}

#[test]
fn ctl_exit_codes_and_config_file() {
    let mut t = Tree::start(&probe("alpha", "", ""));
    wait_running(&t, &["alpha"]);

    // 1: the root refused.
    let nosuch = t.ctl_run(&["restart", "nosuch"]);
    assert_eq!(nosuch.code, Some(1), "{nosuch:?}");
    assert!(
        nosuch.stderr.contains("no daemon named \"nosuch\""),
        "{nosuch:?}"
    );
    // 2: usage.
    let usage = t.ctl_run(&["restart"]);
    assert_eq!(usage.code, Some(2), "{usage:?}");
    let config = t.path("forkroot.toml");
    let both = run_to_end(
        &t.dir,
        &[
            "ctl",
            "--socket",
            "x",
            "--config",
            config.to_str().unwrap(),
            "status",
        ],
    );
    assert_eq!(both.code, Some(2), "{both:?}");
    let missing = run_to_end(&t.dir, &["ctl", "--config", "/nonexistent.toml", "status"]);
    assert_eq!(missing.code, Some(2), "{missing:?}");
    assert!(missing.stderr.contains("/nonexistent.toml"), "{missing:?}");
    // 69: nobody there.
    let gone = run_to_end(&t.dir, &["ctl", "--socket", "/nonexistent.sock", "status"]);
    assert_eq!(gone.code, Some(69), "{gone:?}");
    assert!(gone
        .stderr
        .contains("cannot reach the root at /nonexistent.sock"));
    // The exit codes are in --help.
    let help = run_to_end(&t.dir, &["ctl", "--help"]);
    assert!(
        help.stdout.contains("69  the root cannot be reached"),
        "{help:?}"
    );

    // --config takes the socket from the file the root runs on.
    let via_config = run_to_end(
        &t.dir,
        &[
            "ctl",
            "--config",
            config.to_str().unwrap(),
            "status",
            "--json",
        ],
    );
    assert_eq!(via_config.code, Some(0), "{via_config:?}");
    let v: Value = serde_json::from_str(&via_config.stdout).unwrap();
    assert_eq!(v["root"]["pid"], t.pid);

    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
    // The root is gone: its socket with it.
    let after = t.ctl_run(&["status"]);
    assert_eq!(after.code, Some(69), "{after:?}");
}

/// The value of one line of `ctl metrics` (`NAME{LABELS} VALUE`).
fn metric(t: &Tree, series: &str) -> u64 {
    let m = t.ctl_run(&["metrics"]);
    assert_eq!(m.code, Some(0), "{m:?}");
    m.stdout
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{}", m.stdout))
}

#[test]
fn two_hundred_idle_connections_do_not_lock_ctl_out() {
    let mut t = Tree::start(&probe("alpha", "", ""));
    wait_running(&t, &["alpha"]);
    let idle: Vec<UnixStream> = (0..200)
        .map(|i| UnixStream::connect(t.socket()).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();

    // Held open, silent: each new connection makes room by closing the
    // oldest, so ctl gets in at once, without waiting for a timeout.
    let status = t.ctl_run(&["status"]);
    assert_eq!(status.code, Some(0), "{status:?}");
    assert!(status.stdout.contains("alpha "), "{status:?}");
    // 200 idle ones and ctl's status in a cap of 64: at least 137 evicted.
    let evicted = metric(&t, "forkroot_control_closed_total{why=\"evicted\"}");
    assert!(evicted >= 137, "evicted {evicted}");
    // The first idle connections were closed by the root: EOF (after a
    // reply saying why), not a hang.
    let mut first = &idle[0];
    first.set_read_timeout(Some(common::DEADLINE)).unwrap();
    let mut reply = String::new();
    first
        .read_to_string(&mut reply)
        .expect("the evicted connection is closed");
    assert!(
        reply.contains("closed to make room for a newer connection"),
        "{reply:?}"
    );

    let down = t.ctl_run(&["shutdown"]);
    assert_eq!(down.code, Some(0), "{down:?}");
    assert_eq!(t.wait_code(), 0);
    drop(idle);
}

#[test]
fn a_silent_or_half_sent_request_is_closed_at_its_deadline() {
    let mut t = Tree::start(&probe("alpha", "", ""));
    wait_running(&t, &["alpha"]);
    let silent = UnixStream::connect(t.socket()).unwrap();
    let mut half = UnixStream::connect(t.socket()).unwrap();
    half.write_all(b"{\"v\":1,\"cmd\":").unwrap();
    for mut s in [&silent, &half] {
        // The root's timer closes them (5s); the test's read timeout only
        // keeps a broken root from hanging it.
        s.set_read_timeout(Some(common::DEADLINE)).unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply)
            .expect("the root closes the connection at its deadline");
        let v: Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["error"], "no complete request within 5s; closed");
    }
    assert_eq!(
        metric(&t, "forkroot_control_closed_total{why=\"timeout\"}"),
        2
    );
    assert_eq!(
        metric(&t, "forkroot_control_closed_total{why=\"evicted\"}"),
        0
    );
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
}

#[test]
fn ctl_logs_shows_daemon_text_escaped_one_record_per_line() {
    // What a daemon (or whoever its text comes from) may write: colours, a
    // terminal title, a screen clear, and a forged record of another daemon.
    let text = r#"\u001b[31mred\u001b[0m \u001b]0;owned\u0007\u001b[2J\r\nERROR crashed daemon=other pid=1 \u009b1m \u202e"#;
    let mut t = Tree::start(&probe("alpha", "", &format!("log = \"{text}\"")));
    t.poll("the probe logged", || {
        t.out("alpha").iter().any(|l| l == "logged").then_some(())
    });

    let records = raw(&t, b"{\"v\":1,\"cmd\":\"logs\",\"name\":\"alpha\"}\n");
    let records = records["records"].as_array().expect("records").clone();
    let forged = records
        .iter()
        .find(|r| r["text"].as_str().unwrap().contains("ERROR crashed"))
        .expect("the record is in the flight log, verbatim");
    assert!(forged["text"].as_str().unwrap().contains("\u{1b}[31m"));

    let logs = t.ctl_run(&["logs", "alpha"]);
    assert_eq!(logs.code, Some(0), "{logs:?}");
    let lines: Vec<&str> = logs.stdout.lines().collect();
    assert_eq!(lines.len(), records.len(), "one line per record: {lines:?}");
    assert!(
        !logs.stdout.chars().any(|c| c.is_control() && c != '\n'),
        "no control character reaches the terminal: {:?}",
        logs.stdout
    );
    assert!(
        !logs.stdout.contains(['\u{9b}', '\u{202e}']),
        "{:?}",
        logs.stdout
    );
    assert!(
        lines.iter().all(|l| !l.starts_with("ERROR")),
        "no line poses as another record: {lines:?}"
    );
    let line = lines
        .iter()
        .find(|l| l.contains("crashed"))
        .expect("the record's line");
    assert!(
        line.ends_with(
            r"\x1b[31mred\x1b[0m \x1b]0;owned\x07\x1b[2J\r\nERROR crashed daemon=other pid=1 \u{9b}1m \u{202e}"
        ),
        "{line}"
    );
    assert!(line.contains(" WARN  "), "{line}");
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
}

/// Runs `forkroot ctl --socket SOCKET ARGS` as `uid` with group `gid` and
/// supplementary `groups`.
fn ctl_as(t: &Tree, uid: u32, gid: u32, groups: &[u32], args: &[&str]) -> common::Ran {
    use std::os::unix::process::CommandExt;
    let socket = t.socket();
    let mut all = vec!["ctl", "--socket", socket.to_str().unwrap()];
    all.extend_from_slice(args);
    let groups: Vec<libc::gid_t> = groups.to_vec();
    common::run_to_end_with(&t.dir, &all, move |c| {
        // SAFETY: the closure runs in the forked child before exec and
        // only makes three system calls (async-signal-safe), allocating
        // nothing: `groups` was built before the fork.
        unsafe {
            c.pre_exec(move || {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    })
}

/// Lets every user reach (not necessarily connect to) the tree's socket.
fn open_dir(t: &Tree) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(t.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn mode_and_group(path: &std::path::Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    (m.mode() & 0o777, m.gid())
}

const NOBODY: u32 = 65534;
const NOGROUP: u32 = 65534;
/// `users`, a group of every Debian system, which `nobody` is not in.
const USERS: u32 = 100;

#[test]
fn another_uid_is_refused_by_its_credentials_and_the_control_group_let_in() {
    if forkroot::sys::cred::geteuid() != 0 {
        // Only root can run a process as another user: say so instead of
        // passing quietly.
        panic!("this test needs to run as root (it runs ctl as nobody)");
    }
    // Without control_group: 0600, and a peer that gets past the file's
    // mode anyway (here: the mode opened by hand) is refused by its uid.
    let mut t = Tree::start(&probe("alpha", "", ""));
    wait_running(&t, &["alpha"]);
    open_dir(&t);
    assert_eq!(mode_and_group(&t.socket()).0, 0o600);
    let blocked = ctl_as(&t, NOBODY, NOGROUP, &[], &["status"]);
    assert_eq!(
        blocked.code,
        Some(69),
        "the file's mode stops it: {blocked:?}"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let all = std::fs::Permissions::from_mode(0o666);
        std::fs::set_permissions(t.socket(), all).unwrap();
    }
    let refused = ctl_as(&t, NOBODY, NOGROUP, &[], &["shutdown"]);
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("permission denied: uid 65534 may not use this control socket"),
        "{refused:?}"
    );
    t.wait_log(&["control connection refused", "uid=65534"]);
    let status = t.ctl_run(&["status"]);
    assert_eq!(status.code, Some(0), "the root is still up: {status:?}");
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);

    // With control_group = "users": 0660 and of that group; a member (as a
    // supplementary group, or as its own group) is let in, nobody else.
    let mut t = Tree::start(&format!(
        "[root]\ncontrol_group = \"users\"\n\n{}",
        probe("alpha", "", "")
    ));
    wait_running(&t, &["alpha"]);
    open_dir(&t);
    assert_eq!(mode_and_group(&t.socket()), (0o660, USERS));
    let member = ctl_as(&t, NOBODY, NOGROUP, &[USERS], &["status", "--json"]);
    assert_eq!(member.code, Some(0), "{member:?}");
    let v: Value = serde_json::from_str(&member.stdout).unwrap();
    assert_eq!(v["daemons"][0]["state"], "running");
    let primary = ctl_as(&t, NOBODY, USERS, &[], &["restart", "alpha", "--wait"]);
    assert_eq!(primary.code, Some(0), "{primary:?}");
    t.wait_starts("alpha", 2);
    let outsider = ctl_as(&t, NOBODY, NOGROUP, &[], &["status"]);
    assert_eq!(outsider.code, Some(69), "the file's mode: {outsider:?}");
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
}

/// Runs `forkroot COMMAND --config FILE` to its end on a config of one
/// probe `name` with `root` lines in its `[root]`; returns the temp dir too.
fn once(command: &str, root: &str, name: &str) -> (tempfile::TempDir, common::Ran) {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("[root]\n{root}\n\n{}", probe(name, "", ""));
    let path = common::write_config(&dir, &config);
    let r = run_to_end(&dir, &[command, "--config", path.to_str().unwrap()]);
    (dir, r)
}

#[test]
fn a_control_group_that_does_not_exist_is_a_config_error() {
    let (_dir, r) = once("check", "control_group = \"no-such-group-here\"", "alpha");
    assert_eq!(r.code, Some(78), "{r:?}");
    assert!(
        r.stderr
            .contains("root.control_group: no group named \"no-such-group-here\" on this host"),
        "{r:?}"
    );
}

#[test]
fn a_socket_in_use_and_an_unwritable_directory_both_stop_the_start_with_78() {
    let mut t = Tree::start(&probe("alpha", "", ""));
    wait_running(&t, &["alpha"]);
    // A second root on the same config: the socket is taken.
    let second = run_to_end(
        &t.dir,
        &["run", "--config", t.path("forkroot.toml").to_str().unwrap()],
    );
    assert_eq!(second.code, Some(78), "{second:?}");
    assert!(
        second
            .stderr
            .contains("root.control: cannot create the control socket")
            && second.stderr.contains("another root is listening on"),
        "{second:?}"
    );
    // A directory that is not there (or not writable): the same.
    let (dir, nowhere) = once("run", "control = \"/nonexistent/dir/ctl.sock\"", "beta");
    assert_eq!(nowhere.code, Some(78), "{nowhere:?}");
    assert!(
        nowhere
            .stderr
            .contains("root.control: cannot create the control socket: /nonexistent/dir/ctl.sock:"),
        "{nowhere:?}"
    );
    assert!(!dir.path().join("beta.out").exists(), "nothing was started");
    // The first root was not disturbed.
    assert_eq!(t.ctl_run(&["status"]).code, Some(0));
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
}

#[test]
fn the_default_socket_of_uid_0_ignores_xdg_runtime_dir() {
    let dir = tempfile::tempdir().unwrap();
    // `command` sets XDG_RUNTIME_DIR to the temp dir.
    let r = run_to_end(&dir, &["ctl", "status"]);
    if forkroot::sys::cred::geteuid() == 0 {
        if std::path::Path::new("/run/forkroot.sock").exists() {
            assert_ne!(r.code, Some(2), "{r:?}");
        } else {
            assert_eq!(r.code, Some(69), "{r:?}");
            assert!(r.stderr.contains("at /run/forkroot.sock:"), "{r:?}");
        }
    } else {
        assert_eq!(r.code, Some(69), "{r:?}");
        let at = format!("at {}/forkroot.sock:", dir.path().display());
        assert!(r.stderr.contains(&at), "{r:?}");
    }
}

#[test]
fn wait_returns_once_the_daemon_is_running_again_or_stopped() {
    let config = format!(
        "[root]\nstop_timeout = \"5s\"\n\n{}\
         [[daemon]]\nname = \"stubborn\"\nexec = [\"/bin/sh\", \"-c\", \"trap '' TERM; while :; do sleep 5; done\"]\nmemory = \"64KiB\"\n",
        probe("alpha", "", "")
    );
    let mut t = Tree::start(&config);
    wait_running(&t, &["alpha", "stubborn"]);
    let first = t.wait_starts("alpha", 1)[0].pid;

    let restart = t.ctl_run(&["restart", "alpha", "--wait"]);
    assert_eq!(
        (restart.code, restart.stdout.as_str()),
        (Some(0), "alpha: running\n"),
        "{restart:?}"
    );
    // Done means done: the new process is the one running, right now.
    let d = t.daemon_status("alpha").unwrap();
    assert_eq!(d["state"], "running");
    assert_ne!(d["pid"], first);
    // The process running is the second to start (its first line may
    // follow `running` by a moment).
    assert_eq!(t.wait_starts("alpha", 2)[1].pid, d["pid"]);

    let stop = t.ctl_run(&["stop", "alpha", "--wait"]);
    assert_eq!(
        (stop.code, stop.stdout.as_str()),
        (Some(0), "alpha: stopped\n")
    );
    assert_eq!(t.daemon_status("alpha").unwrap()["state"], "stopped");
    let not_ready = t.ctl_run(&["health", "--ready"]);
    assert_eq!(
        not_ready.code,
        Some(0),
        "stopped on purpose is ready: {not_ready:?}"
    );

    let start = t.ctl_run(&["start", "alpha", "--wait", "--timeout", "5s"]);
    assert_eq!(
        (start.code, start.stdout.as_str()),
        (Some(0), "alpha: running\n")
    );
    assert_eq!(t.wait_starts("alpha", 3).len(), 3);

    // A daemon that ignores SIGTERM is still stopping when the wait ends.
    let stuck = t.ctl_run(&["stop", "stubborn", "--wait", "--timeout", "300ms"]);
    assert_eq!(stuck.code, Some(1), "{stuck:?}");
    assert!(
        stuck
            .stderr
            .contains("stubborn is still stopping after 300ms (wanted stopped"),
        "{stuck:?}"
    );
    let health = t.ctl_run(&["health"]);
    assert_eq!((health.code, health.stdout.as_str()), (Some(0), "alive\n"));
    let ready = t.ctl_run(&["health", "--ready"]);
    assert_eq!(ready.code, Some(1), "{ready:?}");
    assert!(
        ready.stderr.contains("not ready: stubborn stopping"),
        "{ready:?}"
    );
    // --timeout needs --wait.
    assert_eq!(
        t.ctl_run(&["stop", "alpha", "--timeout", "1s"]).code,
        Some(2)
    );

    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
}

//! Exec'd programs that say when they are ready and that they are alive:
//! systemd's notify protocol on the `NOTIFY_SOCKET` the root gives each of
//! them, and s6's notification descriptor (`notify_fd`). The programs are
//! real: `tests/notify_support/prog.py` (a Type=notify program in Python)
//! and `/bin/sh`.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Tree, DEADLINE};

/// The Type=notify test program, with its steps.
fn prog(steps: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/notify_support/prog.py");
    let mut argv = vec![format!("{:?}", path.to_str().expect("utf-8 path"))];
    argv.extend(steps.iter().map(|s| format!("{s:?}")));
    format!("exec = [{}]", argv.join(", "))
}

/// A datagram socket read as systemd reads the root's `NOTIFY_SOCKET`.
struct Manager {
    sock: UnixDatagram,
    seen: Vec<String>,
}

impl Manager {
    /// Binds the socket (in a directory kept for the test's life) and
    /// returns it with its path.
    fn bind() -> (Manager, PathBuf) {
        let dir = tempfile::Builder::new()
            .prefix("forkroot-notify")
            .tempdir()
            .expect("temp dir")
            .keep();
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let m = Manager {
            sock,
            seen: Vec::new(),
        };
        (m, path)
    }

    /// Reads what arrived within `for_`.
    fn drain(&mut self, for_: Duration) {
        let end = Instant::now() + for_;
        let mut buf = [0u8; 4096];
        while Instant::now() < end {
            if let Ok(n) = self.sock.recv(&mut buf) {
                self.seen
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    }

    fn said_ready(&self) -> bool {
        self.seen.iter().any(|m| m.lines().any(|l| l == "READY=1"))
    }
}

fn state(t: &Tree, name: &str) -> String {
    t.daemon_status(name)
        .map(|d| d["state"].as_str().unwrap_or("?").to_owned())
        .unwrap_or_default()
}

/// `READY=1` from the daemon, and nothing before it, moves it from
/// `starting` to `running`; only then does the next daemon (in declared
/// order) start, and the root tell its own manager `READY=1`; the
/// daemon's `STATUS=` shows in `ctl status`.
#[test]
fn ready_1_gates_the_next_start_and_the_roots_own_ready_and_shows_its_status() {
    let (mut m, sock) = Manager::bind();
    let config = format!(
        "[[daemon]]\nname = \"web\"\nreadiness = \"notify\"\n{}\n\
         [[daemon]]\nname = \"next\"\nkind = \"idle\"\n",
        prog(&[
            "send:STATUS=warming up",
            "wait:@DIR@/go",
            "send:STATUS=serving 3 clients\\nREADY=1"
        ])
    );
    let mut t = Tree::start_with(&config, |c| {
        c.env("NOTIFY_SOCKET", &sock);
    });
    t.poll("web's first status", || {
        let d = t.daemon_status("web")?;
        (d["status"] == "warming up").then_some(())
    });
    // Exec'd and talking, but not ready: starting, and the root has not
    // told its manager it is ready.
    m.drain(Duration::from_millis(300));
    assert_eq!(state(&t, "web"), "starting");
    assert!(
        !m.said_ready(),
        "READY=1 before web was ready: {:?}",
        m.seen
    );
    // The next daemon in declared order waits for web to be ready.
    let next = t.daemon_status("next").unwrap();
    assert!(
        next["state"] == "stopped" && next["pid"].is_null(),
        "{next}"
    );
    std::fs::write(t.path("go"), "").unwrap();
    let d = t.poll("web running", || {
        let d = t.daemon_status("web")?;
        (d["state"] == "running").then_some(d)
    });
    assert_eq!(d["status"], "serving 3 clients");
    t.poll("next running", || {
        (t.daemon_status("next")?["state"] == "running").then_some(())
    });
    let end = Instant::now() + DEADLINE;
    while !m.said_ready() {
        assert!(Instant::now() < end, "no READY=1: {:?}", m.seen);
        m.drain(Duration::from_millis(50));
    }
    let text = t.ctl(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("status: serving 3 clients"), "{text}");
    assert!(t.log().contains("ready (READY=1)"), "{}", t.log());
    t.signal(libc::SIGTERM);
    assert_eq!(t.wait_code(), 0, "{}", t.log());
}

/// `WATCHDOG=1` keeps a daemon with `watchdog` alive (its
/// `WATCHDOG_USEC` says the deadline); when the pings stop, the root
/// kills it past the deadline and restarts it, reason `watchdog`.
#[test]
fn watchdog_1_keeps_it_alive_and_a_stall_kills_and_restarts_it() {
    let config = format!(
        "[supervisor]\nintensity = 100\n\
         [[daemon]]\nname = \"pinger\"\nreadiness = \"notify\"\nwatchdog = \"1s\"\n{}\n",
        prog(&["env:@DIR@/env", "send:READY=1", "ping:2.5:0.05"])
    );
    let mut t = Tree::start(&config);
    let first = t.poll("pinger running", || {
        let d = t.daemon_status("pinger")?;
        (d["state"] == "running").then(|| d["pid"].as_i64())?
    });
    let env = std::fs::read_to_string(t.path("env")).unwrap();
    assert!(env.contains("WATCHDOG_USEC=1000000\n"), "{env}");
    assert!(env.contains("NOTIFY_SOCKET=@forkroot/"), "{env}");
    // A deadline and a half of pings: the same process, no restart.
    std::thread::sleep(Duration::from_millis(1500));
    let d = t.daemon_status("pinger").unwrap();
    assert_eq!(d["pid"].as_i64(), Some(first), "{}", t.log());
    assert_eq!(d["restarts"], 0);
    assert!(d["heartbeat_age_ms"].as_u64().unwrap() < 1000, "{d}");
    // Then it stalls: killed and restarted.
    let d = t.poll("pinger restarted", || {
        let d = t.daemon_status("pinger")?;
        (d["restarts"] == 1).then_some(d)
    });
    assert_eq!(d["last_exit"], "killed by the watchdog", "{d}");
    let killed = t.wait_log(&["watchdog: no heartbeat; killing", "daemon=pinger"]);
    assert!(killed.contains(&format!("pid={}", first)), "{killed}");
    t.signal(libc::SIGTERM);
    assert_eq!(t.wait_code(), 0, "{}", t.log());
}

/// The root believes a notification only from the daemon's own processes
/// (its session): the test process's `READY=1` is ignored and counted,
/// another daemon's `READY=1` is that daemon's, and the daemon's own
/// forked child is believed.
#[test]
fn a_message_from_a_process_not_the_daemons_is_ignored() {
    let config = format!(
        "[[daemon]]\nname = \"b\"\n{}\n\
         [[daemon]]\nname = \"a\"\nreadiness = \"notify\"\n{}\n",
        prog(&["wait:@DIR@/a-env-read", "send:READY=1\\nSTATUS=from b"]),
        prog(&["env:@DIR@/env", "wait:@DIR@/go", "child-send:READY=1"]),
    );
    let mut t = Tree::start(&config);
    let env = t.poll("a's environment", || {
        std::fs::read_to_string(t.path("env")).ok()
    });
    let name = env
        .lines()
        .find_map(|l| l.strip_prefix("NOTIFY_SOCKET=@"))
        .expect("NOTIFY_SOCKET");
    // The test process is no daemon's.
    let sock = UnixDatagram::unbound().unwrap();
    let addr =
        <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
            name,
        )
        .unwrap();
    sock.send_to_addr(b"READY=1\nSTATUS=forged", &addr).unwrap();
    t.wait_log(&["notify message ignored: not from a daemon's processes"]);
    // b says READY=1: about itself, not a.
    std::fs::write(t.path("a-env-read"), "").unwrap();
    t.poll("b's status", || {
        (t.daemon_status("b")?["status"] == "from b").then_some(())
    });
    std::thread::sleep(Duration::from_millis(200));
    let a = t.daemon_status("a").unwrap();
    assert_eq!(a["state"], "starting", "{a}");
    assert!(a["status"].is_null(), "the forged status was taken: {a}");
    let metrics = String::from_utf8_lossy(&t.ctl(&["metrics"]).stdout).into_owned();
    assert!(
        metrics.contains("forkroot_notify_rejected_total 1\n"),
        "{metrics}"
    );
    // A process a forked (in its session) speaks for it.
    std::fs::write(t.path("go"), "").unwrap();
    t.poll("a running", || {
        (t.daemon_status("a")?["state"] == "running").then_some(())
    });
    t.signal(libc::SIGTERM);
    assert_eq!(t.wait_code(), 0, "{}", t.log());
}

/// A daemon not ready within `start_timeout` is killed, and that is a
/// death: it counts against the intensity (here 1, so the second one
/// makes the root give up with 69).
#[test]
fn start_timeout_kills_and_counts_as_a_death() {
    let config = format!(
        "[supervisor]\nintensity = 1\nperiod = \"30s\"\n\
         [[daemon]]\nname = \"mute\"\nreadiness = \"notify\"\nstart_timeout = \"300ms\"\n{}\n",
        prog(&[])
    );
    let mut t = Tree::start(&config);
    let d = t.poll("mute restarted once", || {
        let d = t.daemon_status("mute")?;
        (d["restarts"] == 1).then_some(d)
    });
    assert_eq!(d["last_exit"], "killed: not ready within start_timeout");
    assert_eq!(t.wait_code(), 69, "{}", t.log());
    let log = t.log();
    assert_eq!(
        log.matches("not ready within start_timeout; killing")
            .count(),
        2,
        "{log}"
    );
    assert!(log.contains("restart intensity exceeded"), "{log}");
}

/// `notify_fd = 7`: a newline on descriptor 7 means ready (s6's
/// notification-fd), from a shell script.
#[test]
fn notify_fd_readiness_from_a_shell_script() {
    let config = r#"
[[daemon]]
name = "s6ish"
notify_fd = 7
exec = ["/bin/sh", "-c", "while [ ! -e @DIR@/go ]; do sleep 0.02; done; echo >&7; exec sleep 1000"]
"#;
    let mut t = Tree::start(config);
    t.poll("s6ish started", || {
        (t.daemon_status("s6ish")?["pid"].is_i64()).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(state(&t, "s6ish"), "starting");
    std::fs::write(t.path("go"), "").unwrap();
    t.poll("s6ish running", || {
        (t.daemon_status("s6ish")?["state"] == "running").then_some(())
    });
    assert!(t.log().contains("ready (notify_fd)"), "{}", t.log());
    t.signal(libc::SIGTERM);
    assert_eq!(t.wait_code(), 0, "{}", t.log());
}

/// `check` (and `run`) refuse what cannot work, each problem placed, 78.
#[test]
fn check_rejects_an_impossible_watchdog_and_bad_readiness() {
    let config = r#"
[[daemon]]
name = "a"
exec = ["/bin/true"]
readiness = "exec"
watchdog = "1s"
[[daemon]]
name = "b"
exec = ["/bin/true"]
readiness = "fd"
[[daemon]]
name = "c"
exec = ["/bin/true"]
notify_fd = 3
[[daemon]]
name = "d"
kind = "idle"
readiness = "notify"
[[daemon]]
name = "e"
exec = ["/bin/true"]
readiness = "notify"
notify_fd = 7
start_timeout = "0s"
"#;
    common::assert_rejected(
        Path::new(common::BIN),
        config,
        &[
            "daemon[0].watchdog: nothing can keep this watchdog: readiness = \"exec\" says the program speaks no notify protocol (use readiness = \"notify\" and send WATCHDOG=1, or leave readiness out for a program that heartbeats through the forkroot library)",
            "daemon[1].readiness: \"fd\" needs notify_fd = N (the descriptor on which the program writes a newline when ready)",
            "daemon[2].notify_fd: 3 is out of range (use 7..=255: 0-2 are stdio, 3 is the region, 4 is the setup pipe, 5 and 6 the mailboxes)",
            "daemon[3].readiness: a built-in daemon is ready when its setup ends; readiness and notify_fd are for exec'd programs",
            "daemon[4].notify_fd: given with readiness = \"notify\"; use readiness = \"fd\" (or leave readiness out)",
            "daemon[4].start_timeout: must be longer than 0s",
        ],
    );
}

/// `EXTEND_TIMEOUT_USEC` moves the start deadline (a start longer than
/// `start_timeout` succeeds), `MAINPID=` is refused, and
/// `WATCHDOG=trigger` has the program killed at once, reason `watchdog`.
#[test]
fn extend_timeout_mainpid_and_watchdog_trigger() {
    let config = format!(
        "[supervisor]\nintensity = 100\n\
         [[daemon]]\nname = \"slow\"\nreadiness = \"notify\"\nstart_timeout = \"1s\"\n{}\n",
        prog(&[
            "send:EXTEND_TIMEOUT_USEC=5000000\\nMAINPID=1",
            "sleep:2",
            "send:READY=1",
            "wait:@DIR@/go",
            "send:WATCHDOG=trigger",
        ])
    );
    let mut t = Tree::start(&config);
    let d = t.poll("slow running", || {
        let d = t.daemon_status("slow")?;
        (d["state"] == "running").then_some(d)
    });
    assert_eq!(d["restarts"], 0, "the extended start was not cut: {d}");
    t.wait_log(&["MAINPID= refused", "daemon=slow"]);
    std::fs::write(t.path("go"), "").unwrap();
    let d = t.poll("slow killed by its own trigger", || {
        let d = t.daemon_status("slow")?;
        (d["restarts"] == 1).then_some(d)
    });
    assert_eq!(d["last_exit"], "killed by the watchdog", "{d}");
    assert!(t.log().contains("WATCHDOG=trigger"), "{}", t.log());
    t.signal(libc::SIGTERM);
    assert_eq!(t.wait_code(), 0, "{}", t.log());
}

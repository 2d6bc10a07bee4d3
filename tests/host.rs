//! The root as a host service: what it tells systemd over `NOTIFY_SOCKET`
//! (against a notify socket the test opens itself), and the root as PID 1
//! of a PID namespace, as a container's entrypoint.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;

use std::time::{Duration, Instant};

use common::{Proc, Tree, DEADLINE};

/// A notify socket in the test's directory, read as systemd would.
struct Notify {
    sock: UnixDatagram,
    seen: Vec<String>,
}

impl Notify {
    fn bind(tree_dir: &std::path::Path) -> (Notify, std::path::PathBuf) {
        let path = tree_dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        (
            Notify {
                sock,
                seen: Vec::new(),
            },
            path,
        )
    }

    /// Reads messages until `done` holds for what was seen, or fails the
    /// test after the deadline.
    fn until(&mut self, what: &str, done: impl Fn(&[String]) -> bool) {
        let end = Instant::now() + DEADLINE;
        let mut buf = [0u8; 4096];
        while !done(&self.seen) {
            assert!(
                Instant::now() < end,
                "notify: waited for {what}; got {:?}",
                self.seen
            );
            if let Ok(n) = self.sock.recv(&mut buf) {
                self.seen
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    }

    fn count(&self, prefix: &str) -> usize {
        self.seen
            .iter()
            .flat_map(|m| m.lines())
            .filter(|l| l.starts_with(prefix))
            .count()
    }

    /// Index of the first message holding a line that starts with `prefix`.
    fn first(&self, prefix: &str) -> Option<usize> {
        self.seen
            .iter()
            .position(|m| m.lines().any(|l| l.starts_with(prefix)))
    }
}

/// A tree whose root gets `NOTIFY_SOCKET` (and `env`) pointing at a socket
/// the test reads.
fn start_notified(config: &str, env: &[(&str, String)]) -> (Tree, Notify) {
    // The socket must exist before the root starts: bind it in a
    // directory of its own, then hand its path over.
    let dir = tempfile::Builder::new()
        .prefix("forkroot-notify")
        .tempdir()
        .expect("temp dir");
    let (notify, path) = Notify::bind(dir.path());
    let tree = Tree::start_with(config, |c| {
        c.env("NOTIFY_SOCKET", &path);
        for (k, v) in env {
            c.env(k, v);
        }
    });
    // Keep the directory (and so the socket) as long as the test runs.
    std::mem::forget(dir);
    (tree, notify)
}

const TWO_IDLE: &str = r#"
[[daemon]]
name = "a"
kind = "idle"
[[daemon]]
name = "b"
kind = "idle"
"#;

#[test]
fn a_normal_run_says_ready_with_its_status_then_stopping() {
    let (mut tree, mut n) = start_notified(TWO_IDLE, &[]);
    n.until("READY=1", |s| s.iter().any(|m| m.contains("READY=1")));
    let ready = &n.seen[n.first("READY=1").unwrap()];
    assert!(
        ready.contains("STATUS=2 running, 0 restarts in the last 10s"),
        "the READY message carries the status line: {ready:?}"
    );
    tree.signal(libc::SIGTERM);
    n.until("STOPPING=1", |s| s.iter().any(|m| m.contains("STOPPING=1")));
    assert_eq!(tree.wait_code(), 0);
    assert_eq!(n.count("READY=1"), 1, "{:?}", n.seen);
    assert!(n.first("READY=1") < n.first("STOPPING=1"));
    assert_eq!(n.count("WATCHDOG=1"), 0, "no WATCHDOG_USEC, no pings");
}

#[test]
fn a_status_line_follows_restarts() {
    let config = r#"
[supervisor]
intensity = 1000
[[daemon]]
name = "a"
kind = "idle"
[[daemon]]
name = "f"
kind = "flaky"
[daemon.args]
mean_life = "50ms"
"#;
    let (mut tree, mut n) = start_notified(config, &[]);
    n.until("a STATUS= with restarts", |s| {
        s.iter().any(|m| {
            m.lines().any(|l| {
                l.starts_with("STATUS=")
                    && !l.contains(" 0 restarts")
                    && l.contains("restarts in the last 10s")
            })
        })
    });
    tree.signal(libc::SIGTERM);
    assert_eq!(tree.wait_code(), 0);
}

#[test]
fn a_first_start_that_gives_up_never_says_ready_after_stopping() {
    // `a` fails at exec every time (its interpreter does not exist), so
    // it never leaves `starting`, and the supervisor gives up.
    let scripts = tempfile::tempdir().expect("temp dir");
    let script = scripts.path().join("bad-interpreter");
    std::fs::write(&script, "#!/nonexistent/interpreter\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = r#"
[supervisor]
intensity = 1
period = "10s"
[[daemon]]
name = "ok"
kind = "idle"
[[daemon]]
name = "a"
exec = ["SCRIPT"]
"#
    .replace("SCRIPT", script.to_str().unwrap());
    let (mut tree, mut n) = start_notified(&config, &[]);
    assert_eq!(tree.wait_code(), 69, "{}", tree.log());
    n.until("STOPPING=1", |s| s.iter().any(|m| m.contains("STOPPING=1")));
    // Whatever is still in flight has arrived by the time the root exited.
    let mut buf = [0u8; 4096];
    while let Ok(k) = n.sock.recv(&mut buf) {
        n.seen.push(String::from_utf8_lossy(&buf[..k]).into_owned());
    }
    let stopping = n.first("STOPPING=1").unwrap();
    if let Some(ready) = n.first("READY=1") {
        assert!(ready < stopping, "READY=1 after STOPPING=1: {:?}", n.seen);
    }
}

#[test]
fn watchdog_pings_at_half_of_watchdog_usec() {
    let (mut tree, mut n) = start_notified(TWO_IDLE, &[("WATCHDOG_USEC", "200000".to_owned())]);
    n.until("READY=1", |s| s.iter().any(|m| m.contains("READY=1")));
    let t0 = Instant::now();
    // The root pings from its first turn, before READY=1 too: count from
    // the pings seen by now.
    let pings = |s: &[String]| {
        s.iter()
            .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
            .count()
    };
    let before = pings(&n.seen);
    n.until("5 more pings", |s| pings(s) >= before + 5);
    // Five pings 100 ms apart take at least 400 ms (the first may come at
    // once): the root pings on its timer, not on every wake-up.
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t0.elapsed()
    );
    tree.signal(libc::SIGTERM);
    assert_eq!(tree.wait_code(), 0);
}

#[test]
fn no_pings_when_the_watchdog_is_meant_for_another_pid() {
    let (mut tree, mut n) = start_notified(
        TWO_IDLE,
        &[
            ("WATCHDOG_USEC", "100000".to_owned()),
            ("WATCHDOG_PID", "1".to_owned()),
        ],
    );
    n.until("READY=1", |s| s.iter().any(|m| m.contains("READY=1")));
    // A root with pings would have sent several in this time.
    let end = Instant::now() + Duration::from_millis(400);
    n.until("400 ms", |_| Instant::now() >= end);
    assert_eq!(n.count("WATCHDOG=1"), 0, "{:?}", n.seen);
    tree.signal(libc::SIGTERM);
    assert_eq!(tree.wait_code(), 0);
}

#[test]
fn sigusr1_and_sigusr2_do_not_end_the_root() {
    let mut tree = Tree::start(TWO_IDLE);
    tree.poll("both daemons running", || {
        let all = tree.daemons_status()?;
        all.iter().all(|d| d["state"] == "running").then_some(())
    });
    tree.signal(libc::SIGUSR1);
    tree.wait_log(&["SIGUSR1", "2 running"]);
    tree.signal(libc::SIGUSR2);
    tree.wait_log(&["SIGUSR2 ignored"]);
    assert!(tree.daemons_status().is_some(), "the root still answers");
    tree.signal(libc::SIGTERM);
    assert_eq!(tree.wait_code(), 0);
}

/// As PID 1 of a new PID namespace (`unshare --pid --fork`), the root reaps
/// every orphan that lands on it and stops with 0 on SIGTERM.
#[test]
fn as_pid_1_it_reaps_100_orphans_and_stops_on_sigterm() {
    if Command::new("unshare")
        .args(["--pid", "--fork", "true"])
        .status()
        .map_or(true, |s| !s.success())
    {
        panic!("unshare --pid --fork is required for this test (util-linux, run as root)");
    }
    // `spawner` leaves 100 grandchildren behind: each subshell exits at
    // once, so its `sleep` is reparented to PID 1, the root.
    let config = r#"
[[daemon]]
name = "spawner"
exec = ["/bin/sh", "-c", "for i in $(seq 100); do (sleep 0.3 &); done; echo spawned > @DIR@/spawned; exec sleep 1000"]
"#;
    let mut tree = Tree::start_with(config, |c| {
        // The real binary becomes PID 1 of a fresh namespace: unshare
        // forks it and waits, and passes its exit code on.
        let args: Vec<std::ffi::OsString> = c.get_args().map(|a| a.to_owned()).collect();
        let bin = c.get_program().to_owned();
        *c = {
            let mut u = Command::new("unshare");
            u.args(["--pid", "--fork", "--kill-child"])
                .arg(bin)
                .args(args);
            for (k, v) in c.get_envs() {
                match v {
                    Some(v) => u.env(k, v),
                    None => u.env_remove(k),
                };
            }
            if let Some(d) = c.get_current_dir() {
                u.current_dir(d);
            }
            u
        };
    });
    // tree.pid is `unshare`; the root is its only child.
    let root = tree.poll("the root under unshare", || {
        common::children(tree.pid)
            .into_iter()
            .find(|p| p.comm == "forkroot")
    });
    tree.poll("the spawner's orphans", || {
        std::fs::metadata(tree.path("spawned")).ok()
    });
    // Every orphan was reparented to the root; once they exit (0.3 s),
    // nothing but the spawner is left under the root, and no zombie.
    tree.poll("the orphans reaped", || {
        let kids = common::children(root.pid);
        let zombies = kids.iter().filter(|p| p.state == 'Z').count();
        (kids.len() == 1 && zombies == 0).then_some(())
    });
    common::send(root.pid, libc::SIGTERM).expect("SIGTERM the root");
    assert_eq!(tree.wait_code(), 0, "{}", tree.log());
    assert!(Proc::pid_gone(root.pid) || root.is_gone());
    assert!(tree.log().contains("every daemon stopped"));
}

#[test]
fn a_reload_says_reloading_then_ready() {
    let (mut tree, mut n) = start_notified(TWO_IDLE, &[]);
    n.until("READY=1", |s| s.iter().any(|m| m.contains("READY=1")));
    common::write_config(
        &tree.dir,
        "[[daemon]]\nname = \"a\"\nkind = \"idle\"\n[[daemon]]\nname = \"c\"\nkind = \"idle\"\n",
    );
    let r = tree.ctl_run(&["reload"]);
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    n.until("READY=1 after RELOADING=1", |s| {
        s.iter()
            .flat_map(|m| m.lines())
            .filter(|l| l.starts_with("READY=1"))
            .count()
            == 2
    });
    let reloading = n.first("RELOADING=1").expect("RELOADING=1 sent");
    let msg = &n.seen[reloading];
    let usec: u64 = msg
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect("MONOTONIC_USEC with RELOADING=1")
        .parse()
        .expect("a number");
    // SAFETY: clock_gettime writes into the timespec we own.
    let now_usec = unsafe {
        let mut ts = std::mem::zeroed::<libc::timespec>();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
    };
    assert!(
        usec <= now_usec && now_usec - usec < 10_000_000,
        "{usec} vs {now_usec}"
    );
    let second_ready = n
        .seen
        .iter()
        .enumerate()
        .filter(|(_, m)| m.lines().any(|l| l.starts_with("READY=1")))
        .nth(1)
        .map(|(i, _)| i)
        .unwrap();
    assert!(reloading < second_ready, "{:?}", n.seen);
    // READY=1 comes once the reload is done: the added daemon runs.
    assert_eq!(tree.daemon_status("c").unwrap()["state"], "running");
    assert!(tree.daemon_status("b").is_none());
    // A rejected reload says nothing: the tree never stopped being ready.
    common::write_config(&tree.dir, "[[daemon]]\nname = 1\n");
    assert_eq!(tree.ctl_run(&["reload"]).code, Some(1));
    tree.signal(libc::SIGTERM);
    n.until("STOPPING=1", |s| s.iter().any(|m| m.contains("STOPPING=1")));
    assert_eq!(tree.wait_code(), 0);
    assert_eq!(n.count("RELOADING=1"), 1, "{:?}", n.seen);
    assert_eq!(n.count("READY=1"), 2, "{:?}", n.seen);
}

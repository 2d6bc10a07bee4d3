//! A daemon's whole process tree is the daemon: with a writable cgroup v2
//! hierarchy, what an exec'd program forks (a `setsid` grandchild
//! included) dies with it on stop, restart, death and the root's clean
//! exit, and never overlaps the next incarnation; without one, the
//! process-group fallback is reported. Each test runs its root in a fresh
//! cgroup of its own, never the test runner's.

mod common;

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use common::{Proc, Tree};

use common::cgroup2_mount as mount;

/// A fresh cgroup for one test's root; whatever is left in it is killed
/// and it is removed when the test ends.
struct TestCgroup(PathBuf);

impl TestCgroup {
    /// `None` where this machine has no writable cgroup v2.
    fn new() -> Option<TestCgroup> {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = mount()?.join(format!(
            "forkroot-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        fs::create_dir(&dir).ok()?;
        Some(TestCgroup(dir))
    }

    /// Makes the root's command enter this cgroup between fork and exec.
    fn enter(&self, c: &mut Command) {
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(self.0.join("cgroup.procs"))
            .expect("open cgroup.procs");
        // SAFETY: the closure makes one write(2) (async-signal-safe) on a
        // descriptor opened before the fork, and allocates nothing.
        unsafe {
            c.pre_exec(move || {
                let n = libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1);
                if n == 1 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }

    /// The cgroups below this one.
    fn children(&self) -> Vec<String> {
        fs::read_dir(&self.0)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The processes in leaf `leaf` of daemon `name`'s cgroup.
fn procs_in(cg: &TestCgroup, name: &str, leaf: &str) -> Vec<i32> {
    fs::read_to_string(cg.0.join(name).join(leaf).join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

/// The processes in daemon `name`'s leaves (`a` and `b`).
fn leaf_procs(cg: &TestCgroup, name: &str) -> Vec<i32> {
    ["a", "b"]
        .iter()
        .flat_map(|leaf| procs_in(cg, name, leaf))
        .collect()
}

/// Which of daemon `name`'s leaves holds `pid`.
fn leaf_of(cg: &TestCgroup, name: &str, pid: i32) -> Option<&'static str> {
    ["a", "b"]
        .into_iter()
        .find(|leaf| procs_in(cg, name, leaf).contains(&pid))
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Only this test's root and its daemons were ever in here.
        let _ = fs::write(self.0.join("cgroup.kill"), "1");
        for _ in 0..1000 {
            let events = fs::read_to_string(self.0.join("cgroup.events")).unwrap_or_default();
            if !events.contains("populated 1") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let _ = common::remove_cgroup_tree(&self.0);
    }
}

/// A program whose grandchild leaves its process group and session
/// (`setsid`), records its pid, and holds a lock while it lives: a
/// grandchild that finds the lock taken (its predecessor still alive)
/// records an overlap.
const GRANDPARENT: &str = r#"
[[daemon]]
name = "web"
exec = ["/bin/sh", "-c", "setsid /bin/sh -c 'echo $$ >> @DIR@/gc; flock -n @DIR@/lock sleep 778 || echo $$ >> @DIR@/overlap' & wait"]
"#;

/// The grandchildren recorded so far.
fn grandchildren(t: &Tree) -> Vec<i32> {
    fs::read_to_string(t.path("gc"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Waits for the `n`th grandchild and returns it as a process.
fn wait_grandchild(t: &Tree, n: usize) -> Proc {
    let pid = t.poll(&format!("grandchild #{n}"), || {
        grandchildren(t).get(n - 1).copied()
    });
    // It holds the lock once `flock` has started its `sleep`.
    t.poll("the grandchild's sleep", || {
        common::descendants(pid)
            .iter()
            .any(|p| p.comm == "sleep")
            .then_some(())
    });
    Proc::read(pid).expect("grandchild alive")
}

#[test]
fn setsid_grandchild_dies_with_its_daemon_and_never_overlaps() {
    let Some(cg) = TestCgroup::new() else {
        return fallback_when_no_cgroup();
    };
    let mut t = Tree::start_with(GRANDPARENT, |c| cg.enter(c));
    t.wait_log(&[
        "each daemon runs in its own cgroup",
        &cg.0.display().to_string(),
    ]);
    let status = t.ctl_run(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(
        status["root"]["containment"],
        format!("cgroup {}", cg.0.display())
    );

    // The root left its cgroup for a leaf; the daemon has its own, and
    // its processes run in one of its two leaves.
    let first = wait_grandchild(&t, 1);
    let mut kids = cg.children();
    kids.sort();
    assert_eq!(kids, ["root", "web"]);
    let procs = leaf_procs(&cg, "web");
    assert!(procs.contains(&first.pid), "{procs:?}");

    // Restart: the grandchild is gone before the next one starts.
    assert_eq!(t.ctl_run(&["restart", "web", "--wait"]).code, Some(0));
    let second = wait_grandchild(&t, 2);
    // Killed before the restart went on (at most a zombie the root is
    // about to reap: its SIGCHLD may still be on its way), then reaped.
    let running = Proc::read(first.pid)
        .is_some_and(|now| now.starttime == first.starttime && now.state != 'Z');
    assert!(!running, "{first:?} outlived a restart");
    t.wait_gone(&[first]);

    // Death of the daemon's own process: the same.
    let web = t.daemon_status("web").unwrap()["pid"].as_i64().unwrap() as i32;
    common::send(web, libc::SIGKILL).unwrap();
    let third = wait_grandchild(&t, 3);
    t.wait_gone(&[second]);
    // The incarnation after a cgroup.kill runs (in a leaf made anew), and
    // nothing killed it at birth: the restart count says one death.
    let procs = leaf_procs(&cg, "web");
    assert!(procs.contains(&third.pid), "{procs:?}");
    assert_eq!(
        t.daemon_status("web").unwrap()["restarts"],
        1,
        "{}",
        t.log()
    );

    // Stop.
    assert_eq!(t.ctl_run(&["stop", "web", "--wait"]).code, Some(0));
    t.wait_gone(&[third]);
    assert_eq!(t.ctl_run(&["start", "web", "--wait"]).code, Some(0));
    let fourth = wait_grandchild(&t, 4);

    // The root's clean exit: nothing left, the cgroups removed, the root
    // back where it started.
    t.signal(libc::SIGTERM);
    assert_eq!(t.wait_code(), 0, "{}", t.log());
    t.wait_dead(&[fourth]);
    assert!(cg.children().is_empty(), "left: {:?}", cg.children());
    assert!(
        !t.path("overlap").exists(),
        "two incarnations overlapped: {}",
        fs::read_to_string(t.path("overlap")).unwrap_or_default()
    );
}

#[test]
fn a_killed_roots_leftovers_are_ended_by_the_next_root() {
    let Some(cg) = TestCgroup::new() else {
        return fallback_when_no_cgroup();
    };
    let mut t = Tree::start_with(GRANDPARENT, |c| cg.enter(c));
    let first = wait_grandchild(&t, 1);
    // kill -9 of the root: its daemon dies (PDEATHSIG), the setsid
    // grandchild does not, and stays in the daemon's cgroup.
    t.signal(libc::SIGKILL);
    t.wait_exit();
    assert!(
        !first.is_dead(),
        "the grandchild died with the root already"
    );
    // A new root in the same place ends it before starting the daemon.
    t.respawn_with(|c| cg.enter(c));
    let second = wait_grandchild(&t, 2);
    assert!(first.is_dead(), "{first:?} survived the next root's start");
    t.wait_log(&["processes left from an earlier root"]);
    t.signal(libc::SIGTERM);
    assert_eq!(t.wait_code(), 0, "{}", t.log());
    t.wait_dead(&[second]);
    assert!(!t.path("overlap").exists());
}

/// Without a cgroup v2 mount (the root runs in a mount namespace where it
/// is unmounted), the root says so once and `ctl status` shows the mode.
#[test]
fn without_cgroup_v2_the_process_group_fallback_is_reported() {
    let Some(m) = mount() else {
        return fallback_when_no_cgroup();
    };
    let target = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()).unwrap();
    let t = Tree::start_with(GRANDPARENT, |c| {
        // SAFETY: unshare, mount and umount2 are plain system calls
        // (async-signal-safe), on strings made before the fork.
        unsafe {
            c.pre_exec(move || {
                let root = c"/";
                if libc::unshare(libc::CLONE_NEWNS) != 0
                    || libc::mount(
                        std::ptr::null(),
                        root.as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) != 0
                    || libc::umount2(target.as_ptr(), libc::MNT_DETACH) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    check_fallback_reported(&t);
}

fn check_fallback_reported(t: &Tree) {
    let line = t.wait_log(&["daemons are stopped by process group"]);
    assert!(line.contains("no cgroup2 file system"), "{line}");
    assert_eq!(
        t.log_lines(&["daemons are stopped by process group"]).len(),
        1
    );
    let status = t.ctl_run(&["status"]);
    assert!(
        status
            .stdout
            .contains("containment: process-group (no writable cgroup v2"),
        "{}",
        status.stdout
    );
}

/// Where this machine has no writable cgroup v2 at all, the root must run
/// in the fallback and say so.
fn fallback_when_no_cgroup() {
    let t = Tree::start(GRANDPARENT);
    let line = t.wait_log(&["containment="]);
    assert!(line.contains("process-group"), "{line}");
}

/// Limits are written to the daemon's cgroup where the controller is
/// available, and refused by `check` (exit 78, naming the key and the
/// controller) where it is not.
#[test]
fn limits_are_applied_where_available_and_refused_where_not() {
    let Some(cg) = TestCgroup::new() else {
        return fallback_when_no_cgroup();
    };
    let offered = fs::read_to_string(cg.0.join("cgroup.controllers")).unwrap_or_default();
    let config = r#"
[[daemon]]
name = "web"
exec = ["/bin/sleep", "779"]
memory_max = "64MiB"
pids_max = 16
cpu_weight = 50
"#;
    // `check` runs where the root would: in the test's cgroup.
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_config(&dir, config);
    let ran = common::run_to_end_with(&dir, &["check", "--config", path.to_str().unwrap()], |c| {
        cg.enter(c)
    });
    let needed = [
        ("memory_max", "memory"),
        ("pids_max", "pids"),
        ("cpu_weight", "cpu"),
    ];
    let missing: Vec<_> = needed
        .iter()
        .filter(|(_, c)| !offered.split_whitespace().any(|o| o == *c))
        .collect();
    if missing.is_empty() {
        assert_eq!(ran.code, Some(0), "{}", ran.stderr);
        let t = Tree::start_with(config, |c| cg.enter(c));
        t.poll("web in its cgroup", || {
            (!leaf_procs(&cg, "web").is_empty()).then_some(())
        });
        let read = |f: &str| fs::read_to_string(cg.0.join("web").join(f)).unwrap();
        assert_eq!(read("memory.max").trim(), "67108864");
        assert_eq!(read("pids.max").trim(), "16");
        assert_eq!(read("cpu.weight").trim(), "50");
    } else {
        assert_eq!(
            ran.code,
            Some(78),
            "stdout {} stderr {}",
            ran.stdout,
            ran.stderr
        );
        for (key, controller) in missing {
            let line = ran
                .stderr
                .lines()
                .find(|l| l.contains(&format!("daemon[0].{key}")))
                .unwrap_or_else(|| panic!("no problem for {key}: {}", ran.stderr));
            assert!(line.contains(&format!("{controller} controller")), "{line}");
            assert!(line.contains("not available here"), "{line}");
        }
        // `run` refuses the same, and starts nothing.
        let mut t = Tree::start_with(config, |c| cg.enter(c));
        assert_eq!(t.wait_code(), 78, "{}", t.log());
        assert!(cg.children().is_empty(), "{:?}", cg.children());
    }
}

/// A standby is born in its daemon's cgroup (the leaf its primary does not
/// use) and takes over where it is: no process is moved, the old
/// primary's leaf is killed and emptied without touching the standby, and
/// the next standby is born in the leaf the old primary left.
#[test]
fn a_standby_takes_over_in_its_own_leaf() {
    let Some(cg) = TestCgroup::new() else {
        return fallback_when_no_cgroup();
    };
    let t = Tree::start_with(
        r#"
[supervisor]
intensity = 100
[[daemon]]
name = "c"
kind = "counter"
standby = true
[daemon.args]
rate = 1000
out = "@DIR@/c.out"
"#,
        |c| cg.enter(c),
    );
    let pair = || {
        let d = t.daemon_status("c")?;
        let p = d["pid"].as_i64()? as i32;
        let s = d["standby_pid"].as_i64()? as i32;
        Some((p, s))
    };
    let mut last = (0, 0);
    let mut standby_leaf = None;
    for round in 0..6 {
        let (primary, standby) = t.poll("a primary and a ready standby", || {
            pair().filter(|&(p, s)| p != last.0 && s != last.1)
        });
        let (lp, ls) = (leaf_of(&cg, "c", primary), leaf_of(&cg, "c", standby));
        assert!(
            lp.is_some() && ls.is_some() && lp != ls,
            "round {round}: primary in {lp:?}, standby in {ls:?}"
        );
        if round > 0 {
            assert_eq!(primary, last.1, "round {round}: the standby took over");
            assert_eq!(
                lp, standby_leaf,
                "round {round}: it took over where it was born"
            );
        }
        common::send(primary, libc::SIGKILL).unwrap();
        last = (primary, standby);
        standby_leaf = ls;
    }
    assert!(t.log().contains("standby took over"), "{}", t.log());
}

#[test]
fn a_standby_with_room_for_one_process_is_refused() {
    // The standby lives in the daemon's cgroup beside it: `pids_max = 1`
    // leaves it no process, so `check` says so (whether or not this
    // machine offers the pids controller, which is a problem of its own).
    let check = |pids_max: u32| {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "[[daemon]]\nname = \"c\"\nkind = \"idle\"\nstandby = true\npids_max = {pids_max}\n"
        );
        let path = common::write_config(&dir, &config);
        common::run_to_end(&dir, &["check", "--config", path.to_str().unwrap()])
    };
    let ran = check(1);
    assert_eq!(ran.code, Some(78), "{ran:?}");
    assert!(
        ran.stderr.contains(
            "daemon[0].pids_max: 1 leaves no process for the standby (standby = true needs 2 or more)"
        ),
        "{ran:?}"
    );
    let ran = check(2);
    assert!(
        !ran.stderr.contains("no process for the standby"),
        "{ran:?}"
    );
}

/// The zygote is forked before the cgroups are made (it should carry as
/// little of the root as it can) and moves into the root's leaf with the
/// root: the cgroup above the daemons' holds no process, and the daemons
/// it forks are born in their own leaves.
#[test]
fn the_zygote_moves_into_the_roots_leaf_with_it() {
    let Some(cg) = TestCgroup::new() else {
        return fallback_when_no_cgroup();
    };
    let t = Tree::start_with(
        "[[daemon]]\nname = \"a\"\nkind = \"idle\"\n\n[[daemon]]\nname = \"b\"\nkind = \"idle\"\n",
        |c| cg.enter(c),
    );
    let a = common::running_pid(&t, "a");
    let b = common::running_pid(&t, "b");
    let z = common::zygote_of(t.pid).expect("a zygote");
    let procs = |dir: PathBuf| -> Vec<i32> {
        fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
    };
    let mut leaf = procs(cg.0.join("root"));
    leaf.sort_unstable();
    let mut want = vec![t.pid, z.pid];
    want.sort_unstable();
    assert_eq!(leaf, want, "the root's leaf holds the root and its zygote");
    assert!(
        procs(cg.0.clone()).is_empty(),
        "a process above the daemons' cgroups"
    );
    assert!(leaf_procs(&cg, "a").contains(&a));
    assert!(leaf_procs(&cg, "b").contains(&b));
    // The zygote forked them: the one it answered for is still the one.
    assert!(
        t.log()
            .contains("built-in daemons are forked by the zygote"),
        "{}",
        t.log()
    );
    common::send(a, libc::SIGKILL).unwrap();
    let a2 = t.poll("a restarted", || {
        let p = common::running_pid(&t, "a");
        (p != a).then_some(p)
    });
    assert!(leaf_procs(&cg, "a").contains(&a2));
    assert_eq!(common::zygote_of(t.pid).map(|p| p.pid), Some(z.pid));
}

/// A start that fails once the daemons' cgroups are made (here: out of
/// descriptors for their output pipes, under a hard limit of 200 for 100
/// daemons) removes them: nothing of it is left, delegated or not.
#[test]
fn a_start_that_fails_after_the_cgroups_are_made_removes_them() {
    let Some(mount) = mount() else {
        return fallback_when_no_cgroup();
    };
    let mut config = String::new();
    for i in 0..100 {
        config.push_str(&format!("[[daemon]]\nname = \"i{i}\"\nkind = \"idle\"\n\n"));
    }
    let low_limit = |c: &mut Command| {
        // SAFETY: the closure makes one setrlimit(2) (async-signal-safe)
        // and allocates nothing.
        unsafe {
            c.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 200,
                    rlim_max: 200,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    };
    // Delegated: the root (and its zygote) in a leaf of the test's cgroup.
    if let Some(cg) = TestCgroup::new() {
        let mut t = Tree::start_with(&config, |c| {
            cg.enter(c);
            low_limit(c);
        });
        assert_eq!(t.wait_code(), 70, "{}", t.log());
        assert!(t.log().contains("output pipes"), "{}", t.log());
        assert!(
            t.log().contains("each daemon runs in its own cgroup"),
            "{}",
            t.log()
        );
        assert!(cg.children().is_empty(), "left: {:?}", cg.children());
    }
    // In the hierarchy's top cgroup: the root's own `forkroot@SOCKET`.
    let mut t = Tree::start_with(&config, low_limit);
    assert_eq!(t.wait_code(), 70, "{}", t.log());
    assert!(t.log().contains("output pipes"), "{}", t.log());
    let top = mount.join(format!(
        "forkroot@{}",
        t.socket().to_string_lossy().replace('/', "_")
    ));
    let left = top.exists();
    common::remove_top_cgroup(&t.socket());
    assert!(!left, "{} left behind", top.display());
}

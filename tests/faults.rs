//! Faults beyond kills, through the real binary: region files truncated
//! under the root, resources exhausted (descriptors, processes, disk),
//! the root's own system calls failing. The root must never fall: each
//! fault is detected, reported with the daemon's name, and recovered from.

mod common;

use common::Tree;
use libc::SIGTERM;

/// The daemon's pid while it is running, from `ctl status --json`.
fn running(t: &Tree, name: &str) -> Option<i32> {
    let d = t.daemon_status(name)?;
    (d["state"] == "running")
        .then(|| d["pid"].as_i64())?
        .map(|p| p as i32)
}

/// Whether the root process is still alive (not even a zombie).
fn root_alive(t: &Tree) -> bool {
    common::Proc::read(t.pid).is_some_and(|p| p.state != 'Z')
}

/// The root, alive after what the test did, stops with exit 0 on SIGTERM.
fn stop_cleanly(t: &mut Tree) {
    assert!(root_alive(t), "{}", t.log());
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0, "{}", t.log());
}

#[test]
fn a_truncated_region_file_is_repaired_and_the_root_survives() {
    let mut t = Tree::start(
        "[root]\nstate_dir = \"@DIR@/state\"\n\
         [[daemon]]\nname = \"idle1\"\nkind = \"idle\"\n\
         [[daemon]]\nname = \"idle2\"\nkind = \"idle\"\n",
    );
    let first = t.poll("idle1 running", || running(&t, "idle1"));
    let other = t.poll("idle2 running", || running(&t, "idle2"));
    let file = t.path("state/idle1.region");
    let len = std::fs::metadata(&file).expect("region file").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_len(0))
        .expect("truncate the region file");
    // The root answers (it used to die of SIGBUS reading the region).
    let out = t.ctl(&["status"]);
    assert!(
        out.status.success() && root_alive(&t),
        "ctl status after truncation: {out:?}\n--- root log ---\n{}",
        t.log()
    );
    // Detected and reported by name, the file restored to its size, and the
    // daemon running again on it; its sibling untouched.
    t.wait_log(&["idle1", "truncated"]);
    t.poll("idle1 running again", || {
        running(&t, "idle1").filter(|&p| p != first)
    });
    assert_eq!(std::fs::metadata(&file).unwrap().len(), len);
    assert_eq!(running(&t, "idle2"), Some(other), "the sibling was touched");
    stop_cleanly(&mut t);
}

/// Bytes of blocks the file at `path` has (`st_blocks`; `SEEK_HOLE`
/// reports fallocated pages not yet written as holes on ext4 and tmpfs).
fn allocated(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// A hole punched into a `state_dir` file (its blocks given back: on a
/// full disk the daemon's next write there would be a SIGBUS) is found
/// (by the root's watch of the file, or at the latest before the daemon's
/// next start), given blocks again and reported.
#[test]
fn a_hole_punched_into_a_region_file_is_filled_before_the_next_start() {
    use std::os::fd::AsRawFd;
    let mut t = Tree::start(
        "[root]\nstate_dir = \"@DIR@/state\"\n\
         [[daemon]]\nname = \"idle1\"\nkind = \"idle\"\nmemory = \"1MiB\"\n",
    );
    let first = t.poll("idle1 running", || running(&t, "idle1"));
    let file = t.path("state/idle1.region");
    let len = std::fs::metadata(&file).unwrap().len();
    assert!(allocated(&file) >= len, "made with every block");
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: fallocate on a descriptor we own.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), mode, 65536, 65536) };
    assert_eq!(rc, 0, "punch: {}", std::io::Error::last_os_error());
    drop(f);
    // The hole may already be filled again: the root watches the file
    // (the punch is an IN_MODIFY) and repairs it at once; if not, the
    // next start does.
    common::send(first, libc::SIGKILL).unwrap();
    t.poll("idle1 running again", || {
        running(&t, "idle1").filter(|&p| p != first)
    });
    t.wait_log(&["idle1", "had holes"]);
    assert!(allocated(&file) >= len, "every block again");
    stop_cleanly(&mut t);
}

#[test]
fn a_replaced_region_file_is_reported_and_the_daemon_keeps_its_own() {
    let mut t = Tree::start(
        "[root]\nstate_dir = \"@DIR@/state\"\n\
         [[daemon]]\nname = \"idle1\"\nkind = \"idle\"\n",
    );
    let first = t.poll("idle1 running", || running(&t, "idle1"));
    let file = t.path("state/idle1.region");
    let len = std::fs::metadata(&file).unwrap().len();
    // Another file (of garbage, of the right size) renamed over it.
    let other = t.path("state/garbage");
    std::fs::write(&other, vec![0xa5u8; len as usize]).unwrap();
    std::fs::rename(&other, &file).unwrap();
    t.wait_log(&["idle1", "replaced"]);
    t.poll("the fault in status", || {
        let d = t.daemon_status("idle1")?;
        d["fault"].as_str()?.contains("replaced").then_some(())
    });
    // It runs on the file the root opened: nothing to restart for.
    assert_eq!(running(&t, "idle1"), Some(first));
    stop_cleanly(&mut t);
}

#[test]
fn a_region_file_damaged_under_a_running_daemon_is_seen_at_once() {
    let mut t = Tree::start(
        "[root]\nstate_dir = \"@DIR@/state\"\n\
         [[daemon]]\nname = \"idle1\"\nkind = \"idle\"\nmemory = \"1MiB\"\n\
         [[daemon]]\nname = \"idle2\"\nkind = \"idle\"\nmemory = \"1MiB\"\n",
    );
    let one = t.poll("idle1 running", || running(&t, "idle1"));
    let two = t.poll("idle2 running", || running(&t, "idle2"));
    // A hole punched in idle1's state (its bytes read as zeroes, and its
    // blocks given back: on a full disk its next write there would be a
    // SIGBUS): the root gives the pages blocks again and reports it, and
    // leaves the content to the daemon's checksums: no restart.
    let file1 = std::fs::OpenOptions::new()
        .write(true)
        .open(t.path("state/idle1.region"))
        .unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate on a file we opened; no memory is passed.
    let rc = unsafe {
        libc::fallocate(
            file1.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            128 * 1024,
            256 * 1024,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    // idle2's last page cut off: the idle daemon never touches it, so it
    // would not die of it; the root must see it by itself.
    let file2 = t.path("state/idle2.region");
    let len = std::fs::metadata(&file2).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file2)
        .and_then(|f| f.set_len(len - 4096))
        .unwrap();
    t.wait_log(&["idle2", "truncated"]);
    t.poll("idle2 restarted on its repaired region", || {
        running(&t, "idle2").filter(|&p| p != two)
    });
    assert_eq!(std::fs::metadata(&file2).unwrap().len(), len);
    // The root read both events in order: idle1 was not restarted, its
    // file has every block again.
    t.wait_log(&["idle1", "had holes"]);
    assert_eq!(running(&t, "idle1"), Some(one), "{}", t.log());
    let len1 = std::fs::metadata(t.path("state/idle1.region"))
        .unwrap()
        .len();
    assert!(allocated(&t.path("state/idle1.region")) >= len1);
    stop_cleanly(&mut t);
}

/// A root run under `strace`, which makes one of the root's system calls
/// fail with a real kernel error at a chosen call (strace's `inject`): the
/// way to reach failures no configuration can cause on demand.
struct Traced {
    dir: tempfile::TempDir,
    strace: std::process::Child,
    /// The root's pid (strace's child).
    root: i32,
    strace_pid: i32,
}

impl Traced {
    /// Starts `forkroot run` on `config` under `strace -e inject=INJECT`.
    fn start(config: &str, trace: &str, inject: &str) -> Traced {
        let dir = tempfile::Builder::new()
            .prefix("forkroot-test")
            .tempdir()
            .expect("temp dir");
        let path = common::write_config(&dir, config);
        let log = std::fs::File::create(dir.path().join("root.log")).expect("root.log");
        let mut c = std::process::Command::new("strace");
        c.args(["-o", "/dev/null", "-e"])
            .arg(format!("trace={trace}"))
            .arg("-e")
            .arg(format!("inject={inject}"))
            .arg(common::BIN);
        let mut c = {
            // The environment `common::command` gives, on strace instead.
            let template = common::command(&dir);
            for (k, v) in template.get_envs() {
                match v {
                    Some(v) => c.env(k, v),
                    None => c.env_remove(k),
                };
            }
            c.current_dir(dir.path());
            c
        };
        let strace = c
            .args(["run", "--config"])
            .arg(&path)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("run strace (apt-get install strace)");
        let sp = strace.id() as i32;
        let mut t = Traced {
            dir,
            strace,
            root: 0,
            strace_pid: sp,
        };
        t.root = t.poll("the root under strace", || {
            // strace may fork a short-lived helper first: the root is the
            // child that has become `forkroot`.
            common::children(sp)
                .into_iter()
                .find(|p| p.comm == "forkroot")
                .map(|p| p.pid)
        });
        t
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("root.log")).unwrap_or_default()
    }

    fn poll<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = std::time::Instant::now() + common::DEADLINE;
        loop {
            if let Some(v) = f() {
                return v;
            }
            if std::time::Instant::now() > deadline {
                let proc = |f: &str| {
                    std::fs::read_to_string(format!("/proc/{}/{f}", self.root)).unwrap_or_default()
                };
                panic!(
                    "timed out waiting for {what}\n{:?}\n--- root {} ---\nwchan {} syscall {}{}\n--- root log ---\n{}",
                    common::descendants(self.strace_pid),
                    self.root,
                    proc("wchan"),
                    proc("syscall"),
                    proc("status").lines().filter(|l| l.starts_with("State") || l.starts_with("TracerPid")).collect::<Vec<_>>().join(" "),
                    self.log()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Daemon `name`'s entry of `ctl status --json` (`None` while the root
    /// does not answer).
    fn daemon_status(&self, name: &str) -> Option<serde_json::Value> {
        common::daemons_status_in(&self.dir)?
            .into_iter()
            .find(|d| d["name"] == name)
    }

    /// The root's children named `forkroot: NAME`.
    fn daemons_named(&self, name: &str) -> Vec<common::Proc> {
        let comm = common::comm_of(name);
        common::children(self.root)
            .into_iter()
            .filter(|p| p.comm == comm && p.state != 'Z')
            .collect()
    }

    /// Waits for strace (and so the root) to exit; the root's exit code.
    fn wait_code(&mut self) -> Option<i32> {
        let strace = &mut self.strace;
        let mut status = None;
        let deadline = std::time::Instant::now() + common::WATCHDOG;
        while status.is_none() && std::time::Instant::now() < deadline {
            status = strace.try_wait().expect("wait for strace");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(status.is_some(), "the root did not exit\n{}", self.log());
        status.and_then(|s| s.code())
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        if let Ok(None) = self.strace.try_wait() {
            common::kill_descendants(self.strace.id() as i32);
            let _ = self.strace.kill();
            let _ = self.strace.wait();
        }
        // A root killed here leaves its cgroup (as a `Tree`'s would).
        common::remove_top_cgroup(&self.dir.path().join("ctl.sock"));
    }
}

#[test]
fn a_child_whose_setup_pipe_cannot_be_watched_is_killed_not_left_running() {
    // The root's eighth epoll_ctl is the first daemon's setup pipe (after
    // the signalfd, the hand-over window's sync pipe, the control socket,
    // the notify socket, the daemon's stdout and stderr pipes, and the new
    // process's pidfd; ninth where a cgroup v2 hierarchy puts its
    // cgroup.events watch in the set first): it fails with ENOSPC, as when
    // the user's epoll watches are exhausted.
    let nth = if common::cgroup2_mount().is_some() {
        9
    } else {
        8
    };
    let mut t = Traced::start(
        "[[daemon]]\nname = \"idle\"\nkind = \"idle\"\n",
        "epoll_ctl",
        &format!("epoll_ctl:error=ENOSPC:when={nth}"),
    );
    let line = t.poll("the failed watch reported", || {
        t.log()
            .lines()
            .find(|l| l.contains("setup pipe") && l.contains("daemon=idle"))
            .map(str::to_owned)
    });
    assert!(line.contains("No space left"), "{line}");
    t.poll("the daemon restarted", || {
        t.log().contains("restarts=1").then_some(())
    });
    // One owner of the region: the first child was killed and reaped, not
    // left running beside its replacement.
    t.poll("exactly one idle process", || {
        (t.daemons_named("idle").len() == 1).then_some(())
    });
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(t.daemons_named("idle").len(), 1, "{}", t.log());
    common::send(t.root, libc::SIGTERM).unwrap();
    assert_eq!(t.wait_code(), Some(0), "{}", t.log());
}

#[test]
fn a_root_level_error_stops_the_daemons_gracefully_before_exit_70() {
    // The first waitid (reaping the daemon the test kills) fails: the root
    // cannot supervise any more, and must stop the others cleanly.
    let mut t = Traced::start(
        "[root]\nstop_timeout = \"5s\"\n\
         [[daemon]]\nname = \"polite\"\n\
         exec = [\"/bin/sh\", \"-c\", \"trap 'echo term > @DIR@/polite.term; exit 0' TERM; \
         echo up > @DIR@/polite.up; while :; do sleep 0.05; done\"]\n\
         [[daemon]]\nname = \"victim\"\nkind = \"idle\"\n",
        "waitid",
        "waitid:error=EINVAL:when=1",
    );
    let up = t.dir.path().join("polite.up");
    t.poll("polite up", || up.exists().then_some(()));
    let victim = t.poll("victim running", || {
        t.daemons_named("victim").first().map(|p| p.pid)
    });
    common::send(victim, libc::SIGKILL).unwrap();
    assert_eq!(t.wait_code(), Some(70), "{}", t.log());
    let term = std::fs::read_to_string(t.dir.path().join("polite.term")).unwrap_or_default();
    assert_eq!(
        term.trim(),
        "term",
        "polite was not stopped with SIGTERM\n{}",
        t.log()
    );
    assert!(t.log().contains("stopping every daemon"), "{}", t.log());
}

/// Makes the root of `c` run as `uid` (and gid), with its temp dir (its
/// current directory) owned by that user: limits such as RLIMIT_NPROC bind
/// only a user other than root, and /proc's checks only bite between equals.
fn as_user(c: &mut std::process::Command, uid: u32) {
    use std::os::unix::process::CommandExt;
    let dir = c.get_current_dir().expect("the root runs in its temp dir");
    std::os::unix::fs::chown(dir, Some(uid), Some(uid)).expect("chown the temp dir");
    c.uid(uid).gid(uid);
}

/// Runs `script` with `sh -c` as `uid`; whether it exited 0.
fn sh_as(uid: u32, script: &str) -> bool {
    use std::os::unix::process::CommandExt;
    std::process::Command::new("/bin/sh")
        .args(["-c", script])
        .uid(uid)
        .gid(uid)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run sh")
        .success()
}

#[test]
fn the_root_is_not_dumpable_and_its_daemons_are() {
    const UID: u32 = 61_002;
    let t = Tree::start_with("[[daemon]]\nname = \"idle\"\nkind = \"idle\"\n", |c| {
        as_user(c, UID)
    });
    let daemon = t.poll("idle running", || running(&t, "idle"));
    // The region arena's descriptor in the root, read-write.
    let fd = t.poll("the root's arena descriptor", || {
        std::fs::read_dir(format!("/proc/{}/fd", t.pid))
            .ok()?
            .flatten()
            .find(|e| {
                std::fs::read_link(e.path())
                    .is_ok_and(|l| l.to_string_lossy().contains("forkroot:arena"))
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
    });
    // Another process of the root's user cannot open it (and so cannot
    // write any daemon's region through it), nor list the root's fds.
    let open = format!("exec 3<> /proc/{}/fd/{fd}", t.pid);
    assert!(
        !sh_as(UID, &open),
        "a process of the same user opened {open}"
    );
    assert!(!sh_as(UID, &format!("ls /proc/{}/fd", t.pid)));
    // The daemon, its descriptors closed, is dumpable again: its user can
    // inspect it, and a crash of it can dump core.
    // (It becomes so after the root sees it running: wait for it.)
    t.poll("the daemon to be dumpable", || {
        sh_as(UID, &format!("ls /proc/{daemon}/fd")).then_some(())
    });
}

#[test]
fn environment_bytes_reach_an_exec_d_program_unchanged() {
    use std::os::unix::ffi::OsStrExt;
    let value = std::ffi::OsStr::from_bytes(b"a\xffb");
    let t = Tree::start_with(
        "[[daemon]]\nname = \"env\"\nrestart = \"temporary\"\n\
         exec = [\"/bin/sh\", \"-c\", \"printf %s \\\"$TEST_BYTES\\\" > @DIR@/env.tmp && mv @DIR@/env.tmp @DIR@/env.out\"]\n",
        |c| {
            c.env("TEST_BYTES", value);
        },
    );
    let out = t.path("env.out");
    let got = t.poll("the program's output", || std::fs::read(&out).ok());
    assert_eq!(got, b"a\xffb", "{:?}", String::from_utf8_lossy(&got));
}

/// Sets `resource` of the root of `c` to `limit` (soft and hard) before it
/// starts.
fn limit(c: &mut std::process::Command, resource: libc::__rlimit_resource_t, limit: u64) {
    use std::os::unix::process::CommandExt;
    let lim = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: the closure runs in the forked child before exec and makes
    // one async-signal-safe call on a value it owns.
    unsafe {
        c.pre_exec(move || {
            if libc::setrlimit(resource, &lim) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// The daemon's state and fault in `ctl status --json`.
fn state_and_fault(t: &Tree, name: &str) -> Option<(String, String)> {
    let d = t.daemon_status(name)?;
    Some((
        d["state"].as_str()?.to_owned(),
        d["fault"].as_str().unwrap_or("").to_owned(),
    ))
}

/// Two idle daemons `a` and `b` under a supervisor that gives up after
/// two restarts in a minute: a start the machine refuses must not count.
const TWO_IDLE: &str = "[supervisor]\nintensity = 2\nperiod = \"60s\"\n\
    [[daemon]]\nname = \"a\"\nkind = \"idle\"\n\
    [[daemon]]\nname = \"b\"\nkind = \"idle\"\n";

/// Waits until `b` is in backoff with a fault containing `what`, has been
/// refused three times (past the intensity, had it counted), and `a` ran
/// on untouched.
fn refused_three_times(t: &Tree, what: &str) {
    let a = t.poll("a running", || running(t, "a"));
    let (_, fault) = t.poll("b in backoff with a fault", || {
        state_and_fault(t, "b").filter(|(s, f)| s == "backoff" && !f.is_empty())
    });
    assert!(fault.contains(what), "fault: {fault}");
    // The plain `ctl status` says why, too.
    let out = t.ctl(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("fault: cannot start") && text.contains(what),
        "{text}"
    );
    t.poll("three refused starts of b", || {
        (t.log_lines(&["cannot start", "daemon=b"]).len() >= 3).then_some(())
    });
    assert!(root_alive(t), "{}", t.log());
    assert_eq!(running(t, "a"), Some(a), "a was touched\n{}", t.log());
}

#[test]
fn fork_refused_by_rlimit_nproc_is_retried_with_backoff() {
    // RLIMIT_NPROC counts every process of the uid on the machine: a uid
    // of this test process's own, so that the same test running elsewhere
    // at once (another checkout) does not take the slot it frees.
    let uid = 200_000 + std::process::id() % 100_000;
    // The root and one daemon: the second fork fails with EAGAIN.
    let mut t = Tree::start_with(TWO_IDLE, |c| {
        as_user(c, uid);
        limit(c, libc::RLIMIT_NPROC, 2);
    });
    refused_three_times(&t, "Resource temporarily unavailable");
    // A process slot comes free: the next retry takes it.
    let out = t.ctl(&["stop", "a"]);
    assert!(out.status.success(), "{out:?}");
    t.poll("b running once a process is allowed", || running(&t, "b"));
    assert_eq!(state_and_fault(&t, "b").unwrap().1, "", "the fault stays");
    stop_cleanly(&mut t);
}

/// The open descriptors of process `pid`, by number.
fn fds(pid: i32) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// Sets the soft RLIMIT_NOFILE of process `pid` (its hard limit kept).
fn set_soft_nofile(pid: i32, soft: u64) {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `old` is a valid rlimit to fill; nothing is set.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    // SAFETY: `new` is a valid rlimit; lowering or raising a soft limit
    // below the hard one needs no privilege over a process of our user.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

#[test]
fn descriptors_exhausted_in_the_root_are_retried_with_backoff() {
    let mut t = Tree::start(TWO_IDLE);
    let a = t.poll("a running", || running(&t, "a"));
    t.poll("b running", || running(&t, "b"));
    // Room for one more descriptor (a control connection), not for the two
    // ends of a daemon's setup pipe: the limit is the second free number,
    // read when no control connection is open (the same set twice).
    let held = t.poll("the root's descriptors at rest", || {
        let first = fds(t.pid);
        std::thread::sleep(std::time::Duration::from_millis(50));
        (fds(t.pid) == first).then_some(first)
    });
    let second_free = (0u64..)
        .filter(|n| !held.contains(n))
        .nth(1)
        .expect("a free number");
    set_soft_nofile(t.pid, second_free);
    common::send(a, libc::SIGKILL).unwrap();
    let (_, fault) = t.poll("a in backoff with a fault", || {
        state_and_fault(&t, "a").filter(|(s, f)| s == "backoff" && !f.is_empty())
    });
    assert!(fault.contains("Too many open files"), "fault: {fault}");
    t.poll("a refused twice", || {
        (t.log_lines(&["cannot start", "daemon=a"]).len() >= 2).then_some(())
    });
    assert!(root_alive(&t), "{}", t.log());
    set_soft_nofile(t.pid, 1024);
    t.poll("a running once descriptors are allowed", || {
        running(&t, "a")
    });
    stop_cleanly(&mut t);
}

/// A tmpfs mounted for a test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: std::path::PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&path).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size}"))
            .arg("tmpfs")
            .arg(&path)
            .status()
            .expect("run mount")
            .success();
        assert!(ok, "mount a tmpfs at {}", path.display());
        Tmpfs(path)
    }

    fn resize(&self, size: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o"])
            .arg(format!("remount,size={size}"))
            .arg(&self.0)
            .status()
            .expect("run mount")
            .success();
        assert!(ok, "remount {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_state_dir_stops_only_the_daemon_whose_region_does_not_fit() {
    let dir = tempfile::Builder::new()
        .prefix("forkroot-test-fs")
        .tempdir()
        .unwrap();
    // 1 MiB: the small region (64 KiB + 64 KiB) fits, the big one does not.
    let fs = Tmpfs::mount(dir.path().join("state"), "1m");
    let config = format!(
        "[root]\nstate_dir = \"{}\"\n\
         [supervisor]\nintensity = 2\nperiod = \"60s\"\n\
         [[daemon]]\nname = \"a\"\nkind = \"idle\"\nmemory = \"64KiB\"\n\
         [[daemon]]\nname = \"b\"\nkind = \"idle\"\nmemory = \"4MiB\"\n",
        fs.0.display()
    );
    let mut t = Tree::start(&config);
    refused_three_times(&t, "No space left on device");
    fs.resize("16m");
    t.poll("b running once there is room", || running(&t, "b"));
    stop_cleanly(&mut t);
    drop(t);
}

/// Sends one RESP command on `s` and reads its one-line reply (`+OK`,
/// `-ERR ...`); an I/O error when the daemon went away.
fn resp(s: &mut std::os::unix::net::UnixStream, args: &[&[u8]]) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut req = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        req.extend_from_slice(a);
        req.extend_from_slice(b"\r\n");
    }
    s.write_all(&req)?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        if s.read(&mut b)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        line.push(b[0]);
    }
    Ok(String::from_utf8_lossy(&line).trim_end().to_owned())
}

#[test]
fn a_daemon_that_zeroed_its_state_writes_on_into_a_full_state_dir() {
    let dir = tempfile::Builder::new()
        .prefix("forkroot-test-fs")
        .tempdir()
        .unwrap();
    let fs = Tmpfs::mount(dir.path().join("state"), "16m");
    let sock = dir.path().join("kv.sock");
    let config = format!(
        "[root]\nstate_dir = \"{}\"\n\
         [[daemon]]\nname = \"kv\"\nkind = \"kv\"\nmemory = \"4MiB\"\n\
         [daemon.args]\nlisten = \"{}\"\n",
        fs.0.display(),
        sock.display()
    );
    let mut t = Tree::start(&config);
    let pid = t.poll("kv running", || running(&t, "kv"));
    // The kv daemon zeroed its empty state when it attached it (the first
    // start of a region, as any `fresh` start). One write: it is serving.
    let mut s = t.poll("kv listening", || {
        std::os::unix::net::UnixStream::connect(&sock).ok()
    });
    s.set_read_timeout(Some(common::DEADLINE)).unwrap();
    assert_eq!(resp(&mut s, &[b"SET", b"first", b"1"]).unwrap(), "+OK");
    // Every free block of the file system taken by another file.
    {
        use std::io::Write;
        let mut fill = std::fs::File::create(fs.0.join("fill")).unwrap();
        let chunk = vec![0x5au8; 64 * 1024];
        let full = loop {
            if let Err(e) = fill.write_all(&chunk) {
                break e;
            }
        };
        assert_eq!(full.raw_os_error(), Some(libc::ENOSPC), "{full}");
    }
    // Writes reach pages of the state the daemon has not touched since it
    // zeroed it: each is answered (stored, or refused as the store filled),
    // never a daemon killed by SIGBUS on a page its file no longer has.
    let value = vec![b'v'; 2000];
    let mut stored = 0;
    for i in 0..2000 {
        let key = format!("k{i}");
        let reply = resp(&mut s, &[b"SET", key.as_bytes(), &value]).unwrap_or_else(|e| {
            panic!(
                "SET {key} after {stored} writes: {e}\n--- root log ---\n{}",
                t.log()
            )
        });
        if reply != "+OK" {
            assert!(reply.starts_with("-OOM"), "SET {key}: {reply}");
            break;
        }
        stored += 1;
    }
    assert!(stored > 1000, "only {stored} writes fit in 4 MiB");
    assert_eq!(running(&t, "kv"), Some(pid), "{}", t.log());
    assert!(!t.log().contains("SIGBUS"), "{}", t.log());
    stop_cleanly(&mut t);
    drop(t);
}

#[test]
fn regions_past_the_address_space_limit_are_refused_before_anything_starts() {
    // RLIMIT_AS of 512 MiB (address space, a real limit the kernel applies
    // to every mmap): a 1 GiB region cannot be mapped, whatever memory the
    // machine has.
    let (dir, config) = config_in_temp_dir(
        "[[daemon]]\nname = \"small\"\nkind = \"counter\"\n\
         [daemon.args]\nout = \"@DIR@/small.out\"\n\
         [[daemon]]\nname = \"big\"\nkind = \"idle\"\nmemory = \"1GiB\"\n",
    );
    let ran = common::run_to_end_with(&dir, &["run", "--config", config.to_str().unwrap()], |c| {
        limit(c, libc::RLIMIT_AS, 512 << 20)
    });
    // An internal error of the root (the config is valid), with the reason
    // and the daemon that asks for the most named.
    assert_eq!(ran.code, Some(70), "{ran:?}");
    let line = ran
        .stderr
        .lines()
        .find(|l| l.contains("mapping regions"))
        .unwrap_or_else(|| panic!("no error line: {ran:?}"));
    assert!(
        line.contains("Cannot allocate memory") && line.contains("\"big\""),
        "{line}"
    );
    // Nothing half-started: no daemon ran, no control socket left behind.
    nothing_started(&ran, dir.path());
}

/// A temp dir with `config` written in it (see `common::write_config`).
fn config_in_temp_dir(config: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("forkroot-test")
        .tempdir()
        .unwrap();
    let path = common::write_config(&dir, config);
    (dir, path)
}

/// A root that stopped before anything started: no daemon ran (the
/// `small` counter wrote nothing), no control socket left in `dir`.
fn nothing_started(ran: &common::Ran, dir: &std::path::Path) {
    assert!(!ran.stderr.contains("started daemon"), "{}", ran.stderr);
    assert!(!dir.join("small.out").exists());
    assert_eq!(sockets_in(dir), Vec::<String>::new());
}

/// The names of the sockets in `dir` (a control socket a root left behind).
fn sockets_in(dir: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::FileTypeExt;
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn no_memory_for_the_region_arena_stops_the_root_before_anything_starts() {
    // The root's first fallocate gives the arena memfd (every built-in
    // daemon's region without a state_dir) its pages: it fails with ENOMEM,
    // as when the machine's memory (or the root's memory cgroup) is full.
    let (dir, config) = config_in_temp_dir(
        "[[daemon]]\nname = \"small\"\nkind = \"counter\"\n\
         [daemon.args]\nout = \"@DIR@/small.out\"\n",
    );
    let ran = common::run_bin_to_end(
        std::path::Path::new("strace"),
        &dir,
        &[
            "-o",
            "/dev/null",
            "-e",
            "trace=fallocate",
            "-e",
            "inject=fallocate:error=ENOMEM:when=1",
            common::BIN,
            "run",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    assert_eq!(ran.code, Some(70), "{ran:?}");
    assert!(
        ran.stderr
            .lines()
            .any(|l| l.contains("mapping regions: the region arena")
                && l.contains("Cannot allocate memory")),
        "{ran:?}"
    );
    nothing_started(&ran, dir.path());
}

/// With too few descriptors allowed for the hand-over window (a hard
/// limit of 64), the root says so and forks with a copy of its table:
/// its daemons start and restart as usual.
#[test]
fn too_few_descriptors_for_the_hand_over_window_is_said_and_forks_copy() {
    let mut t = Tree::start_with(TWO_IDLE, |c| limit(c, libc::RLIMIT_NOFILE, 64));
    t.wait_log(&["cannot reserve the hand-over window"]);
    let a = t.poll("a running", || running(&t, "a"));
    common::send(a, libc::SIGKILL).unwrap();
    t.poll("a restarted", || running(&t, "a").filter(|&p| p != a));
    t.poll("b running", || running(&t, "b"));
    stop_cleanly(&mut t);
}

#[test]
fn a_standby_whose_fork_failed_is_forked_again_later() {
    // The root forks (no zygote): its first clone3 is the daemon, its
    // second the standby, which fails with EAGAIN (as under a `pids_max`
    // or a full process table), and so does the first retry, a second
    // later. The next, two seconds after that, succeeds: the daemon is not
    // left without a standby until its next start. Without a cgroup v2
    // hierarchy the root can write (as root), the standby is forked with
    // fork(2) (glibc's `clone`), where there is no clone3 to make fail.
    // SAFETY: geteuid has no preconditions.
    if common::cgroup2_mount().is_none() || unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: no cgroups for the root, so no clone3 to inject a failure into");
        return;
    }
    let t = Traced::start(
        "[root]\nzygote = false\n\
         [[daemon]]\nname = \"idle\"\nkind = \"idle\"\nstandby = true\n",
        "clone3",
        "clone3:error=EAGAIN:when=2..3",
    );
    let primary = t.poll("the daemon started", || {
        t.log()
            .lines()
            .find(|l| l.contains("started") && l.contains("daemon=idle"))
            .and_then(common::log_pid)
    });
    let failed = t.poll("two failed standby forks", || {
        let lines: Vec<String> = t
            .log()
            .lines()
            .filter(|l| l.contains("cannot fork a standby"))
            .map(str::to_owned)
            .collect();
        (lines.len() >= 2).then_some(lines)
    });
    assert!(
        failed[0].contains("Resource temporarily unavailable") && failed[0].contains("retry_in=1s"),
        "{}",
        failed[0]
    );
    assert!(
        failed[1].contains("retry_in=2s"),
        "the pause doubles: {}",
        failed[1]
    );
    // The third try forks it: once set up, the root says so
    // (`standby_pid` in `ctl status`). Not before: a standby killed
    // before its set-up is done cannot take over, and a process of that
    // name blocked in a read may still be waiting for its set-up.
    let standby = t.poll("a standby the root reports ready", || {
        let forked = t
            .daemons_named("idle")
            .into_iter()
            .map(|p| p.pid)
            .find(|&p| p != primary)?;
        let ready = t.daemon_status("idle")?["standby_pid"].as_i64()?;
        (ready == i64::from(forked)).then_some(forked)
    });
    assert_eq!(
        t.log().matches("cannot fork a standby").count(),
        2,
        "{}",
        t.log()
    );
    // It takes over when the daemon dies.
    assert_eq!(common::send(primary, libc::SIGKILL), Ok(()));
    t.poll("the standby took over", || {
        t.log()
            .lines()
            .any(|l| l.contains("standby took over") && common::log_pid(l) == Some(standby))
            .then_some(())
    });
}

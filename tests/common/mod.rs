//! Helpers shared by the integration tests: run the real `forkroot` binary
//! on a config in a temp dir, watch what it logs and what its `probe`
//! daemons report, inspect its process tree through /proc, and make sure
//! nothing can hang or outlive a test.
//!
//! Every wait is a poll of a condition with a deadline; no test sleeps a
//! fixed time to synchronise, and none asserts a maximum runtime. A watchdog
//! thread SIGKILLs the root (and what it forked) if a test runs past
//! [`WATCHDOG`].

#![allow(dead_code)] // each test binary uses a different part of this

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_forkroot");

/// How long any one condition may take to become true before the test
/// fails (generous: the machine may be loaded).
pub(crate) const DEADLINE: Duration = Duration::from_secs(10);

/// After this, the watchdog kills the tree and the test fails.
pub(crate) const WATCHDOG: Duration = Duration::from_secs(20);

/// Placeholder in config text for the test's temp dir.
pub(crate) const DIR: &str = "@DIR@";

/// A running (or finished) `forkroot run` over a config in its own temp dir.
pub(crate) struct Tree {
    pub(crate) dir: TempDir,
    child: Arc<Mutex<Child>>,
    /// The binary running the root: [`BIN`], or an author's own.
    bin: PathBuf,
    /// The root's pid.
    pub(crate) pid: i32,
    fired: Arc<AtomicBool>,
    disarm: Option<mpsc::Sender<()>>,
    watchdog: Option<thread::JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Tree {
    /// Writes `config` (with [`DIR`] replaced by the temp dir, and a control
    /// socket inside it) and starts `forkroot run` on it, logging to
    /// `root.log` in the temp dir.
    pub(crate) fn start(config: &str) -> Tree {
        Tree::start_with(config, |_| {})
    }

    /// [`Tree::start`], with the root's command adjusted by `adjust` first
    /// (to start it in an unusual environment).
    pub(crate) fn start_with(config: &str, adjust: impl FnOnce(&mut Command)) -> Tree {
        Tree::launch(Path::new(BIN), config, adjust)
    }

    /// [`Tree::start`] with another binary that has the `forkroot` command
    /// line (an author's own, built from `examples/`).
    pub(crate) fn start_bin(bin: &Path, config: &str) -> Tree {
        Tree::launch(bin, config, |_| {})
    }

    fn launch(bin: &Path, config: &str, adjust: impl FnOnce(&mut Command)) -> Tree {
        let dir = tempfile::Builder::new()
            .prefix("forkroot-test")
            .tempdir()
            .expect("temp dir");
        write_config(&dir, config);
        let child = spawn_root(bin, &dir, adjust);
        let pid = child.id() as i32;
        let mut t = Tree {
            dir,
            child: Arc::new(Mutex::new(child)),
            bin: bin.to_owned(),
            pid,
            fired: Arc::new(AtomicBool::new(false)),
            disarm: None,
            watchdog: None,
            status: None,
        };
        t.arm();
        t
    }

    /// Starts a new root on the same config and temp dir, as systemd would
    /// after the old one died (which must have been waited for).
    pub(crate) fn respawn(&mut self) {
        self.respawn_with(|_| {});
    }

    /// [`Tree::respawn`], with the root's command adjusted by `adjust`.
    pub(crate) fn respawn_with(&mut self, adjust: impl FnOnce(&mut Command)) {
        assert!(self.status.is_some(), "respawn after wait_exit");
        let child = spawn_root(&self.bin, &self.dir, adjust);
        self.pid = child.id() as i32;
        *self.child.lock().unwrap() = child;
        self.status = None;
        if let Some(w) = self.watchdog.take() {
            let _ = w.join();
        }
        self.arm();
    }

    /// Arms the watchdog: past [`WATCHDOG`], the tree is killed and the
    /// test fails instead of hanging.
    fn arm(&mut self) {
        let (disarm, rx) = mpsc::channel::<()>();
        let child = Arc::clone(&self.child);
        let fired = Arc::clone(&self.fired);
        let pid = self.pid;
        self.watchdog = Some(thread::spawn(move || {
            if rx.recv_timeout(WATCHDOG) != Err(mpsc::RecvTimeoutError::Timeout) {
                return;
            }
            // Holding the lock, the root cannot be reaped under us, so
            // `pid` still names it (or its zombie).
            let mut c = child.lock().unwrap();
            if let Ok(None) = c.try_wait() {
                eprintln!("watchdog: the test ran past {WATCHDOG:?}; killing the tree");
                fired.store(true, Ordering::SeqCst);
                kill_descendants(pid);
                let _ = c.kill();
            }
        }));
        self.disarm = Some(disarm);
    }

    /// Runs `forkroot ctl --socket DIR/ctl.sock ARGS` against this tree.
    #[allow(dead_code)]
    pub(crate) fn ctl(&self, args: &[&str]) -> std::process::Output {
        command(&self.dir)
            .args(["ctl", "--socket"])
            .arg(self.path("ctl.sock"))
            .args(args)
            .output()
            .expect("run forkroot ctl")
    }

    /// The tree's control socket.
    pub(crate) fn socket(&self) -> PathBuf {
        self.path("ctl.sock")
    }

    /// Runs `forkroot ctl --socket DIR/ctl.sock ARGS` to completion (killed,
    /// failing the test, past the [`DEADLINE`]).
    pub(crate) fn ctl_run(&self, args: &[&str]) -> Ran {
        let socket = self.socket();
        let mut all = vec!["ctl", "--socket", socket.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        run_to_end(&self.dir, &all)
    }

    /// Every daemon's entry of `ctl status --json` (`None` while the root
    /// does not answer).
    #[allow(dead_code)]
    pub(crate) fn daemons_status(&self) -> Option<Vec<serde_json::Value>> {
        daemons_status_in(&self.dir)
    }

    /// The entry of daemon `name` in `ctl status --json`.
    #[allow(dead_code)]
    pub(crate) fn daemon_status(&self, name: &str) -> Option<serde_json::Value> {
        self.daemons_status()?
            .into_iter()
            .find(|d| d["name"] == name)
    }

    /// A path in the temp dir.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// What the root has logged so far.
    pub(crate) fn log(&self) -> String {
        fs::read_to_string(self.path("root.log")).unwrap_or_default()
    }

    /// Polls `f` until it gives a value; fails the test (showing the log)
    /// after [`DEADLINE`] or if the watchdog fired.
    pub(crate) fn poll<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(v) = f() {
                return v;
            }
            if self.fired.load(Ordering::SeqCst) {
                panic!(
                    "watchdog fired while waiting for {what}\n--- root log ---\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}\n--- root log ---\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until the log has a line containing every one of `parts`;
    /// returns that line.
    pub(crate) fn wait_log(&self, parts: &[&str]) -> String {
        self.poll(&format!("a log line with {parts:?}"), || {
            self.log()
                .lines()
                .find(|l| parts.iter().all(|p| l.contains(p)))
                .map(str::to_owned)
        })
    }

    /// Waits until `n` lines of the log contain every one of `parts` (the
    /// root logs some events after the child it started already runs).
    pub(crate) fn wait_log_count(&self, parts: &[&str], n: usize) {
        self.poll(&format!("{n} log lines with {parts:?}"), || {
            (self.log_lines(parts).len() >= n).then_some(())
        });
    }

    /// Lines of the log containing every one of `parts`.
    pub(crate) fn log_lines(&self, parts: &[&str]) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .map(str::to_owned)
            .collect()
    }

    /// The `start` lines a probe wrote to `NAME.out` so far.
    pub(crate) fn starts(&self, name: &str) -> Vec<Start> {
        starts(&self.path(&format!("{name}.out")))
    }

    /// Every line a probe wrote to `NAME.out` so far.
    pub(crate) fn out(&self, name: &str) -> Vec<String> {
        fs::read_to_string(self.path(&format!("{name}.out")))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Waits until the probe `name` has written at least `n` start lines.
    pub(crate) fn wait_starts(&self, name: &str, n: usize) -> Vec<Start> {
        self.poll(&format!("{n} start lines from {name}"), || {
            let s = self.starts(name);
            (s.len() >= n).then_some(s)
        })
    }

    /// Sends `signal` to the root.
    pub(crate) fn signal(&self, signal: i32) {
        assert!(self.status.is_none(), "the root was already reaped");
        send(self.pid, signal).expect("signal the root");
    }

    /// Every process of the tree right now: the root's descendants.
    pub(crate) fn processes(&self) -> Vec<Proc> {
        descendants(self.pid)
    }

    /// The root's live children whose name (comm) is `forkroot: NAME`, cut
    /// to 15 bytes as the kernel does. Zombies are left out: a daemon's
    /// transaction reparented to the root when the daemon died has the
    /// same name until the root reaps it.
    pub(crate) fn daemons_named(&self, name: &str) -> Vec<Proc> {
        let comm = comm_of(name);
        children(self.pid)
            .into_iter()
            .filter(|p| p.comm == comm && p.state != 'Z')
            .collect()
    }

    /// Waits for the root to exit and returns its status.
    pub(crate) fn wait_exit(&mut self) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        let child = Arc::clone(&self.child);
        let status = self.poll("the root to exit", || {
            child.lock().unwrap().try_wait().unwrap()
        });
        self.status = Some(status);
        self.disarm.take();
        status
    }

    /// Waits for the root to exit and returns its exit code (failing the
    /// test if a signal ended it).
    pub(crate) fn wait_code(&mut self) -> i32 {
        let status = self.wait_exit();
        match status.code() {
            Some(c) => c,
            None => panic!(
                "the root ended with {status:?}\n--- root log ---\n{}",
                self.log()
            ),
        }
    }

    /// Waits until every one of `procs` is gone: no such process, not even
    /// a zombie (a process with the same pid but a later start time counts
    /// as gone: the pid was reused).
    pub(crate) fn wait_gone(&self, procs: &[Proc]) {
        for p in procs {
            self.poll(&format!("{p:?} to be gone"), || p.is_gone().then_some(()));
        }
    }
}

impl Tree {
    /// After the root exited: waits until every one of `procs` is dead
    /// (gone, or a zombie left to init).
    pub(crate) fn wait_dead(&self, procs: &[Proc]) {
        for p in procs {
            self.poll(&format!("{p:?} to die"), || p.is_dead().then_some(()));
        }
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        // A test that failed half-way leaves nothing running behind it.
        if let Ok(mut c) = self.child.lock() {
            if let Ok(None) = c.try_wait() {
                kill_descendants(self.pid);
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.disarm.take();
        if let Some(w) = self.watchdog.take() {
            let _ = w.join();
        }
        remove_top_cgroup(&self.socket());
    }
}

/// The cgroup v2 mount, from /proc/self/mountinfo.
pub(crate) fn cgroup2_mount() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split(' ').next()? != "cgroup2" {
            return None;
        }
        left.split(' ').nth(4).map(PathBuf::from)
    })
}

/// A root run from the cgroup v2 hierarchy's top cgroup works in
/// `forkroot@SOCKET` there; one that was killed leaves it behind (emptied
/// as its daemons die with it, PDEATHSIG being asynchronous). Removes it
/// once empty.
pub(crate) fn remove_top_cgroup(socket: &Path) {
    let Some(mount) = cgroup2_mount() else { return };
    let top = mount.join(format!(
        "forkroot@{}",
        socket.to_string_lossy().replace('/', "_")
    ));
    // rmdir fails (EBUSY) while a dead daemon is not yet reaped.
    let deadline = Instant::now() + DEADLINE;
    while top.exists() && Instant::now() < deadline {
        if remove_cgroup_tree(&top).is_err() {
            thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Removes cgroup `dir` and every cgroup below it, deepest first (a
/// daemon's cgroup holds its leaves `a` and `b`, a group's its members'):
/// rmdir refuses a cgroup with a child. Fails while any holds a process.
pub(crate) fn remove_cgroup_tree(dir: &Path) -> std::io::Result<()> {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path())?;
            }
        }
    }
    fs::remove_dir(dir)
}

/// Starts `BIN run` on `dir`'s `forkroot.toml`, logging (appending) to
/// `root.log` there.
fn spawn_root(bin: &Path, dir: &TempDir, adjust: impl FnOnce(&mut Command)) -> Child {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("root.log"))
        .expect("root.log");
    let mut c = command_of(bin, dir);
    adjust(&mut c);
    c.args(["run", "--config"])
        .arg(dir.path().join("forkroot.toml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup"))
        .stderr(log)
        .spawn()
        .expect("spawn forkroot")
}

/// Every daemon's entry of `ctl status --json` from the root whose
/// control socket is `dir/ctl.sock` (`None` while it does not answer).
#[allow(dead_code)]
pub(crate) fn daemons_status_in(dir: &TempDir) -> Option<Vec<serde_json::Value>> {
    let out = command(dir)
        .args(["ctl", "--socket"])
        .arg(dir.path().join("ctl.sock"))
        .args(["status", "--json"])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["daemons"].as_array().cloned()
}

/// A `forkroot` command with an environment of its own: the log level
/// fixed, and runtime paths inside the test's temp dir.
pub(crate) fn command(dir: &TempDir) -> Command {
    command_of(Path::new(BIN), dir)
}

/// [`command`] for another binary with the `forkroot` command line.
pub(crate) fn command_of(bin: &Path, dir: &TempDir) -> Command {
    let mut c = Command::new(bin);
    c.env("FORKROOT_LOG", "info")
        .env("XDG_RUNTIME_DIR", dir.path())
        .env_remove("NOTIFY_SOCKET")
        .current_dir(dir.path());
    c
}

/// Writes `config` to `forkroot.toml` in `dir`, with [`DIR`] replaced and,
/// unless the text sets one, a control socket in `dir`, so tests running in
/// parallel never share a path.
pub(crate) fn write_config(dir: &TempDir, config: &str) -> PathBuf {
    let d = dir.path().to_str().expect("utf-8 temp dir");
    let mut text = config.replace(DIR, d);
    if !text.contains("control =") {
        let line = format!("control = \"{d}/ctl.sock\"\n");
        text = if text.contains("[root]\n") {
            text.replacen("[root]\n", &format!("[root]\n{line}"), 1)
        } else {
            format!("[root]\n{line}\n{text}")
        };
    }
    let path = dir.path().join("forkroot.toml");
    fs::write(&path, text).expect("write config");
    path
}

/// One `start PID RESTARTS MONOTONIC_NS` line of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Start {
    pub(crate) pid: i32,
    pub(crate) restarts: u32,
    pub(crate) ns: u64,
}

/// The `start` lines in a probe's out file (none if it does not exist).
pub(crate) fn starts(path: &Path) -> Vec<Start> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(parse_start)
        .collect()
}

/// Parses `start PID RESTARTS NS`.
pub(crate) fn parse_start(line: &str) -> Option<Start> {
    let mut w = line.strip_prefix("start ")?.split(' ');
    let s = Start {
        pid: w.next()?.parse().ok()?,
        restarts: w.next()?.parse().ok()?,
        ns: w.next()?.trim().parse().ok()?,
    };
    w.next().is_none().then_some(s)
}

/// A process seen in /proc, identified by pid and start time (so a reused
/// pid is not mistaken for it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Proc {
    pub(crate) pid: i32,
    pub(crate) ppid: i32,
    pub(crate) comm: String,
    pub(crate) state: char,
    pub(crate) starttime: u64,
}

impl Proc {
    /// Reads /proc/PID/stat.
    pub(crate) fn read(pid: i32) -> Option<Proc> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let open = stat.find('(')?;
        let close = stat.rfind(')')?;
        let comm = stat[open + 1..close].to_owned();
        let f: Vec<&str> = stat[close + 2..].split(' ').collect();
        Some(Proc {
            pid,
            ppid: f.get(1)?.parse().ok()?,
            comm,
            state: f.first()?.chars().next()?,
            // Field 22 of stat; fields after the comm start at field 3.
            starttime: f.get(19)?.parse().ok()?,
        })
    }

    /// Whether this process no longer exists (not even as a zombie).
    pub(crate) fn is_gone(&self) -> bool {
        match Proc::read(self.pid) {
            None => true,
            Some(now) => now.starttime != self.starttime,
        }
    }

    /// Whether this process is gone or dead: a zombie counts, for a
    /// process whose parent (the root) has exited, so that reaping it is
    /// up to init, not to forkroot.
    pub(crate) fn is_dead(&self) -> bool {
        match Proc::read(self.pid) {
            None => true,
            Some(now) => now.starttime != self.starttime || now.state == 'Z',
        }
    }

    /// The same, checked with `kill(pid, 0)` (ESRCH), for a process known
    /// only by its pid.
    pub(crate) fn pid_gone(pid: i32) -> bool {
        send(pid, 0).err() == Some(libc::ESRCH)
    }
}

/// `forkroot: NAME` as the kernel keeps it in comm (15 bytes at most).
pub(crate) fn comm_of(name: &str) -> String {
    let full = format!("forkroot: {name}");
    full.as_bytes()[..full.len().min(15)]
        .iter()
        .map(|&b| b as char)
        .collect()
}

/// Every process in /proc.
pub(crate) fn all_processes() -> Vec<Proc> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(Proc::read)
        .collect()
}

/// The direct children of `pid`.
pub(crate) fn children(pid: i32) -> Vec<Proc> {
    all_processes()
        .into_iter()
        .filter(|p| p.ppid == pid)
        .collect()
}

/// Daemon `name`'s pid once it runs.
pub(crate) fn running_pid(t: &Tree, name: &str) -> i32 {
    t.poll(&format!("{name} running"), || {
        let d = t.daemon_status(name)?;
        (d["state"] == "running")
            .then(|| d["pid"].as_i64())?
            .map(|p| p as i32)
    })
}

/// The zygote among the children of the root `root` (by its title, as
/// the kernel keeps it in comm).
pub(crate) fn zygote_of(root: i32) -> Option<Proc> {
    children(root)
        .into_iter()
        .find(|p| p.comm == "forkroot [zygot" && p.state != 'Z')
}

/// Every descendant of `pid` (children, their children, ...).
pub(crate) fn descendants(pid: i32) -> Vec<Proc> {
    let all = all_processes();
    let mut found: Vec<Proc> = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for p in all.iter().filter(|p| p.ppid == parent) {
            frontier.push(p.pid);
            found.push(p.clone());
        }
    }
    found
}

/// SIGKILLs every descendant of `pid` (used only to clean up after a failed
/// or hung test).
pub(crate) fn kill_descendants(pid: i32) {
    for p in descendants(pid) {
        let _ = send(p.pid, libc::SIGKILL);
    }
}

/// `kill(pid, signal)`, with the errno on failure.
pub(crate) fn send(pid: i32, signal: i32) -> Result<(), i32> {
    // SAFETY: kill has no memory preconditions.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// The `pid=N` field of a log line.
pub(crate) fn log_pid(line: &str) -> Option<i32> {
    line.split(' ')
        .find_map(|w| w.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
}

/// What a short-lived `forkroot` command printed, and its exit code.
#[derive(Debug)]
pub(crate) struct Ran {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Runs `forkroot ARGS` in `dir` to completion, killing it (and failing the
/// test) if it has not exited by the [`DEADLINE`].
pub(crate) fn run_to_end(dir: &TempDir, args: &[&str]) -> Ran {
    run_bin_to_end(Path::new(BIN), dir, args)
}

/// [`run_to_end`], with the command adjusted by `adjust` first (to run it
/// as another user, say).
pub(crate) fn run_to_end_with(
    dir: &TempDir,
    args: &[&str],
    adjust: impl FnOnce(&mut Command),
) -> Ran {
    run_to_end_of(Path::new(BIN), dir, args, adjust)
}

/// [`run_to_end`] for another binary with the `forkroot` command line.
pub(crate) fn run_bin_to_end(bin: &Path, dir: &TempDir, args: &[&str]) -> Ran {
    run_to_end_of(bin, dir, args, |_| {})
}

fn run_to_end_of(
    bin: &Path,
    dir: &TempDir,
    args: &[&str],
    adjust: impl FnOnce(&mut Command),
) -> Ran {
    let out = dir.path().join("cmd.stdout");
    let err = dir.path().join("cmd.stderr");
    let mut cmd = command_of(bin, dir);
    adjust(&mut cmd);
    let mut child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).expect("stdout file"))
        .stderr(fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("spawn forkroot");
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            kill_descendants(child.id() as i32);
            let _ = child.kill();
            let _ = child.wait();
            panic!("forkroot {args:?} did not exit");
        }
        thread::sleep(Duration::from_millis(5));
    };
    Ran {
        code: status.code(),
        stdout: fs::read_to_string(&out).unwrap_or_default(),
        stderr: fs::read_to_string(&err).unwrap_or_default(),
    }
}

/// Runs `bin check` and `bin run` on `config` (in a temp dir) and asserts
/// that both exit 78 with exactly `want` as the lines placed in a daemon
/// (`daemon[..`), say nothing started, and that no daemon wrote a `.out`
/// file.
pub(crate) fn assert_rejected(bin: &Path, config: &str, want: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, config);
    let path = path.to_str().unwrap();
    for cmd in ["check", "run"] {
        let ran = run_bin_to_end(bin, &dir, &[cmd, "--config", path]);
        assert_eq!(ran.code, Some(78), "{cmd}: {ran:?}");
        let got: Vec<&str> = ran
            .stderr
            .lines()
            .filter(|l| l.starts_with("daemon["))
            .collect();
        assert_eq!(got, want, "{cmd}: {ran:?}");
        let summary = format!(
            "{} problems in the configuration; nothing started",
            want.len()
        );
        assert!(ran.stderr.contains(&summary), "{ran:?}");
        assert!(!ran.stderr.contains("started daemon"), "{ran:?}");
    }
    let files: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".out"))
        .collect();
    assert!(files.is_empty(), "a daemon ran: {files:?}");
}

/// An example binary of this package, built once for the profile the
/// tests run in.
pub(crate) fn example(
    name: &'static str,
    cell: &'static std::sync::OnceLock<PathBuf>,
) -> &'static PathBuf {
    cell.get_or_init(|| {
        let bin_dir = Path::new(BIN).parent().expect("bin dir");
        let mut build = Command::new(env!("CARGO"));
        build
            .args(["build", "--quiet", "--example", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if bin_dir.ends_with("release") {
            build.arg("--release");
        }
        assert!(
            build.status().expect("run cargo build").success(),
            "cargo build --example {name} failed"
        );
        bin_dir.join("examples").join(name)
    })
}

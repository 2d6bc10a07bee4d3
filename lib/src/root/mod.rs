//! The root process: one thread, one poll loop, that forks daemons over
//! their preallocated regions, reaps them, and restarts them.
//!
//! The root keeps every fact it acts on in its own private memory (the
//! [`Child`] table below). It reads shared memory only to report on it
//! (heartbeats, flight logs), and treats what it reads there as untrusted.
//!
//! Each daemon moves through a small state machine; `DESIGN.md` has the full
//! state × event table, and each arm of [`Root::on_exit`], [`Root::on_timer`]
//! and friends is one cell of it.

mod control;
mod flight;
mod manager;
mod spawn;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use crate::config::{Config, DaemonConfig, OnRestart, Program, RestartType, Strategy};
use crate::daemon::{Death, ExitReason, Registry, SetupStage};
use crate::handoff::{read_setup, History, Setup};
use crate::region::{RegionSet, RegionSpec};
use crate::sys::{self, Pid, SigSet, WaitStatus};
use spawn::{Plan, Run, Spawned};

/// Exit code: stopped cleanly, every child reaped.
pub const EXIT_OK: i32 = 0;
/// Exit code: the top supervisor's restart intensity was exceeded.
pub const EXIT_GAVE_UP: i32 = 69;
/// Exit code: an internal error of the root itself.
pub const EXIT_INTERNAL: i32 = 70;
/// Exit code: the configuration is invalid; nothing was started.
pub const EXIT_CONFIG: i32 = 78;

/// The pause before retrying a start that failed in the root (fork, or
/// preparing an exec).
const FORK_RETRY: Duration = Duration::from_secs(1);

// How many past deaths the root remembers per daemon.
use crate::handoff::DEATHS_KEPT;

use crate::checkpoint::POISON_WINDOW;

/// Why the root could not run the tree.
#[derive(Debug)]
pub enum RootError {
    /// The configuration names a kind this binary does not have (exit 78).
    Config(Vec<crate::config::Problem>),
    /// A system call the root depends on failed (exit 70).
    Io(&'static str, io::Error),
}

impl RootError {
    /// The documented exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            RootError::Config(_) => EXIT_CONFIG,
            RootError::Io(..) => EXIT_INTERNAL,
        }
    }
}

impl fmt::Display for RootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootError::Config(problems) => {
                for (i, p) in problems.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "{p}")?;
                }
                Ok(())
            }
            RootError::Io(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

impl std::error::Error for RootError {}

fn ctx(what: &'static str) -> impl FnOnce(io::Error) -> RootError {
    move |e| RootError::Io(what, e)
}

/// Where a daemon is in its life. See the state × event table in DESIGN.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Forked; its setup has not finished.
    Starting,
    /// Setup done; its code is running.
    Running,
    /// Dead; waiting out a backoff delay before the restart.
    Backoff,
    /// Asked to stop (SIGTERM); SIGKILL follows at the deadline.
    Stopping,
    /// Not running and not due to run.
    Stopped,
    /// Not running because its supervisor gave up on it.
    Failed,
}

impl State {
    /// The lowercase name shown by `ctl status`.
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Backoff => "backoff",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Failed => "failed",
        }
    }

    /// Whether a process exists for the daemon.
    pub fn has_process(&self) -> bool {
        matches!(self, State::Starting | State::Running | State::Stopping)
    }
}

/// What to do when a stopping daemon has exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterStop {
    /// Stay stopped.
    Rest,
    /// Start it again (`ctl restart`, or a sibling's restart under
    /// `one_for_all`/`rest_for_one`).
    Start,
}

/// The root's private record of one daemon. Never shared.
#[derive(Debug)]
struct Child {
    cfg: DaemonConfig,
    /// `forkroot: NAME`, prepared once so the child only copies it.
    title: Vec<u8>,
    state: State,
    pid: Option<Pid>,
    started: Option<Instant>,
    /// `started` on the monotonic clock daemons write heartbeats with.
    started_ns: u64,
    /// Read end of the setup pipe while the child is starting.
    setup: Option<OwnedFd>,
    /// Set when the setup pipe reported a failure; replaces the exit code.
    setup_failed: Option<ExitReason>,
    /// Restarts so far (ctl restarts and initial starts excluded).
    restarts: u32,
    deaths: Vec<Death>,
    /// The delay before the next restart.
    backoff: Duration,
    /// Pending timer of this child (backoff end, or the SIGKILL deadline).
    deadline: Option<Instant>,
    after_stop: AfterStop,
    /// The pre-forked backup (`standby = true`).
    standby: Option<Standby>,
    /// To be stopped for a group restart, after the siblings after it.
    stop_pending: bool,
    /// How its last process ended (deaths and stops alike), for status.
    last_exit: Option<(ExitReason, Duration)>,
    /// A checkpoint found poison: the next start resumes from an older one.
    resume_before: Option<u64>,
}

/// A standby: forked and set up, blocked on its gate until it takes over.
#[derive(Debug)]
struct Standby {
    pid: Pid,
    /// Write end of its gate pipe.
    gate: OwnedFd,
    /// Its setup pipe while it is getting ready.
    setup: Option<OwnedFd>,
    /// Set up and waiting.
    ready: bool,
    /// SIGKILLed on purpose; not to be replaced when reaped.
    killed: bool,
}

/// A log line the root writes after the replacement of a dead daemon is
/// forked, not before: formatting a crash report (and reading the dead
/// process's flight log) takes longer than the fork, and the replacement
/// runs meanwhile. Notes are flushed in order, before any later line.
#[derive(Debug)]
enum Note {
    /// A daemon ended on its own: the exit line, or the crash report.
    Exit {
        i: usize,
        pid: Pid,
        reason: ExitReason,
        uptime: Duration,
        restarts: u32,
    },
    /// The checkpoint it resumed from is poison.
    Poison {
        i: usize,
        seq: u64,
        uptime: Duration,
    },
}

/// Which process of a daemon a pid is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Primary,
    Standby,
}

/// Event tokens in the epoll set: a kind in the high 32 bits, an index or
/// connection id in the low ones.
const TOKEN_SIGNALS: u64 = 0;
const TOKEN_LISTENER: u64 = 1;
const TOKEN_SETUP: u64 = 1 << 32;
const TOKEN_CONN: u64 = 2 << 32;
const TOKEN_STANDBY: u64 = 3 << 32;

/// SIGCHLD is coalesced: while one is pending, another child's is lost. The
/// root reaps the child a SIGCHLD names at once (`waitid(P_PID)`, O(1)),
/// and sweeps for the rest (`waitpid(-1)`, which walks every child of the
/// root: O(daemons)) this much later, off the restart path. A child whose
/// SIGCHLD was lost in a burst is restarted at most this late.
const SWEEP_DELAY: Duration = Duration::from_millis(20);
const TOKEN_KIND: u64 = !0 << 32;

/// Whether the loop goes on or the root exits with a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Supervising,
    /// Stopping every daemon in reverse order, then exit with this code.
    ShuttingDown(i32),
}

/// The root: the process table, the regions, and the poll loop.
#[derive(Debug)]
pub struct Root<'a> {
    config: Config,
    registry: &'a Registry,
    children: Vec<Child>,
    names: Vec<String>,
    /// `links`, resolved to indices and made symmetric.
    links: Vec<Vec<usize>>,
    by_pid: HashMap<Pid, (usize, Role)>,
    regions: RegionSet,
    /// Each daemon's listening sockets (`listen`), bound once in
    /// [`Root::new`] and handed to every incarnation.
    listeners: Vec<Vec<OwnedFd>>,
    epoll: sys::Epoll,
    signals: OwnedFd,
    timers: BTreeSet<(Instant, usize)>,
    /// Times of recent restarts under the top supervisor (intensity window).
    restart_times: VecDeque<Instant>,
    mode: Mode,
    pid: Pid,
    started: Instant,
    /// Forks done, for `ctl metrics`.
    forks: u64,
    control: Option<control::Server>,
    /// What systemd (`Type=notify`) was told, and its watchdog timer.
    manager: manager::Manager,
    /// The `state_dir` lock, held for the root's life (and its daemons').
    lock: Option<OwnedFd>,
    /// When to sweep for children whose SIGCHLD was lost (see
    /// [`SWEEP_DELAY`]).
    sweep_at: Option<Instant>,
    /// Log lines deferred past the next fork.
    notes: Vec<Note>,
    /// The control listener rests until then (after `accept` failed).
    control_paused: Option<Instant>,
}

/// Binds every daemon's `listen` sockets, before any fork. An address
/// that cannot be bound (taken, no permission) is a config problem placed
/// at its entry (exit 78): nothing starts.
fn bind_listeners(config: &Config) -> Result<Vec<Vec<OwnedFd>>, RootError> {
    let mut problems = Vec::new();
    let mut all = Vec::with_capacity(config.daemons.len());
    for (i, d) in config.daemons.iter().enumerate() {
        let mut fds = Vec::with_capacity(d.listen.len());
        for (j, text) in d.listen.iter().enumerate() {
            let bound = crate::listen::Address::parse(text)
                .map_err(io::Error::other)
                .and_then(|a| a.bind());
            match bound {
                Ok(fd) => fds.push(fd),
                Err(e) => problems.push(crate::config::Problem {
                    place: format!("daemon[{i}].listen[{j}]"),
                    message: format!("cannot listen on {text:?}: {e}"),
                }),
            }
        }
        all.push(fds);
    }
    if problems.is_empty() {
        Ok(all)
    } else {
        Err(RootError::Config(problems))
    }
}

/// Runs the tree until it is stopped; returns the exit code documented for
/// `forkroot run` (0 stopped, 69 gave up).
pub fn run(config: Config, registry: &Registry) -> Result<i32, RootError> {
    let mut root = Root::new(config, registry)?;
    root.start_all();
    root.run_loop()
}

impl<'a> Root<'a> {
    /// Validates the kinds, sets the root's process attributes, and maps
    /// every region. Starts nothing.
    pub fn new(config: Config, registry: &'a Registry) -> Result<Root<'a>, RootError> {
        let known: Vec<&str> = registry.kinds().iter().map(|k| k.name).collect();
        let problems = config.check_kinds(&known);
        if !problems.is_empty() {
            return Err(RootError::Config(problems));
        }
        // fork() from a multi-threaded process is not safe for children
        // that run Rust code: refuse rather than deadlock a child.
        if let Some(n) = sys::thread_count().filter(|&n| n > 1) {
            return Err(RootError::Io(
                "starting the root",
                io::Error::other(format!(
                    "the root must be single-threaded to fork safely; this process has {n} threads"
                )),
            ));
        }
        // An inherited "ignore SIGCHLD" would make the kernel reap our
        // children without telling us.
        sys::default_signal(libc::SIGCHLD);
        // Signals arrive through the signalfd, never through handlers.
        // SIGUSR1/SIGUSR2 too: their default action would end the root
        // (and with it, through PDEATHSIG, the whole tree) on a stray kill.
        let set = SigSet::of(&[
            libc::SIGCHLD,
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGUSR1,
            libc::SIGUSR2,
        ]);
        set.block().map_err(ctx("blocking signals"))?;
        let signals = set.signalfd().map_err(ctx("signalfd"))?;
        sys::set_child_subreaper().map_err(ctx("becoming a child subreaper"))?;
        // One descriptor per region, plus the loop's own.
        let limit = sys::raise_fd_limit().map_err(ctx("raising RLIMIT_NOFILE"))?;
        if (limit as usize) < config.daemons.len() * 2 + 64 {
            warn!(
                limit,
                daemons = config.daemons.len(),
                "the open-file limit is low for this many daemons"
            );
        }
        sys::title::init();

        let specs: Vec<RegionSpec<'_>> = config
            .daemons
            .iter()
            .map(|d| RegionSpec {
                name: &d.name,
                user: d.memory,
                own_file: matches!(d.program, Program::Exec(_)),
            })
            .collect();
        let lock = match &config.root.state_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(ctx("creating state_dir"))?;
                Some(lock_state_dir(dir)?)
            }
            None => None,
        };
        let regions = RegionSet::create(&specs, config.root.state_dir.as_deref())
            .map_err(ctx("mapping regions"))?;
        let listeners = bind_listeners(&config)?;
        let epoll = sys::Epoll::new().map_err(ctx("epoll"))?;
        epoll
            .add(signals.as_raw_fd(), TOKEN_SIGNALS)
            .map_err(ctx("epoll"))?;

        let socket = config
            .root
            .control
            .clone()
            .unwrap_or_else(crate::control::default_socket);
        // Without its socket the tree could not be managed: whatever the
        // cause (taken, unwritable), nothing starts (a config problem, 78).
        let server =
            control::Server::bind(&socket, config.root.control_group.clone()).map_err(|e| {
                RootError::Config(vec![crate::config::Problem {
                    place: "root.control".into(),
                    message: format!("cannot create the control socket: {e}"),
                }])
            })?;
        epoll
            .add(server.listener_fd(), TOKEN_LISTENER)
            .map_err(ctx("epoll"))?;
        info!(socket = %socket.display(), "control socket ready");
        let control = Some(server);
        let children = config
            .daemons
            .iter()
            .map(|d| Child {
                cfg: d.clone(),
                title: format!("forkroot: {}", d.name).into_bytes(),
                state: State::Stopped,
                pid: None,
                started: None,
                started_ns: 0,
                setup: None,
                setup_failed: None,
                restarts: 0,
                deaths: Vec::new(),
                backoff: d.backoff.initial,
                deadline: None,
                after_stop: AfterStop::Rest,
                standby: None,
                stop_pending: false,
                last_exit: None,
                resume_before: None,
            })
            .collect();
        let names: Vec<String> = config.daemons.iter().map(|d| d.name.clone()).collect();
        let mut links = vec![Vec::new(); names.len()];
        for (i, d) in config.daemons.iter().enumerate() {
            for other in &d.links {
                // The config checked that every link names a daemon.
                if let Some(j) = names.iter().position(|n| n == other) {
                    if !links[i].contains(&j) {
                        links[i].push(j);
                    }
                    if !links[j].contains(&i) {
                        links[j].push(i);
                    }
                }
            }
        }
        Ok(Root {
            names,
            links,
            listeners,
            config,
            registry,
            children,
            by_pid: HashMap::new(),
            regions,
            epoll,
            signals,
            timers: BTreeSet::new(),
            restart_times: VecDeque::new(),
            mode: Mode::Supervising,
            pid: sys::getpid(),
            started: Instant::now(),
            forks: 0,
            control,
            manager: manager::Manager::from_env(sys::getpid().0 as u32),
            lock,
            sweep_at: None,
            notes: Vec::new(),
            control_paused: None,
        })
    }

    /// Starts every daemon in file order.
    pub fn start_all(&mut self) {
        info!(daemons = self.children.len(), "starting the tree");
        for i in 0..self.children.len() {
            self.start(i);
        }
    }

    /// The poll loop. Returns the exit code once shut down.
    pub fn run_loop(&mut self) -> Result<i32, RootError> {
        let mut ready = Vec::with_capacity(64);
        loop {
            if let Mode::ShuttingDown(code) = self.mode {
                if self
                    .children
                    .iter()
                    .all(|c| !c.state.has_process() && c.standby.is_none())
                {
                    // Orphans a daemon left behind, reparented to us.
                    let _ = self.reap();
                    info!(code, "every daemon stopped; exiting");
                    return Ok(code);
                }
            }
            let next = self.timers.first().map(|&(t, _)| t);
            let next = [
                next,
                self.sweep_at,
                self.control_wake(),
                self.manager.next_deadline(),
            ]
            .into_iter()
            .flatten()
            .min();
            let timeout = next.map(|t| t.saturating_duration_since(Instant::now()));
            self.epoll
                .wait(&mut ready, timeout)
                .map_err(ctx("epoll_wait"))?;
            for &token in &ready {
                match (token & TOKEN_KIND, token & !TOKEN_KIND) {
                    (0, TOKEN_SIGNALS) => self.on_signals()?,
                    (0, TOKEN_LISTENER) => self.on_accept(),
                    (TOKEN_SETUP, i) => self.on_setup(i as usize),
                    (TOKEN_CONN, id) => self.on_conn(id),
                    (TOKEN_STANDBY, i) => self.on_standby_setup(i as usize),
                    _ => warn!(token, "event for an unknown token"),
                }
            }
            let now = Instant::now();
            if !ready.is_empty() || self.timers.first().is_some_and(|&(t, _)| t <= now) {
                self.manager.status_changed(now);
            }
            self.fire_timers();
            self.flush_notes();
            // Until the first start is complete (a daemon may leave
            // `starting` by dying as well as by running).
            if !self.manager.ready_settled() {
                self.notify_ready();
            }
            self.manager.ping(now);
            if self.manager.status_due(now) {
                let text = self.status_line(now);
                self.manager.status(now, text);
            }
        }
    }

    /// Defers the exit line (or crash report) of daemon `i`'s process.
    fn note_exit(&mut self, i: usize, pid: Pid, reason: ExitReason, uptime: Duration) {
        let restarts = self.children[i].restarts;
        self.notes.push(Note::Exit {
            i,
            pid,
            reason,
            uptime,
            restarts,
        });
    }

    /// Logs the deferred notes, in order.
    fn flush_notes(&mut self) {
        for note in std::mem::take(&mut self.notes) {
            match note {
                Note::Exit {
                    i,
                    pid,
                    reason,
                    uptime,
                    restarts,
                } => {
                    let name = &self.children[i].cfg.name;
                    if reason.is_normal() {
                        info!(daemon = %name, %pid, uptime = ?uptime, "exited normally");
                    } else {
                        let last = flight::last_lines(&self.regions, i, pid, 8);
                        error!(
                            daemon = %name,
                            %pid,
                            reason = %reason,
                            uptime = ?uptime,
                            restarts,
                            last_log = ?last,
                            "crashed"
                        );
                    }
                }
                Note::Poison { i, seq, uptime } => warn!(
                    daemon = %self.children[i].cfg.name,
                    checkpoint = seq,
                    uptime = ?uptime,
                    "checkpoint is poison (crashed soon after resuming from it); the next start resumes from an older one"
                ),
            }
        }
    }

    fn on_signals(&mut self) -> Result<(), RootError> {
        while let Some((sig, from)) =
            sys::read_signalfd(self.signals.as_raw_fd()).map_err(ctx("reading signalfd"))?
        {
            match sig {
                libc::SIGCHLD => self.on_sigchld(from)?,
                libc::SIGTERM | libc::SIGINT => self.on_shutdown_signal(sig),
                libc::SIGHUP => info!("SIGHUP ignored (the tree is configured at start)"),
                libc::SIGUSR1 => info!(status = %self.status_line(Instant::now()), "SIGUSR1"),
                libc::SIGUSR2 => info!("SIGUSR2 ignored"),
                _ => debug!(signal = sig, "unexpected signal"),
            }
        }
        Ok(())
    }

    fn on_shutdown_signal(&mut self, sig: i32) {
        match self.mode {
            Mode::Supervising => {
                info!(signal = %sys::signal_name(sig), "shutting down");
                self.shutdown(EXIT_OK);
            }
            Mode::ShuttingDown(_) => {
                warn!(signal = %sys::signal_name(sig), "second stop signal: killing every daemon now");
                for c in &self.children {
                    if let Some(pid) = c.pid {
                        kill_tree(pid, libc::SIGKILL);
                    }
                }
            }
        }
    }

    /// Reaps every ended child (`waitpid(-1, WNOHANG)` until none is
    /// left: SIGCHLD is coalesced, so one signal may stand for many exits).
    fn reap(&mut self) -> Result<(), RootError> {
        while let Some((pid, status)) = sys::reap_one().map_err(ctx("waitpid"))? {
            self.exited(pid, status);
        }
        Ok(())
    }

    /// SIGCHLD from `from`: reap it alone (O(1)) and sweep for others a
    /// little later (see [`SWEEP_DELAY`]).
    fn on_sigchld(&mut self, from: Pid) -> Result<(), RootError> {
        match sys::reap_pid(from).map_err(ctx("waitid"))? {
            Some(status) => self.exited(from, status),
            // Not ours, or already reaped by a sweep: sweep now.
            None => return self.reap(),
        }
        self.sweep_at.get_or_insert(Instant::now() + SWEEP_DELAY);
        Ok(())
    }

    /// One child ended: route it to its daemon, or log an orphan.
    fn exited(&mut self, pid: Pid, status: WaitStatus) {
        let Some((i, role)) = self.by_pid.remove(&pid) else {
            debug!(%pid, ?status, "reaped an orphan");
            return;
        };
        match role {
            Role::Primary => self.on_exit(i, status),
            Role::Standby => self.on_standby_exit(i, status),
        }
    }

    // ----- the state machine ----------------------------------------------

    /// Forks daemon `i`, or its standby. Prepares everything the child
    /// needs in the root's memory first.
    fn fork_child(&mut self, i: usize, standby: bool) -> io::Result<Spawned> {
        let c = &self.children[i];
        let start = crate::daemon::Start {
            restarts: c.restarts,
            deaths: &c.deaths,
            on_restart: c.cfg.on_restart,
            resume_before: c.resume_before,
        };
        let run = match &c.cfg.program {
            Program::Builtin(kind) => {
                let k = self
                    .registry
                    .get(kind)
                    .expect("kinds are checked in Root::new");
                Run::Builtin {
                    entry: k.entry,
                    args: &c.cfg.args,
                    names: &self.names,
                }
            }
            Program::Exec(argv) => Run::exec(
                argv,
                &c.cfg.name,
                self.regions.region_len(i),
                &start,
                &c.cfg.listen,
            )?,
        };
        let spawned = spawn::spawn(&Plan {
            index: i,
            name: &c.cfg.name,
            title: &c.title,
            regions: &self.regions,
            root_pid: self.pid,
            start,
            run,
            lock: self.lock.as_ref().map(|l| l.as_raw_fd()),
            standby,
            listeners: &self.listeners[i],
            listen: &c.cfg.listen,
        })?;
        self.forks += 1;
        let kind = if standby { TOKEN_STANDBY } else { TOKEN_SETUP };
        self.epoll
            .add(spawned.setup.as_raw_fd(), kind | i as u64)
            .map_err(|e| io::Error::new(e.kind(), format!("watching the setup pipe: {e}")))?;
        let role = if standby {
            Role::Standby
        } else {
            Role::Primary
        };
        self.by_pid.insert(spawned.pid, (i, role));
        Ok(spawned)
    }

    /// Stopped/Backoff/Failed × start: fork it (or wake its standby).
    fn start(&mut self, i: usize) {
        if self.mode != Mode::Supervising {
            return;
        }
        self.cancel_timer(i);
        let c = &self.children[i];
        debug_assert!(!c.state.has_process(), "{} started twice", c.cfg.name);
        if c.cfg.on_restart == OnRestart::Fresh && !c.deaths.is_empty() {
            if let Err(e) = self.regions.zero_user(i) {
                warn!(daemon = %c.cfg.name, error = %e, "could not zero the region for a fresh restart");
            }
        }
        if self.take_over(i) {
            return;
        }
        match self.fork_child(i, false) {
            Ok(spawned) => {
                let c = &mut self.children[i];
                c.pid = Some(spawned.pid);
                c.setup = Some(spawned.setup);
                c.setup_failed = None;
                c.state = State::Starting;
                let (pid, restarts) = (spawned.pid, c.restarts);
                self.flush_notes();
                info!(daemon = %self.children[i].cfg.name, %pid, restarts, "started");
                self.began(i);
                self.ensure_standby(i);
            }
            Err(e) => {
                // fork (or preparing it) failed: EAGAIN, ENOMEM, a program
                // not found. A death, so the intensity limit applies, but
                // retried after a pause rather than at once: the condition
                // is the machine's and would burn the window in a moment.
                error!(daemon = %self.children[i].cfg.name, error = %e, "cannot start");
                let errno = e.raw_os_error().unwrap_or(libc::EINVAL);
                let reason = ExitReason::SetupFailed {
                    stage: SetupStage::Fork,
                    errno,
                };
                self.record_death(i, reason, Duration::ZERO);
                if self.count_restart(i) {
                    let c = &mut self.children[i];
                    c.restarts += 1;
                    c.state = State::Backoff;
                    let delay = c.backoff.max(FORK_RETRY);
                    self.set_timer(i, Instant::now() + delay);
                }
            }
        }
    }

    /// Bookkeeping common to a fork and a standby's takeover.
    fn began(&mut self, i: usize) {
        let c = &mut self.children[i];
        c.started = Some(Instant::now());
        c.started_ns = sys::monotonic_ns();
        c.after_stop = AfterStop::Rest;
        if let Some(wd) = c.cfg.watchdog {
            self.set_timer(i, Instant::now() + wd);
        }
    }

    /// With `standby = true`: hands the daemon to its ready standby, which
    /// runs at once (no fork on this path). Returns whether it did.
    fn take_over(&mut self, i: usize) -> bool {
        let c = &mut self.children[i];
        let ready = c.standby.as_ref().is_some_and(|s| s.ready && !s.killed);
        if !ready {
            return false;
        }
        let sb = c.standby.take().expect("checked above");
        let history = History::new(c.restarts, &c.deaths, c.resume_before);
        if let Err(e) = history.send(sb.gate.as_raw_fd()) {
            warn!(daemon = %c.cfg.name, error = %e, "standby unreachable; forking instead");
            let _ = sys::kill(sb.pid, libc::SIGKILL);
            c.standby = Some(Standby { killed: true, ..sb });
            return false;
        }
        c.pid = Some(sb.pid);
        c.state = State::Running;
        let restarts = c.restarts;
        self.flush_notes();
        info!(daemon = %self.children[i].cfg.name, pid = %sb.pid, restarts, "standby took over");
        self.by_pid.insert(sb.pid, (i, Role::Primary));
        self.began(i);
        self.ensure_standby(i);
        true
    }

    /// Forks a standby for daemon `i` if it wants one and has none.
    fn ensure_standby(&mut self, i: usize) {
        let c = &self.children[i];
        if !c.cfg.standby || c.standby.is_some() || self.mode != Mode::Supervising {
            return;
        }
        match self.fork_child(i, true) {
            Ok(sp) => {
                debug!(daemon = %self.children[i].cfg.name, pid = %sp.pid, "standby forked");
                self.children[i].standby = Some(Standby {
                    pid: sp.pid,
                    gate: sp.gate.expect("a standby has a gate"),
                    setup: Some(sp.setup),
                    ready: false,
                    killed: false,
                });
            }
            Err(e) => {
                warn!(daemon = %self.children[i].cfg.name, error = %e, "cannot fork a standby")
            }
        }
    }

    /// Kills daemon `i`'s standby (it runs no user code, so no SIGTERM).
    fn kill_standby(&mut self, i: usize) {
        if let Some(sb) = self.children[i].standby.as_mut() {
            if !sb.killed {
                sb.killed = true;
                let _ = sys::kill(sb.pid, libc::SIGKILL);
            }
        }
    }

    /// A standby's setup pipe: end-of-file means it is ready to take over.
    fn on_standby_setup(&mut self, i: usize) {
        let Some(sb) = self.children.get_mut(i).and_then(|c| c.standby.as_mut()) else {
            return;
        };
        let Some(fd) = sb.setup.take() else { return };
        match read_setup(&fd) {
            Setup::Pending => sb.setup = Some(fd),
            Setup::Ready => {
                sb.ready = true;
                let _ = self.epoll.delete(fd.as_raw_fd());
            }
            Setup::Failed(reason) => {
                warn!(daemon = %self.children[i].cfg.name, %reason, "standby failed to start");
                let _ = self.epoll.delete(fd.as_raw_fd());
            }
        }
    }

    /// A standby ended: replace it unless it was killed on purpose.
    fn on_standby_exit(&mut self, i: usize, status: WaitStatus) {
        let c = &mut self.children[i];
        let Some(sb) = c.standby.take() else { return };
        if let Some(fd) = sb.setup {
            let _ = self.epoll.delete(fd.as_raw_fd());
        }
        if sb.killed {
            // Replaced on purpose (an unreachable standby) or the daemon is
            // stopping; a running daemon still wants one.
            if c.state == State::Running {
                self.ensure_standby(i);
            }
            return;
        }
        warn!(daemon = %c.cfg.name, pid = %sb.pid, ?status, "standby died; forking another");
        if c.state.has_process() && self.count_restart(i) {
            self.ensure_standby(i);
        }
    }

    /// Starting × setup pipe readable: end-of-file means its code runs;
    /// a setup report means setup failed (the exit follows).
    fn on_setup(&mut self, i: usize) {
        let Some(c) = self.children.get_mut(i) else {
            return;
        };
        let Some(fd) = c.setup.take() else { return };
        match read_setup(&fd) {
            // Nothing yet: a stale event (the pipe of a process this daemon
            // had before, in the same batch) or a spurious wake-up.
            Setup::Pending => c.setup = Some(fd),
            Setup::Ready => {
                if c.state == State::Starting {
                    c.state = State::Running;
                    debug!(daemon = %c.cfg.name, "running");
                }
                let _ = self.epoll.delete(fd.as_raw_fd());
                self.notify_ready();
            }
            Setup::Failed(reason) => {
                c.setup_failed = Some(reason);
                let _ = self.epoll.delete(fd.as_raw_fd());
            }
        }
    }

    /// Tells systemd (`Type=notify`) the tree is up, once no daemon of the
    /// first start is still starting.
    fn notify_ready(&mut self) {
        if self.manager.ready_settled() || self.children.iter().any(|c| c.state == State::Starting)
        {
            return;
        }
        let status = self.status_line(Instant::now());
        self.manager.ready(status);
    }

    /// The one-line `STATUS=` for systemd: how many daemons are in each
    /// state, and the restarts within the top supervisor's period.
    fn status_line(&self, now: Instant) -> String {
        let mut counts = [0usize; 6];
        for c in &self.children {
            counts[c.state as usize] += 1;
        }
        let period = self.config.supervisor.period;
        let recent = self
            .restart_times
            .iter()
            .filter(|&&t| now.saturating_duration_since(t) <= period)
            .count();
        let mut line = String::new();
        for s in [
            State::Running,
            State::Starting,
            State::Backoff,
            State::Stopping,
            State::Stopped,
            State::Failed,
        ] {
            let n = counts[s as usize];
            if n > 0 || s == State::Running {
                line.push_str(&format!("{n} {}, ", s.as_str()));
            }
        }
        line.push_str(&format!(
            "{recent} restart{} in the last {}",
            if recent == 1 { "" } else { "s" },
            crate::config::units::format_duration(period)
        ));
        line
    }

    /// Remembers a death (the last [`DEATHS_KEPT`]).
    fn record_death(&mut self, i: usize, reason: ExitReason, uptime: Duration) {
        let c = &mut self.children[i];
        if c.deaths.len() == DEATHS_KEPT {
            c.deaths.remove(0);
        }
        c.deaths.push(Death {
            reason,
            uptime,
            at_realtime_ns: sys::realtime_ns(),
        });
    }

    /// Seed 004's last question: a daemon restored to the state it died in
    /// may die the same way again. If it crashed (not killed by SIGKILL,
    /// SIGTERM or SIGINT, which come from outside) within [`POISON_WINDOW`]
    /// of resuming from checkpoint C, C is poison: the next start resumes
    /// from the checkpoint before C (and, that failing too, fresh).
    fn judge_checkpoint(&mut self, i: usize, pid: i32, reason: ExitReason, uptime: Duration) {
        let crashed = reason.is_crash();
        let resumed = self.regions.header_of(i, Pid(pid)).map_or(0, |h| {
            h.resumed_seq.load(std::sync::atomic::Ordering::Relaxed)
        });
        let c = &mut self.children[i];
        c.resume_before = (crashed && uptime < POISON_WINDOW && resumed != 0).then_some(resumed);
        if let Some(seq) = c.resume_before {
            self.notes.push(Note::Poison { i, seq, uptime });
        }
    }

    /// Starting/Running/Stopping × exit.
    fn on_exit(&mut self, i: usize, status: WaitStatus) {
        let c = &mut self.children[i];
        if let Some(fd) = c.setup.take() {
            // Its SIGCHLD may come before its setup report: read it now.
            if let Setup::Failed(reason) = read_setup(&fd) {
                c.setup_failed = Some(reason);
            }
            let _ = self.epoll.delete(fd.as_raw_fd());
        }
        let reason = c.setup_failed.take().unwrap_or(match status {
            WaitStatus::Exited(code) => ExitReason::Exited(code),
            WaitStatus::Signaled { signal, core } => ExitReason::Signaled { signal, core },
        });
        let uptime = c.started.map_or(Duration::ZERO, |t| t.elapsed());
        let pid = c.pid.take().map_or(0, |p| p.0);
        // Whatever it forked dies with it (its process group: transactions,
        // an exec'd program's children), so nothing outlives it holding its
        // region writable. The group's id cannot be reused while any member
        // lives, so this reaches only the dead daemon's group.
        let _ = sys::kill_group(Pid(pid), libc::SIGKILL);
        let was = c.state;
        // It ended: nothing left to stop for a group restart.
        c.stop_pending = false;
        c.started = None;
        self.cancel_timer(i);
        self.children[i].last_exit = Some((reason, uptime));
        // A stop someone asked for is not a death: the daemon's history
        // (Context::deaths, what `decide` looks at, poison) leaves it out.
        if was != State::Stopping {
            self.record_death(i, reason, uptime);
            self.judge_checkpoint(i, pid, reason, uptime);
        }
        let c = &mut self.children[i];

        if was == State::Stopping {
            if reason.is_crash() && !matches!(reason, ExitReason::Exited(_)) {
                // It crashed on its way out: that still gets a report.
                self.note_exit(i, Pid(pid), reason, uptime);
            } else {
                info!(daemon = %c.cfg.name, pid, %reason, "stopped");
            }
            let c = &mut self.children[i];
            c.state = State::Stopped;
            if c.after_stop == AfterStop::Rest {
                self.kill_standby(i);
            }
            // A restart waits for the whole group to be down (the dead
            // daemon and its stopped siblings start again together, in
            // order); maybe_start_group starts this one if it is due.
            match self.mode {
                Mode::ShuttingDown(_) => self.stop_next(),
                Mode::Supervising => {
                    // A lone restart (`ctl restart`, one_for_one) need not
                    // wait for anyone else's stop.
                    let lone = self.config.supervisor.strategy == Strategy::OneForOne;
                    if lone && self.children[i].after_stop == AfterStop::Start {
                        self.start(i);
                    }
                    self.stop_next_pending();
                    self.maybe_start_group();
                }
            }
            return;
        }
        // The report waits until the replacement is forked (see `Note`).
        self.note_exit(i, Pid(pid), reason, uptime);
        if let Mode::ShuttingDown(_) = self.mode {
            self.children[i].state = State::Stopped;
            return self.stop_next();
        }
        self.after_death(i, reason, uptime);
    }

    /// Counts a restart of daemon `i` against the top supervisor's
    /// intensity; past it, gives up (the tree shuts down, exit 69) and
    /// returns false.
    fn count_restart(&mut self, i: usize) -> bool {
        let now = Instant::now();
        let sup = &self.config.supervisor;
        self.restart_times.push_back(now);
        while self
            .restart_times
            .front()
            .is_some_and(|&t| now.duration_since(t) > sup.period)
        {
            self.restart_times.pop_front();
        }
        if self.restart_times.len() <= sup.intensity as usize {
            return true;
        }
        self.flush_notes();
        let sup = &self.config.supervisor;
        error!(
            daemon = %self.children[i].cfg.name,
            intensity = sup.intensity,
            period = ?sup.period,
            "restart intensity exceeded; giving up"
        );
        // A daemon whose standby failed still has its primary: that one
        // is stopped by the shutdown like every other.
        if self.children[i].pid.is_none() {
            self.children[i].state = State::Failed;
        }
        self.shutdown(EXIT_GAVE_UP);
        false
    }

    /// A daemon died on its own (not asked to stop): decide per its restart
    /// type, the supervisor's intensity and strategy, and its backoff.
    fn after_death(&mut self, i: usize, reason: ExitReason, uptime: Duration) {
        if !reason.is_normal() {
            self.restart_links(i);
        }
        let c = &mut self.children[i];
        let restart = match c.cfg.restart {
            RestartType::Permanent => true,
            RestartType::Transient => !reason.is_normal(),
            RestartType::Temporary => false,
        };
        if !restart {
            info!(daemon = %c.cfg.name, restart = ?c.cfg.restart, "not restarted");
            c.state = State::Stopped;
            self.kill_standby(i);
            return;
        }
        if !self.count_restart(i) {
            return;
        }
        let c = &mut self.children[i];
        c.restarts += 1;
        // Backoff: reset after a healthy stretch of uptime, else double.
        if uptime >= self.config.supervisor.period {
            c.backoff = c.cfg.backoff.initial;
        }
        let delay = c.backoff;
        c.backoff = (c.backoff * 2).min(c.cfg.backoff.max);
        c.state = State::Backoff;
        if delay > Duration::ZERO {
            info!(daemon = %c.cfg.name, delay = ?delay, "restarting after backoff");
            self.set_timer(i, Instant::now() + delay);
        }
        match self.config.supervisor.strategy {
            Strategy::OneForOne => {
                if delay == Duration::ZERO {
                    self.start(i)
                }
            }
            Strategy::OneForAll => self.restart_siblings(i, 0),
            Strategy::RestForOne => self.restart_siblings(i, i + 1),
        }
    }

    /// `links`: an abnormal death of daemon `i` takes the daemons linked to
    /// it (either way) down with it; they are stopped and started again,
    /// as by `ctl restart` (a link is not a death of theirs, so it does not
    /// propagate further, nor count against the intensity).
    fn restart_links(&mut self, i: usize) {
        for j in self.links[i].clone() {
            let c = &mut self.children[j];
            if matches!(c.state, State::Starting | State::Running) {
                info!(daemon = %c.cfg.name, linked_to = %self.names[i], "restarting: a linked daemon died");
                self.stop(j);
                self.children[j].after_stop = AfterStop::Start;
            }
        }
    }

    /// `one_for_all`/`rest_for_one`: stop the running siblings from index
    /// `from` on (in reverse order), then start every one of them in order
    /// once none has a process left (see [`Root::maybe_start_group`]).
    fn restart_siblings(&mut self, dead: usize, from: usize) {
        for j in (from..self.children.len()).rev() {
            if j == dead {
                continue;
            }
            // Only siblings that are up (they are stopped one at a time, in
            // reverse order) or due to start come back: one an operator
            // stopped, or that ended for good, stays down.
            let c = &mut self.children[j];
            let up = matches!(c.state, State::Starting | State::Running);
            c.stop_pending |= up;
            if (up || c.state == State::Backoff) && c.cfg.restart != RestartType::Temporary {
                c.after_stop = AfterStop::Start;
            }
        }
        self.children[dead].after_stop = AfterStop::Start;
        self.stop_next_pending();
        self.maybe_start_group();
    }

    /// Stops the last sibling waiting to be stopped for a group restart,
    /// unless one is stopping already (one at a time, in reverse order).
    fn stop_next_pending(&mut self) {
        if self.children.iter().any(|c| c.state == State::Stopping) {
            return;
        }
        if let Some(j) = self.children.iter().rposition(|c| c.stop_pending) {
            self.children[j].stop_pending = false;
            self.stop(j);
        }
    }

    /// Starts, in order, every daemon waiting for its group to be down
    /// (`after_stop == Start` and no process), once no sibling is still
    /// stopping.
    fn maybe_start_group(&mut self) {
        // The group starts again in order once none is still stopping and
        // none due to start is still waiting out its backoff.
        let waiting = |c: &Child| {
            c.state == State::Stopping
                || c.stop_pending
                || (c.after_stop == AfterStop::Start && c.deadline.is_some())
        };
        if self.children.iter().any(waiting) {
            return;
        }
        for j in 0..self.children.len() {
            let c = &self.children[j];
            if c.after_stop == AfterStop::Start && !c.state.has_process() && c.deadline.is_none() {
                self.start(j);
            }
        }
    }

    /// Running/Starting × stop: SIGTERM (and SIGCONT, in case it was
    /// stopped) to its process group; SIGKILL at the deadline.
    fn stop(&mut self, i: usize) {
        let c = &mut self.children[i];
        match c.state {
            State::Starting | State::Running => {
                let Some(pid) = c.pid else {
                    // Its exit is being handled: nothing left to stop.
                    c.state = State::Stopped;
                    return;
                };
                kill_tree(pid, libc::SIGTERM);
                kill_tree(pid, libc::SIGCONT);
                c.state = State::Stopping;
                let deadline = Instant::now() + self.config.root.stop_timeout;
                debug!(daemon = %c.cfg.name, %pid, "stopping");
                self.set_timer(i, deadline);
            }
            State::Backoff => {
                c.state = State::Stopped;
                self.cancel_timer(i);
            }
            State::Stopping | State::Stopped | State::Failed => {}
        }
    }

    /// Shuts the tree down: daemons stop one at a time in reverse start
    /// order, then the loop exits with `code`.
    fn shutdown(&mut self, code: i32) {
        if let Mode::ShuttingDown(_) = self.mode {
            return;
        }
        self.mode = Mode::ShuttingDown(code);
        self.manager.stopping();
        for i in 0..self.children.len() {
            self.kill_standby(i);
            if self.children[i].state == State::Backoff {
                self.stop(i);
            }
        }
        self.stop_next();
    }

    /// During shutdown: stop the last daemon that still has a process,
    /// unless one is already stopping.
    fn stop_next(&mut self) {
        if self.children.iter().any(|c| c.state == State::Stopping) {
            return;
        }
        if let Some(i) = self.children.iter().rposition(|c| c.state.has_process()) {
            self.stop(i);
        }
    }

    // ----- timers ------------------------------------------------------------

    fn set_timer(&mut self, i: usize, at: Instant) {
        self.cancel_timer(i);
        self.children[i].deadline = Some(at);
        self.timers.insert((at, i));
    }

    fn cancel_timer(&mut self, i: usize) {
        if let Some(at) = self.children[i].deadline.take() {
            self.timers.remove(&(at, i));
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        self.control_timers(now);
        if self.sweep_at.is_some_and(|t| t <= now) {
            self.sweep_at = None;
            if let Err(e) = self.reap() {
                warn!(error = %e, "orphan sweep failed");
            }
        }
        while let Some(&(at, i)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            self.children[i].deadline = None;
            self.on_timer(i);
        }
    }

    /// Backoff × timer: restart. Stopping × timer: SIGKILL.
    /// Starting/Running × timer: the watchdog looks at the heartbeat.
    fn on_timer(&mut self, i: usize) {
        let c = &self.children[i];
        match c.state {
            State::Starting | State::Running => self.check_watchdog(i),
            // A group restart waits for the whole group; a lone restart
            // (one_for_one, or a start the root failed to fork) goes now.
            State::Backoff if c.after_stop == AfterStop::Start => self.maybe_start_group(),
            State::Backoff => self.start(i),
            State::Stopping => {
                if let Some(pid) = c.pid {
                    warn!(daemon = %c.cfg.name, %pid, timeout = ?self.config.root.stop_timeout, "did not stop in time; killing");
                    kill_tree(pid, libc::SIGKILL);
                }
            }
            _ => {}
        }
    }
}

impl Root<'_> {
    /// The watchdog: SIGKILL a daemon whose last heartbeat (or start) is
    /// older than its `watchdog` deadline, else look again when it would be.
    fn check_watchdog(&mut self, i: usize) {
        let c = &self.children[i];
        let (Some(wd), Some(pid)) = (c.cfg.watchdog, c.pid) else {
            return;
        };
        let mut last = c.started_ns;
        // The heartbeat is the daemon's word: believed only from a header
        // that names the current process, and never later than now.
        let now = sys::monotonic_ns();
        if let Some(h) = self.regions.header_of(i, pid) {
            let hb = h.heartbeat_ns.load(std::sync::atomic::Ordering::Acquire);
            if hb <= now {
                last = last.max(hb);
            }
        }
        let age = Duration::from_nanos(now.saturating_sub(last));
        if age >= wd {
            error!(daemon = %c.cfg.name, %pid, age = ?age, watchdog = ?wd, "watchdog: no heartbeat; killing");
            kill_tree(pid, libc::SIGKILL);
        } else {
            self.set_timer(i, Instant::now() + (wd - age));
        }
    }
}

/// How long a new root waits for the daemons of a root that was just
/// killed to die (they hold the `state_dir` lock until they are gone).
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// Takes `state_dir/lock` exclusively. Another root, or the daemons of one
/// that was just killed (they die with it, but not in the same instant),
/// hold it; wait a little for the latter, refuse the former.
fn lock_state_dir(dir: &std::path::Path) -> Result<OwnedFd, RootError> {
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(ctx("opening state_dir/lock"))?;
    let fd = OwnedFd::from(file);
    let start = Instant::now();
    loop {
        match sys::try_lock_exclusive(fd.as_raw_fd()) {
            Ok(true) => return Ok(fd),
            Ok(false) if start.elapsed() < LOCK_WAIT => {
                // Start-up, not the event path: nothing else to do yet.
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(false) => {
                return Err(RootError::Io(
                    "state_dir",
                    io::Error::new(
                        io::ErrorKind::WouldBlock,
                        format!(
                            "{} is in use by another root (its lock is held)",
                            dir.display()
                        ),
                    ),
                ))
            }
            Err(e) => return Err(RootError::Io("locking state_dir", e)),
        }
    }
}

/// Signals a daemon's process group, falling back to the process alone if
/// the group does not exist yet (a child killed before its setsid).
fn kill_tree(pid: Pid, signal: i32) {
    if sys::kill_group(pid, signal).is_err() {
        let _ = sys::kill(pid, signal);
    }
}

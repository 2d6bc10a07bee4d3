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

mod spawn;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use crate::config::{Config, DaemonConfig, OnRestart, Program, RestartType, Strategy};
use crate::daemon::{Death, ExitReason, Registry, SetupStage};
use crate::region::RegionSet;
use crate::sys::{self, Pid, SigSet, WaitStatus};
use spawn::{Plan, Spawn};

/// Exit code: stopped cleanly, every child reaped.
pub const EXIT_OK: i32 = 0;
/// Exit code: the top supervisor's restart intensity was exceeded.
pub const EXIT_GAVE_UP: i32 = 69;
/// Exit code: an internal error of the root itself.
pub const EXIT_INTERNAL: i32 = 70;
/// Exit code: the configuration is invalid; nothing was started.
pub const EXIT_CONFIG: i32 = 78;

/// How many past deaths the root remembers per daemon.
const DEATHS_KEPT: usize = 16;

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
}

/// Event tokens in the epoll set.
const TOKEN_SIGNALS: u64 = 0;
const TOKEN_SETUP: u64 = 1 << 32;

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
    by_pid: HashMap<Pid, usize>,
    regions: RegionSet,
    epoll: sys::Epoll,
    signals: OwnedFd,
    timers: BTreeSet<(Instant, usize)>,
    /// Times of recent restarts under the top supervisor (intensity window).
    restart_times: VecDeque<Instant>,
    mode: Mode,
    pid: Pid,
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
        // Signals arrive through the signalfd, never through handlers.
        let set = SigSet::of(&[libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP]);
        set.block().map_err(ctx("blocking signals"))?;
        let signals = set.signalfd().map_err(ctx("signalfd"))?;
        sys::set_child_subreaper().map_err(ctx("becoming a child subreaper"))?;
        sys::title::init();

        let specs: Vec<(&str, u64)> = config
            .daemons
            .iter()
            .map(|d| (d.name.as_str(), d.memory))
            .collect();
        if let Some(dir) = &config.root.state_dir {
            std::fs::create_dir_all(dir).map_err(ctx("creating state_dir"))?;
        }
        let regions = RegionSet::create(&specs, config.root.state_dir.as_deref())
            .map_err(ctx("mapping regions"))?;
        let epoll = sys::Epoll::new().map_err(ctx("epoll"))?;
        epoll
            .add(signals.as_raw_fd(), TOKEN_SIGNALS)
            .map_err(ctx("epoll"))?;

        let children = config
            .daemons
            .iter()
            .map(|d| Child {
                cfg: d.clone(),
                title: format!("forkroot: {}", d.name).into_bytes(),
                state: State::Stopped,
                pid: None,
                started: None,
                setup: None,
                setup_failed: None,
                restarts: 0,
                deaths: Vec::new(),
                backoff: d.backoff.initial,
                deadline: None,
                after_stop: AfterStop::Rest,
            })
            .collect();
        Ok(Root {
            names: config.daemons.iter().map(|d| d.name.clone()).collect(),
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
                if self.children.iter().all(|c| !c.state.has_process()) {
                    self.reap_orphans();
                    info!(code, "every daemon stopped; exiting");
                    return Ok(code);
                }
            }
            let timeout = self
                .timers
                .first()
                .map(|&(t, _)| t.saturating_duration_since(Instant::now()));
            self.epoll
                .wait(&mut ready, timeout)
                .map_err(ctx("epoll_wait"))?;
            for &token in &ready {
                match token {
                    TOKEN_SIGNALS => self.on_signals()?,
                    t if t & TOKEN_SETUP != 0 => self.on_setup((t & !TOKEN_SETUP) as usize),
                    t => warn!(token = t, "event for an unknown token"),
                }
            }
            self.fire_timers();
        }
    }

    fn on_signals(&mut self) -> Result<(), RootError> {
        while let Some(sig) =
            sys::read_signalfd(self.signals.as_raw_fd()).map_err(ctx("reading signalfd"))?
        {
            match sig {
                libc::SIGCHLD => self.reap()?,
                libc::SIGTERM | libc::SIGINT => self.on_shutdown_signal(sig),
                libc::SIGHUP => info!("SIGHUP ignored (the tree is configured at start)"),
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

    /// Reaps every ended child: SIGCHLD is coalesced, so one signal may
    /// stand for many exits.
    fn reap(&mut self) -> Result<(), RootError> {
        while let Some((pid, status)) = sys::reap_one().map_err(ctx("waitpid"))? {
            match self.by_pid.remove(&pid) {
                Some(i) => self.on_exit(i, status),
                None => debug!(%pid, ?status, "reaped an orphan"),
            }
        }
        Ok(())
    }

    /// Reaps what is left of orphans (processes a daemon left behind that
    /// were reparented to us) before the root exits.
    fn reap_orphans(&mut self) {
        while let Ok(Some((pid, status))) = sys::reap_one() {
            debug!(%pid, ?status, "reaped an orphan");
        }
    }

    // ----- the state machine ----------------------------------------------

    /// Stopped/Backoff/Failed × start: fork it.
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
        let plan = match &c.cfg.program {
            Program::Builtin(kind) => match self.registry.get(kind) {
                Some(k) => Plan::Builtin {
                    entry: k.entry,
                    args: &c.cfg.args,
                    deaths: &c.deaths,
                    restarts: c.restarts,
                    on_restart: c.cfg.on_restart,
                    names: &self.names,
                },
                None => unreachable!("kinds are checked in Root::new"),
            },
            Program::Exec(argv) => {
                match Plan::exec(argv, &c.cfg.name, self.regions.region_len(i), c.restarts) {
                    Ok(p) => p,
                    Err(e) => {
                        error!(daemon = %c.cfg.name, error = %e, "cannot prepare exec");
                        return self.after_death(
                            i,
                            ExitReason::SetupFailed {
                                stage: SetupStage::Exec,
                                errno: libc::EINVAL,
                            },
                            Duration::ZERO,
                        );
                    }
                }
            }
        };
        let spawned = spawn::spawn(&Spawn {
            index: i,
            name: &c.cfg.name,
            title: &c.title,
            regions: &self.regions,
            root_pid: self.pid,
            plan,
        });
        match spawned {
            Ok((pid, setup)) => {
                if let Err(e) = self.epoll.add(setup.as_raw_fd(), TOKEN_SETUP | i as u64) {
                    warn!(daemon = %self.children[i].cfg.name, error = %e, "cannot watch the setup pipe");
                }
                let c = &mut self.children[i];
                c.pid = Some(pid);
                c.started = Some(Instant::now());
                c.setup = Some(setup);
                c.setup_failed = None;
                c.state = State::Starting;
                c.after_stop = AfterStop::Rest;
                self.by_pid.insert(pid, i);
                info!(daemon = %c.cfg.name, %pid, restarts = c.restarts, "started");
            }
            Err(e) => {
                // fork failed (EAGAIN, ENOMEM): treat as a death at once, so
                // the intensity limit and backoff apply.
                error!(daemon = %c.cfg.name, error = %e, "fork failed");
                let errno = e.raw_os_error().unwrap_or(0);
                self.after_death(
                    i,
                    ExitReason::SetupFailed {
                        stage: SetupStage::Session,
                        errno,
                    },
                    Duration::ZERO,
                );
            }
        }
    }

    /// Starting × setup pipe readable: end-of-file means its code runs;
    /// 8 bytes mean setup failed (the exit follows).
    fn on_setup(&mut self, i: usize) {
        let Some(c) = self.children.get_mut(i) else {
            return;
        };
        let Some(fd) = c.setup.take() else { return };
        let mut buf = [0u8; 8];
        match sys::read(fd.as_raw_fd(), &mut buf) {
            Ok(0) => {
                if c.state == State::Starting {
                    c.state = State::Running;
                    debug!(daemon = %c.cfg.name, "running");
                }
            }
            Ok(8) => {
                let stage = u32::from_le_bytes(buf[..4].try_into().unwrap());
                let errno = i32::from_le_bytes(buf[4..].try_into().unwrap());
                if let Some(stage) = SetupStage::from_u32(stage) {
                    c.setup_failed = Some(ExitReason::SetupFailed { stage, errno });
                }
            }
            Ok(_) | Err(_) => {}
        }
        let _ = self.epoll.delete(fd.as_raw_fd());
    }

    /// Starting/Running/Stopping × exit.
    fn on_exit(&mut self, i: usize, status: WaitStatus) {
        let c = &mut self.children[i];
        if let Some(fd) = c.setup.take() {
            let _ = self.epoll.delete(fd.as_raw_fd());
        }
        let reason = c.setup_failed.take().unwrap_or(match status {
            WaitStatus::Exited(code) => ExitReason::Exited(code),
            WaitStatus::Signaled { signal, core } => ExitReason::Signaled { signal, core },
        });
        let uptime = c.started.map_or(Duration::ZERO, |t| t.elapsed());
        let pid = c.pid.take().map_or(0, |p| p.0);
        let was = c.state;
        c.started = None;
        self.cancel_timer(i);
        let c = &mut self.children[i];
        if c.deaths.len() == DEATHS_KEPT {
            c.deaths.remove(0);
        }
        c.deaths.push(Death {
            reason,
            uptime,
            at_realtime_ns: sys::realtime_ns(),
        });

        if was == State::Stopping {
            info!(daemon = %c.cfg.name, pid, %reason, "stopped");
            c.state = State::Stopped;
            // A restart waits for the whole group to be down (the dead
            // daemon and its stopped siblings start again together, in
            // order); maybe_start_group starts this one if it is due.
            match self.mode {
                Mode::ShuttingDown(_) => self.stop_next(),
                Mode::Supervising => self.maybe_start_group(),
            }
            return;
        }
        if reason.is_normal() {
            info!(daemon = %c.cfg.name, pid, uptime = ?uptime, "exited normally");
        } else {
            error!(
                daemon = %c.cfg.name,
                pid,
                reason = %reason,
                uptime = ?uptime,
                restarts = c.restarts,
                "crashed"
            );
        }
        if let Mode::ShuttingDown(_) = self.mode {
            self.children[i].state = State::Stopped;
            return self.stop_next();
        }
        self.after_death(i, reason, uptime);
    }

    /// A daemon died on its own (not asked to stop): decide per its restart
    /// type, the supervisor's intensity and strategy, and its backoff.
    fn after_death(&mut self, i: usize, reason: ExitReason, uptime: Duration) {
        let c = &mut self.children[i];
        let restart = match c.cfg.restart {
            RestartType::Permanent => true,
            RestartType::Transient => !reason.is_normal(),
            RestartType::Temporary => false,
        };
        if !restart {
            info!(daemon = %c.cfg.name, restart = ?c.cfg.restart, "not restarted");
            c.state = State::Stopped;
            return;
        }
        // Restart intensity of the top supervisor.
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
        if self.restart_times.len() > sup.intensity as usize {
            error!(
                daemon = %c.cfg.name,
                intensity = sup.intensity,
                period = ?sup.period,
                "restart intensity exceeded; giving up"
            );
            c.state = State::Failed;
            return self.shutdown(EXIT_GAVE_UP);
        }
        c.restarts += 1;
        // Backoff: reset after a healthy stretch of uptime, else double.
        if uptime >= sup.period {
            c.backoff = c.cfg.backoff.initial;
        }
        let delay = c.backoff;
        c.backoff = (c.backoff * 2).min(c.cfg.backoff.max);
        c.state = State::Backoff;
        if delay > Duration::ZERO {
            info!(daemon = %c.cfg.name, delay = ?delay, "restarting after backoff");
            self.set_timer(i, now + delay);
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

    /// `one_for_all`/`rest_for_one`: stop the running siblings from index
    /// `from` on (in reverse order), then start every one of them in order
    /// once none has a process left (see [`Root::maybe_start_group`]).
    fn restart_siblings(&mut self, dead: usize, from: usize) {
        for j in (from..self.children.len()).rev() {
            if j == dead {
                continue;
            }
            let c = &mut self.children[j];
            match c.state {
                State::Starting | State::Running => {
                    self.stop(j);
                    self.children[j].after_stop = AfterStop::Rest;
                    self.children[j].state = State::Stopping;
                }
                _ => {}
            }
            if self.children[j].state != State::Failed
                && self.children[j].cfg.restart != RestartType::Temporary
            {
                self.children[j].after_stop = AfterStop::Start;
            }
        }
        self.children[dead].after_stop = AfterStop::Start;
        self.maybe_start_group();
    }

    /// Starts, in order, every daemon waiting for its group to be down
    /// (`after_stop == Start` and no process), once no sibling is still
    /// stopping.
    fn maybe_start_group(&mut self) {
        if self.children.iter().any(|c| c.state == State::Stopping) {
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
                let pid = c.pid.expect("a live state has a pid");
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
        for i in 0..self.children.len() {
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
    fn on_timer(&mut self, i: usize) {
        let c = &self.children[i];
        match c.state {
            State::Backoff => {
                if self.config.supervisor.strategy == Strategy::OneForOne {
                    self.start(i)
                } else {
                    self.maybe_start_group()
                }
            }
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

/// Signals a daemon's process group, falling back to the process alone if
/// the group does not exist yet (a child killed before its setsid).
fn kill_tree(pid: Pid, signal: i32) {
    if sys::kill_group(pid, signal).is_err() {
        let _ = sys::kill(pid, signal);
    }
}

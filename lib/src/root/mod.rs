//! The root process: one thread, one poll loop, that forks daemons over
//! their preallocated regions, reaps them, and restarts them.
//!
//! The root keeps every fact it acts on in its own private memory (the
//! [`Child`] table below). It reads shared memory only to report on it
//! (heartbeats, flight logs), and treats what it reads there as untrusted.
//!
//! Every supervision decision is one transition of
//! [`supervisor::Supervisor`] (the state × event table of `DESIGN.md` §4);
//! this loop feeds it events ([`Root::step`]) and carries out its actions.

pub(crate) mod cgroup;
mod control;
mod exit;
mod handover;
mod log_reader;
mod manager;
mod notes;
mod notify;
mod output;
mod reload;
mod spawn;
mod standby;
mod start;
mod startup;
mod state_dir;
mod status;
mod stop;
mod supervisor;
mod watchdog;
mod window;
mod zygote;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use crate::config::{Config, DaemonConfig};
use crate::daemon::{Death, ExitReason, Registry};
use crate::mailbox::PostOffice;
use crate::region::RegionSet;
use crate::sys::{self, Pid, Signal};
use notes::Note;
use standby::Standby;
use stop::kill_tree;
use supervisor::{Action, Event, Log, Member, Supervisor, FORK_RETRY};

/// Exit code: stopped cleanly, every child reaped.
pub const EXIT_OK: i32 = 0;
/// Exit code: the top supervisor's restart intensity was exceeded.
pub const EXIT_GAVE_UP: i32 = 69;
/// Exit code: an internal error of the root itself.
pub const EXIT_INTERNAL: i32 = 70;
/// Exit code: the configuration is invalid; nothing was started.
pub const EXIT_CONFIG: i32 = 78;

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
    #[must_use]
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
    #[must_use]
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
    #[must_use]
    pub fn has_process(&self) -> bool {
        matches!(self, State::Starting | State::Running | State::Stopping)
    }
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
    /// Pending timer of this child (backoff end, or the SIGKILL deadline).
    deadline: Option<Instant>,
    /// The pre-forked backup (`standby = true`).
    standby: Option<Standby>,
    /// Its standby's fork failed: when to try again, and the pause after
    /// that if it fails again (`standby.rs`).
    standby_retry: Option<(Instant, Duration)>,
    /// How its last process ended (deaths and stops alike), for status.
    last_exit: Option<(ExitReason, Duration)>,
    /// A checkpoint found poison: the next start resumes from an older one.
    resume_before: Option<u64>,
    /// The last fault the root found in its way (the machine refused a
    /// start, its region file was damaged), for `ctl status`; cleared by
    /// the next start that finds none.
    fault: Option<String>,
    /// The pause before the next retry of a start the machine refused.
    retry: Duration,
    /// Taken out of the tree by a reload: its index stays taken (the
    /// supervisor, the regions and the pids' routes are indexed alike),
    /// and nothing shows it.
    removed: bool,
    /// Read end of its notification pipe (`notify_fd`) while it starts.
    notify_pipe: Option<OwnedFd>,
    /// When it became ready (monotonic ns): the watchdog counts from here.
    ready_ns: u64,
    /// Its last `WATCHDOG=1` (monotonic ns), 0 if none.
    ping_ns: u64,
    /// Its last `STATUS=`, for `ctl status`.
    status_text: Option<String>,
    /// The root sent it SIGKILL for this (watchdog, start timeout): the
    /// reason its SIGKILL death is recorded with.
    killed_for: Option<ExitReason>,
    /// Its process has ended but its cgroup still holds processes (being
    /// killed): the exit the supervisor hears once the cgroup is empty.
    ending: Option<Event>,
}

impl Child {
    /// A daemon of the tree, not started.
    fn new(cfg: DaemonConfig) -> Child {
        Child {
            title: Child::title(&cfg.name),
            cfg,
            state: State::Stopped,
            pid: None,
            started: None,
            started_ns: 0,
            setup: None,
            setup_failed: None,
            restarts: 0,
            deaths: Vec::new(),
            deadline: None,
            standby: None,
            standby_retry: None,
            last_exit: None,
            resume_before: None,
            fault: None,
            retry: FORK_RETRY,
            removed: false,
            notify_pipe: None,
            ready_ns: 0,
            ping_ns: 0,
            status_text: None,
            killed_for: None,
            ending: None,
        }
    }

    /// The process title of daemon `name` (`ps` shows `forkroot: NAME`).
    pub(super) fn title(name: &str) -> Vec<u8> {
        format!("forkroot: {name}").into_bytes()
    }
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
const TOKEN_WATCH: u64 = 2;
const TOKEN_NOTIFY: u64 = 3;
const TOKEN_HANDOVER: u64 = 4;
const TOKEN_SETUP: u64 = 1 << 32;
const TOKEN_CONN: u64 = 2 << 32;
const TOKEN_STANDBY: u64 = 3 << 32;
/// An output pipe: the daemon's index times two, plus the stream.
pub(crate) const TOKEN_OUTPUT: u64 = 4 << 32;
const TOKEN_NOTIFY_FD: u64 = 5 << 32;
const TOKEN_CGROUP: u64 = 6 << 32;
/// A child's pidfd (`exit.rs`); the low half is its pid.
const TOKEN_EXIT: u64 = 7 << 32;
/// The kind half of a token.
const TOKEN_KIND: u64 = !0 << 32;

/// A pid as the mailbox and the service manager record it: a pid the
/// kernel gave is positive, so its magnitude is its value (0 stays 0).
fn pid_u32(pid: Pid) -> u32 {
    pid.as_u32()
}

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
    by_pid: HashMap<Pid, (usize, Role)>,
    regions: RegionSet,
    /// Every daemon's mailbox and the registry (`lib/src/mailbox.rs`).
    post: PostOffice,
    /// Starts of each daemon by cause (`supervisor::Cause::ALL` order),
    /// for `ctl status` and `metrics`.
    starts_by_cause: Vec<[u64; supervisor::Cause::ALL.len()]>,
    /// Each daemon's listening sockets (`listen`), bound once in
    /// [`Root::new`] and handed to every incarnation.
    listeners: Vec<Vec<crate::listen::Bound>>,
    epoll: sys::Epoll,
    signals: sys::SignalFd,
    timers: BTreeSet<(Instant, usize)>,
    /// When to fork again a standby whose fork failed (`standby.rs`).
    standby_retries: BTreeSet<(Instant, usize)>,
    /// Every supervision decision (the state × event table).
    sup: Supervisor,
    mode: Mode,
    pid: Pid,
    started: Instant,
    /// Forks done, for `ctl metrics`.
    forks: u64,
    control: Option<control::Server>,
    /// What systemd (`Type=notify`) was told, and its watchdog timer.
    manager: manager::Manager,
    /// The socket daemons send their own notifications to.
    notify: notify::Socket,
    /// The `state_dir` lock, held for the root's life (and its daemons').
    lock: Option<OwnedFd>,
    /// When to sweep for children whose SIGCHLD was lost (see
    /// [`exit::SWEEP_DELAY`]).
    sweep_at: Option<Instant>,
    /// A pidfd per live child (primaries and standbys), in the epoll set:
    /// each exit is an event of its own (`exit.rs`).
    pidfds: HashMap<Pid, OwnedFd>,
    /// Log lines deferred past the next fork.
    notes: Vec<Note>,
    /// The control listener rests until then (after `accept` failed).
    control_paused: Option<Instant>,
    /// The file the tree was read from (none for a demo tree): what a
    /// reload reads again.
    config_path: Option<PathBuf>,
    /// A reload being carried out.
    reloading: Option<reload::Reloading>,
    /// inotify on `state_dir`: another process truncating, growing or
    /// replacing a region file is seen at once (see [`Root::on_watch`]).
    watch: Option<OwnedFd>,
    /// Each daemon's stdout and stderr, by index.
    outputs: Vec<output::Output>,
    /// How everything a daemon forked is ended with it: its cgroup, or its
    /// process group.
    contain: Option<cgroup::Containment>,
    /// The hand-over window new processes get their descriptors through
    /// (`handover.rs`); `None` on a kernel that cannot unshare by
    /// `close_range`.
    handover: Option<handover::Handover>,
    /// The process that forks the built-in daemons (`zygote.rs`); made at
    /// the first start and after a reload changed the tree.
    zygote: Option<zygote::Zygote>,
    /// This kernel cannot have a zygote (no clone3 with `CLONE_PARENT`):
    /// the root forks every daemon itself.
    zygote_off: bool,
}

/// Runs the tree until it is stopped; returns the exit code documented for
/// `forkroot run` (0 stopped, 69 gave up). `file` is where `config` was
/// read from, read again by a reload.
pub fn run(config: Config, file: Option<&Path>, registry: &Registry) -> Result<i32, RootError> {
    let mut root = Root::new(config, registry)?;
    // Absolute, so the reload reads the same file whatever the directory.
    root.config_path = file.map(|f| std::path::absolute(f).unwrap_or_else(|_| f.to_path_buf()));
    root.start_all();
    let result = root.run_loop();
    if let Err(e) = &result {
        error!(error = %e, "the root cannot go on; stopping every daemon");
        root.stop_all_after_error();
    }
    result
}

impl Root<'_> {
    /// Starts every daemon in file order.
    pub fn start_all(&mut self) {
        info!(daemons = self.children.len(), "starting the tree");
        self.step(Event::StartAll);
    }

    /// The poll loop. Returns the exit code once shut down.
    pub fn run_loop(&mut self) -> Result<i32, RootError> {
        let mut ready = Vec::with_capacity(64);
        loop {
            if let Some(code) = self.all_stopped() {
                return Ok(code);
            }
            let timeout = self
                .next_wake()
                .map(|t| t.saturating_duration_since(Instant::now()));
            self.epoll
                .wait(&mut ready, timeout)
                .map_err(ctx("epoll_wait"))?;
            for &token in &ready {
                self.dispatch(token)?;
            }
            self.after_events(!ready.is_empty());
        }
    }

    /// While shutting down, once no daemon has a process left: reaps the
    /// orphans, removes the cgroups, and returns the exit code.
    fn all_stopped(&mut self) -> Option<i32> {
        let Mode::ShuttingDown(code) = self.mode else {
            return None;
        };
        if !self
            .children
            .iter()
            .all(|c| !c.state.has_process() && c.standby.is_none())
        {
            return None;
        }
        self.zygote = None;
        // Orphans a daemon left behind, reparented to us.
        let _ = self.reap();
        if let Some(Err(e)) = self.contain.take().map(cgroup::Containment::remove) {
            warn!(error = %e, "could not remove every cgroup");
        }
        info!(code, "every daemon stopped; exiting");
        Some(code)
    }

    /// When the loop must wake with no event: the first timer of a daemon,
    /// a standby's retry, the sweep, the control socket's, or the service
    /// manager's.
    fn next_wake(&self) -> Option<Instant> {
        let next = self.timers.first().map(|&(t, _)| t);
        [
            next,
            self.standby_retries.first().map(|&(t, _)| t),
            self.sweep_at,
            self.control_wake(),
            self.manager.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Hands one ready descriptor's event to its handler, by its token.
    fn dispatch(&mut self, token: u64) -> Result<(), RootError> {
        let low = token & !TOKEN_KIND;
        // The low half is 32 bits wide, so it fits a usize on any target
        // the root runs on; were it not to, no daemon has index MAX.
        let i = usize::try_from(low).unwrap_or(usize::MAX);
        match (token & TOKEN_KIND, low) {
            (0, TOKEN_SIGNALS) => self.on_signals()?,
            (0, TOKEN_LISTENER) => self.on_accept(),
            (0, TOKEN_WATCH) => self.on_watch(),
            (0, TOKEN_NOTIFY) => self.on_notify(),
            (0, TOKEN_HANDOVER) => {
                if let Some(h) = &mut self.handover {
                    h.on_sync();
                }
            }
            (TOKEN_NOTIFY_FD, _) => self.on_notify_fd(i),
            (TOKEN_SETUP, _) => self.on_setup(i),
            (TOKEN_CONN, id) => self.on_conn(id),
            (TOKEN_STANDBY, _) => self.on_standby_setup(i),
            (TOKEN_OUTPUT, n) => {
                if let Some(out) = self.outputs.get_mut(i / 2) {
                    out.on_readable(output::Stream::from_index(n % 2));
                }
            }
            (TOKEN_CGROUP, 0) => self.on_cgroup_events(),
            (TOKEN_EXIT, pid) => self.on_pidfd(pid)?,
            _ => warn!(token, "event for an unknown token"),
        }
        Ok(())
    }

    /// What the loop does after each wake-up (`events`: some descriptor
    /// was ready): timers, the reload, the deferred notes, and what the
    /// service manager is told.
    fn after_events(&mut self, events: bool) {
        let now = Instant::now();
        if events || self.timers.first().is_some_and(|&(t, _)| t <= now) {
            self.manager.status_changed(now);
        }
        self.fire_timers();
        self.advance_reload();
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

    /// The signalfd is readable: each pending signal to its handler.
    fn on_signals(&mut self) -> Result<(), RootError> {
        while let Some((sig, from)) = self.signals.read().map_err(ctx("reading signalfd"))? {
            match sig {
                // Always from a child; without its pid, sweep.
                Signal::CHLD => match from {
                    Some(from) => self.on_sigchld(from)?,
                    None => self.reap()?,
                },
                Signal::TERM | Signal::INT => self.on_shutdown_signal(sig),
                Signal::HUP => {
                    info!("SIGHUP: reloading the config file");
                    // Refusals and a bad file are logged by `reload`.
                    let _ = self.reload(false);
                }
                Signal::USR1 => info!(status = %self.status_line(Instant::now()), "SIGUSR1"),
                Signal::USR2 => info!("SIGUSR2 ignored"),
                _ => debug!(signal = %sig, "unexpected signal"),
            }
        }
        Ok(())
    }

    /// The containment; present until the root's last moment.
    fn containment(&self) -> &cgroup::Containment {
        self.contain.as_ref().expect("removed only on the way out")
    }

    // ----- the supervisor's actions ------------------------------------------

    /// Feeds `event` to the supervisor and carries out its actions, in
    /// order. What an action reports back (a failed fork, a takeover) is
    /// fed in after the batch, so the batch runs as it was decided.
    fn step(&mut self, event: Event) {
        let mut events = VecDeque::from([event]);
        while let Some(event) = events.pop_front() {
            for action in self.sup.handle(event, Instant::now()) {
                events.extend(self.carry_out(action));
            }
        }
    }

    /// Carries out one action of the supervisor.
    fn carry_out(&mut self, action: Action) -> Option<Event> {
        match action {
            Action::Fork(i) => return self.start(i),
            Action::Term(i) => {
                // No pid: its fork failed, and the supervisor hears it next.
                if let Some(pid) = self.children[i].pid {
                    debug!(daemon = %self.children[i].cfg.name, %pid, "stopping");
                    kill_tree(pid, Signal::TERM);
                    kill_tree(pid, Signal::CONT);
                }
            }
            Action::Kill(i) => {
                if let Some(pid) = self.children[i].pid {
                    warn!(daemon = %self.children[i].cfg.name, %pid, timeout = ?self.config.root.stop_timeout, "did not stop in time; killing");
                    self.kill_all(i, pid);
                }
            }
            Action::SetTimer(i, at) => self.set_timer(i, at),
            Action::CancelTimer(i) => self.cancel_timer(i),
            Action::ExtendTimer(i, at) => {
                if self.children[i].deadline.is_some_and(|d| d < at) {
                    self.set_timer(i, at);
                }
            }
            Action::StartTimedOut(i) => {
                let c = &mut self.children[i];
                if let Some(pid) = c.pid {
                    error!(daemon = %c.cfg.name, %pid, start_timeout = ?c.cfg.start_timeout, "not ready within start_timeout; killing");
                    c.killed_for = Some(ExitReason::StartTimeout);
                    kill_tree(pid, Signal::KILL);
                }
            }
            Action::CheckWatchdog(i) => return self.check_watchdog(i),
            Action::WatchdogKill(i) => self.watchdog_kill(i),
            Action::ForkStandby(i) => self.ensure_standby(i),
            Action::KillStandby(i) => self.kill_standby(i),
            Action::Show(i, state) => {
                self.children[i].state = state;
                self.publish(i);
            }
            Action::Restarted(i) => {
                self.children[i].restarts += 1;
                self.publish(i);
            }
            Action::ShutDown(code) => {
                self.mode = Mode::ShuttingDown(code);
                self.drop_standby_retries();
                self.manager.stopping();
            }
            Action::Exit { to, link } => {
                let (name, from) = (&self.children[to].cfg.name, &self.children[link].cfg.name);
                if self.post.exit_to(to, link) {
                    info!(daemon = %name, link = %from, "link died; EXIT delivered (trap_exits)");
                } else {
                    warn!(daemon = %name, link = %from, "link died; its mailbox is full, EXIT lost");
                }
            }
            Action::Log(log) => self.log_decision(log),
        }
        None
    }

    /// The log line of a supervisor's decision.
    fn log_decision(&mut self, log: Log) {
        let groups = self.sup.groups();
        match log {
            Log::NotRestarted(i) => {
                let c = &self.children[i];
                info!(daemon = %c.cfg.name, restart = ?c.cfg.restart, "not restarted");
            }
            Log::Backoff(i, delay) => {
                info!(daemon = %self.children[i].cfg.name, delay = ?delay, "restarting after backoff");
            }
            Log::Linked { daemon, link } => {
                info!(daemon = %self.names[daemon], linked_to = %self.names[link], "restarting: a linked daemon died");
            }
            Log::GaveUp { group, member } => {
                self.flush_notes();
                let groups = self.sup.groups();
                let g = &groups[group];
                let culprit = match member {
                    Member::Daemon(i) => &self.names[i],
                    Member::Group(h) => &groups[h].name,
                };
                error!(
                    group = %g.name,
                    daemon = %culprit,
                    intensity = g.intensity,
                    period = ?g.period,
                    "restart intensity exceeded; giving up"
                );
            }
            Log::GroupFailed(g) => {
                error!(group = %groups[g].name, "group failed: its children are stopped");
            }
            Log::GroupNotRestarted(g) => {
                info!(group = %groups[g].name, restart = ?groups[g].restart, "group not restarted");
            }
            Log::GroupRestart { group, cause } => {
                let (g, culprit) = match cause {
                    Member::Daemon(i) => (&groups[group], &self.names[i]),
                    Member::Group(h) => (&groups[group], &groups[h].name),
                };
                info!(group = %g.name, strategy = ?g.strategy, after = %culprit, "restarting the group's children");
            }
            Log::AutoShutdown { group, member } => {
                let after = match member {
                    Member::Daemon(i) => &self.names[i],
                    Member::Group(h) => &groups[h].name,
                };
                info!(group = %groups[group].name, after = %after, "a significant child ended: auto_shutdown");
            }
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
        self.retry_standbys(now);
    }

    /// A daemon's timer: the supervisor decides (a backoff's end, a stop's
    /// deadline, the watchdog's next look).
    fn on_timer(&mut self, i: usize) {
        self.step(Event::Timer(i));
    }
}

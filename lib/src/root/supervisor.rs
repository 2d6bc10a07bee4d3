//! The supervisor as a table: every supervision decision of the root is
//! one transition, [`Supervisor::handle`], from (state, event) to (new
//! state, actions). It makes no system call and reads no clock (the time is
//! an argument), so every cell can be tested alone; the root's poll loop
//! feeds it events (a process was reaped, a timer fired, an operator asked)
//! and carries out the [`Action`]s it returns (fork, signal, set a timer,
//! shut down).
//!
//! The tree is OTP's: the top supervisor (group [`TOP`]) and every
//! `[[group]]` are supervisors with their own strategy, intensity, period
//! and restart type; their children are daemons and groups, started in
//! declared order and stopped in reverse. A supervisor past its intensity
//! stops its children and fails, and its parent handles that as the death
//! of a child (escalation); at the top, the root gives up (exit 69). A
//! supervisor with `auto_shutdown` ends itself when its significant
//! children end (OTP 24's `significant`/`auto_shutdown`): it stops its
//! children and its parent sees a child exit normally; at the top, the
//! root exits 0. `DESIGN.md` §4 shows the table cell by cell.

use std::collections::VecDeque;

use super::window::RestartWindow;
use std::time::{Duration, Instant};

use super::{State, EXIT_GAVE_UP, EXIT_OK};
use crate::config::{AutoShutdown, Backoff, Config, DaemonConfig, RestartType, Strategy};

/// The pause before retrying a start that failed in the root (fork, or
/// preparing an exec).
pub(super) const FORK_RETRY: Duration = Duration::from_secs(1);

/// The top supervisor's index among the groups.
pub(crate) const TOP: usize = 0;

/// A child of a supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Member {
    /// A daemon, by its index in the config.
    Daemon(usize),
    /// A group, by its index among the groups (`[[group]]` k is k + 1).
    Group(usize),
}

/// What follows once a stopping daemon is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Then {
    /// It stays down (`ctl stop`, its group stops, shutdown).
    Rest,
    /// It starts again: at once (`ctl restart`, a link), or with its
    /// group's restart when the group holds it.
    Start,
}

/// Where a daemon is, as its supervisor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DState {
    /// Not running, not due to run.
    Stopped,
    /// Forked; its setup has not finished.
    Starting,
    /// Its code runs.
    Running,
    /// Dead; its restart waits for a backoff timer.
    Backoff,
    /// Down and due to start with its group's restart, which waits for
    /// other children to stop (or for their backoff).
    Waiting,
    /// Sent SIGTERM; SIGKILL at the timer; then per [`Then`].
    Stopping(Then),
    /// Its watchdog expired and its process group was sent SIGKILL: its
    /// exit is a death with cause [`Cause::Watchdog`].
    Killed,
    /// Its supervisor gave up on it.
    Failed,
}

impl DState {
    /// The state `ctl status` shows.
    pub(crate) fn shown(self) -> State {
        match self {
            DState::Stopped => State::Stopped,
            DState::Starting => State::Starting,
            DState::Running => State::Running,
            DState::Backoff | DState::Waiting => State::Backoff,
            DState::Stopping(_) | DState::Killed => State::Stopping,
            DState::Failed => State::Failed,
        }
    }

    fn up(self) -> bool {
        matches!(self, DState::Starting | DState::Running)
    }

    fn down(self) -> bool {
        !matches!(
            self,
            DState::Starting | DState::Running | DState::Stopping(_) | DState::Killed
        )
    }
}

/// Where a group (a supervisor) is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GState {
    /// Starting its children in order, each once the one before it is
    /// ready (OTP's `start_children`): the child at `awaiting` was started
    /// and is not ready yet; those at `next` (ascending) are still to
    /// start. A child that ends for good while awaited is passed over.
    Starting {
        /// The position started last, until it is ready (or down for good).
        awaiting: Option<usize>,
        /// Positions still to start, in order.
        next: Vec<usize>,
        /// Why they start: `Some` for a group's own start (every child
        /// starts for that cause), `None` after a restart of some of them
        /// (each daemon keeps its own cause).
        cause: Option<Cause>,
    },
    /// Supervising its children.
    Running,
    /// A `one_for_all`/`rest_for_one` restart: the children at the
    /// positions in `stop` are stopped one at a time, highest first; once
    /// none is left and none in `start` waits out a backoff, those in
    /// `start` start again in order.
    Restarting {
        /// Positions (ascending) still to be stopped.
        stop: Vec<usize>,
        /// Positions (ascending) to start again.
        start: Vec<usize>,
    },
    /// Its children stop one at a time in reverse order; then it is
    /// stopped ([`GThen::Rest`]) or failed ([`GThen::Fail`]).
    Stopping(GThen),
    /// Down; its parent restarts it with its strategy, or a shutdown
    /// stopped it.
    Stopped,
    /// It gave up (intensity exceeded) and its parent did not restart it.
    Failed,
    /// It shut itself down (`auto_shutdown`: its significant children
    /// ended) and its parent did not restart it.
    Ended,
}

impl GState {
    /// The name `ctl tree` shows.
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            GState::Starting { .. } => "starting",
            GState::Running => "running",
            GState::Restarting { .. } => "restarting",
            GState::Stopping(_) => "stopping",
            GState::Stopped => "stopped",
            GState::Failed => "failed",
            GState::Ended => "ended",
        }
    }
}

/// What a stopping group becomes once its children are down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GThen {
    /// Stopped by its parent (a restart of its siblings) or a shutdown.
    Rest,
    /// It gave up: failed, and its parent sees a child die.
    Fail,
    /// `auto_shutdown`: ended, and its parent sees a child exit normally.
    End,
}

/// Why a daemon's current process started: its `started` log line and
/// `ctl tree` say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// The tree, or its group, started (not a restart).
    Start,
    /// It died on its own (a crash, or an exit its restart type restarts).
    Death,
    /// Its start failed in the root, and was tried again.
    Retry,
    /// A daemon linked to it died.
    Link,
    /// Its supervisor's `one_for_all`/`rest_for_one` after a sibling died.
    Strategy,
    /// Its group gave up and its parent restarted the group.
    Escalation,
    /// `ctl start` or `ctl restart`.
    Operator,
    /// Its watchdog expired (no heartbeat within `watchdog`, or
    /// `WATCHDOG=trigger`) and the root killed it.
    Watchdog,
    /// A reload changed its settings (it starts again with the new ones)
    /// or added it.
    Reload,
}

impl Cause {
    /// Every cause, in the order `ctl status` and `metrics` count them.
    pub(crate) const ALL: [Cause; 9] = [
        Cause::Start,
        Cause::Death,
        Cause::Retry,
        Cause::Link,
        Cause::Strategy,
        Cause::Escalation,
        Cause::Operator,
        Cause::Watchdog,
        Cause::Reload,
    ];

    /// Its place in [`Cause::ALL`].
    pub(crate) fn index(self) -> usize {
        Cause::ALL.iter().position(|&c| c == self).unwrap_or(0)
    }

    /// The name logs and `ctl tree` show.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Cause::Start => "start",
            Cause::Death => "death",
            Cause::Retry => "retry",
            Cause::Link => "link",
            Cause::Strategy => "strategy",
            Cause::Escalation => "escalation",
            Cause::Operator => "operator",
            Cause::Watchdog => "watchdog",
            Cause::Reload => "reload",
        }
    }
}

/// What happened, as the loop tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// Start the tree: every child of the top in order.
    StartAll,
    /// A daemon is ready: its setup finished (built-in, `readiness =
    /// "exec"`), it sent `READY=1` (`notify`), or wrote a newline to its
    /// notification descriptor (`fd`); or a standby took over.
    Ready(usize),
    /// The daemon asked for more time (`EXTEND_TIMEOUT_USEC`): its start
    /// or stop deadline moves to at least this far from now.
    Extend(usize, Duration),
    /// A daemon's process was reaped. `normal`: exit code 0.
    Exit {
        daemon: usize,
        normal: bool,
        uptime: Duration,
    },
    /// The root could not fork (or prepare) a daemon it was told to start.
    ForkFailed(usize),
    /// The machine refused a start (no process, descriptor, memory or disk
    /// to spare): retry after the pause given, charging no intensity.
    Refused(usize, Duration),
    /// A daemon's timer fired.
    Timer(usize),
    /// A daemon's standby died unasked.
    StandbyDied(usize),
    /// `ctl stop NAME`.
    Stop(usize),
    /// `ctl start NAME`.
    Start(usize),
    /// `ctl restart NAME`.
    Restart(usize),
    /// A reload starts the daemon: it changed (and was up), or it was
    /// added to a running group.
    Reload(usize),
    /// The daemon's watchdog expired: the root's look found no heartbeat
    /// within `watchdog`, or it sent `WATCHDOG=trigger`.
    Watchdog(usize),
    /// Stop the tree, then exit with this code.
    Shutdown(i32),
}

/// What the loop must do, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Start the daemon's process (its standby takes over, or a fork). A
    /// fork that fails comes back as [`Event::ForkFailed`], a takeover as
    /// [`Event::Ready`].
    Fork(usize),
    /// SIGTERM and SIGCONT to the daemon's process group.
    Term(usize),
    /// SIGKILL to the daemon's process group (it did not stop in time).
    Kill(usize),
    /// Arm the daemon's one timer (replacing the one it had).
    SetTimer(usize, Instant),
    /// Disarm the daemon's timer.
    CancelTimer(usize),
    /// Move the daemon's timer to this moment if it is armed for earlier.
    ExtendTimer(usize, Instant),
    /// SIGKILL the daemon's process group: it was not ready within its
    /// `start_timeout` (its exit is a death, reason `start_timeout`).
    StartTimedOut(usize),
    /// The watchdog's look at the daemon's heartbeat: a stale one comes
    /// back as [`Event::Watchdog`].
    CheckWatchdog(usize),
    /// SIGKILL the daemon's process group: its watchdog expired (its exit
    /// is a death, reason `watchdog`).
    WatchdogKill(usize),
    /// Fork a standby for the daemon (its old one died).
    ForkStandby(usize),
    /// Kill the daemon's standby, if it has one.
    KillStandby(usize),
    /// The state `ctl status` shows for the daemon changed.
    Show(usize, State),
    /// The daemon's restart count goes up by one (before its next start).
    Restarted(usize),
    /// The tree is stopping; the root exits with this code when it is down.
    ShutDown(i32),
    /// `trap_exits`: tell daemon `to` that `link`, linked to it, died
    /// (an EXIT message in its mailbox) instead of restarting it.
    Exit { to: usize, link: usize },
    /// A decision worth a log line.
    Log(Log),
}

/// Decisions the loop logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Log {
    /// Its restart type says no.
    NotRestarted(usize),
    /// A restart waits this long.
    Backoff(usize, Duration),
    /// Restarted because a daemon linked to it died.
    Linked { daemon: usize, link: usize },
    /// The group's intensity was exceeded by the death of `member`.
    GaveUp { group: usize, member: Member },
    /// A group's children all stopped after it gave up.
    GroupFailed(usize),
    /// A group that gave up is not restarted (its restart type).
    GroupNotRestarted(usize),
    /// A group restarts its children (`one_for_all`, `rest_for_one`).
    GroupRestart { group: usize, cause: Member },
    /// The end of significant child `member` ends `group`
    /// (`auto_shutdown`): it stops its children (the top: the tree, exit 0).
    AutoShutdown { group: usize, member: Member },
}

/// A daemon, as its supervisor keeps it.
#[derive(Debug)]
struct Daemon {
    state: DState,
    group: usize,
    pos: usize,
    restart: RestartType,
    /// Its end may end its supervisor (`auto_shutdown`).
    significant: bool,
    backoff_cfg: Backoff,
    /// The delay before the next restart.
    backoff: Duration,
    restarts: u32,
    links: Vec<usize>,
    /// `trap_exits`: a link's death is a message, not a restart.
    trap_exits: bool,
    /// Why its current (or next) process starts.
    cause: Cause,
    /// From fork to ready at most this long.
    start_timeout: Duration,
    /// Its watchdog deadline, looked at once it is running.
    watchdog: Option<Duration>,
}

/// A supervisor: the top or a `[[group]]`.
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) name: String,
    pub(crate) parent: Option<usize>,
    pos: usize,
    pub(crate) children: Vec<Member>,
    pub(crate) strategy: Strategy,
    pub(crate) intensity: u32,
    pub(crate) period: Duration,
    pub(crate) restart: RestartType,
    /// Whether the end of its significant children ends it.
    pub(crate) auto_shutdown: AutoShutdown,
    /// Its end may end its parent (the parent's `auto_shutdown`).
    pub(crate) significant: bool,
    /// Its restarts within `period` (its intensity window, bounded).
    window: RestartWindow,
    /// How often its parent restarted it.
    pub(crate) restarts: u32,
    pub(crate) state: GState,
}

/// Every supervision decision's state; see the module docs.
#[derive(Debug)]
pub(crate) struct Supervisor {
    daemons: Vec<Daemon>,
    groups: Vec<Group>,
    stop_timeout: Duration,
    /// Set once the tree shuts down, with the exit code.
    shutdown: Option<i32>,
    now: Instant,
    out: Vec<Action>,
    /// Groups to look at again (a child of theirs went down).
    due: VecDeque<usize>,
}

/// The supervisor's index of the group called `name` in `config` ([`TOP`]
/// for none, `[[group]]` k at k + 1).
pub(crate) fn group_index(config: &Config, name: Option<&str>) -> usize {
    name.and_then(|n| config.groups.iter().position(|g| g.name == n))
        .map_or(TOP, |k| k + 1)
}

/// Each supervisor's children in start order: its daemons in file order,
/// and its groups where their first daemon (in file order, anywhere under
/// them) is; a group without daemons last. `parent[g]` is group `g`'s.
fn children_in_order(config: &Config, parent: &[Option<usize>]) -> Vec<Vec<Member>> {
    let n = parent.len();
    // The first daemon (in file order) under each group.
    let mut first = vec![usize::MAX; n];
    for (d, dc) in config.daemons.iter().enumerate() {
        let mut g = Some(group_index(config, dc.group.as_deref()));
        while let Some(h) = g {
            if first[h] != usize::MAX {
                break;
            }
            first[h] = d;
            g = parent[h];
        }
    }
    let mut kids: Vec<Vec<(usize, Member)>> = vec![Vec::new(); n];
    for (d, dc) in config.daemons.iter().enumerate() {
        kids[group_index(config, dc.group.as_deref())].push((d, Member::Daemon(d)));
    }
    for (h, p) in parent.iter().enumerate().skip(1) {
        let key = if first[h] == usize::MAX {
            config.daemons.len() + h
        } else {
            first[h]
        };
        kids[p.unwrap_or(TOP)].push((key, Member::Group(h)));
    }
    kids.into_iter()
        .map(|mut k| {
            k.sort_by_key(|&(key, _)| key);
            k.into_iter().map(|(_, m)| m).collect()
        })
        .collect()
}

impl Daemon {
    /// Daemon `cfg` of group `g`, stopped, linked to `links`.
    fn new(cfg: &DaemonConfig, g: usize, links: Vec<usize>) -> Daemon {
        Daemon {
            state: DState::Stopped,
            group: g,
            pos: 0,
            restart: cfg.restart,
            significant: cfg.significant,
            backoff_cfg: cfg.backoff,
            backoff: cfg.backoff.initial,
            restarts: 0,
            links,
            trap_exits: cfg.trap_exits,
            cause: Cause::Start,
            start_timeout: cfg.start_timeout,
            watchdog: cfg.watchdog,
        }
    }
}

impl Group {
    /// Supervisor `g` of `config` (the top, or `[[group]]` g - 1), stopped,
    /// with its parent and its children in start order.
    fn new(config: &Config, g: usize, parent: Option<usize>, children: Vec<Member>) -> Group {
        let (name, sup, restart, significant) = if g == TOP {
            ("root", &config.supervisor, RestartType::Permanent, false)
        } else {
            let gc = &config.groups[g - 1];
            (gc.name.as_str(), &gc.supervisor, gc.restart, gc.significant)
        };
        Group {
            name: name.to_owned(),
            parent,
            pos: 0,
            children,
            strategy: sup.strategy,
            intensity: sup.intensity,
            period: sup.period,
            restart,
            auto_shutdown: sup.auto_shutdown,
            significant,
            window: RestartWindow::default(),
            restarts: 0,
            state: GState::Stopped,
        }
    }
}

impl Supervisor {
    /// The tree of `config`: group k + 1 is `config.groups[k]`; `links`
    /// are the daemons' links, resolved to indices and symmetric.
    ///
    /// A supervisor's children are its daemons in file order, and its
    /// groups placed where their first daemon (in file order) is; a group
    /// with no daemon comes last.
    pub(crate) fn new(config: &Config, links: &[Vec<usize>], now: Instant) -> Supervisor {
        let parent: Vec<Option<usize>> = std::iter::once(None)
            .chain(
                config
                    .groups
                    .iter()
                    .map(|g| Some(group_index(config, g.parent.as_deref()))),
            )
            .collect();
        let kids = children_in_order(config, &parent);
        let mut groups: Vec<Group> = kids
            .into_iter()
            .enumerate()
            .map(|(g, children)| Group::new(config, g, parent[g], children))
            .collect();
        let mut daemons: Vec<Daemon> = config
            .daemons
            .iter()
            .enumerate()
            .map(|(d, dc)| {
                let links = links.get(d).cloned().unwrap_or_default();
                Daemon::new(dc, group_index(config, dc.group.as_deref()), links)
            })
            .collect();
        for g in 0..groups.len() {
            for (pos, m) in groups[g].children.clone().into_iter().enumerate() {
                match m {
                    Member::Daemon(d) => daemons[d].pos = pos,
                    Member::Group(h) => groups[h].pos = pos,
                }
            }
        }
        Supervisor {
            daemons,
            groups,
            stop_timeout: config.root.stop_timeout,
            shutdown: None,
            now,
            out: Vec::new(),
            due: VecDeque::new(),
        }
    }

    /// The transition: applies `event` at time `now` and returns what the
    /// loop must do, in order.
    pub(crate) fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        self.now = now;
        match event {
            Event::StartAll => self.start_group(TOP, Cause::Start),
            Event::Ready(i) => self.on_ready(i),
            Event::Extend(i, by) => {
                if matches!(
                    self.daemons[i].state,
                    DState::Starting | DState::Stopping(_)
                ) {
                    self.out.push(Action::ExtendTimer(i, self.now + by));
                }
            }
            Event::Exit {
                daemon,
                normal,
                uptime,
            } => self.on_exit(daemon, normal, uptime),
            Event::ForkFailed(i) => self.on_fork_failed(i),
            Event::Refused(i, delay) => self.on_refused(i, delay),
            Event::Timer(i) => self.on_timer(i),
            Event::StandbyDied(i) => {
                // Counted while the daemon is up (stopping included); a new
                // one only if it still wants one (not while it stops).
                let g = self.daemons[i].group;
                if !self.daemons[i].state.down()
                    && !self.stopping(g)
                    && self.count_restart(g, Member::Daemon(i))
                    && self.wants_standby(i)
                {
                    self.out.push(Action::ForkStandby(i));
                }
            }
            Event::Stop(i) => self.operator_stop(i),
            Event::Start(i) => self.start_asked(i, Cause::Operator),
            Event::Reload(i) => self.start_asked(i, Cause::Reload),
            Event::Restart(i) => {
                self.daemons[i].cause = Cause::Operator;
                match self.daemons[i].state {
                    DState::Starting | DState::Running | DState::Killed => {
                        self.stop_member(Member::Daemon(i), Then::Start);
                    }
                    DState::Stopping(_) => self.set(i, DState::Stopping(Then::Start)),
                    _ => self.operator_start(i, Cause::Operator),
                }
            }
            Event::Watchdog(i) => self.on_watchdog(i),
            Event::Shutdown(code) => self.shut_down(code),
        }
        while let Some(g) = self.due.pop_front() {
            self.progress(g);
        }
        std::mem::take(&mut self.out)
    }

    // ----- what the loop and `ctl` read ----------------------------------

    /// The groups: [`TOP`] first, then `[[group]]` k at k + 1.
    pub(crate) fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// Restarts within group `g`'s period, as of `now`.
    pub(crate) fn recent_restarts(&self, g: usize, now: Instant) -> usize {
        let grp = &self.groups[g];
        usize::try_from(grp.window.count_at(now, grp.period)).unwrap_or(usize::MAX)
    }

    /// Why the daemon's current process started.
    pub(crate) fn start_cause(&self, i: usize) -> Cause {
        self.daemons[i].cause
    }

    /// The daemon's state as the supervisor sees it.
    pub(crate) fn daemon_state(&self, i: usize) -> DState {
        self.daemons[i].state
    }

    /// Whether daemon `i` wants a standby forked (after its standby died,
    /// or a retry after a failed fork): starting, running or killed (about
    /// to be replaced), not stopping, in a group that is not stopping.
    pub(crate) fn wants_standby(&self, i: usize) -> bool {
        let d = &self.daemons[i];
        matches!(d.state, DState::Starting | DState::Running | DState::Killed)
            && !self.stopping(d.group)
    }

    /// The daemon's restarts so far.
    #[cfg(test)]
    pub(crate) fn daemon_restarts(&self, i: usize) -> u32 {
        self.daemons[i].restarts
    }

    /// Whether the tree is shutting down, and with which exit code.
    #[cfg(test)]
    pub(crate) fn shutting_down(&self) -> Option<i32> {
        self.shutdown
    }

    // ----- cells ---------------------------------------------------------

    fn set(&mut self, i: usize, state: DState) {
        let was = self.daemons[i].state;
        self.daemons[i].state = state;
        if was.shown() != state.shown() {
            self.out.push(Action::Show(i, state.shown()));
        }
    }

    /// Starting × ready: running; the start deadline gives way to the
    /// watchdog's first look.
    fn on_ready(&mut self, i: usize) {
        if self.daemons[i].state != DState::Starting {
            return;
        }
        self.set(i, DState::Running);
        self.due.push_back(self.daemons[i].group);
        self.out.push(Action::CancelTimer(i));
        if let Some(wd) = self.daemons[i].watchdog {
            self.out.push(Action::SetTimer(i, self.now + wd));
        }
    }

    /// Starting/Running/Stopping × exit.
    fn on_exit(&mut self, i: usize, normal: bool, uptime: Duration) {
        match self.daemons[i].state {
            DState::Stopping(then) => {
                self.out.push(Action::CancelTimer(i));
                self.down(i, then);
            }
            DState::Starting | DState::Running => {
                self.out.push(Action::CancelTimer(i));
                self.set(i, DState::Stopped);
                self.ended(Member::Daemon(i), normal, uptime, Cause::Death);
            }
            DState::Killed => {
                self.set(i, DState::Stopped);
                self.ended(Member::Daemon(i), normal, uptime, Cause::Watchdog);
            }
            // No process of its was known: nothing to decide.
            _ => {}
        }
        // A group starting its children may await this one.
        self.due.push_back(self.daemons[i].group);
    }

    /// Starting/Running × watchdog: SIGKILL its group, → killed (its exit
    /// is a death with cause `watchdog`). Elsewhere nothing: it is on its
    /// way down already, or has no process.
    fn on_watchdog(&mut self, i: usize) {
        if !self.daemons[i].state.up() {
            return;
        }
        self.out.push(Action::CancelTimer(i));
        self.out.push(Action::WatchdogKill(i));
        self.set(i, DState::Killed);
    }

    /// `ctl start` (cause `operator`) or a reload (`reload`): a daemon that
    /// is down starts, a stopping one starts once down, one that is up (or
    /// killed, restarting anyway) stays as it is.
    fn start_asked(&mut self, i: usize, cause: Cause) {
        match self.daemons[i].state {
            DState::Starting | DState::Running | DState::Killed => {}
            DState::Stopping(_) => {
                self.daemons[i].cause = cause;
                self.set(i, DState::Stopping(Then::Start));
            }
            _ => self.operator_start(i, cause),
        }
    }

    /// A stopping daemon is down: it rests, or starts again.
    fn down(&mut self, i: usize, then: Then) {
        self.set(i, DState::Stopped);
        let (g, pos) = (self.daemons[i].group, self.daemons[i].pos);
        match then {
            Then::Rest => self.out.push(Action::KillStandby(i)),
            Then::Start if self.holds(g, pos) => self.set(i, DState::Waiting),
            Then::Start if !self.stopping(g) => self.start_daemon(i),
            Then::Start => {}
        }
        self.due.push_back(g);
    }

    /// Backoff × timer: restart (with its group, if the group holds it).
    /// Stopping × timer: SIGKILL. Starting × timer: not ready in time,
    /// SIGKILL (its exit is a death). Running × timer: watchdog.
    fn on_timer(&mut self, i: usize) {
        let (g, pos) = (self.daemons[i].group, self.daemons[i].pos);
        match self.daemons[i].state {
            DState::Starting => self.out.push(Action::StartTimedOut(i)),
            DState::Running => self.out.push(Action::CheckWatchdog(i)),
            DState::Stopping(_) => self.out.push(Action::Kill(i)),
            DState::Backoff if self.stopping(g) => {
                self.set(i, DState::Stopped);
                self.due.push_back(g);
            }
            DState::Backoff if self.holds(g, pos) => {
                self.set(i, DState::Waiting);
                self.due.push_back(g);
            }
            DState::Backoff => self.start_daemon(i),
            _ => {}
        }
    }

    /// Starting × fork failed: a death, retried after at least
    /// [`FORK_RETRY`] (a passing shortage must not burn the window at once).
    fn on_fork_failed(&mut self, i: usize) {
        if !self.start_failed(i) {
            return;
        }
        let g = self.daemons[i].group;
        if !self.count_restart(g, Member::Daemon(i)) {
            return;
        }
        let d = &mut self.daemons[i];
        d.restarts += 1;
        d.cause = Cause::Retry;
        let delay = d.backoff.max(FORK_RETRY);
        self.out.push(Action::Restarted(i));
        self.set(i, DState::Backoff);
        self.out.push(Action::SetTimer(i, self.now + delay));
    }

    /// A start of daemon `i` failed (its fork, or the machine refused it):
    /// it is down. Whether its supervisor is to decide what next (not when
    /// it was being stopped anyway, or its group is stopping).
    fn start_failed(&mut self, i: usize) -> bool {
        let g = self.daemons[i].group;
        match self.daemons[i].state {
            DState::Stopping(then) => {
                self.out.push(Action::CancelTimer(i));
                self.down(i, then);
                false
            }
            DState::Starting => {
                self.set(i, DState::Stopped);
                if self.stopping(g) {
                    self.due.push_back(g);
                    return false;
                }
                true
            }
            _ => false,
        }
    }

    /// Starting × the machine refused the start: nobody died, so nothing
    /// is charged to the intensity and the restart count stays; the daemon
    /// waits in backoff for the pause the root chose (it doubles while the
    /// machine keeps refusing), and the rest of the tree runs on.
    fn on_refused(&mut self, i: usize, delay: Duration) {
        if !self.start_failed(i) {
            return;
        }
        self.daemons[i].cause = Cause::Retry;
        self.set(i, DState::Backoff);
        self.out.push(Action::SetTimer(i, self.now + delay));
    }

    /// A child's end that nobody asked for (a daemon's exit, a group that
    /// gave up): its supervisor decides, unless it is stopping anyway.
    /// `cause`: what a daemon's restart is counted as (`death`, or
    /// `watchdog` after its watchdog killed it).
    fn ended(&mut self, m: Member, normal: bool, uptime: Duration, cause: Cause) {
        let g = self.place(m).0;
        if self.stopping(g) {
            self.due.push_back(g);
            return;
        }
        self.died(m, normal, uptime, cause);
    }

    /// OTP's `restart/2`: restart type, intensity, then strategy.
    fn died(&mut self, m: Member, normal: bool, uptime: Duration, cause: Cause) {
        let (g, pos) = self.place(m);
        if let Member::Daemon(i) = m {
            if !normal {
                self.restart_links(i);
            }
        }
        let restart = match self.restart_type(m) {
            RestartType::Permanent => true,
            RestartType::Transient => !normal,
            RestartType::Temporary => false,
        };
        if !restart {
            match m {
                Member::Daemon(i) => {
                    self.out.push(Action::Log(Log::NotRestarted(i)));
                    self.out.push(Action::KillStandby(i));
                }
                Member::Group(h) => self.out.push(Action::Log(Log::GroupNotRestarted(h))),
            }
            self.forget(g, pos);
            if self.ends_supervisor(g, m) {
                self.auto_shut_down(g, m);
            } else {
                self.due.push_back(g);
            }
            return;
        }
        if !self.count_restart(g, m) {
            return;
        }
        let delay = match m {
            Member::Daemon(i) => {
                let period = self.groups[g].period;
                let d = &mut self.daemons[i];
                d.restarts += 1;
                d.cause = cause;
                // Backoff: reset after a healthy stretch of uptime, else double.
                if uptime >= period {
                    d.backoff = d.backoff_cfg.initial;
                }
                let delay = d.backoff;
                d.backoff = (d.backoff * 2).min(d.backoff_cfg.max);
                self.out.push(Action::Restarted(i));
                if delay > Duration::ZERO {
                    self.set(i, DState::Backoff);
                    self.out.push(Action::Log(Log::Backoff(i, delay)));
                    self.out.push(Action::SetTimer(i, self.now + delay));
                } else {
                    self.set(i, DState::Waiting);
                }
                delay
            }
            Member::Group(h) => {
                self.groups[h].restarts += 1;
                Duration::ZERO
            }
        };
        match self.groups[g].strategy {
            Strategy::OneForOne if self.holds(g, pos) => self.due.push_back(g),
            Strategy::OneForOne if delay == Duration::ZERO => self.start_member(g, pos),
            Strategy::OneForOne => {}
            Strategy::OneForAll => self.restart_children(g, pos, 0),
            Strategy::RestForOne => self.restart_children(g, pos, pos + 1),
        }
    }

    /// OTP's `do_auto_shutdown/2`: whether the end of child `m` (not
    /// restarted) ends group `g`: `m` is significant and `g` shuts down at
    /// any significant child's end, or at the end of the last one still
    /// active (up, or due to restart; one an operator stopped is not).
    fn ends_supervisor(&self, g: usize, m: Member) -> bool {
        if !self.significant(m) {
            return false;
        }
        match self.groups[g].auto_shutdown {
            AutoShutdown::Never => false,
            AutoShutdown::AnySignificant => true,
            AutoShutdown::AllSignificant => !self.groups[g]
                .children
                .iter()
                .any(|&c| c != m && self.significant(c) && !self.member_ended(c)),
        }
    }

    /// `auto_shutdown`: group `g` ends itself after its significant child
    /// `m` ended. It stops its children in reverse order, then is `ended`
    /// and its parent sees a normal exit of this child (OTP's `shutdown`);
    /// the top stops the tree and the root exits 0.
    fn auto_shut_down(&mut self, g: usize, m: Member) {
        self.out.push(Action::Log(Log::AutoShutdown {
            group: g,
            member: m,
        }));
        if g == TOP {
            self.shut_down(EXIT_OK);
        } else {
            self.stop_group(g, GThen::End);
        }
    }

    /// Counts a restart in group `g`'s window; past its intensity the
    /// group gives up (and `false`).
    fn count_restart(&mut self, g: usize, m: Member) -> bool {
        let now = self.now;
        let grp = &mut self.groups[g];
        if grp.window.record(now, grp.period) <= u64::from(grp.intensity) {
            return true;
        }
        self.give_up(g, m);
        false
    }

    /// Group `g` exceeded its intensity through `m`'s death: it stops its
    /// children and fails (its parent sees a child die); the top shuts the
    /// tree down (exit 69).
    fn give_up(&mut self, g: usize, m: Member) {
        self.out.push(Action::Log(Log::GaveUp {
            group: g,
            member: m,
        }));
        // A daemon whose standby died still has its primary: the stop
        // below takes it down.
        if let Member::Daemon(i) = m {
            if self.daemons[i].state.down() {
                self.set(i, DState::Failed);
            }
        }
        if g == TOP {
            self.shut_down(EXIT_GAVE_UP);
        } else {
            self.stop_group(g, GThen::Fail);
        }
    }

    /// `links`: an abnormal death takes the daemons linked to it down and
    /// up again, as `ctl restart` would (not a death of theirs: it neither
    /// propagates further nor counts against an intensity); a linked
    /// daemon that traps exits gets an EXIT message instead.
    fn restart_links(&mut self, i: usize) {
        for j in self.daemons[i].links.clone() {
            if self.daemons[j].trap_exits {
                if self.daemons[j].state.up() {
                    self.out.push(Action::Exit { to: j, link: i });
                }
            } else if self.daemons[j].state.up() {
                self.out
                    .push(Action::Log(Log::Linked { daemon: j, link: i }));
                self.daemons[j].cause = Cause::Link;
                self.stop_member(Member::Daemon(j), Then::Start);
            }
        }
    }

    /// `one_for_all`/`rest_for_one`: the children of `g` from position
    /// `from` on (and the dead one at `dead`) are stopped, highest first,
    /// and started again in order. A child that is down (an operator
    /// stopped it, it ended for good) stays down; a temporary one is
    /// stopped and not started again.
    fn restart_children(&mut self, g: usize, dead: usize, from: usize) {
        let (mut stop, mut start) =
            match std::mem::replace(&mut self.groups[g].state, GState::Running) {
                GState::Restarting { stop, start } => (stop, start),
                // Those not started yet are due to start with the rest.
                GState::Starting { next, .. } => (Vec::new(), next),
                _ => (Vec::new(), Vec::new()),
            };
        let children = self.groups[g].children.clone();
        for (p, &m) in children.iter().enumerate().skip(from) {
            if p == dead {
                continue;
            }
            let up = self.member_up(m);
            let due = up
                || matches!(m, Member::Daemon(d) if matches!(self.daemons[d].state, DState::Backoff | DState::Waiting));
            if up && !stop.contains(&p) {
                stop.push(p);
            }
            if due && self.restart_type(m) != RestartType::Temporary && !start.contains(&p) {
                start.push(p);
                if let Member::Daemon(d) = m {
                    self.daemons[d].cause = Cause::Strategy;
                }
            }
        }
        if !start.contains(&dead) {
            start.push(dead);
        }
        stop.sort_unstable();
        start.sort_unstable();
        self.out.push(Action::Log(Log::GroupRestart {
            group: g,
            cause: children[dead],
        }));
        self.groups[g].state = GState::Restarting { stop, start };
        self.due.push_back(g);
    }

    /// Moves group `g`'s restart or stop on as far as it goes now.
    fn progress(&mut self, g: usize) {
        match self.groups[g].state {
            GState::Starting { .. } => self.progress_start(g),
            GState::Restarting { .. } => self.progress_restart(g),
            GState::Stopping(then) => self.progress_stop(g, then),
            _ => {}
        }
    }

    fn progress_restart(&mut self, g: usize) {
        loop {
            let GState::Restarting { stop, start } = &self.groups[g].state else {
                return;
            };
            let Some(&p) = stop.last() else { break };
            let then = if start.contains(&p) {
                Then::Start
            } else {
                Then::Rest
            };
            let m = self.groups[g].children[p];
            if self.member_down(m) {
                if let GState::Restarting { stop, .. } = &mut self.groups[g].state {
                    stop.pop();
                }
                continue;
            }
            if !self.member_stopping(m) {
                self.stop_member(m, then);
            }
            if !self.member_down(m) {
                return;
            }
        }
        let GState::Restarting { start, .. } = &self.groups[g].state else {
            return;
        };
        let children = &self.groups[g].children;
        let waiting = start.iter().any(|&p| match children[p] {
            Member::Daemon(d) => {
                matches!(self.daemons[d].state, DState::Backoff | DState::Stopping(_))
            }
            Member::Group(h) => matches!(self.groups[h].state, GState::Stopping(_)),
        });
        if waiting {
            return;
        }
        let GState::Restarting { start, .. } =
            std::mem::replace(&mut self.groups[g].state, GState::Running)
        else {
            return;
        };
        self.groups[g].state = GState::Starting {
            awaiting: None,
            next: start,
            cause: None,
        };
        self.progress_start(g);
    }

    /// Starts group `g`'s next child once the one it awaits is ready (a
    /// daemon `running`, a group done starting) or down for good; when
    /// none is left, the group runs and its parent looks again.
    fn progress_start(&mut self, g: usize) {
        loop {
            let GState::Starting {
                awaiting,
                next,
                cause,
            } = &self.groups[g].state
            else {
                return;
            };
            let cause = *cause;
            if let Some(at) = *awaiting {
                if self.member_pending(self.groups[g].children[at]) {
                    return;
                }
            }
            let Some(&pos) = next.first() else {
                self.groups[g].state = GState::Running;
                if let Some(parent) = self.groups[g].parent {
                    self.due.push_back(parent);
                }
                return;
            };
            if let GState::Starting { awaiting, next, .. } = &mut self.groups[g].state {
                next.remove(0);
                *awaiting = Some(pos);
            }
            let child = self.groups[g].children[pos];
            if !self.member_down(child) {
                continue;
            }
            match (child, cause) {
                (Member::Daemon(i), Some(why)) => {
                    self.daemons[i].cause = why;
                    self.start_daemon(i);
                }
                (Member::Group(h), Some(why)) => self.start_group(h, why),
                (_, None) => self.start_member(g, pos),
            }
        }
    }

    fn progress_stop(&mut self, g: usize, then: GThen) {
        loop {
            let children = &self.groups[g].children;
            let Some(p) = (0..children.len())
                .rev()
                .find(|&p| !self.member_down(children[p]))
            else {
                break;
            };
            let m = children[p];
            if !self.member_stopping(m) {
                self.stop_member(m, Then::Rest);
            }
            if !self.member_down(m) {
                return;
            }
        }
        let parent = self.groups[g].parent;
        match then {
            GThen::Rest => {
                self.groups[g].state = GState::Stopped;
                if let Some(p) = parent {
                    self.due.push_back(p);
                }
            }
            GThen::Fail => {
                self.groups[g].state = GState::Failed;
                self.out.push(Action::Log(Log::GroupFailed(g)));
                // OTP: a supervisor that gave up exits with `shutdown`,
                // which is not abnormal (a transient group stays down).
                if parent.is_some() {
                    self.ended(Member::Group(g), true, Duration::ZERO, Cause::Death);
                }
            }
            GThen::End => {
                self.groups[g].state = GState::Ended;
                self.ended(Member::Group(g), true, Duration::ZERO, Cause::Death);
            }
        }
    }

    /// Stops a child: a daemon gets SIGTERM (then per `then`), a group
    /// stops its children in reverse order.
    fn stop_member(&mut self, m: Member, then: Then) {
        match m {
            Member::Daemon(i) => match self.daemons[i].state {
                DState::Starting | DState::Running => {
                    self.out.push(Action::Term(i));
                    self.out
                        .push(Action::SetTimer(i, self.now + self.stop_timeout));
                    self.set(i, DState::Stopping(then));
                }
                DState::Backoff => {
                    self.out.push(Action::CancelTimer(i));
                    self.set(i, DState::Stopped);
                }
                DState::Waiting => self.set(i, DState::Stopped),
                // SIGKILLed already: its exit is now the stop asked for.
                DState::Killed => {
                    self.out
                        .push(Action::SetTimer(i, self.now + self.stop_timeout));
                    self.set(i, DState::Stopping(then));
                }
                DState::Stopping(_) | DState::Stopped | DState::Failed => {}
            },
            Member::Group(h) => {
                if self.member_up(m) {
                    self.stop_group(h, GThen::Rest);
                }
            }
        }
    }

    /// Group `g` stops: daemons waiting to restart stay down at once, the
    /// rest stop one at a time in reverse order.
    fn stop_group(&mut self, g: usize, then: GThen) {
        self.groups[g].state = GState::Stopping(then);
        for m in self.groups[g].children.clone() {
            if let Member::Daemon(i) = m {
                if matches!(self.daemons[i].state, DState::Backoff | DState::Waiting) {
                    self.stop_member(m, Then::Rest);
                }
            }
        }
        self.due.push_back(g);
    }

    /// Starts group `g`: a new incarnation (its window is empty, as OTP's
    /// restarted supervisor's is) starts each of its children in order,
    /// each once the one before it is ready.
    fn start_group(&mut self, g: usize, cause: Cause) {
        self.groups[g].window.clear();
        self.groups[g].state = GState::Starting {
            awaiting: None,
            next: (0..self.groups[g].children.len()).collect(),
            cause: Some(cause),
        };
        self.progress_start(g);
    }

    /// Starts the child at `p` of group `g` after a death: a daemon for
    /// the cause it has, a group as a whole (failed: its parent restarts
    /// it; ended: it ended itself and its parent restarts it; else its
    /// siblings' restart takes it along).
    fn start_member(&mut self, g: usize, p: usize) {
        match self.groups[g].children[p] {
            Member::Daemon(i) => self.start_daemon(i),
            Member::Group(h) => {
                let cause = match self.groups[h].state {
                    GState::Failed => Cause::Escalation,
                    GState::Ended => Cause::Death,
                    _ => Cause::Strategy,
                };
                self.start_group(h, cause);
            }
        }
    }

    fn start_daemon(&mut self, i: usize) {
        if self.shutdown.is_some() {
            return;
        }
        if self.daemons[i].state == DState::Backoff {
            self.out.push(Action::CancelTimer(i));
        }
        self.out.push(Action::Fork(i));
        self.out.push(Action::SetTimer(
            i,
            self.now + self.daemons[i].start_timeout,
        ));
        self.set(i, DState::Starting);
    }

    /// `ctl stop`: down, and it stays down through its group's restart.
    fn operator_stop(&mut self, i: usize) {
        match self.daemons[i].state {
            DState::Stopping(_) => self.set(i, DState::Stopping(Then::Rest)),
            _ => self.stop_member(Member::Daemon(i), Then::Rest),
        }
        let (g, pos) = (self.daemons[i].group, self.daemons[i].pos);
        self.forget(g, pos);
        self.due.push_back(g);
    }

    /// `ctl start`/`ctl restart` of a daemon that is down: its groups come
    /// up with it if they were down (not its siblings).
    fn operator_start(&mut self, i: usize, cause: Cause) {
        let mut g = Some(self.daemons[i].group);
        while let Some(h) = g {
            if matches!(
                self.groups[h].state,
                GState::Stopped | GState::Failed | GState::Ended
            ) {
                self.groups[h].state = GState::Running;
                self.groups[h].window.clear();
            }
            g = self.groups[h].parent;
        }
        self.daemons[i].cause = cause;
        self.start_daemon(i);
    }

    /// Shutdown: the top stops (every daemon in reverse start order, one at
    /// a time); standbys and pending restarts go at once.
    fn shut_down(&mut self, code: i32) {
        if self.shutdown.is_some() {
            return;
        }
        self.shutdown = Some(code);
        self.out.push(Action::ShutDown(code));
        for i in 0..self.daemons.len() {
            self.out.push(Action::KillStandby(i));
            if matches!(self.daemons[i].state, DState::Backoff | DState::Waiting) {
                self.stop_member(Member::Daemon(i), Then::Rest);
            }
        }
        let then = if code == EXIT_GAVE_UP {
            GThen::Fail
        } else {
            GThen::Rest
        };
        self.groups[TOP].state = GState::Stopping(then);
        self.due.push_back(TOP);
    }

    // ----- helpers -------------------------------------------------------

    fn place(&self, m: Member) -> (usize, usize) {
        match m {
            Member::Daemon(i) => (self.daemons[i].group, self.daemons[i].pos),
            Member::Group(h) => (self.groups[h].parent.unwrap_or(TOP), self.groups[h].pos),
        }
    }

    fn restart_type(&self, m: Member) -> RestartType {
        match m {
            Member::Daemon(i) => self.daemons[i].restart,
            Member::Group(h) => self.groups[h].restart,
        }
    }

    fn significant(&self, m: Member) -> bool {
        match m {
            Member::Daemon(i) => self.daemons[i].significant,
            Member::Group(h) => self.groups[h].significant,
        }
    }

    /// Whether a child is down for good as OTP's `do_auto_shutdown` sees
    /// it (no pid, not restarting): stopped, failed or ended.
    fn member_ended(&self, m: Member) -> bool {
        match m {
            Member::Daemon(i) => matches!(self.daemons[i].state, DState::Stopped | DState::Failed),
            Member::Group(h) => matches!(
                self.groups[h].state,
                GState::Stopped | GState::Failed | GState::Ended
            ),
        }
    }

    /// Whether group `g` is stopping its children (or the tree is).
    fn stopping(&self, g: usize) -> bool {
        self.shutdown.is_some() || matches!(self.groups[g].state, GState::Stopping(_))
    }

    /// Whether group `g`'s restart will start the child at `pos`.
    fn holds(&self, g: usize, pos: usize) -> bool {
        matches!(&self.groups[g].state, GState::Restarting { start, .. } if start.contains(&pos))
    }

    /// The child at `pos` is out of group `g`'s restart or start.
    fn forget(&mut self, g: usize, pos: usize) {
        match &mut self.groups[g].state {
            GState::Restarting { stop, start } => {
                stop.retain(|&p| p != pos);
                start.retain(|&p| p != pos);
            }
            GState::Starting { next, .. } => next.retain(|&p| p != pos),
            _ => {}
        }
    }

    /// Whether a child a starting group awaits may still become ready: a
    /// daemon on its way up (or restarting), a group still starting.
    fn member_pending(&self, m: Member) -> bool {
        match m {
            Member::Daemon(i) => matches!(
                self.daemons[i].state,
                DState::Starting
                    | DState::Backoff
                    | DState::Waiting
                    | DState::Killed
                    | DState::Stopping(Then::Start)
            ),
            Member::Group(h) => matches!(
                self.groups[h].state,
                GState::Starting { .. } | GState::Restarting { .. }
            ),
        }
    }

    fn member_up(&self, m: Member) -> bool {
        match m {
            Member::Daemon(i) => self.daemons[i].state.up(),
            Member::Group(h) => matches!(
                self.groups[h].state,
                GState::Starting { .. } | GState::Running | GState::Restarting { .. }
            ),
        }
    }

    fn member_down(&self, m: Member) -> bool {
        match m {
            Member::Daemon(i) => self.daemons[i].state.down(),
            Member::Group(h) => matches!(
                self.groups[h].state,
                GState::Stopped | GState::Failed | GState::Ended
            ),
        }
    }

    fn member_stopping(&self, m: Member) -> bool {
        match m {
            Member::Daemon(i) => {
                matches!(self.daemons[i].state, DState::Stopping(_) | DState::Killed)
            }
            Member::Group(h) => matches!(self.groups[h].state, GState::Stopping(_)),
        }
    }
}

mod reload;

#[cfg(test)]
mod tests;

//! Starting a daemon: preparing and forking its process (or waking its
//! standby), watching its setup pipe until its code runs, and what a start
//! the root could not carry out becomes (a pause, or a death).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use super::spawn::{self, ByZygote, Plan, Run, Spawned};
use super::supervisor::{Event, FORK_RETRY};
use super::zygote::Zygote;
use super::{cgroup, kill_tree, pid_u32, Mode, Role, Root, State};
use super::{TOKEN_NOTIFY_FD, TOKEN_SETUP, TOKEN_STANDBY};
use crate::config::{OnRestart, Program, Readiness};
use crate::daemon::{ExitReason, SetupStage};
use crate::handoff::{read_setup, Setup};
use crate::sys::{self, Pid, Signal};

/// The first pause before retrying a start the machine refused is
/// [`FORK_RETRY`]; it doubles up to this while the machine keeps refusing
/// (see [`Root::cannot_start`]).
const RETRY_MAX: Duration = Duration::from_secs(30);

impl Root<'_> {
    /// Forks daemon `i`, or its standby. Prepares everything the child
    /// needs in the root's memory first.
    ///
    /// The child is in `by_pid` from the moment it exists. If its setup
    /// pipe cannot be watched, it is killed and the reason comes back with
    /// it (its exit is then a failed start).
    pub(super) fn fork_child(
        &mut self,
        i: usize,
        standby: bool,
    ) -> io::Result<(Spawned, Option<ExitReason>)> {
        let writer = self.post.begin(i, standby);
        if matches!(self.children[i].cfg.program, Program::Builtin(_)) {
            self.ensure_zygote();
        }
        // Out of `self` for the call: the plan borrows the rest of it.
        let mut window = self.handover.take();
        let mut zygote = self.zygote.take();
        let mut lost = None;
        let forked = self.fork_child_with(
            i,
            standby,
            writer,
            window.as_mut(),
            (&mut zygote, &mut lost),
        );
        self.handover = window;
        self.zygote = zygote;
        if let Some(e) = lost {
            self.zygote_lost(&e);
        }
        if forked.is_err() {
            self.failed_fork(i, standby);
        }
        forked
    }

    /// [`Root::fork_child`] once the mailbox writer id is assigned.
    fn fork_child_with(
        &mut self,
        i: usize,
        standby: bool,
        writer: crate::ring::WriterId,
        window: Option<&mut super::handover::Handover>,
        (zygote, lost): (&mut Option<Zygote>, &mut Option<io::Error>),
    ) -> io::Result<(Spawned, Option<ExitReason>)> {
        // Where it maps its row of monitor bits (an exec'd program gets a
        // file of its own).
        let alone = matches!(
            self.children[i].cfg.program,
            crate::config::Program::Exec(_)
        );
        let monitors = self.post.monitor_fd(i, alone)?;
        let c = &self.children[i];
        let start = crate::daemon::Start {
            restarts: c.restarts,
            deaths: &c.deaths,
            on_restart: c.cfg.on_restart,
            resume_before: c.resume_before,
            watchdog: c.cfg.watchdog,
        };
        let run = self.run_of(i, &start, writer)?;
        // A standby is created in the daemon's other leaf, and takes over
        // there: the two leaves swap roles, nothing is moved.
        let cgroup_dir = self.containment().leaf(i, standby)?;
        // `notify_fd`: the program writes a newline on its end when ready.
        let notify_pipe = match c.cfg.readiness {
            Readiness::Fd(n) if !standby => {
                // Blocking for the program (its end is its own), not for
                // the root.
                let (rd, wr) = sys::pipe_cloexec(false)?;
                sys::set_nonblocking(rd.as_fd())?;
                Some(((rd, wr), n))
            }
            _ => None,
        };
        let plan = Plan {
            index: i,
            name: &c.cfg.name,
            title: &c.title,
            regions: &self.regions,
            root_pid: self.pid,
            start,
            run,
            lock: self.lock.as_ref().map(AsRawFd::as_raw_fd),
            standby,
            output: Some(self.outputs[i].write_fds()),
            notify_fd: notify_pipe.as_ref().map(|((_, w), n)| (w.as_raw_fd(), *n)),
            post: self.post.post(),
            writer,
            post_fds: self.post.fds(),
            monitors,
            cgroup: cgroup::raw(cgroup_dir.as_ref()),
            listeners: self.listeners.get(i).map_or(&[][..], |l| &l[..]),
            listen: &c.cfg.listen,
        };
        // A built-in daemon is forked by the zygote; if it is gone, by the
        // root itself, as an exec'd program always is.
        let answer = zygote
            .as_ref()
            .filter(|_| matches!(plan.run, Run::Builtin { .. }))
            .map(|z| spawn::spawn_by_zygote(z.sock(), &plan));
        let mut by_zygote = false;
        let spawned = match answer {
            None => spawn::spawn(&plan, window),
            Some(Ok(s)) => {
                by_zygote = true;
                Ok(s)
            }
            // Out of processes (RLIMIT_NPROC): the zygote is one of them,
            // and must not cost a daemon its start. Ended, its slot goes to
            // the root's own fork; if that succeeds, the zygote was in the
            // way and stays off. If not (the daemon's own `pids_max`, which
            // no zygote counts against), the next start makes a new one.
            Some(Err(ByZygote::Failed(e))) if e.raw_os_error() == Some(libc::EAGAIN) => {
                drop(zygote.take());
                let direct = spawn::spawn(&plan, window);
                if direct.is_ok() {
                    *lost = Some(e);
                }
                direct
            }
            Some(Err(ByZygote::Failed(e))) => Err(e),
            Some(Err(ByZygote::Gone(e))) => {
                drop(zygote.take());
                *lost = Some(e);
                spawn::spawn(&plan, window)
            }
        };
        drop(plan);
        let spawned = spawned?;
        let by = if by_zygote { "zygote" } else { "root" };
        debug!(daemon = %self.children[i].cfg.name, pid = %spawned.pid, by = %by, "forked");
        drop(cgroup_dir);
        self.forked(i, standby, spawned.pid);
        let unwatched = match (self.watch_setup(i, standby, &spawned), notify_pipe) {
            (None, Some(((rd, _), _))) => self.watch_notify_pipe(i, spawned.pid, rd),
            (unwatched, _) => unwatched,
        };
        Ok((spawned, unwatched))
    }

    /// Makes the zygote if there is none (and the kernel can have one).
    fn ensure_zygote(&mut self) {
        if self
            .zygote
            .as_ref()
            .is_some_and(|z| !z.knows(&self.regions) || !self.config.root.zygote)
        {
            // A region was made, added or replaced since it was forked, or
            // a reload turned it off.
            self.drop_zygote();
        }
        if !self.config.root.zygote {
            return;
        }
        if self.zygote.is_some() || self.zygote_off {
            return;
        }
        let (_, zygote) = Zygote::start(&self.regions, (), |()| super::zygote::Image::of(self));
        match zygote {
            Ok(z) => {
                debug!(pid = %z.pid(), "zygote forked");
                self.zygote = Some(z);
            }
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                warn!("out of processes for the zygote; the root forks every daemon itself");
                self.zygote_off = true;
            }
            Err(e) => warn!(error = %e, "cannot fork the zygote; the root forks this start itself"),
        }
    }

    /// The zygote could not serve a start (which the root forked itself):
    /// it is ended, and another is made at the next start, unless this
    /// kernel cannot have one.
    fn zygote_lost(&mut self, e: &io::Error) {
        match e.raw_os_error() {
            Some(libc::ENOSYS) => {
                info!("this kernel cannot fork for the root (clone3 with CLONE_PARENT); the root forks every daemon itself");
                self.zygote_off = true;
            }
            Some(libc::EAGAIN) => {
                warn!("out of processes: the zygote is ended, its process left to the daemons, and the root forks every daemon itself");
                self.zygote_off = true;
            }
            _ => warn!(error = %e, "the zygote did not answer; the root forked the start itself"),
        }
        self.drop_zygote();
    }

    /// Ends the zygote (its copy of the tree is out of date, or it is
    /// broken); the next built-in start makes another.
    pub(super) fn drop_zygote(&mut self) {
        self.zygote = None;
    }

    /// Whether `pid`, just reaped, was the zygote (then forgotten).
    pub(super) fn zygote_reaped(&mut self, pid: Pid) -> bool {
        if self.zygote.as_ref().is_some_and(|z| z.pid() == pid) {
            if let Some(z) = self.zygote.take() {
                z.reaped();
            }
            return true;
        }
        false
    }

    /// What daemon `i`'s process will run: its built-in kind, or its
    /// program with the environment the root gives it.
    fn run_of(
        &self,
        i: usize,
        start: &crate::daemon::Start<'_>,
        writer: crate::ring::WriterId,
    ) -> io::Result<Run<'_>> {
        let c = &self.children[i];
        Ok(match &c.cfg.program {
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
            Program::Exec(argv) => {
                let settings = c.cfg.exec.as_ref().ok_or_else(|| {
                    io::Error::other("an exec'd daemon without its settings (not from check)")
                })?;
                // `WATCHDOG_USEC` comes with forkroot's own variables
                // (`handoff::exec_env`).
                let env = vec![format!("NOTIFY_SOCKET={}", self.notify.env())];
                Run::exec(
                    argv,
                    settings,
                    &c.cfg.name,
                    self.regions.region_len(i),
                    start,
                    &env,
                    writer,
                    &c.cfg.listen,
                    match c.cfg.readiness {
                        Readiness::Fd(n) => Some(n),
                        _ => None,
                    },
                )?
            }
        })
    }

    /// Records a process just forked for daemon `i` (its standby's if
    /// `standby`).
    fn forked(&mut self, i: usize, standby: bool, pid: Pid) {
        if !standby {
            self.post.forked(i, pid_u32(pid));
        }
        self.forks += 1;
        let role = if standby {
            Role::Standby
        } else {
            Role::Primary
        };
        // Tracked before anything else can fail: a child the root forgot
        // would run on, unreaped, beside the replacement forked for it.
        self.by_pid.insert(pid, (i, role));
        self.watch_exit(pid);
    }

    /// Watches a new process's setup pipe. Without it the root cannot tell
    /// when the process is up: it is killed, and its exit (reaped as usual)
    /// is a failed start for the reason returned.
    fn watch_setup(&self, i: usize, standby: bool, spawned: &Spawned) -> Option<ExitReason> {
        let kind = if standby { TOKEN_STANDBY } else { TOKEN_SETUP };
        let e = self
            .epoll
            .add(spawned.setup.as_fd(), kind | i as u64)
            .err()?;
        error!(daemon = %self.children[i].cfg.name, pid = %spawned.pid, error = %e, "cannot watch the new process's setup pipe; killing it");
        kill_tree(spawned.pid, Signal::KILL);
        Some(unwatched(&e))
    }

    /// Watches daemon `i`'s notification pipe (`notify_fd`), as its setup
    /// pipe: unwatched, it could never be ready; a failed start at once
    /// rather than at its `start_timeout`.
    fn watch_notify_pipe(&mut self, i: usize, pid: Pid, rd: OwnedFd) -> Option<ExitReason> {
        match self.epoll.add(rd.as_fd(), TOKEN_NOTIFY_FD | i as u64) {
            Ok(()) => {
                self.children[i].notify_pipe = Some(rd);
                None
            }
            Err(e) => {
                error!(daemon = %self.children[i].cfg.name, %pid, error = %e, "cannot watch the new process's notify_fd pipe; killing it");
                kill_tree(pid, Signal::KILL);
                Some(unwatched(&e))
            }
        }
    }

    /// Counts a start of daemon `i` under its cause; returns the cause's name.
    pub(super) fn count_start(&mut self, i: usize) -> &'static str {
        let cause = self.sup.start_cause(i);
        if self.starts_by_cause.len() <= i {
            // A daemon a reload added.
            self.starts_by_cause.resize(i + 1, Default::default());
        }
        self.starts_by_cause[i][cause.index()] += 1;
        cause.as_str()
    }

    /// A fork of daemon `i` did not happen: its writer id is dead.
    pub(super) fn failed_fork(&self, i: usize, standby: bool) {
        if !standby {
            self.post.ended(i);
        }
    }

    /// [`Action::Fork`]: fork daemon `i` (or wake its standby). What the
    /// supervisor must hear of it comes back as an event: a takeover is
    /// `Ready`, a failed fork `ForkFailed`.
    pub(super) fn start(&mut self, i: usize) -> Option<Event> {
        if self.mode != Mode::Supervising {
            // The supervisor starts nothing during a shutdown; should it,
            // it hears the start failed and leaves the daemon stopped.
            return Some(Event::ForkFailed(i));
        }
        self.cancel_timer(i);
        let c = &self.children[i];
        debug_assert!(!c.state.has_process(), "{} started twice", c.cfg.name);
        let mut fault = None;
        match self.regions.ensure(i) {
            Ok(None) => {}
            Ok(Some(crate::region::Damage::Made)) => {
                info!(daemon = %self.children[i].cfg.name, "region made");
            }
            Ok(Some(damage)) => {
                let c = &mut self.children[i];
                error!(daemon = %c.cfg.name, fault = %damage, "region file damaged");
                fault = Some(damage.to_string());
                c.fault.clone_from(&fault);
            }
            Err(e) => return Some(self.cannot_start(i, &e)),
        }
        let c = &self.children[i];
        if c.cfg.on_restart == OnRestart::Fresh && !c.deaths.is_empty() {
            // Zeroing gives the pages back and allocates them again: if
            // that fails (a full disk), the daemon must not run on pages
            // without blocks; it waits, as for any scarce resource.
            if let Err(e) = self.regions.zero_user(i) {
                return Some(self.cannot_start(i, &e));
            }
        }
        if self.take_over(i) {
            return Some(Event::Ready(i));
        }
        match self.fork_child(i, false) {
            Ok((spawned, unwatched)) => {
                let c = &mut self.children[i];
                c.pid = Some(spawned.pid);
                c.setup = Some(spawned.setup);
                c.fault = unwatched.map(|r| r.to_string()).or(fault);
                c.setup_failed = unwatched;
                c.retry = FORK_RETRY;
                let (pid, restarts) = (spawned.pid, c.restarts);
                self.outputs[i].started(pid);
                self.flush_notes();
                let cause = self.count_start(i);
                info!(daemon = %self.children[i].cfg.name, %pid, restarts, cause = %cause, "started");
                self.began(i);
                self.ensure_standby(i);
                None
            }
            Err(e) => Some(self.cannot_start(i, &e)),
        }
    }

    /// A start of daemon `i` failed in the root (its region, fork, or
    /// preparing an exec).
    ///
    /// When the machine is short of something (processes, descriptors,
    /// memory, disk: EAGAIN, EMFILE, ENFILE, ENOMEM, ENOSPC, EDQUOT), no
    /// daemon died and waiting can help: the supervisor hears
    /// [`Event::Refused`] and the daemon waits in `backoff`, its fault shown
    /// by `ctl status`, retried after a pause that doubles up to
    /// [`RETRY_MAX`]; the intensity is not charged, so the rest of the tree
    /// runs on. Anything else (a program not found) is a death
    /// ([`Event::ForkFailed`]), charged to the intensity.
    pub(super) fn cannot_start(&mut self, i: usize, e: &io::Error) -> Event {
        let errno = e.raw_os_error().or_else(|| {
            e.get_ref()
                .and_then(|inner| inner.downcast_ref::<io::Error>())
                .and_then(io::Error::raw_os_error)
        });
        let scarce = matches!(
            errno,
            Some(
                libc::EAGAIN
                    | libc::EMFILE
                    | libc::ENFILE
                    | libc::ENOMEM
                    | libc::ENOSPC
                    | libc::EDQUOT
            )
        ) || matches!(
            e.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::OutOfMemory | io::ErrorKind::QuotaExceeded
        );
        let c = &mut self.children[i];
        if scarce {
            let delay = c.retry;
            c.retry = (c.retry * 2).min(RETRY_MAX);
            error!(daemon = %c.cfg.name, error = %e, retry_in = ?delay, "cannot start: out of a resource; retrying");
            c.fault = Some(format!("cannot start: {e} (retrying in {delay:?})"));
            return Event::Refused(i, delay);
        }
        // A death, so the intensity limit applies, but retried after a
        // pause rather than at once: it would burn the window in a moment.
        error!(daemon = %c.cfg.name, error = %e, "cannot start");
        c.fault = Some(format!("cannot start: {e}"));
        let reason = ExitReason::SetupFailed {
            stage: SetupStage::Fork,
            errno: errno.unwrap_or(libc::EINVAL),
        };
        self.record_death(i, reason, Duration::ZERO);
        Event::ForkFailed(i)
    }

    /// Bookkeeping common to a fork and a standby's takeover.
    pub(super) fn began(&mut self, i: usize) {
        let c = &mut self.children[i];
        c.started = Some(Instant::now());
        c.started_ns = sys::monotonic_ns();
        c.ready_ns = c.started_ns;
        c.ping_ns = 0;
        c.status_text = None;
        c.killed_for = None;
    }

    /// Starting × setup pipe readable: end-of-file means its code runs;
    /// a setup report means setup failed (the exit follows).
    pub(super) fn on_setup(&mut self, i: usize) {
        let Some(c) = self.children.get_mut(i) else {
            return;
        };
        let Some(fd) = c.setup.take() else { return };
        match read_setup(&fd) {
            // Nothing yet: a stale event (the pipe of a process this daemon
            // had before, in the same batch) or a spurious wake-up.
            Setup::Pending => c.setup = Some(fd),
            Setup::Ready => {
                let _ = self.epoll.delete(fd.as_fd());
                // A program that says when it is ready is only exec'd yet.
                if c.cfg.readiness == Readiness::Exec {
                    debug!(daemon = %c.cfg.name, "running");
                    self.ready(i);
                } else {
                    debug!(daemon = %c.cfg.name, "exec'd; waiting for it to say ready");
                }
            }
            Setup::Failed(reason) => {
                c.setup_failed = Some(reason);
                let _ = self.epoll.delete(fd.as_fd());
            }
        }
    }

    /// Daemon `i` is ready: from `starting` to `running` (and the
    /// watchdog counts from now).
    pub(super) fn ready(&mut self, i: usize) {
        let c = &mut self.children[i];
        if c.state != State::Starting {
            return;
        }
        c.ready_ns = sys::monotonic_ns();
        self.step(Event::Ready(i));
        self.notify_ready();
    }
}

/// Why a process whose pipe the root could not watch was killed.
fn unwatched(e: &io::Error) -> ExitReason {
    ExitReason::SetupFailed {
        stage: SetupStage::Fork,
        errno: e.raw_os_error().unwrap_or(libc::EIO),
    }
}

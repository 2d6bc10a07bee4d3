//! A daemon's process ended: reaping it (SIGCHLD, and the sweep for
//! those whose SIGCHLD was lost), what its death is (its reason, its
//! record, a poison checkpoint), and holding its exit back until its
//! cgroup is empty.

use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use super::notes::Note;
use super::supervisor::{DState, Event};
use super::{ctx, pid_u32, Role, Root, RootError, TOKEN_EXIT};
use crate::checkpoint::POISON_WINDOW;
use crate::daemon::{Death, ExitReason};
use crate::handoff::{read_setup, Setup, DEATHS_KEPT};
use crate::sys::{self, Pid, Signal, WaitStatus};

/// SIGCHLD is coalesced: while one is pending, another child's is lost. So
/// each child the root forks has a pidfd in the poll loop's set, readable
/// when it ends: every exit of a daemon or standby is an event of its own,
/// reaped with `waitid(P_PID)` (O(1)). `waitpid(-1)`, which walks every
/// child of the root (O(daemons)), is left to orphans (a daemon's
/// descendants, reparented to the root) whose SIGCHLD was lost, and to
/// children whose pidfd could not be made: a sweep this long after a
/// SIGCHLD while every child has its pidfd (at most one walk a second,
/// whatever the rate of exits: beside 3,000 daemons a walk takes about
/// half a millisecond, which at ten a second was some 14 µs of the root's
/// CPU per restart in a crash loop). An orphan whose own SIGCHLD arrives
/// is reaped at once and sweeps at once (`on_sigchld`); one whose signal
/// was lost stays a zombie until this sweep...
pub(super) const SWEEP_DELAY: Duration = Duration::from_secs(1);
/// ...and this long while one has none (its exit may wait for the sweep).
pub(super) const SWEEP_DELAY_UNWATCHED: Duration = Duration::from_millis(20);

impl Root<'_> {
    /// Reaps every ended child (`waitpid(-1, WNOHANG)` until none is
    /// left: SIGCHLD is coalesced, so one signal may stand for many exits).
    pub(super) fn reap(&mut self) -> Result<(), RootError> {
        while let Some((pid, status)) = sys::reap_one().map_err(ctx("waitpid"))? {
            self.exited(pid, status);
        }
        Ok(())
    }

    /// SIGCHLD from `from`: reap it alone (O(1)) and sweep for others
    /// later (see [`SWEEP_DELAY`]).
    pub(super) fn on_sigchld(&mut self, from: Pid) -> Result<(), RootError> {
        // None: reaped already (its pidfd's event came first, or a sweep).
        if let Some(status) = sys::reap_pid(from).map_err(ctx("waitid"))? {
            let orphan = !self.by_pid.contains_key(&from);
            self.exited(from, status);
            if orphan {
                // A daemon's descendants, reparented to the root, tend to
                // die together (its cgroup killed): sweep for those whose
                // signal was lost now, not a second from now.
                return self.reap();
            }
        }
        let delay = if self.pidfds.len() == self.by_pid.len() {
            SWEEP_DELAY
        } else {
            SWEEP_DELAY_UNWATCHED
        };
        let at = Instant::now() + delay;
        if self.sweep_at.is_none_or(|t| t > at) {
            self.sweep_at = Some(at);
        }
        Ok(())
    }

    /// Watches the end of child `pid` through a pidfd. Without one (no
    /// `pidfd_open` before Linux 5.3, no descriptor left) its exit comes
    /// with SIGCHLD or the sweep, as before.
    pub(super) fn watch_exit(&mut self, pid: Pid) {
        let watched = sys::pidfd_open(pid).and_then(|fd| {
            self.epoll
                .add(fd.as_fd(), TOKEN_EXIT | u64::from(pid.as_u32()))?;
            Ok(fd)
        });
        match watched {
            Ok(fd) => {
                self.pidfds.insert(pid, fd);
            }
            Err(e) => debug!(%pid, error = %e, "no pidfd: its exit waits for SIGCHLD or the sweep"),
        }
    }

    /// A child's pidfd is readable: it ended. Reap it alone.
    pub(super) fn on_pidfd(&mut self, pid: u64) -> Result<(), RootError> {
        let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
            return Ok(());
        };
        // None: reaped already (its SIGCHLD or a sweep came first in this
        // batch; `exited` closed its pidfd then).
        if let Some(status) = sys::reap_pid(pid).map_err(ctx("waitid"))? {
            self.exited(pid, status);
        }
        Ok(())
    }

    /// One child ended: route it to its daemon, or log an orphan.
    pub(super) fn exited(&mut self, pid: Pid, status: WaitStatus) {
        // Its pidfd closes (and leaves the epoll set).
        self.pidfds.remove(&pid);
        if let Some(h) = &mut self.handover {
            h.reaped(pid);
        }
        let Some((i, role)) = self.by_pid.remove(&pid) else {
            if self.zygote_reaped(pid) {
                // Killed from outside: the next start makes another.
                warn!(%pid, ?status, "the zygote exited");
            } else {
                debug!(%pid, ?status, "reaped an orphan");
            }
            return;
        };
        match role {
            Role::Primary => self.on_exit(i, pid, status),
            Role::Standby => self.on_standby_exit(i, status),
        }
    }

    /// Remembers a death (the last [`DEATHS_KEPT`]).
    pub(super) fn record_death(&mut self, i: usize, reason: ExitReason, uptime: Duration) {
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

    /// Poison: a daemon restored to the state it died in may die the same
    /// way again. If it crashed (not killed by SIGKILL,
    /// SIGTERM or SIGINT, which come from outside) within [`POISON_WINDOW`]
    /// of resuming from checkpoint C, C is poison: the next start resumes
    /// from the checkpoint before C (and, that failing too, fresh).
    pub(super) fn judge_checkpoint(
        &mut self,
        i: usize,
        pid: Pid,
        reason: ExitReason,
        uptime: Duration,
    ) {
        let crashed = reason.is_crash();
        let resumed = self.regions.header_of(i, pid).map_or(0, |h| h.resumed_seq);
        let c = &mut self.children[i];
        c.resume_before = (crashed && uptime < POISON_WINDOW && resumed != 0).then_some(resumed);
        if let Some(seq) = c.resume_before {
            self.notes.push(Note::Poison { i, seq, uptime });
        }
    }

    /// Starting/Running/Stopping × exit.
    pub(super) fn on_exit(&mut self, i: usize, pid: Pid, status: WaitStatus) {
        let c = &mut self.children[i];
        if let Some(fd) = c.setup.take() {
            // Its SIGCHLD may come before its setup report: read it now.
            if let Setup::Failed(reason) = read_setup(&fd) {
                c.setup_failed = Some(reason);
            }
            let _ = self.epoll.delete(fd.as_fd());
        }
        if let Some(fd) = c.notify_pipe.take() {
            let _ = self.epoll.delete(fd.as_fd());
        }
        let killed_for = c.killed_for.take();
        let reason = c.setup_failed.take().unwrap_or(match status {
            WaitStatus::Exited(code) => ExitReason::Exited(code),
            // The root's own SIGKILL: recorded as why the root sent it.
            WaitStatus::Signaled {
                signal: Signal::KILL,
                core,
            } => killed_for.unwrap_or(ExitReason::Signaled {
                signal: Signal::KILL,
                core,
            }),
            WaitStatus::Signaled { signal, core } => ExitReason::Signaled { signal, core },
        });
        let uptime = c.started.map_or(Duration::ZERO, |t| t.elapsed());
        // `by_pid` routed this death here by the daemon's own pid.
        debug_assert_eq!(c.pid, Some(pid));
        c.pid = None;
        // Reaped: messages it left half-written are skipped from now on,
        // and whoever monitors it hears of it.
        let downs = self.post.died(i, pid_u32(pid), reason, c.restarts);
        if downs > 0 {
            debug!(daemon = %c.cfg.name, downs, "DOWN delivered");
        }
        // Whatever it forked dies with it (its process group: transactions,
        // an exec'd program's children), so nothing outlives it holding its
        // region writable. The group's id cannot be reused while any member
        // lives, so this reaches only the dead daemon's group.
        let _ = sys::kill_group(pid, Signal::KILL);
        // A stop someone asked for, not the watchdog's kill (shown as
        // `stopping` too, but a death).
        let asked = matches!(self.sup.daemon_state(i), DState::Stopping(_));
        let c = &mut self.children[i];
        c.started = None;
        // Its last lines are its own, not its replacement's.
        self.outputs[i].ended(pid);
        self.notes.push(Note::Output { i });
        self.cancel_timer(i);
        self.children[i].last_exit = Some((reason, uptime));
        // A stop someone asked for is not a death: the daemon's history
        // (Context::deaths, what `decide` looks at, poison) leaves it out.
        if !asked {
            self.record_death(i, reason, uptime);
            self.judge_checkpoint(i, pid, reason, uptime);
        }
        if asked {
            if reason.is_crash() && !matches!(reason, ExitReason::Exited(_)) {
                // It crashed on its way out: that still gets a report.
                self.note_exit(i, pid, reason, uptime);
            } else {
                info!(daemon = %self.children[i].cfg.name, pid = pid.as_raw(), %reason, "stopped");
            }
        } else if let ExitReason::SetupFailed { stage, errno } = reason {
            // Its code never ran: one line says where setup failed, and the
            // retry waits as after a failed fork (never sooner than the
            // backoff floor), counted against the intensity.
            let c = &mut self.children[i];
            let err = io::Error::from_raw_os_error(errno);
            error!(%pid, "daemon {:?}: setup failed at {stage}: {err}", c.cfg.name);
            c.fault = Some(format!("setup failed at {stage}: {err}"));
            self.step(Event::ForkFailed(i));
            return;
        } else {
            // The report waits until the replacement is forked (see `Note`).
            self.note_exit(i, pid, reason, uptime);
        }
        let exit = Event::Exit {
            daemon: i,
            normal: reason.is_normal(),
            uptime,
        };
        // What it forked is ended before anything else happens to it: the
        // supervisor hears of the exit (and starts a replacement) only once
        // its cgroup is empty, so two incarnations never overlap.
        match self.containment().end_rest(i) {
            Ok(false) => self.step(exit),
            Ok(true) => self.children[i].ending = Some(exit),
            Err(e) => {
                error!(daemon = %self.children[i].cfg.name, error = %e, "cannot end what the daemon forked");
                self.step(exit);
            }
        }
    }

    /// Some daemons' `cgroup.events` changed: each whose cgroup is empty
    /// and that waited for it has its exit go to the supervisor.
    pub(super) fn on_cgroup_events(&mut self) {
        let mut changed = Vec::new();
        if let Err(e) = self.containment().changed(&mut changed) {
            warn!(error = %e, "reading cgroup events");
        }
        for i in changed {
            if self.children[i].ending.is_some() {
                self.on_cgroup_changed(i);
            }
        }
    }

    /// Daemon `i`'s `cgroup.events` changed while its exit waits.
    pub(super) fn on_cgroup_changed(&mut self, i: usize) {
        let empty = match self.containment().is_empty(i) {
            Ok(empty) => empty,
            Err(e) => {
                warn!(daemon = %self.children[i].cfg.name, error = %e, "cannot read cgroup.events");
                true
            }
        };
        if empty {
            if let Some(exit) = self.children[i].ending.take() {
                debug!(daemon = %self.children[i].cfg.name, "cgroup empty");
                // What the daemon left behind died with its cgroup and was
                // reparented to the root: reap it now (its SIGCHLD may
                // have been lost beside the daemon's).
                if let Err(e) = self.reap() {
                    warn!(error = %e, "orphan sweep failed");
                }
                self.step(exit);
            }
        }
    }
}

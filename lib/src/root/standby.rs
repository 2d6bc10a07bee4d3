//! Standbys (`standby = true`): a daemon's backup, forked and set up
//! beside it, blocked on its gate; when the daemon dies, the standby takes
//! over at once (no fork on the restart path) and another is forked.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::supervisor::{Event, FORK_RETRY};
use super::{pid_u32, Mode, Role, Root, State};
use crate::handoff::{read_setup, History, Setup};
use crate::sys::{self, Pid, Signal, WaitStatus};

/// The longest pause between two tries to fork a standby.
const STANDBY_RETRY_MAX: Duration = Duration::from_secs(30);

/// A standby: forked and set up, blocked on its gate until it takes over.
#[derive(Debug)]
pub(super) struct Standby {
    pub(super) pid: Pid,
    /// Write end of its gate pipe.
    pub(super) gate: OwnedFd,
    /// Its setup pipe while it is getting ready.
    pub(super) setup: Option<OwnedFd>,
    /// Set up and waiting.
    pub(super) ready: bool,
    /// Killed on purpose (SIGKILL); not to be replaced when reaped.
    pub(super) killed: bool,
}

impl Root<'_> {
    /// With `standby = true`: hands the daemon to its ready standby, which
    /// runs at once (no fork on this path). Returns whether it did.
    pub(super) fn take_over(&mut self, i: usize) -> bool {
        let c = &mut self.children[i];
        let ready = c.standby.as_ref().is_some_and(|s| s.ready && !s.killed);
        if !ready {
            return false;
        }
        let sb = c.standby.take().expect("checked above");
        let history = History::new(c.restarts, &c.deaths, c.resume_before);
        if let Err(e) = history.send(sb.gate.as_fd()) {
            warn!(daemon = %c.cfg.name, error = %e, "standby unreachable; forking instead");
            let _ = sys::kill(sb.pid, Signal::KILL);
            c.standby = Some(Standby { killed: true, ..sb });
            return false;
        }
        c.pid = Some(sb.pid);
        if let Some(contain) = &self.contain {
            contain.adopt(i);
        }
        self.post.took_over(i, pid_u32(sb.pid));
        let restarts = c.restarts;
        self.outputs[i].started(sb.pid);
        self.flush_notes();
        let cause = self.count_start(i);
        info!(daemon = %self.children[i].cfg.name, pid = %sb.pid, restarts, cause = %cause, "standby took over");
        self.by_pid.insert(sb.pid, (i, Role::Primary));
        self.began(i);
        self.ensure_standby(i);
        true
    }

    /// Forks a standby for daemon `i` if it wants one and has none. If the
    /// fork fails (the machine or the daemon's `pids_max` refused a
    /// process, or any other error), it is tried again after
    /// [`FORK_RETRY`], the pause doubling up to [`STANDBY_RETRY_MAX`]
    /// while it keeps failing, across the daemon's restarts: a daemon that
    /// wants a standby is not left without one until its next start.
    pub(super) fn ensure_standby(&mut self, i: usize) {
        // A retry pending is this one (or has no purpose left).
        let pending = self.children[i].standby_retry.take();
        if let Some((at, _)) = pending {
            self.standby_retries.remove(&(at, i));
        }
        let c = &self.children[i];
        if !c.cfg.standby || c.standby.is_some() || self.mode != Mode::Supervising {
            return;
        }
        match self.fork_child(i, true) {
            Ok((sp, _)) => {
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
                let pause = pending.map_or(FORK_RETRY, |(_, p)| (p * 2).min(STANDBY_RETRY_MAX));
                let at = Instant::now() + pause;
                self.children[i].standby_retry = Some((at, pause));
                self.standby_retries.insert((at, i));
                warn!(daemon = %self.children[i].cfg.name, error = %e, retry_in = ?pause, "cannot fork a standby");
            }
        }
    }

    /// Forks the standbys whose retry is due, for the daemons that still
    /// want one ([`Supervisor::wants_standby`](super::supervisor::Supervisor::wants_standby)).
    pub(super) fn retry_standbys(&mut self, now: Instant) {
        while let Some(&(at, i)) = self.standby_retries.first() {
            if at > now {
                break;
            }
            if self.sup.wants_standby(i) {
                // Takes the retry out, and puts the next in if this one
                // fails too.
                self.ensure_standby(i);
            } else {
                // Down or going down: a later start forks one, from the
                // first pause again.
                self.standby_retries.pop_first();
                self.children[i].standby_retry = None;
            }
        }
    }

    /// The tree is shutting down: no standby is tried again.
    pub(super) fn drop_standby_retries(&mut self) {
        for (_, i) in std::mem::take(&mut self.standby_retries) {
            self.children[i].standby_retry = None;
        }
    }

    /// Kills daemon `i`'s standby (it runs no user code, so no SIGTERM).
    pub(super) fn kill_standby(&mut self, i: usize) {
        if let Some(sb) = self.children[i].standby.as_mut() {
            if !sb.killed {
                sb.killed = true;
                let _ = sys::kill(sb.pid, Signal::KILL);
            }
        }
    }

    /// A standby's setup pipe: end-of-file means it is ready to take over.
    pub(super) fn on_standby_setup(&mut self, i: usize) {
        let Some(sb) = self.children.get_mut(i).and_then(|c| c.standby.as_mut()) else {
            return;
        };
        let Some(fd) = sb.setup.take() else { return };
        match read_setup(&fd) {
            Setup::Pending => sb.setup = Some(fd),
            Setup::Ready => {
                sb.ready = true;
                let _ = self.epoll.delete(fd.as_fd());
            }
            Setup::Failed(reason) => {
                warn!(daemon = %self.children[i].cfg.name, %reason, "standby failed to start");
                let _ = self.epoll.delete(fd.as_fd());
            }
        }
    }

    /// A standby ended: replace it unless it was killed on purpose.
    pub(super) fn on_standby_exit(&mut self, i: usize, status: WaitStatus) {
        let c = &mut self.children[i];
        let Some(sb) = c.standby.take() else { return };
        if let Some(fd) = sb.setup {
            let _ = self.epoll.delete(fd.as_fd());
        }
        if sb.killed {
            // Replaced on purpose (an unreachable standby) or the daemon is
            // stopping; a daemon with a live primary still wants one. Its
            // primary may be one forked in place of this standby and not
            // set up yet: its start found this standby still there and
            // forked none.
            if matches!(c.state, State::Starting | State::Running) {
                self.ensure_standby(i);
            }
            return;
        }
        warn!(daemon = %c.cfg.name, pid = %sb.pid, ?status, "standby died; forking another");
        self.step(Event::StandbyDied(i));
    }
}

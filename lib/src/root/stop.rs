//! Stopping: the tree's shutdown (a stop signal, `ctl shutdown`, giving
//! up), the second stop signal that kills at once, and the stop of every
//! daemon after an error of the root's own. Also how a daemon is signalled:
//! its process group, and in cgroup mode its cgroup.

use std::time::Instant;

use tracing::{info, warn};

use super::supervisor::Event;
use super::{cgroup, Mode, Role, Root, State, EXIT_INTERNAL, EXIT_OK};
use crate::sys::{self, Pid, Signal};

/// Signals a daemon's process group, falling back to the process alone if
/// the group does not exist yet (a child killed before its setsid).
pub(super) fn kill_tree(pid: Pid, signal: Signal) {
    if sys::kill_group(pid, signal).is_err() {
        let _ = sys::kill(pid, signal);
    }
}

impl Root<'_> {
    /// After a root-level error (its epoll, signalfd or waitid failed) the
    /// loop cannot go on, but the daemons still get a clean stop: SIGTERM
    /// to every one at once, SIGKILL to those left after `stop_timeout`,
    /// each reaped, before the root exits 70. Without the loop, it waits
    /// for SIGCHLD itself (blocked, so it stays pending for sigtimedwait).
    pub(super) fn stop_all_after_error(&mut self) {
        self.flush_notes();
        self.mode = Mode::ShuttingDown(EXIT_INTERNAL);
        for i in 0..self.children.len() {
            self.kill_standby(i);
            if let Some(pid) = self.children[i].pid {
                kill_tree(pid, Signal::TERM);
                kill_tree(pid, Signal::CONT);
                self.children[i].state = State::Stopping;
            }
        }
        let deadline = Instant::now() + self.config.root.stop_timeout;
        loop {
            while let Ok(Some((pid, status))) = sys::reap_one() {
                self.zygote_reaped(pid);
                if let Some((i, role)) = self.by_pid.remove(&pid) {
                    if role == Role::Primary {
                        let c = &mut self.children[i];
                        info!(daemon = %c.cfg.name, %pid, ?status, "stopped");
                        c.pid = None;
                        c.state = State::Stopped;
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if self.by_pid.is_empty() || left.is_zero() {
                break;
            }
            // Arrived or not, the loop reaps and looks again.
            let _ = sys::wait_signal(Signal::CHLD, left);
        }
        for (pid, (i, _)) in std::mem::take(&mut self.by_pid) {
            warn!(daemon = %self.children[i].cfg.name, %pid, timeout = ?self.config.root.stop_timeout, "did not stop in time; killing");
            kill_tree(pid, Signal::KILL);
            let _ = sys::wait_pid(pid);
        }
        // In cgroup mode, what the daemons forked goes too, and so do the
        // cgroups, as at a clean exit (a killed process leaves its cgroup
        // when it exits, before it is reaped).
        if let Some(contain) = &self.contain {
            for i in 0..self.children.len() {
                let _ = contain.kill(i);
            }
        }
        self.zygote = None;
        let _ = self.reap();
        if let Some(Err(e)) = self.contain.take().map(cgroup::Containment::remove) {
            warn!(error = %e, "could not remove every cgroup");
        }
    }

    pub(super) fn on_shutdown_signal(&mut self, sig: Signal) {
        match self.mode {
            Mode::Supervising => {
                info!(signal = %sig, "shutting down");
                self.shutdown(EXIT_OK);
            }
            Mode::ShuttingDown(_) => {
                warn!(signal = %sig, "second stop signal: killing every daemon now");
                for i in 0..self.children.len() {
                    if let Some(pid) = self.children[i].pid {
                        self.kill_all(i, pid);
                    }
                }
            }
        }
    }

    /// SIGKILLs daemon `i` and everything it forked: its cgroup, and its
    /// process group (its process may not have entered its cgroup yet).
    pub(super) fn kill_all(&self, i: usize, pid: Pid) {
        if let Err(e) = self.containment().kill(i) {
            warn!(daemon = %self.children[i].cfg.name, error = %e, "cgroup.kill failed");
        }
        kill_tree(pid, Signal::KILL);
    }

    /// Shuts the tree down: daemons stop one at a time in reverse start
    /// order, then the loop exits with `code`.
    pub(super) fn shutdown(&mut self, code: i32) {
        self.step(Event::Shutdown(code));
    }
}

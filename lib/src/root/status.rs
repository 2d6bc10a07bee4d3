//! What the root says about the tree as a whole: each daemon's presence in
//! the registry, the one-line status (systemd's `STATUS=`, SIGUSR1), and
//! readiness to systemd once the first start is done.

use std::fmt::Write as _;
use std::time::Instant;

use super::{supervisor, Root, State};
use crate::mailbox::Presence;

impl Root<'_> {
    /// Tells systemd (`Type=notify`) the tree is up, once the first start
    /// is done: the top supervisor started every child in order (each
    /// ready, or down for good), and no daemon is still starting.
    pub(super) fn notify_ready(&mut self) {
        if self.manager.ready_settled()
            || self.reloading.is_some()
            || matches!(
                self.sup.groups()[supervisor::TOP].state,
                supervisor::GState::Starting { .. }
            )
            || self.children.iter().any(|c| c.state == State::Starting)
        {
            return;
        }
        let status = self.status_line(Instant::now());
        self.manager.ready(status);
    }

    /// The one-line `STATUS=` for systemd: how many daemons are in each
    /// state, and the restarts within the top supervisor's period.
    pub(super) fn status_line(&self, now: Instant) -> String {
        let mut counts = [0usize; 6];
        for c in self.children.iter().filter(|c| !c.removed) {
            counts[c.state as usize] += 1;
        }
        let period = self.config.supervisor.period;
        let recent = self.sup.recent_restarts(supervisor::TOP, now);
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
                // Writing to a String cannot fail.
                let _ = write!(line, "{n} {}, ", s.as_str());
            }
        }
        let _ = write!(
            line,
            "{recent} restart{} in the last {}",
            if recent == 1 { "" } else { "s" },
            crate::config::units::format_duration(period)
        );
        line
    }

    /// Publishes daemon `i`'s state and restarts in the registry.
    pub(super) fn publish(&self, i: usize) {
        let c = &self.children[i];
        let presence = match c.state {
            State::Starting => Presence::Starting,
            State::Running => Presence::Running,
            State::Backoff => Presence::Backoff,
            State::Stopping => Presence::Stopping,
            State::Stopped => Presence::Stopped,
            State::Failed => Presence::Failed,
        };
        self.post.show(i, presence, c.restarts);
    }
}

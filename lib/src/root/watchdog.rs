//! The watchdog (`watchdog = DURATION`): a daemon whose last sign of life
//! (ready, `WATCHDOG=1`, or a heartbeat in its region) is older than its
//! deadline is killed (SIGKILL). The look is the root's; the verdict goes
//! through the supervisor's table ([`Event::Watchdog`]), which decides the
//! kill ([`Action::WatchdogKill`](super::supervisor::Action::WatchdogKill))
//! and counts the restart under cause `watchdog`.

use std::time::{Duration, Instant};

use tracing::{debug, error};

use super::supervisor::Event;
use super::Root;
use crate::daemon::ExitReason;
use crate::sys;

impl Root<'_> {
    /// The watchdog's look: a daemon whose last heartbeat (or start) is
    /// older than its `watchdog` deadline is [`Event::Watchdog`] for the
    /// supervisor; else look again when it would be.
    pub(super) fn check_watchdog(&mut self, i: usize) -> Option<Event> {
        let c = &self.children[i];
        let (Some(wd), Some(pid)) = (c.cfg.watchdog, c.pid) else {
            return None;
        };
        // From when it became ready, its last `WATCHDOG=1`, or its last
        // heartbeat, whichever is latest.
        let mut last = c.ready_ns.max(c.ping_ns);
        // The heartbeat is the daemon's word: believed only from a header
        // that names the current process, and never later than now.
        let now = sys::monotonic_ns();
        if let Some(h) = self.regions.header_of(i, pid) {
            let hb = h.heartbeat_ns;
            if hb <= now {
                last = last.max(hb);
            }
        }
        let age = Duration::from_nanos(now.saturating_sub(last));
        if age >= wd {
            error!(daemon = %c.cfg.name, %pid, age = ?age, watchdog = ?wd, "watchdog: no heartbeat; killing");
            return Some(Event::Watchdog(i));
        }
        self.set_timer(i, Instant::now() + wd.saturating_sub(age));
        None
    }

    /// The supervisor's verdict on an expired watchdog: SIGKILL the
    /// daemon's process group (cgroup), its death recorded with reason
    /// `watchdog`.
    pub(super) fn watchdog_kill(&mut self, i: usize) {
        let c = &mut self.children[i];
        if let Some(pid) = c.pid {
            debug!(daemon = %c.cfg.name, %pid, "watchdog: SIGKILL to its group");
            c.killed_for = Some(ExitReason::Watchdog);
            self.kill_all(i, pid);
        }
    }
}
